// The thread a worker computes on: the master of the worker's OpenMP team, bound (with the team)
// to the worker's NUMA node. The worker's kj event loop thread submits jobs and gets promises
// back, fulfilled across threads, so the loop keeps receiving and sending messages while the team
// computes: an I/O thread never computes. Jobs run one at a time, in submission order.
#pragma once

#include <kj/async.h>

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

namespace tern::worker {

class ComputeThread {
 public:
  ComputeThread();
  ~ComputeThread();  // runs the jobs already queued, then joins
  ComputeThread(const ComputeThread&) = delete;
  ComputeThread& operator=(const ComputeThread&) = delete;

  // Runs fn on the compute thread and waits for it (set-up work: binding, calibration, loading
  // weights so their pages are first touched by the bound team). Rethrows what fn throws.
  template <typename F>
  auto runSync(F&& fn) -> decltype(fn()) {
    std::packaged_task<decltype(fn())()> task(std::forward<F>(fn));
    auto result = task.get_future();
    post([&task] { task(); });
    return result.get();
  }

  // Runs fn on the compute thread; the promise belongs to the calling thread's kj event loop and
  // resolves when fn has returned, or fails with a kj FAILED exception carrying what fn threw.
  // fn must not touch kj objects.
  kj::Promise<void> run(std::function<void()> fn);

  // Queues fn without a result (fn reports back by itself, e.g. through cross-thread fulfillers).
  void post(std::function<void()> job);

 private:
  void loop();

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace tern::worker
