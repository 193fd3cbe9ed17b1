#include "coordinator/generator.hpp"

#include <stdexcept>
#include <utility>

namespace tern::coord {

Generator::Generator(const ModelConfig& cfg, const Tokenizer& tok,
                     std::vector<proto::Stage::Client> stages, kj::WaitScope& waitScope,
                     EngineOptions opts)
    : engine_(cfg, tok, std::move(stages), waitScope, std::move(opts)) {}

Generator::~Generator() {
  if (!open_) return;
  open_ = false;
  try {
    engine_.close(seq_);
  } catch (...) {  // a destructor must not throw; the stages free the sequence when they go
  }
}

void Generator::open(const SamplingParams& params) {
  close();
  seq_ = engine_.open(params);
  open_ = true;
}

void Generator::close() {
  if (!open_) return;
  open_ = false;
  engine_.close(seq_);
}

TurnResult Generator::feed(std::span<const TokenId> tokens, int nPredict, const GenerateCallbacks& cb) {
  if (!open_) throw std::logic_error("generator: feed() without open()");
  TurnResult result;
  engine_.feed(seq_, tokens, nPredict, cb, [&result](const TurnResult& r) { result = r; });
  engine_.run();
  return result;
}

TurnResult Generator::generate(std::span<const TokenId> prompt, int nPredict,
                               const SamplingParams& params, const GenerateCallbacks& cb) {
  open(params);
  TurnResult r = feed(prompt, nPredict, cb);
  close();
  return r;
}

}  // namespace tern::coord
