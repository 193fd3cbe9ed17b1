#include "model/tensor_type.hpp"

#include <array>

namespace tern {

namespace {

using T = TensorType;

// blockElems / blockBytes as ggml defines them. I2_S: 128-element blocks of 32 B plus a 32 B
// per-tensor trailer (added in tensorBytes). TL1/TL2: shape-specific, blockBytes 0 = unknown.
constexpr TensorTypeTraits kTraits[] = {
    {T::F32, "F32", 1, 4, false, true},
    {T::F16, "F16", 1, 2, false, true},
    {T::Q4_0, "Q4_0", 32, 18, false, false},
    {T::Q4_1, "Q4_1", 32, 20, false, false},
    {T::Q5_0, "Q5_0", 32, 22, false, false},
    {T::Q5_1, "Q5_1", 32, 24, false, false},
    {T::Q8_0, "Q8_0", 32, 34, false, false},
    {T::Q8_1, "Q8_1", 32, 36, false, false},
    {T::Q2_K, "Q2_K", 256, 84, false, false},
    {T::Q3_K, "Q3_K", 256, 110, false, false},
    {T::Q4_K, "Q4_K", 256, 144, false, false},
    {T::Q5_K, "Q5_K", 256, 176, false, false},
    {T::Q6_K, "Q6_K", 256, 210, false, false},
    {T::Q8_K, "Q8_K", 256, 292, false, false},
    {T::IQ2_XXS, "IQ2_XXS", 256, 66, false, false},
    {T::IQ2_XS, "IQ2_XS", 256, 74, false, false},
    {T::IQ3_XXS, "IQ3_XXS", 256, 98, false, false},
    {T::IQ1_S, "IQ1_S", 256, 50, false, false},
    {T::IQ4_NL, "IQ4_NL", 32, 18, false, false},
    {T::IQ3_S, "IQ3_S", 256, 110, false, false},
    {T::IQ2_S, "IQ2_S", 256, 82, false, false},
    {T::IQ4_XS, "IQ4_XS", 256, 136, false, false},
    {T::I8, "I8", 1, 1, false, false},
    {T::I16, "I16", 1, 2, false, false},
    {T::I32, "I32", 1, 4, false, false},
    {T::I64, "I64", 1, 8, false, false},
    {T::F64, "F64", 1, 8, false, false},
    {T::IQ1_M, "IQ1_M", 256, 56, false, false},
    {T::BF16, "BF16", 1, 2, false, true},
    {T::TQ1_0, "TQ1_0", 256, 54, true, true},
    {T::TQ2_0, "TQ2_0", 256, 66, true, true},
    {T::I2_S, "I2_S", 128, 32, true, true},
    {T::TL1, "TL1", 1, 0, true, false},
    {T::TL2, "TL2", 1, 0, true, false},
    {T::TERN_T2, "TERN_T2", 128, 32, true, true},
    {T::TERN_TL3, "TERN_TL3", 96, 20, true, true},
};

constexpr uint64_t kI2sTrailerBytes = 32;
constexpr uint64_t kT2TrailerBytes = 32;

std::optional<uint64_t> mul(uint64_t a, uint64_t b) {
  uint64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

std::optional<uint64_t> add(uint64_t a, uint64_t b) {
  uint64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// Product of ne[from..], nullopt on overflow or an empty shape.
std::optional<uint64_t> product(std::span<const uint64_t> ne, size_t from) {
  uint64_t n = 1;
  for (size_t i = from; i < ne.size(); ++i) {
    auto m = mul(n, ne[i]);
    if (!m) return std::nullopt;
    n = *m;
  }
  return n;
}

}  // namespace

const TensorTypeTraits* tensorTypeTraits(uint32_t id) {
  for (const auto& t : kTraits)
    if (static_cast<uint32_t>(t.type) == id) return &t;
  return nullptr;
}

const char* tensorTypeName(TensorType t) {
  const auto* tr = tensorTypeTraits(t);
  return tr ? tr->name : "unknown";
}

std::optional<TensorType> tensorTypeFromName(const std::string& name) {
  for (const auto& t : kTraits)
    if (name == t.name) return t.type;
  return std::nullopt;
}

std::optional<uint64_t> tensorBytes(TensorType t, std::span<const uint64_t> ne) {
  const auto* tr = tensorTypeTraits(t);
  if (!tr || ne.empty()) return std::nullopt;
  for (uint64_t n : ne)
    if (n == 0) return std::nullopt;
  switch (t) {
    case T::TL1:
    case T::TL2:
      return std::nullopt;
    case T::I2_S: {
      auto n = product(ne, 0);
      if (!n || *n % 4 != 0) return std::nullopt;
      return add(*n / 4, kI2sTrailerBytes);
    }
    case T::TERN_T2:
    case T::TERN_TL3: {
      // Each row (ne[0] elements) padded to whole blocks (T2: 128, TL3: 96 elements); rows =
      // the other dims; the same 32 B trailer.
      auto rows = product(ne, 1);
      if (!rows) return std::nullopt;
      uint64_t blocks = ne[0] / tr->blockElems + (ne[0] % tr->blockElems != 0 ? 1 : 0);
      auto rowBytes = mul(blocks, tr->blockBytes);
      if (!rowBytes) return std::nullopt;
      auto body = mul(*rowBytes, *rows);
      if (!body) return std::nullopt;
      return add(*body, kT2TrailerBytes);
    }
    default: {
      if (ne[0] % tr->blockElems != 0) return std::nullopt;
      auto rows = product(ne, 1);
      if (!rows) return std::nullopt;
      auto rowBytes = mul(ne[0] / tr->blockElems, tr->blockBytes);
      if (!rowBytes) return std::nullopt;
      return mul(*rowBytes, *rows);
    }
  }
}

}  // namespace tern
