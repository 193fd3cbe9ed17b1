// Every SIMD kernel variant compiled in and supported by this CPU against the scalar "ref":
// integer results and float results must be bit-identical (float: memcmp).
#include "kernels/cpu_features.hpp"
#include "kernels/dispatch.hpp"
#include "kernels/f16.hpp"
#include "kernels/t2.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace tern::kernels;

namespace {

// Variants other than ref that this CPU can run; the others are reported once.
std::vector<const KernelTable*> simdVariants() {
  const auto supported = supportedKernelNames();
  std::vector<const KernelTable*> out;
  for (const std::string& n : kernelNames()) {
    if (n == "auto" || n == "ref") continue;
    bool ok = false;
    for (const std::string& s : supported) ok = ok || s == n;
    if (ok)
      out.push_back(&selectKernels(n));
    else
      MESSAGE("kernel variant " << n << " skipped: this CPU lacks its features (has: "
                                << cpuFeatureString(cpuFeatures()) << ")");
  }
  return out;
}

std::vector<uint8_t> packTensor(const std::vector<int8_t>& w, uint32_t nOut, uint32_t k) {
  std::vector<uint8_t> t(t2TensorBytes(k, nOut));
  for (uint32_t r = 0; r < nOut; ++r) t2PackRow(w.data() + size_t(r) * k, k, t.data() + r * t2RowBytes(k));
  t2WriteTrailer(1.0f, t.data() + t2RowBytes(k) * nOut);
  return t;
}

enum class Fill { Random, AllMin, AllMax };
enum class WFill { Random, Plus, Minus, Zero };

std::vector<int8_t> makeWeights(std::mt19937& rng, WFill f, size_t n) {
  std::uniform_int_distribution<int> d(-1, 1);
  std::vector<int8_t> w(n);
  for (auto& v : w) v = f == WFill::Random ? int8_t(d(rng)) : f == WFill::Plus ? 1 : f == WFill::Minus ? -1 : 0;
  return w;
}

// [nTok][stride] int8; the padding past k gets random bytes (their weights are 0, so any value
// must give the same result).
std::vector<int8_t> makeQ(std::mt19937& rng, Fill f, uint32_t nTok, size_t stride, uint32_t k) {
  std::uniform_int_distribution<int> d(-128, 127);
  std::vector<int8_t> q(nTok * stride);
  for (uint32_t t = 0; t < nTok; ++t)
    for (size_t i = 0; i < stride; ++i)
      q[t * stride + i] = i >= k || f == Fill::Random ? int8_t(d(rng)) : f == Fill::AllMin ? int8_t(-128) : int8_t(127);
  return q;
}

std::vector<int32_t> gemm(const KernelTable& kt, const std::vector<uint8_t>& w, uint32_t nOut, uint32_t k,
                          const std::vector<int8_t>& q, size_t stride, uint32_t nTok) {
  std::vector<int32_t> acc(size_t(nTok) * nOut, 0x5a5a5a5a);
  kt.gemmT2(w.data(), k, 0, nOut, q.data(), stride, nTok, acc.data(), nOut);
  return acc;
}

bool sameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("simd gemmT2: integer accumulators identical to ref on a shape grid") {
  const auto variants = simdVariants();
  const KernelTable& ref = selectKernels("ref");
  std::mt19937 rng(101);
  for (const KernelTable* kt : variants) {
    SUBCASE(kt->name) {
      for (uint32_t nOut : {1u, 2u, 3u, 7u, 16u, 17u, 255u})
        for (uint32_t k : {128u, 256u, 384u, 1000u, 2560u, 6912u}) {
          const size_t stride = t2PaddedK(k) + 64;
          for (WFill wf : {WFill::Random, WFill::Plus, WFill::Minus}) {
            // Big shapes: random weights only, to keep the suite fast.
            if (nOut == 255 && k > 1000 && wf != WFill::Random) continue;
            const auto packed = packTensor(makeWeights(rng, wf, size_t(nOut) * k), nOut, k);
            for (uint32_t nTok : {1u, 2u, 3u, 5u, 8u, 13u}) {
              if (nOut == 255 && k > 1000 && nTok > 5) continue;
              for (Fill qf : {Fill::Random, Fill::AllMin, Fill::AllMax}) {
                CAPTURE(nOut);
                CAPTURE(k);
                CAPTURE(nTok);
                CAPTURE(int(wf));
                CAPTURE(int(qf));
                const auto q = makeQ(rng, qf, nTok, stride, k);
                const auto want = gemm(ref, packed, nOut, k, q, stride, nTok);
                const auto got = gemm(*kt, packed, nOut, k, q, stride, nTok);
                if (got != want) FAIL_CHECK("gemmT2 differs from ref");
              }
            }
          }
        }
    }
  }
}

TEST_CASE("simd gemmT2: properties (zeros, negation, all +1 = sum q)") {
  const auto variants = simdVariants();
  std::mt19937 rng(102);
  const uint32_t nOut = 19, k = 2560, nTok = 5;
  const size_t stride = t2PaddedK(k);
  const auto q = makeQ(rng, Fill::Random, nTok, stride, k);
  int32_t qSum[nTok] = {};
  for (uint32_t t = 0; t < nTok; ++t)
    for (uint32_t i = 0; i < k; ++i) qSum[t] += q[t * stride + i];
  const auto w = makeWeights(rng, WFill::Random, size_t(nOut) * k);
  auto wn = w;
  for (auto& v : wn) v = int8_t(-v);
  for (const KernelTable* kt : variants) {
    SUBCASE(kt->name) {
      const auto a0 = gemm(*kt, packTensor(makeWeights(rng, WFill::Zero, size_t(nOut) * k), nOut, k), nOut, k, q, stride, nTok);
      const auto a1 = gemm(*kt, packTensor(makeWeights(rng, WFill::Plus, size_t(nOut) * k), nOut, k), nOut, k, q, stride, nTok);
      const auto ap = gemm(*kt, packTensor(w, nOut, k), nOut, k, q, stride, nTok);
      const auto an = gemm(*kt, packTensor(wn, nOut, k), nOut, k, q, stride, nTok);
      for (uint32_t t = 0; t < nTok; ++t)
        for (uint32_t r = 0; r < nOut; ++r) {
          CHECK(a0[t * nOut + r] == 0);
          CHECK(a1[t * nOut + r] == qSum[t]);
          CHECK(an[t * nOut + r] == -ap[t * nOut + r]);
        }
    }
  }
}

TEST_CASE("simd kernels: two disjoint row ranges equal one full call") {
  const auto variants = simdVariants();
  std::mt19937 rng(103);
  const uint32_t nOut = 37, k = 1000, nTok = 6;
  const size_t stride = t2PaddedK(k);
  const auto packed = packTensor(makeWeights(rng, WFill::Random, size_t(nOut) * k), nOut, k);
  const auto q = makeQ(rng, Fill::Random, nTok, stride, k);
  std::normal_distribution<float> nd;
  std::vector<uint16_t> wh(size_t(nOut) * k);
  for (auto& v : wh) v = fp32ToFp16(nd(rng));
  std::vector<float> x(nTok * stride);
  for (auto& v : x) v = nd(rng);
  for (const KernelTable* kt : variants) {
    SUBCASE(kt->name) {
      for (uint32_t split : {1u, 13u, 20u, 36u}) {
        CAPTURE(split);
        std::vector<int32_t> whole(size_t(nTok) * nOut), parts(size_t(nTok) * nOut);
        kt->gemmT2(packed.data(), k, 0, nOut, q.data(), stride, nTok, whole.data(), nOut);
        kt->gemmT2(packed.data(), k, split, nOut, q.data(), stride, nTok, parts.data(), nOut);
        kt->gemmT2(packed.data(), k, 0, split, q.data(), stride, nTok, parts.data(), nOut);
        CHECK(whole == parts);
        std::vector<float> yw(size_t(nTok) * nOut), yp(size_t(nTok) * nOut);
        kt->matmulF16(wh.data(), k, 0, nOut, x.data(), stride, nTok, yw.data(), nOut);
        kt->matmulF16(wh.data(), k, split, nOut, x.data(), stride, nTok, yp.data(), nOut);
        kt->matmulF16(wh.data(), k, 0, split, x.data(), stride, nTok, yp.data(), nOut);
        CHECK(sameBits(yw, yp));
      }
    }
  }
}

TEST_CASE("simd quantizeRow: identical q, a_s and sum q") {
  const auto variants = simdVariants();
  const KernelTable& ref = selectKernels("ref");
  std::mt19937 rng(104);
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> di(-127, 126);
  const float inf = std::numeric_limits<float>::infinity();
  for (const KernelTable* kt : variants) {
    SUBCASE(kt->name) {
      for (uint32_t k = 1; k <= 300; ++k)
        for (int kind = 0; kind < 7; ++kind) {
          CAPTURE(k);
          CAPTURE(kind);
          std::vector<float> x(k);
          for (uint32_t i = 0; i < k; ++i) {
            switch (kind) {
              case 0: x[i] = nd(rng); break;                                  // random
              case 1: x[i] = nd(rng) * 1e30f; break;                          // huge
              case 2: x[i] = nd(rng) * 1e-7f; break;                          // max below the 1e-5 floor
              case 3: x[i] = float(di(rng)) + 0.5f; break;                    // ties (a_s = 1 below)
              case 4: x[i] = (i % 2 ? -1.0f : 1.0f) * float(i % 5) * 0.25f; break;  // repeated values
              case 5: x[i] = 0.0f; break;                                     // all zero
              default: x[i] = i % 7 == 3 ? std::nanf("") : i % 11 == 5 ? -inf : nd(rng); break;
            }
          }
          if (kind == 3) x[k / 2] = 127.0f;  // max 127 -> a_s = 1: the .5 values are exact ties
          std::vector<int8_t> qr(k + 1, 77), qs(k + 1, 77);
          int32_t sr = 0, ss = 1;
          const float ar = ref.quantizeRow(x.data(), k, qr.data(), &sr);
          const float as = kt->quantizeRow(x.data(), k, qs.data(), &ss);
          if (std::memcmp(&ar, &as, sizeof ar) != 0 || qr != qs || sr != ss)
            FAIL_CHECK("quantizeRow differs from ref (a_s " << ar << " vs " << as << ", sum " << sr << " vs " << ss << ")");
          CHECK(qs[k] == 77);  // nothing written past k
        }
    }
  }
}

TEST_CASE("simd float matmuls and dot: bit-identical to ref on odd shapes") {
  const auto variants = simdVariants();
  const KernelTable& ref = selectKernels("ref");
  std::mt19937 rng(105);
  std::normal_distribution<float> nd;
  for (const KernelTable* kt : variants) {
    SUBCASE(kt->name) {
      for (uint32_t k : {1u, 7u, 15u, 16u, 17u, 100u, 255u, 256u, 257u, 1000u, 2560u})
        for (uint32_t nOut : {1u, 3u, 5u, 8u, 9u, 17u})
          for (uint32_t nTok : {1u, 2u, 3u, 4u, 5u, 7u}) {
            CAPTURE(k);
            CAPTURE(nOut);
            CAPTURE(nTok);
            const size_t stride = k + 3;
            std::vector<float> w(size_t(nOut) * k), x(nTok * stride);
            // wide dynamic range so the summation order matters
            for (auto& v : w) v = nd(rng) * std::exp2(float(int(rng() % 16) - 8));
            for (auto& v : x) v = nd(rng);
            std::vector<uint16_t> wh(w.size()), wb(w.size());
            for (size_t i = 0; i < w.size(); ++i) {
              wh[i] = fp32ToFp16(w[i]);
              wb[i] = fp32ToBf16(w[i]);
            }
            const size_t ny = size_t(nTok) * nOut;
            std::vector<float> r32(ny), r16(ny), rb(ny), s32(ny, 1.0f), s16(ny, 1.0f), sb(ny, 1.0f);
            ref.matmulF32(w.data(), k, 0, nOut, x.data(), stride, nTok, r32.data(), nOut);
            ref.matmulF16(wh.data(), k, 0, nOut, x.data(), stride, nTok, r16.data(), nOut);
            ref.matmulBf16(wb.data(), k, 0, nOut, x.data(), stride, nTok, rb.data(), nOut);
            kt->matmulF32(w.data(), k, 0, nOut, x.data(), stride, nTok, s32.data(), nOut);
            kt->matmulF16(wh.data(), k, 0, nOut, x.data(), stride, nTok, s16.data(), nOut);
            kt->matmulBf16(wb.data(), k, 0, nOut, x.data(), stride, nTok, sb.data(), nOut);
            if (!sameBits(r32, s32)) FAIL_CHECK("matmulF32 differs from ref");
            if (!sameBits(r16, s16)) FAIL_CHECK("matmulF16 differs from ref");
            if (!sameBits(rb, sb)) FAIL_CHECK("matmulBf16 differs from ref");
            const float dr = ref.dotF32(w.data(), x.data(), k), ds = kt->dotF32(w.data(), x.data(), k);
            CHECK(std::memcmp(&dr, &ds, sizeof dr) == 0);
          }
    }
  }
}

TEST_CASE("simd float matmuls: properties (zeros, negation, all +1 = sum x)") {
  const auto variants = simdVariants();
  std::mt19937 rng(106);
  std::uniform_int_distribution<int> di(-1000, 1000);
  const uint32_t nOut = 11, k = 333, nTok = 3;
  // Integer-valued x: sums are exact, so all +1 weights must give exactly sum x.
  std::vector<float> x(nTok * k);
  for (auto& v : x) v = float(di(rng));
  std::vector<uint16_t> zero(size_t(nOut) * k, 0), one(size_t(nOut) * k, 0x3c00);
  std::vector<uint16_t> wh(size_t(nOut) * k), whn(wh.size());
  std::normal_distribution<float> nd;
  for (size_t i = 0; i < wh.size(); ++i) {
    wh[i] = fp32ToFp16(nd(rng));
    whn[i] = uint16_t(wh[i] ^ 0x8000u);
  }
  for (const KernelTable* kt : variants) {
    SUBCASE(kt->name) {
      std::vector<float> y0(nOut * nTok), y1(nOut * nTok), yp(nOut * nTok), yn(nOut * nTok);
      kt->matmulF16(zero.data(), k, 0, nOut, x.data(), k, nTok, y0.data(), nOut);
      kt->matmulF16(one.data(), k, 0, nOut, x.data(), k, nTok, y1.data(), nOut);
      kt->matmulF16(wh.data(), k, 0, nOut, x.data(), k, nTok, yp.data(), nOut);
      kt->matmulF16(whn.data(), k, 0, nOut, x.data(), k, nTok, yn.data(), nOut);
      for (uint32_t t = 0; t < nTok; ++t) {
        double sx = 0;
        for (uint32_t i = 0; i < k; ++i) sx += x[t * k + i];
        for (uint32_t r = 0; r < nOut; ++r) {
          CHECK(y0[t * nOut + r] == 0.0f);
          CHECK(y1[t * nOut + r] == float(sx));
          CHECK(yn[t * nOut + r] == -yp[t * nOut + r]);
        }
      }
    }
  }
}

TEST_CASE("kernel selection: auto, forced variants, TERN_KERNELS") {
  const auto supported = supportedKernelNames();
  const auto names = kernelNames();
  ::unsetenv("TERN_KERNELS");
  CHECK(std::string(selectKernels("auto").name) == supported.front());
  for (const std::string& n : names) {
    if (n == "auto") continue;
    bool ok = false;
    for (const std::string& s : supported) ok = ok || s == n;
    if (ok) {
      CHECK(std::string(selectKernels(n).name) == n);
    } else {
      CHECK_THROWS_WITH_AS(selectKernels(n), doctest::Contains("lacks"), std::invalid_argument);
    }
  }
  ::setenv("TERN_KERNELS", "ref", 1);
  CHECK(std::string(selectKernels("auto").name) == "ref");
  CHECK(std::string(selectKernels(supported.front()).name) == supported.front());  // explicit wins
  ::setenv("TERN_KERNELS", "avx9", 1);
  CHECK_THROWS_WITH_AS(selectKernels("auto"), doctest::Contains("TERN_KERNELS"), std::invalid_argument);
  ::setenv("TERN_KERNELS", "auto", 1);
  CHECK(std::string(selectKernels("auto").name) == supported.front());
  ::unsetenv("TERN_KERNELS");
#if defined(__x86_64__)
  CHECK(names.size() == 4);  // auto, avx512, avx2, ref
#endif
}
