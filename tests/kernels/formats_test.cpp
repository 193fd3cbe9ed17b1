// Ternary weight formats (kernels/weight_formats.hpp) against byte layouts built here by hand from
// the descriptions in ../shared/docs/formats.md (sections 3-4) and kernels/t2.hpp.
#include "kernels/f16.hpp"
#include "kernels/gemm_t2.hpp"
#include "kernels/t2.hpp"
#include "kernels/weight_formats.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <vector>

using namespace tern::kernels;

namespace {

constexpr WeightFormat kAll[] = {WeightFormat::T2, WeightFormat::I2S, WeightFormat::TQ2_0,
                                 WeightFormat::TQ1_0};

// --- independent encoders, one element at a time, straight from the format descriptions -------

// TERN_T2: rows padded to 128; block byte p holds element 32n+p at bits 2n+1..2n.
void handSetT2(std::vector<uint8_t>& t, uint32_t k, uint32_t row, uint32_t i, int w) {
  const size_t rowBytes = (k + 127) / 128 * 32;
  const uint32_t b = i / 128, j = i % 128;
  uint8_t& byte = t[row * rowBytes + b * 32 + j % 32];
  const uint32_t shift = 2 * (j / 32);
  byte = uint8_t((byte & ~(3u << shift)) | uint32_t(w + 1) << shift);
}

// I2_S: flattened index e; byte (e/128)*32 + e%32, shift 6 - 2*((e%128)/32).
void handSetI2s(std::vector<uint8_t>& t, uint32_t k, uint32_t row, uint32_t i, int w) {
  const uint64_t e = uint64_t(row) * k + i;
  const uint32_t j = uint32_t(e % 128);
  uint8_t& byte = t[e / 128 * 32 + j % 32];
  const uint32_t shift = 6 - 2 * (j / 32);
  byte = uint8_t((byte & ~(3u << shift)) | uint32_t(w + 1) << shift);
}

// TQ2_0: 66 B blocks; element e = 128c + m + 32n sits in byte 32c + m at bits 2n+1..2n.
void handSetTq2(std::vector<uint8_t>& t, uint32_t k, uint32_t row, uint32_t i, int w) {
  uint8_t* blk = &t[(size_t(row) * (k / 256) + i / 256) * 66];
  const uint32_t e = i % 256, c = e / 128, m = e % 32, n = (e % 128) / 32;
  uint8_t& byte = blk[32 * c + m];
  byte = uint8_t((byte & ~(3u << (2 * n))) | uint32_t(w + 1) << (2 * n));
}

// TQ1_0 works on whole bytes: trits t_0..t_4 (t_0 most significant) -> ceil(v * 256 / 243).
uint8_t tq1Byte(const int t[5]) {
  uint32_t v = 0;
  for (int n = 0; n < 5; ++n) v = v * 3 + uint32_t(t[n]);
  return uint8_t((v * 256 + 242) / 243);
}

// TQ1_0 block from 256 codes: qs[m] <- elements m + 32n (n < 5); qs[32 + m] <- 160 + m + 16n;
// qh[j] <- 240 + j + 4n (n < 4, fifth trit 0); then fp16 d.
void handTq1Block(const int8_t* w, uint16_t d, uint8_t* blk) {
  for (int m = 0; m < 32; ++m) {
    int t[5];
    for (int n = 0; n < 5; ++n) t[n] = w[m + 32 * n] + 1;
    blk[m] = tq1Byte(t);
  }
  for (int m = 0; m < 16; ++m) {
    int t[5];
    for (int n = 0; n < 5; ++n) t[n] = w[160 + m + 16 * n] + 1;
    blk[32 + m] = tq1Byte(t);
  }
  for (int j = 0; j < 4; ++j) {
    int t[5] = {0, 0, 0, 0, 0};
    for (int n = 0; n < 4; ++n) t[n] = w[240 + j + 4 * n] + 1;
    blk[48 + j] = tq1Byte(t);
  }
  std::memcpy(blk + 52, &d, 2);
}

// A whole tensor [nOut][k] in format f, with scale s, built by hand.
std::vector<uint8_t> handEncode(WeightFormat f, const std::vector<int8_t>& w, uint32_t k,
                                uint32_t nOut, float s) {
  std::vector<uint8_t> t;
  const uint16_t d = fp32ToFp16(s);
  switch (f) {
    case WeightFormat::T2: {
      t.assign((k + 127) / 128 * 32 * nOut + 32, 0x55);  // code 1 everywhere (padding too)
      for (uint32_t r = 0; r < nOut; ++r)
        for (uint32_t i = 0; i < k; ++i) handSetT2(t, k, r, i, w[r * k + i]);
      std::memset(&t[t.size() - 32], 0, 32);
      std::memcpy(&t[t.size() - 32], &s, 4);
      break;
    }
    case WeightFormat::I2S: {
      t.assign(size_t(k) * nOut / 4 + 32, 0);
      for (uint32_t r = 0; r < nOut; ++r)
        for (uint32_t i = 0; i < k; ++i) handSetI2s(t, k, r, i, w[r * k + i]);
      std::memcpy(&t[t.size() - 32], &s, 4);
      break;
    }
    case WeightFormat::TQ2_0: {
      t.assign(size_t(k / 256) * nOut * 66, 0);
      for (uint32_t r = 0; r < nOut; ++r)
        for (uint32_t i = 0; i < k; ++i) handSetTq2(t, k, r, i, w[r * k + i]);
      for (size_t b = 0; b < t.size() / 66; ++b) std::memcpy(&t[b * 66 + 64], &d, 2);
      break;
    }
    case WeightFormat::TQ1_0: {
      t.assign(size_t(k / 256) * nOut * 54, 0);
      for (size_t b = 0; b < t.size() / 54; ++b) handTq1Block(&w[b * 256], d, &t[b * 54]);
      break;
    }
    case WeightFormat::TL3: break;  // hand-checked in tl3_test.cpp
  }
  return t;
}

std::vector<int8_t> randomCodes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(-1, 1);
  std::vector<int8_t> w(n);
  for (auto& x : w) x = int8_t(dist(rng));
  return w;
}

std::vector<uint8_t> libPack(WeightFormat f, const std::vector<int8_t>& w, uint32_t k,
                             uint32_t nOut, float s) {
  const auto& tr = weightFormat(f);
  std::vector<uint8_t> t(*tr.tensorBytes(k, nOut), 0);
  for (uint32_t r = 0; r < nOut; ++r) tr.packRow(&w[size_t(r) * k], k, nOut, r, t.data());
  tr.writeScale(s, k, nOut, t.data());
  return t;
}

std::vector<int8_t> libUnpack(WeightFormat f, const std::vector<uint8_t>& t, uint32_t k,
                              uint32_t nOut) {
  const auto& tr = weightFormat(f);
  std::vector<int8_t> w(size_t(k) * nOut, 7);
  for (uint32_t r = 0; r < nOut; ++r) tr.unpackRow(t.data(), k, nOut, r, &w[size_t(r) * k]);
  return w;
}

// Codes of one block-sized tensor [1][blockElems] such that, over `iters` iterations, every
// storage byte takes every possible value (2-bit: 81 values of 4 codes; TQ1_0: 243 / 81).
std::vector<int8_t> exhaustiveCodes(WeightFormat f, uint32_t it) {
  std::vector<int8_t> w(256, 0);
  auto digit = [](uint32_t v, uint32_t n) { return int8_t(v / (n == 0 ? 1 : n == 1 ? 3 : n == 2 ? 9 : n == 3 ? 27 : 81) % 3) - 1; };
  switch (f) {
    case WeightFormat::T2:
    case WeightFormat::I2S:
      w.resize(128);
      for (uint32_t p = 0; p < 32; ++p)
        for (uint32_t n = 0; n < 4; ++n) w[32 * n + p] = int8_t(digit((it + 7 * p) % 81, n));
      break;
    case WeightFormat::TQ2_0:
      for (uint32_t c = 0; c < 2; ++c)
        for (uint32_t m = 0; m < 32; ++m)
          for (uint32_t n = 0; n < 4; ++n)
            w[128 * c + m + 32 * n] = int8_t(digit((it + 7 * (32 * c + m)) % 81, n));
      break;
    case WeightFormat::TQ1_0:
      for (uint32_t m = 0; m < 32; ++m)
        for (uint32_t n = 0; n < 5; ++n) w[m + 32 * n] = int8_t(digit((it + 37 * m) % 243, 4 - n));
      for (uint32_t m = 0; m < 16; ++m)
        for (uint32_t n = 0; n < 5; ++n)
          w[160 + m + 16 * n] = int8_t(digit((it + 37 * (32 + m)) % 243, 4 - n));
      for (uint32_t j = 0; j < 4; ++j)
        for (uint32_t n = 0; n < 4; ++n)
          w[240 + j + 4 * n] = int8_t(digit((it + 11 * j) % 81, 3 - n));
      break;
    case WeightFormat::TL3: break;  // exhaustive in tl3_test.cpp
  }
  return w;
}

}  // namespace

TEST_CASE("weight formats: traits table") {
  CHECK(kWeightFormats.size() == 5);
  for (size_t i = 0; i < kWeightFormats.size(); ++i) {
    CHECK(size_t(kWeightFormats[i].format) == i);
    CHECK(kWeightFormats[i].act == ActType::Int8PerToken);
  }
  CHECK(std::string(weightFormat(WeightFormat::I2S).name) == "I2_S");
  CHECK(weightFormat(WeightFormat::I2S).ggmlType == 36);
  CHECK(weightFormat(WeightFormat::TQ2_0).ggmlType == 35);
  CHECK(weightFormat(WeightFormat::TQ1_0).ggmlType == 34);
  CHECK(weightFormat(WeightFormat::T2).ggmlType == 1000);
  CHECK(weightFormat(WeightFormat::TQ2_0).blockBytes == 66);
  CHECK(weightFormat(WeightFormat::TQ1_0).blockBytes == 54);
  CHECK(weightFormat(WeightFormat::I2S).blockElems == 128);
  CHECK(weightFormatFromGgmlType(34) == WeightFormat::TQ1_0);
  CHECK_FALSE(weightFormatFromGgmlType(12).has_value());
  CHECK(weightFormatFromName("tq2_0") == WeightFormat::TQ2_0);
  CHECK(weightFormatFromName("I2_S") == WeightFormat::I2S);
  CHECK(weightFormatFromName("t2") == WeightFormat::T2);
  CHECK_FALSE(weightFormatFromName("q4_k").has_value());
  // Sizes as formats.md gives them: attn_q [256 x 256], ffn_down ne {512, 256}.
  CHECK(*weightFormat(WeightFormat::I2S).tensorBytes(256, 256) == 16416);
  CHECK(*weightFormat(WeightFormat::TQ2_0).tensorBytes(512, 256) == 2 * 256 * 66);
  CHECK(*weightFormat(WeightFormat::TQ1_0).tensorBytes(256, 256) == 256 * 54);
  CHECK(*weightFormat(WeightFormat::T2).tensorBytes(100, 3) == 3 * 32 + 32);
  CHECK_FALSE(weightFormat(WeightFormat::TQ2_0).tensorBytes(128, 4).has_value());
  CHECK_FALSE(weightFormat(WeightFormat::I2S).tensorBytes(100, 3).has_value());  // 300 % 128
  CHECK(weightFormat(WeightFormat::I2S).tensorBytes(192, 2).has_value());  // straddling blocks
}

TEST_CASE("weight formats: every byte value at every position, hand layout == library") {
  for (WeightFormat f : kAll) {
    CAPTURE(weightFormat(f).name);
    const uint32_t iters = f == WeightFormat::TQ1_0 ? 243 : 81;
    const uint32_t k = f == WeightFormat::TQ2_0 || f == WeightFormat::TQ1_0 ? 256 : 128;
    size_t bad = 0;
    for (uint32_t it = 0; it < iters; ++it) {
      const auto w = exhaustiveCodes(f, it);
      REQUIRE(w.size() == k);
      const float s = 0.375f;
      const auto hand = handEncode(f, w, k, 1, s);
      const auto packed = libPack(f, w, k, 1, s);
      bad += hand != packed;
      bad += libUnpack(f, hand, k, 1) != w;
      bad += weightFormat(f).readScale(hand.data(), k, 1) != s;
    }
    CHECK(bad == 0);
  }
  // TQ1_0's byte rule on its own: every 5-trit value, and every 4-trit value times 3.
  for (uint32_t v = 0; v < 243; ++v) {
    const uint32_t b = (v * 256 + 242) / 243;
    REQUIRE(b < 256);
    uint32_t back = 0;
    for (uint32_t n = 0, p3 = 1; n < 5; ++n, p3 *= 3) back = back * 3 + ((((b * p3) & 255) * 3) >> 8);
    CHECK(back == v);
  }
}

TEST_CASE("weight formats: random rows, several blocks, rows straddling I2_S blocks") {
  struct Shape { uint32_t k, nOut; };
  for (WeightFormat f : kAll) {
    CAPTURE(weightFormat(f).name);
    const bool tq = f == WeightFormat::TQ2_0 || f == WeightFormat::TQ1_0;
    const Shape shapes[] = {{768, 5}, tq ? Shape{512, 3} : Shape{192, 4}};
    for (const Shape sh : shapes) {
      CAPTURE(sh.k);
      const auto w = randomCodes(size_t(sh.k) * sh.nOut, 11 + sh.k);
      const float s = 0.0841064453125f;  // exact in fp16
      const auto hand = handEncode(f, w, sh.k, sh.nOut, s);
      CHECK(libPack(f, w, sh.k, sh.nOut, s) == hand);
      CHECK(libUnpack(f, hand, sh.k, sh.nOut) == w);
      CHECK(weightFormat(f).readScale(hand.data(), sh.k, sh.nOut) == s);
    }
  }
}

TEST_CASE("weight formats: all-zero weights, zero scales, bad bytes") {
  for (WeightFormat f : kAll) {
    CAPTURE(weightFormat(f).name);
    const uint32_t k = 512, nOut = 2;
    const std::vector<int8_t> zero(size_t(k) * nOut, 0);
    for (float s : {0.0f, 0.5f}) {
      const auto t = libPack(f, zero, k, nOut, s);
      CHECK(libUnpack(f, t, k, nOut) == zero);
      CHECK(weightFormat(f).readScale(t.data(), k, nOut) == s);
    }
  }
  const uint32_t k = 512, nOut = 2;
  const auto w = randomCodes(size_t(k) * nOut, 5);
  for (WeightFormat f : {WeightFormat::TQ2_0, WeightFormat::TQ1_0}) {
    CAPTURE(weightFormat(f).name);
    const uint32_t bb = weightFormat(f).blockBytes;
    auto t = handEncode(f, w, k, nOut, 0.25f);
    // A block with d = 0 holds zeros whatever its codes, and does not count as another scale.
    const uint16_t zero = 0, other = fp32ToFp16(0.5f);
    std::memcpy(&t[2 * bb - 2], &zero, 2);
    CHECK(weightFormat(f).readScale(t.data(), k, nOut) == 0.25f);
    auto got = libUnpack(f, t, k, nOut);
    for (uint32_t i = 0; i < 256; ++i) CHECK(got[256 + i] == 0);
    CHECK(std::equal(got.begin(), got.begin() + 256, w.begin()));
    // Differing block scales: refused.
    std::memcpy(&t[3 * bb - 2], &other, 2);
    CHECK_THROWS_WITH_AS(weightFormat(f).readScale(t.data(), k, nOut),
                         doctest::Contains("per-block scales"), WeightFormatError);
  }
  // Code 3 is invalid in the 2-bit formats.
  for (WeightFormat f : {WeightFormat::T2, WeightFormat::I2S, WeightFormat::TQ2_0}) {
    CAPTURE(weightFormat(f).name);
    auto t = handEncode(f, w, k, nOut, 1.0f);
    t[5] = 0xff;
    CHECK_THROWS_AS(libUnpack(f, t, k, nOut), WeightFormatError);
  }
  // A non-finite trailer scale is refused.
  auto t = handEncode(WeightFormat::I2S, w, k, nOut, 1.0f);
  const float inf = INFINITY;
  std::memcpy(&t[size_t(k) * nOut / 4], &inf, 4);
  CHECK_THROWS_AS(weightFormat(WeightFormat::I2S).readScale(t.data(), k, nOut), WeightFormatError);
}

TEST_CASE("weight formats: hand-laid tensors repacked to T2 give the T2 integer GEMM results") {
  const uint32_t nTok = 3;
  for (WeightFormat f : kAll) {
    CAPTURE(weightFormat(f).name);
    const bool tq = f == WeightFormat::TQ2_0 || f == WeightFormat::TQ1_0;
    const uint32_t k = tq ? 512 : 320, nOut = 6;  // I2_S / T2: rows straddle blocks, T2 pads
    const auto w = randomCodes(size_t(k) * nOut, 99);
    const float s = 0.1163330078125f;
    const auto hand = handEncode(f, w, k, nOut, s);
    std::vector<uint8_t> repacked(t2TensorBytes(k, nOut));
    CHECK(repackToT2(f, hand.data(), k, nOut, repacked.data()) == s);
    // The same weights packed as TERN_T2 directly.
    std::vector<uint8_t> direct(t2TensorBytes(k, nOut));
    for (uint32_t r = 0; r < nOut; ++r) t2PackRow(&w[size_t(r) * k], k, &direct[r * t2RowBytes(k)]);
    t2WriteTrailer(s, &direct[t2RowBytes(k) * nOut]);
    CHECK(repacked == direct);

    const size_t qStride = t2PaddedK(k);
    std::vector<int8_t> q(qStride * nTok, 0);
    std::mt19937 rng(7);
    for (uint32_t t = 0; t < nTok; ++t)
      for (uint32_t i = 0; i < k; ++i) q[t * qStride + i] = int8_t(int(rng() % 256) - 128);
    std::vector<int32_t> accA(nTok * nOut), accB(nTok * nOut);
    ref::gemmT2(repacked.data(), k, 0, nOut, q.data(), qStride, nTok, accA.data(), nOut);
    ref::gemmT2(direct.data(), k, 0, nOut, q.data(), qStride, nTok, accB.data(), nOut);
    CHECK(accA == accB);
    // And the hand-computed integer dot products.
    size_t bad = 0;
    for (uint32_t t = 0; t < nTok; ++t)
      for (uint32_t r = 0; r < nOut; ++r) {
        int32_t acc = 0;
        for (uint32_t i = 0; i < k; ++i) acc += int32_t(w[size_t(r) * k + i]) * q[t * qStride + i];
        bad += acc != accA[t * nOut + r];
      }
    CHECK(bad == 0);
  }
}
