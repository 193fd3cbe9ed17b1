// Shared by the coordinator tests: stories260K, a pipeline of local StageServers linked stage to
// stage through a HopResolver over the test's list of capabilities, and running jobs on an Engine.
#pragma once

// g++ 12 at -O3 warns falsely about kj's ExceptionOr<Stage::Client> in the hop resolver; the
// pragma works only where this header comes before any kj header.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "coordinator/engine.hpp"
#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/tokenizer.hpp"
#include "ops/stage.hpp"
#include "worker/stage_server.hpp"

#include <doctest/doctest.h>
#include <kj/async-io.h>
#include <kj/debug.h>

#include <string>
#include <vector>

namespace tern::test {


inline const std::string kStories = TERN_TEST_DATA "/stories260K/stories260K.gguf";

struct Model {
  std::shared_ptr<const gguf::File> file = gguf::File::open(kStories);
  ModelConfig cfg = ModelConfig::fromGguf(*file);
  std::unique_ptr<Tokenizer> tok = Tokenizer::create(Vocab::fromGguf(*file));
};

inline Model& model() {
  static Model m;
  return m;
}

// Stages over layer cuts, e.g. {0, 2, 3, 5}, linked first to last through NextHop.local; the
// servers stay inspectable (stats: sequences open, KV bytes).
struct Pipeline {
  std::vector<proto::Stage::Client> caps;
  std::vector<worker::StageServer*> servers;  // owned by caps

  Pipeline(kj::WaitScope& ws, const std::vector<uint32_t>& cuts, worker::StageLimits limits = {}) {
    const Model& m = model();
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      ops::StageOptions opts;
      opts.threads = 1;
      opts.hugePages = false;
      ops::StageRange range{cuts[i], cuts[i + 1], i == 0, i + 2 == cuts.size()};
      worker::HopResolver resolve = [this](proto::NextHop::Reader hop) -> kj::Promise<proto::Stage::Client> {
        KJ_REQUIRE(hop.isLocal() && hop.getLocal() < caps.size(), "test resolver: local hops only");
        return proto::Stage::Client(caps[hop.getLocal()]);
      };
      auto server = kj::heap<worker::StageServer>(std::make_unique<ops::Stage>(m.file, m.cfg, range, opts),
                                                  1u, "test", static_cast<uint32_t>(i), limits, resolve);
      servers.push_back(server.get());
      caps.push_back(kj::mv(server));
    }
    for (size_t i = 0; i + 1 < caps.size(); ++i) {
      auto req = caps[i].linkRequest();
      req.initNext().setLocal(static_cast<uint32_t>(i + 1));
      req.send().wait(ws);
    }
  }

  std::vector<proto::Stage::Client> copy() {
    std::vector<proto::Stage::Client> out;
    for (auto& c : caps) out.emplace_back(c);
    return out;
  }

  // Sequences open on each stage.
  std::vector<uint32_t> sequences() const {
    std::vector<uint32_t> n;
    for (const auto* s : servers) n.push_back(s->stats().sequences);
    return n;
  }
};

struct Job {
  std::vector<TokenId> prompt;
  int nPredict = 20;
  coord::SamplingParams params;
};

struct Out {
  std::vector<TokenId> tokens;
  std::vector<float> logits;  // rows of every evaluated position, in order
  std::string text;
  coord::TurnResult result;
  bool done = false;
};

inline coord::SamplingParams greedy() {
  coord::SamplingParams p;
  p.temperature = 0;
  return p;
}

// Runs every job on one engine at once (opened, fed, then one run()).
inline std::vector<Out> runTogether(std::vector<proto::Stage::Client> stages, kj::WaitScope& ws,
                                    const std::vector<Job>& jobs, bool withLogits,
                                    coord::EngineOptions opts = {},
                                    coord::Engine::Counters* counters = nullptr) {
  const Model& m = model();
  coord::Engine engine(m.cfg, *m.tok, std::move(stages), ws, opts);
  std::vector<Out> outs(jobs.size());
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < jobs.size(); ++i) {
    ids.push_back(engine.open(jobs[i].params));
    Out& o = outs[i];
    coord::GenerateCallbacks cb;
    cb.onToken = [&o](TokenId id) { o.tokens.push_back(id); };
    cb.onText = [&o](std::string_view s) { o.text += s; };
    if (withLogits) {
      cb.onLogits = [&o](std::span<const float> row) { o.logits.insert(o.logits.end(), row.begin(), row.end()); };
    }
    engine.feed(ids.back(), jobs[i].prompt, jobs[i].nPredict, cb, [&o](const coord::TurnResult& r) {
      o.result = r;
      o.done = true;
    });
  }
  engine.run();
  for (size_t i = 0; i < jobs.size(); ++i) {
    CHECK(outs[i].done);
    CHECK(engine.position(ids[i]) == jobs[i].prompt.size() + outs[i].tokens.size() - 1);
    engine.close(ids[i]);
  }
  if (counters) *counters = engine.counters();
  return outs;
}

inline std::vector<Out> runTogether(Pipeline& p, kj::WaitScope& ws, const std::vector<Job>& jobs,
                                    bool withLogits, coord::EngineOptions opts = {},
                                    coord::Engine::Counters* counters = nullptr) {
  return runTogether(p.copy(), ws, jobs, withLogits, opts, counters);
}

inline Out runAlone(Pipeline& p, kj::WaitScope& ws, const Job& job, bool withLogits) {
  return runTogether(p, ws, {job}, withLogits).at(0);
}

inline std::vector<Job> eightJobs(bool sample) {
  const Model& m = model();
  const char* prompts[] = {"Once upon a time", "Lily", "The cat sat on the", "One day, a little boy",
                           "", "Tom and Sue went to the park. They", "Mom said", "The sun"};
  std::vector<Job> jobs;
  for (size_t i = 0; i < 8; ++i) {
    Job j;
    j.prompt = m.tok->encode(prompts[i], true);
    j.nPredict = 12 + static_cast<int>(i) * 3;
    if (sample) {
      j.params.temperature = 0.9f;
      j.params.seed = 1000 + i;
      j.params.repeatPenalty = 1.1f;
    } else {
      j.params = greedy();
    }
    jobs.push_back(j);
  }
  return jobs;
}

}  // namespace tern::test
