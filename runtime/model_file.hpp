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

// Tensor types with counts: "F16 x1, F32 x25, TERN_T2 x84".
std::string typeSummary(const gguf::File& f);
// Types of the layers' projection tensors (blk.N.*.weight other than norms), e.g. "TERN_T2" or
// "I2_S,TQ2_0"; empty when there are none.
std::string projectionTypes(const gguf::File& f);

}  // namespace tern::runtime
