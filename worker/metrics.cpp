#include "worker/metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace tern::worker {

namespace {

// 1e-4 s .. 10 s: 1, 2.5, 5 per decade.
prometheus::Histogram::BucketBoundaries secondsBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (double decade = 1e-4; decade < 10.0 * 1.0001; decade *= 10) {
    b.push_back(decade);
    if (decade < 10.0 * 0.9999) {
      b.push_back(decade * 2.5);
      b.push_back(decade * 5);
    }
  }
  return b;
}

// 1 .. 8192 tokens, powers of two.
prometheus::Histogram::BucketBoundaries tokenBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (double n = 1; n <= 8192; n *= 2) b.push_back(n);
  return b;
}

template <typename B>
auto& family(B builder, const char* name, const char* help, prometheus::Registry& r) {
  return builder.Name(name).Help(help).Register(r);
}

}  // namespace

struct WorkerMetrics::Families {
  explicit Families(prometheus::Registry& r)
      : tokens(family(prometheus::BuildCounter(), "tern_stage_tokens_total",
                      "Tokens processed by the stage", r)),
        batches(family(prometheus::BuildCounter(), "tern_stage_batches_total",
                       "Batches (forward calls) served by the stage", r)),
        forwardSeconds(family(prometheus::BuildHistogram(), "tern_stage_forward_seconds",
                              "Compute time of one batch in the stage's layers", r)),
        batchTokens(family(prometheus::BuildHistogram(), "tern_stage_batch_tokens",
                           "Tokens per batch", r)),
        queueDepth(family(prometheus::BuildGauge(), "tern_stage_queue_depth",
                          "Batches received and not yet finished downstream", r)),
        bytesIn(family(prometheus::BuildCounter(), "tern_stage_received_bytes_total",
                       "Payload bytes received in batches", r)),
        bytesOut(family(prometheus::BuildCounter(), "tern_stage_sent_bytes_total",
                        "Payload bytes sent on (activations or logits)", r)),
        kvBytes(family(prometheus::BuildGauge(), "tern_stage_kv_cache_bytes",
                       "KV cache bytes reserved by open sequences", r)),
        sequences(family(prometheus::BuildGauge(), "tern_stage_sequences",
                         "Sequences open in the stage", r)),
        errors(family(prometheus::BuildCounter(), "tern_stage_request_errors_total",
                      "Requests the stage refused", r)),
        merged(family(prometheus::BuildCounter(), "tern_stage_merged_batches_total",
                      "Batches computed together with others that waited for the team", r)),
        weightBytes(family(prometheus::BuildGauge(), "tern_worker_weight_bytes",
                           "Bytes of weights of the loaded shards", r)),
        numaNode(family(prometheus::BuildGauge(), "tern_worker_numa_node",
                        "NUMA node the worker is pinned to (-1: not pinned)", r)),
        threads(family(prometheus::BuildGauge(), "tern_worker_threads",
                       "Compute threads of the worker", r)),
        bindingOk(family(prometheus::BuildGauge(), "tern_worker_binding_ok",
                         "1 when the compute threads are bound to the node's cores", r)),
        bandwidth(family(prometheus::BuildGauge(), "tern_worker_bandwidth_bytes_per_second",
                         "Measured read bandwidth of the worker's node", r)),
        calibration(family(prometheus::BuildGauge(), "tern_worker_calibration_macs_per_second",
                           "Speed of the calibration ternary GEMV", r)),
        info(family(prometheus::BuildGauge(), "tern_worker_info",
                    "Constant 1, labelled with the worker's kernel and address", r)) {}

  prometheus::Family<prometheus::Counter>& tokens;
  prometheus::Family<prometheus::Counter>& batches;
  prometheus::Family<prometheus::Histogram>& forwardSeconds;
  prometheus::Family<prometheus::Histogram>& batchTokens;
  prometheus::Family<prometheus::Gauge>& queueDepth;
  prometheus::Family<prometheus::Counter>& bytesIn;
  prometheus::Family<prometheus::Counter>& bytesOut;
  prometheus::Family<prometheus::Gauge>& kvBytes;
  prometheus::Family<prometheus::Gauge>& sequences;
  prometheus::Family<prometheus::Counter>& errors;
  prometheus::Family<prometheus::Counter>& merged;
  prometheus::Family<prometheus::Gauge>& weightBytes;
  prometheus::Family<prometheus::Gauge>& numaNode;
  prometheus::Family<prometheus::Gauge>& threads;
  prometheus::Family<prometheus::Gauge>& bindingOk;
  prometheus::Family<prometheus::Gauge>& bandwidth;
  prometheus::Family<prometheus::Gauge>& calibration;
  prometheus::Family<prometheus::Gauge>& info;
};

namespace {

// Adds a series to a family and remembers how to remove it.
template <typename T, typename... Args>
T* addSeries(prometheus::Family<T>& fam, const prometheus::Labels& labels,
             std::vector<std::function<void()>>& removers, Args&&... args) {
  T* m = &fam.Add(labels, std::forward<Args>(args)...);
  removers.push_back([&fam, m] { fam.Remove(m); });
  return m;
}

}  // namespace

WorkerMetrics::WorkerMetrics(std::shared_ptr<prometheus::Registry> registry,
                             const proto::WorkerInfoData& info)
    : registry_(std::move(registry)), f_(std::make_unique<Families>(*registry_)),
      worker_(info.address) {
  const prometheus::Labels w{{"worker", worker_}};
  addSeries(f_->numaNode, w, removers_)->Set(info.numaNode);
  addSeries(f_->threads, w, removers_)->Set(info.threads);
  const bool bound = !info.boundCpus.empty() && info.bindingWarning.empty();
  addSeries(f_->bindingOk, w, removers_)->Set(bound ? 1 : 0);
  addSeries(f_->bandwidth, w, removers_)->Set(info.bandwidthGBs * 1e9);
  addSeries(f_->calibration, w, removers_)->Set(info.calibrationGmacs * 1e9);
  addSeries(f_->weightBytes, w, removers_)->Set(0);
  addSeries(f_->info, {{"worker", worker_}, {"kernel", info.kernel}, {"address", info.address}},
            removers_)
      ->Set(1);
}

WorkerMetrics::~WorkerMetrics() {
  for (auto it = removers_.rbegin(); it != removers_.rend(); ++it) (*it)();
}

std::string WorkerMetrics::layersLabel(uint32_t layerBegin, uint32_t layerEnd) {
  if (layerBegin >= layerEnd) return "none";
  return std::to_string(layerBegin) + "-" + std::to_string(layerEnd - 1);
}

StageInstruments WorkerMetrics::stage(uint32_t layerBegin, uint32_t layerEnd,
                                      const std::string& kernel) {
  const std::string layers = layersLabel(layerBegin, layerEnd);
  auto key = std::make_pair(layers, kernel);
  auto it = stages_.find(key);
  if (it != stages_.end()) return it->second;
  const prometheus::Labels l{{"worker", worker_}, {"layers", layers}, {"kernel", kernel}};
  StageInstruments s;
  s.tokens = addSeries(f_->tokens, l, removers_);
  s.batches = addSeries(f_->batches, l, removers_);
  s.forwardSeconds = addSeries(f_->forwardSeconds, l, removers_, secondsBuckets());
  s.batchTokens = addSeries(f_->batchTokens, l, removers_, tokenBuckets());
  s.queueDepth = addSeries(f_->queueDepth, l, removers_);
  s.bytesIn = addSeries(f_->bytesIn, l, removers_);
  s.bytesOut = addSeries(f_->bytesOut, l, removers_);
  s.kvBytes = addSeries(f_->kvBytes, l, removers_);
  s.sequences = addSeries(f_->sequences, l, removers_);
  s.errors = addSeries(f_->errors, l, removers_);
  s.merged = addSeries(f_->merged, l, removers_);
  stages_.emplace(key, s);
  return s;
}

void WorkerMetrics::setWeightBytes(uint64_t bytes) {
  f_->weightBytes.Add({{"worker", worker_}}).Set(static_cast<double>(bytes));
}

}  // namespace tern::worker
