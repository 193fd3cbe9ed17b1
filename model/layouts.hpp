// Named model layouts: the shapes `tern gen` can write (bitnet.cpp's dummy layouts, the real
// ternary models' hyperparameters, and tiny test layouts), and their tensor lists and sizes.
// The table lives in layouts.cpp, in one place.
#pragma once

#include "model/config.hpp"
#include "model/tensor_type.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tern {

struct Layout {
  std::string name;  // e.g. "100B", "2B4T", "bitnet-tiny"
  Arch arch = Arch::Bitnet;
  uint32_t nEmbd = 0;  // hidden size
  uint32_t nFf = 0;
  uint32_t nLayer = 0;
  uint32_t nHead = 0;
  uint32_t nHeadKv = 0;
  uint32_t headDim = 0;
  uint32_t nVocab = 0;
  uint32_t nCtx = 0;  // training context length
  float ropeTheta = 10000.0f;
  float normEps = 1e-5f;
  std::string tokenizer;  // "llama3" | "llama-spm"
  bool tiedHead = true;   // no output.weight: logits use token_embd
  std::string description;

  uint32_t qDim() const { return nHead * headDim; }
  uint32_t kvDim() const { return nHeadKv * headDim; }
};

const std::vector<Layout>& allLayouts();
// Case-insensitive lookup; nullptr if unknown.
const Layout* findLayout(std::string_view name);
// "125M, 350M, ..." for error messages.
std::string layoutNames();

enum class TensorRole { Embedding, Output, Norm, Projection };

// One tensor a layout's file holds. ne in GGUF order: a weight [n_out, n_in] has ne = {n_in, n_out}.
struct LayoutTensor {
  std::string name;
  TensorType type = TensorType::F32;
  std::vector<uint64_t> ne;
  TensorRole role = TensorRole::Norm;
  uint64_t nelements() const;
  uint64_t nbytes() const;  // tensorBytes(type, ne)
};

// Every tensor in file order: token_embd, blk.0.* .. blk.{n-1}.*, output_norm, [output].
// Projections TERN_T2, token_embd / output F16, norms F32; sub-norms for the bitnet archs.
std::vector<LayoutTensor> layoutTensors(const Layout& l);

struct LayoutSize {
  uint64_t ternaryParams = 0;  // elements of the TERN_T2 projections
  uint64_t totalParams = 0;    // elements of all tensors
  uint64_t tensorBytes = 0;    // tensor data, each tensor padded to 32-byte alignment
  uint64_t fileBytesEstimate = 0;  // tensorBytes + an estimate of header, metadata, tokenizer
};
LayoutSize layoutSize(const Layout& l);

// Human-readable, decimal units: formatCount(99958652928) = "99.96 B", formatCount(1234567) =
// "1.2 M"; formatBytes(25514459136) = "25.51 GB".
std::string formatCount(uint64_t n);
std::string formatBytes(uint64_t n);
// Binary units, for memory and files: humanBytes(1277952) = "1.22 MiB"; "1.19 GiB", "12.0 KiB",
// "100 bytes".
std::string humanBytes(uint64_t n);

}  // namespace tern
