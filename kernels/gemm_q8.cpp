#include "kernels/gemm_q8.hpp"

#include "kernels/dot.hpp"
#include "kernels/f16.hpp"

namespace tern::kernels::ref {

void gemmQ8(const int8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q,
            size_t qStride, uint32_t nTok, int32_t* acc, size_t accStride) {
  for (uint32_t r = rowBegin; r < rowEnd; ++r) {
    const int8_t* wr = w + size_t(r) * k;
    for (uint32_t t = 0; t < nTok; ++t) {
      const int8_t* qt = q + t * qStride;
      int32_t s = 0;
      for (uint32_t i = 0; i < k; ++i) s += int32_t(wr[i]) * qt[i];
      acc[t * accStride + r] = s;
    }
  }
}

float dotF16(const float* a, const uint16_t* b, uint32_t n) {
  constexpr uint32_t kChunk = 256;  // a multiple of kDotLanes
  float bf[kChunk];
  DotLanes lanes;
  for (uint32_t base = 0; base < n; base += kChunk) {
    const uint32_t m = base + kChunk <= n ? kChunk : n - base;
    for (uint32_t i = 0; i < m; ++i) bf[i] = fp16ToFp32(b[base + i]);
    lanes.add(a + base, bf, m);
  }
  return lanes.sum();
}

void axpyF16(float* y, float a, const uint16_t* x, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) y[i] += a * fp16ToFp32(x[i]);
}

}  // namespace tern::kernels::ref
