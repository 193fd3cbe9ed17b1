#include "kernels/weight_formats.hpp"

#include "kernels/f16.hpp"
#include "kernels/gemm_tl3.hpp"
#include "kernels/t2.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace tern::kernels {

namespace {

constexpr uint32_t kTqBlockElems = 256;
constexpr uint32_t kI2sBlockElems = 128;
constexpr uint32_t kI2sBlockBytes = 32;
constexpr uint32_t kTrailerBytes = 32;

[[noreturn]] void badCode(uint32_t row, uint32_t col) {
  throw WeightFormatError("invalid 2-bit code 3 at row " + std::to_string(row) + ", column " +
                          std::to_string(col));
}

float checkedScale(float s) {
  if (!std::isfinite(s)) throw WeightFormatError("scale " + std::to_string(s) + " is not finite");
  return s;
}

void writeTrailer(float scale, uint8_t* dst) {
  std::memset(dst, 0, kTrailerBytes);
  std::memcpy(dst, &scale, sizeof scale);  // little-endian hosts only (x86-64, aarch64)
}

float readTrailer(const uint8_t* src) {
  float s;
  std::memcpy(&s, src, sizeof s);
  return checkedScale(s);
}

// --- TERN_T2 ---------------------------------------------------------------------------------

std::optional<size_t> t2Bytes(uint32_t k, uint32_t nOut) {
  if (k == 0 || nOut == 0) return std::nullopt;
  return t2TensorBytes(k, nOut);
}

void t2Unpack(const uint8_t* tensor, uint32_t k, uint32_t, uint32_t row, int8_t* w) {
  const uint8_t* src = tensor + size_t(row) * t2RowBytes(k);
  for (uint32_t i = 0; i < k; ++i) {
    const uint32_t b = i / kT2BlockElems, j = i % kT2BlockElems;
    const uint32_t code = (src[size_t(b) * kT2BlockBytes + j % 32] >> (2 * (j / 32))) & 3u;
    if (code == 3) badCode(row, i);
    w[i] = int8_t(int(code) - 1);
  }
}

void t2Pack(const int8_t* w, uint32_t k, uint32_t, uint32_t row, uint8_t* tensor) {
  t2PackRow(w, k, tensor + size_t(row) * t2RowBytes(k));
}

float t2Scale(const uint8_t* tensor, uint32_t k, uint32_t nOut) {
  return readTrailer(tensor + t2RowBytes(k) * nOut);
}

void t2WriteScale(float s, uint32_t k, uint32_t nOut, uint8_t* tensor) {
  writeTrailer(s, tensor + t2RowBytes(k) * nOut);
}

// --- I2_S ------------------------------------------------------------------------------------

std::optional<size_t> i2sBytes(uint32_t k, uint32_t nOut) {
  const uint64_t n = uint64_t(k) * nOut;
  if (n == 0 || n % kI2sBlockElems != 0) return std::nullopt;
  return size_t(n / 4 + kTrailerBytes);
}

// Flattened element e sits in byte (e / 128) * 32 + e % 32 at shift 6 - 2 * ((e % 128) / 32).
void i2sUnpack(const uint8_t* tensor, uint32_t k, uint32_t, uint32_t row, int8_t* w) {
  const uint64_t first = uint64_t(row) * k, last = first + k;
  int8_t block[kI2sBlockElems];
  for (uint64_t b = first / kI2sBlockElems; b * kI2sBlockElems < last; ++b) {
    const uint8_t* src = tensor + b * kI2sBlockBytes;
    for (uint32_t p = 0; p < kI2sBlockBytes; ++p)
      for (uint32_t n = 0; n < 4; ++n) block[32 * n + p] = int8_t((src[p] >> (6 - 2 * n)) & 3u);
    const uint64_t e0 = std::max(first, b * kI2sBlockElems);
    const uint64_t e1 = std::min(last, (b + 1) * kI2sBlockElems);
    for (uint64_t e = e0; e < e1; ++e) {
      const int8_t code = block[e - b * kI2sBlockElems];
      if (code == 3) badCode(row, uint32_t(e - first));
      w[e - first] = int8_t(code - 1);
    }
  }
}

void i2sPack(const int8_t* w, uint32_t k, uint32_t, uint32_t row, uint8_t* tensor) {
  const uint64_t first = uint64_t(row) * k;
  for (uint32_t i = 0; i < k; ++i) {
    const uint64_t e = first + i;
    const uint32_t j = uint32_t(e % kI2sBlockElems);
    uint8_t& byte = tensor[e / kI2sBlockElems * kI2sBlockBytes + j % 32];
    const uint32_t shift = 6 - 2 * (j / 32);
    byte = uint8_t((byte & ~(3u << shift)) | (uint32_t(w[i] + 1) & 3u) << shift);
  }
}

float i2sScale(const uint8_t* tensor, uint32_t k, uint32_t nOut) {
  return readTrailer(tensor + uint64_t(k) * nOut / 4);
}

void i2sWriteScale(float s, uint32_t k, uint32_t nOut, uint8_t* tensor) {
  writeTrailer(s, tensor + uint64_t(k) * nOut / 4);
}

// --- TQ2_0 / TQ1_0 shared --------------------------------------------------------------------

template <uint32_t BlockBytes>
std::optional<size_t> tqBytes(uint32_t k, uint32_t nOut) {
  if (k == 0 || nOut == 0 || k % kTqBlockElems != 0) return std::nullopt;
  return size_t(k / kTqBlockElems) * BlockBytes * nOut;
}

uint16_t blockD(const uint8_t* block, uint32_t blockBytes) {
  uint16_t d;
  std::memcpy(&d, block + blockBytes - 2, 2);
  return d;
}

bool isZeroHalf(uint16_t h) { return (h & 0x7fffu) == 0; }

template <uint32_t BlockBytes>
float tqScale(const uint8_t* tensor, uint32_t k, uint32_t nOut) {
  const uint64_t nBlocks = uint64_t(k / kTqBlockElems) * nOut;
  std::optional<uint16_t> ref;
  uint64_t refBlock = 0;
  for (uint64_t b = 0; b < nBlocks; ++b) {
    const uint16_t d = blockD(tensor + b * BlockBytes, BlockBytes);
    if (isZeroHalf(d)) continue;
    if (!ref) {
      ref = d;
      refBlock = b;
      checkedScale(fp16ToFp32(d));
    } else if (d != *ref) {
      throw WeightFormatError(
          "per-block scales (block " + std::to_string(refBlock) + " has d = " +
          std::to_string(fp16ToFp32(*ref)) + ", block " + std::to_string(b) + " has d = " +
          std::to_string(fp16ToFp32(d)) + "); tern needs one scale per tensor");
    }
  }
  return ref ? fp16ToFp32(*ref) : 0.0f;
}

template <uint32_t BlockBytes>
void tqWriteScale(float s, uint32_t k, uint32_t nOut, uint8_t* tensor) {
  const uint64_t nBlocks = uint64_t(k / kTqBlockElems) * nOut;
  const uint16_t d = fp32ToFp16(s);
  for (uint64_t b = 0; b < nBlocks; ++b) std::memcpy(tensor + b * BlockBytes + BlockBytes - 2, &d, 2);
}

// --- TQ2_0 -----------------------------------------------------------------------------------

// Element e of a block: byte 32 * (e / 128) + e % 32, bits 2n+1..2n with n = (e % 128) / 32.
void tq2Unpack(const uint8_t* tensor, uint32_t k, uint32_t, uint32_t row, int8_t* w) {
  const uint32_t nb = k / kTqBlockElems;
  for (uint32_t b = 0; b < nb; ++b) {
    const uint8_t* blk = tensor + (uint64_t(row) * nb + b) * sizeof(BlockTQ2_0);
    int8_t* dst = w + size_t(b) * kTqBlockElems;
    if (isZeroHalf(blockD(blk, sizeof(BlockTQ2_0)))) {
      std::memset(dst, 0, kTqBlockElems);
      continue;
    }
    for (uint32_t c = 0; c < 2; ++c)
      for (uint32_t m = 0; m < 32; ++m)
        for (uint32_t n = 0; n < 4; ++n) {
          const uint32_t code = (blk[32 * c + m] >> (2 * n)) & 3u;
          const uint32_t e = 128 * c + m + 32 * n;
          if (code == 3) badCode(row, b * kTqBlockElems + e);
          dst[e] = int8_t(int(code) - 1);
        }
  }
}

void tq2Pack(const int8_t* w, uint32_t k, uint32_t, uint32_t row, uint8_t* tensor) {
  const uint32_t nb = k / kTqBlockElems;
  for (uint32_t b = 0; b < nb; ++b) {
    uint8_t* blk = tensor + (uint64_t(row) * nb + b) * sizeof(BlockTQ2_0);
    const int8_t* src = w + size_t(b) * kTqBlockElems;
    for (uint32_t c = 0; c < 2; ++c)
      for (uint32_t m = 0; m < 32; ++m) {
        uint32_t byte = 0;
        for (uint32_t n = 0; n < 4; ++n)
          byte |= (uint32_t(src[128 * c + m + 32 * n] + 1) & 3u) << (2 * n);
        blk[32 * c + m] = uint8_t(byte);
      }
  }
}

// --- TQ1_0 -----------------------------------------------------------------------------------

// Where element e of a block lives: byte index into qs[48] ++ qh[4], and trit position n (0 = most
// significant of the byte's 5).
struct TritPos {
  uint8_t byte;
  uint8_t n;
};

constexpr std::array<TritPos, kTqBlockElems> makeTritMap() {
  std::array<TritPos, kTqBlockElems> map{};
  for (uint32_t e = 0; e < kTqBlockElems; ++e) {
    if (e < 160) map[e] = {uint8_t(e % 32), uint8_t(e / 32)};
    else if (e < 240) map[e] = {uint8_t(32 + (e - 160) % 16), uint8_t((e - 160) / 16)};
    else map[e] = {uint8_t(48 + (e - 240) % 4), uint8_t((e - 240) / 4)};
  }
  return map;
}
constexpr auto kTritMap = makeTritMap();
constexpr uint32_t kPow3[5] = {1, 3, 9, 27, 81};

void tq1Unpack(const uint8_t* tensor, uint32_t k, uint32_t, uint32_t row, int8_t* w) {
  const uint32_t nb = k / kTqBlockElems;
  for (uint32_t b = 0; b < nb; ++b) {
    const uint8_t* blk = tensor + (uint64_t(row) * nb + b) * sizeof(BlockTQ1_0);
    int8_t* dst = w + size_t(b) * kTqBlockElems;
    if (isZeroHalf(blockD(blk, sizeof(BlockTQ1_0)))) {
      std::memset(dst, 0, kTqBlockElems);
      continue;
    }
    for (uint32_t e = 0; e < kTqBlockElems; ++e) {
      const TritPos p = kTritMap[e];
      const uint32_t u = (uint32_t(blk[p.byte]) * kPow3[p.n]) & 0xffu;
      dst[e] = int8_t(int((u * 3) >> 8) - 1);
    }
  }
}

void tq1Pack(const int8_t* w, uint32_t k, uint32_t, uint32_t row, uint8_t* tensor) {
  const uint32_t nb = k / kTqBlockElems;
  for (uint32_t b = 0; b < nb; ++b) {
    uint8_t* blk = tensor + (uint64_t(row) * nb + b) * sizeof(BlockTQ1_0);
    const int8_t* src = w + size_t(b) * kTqBlockElems;
    uint32_t v[52] = {};
    for (uint32_t e = 0; e < kTqBlockElems; ++e) {
      const TritPos p = kTritMap[e];
      v[p.byte] += uint32_t(src[e] + 1) * kPow3[4 - p.n];
    }
    for (uint32_t i = 0; i < 52; ++i) blk[i] = uint8_t((v[i] * 256 + 242) / 243);
  }
}

// --- TERN_TL3 (kernels/gemm_tl3.hpp) -----------------------------------------------------------

std::optional<size_t> tl3Bytes(uint32_t k, uint32_t nOut) {
  if (k == 0 || nOut == 0) return std::nullopt;
  return tl3TensorBytes(k, nOut);
}

void tl3Unpack(const uint8_t* tensor, uint32_t k, uint32_t, uint32_t row, int8_t* w) {
  tl3UnpackRow(tensor + size_t(row) * tl3RowBytes(k), k, row, w);
}

void tl3Pack(const int8_t* w, uint32_t k, uint32_t, uint32_t row, uint8_t* tensor) {
  tl3PackRow(w, k, tensor + size_t(row) * tl3RowBytes(k));
}

}  // namespace

const std::array<WeightFormatTraits, kWeightFormatCount> kWeightFormats = {{
    {WeightFormat::T2, "TERN_T2", "t2", 1000, kT2BlockElems, kT2BlockBytes, kTrailerBytes,
     ActType::Int8PerToken, t2Bytes, t2Unpack, t2Pack, t2Scale, t2WriteScale},
    {WeightFormat::I2S, "I2_S", "i2_s", 36, kI2sBlockElems, kI2sBlockBytes, kTrailerBytes,
     ActType::Int8PerToken, i2sBytes, i2sUnpack, i2sPack, i2sScale, i2sWriteScale},
    {WeightFormat::TQ2_0, "TQ2_0", "tq2_0", 35, kTqBlockElems, sizeof(BlockTQ2_0), 0,
     ActType::Int8PerToken, tqBytes<sizeof(BlockTQ2_0)>, tq2Unpack, tq2Pack,
     tqScale<sizeof(BlockTQ2_0)>, tqWriteScale<sizeof(BlockTQ2_0)>},
    {WeightFormat::TQ1_0, "TQ1_0", "tq1_0", 34, kTqBlockElems, sizeof(BlockTQ1_0), 0,
     ActType::Int8PerToken, tqBytes<sizeof(BlockTQ1_0)>, tq1Unpack, tq1Pack,
     tqScale<sizeof(BlockTQ1_0)>, tqWriteScale<sizeof(BlockTQ1_0)>},
    {WeightFormat::TL3, "TERN_TL3", "tl3", 1001, kTl3BlockElems, kTl3BlockBytes, kTl3TrailerBytes,
     ActType::Int8PerToken, tl3Bytes, tl3Unpack, tl3Pack, tl3ReadScale, tl3WriteScale},
}};

static_assert(kWeightFormatCount == 5);

std::optional<WeightFormat> weightFormatFromGgmlType(uint32_t id) {
  for (const auto& t : kWeightFormats)
    if (t.ggmlType == id) return t.format;
  return std::nullopt;
}

std::optional<WeightFormat> weightFormatFromName(std::string_view name) {
  auto eq = [](std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i])))
        return false;
    return true;
  };
  for (const auto& t : kWeightFormats)
    if (eq(name, t.name) || eq(name, t.shortName)) return t.format;
  return std::nullopt;
}

bool scaleExact(WeightFormat f, float scale) {
  if (!std::isfinite(scale)) return false;
  if (f == WeightFormat::TQ2_0 || f == WeightFormat::TQ1_0)
    return fp16ToFp32(fp32ToFp16(scale)) == scale;
  return true;
}

float repackToT2(WeightFormat f, const uint8_t* src, uint32_t k, uint32_t nOut, uint8_t* dst) {
  const WeightFormatTraits& tr = weightFormat(f);
  const float s = tr.readScale(src, k, nOut);
  std::vector<int8_t> codes(k);
  const size_t rowBytes = t2RowBytes(k);
  for (uint32_t r = 0; r < nOut; ++r) {
    tr.unpackRow(src, k, nOut, r, codes.data());
    t2PackRow(codes.data(), k, dst + r * rowBytes);
  }
  t2WriteTrailer(s, dst + rowBytes * nOut);
  return s;
}

}  // namespace tern::kernels
