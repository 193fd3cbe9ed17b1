// tern worker: one worker process pinned to one NUMA node, serving the Worker interface of
// protocol/tern.capnp until SIGINT or SIGTERM.
#include "tools/tern/commands.hpp"
#include "runtime/metrics_endpoint.hpp"
#include "worker/host.hpp"

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>

namespace tern::cli {
using namespace tern::runtime;  // the library these commands drive

namespace {

struct WorkerCliOptions {
  std::string listen = "127.0.0.1:7000";
  std::string numa = "auto";
  unsigned threads = 0;
  std::string cacheDir;
  std::string modelDir;
  bool insecure = false;
  std::string metrics;
  bool noCalibrate = false;
  uint64_t memoryLimitMib = 0;
};

int parseNuma(const std::string& s) {
  if (s == "auto") return -2;
  if (s == "none") return -1;
  if (s.empty() || s.size() > 6 || s.find_first_not_of("0123456789") != std::string::npos) {
    throw std::invalid_argument("--numa wants a node number, auto or none (got '" + s + "')");
  }
  return std::stoi(s);
}

std::string describe(const proto::WorkerInfoData& w) {
  char buf[512];
  const std::string node = w.numaNode >= 0 ? "node " + std::to_string(w.numaNode) : "not pinned";
  std::snprintf(buf, sizeof buf, "tern worker: %s (%u cores, %.1f GiB), %u threads, kernel %s, ",
                node.c_str(), w.cores, double(w.memoryBytes) / double(1ull << 30), w.threads,
                w.kernel.c_str());
  std::string line = buf;
  if (w.bandwidthGBs > 0 || w.calibrationGmacs > 0) {
    std::snprintf(buf, sizeof buf, "bandwidth %.1f GB/s, calibration %.1f GMAC/s, ",
                  w.bandwidthGBs, w.calibrationGmacs);
    line += buf;
  } else {
    line += "not calibrated, ";
  }
  line += w.boundCpus.empty() ? "unbound" : "bound to CPUs " + w.boundCpus;
  if (!w.bindingWarning.empty()) line += " (warning: " + w.bindingWarning + ")";
  return line + "; " + w.machine;
}

}  // namespace

void addWorkerCommand(CLI::App& app) {
  auto o = std::make_shared<WorkerCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "worker", "serve one worker (one NUMA node) of a cluster until SIGINT/SIGTERM");
  cmd->add_option("--listen", o->listen, "HOST:PORT to listen on; port 0 = any free port (127.0.0.1:7000)");
  cmd->add_option("--numa", o->numa, "NUMA node to pin threads and memory to: N, auto or none (auto)");
  cmd->add_option("--threads", o->threads, "compute threads (the node's physical cores)");
  cmd->add_option("--cache-dir", o->cacheDir, "where uploaded shards are kept (a temporary directory)");
  cmd->add_flag("--insecure", o->insecure, "allow listening on, and dialling next workers at, addresses "
                "that are not loopback: cluster links are plain, unauthenticated TCP");
  cmd->add_option("--model-dir", o->modelDir, "read model files by path only from inside DIR "
                  "(default: none, only streamed shards)");
  cmd->add_option("--metrics", o->metrics, "serve Prometheus metrics at HOST:PORT/metrics (none)");
  cmd->add_flag("--no-calibrate", o->noCalibrate, "skip the bandwidth and matmul measurements at start");
  cmd->add_option("--memory-limit-mib", o->memoryLimitMib,
                  "memory this worker may hold for shards, MiB (default: its NUMA node's memory)");
  cmd->callback([o]() {
    worker::HostOptions h;
    h.listen = o->listen;
    h.numa = parseNuma(o->numa);
    h.threads = o->threads;
    h.cacheDir = o->cacheDir;
    h.modelDir = o->modelDir;
    h.insecure = o->insecure;
    h.calibrate = !o->noCalibrate;
    h.memoryLimitBytes = o->memoryLimitMib << 20;

    // SIGINT/SIGTERM are blocked here, before any thread starts (every thread inherits the
    // mask), and taken by sigwait below: no handler runs inside the event loop or civetweb.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

    std::unique_ptr<MetricsEndpoint> endpoint;
    if (!o->metrics.empty()) {
      endpoint = std::make_unique<MetricsEndpoint>(o->metrics, "worker");
      h.metrics = endpoint->registry();
    }
    auto worker = std::make_unique<worker::WorkerThread>(h);
    std::fprintf(stderr, "%s\n", describe(worker->info()).c_str());
    if (endpoint) std::fprintf(stderr, "tern worker: metrics at http://%s/metrics\n", endpoint->address().c_str());
    std::printf("tern worker listening on %s\n", worker->address().c_str());
    std::fflush(stdout);

    int sig = 0;
    sigwait(&sigs, &sig);
    std::fprintf(stderr, "tern worker: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    worker.reset();
    endpoint.reset();
  });
}

}  // namespace tern::cli
