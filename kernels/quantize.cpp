#include "kernels/quantize.hpp"

#include <algorithm>
#include <cmath>

namespace tern::kernels::ref {

float quantizeRow(const float* x, uint32_t k, int8_t* q, int32_t* sumQ) {
  float maxAbs = 0.0f;
  for (uint32_t i = 0; i < k; ++i) maxAbs = std::max(maxAbs, std::fabs(x[i]));
  const double m = std::max(1e-5, double(maxAbs));
  const float aScale = float(127.0 / m);
  // 1.5 * 2^23: adding and subtracting it rounds a float of magnitude < 2^22 to the nearest
  // integer, ties to even (the default rounding mode), and vectorises unlike lrint.
  constexpr float kMagic = 12582912.0f;
  int32_t sum = 0;
  for (uint32_t i = 0; i < k; ++i) {
    // argument order makes a NaN product clamp to -128 instead of reaching the int conversion
    const float v = std::min(127.0f, std::max(-128.0f, x[i] * aScale));
    const float r = (v + kMagic) - kMagic;
    const int32_t qi = int32_t(r);
    q[i] = int8_t(qi);
    sum += qi;
  }
  *sumQ = sum;
  return aScale;
}

}  // namespace tern::kernels::ref
