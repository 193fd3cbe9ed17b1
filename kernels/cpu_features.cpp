#include "kernels/cpu_features.hpp"

#if defined(__x86_64__)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace tern::kernels {

namespace {

#if defined(__x86_64__)

// XCR0 state components (Intel SDM vol. 1, 13.1).
constexpr uint64_t kXcr0Ymm = (1u << 1) | (1u << 2);                // SSE + AVX upper halves
constexpr uint64_t kXcr0Zmm = (1u << 5) | (1u << 6) | (1u << 7);    // opmask, ZMM0-15 hi, ZMM16-31
constexpr uint64_t kXcr0Tile = (1u << 17) | (1u << 18);             // XTILECFG, XTILEDATA

uint64_t readXcr0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}

bool bit(uint32_t reg, int n) { return (reg >> n) & 1u; }

uint32_t detect() {
  uint32_t a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  const bool osxsave = bit(c, 27), avx = bit(c, 28);
  const bool fma = bit(c, 12), f16c = bit(c, 29);
  if (!osxsave || !avx) return 0;
  const uint64_t xcr0 = readXcr0();
  const bool ymm = (xcr0 & kXcr0Ymm) == kXcr0Ymm;
  const bool zmm = ymm && (xcr0 & kXcr0Zmm) == kXcr0Zmm;
  const bool tile = (xcr0 & kXcr0Tile) == kXcr0Tile;
  if (!ymm) return 0;

  uint32_t f = 0;
  if (fma) f |= kCpuFma;
  if (f16c) f |= kCpuF16c;
  uint32_t maxLeaf = 0, unused = 0;
  __get_cpuid(0, &maxLeaf, &unused, &unused, &unused);
  if (maxLeaf < 7) return f;
  uint32_t b7 = 0, c7 = 0, d7 = 0, a7 = 0;
  __cpuid_count(7, 0, a7, b7, c7, d7);
  const uint32_t subleaves = a7;
  if (bit(b7, 5)) f |= kCpuAvx2;
  if (zmm) {
    if (bit(b7, 16)) f |= kCpuAvx512f;
    if (bit(b7, 17)) f |= kCpuAvx512dq;
    if (bit(b7, 30)) f |= kCpuAvx512bw;
    if (bit(b7, 31)) f |= kCpuAvx512vl;
    if (bit(c7, 1)) f |= kCpuAvx512vbmi;
    if (bit(c7, 11)) f |= kCpuAvx512vnni;
    // AVX-512 extensions without the foundation are meaningless.
    if (!(f & kCpuAvx512f)) f &= ~(kCpuAvx512dq | kCpuAvx512bw | kCpuAvx512vl | kCpuAvx512vbmi | kCpuAvx512vnni);
  }
  if (tile && bit(d7, 25)) f |= kCpuAmxInt8;
  if (subleaves >= 1) {
    uint32_t a71 = 0, b71 = 0, c71 = 0, d71 = 0;
    __cpuid_count(7, 1, a71, b71, c71, d71);
    if (bit(a71, 4)) f |= kCpuAvxVnni;
  }
  return f;
}

#elif defined(__aarch64__) && defined(__linux__)

uint32_t detect() {
  const unsigned long hw = getauxval(AT_HWCAP);
  uint32_t f = 0;
  if (hw & HWCAP_ASIMD) f |= kCpuAsimd;
  if ((hw & HWCAP_ASIMD) && (hw & HWCAP_ASIMDDP)) f |= kCpuAsimdDp;
  return f;
}

#else

uint32_t detect() { return 0; }

#endif

constexpr struct {
  uint32_t bit;
  const char* name;
} kNames[] = {
    {kCpuAvx2, "avx2"},           {kCpuFma, "fma"},
    {kCpuF16c, "f16c"},           {kCpuAvx512f, "avx512f"},
    {kCpuAvx512bw, "avx512bw"},   {kCpuAvx512vl, "avx512vl"},
    {kCpuAvx512dq, "avx512dq"},   {kCpuAvx512vnni, "avx512vnni"},
    {kCpuAvx512vbmi, "avx512vbmi"}, {kCpuAvxVnni, "avx_vnni"},
    {kCpuAmxInt8, "amx_int8"},     {kCpuAsimd, "asimd"},
    {kCpuAsimdDp, "asimddp"},
};

}  // namespace

uint32_t cpuFeatures() {
  static const uint32_t features = detect();
  return features;
}

const char* cpuFeatureName(uint32_t bit) {
  for (const auto& n : kNames)
    if (n.bit == bit) return n.name;
  return "?";
}

std::string cpuFeatureString(uint32_t mask) {
  std::string s;
  for (const auto& n : kNames)
    if (mask & n.bit) {
      if (!s.empty()) s += ' ';
      s += n.name;
    }
  return s.empty() ? "none" : s;
}

}  // namespace tern::kernels
