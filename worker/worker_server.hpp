// The worker actor: serves tern.capnp's Worker interface (the bootstrap capability of a worker's
// listening socket). Owns the worker's shards (each a StageServer), their uploads, its
// description (measured at start: calibration matmul, node bandwidth, binding read back) and the
// connections it dials to other workers for direct stage-to-stage links.
//
// Runs on the worker's kj event loop thread (worker/host.hpp). Compute happens on that thread in
// the OpenMP team bound to the worker's node.
//
// Memory admission (loadShard): a shard needs its weights (the bytes of its tensors in the file)
// plus its KV budget (maxSequences x nCtx x 2 (K, V) x kvDim x layers x 2 or 4 bytes); it is
// refused unless that fits in the free memory (memoryLimitBytes, else the node's memory, less
// what loaded shards reserved). Weights count once: stages load with StageOptions.hugePages, so
// the projections are copied into anonymous memory first touched by the node's bound team (the
// copy is what makes them node-local); the file's mapped pages are page cache the kernel may drop.
// Stages compute with the worker's thread count (ShardSpec.threads may only lower it: more threads
// than the bound team would run unbound).
//
// Shards get increasing ids from 1. Every Stage capability handed out (loadShard, shard, local
// hops) goes through a gate: after unloadShard its calls fail with "shard N was unloaded", and
// the weights and KV caches are freed as soon as no call runs in the stage.
//
// Uploads land in <cacheDir>/shard-<contentHash as 16 hex digits>.gguf (written to "<file>.part"
// first). A shard file holds the model's metadata, the key tern.shard.model_hash (the modelHash
// as a string of 16 lowercase hex digits) and only the shard's tensors.
#pragma once

#include "protocol/codec.hpp"
#include "worker/compute_thread.hpp"
#include "worker/stage_server.hpp"

#include <kj/async-io.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace prometheus {
class Registry;
}

namespace tern::worker {

struct WorkerOptions {
  std::string address;        // the address others dial ("host:port", port resolved)
  int numaNode = -1;          // node the worker is pinned to; -1 = not pinned
  unsigned threads = 0;       // compute threads; 0 = the node's cores
  std::string cacheDir;       // where uploaded shard files are kept; "" = a temp directory
  // Shards by path (ShardSpec.source.path) are read only from files inside this directory (after
  // resolving "..", symlinks and relative paths); "" = none: only streamed shards are accepted.
  std::string modelDir;
  bool insecure = false;      // may dial next workers that are not on loopback (plain TCP)
  bool calibrate = true;      // measure the calibration matmul and bandwidth at start (~0.3 s)
  uint64_t memoryLimitBytes = 0;  // 0 = the node's memory (hwloc), else this budget (tests)
  std::shared_ptr<prometheus::Registry> metrics;  // null = no metrics
  // Where shards are loaded (weights first touched by the bound team) and compute; null = the
  // loop thread (tests). Must outlive the server.
  ComputeThread* compute = nullptr;
};

class WorkerServer final : public proto::Worker::Server {
 public:
  // network: for dialling other workers (NextHop.remote). Binds nothing itself: the host binds
  // the thread and passes what it read back in `binding`.
  WorkerServer(WorkerOptions opts, kj::Network& network, proto::WorkerInfoData description);
  ~WorkerServer();

  const proto::WorkerInfoData& description() const { return info_; }

 protected:
  kj::Promise<void> hello(HelloContext context) override;
  kj::Promise<void> upload(UploadContext context) override;
  kj::Promise<void> loadShard(LoadShardContext context) override;
  kj::Promise<void> shard(ShardContext context) override;
  kj::Promise<void> stats(StatsContext context) override;
  kj::Promise<void> unloadShard(UnloadShardContext context) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  proto::WorkerInfoData info_;
};

}  // namespace tern::worker
