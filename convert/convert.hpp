// `tern convert`: rewrite a model's ternary projections into another ternary weight format.
//
// Every projection (blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}.weight) is
// decoded to codes w in {-1, 0, +1} plus one scale s_w and re-encoded in the target format:
//   - TERN_T2 / I2_S / TQ2_0 / TQ1_0 / TERN_TL3 sources: lossless (except a scale that the target cannot
//     store exactly: TQ keeps it as fp16, reported as a warning);
//   - F32 / F16 / BF16 sources whose values are exactly {-s, 0, +s} for one s: lossless;
//   - other float sources: BitNet's absmean ternarisation s = max(mean|W|, 1e-5),
//     w = clamp(round(W / s), -1, 1), reported as a lossy warning.
// Every other tensor and all metadata are copied; general.file_type names the target
// (TERN_T2 1000, I2_S 40, TQ2_0 37, TQ1_0 36, TERN_TL3 1001). The output streams through gguf::Writer, one
// tensor in memory at a time.
#pragma once

#include "kernels/weight_formats.hpp"
#include "model/gguf.hpp"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace tern::convert {

struct ConvertOptions {
  std::string input;
  std::string output;
  kernels::WeightFormat to = kernels::WeightFormat::T2;
};

struct ConvertResult {
  uint32_t converted = 0;  // projections re-encoded
  uint32_t lossy = 0;      // of which ternarised from general float weights or scale-rounded
  uint32_t copied = 0;     // other tensors copied unchanged
  uint64_t fileBytes = 0;  // size of the written file
  std::vector<std::string> warnings;  // one line each (also passed to `warn` as they happen)
};

// "t2" | "i2_s" | "tq2_0" | "tq1_0" | "tl3" (or the GGUF type names); throws std::invalid_argument
// listing the choices.
kernels::WeightFormat parseConvertTarget(const std::string& s);

// Converts opts.input into opts.output. Throws gguf::FormatError for a bad input file,
// std::invalid_argument when the target cannot hold a tensor (TQ: ne0 % 256 != 0; I2_S: a
// non-bitnet architecture, or elements % 128 != 0) — checked for every tensor before writing.
ConvertResult convertModel(const ConvertOptions& opts,
                           const gguf::Writer::Progress& progress = {},
                           const std::function<void(const std::string&)>& warn = {});

}  // namespace tern::convert
