#include "tools/tern/embedded.hpp"

#include "worker/stage_server.hpp"

#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <stdexcept>

namespace tern::cli {

OpenedModel openModel(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw std::runtime_error("model file not found: " + path);
  }
  OpenedModel m;
  m.path = path;
  m.file = gguf::File::open(path);
  m.cfg = ModelConfig::fromGguf(*m.file);
  m.cfg.validateTensors(*m.file);
  m.tokenizer = Tokenizer::create(Vocab::fromGguf(*m.file));
  return m;
}

std::string humanBytes(uint64_t b) {
  char buf[64];
  if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1ull << 30));
  else if (b >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.2f MiB", b / double(1ull << 20));
  else std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024.0);
  return buf;
}

std::string typeSummary(const gguf::File& f) {
  std::map<std::string, int> counts;
  for (const auto& t : f.tensors()) counts[tensorTypeName(t.type)]++;
  std::string s;
  for (const auto& [name, n] : counts) s += (s.empty() ? "" : ", ") + name + " x" + std::to_string(n);
  return s;
}

std::string projectionTypes(const gguf::File& f) {
  std::set<std::string> types;
  for (const auto& t : f.tensors()) {
    const std::string& n = t.name;
    const bool weight = n.size() > 7 && n.compare(n.size() - 7, 7, ".weight") == 0;
    if (n.rfind("blk.", 0) == 0 && weight && n.find("norm") == std::string::npos) {
      types.insert(tensorTypeName(t.type));
    }
  }
  std::string s;
  for (const auto& t : types) s += (s.empty() ? "" : ",") + t;
  return s;
}

std::vector<ops::StageRange> splitLayers(uint32_t nLayer, uint32_t k) {
  std::vector<ops::StageRange> ranges;
  uint32_t at = 0;
  for (uint32_t i = 0; i < k; ++i) {
    const uint32_t len = nLayer / k + (i < nLayer % k ? 1 : 0);
    ranges.push_back({at, at + len, i == 0, i + 1 == k});
    at += len;
  }
  return ranges;
}

uint32_t stageCount(int requested, const topo::Machine& machine, uint32_t nLayer) {
  const uint32_t n = requested > 0 ? static_cast<uint32_t>(requested)
                                   : std::min<uint32_t>(std::max(1u, machine.numaNodes), nLayer);
  if (n > nLayer) {
    throw std::runtime_error("--stages " + std::to_string(n) + " is more than the model's " +
                             std::to_string(nLayer) + " layers");
  }
  return n;
}

std::vector<proto::Stage::Client> buildEmbeddedStages(const OpenedModel& m, uint32_t nStages,
                                                      const ops::StageOptions& opts,
                                                      const topo::Machine& machine) {
  std::vector<proto::Stage::Client> caps;
  const unsigned threads = opts.threads > 0 ? static_cast<unsigned>(opts.threads) : 0;
  for (const auto& range : splitLayers(m.cfg.nLayer, nStages)) {
    auto stage = std::make_unique<ops::Stage>(m.file, m.cfg, range, opts);
    caps.push_back(kj::heap<worker::StageServer>(std::move(stage), threads, machine.summary()));
  }
  return caps;
}

}  // namespace tern::cli
