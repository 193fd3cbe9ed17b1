// The embedded default shared by `tern run` and `tern bench`: open a GGUF model (config,
// tensors checked, tokenizer) and build its pipeline of in-process stages, each an
// ops::Stage served by a worker::StageServer as a Cap'n Proto local capability.
#pragma once

#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/tokenizer.hpp"
#include "ops/stage.hpp"
#include "protocol/codec.hpp"
#include "topology/machine.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tern::cli {

struct OpenedModel {
  std::string path;
  std::shared_ptr<const gguf::File> file;
  ModelConfig cfg;
  std::unique_ptr<Tokenizer> tokenizer;
};

// Throws std::runtime_error "model file not found: PATH" for a missing file, gguf::FormatError
// for a file the config or tokenizer cannot use.
OpenedModel openModel(const std::string& path);

// "1.19 GiB", "3.20 MiB", "12.0 KiB" (binary units).
std::string humanBytes(uint64_t bytes);
// Tensor types with counts: "F16 x1, F32 x25, TERN_T2 x84".
std::string typeSummary(const gguf::File& f);
// Types of the layers' projection tensors (blk.N.*.weight other than norms), e.g. "TERN_T2" or
// "I2_S,TQ2_0"; empty when there are none.
std::string projectionTypes(const gguf::File& f);

// K contiguous, even ranges of [0, nLayer): the first nLayer % K ranges get one layer more.
std::vector<ops::StageRange> splitLayers(uint32_t nLayer, uint32_t k);

// Stages to build: `requested` when > 0, else one per NUMA node (at most nLayer). Throws
// std::runtime_error "--stages K is more than the model's N layers" when requested > nLayer.
uint32_t stageCount(int requested, const topo::Machine& machine, uint32_t nLayer);

// The model's pipeline split into nStages even ranges, one StageServer each (reporting
// `threads` and machine.summary() in hello). Capabilities live on the calling thread's kj event
// loop, which must exist before this call and outlive them.
std::vector<proto::Stage::Client> buildEmbeddedStages(const OpenedModel& m, uint32_t nStages,
                                                      const ops::StageOptions& opts,
                                                      const topo::Machine& machine);

}  // namespace tern::cli
