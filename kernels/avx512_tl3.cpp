// AVX-512 (F/BW/VL) TERN_TL3 lookup-table kernels. Compiled with the AVX-512 library's flags;
// includes no project header with inline code. Layouts: see kernels/gemm_tl3.hpp.
//
// One zmm = one 64-byte interleaved line = 64 rows. Per triple: vpshufb of the broadcast low-byte
// and high-byte tables by the 4-bit magnitudes; the sign bits become a k-mask (vpmovb2m) under
// which both bytes are replaced by 0xff - x (= x ^ 0xff: ~T = -T - 1); unpacklo/hi to int16 and
// int16 sums. Bound as in avx2_tl3.cpp: <= 384 per triple, widened every 64 triples (<= 24576);
// nNeg is added at the end.
#include "kernels/simd_tl3.hpp"

#if defined(__x86_64__)

// GCC 12's AVX-512 headers build "undefined" vectors as `__m512i y = y;` (see avx512.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

namespace tern::kernels::avx512 {

namespace {

constexpr uint32_t kBlockElems = 96;
constexpr uint32_t kTriples = 32;
constexpr uint32_t kBlockBytes = 20;
constexpr uint32_t kGroupRows = 64;
constexpr size_t kGroupBlockBytes = size_t(kBlockBytes) * kGroupRows;
constexpr size_t kTableBytes = 32;
constexpr uint32_t kBlocksPerWiden = 2;
constexpr uint32_t kTokTile = 4;

uint32_t nBlocksOf(uint32_t k) { return (k + kBlockElems - 1) / kBlockElems; }

inline __m512i table(const uint8_t* p) {
  return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline void lookup(__m512i a[2], __m512i m, __mmask64 neg, const uint8_t* tab) {
  const __m512i ones = _mm512_set1_epi8(-1);
  __m512i lo = _mm512_shuffle_epi8(table(tab), m);
  __m512i hi = _mm512_shuffle_epi8(table(tab + 16), m);
  lo = _mm512_mask_sub_epi8(lo, neg, ones, lo);
  hi = _mm512_mask_sub_epi8(hi, neg, ones, hi);
  a[0] = _mm512_add_epi16(a[0], _mm512_unpacklo_epi8(lo, hi));
  a[1] = _mm512_add_epi16(a[1], _mm512_unpackhi_epi8(lo, hi));
}

// Row of lane e of accumulator v (v = 2 * (unpackhi) + (upper 256 bits)).
constexpr uint32_t laneRow(uint32_t v, uint32_t e) { return 32 * (v & 1) + 16 * (e / 8) + 8 * (v >> 1) + e % 8; }

template <int T>
void group(const uint8_t* g, uint32_t nBlocks, const uint8_t* tables, size_t tableStride, int32_t out[][64]) {
  const __m512i m0f = _mm512_set1_epi8(0x0f), zero = _mm512_setzero_si512();
  __m512i a32[T][4];
  for (int t = 0; t < T; ++t)
    for (int v = 0; v < 4; ++v) a32[t][v] = zero;
  for (uint32_t b0 = 0; b0 < nBlocks; b0 += kBlocksPerWiden) {
    const uint32_t b1 = nBlocks - b0 > kBlocksPerWiden ? b0 + kBlocksPerWiden : nBlocks;
    __m512i a16[T][2];
    for (int t = 0; t < T; ++t) a16[t][0] = a16[t][1] = zero;
    for (uint32_t b = b0; b < b1; ++b) {
      const uint8_t* blk = g + b * kGroupBlockBytes;
      const uint8_t* tb = tables + size_t(b) * kTriples * kTableBytes;
      for (int c = 0; c < 2; ++c) {
        __m512i sA = _mm512_loadu_si512(blk + (16 + c) * kGroupRows);
        __m512i sB = _mm512_loadu_si512(blk + (18 + c) * kGroupRows);
        for (int u = 7; u >= 0; --u) {
          const int p = 8 * c + u;
          const __m512i idx = _mm512_loadu_si512(blk + p * kGroupRows);
          const __m512i mA = _mm512_and_si512(idx, m0f);
          const __m512i mB = _mm512_and_si512(_mm512_srli_epi16(idx, 4), m0f);
          const __mmask64 nA = _mm512_movepi8_mask(sA), nB = _mm512_movepi8_mask(sB);
          sA = _mm512_add_epi8(sA, sA);
          sB = _mm512_add_epi8(sB, sB);
          for (int t = 0; t < T; ++t) {
            const uint8_t* tt = tb + t * tableStride;
            lookup(a16[t], mA, nA, tt + p * kTableBytes);
            lookup(a16[t], mB, nB, tt + (16 + p) * kTableBytes);
          }
        }
      }
    }
    for (int t = 0; t < T; ++t)
      for (int v = 0; v < 4; ++v) {
        const __m512i a = a16[t][v >> 1];
        const __m256i h = (v & 1) ? _mm512_extracti64x4_epi64(a, 1) : _mm512_castsi512_si256(a);
        a32[t][v] = _mm512_add_epi32(a32[t][v], _mm512_cvtepi16_epi32(h));
      }
  }
  for (int t = 0; t < T; ++t)
    for (int v = 0; v < 4; ++v) {
      alignas(64) int32_t lanes[16];
      _mm512_store_si512(lanes, a32[t][v]);
      for (uint32_t e = 0; e < 16; ++e) out[t][laneRow(uint32_t(v), e)] = lanes[e];
    }
}

template <int T>
void groups(const uint8_t* w, uint32_t nBlocks, const int32_t* nNeg, uint32_t nOut, uint32_t rowBegin,
            uint32_t rowEnd, const uint8_t* tables, size_t tableStride, int32_t* acc, size_t accStride) {
  const uint32_t end = rowEnd < nOut ? rowEnd : nOut;
  for (uint32_t r0 = rowBegin / kGroupRows * kGroupRows; r0 < end; r0 += kGroupRows) {
    int32_t out[T][64];
    group<T>(w + size_t(r0 / kGroupRows) * nBlocks * kGroupBlockBytes, nBlocks, tables, tableStride, out);
    for (uint32_t i = 0; i < kGroupRows && r0 + i < end; ++i) {
      if (r0 + i < rowBegin) continue;
      for (int t = 0; t < T; ++t) acc[t * accStride + r0 + i] = out[t][i] + nNeg[r0 + i];
    }
  }
}

}  // namespace

void tl3Tables(const int8_t* q, uint32_t k, uint8_t* tables) {
  const __m256i da = _mm256_setr_epi16(0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0);
  const __m256i db = _mm256_setr_epi16(0, 0, 1, 1, 1, -1, -1, -1, 0, 0, 0, 1, 1, 1, 0, 0);
  const __m256i dc = _mm256_setr_epi16(0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, 0, 0);
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const uint32_t nTriples = nBlocksOf(k) * kTriples;
  for (uint32_t j = 0; j < nTriples; ++j) {
    int16_t x[3];
    for (uint32_t e = 0; e < 3; ++e) x[e] = 3 * j + e < k ? q[3 * j + e] : 0;
    __m256i v = _mm256_add_epi16(_mm256_sign_epi16(_mm256_set1_epi16(x[0]), da),
                                 _mm256_sign_epi16(_mm256_set1_epi16(x[1]), db));
    v = _mm256_add_epi16(v, _mm256_sign_epi16(_mm256_set1_epi16(x[2]), dc));
    v = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, split), 0xd8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tables + size_t(j) * kTableBytes), v);
  }
}

void gemmTl3(const uint8_t* w, uint32_t k, uint32_t nOut, uint32_t rowBegin, uint32_t rowEnd,
             const uint8_t* tables, size_t tableStride, uint32_t nTok, int32_t* acc, size_t accStride) {
  const uint32_t nBlocks = nBlocksOf(k);
  const uint32_t nGroups = (nOut + kGroupRows - 1) / kGroupRows;
  const auto* nNeg = reinterpret_cast<const int32_t*>(w + size_t(nGroups) * nBlocks * kGroupBlockBytes);
  for (uint32_t t0 = 0; t0 < nTok; t0 += kTokTile) {
    const uint32_t nt = nTok - t0 >= kTokTile ? kTokTile : nTok - t0;
    const uint8_t* tt = tables + t0 * tableStride;
    int32_t* at = acc + t0 * accStride;
    switch (nt) {
      case 1: groups<1>(w, nBlocks, nNeg, nOut, rowBegin, rowEnd, tt, tableStride, at, accStride); break;
      case 2: groups<2>(w, nBlocks, nNeg, nOut, rowBegin, rowEnd, tt, tableStride, at, accStride); break;
      case 3: groups<3>(w, nBlocks, nNeg, nOut, rowBegin, rowEnd, tt, tableStride, at, accStride); break;
      default: groups<4>(w, nBlocks, nNeg, nOut, rowBegin, rowEnd, tt, tableStride, at, accStride); break;
    }
  }
}

}  // namespace tern::kernels::avx512

#endif  // __x86_64__
