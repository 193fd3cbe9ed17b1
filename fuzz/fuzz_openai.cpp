// libFuzzer target: tern serve's request parsing, a POST body into a CompletionRequest, for
// both endpoints (the first byte picks one; the rest is the body). Only ApiError (a 400 naming
// the field) may escape parseCompletionRequest; anything else would be a 500 or a crash. A
// parsed request must satisfy what the server relies on afterwards.
#include "server/openai.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

using namespace tern;
using namespace tern::server;

namespace {

[[noreturn]] void bug(const char* what) {
  std::fprintf(stderr, "parseCompletionRequest: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Endpoint ep = (data[0] & 1) ? Endpoint::ChatCompletions : Endpoint::Completions;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  CompletionRequest r;
  try {
    r = parseCompletionRequest(body, ep);
  } catch (const ApiError& e) {
    if (e.status != 400) bug("an error other than 400");
    (void)dump(errorBody(e));
    return 0;
  }
  if (r.endpoint != ep) bug("wrong endpoint");
  if (r.n < 1 || r.n > kMaxChoices) bug("n out of range");
  if (r.stop.size() > kMaxStopStrings) bug("too many stop strings");
  for (const auto& s : r.stop) {
    if (s.empty()) bug("an empty stop string");
  }
  if (r.logprobs < -1 || r.logprobs > kMaxTopLogprobs) bug("logprobs out of range");
  if (r.maxTokens && *r.maxTokens < 0) bug("negative max_tokens");
  if (ep == Endpoint::ChatCompletions) {
    if (r.messages.empty()) bug("chat request without messages");
    // The server renders them next: roles are the three the templates know.
    for (const ChatMessage& m : r.messages) {
      if (m.role != "system" && m.role != "user" && m.role != "assistant") bug("unknown role");
    }
    (void)ChatTemplate::builtin(ChatTemplate::Kind::Llama3).apply(r.messages, true);
  } else if (!r.prompt && r.promptIds.empty()) {
    bug("completion request without a prompt");
  }
  return 0;
}
