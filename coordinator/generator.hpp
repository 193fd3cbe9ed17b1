// One sequence at a time on an Engine: the interface `tern run`, its chat mode and `tern bench`
// use. Engine (coordinator/engine.hpp) runs many.
#pragma once

#include "coordinator/engine.hpp"

namespace tern::coord {

using GeneratorOptions = EngineOptions;

// One sequence at a time on an Engine: the interface `tern run` and chat use.
class Generator {
 public:
  Generator(const ModelConfig& cfg, const Tokenizer& tok, std::vector<proto::Stage::Client> stages,
            kj::WaitScope& waitScope, EngineOptions opts = {});
  ~Generator();

  const std::vector<proto::StageInfoData>& hello() { return engine_.hello(); }
  // open + feed + close.
  TurnResult generate(std::span<const TokenId> prompt, int nPredict, const SamplingParams& params,
                      const GenerateCallbacks& cb = {});
  void open(const SamplingParams& params);  // a fresh sequence (closing an open one)
  TurnResult feed(std::span<const TokenId> tokens, int nPredict, const GenerateCallbacks& cb = {});
  void close();
  uint32_t position() const { return open_ ? engine_.position(seq_) : 0; }
  uint32_t nCtx() const { return engine_.nCtx(); }
  Engine& engine() { return engine_; }

 private:
  Engine engine_;
  bool open_ = false;
  uint64_t seq_ = 0;
};

}  // namespace tern::coord
