// Building the pipeline `tern run` and `tern bench` generate with: dial the workers given with
// --workers, or start the embedded default (one in-process worker per NUMA node, each on its own
// thread and kj event loop, listening on loopback), then load the model's shards on them through
// the coordinator's Cluster and link the stages worker to worker. Both ways run the same worker,
// protocol and coordinator code.
#pragma once

#include "coordinator/cluster.hpp"
#include "runtime/model_file.hpp"
#include "topology/machine.hpp"
#include "worker/host.hpp"

#include <kj/async-io.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace prometheus {
class Registry;
}

namespace tern::runtime {

struct PipelineOptions {
  std::vector<std::string> workers;  // host:port of running workers; empty = embedded
  bool insecure = false;             // --insecure: workers that are not on loopback (plain TCP)
  int stages = 0;                    // stages; 0 = one per worker
  std::string split = "auto";        // auto | even | plan: how layers are divided. auto: plan
                                     // (in proportion to measured speed) with --workers, even
                                     // for the embedded default and for --stages
  std::string source = "auto";       // auto | path | stream: where workers get the weights
  std::string workerPath;            // the model's path on the workers (default: the same)
  int threads = 0;                   // compute threads per worker; 0 = its node's cores
  std::string kernels = "auto", actQuant = "auto", kvType = "f16", head = "f16";
  uint32_t nCtx = 0;                 // positions per sequence
  uint32_t maxSequences = 1;         // sequences every stage holds at once
  std::shared_ptr<prometheus::Registry> metrics;  // embedded workers' metrics; null = none
  std::function<void(const std::string& line)> log;  // progress lines for stderr; may be empty
};

class Pipeline {
 public:
  // Throws std::runtime_error naming what failed (a worker unreachable or refusing a shard).
  Pipeline(kj::AsyncIoContext& io, const OpenedModel& model, const PipelineOptions& opts,
           const topo::Machine& machine);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // The stages in pipeline order (fresh references; the Engine links the last to its sink).
  std::vector<proto::Stage::Client> stages();
  coord::Cluster& cluster() { return *cluster_; }
  const std::vector<coord::ShardPlacement>& shards() const { return shards_; }
  bool embedded() const { return !local_.empty(); }

 private:
  // Order matters: stages before the cluster's connections, connections before the workers.
  std::vector<std::unique_ptr<worker::WorkerThread>> local_;
  std::unique_ptr<coord::Cluster> cluster_;
  std::vector<coord::ShardPlacement> shards_;
  std::vector<proto::Stage::Client> stages_;
};

// One line per stage: "stage 0: worker 127.0.0.1:7001 (numa 0, avx512, 2 threads): layers
// [0, 15) +embed, 590 MiB weights".
std::vector<std::string> describeStages(const coord::Cluster& cluster,
                                        const std::vector<coord::ShardPlacement>& shards,
                                        const std::vector<proto::StageInfoData>& infos);

}  // namespace tern::runtime
