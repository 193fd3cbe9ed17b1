// The placement planner: which contiguous range of layers each worker holds, where the embedding
// and the head live, what that costs in memory and what decode speed it predicts.
//
// Sizes come from model metadata (a GGUF file's tensor table, or a named layout for files that do
// not exist); workers are described by their measured or assumed speed and free memory. No
// weights are read; the coordinator never touches ops or kernels.
//
// Time model (decode, one token of one sequence): a stage reads its weights and its layers' KV
// cache (at half the context, the average over a generation) and does the matching multiply-adds;
// its time is the larger of bytes / bandwidth and MACs / measured MAC rate (tokens/s = the smaller
// of the two bounds). Hops carry [nEmbd] float32 activations stage to stage and [nVocab] float32
// logits from the last stage back to the coordinator (assumed on the first worker's host).
// One sequence: tokens/s = 1 / (sum of stage times + hops). With S stages and >= S sequences in
// flight the pipeline is limited by its slowest stage (or link).
#pragma once

#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/layouts.hpp"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace tern::coord {

// What placement needs to know about a model. Bytes are resident bytes, also read once per token.
struct ModelShape {
  std::string name;
  uint32_t nLayer = 0;
  uint32_t nEmbd = 0;
  uint32_t nVocab = 0;
  uint32_t qDim = 0;   // nHead * headDim
  std::vector<uint64_t> layerWeightBytes;  // [nLayer] projections + norms of each layer
  std::vector<uint64_t> layerMacs;         // [nLayer] weight multiply-adds per token
  uint64_t embeddingBytes = 0;     // token_embd, resident on the first stage
  uint64_t embeddingRowBytes = 0;  // bytes of token_embd read per token (one row)
  uint64_t headBytes = 0;          // output_norm + output.weight (token_embd when tied)
  uint64_t headSharedBytes = 0;    // part of headBytes that is token_embd (tied head), else 0
  uint64_t kvBytesPerTokenPerLayer = 0;  // K + V of one position of one layer

  uint64_t layerBytes() const;  // sum of layerWeightBytes
  uint64_t headMacs() const { return uint64_t(nEmbd) * nVocab; }
};

// kvElementBytes: 2 for an F16 KV cache (the default), 4 for F32.
ModelShape modelShapeFromGguf(const gguf::File& file, const ModelConfig& cfg,
                              unsigned kvElementBytes = 2);
ModelShape modelShapeFromLayout(const Layout& layout, unsigned kvElementBytes = 2);

struct WorkerSpec {
  std::string name;
  std::string host;          // workers on one host hand activations over in memory
  unsigned cores = 0;
  uint64_t freeMemoryBytes = 0;
  double bandwidthGBs = 0;     // memory bandwidth this worker reads weights at, GB/s (1e9 bytes)
  double calibMacsPerSec = 0;  // measured int8 x ternary multiply-adds per second; 0 = unknown
  double linkGbps = 0;         // network link to other hosts, Gbit/s
  double linkLatencyMs = 0;    // one-way latency of a hop to another host, ms
  unsigned numaNode = 0;
};

// Hosts described without measurements: one worker per NUMA node.
struct NodeSpec {
  unsigned numaNode = 0;  // OS index
  unsigned cores = 0;
  uint64_t memoryBytes = 0;
};
struct HostSpec {
  std::string name;
  std::vector<NodeSpec> nodes;
  double bandwidthGBsPerNode = 0;
  double macsPerSecPerCore = 0;
  double linkGbps = 10;
  double linkLatencyMs = 0.1;
};
inline constexpr double kDefaultMacsPerSecPerCore = 20e9;  // assumed when nothing is measured

// One worker per node, named "<host>/numa<i>" ("<host>" for a one-node host).
std::vector<WorkerSpec> workersFromHosts(const std::vector<HostSpec>& hosts);

// A cluster file: a JSON array (or {"boxes": [...]}) of boxes {name, cores, memory_gb,
// bandwidth_gbs, numa_nodes, link_gbps, link_latency_ms, [gmacs_per_core]}; cores, memory and
// bandwidth are the box's totals, split evenly over its NUMA nodes. Throws std::invalid_argument
// naming `source` and the bad field.
std::vector<HostSpec> parseClusterJson(const std::string& text, const std::string& source);

struct PlanRequest {
  uint32_t nCtx = 4096;          // positions per sequence; KV cache reserved for all of them
  uint32_t maxSequences = 1;     // sequences whose KV cache every stage holds at once
  std::string headWorker;        // worker that holds the head (moved to the pipeline's end);
                                 // empty = the last worker
  uint64_t reserveBytesPerWorker = 0;  // kept free on every worker (activations, runtime)
};

struct WorkerPlan {
  std::string worker;         // WorkerSpec::name
  size_t workerIndex = 0;     // index into the workers given
  bool used = false;          // holds layers, the embedding or the head
  uint32_t layerBegin = 0;    // first layer held
  uint32_t layerEnd = 0;      // one past the last layer held
  bool holdsEmbedding = false;
  bool holdsHead = false;
  uint64_t weightBytes = 0;   // resident weights
  uint64_t kvBytes = 0;       // KV cache for nCtx x maxSequences
  uint64_t bytesPerToken = 0; // read per decoded token: weights + KV at half the context
  double secondsPerToken = 0;
  double tokensPerSecond = 0; // of this stage alone
  bool computeBound = false;  // the MAC bound, not bandwidth, sets its time
};

struct Placement {
  std::vector<WorkerPlan> workers;  // pipeline order (the head worker last); unused ones too
  size_t stages = 0;                // workers used
  uint64_t weightBytes = 0;         // all stages
  uint64_t kvBytes = 0;
  double stageSeconds = 0;          // sum of stage times per token
  double hopSeconds = 0;            // sum of hops per token, the return to the coordinator too
  double singleSequenceTokensPerSecond = 0;
  double pipelinedTokensPerSecond = 0;  // all sequences together, maxSequences in flight
  size_t bottleneck = 0;            // index into workers of the slowest stage
};

// Refusals: a model that fits nowhere, bad worker descriptions.
class PlanError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Contiguous layers in pipeline order, balanced so that the slowest stage is as fast as possible
// (each worker's share in proportion to its speed), within each worker's free memory (weights +
// KV for nCtx x maxSequences + reserve). The embedding goes on the first worker, the head on the
// last. Throws PlanError, e.g. "needs 25.5 GB of weights + 2.1 GB KV, workers offer 16.0 GB in
// total: short by 11.6 GB".
Placement planPlacement(const ModelShape& model, const std::vector<WorkerSpec>& workers,
                        const PlanRequest& request);

}  // namespace tern::coord
