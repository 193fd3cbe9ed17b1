// `tern bench`: llama-bench's measurements on tern's embedded pipeline, plus the decode bound
// (measured read bandwidth / bytes read per token), and `tern bench kernels`: each kernel of
// the KernelTable on a layout's shapes, streaming its weights from DRAM. The matmul rows time
// the engine's own path (ops::applyGroup, as a forward pass runs each projection group).
//
// Model tests, as llama-bench defines them:
//   pp<P>  prefill of P random token ids (fixed seed, never an end-of-generation id) in one
//          Generator::feed, micro-batched as `tern run` does; t/s = P / seconds.
//   tg<N>  after a 1-token context, N single-token decode steps (each a full pass through the
//          pipeline with the head, no sampling); t/s = N / seconds.
// Every test runs once untimed (tg: 2 steps), then `reps` timed repetitions, each on a fresh
// sequence.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace tern::runtime {

// "512" or "1,2,4" -> {1, 2, 4}. Throws std::invalid_argument "FLAG: ..." for an empty list, a
// value that is not an integer, or one below minValue.
std::vector<int> parseIntList(const std::string& text, const std::string& flag, int minValue);
// "a,b" -> {"a", "b"} (empty items dropped).
std::vector<std::string> splitList(const std::string& text);

struct ModelBenchOptions {
  std::vector<std::string> models;
  std::vector<int> nPrompt{512};  // 0 entries are skipped
  std::vector<int> nGen{128};     // 0 entries are skipped
  std::vector<int> threads;       // empty: physical cores
  std::vector<std::string> kernels{"auto"};
  int reps = 5;
  int stages = 0;                 // 0: one per worker
  uint64_t seed = 1234;           // token ids
  uint64_t bandwidthBytes = 0;    // probe buffer; 0 = topo::measureReadBandwidth's default
  std::vector<std::string> workers;  // running `tern worker`s; empty = embedded default
  bool insecure = false;          // --insecure: workers not on loopback (plain TCP)
  std::string split = "auto";     // runtime/pipeline.hpp PipelineOptions::split
  std::string source = "auto";    // where workers get the weights: auto | path | stream
  // Concurrent-sequence tests: for each count S, S sequences decode nGen tokens each at once
  // (continuous batching, pipelined); per stage: tokens/s and compute / transfer / wait shares.
  // Empty: {1, 2, 4, 8} with --workers, none otherwise.
  std::vector<int> concurrency;
};

// One stage during a concurrent-sequence test (Worker.stats over the timed part).
struct StageRow {
  size_t stage = 0;
  std::string worker;         // address
  int numaNode = -1;
  uint32_t layerBegin = 0, layerEnd = 0;
  uint64_t tokens = 0;        // tokens the stage processed
  uint64_t batches = 0;       // micro-batches it served
  uint64_t mergedBatches = 0; // of which computed merged with others that waited too
  double tokensPerSecond = 0; // tokens / wall time
  double compute = 0, transfer = 0, wait = 0;  // shares of the wall time (sum to 1)
};

// Aggregate decode speed of S concurrent sequences.
struct ConcurrencyRow {
  std::string modelFilename;
  std::string kernel;
  unsigned threads = 0;
  int sequences = 0;
  int nGen = 0;               // tokens each sequence decodes
  uint64_t tokens = 0;        // sampled over all sequences
  double seconds = 0;         // wall time of the timed part
  double maxInFlight = 0;     // most micro-batches the engine had in the pipeline at once
  std::vector<StageRow> stages;
  double aggregateTs() const { return seconds > 0 ? tokens / seconds : 0; }
};

struct BenchRow {
  std::string modelFilename;  // as given on the command line
  std::string modelType;      // "<arch> <params> <format>", e.g. "bitnet-b1.58 2.4B TERN_T2"
  uint64_t modelSize = 0;     // file bytes
  uint64_t nParams = 0;
  std::string weightFormat;   // projection tensor types in the file, e.g. "TERN_T2"
  std::string kernel;         // variant the stages run, e.g. "avx512"
  unsigned threads = 0;
  uint32_t nBatch = 0;        // prompt tokens per forward pass (micro-batch)
  int nPrompt = 0, nGen = 0;  // one of them is 0
  std::string testTime;       // ISO 8601 UTC start of the test
  std::vector<uint64_t> samplesNs;  // one per repetition
  uint64_t bytesPerToken = 0; // weight bytes read per decoded token (all stages)
  double bandwidthGbs = 0;    // read bandwidth measured with `threads` threads

  std::string testName() const;  // "pp512" | "tg128"
  uint64_t tokens() const { return static_cast<uint64_t>(nPrompt > 0 ? nPrompt : nGen); }
  std::vector<double> samplesTs() const;
  double avgNs() const;
  double stddevNs() const;  // sample standard deviation (0 for one sample)
  double avgTs() const;     // mean of samplesTs()
  double stddevTs() const;
  double boundTs() const;           // tg rows: bandwidth / bytesPerToken; pp rows: 0
  double fractionOfBound() const;   // tg rows: avgTs() / boundTs(); pp rows: 0
};

struct BenchReport {
  std::string buildCommit;  // "unknown" when the build did not record it
  std::string cpuInfo;
  std::map<unsigned, double> bandwidthGbs;  // threads -> GB/s
  std::map<std::string, uint64_t> bytesPerToken;  // model file -> bytes per decoded token
  std::vector<BenchRow> rows;
  std::vector<ConcurrencyRow> concurrency;
};

// Progress lines (no trailing newline) for stderr.
using BenchLog = std::function<void(const std::string& line)>;

// Measures the bandwidth for every thread count, then runs every model x kernel x threads x test.
// Throws std::runtime_error (or the model's/stages' own errors) with a one-line message.
BenchReport runModelBench(const ModelBenchOptions& opts, const BenchLog& log);

// One line "read bandwidth ... | bytes per decoded token ..." then llama-bench's markdown table,
// then (with concurrency rows) the aggregate table and the per-stage table.
std::string formatMarkdown(const BenchReport& r);
// A JSON array, one object per row: llama-bench's fields plus tern's (kernel, weight_format,
// bytes_per_token, bandwidth_gbs, bound_ts, fraction_of_bound; the last two null on pp rows).
// Concurrency rows follow as objects with "sequences", "aggregate_ts" and "stages".
std::string formatJson(const BenchReport& r);

struct KernelBenchOptions {
  std::string layout = "2B4T";      // model/layouts.hpp name
  std::vector<int> threads;         // empty: 1 and the physical cores
  std::vector<std::string> variants;  // empty: every variant this CPU supports
  int reps = 5;
  uint64_t streamBytes = 0;         // GEMV weights cycled per shape; 0 = 4 x last-level cache
  uint64_t bandwidthBytes = 0;      // probe buffer; 0 = default
};

struct KernelRow {
  std::string kernel;   // "gemmT2" (with the activations' quantisation and the epilogue, as
                        // a BitLinear runs), "matmulF16", "quantizeRow"
  std::string variant;  // "avx512", "ref", ...
  std::string shape;    // "attn_q/attn_output [2560 x 2560] x 1 tok"
  unsigned threads = 0;
  double seconds = 0;       // per call, best of the repetitions
  uint64_t weightBytes = 0; // bytes of weights one call reads (0 for quantizeRow)
  uint64_t macs = 0;        // multiply-accumulates per call (0 for quantizeRow)
  bool streaming = false;   // weights came from DRAM (GEMV over copies larger than the cache)
  double bandwidthGbs = 0;  // measured read bandwidth with `threads` threads
};

struct KernelReport {
  std::string layout;
  std::map<unsigned, double> bandwidthGbs;
  std::vector<KernelRow> rows;
};

// Throws std::invalid_argument for an unknown layout or variant (or one this CPU cannot run).
KernelReport runKernelBench(const KernelBenchOptions& opts, const BenchLog& log);
// "read bandwidth" line, then | kernel | variant | shape | threads | time/call | GB/s |
// % of bw | GMAC/s |; "-" where a column does not apply.
std::string formatKernelTable(const KernelReport& r);
std::string formatKernelJson(const KernelReport& r);

}  // namespace tern::runtime
