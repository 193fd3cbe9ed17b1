#include "worker/compute_thread.hpp"

#include "protocol/codec.hpp"

#include <memory>
#include <string>
#include <utility>

namespace tern::worker {

ComputeThread::ComputeThread() : thread_([this] { loop(); }) {}

ComputeThread::~ComputeThread() {
  {
    std::lock_guard<std::mutex> lock(m_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void ComputeThread::post(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(m_);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void ComputeThread::loop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(m_);
      cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping, nothing left
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

kj::Promise<void> ComputeThread::run(std::function<void()> fn) {
  auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
  // std::function needs a copyable callable: share the fulfiller. It is fulfilled (or rejected)
  // from this thread; if the promise was dropped meanwhile, fulfilling it does nothing.
  auto fulfiller =
      std::make_shared<kj::Own<kj::CrossThreadPromiseFulfiller<void>>>(kj::mv(paf.fulfiller));
  post([fn = std::move(fn), fulfiller] {
    try {
      fn();
      (*fulfiller)->fulfill();
    } catch (const std::exception& e) {
      (*fulfiller)->reject(proto::rpcError(e.what()));
    } catch (...) {
      (*fulfiller)->reject(proto::rpcError("compute job failed"));
    }
  });
  return kj::mv(paf.promise);
}

}  // namespace tern::worker
