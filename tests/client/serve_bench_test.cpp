// runServeBench against a small Beast server started here on 127.0.0.1 (port 0) that streams a
// fixed SSE answer, cut at awkward places, or fails in the ways the benchmark must count.
#include "client/serve_bench.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;
using namespace tern::client;

namespace {

enum class Mode {
  Ok,            // tokens, optional usage chunk, [DONE]
  CloseEach,     // as Ok, but "Connection: close" after every response
  Status500,     // a JSON error body with status 500
  ErrorData,     // two tokens, then data: {"error": ...}
  ErrorNamed,    // two tokens, then event: error
  Malformed,     // two tokens, then a chunk that is not JSON
  NoDone,        // tokens, then the end of the body without [DONE]
  Truncated,     // tokens, then the connection closes inside the chunked body
  CloseDelimited,  // as Ok, without chunked encoding: the body ends when the server closes
  Models401,     // GET /v1/models answers 401
};

struct Behaviour {
  Mode mode = Mode::Ok;
  int tokens = 4;
  int usageTokens = -1;  // -1: no usage chunk
  int firstDelayMs = 0;  // before the first token
  int tokenDelayMs = 0;  // between tokens
};

class TestServer {
 public:
  explicit TestServer(Behaviour b) : b_(b), acceptor_(ioc_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    port_ = acceptor_.local_endpoint().port();
    asio::co_spawn(ioc_, accept(), asio::detached);
    thread_ = std::thread([this] { ioc_.run(); });
  }
  ~TestServer() {
    ioc_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int connections() const { return connections_.load(); }
  std::vector<std::pair<std::string, json>> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

 private:
  asio::awaitable<void> accept() {
    for (;;) {
      tcp::socket s = co_await acceptor_.async_accept(asio::use_awaitable);
      ++connections_;
      asio::co_spawn(ioc_, session(std::move(s)), asio::detached);
    }
  }

  static asio::awaitable<void> sleepMs(int ms) {
    if (ms <= 0) co_return;
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(ms));
    co_await t.async_wait(asio::use_awaitable);
  }

  // One HTTP chunk per piece, so a client sees the event text cut where the pieces are cut.
  // (CloseDelimited: the bytes as they are.)
  asio::awaitable<void> chunk(beast::tcp_stream& s, std::string piece) {
    if (raw_) {
      co_await asio::async_write(s, asio::buffer(piece), asio::use_awaitable);
    } else {
      co_await asio::async_write(s, http::make_chunk(asio::buffer(piece)), asio::use_awaitable);
    }
  }

  asio::awaitable<void> session(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    for (;;) {
      http::request<http::string_body> req;
      beast::error_code ec;
      co_await http::async_read(stream, buffer, req, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
      const std::string target(req.target());
      if (target == "/v1/models") {
        http::response<http::string_body> res{b_.mode == Mode::Models401 ? http::status::unauthorized
                                                                         : http::status::ok, 11};
        res.set(http::field::content_type, "application/json");
        res.body() = b_.mode == Mode::Models401
                         ? R"({"error":{"message":"invalid api key","type":"auth"}})"
                         : R"({"object":"list","data":[{"id":"test-model","object":"model"}]})";
        res.keep_alive(req.keep_alive());
        res.prepare_payload();
        co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return;
        continue;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        requests_.emplace_back(target, json::parse(req.body(), nullptr, false));
      }
      const bool chat = target == "/v1/chat/completions";
      if (b_.mode == Mode::Status500) {
        http::response<http::string_body> res{http::status::internal_server_error, 11};
        res.set(http::field::content_type, "application/json");
        res.body() = R"({"error":{"code":500,"message":"the model fell over","type":"server_error"}})";
        res.keep_alive(true);
        res.prepare_payload();
        co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return;
        continue;
      }
      http::response<http::empty_body> res{http::status::ok, 11};
      res.set(http::field::content_type, "text/event-stream");
      raw_ = b_.mode == Mode::CloseDelimited;
      res.chunked(!raw_);
      const bool keep = b_.mode != Mode::CloseEach && b_.mode != Mode::CloseDelimited;
      res.keep_alive(keep);
      http::response_serializer<http::empty_body> sr{res};
      co_await http::async_write_header(stream, sr, asio::use_awaitable);
      co_await chunk(stream, ": keep-alive comment\r\n");
      if (b_.mode == Mode::Truncated) {
        co_await chunk(stream, "data: {\"choices\":[{\"text\":\"a\"}]}\n\n");
        stream.socket().shutdown(tcp::socket::shutdown_send, ec);
        co_return;
      }
      const bool failMidway = b_.mode == Mode::ErrorData || b_.mode == Mode::ErrorNamed ||
                              b_.mode == Mode::Malformed;
      const int tokens = failMidway ? 2 : b_.tokens;
      co_await sleepMs(b_.firstDelayMs);
      for (int i = 0; i < tokens; ++i) {
        if (i) co_await sleepMs(b_.tokenDelayMs);
        json c = {{"id", "cmpl-1"}, {"object", "text_completion"}};
        c["choices"] = chat ? json::array({{{"index", 0}, {"delta", {{"content", "tok" + std::to_string(i)}}}}})
                            : json::array({{{"index", 0}, {"text", " tok" + std::to_string(i)}}});
        const std::string ev = "data: " + c.dump() + "\r\n\r\n";
        // Cut inside the JSON and between the final CR and LF.
        co_await chunk(stream, ev.substr(0, 9));
        co_await chunk(stream, ev.substr(9, ev.size() - 10));
        co_await chunk(stream, ev.substr(ev.size() - 1));
      }
      if (b_.mode == Mode::ErrorData) {
        co_await chunk(stream, "data: {\"error\":{\"message\":\"out of memory\",\"code\":500}}\n\n");
      } else if (b_.mode == Mode::ErrorNamed) {
        co_await chunk(stream, "event: error\ndata: {\"message\":\"stage died\"}\n\n");
      } else if (b_.mode == Mode::Malformed) {
        co_await chunk(stream, "data: {\"choices\": [\n\n");
      }
      if (b_.usageTokens >= 0 && !failMidway) {
        json u = {{"choices", json::array()},
                  {"usage", {{"prompt_tokens", 3}, {"completion_tokens", b_.usageTokens}}}};
        co_await chunk(stream, "data: " + u.dump() + "\n\n");
      }
      if (b_.mode != Mode::NoDone) co_await chunk(stream, "data: [DONE]\n\n");
      if (!raw_) co_await asio::async_write(stream, http::make_chunk_last(), asio::use_awaitable);
      if (!keep) {
        stream.socket().shutdown(tcp::socket::shutdown_send, ec);
        co_return;
      }
    }
  }

  Behaviour b_;
  bool raw_ = false;  // set per response (the sessions run on one thread)
  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  unsigned short port_ = 0;
  std::thread thread_;
  std::atomic<int> connections_{0};
  std::mutex mu_;
  std::vector<std::pair<std::string, json>> requests_;
};

ServeBenchOptions options(const TestServer& s) {
  ServeBenchOptions o;
  o.url = s.url();
  o.concurrency = {1};
  o.promptTokens = {16};
  o.maxTokens = 4;
  o.durationS = 0;
  o.requests = 5;
  o.timeoutS = 10;
  return o;
}

size_t words(const std::string& s) {
  size_t n = s.empty() ? 0 : 1;
  for (char c : s) n += c == ' ';
  return n;
}

}  // namespace

TEST_CASE("client serve: streamed answers over keep-alive connections") {
  TestServer server({Mode::Ok, 4, 4, 30, 10});
  ServeBenchOptions o = options(server);
  o.concurrency = {1, 3};
  o.requests = 6;
  std::vector<std::string> log;
  const ServeBenchReport r = runServeBench(o, [&](const std::string& l) { log.push_back(l); });
  CHECK(r.model == "test-model");  // from GET /v1/models
  CHECK(r.endpoint == "completions");
  REQUIRE(r.rows.size() == 2);
  for (const ServeBenchRow& row : r.rows) {
    CAPTURE(row.concurrency);
    CHECK(row.promptTokens == 16);
    CHECK(row.requests == 6);
    CHECK(row.errors == 0);
    CHECK(row.firstError.empty());
    CHECK(row.outputTokens == 6 * 4);
    CHECK(row.elapsedS > 0);
    CHECK(row.requestsPerS == doctest::Approx(row.requests / row.elapsedS));
    CHECK(row.outputTokensPerS == doctest::Approx(row.outputTokens / row.elapsedS));
    // The server waits 30 ms before the first token and 10 ms between tokens.
    CHECK(row.ttftP50Ms >= 30);
    CHECK(row.ttftP99Ms >= row.ttftP50Ms);
    CHECK(row.tpotP50Ms >= 5);
    CHECK(row.tpotP50Ms < 500);
    CHECK(row.tpotP99Ms >= row.tpotP50Ms);
  }
  // Concurrency 3 overlaps requests: more requests per second than one client.
  CHECK(r.rows[1].requestsPerS > 1.5 * r.rows[0].requestsPerS);
  // One connection for /v1/models, then one per client loop, reused for all its requests.
  CHECK(server.connections() == 1 + 1 + 3);
  const auto reqs = server.requests();
  REQUIRE(reqs.size() == 12);
  std::set<std::string> prompts;
  for (const auto& [target, body] : reqs) {
    CHECK(target == "/v1/completions");
    REQUIRE(body.is_object());
    CHECK(body["model"] == "test-model");
    CHECK(body["stream"] == true);
    CHECK(body["stream_options"]["include_usage"] == true);
    CHECK(body["max_tokens"] == 4);
    CHECK(body["temperature"] == 0);
    CHECK_FALSE(body.contains("ignore_eos"));
    REQUIRE(body["prompt"].is_array());
    CHECK(body["prompt"].size() == 16);
    for (const json& id : body["prompt"]) CHECK((id.get<int>() >= 100 && id.get<int>() <= 999));
    prompts.insert(body["prompt"].dump());
  }
  CHECK(prompts.size() == reqs.size());  // a fresh prompt for every request
  CHECK(log.size() >= 3);

  // The table and the JSON carry the computed rows.
  const std::string md = formatServeMarkdown(r);
  CHECK(md.find("| concurrency | prompt tokens | requests | requests/s |") != std::string::npos);
  CHECK(md.find("| 3 | 16 | 6 |") != std::string::npos);
  const json j = json::parse(formatServeJson(r));
  REQUIRE(j.size() == 2);
  CHECK(j[1]["concurrency"] == 3);
  CHECK(j[1]["prompt_tokens"] == 16);
  CHECK(j[1]["requests"] == 6);
  CHECK(j[1]["errors"] == 0);
  CHECK(j[1]["output_tokens"] == 24);
  CHECK(j[1]["requests_per_s"].get<double>() == doctest::Approx(r.rows[1].requestsPerS));
  CHECK(j[1]["ttft_p99_ms"].get<double>() == doctest::Approx(r.rows[1].ttftP99Ms));
  CHECK(j[1]["tpot_p50_ms"].get<double>() == doctest::Approx(r.rows[1].tpotP50Ms));
  CHECK(j[1]["first_error"].is_null());
}

TEST_CASE("client serve: output tokens from the usage chunk, else counted") {
  SUBCASE("usage reported") {
    TestServer server({Mode::Ok, 3, 7, 0, 1});
    const ServeBenchReport r = runServeBench(options(server));
    CHECK(r.rows.at(0).outputTokens == 5 * 7);
    CHECK(r.rows.at(0).errors == 0);
  }
  SUBCASE("no usage chunk") {
    TestServer server({Mode::Ok, 3, -1, 0, 1});
    const ServeBenchReport r = runServeBench(options(server));
    CHECK(r.rows.at(0).outputTokens == 5 * 3);
    CHECK(r.rows.at(0).errors == 0);
  }
}

TEST_CASE("client serve: failures are counted as errors") {
  struct Case {
    Mode mode;
    const char* message;
  };
  for (const Case& c : {Case{Mode::Status500, "HTTP 500: the model fell over"},
                        Case{Mode::ErrorData, "error event: out of memory"},
                        Case{Mode::ErrorNamed, "error event: stage died"},
                        Case{Mode::Malformed, "malformed event"},
                        Case{Mode::NoDone, "without 'data: [DONE]'"}}) {
    CAPTURE(c.message);
    TestServer server({c.mode, 3, 3, 0, 0});
    const ServeBenchReport r = runServeBench(options(server));
    const ServeBenchRow& row = r.rows.at(0);
    CHECK(row.errors == 5);
    CHECK(row.requests == 0);
    CHECK(row.outputTokens == 0);
    CHECK(row.firstError.find(c.message) != std::string::npos);
    CHECK(std::isnan(row.ttftP50Ms));
    CHECK(formatServeMarkdown(r).find(c.message) != std::string::npos);
    CHECK(json::parse(formatServeJson(r))[0]["ttft_p50_ms"].is_null());
    // A server that answers (even with an error) keeps its connection: no reconnects.
    CHECK(server.connections() == 2);
  }
}

TEST_CASE("client serve: a server closing every connection gets a new one per request") {
  for (Mode mode : {Mode::CloseEach, Mode::CloseDelimited}) {
    CAPTURE(static_cast<int>(mode));
    TestServer server({mode, 2, 2, 0, 0});
    const ServeBenchReport r = runServeBench(options(server));
    CHECK(r.rows.at(0).requests == 5);
    CHECK(r.rows.at(0).errors == 0);
    CHECK(r.rows.at(0).outputTokens == 5 * 2);
    CHECK(server.connections() == 1 + 5);
  }
}

TEST_CASE("client serve: a connection lost mid-stream is an error, the next request reconnects") {
  TestServer server({Mode::Truncated, 2, 2, 0, 0});
  const ServeBenchReport r = runServeBench(options(server));
  CHECK(r.rows.at(0).requests == 0);
  CHECK(r.rows.at(0).errors == 5);
  CAPTURE(r.rows.at(0).firstError);
  CHECK(r.rows.at(0).firstError.find("closed the connection") != std::string::npos);
  CHECK(server.connections() == 1 + 5);
}

TEST_CASE("client serve: chat endpoint and text prompts") {
  SUBCASE("chat") {
    TestServer server({Mode::Ok, 3, -1, 0, 1});
    ServeBenchOptions o = options(server);
    o.endpoint = Endpoint::Chat;
    o.model = "given";
    o.temperature = 0.5;
    o.ignoreEos = true;
    const ServeBenchReport r = runServeBench(o);
    CHECK(r.model == "given");
    CHECK(r.endpoint == "chat");
    CHECK(r.rows.at(0).outputTokens == 5 * 3);  // counted from delta.content
    CHECK(r.rows.at(0).errors == 0);
    for (const auto& [target, body] : server.requests()) {
      CHECK(target == "/v1/chat/completions");
      CHECK(body["model"] == "given");
      CHECK(body["temperature"] == 0.5);
      CHECK(body["ignore_eos"] == true);
      REQUIRE(body["messages"].size() == 1);
      CHECK(body["messages"][0]["role"] == "user");
      CHECK(words(body["messages"][0]["content"].get<std::string>()) == 16);
    }
  }
  SUBCASE("completions with text") {
    TestServer server({Mode::Ok, 2, 2, 0, 0});
    ServeBenchOptions o = options(server);
    o.textPrompts = true;
    o.promptTokens = {5, 40};
    const ServeBenchReport r = runServeBench(o);
    REQUIRE(r.rows.size() == 2);
    CHECK(r.rows[1].promptTokens == 40);
    const auto reqs = server.requests();
    REQUIRE(reqs.size() == 10);
    CHECK(words(reqs.front().second["prompt"].get<std::string>()) == 5);
    CHECK(words(reqs.back().second["prompt"].get<std::string>()) == 40);
  }
}

TEST_CASE("client serve: token ids from the range asked for") {
  TestServer server({Mode::Ok, 2, 2, 0, 0});
  ServeBenchOptions o = options(server);
  o.tokenIdMin = 3;
  o.tokenIdMax = 9;
  o.promptTokens = {200};
  runServeBench(o);
  std::set<int> seen;
  for (const auto& [target, body] : server.requests()) {
    REQUIRE(body["prompt"].size() == 200);
    for (const json& id : body["prompt"]) seen.insert(id.get<int>());
  }
  CHECK(*seen.begin() == 3);  // 1000 draws from 7 values reach both ends
  CHECK(*seen.rbegin() == 9);
  CHECK(seen.size() == 7);
}

TEST_CASE("client serve: duration bound") {
  TestServer server({Mode::Ok, 2, 2, 0, 5});
  ServeBenchOptions o = options(server);
  o.requests = 0;
  o.durationS = 0.3;
  o.concurrency = {2};
  const ServeBenchReport r = runServeBench(o);
  const ServeBenchRow& row = r.rows.at(0);
  CHECK(row.requests >= 2);
  CHECK(row.errors == 0);
  CHECK(row.elapsedS >= 0.3);
  CHECK(row.elapsedS < 5);
}

TEST_CASE("client serve: bad input gives one clear error") {
  SUBCASE("connection refused") {
    unsigned short port = 0;
    {
      asio::io_context ioc;
      tcp::acceptor a(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
      port = a.local_endpoint().port();
    }  // closed: nothing listens there now
    ServeBenchOptions o;
    o.url = "http://127.0.0.1:" + std::to_string(port);
    o.requests = 1;
    CHECK_THROWS_WITH_AS(runServeBench(o),
                         ("bench serve: connection refused to 127.0.0.1:" + std::to_string(port)).c_str(),
                         std::runtime_error);
  }
  SUBCASE("GET /v1/models refused") {
    TestServer server({Mode::Models401, 2, 2, 0, 0});
    CHECK_THROWS_WITH_AS(runServeBench(options(server)),
                         doctest::Contains("GET /v1/models on 127.0.0.1:"), std::runtime_error);
    CHECK_THROWS_WITH_AS(runServeBench(options(server)),
                         doctest::Contains("HTTP 401: invalid api key"), std::runtime_error);
  }
  SUBCASE("bad URL and options") {
    ServeBenchOptions o;
    o.url = "localhost:8080";
    CHECK_THROWS_WITH_AS(runServeBench(o), doctest::Contains("bad URL 'localhost:8080'"),
                         std::invalid_argument);
    o.url = "http://127.0.0.1:1";
    o.concurrency = {0};
    CHECK_THROWS_WITH_AS(runServeBench(o), doctest::Contains("concurrency must be >= 1"),
                         std::invalid_argument);
  }
}
