// A stage merges the batches that wait for its compute thread into one batch and hands each its
// own rows back: the same logits as computing them one by one.
#include "model/config.hpp"
#include "model/gguf.hpp"
#include "ops/stage.hpp"
#include "protocol/codec.hpp"
#include "worker/compute_thread.hpp"
#include "worker/stage_server.hpp"

#include <doctest/doctest.h>
#include <kj/async-io.h>

#include <future>
#include <memory>
#include <string>
#include <vector>

using namespace tern;

namespace {

const std::string kModel = std::string(TERN_TEST_DATA) + "/stories260K/stories260K.gguf";

class StoringSink final : public proto::Sink::Server {
 public:
  std::vector<proto::LogitsData> got;

 protected:
  kj::Promise<void> deliver(DeliverContext context) override {
    got.push_back(proto::readLogits(context.getParams().getLogits()));
    return kj::READY_NOW;
  }
};

// Three sequences: a 6-token prompt, a 3-token prompt, then 2 more tokens of the first.
std::vector<proto::BatchData> batches() {
  std::vector<proto::BatchData> bs(3);
  auto add = [](proto::BatchData& b, uint64_t seq, uint32_t pos, int32_t tok, bool want) {
    b.seq.push_back(seq);
    b.pos.push_back(pos);
    b.tokens.push_back(tok);
    b.wantLogits.push_back(want);
  };
  for (uint32_t i = 0; i < 6; ++i) add(bs[0], 1, i, int32_t(10 + 7 * i), true);
  for (uint32_t i = 0; i < 3; ++i) add(bs[1], 2, i, int32_t(200 + i), i == 2);
  add(bs[2], 1, 6, 42, true);
  add(bs[2], 1, 7, 43, false);
  for (size_t i = 0; i < bs.size(); ++i) bs[i].id = i + 1;
  return bs;
}

struct Run {
  std::vector<proto::LogitsData> logits;
  proto::StageStatsData stats;
  std::vector<std::string> errors;  // per call, "" when it succeeded
};

// One stage holding the whole model; with `compute`, its thread is held busy until all three
// batches wait, so they run as one merged batch.
// badSecond: the second batch claims positions its sequence is not at.
Run run(kj::WaitScope& ws, worker::ComputeThread* compute, bool badSecond = false) {
  auto file = gguf::File::open(kModel);
  const ModelConfig cfg = ModelConfig::fromGguf(*file);
  ops::StageOptions so;
  so.threads = 1;
  auto server = kj::heap<worker::StageServer>(
      std::make_unique<ops::Stage>(file, cfg, ops::StageRange{0, cfg.nLayer, true, true}, so), 1u,
      "test", 1, worker::StageLimits{}, nullptr, worker::StageInstruments{}, compute);
  worker::StageServer& stage = *server;
  proto::Stage::Client cap = kj::mv(server);
  auto sinkServer = kj::heap<StoringSink>();
  StoringSink& sink = *sinkServer;
  proto::Sink::Client sinkCap = kj::mv(sinkServer);

  auto link = cap.linkRequest();
  link.initNext().setSink(sinkCap);
  link.send().wait(ws);
  for (uint64_t seq : {1, 2}) {
    auto open = cap.openSequenceRequest();
    open.setSeqId(seq);
    open.setMaxLen(32);
    open.send().wait(ws);
  }

  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  if (compute) compute->post([released] { released.wait(); });  // the team is busy

  std::vector<kj::Promise<void>> calls;
  auto bs = batches();
  if (badSecond) bs[1].pos = {5, 6, 7};
  for (const auto& b : bs) {
    auto req = cap.forwardRequest();
    proto::writeBatch(b, req.initBatch());
    calls.push_back(req.send().ignoreResult());
  }
  // Let the three calls arrive and queue behind the busy job, then free the thread.
  for (int i = 0; i < 100; ++i) ws.poll();
  release.set_value();
  std::vector<std::string> errors;
  for (auto& c : calls) {
    try {
      c.wait(ws);
      errors.emplace_back();
    } catch (const kj::Exception& e) {
      errors.emplace_back(e.getDescription().cStr());
    }
  }
  return {sink.got, stage.stats(), errors};
}

}  // namespace

TEST_CASE("stage: batches waiting for the compute thread run merged, rows as computed alone") {
  auto io = kj::setupAsyncIo();
  const Run alone = run(io.waitScope, nullptr);
  worker::ComputeThread compute;
  const Run merged = run(io.waitScope, &compute);

  CHECK(alone.stats.mergedBatches == 0);
  CHECK(merged.stats.mergedBatches == 3);
  CHECK(merged.stats.batches == 3);
  CHECK(merged.stats.tokens == 11);
  REQUIRE(alone.logits.size() == 3);
  REQUIRE(merged.logits.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CAPTURE(i);
    CHECK(merged.logits[i].batchId == i + 1);
    CHECK(merged.logits[i].seq == alone.logits[i].seq);
    CHECK(merged.logits[i].pos == alone.logits[i].pos);
    CHECK(merged.logits[i].data == alone.logits[i].data);  // bit for bit
  }
  CHECK(merged.logits[0].rows() == 6);
  CHECK(merged.logits[1].rows() == 1);
  CHECK(merged.logits[2].rows() == 1);
}

TEST_CASE("stage: a bad batch among merged ones fails alone; the others are served") {
  auto io = kj::setupAsyncIo();
  const Run alone = run(io.waitScope, nullptr, true);
  worker::ComputeThread compute;
  const Run merged = run(io.waitScope, &compute, true);
  REQUIRE(merged.errors.size() == 3);
  CHECK(merged.errors[0].empty());
  CHECK(merged.errors[1].find("position") != std::string::npos);
  CHECK(merged.errors[2].empty());
  CHECK(merged.errors == alone.errors);
  REQUIRE(merged.logits.size() == 2);
  REQUIRE(alone.logits.size() == 2);
  for (size_t i = 0; i < 2; ++i) CHECK(merged.logits[i].data == alone.logits[i].data);
  CHECK(merged.stats.batches == 2);
}
