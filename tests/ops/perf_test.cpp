// The fast paths' invariants: fused projection groups (ops/group.hpp) equal applyLinear bit for
// bit for any team size; the int8 head's kernels agree exactly across variants and its logits
// stay within the quantisation bound; the F16 attention helpers equal the float reference; huge
// pages and thread counts change no logit.
#include "kernels/dispatch.hpp"
#include "kernels/f16.hpp"
#include "kernels/gemm_q8.hpp"
#include "kernels/matmul_float.hpp"
#include "kernels/t2.hpp"
#include "model/config.hpp"
#include "model/gguf.hpp"
#include "ops/group.hpp"
#include "ops/linear.hpp"
#include "ops/stage.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace tern;
using namespace tern::ops;

namespace {

const std::string kTinyI2s = std::string(TERN_TEST_DATA) + "/tiny-bitnet/model-i2_s.gguf";

std::vector<float> randomFloats(std::mt19937& rng, size_t n, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// A T2 projection with random codes (owned) and scale s.
Linear randomT2(std::mt19937& rng, uint32_t k, uint32_t nOut, float s, bool int8) {
  Linear lin;
  lin.kind = Linear::Kind::T2;
  lin.int8 = int8;
  lin.k = k;
  lin.nOut = nOut;
  lin.wScale = s;
  lin.owned.resize(kernels::t2TensorBytes(k, nOut));
  std::uniform_int_distribution<int> code(-1, 1);
  std::vector<int8_t> w(k);
  for (uint32_t r = 0; r < nOut; ++r) {
    for (int8_t& c : w) c = int8_t(code(rng));
    kernels::t2PackRow(w.data(), k, lin.owned.data() + r * kernels::t2RowBytes(k));
  }
  kernels::t2WriteTrailer(s, lin.owned.data() + kernels::t2RowBytes(k) * nOut);
  lin.data = lin.owned.data();
  lin.bytes = lin.owned.size();
  return lin;
}

// An F16 projection over `bits` (owned by the caller).
Linear f16Linear(const std::vector<uint16_t>& bits, uint32_t k, uint32_t nOut) {
  Linear lin;
  lin.kind = Linear::Kind::F16;
  lin.k = k;
  lin.nOut = nOut;
  lin.data = bits.data();
  lin.bytes = bits.size() * 2;
  return lin;
}

std::vector<uint16_t> randomF16(std::mt19937& rng, size_t n, float scale) {
  std::vector<uint16_t> h(n);
  const std::vector<float> f = randomFloats(rng, n, scale);
  for (size_t i = 0; i < n; ++i) h[i] = kernels::fp32ToFp16(f[i]);
  return h;
}

bool sameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

std::vector<float> stageLogits(const std::string& path, StageOptions opts, const std::vector<int32_t>& prompt,
                               size_t steps) {
  auto file = gguf::File::open(path);
  const ModelConfig cfg = ModelConfig::fromGguf(*file);
  Stage s(file, cfg, {0, cfg.nLayer, true, true}, opts);
  s.openSequence(7, 64);
  std::vector<float> all;
  std::vector<int32_t> toks = prompt;
  uint32_t pos = 0;
  for (size_t k = 0; k <= steps; ++k) {
    const size_t n = toks.size();
    std::vector<uint64_t> seq(n, 7);
    std::vector<uint32_t> ps(n);
    for (size_t i = 0; i < n; ++i) ps[i] = pos + uint32_t(i);
    std::vector<uint8_t> want(n, 1);
    BatchOut out;
    s.forward(BatchIn{seq, ps, toks, {}, want}, out);
    all.insert(all.end(), out.logits.begin(), out.logits.end());
    pos += uint32_t(n);
    const float* last = out.logits.data() + out.logits.size() - cfg.nVocab;
    toks = {int32_t(std::max_element(last, last + cfg.nVocab) - last)};
  }
  return all;
}

}  // namespace

TEST_CASE("perf: gemmQ8 integer results identical across variants and equal to a naive loop") {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> wd(-127, 127), qd(-128, 127);
  for (const std::string& name : kernels::supportedKernelNames()) {
    const kernels::KernelTable& kt = kernels::selectKernels(name);
    for (uint32_t k : {1u, 15u, 63u, 64u, 65u, 200u, 1000u}) {
      for (uint32_t nTok : {1u, 2u, 3u, 5u}) {
        const uint32_t nOut = 19;
        std::vector<int8_t> w(size_t(nOut) * k), q(size_t(nTok) * (k + 3));
        for (int8_t& v : w) v = int8_t(wd(rng));
        for (int8_t& v : q) v = int8_t(qd(rng));
        if (k >= 2) {  // extremes: the largest products, both signs
          w[0] = 127;
          w[1] = -127;
          q[0] = -128;
          q[1] = -128;
        }
        std::vector<int32_t> acc(size_t(nTok) * nOut, -1);
        kt.gemmQ8(w.data(), k, 2, nOut, q.data(), k + 3, nTok, acc.data(), nOut);
        for (uint32_t t = 0; t < nTok; ++t)
          for (uint32_t r = 0; r < nOut; ++r) {
            int64_t s = 0;
            for (uint32_t i = 0; i < k; ++i) s += int64_t(w[size_t(r) * k + i]) * q[size_t(t) * (k + 3) + i];
            if (r < 2) REQUIRE(acc[t * nOut + r] == -1);  // rows outside the range untouched
            else REQUIRE_MESSAGE(acc[t * nOut + r] == s, name, " k=", k, " t=", t, " r=", r);
          }
      }
    }
  }
}

TEST_CASE("perf: dotF16 and axpyF16 equal the float reference bit for bit in every variant") {
  std::mt19937 rng(12);
  for (uint32_t n : {1u, 7u, 16u, 17u, 64u, 128u, 300u}) {
    const std::vector<float> a = randomFloats(rng, n, 1.0f), y0 = randomFloats(rng, n, 1.0f);
    const std::vector<uint16_t> b = randomF16(rng, n, 2.0f);
    std::vector<float> bf(n);
    for (uint32_t i = 0; i < n; ++i) bf[i] = kernels::fp16ToFp32(b[i]);
    const float want = kernels::ref::dotF32(a.data(), bf.data(), n);
    std::vector<float> yWant = y0;
    for (uint32_t i = 0; i < n; ++i) yWant[i] = yWant[i] + 0.37f * bf[i];
    for (const std::string& name : kernels::supportedKernelNames()) {
      const kernels::KernelTable& kt = kernels::selectKernels(name);
      const float got = kt.dotF16(a.data(), b.data(), n);
      CHECK_MESSAGE(std::memcmp(&got, &want, 4) == 0, name, " n=", n);
      std::vector<float> y = y0;
      kt.axpyF16(y.data(), 0.37f, b.data(), n);
      CHECK_MESSAGE(sameBits(y, yWant), name, " n=", n);
    }
  }
}

TEST_CASE("perf: a fused group equals applyLinear per projection, bit for bit, any threads and schedule") {
  std::mt19937 rng(13);
  const uint32_t k = 300, n = 5;  // k not a multiple of 128: padding; rows not multiples of 64
  Linear q = randomT2(rng, k, 200, 0.5f, true), kk = randomT2(rng, k, 70, 0.25f, true);
  Linear vf = randomT2(rng, k, 70, 0.125f, false);  // float activations on T2 codes
  vf.hasOutScale = true;
  vf.outScale = 1.5f;
  const std::vector<uint16_t> hb = randomF16(rng, size_t(k) * 130, 0.1f);
  const Linear hf = f16Linear(hb, k, 130);
  const std::vector<float> x = randomFloats(rng, size_t(n) * k, 1.0f);
  const std::vector<const Linear*> lins = {&q, &kk, &vf, &hf};
  for (const std::string& name : kernels::supportedKernelNames()) {
    const kernels::KernelTable& kt = kernels::selectKernels(name);
    std::vector<std::vector<float>> want;
    for (const Linear* l : lins) {
      want.emplace_back(size_t(n) * l->nOut);
      applyLinear(kt, *l, x.data(), n, want.back().data(), 1);
    }
    for (int threads : {1, 2, 3})
      for (bool dynamic : {false, true})
        for (uint32_t nTok : {n, 1u}) {  // one token claims bigger pieces
          std::vector<std::vector<float>> got;
          std::vector<Projection> group;
          for (const Linear* l : lins) got.emplace_back(size_t(nTok) * l->nOut, -7.0f);
          for (size_t i = 0; i < got.size(); ++i) group.push_back({lins[i], nullptr, got[i].data()});
          applyGroup(kt, group, x.data(), nTok, k, threads, dynamic);
          for (size_t i = 0; i < got.size(); ++i) {
            // With one token: the first token's outputs, which come first.
            const std::vector<float> w(want[i].begin(), want[i].begin() + std::ptrdiff_t(got[i].size()));
            CHECK_MESSAGE(sameBits(got[i], w), name, " threads=", threads, " dynamic=", dynamic, " i=", i);
          }
        }
  }
}

TEST_CASE("perf: int8 head: row quantisation, logits within the quantisation bound, any threads") {
  std::mt19937 rng(14);
  const uint32_t k = 333, nOut = 150, n = 3;
  std::vector<uint16_t> hb = randomF16(rng, size_t(k) * nOut, 0.05f);
  for (uint32_t i = 0; i < k; ++i) hb[size_t(5) * k + i] = 0;  // an all-zero row
  hb[size_t(6) * k + 9] = kernels::fp32ToFp16(-3.0f);          // a row with a large weight
  const Linear head = f16Linear(hb, k, nOut);
  const HeadQ8 q8 = quantizeHeadQ8(head, 2);
  CHECK(q8.bytes() == uint64_t(k) * nOut + nOut * 4);
  CHECK(q8.rowScale[5] == 0.0f);
  CHECK(q8.rowScale[6] == 3.0f / 127.0f);
  CHECK(q8.weights()[size_t(6) * k + 9] == -127);
  for (uint32_t r = 0; r < nOut; ++r)
    for (uint32_t i = 0; i < k; ++i) {
      const float w = kernels::fp16ToFp32(hb[size_t(r) * k + i]);
      const float s = q8.rowScale[r];
      const int8_t c = q8.weights()[size_t(r) * k + i];
      REQUIRE(c == (s > 0 ? int8_t(std::nearbyint(w / s)) : 0));
    }

  std::vector<float> x = randomFloats(rng, size_t(n) * k, 1.0f);
  x[4] = 9.0f;  // an outlier, as real hidden states have
  const kernels::KernelTable& kt = kernels::selectKernels("auto");
  std::vector<float> one(size_t(n) * nOut), two(size_t(n) * nOut);
  const Projection p1[1] = {{nullptr, &q8, one.data()}}, p2[1] = {{nullptr, &q8, two.data()}};
  applyGroup(kt, p1, x.data(), n, k, 1);
  applyGroup(kt, p2, x.data(), n, k, 2);
  CHECK(sameBits(one, two));
  std::vector<float> viaRef(size_t(n) * nOut);
  const Projection pr[1] = {{nullptr, &q8, viaRef.data()}};
  applyGroup(kernels::selectKernels("ref"), pr, x.data(), n, k, 1);
  CHECK(sameBits(one, viaRef));

  double worst = 0;
  for (uint32_t t = 0; t < n; ++t) {
    const float* xt = x.data() + size_t(t) * k;
    float m = 0;
    for (uint32_t i = 0; i < k; ++i) m = std::max(m, std::fabs(xt[i]));
    const double as = float(127.0 / double(m));
    for (uint32_t r = 0; r < nOut; ++r) {
      double exact = 0, sw = 0, sq = 0;
      for (uint32_t i = 0; i < k; ++i) {
        exact += double(kernels::fp16ToFp32(hb[size_t(r) * k + i])) * xt[i];
        sw += std::abs(q8.weights()[size_t(r) * k + i]);
        sq += std::fabs(std::nearbyint(xt[i] * as));
      }
      // w = s (w~ + e), x = (q + d) / a_s with |e|, |d| <= 1/2: the error is at most
      // s / a_s (sum|w~| / 2 + sum|q| / 2 + k / 4), plus fp32 rounding of the scaling.
      const double s = q8.rowScale[r];
      const double bound = s / as * (0.5 * sw + 0.5 * sq + 0.25 * k) * (1 + 1e-5) + 1e-6;
      const double err = std::fabs(one[size_t(t) * nOut + r] - exact);
      REQUIRE_MESSAGE(err <= bound, "t=", t, " r=", r, " err=", err, " bound=", bound);
      worst = std::max(worst, err);
      if (r == 5) CHECK(one[size_t(t) * nOut + r] == 0.0f);
    }
  }
  MESSAGE("int8 head on random rows: max |dlogit| vs exact = ", worst);
}

TEST_CASE("perf: stage threads, huge pages and the q8 head on tiny-bitnet I2_S") {
  const std::vector<int32_t> prompt = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376};
  StageOptions base;
  base.threads = 1;
  base.hugePages = false;
  const std::vector<float> ref = stageLogits(kTinyI2s, base, prompt, 6);
  StageOptions fast;
  fast.threads = 2;
  CHECK(sameBits(stageLogits(kTinyI2s, fast, prompt, 6), ref));
  fast.threads = 3;
  CHECK(sameBits(stageLogits(kTinyI2s, fast, prompt, 6), ref));

  StageOptions q1, q2;
  q1.head = q2.head = HeadType::Q8;
  q1.threads = 1;
  q2.threads = 2;
  const std::vector<float> a = stageLogits(kTinyI2s, q1, prompt, 6);
  CHECK(sameBits(a, stageLogits(kTinyI2s, q2, prompt, 6)));
  // Greedy paths may part once logits differ, so compare the prompt's logits only.
  const size_t nPrompt = ref.size() / (prompt.size() + 6) * prompt.size();
  float maxAbs = 0, maxDiff = 0;
  for (size_t i = 0; i < nPrompt; ++i) {
    maxAbs = std::max(maxAbs, std::fabs(ref[i]));
    maxDiff = std::max(maxDiff, std::fabs(ref[i] - a[i]));
  }
  MESSAGE("tiny-bitnet: q8 head max |dlogit| = ", maxDiff, " (max |logit| ", maxAbs, ")");
  CHECK(maxDiff > 0.0f);
  CHECK(maxDiff < 0.05f * maxAbs);
}
