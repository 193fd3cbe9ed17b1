// Kernel variants as a table of function pointers, chosen once by name. Every variant computes
// exactly what the scalar "ref" one does (bit for bit for the integer paths; same fp32
// summation order for the float paths unless documented otherwise).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tern::kernels {

struct KernelTable {
  const char* name;
  // See kernels/quantize.hpp.
  float (*quantizeRow)(const float* x, uint32_t k, int8_t* q, int32_t* sumQ);
  // See kernels/gemm_t2.hpp.
  void (*gemmT2)(const uint8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd,
                 const int8_t* q, size_t qStride, uint32_t nTok, int32_t* acc, size_t accStride);
  void (*t2Epilogue)(const int32_t* acc, uint32_t n, float aScale, float wScale, float* y);
  void (*matmulT2Float)(const uint8_t* w, uint32_t k, float wScale, uint32_t rowBegin,
                        uint32_t rowEnd, const float* x, size_t xStride, uint32_t nTok, float* y,
                        size_t yStride);
  // See kernels/matmul_float.hpp.
  void (*matmulF32)(const float* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd,
                    const float* x, size_t xStride, uint32_t nTok, float* y, size_t yStride);
  void (*matmulF16)(const uint16_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd,
                    const float* x, size_t xStride, uint32_t nTok, float* y, size_t yStride);
  void (*matmulBf16)(const uint16_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd,
                     const float* x, size_t xStride, uint32_t nTok, float* y, size_t yStride);
  float (*dotF32)(const float* a, const float* b, uint32_t n);
  // See kernels/gemm_tl3.hpp: TERN_TL3 lookup tables of one token, and the lookup-table GEMM.
  void (*tl3Tables)(const int8_t* q, uint32_t k, uint8_t* tables);
  void (*gemmTl3)(const uint8_t* w, uint32_t k, uint32_t nOut, uint32_t rowBegin, uint32_t rowEnd,
                  const uint8_t* tables, size_t tableStride, uint32_t nTok, int32_t* acc,
                  size_t accStride);
  // See kernels/gemm_q8.hpp: int8 x int8 GEMM (the q8 head) and F16 helpers for attention.
  void (*gemmQ8)(const int8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q,
                 size_t qStride, uint32_t nTok, int32_t* acc, size_t accStride);
  float (*dotF16)(const float* a, const uint16_t* b, uint32_t n);
  void (*axpyF16)(float* y, float a, const uint16_t* x, uint32_t n);
};

// "auto" = the environment variable TERN_KERNELS when set (to a variant name), else the best
// variant this CPU supports; or a variant by its name. Throws std::invalid_argument for an unknown
// name (listing the choices) or for a variant this CPU cannot run (naming the missing features).
// Logs nothing.
const KernelTable& selectKernels(const std::string& name);
// Names accepted by selectKernels: "auto" first, then every variant compiled in, best first.
std::vector<std::string> kernelNames();
// The compiled-in variants this CPU can run, best first ("ref" always last); no "auto".
std::vector<std::string> supportedKernelNames();

}  // namespace tern::kernels
