// The HTTP server's Prometheus instruments, on the process registry (which also carries the
// service's gauges tern_requests_waiting / tern_requests_running / tern_kv_cache_usage_ratio, the
// coordinator's tern_coordinator_* and, on the embedded default, the workers' tern_stage_*).
#pragma once

#include <memory>
#include <string>

namespace prometheus {
class Counter;
template <typename T>
class Family;
class Histogram;
class Registry;
}  // namespace prometheus

namespace tern::server {

struct ServerMetrics {
  explicit ServerMetrics(prometheus::Registry& registry);

  // tern_http_requests_total{endpoint, code}: responses sent (code 499: the client went away).
  void request(const std::string& endpoint, int code, double seconds);
  // tern_requests_finished_total{reason}: stop | length | cancelled | error | timeout, per choice.
  void finished(const std::string& reason);

  prometheus::Family<prometheus::Counter>* requests = nullptr;
  prometheus::Family<prometheus::Histogram>* duration = nullptr;  // tern_http_request_duration_seconds{endpoint}
  prometheus::Family<prometheus::Counter>* finishedFamily = nullptr;
  prometheus::Histogram* ttft = nullptr;         // tern_request_time_to_first_token_seconds
  prometheus::Histogram* tpot = nullptr;         // tern_request_time_per_output_token_seconds
  prometheus::Counter* promptTokens = nullptr;   // tern_request_prompt_tokens_total
  prometheus::Counter* genTokens = nullptr;      // tern_request_generation_tokens_total
};

}  // namespace tern::server
