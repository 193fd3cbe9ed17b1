// Run-time CPU feature detection (x86-64: CPUID + XGETBV). A feature counts as present only when
// both the CPU reports it and the OS saves the register state it needs (XCR0: YMM for the AVX
// family, opmask + ZMM for AVX-512, tile data for AMX). Linux/AArch64: getauxval(AT_HWCAP). On
// other architectures every flag is false.
#pragma once

#include <cstdint>
#include <string>

namespace tern::kernels {

// One bit per feature; a kernel variant's requirements are an OR of these.
enum CpuFeature : uint32_t {
  kCpuAvx2 = 1u << 0,
  kCpuFma = 1u << 1,
  kCpuF16c = 1u << 2,
  kCpuAvx512f = 1u << 3,
  kCpuAvx512bw = 1u << 4,
  kCpuAvx512vl = 1u << 5,
  kCpuAvx512dq = 1u << 6,
  kCpuAvx512vnni = 1u << 7,
  kCpuAvx512vbmi = 1u << 8,
  kCpuAvxVnni = 1u << 9,
  kCpuAmxInt8 = 1u << 10,  // reported only: no kernel uses AMX yet
  kCpuAsimd = 1u << 11,     // AArch64 Advanced SIMD (NEON)
  kCpuAsimdDp = 1u << 12,   // AArch64 SDOT/UDOT (ARMv8.2-A dotprod)
};

// Detected once (thread-safe static), then cached.
uint32_t cpuFeatures();
// Lower-case name of one feature bit ("avx512vnni"), "?" for anything else.
const char* cpuFeatureName(uint32_t bit);
// Names of the set bits of mask separated by spaces ("avx2 fma f16c ..."), "none" if empty.
std::string cpuFeatureString(uint32_t mask);

}  // namespace tern::kernels
