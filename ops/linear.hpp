// A projection's weights (a view into the mapped GGUF, or derived T2 codes) and its application
// to a batch of token rows, parallel over output rows.
#pragma once

#include "kernels/dispatch.hpp"
#include "model/gguf.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace tern::ops {

struct Linear {
  enum class Kind { T2, F32, F16, BF16, TL3 };  // TL3: interleaved TERN_TL3 (always int8)
  Kind kind = Kind::F32;
  bool int8 = false;         // quantise activations per token (only with Kind::T2)
  const void* data = nullptr;  // [nOut] rows of k elements (T2: packed rows)
  uint32_t k = 0;            // input features
  uint32_t nOut = 0;         // output features
  float wScale = 1.0f;       // T2 / TL3 per-tensor scale s_w
  float outScale = 1.0f;     // legacy blk.N.<proj>.scale, multiplied after the projection
  bool hasOutScale = false;
  uint64_t bytes = 0;        // weight bytes read per token
  std::vector<uint8_t> owned;  // T2 codes repacked from I2_S/TQ or derived from float weights
};

// Builds a Linear over tensor `name` (ne = {k, nOut}). With int8 = true a float tensor is turned
// into T2 codes on load: s = max|W|, codes = round(W / s) clamped to [-1, 1]. That recovers the
// weights exactly when they are already ternary values codes * s (tiny-bitnet, converted BitNet
// files); for general float weights it is a lossy ternarisation (BitNet's training recipe uses
// mean|W| instead). With int8 = false a T2 tensor runs float activations on its codes.
// I2_S, TQ2_0 and TQ1_0 tensors are repacked on load into an owned TERN_T2 buffer (codes and the
// one per-tensor scale unchanged, so results equal the same weights stored as TERN_T2); TQ files
// whose non-zero block scales differ are refused (tern needs one scale per tensor).
// TERN_TL3 tensors with int8 = true are repacked into the interleaved lookup-table layout
// (kernels/gemm_tl3.hpp, Kind::TL3); with int8 = false into TERN_T2 like I2_S.
// Throws gguf::FormatError (via file.fail) for a missing tensor, bad shape or type.
Linear loadLinear(const gguf::File& file, const std::string& name, uint32_t k, uint32_t nOut,
                  bool int8);
// Attaches the optional legacy scale tensor `name` (one F32) when the file has it.
void loadOutScale(const gguf::File& file, const std::string& name, Linear& lin);

// y: [n][lin.nOut] = x: [n][lin.k] times lin; threads > 0. Each output element's arithmetic is
// independent of n and of the thread count.
void applyLinear(const kernels::KernelTable& kt, const Linear& lin, const float* x, uint32_t n,
                 float* y, int threads);

}  // namespace tern::ops
