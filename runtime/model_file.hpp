// What `tern run` and `tern bench` share before building a pipeline (runtime/pipeline.hpp):
// opening a GGUF model (config, tensors checked, tokenizer) and describing it.
#pragma once

#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/layouts.hpp"  // humanBytes
#include "model/tokenizer.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tern::runtime {

struct OpenedModel {
  std::string path;
  std::shared_ptr<const gguf::File> file;
  ModelConfig cfg;
  std::unique_ptr<Tokenizer> tokenizer;
};

// Throws std::runtime_error "model file not found: PATH" for a missing file, gguf::FormatError
// for a file the config or tokenizer cannot use.
OpenedModel openModel(const std::string& path);

// Positions per sequence for a requested -c: 0 = min(model's context length, 4096). A request
// may exceed the model's context_length (converters sometimes record a smaller one, e.g.
// llama.cpp's llama2c converter writes 128 for a model trained on 512) up to 16 x; past that the
// positions are meaningless, so it is refused (std::runtime_error "-c N is larger than the model
// supports (...)") rather than allocating a huge KV cache.
uint32_t contextSize(const ModelConfig& cfg, uint64_t requested);

// Tensor types with counts: "F16 x1, F32 x25, TERN_T2 x84".
std::string typeSummary(const gguf::File& f);
// Types of the layers' projection tensors (blk.N.*.weight other than norms), e.g. "TERN_T2" or
// "I2_S,TQ2_0"; empty when there are none.
std::string projectionTypes(const gguf::File& f);

}  // namespace tern::runtime
