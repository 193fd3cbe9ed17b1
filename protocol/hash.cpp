#include "protocol/hash.hpp"

#include <bit>
#include <cinttypes>
#include <cstdio>
#include <cstring>

namespace tern::proto {
namespace {

constexpr uint64_t kMulA = 0x9E3779B97F4A7C15ull;  // 2^64 / golden ratio
constexpr uint64_t kMulB = 0xD6E8FEB86659FD93ull;  // an odd 64-bit constant with mixed bits
constexpr uint64_t kMulC = 0xFF51AFD7ED558CCDull;

uint64_t load64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}

uint64_t mixWord(uint64_t acc, uint64_t w) {
  acc += w * kMulB;
  acc = std::rotl(acc, 29);
  return acc * kMulA;
}

uint64_t finalMix(uint64_t h) {
  h ^= h >> 33;
  h *= kMulC;
  h ^= h >> 29;
  h *= kMulB;
  h ^= h >> 32;
  return h;
}

}  // namespace

Hasher::Hasher(uint64_t seed) {
  lane_[0] = seed + kMulA;
  lane_[1] = seed ^ kMulB;
  lane_[2] = seed - kMulA;
  lane_[3] = ~seed;
}

void Hasher::stripe(const std::byte* p) {
  for (int i = 0; i < 4; ++i) lane_[i] = mixWord(lane_[i], load64(p + 8 * i));
}

void Hasher::update(std::span<const std::byte> bytes) {
  const std::byte* p = bytes.data();
  size_t n = bytes.size();
  total_ += n;
  if (buffered_ > 0) {
    const size_t take = std::min(n, sizeof buf_ - buffered_);
    std::memcpy(buf_ + buffered_, p, take);
    buffered_ += take;
    p += take;
    n -= take;
    if (buffered_ < sizeof buf_) return;
    stripe(buf_);
    buffered_ = 0;
  }
  for (; n >= 32; p += 32, n -= 32) stripe(p);
  if (n) std::memcpy(buf_, p, n);
  buffered_ = n;
}

uint64_t Hasher::digest() const {
  uint64_t h = std::rotl(lane_[0], 1) + std::rotl(lane_[1], 7) + std::rotl(lane_[2], 12) +
               std::rotl(lane_[3], 18);
  for (int i = 0; i < 4; ++i) h = (h ^ mixWord(0, lane_[i])) * kMulA + kMulC;
  size_t i = 0;
  for (; i + 8 <= buffered_; i += 8) h = std::rotl(h ^ mixWord(0, load64(buf_ + i)), 27) * kMulA;
  for (; i < buffered_; ++i) {
    h = std::rotl(h ^ (static_cast<uint64_t>(buf_[i]) * kMulC), 11) * kMulA;
  }
  return finalMix(h ^ total_);
}

uint64_t hash64(std::span<const std::byte> bytes, uint64_t seed) {
  Hasher h(seed);
  h.update(bytes);
  return h.digest();
}

std::string hashHex(uint64_t hash) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, hash);
  return buf;
}

}  // namespace tern::proto
