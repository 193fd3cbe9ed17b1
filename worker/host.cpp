#include "worker/host.hpp"

#include "kernels/dispatch.hpp"
#include "protocol/address.hpp"
#include "topology/bandwidth.hpp"
#include "topology/binding.hpp"
#include "topology/machine.hpp"
#include "worker/calibration.hpp"
#include "worker/compute_thread.hpp"
#include "worker/worker_server.hpp"

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <stdexcept>
#include <utility>

namespace tern::worker {

namespace {

// "host:port" or "[v6]:port" -> (host, port). Throws std::invalid_argument.
std::string hostName() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  return buf;
}

bool wildcard(const std::string& host) {
  return host == "*" || host == "0.0.0.0" || host == "::" || host.empty();
}

void appendWarning(std::string& w, const std::string& more) {
  if (more.empty()) return;
  if (!w.empty()) w += "; ";
  w += more;
}

// Where the worker runs and how fast: everything of WorkerInfo except the address.
struct Placement {
  proto::WorkerInfoData info;
};

Placement placeAndMeasure(const HostOptions& opts) {
  Placement p;
  proto::WorkerInfoData& info = p.info;
  info.host = hostName();
  topo::Machine machine;
  bool haveMachine = true;
  try {
    machine = topo::Machine::detect();
  } catch (const std::exception& e) {
    haveMachine = false;
    info.bindingWarning = std::string("hwloc: ") + e.what() + ": not pinned";
  }
  info.machine = haveMachine ? machine.summary() : "unknown machine";
  for (const topo::NumaNode& n : machine.nodes) {
    info.nodes.push_back({n.index, static_cast<uint32_t>(n.cores.size()), n.memoryBytes});
  }

  // Which node.
  const topo::NumaNode* node = nullptr;
  if (opts.numa >= 0) {
    for (const topo::NumaNode& n : machine.nodes) {
      if (int(n.index) == opts.numa) node = &n;
    }
    if (!node) {
      std::string have;
      for (const topo::NumaNode& n : machine.nodes) {
        if (!have.empty()) have += ",";
        have += std::to_string(n.index);
      }
      throw std::runtime_error("NUMA node " + std::to_string(opts.numa) +
                               " does not exist (this machine has node" +
                               (machine.nodes.size() == 1 ? " " : "s ") +
                               (have.empty() ? "none" : have) + ")");
    }
  } else if (opts.numa == -2 && !machine.nodes.empty()) {
    node = &machine.nodes.front();
    for (const topo::NumaNode& n : machine.nodes) {
      if (n.memoryBytes > node->memoryBytes) node = &n;
    }
  }
  if (node && node->cores.empty()) {
    appendWarning(info.bindingWarning,
                  "NUMA node " + std::to_string(node->index) + " has no allowed core: not pinned");
    node = nullptr;
  }

  if (node) {
    info.numaNode = int32_t(node->index);
    info.cores = uint32_t(node->cores.size());
    info.memoryBytes = node->memoryBytes;
    info.threads = topo::threadsFor(opts.threads, info.cores);
    // Memory first: pages the team touches later (weights copied at load) land on the node.
    const topo::BindStatus mem = topo::bindThreadMemoryToNode(node->index);
    if (!mem) appendWarning(info.bindingWarning, "memory binding: " + mem.warning);
    const topo::TeamBinding team = topo::bindOpenMpTeam(node->cores, int(info.threads));
    if (team.status) {
      std::vector<unsigned> all;
      for (const auto& t : team.perThread) all.insert(all.end(), t.begin(), t.end());
      info.boundCpus = topo::CpuSet(all).toString();
    } else {
      appendWarning(info.bindingWarning, "thread binding: " + team.status.warning);
    }
  } else {
    info.numaNode = -1;
    info.cores = haveMachine ? machine.cores : 1;
    for (const topo::NumaNode& n : machine.nodes) info.memoryBytes += n.memoryBytes;
    info.threads = topo::threadsFor(opts.threads, info.cores);
  }

  info.kernel = kernels::selectKernels("auto").name;
  if (opts.calibrate) {
    try {
      info.bandwidthGBs = topo::measureReadBandwidth(info.threads, size_t(128) << 20, 2);
    } catch (const std::exception& e) {
      appendWarning(info.bindingWarning, std::string("bandwidth not measured: ") + e.what());
    }
    info.calibrationGmacs = calibrateT2Gemv(info.threads, 0.1).gmacs;
  }
  return p;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

void StopSignal::stop() {
  kj::Own<const kj::Executor> exec;
  {
    std::lock_guard<std::mutex> lock(m_);
    if (stopped_) return;
    stopped_ = true;
    if (executor_) exec = executor_->addRef();
  }
  if (!exec) return;  // serve() has not armed yet: it will see stopped_
  try {
    exec->executeSync([this] {
      if (fulfiller_) fulfiller_->fulfill();
    });
  } catch (...) {
    // The loop is gone: serve() has returned already.
  }
}

bool StopSignal::arm(const kj::Executor& executor, kj::Own<kj::PromiseFulfiller<void>> fulfiller) {
  std::lock_guard<std::mutex> lock(m_);
  if (stopped_) return false;
  executor_ = executor.addRef();
  fulfiller_ = kj::mv(fulfiller);
  return true;
}

void StopSignal::disarm() {
  std::lock_guard<std::mutex> lock(m_);
  fulfiller_ = nullptr;
  executor_ = nullptr;
}

void serve(const HostOptions& opts,
           const std::function<void(const proto::WorkerInfoData& info)>& onListening,
           std::shared_ptr<StopSignal> stop) {
  proto::HostPort listen;
  try {
    listen = proto::parseHostPort(opts.listen);  // port 0: any free port
    proto::checkPlainLink(opts.listen, opts.insecure, "listening on");
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot listen on " + opts.listen + ": " + e.what());
  }
  const std::string& host = listen.host;
  const unsigned port = listen.port;
  auto io = kj::setupAsyncIo();
  // Binding, measuring and (later) loading and computing happen on the compute thread, the master
  // of the bound OpenMP team; this thread only does I/O. Declared after io: it is stopped (its
  // queued jobs run first) before the event loop goes.
  ComputeThread compute;
  Placement placed = compute.runSync([&] { return placeAndMeasure(opts); });

  kj::Network& network = io.provider->getNetwork();
  kj::Own<kj::ConnectionReceiver> listener;
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&] {
    auto addr = network.parseAddress(host, port).wait(io.waitScope);
    listener = addr->listen();
  })) {
    throw std::runtime_error("cannot listen on " + opts.listen + ": " +
                             std::string(e->getDescription().cStr()));
  }
  proto::WorkerInfoData info = std::move(placed.info);
  info.address = proto::joinHostPort(wildcard(host) ? info.host : host, listener->getPort());

  WorkerOptions wo;
  wo.address = info.address;
  wo.numaNode = info.numaNode;
  wo.threads = info.threads;
  wo.cacheDir = opts.cacheDir;
  wo.modelDir = opts.modelDir;
  wo.insecure = opts.insecure;
  wo.calibrate = opts.calibrate;
  wo.memoryLimitBytes = opts.memoryLimitBytes;
  wo.metrics = opts.metrics;
  wo.compute = &compute;
  auto server = kj::heap<WorkerServer>(std::move(wo), network, std::move(info));
  WorkerServer& worker = *server;
  capnp::TwoPartyServer rpc(kj::mv(server));

  auto paf = kj::newPromiseAndFulfiller<void>();
  kj::Promise<void> stopped = kj::mv(paf.promise);
  if (stop && !stop->arm(kj::getCurrentThreadExecutor(), kj::mv(paf.fulfiller))) return;
  if (onListening) onListening(worker.description());
  rpc.listen(*listener).exclusiveJoin(kj::mv(stopped)).wait(io.waitScope);
  if (stop) stop->disarm();
}

// ---------------------------------------------------------------------------------------------

struct WorkerThread::State {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;  // listening, or failed
  std::exception_ptr error;
  proto::WorkerInfoData info;
  std::shared_ptr<StopSignal> stop = std::make_shared<StopSignal>();
};

WorkerThread::WorkerThread(HostOptions opts) : state_(std::make_shared<State>()) {
  thread_ = std::thread([s = state_, opts = std::move(opts)] {
    try {
      serve(
          opts,
          [&s](const proto::WorkerInfoData& info) {
            std::lock_guard<std::mutex> lock(s->m);
            s->info = info;
            s->done = true;
            s->cv.notify_all();
          },
          s->stop);
    } catch (...) {
      std::lock_guard<std::mutex> lock(s->m);
      if (!s->done) s->error = std::current_exception();
      s->done = true;
      s->cv.notify_all();
    }
  });
  std::unique_lock<std::mutex> lock(state_->m);
  state_->cv.wait(lock, [this] { return state_->done; });
  if (state_->error) {
    lock.unlock();
    thread_.join();
    std::rethrow_exception(state_->error);
  }
  info_ = state_->info;
}

WorkerThread::~WorkerThread() {
  state_->stop->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace tern::worker
