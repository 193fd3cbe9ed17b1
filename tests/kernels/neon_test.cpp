// AArch64 only: the NEON rows are compiled in, detected from HWCAP and ranked best first. Their
// numerics against ref are checked by simd_test.cpp, which loops over every supported variant.
// Under qemu-user (tests/kernels/meson.build) TERN_TEST_CPU_FEATURES names the features the
// emulated CPU must report, TERN_TEST_BEST_KERNEL the variant auto must pick.
#include "kernels/cpu_features.hpp"
#include "kernels/dispatch.hpp"

#include <doctest/doctest.h>

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__aarch64__)

using namespace tern::kernels;

namespace {

long indexOf(const std::vector<std::string>& v, const std::string& s) {
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] == s) return long(i);
  return -1;
}

}  // namespace

TEST_CASE("neon: rows compiled in, detected from HWCAP, best first") {
  const auto names = kernelNames();
  const long dp = indexOf(names, "neon_dotprod"), plain = indexOf(names, "neon");
  REQUIRE(dp > 0);
  REQUIRE(plain > dp);
  CHECK(indexOf(names, "ref") > plain);

  const uint32_t f = cpuFeatures();
  CHECK((f & kCpuAsimd) != 0);  // every AArch64 Linux CPU
  const auto supported = supportedKernelNames();
  CHECK(indexOf(supported, "neon") >= 0);
  if (f & kCpuAsimdDp) {
    CHECK(indexOf(supported, "neon_dotprod") >= 0);
  } else {
    CHECK(indexOf(supported, "neon_dotprod") < 0);
    CHECK_THROWS_WITH_AS(selectKernels("neon_dotprod"), doctest::Contains("asimddp"), std::invalid_argument);
  }
  if (const char* want = std::getenv("TERN_TEST_CPU_FEATURES")) CHECK(cpuFeatureString(f) == std::string(want));
  if (const char* want = std::getenv("TERN_TEST_BEST_KERNEL")) CHECK(supported.front() == std::string(want));
}

#endif  // __aarch64__
