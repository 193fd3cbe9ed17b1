#include "server/metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace tern::server {
namespace {

// 1 ms .. ~105 s, doubling.
prometheus::Histogram::BucketBoundaries secondsBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (double x = 0.001; x < 120; x *= 2) b.push_back(x);
  return b;
}

}  // namespace

ServerMetrics::ServerMetrics(prometheus::Registry& r) {
  requests = &prometheus::BuildCounter()
                  .Name("tern_http_requests_total")
                  .Help("HTTP responses by endpoint and status code (499: the client went away)")
                  .Register(r);
  duration = &prometheus::BuildHistogram()
                  .Name("tern_http_request_duration_seconds")
                  .Help("From a request's last byte read to its response's last byte written")
                  .Register(r);
  finishedFamily = &prometheus::BuildCounter()
                        .Name("tern_requests_finished_total")
                        .Help("Completion choices ended, by reason: stop, length, cancelled, error, timeout")
                        .Register(r);
  ttft = &prometheus::BuildHistogram()
              .Name("tern_request_time_to_first_token_seconds")
              .Help("From a completion request read to its first generated token (queue + prefill)")
              .Register(r)
              .Add({}, secondsBuckets());
  tpot = &prometheus::BuildHistogram()
              .Name("tern_request_time_per_output_token_seconds")
              .Help("Mean time between a choice's generated tokens after the first")
              .Register(r)
              .Add({}, secondsBuckets());
  promptTokens = &prometheus::BuildCounter()
                      .Name("tern_request_prompt_tokens_total")
                      .Help("Prompt tokens of completion requests (each choice counts its own)")
                      .Register(r)
                      .Add({});
  genTokens = &prometheus::BuildCounter()
                   .Name("tern_request_generation_tokens_total")
                   .Help("Tokens generated for completion requests")
                   .Register(r)
                   .Add({});
}

void ServerMetrics::request(const std::string& endpoint, int code, double seconds) {
  requests->Add({{"endpoint", endpoint}, {"code", std::to_string(code)}}).Increment();
  duration->Add({{"endpoint", endpoint}}, secondsBuckets()).Observe(seconds);
}

void ServerMetrics::finished(const std::string& reason) {
  finishedFamily->Add({{"reason", reason}}).Increment();
}

}  // namespace tern::server
