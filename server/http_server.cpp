#include "server/http_server.hpp"

#include "runtime/chat_session.hpp"
#include "server/chat_page.hpp"
#include "server/metrics.hpp"
#include "server/openai.hpp"
#include "server/stop_matcher.hpp"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <deque>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

namespace tern::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::chrono::steady_clock::duration seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

// One HTTP/1.1 chunk of a chunked body.
std::string chunk(std::string_view data) {
  char size[32];
  std::snprintf(size, sizeof size, "%zx\r\n", data.size());
  std::string out = size;
  out += data;
  out += "\r\n";
  return out;
}

std::string sse(const json& j) { return chunk("data: " + dump(j) + "\n\n"); }

std::string randomId(const char* prefix) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s%016llx", prefix, static_cast<unsigned long long>(rng()));
  return buf;
}

// The label a request is counted under: its route, or "other" (keeps the series bounded).
std::string endpointLabel(const std::string& path) {
  static const char* known[] = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health",
                                "/tokenize", "/detokenize", "/metrics", "/"};
  for (const char* k : known) {
    if (path == k) return k;
  }
  if (path == "/chat/completions") return "/v1/chat/completions";
  if (path == "/completions") return "/v1/completions";
  return "other";
}

bool constantTimeEqual(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char d = 0;
  for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i]);
  return d == 0;
}

}  // namespace

struct HttpServer::Impl {
  Impl(runtime::Service& service, ServerOptions o, std::shared_ptr<prometheus::Registry> reg)
      : service(service), opts(std::move(o)), registry(std::move(reg)), metrics(*registry),
        acceptor(ioc), created(std::chrono::duration_cast<std::chrono::seconds>(
                                         std::chrono::system_clock::now().time_since_epoch())
                                         .count()) {}

  runtime::Service& service;
  ServerOptions opts;
  std::shared_ptr<prometheus::Registry> registry;
  ServerMetrics metrics;
  std::atomic<uint32_t> connections{0};  // before ioc: sessions destroyed with it count down
  asio::io_context ioc;
  tcp::acceptor acceptor;
  int64_t created;
  std::thread thread;

  void accept();
};

namespace {

// A completion request in progress on a connection.
struct Exchange {
  uint64_t serial = 0;
  Endpoint endpoint = Endpoint::Completions;
  std::string label;
  bool stream = false, includeUsage = false, logprobs = false;
  int topLogprobs = 0;
  ResponseMeta meta;
  Clock::time_point t0;
  uint32_t promptTokens = 0;
  struct Choice {
    uint64_t handle = 0;
    StopMatcher stop{{}};
    std::string text;
    std::vector<TokenLogprob> lps;  // not yet sent (stream) / all (non-stream)
    size_t lpOffset = 0;            // stream: text offset of lps[0] (completions' text_offset)
    uint32_t tokens = 0;
    bool finished = false, firstSent = false;
    std::string finishReason;
    Clock::time_point tFirst, tLast;
  };
  std::vector<Choice> choices;
  size_t finished = 0;
  bool ended = false;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(HttpServer::Impl& srv, tcp::socket sock)
      : srv_(srv), sock_(std::move(sock)), readTimer_(srv.ioc), writeTimer_(srv.ioc),
        pingTimer_(srv.ioc), limitTimer_(srv.ioc) {
    ++srv_.connections;
  }
  ~Session() { --srv_.connections; }

  void start() { doRead(); }

 private:
  // --- reading requests ---------------------------------------------------------------------
  void doRead() {
    if (closed_) return;
    parser_.emplace();
    parser_->body_limit(srv_.opts.maxBodyBytes);
    parser_->header_limit(64 * 1024);
    readTimer_.expires_after(seconds(srv_.opts.readTimeout));
    readTimer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec) self->close();  // the request did not arrive in time (or the connection idled)
    });
    http::async_read(sock_, buf_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->onRead(ec); });
  }

  void onRead(beast::error_code ec) {
    readTimer_.cancel();
    if (closed_) return;
    if (ec) {
      if (ec == http::error::end_of_stream || ec == asio::error::eof ||
          ec == asio::error::operation_aborted || ec == asio::error::connection_reset) {
        return close();
      }
      keepAlive_ = false;
      t0_ = Clock::now();
      label_ = "other";
      if (ec == http::error::body_limit) {
        return sendError(ApiError(413, "the request body is larger than the limit of " +
                                           std::to_string(srv_.opts.maxBodyBytes) + " bytes",
                                  "invalid_request_error", {}, "request_too_large"));
      }
      if (ec == http::error::header_limit) {
        return sendError(ApiError(431, "the request headers are too large", "invalid_request_error"));
      }
      return sendError(ApiError(400, "malformed HTTP request: " + ec.message(), "invalid_request_error"));
    }
    http::request<http::string_body> req = parser_->release();
    dispatch(std::move(req));
  }

  // Reads while a request runs, to see the client go away at once (and keep any pipelined
  // bytes for the next request).
  void watch() {
    if (watching_ || closed_) return;
    watching_ = true;
    sock_.async_read_some(buf_.prepare(4096), [self = shared_from_this()](beast::error_code ec, size_t n) {
      self->onWatch(ec, n);
    });
  }

  void onWatch(beast::error_code ec, size_t n) {
    watching_ = false;
    if (!ec) buf_.commit(n);
    if (readAfterWatch_) {
      readAfterWatch_ = false;
      return doRead();
    }
    if (closed_) return;
    if (ec) {
      if (ec != asio::error::operation_aborted) clientGone();
      return;
    }
    if (ex_ && buf_.size() < 64 * 1024) watch();
  }

  // --- routing ------------------------------------------------------------------------------
  void dispatch(http::request<http::string_body> req) {
    t0_ = Clock::now();
    keepAlive_ = req.keep_alive();
    const std::string target(req.target());
    const std::string path = target.substr(0, target.find('?'));
    label_ = endpointLabel(path);
    const auto method = req.method();
    try {
      if (path == "/health") {
        if (method != http::verb::get) return methodNotAllowed("GET");
        return health();
      }
      if (path == "/metrics") {
        if (method != http::verb::get) return methodNotAllowed("GET");
        prometheus::TextSerializer ser;
        return sendBody(200, "text/plain; version=0.0.4; charset=utf-8", ser.Serialize(srv_.registry->Collect()));
      }
      if (path == "/" || path == "/index.html") {
        if (method != http::verb::get) return methodNotAllowed("GET");
        return sendBody(200, "text/html; charset=utf-8", std::string(chatPageHtml()));
      }
      const bool api = path == "/v1/models" || path == "/tokenize" || path == "/detokenize" ||
                       label_ == "/v1/chat/completions" || label_ == "/v1/completions";
      if (!api) {
        throw ApiError(404, "unknown path " + path, "not_found_error", {}, "unknown_url");
      }
      authorize(req);
      ready();
      if (path == "/v1/models") {
        if (method != http::verb::get) return methodNotAllowed("GET");
        return models();
      }
      if (method != http::verb::post) return methodNotAllowed("POST");
      if (path == "/tokenize") return tokenize(req.body());
      if (path == "/detokenize") return detokenize(req.body());
      return completion(req.body(), label_ == "/v1/chat/completions" ? Endpoint::ChatCompletions
                                                                    : Endpoint::Completions);
    } catch (const ApiError& e) {
      sendError(e);
    } catch (const std::exception& e) {
      sendError(ApiError(500, std::string("internal error: ") + e.what(), "server_error"));
    }
  }

  void authorize(const http::request<http::string_body>& req) {
    const std::string& key = srv_.opts.apiKey;
    if (key.empty()) return;
    std::string_view auth = req[http::field::authorization];
    constexpr std::string_view bearer = "Bearer ";
    std::string_view given;
    if (auth.size() > bearer.size() && auth.substr(0, bearer.size()) == bearer) {
      given = auth.substr(bearer.size());
    } else {
      given = req["x-api-key"];
    }
    if (given.empty()) {
      throw ApiError(401, "an API key is required: send \"Authorization: Bearer KEY\"",
                     "authentication_error", {}, "missing_api_key");
    }
    if (!constantTimeEqual(given, key)) {
      throw ApiError(401, "invalid API key", "authentication_error", {}, "invalid_api_key");
    }
  }

  // Throws 503 while the model loads (or when it failed to).
  void ready() {
    const auto st = srv_.service.state();
    if (st == runtime::Service::State::Ready) return;
    if (st == runtime::Service::State::Loading) {
      throw ApiError(503, "the model is loading", "unavailable_error", {}, "loading");
    }
    throw ApiError(503, "the model failed to load: " + srv_.service.loadError(), "unavailable_error", {},
                   "load_failed");
  }

  void health() {
    const auto st = srv_.service.state();
    if (st == runtime::Service::State::Ready) {
      return sendBody(200, "application/json", dump(json{{"status", "ok"}}));
    }
    try {
      ready();
    } catch (const ApiError& e) {
      retryAfter_ = true;
      sendError(e);
    }
  }

  void methodNotAllowed(const char* allowed) {
    sendError(ApiError(405, std::string("method not allowed; use ") + allowed, "invalid_request_error"));
  }

  void models() {
    const auto& m = srv_.service.model();
    json meta = {{"n_ctx", srv_.service.nCtx()},
                 {"n_ctx_train", m.cfg.nCtxTrain},
                 {"n_vocab", m.cfg.nVocab},
                 {"n_layer", m.cfg.nLayer},
                 {"n_embd", m.cfg.nEmbd},
                 {"n_params", m.cfg.nParams(*m.file)},
                 {"size", m.file->fileSize()},
                 {"parallel", srv_.service.parallel()}};
    json model = {{"id", srv_.opts.modelId}, {"object", "model"}, {"created", srv_.created},
                  {"owned_by", "tern"}, {"meta", meta}};
    sendBody(200, "application/json", dump(json{{"object", "list"}, {"data", json::array({model})}}));
  }

  static json parseObject(const std::string& body) {
    json j = json::parse(body, nullptr, false);
    if (j.is_discarded()) throw badRequest("the request body is not valid JSON", {}, "invalid_json");
    if (!j.is_object()) throw badRequest("the request body must be a JSON object");
    return j;
  }

  void tokenize(const std::string& body) {
    const json j = parseObject(body);
    auto it = j.find("content");
    if (it == j.end() || !it->is_string()) throw badRequest("'content' must be a string", "content");
    auto flag = [&](const char* name, bool def) {
      auto f = j.find(name);
      if (f == j.end() || f->is_null()) return def;
      if (!f->is_boolean()) throw badRequest(std::string("'") + name + "' must be a boolean", name);
      return f->get<bool>();
    };
    const bool addSpecial = flag("add_special", false), parseSpecial = flag("parse_special", true),
               withPieces = flag("with_pieces", false);
    const Tokenizer& tok = *srv_.service.model().tokenizer;
    const auto ids = tok.encode(it->get<std::string>(), addSpecial, parseSpecial);
    json tokens = json::array();
    for (TokenId id : ids) {
      if (withPieces) {
        tokens.push_back({{"id", id}, {"piece", tok.tokenToPiece(id, true)}});
      } else {
        tokens.push_back(id);
      }
    }
    sendBody(200, "application/json", dump(json{{"tokens", tokens}}));
  }

  void detokenize(const std::string& body) {
    const json j = parseObject(body);
    auto it = j.find("tokens");
    if (it == j.end() || !it->is_array()) throw badRequest("'tokens' must be an array of token ids", "tokens");
    const Tokenizer& tok = *srv_.service.model().tokenizer;
    std::vector<TokenId> ids;
    for (const auto& t : *it) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= tok.size()) {
        throw badRequest("'tokens' holds " + t.dump() + ", not a token id of this model (0.." +
                             std::to_string(tok.size() - 1) + ")",
                         "tokens");
      }
      ids.push_back(static_cast<TokenId>(t.get<int64_t>()));
    }
    sendBody(200, "application/json", dump(json{{"content", tok.decode(ids)}}));
  }

  // --- completions --------------------------------------------------------------------------
  std::vector<TokenId> promptIds(const CompletionRequest& r) {
    const auto& m = srv_.service.model();
    const Tokenizer& tok = *m.tokenizer;
    std::vector<TokenId> ids;
    if (r.endpoint == Endpoint::ChatCompletions) {
      try {
        ids = runtime::renderChat(m, r.messages, /*addGenerationPrompt=*/true);
      } catch (const std::invalid_argument& e) {
        throw badRequest(e.what(), "messages");
      }
    } else if (r.prompt) {
      ids = tok.encode(*r.prompt, /*addBos=*/true);
    } else {
      ids = r.promptIds;
      for (TokenId id : ids) {
        if (static_cast<uint32_t>(id) >= m.cfg.nVocab) {
          throw badRequest("'prompt' token id " + std::to_string(id) +
                               " is outside the vocabulary of " + std::to_string(m.cfg.nVocab),
                           "prompt");
        }
      }
    }
    if (ids.empty()) throw badRequest("the prompt is empty", "prompt");
    const uint32_t nCtx = srv_.service.nCtx();
    if (ids.size() > nCtx) {
      throw badRequest("the prompt is " + std::to_string(ids.size()) + " tokens, longer than the context of " +
                           std::to_string(nCtx) + " tokens",
                       r.endpoint == Endpoint::ChatCompletions ? "messages" : "prompt",
                       "context_length_exceeded");
    }
    return ids;
  }

  void completion(const std::string& body, Endpoint endpoint) {
    CompletionRequest r = parseCompletionRequest(body, endpoint);
    if (!r.model.empty() && r.model != srv_.opts.modelId) {
      throw ApiError(404, "the model '" + r.model + "' does not exist; this server serves '" +
                              srv_.opts.modelId + "'",
                     "invalid_request_error", "model", "model_not_found");
    }
    std::vector<TokenId> ids = promptIds(r);
    const uint32_t nCtx = srv_.service.nCtx();
    const uint32_t cap = srv_.opts.maxTokens ? srv_.opts.maxTokens : nCtx;
    if (r.maxTokens && static_cast<uint32_t>(*r.maxTokens) > cap) {
      throw badRequest("'max_tokens' is " + std::to_string(*r.maxTokens) + ", the most this server allows is " +
                           std::to_string(cap),
                       "max_tokens");
    }
    const int maxTokens = r.maxTokens ? *r.maxTokens : static_cast<int>(std::min<uint64_t>(cap, nCtx - ids.size()));

    auto ex = std::make_shared<Exchange>();
    ex->serial = ++serial_;
    ex->endpoint = endpoint;
    ex->label = label_;
    ex->stream = r.stream;
    ex->includeUsage = r.includeUsage;
    ex->logprobs = r.logprobs >= 0;
    ex->topLogprobs = std::max(0, r.logprobs);
    ex->meta = {randomId(endpoint == Endpoint::ChatCompletions ? "chatcmpl-" : "cmpl-"),
                std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count(),
                srv_.opts.modelId};
    ex->t0 = t0_;
    ex->promptTokens = static_cast<uint32_t>(ids.size());
    ex->choices.resize(static_cast<size_t>(r.n));

    std::vector<runtime::Submission> subs;
    uint64_t seed = r.sampling.seed;
    if (!r.seedGiven) seed = (uint64_t{std::random_device{}()} << 32 | std::random_device{}()) & 0x7fffffffffffffffull;
    for (int i = 0; i < r.n; ++i) {
      ex->choices[static_cast<size_t>(i)].stop = StopMatcher(r.stop);
      runtime::Submission s;
      s.gen.prompt = ids;
      s.gen.maxTokens = maxTokens;
      s.gen.sampling = r.sampling;
      s.gen.sampling.seed = seed + static_cast<uint64_t>(i);
      s.gen.topLogprobs = r.logprobs;
      std::weak_ptr<Session> weak = shared_from_this();
      const uint64_t serial = ex->serial;
      const size_t idx = static_cast<size_t>(i);
      asio::io_context& ioc = srv_.ioc;
      s.cb.onToken = [weak, serial, idx, &ioc](const runtime::TokenEvent& ev) {
        asio::post(ioc, [weak, serial, idx, ev] {
          if (auto self = weak.lock()) self->onToken(serial, idx, ev);
        });
      };
      s.cb.onEnd = [weak, serial, idx, &ioc](const runtime::GenerationEnd& end) {
        asio::post(ioc, [weak, serial, idx, end] {
          if (auto self = weak.lock()) self->onEnd(serial, idx, end);
        });
      };
      subs.push_back(std::move(s));
    }
    std::vector<uint64_t> handles;
    try {
      handles = srv_.service.submit(std::move(subs));
    } catch (const runtime::QueueFull& e) {
      retryAfter_ = true;
      throw ApiError(503, e.what(), "unavailable_error", {}, "queue_full");
    } catch (const runtime::NotReady& e) {
      retryAfter_ = true;
      throw ApiError(503, e.what(), "unavailable_error", {}, "loading");
    } catch (const std::invalid_argument& e) {
      throw badRequest(e.what());
    }
    for (size_t i = 0; i < handles.size(); ++i) ex->choices[i].handle = handles[i];
    srv_.metrics.promptTokens->Increment(static_cast<double>(ids.size()) * r.n);
    ex_ = ex;
    if (ex->stream) {
      http::response<http::empty_body> res{http::status::ok, 11};
      res.set(http::field::server, "tern");
      res.set(http::field::content_type, "text/event-stream");
      res.set(http::field::cache_control, "no-cache");
      res.set("X-Accel-Buffering", "no");
      res.keep_alive(keepAlive_);
      res.chunked(true);
      std::ostringstream os;
      os << res.base();
      status_ = 200;
      send(os.str());
      schedulePing();
    }
    limitTimer_.expires_after(seconds(srv_.opts.requestTimeout));
    limitTimer_.async_wait([self = shared_from_this(), serial = ex->serial](beast::error_code ec) {
      if (!ec) self->timedOut(serial);
    });
    watch();
  }

  Exchange* current(uint64_t serial) {
    return ex_ && ex_->serial == serial && !ex_->ended ? ex_.get() : nullptr;
  }

  void onToken(uint64_t serial, size_t i, const runtime::TokenEvent& ev) {
    Exchange* ex = current(serial);
    if (!ex) return;
    Exchange::Choice& c = ex->choices[i];
    if (c.finished) return;
    const auto now = Clock::now();
    if (ev.id >= 0) {
      if (c.tokens == 0) {
        c.tFirst = now;
        if (i == 0) srv_.metrics.ttft->Observe(std::chrono::duration<double>(now - ex->t0).count());
      }
      c.tLast = now;
      ++c.tokens;
      srv_.metrics.genTokens->Increment();
      if (ex->logprobs) {
        const Tokenizer& tok = *srv_.service.model().tokenizer;
        TokenLogprob lp;
        lp.id = ev.id;
        lp.piece = tok.tokenToPiece(ev.id);
        lp.logprob = ev.logprob;
        for (const auto& [id, l] : ev.top) lp.top.emplace_back(tok.tokenToPiece(id), l);
        c.lps.push_back(std::move(lp));
      }
    }
    std::string piece = c.stop.push(ev.text);
    if (ex->stream) {
      if (!piece.empty()) sendDelta(*ex, i, piece);
    } else {
      c.text += piece;
    }
    if (c.stop.stopped()) finishChoice(*ex, i, "stop", /*cancel=*/true);
  }

  void onEnd(uint64_t serial, size_t i, const runtime::GenerationEnd& end) {
    Exchange* ex = current(serial);
    if (!ex) return;
    Exchange::Choice& c = ex->choices[i];
    if (c.finished) return;
    if (!end.error.empty()) return failExchange(*ex, "generation failed: " + end.error, "error");
    std::string rest = c.stop.flush();
    if (ex->stream) {
      if (!rest.empty()) sendDelta(*ex, i, rest);
    } else {
      c.text += rest;
    }
    finishChoice(*ex, i, end.stop == coord::StopReason::EndOfGeneration ? "stop" : "length", false);
  }

  void sendDelta(Exchange& ex, size_t i, const std::string& text) {
    Exchange::Choice& c = ex.choices[i];
    const bool lp = ex.logprobs && !c.lps.empty();
    send(sse(streamChunk(ex.endpoint, ex.meta, static_cast<int>(i), !c.firstSent, text,
                         lp ? &c.lps : nullptr, {}, ex.includeUsage, c.lpOffset)));
    c.firstSent = true;
    if (lp) consumeLogprobs(c);
  }

  static void consumeLogprobs(Exchange::Choice& c) {
    for (const auto& t : c.lps) c.lpOffset += t.piece.size();
    c.lps.clear();
  }

  void finishChoice(Exchange& ex, size_t i, const std::string& reason, bool cancel) {
    Exchange::Choice& c = ex.choices[i];
    c.finished = true;
    c.finishReason = reason;
    if (cancel) srv_.service.cancel(c.handle);
    srv_.metrics.finished(reason);
    if (c.tokens >= 2) {
      srv_.metrics.tpot->Observe(std::chrono::duration<double>(c.tLast - c.tFirst).count() / (c.tokens - 1));
    }
    if (ex.stream) {
      const bool lp = ex.logprobs && !c.lps.empty();
      send(sse(streamChunk(ex.endpoint, ex.meta, static_cast<int>(i), !c.firstSent, {},
                           lp ? &c.lps : nullptr, reason, ex.includeUsage, c.lpOffset)));
      c.firstSent = true;
      consumeLogprobs(c);
    }
    if (++ex.finished == ex.choices.size()) completeExchange(ex);
  }

  Usage usage(const Exchange& ex) const {
    Usage u;
    u.promptTokens = ex.promptTokens;
    for (const auto& c : ex.choices) u.completionTokens += c.tokens;
    return u;
  }

  void completeExchange(Exchange& ex) {
    ex.ended = true;
    limitTimer_.cancel();
    pingTimer_.cancel();
    if (ex.stream) {
      if (ex.includeUsage) send(sse(usageChunk(ex.endpoint, ex.meta, usage(ex))));
      send(chunk("data: [DONE]\n\n"));
      send("0\r\n\r\n");
      endResponse();
    } else {
      std::vector<ChoiceResult> results;
      for (auto& c : ex.choices) results.push_back({c.text, c.finishReason, c.lps});
      sendBody(200, "application/json",
               dump(completionResponse(ex.endpoint, ex.meta, results, usage(ex), ex.logprobs)));
    }
  }

  // Ends every unfinished choice (cancelling its generation) and reports the error: an error
  // event on a stream, an error response otherwise.
  void failExchange(Exchange& ex, const std::string& message, const std::string& reason,
                    int status = 500, const std::string& type = "server_error") {
    for (auto& c : ex.choices) {
      if (c.finished) continue;
      c.finished = true;
      srv_.service.cancel(c.handle);
      srv_.metrics.finished(reason);
    }
    ex.ended = true;
    limitTimer_.cancel();
    pingTimer_.cancel();
    const ApiError err(status, message, type, {}, reason == "timeout" ? "timeout" : "");
    if (ex.stream) {
      send(sse(errorBody(err)));
      send(chunk("data: [DONE]\n\n"));
      send("0\r\n\r\n");
      endResponse();
    } else {
      sendError(err);
    }
  }

  void timedOut(uint64_t serial) {
    Exchange* ex = current(serial);
    if (!ex) return;
    failExchange(*ex, "the request took longer than the limit of " +
                          std::to_string(static_cast<int>(srv_.opts.requestTimeout)) + " s",
                 "timeout", 504, "timeout_error");
  }

  // The client went away: cancel what runs for it and drop the connection.
  void clientGone() {
    if (ex_ && !ex_->ended) {
      for (auto& c : ex_->choices) {
        if (c.finished) continue;
        c.finished = true;
        srv_.service.cancel(c.handle);
        srv_.metrics.finished("cancelled");
      }
      ex_->ended = true;
      srv_.metrics.request(ex_->label, 499, secondsSince(ex_->t0));
    }
    close();
  }

  void schedulePing() {
    pingTimer_.expires_after(seconds(srv_.opts.pingInterval));
    pingTimer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || self->closed_ || !self->ex_ || self->ex_->ended) return;
      if (secondsSince(self->lastWrite_) >= self->srv_.opts.pingInterval * 0.9) {
        self->send(chunk(": ping\n\n"));
      }
      self->schedulePing();
    });
  }

  // --- writing ------------------------------------------------------------------------------
  void sendBody(int status, const char* contentType, std::string body) {
    http::response<http::string_body> res{static_cast<http::status>(status), 11};
    res.set(http::field::server, "tern");
    res.set(http::field::content_type, contentType);
    if (retryAfter_) res.set(http::field::retry_after, "1");
    res.keep_alive(keepAlive_);
    res.body() = std::move(body);
    res.prepare_payload();
    std::ostringstream os;
    os << res;
    status_ = status;
    send(os.str());
    endResponse();
  }

  void sendError(const ApiError& e) { sendBody(e.status, "application/json", dump(errorBody(e))); }

  // The response is queued whole: count it, then read the next request (or close) once written.
  void endResponse() {
    srv_.metrics.request(label_, status_, secondsSince(t0_));
    responseQueued_ = true;
    retryAfter_ = false;
    if (!writing_) afterResponse();
  }

  void afterResponse() {
    responseQueued_ = false;
    ex_.reset();
    if (!keepAlive_) return lingerClose();
    if (watching_) {
      readAfterWatch_ = true;
      beast::error_code ec;
      sock_.cancel(ec);
    } else {
      doRead();
    }
  }

  // Closes after the response: our side first, then whatever the client still sends (the rest
  // of a body we refused) is read and dropped for up to a second, so that a client still
  // writing sees the response instead of a reset (as nginx's lingering close).
  void lingerClose() {
    beast::error_code ec;
    sock_.shutdown(tcp::socket::shutdown_send, ec);
    if (ec || closed_) return close();
    readTimer_.expires_after(std::chrono::seconds(1));
    readTimer_.async_wait([self = shared_from_this()](beast::error_code e) {
      if (!e) self->close();
    });
    if (!watching_) drain();  // (a pending watch read already reads what comes)
  }

  void drain() {
    if (closed_) return;
    auto scratch = std::make_shared<std::array<char, 16384>>();
    sock_.async_read_some(asio::buffer(*scratch), [self = shared_from_this(), scratch](beast::error_code ec, size_t) {
      if (ec) return self->close();
      self->drain();
    });
  }

  void send(std::string data) {
    if (closed_) return;
    outbox_.push_back(std::move(data));
    if (!writing_) doWrite();
  }

  void doWrite() {
    writing_ = true;
    writeTimer_.expires_after(seconds(srv_.opts.writeTimeout));
    writeTimer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec) self->clientGone();  // the client stopped reading
    });
    asio::async_write(sock_, asio::buffer(outbox_.front()),
                      [self = shared_from_this()](beast::error_code ec, size_t) {
                        self->writeTimer_.cancel();
                        if (ec) {
                          self->writing_ = false;
                          return self->clientGone();
                        }
                        self->lastWrite_ = Clock::now();
                        self->outbox_.pop_front();
                        if (!self->outbox_.empty()) return self->doWrite();
                        self->writing_ = false;
                        if (self->responseQueued_) self->afterResponse();
                      });
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ec;
    readTimer_.cancel();
    writeTimer_.cancel();
    pingTimer_.cancel();
    limitTimer_.cancel();
    sock_.close(ec);
  }

  HttpServer::Impl& srv_;
  tcp::socket sock_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  asio::steady_timer readTimer_, writeTimer_, pingTimer_, limitTimer_;
  std::deque<std::string> outbox_;
  bool writing_ = false, closed_ = false, keepAlive_ = true, watching_ = false,
       readAfterWatch_ = false, responseQueued_ = false, retryAfter_ = false;
  Clock::time_point t0_, lastWrite_ = Clock::now();
  std::string label_ = "other";
  int status_ = 200;
  uint64_t serial_ = 0;
  std::shared_ptr<Exchange> ex_;
};

}  // namespace

void HttpServer::Impl::accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket sock) {
    if (ec == asio::error::operation_aborted) return;
    if (!ec) {
      if (connections.load() >= opts.maxConnections) {
        beast::error_code ignored;
        sock.close(ignored);
      } else {
        sock.set_option(tcp::no_delay(true), ec);
        std::make_shared<Session>(*this, std::move(sock))->start();
      }
    }
    accept();
  });
}

HttpServer::HttpServer(runtime::Service& service, ServerOptions opts,
                       std::shared_ptr<prometheus::Registry> registry)
    : impl_(std::make_unique<Impl>(service, std::move(opts), std::move(registry))) {
  Impl& m = *impl_;
  const std::string where = m.opts.host + ":" + std::to_string(m.opts.port);
  try {
    tcp::resolver resolver(m.ioc);
    auto results = resolver.resolve(m.opts.host, std::to_string(m.opts.port),
                                    tcp::resolver::passive | tcp::resolver::numeric_service);
    const tcp::endpoint ep = *results.begin();
    m.acceptor.open(ep.protocol());
    m.acceptor.set_option(asio::socket_base::reuse_address(true));
    m.acceptor.bind(ep);
    m.acceptor.listen(asio::socket_base::max_listen_connections);
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot listen on " + where + ": " + e.what());
  }
  m.accept();
  m.thread = std::thread([&m] { m.ioc.run(); });
}

HttpServer::~HttpServer() {
  Impl& m = *impl_;
  asio::post(m.ioc, [&m] {
    beast::error_code ec;
    m.acceptor.close(ec);
    m.ioc.stop();
  });
  if (m.thread.joinable()) m.thread.join();
}

uint16_t HttpServer::port() const { return impl_->acceptor.local_endpoint().port(); }

namespace {
sigset_t shutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}
}  // namespace

void HttpServer::blockShutdownSignals() {
  const sigset_t set = shutdownSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int HttpServer::waitForSignal() {
  const sigset_t set = shutdownSignals();
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

}  // namespace tern::server
