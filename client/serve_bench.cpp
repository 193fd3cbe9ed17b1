#include "client/serve_bench.hpp"

#include "client/http_client.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <exception>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>

namespace tern::client {

namespace asio = boost::asio;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// Common English words that are one token (with their leading space) in the Llama-2, Llama-3
// and GPT-2 vocabularies, so a prompt of P words is about P tokens.
constexpr const char* kWords[] = {
    "the",   "of",   "and",  "to",    "in",    "is",   "was",   "that",  "for",   "on",
    "it",    "with", "as",   "by",    "at",    "from", "his",   "an",    "were",  "are",
    "which", "this", "be",   "or",    "has",   "had",  "first", "one",   "their", "its",
    "new",   "after", "but",  "who",   "not",   "they", "have",  "her",   "she",   "two",
    "been",  "other", "when", "there", "all",   "during", "into", "school", "time", "may",
    "years", "more", "most", "only",  "over",  "city", "some",  "world", "would", "where",
    "later", "up",   "such", "used",  "many",  "can",  "state", "about", "national", "out",
    "known", "under", "made", "these", "small", "day",  "house", "good",  "little", "big"};

std::string textPrompt(int words, std::mt19937_64& rng) {
  std::uniform_int_distribution<size_t> pick(0, std::size(kWords) - 1);
  std::string s;
  for (int i = 0; i < words; ++i) {
    if (i) s += ' ';
    s += kWords[pick(rng)];
  }
  return s;
}

json idPrompt(int tokens, int lo, int hi, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> pick(lo, hi);
  json a = json::array();
  for (int i = 0; i < tokens; ++i) a.push_back(pick(rng));
  return a;
}

const json* member(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  const auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

std::string oneLine(std::string s, size_t max = 200) {
  for (char& c : s) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  while (!s.empty() && s.back() == ' ') s.pop_back();
  if (s.size() > max) s = s.substr(0, max) + "...";
  return s;
}

// The message of an OpenAI-style error object ({"error": {"message": ...}}, {"error": "..."},
// {"message": ...}), else the text itself.
std::string errorMessage(const std::string& text) {
  const json j = json::parse(text, nullptr, false);
  if (!j.is_discarded()) {
    if (const json* e = member(j, "error")) {
      if (e->is_string()) return oneLine(e->get<std::string>());
      if (const json* m = member(*e, "message"); m && m->is_string()) {
        return oneLine(m->get<std::string>());
      }
      return oneLine(e->dump());
    }
    if (const json* m = member(j, "message"); m && m->is_string()) return oneLine(m->get<std::string>());
  }
  return text.empty() ? "(empty body)" : oneLine(text);
}

std::string statusError(const HttpResponse& r) {
  return "HTTP " + std::to_string(r.status) + ": " + errorMessage(r.body);
}

// Reads one streamed response: SSE events into token times, usage and errors.
class StreamReader {
 public:
  StreamReader(Endpoint endpoint, Clock::time_point start)
      : endpoint_(endpoint), start_(start), sse_([this](const SseParser::Event& e) { event(e); }) {}

  void head(unsigned status, const std::string& contentType) {
    status_ = status;
    contentType_ = contentType;
  }

  void body(std::string_view piece) {
    if (status_ == 200) {
      sse_.feed(piece);
    } else if (errorBody_.size() < 65536) {
      errorBody_.append(piece);
    }
  }

  RequestSample finish(const HttpResponse& r) {
    RequestSample s;
    sse_.finish();
    if (!r.error.empty()) {
      s.error = error_.empty() ? r.error : error_;
    } else if (r.status != 200) {
      HttpResponse withBody = r;
      withBody.body = errorBody_;
      s.error = statusError(withBody);
    } else if (!error_.empty()) {
      s.error = error_;
    } else if (!done_) {
      s.error = "stream ended without 'data: [DONE]'";
      if (contentType_.find("text/event-stream") == std::string::npos) {
        s.error += " (Content-Type: " + (contentType_.empty() ? "none" : contentType_) + ")";
      }
    }
    s.ok = s.error.empty();
    s.usageReported = usageTokens_ >= 0;
    s.outputTokens = s.usageReported ? usageTokens_ : contentChunks_;
    if (contentChunks_ > 0) s.ttftMs = ms(first_ - start_);
    if (contentChunks_ >= 2 && s.outputTokens >= 2) {
      s.tpotMs = ms(last_ - first_) / (s.outputTokens - 1);
    }
    return s;
  }

 private:
  void event(const SseParser::Event& e) {
    if (done_ || !error_.empty()) return;
    if (e.data == "[DONE]") {
      done_ = true;
      return;
    }
    if (e.event == "error") {
      error_ = "error event: " + errorMessage(e.data);
      return;
    }
    const json j = json::parse(e.data, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      error_ = "malformed event (not a JSON object): " + oneLine(e.data, 80);
      return;
    }
    if (member(j, "error")) {
      error_ = "error event: " + errorMessage(e.data);
      return;
    }
    if (const json* choices = member(j, "choices"); choices && choices->is_array() && !choices->empty()) {
      const json& c = (*choices)[0];
      bool token = false;
      if (endpoint_ == Endpoint::Completions) {
        const json* t = member(c, "text");
        token = t && t->is_string() && !t->get_ref<const std::string&>().empty();
      } else if (const json* d = member(c, "delta")) {
        for (const char* key : {"content", "reasoning_content"}) {
          const json* t = member(*d, key);
          token = token || (t && t->is_string() && !t->get_ref<const std::string&>().empty());
        }
      }
      if (token) {
        const auto now = Clock::now();
        if (contentChunks_ == 0) first_ = now;
        last_ = now;
        ++contentChunks_;
      }
    }
    if (const json* u = member(j, "usage"); u && u->is_object()) {
      if (const json* n = member(*u, "completion_tokens"); n && n->is_number_integer()) {
        usageTokens_ = n->get<int>();
      }
    }
  }

  Endpoint endpoint_;
  Clock::time_point start_;
  SseParser sse_;
  unsigned status_ = 0;
  std::string contentType_;
  std::string errorBody_;
  std::string error_;
  bool done_ = false;
  int contentChunks_ = 0;
  int usageTokens_ = -1;
  Clock::time_point first_{}, last_{};
};

// One (prompt length, concurrency) test, shared by its client loops (all on one thread).
struct Level {
  const ServeBenchOptions& o;
  const Url& url;
  std::string model;
  int promptTokens = 0;
  int concurrency = 0;
  Clock::time_point start, deadline, lastEnd;
  int budget = -1;  // requests left to start; -1 = no count bound
  std::vector<RequestSample> samples;
  std::string firstError;
  const std::function<void(const std::string&)>& log;
  int active = 0;                         // client loops still running
  asio::steady_timer* ticker = nullptr;   // the progress timer, cancelled by the last loop
};

// Ends a client loop however it ends; the last one stops the progress ticker.
struct LoopGuard {
  Level& L;
  ~LoopGuard() {
    if (--L.active == 0 && L.ticker) L.ticker->cancel();
  }
};

// A progress line every 5 s while the client loops run.
asio::awaitable<void> progress(Level& L) {
  asio::steady_timer t(co_await asio::this_coro::executor);
  L.ticker = &t;
  while (L.active > 0) {
    t.expires_after(std::chrono::seconds(5));
    boost::system::error_code ec;
    co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (L.active == 0) break;
    int errors = 0;
    for (const RequestSample& s : L.samples) errors += !s.ok;
    L.log(format("bench serve: prompt %d, concurrency %d: %.0f s, %zu requests done, %d errors",
                 L.promptTokens, L.concurrency,
                 std::chrono::duration<double>(Clock::now() - L.start).count(), L.samples.size(),
                 errors));
  }
  L.ticker = nullptr;
}

std::string requestBody(const Level& L, std::mt19937_64& rng) {
  const ServeBenchOptions& o = L.o;
  json b;
  b["model"] = L.model;
  b["max_tokens"] = o.maxTokens;
  b["temperature"] = o.temperature;
  b["stream"] = true;
  b["stream_options"] = {{"include_usage", true}};
  if (o.ignoreEos) b["ignore_eos"] = true;
  if (o.endpoint == Endpoint::Chat) {
    b["messages"] = json::array({{{"role", "user"}, {"content", textPrompt(L.promptTokens, rng)}}});
  } else if (o.textPrompts) {
    b["prompt"] = textPrompt(L.promptTokens, rng);
  } else {
    b["prompt"] = idPrompt(L.promptTokens, o.tokenIdMin, o.tokenIdMax, rng);
  }
  return b.dump();
}

asio::awaitable<void> clientLoop(Level& L, int client) {
  LoopGuard guard{L};
  const ServeBenchOptions& o = L.o;
  HttpClient http(co_await asio::this_coro::executor, L.url, o.apiKey,
                  std::chrono::milliseconds(static_cast<long long>(o.timeoutS * 1000)));
  std::seed_seq seq{o.seed, static_cast<uint64_t>(L.promptTokens), static_cast<uint64_t>(L.concurrency),
                    static_cast<uint64_t>(client)};
  std::mt19937_64 rng(seq);
  const std::string target =
      o.endpoint == Endpoint::Chat ? "/v1/chat/completions" : "/v1/completions";
  for (;;) {
    if (o.durationS > 0 && Clock::now() >= L.deadline) break;
    if (L.budget == 0) break;
    if (L.budget > 0) --L.budget;
    std::string body = requestBody(L, rng);
    const auto start = Clock::now();
    StreamReader reader(o.endpoint, start);
    const HttpResponse r = co_await http.request(
        "POST", target, std::move(body), [&reader](std::string_view p) { reader.body(p); },
        [&reader](unsigned status, const std::string& ct) { reader.head(status, ct); });
    RequestSample s = reader.finish(r);
    L.lastEnd = std::max(L.lastEnd, Clock::now());
    if (!s.ok && L.firstError.empty()) {
      L.firstError = s.error;
      if (L.log) {
        L.log(format("bench serve: prompt %d, concurrency %d: first error: %s", L.promptTokens,
                     L.concurrency, s.error.c_str()));
      }
    }
    L.samples.push_back(std::move(s));
  }
}

// Runs a coroutine to completion on ioc and returns its value (rethrowing its exception).
template <class T>
T runToEnd(asio::io_context& ioc, asio::awaitable<T> a) {
  std::optional<T> out;
  std::exception_ptr err;
  asio::co_spawn(ioc, std::move(a), [&](std::exception_ptr e, T v) {
    err = e;
    if (!e) out = std::move(v);
  });
  ioc.restart();
  ioc.run();
  if (err) std::rethrow_exception(err);
  return std::move(*out);
}

asio::awaitable<HttpResponse> getModels(const Url& url, const ServeBenchOptions& o) {
  HttpClient http(co_await asio::this_coro::executor, url, o.apiKey,
                  std::chrono::milliseconds(static_cast<long long>(o.timeoutS * 1000)));
  co_return co_await http.request("GET", "/v1/models");
}

ServeBenchRow summarize(const Level& L) {
  ServeBenchRow row;
  row.concurrency = L.concurrency;
  row.promptTokens = L.promptTokens;
  row.firstError = L.firstError;
  row.elapsedS = std::chrono::duration<double>(L.lastEnd - L.start).count();
  std::vector<double> ttft, tpot;
  for (const RequestSample& s : L.samples) {
    if (!s.ok) {
      ++row.errors;
      continue;
    }
    ++row.requests;
    row.outputTokens += s.outputTokens;
    if (s.ttftMs >= 0) ttft.push_back(s.ttftMs);
    if (s.tpotMs >= 0) tpot.push_back(s.tpotMs);
  }
  if (row.elapsedS > 0) {
    row.requestsPerS = row.requests / row.elapsedS;
    row.outputTokensPerS = row.outputTokens / row.elapsedS;
  }
  row.ttftP50Ms = percentile(ttft, 50);
  row.ttftP99Ms = percentile(ttft, 99);
  row.tpotP50Ms = percentile(tpot, 50);
  row.tpotP99Ms = percentile(tpot, 99);
  return row;
}

void checkOptions(const ServeBenchOptions& o) {
  const auto bad = [](const std::string& what) { throw std::invalid_argument("bench serve: " + what); };
  if (o.concurrency.empty()) bad("empty concurrency list");
  for (int c : o.concurrency) {
    if (c < 1) bad("concurrency must be >= 1 (got " + std::to_string(c) + ")");
  }
  if (o.promptTokens.empty()) bad("empty prompt length list");
  for (int p : o.promptTokens) {
    if (p < 1) bad("prompt tokens must be >= 1 (got " + std::to_string(p) + ")");
  }
  if (o.tokenIdMin < 0 || o.tokenIdMax < o.tokenIdMin) {
    bad("token ids need 0 <= min <= max (got " + std::to_string(o.tokenIdMin) + "-" +
        std::to_string(o.tokenIdMax) + ")");
  }
  if (o.maxTokens < 1) bad("max tokens must be >= 1 (got " + std::to_string(o.maxTokens) + ")");
  if (!(o.durationS >= 0)) bad("duration must be >= 0");
  if (o.requests < 0) bad("requests must be >= 0");
  if (o.durationS == 0 && o.requests == 0) bad("give a duration or a request count");
  if (!(o.timeoutS > 0)) bad("timeout must be > 0");
}

}  // namespace

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(values.begin(), values.end());
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  const double frac = rank - static_cast<double>(lo);
  return values[lo] + (values[hi] - values[lo]) * frac;
}

ServeBenchReport runServeBench(const ServeBenchOptions& o,
                               const std::function<void(const std::string&)>& log) {
  checkOptions(o);
  const Url url = parseUrl(o.url);
  asio::io_context ioc;

  // Reach the server first (a clear error instead of a table of failures) and find the model.
  const HttpResponse models = runToEnd(ioc, getModels(url, o));
  if (!models.error.empty()) throw std::runtime_error("bench serve: " + models.error);
  ServeBenchReport report;
  report.url = o.url;
  report.endpoint = o.endpoint == Endpoint::Chat ? "chat" : "completions";
  report.maxTokens = o.maxTokens;
  report.model = o.model;
  if (report.model.empty()) {
    if (models.status != 200) {
      throw std::runtime_error("bench serve: GET /v1/models on " + url.hostPort() + ": " +
                               statusError(models));
    }
    const json j = json::parse(models.body, nullptr, false);
    const json* data = j.is_discarded() ? nullptr : member(j, "data");
    const json* id = data && data->is_array() && !data->empty() ? member((*data)[0], "id") : nullptr;
    if (!id || !id->is_string()) {
      throw std::runtime_error("bench serve: GET /v1/models on " + url.hostPort() +
                               " lists no model id (give --model): " + oneLine(models.body, 120));
    }
    report.model = id->get<std::string>();
  }
  if (log) log("bench serve: " + url.hostPort() + ", model '" + report.model + "', /v1/" +
               (o.endpoint == Endpoint::Chat ? "chat/completions" : "completions"));

  for (int p : o.promptTokens) {
    for (int c : o.concurrency) {
      Level L{o, url, report.model, p, c, {}, {}, {}, o.requests > 0 ? o.requests : -1, {}, {}, log};
      if (log) {
        std::string bound = o.durationS > 0 ? format("%.0f s", o.durationS) : std::string();
        if (o.requests > 0) bound += (bound.empty() ? "" : " or ") + std::to_string(o.requests) + " requests";
        log(format("bench serve: prompt %d tokens, concurrency %d, %s ...", p, c, bound.c_str()));
      }
      L.start = Clock::now();
      L.lastEnd = L.start;
      L.deadline = L.start + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(o.durationS));
      std::exception_ptr err;
      L.active = c;
      for (int i = 0; i < c; ++i) {
        asio::co_spawn(ioc, clientLoop(L, i), [&err](std::exception_ptr e) {
          if (e && !err) err = e;
        });
      }
      if (log) asio::co_spawn(ioc, progress(L), asio::detached);
      ioc.restart();
      ioc.run();
      if (err) std::rethrow_exception(err);
      ServeBenchRow row = summarize(L);
      if (log) {
        log(format("bench serve: prompt %d, concurrency %d: %d requests, %d errors, %.2f req/s, "
                   "%.1f output tokens/s",
                   p, c, row.requests, row.errors, row.requestsPerS, row.outputTokensPerS));
      }
      report.rows.push_back(std::move(row));
    }
  }
  return report;
}

namespace {
std::string msCell(double v) { return std::isnan(v) ? "-" : format("%.1f", v); }
json msJson(double v) { return std::isnan(v) ? json(nullptr) : json(v); }
}  // namespace

std::string formatServeMarkdown(const ServeBenchReport& r) {
  std::string out = "server " + r.url + " | model " + r.model + " | /v1/" +
                    (r.endpoint == "chat" ? "chat/completions" : "completions") +
                    " | max_tokens " + std::to_string(r.maxTokens) + "\n\n";
  out += "| concurrency | prompt tokens | requests | requests/s | output t/s | TTFT p50 (ms) | "
         "TTFT p99 (ms) | TPOT p50 (ms) | TPOT p99 (ms) | errors |\n";
  out += "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  for (const ServeBenchRow& row : r.rows) {
    out += format("| %d | %d | %d | %.2f | %.1f | %s | %s | %s | %s | %d |\n", row.concurrency,
                  row.promptTokens, row.requests, row.requestsPerS, row.outputTokensPerS,
                  msCell(row.ttftP50Ms).c_str(), msCell(row.ttftP99Ms).c_str(),
                  msCell(row.tpotP50Ms).c_str(), msCell(row.tpotP99Ms).c_str(), row.errors);
  }
  bool header = false;
  for (const ServeBenchRow& row : r.rows) {
    if (row.errors == 0) continue;
    if (!header) out += "\n";
    header = true;
    out += "errors at concurrency " + std::to_string(row.concurrency) + ", prompt " +
           std::to_string(row.promptTokens) + ": " + std::to_string(row.errors) + ", the first: " +
           row.firstError + "\n";
  }
  return out;
}

std::string formatServeJson(const ServeBenchReport& r) {
  json arr = json::array();
  for (const ServeBenchRow& row : r.rows) {
    json j;
    j["url"] = r.url;
    j["model"] = r.model;
    j["endpoint"] = r.endpoint;
    j["max_tokens"] = r.maxTokens;
    j["concurrency"] = row.concurrency;
    j["prompt_tokens"] = row.promptTokens;
    j["requests"] = row.requests;
    j["requests_per_s"] = row.requestsPerS;
    j["output_tokens"] = row.outputTokens;
    j["output_tokens_per_s"] = row.outputTokensPerS;
    j["ttft_p50_ms"] = msJson(row.ttftP50Ms);
    j["ttft_p99_ms"] = msJson(row.ttftP99Ms);
    j["tpot_p50_ms"] = msJson(row.tpotP50Ms);
    j["tpot_p99_ms"] = msJson(row.tpotP99Ms);
    j["errors"] = row.errors;
    j["elapsed_s"] = row.elapsedS;
    j["first_error"] = row.firstError.empty() ? json(nullptr) : json(row.firstError);
    arr.push_back(std::move(j));
  }
  return arr.dump(2) + "\n";
}

}  // namespace tern::client
