#include "kernels/matmul_float.hpp"

#include "kernels/dot.hpp"
#include "kernels/f16.hpp"

namespace tern::kernels::ref {

namespace {

constexpr uint32_t kChunk = 256;  // elements converted to fp32 at a time (multiple of kDotLanes)

template <float (*kToF32)(uint16_t)>
void matmulHalf(const uint16_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
                size_t xStride, uint32_t nTok, float* y, size_t yStride) {
  float wf[kChunk];
  for (uint32_t r = rowBegin; r < rowEnd; ++r) {
    const uint16_t* wr = w + size_t(r) * k;
    if (k <= kChunk) {
      for (uint32_t i = 0; i < k; ++i) wf[i] = kToF32(wr[i]);
      for (uint32_t t = 0; t < nTok; ++t) {
        DotLanes lanes;
        lanes.add(wf, x + t * xStride, k);
        y[t * yStride + r] = lanes.sum();
      }
      continue;
    }
    for (uint32_t t = 0; t < nTok; ++t) {
      DotLanes lanes;
      const float* xt = x + t * xStride;
      for (uint32_t base = 0; base < k; base += kChunk) {
        const uint32_t n = base + kChunk <= k ? kChunk : k - base;
        for (uint32_t i = 0; i < n; ++i) wf[i] = kToF32(wr[base + i]);
        lanes.add(wf, xt + base, n);
      }
      y[t * yStride + r] = lanes.sum();
    }
  }
}

}  // namespace

float dotF32(const float* a, const float* b, uint32_t n) {
  DotLanes lanes;
  lanes.add(a, b, n);
  return lanes.sum();
}

void matmulF32(const float* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
               size_t xStride, uint32_t nTok, float* y, size_t yStride) {
  for (uint32_t r = rowBegin; r < rowEnd; ++r) {
    const float* wr = w + size_t(r) * k;
    for (uint32_t t = 0; t < nTok; ++t) y[t * yStride + r] = dotF32(wr, x + t * xStride, k);
  }
}

void matmulF16(const uint16_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
               size_t xStride, uint32_t nTok, float* y, size_t yStride) {
  matmulHalf<fp16ToFp32>(w, k, rowBegin, rowEnd, x, xStride, nTok, y, yStride);
}

void matmulBf16(const uint16_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
                size_t xStride, uint32_t nTok, float* y, size_t yStride) {
  matmulHalf<bf16ToFp32>(w, k, rowBegin, rowEnd, x, xStride, nTok, y, yStride);
}

}  // namespace tern::kernels::ref
