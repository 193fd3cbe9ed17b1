#include "kernels/gemm_t2.hpp"

#include "kernels/dot.hpp"
#include "kernels/t2.hpp"

namespace tern::kernels::ref {

namespace {

// One packed row against one int8 row: blocks of 128 elements, byte p of a block holding
// elements p, 32+p, 64+p, 96+p in its 2-bit fields from the least significant up.
int32_t dotT2I8(const uint8_t* w, const int8_t* q, uint32_t nBlocks) {
  int32_t sum = 0;
  for (uint32_t b = 0; b < nBlocks; ++b) {
    const uint8_t* wb = w + size_t(b) * kT2BlockBytes;
    const int8_t* qb = q + size_t(b) * kT2BlockElems;
    int32_t s = 0;
    for (uint32_t p = 0; p < 32; ++p) {
      const int32_t byte = wb[p];
      s += ((byte & 3) - 1) * qb[p] + (((byte >> 2) & 3) - 1) * qb[32 + p] +
           (((byte >> 4) & 3) - 1) * qb[64 + p] + (((byte >> 6) & 3) - 1) * qb[96 + p];
    }
    sum += s;
  }
  return sum;
}

}  // namespace

void gemmT2(const uint8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q,
            size_t qStride, uint32_t nTok, int32_t* acc, size_t accStride) {
  const size_t rowBytes = t2RowBytes(k);
  const uint32_t nBlocks = t2PaddedK(k) / kT2BlockElems;
  for (uint32_t r = rowBegin; r < rowEnd; ++r) {
    const uint8_t* wr = w + size_t(r) * rowBytes;
    for (uint32_t t = 0; t < nTok; ++t) acc[t * accStride + r] = dotT2I8(wr, q + t * qStride, nBlocks);
  }
}

void t2Epilogue(const int32_t* acc, uint32_t n, float aScale, float wScale, float* y) {
  for (uint32_t i = 0; i < n; ++i) y[i] = float(acc[i]) / aScale * wScale;
}

void matmulT2Float(const uint8_t* w, uint32_t k, float wScale, uint32_t rowBegin, uint32_t rowEnd,
                   const float* x, size_t xStride, uint32_t nTok, float* y, size_t yStride) {
  const size_t rowBytes = t2RowBytes(k);
  const uint32_t nBlocks = t2PaddedK(k) / kT2BlockElems;
  float wf[kT2BlockElems];
  for (uint32_t r = rowBegin; r < rowEnd; ++r) {
    const uint8_t* wr = w + size_t(r) * rowBytes;
    for (uint32_t t = 0; t < nTok; ++t) {
      DotLanes lanes;
      const float* xt = x + t * xStride;
      for (uint32_t b = 0; b < nBlocks; ++b) {
        const uint8_t* wb = wr + size_t(b) * kT2BlockBytes;
        for (uint32_t p = 0; p < 32; ++p)
          for (uint32_t j = 0; j < 4; ++j) wf[j * 32 + p] = float(int((wb[p] >> (2 * j)) & 3) - 1);
        const uint32_t base = b * kT2BlockElems;
        const uint32_t n = base + kT2BlockElems <= k ? kT2BlockElems : k - base;
        lanes.add(wf, xt + base, n);
      }
      y[t * yStride + r] = lanes.sum() * wScale;
    }
  }
}

}  // namespace tern::kernels::ref
