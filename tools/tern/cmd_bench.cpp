// tern bench: llama-bench for tern (see runtime/bench.hpp for what is measured).
//   tern bench -m FILE [-m FILE2] [-p 512] [-n 128] [-t 1,2] [-r 5] [--kernels auto] [--json]
//   tern bench kernels [-t 1,2] [--layout 2B4T] [--kernels avx512,ref] [-r 5]
//   tern bench serve http://HOST:PORT [-c 1,8,32] [-p 128] [-n 32] [--duration 15] [--json]
// The table (or JSON) goes to stdout, progress lines to stderr.
#include "runtime/bench.hpp"
#include "tools/tern/commands.hpp"

#include "client/serve_bench.hpp"
#include "coordinator/cluster.hpp"
#include "kernels/dispatch.hpp"

#include <kj/exception.h>

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace tern::cli {
using namespace tern::runtime;  // the library these commands drive
namespace {

struct BenchArgs {
  std::vector<std::string> models;
  std::string prompts = "512";
  std::string gens = "128";
  std::string threads;  // empty: physical cores
  int reps = 5;
  std::string kernels = "auto";
  bool json = false;
  int stages = 0;
  uint64_t seed = 1234;
  uint64_t bandwidthMib = 0;
  std::string workers;
  std::string split = "auto";
  std::string source = "auto";
  bool insecure = false;
  std::string concurrency;
};

struct KernelArgs {
  std::string threads;
  std::string layout = "2B4T";
  std::string kernels;  // empty: every supported variant
  int reps = 5;
  uint64_t streamMib = 0;
  uint64_t bandwidthMib = 0;
  bool json = false;
};

struct ServeArgs {
  std::string url;
  std::string concurrency = "1";
  std::string promptTokens = "128";
  int maxTokens = 32;
  double duration = 15;
  int requests = 0;
  std::string endpoint = "completions";
  std::string model;
  std::string apiKey;
  double temperature = 0;
  bool textPrompts = false;
  std::string tokenIds = "100-999";
  bool ignoreEos = false;
  uint64_t seed = 1234;
  double timeout = 60;
  bool json = false;
};

void logLine(const std::string& line) {
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

void writeOut(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

template <class F>
void oneLineErrors(F&& f) {
  try {
    f();
  } catch (const kj::Exception& e) {  // from the stages: one line, without kj's trace
    throw std::runtime_error(std::string(e.getDescription().cStr()));
  }
}

}  // namespace

void addBenchCommand(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  auto k = std::make_shared<KernelArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "measure prefill and decode speed (llama-bench style)");
  cmd->add_option("-m,--model", a->models, "model file (GGUF); repeat for several");
  cmd->add_option("-p,--n-prompt", a->prompts, "prompt lengths, comma list (0 = no pp test)")
      ->capture_default_str();
  cmd->add_option("-n,--n-gen", a->gens, "generated token counts, comma list (0 = no tg test)")
      ->capture_default_str();
  cmd->add_option("-t,--threads", a->threads, "thread counts, comma list (default: physical cores)");
  cmd->add_option("-r,--repetitions", a->reps, "timed repetitions of each test")->capture_default_str();
  cmd->add_option("--kernels", a->kernels, "kernel variants, comma list (auto, ref, avx2, avx512, ...)")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "print a JSON array instead of the table");
  cmd->add_option("--stages", a->stages, "pipeline stages, spread over the workers (default: one per worker)");
  cmd->add_flag("--insecure", a->insecure, "allow workers that are not on loopback: cluster links are plain, "
                "unauthenticated TCP");
  cmd->add_option("--workers", a->workers, "running `tern worker`s host:port,... (default: in-process, one per NUMA node)");
  cmd->add_option("--split", a->split, "layers per stage: auto | even | plan")
      ->check(CLI::IsMember({"auto", "even", "plan"}))->capture_default_str();
  cmd->add_option("--shard-source", a->source, "where workers get weights: auto | path | stream")
      ->check(CLI::IsMember({"auto", "path", "stream"}))->capture_default_str();
  cmd->add_option("--concurrency", a->concurrency,
                  "concurrent sequences per decode test, comma list (default with --workers: 1,2,4,8)");
  cmd->add_option("--seed", a->seed, "seed of the random token ids")->capture_default_str();
  cmd->add_option("--bw-mib", a->bandwidthMib, "bandwidth probe buffer in MiB (default: max(1 GiB, 8 x LLC))");

  CLI::App* kcmd = cmd->add_subcommand("kernels", "time each kernel on a layout's shapes");
  kcmd->add_option("-t,--threads", k->threads, "thread counts, comma list (default: 1 and physical cores)");
  kcmd->add_option("--layout", k->layout, "layout whose shapes to use (tern gen --list)")
      ->capture_default_str();
  kcmd->add_option("--kernels", k->kernels, "variants, comma list (default: all this CPU supports)");
  kcmd->add_option("-r,--repetitions", k->reps, "repetitions (best is kept)")->capture_default_str();
  kcmd->add_option("--stream-mib", k->streamMib, "GEMV weights cycled per shape in MiB (default: 4 x LLC)");
  kcmd->add_option("--bw-mib", k->bandwidthMib, "bandwidth probe buffer in MiB (default: max(1 GiB, 8 x LLC))");
  kcmd->add_flag("--json", k->json, "print a JSON array instead of the table");

  auto s = std::make_shared<ServeArgs>();
  CLI::App* scmd = cmd->add_subcommand("serve", "load an OpenAI-compatible server: throughput, TTFT, TPOT");
  scmd->add_option("url", s->url, "the server, http://HOST:PORT")->required();
  scmd->add_option("-c,--concurrency", s->concurrency, "concurrent clients, comma list")
      ->capture_default_str();
  scmd->add_option("-p,--prompt-tokens", s->promptTokens, "prompt lengths in tokens, comma list")
      ->capture_default_str();
  scmd->add_option("-n,--max-tokens", s->maxTokens, "output tokens per request")->capture_default_str();
  scmd->add_option("--duration", s->duration, "seconds per (prompt length, concurrency)")
      ->capture_default_str();
  scmd->add_option("--requests", s->requests, "requests per (prompt length, concurrency), instead of --duration");
  scmd->add_option("--endpoint", s->endpoint, "completions | chat")
      ->check(CLI::IsMember({"completions", "chat"}))->capture_default_str();
  scmd->add_option("--model", s->model, "model name to send (default: the first of GET /v1/models)");
  scmd->add_option("--api-key", s->apiKey, "sent as Authorization: Bearer KEY");
  scmd->add_option("--temperature", s->temperature, "sampling temperature")->capture_default_str();
  scmd->add_flag("--text-prompts", s->textPrompts, "completions: prompts of words instead of token-id arrays");
  scmd->add_option("--token-ids", s->tokenIds, "range LO-HI of the prompt token ids (below the vocabulary size)")
      ->capture_default_str();
  scmd->add_flag("--ignore-eos", s->ignoreEos, "send \"ignore_eos\": true (llama.cpp, vLLM), so every request gives max-tokens");
  scmd->add_option("--seed", s->seed, "seed of the prompts")->capture_default_str();
  scmd->add_option("--timeout", s->timeout, "seconds to wait for a connection or any read")->capture_default_str();
  scmd->add_flag("--json", s->json, "print a JSON array instead of the table");

  scmd->callback([scmd, s] {
    client::ServeBenchOptions o;
    o.url = s->url;
    o.concurrency = parseIntList(s->concurrency, "--concurrency", 1);
    o.promptTokens = parseIntList(s->promptTokens, "--prompt-tokens", 1);
    o.maxTokens = s->maxTokens;
    // --requests alone bounds by count; with --duration as well, whichever comes first.
    o.durationS = scmd->count("--requests") > 0 && scmd->count("--duration") == 0 ? 0 : s->duration;
    o.requests = s->requests;
    o.endpoint = s->endpoint == "chat" ? client::Endpoint::Chat : client::Endpoint::Completions;
    o.model = s->model;
    o.apiKey = s->apiKey;
    o.temperature = s->temperature;
    o.textPrompts = s->textPrompts;
    const size_t dash = s->tokenIds.find('-');
    const std::vector<int> range = dash == std::string::npos
        ? std::vector<int>{}
        : std::vector<int>{parseIntList(s->tokenIds.substr(0, dash), "--token-ids", 0).at(0),
                           parseIntList(s->tokenIds.substr(dash + 1), "--token-ids", 0).at(0)};
    if (range.size() != 2 || range[0] > range[1]) {
      throw std::invalid_argument("--token-ids: expected LO-HI with LO <= HI (got '" + s->tokenIds + "')");
    }
    o.tokenIdMin = range[0];
    o.tokenIdMax = range[1];
    o.ignoreEos = s->ignoreEos;
    o.seed = s->seed;
    o.timeoutS = s->timeout;
    const client::ServeBenchReport r = client::runServeBench(o, logLine);
    writeOut(s->json ? client::formatServeJson(r) : client::formatServeMarkdown(r));
  });
  kcmd->callback([k] {
    KernelBenchOptions o;
    o.layout = k->layout;
    if (!k->threads.empty()) o.threads = parseIntList(k->threads, "-t", 1);
    if (!k->kernels.empty()) o.variants = splitList(k->kernels);
    o.reps = k->reps;
    o.streamBytes = k->streamMib << 20;
    o.bandwidthBytes = k->bandwidthMib << 20;
    const KernelReport r = runKernelBench(o, logLine);
    writeOut(k->json ? formatKernelJson(r) : formatKernelTable(r));
  });
  cmd->callback([cmd, kcmd, scmd, a] {
    if (kcmd->parsed() || scmd->parsed()) return;
    if (a->models.empty()) throw std::runtime_error("bench: -m FILE is required");
    ModelBenchOptions o;
    o.models = a->models;
    o.nPrompt = parseIntList(a->prompts, "-p", 0);
    o.nGen = parseIntList(a->gens, "-n", 0);
    if (!a->threads.empty()) o.threads = parseIntList(a->threads, "-t", 1);
    o.kernels = splitList(a->kernels);
    if (o.kernels.empty()) throw std::runtime_error("--kernels: empty list");
    o.reps = a->reps;
    if (cmd->count("--stages") > 0 && a->stages < 1) {
      throw std::runtime_error("--stages must be >= 1 (got " + std::to_string(a->stages) + ")");
    }
    o.stages = a->stages;
    o.seed = a->seed;
    o.bandwidthBytes = a->bandwidthMib << 20;
    if (!a->workers.empty()) o.workers = coord::parseWorkerList(a->workers);
    o.split = a->split;
    o.source = a->source;
    o.insecure = a->insecure;
    if (!a->concurrency.empty()) o.concurrency = parseIntList(a->concurrency, "--concurrency", 1);
    oneLineErrors([&] {
      const BenchReport r = runModelBench(o, logLine);
      writeOut(a->json ? formatJson(r) : formatMarkdown(r));
    });
  });
}

}  // namespace tern::cli
