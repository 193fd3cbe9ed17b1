// Conversions between the wire types of tern.capnp and plain std types. kj/capnp types stay at
// this edge; the rest of tern speaks BatchData / LogitsData / StageInfoData.
//
// Every read validates what it reads (list lengths, byte sizes) and throws std::invalid_argument
// naming the field, e.g. "batch.activations: 4096 bytes, expected 8192 (n=2, nEmbd=1024)".
#pragma once

#include "tern.capnp.h"

#include <cstdint>
#include <string>
#include <vector>

namespace tern::proto {

// Every message carries less than this many payload bytes (Cap'n Proto refuses messages over
// 64 MiB; the rest is headroom for list overheads).
inline constexpr uint64_t kMaxPayloadBytes = 48ull << 20;

struct BatchData {
  uint64_t id = 0;                   // Batch.id: the coordinator's batch id
  std::vector<uint64_t> seq;         // [n]
  std::vector<uint32_t> pos;         // [n]
  std::vector<int32_t> tokens;       // [n] for the first stage, else empty
  uint32_t nEmbd = 0;                // elements per activation row (0 when act is empty)
  std::vector<float> act;            // [n, nEmbd] for later stages, else empty
  std::vector<uint8_t> wantLogits;   // [n] 1 = deliver logits for this token
  size_t size() const { return seq.size(); }
};

struct LogitsData {
  uint64_t batchId = 0;       // Batch.id of the batch these rows come from
  std::vector<uint64_t> seq;  // [nRows]
  std::vector<uint32_t> pos;  // [nRows]
  uint32_t nVocab = 0;
  std::vector<float> data;    // [nRows, nVocab]
  size_t rows() const { return seq.size(); }
};

struct StageInfoData {
  uint32_t layerBegin = 0, layerEnd = 0;
  bool embed = false, head = false;
  std::string kernel;
  uint64_t weightBytes = 0;
  uint32_t threads = 0;
  std::string machine;
  uint32_t shardId = 0;
  uint64_t kvBytesPerToken = 0;  // per position per sequence
  uint64_t kvBudgetBytes = 0;    // reserved for maxSequences x nCtx
};

struct NumaNodeData {
  uint32_t index = 0;
  uint32_t cores = 0;
  uint64_t memoryBytes = 0;
};

// tern.capnp WorkerInfo: a worker's description, measured when it starts.
struct WorkerInfoData {
  std::string host, address;
  int32_t numaNode = -1;          // -1 = not pinned
  uint32_t cores = 0, threads = 0;
  uint64_t memoryBytes = 0, freeBytes = 0;
  std::vector<NumaNodeData> nodes;
  std::string kernel;
  double calibrationGmacs = 0;    // GMAC/s of the calibration T2 GEMV
  double bandwidthGBs = 0;        // read bandwidth of its node, GB/s
  std::string boundCpus;          // read back through hwloc; empty = unbound
  std::string bindingWarning;
  std::string machine;
};

// tern.capnp ShardSpec: one stage to load. Exactly one of sourcePath / sourceUpload is used:
// sourcePath when non-empty, else the uploaded file with hash sourceUpload.
struct ShardSpecData {
  std::string modelName;
  uint64_t modelHash = 0;
  uint32_t layerBegin = 0, layerEnd = 0;
  bool embed = false, head = false;
  std::string sourcePath;
  uint64_t sourceUpload = 0;
  uint32_t maxSequences = 1, nCtx = 0;
  uint32_t threads = 0;
  std::string kernels = "auto", actQuant = "auto", kvType = "f16", headType = "f16";
};

// tern.capnp StageStats.
struct StageStatsData {
  uint32_t shardId = 0, layerBegin = 0, layerEnd = 0;
  uint64_t batches = 0, tokens = 0;
  double computeSeconds = 0, transferSeconds = 0, waitSeconds = 0;
  uint64_t bytesIn = 0, bytesOut = 0;
  uint32_t sequences = 0;
  uint64_t kvBytes = 0;
  uint64_t mergedBatches = 0;
};

// Writers check the same invariants as the readers (std::invalid_argument) so a bad batch fails
// where it is made, not on the peer.
void writeBatch(const BatchData& in, Batch::Builder out);
BatchData readBatch(Batch::Reader in);

void writeLogits(const LogitsData& in, Logits::Builder out);
LogitsData readLogits(Logits::Reader in);

void writeStageInfo(const StageInfoData& in, StageInfo::Builder out);
StageInfoData readStageInfo(StageInfo::Reader in);

void writeWorkerInfo(const WorkerInfoData& in, WorkerInfo::Builder out);
WorkerInfoData readWorkerInfo(WorkerInfo::Reader in);

// readShardSpec validates: layerBegin < layerEnd, nCtx > 0, maxSequences > 0, a source given.
void writeShardSpec(const ShardSpecData& in, ShardSpec::Builder out);
ShardSpecData readShardSpec(ShardSpec::Reader in);

void writeStageStats(const StageStatsData& in, StageStats::Builder out);
StageStatsData readStageStats(StageStats::Reader in);

// A refused request as it crosses the wire: a kj FAILED exception carrying one line, which the
// caller sees as the RPC's error.
kj::Exception rpcError(const std::string& message);
[[noreturn]] void throwRpcError(const std::string& message);

// Throws std::invalid_argument unless the batch is well formed (see tern.capnp: equal list
// lengths, n > 0, exactly one of tokens / activations, act.size() == n * nEmbd).
void validateBatch(const BatchData& b);
void validateLogits(const LogitsData& l);

}  // namespace tern::proto
