#include "kernels/gemm_tl3.hpp"

#include "kernels/weight_formats.hpp"

#include <array>
#include <cmath>
#include <cstring>
#include <string>

namespace tern::kernels {

namespace {

struct Digits {
  int8_t a, b, c;  // m = 9a + 3b + c, each in {-1, 0, +1}
};

constexpr std::array<Digits, 14> makeDigits() {
  std::array<Digits, 14> d{};
  for (int m = 0; m < 14; ++m) {
    const int c = (m + 1) % 3 - 1, m1 = (m - c) / 3;
    const int b = (m1 + 1) % 3 - 1, a = (m1 - b) / 3;
    d[size_t(m)] = {int8_t(a), int8_t(b), int8_t(c)};
  }
  return d;
}
constexpr auto kDigits = makeDigits();

constexpr size_t kGroupBlockBytes = size_t(kTl3BlockBytes) * kTl3GroupRows;  // 1280

}  // namespace

void tl3PackRow(const int8_t* w, uint32_t k, uint8_t* dst) {
  const uint32_t nBlocks = tl3Blocks(k);
  std::memset(dst, 0, size_t(nBlocks) * kTl3BlockBytes);
  for (uint32_t b = 0; b < nBlocks; ++b) {
    uint8_t* blk = dst + size_t(b) * kTl3BlockBytes;
    uint32_t signs = 0;
    for (uint32_t j = 0; j < kTl3BlockTriples; ++j) {
      int v = 0;
      for (uint32_t e = 0; e < 3; ++e) {
        const uint32_t i = b * kTl3BlockElems + 3 * j + e;
        v = 3 * v + (i < k ? w[i] : 0);
      }
      const uint32_t m = uint32_t(v < 0 ? -v : v);
      blk[j % 16] = uint8_t(blk[j % 16] | m << (4 * (j / 16)));
      if (v < 0) signs |= 1u << j;
    }
    for (uint32_t i = 0; i < 4; ++i) blk[16 + i] = uint8_t(signs >> (8 * i));
  }
}

void tl3UnpackRow(const uint8_t* src, uint32_t k, uint32_t row, int8_t* w) {
  for (uint32_t b = 0; b * kTl3BlockElems < k; ++b) {
    const uint8_t* blk = src + size_t(b) * kTl3BlockBytes;
    for (uint32_t j = 0; j < kTl3BlockTriples; ++j) {
      const uint32_t i0 = b * kTl3BlockElems + 3 * j;
      if (i0 >= k) break;
      const uint32_t m = (blk[j % 16] >> (4 * (j / 16))) & 15u;
      if (m > 13)
        throw WeightFormatError("invalid TL3 magnitude " + std::to_string(m) + " at row " +
                                std::to_string(row) + ", column " + std::to_string(i0));
      const int s = (blk[16 + j / 8] >> (j % 8)) & 1u ? -1 : 1;
      const Digits d = kDigits[m];
      const int8_t t[3] = {int8_t(s * d.a), int8_t(s * d.b), int8_t(s * d.c)};
      for (uint32_t e = 0; e < 3 && i0 + e < k; ++e) w[i0 + e] = t[e];
    }
  }
}

void tl3WriteScale(float scale, uint32_t k, uint32_t nOut, uint8_t* tensor) {
  uint8_t* dst = tensor + tl3RowBytes(k) * nOut;
  std::memset(dst, 0, kTl3TrailerBytes);
  std::memcpy(dst, &scale, sizeof scale);  // little-endian hosts only (x86-64, aarch64)
}

float tl3ReadScale(const uint8_t* tensor, uint32_t k, uint32_t nOut) {
  float s;
  std::memcpy(&s, tensor + tl3RowBytes(k) * nOut, sizeof s);
  if (!std::isfinite(s)) throw WeightFormatError("scale " + std::to_string(s) + " is not finite");
  return s;
}

void tl3Interleave(const uint8_t* tensor, uint32_t k, uint32_t nOut, uint8_t* dst) {
  const uint32_t nBlocks = tl3Blocks(k), nGroups = tl3Groups(nOut);
  const size_t rowBytes = tl3RowBytes(k);
  const size_t body = size_t(nGroups) * nBlocks * kGroupBlockBytes;
  std::memset(dst, 0, tl3InterleavedBytes(k, nOut));
  for (uint32_t r = 0; r < nOut; ++r) {
    const uint8_t* src = tensor + r * rowBytes;
    const uint32_t g = r / kTl3GroupRows, i = r % kTl3GroupRows;
    int32_t nNeg = 0;
    for (uint32_t b = 0; b < nBlocks; ++b) {
      const uint8_t* blk = src + size_t(b) * kTl3BlockBytes;
      uint8_t* out = dst + (size_t(g) * nBlocks + b) * kGroupBlockBytes + i;
      for (uint32_t l = 0; l < kTl3BlockBytes; ++l) out[l * kTl3GroupRows] = blk[l];
      for (uint32_t p = 0; p < 16; ++p)
        if ((blk[p] & 15u) > 13 || (blk[p] >> 4) > 13)
          throw WeightFormatError("invalid TL3 magnitude " +
                                  std::to_string((blk[p] & 15u) > 13 ? blk[p] & 15u : blk[p] >> 4u) +
                                  " at row " + std::to_string(r) + ", block " + std::to_string(b));
      for (uint32_t l = 16; l < kTl3BlockBytes; ++l) nNeg += __builtin_popcount(blk[l]);
    }
    std::memcpy(dst + body + 4 * size_t(r), &nNeg, 4);
  }
}

namespace ref {

void tl3Tables(const int8_t* q, uint32_t k, uint8_t* tables) {
  const uint32_t nTriples = tl3PaddedK(k) / 3;
  for (uint32_t j = 0; j < nTriples; ++j) {
    int x[3];
    for (uint32_t e = 0; e < 3; ++e) x[e] = 3 * j + e < k ? q[3 * j + e] : 0;
    uint8_t* t = tables + size_t(j) * kTl3TableBytes;
    for (uint32_t m = 0; m < 16; ++m) {
      const int v = m < 14 ? kDigits[m].a * x[0] + kDigits[m].b * x[1] + kDigits[m].c * x[2] : 0;
      const uint16_t u = uint16_t(int16_t(v));
      t[m] = uint8_t(u & 0xffu);
      t[16 + m] = uint8_t(u >> 8);
    }
  }
}

void gemmTl3(const uint8_t* w, uint32_t k, uint32_t nOut, uint32_t rowBegin, uint32_t rowEnd,
             const uint8_t* tables, size_t tableStride, uint32_t nTok, int32_t* acc,
             size_t accStride) {
  const uint32_t nBlocks = tl3Blocks(k);
  for (uint32_t r = rowBegin; r < rowEnd && r < nOut; ++r) {
    const uint32_t g = r / kTl3GroupRows, i = r % kTl3GroupRows;
    for (uint32_t t = 0; t < nTok; ++t) {
      const uint8_t* tab = tables + t * tableStride;
      int32_t sum = 0;
      for (uint32_t b = 0; b < nBlocks; ++b) {
        const uint8_t* blk = w + (size_t(g) * nBlocks + b) * kGroupBlockBytes + i;
        for (uint32_t j = 0; j < kTl3BlockTriples; ++j) {
          const uint32_t m = (blk[(j % 16) * kTl3GroupRows] >> (4 * (j / 16))) & 15u;
          const bool neg = (blk[(16 + j / 8) * kTl3GroupRows] >> (j % 8)) & 1u;
          const uint8_t* tj = tab + (size_t(b) * kTl3BlockTriples + j) * kTl3TableBytes;
          const int16_t v = int16_t(uint16_t(tj[m] | tj[16 + m] << 8));
          sum += neg ? -v : v;
        }
      }
      acc[t * accStride + r] = sum;
    }
  }
}

}  // namespace ref

}  // namespace tern::kernels
