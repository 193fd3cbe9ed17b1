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
  std::vector<uint64_t> seq;         // [n]
  std::vector<uint32_t> pos;         // [n]
  std::vector<int32_t> tokens;       // [n] for the first stage, else empty
  uint32_t nEmbd = 0;                // elements per activation row (0 when act is empty)
  std::vector<float> act;            // [n, nEmbd] for later stages, else empty
  std::vector<uint8_t> wantLogits;   // [n] 1 = deliver logits for this token
  size_t size() const { return seq.size(); }
};

struct LogitsData {
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
};

// Writers check the same invariants as the readers (std::invalid_argument) so a bad batch fails
// where it is made, not on the peer.
void writeBatch(const BatchData& in, Batch::Builder out);
BatchData readBatch(Batch::Reader in);

void writeLogits(const LogitsData& in, Logits::Builder out);
LogitsData readLogits(Logits::Reader in);

void writeStageInfo(const StageInfoData& in, StageInfo::Builder out);
StageInfoData readStageInfo(StageInfo::Reader in);

// Throws std::invalid_argument unless the batch is well formed (see tern.capnp: equal list
// lengths, n > 0, exactly one of tokens / activations, act.size() == n * nEmbd).
void validateBatch(const BatchData& b);
void validateLogits(const LogitsData& l);

}  // namespace tern::proto
