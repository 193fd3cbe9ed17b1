// Model configuration: architecture and hyperparameters read from GGUF metadata, and the check
// that the file's tensors have the shapes that architecture needs.
#pragma once

#include "model/gguf.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace tern {

enum class Arch { BitnetB158, Bitnet, Llama };
const char* archName(Arch a);  // the GGUF `general.architecture` string

enum class FfnAct { Silu, ReluSquared };
enum class RopeStyle {
  Norm,  // rotate interleaved pairs (2i, 2i+1): llama
  Neox,  // rotate halves (i, i + rot_dim/2): bitnet, bitnet-b1.58
};

struct ModelConfig {
  Arch arch = Arch::Llama;
  std::string archKey;  // metadata prefix as in the file: "bitnet-b1.58", "bitnet-25", "bitnet", "llama"
  std::string name;     // general.name, may be empty
  uint32_t nVocab = 0;
  uint32_t nEmbd = 0;   // hidden size
  uint32_t nLayer = 0;
  uint32_t nHead = 0;
  uint32_t nHeadKv = 0;
  uint32_t headDim = 0;  // nEmbd / nHead unless key_length says otherwise
  uint32_t nFf = 0;
  uint32_t nCtxTrain = 0;  // {arch}.context_length
  uint32_t nRot = 0;       // rope dimension count (<= headDim)
  float ropeTheta = 10000.0f;
  float normEps = 1e-5f;
  FfnAct ffnAct = FfnAct::Silu;
  RopeStyle rope = RopeStyle::Norm;
  bool subNorms = false;    // attn_sub_norm / ffn_sub_norm present (bitnet archs)
  bool tiedHead = false;    // no output.weight: logits use token_embd
  bool ternary = false;     // the projections are stored in a ternary type

  // Reads {arch}.* keys. Throws gguf::FormatError ("<path>: ...") for an unknown architecture,
  // missing or absurd hyperparameters (zero sizes, heads not dividing the hidden size, ...).
  static ModelConfig fromGguf(const gguf::File& f);

  // Validates that every tensor the architecture needs exists with the right shape and a type
  // tern can load; throws gguf::FormatError naming the tensor ("blk.3.attn_q.weight: shape
  // [256, 512], expected [256, 256]"). Unsupported ternary types (I2_S, TL1, TL2, TQ1_0, TQ2_0)
  // give "tensor type X is not yet supported".
  void validateTensors(const gguf::File& f) const;

  // The same checks for what one pipeline stage reads: layers [layerBegin, layerEnd), the token
  // embedding when it embeds, the final norm and head when it holds the head (token_embd too for
  // a tied head). Other tensors may be absent (a shard file holds only its stage's tensors).
  // validateTensors(f) is this for [0, nLayer) with both.
  void validateTensors(const gguf::File& f, uint32_t layerBegin, uint32_t layerEnd, bool embed,
                       bool head) const;

  // Whether such a stage reads the tensor `name`: blk.<i>.* for i in [layerBegin, layerEnd),
  // token_embd when it embeds (or holds a tied head), output_norm and output when it holds the
  // head. What a shard file carries and what a worker counts as the shard's weights.
  bool stageUses(const std::string& name, uint32_t layerBegin, uint32_t layerEnd, bool embed,
                 bool head) const;

  uint64_t nParams(const gguf::File& f) const;  // total elements of all tensors
  uint32_t qDim() const { return nHead * headDim; }
  uint32_t kvDim() const { return nHeadKv * headDim; }
};

// KV cache bytes of one position of one sequence over nLayers layers: a K and a V row of kvDim
// elements of elementBytes (2 for F16, 4 for F32) each. What a stage allocates per position,
// what a worker reserves for maxSequences x nCtx of them, what the planner counts.
inline uint64_t kvBytesPerPosition(uint32_t kvDim, uint32_t nLayers, unsigned elementBytes) {
  return uint64_t(2) * kvDim * nLayers * elementBytes;
}

// Tensor names used by every architecture. Per layer names are "blk.<i>.<suffix>".
namespace tensor_names {
inline constexpr const char* kTokenEmbd = "token_embd.weight";
inline constexpr const char* kOutputNorm = "output_norm.weight";
inline constexpr const char* kOutput = "output.weight";
std::string layer(uint32_t i, const char* suffix);  // layer(3, "attn_q.weight") = "blk.3.attn_q.weight"
}  // namespace tensor_names

}  // namespace tern
