#include "runtime/bench.hpp"

#include "coordinator/generator.hpp"
#include "kernels/dispatch.hpp"
#include "kernels/t2.hpp"
#include "model/layouts.hpp"
#include "ops/group.hpp"
#include "runtime/model_file.hpp"
#include "runtime/pipeline.hpp"
#include "topology/bandwidth.hpp"
#include "topology/machine.hpp"

#include <kj/async-io.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <limits>
#include <random>
#include <set>
#include <span>
#include <stdexcept>

#ifndef TERN_BUILD_COMMIT
#define TERN_BUILD_COMMIT "unknown"
#endif

namespace tern::runtime {
namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

template <class... Args>
std::string format(const char* fmt, Args... args) {
  const int n = std::snprintf(nullptr, 0, fmt, args...);
  if (n <= 0) return {};
  std::string s(static_cast<size_t>(n), '\0');
  std::snprintf(s.data(), s.size() + 1, fmt, args...);
  return s;
}

std::string isoNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

double mean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

double stddev(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

// "2.4B", "125M", "730K": llama-bench's parameter count style.
std::string paramLabel(uint64_t n) {
  if (n >= 1000000000ull) return format("%.1fB", n / 1e9);
  if (n >= 1000000ull) return format("%.0fM", n / 1e6);
  return format("%.0fK", n / 1e3);
}

std::string gib(uint64_t bytes) { return format("%.2f GiB", bytes / double(1ull << 30)); }

std::string threadsLabel(unsigned t) { return std::to_string(t) + (t == 1 ? " thread" : " threads"); }

std::string bandwidthLine(const std::map<unsigned, double>& bw) {
  std::string s = "read bandwidth:";
  bool first = true;
  for (const auto& [t, g] : bw) {
    s += format("%s %.2f GB/s (%s)", first ? "" : ",", g, threadsLabel(t).c_str());
    first = false;
  }
  return s;
}

std::map<unsigned, double> measureBandwidths(const std::vector<int>& threads, uint64_t bytes,
                                             const BenchLog& log) {
  std::map<unsigned, double> bw;
  for (int t : threads) {
    const auto u = static_cast<unsigned>(t);
    if (bw.count(u)) continue;
    bw[u] = topo::measureReadBandwidth(u, bytes, 5);
    log(format("bandwidth: %.2f GB/s with %s", bw[u], threadsLabel(u).c_str()));
  }
  return bw;
}

// Random ids in [0, n) that are not end-of-generation, from a fixed seed.
std::vector<TokenId> randomTokens(const Tokenizer& tok, uint32_t nVocab, size_t count, uint64_t seed) {
  const uint32_t n = std::min(nVocab, tok.size());
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<uint32_t> pick(0, n - 1);
  std::vector<TokenId> ids;
  ids.reserve(count);
  for (int tries = 0; ids.size() < count; ++tries) {
    if (tries > 1000000) throw std::runtime_error("bench: the vocabulary has no usable token ids");
    const auto id = static_cast<TokenId>(pick(rng));
    if (!tok.isEog(id)) ids.push_back(id);
  }
  return ids;
}

std::vector<int> positive(const std::vector<int>& v) {
  std::vector<int> out;
  for (int x : v) if (x > 0) out.push_back(x);
  return out;
}

}  // namespace

std::vector<std::string> splitList(const std::string& text) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t comma = std::min(text.find(',', at), text.size());
    if (comma > at) out.push_back(text.substr(at, comma - at));
    at = comma + 1;
  }
  return out;
}

std::vector<int> parseIntList(const std::string& text, const std::string& flag, int minValue) {
  std::vector<int> out;
  for (const std::string& item : splitList(text)) {
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || used == 0 || v > std::numeric_limits<int>::max()) {
      throw std::invalid_argument(flag + ": '" + item + "' is not an integer");
    }
    if (v < minValue) {
      throw std::invalid_argument(flag + ": values must be >= " + std::to_string(minValue) +
                                  " (got " + item + ")");
    }
    out.push_back(static_cast<int>(v));
  }
  if (out.empty()) throw std::invalid_argument(flag + ": empty list");
  return out;
}

std::string BenchRow::testName() const {
  return nPrompt > 0 ? "pp" + std::to_string(nPrompt) : "tg" + std::to_string(nGen);
}

std::vector<double> BenchRow::samplesTs() const {
  std::vector<double> ts;
  for (uint64_t ns : samplesNs) ts.push_back(ns > 0 ? tokens() * 1e9 / static_cast<double>(ns) : 0);
  return ts;
}

double BenchRow::avgNs() const {
  std::vector<double> v(samplesNs.begin(), samplesNs.end());
  return mean(v);
}

double BenchRow::stddevNs() const {
  std::vector<double> v(samplesNs.begin(), samplesNs.end());
  return stddev(v);
}

double BenchRow::avgTs() const { return mean(samplesTs()); }
double BenchRow::stddevTs() const { return stddev(samplesTs()); }

double BenchRow::boundTs() const {
  if (nGen == 0 || bytesPerToken == 0) return 0;
  return bandwidthGbs * 1e9 / static_cast<double>(bytesPerToken);
}

double BenchRow::fractionOfBound() const {
  const double b = boundTs();
  return b > 0 ? avgTs() / b : 0;
}

BenchReport runModelBench(const ModelBenchOptions& o, const BenchLog& log) {
  if (o.models.empty()) throw std::invalid_argument("bench: give at least one model with -m");
  if (o.reps < 1) throw std::invalid_argument("-r must be >= 1 (got " + std::to_string(o.reps) + ")");
  if (o.stages < 0) throw std::invalid_argument("--stages must be >= 1");
  const std::vector<int> prompts = positive(o.nPrompt), gens = positive(o.nGen);
  if (prompts.empty() && gens.empty()) throw std::invalid_argument("bench: -p and -n are both 0");
  for (const auto& k : o.kernels) kernels::selectKernels(k);  // fail early on a bad name
  for (const auto& m : o.models) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(m, ec)) throw std::runtime_error("model file not found: " + m);
  }

  const topo::Machine machine = topo::Machine::detect();
  log("machine: " + machine.summary());
  std::vector<int> threads = o.threads;
  if (threads.empty()) threads.push_back(static_cast<int>(machine.defaultThreads()));

  BenchReport rep;
  rep.buildCommit = TERN_BUILD_COMMIT;
  rep.cpuInfo = machine.cpuModel.empty() ? "unknown" : machine.cpuModel;
  rep.bandwidthGbs = measureBandwidths(threads, o.bandwidthBytes, log);

  int maxPrompt = 0, maxGen = 0;
  for (int p : prompts) maxPrompt = std::max(maxPrompt, p);
  for (int n : gens) maxGen = std::max(maxGen, n);

  std::vector<int> concurrency = o.concurrency;
  if (concurrency.empty() && !o.workers.empty()) concurrency = {1, 2, 4, 8};
  int maxSeqs = 1;
  for (int c : concurrency) maxSeqs = std::max(maxSeqs, c);

  auto io = kj::setupAsyncIo();
  auto& waitScope = io.waitScope;
  for (const std::string& path : o.models) {
    const OpenedModel model = openModel(path);
    const ModelConfig& cfg = model.cfg;
    const uint32_t nCtx = static_cast<uint32_t>(std::max(maxPrompt, maxGen + 2));
    if (nCtx > cfg.nCtxTrain) {
      log(format("warning: %s: tests use %u positions, beyond the model's trained context of %u",
                 path.c_str(), nCtx, cfg.nCtxTrain));
    }
    const std::vector<TokenId> promptIds = randomTokens(*model.tokenizer, cfg.nVocab, maxPrompt, o.seed);
    const std::vector<TokenId> genIds = randomTokens(*model.tokenizer, cfg.nVocab, maxGen + 1, o.seed + 1);
    BenchRow base;
    base.modelFilename = path;
    base.modelSize = model.file->fileSize();
    base.nParams = cfg.nParams(*model.file);
    base.weightFormat = projectionTypes(*model.file);
    base.modelType = std::string(archName(cfg.arch)) + " " + paramLabel(base.nParams) +
                     (base.weightFormat.empty() ? "" : " " + base.weightFormat);
    log(format("model: %s, %s, %s, %u layers", path.c_str(), base.modelType.c_str(),
               gib(base.modelSize).c_str(), cfg.nLayer));

    for (const std::string& kernelName : o.kernels) {
      for (int t : threads) {
        PipelineOptions po;
        po.workers = o.workers;
        po.insecure = o.insecure;
        po.stages = o.stages;
        po.split = o.split;
        po.source = o.source;
        po.threads = t;
        po.kernels = kernelName;
        po.nCtx = nCtx;
        po.maxSequences = static_cast<uint32_t>(maxSeqs);
        po.log = log;
        Pipeline pipeline(io, model, po, machine);
        coord::GeneratorOptions gopts;
        gopts.nCtx = nCtx;
        coord::Generator gen(cfg, *model.tokenizer, pipeline.stages(), waitScope, gopts);
        const auto& infos = gen.hello();
        for (const auto& line : describeStages(pipeline.cluster(), pipeline.shards(), infos)) log(line);
        BenchRow row = base;
        row.threads = static_cast<unsigned>(t);
        row.nBatch = gopts.maxBatchTokens;
        row.bandwidthGbs = rep.bandwidthGbs.at(row.threads);
        row.kernel = infos.front().kernel;
        for (const auto& s : infos) {
          row.bytesPerToken += s.weightBytes;
          if (s.kernel != row.kernel) row.kernel += "," + s.kernel;
        }
        rep.bytesPerToken[path] = row.bytesPerToken;

        coord::SamplingParams sp;
        sp.seed = o.seed;
        auto runPrompt = [&](int p) {
          gen.open(sp);
          const auto t0 = Clock::now();
          gen.feed(std::span<const TokenId>(promptIds.data(), static_cast<size_t>(p)), 0);
          const double s = secondsSince(t0);
          gen.close();
          return s;
        };
        auto runGen = [&](int n) {
          gen.open(sp);
          gen.feed(std::span<const TokenId>(genIds.data(), 1), 0);
          const auto t0 = Clock::now();
          for (int i = 1; i <= n; ++i) gen.feed(std::span<const TokenId>(&genIds[i], 1), 0);
          const double s = secondsSince(t0);
          gen.close();
          return s;
        };

        std::vector<std::pair<int, int>> tests;  // (nPrompt, nGen)
        for (int p : prompts) tests.emplace_back(p, 0);
        for (int n : gens) tests.emplace_back(0, n);
        for (const auto& [p, n] : tests) {
          BenchRow r = row;
          r.nPrompt = p;
          r.nGen = n;
          r.testTime = isoNow();
          const std::string what = format("%s, kernel %s, %s, %s", path.c_str(), r.kernel.c_str(),
                                          threadsLabel(r.threads).c_str(), r.testName().c_str());
          log("bench: " + what + ": warm-up");
          if (p > 0) runPrompt(p);
          else runGen(std::min(n, 2));
          for (int i = 0; i < o.reps; ++i) {
            const double s = p > 0 ? runPrompt(p) : runGen(n);
            r.samplesNs.push_back(static_cast<uint64_t>(std::llround(s * 1e9)));
            log(format("bench: %s: rep %d/%d: %.2f t/s", what.c_str(), i + 1, o.reps, r.tokens() / s));
          }
          rep.rows.push_back(std::move(r));
        }

        // S sequences decoding at once: aggregate and per-stage figures.
        for (int seqs : concurrency) {
          for (int n : gens) {
            coord::Engine& eng = gen.engine();
            coord::SamplingParams greedy;
            greedy.temperature = 0;
            std::vector<uint64_t> ids;
            for (int i = 0; i < seqs; ++i) {
              ids.push_back(eng.open(greedy));
              eng.feed(ids.back(), std::span<const TokenId>(&genIds[i % genIds.size()], 1), 0);
            }
            eng.run();
            pipeline.cluster().stats(true);
            eng.resetCounters();
            uint64_t sampled = 0;
            const auto t0 = Clock::now();
            for (int i = 0; i < seqs; ++i) {
              eng.feed(ids[i], std::span<const TokenId>(&genIds[(i + 1) % genIds.size()], 1), n, {},
                       [&](const coord::TurnResult& tr) { sampled += tr.genTokens; });
            }
            eng.run();
            const double wall = secondsSince(t0);
            const auto stats = pipeline.cluster().stats(false);
            for (uint64_t id : ids) eng.close(id);

            ConcurrencyRow c;
            c.modelFilename = path;
            c.kernel = row.kernel;
            c.threads = row.threads;
            c.sequences = seqs;
            c.nGen = n;
            c.tokens = sampled;
            c.seconds = wall;
            c.maxInFlight = eng.counters().maxInFlight;
            const auto& shards = pipeline.shards();
            for (size_t si = 0; si < shards.size(); ++si) {
              const auto& w = pipeline.cluster().workers()[shards[si].worker];
              StageRow sr;
              sr.stage = si;
              sr.worker = w.address;
              sr.numaNode = w.numaNode;
              sr.layerBegin = shards[si].layerBegin;
              sr.layerEnd = shards[si].layerEnd;
              for (const auto& st : stats[shards[si].worker]) {
                if (st.layerBegin != sr.layerBegin || st.layerEnd != sr.layerEnd) continue;
                sr.tokens = st.tokens;
                sr.batches = st.batches;
                sr.mergedBatches = st.mergedBatches;
                sr.compute = wall > 0 ? std::min(1.0, st.computeSeconds / wall) : 0;
                sr.transfer = wall > 0 ? std::min(1.0 - sr.compute, st.transferSeconds / wall) : 0;
              }
              sr.wait = std::max(0.0, 1.0 - sr.compute - sr.transfer);
              sr.tokensPerSecond = wall > 0 ? sr.tokens / wall : 0;
              c.stages.push_back(sr);
            }
            log(format("bench: %s, %d sequence(s) x tg%d: %.2f t/s aggregate", path.c_str(), seqs, n,
                       c.aggregateTs()));
            rep.concurrency.push_back(std::move(c));
          }
        }
      }
    }
  }
  return rep;
}

std::string formatMarkdown(const BenchReport& r) {
  std::string out = bandwidthLine(r.bandwidthGbs) + " | bytes per decoded token:";
  bool first = true;
  for (const auto& [model, bytes] : r.bytesPerToken) {
    out += format("%s %s %.3f GB (%llu)", first ? "" : ",",
                  std::filesystem::path(model).filename().c_str(), bytes / 1e9,
                  static_cast<unsigned long long>(bytes));
    first = false;
  }
  out += "\n\n";
  bool anyGen = false;
  for (const auto& row : r.rows) anyGen = anyGen || row.nGen > 0;
  out += "| model | size | params | format | kernel | threads | test | t/s |";
  out += anyGen ? " bound t/s | % of bound |\n" : "\n";
  out += "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |";
  out += anyGen ? " ---: | ---: |\n" : "\n";
  for (const auto& row : r.rows) {
    out += "| " + row.modelType + " | " + gib(row.modelSize) + " | " +
           format("%.2f B", row.nParams / 1e9) + " | " + row.weightFormat + " | " + row.kernel +
           " | " + std::to_string(row.threads) + " | " + row.testName() + " | " +
           format("%.2f ± %.2f", row.avgTs(), row.stddevTs()) + " |";
    if (anyGen) {
      if (row.nGen > 0) {
        out += format(" %.2f | %.1f%% |", row.boundTs(), 100 * row.fractionOfBound());
      } else {
        out += " - | - |";
      }
    }
    out += "\n";
  }
  if (!r.concurrency.empty()) {
    out += "\n| model | kernel | threads | sequences | test | t/s (all sequences) | t/s per sequence | max batches in flight |\n";
    out += "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for (const auto& c : r.concurrency) {
      out += format("| %s | %s | %u | %d | tg%d | %.2f | %.2f | %.0f |\n",
                    std::filesystem::path(c.modelFilename).filename().c_str(), c.kernel.c_str(),
                    c.threads, c.sequences, c.nGen, c.aggregateTs(),
                    c.sequences ? c.aggregateTs() / c.sequences : 0.0, c.maxInFlight);
    }
    out += "\n| sequences | stage | worker | numa | layers | tokens/s | compute | transfer | wait | batches (merged) |\n";
    out += "| ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n";
    for (const auto& c : r.concurrency) {
      for (const auto& s : c.stages) {
        out += format("| %d | %zu | %s | %d | [%u, %u) | %.2f | %.1f%% | %.1f%% | %.1f%% | %llu (%llu) |\n",
                      c.sequences, s.stage, s.worker.c_str(), s.numaNode, s.layerBegin, s.layerEnd,
                      s.tokensPerSecond, 100 * s.compute, 100 * s.transfer, 100 * s.wait,
                      static_cast<unsigned long long>(s.batches),
                      static_cast<unsigned long long>(s.mergedBatches));
      }
    }
  }
  return out;
}

std::string formatJson(const BenchReport& r) {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& row : r.rows) {
    nlohmann::json j;
    j["build_commit"] = r.buildCommit;
    j["cpu_info"] = r.cpuInfo;
    j["model_filename"] = row.modelFilename;
    j["model_type"] = row.modelType;
    j["model_size"] = row.modelSize;
    j["model_n_params"] = row.nParams;
    j["n_batch"] = row.nBatch;
    j["n_threads"] = row.threads;
    j["n_prompt"] = row.nPrompt;
    j["n_gen"] = row.nGen;
    j["test_time"] = row.testTime;
    j["avg_ns"] = static_cast<uint64_t>(std::llround(row.avgNs()));
    j["stddev_ns"] = static_cast<uint64_t>(std::llround(row.stddevNs()));
    j["avg_ts"] = row.avgTs();
    j["stddev_ts"] = row.stddevTs();
    j["samples_ns"] = row.samplesNs;
    j["samples_ts"] = row.samplesTs();
    j["kernel"] = row.kernel;
    j["weight_format"] = row.weightFormat;
    j["bytes_per_token"] = row.bytesPerToken;
    j["bandwidth_gbs"] = row.bandwidthGbs;
    if (row.nGen > 0) {
      j["bound_ts"] = row.boundTs();
      j["fraction_of_bound"] = row.fractionOfBound();
    } else {
      j["bound_ts"] = nullptr;
      j["fraction_of_bound"] = nullptr;
    }
    arr.push_back(std::move(j));
  }
  for (const auto& c : r.concurrency) {
    nlohmann::json j;
    j["build_commit"] = r.buildCommit;
    j["model_filename"] = c.modelFilename;
    j["kernel"] = c.kernel;
    j["n_threads"] = c.threads;
    j["sequences"] = c.sequences;
    j["n_gen"] = c.nGen;
    j["tokens"] = c.tokens;
    j["seconds"] = c.seconds;
    j["aggregate_ts"] = c.aggregateTs();
    j["max_in_flight"] = c.maxInFlight;
    nlohmann::json stages = nlohmann::json::array();
    for (const auto& s : c.stages) {
      stages.push_back({{"stage", s.stage}, {"worker", s.worker}, {"numa_node", s.numaNode},
                        {"layer_begin", s.layerBegin}, {"layer_end", s.layerEnd},
                        {"tokens", s.tokens}, {"tokens_per_second", s.tokensPerSecond},
                        {"batches", s.batches}, {"merged_batches", s.mergedBatches},
                        {"compute", s.compute}, {"transfer", s.transfer}, {"wait", s.wait}});
    }
    j["stages"] = std::move(stages);
    arr.push_back(std::move(j));
  }
  return arr.dump(2) + "\n";
}

// ---------------------------------------------------------------------------------------------
// tern bench kernels

namespace {

constexpr uint32_t kGemmTokens = 128;

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Random T2 code bytes (every 2-bit code in 0..2).
void fillT2(uint8_t* p, size_t n, uint64_t seed) {
  uint8_t valid[256];
  for (int b = 0; b < 256; ++b) {
    int v = 0;
    for (int j = 0; j < 4; ++j) {
      const int c = (b >> (2 * j)) & 3;
      v |= (c == 3 ? 1 : c) << (2 * j);
    }
    valid[b] = static_cast<uint8_t>(v);
  }
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t r = splitmix(seed);
    for (size_t j = 0; j < 8 && i + j < n; ++j) p[i + j] = valid[(r >> (8 * j)) & 0xff];
  }
}

// F16 values of magnitude in [0.125, 0.25) with random signs.
void fillF16(uint16_t* p, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i += 4) {
    const uint64_t r = splitmix(seed);
    for (size_t j = 0; j < 4 && i + j < n; ++j) {
      p[i + j] = static_cast<uint16_t>((((r >> (16 * j)) & 0x83ff)) | 0x3000);
    }
  }
}

template <class F>
double bestOf(int reps, F&& f) {
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, secondsSince(t0));
  }
  return best;
}

struct Shape {
  std::string name;
  uint32_t nOut = 0, k = 0;
};

// The layout's distinct projection shapes [nOut x k], names merged where shapes coincide.
std::vector<Shape> projectionShapes(const Layout& l) {
  const uint32_t d = l.nEmbd, qd = l.qDim(), kvd = l.kvDim(), ff = l.nFf;
  const std::vector<Shape> all{{"attn_q", qd, d},     {"attn_k/v", kvd, d}, {"attn_output", d, qd},
                               {"ffn_gate/up", ff, d}, {"ffn_down", d, ff}};
  std::vector<Shape> out;
  for (const Shape& s : all) {
    auto same = std::find_if(out.begin(), out.end(),
                             [&](const Shape& o) { return o.nOut == s.nOut && o.k == s.k; });
    if (same != out.end()) same->name += "/" + s.name;
    else out.push_back(s);
  }
  return out;
}

std::string shapeLabel(const std::string& name, uint32_t nOut, uint32_t k, uint32_t nTok) {
  return format("%s [%u x %u] x %u tok", name.c_str(), nOut, k, nTok);
}

}  // namespace

KernelReport runKernelBench(const KernelBenchOptions& o, const BenchLog& log) {
  const Layout* layout = findLayout(o.layout);
  if (layout == nullptr) {
    throw std::invalid_argument("unknown layout '" + o.layout + "' (one of: " + layoutNames() + ")");
  }
  if (o.reps < 1) throw std::invalid_argument("-r must be >= 1 (got " + std::to_string(o.reps) + ")");
  std::vector<const kernels::KernelTable*> tables;
  std::vector<std::string> names = o.variants.empty() ? kernels::supportedKernelNames() : o.variants;
  for (const auto& n : names) {
    const kernels::KernelTable* kt = &kernels::selectKernels(n);
    if (std::find(tables.begin(), tables.end(), kt) == tables.end()) tables.push_back(kt);
  }
  const topo::Machine machine = topo::Machine::detect();
  log("machine: " + machine.summary());
  std::vector<int> threads = o.threads;
  if (threads.empty()) {
    threads.push_back(1);
    if (machine.defaultThreads() > 1) threads.push_back(static_cast<int>(machine.defaultThreads()));
  }

  KernelReport rep;
  rep.layout = layout->name;
  rep.bandwidthGbs = measureBandwidths(threads, o.bandwidthBytes, log);
  const uint64_t stream = o.streamBytes > 0 ? o.streamBytes : 4 * topo::lastLevelCacheBytes();

  auto add = [&](KernelRow row) {
    row.bandwidthGbs = rep.bandwidthGbs.at(row.threads);
    log(format("kernels: %s %s %s, %s: %.3f ms", row.kernel.c_str(), row.variant.c_str(),
               row.shape.c_str(), threadsLabel(row.threads).c_str(), row.seconds * 1e3));
    rep.rows.push_back(std::move(row));
  };

  // Every row goes through the engine's own matmul path (ops::applyGroup: what a forward pass
  // runs for each projection group, with rows claimed in pieces by the team): T2 projections
  // quantise their activations per token, then gemmT2 and the epilogue; the head is matmulF16.
  auto floats = [](size_t n, uint64_t s, float div) {
    std::vector<float> x(n);
    for (auto& v : x) v = static_cast<float>(static_cast<int64_t>(splitmix(s) % 2001) - 1000) / div;
    return x;
  };
  auto linear = [](ops::Linear::Kind kind, const void* data, uint32_t k, uint32_t nOut) {
    ops::Linear lin;
    lin.kind = kind;
    lin.int8 = kind == ops::Linear::Kind::T2;
    lin.data = data;
    lin.k = k;
    lin.nOut = nOut;
    return lin;
  };
  auto apply = [](const kernels::KernelTable& kt, const ops::Linear& lin, const float* x,
                  uint32_t nTok, float* y, int t) {
    const ops::Projection proj[1] = {{&lin, nullptr, y}};
    ops::applyGroup(kt, proj, x, nTok, lin.k, t, /*dynamic=*/true);
  };

  // Ternary GEMV over `copies` distinct weight tensors (together >= stream bytes, so each call
  // reads from DRAM as decode does), and GEMM over 128 tokens on one copy.
  for (const Shape& sh : projectionShapes(*layout)) {
    const size_t tensorBytes = kernels::t2TensorBytes(sh.k, sh.nOut);
    const size_t copies = std::max<size_t>(1, (stream + tensorBytes - 1) / tensorBytes);
    std::vector<uint8_t> w(tensorBytes * copies);
    fillT2(w.data(), w.size(), 1);
    const std::vector<float> x = floats(size_t{sh.k} * kGemmTokens, 2, 100.0f);
    std::vector<float> y(size_t{sh.nOut} * kGemmTokens);
    std::vector<ops::Linear> lins;
    for (size_t c = 0; c < copies; ++c) {
      lins.push_back(linear(ops::Linear::Kind::T2, w.data() + c * tensorBytes, sh.k, sh.nOut));
    }
    const uint64_t rowBytes = kernels::t2RowBytes(sh.k) * sh.nOut;
    for (const kernels::KernelTable* kt : tables) {
      for (int t : threads) {
        auto pass = [&] {
          for (const ops::Linear& lin : lins) apply(*kt, lin, x.data(), 1, y.data(), t);
        };
        auto gemmCall = [&] { apply(*kt, lins[0], x.data(), kGemmTokens, y.data(), t); };
        pass();
        KernelRow gemv{"gemmT2", kt->name, shapeLabel(sh.name, sh.nOut, sh.k, 1),
                       static_cast<unsigned>(t), bestOf(o.reps, pass) / copies, rowBytes,
                       uint64_t{sh.nOut} * sh.k, true, 0};
        add(gemv);
        gemmCall();
        KernelRow gemm{"gemmT2", kt->name, shapeLabel(sh.name, sh.nOut, sh.k, kGemmTokens),
                       static_cast<unsigned>(t), bestOf(o.reps, gemmCall), rowBytes,
                       uint64_t{sh.nOut} * sh.k * kGemmTokens, false, 0};
        add(gemm);
      }
    }
  }

  // The F16 head [nVocab x nEmbd] GEMV (one copy is already far larger than any cache).
  {
    const uint32_t k = layout->nEmbd, nOut = layout->nVocab;
    const size_t tensorElems = size_t{k} * nOut;
    const size_t copies = std::max<size_t>(1, (stream + 2 * tensorElems - 1) / (2 * tensorElems));
    std::vector<uint16_t> w(tensorElems * copies);
    fillF16(w.data(), w.size(), 3);
    const std::vector<float> x = floats(k, 4, 1000.0f);
    std::vector<float> y(nOut);
    std::vector<ops::Linear> lins;
    for (size_t c = 0; c < copies; ++c) {
      lins.push_back(linear(ops::Linear::Kind::F16, w.data() + c * tensorElems, k, nOut));
    }
    for (const kernels::KernelTable* kt : tables) {
      for (int t : threads) {
        auto pass = [&] {
          for (const ops::Linear& lin : lins) apply(*kt, lin, x.data(), 1, y.data(), t);
        };
        pass();
        add({"matmulF16", kt->name, shapeLabel("head", nOut, k, 1), static_cast<unsigned>(t),
             bestOf(o.reps, pass) / copies, uint64_t{2} * tensorElems, uint64_t{nOut} * k, true, 0});
      }
    }
  }

  // Per-token int8 quantisation of one activation row (one thread per row in the engine).
  std::set<uint32_t> rowLengths{layout->nEmbd, layout->qDim(), layout->nFf};
  for (uint32_t k : rowLengths) {
    std::vector<float> x(k);
    std::vector<int8_t> q(kernels::t2PaddedK(k));
    uint64_t s = 5;
    for (auto& v : x) v = static_cast<float>(static_cast<int64_t>(splitmix(s) % 2001) - 1000) / 100.0f;
    const int calls = static_cast<int>(std::max<uint32_t>(16, (1u << 22) / k));
    int32_t sink = 0;
    for (const kernels::KernelTable* kt : tables) {
      auto batch = [&] {
        for (int i = 0; i < calls; ++i) {
          int32_t sumQ = 0;
          kt->quantizeRow(x.data(), k, q.data(), &sumQ);
          sink ^= sumQ;
        }
      };
      batch();
      add({"quantizeRow", kt->name, format("[%u] floats", k), 1u, bestOf(o.reps, batch) / calls,
           0, 0, false, 0});
    }
    asm volatile("" : : "r"(sink) : "memory");
  }
  return rep;
}

std::string formatKernelTable(const KernelReport& r) {
  std::string out = "layout " + r.layout + "; " + bandwidthLine(r.bandwidthGbs) + "\n\n";
  out += "| kernel | variant | shape | threads | time/call | GB/s | % of bw | GMAC/s |\n";
  out += "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n";
  for (const auto& row : r.rows) {
    const double gbs = row.weightBytes > 0 ? row.weightBytes / row.seconds * 1e-9 : 0;
    const std::string time = row.seconds >= 1e-3 ? format("%.3f ms", row.seconds * 1e3)
                                                 : format("%.2f us", row.seconds * 1e6);
    out += "| " + row.kernel + " | " + row.variant + " | " + row.shape + " | " +
           std::to_string(row.threads) + " | " + time + " | " +
           (row.weightBytes > 0 ? format("%.2f", gbs) : std::string("-")) + " | " +
           (row.streaming && row.bandwidthGbs > 0 ? format("%.1f%%", 100 * gbs / row.bandwidthGbs)
                                                  : std::string("-")) +
           " | " + (row.macs > 0 ? format("%.2f", row.macs / row.seconds * 1e-9) : std::string("-")) +
           " |\n";
  }
  return out;
}

std::string formatKernelJson(const KernelReport& r) {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& row : r.rows) {
    nlohmann::json j;
    j["layout"] = r.layout;
    j["kernel"] = row.kernel;
    j["variant"] = row.variant;
    j["shape"] = row.shape;
    j["n_threads"] = row.threads;
    j["seconds_per_call"] = row.seconds;
    j["weight_bytes"] = row.weightBytes;
    j["macs"] = row.macs;
    j["streaming"] = row.streaming;
    j["bandwidth_gbs"] = row.bandwidthGbs;
    arr.push_back(std::move(j));
  }
  return arr.dump(2) + "\n";
}

}  // namespace tern::runtime
