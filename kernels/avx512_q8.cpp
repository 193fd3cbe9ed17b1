// AVX-512 VNNI variants of kernels/gemm_q8.hpp. Compiled with the avx512 flags and
// -ffp-contract=off; includes no project header with inline code.
#include "kernels/simd_q8.hpp"

#if defined(__x86_64__)

// GCC 12's AVX-512 headers trip -Wuninitialized on their own "undefined" vectors (see avx512.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

namespace tern::kernels::avx512 {

namespace {

constexpr uint32_t kTokTile = 4;
constexpr size_t kPrefetchTiles = 2;  // tiles of rows prefetched ahead, as in avx512.cpp

inline void prefetchLines(uintptr_t p, size_t bytes) {
  for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(reinterpret_cast<const char*>(p + off), _MM_HINT_T0);
}

// R rows x T tokens. vpdpbusd multiplies unsigned by signed bytes: the activations become
// u = q + 128 (q xor 0x80), so dp(u, w) = sum q*w + 128 * sum w, and sum w comes from a second
// vpdpbusd against ones. Lanes stay below 2^31 for k < 2^17.
template <int R, int T>
void tileQ8(const int8_t* w, uint32_t k, const int8_t* q, size_t qStride, int32_t* acc, size_t accStride) {
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i a[R][T], s[R];
  for (int r = 0; r < R; ++r) {
    s[r] = _mm512_setzero_si512();
    for (int t = 0; t < T; ++t) a[r][t] = _mm512_setzero_si512();
  }
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(w) + kPrefetchTiles * R * size_t(k);
  uint32_t i = 0;
  for (; i + 64 <= k; i += 64) {
    prefetchLines(ahead + size_t(i) * R, R * 64);
    __m512i u[T];
    for (int t = 0; t < T; ++t) u[t] = _mm512_xor_si512(_mm512_loadu_si512(q + t * qStride + i), flip);
    for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_loadu_si512(w + size_t(r) * k + i);
      s[r] = _mm512_dpbusd_epi32(s[r], ones, wv);
      for (int t = 0; t < T; ++t) a[r][t] = _mm512_dpbusd_epi32(a[r][t], u[t], wv);
    }
  }
  if (i < k) {  // zero weights past the tail contribute nothing to either sum
    const __mmask64 m = _cvtu64_mask64((k - i) >= 64 ? ~0ull : ((1ull << (k - i)) - 1ull));
    __m512i u[T];
    for (int t = 0; t < T; ++t) u[t] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, q + t * qStride + i), flip);
    for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_maskz_loadu_epi8(m, w + size_t(r) * k + i);
      s[r] = _mm512_dpbusd_epi32(s[r], ones, wv);
      for (int t = 0; t < T; ++t) a[r][t] = _mm512_dpbusd_epi32(a[r][t], u[t], wv);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m512i off = _mm512_slli_epi32(s[r], 7);
    for (int t = 0; t < T; ++t) acc[t * accStride + r] = _mm512_reduce_add_epi32(_mm512_sub_epi32(a[r][t], off));
  }
}

template <int T>
void rowsQ8(const int8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q, size_t qStride,
            int32_t* acc, size_t accStride) {
  constexpr int kRows = T == 1 ? 8 : 4;
  uint32_t r = rowBegin;
  for (; r + kRows <= rowEnd; r += kRows) tileQ8<kRows, T>(w + size_t(r) * k, k, q, qStride, acc + r, accStride);
  for (; r < rowEnd; ++r) tileQ8<1, T>(w + size_t(r) * k, k, q, qStride, acc + r, accStride);
}

float treeSum(__m512 v) {
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

}  // namespace

void gemmQ8(const int8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q, size_t qStride,
            uint32_t nTok, int32_t* acc, size_t accStride) {
  for (uint32_t t0 = 0; t0 < nTok; t0 += kTokTile) {
    const int8_t* qt = q + t0 * qStride;
    int32_t* at = acc + t0 * accStride;
    switch (nTok - t0 >= kTokTile ? kTokTile : nTok - t0) {
      case 1: rowsQ8<1>(w, k, rowBegin, rowEnd, qt, qStride, at, accStride); break;
      case 2: rowsQ8<2>(w, k, rowBegin, rowEnd, qt, qStride, at, accStride); break;
      case 3: rowsQ8<3>(w, k, rowBegin, rowEnd, qt, qStride, at, accStride); break;
      default: rowsQ8<4>(w, k, rowBegin, rowEnd, qt, qStride, at, accStride); break;
    }
  }
}

float dotF16(const float* a, const uint16_t* b, uint32_t n) {
  __m512 acc = _mm512_setzero_ps();
  uint32_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 bv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i)));
    acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_loadu_ps(a + i), bv));
  }
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1u);
    const __m512 bv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, b + i));
    acc = _mm512_mask_add_ps(acc, m, acc, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a + i), bv));
  }
  return treeSum(acc);
}

void axpyF16(float* y, float a, const uint16_t* x, uint32_t n) {
  const __m512 av = _mm512_set1_ps(a);
  uint32_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 xv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
    _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i), _mm512_mul_ps(av, xv)));
  }
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1u);
    const __m512 xv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i));
    _mm512_mask_storeu_ps(y + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + i), _mm512_mul_ps(av, xv)));
  }
}

}  // namespace tern::kernels::avx512

#endif  // __x86_64__
