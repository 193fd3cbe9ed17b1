// tern plan: where each layer of a model would live on a set of workers (coordinator/planner),
// with the memory each worker needs and the decode speed the plan predicts. Reads no weights.
#include "coordinator/cluster.hpp"
#include "coordinator/planner.hpp"
#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/layouts.hpp"
#include "tools/tern/commands.hpp"
#include "topology/machine.hpp"

#include <kj/async-io.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace tern::cli {

namespace {

struct PlanCliOptions {
  std::string model;
  std::string layout;
  std::string workers;
  bool insecure = false;  // --insecure: non-loopback workers over plain TCP
  std::string cluster;
  std::string machine;
  uint32_t nCtx = 0;
  uint32_t seqs = 1;
  std::string kvType = "f16";
  std::string headWorker;
  double bandwidthGBs = 20;
  double gmacsPerCore = coord::kDefaultMacsPerSecPerCore / 1e9;
  double reserveGb = 0;
};

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(path + ": cannot open");
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0 || size > (16 << 20)) throw std::invalid_argument(path + ": not a cluster file (over 16 MiB)");
  in.seekg(0);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

coord::HostSpec hostFromMachine(const std::string& name, const topo::Machine& m,
                                const PlanCliOptions& o) {
  coord::HostSpec h;
  h.name = name;
  h.bandwidthGBsPerNode = o.bandwidthGBs;
  h.macsPerSecPerCore = o.gmacsPerCore * 1e9;
  for (const topo::NumaNode& n : m.nodes) {
    if (n.memoryBytes == 0)
      throw std::invalid_argument("NUMA node " + std::to_string(n.index) + " of " + name +
                                  " reports no memory size");
    h.nodes.push_back({n.index, static_cast<unsigned>(n.cores.size()), n.memoryBytes});
  }
  if (h.nodes.empty()) throw std::invalid_argument(name + ": hwloc reports no NUMA node");
  return h;
}

std::string fmtRate(double tokensPerSecond) {
  char buf[32];
  std::snprintf(buf, sizeof buf, tokensPerSecond >= 100 ? "%.0f" : "%.2f", tokensPerSecond);
  return buf;
}

std::string fmtSeconds(double s) {
  char buf[32];
  if (s >= 1) std::snprintf(buf, sizeof buf, "%.2f s", s);
  else if (s >= 1e-3) std::snprintf(buf, sizeof buf, "%.1f ms", s * 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f us", s * 1e6);
  return buf;
}

void printPlan(const coord::ModelShape& m, const std::vector<coord::WorkerSpec>& ws,
               const coord::PlanRequest& r, const coord::Placement& p, const std::string& source,
               const std::string& kvType) {
  std::printf("model    %s: %u layers, weights %s (layers %s, embedding %s, head %s)\n",
              m.name.c_str(), m.nLayer, formatBytes(p.weightBytes).c_str(),
              formatBytes(m.layerBytes()).c_str(), formatBytes(m.embeddingBytes).c_str(),
              formatBytes(m.headBytes).c_str());
  std::printf("request  context %u x %u sequence%s, KV %s: %s per position (all layers)\n", r.nCtx,
              r.maxSequences, r.maxSequences == 1 ? "" : "s", kvType.c_str(),
              formatBytes(m.kvBytesPerTokenPerLayer * m.nLayer).c_str());
  std::printf("workers  %zu (%s), %zu used as pipeline stages\n\n", ws.size(), source.c_str(), p.stages);
  std::printf("%-18s %4s %5s %7s %10s  %-13s %10s %10s %10s %8s  %s\n", "worker", "node", "cores",
              "GB/s", "memory", "layers", "weights", "KV", "total", "tok/s", "bound by");
  for (const coord::WorkerPlan& w : p.workers) {
    const coord::WorkerSpec& s = ws[w.workerIndex];
    std::string layers = "-";
    if (w.layerEnd > w.layerBegin)
      layers = "[" + std::to_string(w.layerBegin) + ", " + std::to_string(w.layerEnd) + ")";
    std::string extra = std::string(w.holdsEmbedding ? "E" : "") + (w.holdsHead ? "H" : "");
    if (!extra.empty()) layers += " " + extra;
    if (!w.used) {
      std::printf("%-18s %4u %5u %7.1f %10s  %-13s %10s %10s %10s %8s  %s\n", w.worker.c_str(),
                  s.numaNode, s.cores, s.bandwidthGBs, formatBytes(s.freeMemoryBytes).c_str(),
                  "(unused)", "-", "-", "-", "-", "-");
      continue;
    }
    std::printf("%-18s %4u %5u %7.1f %10s  %-13s %10s %10s %10s %8s  %s\n", w.worker.c_str(),
                s.numaNode, s.cores, s.bandwidthGBs, formatBytes(s.freeMemoryBytes).c_str(),
                layers.c_str(), formatBytes(w.weightBytes).c_str(), formatBytes(w.kvBytes).c_str(),
                formatBytes(w.weightBytes + w.kvBytes).c_str(), fmtRate(w.tokensPerSecond).c_str(),
                w.computeBound ? "compute" : "bandwidth");
  }
  uint64_t offered = 0;
  for (const coord::WorkerSpec& s : ws) offered += s.freeMemoryBytes;
  std::printf("%-18s %4s %5s %7s %10s  %-13s %10s %10s %10s\n", "total", "", "", "",
              formatBytes(offered).c_str(), (std::to_string(m.nLayer) + " layers").c_str(),
              formatBytes(p.weightBytes).c_str(), formatBytes(p.kvBytes).c_str(),
              formatBytes(p.weightBytes + p.kvBytes).c_str());
  std::printf("(E: token embedding, H: final norm + head)\n\n");
  std::printf("predicted: %s tokens/s for one sequence (stages %s + hops %s per token)\n",
              fmtRate(p.singleSequenceTokensPerSecond).c_str(), fmtSeconds(p.stageSeconds).c_str(),
              fmtSeconds(p.hopSeconds).c_str());
  const coord::WorkerPlan& slow = p.workers[p.bottleneck];
  std::printf("predicted: %s tokens/s in all with %u sequence%s in flight (slowest stage: %s, %s tokens/s)\n",
              fmtRate(p.pipelinedTokensPerSecond).c_str(), r.maxSequences,
              r.maxSequences == 1 ? "" : "s", slow.worker.c_str(), fmtRate(slow.tokensPerSecond).c_str());
  if (r.maxSequences < p.stages)
    std::printf("hint: --seqs %zu keeps all %zu stages busy (more KV cache per worker)\n", p.stages,
                p.stages);
}

}  // namespace

void addPlanCommand(CLI::App& app) {
  auto o = std::make_shared<PlanCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "plan where each layer lives on a set of workers, with memory and predicted speed");
  cmd->add_option("-m,--model", o->model, "GGUF model (only its metadata and tensor table are read)");
  cmd->add_option("--layout", o->layout, "a named layout instead of a file (see `tern gen --list`)");
  cmd->add_flag("--insecure", o->insecure, "allow workers that are not on loopback: cluster links are plain, "
                "unauthenticated TCP");
  cmd->add_option("--workers", o->workers, "running `tern worker`s host:port,...: their measured speed and free memory");
  cmd->add_option("--cluster", o->cluster,
                  "JSON file: array of {name, cores, memory_gb, bandwidth_gbs, numa_nodes, "
                  "link_gbps, link_latency_ms}; one worker per NUMA node");
  CLI::Option* machineOpt =
      cmd->add_option("--machine", o->machine,
                      "this machine (no value) or a synthetic hwloc topology, e.g. "
                      "\"pack:2 numa:2(memory=64GB) core:8 pu:1\"; one worker per NUMA node")
          ->expected(0, 1);
  cmd->add_option("-c,--ctx", o->nCtx, "context size per sequence (the model's, at most 4096)");
  cmd->add_option("--seqs", o->seqs, "sequences in flight, each with its KV cache (1)");
  cmd->add_option("--kv-type", o->kvType, "KV cache element type: f16 | f32 (f16)");
  cmd->add_option("--head", o->headWorker, "worker that holds the head (the last one)");
  cmd->add_option("--bandwidth-gbs", o->bandwidthGBs,
                  "--machine: memory bandwidth per NUMA node, GB/s (20, assumed)");
  cmd->add_option("--gmacs-per-core", o->gmacsPerCore,
                  "--machine: ternary multiply-adds per core, G/s (20, assumed)");
  cmd->add_option("--reserve-gb", o->reserveGb, "memory kept free on every worker, GB (0)");
  cmd->callback([o, machineOpt]() {
    if (o->model.empty() == o->layout.empty())
      throw std::invalid_argument("give one of -m MODEL.gguf or --layout NAME");
    const bool machine = machineOpt->count() > 0;
    const int sources = int(machine) + int(!o->cluster.empty()) + int(!o->workers.empty());
    if (sources == 0)
      throw std::invalid_argument("give the workers: --cluster FILE.json, --machine [DESC] or --workers");
    if (sources > 1)
      throw std::invalid_argument("give one of --workers, --cluster or --machine");
    if (o->kvType != "f16" && o->kvType != "f32")
      throw std::invalid_argument("--kv-type must be f16 or f32, not '" + o->kvType + "'");
    if (!(o->bandwidthGBs > 0) || !(o->gmacsPerCore >= 0) || !(o->reserveGb >= 0) ||
        o->bandwidthGBs > 1e7 || o->gmacsPerCore > 1e6 || o->reserveGb > 1e9)
      throw std::invalid_argument("--bandwidth-gbs must be > 0, --gmacs-per-core and --reserve-gb >= 0");
    const unsigned kvBytes = o->kvType == "f16" ? 2 : 4;

    coord::ModelShape shape;
    uint32_t modelCtx = 0;
    if (!o->model.empty()) {
      std::shared_ptr<const gguf::File> f = gguf::File::open(o->model);
      const ModelConfig cfg = ModelConfig::fromGguf(*f);
      shape = coord::modelShapeFromGguf(*f, cfg, kvBytes);
      modelCtx = cfg.nCtxTrain;
    } else {
      const Layout* l = findLayout(o->layout);
      if (l == nullptr)
        throw std::invalid_argument("unknown layout '" + o->layout + "' (valid: " + layoutNames() + ")");
      shape = coord::modelShapeFromLayout(*l, kvBytes);
      modelCtx = l->nCtx;
    }

    std::vector<coord::HostSpec> hosts;
    std::vector<coord::WorkerSpec> ws;
    std::string source;
    if (!o->workers.empty()) {
      // Ask the workers: their hello carries measured bandwidth and calibration speed.
      auto io = kj::setupAsyncIo();
      coord::Cluster cluster(io, coord::parseWorkerList(o->workers), o->insecure);
      for (const auto& w : cluster.workers()) ws.push_back(coord::workerSpecFromInfo(w));
      source = "live workers, as measured at their start";
    } else if (machine) {
      if (o->machine.empty()) {
        hosts.push_back(hostFromMachine("local", topo::Machine::detect(), *o));
        source = "this machine, memory as hwloc reports it";
      } else {
        hosts.push_back(hostFromMachine("synthetic", topo::Machine::fromSynthetic(o->machine), *o));
        source = "synthetic \"" + o->machine + "\"";
      }
      std::fprintf(stderr, "tern plan: assuming %.1f GB/s per NUMA node and %.1f G MAC/s per core "
                           "(--bandwidth-gbs, --gmacs-per-core)\n", o->bandwidthGBs, o->gmacsPerCore);
    } else {
      hosts = coord::parseClusterJson(readFile(o->cluster), o->cluster);
      source = o->cluster;
    }
    if (ws.empty()) ws = coord::workersFromHosts(hosts);

    coord::PlanRequest r;
    r.nCtx = o->nCtx > 0 ? o->nCtx : std::min<uint32_t>(modelCtx > 0 ? modelCtx : 4096, 4096);
    r.maxSequences = o->seqs;
    r.headWorker = o->headWorker;
    r.reserveBytesPerWorker = static_cast<uint64_t>(o->reserveGb * 1e9);
    const coord::Placement p = coord::planPlacement(shape, ws, r);
    printPlan(shape, ws, r, p, source, o->kvType);
  });
}

}  // namespace tern::cli
