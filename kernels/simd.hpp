// SIMD kernel variants (x86-64 and AArch64). Each namespace lives in its own translation unit compiled
// with that ISA's flags; call these only through selectKernels(), which checks the CPU first.
// Semantics, argument layouts and results are exactly those of the ref:: functions of the same
// name (kernels/quantize.hpp, gemm_t2.hpp, matmul_float.hpp), bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

#define TERN_SIMD_DECLARE_KERNELS                                                                  \
  float quantizeRow(const float* x, uint32_t k, int8_t* q, int32_t* sumQ);                         \
  void gemmT2(const uint8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q,  \
              size_t qStride, uint32_t nTok, int32_t* acc, size_t accStride);                      \
  void matmulF32(const float* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,   \
                 size_t xStride, uint32_t nTok, float* y, size_t yStride);                         \
  void matmulF16(const uint16_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd,                \
                 const float* x, size_t xStride, uint32_t nTok, float* y, size_t yStride);         \
  void matmulBf16(const uint16_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd,               \
                  const float* x, size_t xStride, uint32_t nTok, float* y, size_t yStride);        \
  float dotF32(const float* a, const float* b, uint32_t n);

namespace tern::kernels::avx2 {
// Requires avx2, fma, f16c.
TERN_SIMD_DECLARE_KERNELS
}  // namespace tern::kernels::avx2

namespace tern::kernels::avx512 {
// Requires avx512f, avx512bw, avx512vl, avx512dq, avx512vnni, fma, f16c.
TERN_SIMD_DECLARE_KERNELS
}  // namespace tern::kernels::avx512

namespace tern::kernels::neon {
// Requires asimd (every AArch64 Linux CPU has it).
TERN_SIMD_DECLARE_KERNELS
}  // namespace tern::kernels::neon

namespace tern::kernels::neon_dotprod {
// Requires asimd, asimddp (SDOT). The rest of its table is neon's.
void gemmT2(const uint8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q, size_t qStride,
            uint32_t nTok, int32_t* acc, size_t accStride);
}  // namespace tern::kernels::neon_dotprod

#undef TERN_SIMD_DECLARE_KERNELS
