#include "coordinator/generator.hpp"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <utility>

namespace tern::coord {
namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Bytes of one message's payload the generator aims for: half the wire budget.
constexpr uint64_t kTargetPayloadBytes = proto::kMaxPayloadBytes / 2;

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

// Receives the last stage's logits; the generator takes them after each forward().
class Generator::LogitsSink final : public proto::Sink::Server {
 public:
  std::vector<proto::LogitsData> take() { return std::exchange(delivered_, {}); }

 protected:
  kj::Promise<void> deliver(DeliverContext context) override {
    try {
      delivered_.push_back(proto::readLogits(context.getParams().getLogits()));
    } catch (const std::exception& e) {
      kj::throwFatalException(kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__,
                                            kj::str("deliver: ", e.what())));
    }
    return kj::READY_NOW;
  }

 private:
  std::vector<proto::LogitsData> delivered_;
};

Generator::Generator(const ModelConfig& cfg, const Tokenizer& tok,
                     std::vector<proto::Stage::Client> stages, kj::WaitScope& waitScope,
                     GeneratorOptions opts)
    : cfg_(cfg), tok_(tok), stages_(std::move(stages)), waitScope_(waitScope), opts_(opts),
      sinkCap_(nullptr) {
  if (stages_.empty()) throw std::invalid_argument("generator: no stages");
  if (opts_.nCtx == 0) opts_.nCtx = cfg_.nCtxTrain;
  if (opts_.microBatch == 0) opts_.microBatch = 1;
  auto sink = kj::heap<LogitsSink>();
  sink_ = sink.get();
  sinkCap_ = kj::mv(sink);
}

Generator::~Generator() {
  if (!open_) return;
  try {
    close();
  } catch (...) {  // a destructor must not throw; the stages free the sequence when they go
  }
}

const std::vector<proto::StageInfoData>& Generator::hello() {
  if (!infos_.empty()) return infos_;
  std::vector<proto::StageInfoData> infos;
  for (auto& stage : stages_) {
    auto req = stage.helloRequest();
    req.setVersion(proto::PROTOCOL_VERSION);
    auto resp = req.send().wait(waitScope_);
    if (resp.getVersion() != proto::PROTOCOL_VERSION) {
      throw std::runtime_error("protocol version mismatch: peer " +
                               std::to_string(resp.getVersion()) + ", ours " +
                               std::to_string(proto::PROTOCOL_VERSION));
    }
    infos.push_back(proto::readStageInfo(resp.getInfo()));
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
  if (next != cfg_.nLayer) {
    throw std::runtime_error("the stages cover layers [0, " + std::to_string(next) +
                             "), the model has " + std::to_string(cfg_.nLayer));
  }
  infos_ = std::move(infos);
  return infos_;
}

void Generator::open(const SamplingParams& params) {
  hello();
  if (open_) close();
  sampler_ = std::make_unique<Sampler>(params);
  ++seqId_;
  for (auto& stage : stages_) {
    auto req = stage.openSequenceRequest();
    req.setSeqId(seqId_);
    req.setMaxLen(opts_.nCtx);
    req.send().wait(waitScope_);
  }
  open_ = true;
  nPast_ = 0;
  history_.clear();
  pending_.clear();
  stream_ = std::make_unique<TextStream>(tok_);
}

void Generator::close() {
  if (!open_) return;
  open_ = false;
  for (auto& stage : stages_) {
    auto req = stage.closeSequenceRequest();
    req.setSeqId(seqId_);
    req.send().wait(waitScope_);
  }
}

proto::LogitsData Generator::forward(std::span<const TokenId> tokens, bool allLogits) {
  proto::BatchData b;
  const size_t n = tokens.size();
  for (size_t i = 0; i < n; ++i) {
    b.seq.push_back(seqId_);
    b.pos.push_back(nPast_ + static_cast<uint32_t>(i));
    b.tokens.push_back(tokens[i]);
    b.wantLogits.push_back(allLogits || i + 1 == n ? 1 : 0);
  }
  const size_t wanted = allLogits ? n : 1;

  auto req = stages_[0].forwardRequest();
  proto::writeBatch(b, req.initBatch());
  auto rest = req.initRest(static_cast<unsigned>(stages_.size() - 1));
  for (size_t i = 1; i < stages_.size(); ++i) rest.set(static_cast<unsigned>(i - 1), stages_[i]);
  req.setSink(sinkCap_);
  req.send().wait(waitScope_);
  nPast_ += static_cast<uint32_t>(n);

  std::vector<proto::LogitsData> got = sink_->take();
  if (got.size() != 1 || got[0].rows() != wanted || got[0].nVocab != cfg_.nVocab) {
    throw std::runtime_error("the last stage delivered " + std::to_string(got.size()) +
                             " logits messages (" +
                             std::to_string(got.empty() ? 0 : got[0].rows()) + " rows), expected 1 (" +
                             std::to_string(wanted) + " rows of " + std::to_string(cfg_.nVocab) + ")");
  }
  for (size_t r = 0; r < wanted; ++r) {
    const uint32_t pos = b.pos[allLogits ? r : n - 1];
    if (got[0].seq[r] != seqId_ || got[0].pos[r] != pos) {
      throw std::runtime_error("logits row " + std::to_string(r) + " is for sequence " +
                               std::to_string(got[0].seq[r]) + " position " +
                               std::to_string(got[0].pos[r]) + ", expected position " +
                               std::to_string(pos));
    }
  }
  return std::move(got[0]);
}

TurnResult Generator::feed(std::span<const TokenId> tokens, int nPredict,
                           const GenerateCallbacks& cb) {
  if (!open_) throw std::logic_error("generator: feed() without open()");
  if (nPredict < 0) throw std::invalid_argument("nPredict must be >= 0");
  std::vector<TokenId> input = std::exchange(pending_, {});
  input.insert(input.end(), tokens.begin(), tokens.end());
  if (input.empty()) throw std::invalid_argument("nothing to feed: the prompt is empty");
  if (input.size() > opts_.nCtx - nPast_) {
    if (nPast_ == 0) {
      throw std::invalid_argument("prompt is " + std::to_string(input.size()) +
                                  " tokens, context is " + std::to_string(opts_.nCtx));
    }
    throw std::invalid_argument("input is " + std::to_string(input.size()) + " tokens, only " +
                                std::to_string(opts_.nCtx - nPast_) + " of the context's " +
                                std::to_string(opts_.nCtx) + " positions are left");
  }
  for (TokenId id : input) {
    if (id < 0 || static_cast<uint32_t>(id) >= cfg_.nVocab) {
      throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary of " +
                                  std::to_string(cfg_.nVocab));
    }
  }
  history_.insert(history_.end(), tokens.begin(), tokens.end());
  auto emit = [&](std::string s) {
    if (!s.empty() && cb.onText) cb.onText(s);
  };
  for (TokenId id : tokens) {
    std::string s = stream_->push(id);
    if (cb.echoInput) emit(std::move(s));
  }

  TurnResult r;
  r.promptTokens = static_cast<uint32_t>(input.size());
  const bool allLogits = static_cast<bool>(cb.onLogits);
  uint64_t chunk = opts_.microBatch;
  chunk = std::min<uint64_t>(chunk, std::max<uint64_t>(1, kTargetPayloadBytes / (uint64_t{cfg_.nEmbd} * 4)));
  if (allLogits) {
    chunk = std::min<uint64_t>(chunk, std::max<uint64_t>(1, kTargetPayloadBytes / (uint64_t{cfg_.nVocab} * 4)));
  }

  auto t0 = Clock::now();
  proto::LogitsData last;
  for (size_t at = 0; at < input.size(); at += chunk) {
    const size_t n = std::min<size_t>(chunk, input.size() - at);
    last = forward(std::span<const TokenId>(input).subspan(at, n), allLogits);
    if (allLogits) {
      for (size_t row = 0; row < last.rows(); ++row) {
        cb.onLogits(std::span<const float>(last.data).subspan(row * cfg_.nVocab, cfg_.nVocab));
      }
    }
  }
  r.promptSeconds = secondsSince(t0);

  t0 = Clock::now();
  while (static_cast<int>(r.genTokens) < nPredict) {
    std::span<const float> row(last.data.data() + (last.rows() - 1) * cfg_.nVocab, cfg_.nVocab);
    const TokenId id = sampler_->sample(row, history_);
    r.generated.push_back(id);
    history_.push_back(id);
    pending_ = {id};
    if (tok_.isEog(id)) {
      r.stop = StopReason::EndOfGeneration;
      break;
    }
    ++r.genTokens;
    emit(stream_->push(id));
    if (static_cast<int>(r.genTokens) == nPredict) {
      r.stop = StopReason::Limit;
      break;
    }
    if (nPast_ >= opts_.nCtx) {
      r.stop = StopReason::Context;
      break;
    }
    last = forward(std::span<const TokenId>(&id, 1), true);
    pending_.clear();
    if (allLogits) cb.onLogits(std::span<const float>(last.data));
  }
  emit(stream_->flush());
  r.genSeconds = secondsSince(t0);
  return r;
}

TurnResult Generator::generate(std::span<const TokenId> prompt, int nPredict,
                               const SamplingParams& params, const GenerateCallbacks& cb) {
  open(params);
  TurnResult r = feed(prompt, nPredict, cb);
  close();
  return r;
}

}  // namespace tern::coord
