// `tern gen`: writes a synthetic ternary GGUF for a named layout (model/layouts.hpp), with random
// weights and a real tokenizer, streaming so that even the 100B layout never sits in memory.
//
// Values, all from splitmix64 streams keyed by (seed, tensor name, row), so any chunk of any
// tensor is computed on its own and the same seed gives a byte-identical file:
//   projections  TERN_T2 codes with P(0) = zeroFraction and +1 / -1 equally likely, scale
//                s = 1 / sqrt((1 - z) * k) rounded to an F16 value, so that an output
//                y = s * sum_k w_k x_k has the variance of one input (var y = (1-z) k s^2 var x)
//                and activations neither grow nor vanish over the layers.
//   token_embd   F16, N(0, 1) * 3 / sqrt(n_embd): logits of a unit-RMS hidden state against it
//   output       (tied or not) have a standard deviation of about 3, peaked but not one-hot.
//   norms        F32, 1 + 0.05 * N(0, 1).
#pragma once

#include "model/gguf.hpp"
#include "model/layouts.hpp"
#include "model/tokenizer.hpp"

#include <cstdint>
#include <optional>
#include <string>

#ifndef TERN_DATA_DIR
#define TERN_DATA_DIR "tests/data"
#endif

namespace tern::convert {

struct GenOptions {
  std::string layout;  // a name findLayout() knows (case-insensitive)
  std::string output;  // GGUF path; unused with dryRun
  uint64_t seed = 1;
  double zeroFraction = 0.4;       // in [0, 0.99]
  std::optional<uint32_t> nLayer;  // overrides the layout's layer count (1..4096)
  bool dryRun = false;             // build everything, write nothing
  // Holds llama3-tokenizer/tokenizer.model and llama.cpp-vocab/ggml-vocab-llama-spm.gguf.
  std::string tokenizerDir = TERN_DATA_DIR;
};

struct GenResult {
  Layout layout;    // as written (nLayer override applied)
  LayoutSize size;  // parameter counts
  uint64_t fileBytes = 0;  // exact size of the file (written or, with dryRun, would be)
};

// Throws std::invalid_argument for an unknown layout (message lists the valid names) or bad
// options, std::runtime_error / gguf::FormatError for unreadable tokenizer data or I/O errors.
GenResult generateModel(const GenOptions& opts, const gguf::Writer::Progress& progress = {});

// The tokenizer a layout's file carries:
//  "llama3": Llama-3 from tiktoken (128000 BPE + 256 specials), padded with reserved specials
//            up to nVocab (Falcon3's 131072).
//  "llama-spm": llama.cpp's Llama-2 SentencePiece vocab (32000) plus "<pad>" (32000, also the
//            pad id) and "<mask>" (32001) as user-defined tokens, as in 1bitLLM's 32002 vocab.
Vocab layoutVocab(const Layout& l, const std::string& tokenizerDir);

}  // namespace tern::convert
