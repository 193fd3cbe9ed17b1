#include "coordinator/planner.hpp"
#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/layouts.hpp"
#include "topology/machine.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

using tern::coord::HostSpec;
using tern::coord::ModelShape;
using tern::coord::Placement;
using tern::coord::PlanError;
using tern::coord::PlanRequest;
using tern::coord::WorkerPlan;
using tern::coord::WorkerSpec;

namespace {

// A bandwidth-bound model of identical layers.
ModelShape uniformModel(uint32_t nLayer, uint64_t layerBytes, uint64_t kvPerTokenPerLayer = 0) {
  ModelShape m;
  m.name = "uniform";
  m.nLayer = nLayer;
  m.nEmbd = 1024;
  m.nVocab = 1000;
  m.qDim = 1024;
  m.layerWeightBytes.assign(nLayer, layerBytes);
  m.layerMacs.assign(nLayer, layerBytes * 4);  // 2-bit weights: 4 per byte
  m.embeddingBytes = 2'000'000;
  m.embeddingRowBytes = 2'000;
  m.headBytes = 1'000'000;
  m.kvBytesPerTokenPerLayer = kvPerTokenPerLayer;
  return m;
}

WorkerSpec worker(std::string name, double bandwidthGBs, uint64_t freeBytes, std::string host = "h") {
  WorkerSpec w;
  w.name = std::move(name);
  w.host = std::move(host);
  w.cores = 8;
  w.freeMemoryBytes = freeBytes;
  w.bandwidthGBs = bandwidthGBs;
  w.calibMacsPerSec = 0;  // bandwidth alone
  w.linkGbps = 10;
  w.linkLatencyMs = 0.1;
  return w;
}

// Every worker's plan: contiguous layers in pipeline order covering [0, nLayer), within memory.
void checkWellFormed(const Placement& p, const ModelShape& m, const std::vector<WorkerSpec>& ws) {
  REQUIRE(p.workers.size() == ws.size());
  uint32_t next = 0;
  int embeds = 0, heads = 0;
  for (const WorkerPlan& w : p.workers) {
    CHECK(w.layerBegin == next);
    CHECK(w.layerEnd >= w.layerBegin);
    next = w.layerEnd;
    embeds += w.holdsEmbedding;
    heads += w.holdsHead;
    CHECK(w.weightBytes + w.kvBytes <= ws[w.workerIndex].freeMemoryBytes);
    CHECK(ws[w.workerIndex].name == w.worker);
  }
  CHECK(next == m.nLayer);
  CHECK(embeds == 1);
  CHECK(heads == 1);
  CHECK(p.workers.front().holdsEmbedding);
  CHECK(p.workers.back().holdsHead);
  CHECK(p.singleSequenceTokensPerSecond > 0);
  CHECK(p.pipelinedTokensPerSecond >= p.singleSequenceTokensPerSecond * 0.999);
}

HostSpec hostFromMachine(const std::string& name, const tern::topo::Machine& m, double bwPerNode) {
  HostSpec h;
  h.name = name;
  h.bandwidthGBsPerNode = bwPerNode;
  h.macsPerSecPerCore = tern::coord::kDefaultMacsPerSecPerCore;
  for (const tern::topo::NumaNode& n : m.nodes)
    h.nodes.push_back({n.index, static_cast<unsigned>(n.cores.size()), n.memoryBytes});
  return h;
}

}  // namespace

TEST_CASE("planner: model shape from a GGUF file (stories260K, hand-computed sizes)") {
  auto f = tern::gguf::File::open(std::string(TERN_TEST_DATA) + "/stories260K/stories260K.gguf");
  tern::ModelConfig cfg = tern::ModelConfig::fromGguf(*f);
  ModelShape m = tern::coord::modelShapeFromGguf(*f, cfg);
  // dim 64, 5 layers, 8 heads, 4 KV heads (kvDim 32), ff 172, vocab 512, all F32, untied head.
  CHECK(m.nLayer == 5);
  REQUIRE(m.layerWeightBytes.size() == 5);
  // q, o 64x64; k, v 64x32; gate, up, down 64x172; two norms of 64: x4 bytes.
  const uint64_t layerParams = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 172;
  CHECK(m.layerWeightBytes[4] == 4 * (layerParams + 2 * 64));
  CHECK(m.layerMacs[0] == layerParams);
  CHECK(m.embeddingBytes == 64 * 512 * 4);
  CHECK(m.embeddingRowBytes == 64 * 4);
  CHECK(m.headBytes == 64 * 4 + 64 * 512 * 4);
  CHECK(m.headSharedBytes == 0);
  CHECK(m.kvBytesPerTokenPerLayer == 2 * 32 * 2);
  CHECK(tern::coord::modelShapeFromGguf(*f, cfg, 4).kvBytesPerTokenPerLayer == 2 * 32 * 4);
}

TEST_CASE("planner: model shape from a layout (bitnet-tiny: tied head, T2 projections)") {
  const tern::Layout* l = tern::findLayout("bitnet-tiny");
  REQUIRE(l != nullptr);
  ModelShape m = tern::coord::modelShapeFromLayout(*l);
  // embd 128, ff 256, 2 layers, 2 heads x 64, vocab 32002, F16 token_embd, tied.
  CHECK(m.nLayer == 2);
  CHECK(m.layerMacs[1] == 4 * 128 * 128 + 3 * 128 * 256);
  CHECK(m.embeddingBytes == 128ull * 32002 * 2);
  CHECK(m.headBytes == 128 * 4 + m.embeddingBytes);
  CHECK(m.headSharedBytes == m.embeddingBytes);
  CHECK(m.kvBytesPerTokenPerLayer == 2 * 128 * 2);
}

TEST_CASE("planner: a worker twice as fast gets twice the layers") {
  ModelShape m = uniformModel(12, 1'000'000'000);
  std::vector<WorkerSpec> ws = {worker("fast", 20, 100'000'000'000), worker("slow", 10, 100'000'000'000)};
  PlanRequest r;
  r.nCtx = 1000;
  r.maxSequences = 2;
  Placement p = tern::coord::planPlacement(m, ws, r);
  checkWellFormed(p, m, ws);
  CHECK(p.workers[0].layerEnd == 8);   // 8 x 0.05 s = 4 x 0.1 s
  CHECK(p.workers[1].layerBegin == 8);
  CHECK(p.stages == 2);
  // Stage times: 8 GB + one embedding row at 20 GB/s; 4 GB + head at 10 GB/s.
  const double t0 = (8e9 + 2000) / 20e9, t1 = (4e9 + 1e6) / 10e9;
  CHECK(p.workers[0].secondsPerToken == doctest::Approx(t0));
  CHECK(p.workers[1].secondsPerToken == doctest::Approx(t1));
  CHECK(p.workers[1].tokensPerSecond == doctest::Approx(1 / t1));
  CHECK(p.bottleneck == 1);
  CHECK(p.weightBytes == 12'000'000'000ull + 2'000'000 + 1'000'000);
  // Same host: hops are small; one sequence waits for both stages, two keep both busy.
  CHECK(p.hopSeconds < 1e-3);
  CHECK(p.singleSequenceTokensPerSecond == doctest::Approx(1 / (t0 + t1)).epsilon(0.01));
  CHECK(p.pipelinedTokensPerSecond == doctest::Approx(1 / t1).epsilon(0.01));

  // Three equal workers and 31 layers: 11/10/10 in some order, never 11/11/9.
  std::vector<WorkerSpec> eq = {worker("a", 10, 1'000'000'000'000), worker("b", 10, 1'000'000'000'000),
                                worker("c", 10, 1'000'000'000'000)};
  Placement q = tern::coord::planPlacement(uniformModel(31, 100'000'000), eq, r);
  checkWellFormed(q, uniformModel(31, 100'000'000), eq);
  for (const WorkerPlan& w : q.workers) {
    CHECK(w.layerEnd - w.layerBegin >= 10);
    CHECK(w.layerEnd - w.layerBegin <= 11);
  }
}

TEST_CASE("planner: memory caps a fast worker; KV counts for context x sequences") {
  // Layers of 1 GB weights + 1000 positions x 2 sequences x 100 KB = 0.2 GB KV each.
  ModelShape m = uniformModel(10, 1'000'000'000, 100'000);
  PlanRequest r;
  r.nCtx = 1000;
  r.maxSequences = 2;
  std::vector<WorkerSpec> ws = {worker("small-fast", 100, 4'000'000'000), worker("big-slow", 10, 50'000'000'000)};
  Placement p = tern::coord::planPlacement(m, ws, r);
  checkWellFormed(p, m, ws);
  // 3 layers = 3.6 GB + 2 MB embedding fits 4 GB; 4 layers would need 4.8 GB.
  CHECK(p.workers[0].layerEnd == 3);
  CHECK(p.workers[0].kvBytes == 3 * 200'000'000ull);
  CHECK(p.workers[1].kvBytes == 7 * 200'000'000ull);
  CHECK(p.kvBytes == 10 * 200'000'000ull);
  CHECK(p.workers[0].weightBytes == 3'002'000'000ull);
  // Half the context is read per token: 500 positions x 100 KB per layer.
  CHECK(p.workers[0].bytesPerToken == 3 * (1'000'000'000ull + 50'000'000ull) + 2000);
}

TEST_CASE("planner: a model that fits nowhere is refused with the shortfall") {
  ModelShape m = uniformModel(10, 2'500'000'000, 210'000);  // 25 GB of layers
  m.embeddingBytes = 500'000'000;
  m.headBytes = 0;
  PlanRequest r;
  r.nCtx = 1000;  // KV 10 layers x 1000 x 210 KB = 2.1 GB
  std::vector<WorkerSpec> ws = {worker("a", 10, 8'000'000'000), worker("b", 10, 8'000'000'000)};
  try {
    (void)tern::coord::planPlacement(m, ws, r);
    FAIL("expected a PlanError");
  } catch (const PlanError& e) {
    CHECK(std::string(e.what()) ==
          "uniform needs 25.5 GB of weights + 2.1 GB KV (1000 positions x 1 sequence), workers "
          "offer 16.0 GB in total: short by 11.6 GB");
  }
  // Enough memory in total, but no worker can hold a whole 2.5 GB layer.
  std::vector<WorkerSpec> many;
  for (int i = 0; i < 20; ++i) many.push_back(worker(std::string("w").append(std::to_string(i)), 10, 2'000'000'000));
  CHECK_THROWS_WITH_AS((void)tern::coord::planPlacement(m, many, r),
                       doctest::Contains("do not fit the workers' free memory"), PlanError);
  // The first worker cannot even hold the embedding.
  std::vector<WorkerSpec> tiny = {worker("tiny", 10, 100'000'000), worker("huge", 10, 100'000'000'000)};
  CHECK_THROWS_WITH_AS((void)tern::coord::planPlacement(m, tiny, r),
                       doctest::Contains("'tiny' cannot hold the embedding"), PlanError);
}

TEST_CASE("planner: the head goes where it is told") {
  ModelShape m = uniformModel(6, 1'000'000'000);
  std::vector<WorkerSpec> ws = {worker("a", 10, 100'000'000'000), worker("b", 10, 100'000'000'000),
                                worker("c", 10, 100'000'000'000)};
  PlanRequest r;
  r.headWorker = "a";
  Placement p = tern::coord::planPlacement(m, ws, r);
  checkWellFormed(p, m, ws);
  CHECK(p.workers.front().worker == "b");
  CHECK(p.workers.back().worker == "a");
  CHECK(p.workers.back().workerIndex == 0);
  CHECK(p.workers.back().holdsHead);
  r.headWorker = "nobody";
  CHECK_THROWS_AS((void)tern::coord::planPlacement(m, ws, r), PlanError);
}

TEST_CASE("planner: bad worker descriptions are refused") {
  ModelShape m = uniformModel(4, 1000);
  PlanRequest r;
  CHECK_THROWS_AS((void)tern::coord::planPlacement(m, {}, r), PlanError);
  CHECK_THROWS_AS((void)tern::coord::planPlacement(m, {worker("a", 0, 1'000'000)}, r), PlanError);
  CHECK_THROWS_AS((void)tern::coord::planPlacement(m, {worker("a", 1, 1'000'000), worker("a", 1, 1'000'000)}, r),
                  PlanError);
  r.nCtx = 0;
  CHECK_THROWS_AS((void)tern::coord::planPlacement(m, {worker("a", 1, 1'000'000)}, r), PlanError);
  // Different hosts without a link.
  r.nCtx = 16;
  WorkerSpec a = worker("a", 1, 1'000'000'000, "h1"), b = worker("b", 1, 1'000'000'000, "h2");
  b.linkGbps = 0;
  CHECK_THROWS_WITH_AS((void)tern::coord::planPlacement(m, {a, b}, r), doctest::Contains("no network link"),
                       PlanError);
}

TEST_CASE("planner: one worker per NUMA node of a synthetic machine") {
  tern::topo::Machine mach = tern::topo::Machine::fromSynthetic("pack:2 numa:2(memory=16GB) core:8 pu:1");
  std::vector<WorkerSpec> ws = tern::coord::workersFromHosts({hostFromMachine("box", mach, 25)});
  REQUIRE(ws.size() == 4);
  for (unsigned i = 0; i < 4; ++i) {
    CHECK(ws[i].name == "box/numa" + std::to_string(i));
    CHECK(ws[i].numaNode == i);
    CHECK(ws[i].cores == 8);
    CHECK(ws[i].freeMemoryBytes == 16'000'000'000ull);
    CHECK(ws[i].calibMacsPerSec == doctest::Approx(8 * tern::coord::kDefaultMacsPerSecPerCore));
  }
  const tern::Layout* l = tern::findLayout("13B");
  REQUIRE(l != nullptr);
  ModelShape m = tern::coord::modelShapeFromLayout(*l);
  PlanRequest r;
  r.nCtx = 2048;
  r.maxSequences = 4;
  Placement p = tern::coord::planPlacement(m, ws, r);
  checkWellFormed(p, m, ws);
  CHECK(p.stages == 4);
  // Equal nodes: 40 layers split evenly, except that the last stage also reads the tied head
  // (32002 x 5120 F16 = 328 MB, about 4 layers of 79 MB) and so takes fewer layers.
  for (size_t i = 0; i < 3; ++i) {
    CHECK(p.workers[i].layerEnd - p.workers[i].layerBegin >= 10);
    CHECK(p.workers[i].layerEnd - p.workers[i].layerBegin <= 12);
  }
  CHECK(p.workers[3].layerEnd - p.workers[3].layerBegin >= 5);
  CHECK(p.workers[3].layerEnd - p.workers[3].layerBegin <= 8);
  // Four sequences in flight keep four stages busy: close to the slowest stage's rate.
  CHECK(p.pipelinedTokensPerSecond ==
        doctest::Approx(p.workers[p.bottleneck].tokensPerSecond).epsilon(0.05));
  CHECK(p.pipelinedTokensPerSecond > 3 * p.singleSequenceTokensPerSecond);
}

TEST_CASE("planner: the 100B layout across a described cluster") {
  const std::string json = R"([
    {"name": "alpha", "cores": 32, "memory_gb": 24, "bandwidth_gbs": 100, "numa_nodes": 2,
     "link_gbps": 25, "link_latency_ms": 0.05},
    {"name": "beta", "cores": 16, "memory_gb": 12, "bandwidth_gbs": 50, "numa_nodes": 1,
     "link_gbps": 10, "link_latency_ms": 0.1}
  ])";
  std::vector<HostSpec> hosts = tern::coord::parseClusterJson(json, "cluster.json");
  REQUIRE(hosts.size() == 2);
  CHECK(hosts[0].nodes.size() == 2);
  CHECK(hosts[0].nodes[1].cores == 16);
  CHECK(hosts[0].nodes[1].memoryBytes == 12'000'000'000ull);
  CHECK(hosts[0].bandwidthGBsPerNode == doctest::Approx(50));
  std::vector<WorkerSpec> ws = tern::coord::workersFromHosts(hosts);
  REQUIRE(ws.size() == 3);
  CHECK(ws[0].name == "alpha/numa0");
  CHECK(ws[2].name == "beta");
  CHECK(ws[2].host == "beta");

  const tern::Layout* l = tern::findLayout("100B");
  REQUIRE(l != nullptr);
  ModelShape m = tern::coord::modelShapeFromLayout(*l);
  CHECK(m.nLayer == 72);
  PlanRequest r;
  r.nCtx = 2048;
  Placement p = tern::coord::planPlacement(m, ws, r);
  checkWellFormed(p, m, ws);
  CHECK(p.stages == 3);
  // Three nodes of 50 GB/s: about 24 layers each.
  for (const WorkerPlan& w : p.workers) {
    CHECK(w.layerEnd - w.layerBegin >= 22);
    CHECK(w.layerEnd - w.layerBegin <= 26);
  }
  // Two network hops (alpha -> beta with 32 KiB activations, beta -> coordinator on alpha with
  // logits) each cost at least 0.1 ms of latency.
  CHECK(p.hopSeconds > 2e-4);
  CHECK(p.hopSeconds < 5e-3);

  // Half the memory: refused with the shortfall.
  std::vector<WorkerSpec> half = ws;
  for (WorkerSpec& w : half) w.freeMemoryBytes /= 2;
  CHECK_THROWS_WITH_AS((void)tern::coord::planPlacement(m, half, r), doctest::Contains("short by"), PlanError);
}

TEST_CASE("planner: cluster files with bad fields are refused with the field's name") {
  using tern::coord::parseClusterJson;
  CHECK_THROWS_WITH_AS(parseClusterJson("[", "c.json"), doctest::Contains("c.json: not valid JSON"),
                       std::invalid_argument);
  CHECK_THROWS_AS(parseClusterJson("[]", "c.json"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(parseClusterJson(R"([{"cores": 4, "bandwidth_gbs": 10}])", "c.json"),
                       doctest::Contains("missing 'memory_gb'"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(parseClusterJson(R"([{"cores": 4, "memory_gb": -1, "bandwidth_gbs": 10}])", "c.json"),
                       doctest::Contains("'memory_gb' = -1 is out of range"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(parseClusterJson(R"([{"cores": 2, "memory_gb": 8, "bandwidth_gbs": 10, "numa_nodes": 4}])",
                                        "c.json"),
                       doctest::Contains("more NUMA nodes"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(parseClusterJson(R"([{"cores": "4", "memory_gb": 8, "bandwidth_gbs": 10}])", "c.json"),
                       doctest::Contains("'cores' is not a number"), std::invalid_argument);
  std::vector<HostSpec> h = parseClusterJson(R"({"boxes": [{"cores": 4, "memory_gb": 8, "bandwidth_gbs": 10}]})", "c.json");
  REQUIRE(h.size() == 1);
  CHECK(h[0].name == "box0");
  CHECK(h[0].linkGbps == doctest::Approx(10));
}
