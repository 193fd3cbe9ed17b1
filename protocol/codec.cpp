#include "protocol/codec.hpp"

#include <bit>
#include <cstring>
#include <stdexcept>

namespace tern::proto {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the wire carries float32 little endian; add byte swapping for this host");

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

template <typename T, typename List>
std::vector<T> readList(List list) {
  std::vector<T> v;
  v.reserve(list.size());
  for (auto x : list) v.push_back(static_cast<T>(x));
  return v;
}

template <typename T, typename Builder>
void writeList(const std::vector<T>& v, Builder b) {
  for (unsigned i = 0; i < v.size(); ++i) b.set(i, v[i]);
}

std::vector<float> readFloats(capnp::Data::Reader d, const char* field, uint64_t expectedBytes,
                              const std::string& shape) {
  if (d.size() != expectedBytes) {
    bad(std::string(field) + ": " + std::to_string(d.size()) + " bytes, expected " +
        std::to_string(expectedBytes) + " (" + shape + ")");
  }
  std::vector<float> v(expectedBytes / sizeof(float));
  if (!v.empty()) std::memcpy(v.data(), d.begin(), expectedBytes);
  return v;
}

void checkLength(size_t got, size_t n, const char* field) {
  if (got != n) {
    bad(std::string(field) + ": " + std::to_string(got) + " entries, expected " + std::to_string(n));
  }
}

}  // namespace

kj::Exception rpcError(const std::string& message) {
  return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__,
                       kj::heapString(message.c_str()));
}

void throwRpcError(const std::string& message) { kj::throwFatalException(rpcError(message)); }

void validateBatch(const BatchData& b) {
  const size_t n = b.seq.size();
  if (n == 0) bad("batch.seqIds: empty batch");
  checkLength(b.pos.size(), n, "batch.positions");
  checkLength(b.wantLogits.size(), n, "batch.wantLogits");
  if (!b.tokens.empty()) {
    checkLength(b.tokens.size(), n, "batch.tokens");
    if (!b.act.empty()) bad("batch: has both tokens and activations");
  } else {
    if (b.nEmbd == 0) bad("batch.nEmbd: 0 with no tokens");
    const uint64_t want = uint64_t{n} * b.nEmbd;
    if (b.act.size() != want) {
      bad("batch.activations: " + std::to_string(b.act.size() * 4) + " bytes, expected " +
          std::to_string(want * 4) + " (n=" + std::to_string(n) +
          ", nEmbd=" + std::to_string(b.nEmbd) + ")");
    }
  }
  if (b.act.size() * sizeof(float) > kMaxPayloadBytes) {
    bad("batch.activations: " + std::to_string(b.act.size() * 4) + " bytes exceed the " +
        std::to_string(kMaxPayloadBytes) + "-byte message budget");
  }
}

void validateLogits(const LogitsData& l) {
  checkLength(l.pos.size(), l.seq.size(), "logits.positions");
  if (l.nVocab == 0) bad("logits.nVocab: 0");
  const uint64_t want = uint64_t{l.seq.size()} * l.nVocab;
  if (l.data.size() != want) {
    bad("logits.data: " + std::to_string(l.data.size()) + " floats, expected " + std::to_string(want));
  }
  if (want * sizeof(float) > kMaxPayloadBytes) {
    bad("logits.data: " + std::to_string(want * 4) + " bytes exceed the " +
        std::to_string(kMaxPayloadBytes) + "-byte message budget");
  }
}

void writeBatch(const BatchData& in, Batch::Builder out) {
  validateBatch(in);
  out.setId(in.id);
  const auto n = static_cast<unsigned>(in.seq.size());
  writeList(in.seq, out.initSeqIds(n));
  writeList(in.pos, out.initPositions(n));
  writeList(in.tokens, out.initTokens(static_cast<unsigned>(in.tokens.size())));
  out.setNEmbd(in.act.empty() ? 0 : in.nEmbd);
  auto act = out.initActivations(static_cast<unsigned>(in.act.size() * sizeof(float)));
  if (!in.act.empty()) std::memcpy(act.begin(), in.act.data(), act.size());
  auto want = out.initWantLogits(n);
  for (unsigned i = 0; i < n; ++i) want.set(i, in.wantLogits[i] != 0);
}

BatchData readBatch(Batch::Reader in) {
  BatchData b;
  b.id = in.getId();
  b.seq = readList<uint64_t>(in.getSeqIds());
  const size_t n = b.seq.size();
  if (n == 0) bad("batch.seqIds: empty batch");
  checkLength(in.getPositions().size(), n, "batch.positions");
  b.pos = readList<uint32_t>(in.getPositions());
  checkLength(in.getWantLogits().size(), n, "batch.wantLogits");
  b.wantLogits = readList<uint8_t>(in.getWantLogits());
  b.nEmbd = in.getNEmbd();
  auto tokens = in.getTokens();
  auto act = in.getActivations();
  if (uint64_t{act.size()} > kMaxPayloadBytes) {
    bad("batch.activations: " + std::to_string(act.size()) + " bytes exceed the " +
        std::to_string(kMaxPayloadBytes) + "-byte message budget");
  }
  if (tokens.size() != 0) {
    checkLength(tokens.size(), n, "batch.tokens");
    if (act.size() != 0) bad("batch: has both tokens and activations");
    b.tokens = readList<int32_t>(tokens);
  } else {
    if (b.nEmbd == 0) bad("batch.nEmbd: 0 with no tokens");
    b.act = readFloats(act, "batch.activations", uint64_t{n} * b.nEmbd * sizeof(float),
                       "n=" + std::to_string(n) + ", nEmbd=" + std::to_string(b.nEmbd));
  }
  return b;
}

void writeLogits(const LogitsData& in, Logits::Builder out) {
  validateLogits(in);
  out.setBatchId(in.batchId);
  const auto n = static_cast<unsigned>(in.seq.size());
  writeList(in.seq, out.initSeqIds(n));
  writeList(in.pos, out.initPositions(n));
  out.setNVocab(in.nVocab);
  auto d = out.initData(static_cast<unsigned>(in.data.size() * sizeof(float)));
  if (!in.data.empty()) std::memcpy(d.begin(), in.data.data(), d.size());
}

LogitsData readLogits(Logits::Reader in) {
  LogitsData l;
  l.batchId = in.getBatchId();
  l.seq = readList<uint64_t>(in.getSeqIds());
  checkLength(in.getPositions().size(), l.seq.size(), "logits.positions");
  l.pos = readList<uint32_t>(in.getPositions());
  l.nVocab = in.getNVocab();
  if (l.nVocab == 0) bad("logits.nVocab: 0");
  l.data = readFloats(in.getData(), "logits.data", uint64_t{l.seq.size()} * l.nVocab * sizeof(float),
                      "rows=" + std::to_string(l.seq.size()) + ", nVocab=" + std::to_string(l.nVocab));
  return l;
}

void writeStageInfo(const StageInfoData& in, StageInfo::Builder out) {
  out.setLayerBegin(in.layerBegin);
  out.setLayerEnd(in.layerEnd);
  out.setEmbed(in.embed);
  out.setHead(in.head);
  out.setKernel(in.kernel);
  out.setWeightBytes(in.weightBytes);
  out.setThreads(in.threads);
  out.setMachine(in.machine);
  out.setShardId(in.shardId);
  out.setKvBytesPerToken(in.kvBytesPerToken);
  out.setKvBudgetBytes(in.kvBudgetBytes);
}

StageInfoData readStageInfo(StageInfo::Reader in) {
  StageInfoData s;
  s.layerBegin = in.getLayerBegin();
  s.layerEnd = in.getLayerEnd();
  if (s.layerEnd < s.layerBegin) bad("stageInfo.layerEnd: before layerBegin");
  s.embed = in.getEmbed();
  s.head = in.getHead();
  s.kernel = in.getKernel();
  s.weightBytes = in.getWeightBytes();
  s.threads = in.getThreads();
  s.machine = in.getMachine();
  s.shardId = in.getShardId();
  s.kvBytesPerToken = in.getKvBytesPerToken();
  s.kvBudgetBytes = in.getKvBudgetBytes();
  return s;
}

void writeWorkerInfo(const WorkerInfoData& in, WorkerInfo::Builder out) {
  out.setHost(in.host);
  out.setAddress(in.address);
  out.setNumaNode(in.numaNode);
  out.setCores(in.cores);
  out.setThreads(in.threads);
  out.setMemoryBytes(in.memoryBytes);
  out.setFreeBytes(in.freeBytes);
  auto nodes = out.initNodes(static_cast<unsigned>(in.nodes.size()));
  for (unsigned i = 0; i < in.nodes.size(); ++i) {
    nodes[i].setIndex(in.nodes[i].index);
    nodes[i].setCores(in.nodes[i].cores);
    nodes[i].setMemoryBytes(in.nodes[i].memoryBytes);
  }
  out.setKernel(in.kernel);
  out.setCalibrationGmacs(in.calibrationGmacs);
  out.setBandwidthGBs(in.bandwidthGBs);
  out.setBoundCpus(in.boundCpus);
  out.setBindingWarning(in.bindingWarning);
  out.setMachine(in.machine);
}

WorkerInfoData readWorkerInfo(WorkerInfo::Reader in) {
  WorkerInfoData w;
  w.host = in.getHost();
  w.address = in.getAddress();
  w.numaNode = in.getNumaNode();
  w.cores = in.getCores();
  w.threads = in.getThreads();
  w.memoryBytes = in.getMemoryBytes();
  w.freeBytes = in.getFreeBytes();
  for (auto n : in.getNodes()) w.nodes.push_back({n.getIndex(), n.getCores(), n.getMemoryBytes()});
  w.kernel = in.getKernel();
  w.calibrationGmacs = in.getCalibrationGmacs();
  w.bandwidthGBs = in.getBandwidthGBs();
  if (!(w.calibrationGmacs >= 0) || !(w.bandwidthGBs >= 0)) {
    bad("workerInfo: negative or NaN calibration/bandwidth");
  }
  w.boundCpus = in.getBoundCpus();
  w.bindingWarning = in.getBindingWarning();
  w.machine = in.getMachine();
  return w;
}

void writeShardSpec(const ShardSpecData& in, ShardSpec::Builder out) {
  out.setModelName(in.modelName);
  out.setModelHash(in.modelHash);
  out.setLayerBegin(in.layerBegin);
  out.setLayerEnd(in.layerEnd);
  out.setEmbed(in.embed);
  out.setHead(in.head);
  if (!in.sourcePath.empty()) out.getSource().setPath(in.sourcePath);
  else out.getSource().setUpload(in.sourceUpload);
  out.setMaxSequences(in.maxSequences);
  out.setNCtx(in.nCtx);
  out.setThreads(in.threads);
  out.setKernels(in.kernels);
  out.setActQuant(in.actQuant);
  out.setKvType(in.kvType);
  out.setHeadType(in.headType);
}

ShardSpecData readShardSpec(ShardSpec::Reader in) {
  ShardSpecData s;
  s.modelName = in.getModelName();
  s.modelHash = in.getModelHash();
  s.layerBegin = in.getLayerBegin();
  s.layerEnd = in.getLayerEnd();
  s.embed = in.getEmbed();
  s.head = in.getHead();
  // No layers is fine for a stage that holds only the embedding or the head.
  if (s.layerEnd < s.layerBegin || (s.layerEnd == s.layerBegin && !s.embed && !s.head)) {
    bad("shardSpec: empty layer range [" + std::to_string(s.layerBegin) + ", " +
        std::to_string(s.layerEnd) + ") without the embedding or the head");
  }
  auto src = in.getSource();
  if (src.isPath()) {
    s.sourcePath = src.getPath();
    if (s.sourcePath.empty()) bad("shardSpec.source.path: empty");
  } else {
    s.sourceUpload = src.getUpload();
  }
  s.maxSequences = in.getMaxSequences();
  if (s.maxSequences == 0) bad("shardSpec.maxSequences: 0");
  s.nCtx = in.getNCtx();
  if (s.nCtx == 0) bad("shardSpec.nCtx: 0");
  s.threads = in.getThreads();
  s.kernels = in.getKernels();
  s.actQuant = in.getActQuant();
  s.kvType = in.getKvType();
  s.headType = in.getHeadType();
  return s;
}

void writeStageStats(const StageStatsData& in, StageStats::Builder out) {
  out.setShardId(in.shardId);
  out.setLayerBegin(in.layerBegin);
  out.setLayerEnd(in.layerEnd);
  out.setBatches(in.batches);
  out.setTokens(in.tokens);
  out.setComputeSeconds(in.computeSeconds);
  out.setTransferSeconds(in.transferSeconds);
  out.setWaitSeconds(in.waitSeconds);
  out.setBytesIn(in.bytesIn);
  out.setBytesOut(in.bytesOut);
  out.setSequences(in.sequences);
  out.setKvBytes(in.kvBytes);
  out.setMergedBatches(in.mergedBatches);
}

StageStatsData readStageStats(StageStats::Reader in) {
  StageStatsData s;
  s.shardId = in.getShardId();
  s.layerBegin = in.getLayerBegin();
  s.layerEnd = in.getLayerEnd();
  s.batches = in.getBatches();
  s.tokens = in.getTokens();
  s.computeSeconds = in.getComputeSeconds();
  s.transferSeconds = in.getTransferSeconds();
  s.waitSeconds = in.getWaitSeconds();
  s.bytesIn = in.getBytesIn();
  s.bytesOut = in.getBytesOut();
  s.sequences = in.getSequences();
  s.kvBytes = in.getKvBytes();
  s.mergedBatches = in.getMergedBatches();
  return s;
}

}  // namespace tern::proto
