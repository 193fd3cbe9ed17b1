// IEEE fp16 and bfloat16 <-> fp32 conversions. fp32 -> 16-bit rounds to nearest, ties to even;
// infinities stay infinite, NaNs stay NaN (quiet), overflow gives infinity, tiny values become
// fp16 subnormals or signed zero.
#pragma once

#include <bit>
#include <cstdint>

namespace tern::kernels {

inline float fp16ToFp32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else {
    // zero or subnormal: man * 2^-24, exact in fp32
    const float mag = float(man) * 0x1p-24f;
    bits = sign | std::bit_cast<uint32_t>(mag);
  }
  return std::bit_cast<float>(bits);
}

inline uint16_t fp32ToFp16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) {  // inf or nan
    return absx > 0x7f800000u ? uint16_t(sign | 0x7e00u | ((absx >> 13) & 0x3ffu)) : uint16_t(sign | 0x7c00u);
  }
  if (absx >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: overflow
  if (absx < 0x38800000u) {
    // below the smallest fp16 normal (2^-14): the result is r * 2^-24 with r = rne(|f| * 2^24)
    if (absx < 0x33000000u) return sign;  // < 2^-25: rounds to zero (2^-25 itself ties to 0)
    const uint32_t e = absx >> 23;  // biased exponent, 102..112
    const uint32_t m = (absx & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // |f| * 2^24 = m * 2^(e-126)
    const uint32_t k = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    const uint32_t r = k + ((rem > half || (rem == half && (k & 1u))) ? 1u : 0u);
    return uint16_t(sign | r);  // r may be 0x400: the smallest normal, which is correct
  }
  // normal: rebias exponent, round the 13 dropped bits to nearest even
  const uint32_t rebased = absx - (112u << 23);
  const uint32_t k = rebased >> 13;
  const uint32_t rem = rebased & 0x1fffu;
  const uint32_t r = k + ((rem > 0x1000u || (rem == 0x1000u && (k & 1u))) ? 1u : 0u);
  return uint16_t(sign | r);
}

inline float bf16ToFp32(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

inline uint16_t fp32ToBf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet nan
  const uint32_t lsb = (x >> 16) & 1u;
  return uint16_t((x + 0x7fffu + lsb) >> 16);
}

// Rounds through fp16 and back.
inline float roundFp16(float f) { return fp16ToFp32(fp32ToFp16(f)); }

}  // namespace tern::kernels
