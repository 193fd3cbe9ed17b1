// runtime::Service: stories260K served by the embedded default (in-process workers on loopback)
// with parallel 2 and a queue of 2, driven from other threads as a front end would. Expected
// tokens come from independent runs: the same generation alone through the Service, and a
// coord::Generator over a runtime::Pipeline on the test's own kj loop.
#include "coordinator/generator.hpp"
#include "runtime/model_file.hpp"
#include "runtime/pipeline.hpp"
#include "runtime/service.hpp"
#include "topology/machine.hpp"

#include <doctest/doctest.h>
#include <kj/async-io.h>
#include <prometheus/registry.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace tern;
using namespace std::chrono_literals;

namespace {

const std::string kStories = TERN_TEST_DATA "/stories260K/stories260K.gguf";
constexpr uint32_t kCtx = 256;

runtime::ServiceOptions options(std::shared_ptr<prometheus::Registry> metrics = nullptr) {
  runtime::ServiceOptions o;
  o.nCtx = kCtx;
  o.parallel = 2;
  o.queue = 2;
  o.pipeline.threads = 1;  // the embedded default, one compute thread per worker
  o.metrics = std::move(metrics);
  return o;
}

void waitReady(runtime::Service& s) {
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (s.state() == runtime::Service::State::Loading && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  INFO("load error: ", s.loadError());
  REQUIRE(s.state() == runtime::Service::State::Ready);
}

std::unique_ptr<runtime::Service> ready(runtime::ServiceOptions o = options()) {
  auto s = std::make_unique<runtime::Service>(runtime::openModel(kStories), std::move(o),
                                              topo::Machine::detect());
  waitReady(*s);
  return s;
}

// Waits until pred() (polled) or 30 s; returns pred().
bool eventually(const std::function<bool()>& pred) {
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// What one generation's callbacks saw (they run on the service thread).
struct Record {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<TokenId> ids;
  std::string text;
  int starts = 0, tokens = 0, ends = 0;
  runtime::GenerationEnd end;
  std::function<void(Record&)> onToken;  // extra, on the service thread, under mu

  runtime::Submission submission(const runtime::Generation& g) {
    runtime::Submission s;
    s.gen = g;
    s.cb.onStart = [this] {
      std::lock_guard<std::mutex> lock(mu);
      ++starts;
    };
    s.cb.onToken = [this](const runtime::TokenEvent& ev) {
      std::lock_guard<std::mutex> lock(mu);
      ++tokens;
      if (ev.id >= 0) ids.push_back(ev.id);
      text += ev.text;
      if (onToken) onToken(*this);
    };
    s.cb.onEnd = [this](const runtime::GenerationEnd& e) {
      {
        std::lock_guard<std::mutex> lock(mu);
        ++ends;
        end = e;
      }
      cv.notify_all();
    };
    return s;
  }
  bool waitEnd(std::chrono::seconds t = 30s) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, t, [&] { return ends > 0; });
  }
  int calls() {
    std::lock_guard<std::mutex> lock(mu);
    return starts + tokens + ends;
  }
};

runtime::Generation generation(const Tokenizer& tok, const char* prompt, int maxTokens, bool sample,
                               uint64_t seed = 0) {
  runtime::Generation g;
  g.prompt = tok.encode(prompt, true);
  g.maxTokens = maxTokens;
  if (sample) {
    g.sampling.temperature = 0.9f;
    g.sampling.seed = seed;
    g.sampling.repeatPenalty = 1.1f;
    g.sampling.presencePenalty = 0.4f;
    g.sampling.frequencyPenalty = 0.1f;
  } else {
    g.sampling.temperature = 0;
  }
  return g;
}

// Each generation alone through a Generator over a Pipeline on this thread's own kj loop; the
// ids the Service reports (an end-of-generation id is not a token event).
std::vector<std::vector<TokenId>> generatorTokens(const std::vector<runtime::Generation>& gens) {
  auto io = kj::setupAsyncIo();
  const runtime::OpenedModel model = runtime::openModel(kStories);
  runtime::PipelineOptions po;
  po.threads = 1;
  po.nCtx = kCtx;
  po.maxSequences = 1;
  runtime::Pipeline pipeline(io, model, po, topo::Machine::detect());
  coord::EngineOptions eo;
  eo.nCtx = kCtx;
  coord::Generator gen(model.cfg, *model.tokenizer, pipeline.stages(), io.waitScope, eo);
  std::vector<std::vector<TokenId>> out;
  for (const auto& g : gens) {
    auto ids = gen.generate(g.prompt, g.maxTokens, g.sampling).generated;
    if (!ids.empty() && model.tokenizer->isEog(ids.back())) ids.pop_back();
    out.push_back(ids);
  }
  return out;
}

double gauge(prometheus::Registry& r, const std::string& name) {
  for (const auto& fam : r.Collect()) {
    if (fam.name == name && !fam.metric.empty()) return fam.metric[0].gauge.value;
  }
  FAIL("no metric ", name);
  return -1;
}

// A greedy generation from BOS that runs to the context's end: llama2.c's stories260K reference
// has no end-of-generation id in its first 200 ids.
runtime::Generation longOne() {
  runtime::Generation g;
  g.prompt = {1};
  g.maxTokens = 199;
  g.sampling.temperature = 0;
  return g;
}

}  // namespace

TEST_CASE("service: Loading until the pipeline is up (submit refused with NotReady), then Ready; a failed load") {
  // The pipeline's progress log is called on the service thread while it loads: holding it
  // keeps the service Loading.
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  int logged = 0;
  runtime::ServiceOptions o = options();
  o.pipeline.log = [&](const std::string&) {
    std::unique_lock<std::mutex> lock(mu);
    ++logged;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  };
  const runtime::OpenedModel model = runtime::openModel(kStories);
  const auto g = generation(*model.tokenizer, "Once upon a time", 4, false);
  runtime::Service svc(runtime::openModel(kStories), o, topo::Machine::detect());
  {
    std::unique_lock<std::mutex> lock(mu);
    REQUIRE(cv.wait_for(lock, 30s, [&] { return logged > 0; }));
  }
  CHECK(svc.state() == runtime::Service::State::Loading);
  Record r;
  CHECK_THROWS_WITH_AS(svc.submit({r.submission(g)}), "the model is loading", runtime::NotReady);
  CHECK(svc.load().running == 0);
  svc.cancel(1);  // ignored
  CHECK(svc.stageLines().empty());
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  waitReady(svc);
  CHECK(!svc.stageLines().empty());
  CHECK(svc.nCtx() == kCtx);
  CHECK(svc.parallel() == 2);
  CHECK(svc.submit({r.submission(g)}).size() == 1);
  REQUIRE(r.waitEnd());
  CHECK(r.end.error.empty());
  CHECK(r.ids.size() == 4);

  // A load that fails: Failed, with the reason, and NotReady naming it.
  runtime::ServiceOptions bad = options();
  bad.pipeline.split = "sideways";
  runtime::Service failed(runtime::openModel(kStories), bad, topo::Machine::detect());
  REQUIRE(eventually([&] { return failed.state() != runtime::Service::State::Loading; }));
  CHECK(failed.state() == runtime::Service::State::Failed);
  CHECK(failed.loadError().find("--split must be auto, even or plan") != std::string::npos);
  Record r2;
  CHECK_THROWS_WITH_AS(failed.submit({r2.submission(g)}),
                       ("the model is not loaded: " + failed.loadError()).c_str(), runtime::NotReady);
  CHECK(failed.load().running == 0);
}

TEST_CASE("service: 4 generations submitted from 2 threads at once give what each gives alone") {
  auto svc = ready();
  const Tokenizer& tok = *svc->model().tokenizer;
  const std::vector<runtime::Generation> gens = {
      generation(tok, "Once upon a time", 24, false), generation(tok, "Lily and Tom", 30, true, 11),
      generation(tok, "The cat sat on the", 18, true, 12), generation(tok, "One day, a little boy", 27, false)};
  const auto ref = generatorTokens(gens);

  // Alone through the Service, one at a time.
  std::vector<std::vector<TokenId>> alone;
  std::vector<std::string> aloneText;
  for (const auto& g : gens) {
    Record r;
    svc->submit({r.submission(g)});
    REQUIRE(r.waitEnd());
    CHECK(r.end.error.empty());
    alone.push_back(r.ids);
    aloneText.push_back(r.text);
  }

  // Two threads submit two each at the same moment: 2 run, 2 wait for a slot.
  std::vector<Record> recs(gens.size());
  std::latch go(2);
  std::vector<std::string> errors(2);
  auto client = [&](size_t t) {
    std::vector<runtime::Submission> subs;
    for (size_t i = t; i < gens.size(); i += 2) subs.push_back(recs[i].submission(gens[i]));
    go.arrive_and_wait();
    try {
      svc->submit(std::move(subs));
    } catch (const std::exception& e) {
      errors[t] = e.what();
    }
  };
  std::thread a(client, 0), b(client, 1);
  a.join();
  b.join();
  CHECK(errors[0] == "");
  CHECK(errors[1] == "");
  for (size_t i = 0; i < gens.size(); ++i) {
    CAPTURE(i);
    REQUIRE(recs[i].waitEnd());
    CHECK(recs[i].ends == 1);
    CHECK(recs[i].starts == 1);
    CHECK(recs[i].end.error.empty());
    REQUIRE(!ref[i].empty());
    CHECK(alone[i] == ref[i]);
    CHECK(recs[i].ids == ref[i]);
    CHECK(recs[i].end.genTokens == ref[i].size());
    CHECK(recs[i].end.promptTokens == gens[i].prompt.size());
    CHECK(recs[i].text == aloneText[i]);
    CHECK(!recs[i].text.empty());
  }
  CHECK(eventually([&] { return svc->load().running == 0 && svc->load().waiting == 0; }));
}

TEST_CASE("service: QueueFull past parallel + queue, all or nothing; cancel queued and running") {
  auto svc = ready();
  const Tokenizer& tok = *svc->model().tokenizer;
  // A and B run to their limit (199 tokens) unless cancelled; C and D wait.
  Record a, b, c, d, e, f;
  const auto g = longOne();
  const auto ha = svc->submit({a.submission(g), b.submission(g)});
  REQUIRE(ha.size() == 2);
  const auto hc = svc->submit({c.submission(g)});
  auto l = svc->load();
  CHECK(l.running == 2);
  CHECK(l.waiting == 1);
  // 1 waiting + 2 > queue 2: refused whole, nothing queued.
  CHECK_THROWS_AS(svc->submit({d.submission(g), e.submission(g)}), runtime::QueueFull);
  CHECK(svc->load().waiting == 1);
  const auto hd = svc->submit({d.submission(g)});
  CHECK(svc->load().waiting == 2);
  CHECK_THROWS_AS(svc->submit({e.submission(g)}), runtime::QueueFull);

  // Cancel C while queued: it never starts, D moves up.
  svc->cancel(hc[0]);
  l = svc->load();
  CHECK(l.waiting == 1);
  CHECK(l.running == 2);
  // Cancel A while running: no callback of A after cancel() returns; running drops at once;
  // its slot, once freed on the stages, serves D.
  REQUIRE(eventually([&] { return a.calls() > 3; }));  // A is decoding
  svc->cancel(ha[0]);
  const int aCalls = a.calls();
  // A counts nowhere now: B runs, D waits or (once A's slot is freed) runs.
  l = svc->load();
  CHECK(l.running + l.waiting == 2);
  CHECK(l.running >= 1);
  // F, greedy and short, queues behind D; B is cancelled too once D has started.
  const auto gf = generation(tok, "The sun", 12, false);
  svc->submit({f.submission(gf)});
  REQUIRE(eventually([&] {
    std::lock_guard<std::mutex> lock(d.mu);
    return d.starts == 1;
  }));
  svc->cancel(ha[1]);
  const int bCalls = b.calls();
  REQUIRE(d.waitEnd());
  REQUIRE(f.waitEnd());
  CHECK(eventually([&] { return svc->load().running == 0; }));
  CHECK(a.calls() == aCalls);
  CHECK(b.calls() == bCalls);
  {
    std::lock_guard<std::mutex> la(a.mu), lb(b.mu);
    CHECK(a.ends == 0);
    CHECK(b.ends == 0);
  }
  CHECK(c.calls() == 0);
  CHECK(e.calls() == 0);
  svc->cancel(ha[0]);  // unknown now: ignored
  // D ran in A's slot to its limit with the tokens it gives alone; F as alone too.
  const auto ref = generatorTokens({g, gf});
  CHECK(d.end.error.empty());
  CHECK(d.ids == ref[0]);
  CHECK(d.ids.size() == 199);
  CHECK(f.ids == ref[1]);
  CHECK(a.ids.size() < 199);
  CHECK(std::equal(a.ids.begin(), a.ids.end(), ref[0].begin()));
}

TEST_CASE("service: invalid sampling parameters and prompts are refused whole, nothing queued") {
  auto svc = ready();
  const Tokenizer& tok = *svc->model().tokenizer;
  const auto good = generation(tok, "Once upon a time", 8, false);
  auto bad = good;
  bad.sampling.topP = 0.0f;
  auto pen = good;
  pen.sampling.presencePenalty = 2.5f;
  auto longPrompt = good;
  longPrompt.prompt.assign(kCtx + 1, 1);
  auto empty = good;
  empty.prompt.clear();
  auto neg = good;
  neg.maxTokens = -1;
  auto vocab = good;
  vocab.prompt.push_back(static_cast<TokenId>(svc->model().cfg.nVocab));
  Record r;
  CHECK_THROWS_WITH_AS(svc->submit({r.submission(good), r.submission(bad)}),
                       "sampling: top-p must be in (0, 1], got 0.000000", std::invalid_argument);
  CHECK_THROWS_WITH_AS(svc->submit({r.submission(pen), r.submission(good)}),
                       "sampling: presence penalty must be in [-2, 2], got 2.500000", std::invalid_argument);
  CHECK_THROWS_WITH_AS(svc->submit({r.submission(good), r.submission(longPrompt)}),
                       ("the prompt is " + std::to_string(kCtx + 1) + " tokens, the context is " +
                        std::to_string(kCtx)).c_str(),
                       std::invalid_argument);
  CHECK_THROWS_AS(svc->submit({r.submission(empty)}), std::invalid_argument);
  CHECK_THROWS_AS(svc->submit({r.submission(neg)}), std::invalid_argument);
  CHECK_THROWS_WITH_AS(svc->submit({r.submission(good), r.submission(vocab)}),
                       ("token id " + std::to_string(svc->model().cfg.nVocab) +
                        " is outside the vocabulary of " + std::to_string(svc->model().cfg.nVocab))
                           .c_str(),
                       std::invalid_argument);
  const auto l = svc->load();
  CHECK(l.waiting == 0);
  CHECK(l.running == 0);
  std::this_thread::sleep_for(20ms);
  CHECK(r.calls() == 0);  // the valid ones beside the bad were not queued either
  // A prompt of exactly the context is accepted (it samples one token and stops).
  auto full = good;
  full.prompt.assign(kCtx, 1);
  Record rf;
  svc->submit({rf.submission(full)});
  REQUIRE(rf.waitEnd());
  CHECK(rf.end.error.empty());
  CHECK(rf.end.stop == coord::StopReason::Context);
}

TEST_CASE("service: requests and KV gauges are non-zero mid-generation, zero after") {
  auto registry = std::make_shared<prometheus::Registry>();
  auto svc = ready(options(registry));
  CHECK(gauge(*registry, "tern_requests_running") == 0);
  CHECK(gauge(*registry, "tern_requests_waiting") == 0);
  CHECK(gauge(*registry, "tern_kv_cache_usage_ratio") == 0);
  Record a, b, c;
  double running = -1, kv = -1;
  a.onToken = [&](Record& r) {
    if (r.ids.size() != 5) return;
    running = gauge(*registry, "tern_requests_running");
    kv = gauge(*registry, "tern_kv_cache_usage_ratio");
  };
  const auto g = longOne();
  svc->submit({a.submission(g), b.submission(g), c.submission(g)});
  CHECK(gauge(*registry, "tern_requests_waiting") == 1);
  const auto l = svc->load();
  CHECK(l.waiting == 1);
  REQUIRE(a.waitEnd());
  REQUIRE(b.waitEnd());
  REQUIRE(c.waitEnd());
  CHECK(running == 2);
  // At A's 5th token both sequences hold at least their prompt and 4 fed tokens.
  CHECK(kv >= 2.0 * 4 / (2.0 * kCtx));
  CHECK(kv <= 1.0);
  CHECK(eventually([&] {
    return gauge(*registry, "tern_requests_running") == 0 && gauge(*registry, "tern_kv_cache_usage_ratio") == 0;
  }));
  CHECK(gauge(*registry, "tern_requests_waiting") == 0);
  CHECK(svc->load().kvUsage == 0);
  CHECK(svc->load().running == 0);
}

TEST_CASE("service: cancel right after submit (the sequence still opening) frees its slot; the destructor cancels the rest") {
  auto svc = ready();
  const Tokenizer& tok = *svc->model().tokenizer;
  const auto g = longOne();
  Record a, b;
  const auto h = svc->submit({a.submission(g), b.submission(g)});
  svc->cancel(h[0]);
  const int aAtCancel = a.calls();
  svc->cancel(h[1]);
  const int bAtCancel = b.calls();
  CHECK(svc->load().running == 0);  // at once, even where a sequence is still opening
  // Both slots come back: two more run side by side and give their solo tokens.
  const auto gx = generation(tok, "Tom and Sue", 15, true, 5), gy = generation(tok, "Mom said", 15, false);
  Record x, y;
  CHECK(eventually([&] {
    try {
      svc->submit({x.submission(gx), y.submission(gy)});
      return true;
    } catch (const runtime::QueueFull&) {
      return false;
    }
  }));
  REQUIRE(x.waitEnd());
  REQUIRE(y.waitEnd());
  const auto ref = generatorTokens({gx, gy});
  CHECK(x.ids == ref[0]);
  CHECK(y.ids == ref[1]);
  CHECK(a.calls() == aAtCancel);  // nothing after cancel() returned
  CHECK(b.calls() == bAtCancel);
  {
    std::lock_guard<std::mutex> la(a.mu), lb(b.mu);
    CHECK(a.ends == 0);
    CHECK(b.ends == 0);
  }

  // Destroyed mid-generation: no callback after the destructor returns.
  Record c, d, e;
  svc->submit({c.submission(g), d.submission(g), e.submission(g)});
  REQUIRE(eventually([&] { return c.calls() > 3; }));
  svc.reset();
  const int cc = c.calls(), dc = d.calls(), ec = e.calls();
  std::this_thread::sleep_for(50ms);
  CHECK(c.calls() == cc);
  CHECK(d.calls() == dc);
  CHECK(e.calls() == ec);
  std::lock_guard<std::mutex> lock(c.mu);
  CHECK(c.ends == 0);
  CHECK(c.ids.size() < 199);
}
