#include "server/openai.hpp"

#include <doctest/doctest.h>

#include <string>

using namespace tern::server;

namespace {

// The ApiError a body gives, or a status of 0 when it parses.
ApiError errorOf(const std::string& body, Endpoint e = Endpoint::Completions) {
  try {
    parseCompletionRequest(body, e);
  } catch (const ApiError& err) {
    return err;
  }
  return ApiError(0, "", "");
}

}  // namespace

TEST_CASE("openai: defaults are tern run's, given fields override them") {
  const CompletionRequest d = parseCompletionRequest(R"({"prompt": "hi"})", Endpoint::Completions);
  const tern::coord::SamplingParams run;  // tern run's defaults
  CHECK(d.sampling.temperature == run.temperature);
  CHECK(d.sampling.topK == run.topK);
  CHECK(d.sampling.topP == run.topP);
  CHECK(d.sampling.minP == run.minP);
  CHECK_FALSE(d.maxTokens.has_value());
  CHECK(d.n == 1);
  CHECK(d.logprobs == -1);
  CHECK(d.prompt == std::string("hi"));

  const CompletionRequest r = parseCompletionRequest(
      R"({"prompt": [1, 2, 3], "max_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": 3,
          "min_p": 0.1, "seed": -5, "stop": ["a", "", "b"], "n": 2, "logprobs": 3, "stream": true,
          "stream_options": {"include_usage": true}, "presence_penalty": 1.5,
          "frequency_penalty": -1, "user": "u", "unknown_field": {"x": 1}})",
      Endpoint::Completions);
  CHECK(r.promptIds == std::vector<tern::TokenId>{1, 2, 3});
  CHECK_FALSE(r.prompt.has_value());
  CHECK(*r.maxTokens == 7);
  CHECK(r.sampling.temperature == 0.0f);
  CHECK(r.sampling.topP == 0.5f);
  CHECK(r.sampling.topK == 3);
  CHECK(r.sampling.minP == doctest::Approx(0.1));
  CHECK(r.seedGiven);
  CHECK(r.sampling.seed == static_cast<uint64_t>(int64_t{-5}));
  CHECK(r.stop == std::vector<std::string>{"a", "b"});
  CHECK(r.n == 2);
  CHECK(r.logprobs == 3);
  CHECK(r.stream);
  CHECK(r.includeUsage);
  CHECK(r.sampling.presencePenalty == 1.5f);
  CHECK(r.sampling.frequencyPenalty == -1.0f);
  CHECK(r.user == "u");
}

TEST_CASE("openai: chat messages, content parts, max_completion_tokens over max_tokens") {
  const CompletionRequest r = parseCompletionRequest(
      R"({"messages": [{"role": "developer", "content": "be brief"},
                       {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                       {"role": "assistant", "content": null}],
          "max_tokens": 5, "max_completion_tokens": 9, "logprobs": true, "top_logprobs": 2})",
      Endpoint::ChatCompletions);
  REQUIRE(r.messages.size() == 3);
  CHECK(r.messages[0].role == "system");
  CHECK(r.messages[1].content == "ab");
  CHECK(r.messages[2].content.empty());
  CHECK(*r.maxTokens == 9);
  CHECK(r.logprobs == 2);
}

TEST_CASE("openai: bad bodies are 400s naming the field") {
  struct Case {
    const char* body;
    const char* param;
  };
  const Case cases[] = {
      {R"({"prompt": "x", "temperature": "hot"})", "temperature"},
      {R"({"prompt": "x", "temperature": 3})", "temperature"},
      {R"({"prompt": "x", "top_p": 0})", "top_p"},
      {R"({"prompt": "x", "top_k": 1.5})", "top_k"},
      {R"({"prompt": "x", "max_tokens": -1})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": "10"})", "max_tokens"},
      {R"({"prompt": "x", "n": 0})", "n"},
      {R"({"prompt": "x", "n": 17})", "n"},
      {R"({"prompt": "x", "stop": 5})", "stop"},
      {R"({"prompt": "x", "stream": "yes"})", "stream"},
      {R"({"prompt": "x", "logprobs": 21})", "logprobs"},
      {R"({"prompt": "x", "presence_penalty": 2.5})", "presence_penalty"},
      {R"({"prompt": "x", "seed": "s"})", "seed"},
      {R"({"prompt": "x", "stream_options": []})", "stream_options"},
      {R"({"prompt": 3})", "prompt"},
      {R"({"prompt": [1, "a"]})", "prompt"},
      {R"({"prompt": [-1]})", "prompt"},
      {R"({})", "prompt"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.body);
    const ApiError e = errorOf(c.body);
    CHECK(e.status == 400);
    CHECK(e.type == "invalid_request_error");
    CHECK(e.param == c.param);
  }
  CHECK(errorOf(R"({"messages": []})", Endpoint::ChatCompletions).param == "messages");
  CHECK(errorOf(R"({"messages": [{"role": "robot", "content": "x"}]})", Endpoint::ChatCompletions).param ==
        "messages[0].role");
  CHECK(errorOf(R"({"messages": [{"role": "user"}]})", Endpoint::ChatCompletions).param ==
        "messages[0].content");
  CHECK(errorOf(R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})",
                Endpoint::ChatCompletions).param == "top_logprobs");
  for (const char* junk : {"{", "", "nul", "[1,2]", "\"text\"", "{\"prompt\": \"x\",}"}) {
    CAPTURE(junk);
    CHECK(errorOf(junk).status == 400);
  }
}

TEST_CASE("openai: error bodies and stream chunks have OpenAI's shapes") {
  const ApiError e(404, "no such model", "invalid_request_error", "model", "model_not_found");
  const auto body = errorBody(e);
  CHECK(body["error"]["message"] == "no such model");
  CHECK(body["error"]["type"] == "invalid_request_error");
  CHECK(body["error"]["param"] == "model");
  CHECK(body["error"]["code"] == "model_not_found");
  CHECK(errorBody(badRequest("x"))["error"]["param"].is_null());

  const ResponseMeta m{"chatcmpl-1", 10, "tiny"};
  const auto first = streamChunk(Endpoint::ChatCompletions, m, 0, true, "Hi", nullptr, {}, false);
  CHECK(first["object"] == "chat.completion.chunk");
  CHECK(first["choices"][0]["delta"]["role"] == "assistant");
  CHECK(first["choices"][0]["delta"]["content"] == "Hi");
  CHECK(first["choices"][0]["finish_reason"].is_null());
  CHECK_FALSE(first.contains("usage"));
  const auto last = streamChunk(Endpoint::ChatCompletions, m, 1, false, "", nullptr, "stop", true);
  CHECK(last["choices"][0]["index"] == 1);
  CHECK(last["choices"][0]["finish_reason"] == "stop");
  CHECK(last["choices"][0]["delta"].empty());
  CHECK(last["usage"].is_null());
  const auto usage = usageChunk(Endpoint::ChatCompletions, m, {5, 7});
  CHECK(usage["choices"].empty());
  CHECK(usage["usage"]["total_tokens"] == 12);

  // Invalid UTF-8 (a token piece cut inside a character) is replaced, never thrown.
  const std::string cut = "\xE4\xB8";
  CHECK_NOTHROW(dump(streamChunk(Endpoint::Completions, m, 0, true, cut, nullptr, {}, false)));

  TokenLogprob a{1, "ab", -0.5f, {{"ab", -0.5f}, {"c", -1.5f}}};
  TokenLogprob b{2, "c", -2.0f, {}};
  const auto lp = completionLogprobs({a, b}, 3);
  CHECK(lp["text_offset"] == nlohmann::json::array({3, 5}));
  CHECK(lp["tokens"] == nlohmann::json::array({"ab", "c"}));
  CHECK(lp["top_logprobs"][0]["c"] == doctest::Approx(-1.5));
  const auto chat = chatLogprobs({a});
  CHECK(chat["content"][0]["bytes"] == nlohmann::json::array({97, 98}));
  CHECK(chat["content"][0]["top_logprobs"].size() == 2);
}
