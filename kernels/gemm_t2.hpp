// Ternary (TERN_T2) x int8 GEMM: exact integer accumulation, then a float epilogue.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tern::kernels::ref {

// Integer core over output rows [rowBegin, rowEnd):
//   acc[t * accStride + r] = sum_{i<k} w[r][i] * q[t * qStride + i]   (exact int32)
// w: packed T2 rows [nOut][t2RowBytes(k)] bytes (the trailer is not read);
// q: [nTok][qStride] int8 with qStride >= t2PaddedK(k); entries k..t2PaddedK(k)-1 of each row
// must be readable (zero them: padding weights are 0, so their values do not matter).
void gemmT2(const uint8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q,
            size_t qStride, uint32_t nTok, int32_t* acc, size_t accStride);

// Epilogue: y[i] = ((float)acc[i]) / aScale * wScale for i < n (bitnet.cpp's order).
void t2Epilogue(const int32_t* acc, uint32_t n, float aScale, float wScale, float* y);

// Float activations on ternary weights (ActQuant::Float on a TERN_T2 tensor):
//   y[t * yStride + r] = wScale * sum_{i<k} w[r][i] * x[t * xStride + i], fp32, fixed order.
void matmulT2Float(const uint8_t* w, uint32_t k, float wScale, uint32_t rowBegin, uint32_t rowEnd,
                   const float* x, size_t xStride, uint32_t nTok, float* y, size_t yStride);

}  // namespace tern::kernels::ref
