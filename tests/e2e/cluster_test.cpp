// The cluster end to end: `tern worker` processes on loopback, `tern run --workers` as the
// coordinator, the same tokens and logits as one process; metrics scraped over HTTP; `tern plan`
// and `tern bench` with live workers; clear errors for workers that cannot serve.
#include "tests/e2e/background.hpp"
#include "tests/e2e/spawn.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

using namespace tern;
using tern::e2e::runTern;

namespace {

struct Output {
  std::string text;
  std::string logits;  // bytes of --logits-out
};

// Greedy generation through `tern run` with extra flags.
Output greedy(const std::string& model, int n, const std::vector<std::string>& extra) {
  e2e::TempDir dir;
  const auto logits = (dir / "logits.bin").string();
  std::vector<std::string> args{"run", "-m", model, "-p", "Once upon a time", "-n",
                                std::to_string(n), "--temp", "0", "-t", "1", "--logits-out", logits};
  args.insert(args.end(), extra.begin(), extra.end());
  auto r = runTern(args);
  INFO("args: " << [&] { std::string s; for (auto& a : args) s += a + " "; return s; }());
  INFO("stderr: " << r.err);
  REQUIRE(r.exitCode == 0);
  return {r.out, e2e::slurp(logits)};
}

std::string join(const std::vector<std::unique_ptr<e2e::WorkerProcess>>& ws, size_t k) {
  std::string s;
  for (size_t i = 0; i < k; ++i) s += (i ? "," : "") + ws[i]->address();
  return s;
}

std::string generate2B4T(const e2e::TempDir& dir, int layers) {
  const auto path = (dir / ("2b4t-" + std::to_string(layers) + ".gguf")).string();
  auto gen = runTern({"gen", "--layout", "2B4T-tiny", "--layers", std::to_string(layers), "-o", path});
  INFO("gen stderr: " << gen.err);
  REQUIRE(gen.exitCode == 0);
  return path;
}

}  // namespace

TEST_CASE("e2e cluster: worker processes on loopback give one process's tokens and logits, 1-4 stages") {
  e2e::TempDir dir;
  const std::string ternary = generate2B4T(dir, 4);
  std::vector<std::unique_ptr<e2e::WorkerProcess>> workers;
  for (int i = 0; i < 4; ++i) workers.push_back(std::make_unique<e2e::WorkerProcess>());

  for (const auto& [model, n] : {std::pair{e2e::kStories, 24}, {ternary, 6}}) {
    CAPTURE(model);
    const Output one = greedy(model, n, {"--stages", "1"});
    REQUIRE(!one.text.empty());
    REQUIRE(!one.logits.empty());
    for (size_t k = 1; k <= 4; ++k) {
      CAPTURE(k);
      const Output cluster = greedy(model, n, {"--workers", join(workers, k), "--split", "even"});
      CHECK(cluster.text == one.text);
      CHECK(cluster.logits == one.logits);
    }
    // The weights streamed from the coordinator instead of read from the workers' own copy.
    const Output streamed =
        greedy(model, n, {"--workers", join(workers, 2), "--split", "even", "--shard-source", "stream"});
    CHECK(streamed.text == one.text);
    CHECK(streamed.logits == one.logits);
  }
}

TEST_CASE("e2e cluster: every process serves Prometheus metrics with plausible values") {
  std::vector<std::unique_ptr<e2e::WorkerProcess>> workers;
  for (int i = 0; i < 2; ++i) {
    workers.push_back(std::make_unique<e2e::WorkerProcess>(std::vector<std::string>{"--metrics", "127.0.0.1:0"}));
    REQUIRE(!workers.back()->metricsAddress().empty());
  }
  const int n = 16;
  e2e::Background coord({"run", "-m", e2e::kStories, "-p", "Once upon a time", "-n", std::to_string(n),
                         "--temp", "0", "--workers", join(workers, 2), "--split", "even",
                         "--metrics", "127.0.0.1:0", "--metrics-linger", "60"});
  const auto prompt = coord.waitFor(R"(prompt: (\d+) tokens)", 60);
  INFO("coordinator stderr: " << coord.err());
  REQUIRE(prompt);
  const auto coordMetrics = coord.waitFor(R"(http://(\S+)/metrics)", 1);
  REQUIRE(coordMetrics);
  const double promptTokens = std::stod(*prompt);  // BOS + 4 for stories260K
  // Every position that went through the pipeline: the prompt, then n - 1 fed samples.
  const double tokens = promptTokens + n - 1;

  const std::string c = e2e::httpGet(*coordMetrics, "/metrics");
  INFO("coordinator metrics:\n" << c);
  CHECK(e2e::metricValue(c, "tern_coordinator_tokens_generated_total") == doctest::Approx(n));
  CHECK(e2e::metricValue(c, "tern_coordinator_prompt_tokens_total") == doctest::Approx(promptTokens));
  CHECK(e2e::metricValue(c, "tern_coordinator_batches_total").value_or(0) >= n);
  CHECK(e2e::metricValue(c, "tern_coordinator_step_seconds_count").value_or(0) >= n);
  CHECK(e2e::metricValue(c, "tern_coordinator_received_bytes_total").value_or(0) >= n * 512 * 4.0);
  CHECK(e2e::metricValue(c, "tern_build_info", {"role=\"coordinator\""}) == doctest::Approx(1));

  for (size_t i = 0; i < workers.size(); ++i) {
    CAPTURE(i);
    const std::string w = e2e::httpGet(workers[i]->metricsAddress(), "/metrics");
    INFO("worker metrics:\n" << w);
    CHECK(e2e::metricValue(w, "tern_stage_tokens_total") == doctest::Approx(tokens));
    const auto batches = e2e::metricValue(w, "tern_stage_batches_total");
    REQUIRE(batches);
    CHECK(*batches >= n);
    CHECK(e2e::metricValue(w, "tern_stage_forward_seconds_count") == doctest::Approx(*batches));
    CHECK(e2e::metricValue(w, "tern_stage_forward_seconds_sum").value_or(0) > 0);
    CHECK(e2e::metricValue(w, "tern_stage_batch_tokens_sum") == doctest::Approx(tokens));
    CHECK(e2e::metricValue(w, "tern_stage_received_bytes_total").value_or(0) > 0);
    CHECK(e2e::metricValue(w, "tern_stage_sent_bytes_total").value_or(0) > 0);
    CHECK(e2e::metricValue(w, "tern_stage_kv_cache_bytes").has_value());
    CHECK(e2e::metricValue(w, "tern_stage_queue_depth") == doctest::Approx(0));
    CHECK(e2e::metricValue(w, "tern_worker_weight_bytes").value_or(0) > 0);
    CHECK(e2e::metricValue(w, "tern_worker_numa_node").has_value());
    CHECK(w.find("kernel=\"") != std::string::npos);
  }
}

TEST_CASE("e2e cluster: tern plan and tern bench with live workers") {
  e2e::TempDir dir;
  const std::string ternary = generate2B4T(dir, 3);
  std::vector<std::unique_ptr<e2e::WorkerProcess>> workers;
  // Calibrated: plan and the default split use the measured speeds.
  for (int i = 0; i < 2; ++i) workers.push_back(std::make_unique<e2e::WorkerProcess>(std::vector<std::string>{}, true));

  auto plan = runTern({"plan", "-m", ternary, "--workers", join(workers, 2), "-c", "256"});
  INFO("plan stdout: " << plan.out << "\nstderr: " << plan.err);
  REQUIRE(plan.exitCode == 0);
  CHECK(plan.out.find(workers[0]->address()) != std::string::npos);
  CHECK(plan.out.find(workers[1]->address()) != std::string::npos);
  CHECK(plan.out.find("predicted") != std::string::npos);

  auto bench = runTern({"bench", "-m", ternary, "-p", "0", "-n", "8", "-r", "1", "-t", "1",
                        "--workers", join(workers, 2), "--split", "even", "--concurrency", "4,1,2",
                        "--json"});
  INFO("bench stderr: " << bench.err);
  REQUIRE(bench.exitCode == 0);
  const auto rows = nlohmann::json::parse(bench.out);
  int concurrencyRows = 0;
  for (const auto& row : rows) {
    if (!row.contains("sequences")) continue;
    ++concurrencyRows;
    const int seqs = row["sequences"].get<int>();
    CAPTURE(seqs);
    CHECK(row["tokens"].get<int>() == 8 * seqs);
    CHECK(row["aggregate_ts"].get<double>() > 0);
    // Counted over each test alone: one sequence never has two micro-batches in flight, more
    // fill both stages.
    CHECK(row["max_in_flight"].get<int>() == (seqs == 1 ? 1 : 2));
    REQUIRE(row["stages"].size() == 2);
    for (const auto& s : row["stages"]) {
      const double sum = s["compute"].get<double>() + s["transfer"].get<double>() + s["wait"].get<double>();
      CHECK(sum == doctest::Approx(1.0).epsilon(1e-6));
      CHECK(s["compute"].get<double>() > 0);
      CHECK(s["tokens"].get<int>() == 8 * seqs);
    }
  }
  CHECK(concurrencyRows == 3);
}

TEST_CASE("e2e cluster: unreachable workers and bad worker lists give one clear line") {
  auto r = runTern({"run", "-m", e2e::kStories, "-p", "x", "-n", "1", "--workers", "127.0.0.1:1"});
  CHECK(r.exitCode != 0);
  CHECK(r.err.find("127.0.0.1:1") != std::string::npos);
  r = runTern({"run", "-m", e2e::kStories, "-p", "x", "-n", "1", "--workers", "nohost"});
  CHECK(r.exitCode != 0);
  CHECK(r.err.find("nohost") != std::string::npos);
  // Plain TCP beyond loopback needs --insecure: refused before anything is sent or bound (0.0.0.0
  // would mean this host, were it dialled; it is not).
  r = runTern({"run", "-m", e2e::kStories, "-p", "x", "-n", "1", "--workers", "0.0.0.0:1"});
  CHECK(r.exitCode != 0);
  CHECK(r.err.find("0.0.0.0:1 is not a loopback address") != std::string::npos);
  CHECK(r.err.find("needs --insecure") != std::string::npos);
  r = runTern({"worker", "--listen", "0.0.0.0:0", "--no-calibrate"});
  CHECK(r.exitCode != 0);
  CHECK(r.err.find("cannot listen on 0.0.0.0:0: 0.0.0.0:0 is not a loopback address") != std::string::npos);
  // A worker asked for more layers than it can hold refuses before allocating.
  e2e::WorkerProcess small({"--memory-limit-mib", "1"});
  r = runTern({"run", "-m", e2e::kStories, "-p", "x", "-n", "1", "--workers", small.address()});
  CHECK(r.exitCode != 0);
  CHECK(r.err.find("free") != std::string::npos);
}
