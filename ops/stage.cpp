#include "ops/stage.hpp"

#include "kernels/dispatch.hpp"
#include "kernels/f16.hpp"
#include "ops/linear.hpp"

#include <omp.h>

#include <algorithm>
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
  uint64_t bytes = 0;

  std::map<uint64_t, Sequence> seqs;

  bool f16Kv() const { return opts.kvType == KvType::F16; }

  void embedRow(int32_t token, float* dst) const;
  void attention(uint32_t layer, const BatchIn& in, const float* q, float* out);
  void ropeRow(float* v, uint32_t nHeads, uint32_t pos) const;
};

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

// Rotates the first nRot dims of each of nHeads head vectors (headDim apart) by position pos.
// Angles as ggml computes them: theta_i = pos * base^(-2i/nRot), the power built up by float
// multiplication; NORM rotates pairs (2i, 2i+1), NEOX pairs (i, i + nRot/2).
void Stage::Impl::ropeRow(float* v, uint32_t nHeads, uint32_t pos) const {
  const uint32_t half = cfg.nRot / 2;
  std::vector<float> cosT(half), sinT(half);
  const float thetaScale = std::pow(cfg.ropeTheta, -2.0f / float(cfg.nRot));
  float theta = float(pos);
  for (uint32_t i = 0; i < half; ++i) {
    cosT[i] = std::cos(theta);
    sinT[i] = std::sin(theta);
    theta *= thetaScale;
  }
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

// q: [n][qDim] after RoPE; out: [n][qDim]. Token t attends to positions 0..pos[t] of its sequence
// (its own K/V already written). F16 KV: Q and the softmax output are rounded to fp16 too.
void Stage::Impl::attention(uint32_t layer, const BatchIn& in, const float* q, float* out) {
  const uint32_t n = uint32_t(in.seq.size());
  const uint32_t hd = cfg.headDim, kvDim = cfg.kvDim(), qDim = cfg.qDim();
  const uint32_t group = cfg.nHead / cfg.nHeadKv;
  const float scale = 1.0f / std::sqrt(float(hd));
  const bool f16 = f16Kv();
  std::vector<const KvLayer*> kv(n);
  for (uint32_t t = 0; t < n; ++t) kv[t] = &seqs.at(in.seq[t]).layers[layer];
  const int items = int(n * cfg.nHead);
  uint64_t work = 0;  // multiply-adds, to skip the parallel region for tiny batches
  for (uint32_t t = 0; t < n; ++t) work += uint64_t(in.pos[t] + 1) * 2 * qDim;
#pragma omp parallel num_threads(threads) if (threads > 1 && work >= (uint64_t(1) << 16))
  {
    std::vector<float> qh(hd), kh(hd), vh(hd), acc(hd), p;
#pragma omp for schedule(static)
    for (int item = 0; item < items; ++item) {
      const uint32_t t = uint32_t(item) / cfg.nHead, h = uint32_t(item) % cfg.nHead;
      const uint32_t kvh = h / group;
      const uint32_t len = in.pos[t] + 1;
      const KvLayer& c = *kv[t];
      const float* qt = q + size_t(t) * qDim + size_t(h) * hd;
      for (uint32_t d = 0; d < hd; ++d) qh[d] = f16 ? kernels::roundFp16(qt[d]) : qt[d];
      p.resize(len);
      float maxS = -INFINITY;
      for (uint32_t j = 0; j < len; ++j) {
        const size_t off = size_t(j) * kvDim + size_t(kvh) * hd;
        const float* kp;
        if (f16) {
          for (uint32_t d = 0; d < hd; ++d) kh[d] = kernels::fp16ToFp32(c.k16[off + d]);
          kp = kh.data();
        } else {
          kp = c.k32.data() + off;
        }
        p[j] = kt->dotF32(qh.data(), kp, hd) * scale;
        maxS = std::max(maxS, p[j]);
      }
      double sum = 0.0;
      for (uint32_t j = 0; j < len; ++j) {
        p[j] = std::exp(p[j] - maxS);
        sum += p[j];
      }
      const float inv = float(1.0 / sum);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (uint32_t j = 0; j < len; ++j) {
        float pj = p[j] * inv;
        const size_t off = size_t(j) * kvDim + size_t(kvh) * hd;
        if (f16) {
          pj = kernels::roundFp16(pj);
          for (uint32_t d = 0; d < hd; ++d) acc[d] += pj * kernels::fp16ToFp32(c.v16[off + d]);
        } else {
          const float* vp = c.v32.data() + off;
          for (uint32_t d = 0; d < hd; ++d) acc[d] += pj * vp[d];
        }
      }
      std::memcpy(out + size_t(t) * qDim + size_t(h) * hd, acc.data(), size_t(hd) * 4);
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
  cfg.validateTensors(f);

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
    if (s.head.kind == Linear::Kind::T2)
      f.fail(std::string(headName) + ": a ternary output head is not supported");
    s.bytes += s.head.bytes + uint64_t(4) * d;
  }
}

Stage::~Stage() = default;

const ModelConfig& Stage::config() const { return impl_->cfg; }
const StageRange& Stage::range() const { return impl_->range; }
std::string Stage::kernelName() const { return impl_->kt->name; }
uint64_t Stage::weightBytes() const { return impl_->bytes; }
uint64_t Stage::kvBytesPerToken() const {
  const Impl& s = *impl_;
  return uint64_t(s.layers.size()) * 2 * s.cfg.kvDim() * (s.f16Kv() ? 2 : 4);
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

  // --- compute ---
  const uint32_t nt = uint32_t(n);
  const int th = s.threads;
  std::vector<float> x(size_t(n) * d);
  if (s.range.embed) {
    for (size_t i = 0; i < n; ++i) s.embedRow(in.tokens[i], x.data() + i * d);
  } else {
    std::memcpy(x.data(), in.act.data(), x.size() * 4);
  }
  const uint32_t qd = cfg.qDim(), ff = cfg.nFf;
  std::vector<float> h(size_t(n) * std::max(d, qd)), q(size_t(n) * qd), kk(size_t(n) * kvd),
      vv(size_t(n) * kvd), att(size_t(n) * qd), o(size_t(n) * d), g(size_t(n) * ff),
      u(size_t(n) * ff), f(size_t(n) * ff);
  for (size_t li = 0; li < s.layers.size(); ++li) {
    const Layer& L = s.layers[li];
    for (size_t i = 0; i < n; ++i) rmsNorm(&x[i * d], L.attnNorm.data(), d, cfg.normEps, &h[i * d]);
    applyLinear(*s.kt, L.q, h.data(), nt, q.data(), th);
    applyLinear(*s.kt, L.k, h.data(), nt, kk.data(), th);
    applyLinear(*s.kt, L.v, h.data(), nt, vv.data(), th);
    for (size_t i = 0; i < n; ++i) {
      s.ropeRow(&q[i * qd], cfg.nHead, in.pos[i]);
      s.ropeRow(&kk[i * kvd], cfg.nHeadKv, in.pos[i]);
      KvLayer& c = s.seqs.at(in.seq[i]).layers[li];
      const size_t off = size_t(in.pos[i]) * kvd;
      if (s.f16Kv()) {
        for (uint32_t j = 0; j < kvd; ++j) {
          c.k16[off + j] = kernels::fp32ToFp16(kk[i * kvd + j]);
          c.v16[off + j] = kernels::fp32ToFp16(vv[i * kvd + j]);
        }
      } else {
        std::memcpy(&c.k32[off], &kk[i * kvd], size_t(kvd) * 4);
        std::memcpy(&c.v32[off], &vv[i * kvd], size_t(kvd) * 4);
      }
    }
    s.attention(uint32_t(li), in, q.data(), att.data());
    if (cfg.subNorms)
      for (size_t i = 0; i < n; ++i)
        rmsNorm(&att[i * qd], L.attnSubNorm.data(), qd, cfg.normEps, &att[i * qd]);
    applyLinear(*s.kt, L.o, att.data(), nt, o.data(), th);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];

    for (size_t i = 0; i < n; ++i) rmsNorm(&x[i * d], L.ffnNorm.data(), d, cfg.normEps, &h[i * d]);
    applyLinear(*s.kt, L.gate, h.data(), nt, g.data(), th);
    applyLinear(*s.kt, L.up, h.data(), nt, u.data(), th);
    for (size_t i = 0; i < g.size(); ++i) {
      float a = g[i];
      if (cfg.ffnAct == FfnAct::Silu) {
        a = a / (1.0f + std::exp(-a));
      } else {
        a = std::max(a, 0.0f);
        a = a * a;
      }
      f[i] = a * u[i];
    }
    if (cfg.subNorms)
      for (size_t i = 0; i < n; ++i)
        rmsNorm(&f[i * ff], L.ffnSubNorm.data(), ff, cfg.normEps, &f[i * ff]);
    applyLinear(*s.kt, L.down, f.data(), nt, o.data(), th);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
  }

  if (s.range.head) {
    std::vector<uint32_t> rows;
    for (size_t i = 0; i < n; ++i)
      if (!in.wantLogits.empty() && in.wantLogits[i]) rows.push_back(uint32_t(i));
    if (!rows.empty()) {
      std::vector<float> hn(rows.size() * d);
      for (size_t r = 0; r < rows.size(); ++r) {
        float* dst = &hn[r * d];
        // The normed hidden state stays float32 even for an F16 head: bitnet.cpp does not round
        // it (measured on tiny-bitnet I2_S: 8.6e-6 from its logits unrounded, 3.0e-3 rounded).
        rmsNorm(&x[size_t(rows[r]) * d], s.outputNorm.data(), d, cfg.normEps, dst);
      }
      out.logits.resize(rows.size() * cfg.nVocab);
      applyLinear(*s.kt, s.head, hn.data(), uint32_t(rows.size()), out.logits.data(), th);
    }
  } else {
    out.act = std::move(x);
  }
  for (auto& [id, len] : nextPos) s.seqs.at(id).len = len;
}

}  // namespace tern::ops
