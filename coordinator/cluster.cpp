#include "coordinator/cluster.hpp"

#include "protocol/address.hpp"
#include "protocol/handshake.hpp"
#include "protocol/hash.hpp"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <utility>

namespace tern::coord {
namespace {

// Upload.write chunks: well under the protocol's 16 MiB per write.
constexpr size_t kUploadChunkBytes = 8u << 20;

std::string describe(const kj::Exception& e) { return e.getDescription().cStr(); }

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}


std::string range(uint32_t begin, uint32_t end) {
  std::string s = "[";
  s += std::to_string(begin);
  s += ", ";
  s += std::to_string(end);
  s += ")";
  return s;
}

// The shard file of one stage: the model's metadata (and tern.shard.model_hash), the stage's
// tensors copied from the mapped model.
std::unique_ptr<gguf::Writer> shardWriter(const gguf::File& model, const ModelConfig& cfg,
                                          uint64_t hash, const ShardPlacement& s) {
  auto w = std::make_unique<gguf::Writer>(model.version(), model.alignment());
  for (const auto& [key, value] : model.metadata()) w->set(key, value);
  w->setString(proto::kShardModelHashKey, proto::hashHex(hash));
  auto keep = [&](const std::string& name) {
    return cfg.stageUses(name, s.layerBegin, s.layerEnd, s.embed, s.head);
  };
  for (const gguf::TensorInfo& t : model.tensors()) {
    if (!keep(t.name)) continue;
    const gguf::TensorInfo* info = &t;
    const gguf::File* file = &model;
    w->addTensor(t.name, t.type, t.ne, [file, info](std::span<std::byte> dst, uint64_t offset) {
      const auto src = file->data(*info).subspan(offset, dst.size());
      std::copy(src.begin(), src.end(), dst.begin());
    });
  }
  return w;
}

}  // namespace

std::vector<std::string> parseWorkerList(const std::string& list) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= list.size()) {
    size_t comma = list.find(',', at);
    if (comma == std::string::npos) comma = list.size();
    const std::string entry = trim(list.substr(at, comma - at));
    at = comma + 1;
    if (entry.empty()) {
      throw std::invalid_argument("worker list '" + list + "': empty entry");
    }
    try {
      proto::parseHostPort(entry, 1);  // dialled: port 0 is no port
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("worker address '" + entry + "': " + e.what());
    }
    out.push_back(entry);
  }
  return out;
}

uint64_t modelHash(const gguf::File& file) {
  return proto::hash64(file.bytes(0, file.dataOffset()));
}

WorkerSpec workerSpecFromInfo(const proto::WorkerInfoData& info) {
  WorkerSpec w;
  w.name = info.address.empty() ? info.host : info.address;
  w.host = info.host;
  w.cores = info.cores;
  w.freeMemoryBytes = info.freeBytes;
  w.bandwidthGBs = info.bandwidthGBs;
  w.calibMacsPerSec = info.calibrationGmacs * 1e9;
  w.numaNode = info.numaNode < 0 ? 0u : static_cast<unsigned>(info.numaNode);
  // Not measured yet: the planner's assumptions for a commodity network.
  w.linkGbps = 10;
  w.linkLatencyMs = 0.1;
  return w;
}

std::vector<ShardPlacement> shardsFromPlan(const Placement& plan) {
  std::vector<ShardPlacement> out;
  uint32_t next = 0;
  for (const WorkerPlan& w : plan.workers) {
    if (!w.used) continue;
    // A worker may hold only the embedding or only the head (no layers): a stage of its own
    // (ops::Stage runs zero-layer stages), e.g. a large head on a worker of its own.
    if (w.layerBegin >= w.layerEnd && !w.holdsEmbedding && !w.holdsHead) continue;
    ShardPlacement s;
    s.worker = w.workerIndex;
    s.layerBegin = w.layerBegin >= w.layerEnd ? next : w.layerBegin;
    s.layerEnd = w.layerBegin >= w.layerEnd ? next : w.layerEnd;
    s.embed = w.holdsEmbedding;
    s.head = w.holdsHead;
    next = s.layerEnd;
    out.push_back(s);
  }
  if (out.empty()) throw std::invalid_argument("the plan places no layers");
  out.front().embed = true;
  out.back().head = true;
  return out;
}

std::vector<ShardPlacement> evenShards(uint32_t nLayer, size_t nWorkers, uint32_t nStages) {
  if (nWorkers == 0) throw std::invalid_argument("no workers");
  if (nStages == 0) nStages = static_cast<uint32_t>(nWorkers);
  if (nStages > nLayer) {
    throw std::invalid_argument(std::to_string(nStages) + " stages for a model of " +
                                std::to_string(nLayer) + " layers");
  }
  if (nStages < nWorkers) {
    throw std::invalid_argument(std::to_string(nStages) + " stages for " + std::to_string(nWorkers) +
                                " workers: every worker needs a stage");
  }
  std::vector<ShardPlacement> out;
  for (size_t w = 0; w < nWorkers; ++w) {
    const uint32_t first = static_cast<uint32_t>(w * nStages / nWorkers);
    const uint32_t last = static_cast<uint32_t>((w + 1) * nStages / nWorkers);
    for (uint32_t k = first; k < last; ++k) {
      ShardPlacement s;
      s.worker = w;
      // The first nLayer % nStages stages get one layer more (the last holds the head).
      const uint32_t base = nLayer / nStages, extra = nLayer % nStages;
      s.layerBegin = k * base + std::min(k, extra);
      s.layerEnd = s.layerBegin + base + (k < extra ? 1 : 0);
      s.embed = k == 0;
      s.head = k + 1 == nStages;
      out.push_back(s);
    }
  }
  return out;
}

struct Cluster::Impl {
  explicit Impl(kj::AsyncIoContext& io) : io(io) {}
  kj::AsyncIoContext& io;
  std::vector<kj::Own<proto::WorkerConnection>> conns;
  std::vector<proto::WorkerInfoData> infos;
};

Cluster::Cluster(kj::AsyncIoContext& io, const std::vector<std::string>& addresses, bool insecure)
    : impl_(std::make_unique<Impl>(io)) {
  for (const std::string& address : addresses) {
    try {
      impl_->conns.push_back(proto::dialWorker(io.provider->getNetwork(), address, insecure).wait(io.waitScope));
    } catch (const kj::Exception& e) {
      throw std::runtime_error("worker " + address + ": " + describe(e));
    }
    impl_->infos.push_back(impl_->conns.back()->info);
  }
}

Cluster::~Cluster() = default;

const std::vector<proto::WorkerInfoData>& Cluster::workers() const { return impl_->infos; }

proto::Worker::Client Cluster::worker(size_t i) {
  if (i >= impl_->conns.size()) {
    throw std::out_of_range("worker " + std::to_string(i) + " of " + std::to_string(impl_->conns.size()));
  }
  return impl_->conns[i]->cap;
}

std::vector<proto::Stage::Client> Cluster::load(const gguf::File& model, const ModelConfig& cfg,
                                                const std::vector<ShardPlacement>& shards,
                                                const LoadOptions& opts) {
  auto& ws = impl_->io.waitScope;
  if (shards.empty()) throw std::invalid_argument("no shards to load");
  for (const auto& s : shards) {
    if (s.worker >= impl_->conns.size()) {
      throw std::invalid_argument("shard " + range(s.layerBegin, s.layerEnd) + " is placed on worker " +
                                  std::to_string(s.worker) + ", there are " +
                                  std::to_string(impl_->conns.size()));
    }
  }
  const uint64_t hash = modelHash(model);
  const std::string path = opts.path.empty() ? model.path() : opts.path;

  // Shard files are made only when streaming may be needed; total bytes for the progress.
  std::vector<std::unique_ptr<gguf::Writer>> writers(shards.size());
  uint64_t streamTotal = 0, streamDone = 0;
  if (opts.source != ShardSource::Path) {
    for (size_t i = 0; i < shards.size(); ++i) {
      writers[i] = shardWriter(model, cfg, hash, shards[i]);
      streamTotal += writers[i]->totalBytes();
    }
  }

  auto specFor = [&](const ShardPlacement& s) {
    proto::ShardSpecData spec = opts.spec;
    spec.modelName = cfg.name.empty() ? model.path() : cfg.name;
    spec.modelHash = hash;
    spec.layerBegin = s.layerBegin;
    spec.layerEnd = s.layerEnd;
    spec.embed = s.embed;
    spec.head = s.head;
    spec.sourcePath.clear();
    spec.sourceUpload = 0;
    return spec;
  };
  struct Loaded {
    proto::Stage::Client stage;
    proto::StageInfoData info;
  };
  auto loadShard = [&](size_t worker, const proto::ShardSpecData& spec) {
    auto req = impl_->conns[worker]->cap.loadShardRequest();
    proto::writeShardSpec(spec, req.initSpec());
    auto resp = req.send().wait(ws);
    return Loaded{resp.getStage(), proto::readStageInfo(resp.getInfo())};
  };
  // Streams shard i to its worker (unless it holds the file already); returns the file's hash.
  auto upload = [&](size_t i) {
    const gguf::Writer& w = *writers[i];
    proto::Hasher hasher;
    w.stream([&](std::span<const std::byte> b) { hasher.update(b); }, kUploadChunkBytes);
    const uint64_t contentHash = hasher.digest();
    const uint64_t total = w.totalBytes();
    auto req = impl_->conns[shards[i].worker]->cap.uploadRequest();
    req.setBytes(total);
    req.setContentHash(contentHash);
    auto resp = req.send().wait(ws);
    if (resp.getCached()) {
      streamDone += total;
      if (opts.progress) opts.progress(streamDone, streamTotal);
      return contentHash;
    }
    proto::Upload::Client up = resp.getUpload();
    uint64_t offset = 0;
    w.stream(
        [&](std::span<const std::byte> bytes) {
          while (!bytes.empty()) {
            const size_t n = std::min(bytes.size(), kUploadChunkBytes);
            auto wr = up.writeRequest();
            wr.setOffset(offset);
            wr.setData(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(bytes.data()), n));
            wr.send().wait(ws);  // flow control: resolves when the stream may take more
            offset += n;
            streamDone += n;
            bytes = bytes.subspan(n);
            if (opts.progress) opts.progress(streamDone, streamTotal);
          }
        },
        kUploadChunkBytes);
    up.finishRequest().send().wait(ws);
    return contentHash;
  };

  std::vector<Loaded> loaded;
  for (size_t i = 0; i < shards.size(); ++i) {
    const ShardPlacement& s = shards[i];
    const std::string who = "worker " + impl_->conns[s.worker]->address + ": layers " +
                            range(s.layerBegin, s.layerEnd) + ": ";
    proto::ShardSpecData spec = specFor(s);
    std::string pathError;
    if (opts.source != ShardSource::Stream) {
      spec.sourcePath = path;
      try {
        loaded.push_back(loadShard(s.worker, spec));
        continue;
      } catch (const kj::Exception& e) {
        if (opts.source == ShardSource::Path) throw std::runtime_error(who + describe(e));
        pathError = describe(e);
      }
      spec.sourcePath.clear();
    }
    try {
      spec.sourceUpload = upload(i);
      loaded.push_back(loadShard(s.worker, spec));
    } catch (const kj::Exception& e) {
      throw std::runtime_error(who + (pathError.empty() ? "" : "own copy refused (" + pathError + "), ") +
                               "streamed shard: " + describe(e));
    }
  }

  // Stage i sends to stage i + 1: in memory on the same worker, else dialled by its worker.
  for (size_t i = 0; i + 1 < shards.size(); ++i) {
    const ShardPlacement& to = shards[i + 1];
    auto req = loaded[i].stage.linkRequest();
    auto next = req.initNext();
    if (to.worker == shards[i].worker) {
      next.setLocal(loaded[i + 1].info.shardId);
    } else {
      auto remote = next.initRemote();
      remote.setAddress(impl_->conns[to.worker]->address);
      remote.setShardId(loaded[i + 1].info.shardId);
    }
    try {
      req.send().wait(ws);
    } catch (const kj::Exception& e) {
      throw std::runtime_error("worker " + impl_->conns[shards[i].worker]->address + ": linking layers " +
                               range(shards[i].layerBegin, shards[i].layerEnd) + " to " +
                               impl_->conns[to.worker]->address + ": " + describe(e));
    }
  }
  std::vector<proto::Stage::Client> out;
  for (auto& l : loaded) out.emplace_back(l.stage);
  return out;
}

std::vector<std::vector<proto::StageStatsData>> Cluster::stats(bool reset) {
  auto& ws = impl_->io.waitScope;
  std::vector<std::vector<proto::StageStatsData>> out;
  for (auto& c : impl_->conns) {
    try {
      auto req = c->cap.statsRequest();
      req.setReset(reset);
      auto resp = req.send().wait(ws);
      std::vector<proto::StageStatsData> stages;
      for (auto s : resp.getStages()) stages.push_back(proto::readStageStats(s));
      out.push_back(std::move(stages));
    } catch (const kj::Exception& e) {
      throw std::runtime_error("worker " + c->address + ": stats: " + describe(e));
    }
  }
  return out;
}

}  // namespace tern::coord
