#include "worker/stage_server.hpp"

#include "protocol/handshake.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <utility>

namespace tern::worker {
namespace {

[[noreturn]] void fail(const std::string& msg) { proto::throwRpcError(msg); }

// Runs f, turning std exceptions (bad input found by codec or ops) into kj FAILED exceptions
// that carry the message over the wire.
template <typename F>
auto guarded(const char* what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::exception& e) {
    fail(std::string(what) + ": " + e.what());
  }
}

double seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// One forward() call's compute: nothing of kj (it is touched and may be destroyed on the compute
// thread).
struct Work {
  proto::BatchData batch;
  ops::BatchOut out;
  std::chrono::steady_clock::time_point start, end;
  double computeSeconds = 0;  // its share of a merged batch's time (by tokens)
  bool merged = false;        // computed together with other batches
};

// Most tokens one merged batch carries.
constexpr size_t kMaxMergedTokens = 512;

void computeOne(ops::Stage& stage, Work& w) {
  const proto::BatchData& b = w.batch;
  w.start = std::chrono::steady_clock::now();
  stage.forward(ops::BatchIn{b.seq, b.pos, b.tokens, b.act, b.wantLogits}, w.out);
  w.end = std::chrono::steady_clock::now();
  w.computeSeconds = seconds(w.end - w.start);
}

// Runs several batches as one: concatenated in arrival order (so each sequence's tokens stay in
// position order), then the output rows are handed back to each batch. Throws what the stage
// throws for the merged batch, before any state changed.
void computeMerged(ops::Stage& stage, std::vector<Work*>& ws) {
  proto::BatchData all;
  for (Work* w : ws) {
    const proto::BatchData& b = w->batch;
    all.seq.insert(all.seq.end(), b.seq.begin(), b.seq.end());
    all.pos.insert(all.pos.end(), b.pos.begin(), b.pos.end());
    all.tokens.insert(all.tokens.end(), b.tokens.begin(), b.tokens.end());
    all.act.insert(all.act.end(), b.act.begin(), b.act.end());
    all.wantLogits.insert(all.wantLogits.end(), b.wantLogits.begin(), b.wantLogits.end());
  }
  ops::BatchOut out;
  const auto start = std::chrono::steady_clock::now();
  stage.forward(ops::BatchIn{all.seq, all.pos, all.tokens, all.act, all.wantLogits}, out);
  const auto end = std::chrono::steady_clock::now();
  const auto& cfg = stage.config();
  const size_t actRow = cfg.nEmbd, logitRow = cfg.nVocab;
  size_t actAt = 0, logitAt = 0;
  for (Work* w : ws) {
    const size_t n = w->batch.size();
    size_t wanted = 0;
    for (uint8_t x : w->batch.wantLogits) wanted += x != 0;
    if (!out.act.empty()) {
      w->out.act.assign(out.act.begin() + actAt * actRow, out.act.begin() + (actAt + n) * actRow);
    }
    if (!out.logits.empty()) {
      w->out.logits.assign(out.logits.begin() + logitAt * logitRow,
                           out.logits.begin() + (logitAt + wanted) * logitRow);
    }
    actAt += n;
    logitAt += wanted;
    w->start = start;
    w->end = end;
    w->computeSeconds = seconds(end - start) * double(n) / double(all.size());
    w->merged = true;
  }
}

}  // namespace

// Batches handed to the compute thread and not yet started. The loop thread adds, the compute
// thread takes; each entry's fulfiller resolves its forward() call's compute step.
struct StageServer::MergeQueue {
  struct Entry {
    std::shared_ptr<Work> work;
    kj::Own<kj::CrossThreadPromiseFulfiller<void>> done;
  };
  std::mutex m;
  std::deque<Entry> waiting;

  // On the compute thread: runs every waiting batch (up to kMaxMergedTokens tokens, at least
  // one batch) as one. Where the merged batch fails, each runs alone so that only a bad batch
  // gets the error.
  void drain(ops::Stage& stage) {
    std::vector<Entry> take;
    {
      std::lock_guard<std::mutex> lock(m);
      size_t tokens = 0;
      while (!waiting.empty() &&
             (take.empty() || tokens + waiting.front().work->batch.size() <= kMaxMergedTokens)) {
        tokens += waiting.front().work->batch.size();
        take.push_back(std::move(waiting.front()));
        waiting.pop_front();
      }
    }
    if (take.empty()) return;  // an earlier drain took this call's batch
    auto reject = [](Entry& e, const char* what) {
      e.done->reject(proto::rpcError(what));
    };
    if (take.size() > 1) {
      std::vector<Work*> ws;
      for (auto& e : take) ws.push_back(e.work.get());
      bool ok = true;
      try {
        computeMerged(stage, ws);
      } catch (const std::exception&) {
        ok = false;  // some batch is bad: find which, one by one
      }
      if (ok) {
        for (auto& e : take) e.done->fulfill();
        return;
      }
    }
    for (auto& e : take) {
      try {
        computeOne(stage, *e.work);
        e.done->fulfill();
      } catch (const std::exception& ex) {
        reject(e, ex.what());
      } catch (...) {
        reject(e, "compute failed");
      }
    }
  }
};

StageServer::StageServer(std::unique_ptr<ops::Stage> stage, unsigned threads, std::string machine,
                         uint32_t shardId, StageLimits limits, HopResolver resolver,
                         StageInstruments instruments, ComputeThread* compute)
    : stage_(std::move(stage)), compute_(compute), sendTail_(kj::Promise<void>(kj::READY_NOW).fork()),
      threads_(threads), machine_(std::move(machine)), shardId_(shardId),
      limits_(limits), resolver_(std::move(resolver)), m_(instruments),
      merge_(std::make_shared<MergeQueue>()) {
  stats_.shardId = shardId_;
  stats_.layerBegin = stage_->range().layerBegin;
  stats_.layerEnd = stage_->range().layerEnd;
}

StageServer::~StageServer() = default;

proto::StageInfoData StageServer::info() const {
  proto::StageInfoData s;
  s.layerBegin = stage_->range().layerBegin;
  s.layerEnd = stage_->range().layerEnd;
  s.embed = stage_->range().embed;
  s.head = stage_->range().head;
  s.kernel = stage_->kernelName();
  s.weightBytes = stage_->weightBytes();
  s.threads = threads_;
  s.machine = machine_;
  s.shardId = shardId_;
  s.kvBytesPerToken = stage_->kvBytesPerToken();
  if (limits_.maxSequences != UINT32_MAX && limits_.nCtx != UINT32_MAX) {
    s.kvBudgetBytes = s.kvBytesPerToken * limits_.nCtx * limits_.maxSequences;
  }
  return s;
}

uint64_t StageServer::kvBytes() const {
  uint64_t n = 0;
  for (const auto& [seq, ctx] : seqCtx_) n += uint64_t{ctx} * stage_->kvBytesPerToken();
  return n;
}

proto::StageStatsData StageServer::stats() const {
  proto::StageStatsData s = stats_;
  s.sequences = static_cast<uint32_t>(seqCtx_.size());
  s.kvBytes = kvBytes();
  return s;
}

void StageServer::resetStats() {
  const auto keep = stats_;
  stats_ = {};
  stats_.shardId = keep.shardId;
  stats_.layerBegin = keep.layerBegin;
  stats_.layerEnd = keep.layerEnd;
  busySeen_ = false;
}

kj::Promise<void> StageServer::enqueue(std::function<void()> fn) {
  if (compute_ != nullptr) return compute_->run(std::move(fn));
  try {
    fn();
  } catch (const std::exception& e) {
    return proto::rpcError(e.what());
  }
  return kj::READY_NOW;
}

void StageServer::updateGauges() {
  if (m_.kvBytes) m_.kvBytes->Set(static_cast<double>(kvBytes()));
  if (m_.sequences) m_.sequences->Set(static_cast<double>(seqCtx_.size()));
}

kj::Promise<void> StageServer::hello(HelloContext context) {
  proto::checkPeerVersion(context.getParams().getVersion());
  auto results = context.getResults();
  results.setVersion(proto::PROTOCOL_VERSION);
  proto::writeStageInfo(info(), results.initInfo());
  return kj::READY_NOW;
}

kj::Promise<void> StageServer::openSequence(OpenSequenceContext context) {
  auto p = context.getParams();
  const uint64_t seq = p.getSeqId();
  const uint32_t maxLen = p.getMaxLen();
  if (maxLen > limits_.nCtx) {
    if (m_.errors) m_.errors->Increment();
    fail("openSequence " + std::to_string(seq) + ": maxLen " + std::to_string(maxLen) +
         " is over this shard's context of " + std::to_string(limits_.nCtx) + " positions");
  }
  if (seqCtx_.size() >= limits_.maxSequences && !seqCtx_.count(seq)) {
    if (m_.errors) m_.errors->Increment();
    fail("openSequence " + std::to_string(seq) + ": the KV cache is full: " +
         std::to_string(seqCtx_.size()) + " sequences open, this shard holds at most " +
         std::to_string(limits_.maxSequences));
  }
  if (seqCtx_.count(seq)) {
    if (m_.errors) m_.errors->Increment();
    fail("openSequence: sequence " + std::to_string(seq) + " is already open");
  }
  if (maxLen == 0) fail("openSequence " + std::to_string(seq) + ": maxLen is 0");
  // Takes effect after the batches already queued; the loop's view (seqCtx_) changes now, so the
  // batches that arrive after this call are checked against it.
  seqCtx_[seq] = maxLen;
  updateGauges();
  auto stage = stage_;
  return enqueue([stage, seq, maxLen] { stage->openSequence(seq, maxLen); })
      .catch_([this, seq](kj::Exception&& e) {
        seqCtx_.erase(seq);
        updateGauges();
        fail("openSequence: " + std::string(e.getDescription().cStr()));
      });
}

kj::Promise<void> StageServer::closeSequence(CloseSequenceContext context) {
  const uint64_t seq = context.getParams().getSeqId();
  if (!seqCtx_.erase(seq)) fail("closeSequence: unknown sequence " + std::to_string(seq));
  updateGauges();
  auto stage = stage_;
  return enqueue([stage, seq] { stage->closeSequence(seq); }).catch_([](kj::Exception&& e) {
    fail("closeSequence: " + std::string(e.getDescription().cStr()));
  });
}

kj::Promise<void> StageServer::link(LinkContext context) {
  auto hop = context.getParams().getNext();
  const bool head = stage_->range().head;
  switch (hop.which()) {
    case proto::NextHop::SINK:
      if (!head) fail("link: a sink for a stage without the head (layers end at " +
                      std::to_string(stage_->range().layerEnd) + ")");
      sink_ = hop.getSink();
      next_ = nullptr;
      return kj::READY_NOW;
    case proto::NextHop::LOCAL:
    case proto::NextHop::REMOTE: {
      if (head) fail("link: the stage holding the head sends to a sink, not to another stage");
      if (!resolver_) fail("link: this stage cannot reach other stages");
      return guarded("link", [&] { return resolver_(hop); })
          .then([this](proto::Stage::Client next) {
            next_ = kj::mv(next);
            sink_ = nullptr;
          });
    }
  }
  fail("link: unknown kind of hop");
}

kj::Promise<void> StageServer::forward(ForwardContext context) {
  const auto t0 = Clock::now();
  auto fails = [&](const std::string& msg) {
    if (m_.errors) m_.errors->Increment();
    fail(msg);
  };
  auto params = context.getParams();
  const auto& range = stage_->range();
  if (range.head && sink_ == nullptr) fails("forward: the stage is not linked to a sink");
  if (!range.head && next_ == nullptr) fails("forward: the stage is not linked to a next stage");

  proto::BatchData batch;
  try {
    batch = proto::readBatch(params.getBatch());
  } catch (const std::exception& e) {
    fails(std::string("forward: ") + e.what());
  }
  const uint32_t nEmbd = stage_->config().nEmbd;
  if (range.embed && batch.tokens.empty()) fails("forward: the first stage needs batch.tokens");
  if (!range.embed && batch.act.empty()) fails("forward: batch.activations missing");
  if (!range.embed && batch.nEmbd != nEmbd) {
    fails("forward: batch.nEmbd " + std::to_string(batch.nEmbd) + ", model has " +
          std::to_string(nEmbd));
  }
  for (uint64_t s : batch.seq) {
    if (!seqCtx_.count(s)) fails("forward: unknown sequence " + std::to_string(s));
  }

  auto work = std::make_shared<Work>();
  work->batch = std::move(batch);
  const double decodeSeconds = seconds(Clock::now() - t0);
  kj::Promise<void> computed = nullptr;
  if (compute_ != nullptr) {
    auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
    {
      std::lock_guard<std::mutex> lock(merge_->m);
      merge_->waiting.push_back({work, kj::mv(paf.fulfiller)});
    }
    compute_->post([merge = merge_, stage = stage_] { merge->drain(*stage); });
    computed = kj::mv(paf.promise);
  } else {
    computed = enqueue([stage = stage_, work] { computeOne(*stage, *work); });
  }

  // Sends go out in arrival order: after this batch's compute and the previous batch's send.
  auto downstream = std::make_shared<kj::Promise<void>>(nullptr);
  auto sent = sendTail_.addBranch()
                  .then([computed = kj::mv(computed)]() mutable {
                    return computed.catch_([](kj::Exception&& e) {
                      fail("forward: " + std::string(e.getDescription().cStr()));
                    });
                  })
                  .then([this, work, downstream, decodeSeconds]() mutable {
                    const auto tSend = Clock::now();
                    proto::BatchData& b = work->batch;
                    const auto& range = stage_->range();
                    const uint64_t inBytes =
                        b.tokens.size() * sizeof(int32_t) + b.act.size() * sizeof(float);
                    const size_t nTokens = b.seq.size();
                    uint64_t outBytes = 0;
                    if (range.head) {
                      proto::LogitsData logits;
                      logits.batchId = b.id;
                      logits.nVocab = stage_->config().nVocab;
                      for (size_t i = 0; i < b.size(); ++i) {
                        if (b.wantLogits[i] == 0) continue;
                        logits.seq.push_back(b.seq[i]);
                        logits.pos.push_back(b.pos[i]);
                      }
                      logits.data = std::move(work->out.logits);
                      outBytes = logits.data.size() * sizeof(float);
                      KJ_IF_MAYBE(s, sink_) {
                        auto req = s->deliverRequest();
                        guarded("forward", [&] { proto::writeLogits(logits, req.initLogits()); });
                        *downstream = req.send().ignoreResult();
                      }
                    } else {
                      proto::BatchData nb;
                      nb.id = b.id;
                      nb.seq = std::move(b.seq);
                      nb.pos = std::move(b.pos);
                      nb.nEmbd = stage_->config().nEmbd;
                      nb.act = std::move(work->out.act);
                      nb.wantLogits = std::move(b.wantLogits);
                      outBytes = nb.act.size() * sizeof(float);
                      KJ_IF_MAYBE(n, next_) {
                        auto req = n->forwardRequest();
                        guarded("forward", [&] { proto::writeBatch(nb, req.initBatch()); });
                        *downstream = req.send().ignoreResult();
                      }
                    }
                    const double compute = work->computeSeconds;
                    stats_.batches += 1;
                    if (work->merged) {
                      stats_.mergedBatches += 1;
                      if (m_.merged) m_.merged->Increment();
                    }
                    stats_.tokens += nTokens;
                    stats_.computeSeconds += compute;
                    stats_.transferSeconds += decodeSeconds + seconds(Clock::now() - tSend);
                    // Idle time of the team between the previous batch and this one (none within
                    // a merged batch: they share start and end).
                    if (busySeen_) stats_.waitSeconds += std::max(0.0, seconds(work->start - lastDone_));
                    stats_.bytesIn += inBytes;
                    stats_.bytesOut += outBytes;
                    busySeen_ = true;
                    lastDone_ = work->end;
                    if (m_.tokens) m_.tokens->Increment(static_cast<double>(nTokens));
                    if (m_.batches) m_.batches->Increment();
                    if (m_.forwardSeconds) m_.forwardSeconds->Observe(compute);
                    if (m_.batchTokens) m_.batchTokens->Observe(static_cast<double>(nTokens));
                    if (m_.bytesIn) m_.bytesIn->Increment(static_cast<double>(inBytes));
                    if (m_.bytesOut) m_.bytesOut->Increment(static_cast<double>(outBytes));
                  })
                  .fork();
  sendTail_ = sent.addBranch().catch_([](kj::Exception&&) {}).fork();

  ++inFlight_;
  if (m_.queueDepth) m_.queueDepth->Set(static_cast<double>(inFlight_));
  return sent.addBranch()
      .then([downstream]() mutable { return kj::mv(*downstream); })
      .then(
          [this]() {
            --inFlight_;
            if (m_.queueDepth) m_.queueDepth->Set(static_cast<double>(inFlight_));
          },
          [this](kj::Exception&& e) {
            --inFlight_;
            if (m_.queueDepth) m_.queueDepth->Set(static_cast<double>(inFlight_));
            if (m_.errors) m_.errors->Increment();
            kj::throwFatalException(kj::mv(e));
          });
}

}  // namespace tern::worker
