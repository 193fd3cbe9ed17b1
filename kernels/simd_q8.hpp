// SIMD variants of kernels/gemm_q8.hpp (declarations only, so that no ISA-specific inline code
// leaks between translation units). Results are exactly those of the ref:: functions.
#pragma once

#include <cstddef>
#include <cstdint>

#define TERN_SIMD_DECLARE_Q8_KERNELS                                                               \
  void gemmQ8(const int8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q,   \
              size_t qStride, uint32_t nTok, int32_t* acc, size_t accStride);                      \
  float dotF16(const float* a, const uint16_t* b, uint32_t n);                                     \
  void axpyF16(float* y, float a, const uint16_t* x, uint32_t n);

namespace tern::kernels::avx2 {
// Requires avx2, f16c.
TERN_SIMD_DECLARE_Q8_KERNELS
}  // namespace tern::kernels::avx2

namespace tern::kernels::avx512 {
// Requires avx512f, avx512bw, avx512vl, avx512dq, avx512vnni, f16c.
TERN_SIMD_DECLARE_Q8_KERNELS
}  // namespace tern::kernels::avx512

#undef TERN_SIMD_DECLARE_Q8_KERNELS
