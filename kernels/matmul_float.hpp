// Float matmul on F32 / F16 / BF16 weights: fp32 products and accumulation, one fixed summation
// order per output (independent of the row range, token count and thread count).
#pragma once

#include <cstddef>
#include <cstdint>

namespace tern::kernels::ref {

// Over output rows [rowBegin, rowEnd): y[t * yStride + r] = sum_{i<k} w[r * k + i] * x[t * xStride + i]
// w: [nOut][k] weights of the named type (F16/BF16 as raw uint16 bits); x: [nTok][xStride] floats.
void matmulF32(const float* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
               size_t xStride, uint32_t nTok, float* y, size_t yStride);
void matmulF16(const uint16_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
               size_t xStride, uint32_t nTok, float* y, size_t yStride);
void matmulBf16(const uint16_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
                size_t xStride, uint32_t nTok, float* y, size_t yStride);

// Single dot product with the same summation order as the matmuls (used by attention).
float dotF32(const float* a, const float* b, uint32_t n);

}  // namespace tern::kernels::ref
