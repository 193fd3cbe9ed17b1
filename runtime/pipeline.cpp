#include "runtime/pipeline.hpp"

#include "coordinator/planner.hpp"

#include <filesystem>
#include <algorithm>
#include <cstdio>
#include <stdexcept>

namespace tern::runtime {
namespace {

coord::ShardSource parseSource(const std::string& s) {
  if (s == "auto") return coord::ShardSource::Auto;
  if (s == "path") return coord::ShardSource::Path;
  if (s == "stream") return coord::ShardSource::Stream;
  throw std::invalid_argument("--shard-source must be auto, path or stream (got " + s + ")");
}

}  // namespace

Pipeline::Pipeline(kj::AsyncIoContext& io, const OpenedModel& model, const PipelineOptions& o,
                   const topo::Machine& machine) {
  const ModelConfig& cfg = model.cfg;
  auto log = [&](const std::string& line) {
    if (o.log) o.log(line);
  };
  if (o.stages < 0) throw std::invalid_argument("--stages must be >= 1");
  if (static_cast<uint32_t>(o.stages) > cfg.nLayer) {
    throw std::runtime_error("--stages " + std::to_string(o.stages) + " is more than the model's " +
                             std::to_string(cfg.nLayer) + " layers");
  }
  if (o.split != "auto" && o.split != "even" && o.split != "plan") {
    throw std::invalid_argument("--split must be auto, even or plan (got " + o.split + ")");
  }

  std::vector<std::string> addresses = o.workers;
  if (addresses.empty()) {
    // The embedded default: one worker per NUMA node (no more than stages or layers).
    uint32_t n = std::max(1u, machine.numaNodes);
    n = std::min<uint32_t>(n, cfg.nLayer);
    if (o.stages > 0) n = std::min<uint32_t>(n, static_cast<uint32_t>(o.stages));
    for (uint32_t i = 0; i < n; ++i) {
      worker::HostOptions h;
      h.listen = "127.0.0.1:0";
      h.numa = i < machine.nodes.size() ? static_cast<int>(machine.nodes[i].index) : -1;
      h.threads = o.threads > 0 ? static_cast<unsigned>(o.threads) : 0;
      h.calibrate = false;  // symmetric nodes: layers are split evenly
      // The process's own workers read the model file where it is (and nothing outside its
      // directory, like any worker).
      h.modelDir = std::filesystem::absolute(model.path).parent_path().string();
      h.metrics = o.metrics;
      local_.push_back(std::make_unique<worker::WorkerThread>(h));
      addresses.push_back(local_.back()->address());
    }
  }

  cluster_ = std::make_unique<coord::Cluster>(io, addresses, o.insecure);
  const auto& infos = cluster_->workers();
  for (const auto& w : infos) {
    std::string line = "worker " + w.address + ": ";
    line += w.numaNode >= 0 ? "numa " + std::to_string(w.numaNode) : std::string("not pinned");
    line += ", " + std::to_string(w.threads) + " threads, kernel " + w.kernel;
    if (w.bandwidthGBs > 0) {
      char buf[96];
      std::snprintf(buf, sizeof buf, ", %.1f GB/s, %.1f GMAC/s", w.bandwidthGBs, w.calibrationGmacs);
      line += buf;
    }
    line += w.boundCpus.empty() ? ", unbound" : ", bound to cpus " + w.boundCpus;
    if (!w.bindingWarning.empty()) line += " (" + w.bindingWarning + ")";
    log(line);
  }

  bool measured = true;
  for (const auto& w : infos) measured = measured && w.bandwidthGBs > 0 && w.calibrationGmacs > 0;
  bool even = o.split == "even" || (o.split == "auto" && (embedded() || o.stages > 0));
  if (!even && !measured) {
    if (o.split == "plan") {
      throw std::runtime_error("--split plan needs measured workers; these run with --no-calibrate");
    }
    log("workers report no measured speed (--no-calibrate): layers split evenly");
    even = true;
  }
  if (even) {
    shards_ = coord::evenShards(cfg.nLayer, infos.size(), static_cast<uint32_t>(o.stages));
  } else {
    if (o.stages > 0) throw std::invalid_argument("--split plan places one stage per worker; drop --stages");
    std::vector<coord::WorkerSpec> specs;
    for (const auto& w : infos) specs.push_back(coord::workerSpecFromInfo(w));
    coord::PlanRequest req;
    req.nCtx = o.nCtx;
    req.maxSequences = o.maxSequences;
    const coord::ModelShape shape =
        coord::modelShapeFromGguf(*model.file, cfg, o.kvType == "f32" ? 4u : 2u);
    shards_ = coord::shardsFromPlan(coord::planPlacement(shape, specs, req));
  }

  coord::LoadOptions lo;
  lo.source = embedded() ? coord::ShardSource::Path : parseSource(o.source);
  // Our own copy's absolute path (a worker on this machine finds it whatever its working
  // directory); --worker-model as given (a relative one is taken inside the worker's --model-dir).
  lo.path = o.workerPath.empty() ? std::filesystem::absolute(model.path).string() : o.workerPath;
  lo.spec.maxSequences = o.maxSequences;
  lo.spec.nCtx = o.nCtx;
  lo.spec.threads = o.threads > 0 ? static_cast<uint32_t>(o.threads) : 0;
  lo.spec.kernels = o.kernels;
  lo.spec.actQuant = o.actQuant;
  lo.spec.kvType = o.kvType;
  lo.spec.headType = o.head;
  uint64_t lastPct = 101;
  lo.progress = [&](uint64_t done, uint64_t total) {
    const uint64_t pct = total ? done * 100 / total : 100;
    if (pct / 10 != lastPct / 10) {
      log("streaming shards: " + std::to_string(pct) + "% of " + humanBytes(total));
      lastPct = pct;
    }
  };
  stages_ = cluster_->load(*model.file, cfg, shards_, lo);
}

Pipeline::~Pipeline() {
  stages_.clear();
  cluster_.reset();
  local_.clear();
}

std::vector<proto::Stage::Client> Pipeline::stages() {
  std::vector<proto::Stage::Client> out;
  for (auto& s : stages_) out.emplace_back(s);
  return out;
}

std::vector<std::string> describeStages(const coord::Cluster& cluster,
                                        const std::vector<coord::ShardPlacement>& shards,
                                        const std::vector<proto::StageInfoData>& infos) {
  std::vector<std::string> lines;
  for (size_t i = 0; i < infos.size() && i < shards.size(); ++i) {
    const auto& s = infos[i];
    const auto& w = cluster.workers()[shards[i].worker];
    char buf[512];
    std::snprintf(buf, sizeof buf, "stage %zu: worker %s: layers [%u, %u)%s%s, kernel %s, %s weights, %u threads",
                  i, w.address.c_str(), s.layerBegin, s.layerEnd, s.embed ? " +embed" : "",
                  s.head ? " +head" : "", s.kernel.c_str(), humanBytes(s.weightBytes).c_str(),
                  s.threads);
    lines.emplace_back(buf);
  }
  return lines;
}

}  // namespace tern::runtime
