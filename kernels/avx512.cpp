// AVX-512 (F/BW/VL/DQ + VNNI) kernels. Compiled with -mavx512* -ffp-contract=off; this file
// includes no project header with inline code, so no ISA-specific copy of a shared inline
// function can leak to other translation units. Layouts: see kernels/t2.hpp.
#include "kernels/simd.hpp"

#if defined(__x86_64__)

// GCC 12's AVX-512 headers build "undefined" vectors as `__m512i y = y;`, which its own
// -Wuninitialized then reports at every inlined use (broadcast, extract, srav, cvtph).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

namespace tern::kernels::avx512 {

namespace {

constexpr uint32_t kBlockElems = 128;  // T2 block: 128 weights in 32 bytes
constexpr uint32_t kBlockBytes = 32;
constexpr uint32_t kTokTile = 4;       // tokens per weight unpack in gemmT2 / matmul tiles
// Software prefetch distance in tiles: while a tile of R rows runs, the rows of the tile this
// many tiles ahead (contiguous in memory) are prefetched in step with the loop. Rows are short
// (640 B at k = 2560), too short for the hardware stream prefetchers to ramp up on.
constexpr size_t kPrefetchTiles = 2;

// Prefetches [p, p + bytes) one 64-byte line at a time. The addresses may lie past the end of
// the weights (prefetches never fault), hence integers rather than pointers.
inline void prefetchLines(uintptr_t p, size_t bytes) {
  for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(reinterpret_cast<const char*>(p + off), _MM_HINT_T0);
}

uint32_t t2Blocks(uint32_t k) { return (k + kBlockElems - 1) / kBlockElems; }

// sum_i q[i] over n bytes (n a multiple of 64).
int32_t sumBytes(const int8_t* q, uint32_t n) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i acc = _mm512_setzero_si512();
  for (uint32_t i = 0; i < n; i += 64) acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(q + i));
  return _mm512_reduce_add_epi32(acc);
}

// R rows x T tokens of the ternary GEMM. Per 128-weight block and row, the 32 code bytes are
// broadcast to both ymm halves; AND with 0x03 (low half) / 0x0c (high half) gives codes c of
// elements 0..31 and 4c of elements 32..63, so one vpdpbusd against q[0..64) serves both; the
// same after a shift by 4 serves q[64..128). Accumulator lanes 8..15 thus hold 4x their sums
// (exact, at most 8192 per block: no int32 overflow for k < 2^25); sum w*q = sum c*q - sum q.
template <int R, int T>
void tileT2(const uint8_t* w, size_t rowBytes, uint32_t nBlocks, const int8_t* q, size_t qStride,
            const int32_t* qSum, int32_t* acc, size_t accStride) {
  const __m512i mask = _mm512_set_epi64(0x0c0c0c0c0c0c0c0cll, 0x0c0c0c0c0c0c0c0cll, 0x0c0c0c0c0c0c0c0cll,
                                        0x0c0c0c0c0c0c0c0cll, 0x0303030303030303ll, 0x0303030303030303ll,
                                        0x0303030303030303ll, 0x0303030303030303ll);
  __m512i a[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) a[r][t] = _mm512_setzero_si512();
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(w) + kPrefetchTiles * R * rowBytes;
  for (uint32_t b = 0; b < nBlocks; ++b) {
    prefetchLines(ahead + size_t(b) * R * kBlockBytes, R * kBlockBytes);
    __m512i q01[T], q23[T];
    for (int t = 0; t < T; ++t) {
      const int8_t* qb = q + t * qStride + size_t(b) * kBlockElems;
      q01[t] = _mm512_loadu_si512(qb);
      q23[t] = _mm512_loadu_si512(qb + 64);
    }
    for (int r = 0; r < R; ++r) {
      const __m256i packed = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(w + r * rowBytes + size_t(b) * kBlockBytes));
      const __m512i wb = _mm512_broadcast_i64x4(packed);
      const __m512i c01 = _mm512_and_si512(wb, mask);
      const __m512i c23 = _mm512_and_si512(_mm512_srli_epi16(wb, 4), mask);
      for (int t = 0; t < T; ++t) {
        a[r][t] = _mm512_dpbusd_epi32(a[r][t], c01, q01[t]);
        a[r][t] = _mm512_dpbusd_epi32(a[r][t], c23, q23[t]);
      }
    }
  }
  const __m512i shifts = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t)
      acc[t * accStride + r] = _mm512_reduce_add_epi32(_mm512_srav_epi32(a[r][t], shifts)) - qSum[t];
}

template <int T>
void rowsT2(const uint8_t* w, size_t rowBytes, uint32_t nBlocks, uint32_t rowBegin, uint32_t rowEnd,
            const int8_t* q, size_t qStride, const int32_t* qSum, int32_t* acc, size_t accStride) {
  constexpr int kRows = T == 1 ? 8 : 4;
  uint32_t r = rowBegin;
  for (; r + kRows <= rowEnd; r += kRows)
    tileT2<kRows, T>(w + r * rowBytes, rowBytes, nBlocks, q, qStride, qSum, acc + r, accStride);
  for (; r < rowEnd; ++r) tileT2<1, T>(w + r * rowBytes, rowBytes, nBlocks, q, qStride, qSum, acc + r, accStride);
}

// Float dot products in the ref order (kernels/dot.hpp): element i goes to lane i % 16 of one
// zmm accumulator (mul then add, never fused), tails add only to their lanes, then a tree sum
// t[j] += t[j + w] for w = 8, 4, 2, 1.
float treeSum(__m512 v) {
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

struct LoadF32 {
  using Elem = float;
  static __m512 full(const float* p) { return _mm512_loadu_ps(p); }
  static __m512 part(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};
struct LoadF16 {
  using Elem = uint16_t;
  static __m512 full(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512 part(const uint16_t* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }
};
struct LoadBf16 {
  using Elem = uint16_t;
  static __m512 widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static __m512 full(const uint16_t* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 part(const uint16_t* p, __mmask16 m) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
};

template <class L, int R, int T>
void tileFloat(const typename L::Elem* w, uint32_t k, const float* x, size_t xStride, float* y, size_t yStride) {
  __m512 a[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) a[r][t] = _mm512_setzero_ps();
  uint32_t i = 0;
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(w) + kPrefetchTiles * R * size_t(k) * sizeof(typename L::Elem);
  for (; i + 16 <= k; i += 16) {
    prefetchLines(ahead + size_t(i) * R * sizeof(typename L::Elem), R * 16 * sizeof(typename L::Elem));
    __m512 xv[T];
    for (int t = 0; t < T; ++t) xv[t] = _mm512_loadu_ps(x + t * xStride + i);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = L::full(w + size_t(r) * k + i);
      for (int t = 0; t < T; ++t) a[r][t] = _mm512_add_ps(a[r][t], _mm512_mul_ps(wv, xv[t]));
    }
  }
  if (i < k) {
    const __mmask16 m = __mmask16((1u << (k - i)) - 1u);
    __m512 xv[T];
    for (int t = 0; t < T; ++t) xv[t] = _mm512_maskz_loadu_ps(m, x + t * xStride + i);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = L::part(w + size_t(r) * k + i, m);
      for (int t = 0; t < T; ++t) a[r][t] = _mm512_mask_add_ps(a[r][t], m, a[r][t], _mm512_mul_ps(wv, xv[t]));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * yStride + r] = treeSum(a[r][t]);
}

template <class L, int T>
void rowsFloat(const typename L::Elem* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
               size_t xStride, float* y, size_t yStride) {
  constexpr int kRows = T == 1 ? 8 : 4;
  uint32_t r = rowBegin;
  for (; r + kRows <= rowEnd; r += kRows) tileFloat<L, kRows, T>(w + size_t(r) * k, k, x, xStride, y + r, yStride);
  for (; r < rowEnd; ++r) tileFloat<L, 1, T>(w + size_t(r) * k, k, x, xStride, y + r, yStride);
}

template <class L>
void matmulFloat(const typename L::Elem* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
                 size_t xStride, uint32_t nTok, float* y, size_t yStride) {
  for (uint32_t t0 = 0; t0 < nTok; t0 += kTokTile) {
    const float* xt = x + t0 * xStride;
    float* yt = y + t0 * yStride;
    switch (nTok - t0 >= kTokTile ? kTokTile : nTok - t0) {
      case 1: rowsFloat<L, 1>(w, k, rowBegin, rowEnd, xt, xStride, yt, yStride); break;
      case 2: rowsFloat<L, 2>(w, k, rowBegin, rowEnd, xt, xStride, yt, yStride); break;
      case 3: rowsFloat<L, 3>(w, k, rowBegin, rowEnd, xt, xStride, yt, yStride); break;
      default: rowsFloat<L, 4>(w, k, rowBegin, rowEnd, xt, xStride, yt, yStride); break;
    }
  }
}

}  // namespace

float quantizeRow(const float* x, uint32_t k, int8_t* q, int32_t* sumQ) {
  const __m512i absMask = _mm512_set1_epi32(0x7fffffff);
  __m512 mx = _mm512_setzero_ps();
  uint32_t i = 0;
  // max(|x|, acc) keeps acc when x is NaN, like the ref's std::max(acc, |x|).
  for (; i + 16 <= k; i += 16)
    mx = _mm512_max_ps(_mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(x + i)), absMask)), mx);
  const __mmask16 tail = __mmask16((1u << (k - i)) - 1u);
  if (i < k)
    mx = _mm512_max_ps(
        _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(_mm512_maskz_loadu_ps(tail, x + i)), absMask)), mx);
  const float maxAbs = _mm512_reduce_max_ps(mx);
  const double m = double(maxAbs) > 1e-5 ? double(maxAbs) : 1e-5;
  const float aScale = float(127.0 / m);

  const __m512 s = _mm512_set1_ps(aScale), lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
  __m512i sum = _mm512_setzero_si512();
  // max(p, -128) maps a NaN product to -128, as the ref's clamp does; cvtps rounds to nearest even.
  for (i = 0; i + 16 <= k; i += 16) {
    const __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), s), lo), hi);
    const __m512i qi = _mm512_cvtps_epi32(v);
    sum = _mm512_add_epi32(sum, qi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtsepi32_epi8(qi));
  }
  if (i < k) {
    const __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + i), s), lo), hi);
    const __m512i qi = _mm512_maskz_cvtps_epi32(tail, v);
    sum = _mm512_add_epi32(sum, qi);
    _mm512_mask_cvtsepi32_storeu_epi8(q + i, tail, qi);
  }
  *sumQ = _mm512_reduce_add_epi32(sum);
  return aScale;
}

void gemmT2(const uint8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q,
            size_t qStride, uint32_t nTok, int32_t* acc, size_t accStride) {
  const uint32_t nBlocks = t2Blocks(k);
  const size_t rowBytes = size_t(nBlocks) * kBlockBytes;
  for (uint32_t t0 = 0; t0 < nTok; t0 += kTokTile) {
    const uint32_t nt = nTok - t0 >= kTokTile ? kTokTile : nTok - t0;
    const int8_t* qt = q + t0 * qStride;
    int32_t qSum[kTokTile];
    for (uint32_t t = 0; t < nt; ++t) qSum[t] = sumBytes(qt + t * qStride, nBlocks * kBlockElems);
    int32_t* at = acc + t0 * accStride;
    switch (nt) {
      case 1: rowsT2<1>(w, rowBytes, nBlocks, rowBegin, rowEnd, qt, qStride, qSum, at, accStride); break;
      case 2: rowsT2<2>(w, rowBytes, nBlocks, rowBegin, rowEnd, qt, qStride, qSum, at, accStride); break;
      case 3: rowsT2<3>(w, rowBytes, nBlocks, rowBegin, rowEnd, qt, qStride, qSum, at, accStride); break;
      default: rowsT2<4>(w, rowBytes, nBlocks, rowBegin, rowEnd, qt, qStride, qSum, at, accStride); break;
    }
  }
}

void matmulF32(const float* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
               size_t xStride, uint32_t nTok, float* y, size_t yStride) {
  matmulFloat<LoadF32>(w, k, rowBegin, rowEnd, x, xStride, nTok, y, yStride);
}

void matmulF16(const uint16_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
               size_t xStride, uint32_t nTok, float* y, size_t yStride) {
  matmulFloat<LoadF16>(w, k, rowBegin, rowEnd, x, xStride, nTok, y, yStride);
}

void matmulBf16(const uint16_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
                size_t xStride, uint32_t nTok, float* y, size_t yStride) {
  matmulFloat<LoadBf16>(w, k, rowBegin, rowEnd, x, xStride, nTok, y, yStride);
}

float dotF32(const float* a, const float* b, uint32_t n) {
  float y;
  tileFloat<LoadF32, 1, 1>(a, n, b, 0, &y, 0);
  return y;
}

}  // namespace tern::kernels::avx512

#endif  // __x86_64__
