// The generation driver: feeds a sequence's tokens through the pipeline of stages, samples, and
// streams text. Depends on model (config, tokenizer), protocol and the sampler only; it talks to
// stages through tern.capnp capabilities (local objects in one process, or remote ones).
//
// Embedded mode: every call runs the calling thread's kj event loop through `waitScope` until
// the result is back. One sequence at a time.
// TODO(perf): keep one micro-batch per stage in flight (pipeline parallelism) and batch several
// sequences per step (continuous batching) for the cluster issue.
#pragma once

#include "coordinator/sampler.hpp"
#include "model/config.hpp"
#include "model/tokenizer.hpp"
#include "protocol/codec.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tern::coord {

struct GeneratorOptions {
  uint32_t nCtx = 0;         // positions per sequence; 0 = the model's context length
  uint32_t microBatch = 128; // most prompt tokens per forward() (fewer when all logits are wanted)
};

struct GenerateCallbacks {
  // Text as it is produced; multi-byte UTF-8 characters always arrive whole.
  std::function<void(std::string_view text)> onText;
  // When set, logits of every evaluated position, in order: [nVocab] per call. Prompt positions
  // first, then one row per generated token that was fed back.
  std::function<void(std::span<const float> row)> onLogits;
  // Also pass the text of the fed tokens (the prompt) through onText.
  bool echoInput = false;
};

enum class StopReason { EndOfGeneration, Limit, Context };

struct TurnResult {
  std::vector<TokenId> generated;  // sampled ids, including a final end-of-generation id
  StopReason stop = StopReason::Limit;
  uint32_t promptTokens = 0;       // tokens fed before sampling started
  double promptSeconds = 0;
  uint32_t genTokens = 0;          // sampled tokens (excluding an end-of-generation id)
  double genSeconds = 0;
  double promptTokensPerSecond() const { return promptSeconds > 0 ? promptTokens / promptSeconds : 0; }
  double genTokensPerSecond() const { return genSeconds > 0 ? genTokens / genSeconds : 0; }
};

// Turns token ids into text pieces: skips control tokens, drops the leading space that a
// SentencePiece "llama" vocab puts on the first piece, and holds back incomplete UTF-8.
class TextStream {
 public:
  explicit TextStream(const Tokenizer& tok) : tok_(tok) {}
  std::string push(TokenId id);  // the complete text now available (may be empty)
  std::string flush();           // whatever is held back
 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool started_ = false;
};

class Generator {
 public:
  // stages: the pipeline in order (first holds the embedding, last the head). Throws
  // std::invalid_argument for an empty list.
  Generator(const ModelConfig& cfg, const Tokenizer& tok, std::vector<proto::Stage::Client> stages,
            kj::WaitScope& waitScope, GeneratorOptions opts = {});
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // Version handshake with every stage (done once; later calls return the cached infos).
  // Throws when a stage refuses, or when the stages do not chain up to cover [0, nLayer).
  const std::vector<proto::StageInfoData>& hello();

  // One-shot generation: open a sequence, feed the prompt, sample up to nPredict tokens
  // (stopping early at an end-of-generation token or the context end), close the sequence.
  // The prompt's text goes through onText only with cb.echoInput.
  TurnResult generate(std::span<const TokenId> prompt, int nPredict, const SamplingParams& params,
                      const GenerateCallbacks& cb = {});

  // Multi-turn use (chat): the KV cache is kept between turns.
  void open(const SamplingParams& params);  // opens a fresh sequence (closing an open one)
  // Feeds the last turn's unfed sampled token (if any) and `tokens`, then samples. Throws
  // std::invalid_argument when the tokens do not fit in the remaining context.
  TurnResult feed(std::span<const TokenId> tokens, int nPredict, const GenerateCallbacks& cb = {});
  void close();
  uint32_t position() const { return nPast_; }  // tokens in the open sequence's KV cache
  uint32_t nCtx() const { return opts_.nCtx; }

 private:
  class LogitsSink;
  // Runs one batch through the pipeline; returns the delivered logits rows.
  proto::LogitsData forward(std::span<const TokenId> tokens, bool allLogits);

  const ModelConfig& cfg_;
  const Tokenizer& tok_;
  std::vector<proto::Stage::Client> stages_;
  kj::WaitScope& waitScope_;
  GeneratorOptions opts_;
  std::vector<proto::StageInfoData> infos_;
  LogitsSink* sink_ = nullptr;  // owned by sinkCap_
  proto::Sink::Client sinkCap_;
  bool open_ = false;
  uint64_t seqId_ = 0;
  uint32_t nPast_ = 0;
  std::vector<TokenId> history_;  // every id of the open sequence, fed or pending
  std::vector<TokenId> pending_;  // sampled but not yet fed
  std::unique_ptr<Sampler> sampler_;
  std::unique_ptr<TextStream> stream_;
};

}  // namespace tern::coord
