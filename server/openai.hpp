// The OpenAI API's shapes: request bodies of /v1/chat/completions and /v1/completions parsed and
// validated into CompletionRequest, the error object, and the response / stream-chunk objects.
// Pure functions of their inputs (no I/O), so they can be tested and fuzzed on their own.
//
// Validation follows OpenAI: unknown fields are ignored; a known field of the wrong type or out
// of range is an ApiError 400 naming the field (`param`).
#pragma once

#include "coordinator/sampler.hpp"
#include "model/chat_template.hpp"
#include "model/tokenizer.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace tern::server {

// An error as the OpenAI API reports it: HTTP status plus {"error": {message, type, param, code}}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string type, std::string param = {},
           std::string code = {})
      : std::runtime_error(message), status(status), type(std::move(type)),
        param(std::move(param)), code(std::move(code)) {}
  int status;
  std::string type;   // invalid_request_error, authentication_error, not_found_error, ...
  std::string param;  // the offending field; empty = null
  std::string code;   // machine-readable code; empty = null
};

ApiError badRequest(const std::string& message, const std::string& param = {},
                    const std::string& code = {});
// {"error": {...}} for an ApiError.
nlohmann::json errorBody(const ApiError& e);
// Serialises JSON for the wire: compact, invalid UTF-8 (a token piece cut inside a character)
// replaced by U+FFFD instead of throwing.
std::string dump(const nlohmann::json& j);

enum class Endpoint { ChatCompletions, Completions };

struct CompletionRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::string model;                   // as given; empty when absent
  std::vector<ChatMessage> messages;   // chat
  std::optional<std::string> prompt;   // completions, text
  std::vector<TokenId> promptIds;      // completions, token ids (when prompt is unset)
  std::optional<int> maxTokens;        // max_tokens / max_completion_tokens
  coord::SamplingParams sampling;      // tern run's defaults unless given
  bool seedGiven = false;
  std::vector<std::string> stop;       // never empty strings
  int n = 1;
  int logprobs = -1;                   // -1: none; else top alternatives per token (0..20)
  bool stream = false;
  bool includeUsage = false;           // stream_options.include_usage
  std::string user;
};

inline constexpr int kMaxChoices = 16;
inline constexpr int kMaxTopLogprobs = 20;
inline constexpr size_t kMaxStopStrings = 16;

// Parses a request body. Throws ApiError 400 for malformed JSON, a non-object, a missing
// required field (messages / prompt), a wrong type or a value out of range.
CompletionRequest parseCompletionRequest(std::string_view body, Endpoint endpoint);

// --- responses -------------------------------------------------------------------------------
struct TokenLogprob {
  TokenId id = -1;
  std::string piece;  // the token's bytes
  float logprob = 0;
  std::vector<std::pair<std::string, float>> top;  // (piece, logprob), most likely first
};

struct ChoiceResult {
  std::string text;
  std::string finishReason;          // "stop" | "length"
  std::vector<TokenLogprob> logprobs;
};

struct ResponseMeta {
  std::string id;       // "chatcmpl-..." / "cmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
};

struct Usage {
  uint64_t promptTokens = 0, completionTokens = 0;
};

// The whole (non-streaming) response object.
nlohmann::json completionResponse(Endpoint e, const ResponseMeta& m,
                                  const std::vector<ChoiceResult>& choices, const Usage& u,
                                  bool withLogprobs);
// One streaming chunk for choice `index`: a text delta (chat: `role` on the first), optional
// logprobs of the tokens it carries (completions: textOffset = where the first one starts in the
// choice's text), a finish reason on the last (empty = null).
nlohmann::json streamChunk(Endpoint e, const ResponseMeta& m, int index, bool first,
                           const std::string& text, const std::vector<TokenLogprob>* logprobs,
                           const std::string& finishReason, bool includeUsageNull,
                           size_t textOffset = 0);
// The usage chunk (choices: []) sent before [DONE] when stream_options.include_usage.
nlohmann::json usageChunk(Endpoint e, const ResponseMeta& m, const Usage& u);

// Log-probabilities of one token in the endpoint's shape (chat: {token, logprob, bytes,
// top_logprobs}; completions: the four parallel arrays are built by completionLogprobs).
nlohmann::json chatLogprobs(const std::vector<TokenLogprob>& lps);
nlohmann::json completionLogprobs(const std::vector<TokenLogprob>& lps, size_t textOffset);

}  // namespace tern::server
