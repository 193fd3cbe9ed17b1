// The coordinator's cluster set-up against real workers: two worker::WorkerThreads on loopback
// TCP, stories260K loaded through Cluster from the workers' own path and streamed as shard files,
// linked worker to worker; the Engine then gives the tokens of a one-process pipeline.
#include "tests/coordinator/engine_fixture.hpp"  // first: its pragma must precede kj's headers

#include "coordinator/cluster.hpp"
#include "protocol/address.hpp"
#include "worker/host.hpp"

#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace tern;
using namespace tern::test;

TEST_CASE("cluster: worker lists, even shards and shards from a plan") {
  CHECK(coord::parseWorkerList("127.0.0.1:7000, box:80,[::1]:9") ==
        std::vector<std::string>{"127.0.0.1:7000", "box:80", "[::1]:9"});
  CHECK_THROWS_WITH_AS(coord::parseWorkerList("a:1,,b:2"), "worker list 'a:1,,b:2': empty entry",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(coord::parseWorkerList("box"), "worker address 'box': expected host:port",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(coord::parseWorkerList("box:99999"),
                       "worker address 'box:99999': port must be a number in [1, 65535]",
                       std::invalid_argument);
  CHECK_THROWS_AS(coord::parseWorkerList("::1:80"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(coord::parseWorkerList("box:0"),
                       "worker address 'box:0': port must be a number in [1, 65535]",
                       std::invalid_argument);

  // The parser behind --workers, --listen and --metrics: port 0 (any free port) is fine to
  // listen on; IPv6 hosts lose their brackets and get them back when joined.
  const proto::HostPort any = proto::parseHostPort("[::1]:0");
  CHECK(any.host == "::1");
  CHECK(any.port == 0);
  CHECK(proto::joinHostPort(any.host, 7000) == "[::1]:7000");
  CHECK(proto::joinHostPort("10.0.0.2", 7000) == "10.0.0.2:7000");
  CHECK_THROWS_WITH_AS(proto::parseHostPort("[::1"), "unterminated or empty [IPv6] host",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(proto::parseHostPort("host:7x"), "port must be a number in [0, 65535]",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(proto::parseHostPort("host:"), "port must be a number in [0, 65535]",
                       std::invalid_argument);

  // Plain links: loopback only, unless --insecure.
  for (const char* h : {"127.0.0.1", "127.1.2.3", "localhost", "::1"}) CHECK(proto::isLoopbackHost(h));
  for (const char* h : {"0.0.0.0", "::", "10.0.0.2", "128.0.0.1", "127.0.0.256", "127.0.0.1x", "127.0.0",
                        "myhost", "127.0.0.1.example", ""}) {
    CAPTURE(h);
    CHECK_FALSE(proto::isLoopbackHost(h));
  }
  CHECK_NOTHROW(proto::checkPlainLink("127.0.0.1:7000", false, "dialling"));
  CHECK_NOTHROW(proto::checkPlainLink("[::1]:7000", false, "dialling"));
  CHECK_NOTHROW(proto::checkPlainLink("10.0.0.2:7000", true, "dialling"));
  CHECK_THROWS_WITH_AS(proto::checkPlainLink("10.0.0.2:7000", false, "dialling"),
                       "10.0.0.2:7000 is not a loopback address: cluster links are plain, unauthenticated "
                       "TCP, so dialling another host needs --insecure",
                       std::invalid_argument);

  const auto even = coord::evenShards(5, 2, 3);  // worker 0: stage 0, worker 1: stages 1, 2
  REQUIRE(even.size() == 3);
  CHECK(even[0].worker == 0);
  CHECK(even[1].worker == 1);
  CHECK(even[2].worker == 1);
  // 5 layers in 3 stages: the first two get the extra layers, the head stage the fewest.
  CHECK((even[0].layerBegin == 0 && even[0].layerEnd == 2 && even[0].embed && !even[0].head));
  CHECK((even[1].layerBegin == 2 && even[1].layerEnd == 4 && !even[1].embed && !even[1].head));
  CHECK((even[2].layerBegin == 4 && even[2].layerEnd == 5 && even[2].head));
  CHECK(coord::evenShards(30, 4, 0).size() == 4);
  CHECK_THROWS_AS(coord::evenShards(5, 2, 6), std::invalid_argument);
  CHECK_THROWS_AS(coord::evenShards(5, 3, 2), std::invalid_argument);

  coord::Placement plan;
  plan.workers.resize(3);
  plan.workers[0] = {"b", 1, true, 0, 3, true, false};
  plan.workers[1] = {"c", 2, false};
  plan.workers[2] = {"a", 0, true, 3, 5, false, true};
  const auto fromPlan = coord::shardsFromPlan(plan);
  REQUIRE(fromPlan.size() == 2);
  CHECK((fromPlan[0].worker == 1 && fromPlan[0].layerEnd == 3 && fromPlan[0].embed));
  CHECK((fromPlan[1].worker == 0 && fromPlan[1].layerBegin == 3 && fromPlan[1].head));
  // A worker holding only the head (the planner's choice when the head outweighs layers) is a
  // stage of its own with no layers.
  plan.workers[0] = {"b", 1, true, 0, 5, true, false};
  plan.workers[2] = {"a", 0, true, 0, 0, false, true};
  const auto headAlone = coord::shardsFromPlan(plan);
  REQUIRE(headAlone.size() == 2);
  CHECK((headAlone[0].layerBegin == 0 && headAlone[0].layerEnd == 5 && !headAlone[0].head));
  CHECK((headAlone[1].worker == 0 && headAlone[1].layerBegin == 5 && headAlone[1].layerEnd == 5));
  CHECK((headAlone[1].head && !headAlone[1].embed));

  coord::WorkerSpec w = coord::workerSpecFromInfo(
      proto::WorkerInfoData{"h", "h:1", 1, 8, 8, 100, 60, {}, "ref", 2.5, 30, "", "", ""});
  CHECK(w.name == "h:1");
  CHECK(w.freeMemoryBytes == 60);
  CHECK(w.calibMacsPerSec == 2.5e9);
  CHECK(w.bandwidthGBs == 30);
  CHECK(w.numaNode == 1);
}

TEST_CASE("cluster: two workers serve stories260K from their path and streamed, as one process does") {
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  const Model& m = model();
  std::vector<std::unique_ptr<worker::WorkerThread>> workers;
  for (int i = 0; i < 2; ++i) {
    worker::HostOptions h;
    h.calibrate = false;
    h.numa = -1;
    h.threads = 1;
    h.modelDir = TERN_TEST_DATA;  // stories260K/ and tiny-bitnet/ (a wrong model, below)
    workers.push_back(std::make_unique<worker::WorkerThread>(h));
  }
  coord::Cluster cluster(io, {workers[0]->address(), workers[1]->address()});
  REQUIRE(cluster.workers().size() == 2);
  CHECK(cluster.workers()[1].address == workers[1]->address());

  const auto jobs = eightJobs(false);
  Pipeline local(ws, {0, 1, 3, 5});
  const auto ref = runTogether(local, ws, jobs, true);

  // Worker 0 holds layers [0, 2), worker 1 holds [2, 4) and [4, 5): a remote and a local hop.
  const auto shards = coord::evenShards(m.cfg.nLayer, 2, 3);
  coord::LoadOptions opts;
  opts.spec.maxSequences = 8;
  opts.spec.nCtx = m.cfg.nCtxTrain;
  opts.spec.threads = 1;
  uint64_t lastDone = 0, lastTotal = 0;
  opts.progress = [&](uint64_t done, uint64_t total) {
    CHECK(done >= lastDone);
    lastDone = done;
    lastTotal = total;
  };
  for (auto source : {coord::ShardSource::Path, coord::ShardSource::Stream, coord::ShardSource::Auto}) {
    CAPTURE(int(source));
    opts.source = source;
    // Auto with a path the workers do not have: streamed instead.
    opts.path = source == coord::ShardSource::Auto ? "/nonexistent/stories260K.gguf" : "";
    lastDone = lastTotal = 0;
    auto stages = cluster.load(*m.file, m.cfg, shards, opts);
    REQUIRE(stages.size() == 3);
    if (source != coord::ShardSource::Path) {
      CHECK(lastTotal > 0);
      CHECK(lastDone == lastTotal);
    }
    coord::Engine::Counters c;
    const auto got = runTogether(std::move(stages), ws, jobs, true, {}, &c);
    CHECK(c.maxInFlight == 3);
    for (size_t i = 0; i < jobs.size(); ++i) {
      CAPTURE(i);
      CHECK(got[i].tokens == ref[i].tokens);
      CHECK(got[i].logits == ref[i].logits);
    }
  }

  // Every worker's stages counted their work.
  const auto stats = cluster.stats(true);
  REQUIRE(stats.size() == 2);
  uint64_t tokens = 0;
  for (const auto& w : stats) {
    for (const auto& s : w) tokens += s.tokens;
  }
  CHECK(tokens > 0);

  // A path that is not the model: refused with the worker's message.
  opts.source = coord::ShardSource::Path;
  opts.path = TERN_TEST_DATA "/tiny-bitnet/model-f32.gguf";
  std::string err;
  try {
    cluster.load(*m.file, m.cfg, shards, opts);
  } catch (const std::runtime_error& e) {
    err = e.what();
  }
  CHECK(err.find("worker " + workers[0]->address() + ": layers [0, 2): ") == 0);
  CHECK(err.find("is not the coordinator's model") != std::string::npos);
}

TEST_CASE("cluster: an address nobody listens on is named") {
  auto io = kj::setupAsyncIo();
  std::string err;
  try {
    coord::Cluster cluster(io, {"127.0.0.1:1"});
  } catch (const std::runtime_error& e) {
    err = e.what();
  }
  CHECK(err.find("worker 127.0.0.1:1: cannot connect") == 0);
}
