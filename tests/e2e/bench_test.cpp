// `tern bench` as a user runs it: the markdown table, the JSON and `tern bench kernels` parse and
// hold sane values. A smoke test: no timing is asserted beyond "positive" and "below 2x the bound".
#include "model/layouts.hpp"
#include "tests/e2e/background.hpp"
#include "tests/e2e/spawn.hpp"
#include "topology/bandwidth.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace tern::e2e {
namespace {

// A 125M-layout model generated once for every test case here.
const std::string& model125M() {
  static TempDir dir;
  static const std::string path = [] {
    const std::string p = (dir / "125M.gguf").string();
    const RunResult r = runTern({"gen", "--layout", "125M", "-o", p, "--seed", "3"});
    if (r.exitCode != 0) throw std::runtime_error("tern gen failed: " + r.err);
    return p;
  }();
  return path;
}

// Bytes a decoded token reads, from the layout's tensor table: every tensor once (the tied head
// is the embedding matrix), plus the one embedding row the lookup reads.
uint64_t expectedBytesPerToken(const Layout& l) {
  uint64_t sum = 0, embd = 0;
  for (const LayoutTensor& t : layoutTensors(l)) {
    if (t.role == TensorRole::Embedding) embd = t.nbytes();
    if (t.role != TensorRole::Embedding || l.tiedHead) sum += t.nbytes();
  }
  return sum + embd / l.nVocab;
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// "| a | b |" -> {"a", "b"}.
std::vector<std::string> cells(const std::string& line) {
  std::vector<std::string> out;
  size_t at = line.find('|');
  while (at != std::string::npos) {
    const size_t next = line.find('|', at + 1);
    if (next == std::string::npos) break;
    std::string c = line.substr(at + 1, next - at - 1);
    const size_t b = c.find_first_not_of(' '), e = c.find_last_not_of(' ');
    out.push_back(b == std::string::npos ? "" : c.substr(b, e - b + 1));
    at = next;
  }
  return out;
}

double number(const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  REQUIRE_MESSAGE(end != s.c_str(), "not a number: '" << s << "'");
  return v;
}

}  // namespace

TEST_CASE("e2e bench: markdown table of pp and tg with the bandwidth bound") {
  const RunResult r = runTern({"bench", "-m", model125M(), "-p", "16", "-n", "4", "-r", "1", "-t", "1"});
  REQUIRE_MESSAGE(r.exitCode == 0, r.err);
  const auto ls = lines(r.out);
  REQUIRE(ls.size() >= 5);
  // The first line: bandwidth and bytes per token (exact, from the layout's tensor table).
  CHECK(ls[0].find("read bandwidth:") == 0);
  CHECK(ls[0].find("GB/s (1 thread)") != std::string::npos);
  const uint64_t bytes = expectedBytesPerToken(*findLayout("125M"));
  std::string exact = std::to_string(bytes);
  exact.insert(exact.begin(), '(');
  exact.push_back(')');
  CHECK_MESSAGE(ls[0].find(exact) != std::string::npos, ls[0]);

  std::vector<std::vector<std::string>> table;
  for (const auto& l : ls) if (!l.empty() && l[0] == '|') table.push_back(cells(l));
  REQUIRE(table.size() == 4);  // header, separator, pp16, tg4
  const std::vector<std::string> header{"model", "size", "params", "format", "kernel",
                                        "threads", "test", "t/s", "bound t/s", "% of bound"};
  CHECK(table[0] == header);
  const auto& pp = table[2];
  const auto& tg = table[3];
  REQUIRE(pp.size() == header.size());
  REQUIRE(tg.size() == header.size());
  CHECK(pp[0] == "bitnet 128M TERN_T2");
  CHECK(pp[3] == "TERN_T2");
  CHECK(pp[5] == "1");
  CHECK(pp[6] == "pp16");
  CHECK(tg[6] == "tg4");
  CHECK(number(pp[1]) > 0);  // GiB
  CHECK(number(pp[7]) > 0);  // "x ± y"
  CHECK(pp[8] == "-");
  const double ts = number(tg[7]), bound = number(tg[8]), pct = number(tg[9]);
  CHECK(ts > 0);
  CHECK(bound > 0);
  CHECK(pct / 100 > 0);
  CHECK(pct / 100 < 2);
  CHECK(std::abs(pct - 100 * ts / bound) < 0.1);  // printed to 0.1% and 0.01 t/s
}

TEST_CASE("e2e bench: --json has llama-bench's fields and tern's") {
  const RunResult r =
      runTern({"bench", "-m", model125M(), "-p", "16", "-n", "4", "-r", "2", "-t", "1", "--json"});
  REQUIRE_MESSAGE(r.exitCode == 0, r.err);
  nlohmann::json j;
  REQUIRE_NOTHROW(j = nlohmann::json::parse(r.out));
  REQUIRE(j.is_array());
  REQUIRE(j.size() == 2);
  for (const char* field : {"build_commit", "cpu_info", "model_filename", "model_type", "model_size",
                            "model_n_params", "n_batch", "n_threads", "n_prompt", "n_gen",
                            "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "samples_ns",
                            "samples_ts", "kernel", "weight_format", "bytes_per_token",
                            "bandwidth_gbs", "bound_ts", "fraction_of_bound"}) {
    CHECK_MESSAGE(j[0].contains(field), field);
    CHECK_MESSAGE(j[1].contains(field), field);
  }
  const auto& pp = j[0];
  const auto& tg = j[1];
  CHECK(pp["n_prompt"] == 16);
  CHECK(pp["n_gen"] == 0);
  CHECK(tg["n_prompt"] == 0);
  CHECK(tg["n_gen"] == 4);
  CHECK(pp["n_threads"] == 1);
  CHECK(pp["model_filename"] == model125M());
  CHECK(pp["weight_format"] == "TERN_T2");
  CHECK(pp["bound_ts"].is_null());
  CHECK(pp["samples_ns"].size() == 2);
  CHECK(tg["samples_ts"].size() == 2);
  CHECK(tg["bytes_per_token"].get<uint64_t>() == expectedBytesPerToken(*findLayout("125M")));
  CHECK(tg["model_size"].get<uint64_t>() == std::filesystem::file_size(model125M()));
  CHECK(tg["avg_ts"].get<double>() > 0);
  CHECK(tg["bandwidth_gbs"].get<double>() > 0);
  const double f = tg["fraction_of_bound"].get<double>();
  CHECK(f > 0);
  CHECK(f < 2);
  // avg_ts is the mean of the per-repetition rates, each tokens / seconds.
  double mean = 0;
  for (const auto& ns : tg["samples_ns"]) mean += 4e9 / ns.get<double>();
  CHECK(tg["avg_ts"].get<double>() == doctest::Approx(mean / 2).epsilon(1e-6));
}

TEST_CASE("e2e bench: kernels table on a tiny layout") {
  const RunResult r = runTern({"bench", "kernels", "--layout", "bitnet-tiny", "-t", "1", "-r", "1",
                               "--kernels", "ref", "--stream-mib", "4", "--bw-mib", "64"});
  REQUIRE_MESSAGE(r.exitCode == 0, r.err);
  std::vector<std::vector<std::string>> table;
  for (const auto& l : lines(r.out)) if (!l.empty() && l[0] == '|') table.push_back(cells(l));
  // bitnet-tiny: q/k/v/o share [128 x 128], gate/up [256 x 128], down [128 x 256]: 3 shapes x
  // (GEMV, GEMM) + the head + quantizeRow of 128 and 256 floats.
  REQUIRE(table.size() == 2 + 3 * 2 + 1 + 2);
  CHECK(table[0] == std::vector<std::string>{"kernel", "variant", "shape", "threads", "time/call",
                                             "GB/s", "% of bw", "GMAC/s"});
  for (size_t i = 2; i < table.size(); ++i) {
    const auto& row = table[i];
    REQUIRE(row.size() == 8);
    CHECK(row[1] == "ref");
    CHECK(row[3] == "1");
    CHECK(number(row[4]) > 0);
    if (row[0] != "quantizeRow") CHECK(number(row[7]) > 0);
  }
  CHECK(table[2][2] == "attn_q/attn_k/v/attn_output [128 x 128] x 1 tok");
  CHECK(table.back()[0] == "quantizeRow");
}

TEST_CASE("e2e bench: the read-bandwidth probe") {
  const double gbs = topo::measureReadBandwidth(2, size_t{64} << 20, 2);
  CHECK(gbs > 0.1);   // any machine streams 64 MiB faster than 0.1 GB/s
  CHECK(gbs < 1e5);   // and slower than 100 TB/s
  CHECK(topo::lastLevelCacheBytes() > 0);
  CHECK_THROWS_AS(topo::measureReadBandwidth(0, size_t{1} << 20, 1), std::invalid_argument);
  CHECK_THROWS_AS(topo::measureReadBandwidth(1, size_t{1} << 20, 0), std::invalid_argument);
  CHECK_THROWS_AS(topo::measureReadBandwidth(4, 100, 1), std::invalid_argument);
}

TEST_CASE("e2e bench: bad input gives a one-line error") {
  SUBCASE("no model") {
    const RunResult r = runTern({"bench"});
    CHECK(r.exitCode != 0);
    CHECK(r.err.find("-m") != std::string::npos);
  }
  SUBCASE("missing file") {
    const RunResult r = runTern({"bench", "-m", "/nonexistent.gguf", "-p", "4", "-n", "0"});
    CHECK(r.exitCode != 0);
    CHECK(r.err.find("model file not found: /nonexistent.gguf") != std::string::npos);
  }
  SUBCASE("bad list") {
    const RunResult r = runTern({"bench", "-m", model125M(), "-t", "1,x"});
    CHECK(r.exitCode != 0);
    CHECK(r.err.find("-t: 'x' is not an integer") != std::string::npos);
  }
  SUBCASE("unknown layout") {
    const RunResult r = runTern({"bench", "kernels", "--layout", "nope"});
    CHECK(r.exitCode != 0);
    CHECK(r.err.find("unknown layout 'nope'") != std::string::npos);
  }
}

}  // namespace tern::e2e

namespace tern::e2e {

TEST_CASE("e2e: tern bench serve against tern serve counts every request and no error") {
  Background server({"serve", "-m", kStories, "--port", "0", "--parallel", "4", "-t", "1"});
  const auto port = server.waitFor(R"(tern serve listening on http://127\.0\.0\.1:(\d+))", 60);
  REQUIRE_MESSAGE(port, server.err());
  REQUIRE_MESSAGE(server.waitFor(R"(tern serve ready)", 60), server.err());
  const std::string url = "http://127.0.0.1:" + *port;
  const RunResult r = runTern({"bench", "serve", url, "-c", "1,3", "-p", "8", "-n", "6", "--requests", "6",
                               "--token-ids", "100-500", "--json"});
  REQUIRE_MESSAGE(r.exitCode == 0, r.err);
  const auto rows = nlohmann::json::parse(r.out);
  REQUIRE(rows.size() == 2);
  for (const auto& row : rows) {
    CAPTURE(row.dump());
    CHECK(row["errors"] == 0);
    CHECK(row["requests"] == 6);
    CHECK(row["model"] == "stories260K");
    // Counted from the usage chunks: at most 6 requests x 6 tokens (an end of text ends sooner).
    CHECK(row["output_tokens"].get<int>() > 0);
    CHECK(row["output_tokens"].get<int>() <= 36);
    CHECK(row["requests_per_s"].get<double>() > 0);
    CHECK(row["ttft_p50_ms"].get<double>() > 0);
    CHECK(row["ttft_p99_ms"].get<double>() >= row["ttft_p50_ms"].get<double>());
  }
  CHECK(rows[0]["concurrency"] == 1);
  CHECK(rows[1]["concurrency"] == 3);
  // A server that is not there is one line naming it.
  const RunResult bad = runTern({"bench", "serve", "http://127.0.0.1:1", "--requests", "1"});
  CHECK(bad.exitCode != 0);
  CHECK(bad.err.find("127.0.0.1:1") != std::string::npos);
}

}  // namespace tern::e2e
