#include "coordinator/engine.hpp"

#include "coordinator/metrics.hpp"
#include "protocol/handshake.hpp"

#include <kj/async.h>
#include <kj/debug.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <exception>
#include <map>
#include <optional>
#include <stdexcept>
#include <utility>

namespace tern::coord {
namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Bytes of one message's payload the engine aims for: half the wire budget.
constexpr uint64_t kTargetPayloadBytes = proto::kMaxPayloadBytes / 2;
// Prompt tokens are spread over the free pipeline slots, but not in chunks smaller than this
// (a chunk costs a pass over every stage's weights).
constexpr uint32_t kMinPromptChunk = 16;

// Length of the prefix of s that ends on a UTF-8 character boundary.
size_t completeUtf8Prefix(const std::string& s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    const size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return back < len ? n - back : n;
  }
  return n;  // no lead byte within 4 bytes: not UTF-8, pass it through
}

std::string describe(const kj::Exception& e) { return e.getDescription().cStr(); }

// Receives the last stage's logits, keyed by batch id; the engine takes them when the batch's
// forward() returns. Holds no pointer into the engine, so it may outlive it.
class LogitsSink final : public proto::Sink::Server {
 public:
  explicit LogitsSink(uint32_t nVocab) : nVocab_(nVocab) {}

  std::optional<proto::LogitsData> take(uint64_t batchId) {
    auto it = got_.find(batchId);
    if (it == got_.end()) return std::nullopt;
    proto::LogitsData l = std::move(it->second);
    got_.erase(it);
    return l;
  }

 protected:
  kj::Promise<void> deliver(DeliverContext context) override {
    std::string err;
    try {
      proto::LogitsData l = proto::readLogits(context.getParams().getLogits());
      if (l.nVocab != nVocab_) {
        err = "deliver: logits rows of " + std::to_string(l.nVocab) + " values, the model has " +
              std::to_string(nVocab_);
      } else if (got_.count(l.batchId)) {
        err = "deliver: logits of batch " + std::to_string(l.batchId) + " delivered twice";
      } else {
        const uint64_t id = l.batchId;
        got_.emplace(id, std::move(l));
      }
    } catch (const std::exception& e) {
      err = std::string("deliver: ") + e.what();
    }
    if (!err.empty()) {
      proto::throwRpcError(err);
    }
    return kj::READY_NOW;
  }

 private:
  uint32_t nVocab_;
  std::map<uint64_t, proto::LogitsData> got_;
};

}  // namespace

std::string TextStream::push(TokenId id) {
  std::string piece = tok_.tokenToPiece(id);
  if (!started_ && !piece.empty()) {
    started_ = true;
    const Vocab& v = tok_.vocab();
    if (v.model == "llama" && v.addSpacePrefix && piece[0] == ' ') piece.erase(0, 1);
  }
  pending_ += piece;
  const size_t cut = completeUtf8Prefix(pending_);
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

std::string TextStream::flush() { return std::exchange(pending_, {}); }

struct Engine::Impl final : public kj::TaskSet::ErrorHandler {
  // A queued or running turn of one sequence.
  struct Turn {
    std::vector<TokenId> queue;  // tokens to send: the turn's input, later the sampled token
    size_t at = 0;               // queue[0, at) are sent
    bool decoding = false;       // queue holds a sampled token (not input)
    int nPredict = 0;
    GenerateCallbacks cb;
    std::function<void(const TurnResult&)> done;
    TurnResult result;
    Clock::time_point t0;    // feed()
    Clock::time_point tGen;  // first sample
    bool sampled = false;
    bool ready() const { return at < queue.size(); }
    size_t left() const { return queue.size() - at; }
  };

  struct Seq {
    Seq(uint64_t id, const SamplingParams& p, const Tokenizer& tok)
        : id(id), sampler(p), stream(tok) {}
    uint64_t id;
    Sampler sampler;
    TextStream stream;
    std::vector<TokenId> history;  // every id of the sequence, fed or pending
    std::vector<TokenId> pending;  // sampled, not yet fed (at most one)
    uint32_t sent = 0;             // positions sent to the pipeline (= KV length once done)
    uint32_t samplePos = UINT32_MAX;  // position whose logits row is sampled from
    bool broken = false;           // a turn failed: the stages' state is unknown
    bool closing = false;          // closeAsync(): closed once no batch of it is in flight
    std::vector<kj::Own<kj::PromiseFulfiller<void>>> closers;  // closeAsync() promises
    std::optional<Turn> turn;
  };

  // A micro-batch in the pipeline, in send order.
  struct Flight {
    uint64_t id = 0;
    std::vector<uint64_t> seq;  // [n]
    std::vector<uint32_t> pos;  // [n]
    std::vector<uint8_t> want;  // [n]
    Clock::time_point t0;
    bool done = false;
    std::string error;  // the stage's error, when forward() failed
    uint64_t epoch = 0;  // failTurns() calls before it was sent
  };

  Impl(Engine& engine, const ModelConfig& cfg, const Tokenizer& tok, kj::WaitScope& ws)
      : self(engine), cfg(cfg), tok(tok), ws(ws), sinkCap(nullptr), tasks(*this) {
    auto sinkServer = kj::heap<LogitsSink>(cfg.nVocab);
    sink = sinkServer.get();
    sinkCap = kj::mv(sinkServer);
    if (self.opts_.metrics) metrics = makeEngineMetrics(*self.opts_.metrics);
  }

  void taskFailed(kj::Exception&& e) override { fail(describe(e)); }

  // --- errors -----------------------------------------------------------------------------
  void fail(std::string msg) {
    if (!failed) {
      failed = true;
      errorMessage = std::move(msg);
    }
  }
  void fail(std::exception_ptr e) {
    if (!failed) {
      failed = true;
      errorPtr = std::move(e);
    }
  }
  // Runs f; an exception (a callback's, a sampler's) fails the run.
  template <typename F>
  void guarded(F&& f) {
    try {
      f();
    } catch (const kj::Exception& e) {
      fail(describe(e));
    } catch (...) {
      fail(std::current_exception());
    }
  }

  // --- batch formation ----------------------------------------------------------------------
  size_t activeTurns() const {
    size_t n = 0;
    for (const auto& [id, s] : seqs) n += s.turn.has_value();
    return n;
  }

  void updateGauges() {
    if (metrics.inflight) metrics.inflight->Set(static_cast<double>(flights.size()));
    if (metrics.sequencesActive) metrics.sequencesActive->Set(static_cast<double>(activeTurns()));
  }

  // Forms and sends micro-batches while there are free slots and ready sequences.
  void fill() {
    while (!failed && flights.size() < inFlightLimit) {
      proto::BatchData b = form(inFlightLimit - flights.size());
      if (b.size() == 0) break;
      send(std::move(b));
    }
    updateGauges();
  }

  // One micro-batch for one of `free` slots: a share of the ready decode tokens, then prompt
  // chunks, within maxBatchTokens and the payload budgets. Empty when nothing is ready.
  proto::BatchData form(size_t free) {
    std::vector<Seq*> decode, prompt;
    for (auto& [id, s] : seqs) {
      if (!s.turn || !s.turn->ready()) continue;
      (s.turn->decoding ? decode : prompt).push_back(&s);
    }
    proto::BatchData b;
    if (decode.empty() && prompt.empty()) return b;
    const uint64_t actCap = std::max<uint64_t>(1, kTargetPayloadBytes / (uint64_t{cfg.nEmbd} * 4));
    const uint64_t rowCap = std::max<uint64_t>(1, kTargetPayloadBytes / (uint64_t{cfg.nVocab} * 4));
    uint64_t tokensLeft = std::min<uint64_t>(std::max<uint32_t>(1, self.opts_.maxBatchTokens), actCap);
    uint64_t rowsLeft = rowCap;
    b.id = ++nextBatchId;

    auto add = [&](Seq& s, TokenId t, bool want) {
      b.seq.push_back(s.id);
      b.pos.push_back(s.sent++);
      b.tokens.push_back(t);
      b.wantLogits.push_back(want ? 1 : 0);
    };

    // Decode: ceil(ready / free) sequences, so every ready one goes out in this round of slots.
    const size_t nDecode = std::min<uint64_t>({(decode.size() + free - 1) / free, tokensLeft, rowsLeft});
    const size_t startD = decode.empty() ? 0 : rrDecode++ % decode.size();
    for (size_t k = 0; k < nDecode; ++k) {
      Seq& s = *decode[(startD + k) % decode.size()];
      Turn& t = *s.turn;
      add(s, t.queue[t.at++], true);
      s.samplePos = b.pos.back();
      s.pending.clear();
      --tokensLeft;
      --rowsLeft;
    }

    // Prompt chunks: the ready prompt tokens spread over the free slots.
    if (!prompt.empty() && tokensLeft > 0 && rowsLeft > 0) {
      uint64_t total = 0;
      for (Seq* s : prompt) total += s->turn->left();
      uint64_t budget = std::max<uint64_t>((total + free - 1) / free, kMinPromptChunk);
      budget = std::min(budget, tokensLeft);
      const size_t startP = rrPrompt++ % prompt.size();
      for (size_t k = 0; k < prompt.size() && budget > 0 && rowsLeft > 0; ++k) {
        Seq& s = *prompt[(startP + k) % prompt.size()];
        Turn& t = *s.turn;
        const bool allRows = static_cast<bool>(t.cb.onLogits);
        uint64_t n = std::min<uint64_t>(budget, t.left());
        if (allRows) n = std::min(n, rowsLeft);
        for (uint64_t i = 0; i < n; ++i) add(s, t.queue[t.at++], allRows || i + 1 == n);
        budget -= n;
        rowsLeft -= allRows ? n : 1;
        promptTokensSent += n;
        if (!t.ready()) s.samplePos = b.pos.back();  // the input's last token
      }
    }
    return b;
  }

  void send(proto::BatchData b) {
    auto req = self.stages_[0].forwardRequest();
    proto::writeBatch(b, req.initBatch());
    Flight f;
    f.id = b.id;
    f.seq = std::move(b.seq);
    f.pos = std::move(b.pos);
    f.want = std::move(b.wantLogits);
    f.t0 = Clock::now();
    f.epoch = turnFailures;
    const size_t n = f.seq.size();
    std::vector<uint64_t> distinct = f.seq;
    std::sort(distinct.begin(), distinct.end());
    const auto nSeqs = std::unique(distinct.begin(), distinct.end()) - distinct.begin();
    counters.maxSequencesInBatch = std::max<uint32_t>(counters.maxSequencesInBatch, static_cast<uint32_t>(nSeqs));
    flights.push_back(std::move(f));
    counters.batches += 1;
    counters.tokens += n;
    counters.maxInFlight = std::max<uint32_t>(counters.maxInFlight, static_cast<uint32_t>(flights.size()));
    if (metrics.batches) metrics.batches->Increment();
    if (metrics.batchTokens) metrics.batchTokens->Observe(static_cast<double>(n));
    if (metrics.sentBytes) metrics.sentBytes->Increment(static_cast<double>(n * sizeof(int32_t)));
    if (metrics.promptTokens && promptTokensSent > 0) {
      metrics.promptTokens->Increment(static_cast<double>(promptTokensSent));
    }
    promptTokensSent = 0;
    const uint64_t id = flights.back().id;
    tasks.add(req.send().then([this, id](auto&&) { landed(id, {}); },
                              [this, id](kj::Exception&& e) { landed(id, describe(e)); }));
  }

  // --- results ------------------------------------------------------------------------------
  // A batch's forward() returned. Results are handled in send order.
  void landed(uint64_t id, std::string error) {
    for (auto& f : flights) {
      if (f.id != id) continue;
      f.done = true;
      f.error = std::move(error);
      if (metrics.stepSeconds) metrics.stepSeconds->Observe(secondsSince(f.t0));
      break;
    }
    while (!flights.empty() && flights.front().done) {
      Flight f = std::move(flights.front());
      flights.pop_front();
      std::optional<proto::LogitsData> logits = sink->take(f.id);
      if (!f.error.empty()) {
        // Serving: a batch sent before the last failTurns() carries only sequences whose turns
        // that call already failed (or closeAsync() dropped); its error is the same failure
        // arriving late (e.g. the other prompt chunks of a broken sequence) and must not fail
        // the turns fed since.
        if (!serving || f.epoch == turnFailures) fail(f.error);
      } else if (!failed) {
        guarded([&] { handle(f, logits); });
      }
    }
    if (serving) {
      if (failed) failTurns();
      closeFinished();
      guarded([&] { fill(); });
      if (failed) failTurns();
      return;
    }
    guarded([&] { fill(); });
    if (flights.empty() && (failed || activeTurns() == 0 || !anyReady())) {
      if (!failed && activeTurns() > 0) fail(std::string("engine: turns left but nothing to send"));
      KJ_IF_MAYBE(f, idle) {
        (*f)->fulfill();
        idle = nullptr;
      }
    }
  }

  bool anyReady() const {
    for (const auto& [id, s] : seqs) {
      if (s.turn && s.turn->ready()) return true;
    }
    return false;
  }

  void handle(const Flight& f, std::optional<proto::LogitsData>& logits) {
    size_t wanted = 0;
    for (uint8_t w : f.want) wanted += w != 0;
    if (!logits || logits->rows() != wanted) {
      throw std::runtime_error("the last stage delivered " +
                               (logits ? std::to_string(logits->rows()) + " logits rows"
                                       : std::string("no logits")) +
                               " for batch " + std::to_string(f.id) + ", expected " +
                               std::to_string(wanted) + " rows");
    }
    if (metrics.receivedBytes) {
      metrics.receivedBytes->Increment(static_cast<double>(logits->data.size() * sizeof(float)));
    }
    const uint32_t nVocab = cfg.nVocab;
    size_t r = 0;
    for (size_t i = 0; i < f.seq.size(); ++i) {
      if (!f.want[i]) continue;
      if (logits->seq[r] != f.seq[i] || logits->pos[r] != f.pos[i]) {
        throw std::runtime_error("logits row " + std::to_string(r) + " of batch " +
                                 std::to_string(f.id) + " is for sequence " +
                                 std::to_string(logits->seq[r]) + " position " +
                                 std::to_string(logits->pos[r]) + ", expected sequence " +
                                 std::to_string(f.seq[i]) + " position " + std::to_string(f.pos[i]));
      }
      std::span<const float> row(logits->data.data() + r * nVocab, nVocab);
      ++r;
      auto it = seqs.find(f.seq[i]);
      if (it == seqs.end() || !it->second.turn) continue;
      Seq& s = it->second;
      if (s.turn->cb.onLogits) s.turn->cb.onLogits(row);
      if (f.pos[i] == s.samplePos) sample(s, row);
    }
  }

  // The row after the input's last token (or after a fed sampled token): sample and go on, or
  // end the turn.
  void sample(Seq& s, std::span<const float> row) {
    Turn& t = *s.turn;
    s.samplePos = UINT32_MAX;
    if (static_cast<int>(t.result.genTokens) >= t.nPredict) return finish(s, StopReason::Limit);
    const TokenId id = s.sampler.sample(row, s.history);
    if (!t.sampled) {
      t.sampled = true;
      t.tGen = Clock::now();
      t.result.promptSeconds = std::chrono::duration<double>(t.tGen - t.t0).count();
      if (metrics.timeToFirstToken) metrics.timeToFirstToken->Observe(t.result.promptSeconds);
    }
    if (metrics.tokensGenerated) metrics.tokensGenerated->Increment();
    t.result.generated.push_back(id);
    s.history.push_back(id);
    s.pending = {id};
    if (t.cb.onToken) t.cb.onToken(id);
    if (tok.isEog(id)) {
      if (t.cb.onSample) t.cb.onSample(id, row);
      return finish(s, StopReason::EndOfGeneration);
    }
    ++t.result.genTokens;
    emit(t, s.stream.push(id));
    if (t.cb.onSample) t.cb.onSample(id, row);
    if (static_cast<int>(t.result.genTokens) == t.nPredict) return finish(s, StopReason::Limit);
    if (s.sent >= self.opts_.nCtx) return finish(s, StopReason::Context);
    t.queue = {id};
    t.at = 0;
    t.decoding = true;
  }

  // --- serving -----------------------------------------------------------------------------
  // Fails every turn in progress with the engine's error (their sequences' KV caches are in an
  // unknown state) and clears the error: the engine serves on.
  void failTurns() {
    std::string msg = errorMessage;
    if (errorPtr) {
      try {
        std::rethrow_exception(errorPtr);
      } catch (const std::exception& e) {
        msg = e.what();
      } catch (...) {
        msg = "unknown error";
      }
    }
    if (msg.empty()) msg = "engine: failed";
    ++turnFailures;
    failed = false;
    errorMessage.clear();
    errorPtr = nullptr;
    std::vector<Turn> broken;
    for (auto& [id, s] : seqs) {
      if (!s.turn) continue;
      broken.push_back(std::move(*s.turn));
      s.turn.reset();
      s.broken = true;
      s.samplePos = UINT32_MAX;
    }
    for (Turn& t : broken) {
      t.result.error = msg;
      if (t.done) t.done(t.result);
    }
    updateGauges();
  }

  // Sends what is ready on the next turn of the event loop (never inside a caller's callback).
  void kick() {
    if (kickScheduled) return;
    kickScheduled = true;
    tasks.add(kj::evalLater([this] {
      kickScheduled = false;
      guarded([&] { fill(); });
      if (failed) failTurns();
    }));
  }

  bool inFlight(uint64_t seq) const {
    for (const auto& f : flights) {
      if (std::find(f.seq.begin(), f.seq.end(), seq) != f.seq.end()) return true;
    }
    return false;
  }

  // Closes, on every stage, the sequences closeAsync() ended once none of their batches is left
  // in the pipeline.
  void closeFinished() {
    std::vector<uint64_t> ids;
    for (const auto& [id, s] : seqs) {
      if (s.closing && !inFlight(id)) ids.push_back(id);
    }
    for (uint64_t id : ids) {
      auto it = seqs.find(id);
      auto closers = std::move(it->second.closers);
      seqs.erase(it);
      auto shared = std::make_shared<decltype(closers)>(std::move(closers));
      tasks.add(closeOnStages(id).then(
          [shared] {
            for (auto& f : *shared) f->fulfill();
          },
          [shared](kj::Exception&& e) {
            for (auto& f : *shared) f->reject(kj::cp(e));
          }));
    }
    updateGauges();
  }

  kj::Promise<void> closeOnStages(uint64_t id) {
    auto ps = kj::heapArrayBuilder<kj::Promise<void>>(self.stages_.size());
    for (auto& stage : self.stages_) {
      auto req = stage.closeSequenceRequest();
      req.setSeqId(id);
      ps.add(req.send().ignoreResult());
    }
    return kj::joinPromises(ps.finish());
  }

  static void emit(Turn& t, std::string text) {
    if (!text.empty() && t.cb.onText) t.cb.onText(text);
  }

  void finish(Seq& s, StopReason why) {
    Turn t = std::move(*s.turn);
    s.turn.reset();
    emit(t, s.stream.flush());
    t.result.stop = why;
    if (t.sampled) {
      t.result.genSeconds = secondsSince(t.tGen);
    } else {
      t.result.promptSeconds = secondsSince(t.t0);
    }
    if (t.done) t.done(t.result);
  }

  Engine& self;
  const ModelConfig& cfg;
  const Tokenizer& tok;
  kj::WaitScope& ws;
  LogitsSink* sink = nullptr;  // owned by sinkCap
  proto::Sink::Client sinkCap;
  EngineMetrics metrics;
  std::vector<proto::StageInfoData> infos;
  std::map<uint64_t, Seq> seqs;
  uint64_t nextSeqId = 0, nextBatchId = 0;
  size_t inFlightLimit = 1;
  size_t rrDecode = 0, rrPrompt = 0;
  uint64_t promptTokensSent = 0;  // in the batch being formed
  std::deque<Flight> flights;
  Counters counters;
  bool running = false;
  bool serving = false;        // serve(): continuous, errors fail turns, not the engine
  bool kickScheduled = false;
  uint64_t turnFailures = 0;   // failTurns() calls (a Flight's epoch)
  bool failed = false;
  std::string errorMessage;
  std::exception_ptr errorPtr;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> idle;
  kj::TaskSet tasks;  // last: destroyed first, cancelling what is still in flight
};

Engine::Engine(const ModelConfig& cfg, const Tokenizer& tok, std::vector<proto::Stage::Client> stages,
               kj::WaitScope& waitScope, EngineOptions opts)
    : stages_(std::move(stages)), opts_(std::move(opts)) {
  if (stages_.empty()) throw std::invalid_argument("engine: no stages");
  if (opts_.nCtx == 0) opts_.nCtx = cfg.nCtxTrain;
  if (opts_.maxBatchTokens == 0) opts_.maxBatchTokens = 1;
  if (opts_.inFlight == 0) opts_.inFlight = static_cast<uint32_t>(stages_.size());
  impl_ = std::make_unique<Impl>(*this, cfg, tok, waitScope);
  impl_->inFlightLimit = opts_.inFlight;
}

Engine::~Engine() {
  std::vector<uint64_t> open;
  for (const auto& [id, s] : impl_->seqs) open.push_back(id);
  for (uint64_t id : open) {
    try {
      close(id);
    } catch (...) {  // a destructor must not throw; the stages free the sequence when they go
    }
  }
}

const std::vector<proto::StageInfoData>& Engine::hello() {
  Impl& m = *impl_;
  if (!m.infos.empty()) return m.infos;
  std::vector<proto::StageInfoData> infos;
  try {
    for (auto& stage : stages_) infos.push_back(proto::hello(stage).wait(m.ws));
  } catch (const kj::Exception& e) {
    throw std::runtime_error("stage hello: " + describe(e));
  }
  uint32_t next = 0;
  for (size_t i = 0; i < infos.size(); ++i) {
    const auto& s = infos[i];
    const bool first = i == 0, last = i + 1 == infos.size();
    if (s.layerBegin != next || s.embed != first || s.head != last) {
      throw std::runtime_error("stage " + std::to_string(i) + " holds layers [" +
                               std::to_string(s.layerBegin) + ", " + std::to_string(s.layerEnd) +
                               ") embed=" + std::to_string(s.embed) + " head=" +
                               std::to_string(s.head) + ": the stages do not form a pipeline");
    }
    next = s.layerEnd;
  }
  if (next != m.cfg.nLayer) {
    throw std::runtime_error("the stages cover layers [0, " + std::to_string(next) +
                             "), the model has " + std::to_string(m.cfg.nLayer));
  }
  try {
    auto req = stages_.back().linkRequest();
    req.initNext().setSink(m.sinkCap);
    req.send().wait(m.ws);
  } catch (const kj::Exception& e) {
    throw std::runtime_error("linking the last stage to the coordinator: " + describe(e));
  }
  m.infos = std::move(infos);
  return m.infos;
}

uint64_t Engine::open(const SamplingParams& params) {
  hello();
  Impl& m = *impl_;
  Impl::Seq seq(m.nextSeqId + 1, params, m.tok);  // validates params
  const uint64_t id = ++m.nextSeqId;
  size_t opened = 0;
  try {
    for (auto& stage : stages_) {
      auto req = stage.openSequenceRequest();
      req.setSeqId(id);
      req.setMaxLen(opts_.nCtx);
      req.send().wait(m.ws);
      ++opened;
    }
  } catch (const kj::Exception& e) {
    for (size_t i = 0; i < opened; ++i) {
      try {
        auto req = stages_[i].closeSequenceRequest();
        req.setSeqId(id);
        req.send().wait(m.ws);
      } catch (const kj::Exception&) {
      }
    }
    throw std::runtime_error("opening sequence " + std::to_string(id) + " on stage " +
                             std::to_string(opened) + ": " + describe(e));
  }
  m.seqs.emplace(id, std::move(seq));
  m.updateGauges();
  return id;
}

void Engine::feed(uint64_t seqId, std::span<const TokenId> tokens, int nPredict, GenerateCallbacks cb,
                  std::function<void(const TurnResult&)> done) {
  Impl& m = *impl_;
  auto it = m.seqs.find(seqId);
  if (it == m.seqs.end()) throw std::invalid_argument("feed: unknown sequence " + std::to_string(seqId));
  Impl::Seq& s = it->second;
  if (s.broken) {
    throw std::invalid_argument("feed: sequence " + std::to_string(seqId) +
                                " failed in the pipeline; close it");
  }
  if (s.closing) throw std::invalid_argument("feed: sequence " + std::to_string(seqId) + " is closing");
  if (s.turn) {
    throw std::invalid_argument("feed: sequence " + std::to_string(seqId) + " already has a turn queued");
  }
  if (nPredict < 0) throw std::invalid_argument("nPredict must be >= 0");
  std::vector<TokenId> input = s.pending;
  input.insert(input.end(), tokens.begin(), tokens.end());
  if (input.empty()) throw std::invalid_argument("nothing to feed: the prompt is empty");
  const uint32_t nCtx = opts_.nCtx;
  if (input.size() > nCtx - s.sent) {
    if (s.sent == 0) {
      throw std::invalid_argument("prompt is " + std::to_string(input.size()) + " tokens, context is " +
                                  std::to_string(nCtx));
    }
    throw std::invalid_argument("input is " + std::to_string(input.size()) + " tokens, only " +
                                std::to_string(nCtx - s.sent) + " of the context's " +
                                std::to_string(nCtx) + " positions are left");
  }
  for (TokenId id : input) {
    if (id < 0 || static_cast<uint32_t>(id) >= m.cfg.nVocab) {
      throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary of " +
                                  std::to_string(m.cfg.nVocab));
    }
  }
  s.history.insert(s.history.end(), tokens.begin(), tokens.end());
  Impl::Turn t;
  t.queue = std::move(input);
  t.nPredict = nPredict;
  t.cb = std::move(cb);
  t.done = std::move(done);
  t.result.promptTokens = static_cast<uint32_t>(t.queue.size());
  t.t0 = Clock::now();
  for (TokenId id : tokens) {
    std::string text = s.stream.push(id);
    if (t.cb.echoInput) Impl::emit(t, std::move(text));
  }
  s.turn = std::move(t);
  m.updateGauges();
  if (m.serving) m.kick();
}

void Engine::run() {
  Impl& m = *impl_;
  if (m.running) throw std::logic_error("engine: run() called from inside run()");
  if (m.serving) throw std::logic_error("engine: run() while serving");
  if (!m.anyReady()) return;
  hello();
  m.running = true;
  m.failed = false;
  m.errorMessage.clear();
  m.errorPtr = nullptr;
  m.guarded([&] { m.fill(); });
  if (!m.flights.empty()) {
    auto paf = kj::newPromiseAndFulfiller<void>();
    m.idle = kj::mv(paf.fulfiller);
    paf.promise.wait(m.ws);
  }
  m.running = false;
  m.idle = nullptr;
  m.updateGauges();
  if (!m.failed) return;
  // The turns in progress are failed: their sequences' KV caches are in an unknown state.
  for (auto& [id, s] : m.seqs) {
    if (!s.turn) continue;
    s.turn.reset();
    s.broken = true;
    s.samplePos = UINT32_MAX;
  }
  m.updateGauges();
  if (m.errorPtr) std::rethrow_exception(m.errorPtr);
  throw std::runtime_error(m.errorMessage);
}

void Engine::close(uint64_t seqId) {
  Impl& m = *impl_;
  auto it = m.seqs.find(seqId);
  if (it == m.seqs.end()) throw std::invalid_argument("close: unknown sequence " + std::to_string(seqId));
  if (m.running) throw std::logic_error("engine: close() inside run()");
  if (m.serving) throw std::logic_error("engine: close() while serving (use closeAsync)");
  m.seqs.erase(it);
  m.updateGauges();
  std::string err;
  for (size_t i = 0; i < stages_.size(); ++i) {
    try {
      auto req = stages_[i].closeSequenceRequest();
      req.setSeqId(seqId);
      req.send().wait(m.ws);
    } catch (const kj::Exception& e) {
      if (err.empty()) err = "closing sequence " + std::to_string(seqId) + " on stage " +
                             std::to_string(i) + ": " + describe(e);
    }
  }
  if (!err.empty()) throw std::runtime_error(err);
}

uint32_t Engine::position(uint64_t seqId) const {
  auto it = impl_->seqs.find(seqId);
  if (it == impl_->seqs.end()) throw std::invalid_argument("unknown sequence " + std::to_string(seqId));
  return it->second.sent;
}

void Engine::serve() {
  Impl& m = *impl_;
  if (m.infos.empty()) throw std::logic_error("engine: serve() before hello()");
  if (m.running) throw std::logic_error("engine: serve() inside run()");
  m.serving = true;
}

kj::Promise<uint64_t> Engine::openAsync(const SamplingParams& params) {
  Impl& m = *impl_;
  if (!m.serving) throw std::logic_error("engine: openAsync() before serve()");
  auto seq = std::make_shared<Impl::Seq>(m.nextSeqId + 1, params, m.tok);  // validates params
  const uint64_t id = ++m.nextSeqId;
  auto ps = kj::heapArrayBuilder<kj::Promise<void>>(stages_.size());
  for (size_t i = 0; i < stages_.size(); ++i) {
    auto req = stages_[i].openSequenceRequest();
    req.setSeqId(id);
    req.setMaxLen(opts_.nCtx);
    ps.add(req.send().ignoreResult().catch_([i, id](kj::Exception&& e) -> kj::Promise<void> {
      const std::string msg = "opening sequence " + std::to_string(id) + " on stage " +
                              std::to_string(i) + ": " + describe(e);
      return KJ_EXCEPTION(FAILED, msg.c_str());
    }));
  }
  return kj::joinPromises(ps.finish())
      .then(
          [&m, id, seq]() mutable {
            m.seqs.emplace(id, std::move(*seq));
            m.updateGauges();
            return id;
          },
          [&m, id](kj::Exception&& e) -> uint64_t {
            // Free it where it was opened; a stage that never opened it refuses, which is fine.
            m.tasks.add(m.closeOnStages(id).catch_([](kj::Exception&&) {}));
            kj::throwFatalException(kj::mv(e));
          });
}

kj::Promise<void> Engine::closeAsync(uint64_t seqId) {
  Impl& m = *impl_;
  return kj::evalLater([&m, seqId]() -> kj::Promise<void> {
    auto it = m.seqs.find(seqId);
    if (it == m.seqs.end()) {
      const std::string msg = "close: unknown sequence " + std::to_string(seqId);
      return KJ_EXCEPTION(FAILED, msg.c_str());
    }
    Impl::Seq& s = it->second;
    s.turn.reset();
    s.closing = true;
    auto paf = kj::newPromiseAndFulfiller<void>();
    s.closers.push_back(kj::mv(paf.fulfiller));
    m.closeFinished();
    m.guarded([&] { m.fill(); });  // the slot it held may carry other sequences now
    if (m.failed) m.failTurns();
    return kj::mv(paf.promise);
  });
}

size_t Engine::openSequences() const { return impl_->seqs.size(); }

uint64_t Engine::positionsHeld() const {
  uint64_t n = 0;
  for (const auto& [id, s] : impl_->seqs) n += s.sent;
  return n;
}

Engine::Counters Engine::counters() const { return impl_->counters; }

void Engine::resetCounters() { impl_->counters = {}; }

}  // namespace tern::coord
