// The coordinator's Prometheus instruments (prometheus-cpp), registered on a caller's registry.
// Names and units: see makeEngineMetrics. The registry must outlive the instruments (the Engine
// keeps its shared_ptr).
#pragma once

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
}  // namespace prometheus

namespace tern::coord {

struct EngineMetrics {
  prometheus::Counter* tokensGenerated = nullptr;  // tern_coordinator_tokens_generated_total
  prometheus::Counter* promptTokens = nullptr;     // tern_coordinator_prompt_tokens_total
  prometheus::Counter* batches = nullptr;          // tern_coordinator_batches_total
  prometheus::Histogram* batchTokens = nullptr;    // tern_coordinator_batch_tokens
  prometheus::Gauge* inflight = nullptr;           // tern_coordinator_inflight_batches
  prometheus::Gauge* sequencesActive = nullptr;    // tern_coordinator_sequences_active
  prometheus::Histogram* stepSeconds = nullptr;    // tern_coordinator_step_seconds
  prometheus::Histogram* timeToFirstToken = nullptr;  // tern_coordinator_time_to_first_token_seconds
  prometheus::Counter* sentBytes = nullptr;        // tern_coordinator_sent_bytes_total
  prometheus::Counter* receivedBytes = nullptr;    // tern_coordinator_received_bytes_total
};

// Registers (or, for a registry that already has them, reuses) the coordinator's families.
EngineMetrics makeEngineMetrics(prometheus::Registry& registry);

}  // namespace tern::coord
