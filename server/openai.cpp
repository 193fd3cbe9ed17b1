#include "server/openai.hpp"

#include <cmath>
#include <limits>

namespace tern::server {
namespace {

using nlohmann::json;

const char* typeName(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::discarded: return "invalid";
    default: return "a number";
  }
}

[[noreturn]] void wrongType(const std::string& field, const char* want, const json& got) {
  throw badRequest("'" + field + "' must be " + want + ", got " + typeName(got), field);
}

// The field's value, or nullptr when absent or null (null means "default", as in OpenAI's SDKs).
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

double number(const json& v, const std::string& name, double lo, double hi) {
  if (!v.is_number()) wrongType(name, "a number", v);
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) {
    throw badRequest("'" + name + "' must be between " + json(lo).dump() + " and " +
                         json(hi).dump() + ", got " + v.dump(),
                     name);
  }
  return x;
}

int64_t integer(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  if (!v.is_number_integer() && !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>())) {
    wrongType(name, "an integer", v);
  }
  if (v.is_number_float()) {
    const double x = v.get<double>();
    if (!(x >= static_cast<double>(lo) && x <= static_cast<double>(hi))) {
      throw badRequest("'" + name + "' must be between " + std::to_string(lo) + " and " +
                           std::to_string(hi) + ", got " + v.dump(),
                       name);
    }
    return static_cast<int64_t>(x);
  }
  const bool neg = v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() < 0;
  if (!neg && v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)) {
    throw badRequest("'" + name + "' must be between " + std::to_string(lo) + " and " +
                         std::to_string(hi) + ", got " + v.dump(),
                     name);
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) {
    throw badRequest("'" + name + "' must be between " + std::to_string(lo) + " and " +
                         std::to_string(hi) + ", got " + v.dump(),
                     name);
  }
  return x;
}

bool boolean(const json& v, const std::string& name) {
  if (!v.is_boolean()) wrongType(name, "a boolean", v);
  return v.get<bool>();
}

const std::string& string(const json& v, const std::string& name) {
  if (!v.is_string()) wrongType(name, "a string", v);
  return v.get_ref<const std::string&>();
}

// Message content: a string, or an array of parts of which the "text" ones are joined.
std::string content(const json& v, const std::string& name) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    std::string out;
    for (size_t i = 0; i < v.size(); ++i) {
      const json& part = v[i];
      const std::string pname = name + "[" + std::to_string(i) + "]";
      if (!part.is_object()) wrongType(pname, "an object", part);
      const json* type = field(part, "type");
      if (!type) throw badRequest("'" + pname + ".type' is required", pname + ".type");
      if (string(*type, pname + ".type") != "text") {
        throw badRequest("'" + pname + ".type' " + type->dump() +
                             " is not supported (only \"text\" parts)",
                         pname + ".type");
      }
      const json* text = field(part, "text");
      if (!text) throw badRequest("'" + pname + ".text' is required", pname + ".text");
      out += string(*text, pname + ".text");
    }
    return out;
  }
  wrongType(name, "a string or an array of content parts", v);
}

void parseMessages(const json& body, CompletionRequest& r) {
  const json* msgs = field(body, "messages");
  if (!msgs) throw badRequest("'messages' is required", "messages");
  if (!msgs->is_array()) wrongType("messages", "an array", *msgs);
  if (msgs->empty()) throw badRequest("'messages' must not be empty", "messages");
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    const std::string name = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) wrongType(name, "an object", m);
    const json* role = field(m, "role");
    if (!role) throw badRequest("'" + name + ".role' is required", name + ".role");
    std::string r0 = string(*role, name + ".role");
    if (r0 == "developer") r0 = "system";
    if (r0 != "system" && r0 != "user" && r0 != "assistant") {
      throw badRequest("'" + name + ".role' must be system, developer, user or assistant, got \"" +
                           r0 + "\"",
                       name + ".role");
    }
    const json* c = field(m, "content");
    std::string text;
    if (c) {
      text = content(*c, name + ".content");
    } else if (r0 != "assistant") {
      throw badRequest("'" + name + ".content' is required", name + ".content");
    }
    r.messages.push_back({std::move(r0), std::move(text)});
  }
}

void parsePrompt(const json& body, CompletionRequest& r) {
  const json* p = field(body, "prompt");
  if (!p) throw badRequest("'prompt' is required", "prompt");
  if (p->is_string()) {
    r.prompt = p->get<std::string>();
    return;
  }
  if (p->is_array()) {
    // A list of token ids; a list holding one string or one id list is accepted as that prompt
    // (batches of several prompts are not: send one request each).
    const json* list = p;
    if (p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) {
      if ((*p)[0].is_string()) {
        r.prompt = (*p)[0].get<std::string>();
        return;
      }
      list = &(*p)[0];
    }
    if (list->empty()) throw badRequest("'prompt' must not be empty", "prompt");
    for (size_t i = 0; i < list->size(); ++i) {
      const json& t = (*list)[i];
      if (!t.is_number_integer()) {
        throw badRequest("'prompt' must be a string, or an array of token ids (integers); element " +
                             std::to_string(i) + " is " + typeName(t),
                         "prompt");
      }
      const int64_t id = t.get<int64_t>();
      if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
        throw badRequest("'prompt' token id " + t.dump() + " is out of range", "prompt");
      }
      r.promptIds.push_back(static_cast<TokenId>(id));
    }
    return;
  }
  wrongType("prompt", "a string or an array of token ids", *p);
}

}  // namespace

ApiError badRequest(const std::string& message, const std::string& param, const std::string& code) {
  return ApiError(400, message, "invalid_request_error", param, code);
}

nlohmann::json errorBody(const ApiError& e) {
  json err = {{"message", e.what()},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return json{{"error", err}};
}

std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

CompletionRequest parseCompletionRequest(std::string_view bodyText, Endpoint endpoint) {
  json body = json::parse(bodyText.begin(), bodyText.end(), nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    throw badRequest("the request body is not valid JSON", {}, "invalid_json");
  }
  if (!body.is_object()) throw badRequest("the request body must be a JSON object, got " +
                                          std::string(typeName(body)));
  CompletionRequest r;
  r.endpoint = endpoint;
  if (const json* v = field(body, "model")) r.model = string(*v, "model");
  if (endpoint == Endpoint::ChatCompletions) {
    parseMessages(body, r);
  } else {
    parsePrompt(body, r);
  }
  const int64_t kMaxTok = std::numeric_limits<int32_t>::max();
  if (const json* v = field(body, "max_completion_tokens")) {
    r.maxTokens = static_cast<int>(integer(*v, "max_completion_tokens", 0, kMaxTok));
  } else if (const json* v2 = field(body, "max_tokens")) {
    r.maxTokens = static_cast<int>(integer(*v2, "max_tokens", 0, kMaxTok));
  }
  coord::SamplingParams& s = r.sampling;
  if (const json* v = field(body, "temperature")) s.temperature = static_cast<float>(number(*v, "temperature", 0, 2));
  if (const json* v = field(body, "top_p")) {
    s.topP = static_cast<float>(number(*v, "top_p", 0, 1));
    if (s.topP <= 0.0f) throw badRequest("'top_p' must be greater than 0, got " + v->dump(), "top_p");
  }
  if (const json* v = field(body, "top_k")) s.topK = static_cast<int>(integer(*v, "top_k", 0, 1 << 20));
  if (const json* v = field(body, "min_p")) s.minP = static_cast<float>(number(*v, "min_p", 0, 1));
  if (const json* v = field(body, "presence_penalty")) {
    s.presencePenalty = static_cast<float>(number(*v, "presence_penalty", -2, 2));
  }
  if (const json* v = field(body, "frequency_penalty")) {
    s.frequencyPenalty = static_cast<float>(number(*v, "frequency_penalty", -2, 2));
  }
  if (const json* v = field(body, "repeat_penalty")) {
    s.repeatPenalty = static_cast<float>(number(*v, "repeat_penalty", 1e-3, 100));
  }
  if (const json* v = field(body, "seed")) {
    s.seed = static_cast<uint64_t>(integer(*v, "seed", std::numeric_limits<int64_t>::min(),
                                           std::numeric_limits<int64_t>::max()));
    r.seedGiven = true;
  }
  if (const json* v = field(body, "stop")) {
    if (v->is_string()) {
      if (!v->get_ref<const std::string&>().empty()) r.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      if (v->size() > kMaxStopStrings) {
        throw badRequest("'stop' holds at most " + std::to_string(kMaxStopStrings) + " strings",
                         "stop");
      }
      for (size_t i = 0; i < v->size(); ++i) {
        const std::string& st = string((*v)[i], "stop[" + std::to_string(i) + "]");
        if (!st.empty()) r.stop.push_back(st);
      }
    } else {
      wrongType("stop", "a string or an array of strings", *v);
    }
  }
  if (const json* v = field(body, "n")) r.n = static_cast<int>(integer(*v, "n", 1, kMaxChoices));
  if (endpoint == Endpoint::ChatCompletions) {
    const json* lp = field(body, "logprobs");
    const bool want = lp && boolean(*lp, "logprobs");
    int top = 0;
    if (const json* v = field(body, "top_logprobs")) {
      top = static_cast<int>(integer(*v, "top_logprobs", 0, kMaxTopLogprobs));
      if (!want) throw badRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs");
    }
    r.logprobs = want ? top : -1;
  } else if (const json* v = field(body, "logprobs")) {
    r.logprobs = static_cast<int>(integer(*v, "logprobs", 0, kMaxTopLogprobs));
  }
  if (const json* v = field(body, "stream")) r.stream = boolean(*v, "stream");
  if (const json* v = field(body, "stream_options")) {
    if (!v->is_object()) wrongType("stream_options", "an object", *v);
    if (const json* u = field(*v, "include_usage")) {
      r.includeUsage = boolean(*u, "stream_options.include_usage");
    }
  }
  if (const json* v = field(body, "user")) r.user = string(*v, "user");
  return r;
}

// --- responses -------------------------------------------------------------------------------

namespace {

json bytesOf(const std::string& s) {
  json a = json::array();
  for (unsigned char c : s) a.push_back(static_cast<int>(c));
  return a;
}

const char* objectName(Endpoint e, bool chunk) {
  if (e == Endpoint::ChatCompletions) return chunk ? "chat.completion.chunk" : "chat.completion";
  return "text_completion";
}

json usageJson(const Usage& u) {
  return {{"prompt_tokens", u.promptTokens},
          {"completion_tokens", u.completionTokens},
          {"total_tokens", u.promptTokens + u.completionTokens}};
}

json header(Endpoint e, const ResponseMeta& m, bool chunk) {
  return {{"id", m.id},
          {"object", objectName(e, chunk)},
          {"created", m.created},
          {"model", m.model},
          {"system_fingerprint", "tern-0.1.0"}};
}

}  // namespace

json chatLogprobs(const std::vector<TokenLogprob>& lps) {
  json content = json::array();
  for (const auto& t : lps) {
    json top = json::array();
    for (const auto& [piece, lp] : t.top) {
      top.push_back({{"token", piece}, {"logprob", lp}, {"bytes", bytesOf(piece)}});
    }
    content.push_back({{"token", t.piece},
                       {"logprob", t.logprob},
                       {"bytes", bytesOf(t.piece)},
                       {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}

json completionLogprobs(const std::vector<TokenLogprob>& lps, size_t textOffset) {
  json tokens = json::array(), tokenLogprobs = json::array(), top = json::array(),
       offsets = json::array();
  size_t at = textOffset;
  for (const auto& t : lps) {
    tokens.push_back(t.piece);
    tokenLogprobs.push_back(t.logprob);
    json alts = json::object();
    for (const auto& [piece, lp] : t.top) alts[piece] = lp;
    top.push_back(alts);
    offsets.push_back(at);
    at += t.piece.size();
  }
  return {{"tokens", tokens},
          {"token_logprobs", tokenLogprobs},
          {"top_logprobs", top},
          {"text_offset", offsets}};
}

json completionResponse(Endpoint e, const ResponseMeta& m, const std::vector<ChoiceResult>& choices,
                        const Usage& u, bool withLogprobs) {
  json out = header(e, m, false);
  json cs = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult& c = choices[i];
    json lp = nullptr;
    if (withLogprobs) {
      lp = e == Endpoint::ChatCompletions ? chatLogprobs(c.logprobs) : completionLogprobs(c.logprobs, 0);
    }
    if (e == Endpoint::ChatCompletions) {
      cs.push_back({{"index", i},
                    {"message", {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}}},
                    {"logprobs", lp},
                    {"finish_reason", c.finishReason}});
    } else {
      cs.push_back({{"index", i}, {"text", c.text}, {"logprobs", lp}, {"finish_reason", c.finishReason}});
    }
  }
  out["choices"] = cs;
  out["usage"] = usageJson(u);
  return out;
}

json streamChunk(Endpoint e, const ResponseMeta& m, int index, bool first, const std::string& text,
                 const std::vector<TokenLogprob>* logprobs, const std::string& finishReason,
                 bool includeUsageNull, size_t textOffset) {
  json out = header(e, m, true);
  json lp = nullptr;
  if (logprobs) {
    lp = e == Endpoint::ChatCompletions ? chatLogprobs(*logprobs) : completionLogprobs(*logprobs, textOffset);
  }
  json fr = finishReason.empty() ? json(nullptr) : json(finishReason);
  json choice;
  if (e == Endpoint::ChatCompletions) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || (first && finishReason.empty())) delta["content"] = text;
    choice = {{"index", index}, {"delta", delta}, {"logprobs", lp}, {"finish_reason", fr}};
  } else {
    choice = {{"index", index}, {"text", text}, {"logprobs", lp}, {"finish_reason", fr}};
  }
  out["choices"] = json::array({choice});
  if (includeUsageNull) out["usage"] = nullptr;
  return out;
}

json usageChunk(Endpoint e, const ResponseMeta& m, const Usage& u) {
  json out = header(e, m, true);
  out["choices"] = json::array();
  out["usage"] = usageJson(u);
  return out;
}

}  // namespace tern::server
