// TERN_TL3: the 1.67-bit lookup-table format (kernels/gemm_tl3.hpp). Codec checked against hand
// values and exhaustively; every kernel variant's integer GEMM against the T2 reference gemmT2 on
// the same weights.
#include "kernels/dispatch.hpp"
#include "kernels/gemm_t2.hpp"
#include "kernels/gemm_tl3.hpp"
#include "kernels/t2.hpp"
#include "kernels/weight_formats.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace tern::kernels;

namespace {

// Balanced-ternary digits (w0, w1, w2) of v in [-13, 13]: v = 9 w0 + 3 w1 + w2.
void digitsOf(int v, int8_t* w) {
  for (int e = 2; e >= 0; --e) {
    int d = ((v % 3) + 3) % 3;
    if (d == 2) d = -1;
    w[e] = int8_t(d);
    v = (v - d) / 3;
  }
}

std::vector<int8_t> randomCodes(size_t n, std::mt19937& rng) {
  std::vector<int8_t> w(n);
  for (auto& x : w) x = int8_t(int(rng() % 3) - 1);
  return w;
}

// On-disk TL3 tensor of codes w [nOut][k].
std::vector<uint8_t> packTl3(const std::vector<int8_t>& w, uint32_t k, uint32_t nOut, float s = 1.0f) {
  std::vector<uint8_t> t(tl3TensorBytes(k, nOut), 0xaa);
  for (uint32_t r = 0; r < nOut; ++r) tl3PackRow(w.data() + size_t(r) * k, k, t.data() + r * tl3RowBytes(k));
  tl3WriteScale(s, k, nOut, t.data());
  return t;
}

std::vector<uint8_t> interleave(const std::vector<uint8_t>& t, uint32_t k, uint32_t nOut) {
  std::vector<uint8_t> out(tl3InterleavedBytes(k, nOut));
  tl3Interleave(t.data(), k, nOut, out.data());
  return out;
}

// acc [nTok][nOut] of ref gemmT2 on codes w [nOut][k] and q [nTok][k].
std::vector<int32_t> refT2(const std::vector<int8_t>& w, uint32_t k, uint32_t nOut, const std::vector<int8_t>& q,
                           uint32_t nTok) {
  std::vector<uint8_t> t2(t2TensorBytes(k, nOut));
  for (uint32_t r = 0; r < nOut; ++r) t2PackRow(w.data() + size_t(r) * k, k, t2.data() + r * t2RowBytes(k));
  const size_t qStride = t2PaddedK(k);
  std::vector<int8_t> qp(qStride * nTok, 0);
  for (uint32_t t = 0; t < nTok; ++t) std::memcpy(qp.data() + t * qStride, q.data() + size_t(t) * k, k);
  std::vector<int32_t> acc(size_t(nTok) * nOut);
  ref::gemmT2(t2.data(), k, 0, nOut, qp.data(), qStride, nTok, acc.data(), nOut);
  return acc;
}

// acc [nTok][nOut] of variant kt's TL3 kernels, rows [rowBegin, rowEnd) (others left at -7).
std::vector<int32_t> runTl3(const KernelTable& kt, const std::vector<uint8_t>& wi, uint32_t k, uint32_t nOut,
                            const std::vector<int8_t>& q, uint32_t nTok, uint32_t rowBegin, uint32_t rowEnd) {
  const size_t stride = tl3TableBytes(k) + 32;  // a stride larger than the tables is allowed
  std::vector<uint8_t> tables(stride * nTok);
  for (uint32_t t = 0; t < nTok; ++t) kt.tl3Tables(q.data() + size_t(t) * k, k, tables.data() + t * stride);
  std::vector<int32_t> acc(size_t(nTok) * nOut, -7);
  kt.gemmTl3(wi.data(), k, nOut, rowBegin, rowEnd, tables.data(), stride, nTok, acc.data(), nOut);
  return acc;
}

std::vector<int8_t> randomQ(size_t n, std::mt19937& rng) {
  std::vector<int8_t> q(n);
  for (auto& x : q) x = int8_t(int(rng() % 256) - 128);
  return q;
}

}  // namespace

TEST_CASE("tl3: sizes and the traits row") {
  CHECK(tl3PaddedK(1) == 96);
  CHECK(tl3PaddedK(96) == 96);
  CHECK(tl3PaddedK(2560) == 2592);
  CHECK(tl3RowBytes(2560) == 27 * 20);
  CHECK(tl3TensorBytes(6912, 2560) == size_t(2560) * 72 * 20 + 32);
  CHECK(tl3TableBytes(2560) == 864 * 32);
  CHECK(tl3InterleavedBytes(100, 65) == size_t(128) * (40 + 4));
  const auto& tr = weightFormat(WeightFormat::TL3);
  CHECK(std::string(tr.name) == "TERN_TL3");
  CHECK(tr.ggmlType == 1001);
  CHECK(weightFormatFromName("tl3") == WeightFormat::TL3);
  CHECK(weightFormatFromGgmlType(1001) == WeightFormat::TL3);
  CHECK(*tr.tensorBytes(100, 3) == 3 * 40 + 32);
  CHECK_FALSE(tr.tensorBytes(0, 3).has_value());
  // 2B4T's ffn_down [6912 -> 2560]: 1.667 bits per weight plus the trailer.
  CHECK(double(*tr.tensorBytes(6912, 2560) - 32) * 8 / (6912.0 * 2560) == doctest::Approx(5.0 / 3));
}

TEST_CASE("tl3: hand-packed bytes") {
  // k = 96 (one block). Triple 0 = (+1, +1, +1): v = 13; triple 17 = (-1, 0, 0): v = -9;
  // triple 31 = (0, -1, +1): v = -2; triple 1 = (+1, -1, -1): v = 5.
  std::vector<int8_t> w(96, 0);
  w[0] = w[1] = w[2] = 1;
  w[51] = -1;
  w[94] = -1, w[95] = 1;
  w[3] = 1, w[4] = -1, w[5] = -1;
  uint8_t b[20];
  tl3PackRow(w.data(), 96, b);
  CHECK(b[0] == 13);              // m[0] = 13 low, m[16] = 0 high
  CHECK(b[1] == (9 << 4 | 5));    // m[1] = 5 low, m[17] = 9 high
  CHECK(b[15] == (2 << 4));       // m[31] = 2 high
  for (int p = 2; p < 15; ++p) CHECK(b[p] == 0);
  const uint32_t signs = uint32_t(b[16]) | uint32_t(b[17]) << 8 | uint32_t(b[18]) << 16 | uint32_t(b[19]) << 24;
  CHECK(signs == ((1u << 17) | (1u << 31)));
  std::vector<int8_t> back(96);
  tl3UnpackRow(b, 96, 0, back.data());
  CHECK(back == w);
  // A tail of 2 weights: (+1, -1) -> triple (+1, -1, 0) = 6.
  const int8_t tail[2] = {1, -1};
  uint8_t t[20];
  tl3PackRow(tail, 2, t);
  CHECK(t[0] == 6);
  CHECK(t[16] == 0);
}

TEST_CASE("tl3: pack -> unpack is the identity for every index value at every position") {
  std::mt19937 rng(7);
  const uint32_t k = 192;
  for (int v = -13; v <= 13; ++v)
    for (uint32_t pos = 0; pos < 64; ++pos) {
      std::vector<int8_t> w = randomCodes(k, rng);
      digitsOf(v, &w[3 * pos]);
      std::vector<uint8_t> bytes(tl3RowBytes(k));
      tl3PackRow(w.data(), k, bytes.data());
      const uint32_t blk = pos / 32, j = pos % 32;
      CHECK(((bytes[blk * 20 + j % 16] >> (4 * (j / 16))) & 15) == std::abs(v));
      CHECK(((bytes[blk * 20 + 16 + j / 8] >> (j % 8)) & 1) == (v < 0 ? 1 : 0));
      std::vector<int8_t> back(k);
      tl3UnpackRow(bytes.data(), k, 0, back.data());
      REQUIRE(back == w);
    }
  // Random multi-block rows with tails, through the traits table.
  const auto& tr = weightFormat(WeightFormat::TL3);
  for (uint32_t kk : {1u, 2u, 3u, 4u, 95u, 96u, 97u, 200u, 1000u, 2560u}) {
    CAPTURE(kk);
    const uint32_t nOut = 5;
    const auto w = randomCodes(size_t(kk) * nOut, rng);
    std::vector<uint8_t> t(*tr.tensorBytes(kk, nOut), 0);
    for (uint32_t i = 0; i < nOut; ++i) {  // rows in reverse order
      const uint32_t r = nOut - 1 - i;
      tr.packRow(w.data() + size_t(r) * kk, kk, nOut, r, t.data());
    }
    tr.writeScale(0.25f, kk, nOut, t.data());
    CHECK(tr.readScale(t.data(), kk, nOut) == 0.25f);
    std::vector<int8_t> back(kk);
    for (uint32_t r = 0; r < nOut; ++r) {
      tr.unpackRow(t.data(), kk, nOut, r, back.data());
      CHECK(std::memcmp(back.data(), w.data() + size_t(r) * kk, kk) == 0);
    }
    // Repacked to T2, the same codes.
    std::vector<uint8_t> t2(t2TensorBytes(kk, nOut));
    CHECK(repackToT2(WeightFormat::TL3, t.data(), kk, nOut, t2.data()) == 0.25f);
    for (uint32_t r = 0; r < nOut; ++r) {
      t2UnpackRow(t2.data() + r * t2RowBytes(kk), kk, back.data());
      CHECK(std::memcmp(back.data(), w.data() + size_t(r) * kk, kk) == 0);
    }
  }
}

TEST_CASE("tl3: invalid magnitudes and scales are refused") {
  std::vector<uint8_t> t(tl3TensorBytes(96, 2), 0);
  tl3WriteScale(1.0f, 96, 2, t.data());
  t[20 + 3] = 0xe0;  // row 1, m[19] = 14
  std::vector<int8_t> w(96);
  tl3UnpackRow(t.data(), 96, 0, w.data());
  CHECK_THROWS_AS(tl3UnpackRow(t.data() + 20, 96, 1, w.data()), WeightFormatError);
  std::vector<uint8_t> out(tl3InterleavedBytes(96, 2));
  CHECK_THROWS_WITH_AS(tl3Interleave(t.data(), 96, 2, out.data()), doctest::Contains("row 1"), WeightFormatError);
  t[20 + 3] = 0;
  tl3WriteScale(std::numeric_limits<float>::infinity(), 96, 2, t.data());
  CHECK_THROWS_AS(tl3ReadScale(t.data(), 96, 2), WeightFormatError);
}

TEST_CASE("tl3: lookup tables hold the partial sums (every variant equals ref)") {
  std::mt19937 rng(11);
  const uint32_t k = 100;  // 2 blocks, a tail of 4 real weights in block 1
  auto q = randomQ(k, rng);
  q[0] = 100, q[1] = -7, q[2] = 3;
  std::vector<uint8_t> ref(tl3TableBytes(k));
  ref::tl3Tables(q.data(), k, ref.data());
  auto entry = [&](uint32_t j, uint32_t m) { return int16_t(uint16_t(ref[32 * j + m] | ref[32 * j + 16 + m] << 8)); };
  // m = 13 -> (+1, +1, +1), 5 -> (+1, -1, -1), 2 -> (0, +1, -1), 7 -> (+1, -1, +1).
  CHECK(entry(0, 0) == 0);
  CHECK(entry(0, 13) == 96);
  CHECK(entry(0, 5) == 104);
  CHECK(entry(0, 2) == -10);
  CHECK(entry(0, 7) == 110);
  CHECK(entry(0, 14) == 0);
  CHECK(entry(0, 15) == 0);
  // Triple 33 = q[99], then padding: T(m) = a_m * q[99].
  CHECK(entry(33, 13) == q[99]);
  CHECK(entry(33, 4) == 0);
  CHECK(entry(34, 13) == 0);
  for (const std::string& name : supportedKernelNames()) {
    CAPTURE(name);
    std::vector<uint8_t> got(tl3TableBytes(k), 0x55);
    selectKernels(name).tl3Tables(q.data(), k, got.data());
    CHECK(got == ref);
  }
}

TEST_CASE("tl3: GEMM special cases (zero, negated, all +1) in every variant") {
  std::mt19937 rng(3);
  const uint32_t k = 1000, nOut = 70, nTok = 3;
  const auto q = randomQ(size_t(k) * nTok, rng);
  for (const std::string& name : supportedKernelNames()) {
    CAPTURE(name);
    const KernelTable& kt = selectKernels(name);
    const std::vector<int8_t> zero(size_t(k) * nOut, 0);
    for (int32_t v : runTl3(kt, interleave(packTl3(zero, k, nOut), k, nOut), k, nOut, q, nTok, 0, nOut))
      CHECK(v == 0);
    const std::vector<int8_t> ones(size_t(k) * nOut, 1);
    const auto a1 = runTl3(kt, interleave(packTl3(ones, k, nOut), k, nOut), k, nOut, q, nTok, 0, nOut);
    for (uint32_t t = 0; t < nTok; ++t) {
      int32_t sum = 0;
      for (uint32_t i = 0; i < k; ++i) sum += q[size_t(t) * k + i];
      for (uint32_t r = 0; r < nOut; ++r) CHECK(a1[size_t(t) * nOut + r] == sum);
    }
    auto w = randomCodes(size_t(k) * nOut, rng);
    const auto a = runTl3(kt, interleave(packTl3(w, k, nOut), k, nOut), k, nOut, q, nTok, 0, nOut);
    for (auto& x : w) x = int8_t(-x);
    const auto b = runTl3(kt, interleave(packTl3(w, k, nOut), k, nOut), k, nOut, q, nTok, 0, nOut);
    for (size_t i = 0; i < a.size(); ++i) CHECK(b[i] == -a[i]);
  }
}

TEST_CASE("tl3: integer GEMM equals ref gemmT2 for every variant on a grid") {
  std::mt19937 rng(2024);
  const std::vector<std::string> variants = supportedKernelNames();
  MESSAGE("TL3 variants checked: ", variants.size());
  size_t bad = 0, cells = 0;
  for (uint32_t nOut : {1u, 2u, 3u, 7u, 16u, 17u, 64u, 65u, 130u})
    for (uint32_t k : {128u, 384u, 1000u, 2560u, 6912u})
      for (uint32_t nTok : {1u, 3u, 8u})
        for (int mode = 0; mode < 3; ++mode) {  // random q, all 127, all -128
          if (mode > 0 && nTok != 3) continue;
          auto w = randomCodes(size_t(k) * nOut, rng);
          std::vector<int8_t> q = randomQ(size_t(k) * nTok, rng);
          if (mode > 0) {
            std::fill(q.begin(), q.end(), int8_t(mode == 1 ? 127 : -128));
            // The largest |partial sums|: whole rows of +1, of -1, and alternating triples.
            for (uint32_t r = 0; r < nOut; ++r)
              for (uint32_t i = 0; i < k; ++i)
                w[size_t(r) * k + i] = int8_t(r % 3 == 0 ? 1 : r % 3 == 1 ? -1 : ((i / 3) % 2 ? 1 : -1));
          }
          const auto want = refT2(w, k, nOut, q, nTok);
          const auto wi = interleave(packTl3(w, k, nOut), k, nOut);
          for (const std::string& name : variants) {
            ++cells;
            const auto got = runTl3(selectKernels(name), wi, k, nOut, q, nTok, 0, nOut);
            if (got != want) {
              ++bad;
              MESSAGE("mismatch: ", name, " nOut ", nOut, " k ", k, " nTok ", nTok, " mode ", mode);
            }
          }
        }
  CHECK(bad == 0);
  CHECK(cells > 0);
}

TEST_CASE("tl3: row ranges write only their rows") {
  std::mt19937 rng(5);
  const uint32_t k = 384, nOut = 200, nTok = 2;
  const auto w = randomCodes(size_t(k) * nOut, rng);
  const auto q = randomQ(size_t(k) * nTok, rng);
  const auto want = refT2(w, k, nOut, q, nTok);
  const auto wi = interleave(packTl3(w, k, nOut), k, nOut);
  for (const std::string& name : supportedKernelNames()) {
    CAPTURE(name);
    for (auto [r0, r1] : {std::pair{0u, 64u}, {64u, 128u}, {128u, 200u}, {192u, 200u}, {0u, 200u}}) {
      const auto got = runTl3(selectKernels(name), wi, k, nOut, q, nTok, r0, r1);
      for (uint32_t t = 0; t < nTok; ++t)
        for (uint32_t r = 0; r < nOut; ++r)
          CHECK(got[t * nOut + r] == (r >= r0 && r < r1 ? want[t * nOut + r] : -7));
    }
  }
}
