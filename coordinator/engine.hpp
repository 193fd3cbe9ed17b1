// The generation engine: many sequences through the pipeline at once (continuous batching) with
// as many micro-batches in flight as there are stages (pipeline parallelism).
//
// Runs on the calling thread's kj event loop (run() turns it). Each sequence is either waiting
// for logits (a batch of it is in the pipeline) or ready (it has prompt tokens, or a sampled token
// to feed). Between steps, sequences whose turn ended leave and newly fed ones join. Whenever
// fewer than `inFlight` micro-batches are in the pipeline, the engine forms one from the ready
// sequences: each contributes its sampled token (decode) or a chunk of its prompt, up to
// maxBatchTokens tokens and kMaxPayloadBytes of activations/logits; decode tokens of all ready
// sequences are spread over the free slots so every stage gets work.
//
// A sequence's tokens go to the pipeline in position order and its results come back in order
// (each connection delivers calls in order, each stage serves them in order), so batching never
// changes a sequence's tokens: every row is computed as it would be alone.
#pragma once

#include "coordinator/sampler.hpp"
#include "model/config.hpp"
#include "model/tokenizer.hpp"
#include "protocol/codec.hpp"

#include <kj/async.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace prometheus {
class Registry;
}

namespace tern::coord {

struct EngineOptions {
  uint32_t nCtx = 0;             // positions per sequence; 0 = the model's context length
  uint32_t maxBatchTokens = 128; // most tokens in one micro-batch (prompt chunks)
  uint32_t inFlight = 0;         // micro-batches in flight; 0 = one per stage
  std::shared_ptr<prometheus::Registry> metrics;  // coordinator metrics; null = none
};

struct GenerateCallbacks {
  // Text as it is produced; multi-byte UTF-8 characters always arrive whole.
  std::function<void(std::string_view text)> onText;
  // When set, logits of every evaluated position, in order: [nVocab] per call. Prompt positions
  // first, then one row per generated token that was fed back.
  std::function<void(std::span<const float> row)> onLogits;
  // Each sampled id as it is sampled (including a final end-of-generation id).
  std::function<void(TokenId id)> onToken;
  // After onToken and after the id's text went through onText: the id and the logits row
  // [nVocab] it was sampled from (the model's raw logits, before penalties and temperature),
  // e.g. for log-probabilities. Text that onText passes after the last onSample of a turn is
  // held-back text flushed when the turn ends.
  std::function<void(TokenId id, std::span<const float> row)> onSample;
  // Also pass the text of the fed tokens (the prompt) through onText.
  bool echoInput = false;
};

enum class StopReason { EndOfGeneration, Limit, Context };

struct TurnResult {
  std::vector<TokenId> generated;  // sampled ids, including a final end-of-generation id
  StopReason stop = StopReason::Limit;
  uint32_t promptTokens = 0;       // tokens fed before sampling started
  double promptSeconds = 0;        // from feed() to the first sampled token
  uint32_t genTokens = 0;          // sampled tokens (excluding an end-of-generation id)
  double genSeconds = 0;
  // Serving mode only: why the turn failed in the pipeline (a stage's error); empty when it
  // ended normally. The sequence must be closed.
  std::string error;
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

class Engine {
 public:
  // stages: the pipeline in order (first holds the embedding, last the head), already linked
  // stage to stage; the engine links the last one to its own sink in hello(). Throws
  // std::invalid_argument for an empty list.
  Engine(const ModelConfig& cfg, const Tokenizer& tok, std::vector<proto::Stage::Client> stages,
         kj::WaitScope& waitScope, EngineOptions opts = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Version handshake with every stage and the sink link (done once; later calls return the
  // cached infos). Throws when a stage refuses, or when the stages do not chain up to cover
  // [0, nLayer).
  const std::vector<proto::StageInfoData>& hello();

  // Opens a sequence on every stage (KV cache for nCtx positions); returns its id.
  uint64_t open(const SamplingParams& params);
  // Queues a turn: the sequence's unfed sampled token (if any) and `tokens`, then up to nPredict
  // sampled tokens. done (optional) is called with the turn's result when it ends, from run().
  // Throws std::invalid_argument at once when the input does not fit the remaining context or
  // holds an id outside the vocabulary, or when the sequence already has a turn queued.
  void feed(uint64_t seq, std::span<const TokenId> tokens, int nPredict, GenerateCallbacks cb = {},
            std::function<void(const TurnResult&)> done = {});
  // Runs the pipeline until every queued turn has ended. Rethrows the first error of a stage
  // (the turns in flight are failed; their sequences must be closed).
  void run();
  void close(uint64_t seq);

  // --- serving: the engine keeps running on its event loop ---------------------------------
  // After serve(), run() is not used: feed() sends at once, micro-batches keep flowing while any
  // turn is ready, and a failing batch fails only the turns in progress (each one's done() gets
  // TurnResult::error) while the engine goes on serving new sequences. hello() must have been
  // called (it waits); the calls below never wait, so they may be made from promise callbacks.
  void serve();
  // open() without waiting: the sequence is opened on every stage (concurrently).
  kj::Promise<uint64_t> openAsync(const SamplingParams& params);
  // Ends the sequence now: its turn (if any) is dropped without calling done(), results of its
  // batches still in the pipeline are ignored, and once none is left it is closed on every
  // stage (so no stage sees a batch for a sequence it already closed). The promise resolves when
  // the stages have freed it.
  kj::Promise<void> closeAsync(uint64_t seq);
  // Sequences open (including those waiting to be closed) and the KV positions they hold.
  size_t openSequences() const;
  uint64_t positionsHeld() const;

  uint32_t position(uint64_t seq) const;  // tokens in the sequence's KV cache
  uint32_t nCtx() const { return opts_.nCtx; }
  size_t stages() const { return stages_.size(); }

  // Since construction or resetCounters(): micro-batches sent, tokens in them, the largest number of
  // micro-batches that were in flight at once, and the most sequences one micro-batch carried.
  struct Counters {
    uint64_t batches = 0, tokens = 0;
    uint32_t maxInFlight = 0;
    uint32_t maxSequencesInBatch = 0;
  };
  Counters counters() const;
  void resetCounters();  // from now on (e.g. a benchmark's timed part)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<proto::Stage::Client> stages_;
  EngineOptions opts_;
};

}  // namespace tern::coord
