// Internal to the ref kernels: a float dot product with a fixed summation order that compilers
// vectorise without -ffast-math. Element i goes to lane i % 16; lanes are then summed as a tree.
// Calls to add() must start at element offsets that are multiples of 16, so the result depends
// only on the products, not on how the row was cut into chunks.
#pragma once

#include <cstdint>

namespace tern::kernels::ref {

inline constexpr uint32_t kDotLanes = 16;

struct DotLanes {
  float lane[kDotLanes] = {};

  void add(const float* a, const float* b, uint32_t n) {
    uint32_t i = 0;
    for (; i + kDotLanes <= n; i += kDotLanes)
      for (uint32_t j = 0; j < kDotLanes; ++j) lane[j] += a[i + j] * b[i + j];
    for (; i < n; ++i) lane[i % kDotLanes] += a[i] * b[i];
  }

  float sum() const {
    float t[kDotLanes];
    for (uint32_t j = 0; j < kDotLanes; ++j) t[j] = lane[j];
    for (uint32_t w = kDotLanes / 2; w > 0; w /= 2)
      for (uint32_t j = 0; j < w; ++j) t[j] += t[j + w];
    return t[0];
  }
};

}  // namespace tern::kernels::ref
