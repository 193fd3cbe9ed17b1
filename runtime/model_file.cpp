#include "runtime/model_file.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <stdexcept>

namespace tern::runtime {

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

uint32_t contextSize(const ModelConfig& cfg, uint64_t requested) {
  constexpr uint64_t kMaxOverTrained = 16;
  if (requested == 0) return std::min<uint32_t>(cfg.nCtxTrain, 4096);
  const uint64_t limit = uint64_t{cfg.nCtxTrain} * kMaxOverTrained;
  if (requested > limit) {
    throw std::runtime_error("-c " + std::to_string(requested) + " is larger than the model supports (" +
                             std::to_string(limit) + " = " + std::to_string(kMaxOverTrained) +
                             " x its context length " + std::to_string(cfg.nCtxTrain) + ")");
  }
  return static_cast<uint32_t>(requested);
}

}  // namespace tern::runtime
