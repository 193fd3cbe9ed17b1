// Open-addressing hash maps for the tokenizers' hot lookups (string -> id over a vector of
// strings that outlives the index, and u64 -> value), much faster than std::unordered_map.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tern::detail {

inline uint64_t mix64(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

inline uint64_t hashBytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xC2B2AE3D27D4EB4Full);
  const char* p = s.data();
  size_t n = s.size();
  while (n >= 8) {
    uint64_t k;
    std::memcpy(&k, p, 8);
    h = (h ^ mix64(k)) * 0x9E3779B97F4A7C15ull;
    p += 8;
    n -= 8;
  }
  if (n) {
    uint64_t k = 0;
    std::memcpy(&k, p, n);
    h = (h ^ mix64(k ^ 0xFF)) * 0x9E3779B97F4A7C15ull;
  }
  return mix64(h);
}

// Maps each string of `keys` to its index; `keys` must outlive the index and stay unchanged.
class StringIndex {
 public:
  StringIndex() = default;
  explicit StringIndex(const std::vector<std::string>& keys) : keys_(&keys) {
    size_t cap = 16;
    while (cap < keys.size() * 2) cap <<= 1;
    slots_.assign(cap, Slot{0, -1});
    mask_ = cap - 1;
    for (size_t i = 0; i < keys.size(); ++i) insert(static_cast<int32_t>(i));
  }

  // Index of `s` (the last one when `keys` repeats a string), or -1.
  int32_t find(std::string_view s) const {
    if (slots_.empty()) return -1;
    const uint64_t h = hashBytes(s);
    const auto tag = static_cast<uint32_t>(h >> 32);
    for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.id < 0) return -1;
      if (slot.tag == tag && (*keys_)[slot.id] == s) return slot.id;
    }
  }

 private:
  struct Slot {
    uint32_t tag;
    int32_t id;  // -1: empty
  };
  void insert(int32_t id) {
    const std::string& s = (*keys_)[id];
    const uint64_t h = hashBytes(s);
    const auto tag = static_cast<uint32_t>(h >> 32);
    for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.id < 0 || (slot.tag == tag && (*keys_)[slot.id] == s)) {
        slot = {tag, id};
        return;
      }
    }
  }

  const std::vector<std::string>* keys_ = nullptr;
  std::vector<Slot> slots_;
  uint64_t mask_ = 0;
};

// u64 key -> V, insert-if-absent; `reserve` before inserting.
template <typename V>
class U64Map {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    keys_.assign(cap, kEmpty);
    values_.assign(cap, V{});
    mask_ = cap - 1;
    size_ = 0;
  }
  // Keeps an existing value. The key kEmpty is not allowed.
  void tryInsert(uint64_t key, const V& v) {
    if ((size_ + 1) * 2 > keys_.size()) grow();
    for (uint64_t i = mix64(key) & mask_;; i = (i + 1) & mask_) {
      if (keys_[i] == key) return;
      if (keys_[i] == kEmpty) {
        keys_[i] = key;
        values_[i] = v;
        ++size_;
        return;
      }
    }
  }
  const V* find(uint64_t key) const {
    if (keys_.empty()) return nullptr;
    for (uint64_t i = mix64(key) & mask_;; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &values_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

  static constexpr uint64_t kEmpty = ~0ull;

 private:
  void grow() {
    std::vector<uint64_t> oldKeys = std::move(keys_);
    std::vector<V> oldValues = std::move(values_);
    reserve(std::max<size_t>(16, oldKeys.size()));
    for (size_t i = 0; i < oldKeys.size(); ++i) {
      if (oldKeys[i] != kEmpty) tryInsert(oldKeys[i], oldValues[i]);
    }
  }
  std::vector<uint64_t> keys_;
  std::vector<V> values_;
  uint64_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace tern::detail
