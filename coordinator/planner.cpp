#include "coordinator/planner.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <optional>

namespace tern::coord {
namespace {

constexpr double kLocalHopSeconds = 50e-6;  // in-process hand-over between stages of one host
constexpr uint32_t kMaxCtx = 1u << 22;
constexpr uint32_t kMaxSequences = 1u << 16;

struct TensorSize {
  std::string name;
  uint64_t bytes = 0;
  uint64_t elements = 0;
  size_t dims = 0;
};

// Layer index of "blk.<i>.<suffix>", or nullopt.
std::optional<uint32_t> layerOf(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return std::nullopt;
  uint64_t i = 0;
  size_t p = 4;
  if (p >= name.size() || name[p] < '0' || name[p] > '9') return std::nullopt;
  while (p < name.size() && name[p] >= '0' && name[p] <= '9' && i < (1u << 30))
    i = i * 10 + static_cast<uint64_t>(name[p++] - '0');
  if (p >= name.size() || name[p] != '.') return std::nullopt;
  return static_cast<uint32_t>(i);
}

ModelShape shapeFromTensors(std::string name, uint32_t nLayer, uint32_t nEmbd, uint32_t nVocab,
                            uint32_t qDim, uint32_t kvDim, bool tied, unsigned kvElementBytes,
                            const std::vector<TensorSize>& tensors) {
  if (kvElementBytes != 2 && kvElementBytes != 4)
    throw std::invalid_argument("KV element size must be 2 (f16) or 4 (f32) bytes");
  if (nLayer == 0 || nEmbd == 0 || nVocab == 0)
    throw std::invalid_argument(name + ": model has no layers, hidden size or vocabulary");
  ModelShape m;
  m.name = std::move(name);
  m.nLayer = nLayer;
  m.nEmbd = nEmbd;
  m.nVocab = nVocab;
  m.qDim = qDim;
  m.layerWeightBytes.assign(nLayer, 0);
  m.layerMacs.assign(nLayer, 0);
  uint64_t outNorm = 0, output = 0;
  for (const TensorSize& t : tensors) {
    if (std::optional<uint32_t> l = layerOf(t.name)) {
      if (*l >= nLayer) continue;
      m.layerWeightBytes[*l] += t.bytes;
      if (t.dims >= 2) m.layerMacs[*l] += t.elements;
    } else if (t.name == tensor_names::kTokenEmbd) {
      m.embeddingBytes = t.bytes;
    } else if (t.name == tensor_names::kOutputNorm) {
      outNorm = t.bytes;
    } else if (t.name == tensor_names::kOutput) {
      output = t.bytes;
    }
  }
  if (m.embeddingBytes == 0)
    throw std::invalid_argument(m.name + ": no tensor '" + tensor_names::kTokenEmbd + "'");
  if (!tied && output == 0)
    throw std::invalid_argument(m.name + ": no tensor '" + tensor_names::kOutput + "'");
  m.embeddingRowBytes = m.embeddingBytes / nVocab;
  m.headBytes = outNorm + (tied ? m.embeddingBytes : output);
  m.headSharedBytes = tied ? m.embeddingBytes : 0;
  m.kvBytesPerTokenPerLayer = kvBytesPerPosition(kvDim, 1, kvElementBytes);
  return m;
}

std::string gb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GB", bytes / 1e9);
  return buf;
}

// Sizes, prefix sums and the time/memory model of one placement problem.
class Problem {
 public:
  Problem(const ModelShape& m, std::vector<const WorkerSpec*> order, const PlanRequest& r)
      : m_(m), w_(std::move(order)), r_(r) {
    const uint32_t L = m.nLayer;
    bytes_.assign(L + 1, 0);
    macs_.assign(L + 1, 0);
    for (uint32_t i = 0; i < L; ++i) {
      bytes_[i + 1] = bytes_[i] + m.layerWeightBytes[i];
      macs_[i + 1] = macs_[i] + m.layerMacs[i];
    }
    const uint64_t avgPos = r.nCtx / 2;
    kvRead_ = m.kvBytesPerTokenPerLayer * avgPos;
    attnMacs_ = uint64_t(2) * m.qDim * avgPos;
    kvReserve_ = m.kvBytesPerTokenPerLayer * r.nCtx * r.maxSequences;
  }

  size_t workers() const { return w_.size(); }
  uint32_t layers() const { return m_.nLayer; }
  bool first(size_t i) const { return i == 0; }
  bool last(size_t i) const { return i + 1 == w_.size(); }

  uint64_t residentBytes(size_t i, uint32_t b, uint32_t e) const {
    uint64_t s = bytes_[e] - bytes_[b];
    if (first(i)) s += m_.embeddingBytes;
    if (last(i)) s += first(i) ? m_.headBytes - m_.headSharedBytes : m_.headBytes;
    return s;
  }
  uint64_t kvBytes(uint32_t b, uint32_t e) const { return kvReserve_ * (e - b); }
  uint64_t memory(size_t i, uint32_t b, uint32_t e) const {
    return residentBytes(i, b, e) + kvBytes(b, e) + r_.reserveBytesPerWorker;
  }
  bool fitsMemory(size_t i, uint32_t b, uint32_t e) const {
    return memory(i, b, e) <= w_[i]->freeMemoryBytes;
  }
  uint64_t bytesPerToken(size_t i, uint32_t b, uint32_t e) const {
    uint64_t s = bytes_[e] - bytes_[b] + kvRead_ * (e - b);
    if (first(i)) s += m_.embeddingRowBytes;
    if (last(i)) s += m_.headBytes;
    return s;
  }
  double macsPerToken(size_t i, uint32_t b, uint32_t e) const {
    double s = double(macs_[e] - macs_[b]) + double(attnMacs_) * (e - b);
    if (last(i)) s += double(m_.headMacs());
    return s;
  }
  double bandwidthSeconds(size_t i, uint32_t b, uint32_t e) const {
    return double(bytesPerToken(i, b, e)) / (w_[i]->bandwidthGBs * 1e9);
  }
  double computeSeconds(size_t i, uint32_t b, uint32_t e) const {
    return w_[i]->calibMacsPerSec > 0 ? macsPerToken(i, b, e) / w_[i]->calibMacsPerSec : 0.0;
  }
  double seconds(size_t i, uint32_t b, uint32_t e) const {
    return std::max(bandwidthSeconds(i, b, e), computeSeconds(i, b, e));
  }
  // Seconds per layer of an average layer on worker i: the inverse of its speed.
  double layerSeconds(size_t i) const {
    const double L = m_.nLayer;
    const double bw = (double(bytes_[m_.nLayer]) / L + double(kvRead_)) / (w_[i]->bandwidthGBs * 1e9);
    const double cp = w_[i]->calibMacsPerSec > 0
                          ? (double(macs_[m_.nLayer]) / L + double(attnMacs_)) / w_[i]->calibMacsPerSec
                          : 0.0;
    return std::max(bw, cp);
  }

  // Most layers worker i can take from layer b within time T and its memory; -1 when even its
  // fixed part (embedding, head) does not fit. The last worker must take every remaining layer.
  int maxTake(size_t i, uint32_t b, double T) const {
    const uint32_t L = m_.nLayer;
    if (last(i)) return (fitsMemory(i, b, L) && seconds(i, b, L) <= T) ? int(L - b) : -1;
    if (!fitsMemory(i, b, b) || seconds(i, b, b) > T) return -1;
    uint32_t k = 0;
    while (b + k < L && fitsMemory(i, b, b + k + 1) && seconds(i, b, b + k + 1) <= T) ++k;
    return int(k);
  }
  bool feasibleFrom(size_t i, uint32_t b, double T) const {
    for (; i < w_.size(); ++i) {
      const int k = maxTake(i, b, T);
      if (k < 0) return false;
      b += uint32_t(k);
    }
    return b == m_.nLayer;
  }

  const WorkerSpec& worker(size_t i) const { return *w_[i]; }

 private:
  const ModelShape& m_;
  std::vector<const WorkerSpec*> w_;
  const PlanRequest& r_;
  std::vector<uint64_t> bytes_, macs_;  // [nLayer + 1] prefix sums
  uint64_t kvRead_ = 0;     // KV bytes read per token per layer at half the context
  uint64_t attnMacs_ = 0;   // attention multiply-adds per token per layer at half the context
  uint64_t kvReserve_ = 0;  // KV bytes reserved per layer: nCtx x maxSequences
};

double hopSeconds(const WorkerSpec& a, const WorkerSpec& b, double bytes, double* transfer) {
  double t = 0;
  if (a.host == b.host) {
    t = bytes / (std::min(a.bandwidthGBs, b.bandwidthGBs) * 1e9);
    if (transfer) *transfer = t;
    return kLocalHopSeconds + t;
  }
  const double gbps = std::min(a.linkGbps, b.linkGbps);
  if (!(gbps > 0))
    throw PlanError("workers '" + a.name + "' and '" + b.name +
                    "' are on different hosts but one has no network link (link_gbps 0)");
  t = bytes * 8 / (gbps * 1e9);
  if (transfer) *transfer = t;
  return std::max(a.linkLatencyMs, b.linkLatencyMs) / 1e3 + t;
}

void validate(const ModelShape& m, const std::vector<WorkerSpec>& workers, const PlanRequest& r) {
  if (m.nLayer == 0 || m.layerWeightBytes.size() != m.nLayer || m.layerMacs.size() != m.nLayer)
    throw PlanError("model '" + m.name + "': layer sizes do not match its " +
                    std::to_string(m.nLayer) + " layers");
  if (workers.empty()) throw PlanError("no workers to place the model on");
  if (r.nCtx == 0 || r.nCtx > kMaxCtx)
    throw PlanError("context size " + std::to_string(r.nCtx) + " is out of range [1, " +
                    std::to_string(kMaxCtx) + "]");
  if (r.maxSequences == 0 || r.maxSequences > kMaxSequences)
    throw PlanError("max sequences " + std::to_string(r.maxSequences) + " is out of range [1, " +
                    std::to_string(kMaxSequences) + "]");
  std::map<std::string, int> names;
  for (const WorkerSpec& w : workers) {
    if (w.name.empty()) throw PlanError("a worker has no name");
    if (++names[w.name] > 1) throw PlanError("two workers are named '" + w.name + "'");
    if (!(w.bandwidthGBs > 0) || !std::isfinite(w.bandwidthGBs))
      throw PlanError("worker '" + w.name + "': memory bandwidth must be > 0 GB/s");
    if (!(w.calibMacsPerSec >= 0) || !std::isfinite(w.calibMacsPerSec))
      throw PlanError("worker '" + w.name + "': MAC rate must be >= 0");
    if (!(w.linkGbps >= 0) || !(w.linkLatencyMs >= 0) || !std::isfinite(w.linkGbps) ||
        !std::isfinite(w.linkLatencyMs))
      throw PlanError("worker '" + w.name + "': link speed and latency must be >= 0");
  }
  if (!r.headWorker.empty() && names.count(r.headWorker) == 0)
    throw PlanError("head worker '" + r.headWorker + "' is not one of the workers");
}

}  // namespace

uint64_t ModelShape::layerBytes() const {
  uint64_t s = 0;
  for (uint64_t b : layerWeightBytes) s += b;
  return s;
}

ModelShape modelShapeFromGguf(const gguf::File& file, const ModelConfig& cfg,
                              unsigned kvElementBytes) {
  std::vector<TensorSize> ts;
  ts.reserve(file.tensors().size());
  for (const gguf::TensorInfo& t : file.tensors())
    ts.push_back({t.name, t.nbytes, t.nelements(), t.ne.size()});
  std::string name = cfg.name.empty() ? file.path() : cfg.name;
  return shapeFromTensors(std::move(name), cfg.nLayer, cfg.nEmbd, cfg.nVocab, cfg.qDim(),
                          cfg.kvDim(), cfg.tiedHead, kvElementBytes, ts);
}

ModelShape modelShapeFromLayout(const Layout& layout, unsigned kvElementBytes) {
  std::vector<TensorSize> ts;
  for (const LayoutTensor& t : layoutTensors(layout))
    ts.push_back({t.name, t.nbytes(), t.nelements(), t.ne.size()});
  return shapeFromTensors(layout.name, layout.nLayer, layout.nEmbd, layout.nVocab, layout.qDim(),
                          layout.kvDim(), layout.tiedHead, kvElementBytes, ts);
}

std::vector<WorkerSpec> workersFromHosts(const std::vector<HostSpec>& hosts) {
  std::vector<WorkerSpec> out;
  for (const HostSpec& h : hosts) {
    for (const NodeSpec& n : h.nodes) {
      WorkerSpec w;
      w.host = h.name;
      w.name = h.nodes.size() == 1 ? h.name : h.name + "/numa" + std::to_string(n.numaNode);
      w.cores = n.cores;
      w.freeMemoryBytes = n.memoryBytes;
      w.bandwidthGBs = h.bandwidthGBsPerNode;
      w.calibMacsPerSec = h.macsPerSecPerCore * n.cores;
      w.linkGbps = h.linkGbps;
      w.linkLatencyMs = h.linkLatencyMs;
      w.numaNode = n.numaNode;
      out.push_back(std::move(w));
    }
  }
  return out;
}

std::vector<HostSpec> parseClusterJson(const std::string& text, const std::string& source) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(source + ": not valid JSON (" + e.what() + ")");
  }
  if (doc.is_object() && doc.contains("boxes")) doc = doc["boxes"];
  if (!doc.is_array() || doc.empty())
    throw std::invalid_argument(source + ": expected a non-empty JSON array of boxes");
  std::vector<HostSpec> hosts;
  std::map<std::string, int> seen;
  for (size_t i = 0; i < doc.size(); ++i) {
    const nlohmann::json& b = doc[i];
    const std::string where = source + ": box " + std::to_string(i);
    if (!b.is_object()) throw std::invalid_argument(where + " is not an object");
    auto number = [&](const char* key, std::optional<double> def, double lo, double hi) {
      if (!b.contains(key)) {
        if (def) return *def;
        throw std::invalid_argument(where + ": missing '" + key + "'");
      }
      if (!b[key].is_number()) throw std::invalid_argument(where + ": '" + key + "' is not a number");
      const double v = b[key].get<double>();
      if (!(v >= lo && v <= hi))
        throw std::invalid_argument(where + ": '" + key + "' = " + b[key].dump() +
                                    " is out of range");
      return v;
    };
    HostSpec h;
    if (b.contains("name")) {
      if (!b["name"].is_string() || b["name"].get<std::string>().empty())
        throw std::invalid_argument(where + ": 'name' must be a non-empty string");
      h.name = b["name"].get<std::string>();
    } else {
      h.name = "box" + std::to_string(i);
    }
    if (++seen[h.name] > 1) throw std::invalid_argument(where + ": duplicate name '" + h.name + "'");
    const double cores = number("cores", std::nullopt, 1, 1 << 20);
    const double memGb = number("memory_gb", std::nullopt, 1e-3, 1e9);
    const double bw = number("bandwidth_gbs", std::nullopt, 1e-3, 1e7);
    const double numa = number("numa_nodes", 1.0, 1, 1024);
    h.linkGbps = number("link_gbps", 10.0, 0, 1e6);
    h.linkLatencyMs = number("link_latency_ms", 0.1, 0, 1e6);
    h.macsPerSecPerCore = number("gmacs_per_core", kDefaultMacsPerSecPerCore / 1e9, 0, 1e6) * 1e9;
    if (cores != std::floor(cores) || numa != std::floor(numa))
      throw std::invalid_argument(where + ": 'cores' and 'numa_nodes' must be whole numbers");
    const unsigned nNodes = static_cast<unsigned>(numa), nCores = static_cast<unsigned>(cores);
    if (nNodes > nCores)
      throw std::invalid_argument(where + ": more NUMA nodes (" + std::to_string(nNodes) +
                                  ") than cores (" + std::to_string(nCores) + ")");
    h.bandwidthGBsPerNode = bw / nNodes;
    const uint64_t memPerNode = static_cast<uint64_t>(memGb * 1e9 / nNodes);
    for (unsigned n = 0; n < nNodes; ++n)
      h.nodes.push_back({n, nCores / nNodes + (n < nCores % nNodes ? 1u : 0u), memPerNode});
    hosts.push_back(std::move(h));
  }
  return hosts;
}

Placement planPlacement(const ModelShape& model, const std::vector<WorkerSpec>& workers,
                        const PlanRequest& request) {
  validate(model, workers, request);

  // Pipeline order: as given, the head worker moved to the end.
  std::vector<size_t> index;
  for (size_t i = 0; i < workers.size(); ++i)
    if (workers[i].name != request.headWorker) index.push_back(i);
  for (size_t i = 0; i < workers.size(); ++i)
    if (workers[i].name == request.headWorker) index.push_back(i);
  std::vector<const WorkerSpec*> order;
  for (size_t i : index) order.push_back(&workers[i]);
  const Problem p(model, order, request);
  const size_t W = p.workers();
  const uint32_t L = p.layers();

  // Everything together first: the shortfall in one line.
  const double kvTotal = double(model.kvBytesPerTokenPerLayer) * request.nCtx *
                         request.maxSequences * L;
  const double weights = double(model.layerBytes()) + double(model.embeddingBytes) +
                         double(model.headBytes) - (W == 1 ? double(model.headSharedBytes) : 0.0);
  double offer = 0;
  for (const WorkerSpec& w : workers)
    offer += std::max(0.0, double(w.freeMemoryBytes) - double(request.reserveBytesPerWorker));
  if (weights + kvTotal > offer) {
    throw PlanError(model.name + " needs " + gb(weights) + " of weights + " + gb(kvTotal) +
                    " KV (" + std::to_string(request.nCtx) + " positions x " +
                    std::to_string(request.maxSequences) +
                    (request.maxSequences == 1 ? " sequence" : " sequences") + "), workers offer " +
                    gb(offer) + " in total: short by " + gb(weights + kvTotal - offer));
  }
  constexpr double kInf = std::numeric_limits<double>::infinity();
  if (!p.feasibleFrom(0, 0, kInf)) {
    if (!p.fitsMemory(0, 0, 0))
      throw PlanError("worker '" + order[0]->name + "' cannot hold the embedding: needs " +
                      gb(double(p.memory(0, 0, 0))) + ", has " + gb(double(order[0]->freeMemoryBytes)));
    if (!p.fitsMemory(W - 1, L, L))
      throw PlanError("worker '" + order[W - 1]->name + "' cannot hold the head: needs " +
                      gb(double(p.memory(W - 1, L, L))) + ", has " +
                      gb(double(order[W - 1]->freeMemoryBytes)));
    throw PlanError(model.name + ": whole layers (" + gb(double(model.layerBytes()) / L) +
                    " of weights + " + gb(kvTotal / L) +
                    " KV each) do not fit the workers' free memory one stage at a time");
  }

  // The smallest bottleneck time T at which the layers fit (bisection; feasibility is monotone).
  double hi = 0;
  for (size_t i = 0; i < W; ++i) hi = std::max(hi, p.seconds(i, 0, L));
  double lo = 0;
  for (int it = 0; it < 200 && hi - lo > hi * 1e-12; ++it) {
    const double mid = 0.5 * (lo + hi);
    if (p.feasibleFrom(0, 0, mid)) hi = mid;
    else lo = mid;
  }
  const double T = hi * (1 + 1e-9);

  // Within T, each worker takes its speed-proportional share of what is left, clamped so that it
  // stays within T and memory and the rest can still be placed.
  std::vector<uint32_t> begin(W, 0), end(W, 0);
  std::vector<double> speed(W);
  for (size_t i = 0; i < W; ++i) speed[i] = 1.0 / p.layerSeconds(i);
  uint32_t b = 0;
  for (size_t i = 0; i < W; ++i) {
    uint32_t take = L - b;
    if (!p.last(i)) {
      const int most = p.maxTake(i, b, T);
      int least = 0, upper = most;  // the rest can be placed from b + upper (greedy at T)
      while (least < upper) {        // feasibility of the rest is monotone in what i takes
        const int mid = least + (upper - least) / 2;
        if (p.feasibleFrom(i + 1, b + uint32_t(mid), T)) upper = mid;
        else least = mid + 1;
      }
      double rest = 0;
      for (size_t j = i; j < W; ++j) rest += speed[j];
      const int share = int(std::lround(double(L - b) * speed[i] / rest));
      take = uint32_t(std::clamp(share, least, std::max(most, 0)));
    }
    begin[i] = b;
    end[i] = b + take;
    b += take;
  }

  Placement out;
  std::vector<size_t> used;
  for (size_t i = 0; i < W; ++i) {
    WorkerPlan wp;
    wp.worker = order[i]->name;
    wp.workerIndex = index[i];
    wp.layerBegin = begin[i];
    wp.layerEnd = end[i];
    wp.holdsEmbedding = p.first(i);
    wp.holdsHead = p.last(i);
    wp.used = end[i] > begin[i] || wp.holdsEmbedding || wp.holdsHead;
    if (wp.used) {
      wp.weightBytes = p.residentBytes(i, begin[i], end[i]);
      wp.kvBytes = p.kvBytes(begin[i], end[i]);
      wp.bytesPerToken = p.bytesPerToken(i, begin[i], end[i]);
      wp.secondsPerToken = p.seconds(i, begin[i], end[i]);
      wp.tokensPerSecond = wp.secondsPerToken > 0 ? 1.0 / wp.secondsPerToken : 0.0;
      wp.computeBound = p.computeSeconds(i, begin[i], end[i]) > p.bandwidthSeconds(i, begin[i], end[i]);
      out.weightBytes += wp.weightBytes;
      out.kvBytes += wp.kvBytes;
      out.stageSeconds += wp.secondsPerToken;
      used.push_back(i);
    } else {
      wp.layerBegin = wp.layerEnd = begin[i];
    }
    out.workers.push_back(std::move(wp));
  }
  out.stages = used.size();

  // Hops: token ids from the coordinator (on the first worker's host) to the first stage,
  // activations stage to stage, logits from the last stage back to the coordinator.
  const WorkerSpec& coordHost = *order[used.front()];
  double slowest = 0;
  for (size_t s : used) {
    if (out.workers[s].secondsPerToken > slowest) {
      slowest = out.workers[s].secondsPerToken;
      out.bottleneck = s;
    }
  }
  double transfer = 0;
  out.hopSeconds += hopSeconds(coordHost, *order[used.front()], 8.0, nullptr);
  for (size_t k = 1; k < used.size(); ++k) {
    out.hopSeconds += hopSeconds(*order[used[k - 1]], *order[used[k]], 4.0 * model.nEmbd, &transfer);
    slowest = std::max(slowest, transfer);
  }
  out.hopSeconds += hopSeconds(*order[used.back()], coordHost, 4.0 * model.nVocab, &transfer);
  slowest = std::max(slowest, transfer);

  const double cycle = out.stageSeconds + out.hopSeconds;
  out.singleSequenceTokensPerSecond = 1.0 / cycle;
  out.pipelinedTokensPerSecond = std::min(double(request.maxSequences) / cycle, 1.0 / slowest);
  return out;
}

}  // namespace tern::coord
