// The Engine in serving mode (serve(), openAsync/closeAsync, feed() sending at once): sequences
// that join and leave while others are mid-prefill or mid-decode get exactly the tokens they get
// alone through a Generator; a closed sequence is freed on every stage and its slot reused; a
// failing batch fails the turns in progress and the engine serves on; onSample passes the row the
// id was sampled from.
#include "tests/coordinator/engine_fixture.hpp"  // first: its pragma must precede kj's headers

#include "coordinator/generator.hpp"

#include <functional>
#include <memory>
#include <string>
#include <vector>

using namespace tern;
using namespace tern::test;

namespace {

// Stages over layer cuts whose servers the test can inspect (sequences open, KV bytes).
using Stages = Pipeline;

struct ErrorHandler final : public kj::TaskSet::ErrorHandler {
  std::vector<std::string> errors;
  void taskFailed(kj::Exception&& e) override { errors.emplace_back(e.getDescription().cStr()); }
};

// What the Generator gives one job alone (the reference): tokens, text, stop.
Out solo(Stages& st, kj::WaitScope& ws, const Job& job) {
  const Model& m = model();
  coord::Generator gen(m.cfg, *m.tok, st.copy(), ws);
  Out o;
  coord::GenerateCallbacks cb;
  cb.onText = [&o](std::string_view s) { o.text += s; };
  o.result = gen.generate(job.prompt, job.nPredict, job.params, cb);
  o.tokens = o.result.generated;
  o.done = true;
  return o;
}

// One job on a served engine: its output and the promise its done() fulfils.
struct Live {
  Out out;
  uint64_t seq = 0;
  int doneCalls = 0;
  kj::Own<kj::PromiseFulfiller<void>> fulfiller;
  kj::Promise<void> promise = nullptr;
  Live() {
    auto paf = kj::newPromiseAndFulfiller<void>();
    fulfiller = kj::mv(paf.fulfiller);
    promise = kj::mv(paf.promise);
  }
};

// Opens a sequence and feeds the job (through the TaskSet); extra callbacks may be given.
void start(coord::Engine& engine, kj::TaskSet& tasks, const Job& job, Live& live,
           coord::GenerateCallbacks extra = {}) {
  tasks.add(engine.openAsync(job.params).then([&engine, &job, &live, extra](uint64_t id) {
    live.seq = id;
    coord::GenerateCallbacks cb = extra;
    Out& o = live.out;
    cb.onToken = [&o, f = extra.onToken](TokenId t) {
      o.tokens.push_back(t);
      if (f) f(t);
    };
    cb.onText = [&o, f = extra.onText](std::string_view s) {
      o.text += s;
      if (f) f(s);
    };
    engine.feed(id, job.prompt, job.nPredict, cb, [&live](const coord::TurnResult& r) {
      live.out.result = r;
      live.out.done = true;
      ++live.doneCalls;
      live.fulfiller->fulfill();
    });
  }));
}

coord::SamplingParams seeded(uint64_t seed) {
  coord::SamplingParams p;
  p.temperature = 0.9f;
  p.seed = seed;
  p.repeatPenalty = 1.1f;
  p.presencePenalty = 0.3f;
  p.frequencyPenalty = 0.2f;
  return p;
}

}  // namespace

TEST_CASE("serve: 8 sequences joining at different moments each give their solo tokens, 1 and 3 stages") {
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  const Model& m = model();
  // Greedy and seeded (with every penalty) jobs mixed.
  std::vector<Job> jobs = eightJobs(false);
  for (size_t i = 1; i < jobs.size(); i += 2) jobs[i].params = seeded(500 + i);
  jobs[4].prompt = m.tok->encode("Once upon a time, there was a little girl named Lily. She loved to play", true);
  for (const std::vector<uint32_t>& cuts : {std::vector<uint32_t>{0, 5}, {0, 2, 3, 5}}) {
    CAPTURE(cuts.size() - 1);
    Stages st(ws, cuts);
    std::vector<Out> ref;
    for (const Job& j : jobs) ref.push_back(solo(st, ws, j));

    coord::EngineOptions eo;
    eo.maxBatchTokens = 8;  // prompts take several micro-batches: joins land mid-prefill too
    coord::Engine engine(m.cfg, *m.tok, st.copy(), ws, eo);
    engine.hello();
    engine.serve();
    ErrorHandler eh;
    kj::TaskSet tasks(eh);
    std::vector<Live> live(jobs.size());
    // Jobs 0 and 1 at once; 2 when 0 has sampled 2 tokens; 3 and 4 when 1 has sampled 3; 5 when
    // 4 has sampled its first (4 is mid-decode, 3 maybe still mid-prefill); 6 from 0's done();
    // 7 from the test's own wait, once 0 is done, while the others are mid-generation.
    auto after = [](size_t n, std::function<void()> go) {
      coord::GenerateCallbacks cb;
      auto count = std::make_shared<size_t>(0);
      cb.onToken = [count, n, go](TokenId) {
        if (++*count == n) go();
      };
      return cb;
    };
    auto go = [&](size_t i) { return [&, i] { start(engine, tasks, jobs[i], live[i]); }; };
    auto go34 = [&] {
      start(engine, tasks, jobs[3], live[3]);
      start(engine, tasks, jobs[4], live[4], after(1, go(5)));
    };
    start(engine, tasks, jobs[0], live[0], after(2, go(2)));
    start(engine, tasks, jobs[1], live[1], after(3, go34));
    bool sixStarted = false;
    live[0].promise.then([&] {
      sixStarted = true;
      start(engine, tasks, jobs[6], live[6]);
    }).wait(ws);
    REQUIRE(sixStarted);
    CHECK(engine.openSequences() >= 3);  // others are open and generating
    start(engine, tasks, jobs[7], live[7]);
    for (size_t i = 1; i < live.size(); ++i) live[i].promise.wait(ws);
    CHECK(eh.errors.empty());
    for (size_t i = 0; i < jobs.size(); ++i) {
      CAPTURE(i);
      CHECK(live[i].doneCalls == 1);
      CHECK(live[i].out.result.error.empty());
      REQUIRE(!ref[i].tokens.empty());
      CHECK(live[i].out.tokens == ref[i].tokens);
      CHECK(live[i].out.result.generated == ref[i].tokens);
      CHECK(live[i].out.text == ref[i].text);
      CHECK(live[i].out.result.stop == ref[i].result.stop);
      CHECK(engine.position(live[i].seq) == jobs[i].prompt.size() + ref[i].tokens.size() - 1);
    }
    // Really batched: several sequences shared micro-batches.
    CHECK(engine.counters().maxSequencesInBatch > 1);
    CHECK(engine.counters().maxInFlight == cuts.size() - 1);
    for (auto& l : live) engine.closeAsync(l.seq).wait(ws);
    CHECK(engine.openSequences() == 0);
    CHECK(engine.positionsHeld() == 0);
    CHECK(st.sequences() == std::vector<uint32_t>(cuts.size() - 1, 0));
  }
}

TEST_CASE("serve: closeAsync mid-decode and mid-prefill frees the sequence on every stage; its slot serves a new one") {
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  const Model& m = model();
  worker::StageLimits limits;
  limits.maxSequences = 3;  // every stage holds at most 3 sequences
  Stages st(ws, {0, 2, 3, 5}, limits);
  Job a = eightJobs(false)[0];
  a.nPredict = 40;
  Job p;  // a long prompt, prefilled in chunks of 4 over 3 slots
  p.prompt = m.tok->encode("Once upon a time, there was a little girl named Lily. She loved to play "
                           "outside in the sun with her big red ball and her little dog", true);
  p.nPredict = 10;
  p.params = greedy();
  REQUIRE(p.prompt.size() > 24);
  Job b = eightJobs(true)[5];
  b.nPredict = 50;
  Job n1 = eightJobs(false)[2], n2 = eightJobs(true)[3];
  const Out refB = solo(st, ws, b), refN1 = solo(st, ws, n1), refN2 = solo(st, ws, n2);

  coord::EngineOptions eo;
  eo.maxBatchTokens = 4;
  coord::Engine engine(m.cfg, *m.tok, st.copy(), ws, eo);
  engine.hello();
  engine.serve();
  ErrorHandler eh;
  kj::TaskSet tasks(eh);
  Live la, lp, lb, ln1, ln2;

  // A: closed after its 3rd token (mid-decode). While its close is pending the stages are full:
  // an extra sequence is refused; once the close resolves, n1 takes the slot.
  size_t aTokensAtClose = 0;
  bool aKnownWhilePending = false, aClosed = false, aGoneAfter = false;
  std::vector<uint32_t> stagesAfterA;
  std::string refused;
  coord::GenerateCallbacks acb;
  acb.onToken = [&](TokenId) {
    if (la.out.tokens.size() != 3) return;
    aTokensAtClose = la.out.tokens.size();
    const uint64_t id = la.seq;
    tasks.add(engine.closeAsync(id).then([&, id] {
      aClosed = true;
      try {
        engine.position(id);
      } catch (const std::invalid_argument&) {
        aGoneAfter = true;
      }
      stagesAfterA = st.sequences();
      start(engine, tasks, n1, ln1);
    }));
    aKnownWhilePending = engine.openSequences() == 3;
    tasks.add(engine.openAsync(greedy()).then(
        [&](uint64_t) { refused = "opened a 4th sequence"; },
        [&](kj::Exception&& e) { refused = e.getDescription().cStr(); }));
  };
  // P: closed after its first prompt rows, while later chunks are in the pipeline.
  size_t pRowsAtClose = 0, pRows = 0;
  uint32_t pSentAtClose = 0;
  bool pClosed = false, pGoneAfter = false;
  coord::GenerateCallbacks pcb;
  pcb.onLogits = [&](std::span<const float>) {
    if (++pRows != 4) return;
    pRowsAtClose = pRows;
    pSentAtClose = engine.position(lp.seq);
    const uint64_t id = lp.seq;
    tasks.add(engine.closeAsync(id).then([&, id] {
      pClosed = true;
      try {
        engine.position(id);
      } catch (const std::invalid_argument&) {
        pGoneAfter = true;
      }
      start(engine, tasks, n2, ln2);
    }));
  };
  start(engine, tasks, a, la, acb);
  start(engine, tasks, p, lp, pcb);
  start(engine, tasks, b, lb);
  lb.promise.wait(ws);
  ln1.promise.wait(ws);
  ln2.promise.wait(ws);
  CHECK(eh.errors.empty());

  // A stopped mid-decode: no token and no done() after the close.
  CHECK(aTokensAtClose == 3);
  CHECK(la.out.tokens.size() == 3);
  CHECK(la.doneCalls == 0);
  CHECK(aKnownWhilePending);
  CHECK(aClosed);
  CHECK(aGoneAfter);
  // The close reached every stage before it resolved: P and B are left there.
  CHECK(stagesAfterA == std::vector<uint32_t>{2, 2, 2});
  CHECK(refused.find("the KV cache is full") != std::string::npos);
  // P stopped mid-prefill: more of its prompt had been sent than had come back.
  CHECK(pRowsAtClose == 4);
  CHECK(pSentAtClose > pRowsAtClose);
  CHECK(pSentAtClose < p.prompt.size());
  CHECK(lp.out.tokens.empty());
  CHECK(lp.doneCalls == 0);
  CHECK(pClosed);
  CHECK(pGoneAfter);
  // The others are unchanged by the closes; the newcomers in the freed slots are as alone.
  CHECK(lb.out.tokens == refB.tokens);
  CHECK(ln1.out.tokens == refN1.tokens);
  CHECK(ln2.out.tokens == refN2.tokens);
  CHECK(lb.out.result.error.empty());
  CHECK(ln1.out.result.error.empty());
  CHECK(ln2.out.result.error.empty());
  CHECK(engine.openSequences() == 3);  // b, n1, n2 (ended turns, still open)
  CHECK(st.sequences() == std::vector<uint32_t>{3, 3, 3});
  for (uint64_t id : {lb.seq, ln1.seq, ln2.seq}) engine.closeAsync(id).wait(ws);
  CHECK(engine.openSequences() == 0);
  CHECK(engine.positionsHeld() == 0);
  CHECK(st.sequences() == std::vector<uint32_t>{0, 0, 0});
  for (const auto* s : st.servers) CHECK(s->kvBytes() == 0);
  CHECK(la.doneCalls == 0);
  CHECK(lp.doneCalls == 0);
}

TEST_CASE("serve: onSample gives each sampled id with the row onLogits gave for its position, after its text") {
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  const Model& m = model();
  Stages st(ws, {0, 3, 5});
  coord::Engine engine(m.cfg, *m.tok, st.copy(), ws);
  engine.hello();
  engine.serve();
  ErrorHandler eh;
  kj::TaskSet tasks(eh);
  std::vector<Job> jobs = {eightJobs(false)[0], eightJobs(true)[2], eightJobs(true)[3]};
  jobs[2].params = seeded(77);  // presence and frequency penalties too
  jobs[2].nPredict = 60;
  struct Rec {
    std::vector<std::vector<float>> rows;     // onLogits
    std::vector<TokenId> ids;                 // onSample
    std::vector<std::vector<float>> samples;  // onSample rows
    std::vector<std::string> textAtSample;
    std::string text;
  };
  std::vector<Rec> rec(jobs.size());
  std::vector<Live> live(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) {
    coord::GenerateCallbacks cb;
    Rec& r = rec[i];
    cb.onLogits = [&r](std::span<const float> row) { r.rows.emplace_back(row.begin(), row.end()); };
    cb.onText = [&r](std::string_view s) { r.text += s; };
    cb.onSample = [&r](TokenId id, std::span<const float> row) {
      r.ids.push_back(id);
      r.samples.emplace_back(row.begin(), row.end());
      r.textAtSample.push_back(r.text);
    };
    start(engine, tasks, jobs[i], live[i], cb);
  }
  for (auto& l : live) l.promise.wait(ws);
  CHECK(eh.errors.empty());
  for (size_t i = 0; i < jobs.size(); ++i) {
    CAPTURE(i);
    const Rec& r = rec[i];
    const auto& gen = live[i].out.result.generated;
    REQUIRE(gen.size() > 1);
    CHECK(r.ids == gen);
    REQUIRE(r.samples.size() == gen.size());
    REQUIRE(r.rows.size() == jobs[i].prompt.size() + gen.size() - 1);
    // The sampler replayed over those rows picks the same ids (greedy: the argmax).
    coord::Sampler replay(jobs[i].params);
    std::vector<TokenId> history = jobs[i].prompt;
    coord::TextStream text(*m.tok);
    for (TokenId t : jobs[i].prompt) text.push(t);  // the engine's stream saw the prompt first
    std::string expectText;
    for (size_t k = 0; k < gen.size(); ++k) {
      CAPTURE(k);
      CHECK(r.samples[k] == r.rows[jobs[i].prompt.size() - 1 + k]);
      CHECK(replay.sample(r.samples[k], history) == gen[k]);
      if (jobs[i].params.temperature <= 0) CHECK(coord::Sampler::argmax(r.samples[k]) == gen[k]);
      history.push_back(gen[k]);
      if (!m.tok->isEog(gen[k])) expectText += text.push(gen[k]);
      // The token's text went through onText before its onSample.
      CHECK(r.textAtSample[k] == expectText);
    }
  }
  for (auto& l : live) engine.closeAsync(l.seq).wait(ws);
}

TEST_CASE("serve: a batch a stage refuses fails the turns in progress; the engine serves on") {
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  const Model& m = model();

  SUBCASE("decode: a sequence closed behind the engine's back on the last stage") {
    Stages st(ws, {0, 3, 5});
    Job a = eightJobs(false)[0], b = eightJobs(true)[1], c = eightJobs(true)[6];
    a.nPredict = b.nPredict = 30;
    const Out refA = solo(st, ws, a), refB = solo(st, ws, b), refC = solo(st, ws, c);
    coord::Engine engine(m.cfg, *m.tok, st.copy(), ws);
    engine.hello();
    engine.serve();
    ErrorHandler eh;
    kj::TaskSet tasks(eh);
    Live la, lb, lc;
    coord::GenerateCallbacks acb;
    acb.onToken = [&](TokenId) {
      if (la.out.tokens.size() != 2) return;
      auto req = st.caps[1].closeSequenceRequest();
      req.setSeqId(la.seq);
      tasks.add(req.send().ignoreResult());
    };
    start(engine, tasks, a, la, acb);
    start(engine, tasks, b, lb);
    la.promise.wait(ws);
    lb.promise.wait(ws);
    CHECK(eh.errors.empty());
    const std::string unknown = "unknown sequence " + std::to_string(la.seq);
    CHECK(la.doneCalls == 1);
    CHECK(lb.doneCalls == 1);
    CHECK(la.out.result.error.find(unknown) != std::string::npos);
    CHECK(lb.out.result.error.find(unknown) != std::string::npos);  // in progress: failed too
    // What came before the failure is what they give alone.
    CHECK(la.out.tokens.size() < refA.tokens.size());
    CHECK(lb.out.tokens.size() < refB.tokens.size());
    CHECK(std::equal(la.out.tokens.begin(), la.out.tokens.end(), refA.tokens.begin()));
    CHECK(std::equal(lb.out.tokens.begin(), lb.out.tokens.end(), refB.tokens.begin()));
    CHECK_THROWS_WITH_AS(engine.feed(la.seq, a.prompt, 3),
                         ("feed: sequence " + std::to_string(la.seq) + " failed in the pipeline; close it").c_str(),
                         std::invalid_argument);
    // A's close fails on the stage that lost it, yet the engine lets it go; B closes cleanly.
    std::string closeErr;
    engine.closeAsync(la.seq).then([] {}, [&](kj::Exception&& e) { closeErr = e.getDescription().cStr(); }).wait(ws);
    CHECK(closeErr.find("closeSequence: unknown sequence") != std::string::npos);
    engine.closeAsync(lb.seq).wait(ws);
    CHECK(engine.openSequences() == 0);
    CHECK(st.sequences() == std::vector<uint32_t>{0, 0});
    // A new sequence works.
    start(engine, tasks, c, lc);
    lc.promise.wait(ws);
    CHECK(lc.out.result.error.empty());
    CHECK(lc.out.tokens == refC.tokens);
    engine.closeAsync(lc.seq).wait(ws);
  }

  SUBCASE("prefill: every chunk in flight fails; only the first failure fails turns") {
    // D's prompt goes out in chunks over 3 slots; the last stage forgot D, so each chunk fails
    // there. E, open and idle, is fed from D's done(): the rest of D's failing chunks land after
    // that and must not fail E's turn (their failure was already reported).
    Stages st(ws, {0, 2, 3, 5});
    Job d;
    d.prompt = m.tok->encode("Once upon a time, there was a little girl named Lily. She loved to play "
                             "outside in the sun with her big red ball", true);
    d.nPredict = 5;
    d.params = greedy();
    Job e = eightJobs(true)[6];
    const Out refE = solo(st, ws, e);
    coord::EngineOptions eo;
    eo.maxBatchTokens = 4;
    coord::Engine engine(m.cfg, *m.tok, st.copy(), ws, eo);
    engine.hello();
    engine.serve();
    ErrorHandler eh;
    kj::TaskSet tasks(eh);
    const uint64_t eSeq = engine.openAsync(e.params).wait(ws);
    const uint64_t dSeq = engine.openAsync(d.params).wait(ws);
    auto req = st.caps[2].closeSequenceRequest();
    req.setSeqId(dSeq);
    req.send().wait(ws);
    Live ld, le;
    le.seq = eSeq;
    uint64_t batchesAtFailure = 0;
    engine.feed(dSeq, d.prompt, d.nPredict, {}, [&](const coord::TurnResult& r) {
      ld.out.result = r;
      ++ld.doneCalls;
      batchesAtFailure = engine.counters().batches;
      coord::GenerateCallbacks cb;
      cb.onToken = [&](TokenId t) { le.out.tokens.push_back(t); };
      engine.feed(eSeq, e.prompt, e.nPredict, cb, [&](const coord::TurnResult& r2) {
        le.out.result = r2;
        ++le.doneCalls;
        le.fulfiller->fulfill();
      });
      ld.fulfiller->fulfill();
    });
    ld.promise.wait(ws);
    CHECK(ld.out.result.error.find("unknown sequence " + std::to_string(dSeq)) != std::string::npos);
    CHECK(batchesAtFailure > 1);  // several of D's chunks were in flight
    le.promise.wait(ws);
    CHECK(eh.errors.empty());
    CHECK(ld.doneCalls == 1);
    CHECK(le.doneCalls == 1);
    CHECK(le.out.result.error == "");
    CHECK(le.out.tokens == refE.tokens);
    std::string closeErr;
    engine.closeAsync(dSeq).then([] {}, [&](kj::Exception&& x) { closeErr = x.getDescription().cStr(); }).wait(ws);
    CHECK(!closeErr.empty());
    engine.closeAsync(eSeq).wait(ws);
    CHECK(engine.openSequences() == 0);
    CHECK(st.sequences() == std::vector<uint32_t>{0, 0, 0});
  }
}
