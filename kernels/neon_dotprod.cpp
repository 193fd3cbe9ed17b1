// ARM NEON + dot product (ARMv8.2-A SDOT) ternary GEMM. Compiled in its own library with
// -march=armv8.2-a+dotprod; only selectKernels() reaches it, after checking HWCAP_ASIMDDP.
// Everything here except neon_dotprod::gemmT2 has internal linkage. Layouts: see kernels/t2.hpp.
#include "kernels/simd.hpp"

#if defined(__aarch64__)

#if !defined(__ARM_FEATURE_DOTPROD)
#error "neon_dotprod.cpp needs -march=armv8.2-a+dotprod (see kernels/meson.build)"
#endif

#include <arm_neon.h>

#include <cstdint>

namespace tern::kernels::neon_dotprod {

namespace {

constexpr uint32_t kBlockElems = 128;
constexpr uint32_t kBlockBytes = 32;

// Weights w = c - 1 (s8) of plane j of 16 block bytes: SDOT is signed x signed, so it takes w
// directly and needs no sum-q correction. Code 3 (never written) gives 2, as in the ref.
inline int8x16_t planeWeights(uint8x16_t bytes, int j) {
  const uint8x16_t c = vandq_u8(vshlq_u8(bytes, vdupq_n_s8(int8_t(-2 * j))), vdupq_n_u8(3));
  return vsubq_s8(vreinterpretq_s8_u8(c), vdupq_n_s8(1));
}

// R rows x T tokens; each int32 lane takes 4 products per SDOT: exact for any k < 2^24.
template <int R, int T>
void tileT2(const uint8_t* w, size_t rowBytes, uint32_t nBlocks, const int8_t* q, size_t qStride, int32_t* acc,
            size_t accStride) {
  int32x4_t a[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) a[r][t] = vdupq_n_s32(0);
  for (uint32_t b = 0; b < nBlocks; ++b) {
    uint8x16_t wb[R][2];
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = w + r * rowBytes + size_t(b) * kBlockBytes;
      wb[r][0] = vld1q_u8(p);
      wb[r][1] = vld1q_u8(p + 16);
    }
    for (int j = 0; j < 4; ++j)
      for (int h = 0; h < 2; ++h) {
        int8x16_t qv[T];
        for (int t = 0; t < T; ++t) qv[t] = vld1q_s8(q + t * qStride + size_t(b) * kBlockElems + 32 * j + 16 * h);
        for (int r = 0; r < R; ++r) {
          const int8x16_t wv = planeWeights(wb[r][h], j);
          for (int t = 0; t < T; ++t) a[r][t] = vdotq_s32(a[r][t], wv, qv[t]);
        }
      }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[t * accStride + r] = vaddvq_s32(a[r][t]);
}

template <int R, int T>
void rowsT2(const uint8_t* w, size_t rowBytes, uint32_t nBlocks, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q,
            size_t qStride, int32_t* acc, size_t accStride) {
  uint32_t r = rowBegin;
  for (; r + R <= rowEnd; r += R) tileT2<R, T>(w + r * rowBytes, rowBytes, nBlocks, q, qStride, acc + r, accStride);
  for (; r < rowEnd; ++r) tileT2<1, T>(w + r * rowBytes, rowBytes, nBlocks, q, qStride, acc + r, accStride);
}

}  // namespace

void gemmT2(const uint8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q, size_t qStride,
            uint32_t nTok, int32_t* acc, size_t accStride) {
  const uint32_t nBlocks = (k + kBlockElems - 1) / kBlockElems;
  const size_t rowBytes = size_t(nBlocks) * kBlockBytes;
  uint32_t t = 0;
  for (; t + 2 <= nTok; t += 2)
    rowsT2<4, 2>(w, rowBytes, nBlocks, rowBegin, rowEnd, q + t * qStride, qStride, acc + t * accStride, accStride);
  if (t < nTok)
    rowsT2<4, 1>(w, rowBytes, nBlocks, rowBegin, rowEnd, q + t * qStride, qStride, acc + t * accStride, accStride);
}

}  // namespace tern::kernels::neon_dotprod

#endif  // __aarch64__
