// Ternary weight formats tern reads and writes, as one traits table, with reference (scalar)
// codecs between a format's bytes and ternary codes w in {-1, 0, +1} plus one float scale s_w per
// tensor. Compute kernels only ever see TERN_T2 (kernels/t2.hpp): every other format is repacked
// into it at load time (repackToT2), which keeps the integer results bit for bit.
//
// A tensor is a matrix [nOut rows][k columns] (GGUF ne = {k, nOut}); layouts after
// ../shared/docs/formats.md sections 3-4:
//   TERN_T2  rows padded to 128, 128-element blocks of 32 B, pairs least significant first,
//            32 B trailer (float s_w + 28 zero bytes).
//   I2_S     the flattened row-major tensor cut into 128-element blocks of 32 B (blocks may
//            straddle rows); byte p holds elements p, 32+p, 64+p, 96+p at bits 7..6, 5..4, 3..2,
//            1..0; code 0 -> -1, 1 -> 0, 2 -> +1; 32 B trailer like T2. Total elements % 128 == 0.
//   TQ2_0    256-element blocks of 66 B: 64 B codes, fp16 d; half c, byte m holds element
//            128c + m + 32n at bits 2n+1..2n. k % 256 == 0.
//   TQ1_0    256-element blocks of 54 B: qs[48], qh[4], fp16 d; 5 trits per byte in base 3,
//            stored as ceil(v * 256 / 243). k % 256 == 0.
//   TERN_TL3 rows padded to 96, 96-element blocks of 20 B (3 weights -> 4-bit |v| + sign bit,
//            kernels/gemm_tl3.hpp), 32 B trailer like T2. Any shape.
// TQ blocks carry their own scale d: tern needs one per tensor, so every block with d != 0 must
// have the same d (blocks with d == 0 hold zero weights whatever their codes).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string_view>

namespace tern::kernels {

enum class WeightFormat : uint8_t { T2, I2S, TQ2_0, TQ1_0, TL3 };
inline constexpr size_t kWeightFormatCount = 5;

// How activations are fed to a format's kernels.
enum class ActType : uint8_t {
  Int8PerToken,  // per-token absmax int8 (BitNet numerics), integer accumulation
};

// Bad weight bytes (invalid code, per-block scales): message without the tensor name, which the
// caller adds.
class WeightFormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// On-disk blocks (all fields little endian; d is IEEE fp16 bits).
struct BlockT2 { uint8_t qs[32]; };
struct BlockI2S { uint8_t qs[32]; };
struct BlockTQ2_0 { uint8_t qs[64]; uint16_t d; };
struct BlockTQ1_0 { uint8_t qs[48]; uint8_t qh[4]; uint16_t d; };
static_assert(sizeof(BlockT2) == 32);
static_assert(sizeof(BlockI2S) == 32);
static_assert(sizeof(BlockTQ2_0) == 66);
static_assert(sizeof(BlockTQ1_0) == 54);

struct WeightFormatTraits {
  WeightFormat format;
  const char* name;       // GGUF type name: "TERN_T2", "I2_S", "TQ2_0", "TQ1_0", "TERN_TL3"
  const char* shortName;  // `tern convert --to` spelling: "t2", "i2_s", "tq2_0", "tq1_0", "tl3"
  uint32_t ggmlType;      // GGUF tensor type id (1000 = tern's TERN_T2, 1001 = TERN_TL3)
  uint32_t blockElems;    // elements per block
  uint32_t blockBytes;    // bytes per block (scale included for TQ)
  uint32_t trailerBytes;  // per-tensor bytes after the blocks (T2, I2_S: 32)
  ActType act;
  // Bytes of a [nOut][k] tensor, or nullopt when the shape cannot be stored (see above).
  std::optional<size_t> (*tensorBytes)(uint32_t k, uint32_t nOut);
  // Codes of row `row`: w [k] in {-1, 0, +1}. Throws WeightFormatError for an invalid code (3).
  // TQ: elements of a block with d == 0 decode as 0.
  void (*unpackRow)(const uint8_t* tensor, uint32_t k, uint32_t nOut, uint32_t row, int8_t* w);
  // Writes row `row`'s codes w [k] (values in {-1, 0, +1}); touches only that row's bits, so rows
  // may be packed in any order (I2_S blocks straddle rows). Does not write scales.
  void (*packRow)(const int8_t* w, uint32_t k, uint32_t nOut, uint32_t row, uint8_t* tensor);
  // The per-tensor scale s_w. Throws WeightFormatError for TQ blocks with differing d, or a scale
  // that is not finite. A tensor whose TQ blocks all have d == 0 has scale 0.
  float (*readScale)(const uint8_t* tensor, uint32_t k, uint32_t nOut);
  // Stores s_w (trailer; TQ: every block's d, rounded to fp16).
  void (*writeScale)(float scale, uint32_t k, uint32_t nOut, uint8_t* tensor);
};

extern const std::array<WeightFormatTraits, kWeightFormatCount> kWeightFormats;

inline const WeightFormatTraits& weightFormat(WeightFormat f) { return kWeightFormats[size_t(f)]; }
// By GGUF type id (TERN_T2, I2_S, TQ2_0, TQ1_0), by name or by short name; nullopt otherwise.
std::optional<WeightFormat> weightFormatFromGgmlType(uint32_t id);
std::optional<WeightFormat> weightFormatFromName(std::string_view name);

// True when `scale` survives the format's scale storage exactly (TQ: fp16).
bool scaleExact(WeightFormat f, float scale);

// Repacks a tensor of format f [nOut][k] into TERN_T2 at dst [t2TensorBytes(k, nOut)], trailer
// included; returns s_w. Throws WeightFormatError (bad codes, per-block scales).
float repackToT2(WeightFormat f, const uint8_t* src, uint32_t k, uint32_t nOut, uint8_t* dst);

}  // namespace tern::kernels
