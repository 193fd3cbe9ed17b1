// TERN_TL3 lookup-table kernels of the SIMD variants (x86-64 only; declarations only, so that no
// ISA-specific inline code leaks between translation units). Semantics, argument layouts and
// results are exactly those of ref::tl3Tables and ref::gemmTl3 (kernels/gemm_tl3.hpp), bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

#define TERN_SIMD_DECLARE_TL3_KERNELS                                                              \
  void tl3Tables(const int8_t* q, uint32_t k, uint8_t* tables);                                    \
  void gemmTl3(const uint8_t* w, uint32_t k, uint32_t nOut, uint32_t rowBegin, uint32_t rowEnd,    \
               const uint8_t* tables, size_t tableStride, uint32_t nTok, int32_t* acc,             \
               size_t accStride);

namespace tern::kernels::avx2 {
// Requires avx2.
TERN_SIMD_DECLARE_TL3_KERNELS
}  // namespace tern::kernels::avx2

namespace tern::kernels::avx512 {
// Requires avx512f, avx512bw, avx512vl.
TERN_SIMD_DECLARE_TL3_KERNELS
}  // namespace tern::kernels::avx512

#undef TERN_SIMD_DECLARE_TL3_KERNELS
