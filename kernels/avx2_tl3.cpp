// AVX2 TERN_TL3 lookup-table kernels. Compiled with the AVX2 library's flags; includes no project
// header with inline code. Layouts: see kernels/gemm_tl3.hpp.
//
// Per 32 rows (one ymm of a 64-byte interleaved line) and triple: the 4-bit magnitudes index the
// triple's 16-entry tables with vpshufb (low bytes, high bytes; the table broadcast to both
// 128-bit lanes), both are XORed with the sign mask (0xff for a negative triple: ~T = -T - 1),
// interleaved into int16 (unpacklo/hi) and summed in int16. Bound: |T| <= 384 and |~T| <= 384, so
// an int16 lane holds 85 triples; it is widened to int32 every 2 blocks (64 triples, <= 24576).
// The -1 of every negative triple is given back by adding the row's nNeg at the end.
#include "kernels/simd_tl3.hpp"

#if defined(__x86_64__)

#include <immintrin.h>

#include <cstdint>

namespace tern::kernels::avx2 {

namespace {

constexpr uint32_t kBlockElems = 96;
constexpr uint32_t kTriples = 32;       // per block
constexpr uint32_t kBlockBytes = 20;    // per block and row
constexpr uint32_t kGroupRows = 64;
constexpr size_t kGroupBlockBytes = size_t(kBlockBytes) * kGroupRows;
constexpr size_t kTableBytes = 32;      // per triple
constexpr uint32_t kBlocksPerWiden = 2;
constexpr uint32_t kTokTile = 4;

uint32_t nBlocksOf(uint32_t k) { return (k + kBlockElems - 1) / kBlockElems; }

inline __m256i table(const uint8_t* p) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline void lookup(__m256i a[2], __m256i m, __m256i neg, const uint8_t* tab) {
  const __m256i lo = _mm256_xor_si256(_mm256_shuffle_epi8(table(tab), m), neg);
  const __m256i hi = _mm256_xor_si256(_mm256_shuffle_epi8(table(tab + 16), m), neg);
  a[0] = _mm256_add_epi16(a[0], _mm256_unpacklo_epi8(lo, hi));
  a[1] = _mm256_add_epi16(a[1], _mm256_unpackhi_epi8(lo, hi));
}

// 32 rows starting at g (a group's block-0 line, already offset to the half) x T tokens:
// out[t][i] = sum_j (T_j ^ s_j) for row i (nNeg not yet added).
template <int T>
void half(const uint8_t* g, uint32_t nBlocks, const uint8_t* tables, size_t tableStride,
          int32_t out[][32]) {
  const __m256i m0f = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
  __m256i a32[T][4];
  for (int t = 0; t < T; ++t)
    for (int v = 0; v < 4; ++v) a32[t][v] = zero;
  for (uint32_t b0 = 0; b0 < nBlocks; b0 += kBlocksPerWiden) {
    const uint32_t b1 = nBlocks - b0 > kBlocksPerWiden ? b0 + kBlocksPerWiden : nBlocks;
    __m256i a16[T][2];
    for (int t = 0; t < T; ++t) a16[t][0] = a16[t][1] = zero;
    for (uint32_t b = b0; b < b1; ++b) {
      const uint8_t* blk = g + b * kGroupBlockBytes;
      const uint8_t* tb = tables + size_t(b) * kTriples * kTableBytes;
      for (int c = 0; c < 2; ++c) {
        // Sign bytes of triples 8c..8c+7 (sA) and 16+8c..16+8c+7 (sB); bit u is moved to bit 7.
        __m256i sA = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + (16 + c) * kGroupRows));
        __m256i sB = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + (18 + c) * kGroupRows));
        for (int u = 7; u >= 0; --u) {
          const int p = 8 * c + u;
          const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + p * kGroupRows));
          const __m256i mA = _mm256_and_si256(idx, m0f);
          const __m256i mB = _mm256_and_si256(_mm256_srli_epi16(idx, 4), m0f);
          const __m256i nA = _mm256_cmpgt_epi8(zero, sA), nB = _mm256_cmpgt_epi8(zero, sB);
          sA = _mm256_add_epi8(sA, sA);
          sB = _mm256_add_epi8(sB, sB);
          for (int t = 0; t < T; ++t) {
            const uint8_t* tt = tb + t * tableStride;
            lookup(a16[t], mA, nA, tt + p * kTableBytes);
            lookup(a16[t], mB, nB, tt + (16 + p) * kTableBytes);
          }
        }
      }
    }
    // a16[t][0]: rows 0..7 | 16..23; a16[t][1]: rows 8..15 | 24..31.
    for (int t = 0; t < T; ++t) {
      a32[t][0] = _mm256_add_epi32(a32[t][0], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a16[t][0])));
      a32[t][1] = _mm256_add_epi32(a32[t][1], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a16[t][1])));
      a32[t][2] = _mm256_add_epi32(a32[t][2], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a16[t][0], 1)));
      a32[t][3] = _mm256_add_epi32(a32[t][3], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a16[t][1], 1)));
    }
  }
  for (int t = 0; t < T; ++t)
    for (int v = 0; v < 4; ++v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[t] + 8 * v), a32[t][v]);
}

template <int T>
void groups(const uint8_t* w, uint32_t nBlocks, const int32_t* nNeg, uint32_t nOut, uint32_t rowBegin,
            uint32_t rowEnd, const uint8_t* tables, size_t tableStride, int32_t* acc, size_t accStride) {
  const uint32_t end = rowEnd < nOut ? rowEnd : nOut;
  for (uint32_t r0 = rowBegin / 32 * 32; r0 < end; r0 += 32) {
    const uint32_t g = r0 / kGroupRows, h = (r0 % kGroupRows) / 32;
    int32_t out[T][32];
    half<T>(w + size_t(g) * nBlocks * kGroupBlockBytes + 32 * h, nBlocks, tables, tableStride, out);
    for (uint32_t i = 0; i < 32 && r0 + i < end; ++i) {
      if (r0 + i < rowBegin) continue;
      for (int t = 0; t < T; ++t) acc[t * accStride + r0 + i] = out[t][i] + nNeg[r0 + i];
    }
  }
}

}  // namespace

void tl3Tables(const int8_t* q, uint32_t k, uint8_t* tables) {
  // Lanes m = 0..15: T(m) = a_m q0 + b_m q1 + c_m q2 with the balanced-ternary digits of m.
  const __m256i da = _mm256_setr_epi16(0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0);
  const __m256i db = _mm256_setr_epi16(0, 0, 1, 1, 1, -1, -1, -1, 0, 0, 0, 1, 1, 1, 0, 0);
  const __m256i dc = _mm256_setr_epi16(0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1, 0, 0);
  // Per 128-bit lane: low bytes of the 8 entries, then their high bytes.
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const uint32_t nTriples = nBlocksOf(k) * kTriples;
  for (uint32_t j = 0; j < nTriples; ++j) {
    int16_t x[3];
    for (uint32_t e = 0; e < 3; ++e) x[e] = 3 * j + e < k ? q[3 * j + e] : 0;
    __m256i v = _mm256_add_epi16(_mm256_sign_epi16(_mm256_set1_epi16(x[0]), da),
                                 _mm256_sign_epi16(_mm256_set1_epi16(x[1]), db));
    v = _mm256_add_epi16(v, _mm256_sign_epi16(_mm256_set1_epi16(x[2]), dc));
    v = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, split), 0xd8);  // qwords 0, 2, 1, 3
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

}  // namespace tern::kernels::avx2

#endif  // __x86_64__
