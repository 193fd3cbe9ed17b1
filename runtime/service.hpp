// A model being served: the pipeline (embedded default or --workers) and the coordinator's Engine
// in serving mode, on a kj event loop thread of their own, behind a thread-safe interface for
// front ends such as the HTTP server (server/).
//
// Threads: the constructor starts the service thread, which builds the pipeline (loading may take
// minutes; state() says Loading meanwhile) and then turns its kj event loop forever. Every call
// below may be made from any thread: it crosses into the service thread through kj::Executor
// (executeSync, a few microseconds when the loop is idle). Callbacks run on the service thread and
// must be quick (hand the event to the caller's own thread, e.g. with asio::post).
//
// Admission: at most `parallel` sequences are open on the stages at once (each holds nCtx KV
// positions on every stage); further generations wait in a FIFO. A submission is refused whole
// (QueueFull) when running + waiting generations would exceed parallel + `queue`; a generation
// that has ended counts no more, although its slot is free only once the stages have closed its
// sequence (a waiting generation starts then).
#pragma once

#include "coordinator/engine.hpp"
#include "coordinator/sampler.hpp"
#include "runtime/model_file.hpp"
#include "runtime/pipeline.hpp"
#include "topology/machine.hpp"

#include <atomic>
#include <mutex>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace prometheus {
class Gauge;
class Registry;
}  // namespace prometheus

namespace tern::runtime {

struct ServiceOptions {
  PipelineOptions pipeline;  // nCtx and maxSequences are set from the fields below
  uint32_t nCtx = 0;         // positions per sequence (0: contextSize(cfg, 0))
  uint32_t parallel = 8;     // sequences generating at once
  uint32_t queue = 64;       // generations waiting for a slot
  std::shared_ptr<prometheus::Registry> metrics;  // service gauges + the coordinator's; may be null
};

// One sequence to generate.
struct Generation {
  std::vector<TokenId> prompt;     // fed as is (the caller adds BOS / renders templates)
  int maxTokens = 16;              // sampled tokens at most (an end-of-generation id ends sooner)
  coord::SamplingParams sampling;
  int topLogprobs = -1;            // -1: no log-probabilities; 0..20: the chosen id's and this
                                   // many most likely alternatives per token
};

// One sampled token (id >= 0) with its text, or (id == -1) text held back until the end (an
// incomplete UTF-8 character at the end of the generation).
struct TokenEvent {
  TokenId id = -1;
  std::string text;
  float logprob = 0;                                  // natural log of the model's probability
  std::vector<std::pair<TokenId, float>> top;         // most likely first
};

struct GenerationEnd {
  coord::StopReason stop = coord::StopReason::Limit;
  uint32_t promptTokens = 0;
  uint32_t genTokens = 0;          // excluding an end-of-generation id
  std::string error;               // non-empty: the pipeline failed this generation
};

struct GenerationCallbacks {
  std::function<void()> onStart;                     // a sequence is open: prefill begins
  std::function<void(const TokenEvent&)> onToken;
  std::function<void(const GenerationEnd&)> onEnd;   // last call, unless cancelled
};

struct Submission {
  Generation gen;
  GenerationCallbacks cb;
};

// The queue is full; retry after a while.
class QueueFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// Not loaded (yet, or the load failed).
class NotReady : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Service {
 public:
  enum class State { Loading, Ready, Failed };

  // Takes the opened model; starts loading on the service thread at once.
  Service(OpenedModel model, ServiceOptions opts, topo::Machine machine);
  ~Service();  // stop()
  // Cancels every generation (no callback runs after it returns) and stops the thread; later
  // calls see state() Failed. Idempotent.
  void stop();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  State state() const { return state_.load(); }
  std::string loadError() const;                 // why, when Failed
  std::vector<std::string> stageLines() const;   // describeStages() once Ready

  const OpenedModel& model() const { return model_; }
  uint32_t nCtx() const { return nCtx_; }
  uint32_t parallel() const { return opts_.parallel; }

  // Queues the generations (all or none); returns one handle per submission, in order. Throws
  // NotReady, QueueFull, or std::invalid_argument for bad sampling parameters or a prompt that
  // does not fit the context (nothing is queued then).
  std::vector<uint64_t> submit(std::vector<Submission> subs);
  // Ends a generation wherever it is (queued, prefill, decode); no callback of it runs after
  // cancel() returns. Its sequence is freed on the stages at the next step. Unknown handles are
  // ignored (it may have just ended).
  void cancel(uint64_t handle);

  struct Load {
    size_t waiting = 0;     // generations in the queue
    size_t running = 0;     // generations with an open sequence
    double kvUsage = 0;     // KV positions held / (parallel x nCtx)
  };
  Load load();

 private:
  struct Core;  // lives on the service thread
  void threadMain();
  template <typename F>
  auto onLoop(F&& f) -> decltype(f());

  OpenedModel model_;
  ServiceOptions opts_;
  topo::Machine machine_;
  uint32_t nCtx_ = 0;
  std::atomic<State> state_{State::Loading};
  mutable std::mutex mu_;
  std::mutex stopMu_;
  std::string loadError_;
  std::vector<std::string> stageLines_;
  const kj::Executor* executor_ = nullptr;  // the service thread's, once it runs
  Core* core_ = nullptr;                    // valid while Ready
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> stop_;
  std::thread thread_;
};

}  // namespace tern::runtime
