#include "kernels/t2.hpp"

#include <cstring>

namespace tern::kernels {

void t2PackRow(const int8_t* w, uint32_t k, uint8_t* dst) {
  const uint32_t nBlocks = t2PaddedK(k) / kT2BlockElems;
  for (uint32_t b = 0; b < nBlocks; ++b) {
    const uint32_t base = b * kT2BlockElems;
    for (uint32_t p = 0; p < kT2BlockBytes; ++p) {
      uint32_t byte = 0;
      for (uint32_t j = 0; j < 4; ++j) {
        const uint32_t e = base + j * 32 + p;
        const uint32_t code = e < k ? uint32_t(w[e] + 1) : 1u;
        byte |= (code & 3u) << (2 * j);
      }
      dst[size_t(b) * kT2BlockBytes + p] = uint8_t(byte);
    }
  }
}

void t2UnpackRow(const uint8_t* src, uint32_t k, int8_t* w) {
  const uint32_t nBlocks = t2PaddedK(k) / kT2BlockElems;
  for (uint32_t b = 0; b < nBlocks; ++b) {
    const uint32_t base = b * kT2BlockElems;
    for (uint32_t p = 0; p < kT2BlockBytes; ++p) {
      const uint32_t byte = src[size_t(b) * kT2BlockBytes + p];
      for (uint32_t j = 0; j < 4; ++j) {
        const uint32_t e = base + j * 32 + p;
        if (e < k) w[e] = int8_t(int((byte >> (2 * j)) & 3u) - 1);
      }
    }
  }
}

void t2WriteTrailer(float scale, uint8_t* dst) {
  std::memset(dst, 0, kT2TrailerBytes);
  std::memcpy(dst, &scale, sizeof scale);  // little-endian hosts only (x86-64, aarch64)
}

float t2ReadTrailer(const uint8_t* trailer) {
  float s;
  std::memcpy(&s, trailer, sizeof s);
  return s;
}

}  // namespace tern::kernels
