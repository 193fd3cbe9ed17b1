// A pipeline stage's compute: a contiguous range of transformer layers, their weights (views into
// the memory-mapped GGUF) and the KV cache of those layers for every open sequence.
//
// The first stage also embeds tokens; the last stage also applies the final norm and the head.
// One stage = the whole model when range = [0, nLayer) with first and last set.
// Threads: forward() runs one OpenMP parallel region per batch, the threads meeting at barriers
// between phases; every output row (and every attention head of a token) is computed by one
// thread with a fixed reduction order, so results do not depend on the thread count.
#pragma once

#include "model/config.hpp"
#include "model/gguf.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace tern::ops {

// How BitLinear projections treat activations.
enum class ActQuant {
  Auto,   // int8 for ternary tensor types, float for F32/F16/BF16 projections (as the references)
  Int8,   // BitNet numerics: per-token absmax int8, integer accumulation, then rescale. On
          // F32/F16/BF16 projections the weights become T2 codes on load: s = max|W|,
          // codes = round(W / s) (exact for files holding ternary values codes * s)
  Float,  // plain float matmul on dequantised weights
};
enum class KvType { F16, F32 };
inline unsigned kvElementBytes(KvType t) { return t == KvType::F16 ? 2 : 4; }
// The head (tied embedding or output.weight).
enum class HeadType {
  Float,  // as stored (F32/F16/BF16): lossless
  Q8,     // int8 per row at load (ops/group.hpp HeadQ8): half the bytes of an F16 head; logits
          // move by at most the quantisation error (not lossless)
};

struct StageOptions {
  ActQuant actQuant = ActQuant::Auto;
  KvType kvType = KvType::F16;  // llama.cpp's default; F16 K/V also round Q and softmax to F16
  int threads = 0;              // OpenMP threads for this stage; 0 = omp default
  std::string kernels = "auto"; // kernel variant: "auto" | "ref"
  HeadType head = HeadType::Float;
  bool hugePages = true;        // copy the projection and head weights into huge-page memory
                                // at load (ops/huge_buffer.hpp): faster streaming, more RSS
};

struct StageRange {
  uint32_t layerBegin = 0;  // first layer held
  uint32_t layerEnd = 0;    // one past the last layer held
  bool embed = true;        // holds token_embd and turns token ids into activations
  bool head = true;         // holds output_norm + head and produces logits
};

// One batch of tokens travelling through the pipeline. All spans have n entries except act.
struct BatchIn {
  std::span<const uint64_t> seq;   // [n] sequence id of each token
  std::span<const uint32_t> pos;   // [n] position of each token in its sequence
  std::span<const int32_t> tokens; // [n] token ids (embed stage only; may be empty otherwise)
  std::span<const float> act;      // [n, nEmbd] activations (non-embed stages)
  std::span<const uint8_t> wantLogits;  // [n] 1 = return logits for this token (head stage);
                                        // empty = no logits
};

struct BatchOut {
  std::vector<float> act;     // [n, nEmbd] when the stage has no head
  std::vector<float> logits;  // [nWanted, nVocab] rows in batch order, when the stage has the head
};

class Stage {
 public:
  // Validates the range against the config and builds weight views. Throws std::invalid_argument
  // for a bad range and gguf::FormatError for a file the config cannot run.
  Stage(std::shared_ptr<const gguf::File> file, const ModelConfig& cfg, StageRange range,
        StageOptions opts);
  ~Stage();
  Stage(const Stage&) = delete;
  Stage& operator=(const Stage&) = delete;

  const ModelConfig& config() const;
  const StageRange& range() const;
  std::string kernelName() const;  // chosen kernel variant, e.g. "ref"
  uint64_t weightBytes() const;    // bytes of weights this stage reads per token
  uint64_t kvBytesPerToken() const;  // KV cache bytes per token per sequence, this stage's layers

  // Sequences must be opened before use; nCtx bounds positions. Throws std::invalid_argument for
  // a duplicate/unknown id or nCtx == 0.
  void openSequence(uint64_t seq, uint32_t nCtx);
  void closeSequence(uint64_t seq);
  bool hasSequence(uint64_t seq) const;

  // Tokens of one sequence inside a batch must come in increasing position order, and each
  // token's position must equal the sequence's current length (its KV cache grows by one per
  // token). Throws std::invalid_argument naming the problem (unknown sequence, bad position,
  // wrong activation size, token id out of range) before changing any state.
  void forward(const BatchIn& in, BatchOut& out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::ops
