// AVX2 variants of kernels/gemm_q8.hpp. Compiled with the avx2 flags and -ffp-contract=off;
// includes no project header with inline code.
#include "kernels/simd_q8.hpp"

#if defined(__x86_64__)

#include <immintrin.h>

namespace tern::kernels::avx2 {

namespace {

// R rows x T tokens: bytes widened to int16, then vpmaddwd (exact int32 pair sums).
template <int R, int T>
void tileQ8(const int8_t* w, uint32_t k, const int8_t* q, size_t qStride, int32_t* acc, size_t accStride) {
  __m256i a[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) a[r][t] = _mm256_setzero_si256();
  uint32_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m256i qv[T];
    for (int t = 0; t < T; ++t)
      qv[t] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + t * qStride + i)));
    for (int r = 0; r < R; ++r) {
      const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + size_t(r) * k + i)));
      for (int t = 0; t < T; ++t) a[r][t] = _mm256_add_epi32(a[r][t], _mm256_madd_epi16(wv, qv[t]));
    }
  }
  int32_t tail[R][T] = {};
  for (; i < k; ++i)
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) tail[r][t] += int32_t(w[size_t(r) * k + i]) * q[t * qStride + i];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(a[r][t]), _mm256_extracti128_si256(a[r][t], 1));
      const __m128i s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
      const __m128i s1 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1));
      acc[t * accStride + r] = _mm_cvtsi128_si32(s1) + tail[r][t];
    }
}

template <int T>
void rowsQ8(const int8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q, size_t qStride,
            int32_t* acc, size_t accStride) {
  constexpr int kRows = T == 1 ? 4 : 2;
  uint32_t r = rowBegin;
  for (; r + kRows <= rowEnd; r += kRows) tileQ8<kRows, T>(w + size_t(r) * k, k, q, qStride, acc + r, accStride);
  for (; r < rowEnd; ++r) tileQ8<1, T>(w + size_t(r) * k, k, q, qStride, acc + r, accStride);
}

float treeSum(__m256 lo, __m256 hi) {
  const __m256 s8 = _mm256_add_ps(lo, hi);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

}  // namespace

void gemmQ8(const int8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q, size_t qStride,
            uint32_t nTok, int32_t* acc, size_t accStride) {
  uint32_t t = 0;
  for (; t + 2 <= nTok; t += 2) rowsQ8<2>(w, k, rowBegin, rowEnd, q + t * qStride, qStride, acc + t * accStride, accStride);
  if (t < nTok) rowsQ8<1>(w, k, rowBegin, rowEnd, q + t * qStride, qStride, acc + t * accStride, accStride);
}

float dotF16(const float* a, const uint16_t* b, uint32_t n) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  uint32_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 bl = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    const __m256 bh = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i + 8)));
    lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(a + i), bl));
    hi = _mm256_add_ps(hi, _mm256_mul_ps(_mm256_loadu_ps(a + i + 8), bh));
  }
  if (i < n) {  // the tail adds only to its own lanes
    alignas(32) float l[16];
    _mm256_store_ps(l, lo);
    _mm256_store_ps(l + 8, hi);
    alignas(16) uint16_t bb[8];
    for (uint32_t j = 0; i + j < n; ++j) {
      for (uint32_t z = 0; z < 8; ++z) bb[z] = b[i + j];
      const float bf = _mm_cvtss_f32(_mm_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(bb))));
      l[j] = l[j] + a[i + j] * bf;
    }
    lo = _mm256_load_ps(l);
    hi = _mm256_load_ps(l + 8);
  }
  return treeSum(lo, hi);
}

void axpyF16(float* y, float a, const uint16_t* x, uint32_t n) {
  const __m256 av = _mm256_set1_ps(a);
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(av, xv)));
  }
  for (; i < n; ++i) {
    alignas(16) uint16_t bb[8] = {x[i], x[i], x[i], x[i], x[i], x[i], x[i], x[i]};
    const float xf = _mm_cvtss_f32(_mm_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(bb))));
    y[i] = y[i] + a * xf;
  }
}

}  // namespace tern::kernels::avx2

#endif  // __x86_64__
