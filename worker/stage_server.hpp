// The stage actor: serves tern.capnp's Stage interface over an ops::Stage.
//
// Runs on its worker's kj event loop thread. forward() decodes and checks the batch there, hands
// the layers' work to the worker's ComputeThread (the bound OpenMP team's master; without one,
// tests compute inline), then sends the activations to the next stage (or the logits to the sink)
// that link() set, and returns that call's promise, so the caller sees the whole remaining
// pipeline finish. Batches, openSequence and closeSequence take effect in arrival order (one
// FIFO of compute jobs; sends chained in the same order); while the team computes one batch the
// loop receives the next and sends the previous. Batches that arrive while the team is busy wait
// together and run as one merged batch (one GEMM over all their tokens; every row is computed as
// it would be alone), then their results go on as the separate batches they came in. Errors in a request become kj FAILED exceptions
// carrying a one-line message; the stage state is untouched and the server keeps serving.
#pragma once

#include "ops/stage.hpp"
#include "protocol/codec.hpp"
#include "worker/compute_thread.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
}  // namespace prometheus

namespace tern::worker {

// Prometheus instruments of one stage (worker/metrics.hpp makes them); any may be null.
struct StageInstruments {
  prometheus::Counter* tokens = nullptr;          // tern_stage_tokens_total
  prometheus::Counter* batches = nullptr;         // tern_stage_batches_total
  prometheus::Histogram* forwardSeconds = nullptr;  // tern_stage_forward_seconds (compute)
  prometheus::Histogram* batchTokens = nullptr;   // tern_stage_batch_tokens
  prometheus::Gauge* queueDepth = nullptr;        // tern_stage_queue_depth: batches received
                                                  // and not yet finished downstream
  prometheus::Counter* bytesIn = nullptr;         // tern_stage_received_bytes_total
  prometheus::Counter* bytesOut = nullptr;        // tern_stage_sent_bytes_total
  prometheus::Gauge* kvBytes = nullptr;           // tern_stage_kv_cache_bytes
  prometheus::Gauge* sequences = nullptr;         // tern_stage_sequences
  prometheus::Counter* errors = nullptr;          // tern_stage_request_errors_total
  prometheus::Counter* merged = nullptr;          // tern_stage_merged_batches_total
};

// What a stage may hold: it refuses sequences beyond these (ShardSpec.maxSequences, nCtx).
struct StageLimits {
  uint32_t maxSequences = UINT32_MAX;
  uint32_t nCtx = UINT32_MAX;  // positions per sequence
};

// Resolves NextHop.local / NextHop.remote to the next stage's capability (the worker owns the
// shard table and dials other workers). Throws or fails the promise with a clear message.
using HopResolver = std::function<kj::Promise<proto::Stage::Client>(proto::NextHop::Reader hop)>;

class StageServer final : public proto::Stage::Server {
 public:
  // threads and machine are reported in hello(); the stage computes with its own options.
  // compute: where the layers run (null = inline on the loop thread, for tests); must outlive
  // the server's calls. Queued jobs keep the ops::Stage alive, so the server may go first.
  StageServer(std::unique_ptr<ops::Stage> stage, unsigned threads, std::string machine,
              uint32_t shardId = 0, StageLimits limits = {}, HopResolver resolver = nullptr,
              StageInstruments instruments = {}, ComputeThread* compute = nullptr);
  ~StageServer();

  proto::StageInfoData info() const;
  // Counters since load or the last reset (Worker.stats).
  proto::StageStatsData stats() const;
  void resetStats();
  uint64_t kvBytes() const;  // KV cache bytes held now (open sequences x their nCtx)
  const ops::Stage& stage() const { return *stage_; }

 protected:
  kj::Promise<void> hello(HelloContext context) override;
  kj::Promise<void> openSequence(OpenSequenceContext context) override;
  kj::Promise<void> closeSequence(CloseSequenceContext context) override;
  kj::Promise<void> link(LinkContext context) override;
  kj::Promise<void> forward(ForwardContext context) override;

 private:
  using Clock = std::chrono::steady_clock;
  void updateGauges();
  // Runs fn after every job queued before it: on the compute thread, or inline without one.
  kj::Promise<void> enqueue(std::function<void()> fn);

  std::shared_ptr<ops::Stage> stage_;
  ComputeThread* compute_;
  kj::ForkedPromise<void> sendTail_;  // resolves when the latest batch has been sent on
  unsigned threads_;
  std::string machine_;
  uint32_t shardId_;
  StageLimits limits_;
  HopResolver resolver_;
  StageInstruments m_;

  // Where forward() sends its output: exactly one is set after link().
  kj::Maybe<proto::Stage::Client> next_;
  kj::Maybe<proto::Sink::Client> sink_;

  // Batches waiting for the compute thread; it runs all that are waiting as one merged batch.
  struct MergeQueue;
  std::shared_ptr<MergeQueue> merge_;

  std::map<uint64_t, uint32_t> seqCtx_;  // open sequences -> their maxLen
  proto::StageStatsData stats_;
  bool busySeen_ = false;
  Clock::time_point lastDone_;
  int64_t inFlight_ = 0;
};

}  // namespace tern::worker
