#include "coordinator/metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace tern::coord {
namespace {

prometheus::Counter* counter(prometheus::Registry& r, const char* name, const char* help) {
  return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}

prometheus::Gauge* gauge(prometheus::Registry& r, const char* name, const char* help) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}

prometheus::Histogram* histogram(prometheus::Registry& r, const char* name, const char* help,
                                 prometheus::Histogram::BucketBoundaries buckets) {
  return &prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, std::move(buckets));
}

// first, first*factor, ... (n bounds)
prometheus::Histogram::BucketBoundaries exponential(double first, double factor, int n) {
  prometheus::Histogram::BucketBoundaries b;
  for (double x = first; n-- > 0; x *= factor) b.push_back(x);
  return b;
}

}  // namespace

EngineMetrics makeEngineMetrics(prometheus::Registry& r) {
  EngineMetrics m;
  m.tokensGenerated = counter(r, "tern_coordinator_tokens_generated_total",
                              "Tokens sampled, end-of-generation ids included");
  m.promptTokens = counter(r, "tern_coordinator_prompt_tokens_total",
                           "Input tokens (prompts, fed turns) sent through the pipeline");
  m.batches = counter(r, "tern_coordinator_batches_total", "Micro-batches sent to the first stage");
  m.batchTokens = histogram(r, "tern_coordinator_batch_tokens", "Tokens per micro-batch",
                            exponential(1, 2, 11));  // 1 .. 1024
  m.inflight = gauge(r, "tern_coordinator_inflight_batches", "Micro-batches in the pipeline now");
  m.sequencesActive = gauge(r, "tern_coordinator_sequences_active",
                            "Sequences with a turn in progress (queued or generating)");
  m.stepSeconds = histogram(r, "tern_coordinator_step_seconds",
                            "Round trip of one micro-batch through the pipeline, seconds",
                            exponential(0.0005, 2, 16));  // 0.5 ms .. 16 s
  m.timeToFirstToken = histogram(r, "tern_coordinator_time_to_first_token_seconds",
                                 "From a turn's feed() to its first sampled token, seconds",
                                 exponential(0.005, 2, 14));  // 5 ms .. 41 s
  m.sentBytes = counter(r, "tern_coordinator_sent_bytes_total",
                        "Payload bytes of micro-batches sent (token ids)");
  m.receivedBytes = counter(r, "tern_coordinator_received_bytes_total",
                            "Payload bytes of logits received");
  return m;
}

}  // namespace tern::coord
