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
  const auto n = static_cast<unsigned>(in.seq.size());
  writeList(in.seq, out.initSeqIds(n));
  writeList(in.pos, out.initPositions(n));
  out.setNVocab(in.nVocab);
  auto d = out.initData(static_cast<unsigned>(in.data.size() * sizeof(float)));
  if (!in.data.empty()) std::memcpy(d.begin(), in.data.data(), d.size());
}

LogitsData readLogits(Logits::Reader in) {
  LogitsData l;
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
  return s;
}

}  // namespace tern::proto
