// Workers over real Cap'n Proto RPC on loopback TCP: WorkerThreads (calibrate = false) serving
// stories260K shards; handshake, admission, validation of every request, remote links between
// two workers, uploads, unloading and the binding read back through hwloc.
#include "model/config.hpp"
#include "model/gguf.hpp"
#include "protocol/codec.hpp"
#include "protocol/hash.hpp"
#include "topology/binding.hpp"
#include "topology/machine.hpp"
#include "worker/host.hpp"

#include <capnp/rpc-twoparty.h>
#include <prometheus/registry.h>
#include <doctest/doctest.h>
#include <kj/async-io.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

using namespace tern;

namespace {

const std::string kModel = std::string(TERN_TEST_DATA) + "/stories260K/stories260K.gguf";

uint64_t modelHashOf(const gguf::File& f) { return proto::hash64(f.bytes(0, f.dataOffset())); }

worker::HostOptions hostOptions(uint64_t memoryLimit = 0) {
  worker::HostOptions h;
  h.listen = "127.0.0.1:0";
  h.calibrate = false;
  h.memoryLimitBytes = memoryLimit;
  h.modelDir = std::string(TERN_TEST_DATA) + "/stories260K";
  return h;
}

// One client connection to a worker, on the test thread's event loop.
struct Conn {
  Conn(kj::AsyncIoContext& io, const std::string& address)
      : stream(io.provider->getNetwork().parseAddress(address).wait(io.waitScope)->connect().wait(
            io.waitScope)),
        rpc(*stream),
        worker(rpc.bootstrap().castAs<proto::Worker>()) {}
  kj::Own<kj::AsyncIoStream> stream;
  capnp::TwoPartyClient rpc;
  proto::Worker::Client worker;
};

// Runs f() (which returns a promise) and returns the error's description, "" when it succeeded.
template <typename F>
std::string rpcError(kj::WaitScope& ws, F&& f) {
  try {
    f().wait(ws);
  } catch (const kj::Exception& e) {
    return e.getDescription().cStr();
  }
  return "";
}

#define CHECK_ERROR(msg, part)                                                                  \
  do {                                                                                          \
    const std::string m_ = (msg);                                                               \
    CHECK_MESSAGE(m_.find(part) != std::string::npos, "expected '", part, "' in: '", m_, "'"); \
  } while (0)

proto::ShardSpecData spec(uint64_t hash, uint32_t begin, uint32_t end, bool embed, bool head,
                          uint32_t maxSequences = 4, uint32_t nCtx = 64) {
  proto::ShardSpecData s;
  s.modelName = "stories260K";
  s.modelHash = hash;
  s.layerBegin = begin;
  s.layerEnd = end;
  s.embed = embed;
  s.head = head;
  s.sourcePath = kModel;
  s.maxSequences = maxSequences;
  s.nCtx = nCtx;
  return s;
}

kj::Promise<capnp::Response<proto::Worker::LoadShardResults>> loadAsync(Conn& c,
                                                                       const proto::ShardSpecData& s) {
  auto req = c.worker.loadShardRequest();
  proto::writeShardSpec(s, req.initSpec());
  return req.send();
}

struct Loaded {
  proto::Stage::Client stage;
  proto::StageInfoData info;
};

Loaded load(Conn& c, kj::WaitScope& ws, const proto::ShardSpecData& s) {
  auto resp = loadAsync(c, s).wait(ws);
  return {resp.getStage(), proto::readStageInfo(resp.getInfo())};
}

void openSeq(proto::Stage::Client& st, kj::WaitScope& ws, uint64_t seq, uint32_t maxLen) {
  auto req = st.openSequenceRequest();
  req.setSeqId(seq);
  req.setMaxLen(maxLen);
  req.send().wait(ws);
}

// Collects the logits the last stage delivers.
class TestSink final : public proto::Sink::Server {
 public:
  explicit TestSink(std::vector<proto::LogitsData>& out) : out_(out) {}

 protected:
  kj::Promise<void> deliver(DeliverContext context) override {
    out_.push_back(proto::readLogits(context.getParams().getLogits()));
    return kj::READY_NOW;
  }

 private:
  std::vector<proto::LogitsData>& out_;
};

void linkSink(proto::Stage::Client& st, kj::WaitScope& ws, std::vector<proto::LogitsData>& out) {
  auto req = st.linkRequest();
  req.initNext().setSink(kj::heap<TestSink>(out));
  req.send().wait(ws);
}

kj::Promise<void> forward(proto::Stage::Client& st, const proto::BatchData& b) {
  auto req = st.forwardRequest();
  proto::writeBatch(b, req.initBatch());
  return req.send().ignoreResult();
}

proto::BatchData tokenBatch(uint64_t seq, uint32_t pos0, std::vector<int32_t> tokens, uint64_t id) {
  proto::BatchData b;
  b.id = id;
  for (size_t i = 0; i < tokens.size(); ++i) {
    b.seq.push_back(seq);
    b.pos.push_back(pos0 + uint32_t(i));
    b.wantLogits.push_back(1);
  }
  b.tokens = std::move(tokens);
  return b;
}

proto::BatchData actBatch(uint64_t seq, uint32_t pos0, uint32_t n, uint32_t nEmbd, uint64_t id) {
  proto::BatchData b;
  b.id = id;
  b.nEmbd = nEmbd;
  for (uint32_t i = 0; i < n; ++i) {
    b.seq.push_back(seq);
    b.pos.push_back(pos0 + i);
    b.wantLogits.push_back(1);
  }
  b.act.resize(size_t(n) * nEmbd);
  for (size_t i = 0; i < b.act.size(); ++i) b.act[i] = float(int(i * 37 % 101) - 50) / 25.0f;
  return b;
}

std::string kib(uint64_t b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f KiB", double(b) / 1024.0);
  return buf;
}


bool sameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("worker: hello, version mismatch, and threads bound to the node's cores") {
  worker::WorkerThread w(hostOptions());
  auto io = kj::setupAsyncIo();
  Conn c(io, w.address());

  auto req = c.worker.helloRequest();
  req.setVersion(proto::PROTOCOL_VERSION);
  auto resp = req.send().wait(io.waitScope);
  CHECK(resp.getVersion() == proto::PROTOCOL_VERSION);
  const proto::WorkerInfoData info = proto::readWorkerInfo(resp.getInfo());
  CHECK(info.address == w.address());
  CHECK(info.threads > 0);
  CHECK(info.memoryBytes > 0);
  CHECK(info.freeBytes == info.memoryBytes);  // nothing loaded
  CHECK(!info.kernel.empty());
  CHECK(!info.nodes.empty());

  const std::string err = rpcError(io.waitScope, [&] {
    auto bad = c.worker.helloRequest();
    bad.setVersion(proto::PROTOCOL_VERSION + 1);
    return bad.send().ignoreResult();
  });
  CHECK_ERROR(err, "protocol version mismatch: peer " + std::to_string(proto::PROTOCOL_VERSION + 1) +
                       ", ours " + std::to_string(proto::PROTOCOL_VERSION));

  // The binding as hwloc reads it back: one thread per core of the node.
  const topo::Machine m = topo::Machine::detect();
  REQUIRE(info.numaNode >= 0);
  const topo::NumaNode* node = nullptr;
  for (const auto& n : m.nodes)
    if (int(n.index) == info.numaNode) node = &n;
  REQUIRE(node != nullptr);
  CHECK(info.cores == node->cores.size());
  const std::string nodeCpus = topo::CpuSet(node->cores).toString();
  if (info.bindingWarning.empty()) {
    CHECK(info.boundCpus == nodeCpus);
  } else {
    MESSAGE("binding refused on this machine: ", info.bindingWarning);
    // A refused thread binding reports no CPUs; a refused memory binding alone keeps them.
    CHECK((info.boundCpus.empty() || info.boundCpus == nodeCpus));
  }
}

TEST_CASE("worker: loadShard refuses a different model, a missing range and what does not fit") {
  auto file = gguf::File::open(kModel);
  const ModelConfig cfg = ModelConfig::fromGguf(*file);
  const uint64_t hash = modelHashOf(*file);
  const uint64_t limit = 256 * 1024;  // stories260K's weights are ~1 MiB: nothing fits
  worker::WorkerThread w(hostOptions(limit));
  auto io = kj::setupAsyncIo();
  Conn c(io, w.address());
  auto& ws = io.waitScope;

  std::string err = rpcError(ws, [&] { return loadAsync(c, spec(hash ^ 1, 0, 5, true, true)).ignoreResult(); });
  CHECK_ERROR(err, "model at " + kModel + " is not the coordinator's model (hash " + proto::hashHex(hash) +
                       ", expected " + proto::hashHex(hash ^ 1) + ")");

  err = rpcError(ws, [&] { return loadAsync(c, spec(hash, 2, 9, false, true)).ignoreResult(); });
  CHECK_ERROR(err, "the model has 5 layers");

  auto missing = spec(hash, 0, 5, true, true);
  missing.sourcePath = "/nonexistent/model.gguf";
  err = rpcError(ws, [&] { return loadAsync(c, missing).ignoreResult(); });
  CHECK_ERROR(err, "/nonexistent/model.gguf");

  // 4 sequences x 64 positions x (2 x kvDim x 5 layers x 2 bytes).
  const uint64_t kv = 4ull * 64 * 2 * cfg.kvDim() * 5 * 2;
  err = rpcError(ws, [&] { return loadAsync(c, spec(hash, 0, 5, true, true, 4, 64)).ignoreResult(); });
  CHECK_ERROR(err, "shard layers [0, 5) needs ");
  CHECK_ERROR(err, " of weights + " + kib(kv) + " of KV cache (4 sequences x 64 positions), this worker has " +
                       kib(limit) + " free");

  // Refused before anything was held: all of it is still free.
  auto hello = c.worker.helloRequest();
  hello.setVersion(proto::PROTOCOL_VERSION);
  CHECK(proto::readWorkerInfo(hello.send().wait(ws).getInfo()).freeBytes == limit);
}

TEST_CASE("worker: limits and malformed requests fail one by one, the connection keeps serving") {
  auto file = gguf::File::open(kModel);
  const ModelConfig cfg = ModelConfig::fromGguf(*file);
  const uint64_t hash = modelHashOf(*file);
  worker::WorkerThread w(hostOptions());
  auto io = kj::setupAsyncIo();
  Conn c(io, w.address());
  auto& ws = io.waitScope;

  // A whole-model shard (tokens in, logits out) and a later shard (activations in).
  Loaded whole = load(c, ws, spec(hash, 0, 5, true, true, 2, 16));
  Loaded tail = load(c, ws, spec(hash, 2, 5, false, true, 2, 16));
  CHECK(whole.info.layerBegin == 0);
  CHECK(whole.info.layerEnd == 5);
  CHECK(tail.info.shardId > whole.info.shardId);
  CHECK(whole.info.kvBudgetBytes == 2ull * 16 * whole.info.kvBytesPerToken);

  std::vector<proto::LogitsData> out;
  auto valid = [&](uint32_t pos) {
    const size_t before = out.size();
    forward(whole.stage, tokenBatch(1, pos, {int32_t(10 + pos)}, pos)).wait(ws);
    REQUIRE(out.size() == before + 1);
    CHECK(out.back().rows() == 1);
    CHECK(out.back().pos[0] == pos);
    CHECK(out.back().nVocab == cfg.nVocab);
  };

  // Sequence limits.
  std::string err = rpcError(ws, [&] {
    auto r = whole.stage.openSequenceRequest();
    r.setSeqId(1);
    r.setMaxLen(17);
    return r.send().ignoreResult();
  });
  CHECK_ERROR(err, "maxLen 17 is over this shard's context of 16 positions");
  openSeq(whole.stage, ws, 1, 16);
  openSeq(whole.stage, ws, 2, 16);
  err = rpcError(ws, [&] {
    auto r = whole.stage.openSequenceRequest();
    r.setSeqId(3);
    r.setMaxLen(4);
    return r.send().ignoreResult();
  });
  CHECK_ERROR(err, "this shard holds at most 2");

  // Forward before link.
  err = rpcError(ws, [&] { return forward(whole.stage, tokenBatch(1, 0, {5}, 0)); });
  CHECK_ERROR(err, "not linked");
  linkSink(whole.stage, ws, out);
  valid(0);

  // Unknown sequence, wrong position.
  err = rpcError(ws, [&] { return forward(whole.stage, tokenBatch(99, 0, {5}, 0)); });
  CHECK_ERROR(err, "unknown sequence 99");
  valid(1);
  err = rpcError(ws, [&] { return forward(whole.stage, tokenBatch(1, 7, {5}, 0)); });
  CHECK_ERROR(err, "expects position 2, got 7");
  valid(2);

  // Activations of the wrong size, built by hand (the codec's writer would refuse them).
  std::vector<proto::LogitsData> tailOut;
  linkSink(tail.stage, ws, tailOut);
  openSeq(tail.stage, ws, 1, 16);
  err = rpcError(ws, [&] {
    auto r = tail.stage.forwardRequest();
    auto b = r.initBatch();
    b.initSeqIds(1).set(0, 1);
    b.initPositions(1).set(0, 0);
    b.initWantLogits(1).set(0, true);
    b.setNEmbd(cfg.nEmbd);
    b.initActivations(cfg.nEmbd * 4 - 4);
    return r.send().ignoreResult();
  });
  CHECK_ERROR(err, "batch.activations");
  forward(tail.stage, actBatch(1, 0, 1, cfg.nEmbd, 0)).wait(ws);
  CHECK(tailOut.size() == 1);

  // A payload over kMaxPayloadBytes.
  err = rpcError(ws, [&] {
    auto r = tail.stage.forwardRequest();
    auto b = r.initBatch();
    b.initSeqIds(1).set(0, 1);
    b.initPositions(1).set(0, 1);
    b.initWantLogits(1).set(0, true);
    b.setNEmbd(cfg.nEmbd);
    b.initActivations(unsigned(proto::kMaxPayloadBytes + 4));
    return r.send().ignoreResult();
  });
  CHECK_ERROR(err, "message budget");
  forward(tail.stage, actBatch(1, 1, 1, cfg.nEmbd, 1)).wait(ws);
  CHECK(tailOut.size() == 2);

  // A layer range that is not loaded here: an unknown shard id.
  err = rpcError(ws, [&] {
    auto r = c.worker.shardRequest();
    r.setShardId(12345);
    return r.send().ignoreResult();
  });
  CHECK_ERROR(err, "no shard 12345 on worker " + w.address());
  valid(3);

  // Counters of both shards.
  auto sreq = c.worker.statsRequest();
  sreq.setReset(false);
  auto statsResp = sreq.send().wait(ws);
  auto stats = statsResp.getStages();
  REQUIRE(stats.size() == 2);
  CHECK(stats[0].getShardId() == whole.info.shardId);
  CHECK(stats[0].getBatches() == 4);
  CHECK(stats[0].getTokens() == 4);
  CHECK(stats[0].getSequences() == 2);
  CHECK(stats[1].getBatches() == 2);
}

TEST_CASE("worker: two workers linked remote give the logits of one shard, bit for bit") {
  auto file = gguf::File::open(kModel);
  const uint64_t hash = modelHashOf(*file);
  worker::WorkerThread a(hostOptions()), b(hostOptions());
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  Conn ca(io, a.address()), cb(io, b.address());

  Loaded first = load(ca, ws, spec(hash, 0, 2, true, false));
  Loaded second = load(cb, ws, spec(hash, 2, 5, false, true));
  Loaded whole = load(ca, ws, spec(hash, 0, 5, true, true));

  std::vector<proto::LogitsData> split, one;
  linkSink(second.stage, ws, split);
  linkSink(whole.stage, ws, one);
  {
    // A remote hop to a shard the other worker does not have is refused at link time.
    auto bad = first.stage.linkRequest();
    auto r = bad.initNext().initRemote();
    r.setAddress(b.address());
    r.setShardId(second.info.shardId + 100);
    CHECK_ERROR(rpcError(ws, [&] { return bad.send().ignoreResult(); }), "no shard");
    // And one to an address where nobody listens names the address.
    auto dead = first.stage.linkRequest();
    auto d = dead.initNext().initRemote();
    d.setAddress("127.0.0.1:1");
    d.setShardId(1);
    CHECK_ERROR(rpcError(ws, [&] { return dead.send().ignoreResult(); }),
                "cannot reach worker 127.0.0.1:1");
  }
  auto link = first.stage.linkRequest();
  auto r = link.initNext().initRemote();
  r.setAddress(b.address());
  r.setShardId(second.info.shardId);
  link.send().wait(ws);

  // The same split within worker a: a local hop.
  Loaded localFirst = load(ca, ws, spec(hash, 0, 3, true, false));
  Loaded localSecond = load(ca, ws, spec(hash, 3, 5, false, true));
  std::vector<proto::LogitsData> local;
  linkSink(localSecond.stage, ws, local);
  auto self = localFirst.stage.linkRequest();
  self.initNext().setLocal(localFirst.info.shardId);
  CHECK_ERROR(rpcError(ws, [&] { return self.send().ignoreResult(); }), "cannot send to itself");
  auto linkLocal = localFirst.stage.linkRequest();
  linkLocal.initNext().setLocal(localSecond.info.shardId);
  linkLocal.send().wait(ws);

  for (auto* st : {&first.stage, &second.stage, &whole.stage, &localFirst.stage, &localSecond.stage})
    openSeq(*st, ws, 7, 32);
  const std::vector<int32_t> prompt = {1, 65, 300, 42, 7};
  for (auto* st : {&first.stage, &whole.stage, &localFirst.stage})
    forward(*st, tokenBatch(7, 0, prompt, 1)).wait(ws);
  for (auto* st : {&first.stage, &whole.stage, &localFirst.stage})
    forward(*st, tokenBatch(7, 5, {99}, 2)).wait(ws);
  REQUIRE(split.size() == 2);
  REQUIRE(one.size() == 2);
  REQUIRE(local.size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(split[i].batchId == one[i].batchId);
    CHECK(split[i].pos == one[i].pos);
    CHECK(split[i].rows() == (i == 0 ? 5u : 1u));
    CHECK(sameBits(split[i].data, one[i].data));
    CHECK(sameBits(local[i].data, one[i].data));
  }

  // Unloading the next hop makes the pipeline fail with a clear error, not hang or crash.
  auto un = ca.worker.unloadShardRequest();
  un.setShardId(localSecond.info.shardId);
  un.send().wait(ws);
  CHECK_ERROR(rpcError(ws, [&] { return forward(localFirst.stage, tokenBatch(7, 6, {5}, 3)); }),
              "was unloaded");
}

TEST_CASE("worker: prometheus series of the worker and its stages") {
  auto file = gguf::File::open(kModel);
  const uint64_t hash = modelHashOf(*file);
  auto registry = std::make_shared<prometheus::Registry>();
  auto opts = hostOptions();
  opts.metrics = registry;
  worker::WorkerThread w(opts);
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  Conn c(io, w.address());
  Loaded whole = load(c, ws, spec(hash, 0, 5, true, true));
  std::vector<proto::LogitsData> out;
  linkSink(whole.stage, ws, out);
  openSeq(whole.stage, ws, 1, 16);
  forward(whole.stage, tokenBatch(1, 0, {1, 2, 3}, 1)).wait(ws);

  // name{labels} -> value of every counter and gauge series.
  std::map<std::string, double> values;
  for (const prometheus::MetricFamily& f : registry->Collect()) {
    for (const prometheus::ClientMetric& m : f.metric) {
      std::string key = f.name + "{";
      for (const auto& l : m.label) key += l.name + "=" + l.value + ",";
      key += "}";
      values[key] = f.type == prometheus::MetricType::Counter ? m.counter.value
                    : f.type == prometheus::MetricType::Gauge ? m.gauge.value
                    : f.type == prometheus::MetricType::Histogram ? double(m.histogram.sample_count)
                                                                  : -1;
    }
  }
  const std::string stage = "kernel=" + whole.info.kernel + ",layers=0-4,worker=" + w.address() + ",}";
  CHECK(values["tern_stage_tokens_total{" + stage] == 3);
  CHECK(values["tern_stage_batches_total{" + stage] == 1);
  CHECK(values["tern_stage_forward_seconds{" + stage] == 1);
  CHECK(values["tern_stage_sequences{" + stage] == 1);
  CHECK(values["tern_stage_kv_cache_bytes{" + stage] == 16.0 * whole.info.kvBytesPerToken);
  CHECK(values["tern_worker_weight_bytes{worker=" + w.address() + ",}"] > 0);
  CHECK(values["tern_worker_threads{worker=" + w.address() + ",}"] == w.info().threads);
  CHECK(values["tern_worker_info{address=" + w.address() + ",kernel=" + w.info().kernel +
               ",worker=" + w.address() + ",}"] == 1);
}

TEST_CASE("worker: uploads are checked, cached, and load as shards; unloaded shards fail") {
  auto file = gguf::File::open(kModel);
  const ModelConfig cfg = ModelConfig::fromGguf(*file);
  const uint64_t hash = modelHashOf(*file);

  // The shard file of layers [2, 5) with the head, as the coordinator writes it.
  gguf::Writer wr(3, file->alignment());
  for (const auto& [key, value] : file->metadata()) wr.set(key, value);
  wr.setString(proto::kShardModelHashKey, proto::hashHex(hash));
  for (const gguf::TensorInfo& t : file->tensors()) {
    const bool layer = t.name.rfind("blk.2.", 0) == 0 || t.name.rfind("blk.3.", 0) == 0 ||
                       t.name.rfind("blk.4.", 0) == 0;
    const bool head = t.name == tensor_names::kOutputNorm || t.name == tensor_names::kOutput ||
                      (cfg.tiedHead && t.name == tensor_names::kTokenEmbd);
    if (!layer && !head) continue;
    const auto bytes = file->data(t);
    wr.addTensor(t.name, t.type, t.ne, [bytes](std::span<std::byte> dst, uint64_t off) {
      std::memcpy(dst.data(), bytes.data() + off, dst.size());
    });
  }
  std::vector<std::byte> shard;
  wr.stream([&](std::span<const std::byte> b) { shard.insert(shard.end(), b.begin(), b.end()); });
  REQUIRE(shard.size() == wr.totalBytes());
  const uint64_t shardHash = proto::hash64(shard);

  worker::WorkerThread w(hostOptions());
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  Conn c(io, w.address());

  auto startUpload = [&](uint64_t declaredHash, uint64_t bytes) {
    auto req = c.worker.uploadRequest();
    req.setBytes(bytes);
    req.setContentHash(declaredHash);
    return req.send().wait(ws);
  };
  auto send = [&](proto::Upload::Client& up, uint64_t offset, size_t n) {
    auto req = up.writeRequest();
    req.setOffset(offset);
    auto d = req.initData(unsigned(n));
    std::memcpy(d.begin(), shard.data() + offset, n);
    return req.send();
  };
  auto sendAll = [&](proto::Upload::Client& up) {
    constexpr size_t kChunk = 64 * 1024;
    for (size_t off = 0; off < shard.size(); off += kChunk) {
      send(up, off, std::min(kChunk, shard.size() - off)).wait(ws);
    }
    return up.finishRequest().send().ignoreResult();
  };

  // Wrong hash: refused at finish, naming both hashes.
  {
    auto r = startUpload(shardHash ^ 0xff, shard.size());
    REQUIRE(!r.getCached());
    auto up = r.getUpload();
    CHECK_ERROR(rpcError(ws, [&] { return sendAll(up); }), "content hash " + proto::hashHex(shardHash));
  }
  // Out of order, oversized and past the declared size: each refused. write() is a streaming
  // call: its error may surface on a later call of the same upload (here finish()).
  auto thenFinish = [&](proto::Upload::Client& up, kj::Promise<void> write) {
    return write.then([up]() mutable { return up.finishRequest().send().ignoreResult(); });
  };
  {
    auto up = startUpload(shardHash, shard.size()).getUpload();
    CHECK_ERROR(rpcError(ws, [&] { return thenFinish(up, send(up, 64, 64)); }),
                "chunk at offset 64, expected offset 0");
  }
  {
    auto up = startUpload(shardHash, shard.size()).getUpload();
    auto req = up.writeRequest();
    req.setOffset(0);
    req.initData((16u << 20) + 1);
    CHECK_ERROR(rpcError(ws, [&] { return thenFinish(up, req.send()); }), "over the limit");
  }
  {
    auto up = startUpload(shardHash, 100).getUpload();
    CHECK_ERROR(rpcError(ws, [&] { return thenFinish(up, send(up, 0, 101)); }),
                "beyond the declared size of 100");
  }
  {
    auto up = startUpload(shardHash, shard.size()).getUpload();
    CHECK_ERROR(rpcError(ws, [&] { return thenFinish(up, send(up, 0, 64)); }),
                "received 64 bytes, declared " + std::to_string(shard.size()));
  }
  // Loading an upload that never finished.
  auto upSpec = spec(hash, 2, 5, false, true);
  upSpec.sourcePath.clear();
  upSpec.sourceUpload = shardHash;
  CHECK_ERROR(rpcError(ws, [&] { return loadAsync(c, upSpec).ignoreResult(); }),
              "no uploaded shard " + proto::hashHex(shardHash));

  // The right hash: kept, then cached.
  {
    auto r = startUpload(shardHash, shard.size());
    REQUIRE(!r.getCached());
    auto up = r.getUpload();
    sendAll(up).wait(ws);
  }
  CHECK(startUpload(shardHash, shard.size()).getCached());

  // A shard of another model is refused.
  auto otherModel = upSpec;
  otherModel.modelHash = hash ^ 2;
  CHECK_ERROR(rpcError(ws, [&] { return loadAsync(c, otherModel).ignoreResult(); }),
              "belongs to model " + proto::hashHex(hash));

  // Loaded from the upload, it computes what the same layers from the whole file compute.
  Loaded fromUpload = load(c, ws, upSpec);
  Loaded fromPath = load(c, ws, spec(hash, 2, 5, false, true));
  CHECK(fromUpload.info.weightBytes == fromPath.info.weightBytes);
  std::vector<proto::LogitsData> outU, outP;
  linkSink(fromUpload.stage, ws, outU);
  linkSink(fromPath.stage, ws, outP);
  openSeq(fromUpload.stage, ws, 1, 8);
  openSeq(fromPath.stage, ws, 1, 8);
  forward(fromUpload.stage, actBatch(1, 0, 3, cfg.nEmbd, 5)).wait(ws);
  forward(fromPath.stage, actBatch(1, 0, 3, cfg.nEmbd, 5)).wait(ws);
  REQUIRE(outU.size() == 1);
  REQUIRE(outP.size() == 1);
  CHECK(sameBits(outU[0].data, outP[0].data));

  // Unloading: the capability fails afterwards, the memory is free again.
  auto hello = [&] {
    auto h = c.worker.helloRequest();
    h.setVersion(proto::PROTOCOL_VERSION);
    return proto::readWorkerInfo(h.send().wait(ws).getInfo());
  };
  const uint64_t freeLoaded = hello().freeBytes;
  auto un = c.worker.unloadShardRequest();
  un.setShardId(fromPath.info.shardId);
  un.send().wait(ws);
  CHECK(hello().freeBytes > freeLoaded);
  CHECK_ERROR(rpcError(ws, [&] { return forward(fromPath.stage, actBatch(1, 3, 1, cfg.nEmbd, 6)); }),
              "was unloaded");
  auto again = c.worker.unloadShardRequest();
  again.setShardId(fromPath.info.shardId);
  CHECK_ERROR(rpcError(ws, [&] { return again.send().ignoreResult(); }), "no shard");
  forward(fromUpload.stage, actBatch(1, 3, 1, cfg.nEmbd, 7)).wait(ws);
  CHECK(outU.size() == 2);
}

TEST_CASE("worker: stopping a worker with clients connected and shards loaded") {
  auto file = gguf::File::open(kModel);
  const uint64_t hash = modelHashOf(*file);
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  auto w = std::make_unique<worker::WorkerThread>(hostOptions());
  Conn c(io, w->address());
  Loaded whole = load(c, ws, spec(hash, 0, 5, true, true));
  openSeq(whole.stage, ws, 1, 8);
  w.reset();  // stops its loop, closes the connection, frees the shard
  const std::string err = rpcError(ws, [&] {
    auto h = c.worker.helloRequest();
    h.setVersion(proto::PROTOCOL_VERSION);
    return h.send().ignoreResult();
  });
  CHECK(!err.empty());
  CHECK(!rpcError(ws, [&] { return forward(whole.stage, tokenBatch(1, 0, {5}, 1)); }).empty());
}

TEST_CASE("worker: shards by path only from inside --model-dir (no .., no symlink out); none without one") {
  namespace fs = std::filesystem;
  char tmpl[] = "/tmp/tern-modeldir-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const fs::path root = tmpl;
  const fs::path dir = root / "models";
  fs::create_directories(dir);
  fs::copy_file(kModel, dir / "stories.gguf");
  fs::copy_file(kModel, root / "outside.gguf");
  fs::create_symlink(root / "outside.gguf", dir / "link.gguf");
  fs::create_symlink(dir / "stories.gguf", dir / "inner-link.gguf");

  auto file = gguf::File::open(kModel);
  const uint64_t hash = modelHashOf(*file);
  {
    worker::HostOptions h = hostOptions();
    h.modelDir = dir.string();
    worker::WorkerThread w(h);
    auto io = kj::setupAsyncIo();
    Conn c(io, w.address());
    auto& ws = io.waitScope;
    auto at = [&](const std::string& path) {
      auto s = spec(hash, 0, 5, true, true);
      s.sourcePath = path;
      return rpcError(ws, [&] { return loadAsync(c, s).ignoreResult(); });
    };
    const std::string outside = "is outside this worker's --model-dir " + fs::canonical(dir).string();
    CHECK_ERROR(at((dir / ".." / "outside.gguf").string()), outside);
    CHECK_ERROR(at("../outside.gguf"), outside);
    CHECK_ERROR(at((dir / "link.gguf").string()), outside);
    CHECK_ERROR(at("/etc/passwd"), outside);
    CHECK_ERROR(at("/nonexistent/secret.gguf"), outside);  // existence outside is never told
    CHECK_ERROR(at((dir / "missing.gguf").string()), "is not a file in --model-dir");
    CHECK_ERROR(at(dir.string()), "is not a file in --model-dir");
    // Inside: absolute, relative to the directory, and through a symlink that stays inside.
    CHECK(at((dir / "stories.gguf").string()) == "");
    CHECK(at("stories.gguf") == "");
    CHECK(at((dir / "inner-link.gguf").string()) == "");
  }
  {
    worker::HostOptions h = hostOptions();
    h.modelDir.clear();
    worker::WorkerThread w(h);
    auto io = kj::setupAsyncIo();
    Conn c(io, w.address());
    auto s = spec(hash, 0, 5, true, true);
    s.sourcePath = (dir / "stories.gguf").string();
    CHECK_ERROR(rpcError(io.waitScope, [&] { return loadAsync(c, s).ignoreResult(); }),
                "this worker reads no model file by path (start it with --model-dir");
  }
  {
    worker::HostOptions h = hostOptions();
    h.modelDir = (root / "no-such-dir").string();
    CHECK_THROWS_WITH_AS(worker::WorkerThread{h}, doctest::Contains("is not a directory"), std::exception);
  }
  fs::remove_all(root);
}
