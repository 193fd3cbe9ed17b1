#include "worker/worker_server.hpp"

#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/layouts.hpp"
#include "protocol/handshake.hpp"
#include "protocol/hash.hpp"
#include "worker/metrics.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>
#include <stdexcept>
#include <system_error>
#include <utility>
#include <vector>

namespace tern::worker {

namespace {

using proto::throwRpcError;
[[noreturn]] void fail(const std::string& msg) { throwRpcError(msg); }

namespace fs = std::filesystem;

constexpr uint64_t kMaxChunkBytes = 16ull << 20;  // Upload.write: at most 16 MiB per chunk




std::string rangeText(uint32_t begin, uint32_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}

uint64_t physicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && size > 0 ? uint64_t(pages) * uint64_t(size) : 0;
}

std::string exceptionText(const kj::Exception& e) { return e.getDescription().cStr(); }

// ---------------------------------------------------------------------------------------------
// Shards and the capabilities that reach them.

// One loaded shard. The worker's table and every capability handed out (ShardGate) share it;
// unloading marks it and frees the StageServer (weights, KV caches) as soon as no call runs in it.
struct ShardSlot {
  uint32_t id = 0;
  kj::Own<StageServer> server;  // null once unloaded and idle
  bool unloaded = false;
  int64_t inFlight = 0;         // calls dispatched to server and not finished
  uint64_t weightBytes = 0;     // estimate used for admission (tensor bytes of the shard)
  uint64_t kvBudgetBytes = 0;   // maxSequences x nCtx x kvBytesPerToken

  void release() {
    if (unloaded && inFlight == 0) server = nullptr;
  }
};

// The Stage capability of a shard: forwards every call to the shard's StageServer while it is
// loaded; after Worker.unloadShard every call fails naming the shard.
class ShardGate final : public capnp::Capability::Server {
 public:
  explicit ShardGate(std::shared_ptr<ShardSlot> slot) : slot_(std::move(slot)) {}

  DispatchCallResult dispatchCall(uint64_t interfaceId, uint16_t methodId,
                                  capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context)
      override {
    ShardSlot& s = *slot_;
    if (s.unloaded || !s.server) {
      return {KJ_EXCEPTION(FAILED, kj::str("shard ", s.id, " was unloaded from this worker")),
              false};
    }
    ++s.inFlight;
    kj::Promise<void> promise = nullptr;
    bool streaming = false;
    KJ_IF_MAYBE(e, kj::runCatchingExceptions([&] {
      auto r = s.server->dispatchCall(interfaceId, methodId, context);
      promise = kj::mv(r.promise);
      streaming = r.isStreaming;
    })) {
      --s.inFlight;
      s.release();
      return {kj::Promise<void>(kj::mv(*e)), false};
    }
    auto slot = slot_;
    return {promise.attach(kj::defer([slot] {
              --slot->inFlight;
              slot->release();
            })),
            streaming};
  }

 private:
  std::shared_ptr<ShardSlot> slot_;
};

// ---------------------------------------------------------------------------------------------
// Uploads.

// A shard file arriving in order: written to "<file>.part", checked and renamed by finish().
class UploadServer final : public proto::Upload::Server {
 public:
  UploadServer(std::string finalPath, uint64_t bytes, uint64_t hash,
               std::shared_ptr<std::set<uint64_t>> active)
      : finalPath_(std::move(finalPath)), partPath_(finalPath_ + ".part"), bytes_(bytes),
        hash_(hash), active_(std::move(active)) {
    fd_ = ::open(partPath_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      throw std::runtime_error("upload: cannot create " + partPath_ + ": " + std::strerror(errno));
    }
    active_->insert(hash_);
  }

  ~UploadServer() {
    if (fd_ >= 0) ::close(fd_);
    if (!finished_) ::unlink(partPath_.c_str());
    active_->erase(hash_);
  }

 protected:
  kj::Promise<void> write(WriteContext context) override {
    auto p = context.getParams();
    const uint64_t offset = p.getOffset();
    auto data = p.getData();
    const std::string what = "upload of shard " + proto::hashHex(hash_);
    if (finished_) fail(what + ": write after finish");
    if (offset != received_) {
      fail(what + ": chunk at offset " + std::to_string(offset) + ", expected offset " +
           std::to_string(received_) + " (chunks must come in order)");
    }
    if (data.size() > kMaxChunkBytes) {
      fail(what + ": chunk of " + std::to_string(data.size()) + " bytes is over the limit of " +
           std::to_string(kMaxChunkBytes) + " bytes (16 MiB)");
    }
    if (data.size() > bytes_ - received_) {
      fail(what + ": chunk [" + std::to_string(offset) + ", " +
           std::to_string(offset + data.size()) + ") goes beyond the declared size of " +
           std::to_string(bytes_) + " bytes");
    }
    const auto* src = reinterpret_cast<const std::byte*>(data.begin());
    size_t done = 0;
    while (done < data.size()) {
      const ssize_t n = ::write(fd_, src + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail(what + ": cannot write " + partPath_ + ": " + std::strerror(errno));
      done += size_t(n);
    }
    hasher_.update({src, data.size()});
    received_ += data.size();
    return kj::READY_NOW;
  }

  kj::Promise<void> finish(FinishContext) override {
    const std::string what = "upload of shard " + proto::hashHex(hash_);
    if (finished_) fail(what + ": finished twice");
    if (received_ != bytes_) {
      fail(what + ": received " + std::to_string(received_) + " bytes, declared " +
           std::to_string(bytes_));
    }
    const uint64_t got = hasher_.digest();
    if (got != hash_) {
      fail(what + ": content hash " + proto::hashHex(got) + " differs from the declared " +
           proto::hashHex(hash_) + " (damaged in transit or a different file)");
    }
    if (::close(fd_) != 0) {
      fd_ = -1;
      fail(what + ": cannot close " + partPath_ + ": " + std::strerror(errno));
    }
    fd_ = -1;
    if (std::rename(partPath_.c_str(), finalPath_.c_str()) != 0) {
      fail(what + ": cannot rename " + partPath_ + ": " + std::strerror(errno));
    }
    finished_ = true;
    return kj::READY_NOW;
  }

 private:
  std::string finalPath_, partPath_;
  uint64_t bytes_, hash_;
  std::shared_ptr<std::set<uint64_t>> active_;
  int fd_ = -1;
  uint64_t received_ = 0;
  proto::Hasher hasher_;
  bool finished_ = false;
};

// ---------------------------------------------------------------------------------------------
// Parsing ShardSpec strings.

ops::ActQuant parseActQuant(const std::string& s) {
  if (s.empty() || s == "auto") return ops::ActQuant::Auto;
  if (s == "int8") return ops::ActQuant::Int8;
  if (s == "float") return ops::ActQuant::Float;
  throw std::invalid_argument("actQuant '" + s + "' is not auto, int8 or float");
}

ops::KvType parseKvType(const std::string& s) {
  if (s.empty() || s == "f16") return ops::KvType::F16;
  if (s == "f32") return ops::KvType::F32;
  throw std::invalid_argument("kvType '" + s + "' is not f16 or f32");
}

ops::HeadType parseHeadType(const std::string& s) {
  if (s.empty() || s == "f16") return ops::HeadType::Float;
  if (s == "q8") return ops::HeadType::Q8;
  throw std::invalid_argument("headType '" + s + "' is not f16 or q8");
}


}  // namespace

// ---------------------------------------------------------------------------------------------

// A connection this worker dialled to another worker (NextHop.remote), kept for reuse.
struct Peer {
  kj::Own<proto::WorkerConnection> conn;  // null until dialled
  kj::Maybe<kj::ForkedPromise<proto::Worker::Client>> ready;
  kj::Promise<void> watch = nullptr;   // marks the peer dead when the connection drops
  bool dead = false;
};

struct WorkerServer::Impl {
  Impl(WorkerOptions o, kj::Network& n, proto::WorkerInfoData& i)
      : opts(std::move(o)), network(n), info(i) {}

  WorkerOptions opts;
  kj::Network& network;
  proto::WorkerInfoData& info;  // WorkerServer::info_ (freeBytes kept current)
  std::unique_ptr<WorkerMetrics> metrics;
  std::string cacheDir;
  fs::path modelDir;         // canonical; empty = no shards by path
  bool ownCacheDir = false;  // a temporary directory made by this worker: removed at the end
  std::shared_ptr<std::set<uint64_t>> uploading = std::make_shared<std::set<uint64_t>>();
  std::map<uint32_t, std::shared_ptr<ShardSlot>> shards;
  uint32_t nextShardId = 1;
  std::map<std::string, kj::Own<Peer>> peers;
  std::vector<kj::Own<Peer>> deadPeers;

  uint64_t reservedBytes() const {
    uint64_t n = 0;
    for (const auto& [id, s] : shards) n += s->weightBytes + s->kvBudgetBytes;
    return n;
  }
  uint64_t weightBytes() const {
    uint64_t n = 0;
    for (const auto& [id, s] : shards) n += s->weightBytes;
    return n;
  }
  void updateFree() {
    const uint64_t used = reservedBytes();
    info.freeBytes = info.memoryBytes > used ? info.memoryBytes - used : 0;
    if (metrics) metrics->setWeightBytes(weightBytes());
  }

  std::string uploadPath(uint64_t hash) const {
    return (fs::path(cacheDir) / ("shard-" + proto::hashHex(hash) + ".gguf")).string();
  }

  static proto::Stage::Client gate(const std::shared_ptr<ShardSlot>& slot) {
    return capnp::Capability::Client(kj::heap<ShardGate>(slot)).castAs<proto::Stage>();
  }

  kj::Promise<proto::Worker::Client> dial(const std::string& address);
  kj::Promise<proto::Stage::Client> resolve(uint32_t self, proto::NextHop::Reader hop);
};

kj::Promise<proto::Worker::Client> WorkerServer::Impl::dial(const std::string& address) {
  auto it = peers.find(address);
  if (it != peers.end()) {
    if (!it->second->dead) return KJ_ASSERT_NONNULL(it->second->ready).addBranch();
    deadPeers.push_back(kj::mv(it->second));  // its capabilities may still be referenced
    peers.erase(it);
  }
  auto peer = kj::heap<Peer>();
  Peer* p = peer.get();
  kj::Promise<proto::Worker::Client> connected =
      proto::dialWorker(network, address, opts.insecure)
          .then([p](kj::Own<proto::WorkerConnection> conn) {
            p->conn = kj::mv(conn);
            p->watch = p->conn->rpc->onDisconnect()
                           .then([p] { p->dead = true; }, [p](kj::Exception&&) { p->dead = true; })
                           .eagerlyEvaluate(nullptr);
            return p->conn->cap;
          })
          .catch_([p, address](kj::Exception&& e) -> proto::Worker::Client {
            p->dead = true;  // the next link dials again
            fail("cannot reach worker " + address + ": " + exceptionText(e));
          });
  p->ready = connected.fork();
  auto branch = KJ_ASSERT_NONNULL(p->ready).addBranch();
  peers[address] = kj::mv(peer);
  return branch;
}

kj::Promise<proto::Stage::Client> WorkerServer::Impl::resolve(uint32_t self,
                                                              proto::NextHop::Reader hop) {
  switch (hop.which()) {
    case proto::NextHop::LOCAL: {
      const uint32_t id = hop.getLocal();
      if (id == self) fail("shard " + std::to_string(id) + " cannot send to itself");
      auto it = shards.find(id);
      if (it == shards.end()) {
        fail("no shard " + std::to_string(id) + " on this worker (" + info.address + ")");
      }
      // Through a continuation: an immediate Promise<Client> trips a -Wmaybe-uninitialized
      // false positive in kj 0.9's headers with g++ 12.
      return kj::evalLater([slot = it->second] { return gate(slot); });
    }
    case proto::NextHop::REMOTE: {
      auto r = hop.getRemote();
      const std::string address = r.getAddress();
      const uint32_t id = r.getShardId();
      if (address.empty()) fail("remote hop without an address");
      if (address == info.address && id == self) {
        fail("shard " + std::to_string(id) + " cannot send to itself");
      }
      return dial(address).then([id](proto::Worker::Client w) {
        auto req = w.shardRequest();
        req.setShardId(id);
        return req.send().then([](capnp::Response<proto::Worker::ShardResults>&& resp) {
          return resp.getStage();
        });
      });
    }
    case proto::NextHop::SINK:
      break;
  }
  fail("this hop is not another stage");
}

// ---------------------------------------------------------------------------------------------

WorkerServer::WorkerServer(WorkerOptions opts, kj::Network& network,
                           proto::WorkerInfoData description)
    : impl_(std::make_unique<Impl>(std::move(opts), network, info_)), info_(std::move(description)) {
  Impl& w = *impl_;
  if (w.opts.memoryLimitBytes > 0) info_.memoryBytes = w.opts.memoryLimitBytes;
  if (info_.memoryBytes == 0) info_.memoryBytes = physicalMemoryBytes();
  if (info_.address.empty()) info_.address = w.opts.address;
  if (w.opts.threads == 0) w.opts.threads = info_.threads;
  if (w.opts.cacheDir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    w.cacheDir = (fs::path(tmp && *tmp ? tmp : "/tmp") /
                  ("tern-worker-" + std::to_string(::getpid()) + "-" +
                   std::to_string(reinterpret_cast<uintptr_t>(this) & 0xffffff)))
                     .string();
    w.ownCacheDir = true;
  } else {
    w.cacheDir = w.opts.cacheDir;
  }
  if (!w.opts.modelDir.empty()) {
    std::error_code dirEc;
    w.modelDir = fs::canonical(w.opts.modelDir, dirEc);
    if (dirEc || !fs::is_directory(w.modelDir)) {
      throw std::runtime_error("--model-dir " + w.opts.modelDir + " is not a directory" +
                               (dirEc ? ": " + dirEc.message() : std::string()));
    }
  }
  std::error_code ec;
  fs::create_directories(w.cacheDir, ec);
  if (ec) throw std::runtime_error("cannot create the cache directory " + w.cacheDir + ": " + ec.message());
  if (w.opts.metrics) w.metrics = std::make_unique<WorkerMetrics>(w.opts.metrics, info_);
  w.updateFree();
}

WorkerServer::~WorkerServer() {
  Impl& w = *impl_;
  // Capabilities of our shards may outlive us (held by peers): make them fail, free the stages
  // now (their next hops reference our peers), then drop the connections.
  for (auto& [id, s] : w.shards) {
    s->unloaded = true;
    s->server = nullptr;
  }
  w.shards.clear();
  w.peers.clear();
  w.deadPeers.clear();
  if (w.ownCacheDir) {
    std::error_code ec;
    fs::remove_all(w.cacheDir, ec);
  }
}

kj::Promise<void> WorkerServer::hello(HelloContext context) {
  proto::checkPeerVersion(context.getParams().getVersion());
  impl_->updateFree();
  auto results = context.getResults();
  results.setVersion(proto::PROTOCOL_VERSION);
  proto::writeWorkerInfo(info_, results.initInfo());
  return kj::READY_NOW;
}

kj::Promise<void> WorkerServer::upload(UploadContext context) {
  Impl& w = *impl_;
  auto p = context.getParams();
  const uint64_t bytes = p.getBytes(), hash = p.getContentHash();
  const std::string path = w.uploadPath(hash);
  if (bytes == 0) fail("upload of shard " + proto::hashHex(hash) + ": 0 bytes");
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  auto results = context.getResults();
  if (!ec && size == bytes) {
    results.setCached(true);
    return kj::READY_NOW;
  }
  if (w.uploading->count(hash)) {
    fail("upload of shard " + proto::hashHex(hash) + ": another upload of it is in progress");
  }
  try {
    results.setUpload(kj::heap<UploadServer>(path, bytes, hash, w.uploading));
  } catch (const std::exception& e) {
    fail(e.what());
  }
  results.setCached(false);
  return kj::READY_NOW;
}

// The file a shard by path may be read from: `requested` (relative to modelDir when relative)
// resolved through "..", "." and symlinks, which must lie inside modelDir. Refused (an RPC error
// naming the path, before the file is opened) otherwise, and always without a modelDir.
static std::string confinedPath(const fs::path& modelDir, const std::string& requested, const std::string& layers) {
  if (modelDir.empty()) {
    fail("loadShard " + layers + ": this worker reads no model file by path (start it with --model-dir "
         "DIR to allow files inside DIR); send the shard streamed");
  }
  const fs::path p = fs::path(requested).is_absolute() ? fs::path(requested) : modelDir / requested;
  // Containment first (weakly_canonical resolves the existing part, symlinks included), so that
  // whether a file outside exists is never told.
  std::error_code ec;
  const fs::path real = fs::weakly_canonical(p, ec);
  const auto rel = ec ? fs::path() : real.lexically_relative(modelDir);
  if (rel.empty() || *rel.begin() == ".." || rel.is_absolute()) {
    fail("loadShard " + layers + ": " + requested + " is outside this worker's --model-dir " +
         modelDir.string());
  }
  if (!fs::is_regular_file(real, ec)) {
    fail("loadShard " + layers + ": " + requested + " is not a file in --model-dir " + modelDir.string());
  }
  return real.string();
}

kj::Promise<void> WorkerServer::loadShard(LoadShardContext context) {
  Impl& w = *impl_;
  proto::ShardSpecData spec;
  try {
    spec = proto::readShardSpec(context.getParams().getSpec());
  } catch (const std::exception& e) {
    fail(std::string("loadShard: ") + e.what());
  }
  const std::string layers = "layers " + rangeText(spec.layerBegin, spec.layerEnd);

  // The file and its identity.
  std::shared_ptr<const gguf::File> file;
  const bool fromUpload = spec.sourcePath.empty();
  const std::string path = fromUpload ? w.uploadPath(spec.sourceUpload)
                                      : confinedPath(w.modelDir, spec.sourcePath, layers);
  if (fromUpload && !fs::exists(path)) {
    fail("loadShard " + layers + ": no uploaded shard " + proto::hashHex(spec.sourceUpload) +
         " on this worker (upload it first)");
  }
  try {
    file = gguf::File::open(path);
  } catch (const std::exception& e) {
    fail("loadShard " + layers + ": " + e.what());
  }
  if (fromUpload) {
    const std::string want = proto::hashHex(spec.modelHash);
    std::string got;
    try {
      got = file->getStringOr(proto::kShardModelHashKey, "");
    } catch (const std::exception& e) {
      fail("loadShard " + layers + ": " + e.what());
    }
    if (got.empty()) {
      fail("loadShard " + layers + ": uploaded file " + path +
           " is not a shard (no " + std::string(proto::kShardModelHashKey) + ")");
    }
    if (got != want) {
      fail("loadShard " + layers + ": uploaded shard " + proto::hashHex(spec.sourceUpload) +
           " belongs to model " + got + ", expected " + want);
    }
  } else {
    const uint64_t h = proto::hash64(file->bytes(0, file->dataOffset()));
    if (h != spec.modelHash) {
      fail("model at " + path + " is not the coordinator's model (hash " + proto::hashHex(h) +
           ", expected " + proto::hashHex(spec.modelHash) + ")");
    }
  }
  ModelConfig cfg;
  try {
    cfg = ModelConfig::fromGguf(*file);
  } catch (const std::exception& e) {
    fail("loadShard " + layers + ": " + e.what());
  }
  if (spec.layerEnd > cfg.nLayer) {
    fail("loadShard " + layers + ": the model has " + std::to_string(cfg.nLayer) + " layers");
  }
  // The tensors this stage reads (a shard file holds only those), before anything is allocated.
  try {
    cfg.validateTensors(*file, spec.layerBegin, spec.layerEnd, spec.embed, spec.head);
  } catch (const std::exception& e) {
    fail("loadShard " + layers + ": " + e.what());
  }

  // Admission: weights + the KV budget must fit in what is free. Weights are counted once: the
  // stage copies projections into (huge-page) anonymous memory on this node; the file's mapped
  // pages are page cache the kernel can drop.
  uint64_t weightBytes = 0;
  for (const gguf::TensorInfo& t : file->tensors()) {
    if (cfg.stageUses(t.name, spec.layerBegin, spec.layerEnd, spec.embed, spec.head)) {
      weightBytes += t.nbytes;
    }
  }
  ops::StageOptions so;
  try {
    so.actQuant = parseActQuant(spec.actQuant);
    so.kvType = parseKvType(spec.kvType);
    so.head = parseHeadType(spec.headType);
  } catch (const std::exception& e) {
    fail(std::string("loadShard: ") + e.what());
  }
  so.kernels = spec.kernels.empty() ? "auto" : spec.kernels;
  // The bound OpenMP team has opts.threads threads: more would start unbound threads.
  const unsigned teamThreads = w.opts.threads > 0 ? w.opts.threads : 1;
  const unsigned threads = spec.threads > 0 ? std::min<unsigned>(spec.threads, teamThreads) : teamThreads;
  so.threads = int(threads);
  so.hugePages = true;
  const uint64_t kvPerToken = kvBytesPerPosition(cfg.kvDim(), spec.layerEnd - spec.layerBegin,
                                                 ops::kvElementBytes(so.kvType));
  const uint64_t kvBudget = kvPerToken * spec.nCtx * spec.maxSequences;
  w.updateFree();
  const uint64_t freeBytes = w.info.freeBytes;
  if (weightBytes + kvBudget > freeBytes) {
    fail("shard " + layers + " needs " + humanBytes(weightBytes) + " of weights + " +
         humanBytes(kvBudget) + " of KV cache (" + std::to_string(spec.maxSequences) +
         " sequences x " + std::to_string(spec.nCtx) + " positions), this worker has " +
         humanBytes(freeBytes) + " free");
  }

  std::unique_ptr<ops::Stage> stage;
  try {
    auto build = [&] {
      return std::make_unique<ops::Stage>(
          file, cfg, ops::StageRange{spec.layerBegin, spec.layerEnd, spec.embed, spec.head}, so);
    };
    // On the compute thread: the weight copies are first touched by the bound team.
    stage = w.opts.compute ? w.opts.compute->runSync(build) : build();
  } catch (const std::exception& e) {
    fail("loadShard " + layers + ": " + e.what());
  }

  const uint32_t id = w.nextShardId++;
  auto slot = std::make_shared<ShardSlot>();
  slot->id = id;
  slot->weightBytes = weightBytes;
  slot->kvBudgetBytes = kvBudget;
  StageInstruments inst;
  if (w.metrics) inst = w.metrics->stage(spec.layerBegin, spec.layerEnd, stage->kernelName());
  Impl* impl = impl_.get();
  HopResolver resolver = [impl, id](proto::NextHop::Reader hop) { return impl->resolve(id, hop); };
  slot->server = kj::heap<StageServer>(std::move(stage), threads, info_.machine, id,
                                       StageLimits{spec.maxSequences, spec.nCtx},
                                       std::move(resolver), inst, w.opts.compute);
  const proto::StageInfoData stageInfo = slot->server->info();
  w.shards.emplace(id, slot);
  w.updateFree();

  auto results = context.getResults();
  results.setStage(Impl::gate(slot));
  proto::writeStageInfo(stageInfo, results.initInfo());
  return kj::READY_NOW;
}

kj::Promise<void> WorkerServer::shard(ShardContext context) {
  const uint32_t id = context.getParams().getShardId();
  auto it = impl_->shards.find(id);
  if (it == impl_->shards.end()) {
    fail("no shard " + std::to_string(id) + " on worker " + info_.address);
  }
  context.getResults().setStage(Impl::gate(it->second));
  return kj::READY_NOW;
}

kj::Promise<void> WorkerServer::stats(StatsContext context) {
  const bool reset = context.getParams().getReset();
  auto& shards = impl_->shards;
  auto list = context.getResults().initStages(static_cast<unsigned>(shards.size()));
  unsigned i = 0;
  for (auto& [id, s] : shards) {
    proto::writeStageStats(s->server->stats(), list[i++]);
    if (reset) s->server->resetStats();
  }
  return kj::READY_NOW;
}

kj::Promise<void> WorkerServer::unloadShard(UnloadShardContext context) {
  Impl& w = *impl_;
  const uint32_t id = context.getParams().getShardId();
  auto it = w.shards.find(id);
  if (it == w.shards.end()) {
    fail("unloadShard: no shard " + std::to_string(id) + " on worker " + info_.address);
  }
  auto slot = it->second;
  w.shards.erase(it);
  slot->unloaded = true;
  slot->release();
  w.updateFree();
  return kj::READY_NOW;
}

}  // namespace tern::worker
