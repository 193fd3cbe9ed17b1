#include "kernels/dispatch.hpp"

#include "kernels/gemm_t2.hpp"
#include "kernels/matmul_float.hpp"
#include "kernels/quantize.hpp"

#include <stdexcept>

namespace tern::kernels {

namespace {

constexpr KernelTable kRef = {
    "ref",          ref::quantizeRow, ref::gemmT2,     ref::t2Epilogue, ref::matmulT2Float,
    ref::matmulF32, ref::matmulF16,   ref::matmulBf16, ref::dotF32,
};

// Best first; the portable scalar variant is always last.
const KernelTable* const kVariants[] = {&kRef};

}  // namespace

std::vector<std::string> kernelNames() {
  std::vector<std::string> names{"auto"};
  for (const KernelTable* t : kVariants) names.emplace_back(t->name);
  return names;
}

const KernelTable& selectKernels(const std::string& name) {
  if (name == "auto") return *kVariants[0];
  for (const KernelTable* t : kVariants)
    if (name == t->name) return *t;
  std::string choices;
  for (const std::string& n : kernelNames()) choices += (choices.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown kernel variant '" + name + "' (choices: " + choices + ")");
}

}  // namespace tern::kernels
