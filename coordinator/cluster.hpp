// The coordinator's side of a cluster: dial the workers, read their descriptions, load one shard
// per pipeline stage (weights from each worker's own copy of the GGUF, or streamed to it), and
// link the stages worker to worker. The Engine then drives generation over the stages.
//
// Everything runs on the calling thread's kj event loop (set up by the caller with
// kj::setupAsyncIo); calls block by waiting on that loop.
#pragma once

#include "coordinator/planner.hpp"
#include "model/config.hpp"
#include "model/gguf.hpp"
#include "protocol/codec.hpp"

#include <kj/async-io.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace tern::coord {

// Parses "host:port,host:port" (IPv4, names, [IPv6]:port). Throws std::invalid_argument naming
// the bad entry.
std::vector<std::string> parseWorkerList(const std::string& list);

// The model's identity on the wire: protocol/hash.hpp's hash of bytes [0, dataOffset).
uint64_t modelHash(const gguf::File& file);

// A worker described for the planner from its hello (measured bandwidth and calibration speed,
// free memory of its node).
WorkerSpec workerSpecFromInfo(const proto::WorkerInfoData& info);

// One pipeline stage: which worker holds which layers.
struct ShardPlacement {
  size_t worker = 0;  // index into Cluster::workers()
  uint32_t layerBegin = 0, layerEnd = 0;
  bool embed = false, head = false;
};

// The planner's placement as shards, one per used worker, in pipeline order.
std::vector<ShardPlacement> shardsFromPlan(const Placement& plan);
// nStages even, contiguous ranges spread over the workers in order (worker i holds stages
// [i*nStages/n, (i+1)*nStages/n)); nStages 0 = one per worker. Throws std::invalid_argument when
// nStages is more than the model's layers or fewer than the workers.
std::vector<ShardPlacement> evenShards(uint32_t nLayer, size_t nWorkers, uint32_t nStages);

enum class ShardSource {
  Auto,    // the worker's own path when it has a file with the model's hash there, else stream
  Path,    // every worker reads its own copy at LoadOptions::path
  Stream,  // the coordinator streams each shard's tensors to its worker
};

struct LoadOptions {
  ShardSource source = ShardSource::Auto;
  std::string path;  // where workers find their own copy (default: the coordinator's path)
  proto::ShardSpecData spec;  // maxSequences, nCtx, threads, kernels, actQuant, kvType, headType
  // Progress of streaming, bytes sent and total over all shards.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

class Cluster {
 public:
  // Dials every address and says hello (version check). Throws std::runtime_error naming the
  // worker that cannot be reached or refuses.
  // A non-loopback address needs `insecure` (plain, unauthenticated TCP): refused before dialling.
  Cluster(kj::AsyncIoContext& io, const std::vector<std::string>& addresses, bool insecure = false);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  const std::vector<proto::WorkerInfoData>& workers() const;
  proto::Worker::Client worker(size_t i);

  // Loads the shards (model = the coordinator's copy) and links each stage to the next (local
  // hop on the same worker, remote hop otherwise). Returns the stages in pipeline order; the
  // Engine links the last one to its sink. Throws std::runtime_error naming the worker and
  // what it refused.
  std::vector<proto::Stage::Client> load(const gguf::File& model, const ModelConfig& cfg,
                                         const std::vector<ShardPlacement>& shards,
                                         const LoadOptions& opts);

  // Every worker's stage counters (Worker.stats), [worker][stage].
  std::vector<std::vector<proto::StageStatsData>> stats(bool reset);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::coord
