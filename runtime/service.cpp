#include "runtime/service.hpp"

#include "coordinator/metrics.hpp"

#include <kj/async-io.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <condition_variable>
#include <mutex>
#include <deque>
#include <map>

namespace tern::runtime {
namespace {

// log-softmax of one logits row at `id`, and the `n` most likely ids with theirs.
void logprobs(std::span<const float> row, TokenId id, int n, TokenEvent& ev) {
  float mx = -INFINITY;
  for (float x : row) mx = std::max(mx, x);
  double sum = 0;
  for (float x : row) sum += std::exp(static_cast<double>(x - mx));
  const double lse = static_cast<double>(mx) + std::log(sum);
  ev.logprob = static_cast<float>(static_cast<double>(row[static_cast<size_t>(id)]) - lse);
  if (n <= 0) return;
  std::vector<TokenId> ids(row.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<TokenId>(i);
  const size_t k = std::min(ids.size(), static_cast<size_t>(n));
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(),
                    [&](TokenId a, TokenId b) {
                      const float xa = row[static_cast<size_t>(a)], xb = row[static_cast<size_t>(b)];
                      return xa != xb ? xa > xb : a < b;
                    });
  for (size_t i = 0; i < k; ++i) {
    ev.top.emplace_back(ids[i], static_cast<float>(row[static_cast<size_t>(ids[i])] - lse));
  }
}

}  // namespace

// The service thread's state: the engine and the generations. Touched only on that thread.
struct Service::Core final : public kj::TaskSet::ErrorHandler {
  struct Job {
    Submission sub;
    enum class Phase { Waiting, Opening, Running } phase = Phase::Waiting;
    uint64_t seq = 0;
    std::string text;  // text since the last token event
  };

  Core(coord::Engine& engine, const ServiceOptions& opts, uint32_t nCtx)
      : engine(engine), opts(opts), nCtx(nCtx), tasks(*this) {
    if (opts.metrics) {
      auto gauge = [&](const char* name, const char* help) {
        return &prometheus::BuildGauge().Name(name).Help(help).Register(*opts.metrics).Add({});
      };
      waitingGauge = gauge("tern_requests_waiting",
                           "Generations (one per sequence) waiting in the queue for a slot");
      runningGauge = gauge("tern_requests_running",
                           "Generations (one per sequence) with a sequence open in the pipeline");
      kvGauge = gauge("tern_kv_cache_usage_ratio",
                      "KV cache positions held by open sequences / (parallel x context)");
    }
  }

  void taskFailed(kj::Exception&& e) override {
    std::fprintf(stderr, "tern service: %s\n", e.getDescription().cStr());
  }

  Job* find(uint64_t h) {
    auto it = jobs.find(h);
    return it == jobs.end() ? nullptr : &it->second;
  }

  size_t slotsUsed() const { return active + abandoned + closing; }

  void gauges() {
    if (waitingGauge) waitingGauge->Set(static_cast<double>(waiting.size()));
    if (runningGauge) runningGauge->Set(static_cast<double>(active));
    if (kvGauge) {
      const double cap = static_cast<double>(opts.parallel) * nCtx;
      kvGauge->Set(cap > 0 ? static_cast<double>(engine.positionsHeld()) / cap : 0.0);
    }
  }

  std::vector<uint64_t> submit(std::vector<Submission> subs) {
    // Bad input is refused first, whatever the load.
    for (const auto& s : subs) {
      s.gen.sampling.validate();
      if (s.gen.prompt.empty()) throw std::invalid_argument("the prompt is empty");
      if (s.gen.prompt.size() > nCtx) {
        throw std::invalid_argument("the prompt is " + std::to_string(s.gen.prompt.size()) +
                                    " tokens, the context is " + std::to_string(nCtx));
      }
      if (s.gen.maxTokens < 0) throw std::invalid_argument("max tokens must be >= 0");
      for (TokenId id : s.gen.prompt) {
        if (id < 0 || static_cast<uint32_t>(id) >= nVocab) {
          throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary of " +
                                      std::to_string(nVocab));
        }
      }
    }
    // The free slots take generations at once; the queue holds the rest. Admission counts
    // generations (running + waiting <= parallel + queue): a slot whose sequence is still being
    // closed belongs to a generation that has ended (its onEnd already ran) and is free in a
    // moment, so it must not shrink the room a client sees right after an end. Such waiters
    // start when the close completes (pump()).
    const size_t free = opts.parallel - std::min<size_t>(opts.parallel, active);
    if (waiting.size() + subs.size() > opts.queue + free) {
      throw QueueFull("the server is busy: " + std::to_string(active) + " generations running, " +
                      std::to_string(waiting.size()) + " waiting (queue of " +
                      std::to_string(opts.queue) + ")");
    }
    std::vector<uint64_t> handles;
    for (auto& s : subs) {
      const uint64_t h = ++nextHandle;
      Job j;
      j.sub = std::move(s);
      jobs.emplace(h, std::move(j));
      waiting.push_back(h);
      handles.push_back(h);
    }
    pump();
    return handles;
  }

  // Starts waiting generations while slots are free.
  void pump() {
    while (!waiting.empty() && slotsUsed() < opts.parallel) {
      const uint64_t h = waiting.front();
      waiting.pop_front();
      Job* j = find(h);
      if (!j) continue;
      j->phase = Job::Phase::Opening;
      ++active;
      tasks.add(engine.openAsync(j->sub.gen.sampling)
                    .then([this, h](uint64_t seq) { opened(h, seq); },
                          [this, h](kj::Exception&& e) {
                            if (find(h)) {
                              --active;
                            } else {
                              --abandoned;  // cancelled while opening
                            }
                            fail(h, e.getDescription().cStr());
                            pump();
                          }));
    }
    gauges();
  }

  void opened(uint64_t h, uint64_t seq) {
    Job* j = find(h);
    if (!j) {  // cancelled while opening
      --abandoned;
      closeSeq(seq);
      return;
    }
    j->seq = seq;
    j->phase = Job::Phase::Running;
    if (j->sub.cb.onStart) j->sub.cb.onStart();
    coord::GenerateCallbacks gc;
    gc.onText = [this, h](std::string_view t) {
      if (Job* j = find(h)) j->text += t;
    };
    gc.onSample = [this, h](TokenId id, std::span<const float> row) {
      Job* j = find(h);
      if (!j) return;
      const Tokenizer& tok = *this->modelTokenizer;
      if (tok.isEog(id)) return;
      TokenEvent ev;
      ev.id = id;
      ev.text = std::exchange(j->text, {});
      if (j->sub.gen.topLogprobs >= 0) logprobs(row, id, j->sub.gen.topLogprobs, ev);
      if (j->sub.cb.onToken) j->sub.cb.onToken(ev);
      if (kvGauge) gauges();
    };
    try {
      engine.feed(seq, j->sub.gen.prompt, j->sub.gen.maxTokens, std::move(gc),
                  [this, h](const coord::TurnResult& r) { ended(h, r); });
    } catch (const std::exception& e) {
      GenerationCallbacks cb = std::move(j->sub.cb);
      finish(h);
      GenerationEnd end;
      end.error = e.what();
      if (cb.onEnd) cb.onEnd(end);
    }
    gauges();
  }

  void ended(uint64_t h, const coord::TurnResult& r) {
    Job* j = find(h);
    if (!j) return;
    GenerationCallbacks cb = std::move(j->sub.cb);
    std::string rest = std::exchange(j->text, {});
    finish(h);
    if (!rest.empty() && cb.onToken) {
      TokenEvent ev;
      ev.text = std::move(rest);
      cb.onToken(ev);
    }
    GenerationEnd end;
    end.stop = r.stop;
    end.promptTokens = r.promptTokens;
    end.genTokens = r.genTokens;
    end.error = r.error;
    if (cb.onEnd) cb.onEnd(end);
  }

  // A generation that could not start: its end, with the error.
  void fail(uint64_t h, const std::string& msg) {
    Job* j = find(h);
    if (!j) return;
    GenerationCallbacks cb = std::move(j->sub.cb);
    jobs.erase(h);
    GenerationEnd end;
    end.error = msg;
    if (cb.onEnd) cb.onEnd(end);
    gauges();
  }

  // Removes a job and frees its sequence (if it has one).
  void finish(uint64_t h) {
    Job* j = find(h);
    if (!j) return;
    if (j->phase == Job::Phase::Running) {
      --active;
      closeSeq(j->seq);
    } else if (j->phase == Job::Phase::Waiting) {
      waiting.erase(std::remove(waiting.begin(), waiting.end(), h), waiting.end());
    } else {  // Opening: no longer a generation; opened() finds no job and closes the sequence
      --active;
      ++abandoned;
    }
    jobs.erase(h);
    gauges();
  }

  void closeSeq(uint64_t seq) {
    ++closing;
    tasks.add(engine.closeAsync(seq).then(
        [this] {
          --closing;
          pump();
        },
        [this](kj::Exception&& e) {
          --closing;
          std::fprintf(stderr, "tern service: closing a sequence: %s\n", e.getDescription().cStr());
          pump();
        }));
  }

  void cancel(uint64_t h) { finish(h); }

  Load load() {
    Load l;
    l.waiting = waiting.size();
    l.running = active;
    const double cap = static_cast<double>(opts.parallel) * nCtx;
    l.kvUsage = cap > 0 ? static_cast<double>(engine.positionsHeld()) / cap : 0.0;
    return l;
  }

  coord::Engine& engine;
  const ServiceOptions& opts;
  uint32_t nCtx;
  const Tokenizer* modelTokenizer = nullptr;
  uint32_t nVocab = 0;  // prompt ids must be below it
  std::map<uint64_t, Job> jobs;
  std::deque<uint64_t> waiting;
  size_t active = 0;   // jobs opening or running
  size_t abandoned = 0;  // sequences opening for a job cancelled meanwhile (slots not free yet)
  size_t closing = 0;  // sequences being closed (their slots are not free yet)
  uint64_t nextHandle = 0;
  prometheus::Gauge* waitingGauge = nullptr;
  prometheus::Gauge* runningGauge = nullptr;
  prometheus::Gauge* kvGauge = nullptr;
  kj::TaskSet tasks;
};

Service::Service(OpenedModel model, ServiceOptions opts, topo::Machine machine)
    : model_(std::move(model)), opts_(std::move(opts)), machine_(std::move(machine)) {
  if (opts_.parallel == 0) throw std::invalid_argument("--parallel must be >= 1");
  nCtx_ = opts_.nCtx ? opts_.nCtx : contextSize(model_.cfg, 0);
  opts_.pipeline.nCtx = nCtx_;
  opts_.pipeline.maxSequences = opts_.parallel;
  if (opts_.metrics && !opts_.pipeline.metrics) opts_.pipeline.metrics = opts_.metrics;
  std::mutex started;
  std::condition_variable cv;
  bool up = false;
  thread_ = std::thread([&] {
    auto io = kj::setupAsyncIo();
    auto stop = kj::newPromiseAndCrossThreadFulfiller<void>();
    {
      std::lock_guard<std::mutex> lock(started);
      executor_ = &kj::getCurrentThreadExecutor();
      stop_ = kj::mv(stop.fulfiller);
      up = true;
    }
    cv.notify_all();
    bool stopped = false;
    try {
      Pipeline pipeline(io, model_, opts_.pipeline, machine_);
      coord::EngineOptions eo;
      eo.nCtx = nCtx_;
      eo.metrics = opts_.metrics;
      coord::Engine engine(model_.cfg, *model_.tokenizer, pipeline.stages(), io.waitScope, eo);
      auto lines = describeStages(pipeline.cluster(), pipeline.shards(), engine.hello());
      engine.serve();
      Core core(engine, opts_, nCtx_);
      core.modelTokenizer = model_.tokenizer.get();
      core.nVocab = model_.cfg.nVocab;
      core.gauges();
      {
        std::lock_guard<std::mutex> lock(mu_);
        stageLines_ = std::move(lines);
        core_ = &core;
      }
      state_ = State::Ready;
      stop.promise.wait(io.waitScope);
      stopped = true;
      state_ = State::Failed;
      {
        std::lock_guard<std::mutex> lock(mu_);
        core_ = nullptr;
        loadError_ = "the service is stopping";
      }
      core.jobs.clear();  // no more callbacks
      core.waiting.clear();
    } catch (const kj::Exception& e) {
      std::lock_guard<std::mutex> lock(mu_);
      loadError_ = e.getDescription().cStr();
      state_ = State::Failed;
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mu_);
      loadError_ = e.what();
      state_ = State::Failed;
    }
    if (!stopped) {
      // A failed load waits for the destructor (calls see Failed meanwhile).
      try {
        stop.promise.wait(io.waitScope);
      } catch (...) {
      }
    }
  });
  std::unique_lock<std::mutex> lock(started);
  cv.wait(lock, [&] { return up; });
}

Service::~Service() { stop(); }

void Service::stop() {
  std::lock_guard<std::mutex> lock(stopMu_);
  if (stop_) {
    stop_->fulfill();
    stop_ = nullptr;
  }
  if (thread_.joinable()) thread_.join();
}

std::string Service::loadError() const {
  std::lock_guard<std::mutex> lock(mu_);
  return loadError_;
}

std::vector<std::string> Service::stageLines() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stageLines_;
}

template <typename F>
auto Service::onLoop(F&& f) -> decltype(f()) {
  if (state_.load() != State::Ready) {
    throw NotReady(state_.load() == State::Loading ? "the model is loading"
                                                   : "the model is not loaded: " + loadError());
  }
  return executor_->executeSync([&]() -> decltype(f()) {
    if (core_ == nullptr) throw NotReady("the service is stopping");
    return f();
  });
}

std::vector<uint64_t> Service::submit(std::vector<Submission> subs) {
  // Exceptions thrown on the loop thread come back as kj exceptions; rethrow ours as they were.
  std::exception_ptr err;
  std::vector<uint64_t> handles = onLoop([&] {
    try {
      return core_->submit(std::move(subs));
    } catch (...) {
      err = std::current_exception();
      return std::vector<uint64_t>{};
    }
  });
  if (err) std::rethrow_exception(err);
  return handles;
}

void Service::cancel(uint64_t handle) {
  if (state_.load() != State::Ready) return;
  try {
    onLoop([&] { core_->cancel(handle); });
  } catch (...) {  // stopping: nothing is left to cancel
  }
}

Service::Load Service::load() {
  if (state_.load() != State::Ready) return {};
  return onLoop([&] { return core_->load(); });
}

}  // namespace tern::runtime
