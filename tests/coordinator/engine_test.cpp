// The Engine: many sequences through a pipeline of StageServers at once give each sequence what
// it gets alone (tokens and logits rows), with several micro-batches really in flight.
// The stages are local capabilities on this thread's kj loop, linked stage to stage through a
// HopResolver that resolves NextHop.local from the test's list of capabilities.
#include "tests/coordinator/engine_fixture.hpp"  // first: its pragma must precede kj's headers
#include "tests/ops/reference_files.hpp"

#include "coordinator/generator.hpp"

#include <prometheus/registry.h>

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

using namespace tern;
using namespace tern::test;

using tern::testing::readIdLines;

TEST_CASE("engine: 8 sequences at once give each what it gets alone, 1 and 3 stages") {
  auto io = kj::setupAsyncIo();
  const auto jobs = eightJobs(false);
  for (const std::vector<uint32_t>& cuts : {std::vector<uint32_t>{0, 5}, {0, 2, 3, 5}}) {
    CAPTURE(cuts.size() - 1);
    Pipeline p(io.waitScope, cuts);
    std::vector<Out> alone;
    for (const Job& j : jobs) alone.push_back(runAlone(p, io.waitScope, j, true));
    coord::Engine::Counters c;
    const auto together = runTogether(p, io.waitScope, jobs, true, {}, &c);
    const auto tokensOnly = runTogether(p, io.waitScope, jobs, false);
    const uint32_t nVocab = model().cfg.nVocab;
    for (size_t i = 0; i < jobs.size(); ++i) {
      CAPTURE(i);
      REQUIRE(!alone[i].tokens.empty());
      CHECK(alone[i].result.generated == alone[i].tokens);
      CHECK(together[i].tokens == alone[i].tokens);
      CHECK(tokensOnly[i].tokens == alone[i].tokens);
      CHECK(together[i].text == alone[i].text);
      // Every row is computed as it would be alone: byte-identical logits.
      CHECK(together[i].logits.size() ==
            (jobs[i].prompt.size() + alone[i].tokens.size() - 1) * size_t{nVocab});
      CHECK(together[i].logits == alone[i].logits);
    }
    // Several sequences share micro-batches.
    CHECK(c.maxSequencesInBatch > 1);
    CHECK(c.tokens > c.batches);
  }
}

TEST_CASE("engine: with 3 stages several micro-batches are in flight, each carrying several sequences") {
  auto io = kj::setupAsyncIo();
  Pipeline p(io.waitScope, {0, 2, 3, 5});
  coord::Engine::Counters c;
  runTogether(p, io.waitScope, eightJobs(false), false, {}, &c);
  CHECK(c.maxInFlight == 3);
  CHECK(c.maxSequencesInBatch >= 3);
  // 8 sequences decoding over 3 slots: about 3 sequences per decode batch, far fewer batches
  // than decode tokens.
  uint64_t generated = 0;
  for (const Job& j : eightJobs(false)) generated += j.nPredict;
  CHECK(c.batches * 3 < generated * 2);  // more than 1.5 sequences per batch on average
  MESSAGE("batches ", c.batches, ", tokens ", c.tokens, ", max in flight ", c.maxInFlight,
          ", max sequences per batch ", c.maxSequencesInBatch);

  // inFlight = 1: one micro-batch at a time, same tokens.
  coord::EngineOptions one;
  one.inFlight = 1;
  coord::Engine::Counters c1;
  const auto a = runTogether(p, io.waitScope, eightJobs(false), false, one, &c1);
  const auto b = runTogether(p, io.waitScope, eightJobs(false), false);
  CHECK(c1.maxInFlight == 1);
  for (size_t i = 0; i < a.size(); ++i) CHECK(a[i].tokens == b[i].tokens);
}

TEST_CASE("engine: greedy stories260K from BOS gives llama2.c's 200 ids through 3 stages") {
  auto io = kj::setupAsyncIo();
  const auto ref = readIdLines(TERN_TEST_DATA "/stories260K/greedy_tokens_200.txt");
  REQUIRE(ref.size() >= 200);
  Pipeline p(io.waitScope, {0, 1, 3, 5});
  // Alone, and among 3 other sequences with prompt chunks of 3 tokens.
  Job bos{{1}, 199, greedy()};
  std::vector<Job> jobs{bos};
  for (size_t i = 0; i < 3; ++i) jobs.push_back(eightJobs(false)[i + 1]);
  INFO("model context ", model().cfg.nCtxTrain);
  coord::EngineOptions opts;
  opts.nCtx = 256;
  opts.maxBatchTokens = 3;
  coord::EngineOptions big;
  big.nCtx = 256;
  for (const auto& outs : {runTogether(p, io.waitScope, {bos}, false, big),
                           runTogether(p, io.waitScope, jobs, false, opts)}) {
    std::vector<int32_t> got{1};
    got.insert(got.end(), outs[0].tokens.begin(), outs[0].tokens.end());
    REQUIRE(got.size() == 200);
    CHECK(std::equal(got.begin(), got.end(), ref.begin()));
    CHECK(outs[0].result.stop == coord::StopReason::Limit);
    CHECK(outs[0].result.genTokens == 199);
  }
}

TEST_CASE("engine: seeded sampling gives the same tokens alone and batched") {
  auto io = kj::setupAsyncIo();
  Pipeline p(io.waitScope, {0, 2, 3, 5});
  const auto jobs = eightJobs(true);
  const auto together = runTogether(p, io.waitScope, jobs, false);
  bool differ = false;
  for (size_t i = 0; i < jobs.size(); ++i) {
    CAPTURE(i);
    const Out alone = runAlone(p, io.waitScope, jobs[i], false);
    CHECK(together[i].tokens == alone.tokens);
    differ |= alone.tokens != runAlone(p, io.waitScope, {jobs[i].prompt, jobs[i].nPredict, greedy()}, false).tokens;
  }
  CHECK(differ);  // sampling at temperature 0.9 is not greedy
}

TEST_CASE("engine: turns, limits, timings and metrics") {
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  const Model& m = model();
  Pipeline p(ws, {0, 3, 5});
  auto registry = std::make_shared<prometheus::Registry>();
  coord::EngineOptions opts;
  opts.nCtx = 32;
  opts.metrics = registry;
  coord::Engine engine(m.cfg, *m.tok, p.copy(), ws, opts);
  const auto& infos = engine.hello();
  REQUIRE(infos.size() == 2);
  CHECK(infos[1].head);

  const uint64_t s = engine.open(greedy());
  const std::vector<TokenId> prompt = m.tok->encode("Once upon a time", true);
  CHECK_THROWS_WITH_AS(engine.feed(s, std::vector<TokenId>{}, 4), "nothing to feed: the prompt is empty",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(engine.feed(s, std::vector<TokenId>{1, 99999}, 4),
                       "token id 99999 is outside the vocabulary of 512", std::invalid_argument);
  CHECK_THROWS_WITH_AS(engine.feed(s, std::vector<TokenId>(33, 1), 4), "prompt is 33 tokens, context is 32",
                       std::invalid_argument);

  // Turn 1: the prompt and 5 tokens; turn 2 feeds the last sampled token and more text until
  // the context is full.
  coord::TurnResult r1, r2;
  engine.feed(s, prompt, 5, {}, [&](const coord::TurnResult& r) { r1 = r; });
  CHECK_THROWS_WITH_AS(engine.feed(s, prompt, 5), "feed: sequence 1 already has a turn queued",
                       std::invalid_argument);
  engine.run();
  CHECK(r1.generated.size() == 5);
  CHECK(r1.genTokens == 5);
  CHECK(r1.stop == coord::StopReason::Limit);
  CHECK(r1.promptTokens == prompt.size());
  CHECK(r1.promptSeconds > 0);
  CHECK(r1.genSeconds > 0);
  CHECK(engine.position(s) == prompt.size() + 4);  // the 5th sampled id is not fed yet
  const std::vector<TokenId> more = m.tok->encode(" and", false);
  engine.feed(s, more, 100, {}, [&](const coord::TurnResult& r) { r2 = r; });
  engine.run();
  CHECK(r2.promptTokens == 1 + more.size());
  CHECK(r2.stop == coord::StopReason::Context);
  CHECK(engine.position(s) == 32);
  CHECK(r2.generated.size() == 32 - (prompt.size() + 4 + 1 + more.size()) + 1);
  CHECK_THROWS_WITH_AS(engine.feed(s, std::vector<TokenId>{1}, 1),
                       "input is 2 tokens, only 0 of the context's 32 positions are left",
                       std::invalid_argument);

  // Metrics.
  auto value = [&](const std::string& name) -> double {
    for (const auto& fam : registry->Collect()) {
      if (fam.name != name || fam.metric.empty()) continue;
      const auto& mt = fam.metric[0];
      if (fam.type == prometheus::MetricType::Counter) return mt.counter.value;
      if (fam.type == prometheus::MetricType::Gauge) return mt.gauge.value;
      if (fam.type == prometheus::MetricType::Histogram) return static_cast<double>(mt.histogram.sample_count);
    }
    FAIL("no metric ", name);
    return -1;
  };
  CHECK(value("tern_coordinator_tokens_generated_total") == double(r1.generated.size() + r2.generated.size()));
  CHECK(value("tern_coordinator_prompt_tokens_total") == double(r1.promptTokens + r2.promptTokens));
  CHECK(value("tern_coordinator_batches_total") == double(engine.counters().batches));
  CHECK(value("tern_coordinator_batch_tokens") == double(engine.counters().batches));
  CHECK(value("tern_coordinator_step_seconds") == double(engine.counters().batches));
  CHECK(value("tern_coordinator_time_to_first_token_seconds") == 2);
  CHECK(value("tern_coordinator_inflight_batches") == 0);
  CHECK(value("tern_coordinator_sequences_active") == 0);
  CHECK(value("tern_coordinator_sent_bytes_total") == double(engine.counters().tokens * 4));
  CHECK(value("tern_coordinator_received_bytes_total") > 0);
  engine.close(s);

  // A stage's error reaches run() with the stage's message; the sequence is then unusable, the
  // engine is not.
  const uint64_t bad = engine.open(greedy());
  auto req = p.caps[1].closeSequenceRequest();
  req.setSeqId(bad);
  req.send().wait(ws);
  engine.feed(bad, prompt, 3);
  CHECK_THROWS_AS(engine.run(), std::runtime_error);
  try {
    engine.run();
  } catch (...) {
  }
  CHECK_THROWS_WITH_AS(engine.feed(bad, prompt, 3), "feed: sequence 2 failed in the pipeline; close it",
                       std::invalid_argument);
  CHECK_THROWS_AS(engine.close(bad), std::runtime_error);  // stage 1 no longer knows it
  const uint64_t good = engine.open(greedy());
  coord::TurnResult r3;
  engine.feed(good, prompt, 5, {}, [&](const coord::TurnResult& r) { r3 = r; });
  engine.run();
  CHECK(r3.generated == r1.generated);
}

TEST_CASE("engine: a stage error names the stage's problem") {
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  const Model& m = model();
  Pipeline p(ws, {0, 3, 5});
  coord::Engine engine(m.cfg, *m.tok, p.copy(), ws);
  const uint64_t s = engine.open(greedy());
  auto req = p.caps[1].closeSequenceRequest();
  req.setSeqId(s);
  req.send().wait(ws);
  engine.feed(s, m.tok->encode("Once upon a time", true), 3);
  std::string err;
  try {
    engine.run();
  } catch (const std::runtime_error& e) {
    err = e.what();
  }
  CHECK(err.find("unknown sequence " + std::to_string(s)) != std::string::npos);
}

TEST_CASE("generator: one sequence at a time over the engine, as tern run uses it") {
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  const Model& m = model();
  Pipeline p(ws, {0, 2, 5});
  const Job job = eightJobs(false)[0];
  const Out ref = runAlone(p, ws, job, true);
  coord::Generator gen(m.cfg, *m.tok, p.copy(), ws);
  CHECK(gen.hello().size() == 2);
  std::vector<float> logits;
  std::string text;
  coord::GenerateCallbacks cb;
  cb.onLogits = [&](std::span<const float> row) { logits.insert(logits.end(), row.begin(), row.end()); };
  cb.onText = [&](std::string_view s) { text += s; };
  cb.echoInput = true;
  const auto r = gen.generate(job.prompt, job.nPredict, greedy(), cb);
  CHECK(r.generated == ref.tokens);
  CHECK(logits == ref.logits);
  CHECK(text.rfind("Once upon a time", 0) == 0);
  CHECK(text.substr(16) == ref.text);
  CHECK(gen.position() == 0);
  // Two turns: the same tokens as one turn of the same length.
  gen.open(greedy());
  const auto a = gen.feed(job.prompt, 5);
  const auto b = gen.feed(std::vector<TokenId>{}, job.nPredict - 5);
  std::vector<TokenId> both = a.generated;
  both.insert(both.end(), b.generated.begin(), b.generated.end());
  CHECK(both == ref.tokens);
  CHECK(gen.position() == job.prompt.size() + job.nPredict - 1);
  gen.close();
  CHECK_THROWS_AS(gen.feed(job.prompt, 1), std::logic_error);
}
