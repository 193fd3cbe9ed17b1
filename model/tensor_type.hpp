// Tensor types that may appear in a GGUF file, with their on-disk sizes.
//
// ids < 1000 are ggml's numbering (bitnet.cpp's fork for 36/38/39; upstream ggml later reused 36,
// so 36 is read as I2_S only in bitnet-arch files). ids >= 1000 are tern's own, also named in the
// file's metadata (`tern.tensor_types`) so no other tool misreads them.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace tern {

enum class TensorType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,  // llama.cpp, 256-element blocks, base-3, 54 B
  TQ2_0 = 35,  // llama.cpp, 256-element blocks, 2-bit, 66 B
  I2_S = 36,   // bitnet.cpp fork: 2-bit codes, 128-element blocks of 32 B, + 32 B trailer
  TL1 = 38,    // bitnet.cpp fork, shape-specific layout
  TL2 = 39,    // bitnet.cpp fork, shape-specific layout
  // tern's own. T2: 2-bit codes c = w + 1 in {0,1,2} (3 unused), each row padded to a multiple
  // of 128 elements with code 1 (zero weight), 128-element blocks of 32 B; byte p of a block
  // holds elements p, 32+p, 64+p, 96+p at bits 1..0, 3..2, 5..4, 7..6 (least significant first).
  // After the ne1 rows: one float32 per-tensor scale s_w and 28 zero bytes (a 32 B trailer).
  //   bytes = ne1 * ceil(ne0 / 128) * 32 + 32
  TERN_T2 = 1000,
  // TL3: 3 weights per 5 bits (4-bit |9a+3b+c| + sign bit), rows padded to a multiple of 96
  // elements with zero weights, 96-element blocks of 20 B (layout: kernels/gemm_tl3.hpp); after
  // the ne1 rows the same 32 B scale trailer as TERN_T2.
  //   bytes = ne1 * ceil(ne0 / 96) * 20 + 32
  TERN_TL3 = 1001,
};

struct TensorTypeTraits {
  TensorType type;
  const char* name;     // as ggml / tern name it, e.g. "F16", "TQ2_0", "TERN_T2"
  uint32_t blockElems;  // elements per block (1 for plain scalar types)
  uint32_t blockBytes;  // bytes per block
  bool ternary;         // weights in {-1, 0, +1} times a scale
  bool loadable;        // tern can compute with it today
};

// nullptr for an id tern does not know at all.
const TensorTypeTraits* tensorTypeTraits(uint32_t id);
inline const TensorTypeTraits* tensorTypeTraits(TensorType t) {
  return tensorTypeTraits(static_cast<uint32_t>(t));
}
const char* tensorTypeName(TensorType t);  // "unknown" if not in the table
std::optional<TensorType> tensorTypeFromName(const std::string& name);

// Exact bytes of a tensor of this type and shape (ne[0] innermost), or nullopt when the shape
// cannot be stored in the type (ne[0] not a multiple of the block, overflow, shape-specific
// TL1/TL2 layouts) or the type is unknown.
std::optional<uint64_t> tensorBytes(TensorType t, std::span<const uint64_t> ne);

}  // namespace tern
