// tern run: generate text with a model, like llama-cli / bitnet.cpp's run_inference.
//
// With --workers the coordinator (this process) dials running `tern worker`s, loads the model's
// shards on them and links them worker to worker; without, the embedded default starts one
// in-process worker per NUMA node (threads listening on loopback) and does the same through the
// same worker, protocol and coordinator code (runtime/pipeline.hpp).
// Generated text goes to stdout as it is produced; everything else goes to stderr.
#include "tools/tern/commands.hpp"
#include "runtime/chat_session.hpp"
#include "runtime/model_file.hpp"
#include "runtime/metrics_endpoint.hpp"
#include "runtime/pipeline.hpp"

#include "coordinator/generator.hpp"
#include "kernels/dispatch.hpp"
#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/tokenizer.hpp"
#include "ops/stage.hpp"
#include "topology/machine.hpp"

#include <kj/async-io.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace tern::cli {
using namespace tern::runtime;  // the library these commands drive
namespace {

struct RunOptions {
  std::string model;
  std::string prompt;
  std::string promptFile;
  int nPredict = 128;
  int threads = 0;  // 0: each worker's cores (topo::threadsFor)
  int ctx = 0;      // 0: min(model context, 4096)
  float temp = 0.8f;
  int64_t seed = -1;  // < 0: random
  int topK = 40;
  float topP = 0.95f;
  float minP = 0.05f;
  float repeatPenalty = 1.0f;
  int repeatLastN = 64;
  int stages = 0;  // 0: one per worker
  std::string workers;      // host:port,...; empty = embedded default
  bool insecure = false;    // --insecure: non-loopback workers over plain TCP
  std::string metrics;      // host:port of this process's Prometheus endpoint; empty = none
  double metricsLinger = 0; // seconds the endpoint keeps serving after generation
  std::string split = "auto";
  std::string shardSource = "auto";
  std::string workerModel;  // the model's path on the workers
  std::string logitsOut;
  bool chat = false;
  std::string kvType = "f16";
  std::string actQuant = "auto";
  std::string kernels = "auto";
  std::string head = "f16";  // f16: the head as stored (lossless); q8: int8 per row
  bool noBos = false;
};

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read prompt file: " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void validate(const RunOptions& o) {
  if (o.threads < 0) fail("-t must be >= 1 (got " + std::to_string(o.threads) + ")");
  if (o.nPredict < 0) fail("-n must be >= 0 (got " + std::to_string(o.nPredict) + ")");
  if (o.ctx < 0) fail("-c must be >= 1 (got " + std::to_string(o.ctx) + ")");
  if (o.stages < 0) fail("--stages must be >= 1 (got " + std::to_string(o.stages) + ")");
  if (!o.prompt.empty() && !o.promptFile.empty()) fail("give either -p or -f, not both");
}

void printText(std::string_view s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

// Interactive chat: user lines from stdin until EOF or "/exit"; -p is the system prompt. The
// KV cache is kept across turns (runtime/chat_session.hpp).
void runChat(coord::Generator& gen, ChatSession& chat, const RunOptions& o,
             const coord::SamplingParams& sp) {
  std::fprintf(stderr, "chat template: %s; end with EOF (Ctrl-D) or /exit\n",
               chat.chatTemplate().name().c_str());
  gen.open(sp);
  for (int turn = 1;; ++turn) {
    std::fputs("> ", stderr);
    std::fflush(stderr);
    std::string line;
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const ChatSession::Turn t = chat.user(line);
    if (t.restart) gen.open(sp);
    std::string reply;
    coord::GenerateCallbacks cb;
    cb.onText = [&](std::string_view s) {
      reply += s;
      printText(s);
    };
    const coord::TurnResult r = gen.feed(t.ids, o.nPredict, cb);
    printText("\n");
    chat.reply(reply);
    std::fprintf(stderr, "turn %d: prompt: %u tokens, %.2f tok/s | generation: %u tokens, %.2f tok/s | context %u/%u\n",
                 turn, r.promptTokens, r.promptTokensPerSecond(), r.genTokens,
                 r.genTokensPerSecond(), gen.position(), gen.nCtx());
    if (r.stop == coord::StopReason::Context) {
      std::fprintf(stderr, "the context of %u is full; ending the chat\n", gen.nCtx());
      break;
    }
  }
  gen.close();
}

void run(RunOptions o, const std::vector<std::string>& givenFlags) {
  auto given = [&](const char* name) {
    for (const auto& g : givenFlags) if (g == name) return true;
    return false;
  };
  validate(o);
  if (given("-t") && o.threads < 1) fail("-t must be >= 1 (got " + std::to_string(o.threads) + ")");
  if (given("-c") && o.ctx < 1) fail("-c must be >= 1 (got " + std::to_string(o.ctx) + ")");
  if (given("--stages") && o.stages < 1) {
    fail("--stages must be >= 1 (got " + std::to_string(o.stages) + ")");
  }
  if (!o.promptFile.empty()) o.prompt = readFile(o.promptFile);

  const topo::Machine machine = topo::Machine::detect();
  std::fprintf(stderr, "machine: %s\n", machine.summary().c_str());

  const OpenedModel model = openModel(o.model);
  const auto& file = model.file;
  const ModelConfig& cfg = model.cfg;
  const auto& tokenizer = model.tokenizer;

  const uint32_t nCtx = contextSize(cfg, static_cast<uint64_t>(o.ctx));
  if (o.ctx > 0) {
    if (nCtx > cfg.nCtxTrain) {
      std::fprintf(stderr, "warning: -c %u is beyond the model's trained context of %u\n", nCtx,
                   cfg.nCtxTrain);
    }
  }
  std::fprintf(stderr, "model: %s, arch %s, %.2f M params, %s, tensors: %s\n",
               cfg.name.empty() ? std::filesystem::path(o.model).filename().c_str() : cfg.name.c_str(),
               archName(cfg.arch), cfg.nParams(*file) / 1e6, humanBytes(file->fileSize()).c_str(),
               typeSummary(*file).c_str());
  std::fprintf(stderr, "model: %u layers, hidden %u, heads %u/%u, ffn %u, vocab %u, context %u (using %u)\n",
               cfg.nLayer, cfg.nEmbd, cfg.nHead, cfg.nHeadKv, cfg.nFf, cfg.nVocab, cfg.nCtxTrain, nCtx);

  std::unique_ptr<MetricsEndpoint> metrics;
  if (!o.metrics.empty()) {
    metrics = std::make_unique<MetricsEndpoint>(o.metrics, "coordinator");
    std::fprintf(stderr, "metrics: http://%s/metrics\n", metrics->address().c_str());
  }

  PipelineOptions po;
  po.workers = o.workers.empty() ? std::vector<std::string>{} : coord::parseWorkerList(o.workers);
  po.stages = o.stages;
  po.insecure = o.insecure;
  po.split = o.split;
  po.source = o.shardSource;
  po.workerPath = o.workerModel;
  po.threads = given("-t") ? o.threads : 0;  // 0: each worker's node's cores
  po.kernels = o.kernels;
  po.actQuant = o.actQuant;
  po.kvType = o.kvType;
  po.head = o.head;
  po.nCtx = nCtx;
  po.maxSequences = 1;
  if (metrics) po.metrics = metrics->registry();
  po.log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };

  // Event loop first: capabilities must be destroyed before it.
  auto io = kj::setupAsyncIo();
  Pipeline pipeline(io, model, po, machine);
  coord::GeneratorOptions gopts;
  gopts.nCtx = nCtx;
  if (metrics) gopts.metrics = metrics->registry();
  coord::Generator gen(cfg, *tokenizer, pipeline.stages(), io.waitScope, gopts);
  for (const auto& line : describeStages(pipeline.cluster(), pipeline.shards(), gen.hello())) {
    std::fprintf(stderr, "%s\n", line.c_str());
  }

  coord::SamplingParams sp;
  sp.temperature = o.temp;
  sp.topK = o.topK;
  sp.topP = o.topP;
  sp.minP = o.minP;
  sp.repeatPenalty = o.repeatPenalty;
  sp.repeatLastN = o.repeatLastN;
  if (o.seed >= 0) {
    sp.seed = static_cast<uint64_t>(o.seed);
  } else {
    std::random_device rd;
    sp.seed = (uint64_t{rd()} << 32 | rd()) & 0x7fffffffffffffffull;
  }
  sp.validate();
  std::fprintf(stderr, "sampling: temp %g, top-k %d, top-p %g, min-p %g, repeat-penalty %g, seed %llu\n",
               sp.temperature, sp.topK, sp.topP, sp.minP, sp.repeatPenalty,
               static_cast<unsigned long long>(sp.seed));

  if (o.chat) {
    ChatSession chat(model, o.prompt, !o.noBos);
    runChat(gen, chat, o, sp);
    return;
  }

  std::vector<TokenId> prompt = tokenizer->encode(o.prompt, !o.noBos);
  if (prompt.empty()) fail("the prompt is empty (and --no-bos leaves no BOS token)");
  if (prompt.size() > nCtx) {
    fail("prompt is " + std::to_string(prompt.size()) + " tokens, context is " + std::to_string(nCtx));
  }

  std::ofstream logits;
  coord::GenerateCallbacks cb;
  cb.echoInput = true;
  cb.onText = printText;
  if (!o.logitsOut.empty()) {
    logits.open(o.logitsOut, std::ios::binary | std::ios::trunc);
    if (!logits) fail("cannot write " + o.logitsOut);
    cb.onLogits = [&](std::span<const float> row) {
      logits.write(reinterpret_cast<const char*>(row.data()),
                   static_cast<std::streamsize>(row.size_bytes()));
      if (!logits) fail("write failed: " + o.logitsOut);
    };
  }
  const coord::TurnResult r = gen.generate(prompt, o.nPredict, sp, cb);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (logits.is_open()) {
    logits.close();
    if (!logits) fail("write failed: " + o.logitsOut);
  }
  if (r.stop == coord::StopReason::Context) std::fprintf(stderr, "stopped: context of %u is full\n", nCtx);
  std::fprintf(stderr, "prompt: %u tokens, %.2f tok/s | generation: %u tokens, %.2f tok/s\n",
               r.promptTokens, r.promptTokensPerSecond(), r.genTokens, r.genTokensPerSecond());
  if (metrics && o.metricsLinger > 0) {
    std::fprintf(stderr, "metrics: serving for %.0f s more\n", o.metricsLinger);
    std::fflush(stderr);
    std::this_thread::sleep_for(std::chrono::duration<double>(o.metricsLinger));
  }
}

}  // namespace

void addRunCommand(CLI::App& app) {
  auto opts = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run", "generate text from a prompt");
  cmd->add_option("-m,--model", opts->model, "model file (GGUF)")->required();
  cmd->add_option("-p,--prompt", opts->prompt, "prompt text (\"\" starts from BOS alone)");
  cmd->add_option("-f,--file", opts->promptFile, "read the prompt from a file");
  cmd->add_option("-n,--n-predict", opts->nPredict, "tokens to generate")->capture_default_str();
  cmd->add_option("-t,--threads", opts->threads, "compute threads (default: physical cores)");
  cmd->add_option("-c,--ctx-size", opts->ctx, "context length (default: min(model, 4096))");
  cmd->add_option("--temp", opts->temp, "temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("-s,--seed", opts->seed, "sampling seed (default: random, printed)");
  cmd->add_option("--top-k", opts->topK, "top-k; 0 = off")->capture_default_str();
  cmd->add_option("--top-p", opts->topP, "top-p; 1 = off")->capture_default_str();
  cmd->add_option("--min-p", opts->minP, "min-p; 0 = off")->capture_default_str();
  cmd->add_option("--repeat-penalty", opts->repeatPenalty, "1 = off")->capture_default_str();
  cmd->add_option("--repeat-last-n", opts->repeatLastN, "ids the penalty looks back at")
      ->capture_default_str();
  cmd->add_option("--stages", opts->stages,
                  "pipeline stages, spread evenly over the workers (default: one per worker)");
  cmd->add_flag("--insecure", opts->insecure, "allow workers that are not on loopback: cluster links are plain, "
                "unauthenticated TCP");
  cmd->add_option("--workers", opts->workers,
                  "running `tern worker`s host:port,... (default: one in-process worker per NUMA node)");
  cmd->add_option("--split", opts->split, "layers per stage: even, or plan (in proportion to the "
                  "workers' measured speed); auto = plan with --workers, else even")
      ->check(CLI::IsMember({"auto", "even", "plan"}))->capture_default_str();
  cmd->add_option("--shard-source", opts->shardSource, "where workers get weights: path (their own "
                  "copy of the file), stream (sent by this process), auto (path if it matches)")
      ->check(CLI::IsMember({"auto", "path", "stream"}))->capture_default_str();
  cmd->add_option("--worker-model", opts->workerModel, "the model's path on the workers (default: -m)");
  cmd->add_option("--metrics", opts->metrics, "serve Prometheus metrics at HOST:PORT/metrics");
  cmd->add_option("--metrics-linger", opts->metricsLinger,
                  "seconds the metrics endpoint keeps serving after generation (for a last scrape)")
      ->check(CLI::Range(0.0, 86400.0));
  cmd->add_option("--logits-out", opts->logitsOut,
                  "write float32 logits of every evaluated position, [n_positions, n_vocab]");
  cmd->add_flag("--chat", opts->chat, "interactive chat; -p is the system prompt");
  cmd->add_option("--kv-type", opts->kvType, "KV cache type")
      ->check(CLI::IsMember({"f16", "f32"}))->capture_default_str();
  cmd->add_option("--act-quant", opts->actQuant, "activation quantisation")
      ->check(CLI::IsMember({"auto", "int8", "float"}))->capture_default_str();
  cmd->add_option("--kernels", opts->kernels, "kernel variant")
      ->check(CLI::IsMember(kernels::kernelNames()))->capture_default_str();
  cmd->add_option("--head", opts->head,
                  "head numerics: f16 = as stored (lossless), q8 = int8 per row (half the bytes)")
      ->check(CLI::IsMember({"f16", "q8"}))->capture_default_str();
  cmd->add_flag("--no-bos", opts->noBos, "do not prepend BOS to the prompt");
  cmd->callback([cmd, opts] {
    std::vector<std::string> given;
    for (const char* name : {"-t", "-c", "--stages"}) {
      if (cmd->count(name) > 0) given.emplace_back(name);
    }
    try {
      run(*opts, given);
    } catch (const kj::Exception& e) {  // from the stages: one line, without kj's trace
      throw std::runtime_error(std::string(e.getDescription().cStr()));
    }
  });
}

}  // namespace tern::cli
