#include "worker/stage_server.hpp"

#include <exception>
#include <string>
#include <utility>

namespace tern::worker {
namespace {

[[noreturn]] void fail(const std::string& msg) {
  kj::throwFatalException(
      kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::heapString(msg.c_str())));
}

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

}  // namespace

StageServer::StageServer(std::unique_ptr<ops::Stage> stage, unsigned threads, std::string machine)
    : stage_(std::move(stage)), threads_(threads), machine_(std::move(machine)) {}

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
  return s;
}

kj::Promise<void> StageServer::hello(HelloContext context) {
  const uint32_t peer = context.getParams().getVersion();
  if (peer != proto::PROTOCOL_VERSION) {
    fail("protocol version mismatch: peer " + std::to_string(peer) + ", ours " +
         std::to_string(proto::PROTOCOL_VERSION));
  }
  auto results = context.getResults();
  results.setVersion(proto::PROTOCOL_VERSION);
  proto::writeStageInfo(info(), results.initInfo());
  return kj::READY_NOW;
}

kj::Promise<void> StageServer::openSequence(OpenSequenceContext context) {
  auto p = context.getParams();
  guarded("openSequence", [&] { stage_->openSequence(p.getSeqId(), p.getMaxLen()); });
  return kj::READY_NOW;
}

kj::Promise<void> StageServer::closeSequence(CloseSequenceContext context) {
  auto p = context.getParams();
  guarded("closeSequence", [&] { stage_->closeSequence(p.getSeqId()); });
  return kj::READY_NOW;
}

kj::Promise<void> StageServer::forward(ForwardContext context) {
  auto params = context.getParams();
  const auto& range = stage_->range();
  auto rest = params.getRest();
  if (range.head && rest.size() != 0) {
    fail("forward: the last stage got " + std::to_string(rest.size()) + " more stages");
  }
  if (!range.head && rest.size() == 0) fail("forward: no next stage for a stage without the head");

  proto::BatchData batch = guarded("forward", [&] { return proto::readBatch(params.getBatch()); });
  const uint32_t nEmbd = stage_->config().nEmbd;
  if (range.embed && batch.tokens.empty()) fail("forward: the first stage needs batch.tokens");
  if (!range.embed && batch.act.empty()) fail("forward: batch.activations missing");
  if (!range.embed && batch.nEmbd != nEmbd) {
    fail("forward: batch.nEmbd " + std::to_string(batch.nEmbd) + ", model has " +
         std::to_string(nEmbd));
  }
  for (uint64_t s : batch.seq) {
    if (!stage_->hasSequence(s)) fail("forward: unknown sequence " + std::to_string(s));
  }

  ops::BatchIn in{batch.seq, batch.pos, batch.tokens, batch.act, batch.wantLogits};
  ops::BatchOut out;
  guarded("forward", [&] { stage_->forward(in, out); });

  if (range.head) {
    proto::LogitsData logits;
    logits.nVocab = stage_->config().nVocab;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (batch.wantLogits[i] == 0) continue;
      logits.seq.push_back(batch.seq[i]);
      logits.pos.push_back(batch.pos[i]);
    }
    logits.data = std::move(out.logits);
    auto req = params.getSink().deliverRequest();
    guarded("forward", [&] { proto::writeLogits(logits, req.initLogits()); });
    return req.send().ignoreResult();
  }

  proto::BatchData next;
  next.seq = std::move(batch.seq);
  next.pos = std::move(batch.pos);
  next.nEmbd = nEmbd;
  next.act = std::move(out.act);
  next.wantLogits = std::move(batch.wantLogits);
  auto req = rest[0].forwardRequest();
  guarded("forward", [&] { proto::writeBatch(next, req.initBatch()); });
  auto nextRest = req.initRest(rest.size() - 1);
  for (unsigned i = 1; i < rest.size(); ++i) nextRest.set(i - 1, rest[i]);
  req.setSink(params.getSink());
  return req.send().ignoreResult();
}

}  // namespace tern::worker
