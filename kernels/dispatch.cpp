#include "kernels/dispatch.hpp"

#include "kernels/cpu_features.hpp"
#include "kernels/gemm_q8.hpp"
#include "kernels/gemm_t2.hpp"
#include "kernels/gemm_tl3.hpp"
#include "kernels/matmul_float.hpp"
#include "kernels/quantize.hpp"
#include "kernels/simd.hpp"
#include "kernels/simd_q8.hpp"
#include "kernels/simd_tl3.hpp"

#include <cstdlib>
#include <stdexcept>

namespace tern::kernels {

namespace {

struct Variant {
  const KernelTable* table;
  uint32_t requires_;  // CpuFeature bits that must all be present
};

constexpr KernelTable kRef = {
    "ref",          ref::quantizeRow, ref::gemmT2,     ref::t2Epilogue, ref::matmulT2Float,
    ref::matmulF32, ref::matmulF16,   ref::matmulBf16, ref::dotF32,
    ref::tl3Tables, ref::gemmTl3,
    ref::gemmQ8,    ref::dotF16,     ref::axpyF16,
};

#if defined(TERN_KERNELS_X86)
constexpr KernelTable kAvx512 = {
    "avx512",          avx512::quantizeRow, avx512::gemmT2,     ref::t2Epilogue, ref::matmulT2Float,
    avx512::matmulF32, avx512::matmulF16,   avx512::matmulBf16, avx512::dotF32,
    avx512::tl3Tables, avx512::gemmTl3,
    avx512::gemmQ8,    avx512::dotF16,      avx512::axpyF16,
};
constexpr KernelTable kAvx2 = {
    "avx2",          avx2::quantizeRow, avx2::gemmT2,     ref::t2Epilogue, ref::matmulT2Float,
    avx2::matmulF32, avx2::matmulF16,   avx2::matmulBf16, avx2::dotF32,
    avx2::tl3Tables, avx2::gemmTl3,
    avx2::gemmQ8,    avx2::dotF16,      avx2::axpyF16,
};
#endif
#if defined(TERN_KERNELS_NEON)
constexpr KernelTable kNeonDotprod = {
    "neon_dotprod",  neon::quantizeRow, neon_dotprod::gemmT2, ref::t2Epilogue, ref::matmulT2Float,
    neon::matmulF32, neon::matmulF16,   neon::matmulBf16,     neon::dotF32,
    ref::tl3Tables,  ref::gemmTl3,
    ref::gemmQ8,     ref::dotF16,       ref::axpyF16,
};
constexpr KernelTable kNeon = {
    "neon",          neon::quantizeRow, neon::gemmT2,     ref::t2Epilogue, ref::matmulT2Float,
    neon::matmulF32, neon::matmulF16,   neon::matmulBf16, neon::dotF32,
    ref::tl3Tables,  ref::gemmTl3,
    ref::gemmQ8,     ref::dotF16,       ref::axpyF16,
};
#endif

// Best first; the portable scalar variant is always last.
const Variant kVariants[] = {
#if defined(TERN_KERNELS_X86)
    {&kAvx512, kCpuAvx512f | kCpuAvx512bw | kCpuAvx512vl | kCpuAvx512dq | kCpuAvx512vnni | kCpuFma | kCpuF16c},
    {&kAvx2, kCpuAvx2 | kCpuFma | kCpuF16c},
#endif
#if defined(TERN_KERNELS_NEON)
    {&kNeonDotprod, kCpuAsimd | kCpuAsimdDp},
    {&kNeon, kCpuAsimd},
#endif
    {&kRef, 0},
};

bool supported(const Variant& v) { return (cpuFeatures() & v.requires_) == v.requires_; }

const KernelTable& byName(const std::string& name) {
  for (const Variant& v : kVariants) {
    if (name != v.table->name) continue;
    const uint32_t missing = v.requires_ & ~cpuFeatures();
    if (missing)
      throw std::invalid_argument("kernel variant '" + name + "' needs CPU feature(s) this CPU lacks: " +
                                  cpuFeatureString(missing));
    return *v.table;
  }
  std::string choices;
  for (const std::string& n : kernelNames()) choices += (choices.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown kernel variant '" + name + "' (choices: " + choices + ")");
}

}  // namespace

std::vector<std::string> kernelNames() {
  std::vector<std::string> names{"auto"};
  for (const Variant& v : kVariants) names.emplace_back(v.table->name);
  return names;
}

std::vector<std::string> supportedKernelNames() {
  std::vector<std::string> names;
  for (const Variant& v : kVariants)
    if (supported(v)) names.emplace_back(v.table->name);
  return names;
}

const KernelTable& selectKernels(const std::string& name) {
  if (name != "auto") return byName(name);
  if (const char* env = std::getenv("TERN_KERNELS"); env && *env && std::string(env) != "auto") {
    try {
      return byName(env);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("TERN_KERNELS: ") + e.what());
    }
  }
  for (const Variant& v : kVariants)
    if (supported(v)) return *v.table;
  return kRef;
}

}  // namespace tern::kernels
