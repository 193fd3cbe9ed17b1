#include "ops/stage.hpp"

#include "kernels/dispatch.hpp"
#include "kernels/f16.hpp"
#include "ops/group.hpp"
#include "ops/linear.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace tern::ops {

namespace tn = tensor_names;

namespace {

// Norm weights are small: copied to fp32 vectors.
std::vector<float> loadNorm(const gguf::File& file, const std::string& name, uint32_t n) {
  const gguf::TensorInfo* t = file.findTensor(name);
  if (!t) file.fail("missing tensor '" + name + "'");
  if (t->type != TensorType::F32 || t->nelements() != n)
    file.fail(name + ": expected " + std::to_string(n) + " F32 values");
  std::vector<float> w(n);
  std::memcpy(w.data(), file.data(*t).data(), size_t(n) * 4);
  return w;
}

// y = x * (1 / sqrt(mean(x^2) + eps)) * w, the sum of squares in double (as ggml).
void rmsNorm(const float* x, const float* w, uint32_t n, float eps, float* y) {
  double ss = 0.0;
  for (uint32_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  const float mean = float(ss / n);
  const float scale = 1.0f / std::sqrt(mean + eps);
  for (uint32_t i = 0; i < n; ++i) y[i] = (x[i] * scale) * w[i];
}

struct Layer {
  std::vector<float> attnNorm, attnSubNorm, ffnNorm, ffnSubNorm;
  Linear q, k, v, o, gate, up, down;
};

// K and V of one layer for one sequence: [len][kvDim], fp16 bits or fp32.
struct KvLayer {
  std::vector<uint16_t> k16, v16;
  std::vector<float> k32, v32;
};

struct Sequence {
  uint32_t nCtx = 0;
  uint32_t len = 0;
  std::vector<KvLayer> layers;  // one per held layer
};

}  // namespace

struct Stage::Impl {
  std::shared_ptr<const gguf::File> file;
  ModelConfig cfg;
  StageRange range;
  StageOptions opts;
  const kernels::KernelTable* kt = nullptr;
  int threads = 1;

  std::vector<Layer> layers;
  const gguf::TensorInfo* embd = nullptr;
  std::vector<float> outputNorm;
  Linear head;
  HeadQ8 headQ8;  // opts.head == Q8
  HugeBuffer weights;  // opts.hugePages: every projection's (and the float head's) weights
  uint64_t bytes = 0;
  // Which group inputs are quantised / need TL3 tables, over all held layers.
  bool int8D = false, tl3D = false, int8Q = false, tl3Q = false, int8F = false, tl3F = false;

  std::map<uint64_t, Sequence> seqs;

  bool f16Kv() const { return opts.kvType == KvType::F16; }

  void embedRow(int32_t token, float* dst) const;
  void moveToHugePages();
  void ropeAngles(uint32_t pos, float* cosT, float* sinT) const;
  void ropeRow(float* v, uint32_t nHeads, const float* cosT, const float* sinT) const;
  // Attention of token t, head h (one work item).
  void attendHead(const KvLayer& c, uint32_t len, const float* qt, uint32_t h, float* out,
                  std::vector<float>& qh, std::vector<float>& p) const;
};

// Copies every projection's weights (and the float head's) into one huge-page buffer and points
// the Linears there; owned repacked copies are freed.
void Stage::Impl::moveToHugePages() {
  std::vector<Linear*> lins;
  for (Layer& L : layers)
    for (Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) lins.push_back(l);
  if (range.head && opts.head == HeadType::Float) lins.push_back(&head);
  auto bytesOf = [](const Linear& l) { return l.owned.empty() ? size_t(l.bytes) : l.owned.size(); };
  auto align = [](size_t b) { return (b + 63) / 64 * 64; };
  size_t total = 0;
  for (const Linear* l : lins) total += align(bytesOf(*l));
  if (total == 0) return;
  weights = HugeBuffer(total);
  std::vector<size_t> at(lins.size());
  for (size_t i = 0, off = 0; i < lins.size(); ++i) {
    at[i] = off;
    off += align(bytesOf(*lins[i]));
  }
  // Copied in 1 MiB pieces by all threads (page faults and reads of the mapped file included).
  constexpr size_t kPiece = size_t(1) << 20;
  std::vector<std::pair<size_t, size_t>> pieces;  // (linear, offset within it)
  for (size_t i = 0; i < lins.size(); ++i)
    for (size_t o = 0; o < bytesOf(*lins[i]); o += kPiece) pieces.emplace_back(i, o);
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
  for (int64_t j = 0; j < int64_t(pieces.size()); ++j) {
    const auto [i, o] = pieces[size_t(j)];
    const size_t len = std::min(kPiece, bytesOf(*lins[i]) - o);
    std::memcpy(weights.data() + at[i] + o, static_cast<const std::byte*>(lins[i]->data) + o, len);
  }
  for (size_t i = 0; i < lins.size(); ++i) {
    lins[i]->data = weights.data() + at[i];
    std::vector<uint8_t>().swap(lins[i]->owned);
  }
}

void Stage::Impl::embedRow(int32_t token, float* dst) const {
  const std::byte* base = file->data(*embd).data();
  const uint32_t d = cfg.nEmbd;
  const size_t row = size_t(token) * d;
  switch (embd->type) {
    case TensorType::F32:
      std::memcpy(dst, base + row * 4, size_t(d) * 4);
      break;
    case TensorType::F16:
    case TensorType::BF16:
      for (uint32_t i = 0; i < d; ++i) {
        uint16_t h;
        std::memcpy(&h, base + (row + i) * 2, 2);
        dst[i] = embd->type == TensorType::F16 ? kernels::fp16ToFp32(h) : kernels::bf16ToFp32(h);
      }
      break;
    default:
      break;  // rejected at load
  }
}

// RoPE angles as ggml computes them: theta_i = pos * base^(-2i/nRot), the power built up by float
// multiplication. cosT, sinT: [nRot / 2].
void Stage::Impl::ropeAngles(uint32_t pos, float* cosT, float* sinT) const {
  const uint32_t half = cfg.nRot / 2;
  const float thetaScale = std::pow(cfg.ropeTheta, -2.0f / float(cfg.nRot));
  float theta = float(pos);
  for (uint32_t i = 0; i < half; ++i) {
    cosT[i] = std::cos(theta);
    sinT[i] = std::sin(theta);
    theta *= thetaScale;
  }
}

// Rotates the first nRot dims of each of nHeads head vectors (headDim apart): NORM rotates pairs
// (2i, 2i+1), NEOX pairs (i, i + nRot/2).
void Stage::Impl::ropeRow(float* v, uint32_t nHeads, const float* cosT, const float* sinT) const {
  const uint32_t half = cfg.nRot / 2;
  for (uint32_t h = 0; h < nHeads; ++h) {
    float* x = v + size_t(h) * cfg.headDim;
    for (uint32_t i = 0; i < half; ++i) {
      const uint32_t a = cfg.rope == RopeStyle::Neox ? i : 2 * i;
      const uint32_t b = cfg.rope == RopeStyle::Neox ? i + half : 2 * i + 1;
      const float x0 = x[a], x1 = x[b];
      x[a] = x0 * cosT[i] - x1 * sinT[i];
      x[b] = x0 * sinT[i] + x1 * cosT[i];
    }
  }
}

// Head h of one token: qt [qDim] after RoPE, out [headDim]; attends to positions 0..len-1 of its
// sequence (its own K/V already written). F16 KV: Q and the softmax output are rounded to fp16.
// qh [headDim] and p are the calling thread's scratch.
void Stage::Impl::attendHead(const KvLayer& c, uint32_t len, const float* qt, uint32_t h, float* out,
                             std::vector<float>& qh, std::vector<float>& p) const {
  const uint32_t hd = cfg.headDim, kvDim = cfg.kvDim();
  const uint32_t kvh = h / (cfg.nHead / cfg.nHeadKv);
  const float scale = 1.0f / std::sqrt(float(hd));
  const bool f16 = f16Kv();
  const float* qs = qt + size_t(h) * hd;
  for (uint32_t d = 0; d < hd; ++d) qh[d] = f16 ? kernels::roundFp16(qs[d]) : qs[d];
  p.resize(len);
  float maxS = -INFINITY;
  for (uint32_t j = 0; j < len; ++j) {
    const size_t off = size_t(j) * kvDim + size_t(kvh) * hd;
    p[j] = (f16 ? kt->dotF16(qh.data(), c.k16.data() + off, hd) : kt->dotF32(qh.data(), c.k32.data() + off, hd)) *
           scale;
    maxS = std::max(maxS, p[j]);
  }
  double sum = 0.0;
  for (uint32_t j = 0; j < len; ++j) {
    p[j] = std::exp(p[j] - maxS);
    sum += p[j];
  }
  const float inv = float(1.0 / sum);
  std::fill(out, out + hd, 0.0f);
  for (uint32_t j = 0; j < len; ++j) {
    const float pj = p[j] * inv;
    const size_t off = size_t(j) * kvDim + size_t(kvh) * hd;
    if (f16) {
      kt->axpyF16(out, kernels::roundFp16(pj), c.v16.data() + off, hd);
    } else {
      const float* vp = c.v32.data() + off;
      for (uint32_t d = 0; d < hd; ++d) out[d] += pj * vp[d];
    }
  }
}

Stage::Stage(std::shared_ptr<const gguf::File> file, const ModelConfig& cfg, StageRange range,
             StageOptions opts)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  if (!file) throw std::invalid_argument("stage: no model file");
  if (range.layerBegin > range.layerEnd || range.layerEnd > cfg.nLayer)
    throw std::invalid_argument("stage range [" + std::to_string(range.layerBegin) + ", " +
                                std::to_string(range.layerEnd) + ") is not inside the model's " +
                                std::to_string(cfg.nLayer) + " layers");
  if (range.layerBegin == range.layerEnd && !range.embed && !range.head)
    throw std::invalid_argument("stage range [" + std::to_string(range.layerBegin) + ", " +
                                std::to_string(range.layerEnd) +
                                ") holds no layer, no embedding and no head");
  if (opts.threads < 0)
    throw std::invalid_argument("stage: threads = " + std::to_string(opts.threads) + " < 0");
  s.kt = &kernels::selectKernels(opts.kernels);
  s.file = std::move(file);
  s.cfg = cfg;
  s.range = range;
  s.opts = opts;
  s.threads = opts.threads > 0 ? opts.threads : omp_get_max_threads();
  const gguf::File& f = *s.file;
  // The tensors this stage reads (a shard file holds only those).
  cfg.validateTensors(f, range.layerBegin, range.layerEnd, range.embed, range.head);

  const uint32_t d = cfg.nEmbd, qd = cfg.qDim(), kvd = cfg.kvDim(), ff = cfg.nFf;
  auto bitLinear = [&](const std::string& name, uint32_t k, uint32_t nOut) {
    const gguf::TensorInfo* t = f.findTensor(name);
    bool int8 = false;
    switch (opts.actQuant) {
      case ActQuant::Auto: {
        const TensorTypeTraits* tr = t ? tensorTypeTraits(t->type) : nullptr;
        int8 = tr && tr->ternary;  // BitNet numerics for every ternary type
        break;
      }
      case ActQuant::Int8: int8 = true; break;
      case ActQuant::Float: int8 = false; break;
    }
    Linear lin = loadLinear(f, name, k, nOut, int8);
    std::string scaleName = name.substr(0, name.size() - std::string(".weight").size()) + ".scale";
    loadOutScale(f, scaleName, lin);
    s.bytes += lin.bytes;
    return lin;
  };
  for (uint32_t i = range.layerBegin; i < range.layerEnd; ++i) {
    Layer L;
    L.attnNorm = loadNorm(f, tn::layer(i, "attn_norm.weight"), d);
    L.ffnNorm = loadNorm(f, tn::layer(i, "ffn_norm.weight"), d);
    if (cfg.subNorms) {
      L.attnSubNorm = loadNorm(f, tn::layer(i, "attn_sub_norm.weight"), qd);
      L.ffnSubNorm = loadNorm(f, tn::layer(i, "ffn_sub_norm.weight"), ff);
    }
    L.q = bitLinear(tn::layer(i, "attn_q.weight"), d, qd);
    L.k = bitLinear(tn::layer(i, "attn_k.weight"), d, kvd);
    L.v = bitLinear(tn::layer(i, "attn_v.weight"), d, kvd);
    L.o = bitLinear(tn::layer(i, "attn_output.weight"), qd, d);
    L.gate = bitLinear(tn::layer(i, "ffn_gate.weight"), d, ff);
    L.up = bitLinear(tn::layer(i, "ffn_up.weight"), d, ff);
    L.down = bitLinear(tn::layer(i, "ffn_down.weight"), ff, d);
    s.bytes += uint64_t(4) * (2 * d + (cfg.subNorms ? qd + ff : 0));
    s.layers.push_back(std::move(L));
  }
  if (range.embed) {
    s.embd = f.findTensor(tn::kTokenEmbd);
    if (!s.embd) f.fail(std::string("missing tensor '") + tn::kTokenEmbd + "'");
    if (s.embd->type != TensorType::F32 && s.embd->type != TensorType::F16 &&
        s.embd->type != TensorType::BF16)
      f.fail(std::string(tn::kTokenEmbd) + ": type " + tensorTypeName(s.embd->type) +
             " is not supported for embeddings (F32, F16, BF16)");
    if (s.embd->nelements() != uint64_t(cfg.nVocab) * d)
      f.fail(std::string(tn::kTokenEmbd) + ": expected " + std::to_string(cfg.nVocab) + " x " +
             std::to_string(d) + " elements");
    s.bytes += s.embd->nbytes / cfg.nVocab;  // one row per token
  }
  if (range.head) {
    s.outputNorm = loadNorm(f, tn::kOutputNorm, d);
    const char* headName = cfg.tiedHead ? tn::kTokenEmbd : tn::kOutput;
    s.head = loadLinear(f, headName, d, cfg.nVocab, false);  // the head stays float
    if (s.head.kind == Linear::Kind::T2 || s.head.kind == Linear::Kind::TL3)
      f.fail(std::string(headName) + ": a ternary output head is not supported");
    if (opts.head == HeadType::Q8) {
      try {
        s.headQ8 = quantizeHeadQ8(s.head, s.threads);
      } catch (const std::invalid_argument& e) {
        f.fail(std::string(headName) + ": " + e.what());
      }
      s.bytes += s.headQ8.bytes() + uint64_t(4) * d;
    } else {
      s.bytes += s.head.bytes + uint64_t(4) * d;
    }
  }
  if (opts.hugePages) s.moveToHugePages();
  auto integer = [](const Linear& l) { return l.int8 || l.kind == Linear::Kind::TL3; };
  auto tl3 = [](const Linear& l) { return l.kind == Linear::Kind::TL3; };
  for (const Layer& L : s.layers) {
    for (const Linear* l : {&L.q, &L.k, &L.v, &L.gate, &L.up}) {
      s.int8D = s.int8D || integer(*l);
      s.tl3D = s.tl3D || tl3(*l);
    }
    s.int8Q = s.int8Q || integer(L.o);
    s.tl3Q = s.tl3Q || tl3(L.o);
    s.int8F = s.int8F || integer(L.down);
    s.tl3F = s.tl3F || tl3(L.down);
  }
}

Stage::~Stage() = default;

const ModelConfig& Stage::config() const { return impl_->cfg; }
const StageRange& Stage::range() const { return impl_->range; }
std::string Stage::kernelName() const { return impl_->kt->name; }
uint64_t Stage::weightBytes() const { return impl_->bytes; }
uint64_t Stage::kvBytesPerToken() const {
  const Impl& s = *impl_;
  return kvBytesPerPosition(s.cfg.kvDim(), uint32_t(s.layers.size()), kvElementBytes(s.opts.kvType));
}

void Stage::openSequence(uint64_t seq, uint32_t nCtx) {
  if (nCtx == 0) throw std::invalid_argument("openSequence " + std::to_string(seq) + ": nCtx is 0");
  if (impl_->seqs.count(seq))
    throw std::invalid_argument("openSequence: sequence " + std::to_string(seq) + " is already open");
  Sequence s;
  s.nCtx = nCtx;
  s.layers.resize(impl_->layers.size());  // K/V storage grows with the sequence
  impl_->seqs.emplace(seq, std::move(s));
}

void Stage::closeSequence(uint64_t seq) {
  if (!impl_->seqs.erase(seq))
    throw std::invalid_argument("closeSequence: unknown sequence " + std::to_string(seq));
}

bool Stage::hasSequence(uint64_t seq) const { return impl_->seqs.count(seq) != 0; }

void Stage::forward(const BatchIn& in, BatchOut& out) {
  Impl& s = *impl_;
  const ModelConfig& cfg = s.cfg;
  const size_t n = in.seq.size();
  const uint32_t d = cfg.nEmbd;
  auto bad = [](const std::string& msg) { throw std::invalid_argument("batch: " + msg); };

  // --- validation: nothing changes before it passes ---
  if (in.pos.size() != n)
    bad("pos has " + std::to_string(in.pos.size()) + " entries, seq has " + std::to_string(n));
  if (!in.wantLogits.empty() && in.wantLogits.size() != n)
    bad("wantLogits has " + std::to_string(in.wantLogits.size()) + " entries, expected " +
        std::to_string(n) + " (or none)");
  if (n > (uint64_t(1) << 31) / std::max<uint32_t>(d, cfg.nVocab)) bad("too many tokens");
  if (s.range.embed) {
    if (in.tokens.size() != n)
      bad("tokens has " + std::to_string(in.tokens.size()) + " entries, expected " + std::to_string(n));
    for (size_t i = 0; i < n; ++i)
      if (in.tokens[i] < 0 || uint32_t(in.tokens[i]) >= cfg.nVocab)
        bad("token " + std::to_string(i) + ": id " + std::to_string(in.tokens[i]) +
            " is out of range [0, " + std::to_string(cfg.nVocab) + ")");
  } else if (in.act.size() != n * d) {
    bad("act has " + std::to_string(in.act.size()) + " floats, expected " + std::to_string(n) +
        " tokens x " + std::to_string(d));
  }
  std::map<uint64_t, uint32_t> nextPos;
  for (size_t i = 0; i < n; ++i) {
    auto it = s.seqs.find(in.seq[i]);
    if (it == s.seqs.end())
      bad("token " + std::to_string(i) + ": unknown sequence " + std::to_string(in.seq[i]));
    auto [np, fresh] = nextPos.try_emplace(in.seq[i], it->second.len);
    if (in.pos[i] != np->second)
      bad("token " + std::to_string(i) + ": sequence " + std::to_string(in.seq[i]) +
          " expects position " + std::to_string(np->second) + ", got " + std::to_string(in.pos[i]));
    if (in.pos[i] >= it->second.nCtx)
      bad("token " + std::to_string(i) + ": position " + std::to_string(in.pos[i]) +
          " is beyond the context size " + std::to_string(it->second.nCtx) + " of sequence " +
          std::to_string(in.seq[i]));
    ++np->second;
  }
  out.act.clear();
  out.logits.clear();
  if (n == 0) return;

  // Grow K/V storage (state lengths change only at the end).
  const uint32_t kvd = cfg.kvDim();
  for (auto& [id, len] : nextPos) {
    Sequence& sq = s.seqs.at(id);
    for (KvLayer& c : sq.layers) {
      const size_t need = size_t(len) * kvd;
      auto grow = [&](auto& v) {
        if (v.size() < need) v.resize(std::min<size_t>(size_t(sq.nCtx) * kvd, std::max(need, 2 * v.size())));
      };
      if (s.f16Kv()) { grow(c.k16); grow(c.v16); } else { grow(c.k32); grow(c.v32); }
    }
  }

  // --- compute: one parallel region; threads meet at barriers between phases ---
  const uint32_t nt = uint32_t(n);
  const uint32_t qd = cfg.qDim(), ff = cfg.nFf, half = cfg.nRot / 2;
  std::vector<float> x(size_t(n) * d), h(size_t(n) * d), q(size_t(n) * qd), kk(size_t(n) * kvd),
      vv(size_t(n) * kvd), att(size_t(n) * qd), o(size_t(n) * d), g(size_t(n) * ff), u(size_t(n) * ff),
      f(size_t(n) * ff), cosT(size_t(n) * half), sinT(size_t(n) * half);
  std::vector<Sequence*> seqOf(n);
  for (size_t i = 0; i < n; ++i) seqOf[i] = &s.seqs.at(in.seq[i]);
  GroupInput inD, inQ, inF, inH;
  inD.reserve(nt, d, s.int8D, s.tl3D);
  inD.x = h.data();
  inQ.reserve(nt, qd, s.int8Q, s.tl3Q);
  inQ.x = att.data();
  inF.reserve(nt, ff, s.int8F, s.tl3F);
  inF.x = f.data();
  std::vector<uint32_t> rows;  // tokens whose logits are wanted
  if (s.range.head)
    for (size_t i = 0; i < n; ++i)
      if (!in.wantLogits.empty() && in.wantLogits[i]) rows.push_back(uint32_t(i));
  const uint32_t nRows = uint32_t(rows.size());
  std::vector<float> hn(size_t(nRows) * d);
  const bool q8 = s.opts.head == HeadType::Q8;
  Projection headProj[1];
  if (nRows) {
    inH.reserve(nRows, d, q8, false);
    inH.x = hn.data();
    out.logits.resize(size_t(nRows) * cfg.nVocab);
    headProj[0] = q8 ? Projection{nullptr, &s.headQ8, out.logits.data()}
                     : Projection{&s.head, nullptr, out.logits.data()};
  }
  // Shared integer scratch: the largest group.
  size_t accElems = size_t(n) * std::max({qd + 2 * kvd, 2 * ff, d});
  if (nRows) accElems = std::max(accElems, groupAccElems(headProj, nRows));
  std::vector<int32_t> acc(accElems);
  // Work counters: 5 per layer (Q/K/V, attention, O, gate/up, down) and one for the head.
  std::vector<std::atomic<uint32_t>> next(s.layers.size() * 5 + 1);

#pragma omp parallel num_threads(s.threads)
  {
    const Team team{omp_get_thread_num(), omp_get_num_threads()};
    const auto [t0, t1] = team.share(nt);  // this thread's tokens in every per-token phase
    std::vector<float> qh(cfg.headDim), p;
    for (uint32_t t = t0; t < t1; ++t) {
      if (s.range.embed) s.embedRow(in.tokens[t], x.data() + size_t(t) * d);
      else std::memcpy(x.data() + size_t(t) * d, in.act.data() + size_t(t) * d, size_t(d) * 4);
      s.ropeAngles(in.pos[t], cosT.data() + size_t(t) * half, sinT.data() + size_t(t) * half);
    }
    for (size_t li = 0; li < s.layers.size(); ++li) {
      const Layer& L = s.layers[li];
      for (uint32_t t = t0; t < t1; ++t) rmsNorm(&x[t * d], L.attnNorm.data(), d, cfg.normEps, &h[t * d]);
      prepareInput(*s.kt, inD, team);
#pragma omp barrier
      const Projection qkv[3] = {{&L.q, nullptr, q.data()}, {&L.k, nullptr, kk.data()}, {&L.v, nullptr, vv.data()}};
      runGroup(*s.kt, qkv, inD, acc.data(), team, &next[li * 5]);
#pragma omp barrier
      for (uint32_t t = t0; t < t1; ++t) {
        const float* ct = cosT.data() + size_t(t) * half;
        const float* st = sinT.data() + size_t(t) * half;
        s.ropeRow(&q[t * qd], cfg.nHead, ct, st);
        s.ropeRow(&kk[t * kvd], cfg.nHeadKv, ct, st);
        KvLayer& c = seqOf[t]->layers[li];
        const size_t off = size_t(in.pos[t]) * kvd;
        if (s.f16Kv()) {
          for (uint32_t j = 0; j < kvd; ++j) {
            c.k16[off + j] = kernels::fp32ToFp16(kk[t * kvd + j]);
            c.v16[off + j] = kernels::fp32ToFp16(vv[t * kvd + j]);
          }
        } else {
          std::memcpy(&c.k32[off], &kk[t * kvd], size_t(kvd) * 4);
          std::memcpy(&c.v32[off], &vv[t * kvd], size_t(kvd) * 4);
        }
      }
#pragma omp barrier
      // (token, head) items claimed one by one: later tokens attend to more positions.
      for (uint32_t item = next[li * 5 + 1].fetch_add(1, std::memory_order_relaxed); item < nt * cfg.nHead;
           item = next[li * 5 + 1].fetch_add(1, std::memory_order_relaxed)) {
        const uint32_t t = item / cfg.nHead, hh = item % cfg.nHead;
        s.attendHead(seqOf[t]->layers[li], in.pos[t] + 1, &q[t * qd], hh, &att[t * qd + hh * cfg.headDim], qh, p);
      }
#pragma omp barrier
      if (cfg.subNorms)
        for (uint32_t t = t0; t < t1; ++t) rmsNorm(&att[t * qd], L.attnSubNorm.data(), qd, cfg.normEps, &att[t * qd]);
      prepareInput(*s.kt, inQ, team);
#pragma omp barrier
      const Projection proj[1] = {{&L.o, nullptr, o.data()}};
      runGroup(*s.kt, proj, inQ, acc.data(), team, &next[li * 5 + 2]);
#pragma omp barrier
      for (uint32_t t = t0; t < t1; ++t) {
        for (size_t i = t * d; i < (t + 1) * size_t(d); ++i) x[i] += o[i];
        rmsNorm(&x[t * d], L.ffnNorm.data(), d, cfg.normEps, &h[t * d]);
      }
      prepareInput(*s.kt, inD, team);
#pragma omp barrier
      const Projection gateUp[2] = {{&L.gate, nullptr, g.data()}, {&L.up, nullptr, u.data()}};
      runGroup(*s.kt, gateUp, inD, acc.data(), team, &next[li * 5 + 3]);
#pragma omp barrier
      for (uint32_t t = t0; t < t1; ++t) {
        for (size_t i = t * size_t(ff); i < (t + 1) * size_t(ff); ++i) {
          float a = g[i];
          if (cfg.ffnAct == FfnAct::Silu) {
            a = a / (1.0f + std::exp(-a));
          } else {
            a = std::max(a, 0.0f);
            a = a * a;
          }
          f[i] = a * u[i];
        }
        if (cfg.subNorms) rmsNorm(&f[t * ff], L.ffnSubNorm.data(), ff, cfg.normEps, &f[t * ff]);
      }
      prepareInput(*s.kt, inF, team);
#pragma omp barrier
      const Projection down[1] = {{&L.down, nullptr, o.data()}};
      runGroup(*s.kt, down, inF, acc.data(), team, &next[li * 5 + 4]);
#pragma omp barrier
      for (uint32_t t = t0; t < t1; ++t)
        for (size_t i = t * d; i < (t + 1) * size_t(d); ++i) x[i] += o[i];
    }
    if (nRows) {
      // The normed hidden state stays float32 even for an F16 head: bitnet.cpp does not round
      // it (measured on tiny-bitnet I2_S: 8.6e-6 from its logits unrounded, 3.0e-3 rounded).
      // Rows are shared like tokens: wait for every token's residual first.
#pragma omp barrier
      const auto [r0, r1] = team.share(nRows);
      for (uint32_t r = r0; r < r1; ++r)
        rmsNorm(&x[size_t(rows[r]) * d], s.outputNorm.data(), d, cfg.normEps, &hn[size_t(r) * d]);
      prepareInput(*s.kt, inH, team);
#pragma omp barrier
      runGroup(*s.kt, headProj, inH, acc.data(), team, &next.back());
    }
  }
  if (!s.range.head) out.act = std::move(x);
  for (auto& [id, len] : nextPos) s.seqs.at(id).len = len;
}

}  // namespace tern::ops
