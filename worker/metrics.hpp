// Prometheus instruments of one worker on a given registry (prometheus-cpp).
//
// Every series carries the label worker="<address>", so several workers may share one registry
// (the embedded default runs them in one process). Families are registered with the registry's
// default Merge behaviour: the first WorkerMetrics on a registry creates them, later ones reuse
// them. Units are base units: seconds, bytes.
//
// Stage series (labels worker, layers="0-15" (first-last layer held, inclusive; "none" for a
// stage holding only the embedding or the head), kernel="avx512"):
//   tern_stage_tokens_total, tern_stage_batches_total, tern_stage_forward_seconds (histogram),
//   tern_stage_batch_tokens (histogram), tern_stage_queue_depth, tern_stage_received_bytes_total,
//   tern_stage_sent_bytes_total, tern_stage_kv_cache_bytes, tern_stage_sequences,
//   tern_stage_request_errors_total, tern_stage_merged_batches_total.
// Worker series (label worker): tern_worker_weight_bytes, tern_worker_numa_node,
//   tern_worker_threads, tern_worker_binding_ok (1/0), tern_worker_bandwidth_bytes_per_second,
//   tern_worker_calibration_macs_per_second, tern_worker_info{kernel, address} = 1.
#pragma once

#include "protocol/codec.hpp"
#include "worker/stage_server.hpp"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace prometheus {
class Registry;
}

namespace tern::worker {

class WorkerMetrics {
 public:
  // Registers (or reuses) the families on `registry` and sets the worker gauges from `info`.
  WorkerMetrics(std::shared_ptr<prometheus::Registry> registry, const proto::WorkerInfoData& info);
  // Removes this worker's series from the registry (the stages using them must be gone).
  ~WorkerMetrics();
  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  // The instruments of a stage holding layers [layerBegin, layerEnd). Stages with the same
  // layers and kernel share their series (counters continue across unload and reload).
  StageInstruments stage(uint32_t layerBegin, uint32_t layerEnd, const std::string& kernel);
  // Bytes of weights of every loaded shard.
  void setWeightBytes(uint64_t bytes);

  static std::string layersLabel(uint32_t layerBegin, uint32_t layerEnd);

 private:
  struct Families;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> f_;
  std::string worker_;
  std::map<std::pair<std::string, std::string>, StageInstruments> stages_;
  std::vector<std::function<void()>> removers_;  // undo every Add on destruction
};

}  // namespace tern::worker
