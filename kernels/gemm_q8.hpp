// int8 x int8 GEMM (the optional int8 head, `--head q8`) and the F16 helpers of attention over an
// F16 KV cache. Reference versions here; SIMD variants in avx512_q8.cpp / avx2_q8.cpp (declared
// in kernels/simd_q8.hpp) give identical results: the integer GEMM exactly, the float helpers bit
// for bit (same fp32 operations in the same order).
#pragma once

#include <cstddef>
#include <cstdint>

namespace tern::kernels::ref {

// Over output rows [rowBegin, rowEnd):
//   acc[t * accStride + r] = sum_{i<k} w[r * k + i] * q[t * qStride + i]   (exact int32)
// w: [nOut][k] int8 in [-127, 127]; q: [nTok][qStride] int8. Exact for k < 2^17.
void gemmQ8(const int8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q,
            size_t qStride, uint32_t nTok, int32_t* acc, size_t accStride);

// sum_{i<n} a[i] * fp16(b[i]), in the order of dotF32 (kernels/dot.hpp): lane i % 16, then the
// tree sum; equals dotF32(a, b converted to fp32, n) bit for bit.
float dotF16(const float* a, const uint16_t* b, uint32_t n);

// y[i] = y[i] + a * fp16(x[i]) for i < n (product rounded to fp32, then the sum; no FMA).
void axpyF16(float* y, float a, const uint16_t* x, uint32_t n);

}  // namespace tern::kernels::ref
