// `tern bench serve URL`: a load generator for OpenAI-compatible servers (tern serve,
// llama-server, vLLM, ...).
//
// For every prompt length P and concurrency C: C client loops on one io_context (one thread,
// no thread per connection), each with its own keep-alive connection, send streaming requests
// back to back ("stream": true, "stream_options": {"include_usage": true}) until the duration
// is over or the request budget is spent; requests in flight at the deadline are finished.
// Per request:
//   TTFT  = first content delta - request start (before the request is written);
//   TPOT  = (last content delta - first content delta) / (output tokens - 1), when >= 2 tokens;
//   output tokens = usage.completion_tokens of the usage chunk, else the content chunks;
//   error = a connection error, HTTP status != 200, an `error` event (or a chunk with an
//           "error" member), a chunk that is not JSON, a stream without `data: [DONE]`.
// Prompts: for /v1/completions an array of P token ids drawn from [100, 999] by default (exact
// length, different for every request so that prefix caches do not help); with text prompts
// (always for chat) P words drawn from a list of common one-token English words.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace tern::client {

enum class Endpoint { Completions, Chat };

struct ServeBenchOptions {
  std::string url;                    // http://host:port
  std::vector<int> concurrency{1};
  std::vector<int> promptTokens{128};
  int maxTokens = 32;                 // output tokens asked per request ("max_tokens")
  double durationS = 15;              // per (prompt length, concurrency); 0 = no time bound
  int requests = 0;                   // per (prompt length, concurrency); 0 = no count bound
  Endpoint endpoint = Endpoint::Completions;
  std::string model;                  // "" = the first id of GET /v1/models
  std::string apiKey;                 // sent as "Authorization: Bearer KEY"
  double temperature = 0;
  bool textPrompts = false;           // completions: words instead of token ids
  int tokenIdMin = 100;               // token-id prompts: ids drawn from [min, max]; keep them
  int tokenIdMax = 999;               // below the model's vocabulary size
  bool ignoreEos = false;             // send "ignore_eos": true (llama.cpp, vLLM extension)
  uint64_t seed = 1234;               // prompt ids / words
  double timeoutS = 60;               // longest wait for connect or any read/write
};

// One request's measurements.
struct RequestSample {
  bool ok = false;
  std::string error;     // when !ok: one line
  double ttftMs = -1;    // < 0: no content token arrived
  double tpotMs = -1;    // < 0: fewer than 2 tokens
  int outputTokens = 0;
  bool usageReported = false;
};

struct ServeBenchRow {
  int concurrency = 0;
  int promptTokens = 0;
  int requests = 0;          // completed without error
  int errors = 0;
  double elapsedS = 0;       // first request start to last request end
  long long outputTokens = 0;  // of the requests without error
  double requestsPerS = 0;   // requests / elapsedS
  double outputTokensPerS = 0;  // outputTokens / elapsedS (all clients together)
  // Percentiles over the requests without error; NaN when there is no sample.
  double ttftP50Ms = 0, ttftP99Ms = 0, tpotP50Ms = 0, tpotP99Ms = 0;
  std::string firstError;    // the first error seen at this level ("" if none)
};

struct ServeBenchReport {
  std::string url;
  std::string model;
  std::string endpoint;      // "completions" | "chat"
  int maxTokens = 0;
  std::vector<ServeBenchRow> rows;  // promptTokens outer, concurrency inner, in option order
};

// Runs the whole benchmark on the calling thread. Throws std::runtime_error (one line) for a bad
// URL or option, a server that cannot be reached ("connection refused to host:port"), or a
// failing GET /v1/models (status and the server's message) when no model is given. Errors of
// individual requests are counted, not thrown. log receives progress lines.
ServeBenchReport runServeBench(const ServeBenchOptions& options,
                               const std::function<void(const std::string&)>& log = {});

// The p-th percentile (0..100) by linear interpolation between closest ranks (numpy's default);
// NaN for no values.
double percentile(std::vector<double> values, double p);

// Markdown table, as the other `tern bench` tables; errors are listed below it.
std::string formatServeMarkdown(const ServeBenchReport& report);
// A JSON array, one object per row, snake_case fields (null for missing percentiles).
std::string formatServeJson(const ServeBenchReport& report);

}  // namespace tern::client
