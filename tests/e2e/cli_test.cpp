// `tern run` driven as a user would: bad input gives a clear error and a non-zero exit (never a
// crash), and stories260K reproduces the reference engines' greedy text.
#include "tests/e2e/spawn.hpp"
#include "topology/machine.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>

using tern::e2e::kStories;
using tern::e2e::runTern;

namespace {

// Fails the test unless the run ended with a non-zero exit (not a signal) and stderr names the
// problem.
void checkError(const tern::e2e::RunResult& r, const std::string& needle) {
  INFO("stderr: " << r.err);
  CHECK_FALSE(r.signaled);
  CHECK(r.exitCode != 0);
  CHECK(r.exitCode != -1);
  CHECK(r.err.find(needle) != std::string::npos);
}

// The reference file's text without its leading '#' comment lines.
std::string referenceText(const std::string& path) {
  std::string all = tern::e2e::slurp(path);
  std::string text;
  size_t at = 0;
  while (at < all.size()) {
    size_t end = all.find('\n', at);
    if (end == std::string::npos) end = all.size(); else ++end;
    if (all[at] != '#') text += all.substr(at, end - at);
    at = end;
  }
  return text;
}

}  // namespace

TEST_CASE("e2e cli: bad input gives a clear error and a non-zero exit") {
  tern::e2e::TempDir dir;
  SUBCASE("unknown flag") { checkError(runTern({"run", "-m", kStories, "--bogus"}), "--bogus"); }
  SUBCASE("missing model file") {
    checkError(runTern({"run", "-m", "/nonexistent/model.gguf", "-p", "hi"}),
               "model file not found: /nonexistent/model.gguf");
  }
  SUBCASE("a file that is not GGUF") {
    const auto path = (dir / "not.gguf").string();
    std::ofstream(path) << "this is not a gguf file, just some text to read\n";
    checkError(runTern({"run", "-m", path, "-p", "hi"}), path);
  }
  SUBCASE("-t 0") { checkError(runTern({"run", "-m", kStories, "-t", "0"}), "-t must be >= 1"); }
  SUBCASE("-t negative") { checkError(runTern({"run", "-m", kStories, "-t", "-2"}), "-t must be >= 1"); }
  SUBCASE("-n negative") { checkError(runTern({"run", "-m", kStories, "-n", "-1"}), "-n must be >= 0"); }
  SUBCASE("-c 0") { checkError(runTern({"run", "-m", kStories, "-c", "0"}), "-c must be >= 1"); }
  SUBCASE("-c beyond the model") {
    checkError(runTern({"run", "-m", kStories, "-c", "100000"}), "larger than the model supports");
  }
  SUBCASE("prompt longer than the context") {
    checkError(runTern({"run", "-m", kStories, "-c", "8", "-p",
                        "Once upon a time there was a little girl named Lily who loved cats"}),
               "context is 8");
  }
  SUBCASE("--stages 0") { checkError(runTern({"run", "-m", kStories, "--stages", "0"}), "--stages must be >= 1"); }
  SUBCASE("--stages beyond the layers") {
    checkError(runTern({"run", "-m", kStories, "--stages", "99"}), "layers");
  }
  SUBCASE("unknown --kv-type") {
    checkError(runTern({"run", "-m", kStories, "--kv-type", "q4"}), "--kv-type");
  }
  SUBCASE("missing prompt file") {
    checkError(runTern({"run", "-m", kStories, "-f", "/nonexistent/prompt.txt"}), "prompt file");
  }
}

TEST_CASE("e2e cli: stories260K greedy continuation equals llama.cpp's llama-simple") {
  auto r = runTern({"run", "-m", kStories, "-p", "Once upon a time", "-n", "100", "--temp", "0", "-t", "1"});
  INFO("stderr: " << r.err);
  REQUIRE(r.exitCode == 0);
  // llama-simple prints BOS as "<s>" and then the pieces: " Once upon a time, ...". tern echoes
  // the prompt without BOS and without the SentencePiece prefix space.
  std::string ref = referenceText(TERN_TEST_DATA "/stories260K/llamacpp_simple_once_upon_a_time_n100.txt");
  REQUIRE(ref.rfind("<s> ", 0) == 0);
  ref = ref.substr(4);
  while (!ref.empty() && ref.back() == '\n') ref.pop_back();
  std::string out = r.out;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  CHECK(out == ref);
  CHECK(r.err.find("generation: 100 tokens") != std::string::npos);
}

TEST_CASE("e2e cli: stories260K greedy from BOS equals llama2.c's run.c") {
  // llama2.c ran with the model's own seq_len of 512; the GGUF converter recorded 128.
  auto r = runTern({"run", "-m", kStories, "-p", "", "-n", "200", "--temp", "0", "-t", "1", "-c", "512"});
  INFO("stderr: " << r.err);
  REQUIRE(r.exitCode == 0);
  // run.c prints each piece after BOS (dropping the first piece's leading space), stops at BOS
  // (id 1, which this file also calls EOS), then a newline.
  const std::string ref = referenceText(TERN_TEST_DATA "/stories260K/expected_greedy_200.txt");
  CHECK(r.out == ref);
}

TEST_CASE("e2e cli: prints the seed, the stages and the timings on stderr") {
  auto r = runTern({"run", "-m", kStories, "-p", "Hi", "-n", "4", "--seed", "7", "--stages", "2"});
  INFO("stderr: " << r.err);
  REQUIRE(r.exitCode == 0);
  CHECK(r.err.find("seed 7") != std::string::npos);
  CHECK(r.err.find(": layers [0, 3) +embed") != std::string::npos);
  CHECK(r.err.find(": layers [3, 5) +head") != std::string::npos);
  CHECK(r.err.find("prompt: ") != std::string::npos);
  CHECK(r.err.find(" tok/s | generation: ") != std::string::npos);
  CHECK(r.out.rfind("Hi", 0) == 0);
}

TEST_CASE("e2e cli: --chat keeps the KV cache across turns") {
  auto r = runTern({"run", "-m", kStories, "--chat", "-n", "12", "--temp", "0", "-p", "You are kind"},
                   "Hello\nTell me a story\n/exit\nnot read\n");
  INFO("stderr: " << r.err);
  REQUIRE(r.exitCode == 0);
  CHECK(r.err.find("chat template: llama2") != std::string::npos);
  // Turn 2 feeds only what the template adds after turn 1 (plus the reply's last sampled token),
  // so its prompt is shorter than the context already used after it.
  const auto at = r.err.find("turn 2: prompt: ");
  REQUIRE(at != std::string::npos);
  const int fed = std::stoi(r.err.substr(at + 16));
  const auto ctxAt = r.err.find("context ", at);
  const int used = std::stoi(r.err.substr(ctxAt + 8));
  CHECK(fed > 0);
  CHECK(used > fed + 12);
  CHECK(r.err.find("turn 3") == std::string::npos);
  // Two replies, one line each at least.
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') >= 2);
}

TEST_CASE("topology: synthetic machines") {
  auto m = tern::topo::Machine::fromSynthetic("pack:2 numa:1 core:4 pu:2");
  CHECK(m.packages == 2);
  CHECK(m.numaNodes == 2);
  CHECK(m.cores == 8);
  CHECK(m.pus == 16);
  CHECK(m.defaultThreads() == 8);
  REQUIRE(m.nodes.size() == 2);
  CHECK(m.nodes[0].cores == std::vector<unsigned>{0, 2, 4, 6});
  CHECK(m.nodes[1].cores == std::vector<unsigned>{8, 10, 12, 14});
  CHECK(m.summary() == "2 packages, 2 NUMA nodes, 8 cores, 16 threads");
  CHECK_THROWS_AS(tern::topo::Machine::fromSynthetic("bogus:3"), std::invalid_argument);
  auto host = tern::topo::Machine::detect();
  CHECK(host.pus >= host.cores);
  CHECK(host.defaultThreads() >= 1);
}
