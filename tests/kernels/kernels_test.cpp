#include "kernels/dispatch.hpp"
#include "kernels/f16.hpp"
#include "kernels/gemm_t2.hpp"
#include "kernels/matmul_float.hpp"
#include "kernels/quantize.hpp"
#include "kernels/t2.hpp"

#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

using namespace tern::kernels;

namespace {

std::vector<int8_t> randomTernary(std::mt19937& rng, size_t n) {
  std::uniform_int_distribution<int> d(-1, 1);
  std::vector<int8_t> w(n);
  for (auto& v : w) v = int8_t(d(rng));
  return w;
}

// Packs [nOut][k] ternary weights into a full T2 tensor (rows + trailer).
std::vector<uint8_t> packTensor(const std::vector<int8_t>& w, uint32_t nOut, uint32_t k, float s) {
  std::vector<uint8_t> t(t2TensorBytes(k, nOut));
  for (uint32_t r = 0; r < nOut; ++r) t2PackRow(w.data() + size_t(r) * k, k, t.data() + r * t2RowBytes(k));
  t2WriteTrailer(s, t.data() + t2RowBytes(k) * nOut);
  return t;
}

}  // namespace

TEST_CASE("t2 sizes") {
  CHECK(t2PaddedK(1) == 128);
  CHECK(t2PaddedK(128) == 128);
  CHECK(t2PaddedK(129) == 256);
  CHECK(t2RowBytes(300) == 96);
  CHECK(t2TensorBytes(256, 3) == 3 * 64 + 32);
}

TEST_CASE("t2 pack/unpack: every code pattern of one byte's 4 elements") {
  // Byte p of a block holds elements p, 32+p, 64+p, 96+p: fill those with all 81 patterns.
  for (int pattern = 0; pattern < 81; ++pattern) {
    int8_t w[128] = {};
    int rest = pattern;
    for (int j = 0; j < 4; ++j) {
      w[j * 32 + 5] = int8_t(rest % 3 - 1);
      rest /= 3;
    }
    uint8_t packed[32];
    t2PackRow(w, 128, packed);
    uint32_t expected = 0;
    for (int j = 0; j < 4; ++j) expected |= uint32_t(w[j * 32 + 5] + 1) << (2 * j);
    CHECK(packed[5] == expected);
    for (int p = 0; p < 32; ++p)
      if (p != 5) CHECK(packed[p] == 0x55);  // four zero weights = code 1 in each field
    int8_t back[128];
    t2UnpackRow(packed, 128, back);
    CHECK(std::memcmp(w, back, 128) == 0);
  }
}

TEST_CASE("t2 pack/unpack: random rows with tails, padding is code 1") {
  std::mt19937 rng(7);
  for (uint32_t k : {1u, 127u, 128u, 129u, 300u}) {
    CAPTURE(k);
    auto w = randomTernary(rng, k);
    std::vector<uint8_t> packed(t2RowBytes(k), 0xff);
    t2PackRow(w.data(), k, packed.data());
    std::vector<int8_t> back(k, 9);
    t2UnpackRow(packed.data(), k, back.data());
    CHECK(back == w);
    // Padding elements e in [k, paddedK) read back as code 1.
    for (uint32_t e = k; e < t2PaddedK(k); ++e) {
      const uint32_t b = e / 128, j = (e % 128) / 32, p = e % 32;
      CHECK(((packed[b * 32 + p] >> (2 * j)) & 3u) == 1u);
    }
  }
  uint8_t trailer[32];
  t2WriteTrailer(0.0841064453125f, trailer);
  CHECK(t2ReadTrailer(trailer) == 0.0841064453125f);
  for (int i = 4; i < 32; ++i) CHECK(trailer[i] == 0);
}

TEST_CASE("fp16 conversions: known bit patterns") {
  CHECK(fp32ToFp16(1.0f) == 0x3c00);
  CHECK(fp32ToFp16(-2.0f) == 0xc000);
  CHECK(fp32ToFp16(65504.0f) == 0x7bff);
  CHECK(fp32ToFp16(0.0f) == 0x0000);
  CHECK(fp32ToFp16(-0.0f) == 0x8000);
  CHECK(fp32ToFp16(0x1p-24f) == 0x0001);  // smallest subnormal
  CHECK(fp32ToFp16(0x1p-14f) == 0x0400);  // smallest normal
  CHECK(fp32ToFp16(std::numeric_limits<float>::infinity()) == 0x7c00);
  CHECK(fp32ToFp16(-std::numeric_limits<float>::infinity()) == 0xfc00);
  CHECK(fp32ToFp16(1e6f) == 0x7c00);                  // overflow
  CHECK(fp32ToFp16(65520.0f) == 0x7c00);              // halfway 65504..65536 ties to even (inf)
  CHECK(fp32ToFp16(65519.0f) == 0x7bff);
  const uint16_t nan = fp32ToFp16(std::numeric_limits<float>::quiet_NaN());
  CHECK((nan & 0x7c00) == 0x7c00);
  CHECK((nan & 0x03ff) != 0);
  // Round half to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 -> 1 (even mantissa);
  // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 and 1 + 2^-9 -> 1 + 2^-9 (0x3c02).
  CHECK(fp32ToFp16(1.0f + 0x1p-11f) == 0x3c00);
  CHECK(fp32ToFp16(1.0f + 3 * 0x1p-11f) == 0x3c02);
  CHECK(fp32ToFp16(1.0f + 0x1p-11f + 0x1p-20f) == 0x3c01);  // just above half rounds up
  // Subnormal ties: 2^-25 ties to 0, 3 * 2^-25 ties to 2 * 2^-24 (0x0002), 2^-25 + tiny -> 1.
  CHECK(fp32ToFp16(0x1p-25f) == 0x0000);
  CHECK(fp32ToFp16(3 * 0x1p-25f) == 0x0002);
  CHECK(fp32ToFp16(0x1p-25f + 0x1p-40f) == 0x0001);
  CHECK(fp32ToFp16(0x1p-14f - 0x1p-25f) == 0x0400);  // halfway to the smallest normal: even

  CHECK(fp16ToFp32(0x3c00) == 1.0f);
  CHECK(fp16ToFp32(0xc000) == -2.0f);
  CHECK(fp16ToFp32(0x7bff) == 65504.0f);
  CHECK(fp16ToFp32(0x0001) == 0x1p-24f);
  CHECK(fp16ToFp32(0x03ff) == 1023 * 0x1p-24f);
  CHECK(std::isinf(fp16ToFp32(0x7c00)));
  CHECK(std::isnan(fp16ToFp32(0x7e00)));
  CHECK(std::signbit(fp16ToFp32(0x8000)));
  // Every finite fp16 survives a round trip.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;
    if (fp32ToFp16(fp16ToFp32(uint16_t(h))) != h) {
      FAIL("fp16 round trip of ", h);
    }
  }
}

TEST_CASE("bf16 conversions") {
  CHECK(fp32ToBf16(1.0f) == 0x3f80);
  CHECK(fp32ToBf16(-2.0f) == 0xc000);
  CHECK(bf16ToFp32(0x3f80) == 1.0f);
  CHECK(fp32ToBf16(std::numeric_limits<float>::infinity()) == 0x7f80);
  CHECK(std::isnan(bf16ToFp32(fp32ToBf16(std::numeric_limits<float>::quiet_NaN()))));
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> 1; 1 + 3 * 2^-8 -> 1 + 2^-6 (0x3f82).
  CHECK(fp32ToBf16(1.0f + 0x1p-8f) == 0x3f80);
  CHECK(fp32ToBf16(1.0f + 3 * 0x1p-8f) == 0x3f82);
  CHECK(fp32ToBf16(0x1p-133f) == 0x0001);  // smallest bf16 subnormal is kept
}

TEST_CASE("quantize: hand-computed row") {
  // max|x| = 1.0 -> a_s = 127; x * 127 = {63.5, -127, 31.75, 0, 0.5, 1.5, -0.5}
  // round half to even: 63.5 -> 64, 31.75 -> 32, 0.5 -> 0, 1.5 -> 2, -0.5 -> -0 = 0
  const float x[] = {0.5f, -1.0f, 0.25f, 0.0f, 1.0f / 254.0f, 3.0f / 254.0f, -1.0f / 254.0f};
  int8_t q[7];
  int32_t sumQ = 0;
  const float aS = ref::quantizeRow(x, 7, q, &sumQ);
  CHECK(aS == 127.0f);
  const int8_t expected[] = {64, -127, 32, 0, 0, 2, 0};
  CHECK(std::memcmp(q, expected, 7) == 0);
  CHECK(sumQ == 64 - 127 + 32 + 2);
}

TEST_CASE("quantize: ties to even and scale in double") {
  // max = 127 -> a_s = 1, so x * a_s is exact and the halves are true ties:
  // 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2, -3.5 -> -4, 126.5 -> 126.
  const float x[] = {127.0f, 0.5f, 1.5f, 2.5f, -2.5f, -3.5f, 126.5f};
  int8_t q[7];
  int32_t sumQ;
  CHECK(ref::quantizeRow(x, 7, q, &sumQ) == 1.0f);
  const int8_t expected[] = {127, 0, 2, 2, -2, -4, 126};
  CHECK(std::memcmp(q, expected, 7) == 0);
  CHECK(sumQ == 127 + 2 + 2 - 2 - 4 + 126);
  // The scale is 127 / max computed in double then rounded: max = 3 -> 42.333... -> float.
  const float y[] = {3.0f, -1.0f};
  CHECK(ref::quantizeRow(y, 2, q, &sumQ) == float(127.0 / 3.0));
  CHECK(q[0] == 127);
  CHECK(q[1] == -42);  // -42.33 -> -42
}

TEST_CASE("quantize: all-zero row floors max at 1e-5") {
  const float x[5] = {};
  int8_t q[5] = {1, 1, 1, 1, 1};
  int32_t sumQ = 5;
  CHECK(ref::quantizeRow(x, 5, q, &sumQ) == float(127.0 / 1e-5));
  for (int8_t v : q) CHECK(v == 0);
  CHECK(sumQ == 0);
}

namespace {

// Naive reference: unpacked weights times int8, int64 accumulation.
std::vector<int32_t> naiveGemm(const std::vector<int8_t>& w, uint32_t nOut, uint32_t k,
                               const std::vector<int8_t>& q, size_t qStride, uint32_t nTok) {
  std::vector<int32_t> acc(size_t(nTok) * nOut);
  for (uint32_t t = 0; t < nTok; ++t)
    for (uint32_t r = 0; r < nOut; ++r) {
      int64_t s = 0;
      for (uint32_t i = 0; i < k; ++i) s += int64_t(w[size_t(r) * k + i]) * q[t * qStride + i];
      acc[size_t(t) * nOut + r] = int32_t(s);
    }
  return acc;
}

std::vector<int8_t> randomQ(std::mt19937& rng, uint32_t nTok, size_t stride, uint32_t k) {
  std::uniform_int_distribution<int> d(-128, 127);
  std::vector<int8_t> q(nTok * stride, 0);
  for (uint32_t t = 0; t < nTok; ++t)
    for (uint32_t i = 0; i < k; ++i) q[t * stride + i] = int8_t(d(rng));
  return q;
}

std::vector<int32_t> runGemm(const KernelTable& kt, const std::vector<uint8_t>& packed, uint32_t nOut,
                             uint32_t k, const std::vector<int8_t>& q, size_t qStride, uint32_t nTok) {
  std::vector<int32_t> acc(size_t(nTok) * nOut, 12345);
  kt.gemmT2(packed.data(), k, 0, nOut, q.data(), qStride, nTok, acc.data(), nOut);
  return acc;
}

}  // namespace

TEST_CASE("ternary gemm: special weights and a hand-computed case") {
  const KernelTable& kt = selectKernels("ref");
  std::mt19937 rng(11);
  const uint32_t k = 300, nOut = 3;
  const size_t stride = t2PaddedK(k);
  auto q = randomQ(rng, 2, stride, k);
  int32_t qSum[2] = {0, 0};
  for (uint32_t t = 0; t < 2; ++t)
    for (uint32_t i = 0; i < k; ++i) qSum[t] += q[t * stride + i];

  std::vector<int8_t> zeros(size_t(nOut) * k, 0), ones(size_t(nOut) * k, 1), minus(size_t(nOut) * k, -1);
  auto a0 = runGemm(kt, packTensor(zeros, nOut, k, 1.0f), nOut, k, q, stride, 2);
  auto a1 = runGemm(kt, packTensor(ones, nOut, k, 1.0f), nOut, k, q, stride, 2);
  auto am = runGemm(kt, packTensor(minus, nOut, k, 1.0f), nOut, k, q, stride, 2);
  for (uint32_t t = 0; t < 2; ++t)
    for (uint32_t r = 0; r < nOut; ++r) {
      CHECK(a0[t * nOut + r] == 0);
      CHECK(a1[t * nOut + r] == qSum[t]);
      CHECK(am[t * nOut + r] == -qSum[t]);
    }

  // Negating random weights negates the result.
  auto w = randomTernary(rng, size_t(nOut) * k);
  auto wn = w;
  for (auto& v : wn) v = int8_t(-v);
  auto ap = runGemm(kt, packTensor(w, nOut, k, 1.0f), nOut, k, q, stride, 2);
  auto an = runGemm(kt, packTensor(wn, nOut, k, 1.0f), nOut, k, q, stride, 2);
  for (size_t i = 0; i < ap.size(); ++i) CHECK(an[i] == -ap[i]);

  // Hand case, k = 5: w = {1, -1, 0, 1, 1}, q = {10, 20, 30, -40, 5}: 10 - 20 + 0 - 40 + 5 = -45.
  // Epilogue with a_s = 127/2.54 = 50, s_w = 0.5: -45 / 50 * 0.5 = -0.45 (in float).
  const std::vector<int8_t> hw = {1, -1, 0, 1, 1};
  std::vector<int8_t> hq(128, 0);
  const int8_t qv[] = {10, 20, 30, -40, 5};
  std::memcpy(hq.data(), qv, 5);
  auto ah = runGemm(kt, packTensor(hw, 1, 5, 0.5f), 1, 5, hq, 128, 1);
  CHECK(ah[0] == -45);
  float y;
  kt.t2Epilogue(ah.data(), 1, 50.0f, 0.5f, &y);
  CHECK(y == -45.0f / 50.0f * 0.5f);
}

TEST_CASE("ternary gemm: shapes grid vs naive loop, and float path") {
  std::mt19937 rng(3);
  const KernelTable& kt = selectKernels("auto");
  for (uint32_t nOut : {1u, 2u, 3u, 7u, 16u, 17u})
    for (uint32_t k : {128u, 256u, 300u})
      for (uint32_t nTok : {1u, 3u}) {
        CAPTURE(nOut);
        CAPTURE(k);
        CAPTURE(nTok);
        const size_t stride = t2PaddedK(k) + 16;
        auto w = randomTernary(rng, size_t(nOut) * k);
        auto q = randomQ(rng, nTok, stride, k);
        auto packed = packTensor(w, nOut, k, 0.25f);
        CHECK(t2ReadTrailer(packed.data() + t2RowBytes(k) * nOut) == 0.25f);
        CHECK(runGemm(kt, packed, nOut, k, q, stride, nTok) == naiveGemm(w, nOut, k, q, stride, nTok));

        // Float activations on the same ternary weights: exact integers in -> exact sums.
        std::vector<float> x(nTok * stride);
        for (size_t i = 0; i < x.size(); ++i) x[i] = float(q[i]);
        std::vector<float> yf(size_t(nTok) * nOut);
        kt.matmulT2Float(packed.data(), k, 0.25f, 0, nOut, x.data(), stride, nTok, yf.data(), nOut);
        auto acc = naiveGemm(w, nOut, k, q, stride, nTok);
        for (size_t i = 0; i < acc.size(); ++i) CHECK(yf[i] == float(acc[i]) * 0.25f);
      }
}

TEST_CASE("ternary gemm and float matmul: 1 vs 2 threads bit-identical") {
  std::mt19937 rng(5);
  const KernelTable& kt = selectKernels("ref");
  const uint32_t nOut = 37, k = 300, nTok = 3;
  const size_t stride = t2PaddedK(k);
  auto w = randomTernary(rng, size_t(nOut) * k);
  auto packed = packTensor(w, nOut, k, 1.0f);
  auto q = randomQ(rng, nTok, stride, k);
  std::normal_distribution<float> nd;
  std::vector<float> wf(size_t(nOut) * k), x(nTok * stride);
  for (auto& v : wf) v = nd(rng);
  for (auto& v : x) v = nd(rng);
  auto run = [&](int threads, std::vector<int32_t>& acc, std::vector<float>& y) {
    acc.assign(size_t(nTok) * nOut, 0);
    y.assign(size_t(nTok) * nOut, 0.0f);
    omp_set_num_threads(threads);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < int(nOut); ++r) {
      kt.gemmT2(packed.data(), k, uint32_t(r), uint32_t(r) + 1, q.data(), stride, nTok, acc.data(), nOut);
      kt.matmulF32(wf.data(), k, uint32_t(r), uint32_t(r) + 1, x.data(), stride, nTok, y.data(), nOut);
    }
  };
  std::vector<int32_t> a1, a2;
  std::vector<float> y1, y2;
  run(1, a1, y1);
  run(2, a2, y2);
  omp_set_num_threads(omp_get_num_procs());
  CHECK(a1 == a2);
  CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)) == 0);
}

TEST_CASE("float matmul vs naive double loop (F32, F16, BF16)") {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd;
  const KernelTable& kt = selectKernels("ref");
  for (uint32_t k : {1u, 15u, 16u, 100u, 300u, 1000u}) {
    const uint32_t nOut = 5, nTok = 2;
    const size_t stride = k + 3;
    std::vector<float> w(size_t(nOut) * k), x(nTok * stride);
    for (auto& v : w) v = nd(rng);
    for (auto& v : x) v = nd(rng);
    std::vector<uint16_t> wh(w.size()), wb(w.size());
    std::vector<float> whf(w.size()), wbf(w.size());
    for (size_t i = 0; i < w.size(); ++i) {
      wh[i] = fp32ToFp16(w[i]);
      wb[i] = fp32ToBf16(w[i]);
      whf[i] = fp16ToFp32(wh[i]);
      wbf[i] = bf16ToFp32(wb[i]);
    }
    std::vector<float> y32(nOut * nTok), y16(nOut * nTok), yb(nOut * nTok);
    kt.matmulF32(w.data(), k, 0, nOut, x.data(), stride, nTok, y32.data(), nOut);
    kt.matmulF16(wh.data(), k, 0, nOut, x.data(), stride, nTok, y16.data(), nOut);
    kt.matmulBf16(wb.data(), k, 0, nOut, x.data(), stride, nTok, yb.data(), nOut);
    const double eps = std::numeric_limits<float>::epsilon();
    for (uint32_t t = 0; t < nTok; ++t)
      for (uint32_t r = 0; r < nOut; ++r) {
        auto check = [&](const std::vector<float>& wv, float got) {
          double exact = 0, mag = 0;
          for (uint32_t i = 0; i < k; ++i) {
            exact += double(wv[r * k + i]) * x[t * stride + i];
            mag += std::fabs(double(wv[r * k + i]) * x[t * stride + i]);
          }
          CHECK(std::fabs(got - exact) <= k * eps * mag + 1e-30);
        };
        check(w, y32[t * nOut + r]);
        check(whf, y16[t * nOut + r]);
        check(wbf, yb[t * nOut + r]);
      }
    CHECK(kt.dotF32(w.data(), x.data(), k) == y32[0]);
  }
}

TEST_CASE("kernel selection") {
  CHECK(std::string(selectKernels("ref").name) == "ref");
  CHECK(kernelNames().front() == "auto");
  CHECK(kernelNames().back() == "ref");
  const auto supported = supportedKernelNames();
  REQUIRE(!supported.empty());
  CHECK(supported.back() == "ref");
  CHECK_THROWS_AS(selectKernels("avx9"), std::invalid_argument);
  try {
    selectKernels("avx9");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("ref") != std::string::npos);
  }
}
