// Running a worker: bind the thread and its OpenMP team to a NUMA node, measure the worker's
// description, listen on an address and serve the Worker interface on a kj event loop.
//
// Used by `tern worker` (one process = one worker, serve() on the main thread) and by the
// embedded default (one WorkerThread per NUMA node inside the `tern run` process): the same code,
// reached through the same Cap'n Proto RPC over loopback TCP.
#pragma once

#include "protocol/codec.hpp"

#include <kj/async.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace prometheus {
class Registry;
}

namespace tern::worker {

struct HostOptions {
  std::string listen = "127.0.0.1:0";  // "host:port"; port 0 = any free port
  int numa = -2;                       // node to pin to: >= 0 that node, -1 none, -2 auto
                                       // (auto: node 0 on one-node machines, else the node with
                                       // the most memory)
  unsigned threads = 0;                // 0 = the node's cores
  std::string cacheDir;                // uploaded shards; "" = $TMPDIR/tern-worker-<pid>
  std::string modelDir;                // shards by path only from inside it; "" = streamed only
  bool insecure = false;               // listen on / dial non-loopback addresses (plain TCP)
  bool calibrate = true;
  uint64_t memoryLimitBytes = 0;       // 0 = the node's memory
  std::shared_ptr<prometheus::Registry> metrics;  // null = no metrics
};

// Stops a serve() loop from any thread. stop() may come before, during or after serve(): the
// loop ends as soon as it runs (or at once), open connections are closed.
class StopSignal {
 public:
  void stop();  // idempotent; does not wait for serve() to return

  // For serve(), on its event loop thread: returns false when already stopped.
  bool arm(const kj::Executor& executor, kj::Own<kj::PromiseFulfiller<void>> fulfiller);
  void disarm();

 private:
  std::mutex m_;
  bool stopped_ = false;
  kj::Own<const kj::Executor> executor_;
  kj::Own<kj::PromiseFulfiller<void>> fulfiller_;  // touched only on the loop thread
};

// Binds, measures, listens, then calls onListening(description) and serves until `stop` is
// signalled (never when null, for a process that runs until killed). Throws std::runtime_error
// for an address that cannot be listened on ("cannot listen on HOST:PORT: ...") or a NUMA node
// that does not exist. Binding the OS refuses is no error: WorkerInfo.bindingWarning says why.
//
// Binding: the calling thread and its OpenMP team (opts.threads threads, default one per core of
// the node) are bound one thread per core of the node (topology/binding.hpp), and the calling
// thread's memory policy to the node; every stage of this worker computes with that team.
// Measured at start unless calibrate = false: read bandwidth (128 MiB buffer, best of 2) and the
// calibration T2 GEMV (worker/calibration.hpp, ~0.1 s): about 0.3 s in all.
void serve(const HostOptions& opts,
           const std::function<void(const proto::WorkerInfoData& info)>& onListening,
           std::shared_ptr<StopSignal> stop = nullptr);

// A worker on its own thread (embedded default). The constructor returns once it listens (or
// throws what serve() threw); the destructor stops and joins it.
class WorkerThread {
 public:
  explicit WorkerThread(HostOptions opts);
  ~WorkerThread();
  WorkerThread(const WorkerThread&) = delete;
  WorkerThread& operator=(const WorkerThread&) = delete;

  const std::string& address() const { return info_.address; }
  const proto::WorkerInfoData& info() const { return info_; }

 private:
  struct State;
  std::shared_ptr<State> state_;  // shared with the thread
  std::thread thread_;
  proto::WorkerInfoData info_;
};

}  // namespace tern::worker
