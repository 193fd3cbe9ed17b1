#include "model/layouts.hpp"

#include <cctype>
#include <cstdio>

namespace tern {

namespace {

// bitnet.cpp's dummy-model layouts (formats.md section 7): arch bitnet, SiLU, kv heads = heads,
// Llama-2 SentencePiece vocab padded to 32002, tied head, ctx 2048, theta 10000.
Layout dummy(const char* name, uint32_t hidden, uint32_t ffn, uint32_t layers, uint32_t heads,
             uint32_t headDim) {
  return Layout{name, Arch::Bitnet, hidden, ffn, layers, heads, heads, headDim, 32002, 2048,
                10000.0f, 1e-5f, "llama-spm", true,
                std::string("bitnet.cpp dummy layout ") + name};
}

std::vector<Layout> buildTable() {
  std::vector<Layout> t = {
      dummy("125M", 768, 3072, 11, 12, 64),
      dummy("350M", 1024, 3072, 24, 16, 64),
      dummy("1B", 2048, 3584, 24, 32, 64),
      dummy("1.5B", 1536, 9216, 28, 32, 48),
      dummy("2.7B", 3072, 7680, 24, 32, 96),
      dummy("3.8B", 3840, 8192, 24, 32, 120),
      dummy("7B", 4096, 12032, 32, 32, 128),
      dummy("13B", 5120, 13824, 40, 40, 128),
      dummy("30B", 6656, 16384, 60, 52, 128),
      dummy("70B", 8192, 24576, 80, 64, 128),
      dummy("100B", 8192, 45568, 72, 64, 128),
  };
  // Real models (formats.md section 5), random weights.
  //    name              arch              embd   ff     L   H   Hkv hd   vocab   ctx    theta       eps    tokenizer    tied
  t.push_back({"2B4T", Arch::BitnetB158, 2560, 6912, 30, 20, 5, 128, 128256, 4096, 500000.0f, 1e-5f,
               "llama3", true, "BitNet-b1.58-2B-4T shape (ReLU squared, GQA 4:1)"});
  t.push_back({"large", Arch::Bitnet, 1536, 4096, 24, 16, 16, 96, 32002, 2048, 10000.0f, 1e-5f,
               "llama-spm", true, "1bitLLM bitnet_b1_58-large (0.7B) shape"});
  t.push_back({"3B", Arch::Bitnet, 3200, 8640, 26, 32, 32, 100, 32002, 2048, 10000.0f, 1e-5f,
               "llama-spm", true, "1bitLLM bitnet_b1_58-3B shape"});
  t.push_back({"Llama3-8B-1.58", Arch::Llama, 4096, 14336, 32, 32, 8, 128, 128256, 8192, 500000.0f,
               1e-5f, "llama3", false, "Llama3-8B-1.58-100B-tokens shape"});
  // Falcon3's own tokenizer is not available here: these files carry the Llama-3 tokenizer
  // padded with reserved specials to Falcon3's 131072 entries, so token ids mean nothing Falcon.
  const char* falconNote = " shape (Llama-3 tokenizer padded to 131072: no Falcon3 tokenizer here)";
  t.push_back({"Falcon3-1B", Arch::Llama, 2048, 8192, 18, 8, 4, 256, 131072, 8192, 1000042.0f, 1e-6f,
               "llama3", false, std::string("Falcon3-1B-1.58bit") + falconNote});
  t.push_back({"Falcon3-3B", Arch::Llama, 3072, 9216, 22, 12, 4, 256, 131072, 4096, 1000042.0f, 1e-6f,
               "llama3", false, std::string("Falcon3-3B-1.58bit") + falconNote});
  t.push_back({"Falcon3-7B", Arch::Llama, 3072, 23040, 28, 12, 4, 256, 131072, 8192, 1000042.0f, 1e-6f,
               "llama3", false, std::string("Falcon3-7B-1.58bit") + falconNote});
  t.push_back({"Falcon3-10B", Arch::Llama, 3072, 23040, 40, 12, 4, 256, 131072, 32768, 1000042.0f,
               1e-6f, "llama3", false, std::string("Falcon3-10B-1.58bit") + falconNote});
  // Tiny layouts for tests.
  t.push_back({"2B4T-tiny", Arch::BitnetB158, 256, 512, 3, 4, 2, 64, 128256, 512, 500000.0f, 1e-5f,
               "llama3", true, "tiny bitnet-b1.58 with the 2B4T tokenizer (GQA 2:1), for tests"});
  t.push_back({"bitnet-tiny", Arch::Bitnet, 128, 256, 2, 2, 2, 64, 32002, 512, 10000.0f, 1e-5f,
               "llama-spm", true, "tiny bitnet with the Llama-2 SentencePiece vocab, for tests"});
  return t;
}

bool equalsNoCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  }
  return true;
}

constexpr uint64_t kAlignment = 32;  // bytes, GGUF default

}  // namespace

const std::vector<Layout>& allLayouts() {
  static const std::vector<Layout> table = buildTable();
  return table;
}

const Layout* findLayout(std::string_view name) {
  for (const Layout& l : allLayouts())
    if (equalsNoCase(l.name, name)) return &l;
  return nullptr;
}

std::string layoutNames() {
  std::string s;
  for (const Layout& l : allLayouts()) {
    if (!s.empty()) s += ", ";
    s += l.name;
  }
  return s;
}

uint64_t LayoutTensor::nelements() const {
  uint64_t n = 1;
  for (uint64_t d : ne) n *= d;
  return n;
}

uint64_t LayoutTensor::nbytes() const {
  auto b = tensorBytes(type, ne);
  return b ? *b : 0;
}

std::vector<LayoutTensor> layoutTensors(const Layout& l) {
  const bool subNorms = l.arch != Arch::Llama;
  const uint64_t e = l.nEmbd, f = l.nFf, q = l.qDim(), kv = l.kvDim(), v = l.nVocab;
  std::vector<LayoutTensor> t;
  t.push_back({tensor_names::kTokenEmbd, TensorType::F16, {e, v}, TensorRole::Embedding});
  auto proj = [&](uint32_t i, const char* s, uint64_t nIn, uint64_t nOut) {
    t.push_back({tensor_names::layer(i, s), TensorType::TERN_T2, {nIn, nOut}, TensorRole::Projection});
  };
  auto norm = [&](uint32_t i, const char* s, uint64_t n) {
    t.push_back({tensor_names::layer(i, s), TensorType::F32, {n}, TensorRole::Norm});
  };
  for (uint32_t i = 0; i < l.nLayer; ++i) {
    norm(i, "attn_norm.weight", e);
    proj(i, "attn_q.weight", e, q);
    proj(i, "attn_k.weight", e, kv);
    proj(i, "attn_v.weight", e, kv);
    if (subNorms) norm(i, "attn_sub_norm.weight", q);
    proj(i, "attn_output.weight", q, e);
    norm(i, "ffn_norm.weight", e);
    proj(i, "ffn_gate.weight", e, f);
    proj(i, "ffn_up.weight", e, f);
    if (subNorms) norm(i, "ffn_sub_norm.weight", f);
    proj(i, "ffn_down.weight", f, e);
  }
  t.push_back({tensor_names::kOutputNorm, TensorType::F32, {e}, TensorRole::Norm});
  if (!l.tiedHead) t.push_back({tensor_names::kOutput, TensorType::F16, {e, v}, TensorRole::Output});
  return t;
}

LayoutSize layoutSize(const Layout& l) {
  LayoutSize s;
  for (const LayoutTensor& t : layoutTensors(l)) {
    uint64_t n = t.nelements();
    s.totalParams += n;
    if (t.role == TensorRole::Projection) s.ternaryParams += n;
    s.tensorBytes += (t.nbytes() + kAlignment - 1) / kAlignment * kAlignment;
  }
  // Header and tensor infos (~100 bytes each) plus the tokenizer metadata, measured on files
  // `tern gen` wrote: about 7.8 MB for the Llama-3 vocab (tokens + 280k merges), 0.65 MB for SPM.
  uint64_t meta = 4096 + 100 * static_cast<uint64_t>(layoutTensors(l).size());
  meta += l.tokenizer == "llama3" ? 7'800'000 : 650'000;
  s.fileBytesEstimate = s.tensorBytes + meta;
  return s;
}

std::string formatCount(uint64_t n) {
  char buf[32];
  double x = static_cast<double>(n);
  if (x >= 1e9) std::snprintf(buf, sizeof buf, "%.2f B", x / 1e9);
  else if (x >= 1e6) std::snprintf(buf, sizeof buf, "%.1f M", x / 1e6);
  else if (x >= 1e3) std::snprintf(buf, sizeof buf, "%.1f K", x / 1e3);
  else std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(n));
  return buf;
}

std::string formatBytes(uint64_t n) {
  char buf[32];
  double x = static_cast<double>(n);
  if (x >= 1e9) std::snprintf(buf, sizeof buf, "%.2f GB", x / 1e9);
  else if (x >= 1e6) std::snprintf(buf, sizeof buf, "%.1f MB", x / 1e6);
  else if (x >= 1e3) std::snprintf(buf, sizeof buf, "%.1f KB", x / 1e3);
  else std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(n));
  return buf;
}

std::string humanBytes(uint64_t n) {
  char buf[48];
  const double x = static_cast<double>(n);
  if (n >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", x / double(1ull << 30));
  else if (n >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.2f MiB", x / double(1ull << 20));
  else if (n >= (1ull << 10)) std::snprintf(buf, sizeof buf, "%.1f KiB", x / 1024.0);
  else std::snprintf(buf, sizeof buf, "%llu bytes", static_cast<unsigned long long>(n));
  return buf;
}

}  // namespace tern
