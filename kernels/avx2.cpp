// AVX2 + FMA + F16C kernels. Compiled with -mavx2 -mfma -mf16c -ffp-contract=off; this file
// includes no project header with inline code, so no ISA-specific copy of a shared inline
// function can leak to other translation units. Layouts: see kernels/t2.hpp.
#include "kernels/simd.hpp"

#if defined(__x86_64__)

#include <immintrin.h>

#include <cstdint>

namespace tern::kernels::avx2 {

namespace {

constexpr uint32_t kBlockElems = 128;  // T2 block: 128 weights in 32 bytes
constexpr uint32_t kBlockBytes = 32;
// vpmaddubsw of a code c <= 2 and q in [-128, 127] gives int16 lanes in [-512, 508]: 64 of them
// fit an int16 lane (-32768..32512). Each block adds 4 per lane, so widen every 16 blocks.
constexpr uint32_t kBlocksPerWiden = 16;

// Software prefetch distance in tiles (see avx512.cpp): the rows of the tile this many tiles
// ahead are prefetched in step with the loop.
constexpr size_t kPrefetchTiles = 2;

inline void prefetchLines(uintptr_t p, size_t bytes) {
  for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(reinterpret_cast<const char*>(p + off), _MM_HINT_T0);
}

uint32_t t2Blocks(uint32_t k) { return (k + kBlockElems - 1) / kBlockElems; }

int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// sum_i q[i] over n bytes (n a multiple of 32).
int32_t sumBytes(const int8_t* q, uint32_t n) {
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  __m256i acc = _mm256_setzero_si256();
  for (uint32_t i = 0; i < n; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, v), ones16));
  }
  return hsum(acc);
}

// R rows x T tokens: byte p of a block holds elements p, 32+p, 64+p, 96+p, so plane j =
// (bytes >> 2j) & 3 lines up with q[32j .. 32j+32). sum w*q = sum c*q - sum q.
template <int R, int T>
void tileT2(const uint8_t* w, size_t rowBytes, uint32_t nBlocks, const int8_t* q, size_t qStride,
            const int32_t* qSum, int32_t* acc, size_t accStride) {
  const __m256i m3 = _mm256_set1_epi8(3), ones16 = _mm256_set1_epi16(1);
  __m256i a32[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) a32[r][t] = _mm256_setzero_si256();
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(w) + kPrefetchTiles * R * rowBytes;
  for (uint32_t b0 = 0; b0 < nBlocks; b0 += kBlocksPerWiden) {
    const uint32_t b1 = nBlocks - b0 > kBlocksPerWiden ? b0 + kBlocksPerWiden : nBlocks;
    __m256i a16[R][T];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) a16[r][t] = _mm256_setzero_si256();
    for (uint32_t b = b0; b < b1; ++b) {
      prefetchLines(ahead + size_t(b) * R * kBlockBytes, R * kBlockBytes);
      __m256i wv[R];
      for (int r = 0; r < R; ++r)
        wv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * rowBytes + size_t(b) * kBlockBytes));
      for (int j = 0; j < 4; ++j) {
        __m256i qv[T];
        for (int t = 0; t < T; ++t)
          qv[t] = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(q + t * qStride + size_t(b) * kBlockElems + 32 * j));
        for (int r = 0; r < R; ++r) {
          const __m256i c = _mm256_and_si256(_mm256_srli_epi16(wv[r], 2 * j), m3);
          for (int t = 0; t < T; ++t) a16[r][t] = _mm256_add_epi16(a16[r][t], _mm256_maddubs_epi16(c, qv[t]));
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) a32[r][t] = _mm256_add_epi32(a32[r][t], _mm256_madd_epi16(a16[r][t], ones16));
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[t * accStride + r] = hsum(a32[r][t]) - qSum[t];
}

template <int R, int T>
void rowsT2(const uint8_t* w, size_t rowBytes, uint32_t nBlocks, uint32_t rowBegin, uint32_t rowEnd,
            const int8_t* q, size_t qStride, const int32_t* qSum, int32_t* acc, size_t accStride) {
  uint32_t r = rowBegin;
  for (; r + R <= rowEnd; r += R)
    tileT2<R, T>(w + r * rowBytes, rowBytes, nBlocks, q, qStride, qSum, acc + r, accStride);
  for (; r < rowEnd; ++r) tileT2<1, T>(w + r * rowBytes, rowBytes, nBlocks, q, qStride, qSum, acc + r, accStride);
}

// Float dot products in the ref order (kernels/dot.hpp): 16 lanes = two ymm accumulators (lanes
// 0..7 and 8..15), mul then add (never fused), tails add only to their own lanes, then the tree
// sum t[j] += t[j + w] for w = 8, 4, 2, 1.
struct Acc16 {
  __m256 lo, hi;
};

float treeSum(Acc16 a) {
  const __m256 s8 = _mm256_add_ps(a.lo, a.hi);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

struct LoadF32 {
  using Elem = float;
  static __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
};
struct LoadF16 {
  using Elem = uint16_t;
  static __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
};
struct LoadBf16 {
  using Elem = uint16_t;
  static __m256 load8(const uint16_t* p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
};

template <class L, int R, int T>
void tileFloat(const typename L::Elem* w, uint32_t k, const float* x, size_t xStride, float* y, size_t yStride) {
  Acc16 a[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) a[r][t] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  uint32_t i = 0;
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(w) + kPrefetchTiles * R * size_t(k) * sizeof(typename L::Elem);
  for (; i + 16 <= k; i += 16) {
    prefetchLines(ahead + size_t(i) * R * sizeof(typename L::Elem), R * 16 * sizeof(typename L::Elem));
    __m256 xl[T], xh[T];
    for (int t = 0; t < T; ++t) {
      xl[t] = _mm256_loadu_ps(x + t * xStride + i);
      xh[t] = _mm256_loadu_ps(x + t * xStride + i + 8);
    }
    for (int r = 0; r < R; ++r) {
      const __m256 wl = L::load8(w + size_t(r) * k + i), wh = L::load8(w + size_t(r) * k + i + 8);
      for (int t = 0; t < T; ++t) {
        a[r][t].lo = _mm256_add_ps(a[r][t].lo, _mm256_mul_ps(wl, xl[t]));
        a[r][t].hi = _mm256_add_ps(a[r][t].hi, _mm256_mul_ps(wh, xh[t]));
      }
    }
  }
  if (i < k) {
    // Copy the tail into zero-padded buffers; lanes past the tail keep their old value.
    const uint32_t n = k - i;
    alignas(32) int32_t lane[16];
    for (uint32_t j = 0; j < 16; ++j) lane[j] = j < n ? -1 : 0;
    const __m256 ml = _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(lane)));
    const __m256 mh = _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(lane + 8)));
    alignas(32) float xb[T][16];
    for (int t = 0; t < T; ++t)
      for (uint32_t j = 0; j < 16; ++j) xb[t][j] = j < n ? x[t * xStride + i + j] : 0.0f;
    for (int r = 0; r < R; ++r) {
      typename L::Elem wb[16];
      for (uint32_t j = 0; j < 16; ++j) wb[j] = j < n ? w[size_t(r) * k + i + j] : typename L::Elem(0);
      const __m256 wl = L::load8(wb), wh = L::load8(wb + 8);
      for (int t = 0; t < T; ++t) {
        const __m256 pl = _mm256_add_ps(a[r][t].lo, _mm256_mul_ps(wl, _mm256_load_ps(xb[t])));
        const __m256 ph = _mm256_add_ps(a[r][t].hi, _mm256_mul_ps(wh, _mm256_load_ps(xb[t] + 8)));
        a[r][t].lo = _mm256_blendv_ps(a[r][t].lo, pl, ml);
        a[r][t].hi = _mm256_blendv_ps(a[r][t].hi, ph, mh);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * yStride + r] = treeSum(a[r][t]);
}

template <class L, int T>
void rowsFloat(const typename L::Elem* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
               size_t xStride, float* y, size_t yStride) {
  constexpr int kRows = T == 1 ? 4 : 2;
  uint32_t r = rowBegin;
  for (; r + kRows <= rowEnd; r += kRows) tileFloat<L, kRows, T>(w + size_t(r) * k, k, x, xStride, y + r, yStride);
  for (; r < rowEnd; ++r) tileFloat<L, 1, T>(w + size_t(r) * k, k, x, xStride, y + r, yStride);
}

template <class L>
void matmulFloat(const typename L::Elem* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
                 size_t xStride, uint32_t nTok, float* y, size_t yStride) {
  uint32_t t = 0;
  for (; t + 2 <= nTok; t += 2) rowsFloat<L, 2>(w, k, rowBegin, rowEnd, x + t * xStride, xStride, y + t * yStride, yStride);
  if (t < nTok) rowsFloat<L, 1>(w, k, rowBegin, rowEnd, x + t * xStride, xStride, y + t * yStride, yStride);
}

// The ref's scalar quantisation step (kernels/quantize.cpp), for the tail.
int32_t quantizeOne(float x, float aScale) {
  const float p = x * aScale;
  const float lo = -128.0f < p ? p : -128.0f;
  const float v = lo < 127.0f ? lo : 127.0f;
  constexpr float kMagic = 12582912.0f;
  return int32_t((v + kMagic) - kMagic);
}

}  // namespace

float quantizeRow(const float* x, uint32_t k, int8_t* q, int32_t* sumQ) {
  const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 mx = _mm256_setzero_ps();
  uint32_t i = 0;
  // max(|x|, acc) keeps acc when x is NaN, like the ref's std::max(acc, |x|).
  for (; i + 8 <= k; i += 8) mx = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), absMask), mx);
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  float maxAbs = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
  for (; i < k; ++i) {
    const float a = __builtin_fabsf(x[i]);
    maxAbs = maxAbs < a ? a : maxAbs;
  }
  const double m = double(maxAbs) > 1e-5 ? double(maxAbs) : 1e-5;
  const float aScale = float(127.0 / m);

  const __m256 s = _mm256_set1_ps(aScale), lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i sum = _mm256_setzero_si256();
  // max(p, -128) maps a NaN product to -128, as the ref's clamp does; cvtps rounds to nearest even.
  for (i = 0; i + 32 <= k; i += 32) {
    __m256i v[4];
    for (int j = 0; j < 4; ++j) {
      const __m256 p = _mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), s);
      v[j] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(p, lo), hi));
      sum = _mm256_add_epi32(sum, v[j]);
    }
    // packs work per 128-bit lane: the bytes come out as 4-element groups a0 b0 c0 d0 a1 b1 c1 d1.
    const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), _mm256_permutevar8x32_epi32(packed, order));
  }
  int32_t total = hsum(sum);
  for (; i < k; ++i) {
    const int32_t qi = quantizeOne(x[i], aScale);
    q[i] = int8_t(qi);
    total += qi;
  }
  *sumQ = total;
  return aScale;
}

void gemmT2(const uint8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q,
            size_t qStride, uint32_t nTok, int32_t* acc, size_t accStride) {
  const uint32_t nBlocks = t2Blocks(k);
  const size_t rowBytes = size_t(nBlocks) * kBlockBytes;
  uint32_t t = 0;
  for (; t + 2 <= nTok; t += 2) {
    const int32_t qSum[2] = {sumBytes(q + t * qStride, nBlocks * kBlockElems),
                             sumBytes(q + (t + 1) * qStride, nBlocks * kBlockElems)};
    rowsT2<2, 2>(w, rowBytes, nBlocks, rowBegin, rowEnd, q + t * qStride, qStride, qSum, acc + t * accStride, accStride);
  }
  if (t < nTok) {
    const int32_t qSum[1] = {sumBytes(q + t * qStride, nBlocks * kBlockElems)};
    rowsT2<4, 1>(w, rowBytes, nBlocks, rowBegin, rowEnd, q + t * qStride, qStride, qSum, acc + t * accStride, accStride);
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

}  // namespace tern::kernels::avx2

#endif  // __x86_64__
