#include "model/config.hpp"

#include <cmath>

namespace tern {

namespace {

constexpr uint32_t kMaxEmbd = 1u << 20;
constexpr uint32_t kMaxLayers = 4096;
constexpr uint32_t kMaxHeads = 1u << 16;
constexpr uint32_t kMaxFf = 1u << 24;
constexpr uint32_t kMaxVocab = 1u << 24;
constexpr uint32_t kMaxCtx = 1u << 28;
constexpr uint32_t kMaxHeadDim = 1u << 16;

constexpr const char* kSupportedArchs = "bitnet-b1.58, bitnet-25, bitnet, llama";

bool isBitnet(Arch a) { return a == Arch::BitnetB158 || a == Arch::Bitnet; }

// A positive integer hyperparameter in [1, cap].
uint32_t readSize(const gguf::File& f, const std::string& key, std::optional<int64_t> def,
                  uint32_t cap) {
  int64_t v = 0;
  if (f.has(key)) v = f.getInt(key);
  else if (def) v = *def;
  else f.fail("missing metadata key '" + key + "'");
  if (v <= 0) f.fail(key + " = " + std::to_string(v) + " must be positive");
  if (v > static_cast<int64_t>(cap))
    f.fail(key + " = " + std::to_string(v) + " is above the limit " + std::to_string(cap));
  return static_cast<uint32_t>(v);
}

std::string shapeString(std::span<const uint64_t> ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

enum class Role { Embedding, Norm, Projection, Scale };

}  // namespace

const char* archName(Arch a) {
  switch (a) {
    case Arch::BitnetB158: return "bitnet-b1.58";
    case Arch::Bitnet: return "bitnet";
    case Arch::Llama: return "llama";
  }
  return "unknown";
}

namespace tensor_names {
std::string layer(uint32_t i, const char* suffix) {
  return "blk." + std::to_string(i) + "." + suffix;
}
}  // namespace tensor_names

ModelConfig ModelConfig::fromGguf(const gguf::File& f) {
  ModelConfig c;
  c.archKey = f.getString("general.architecture");
  if (c.archKey == "bitnet-b1.58" || c.archKey == "bitnet-25") c.arch = Arch::BitnetB158;
  else if (c.archKey == "bitnet") c.arch = Arch::Bitnet;
  else if (c.archKey == "llama") c.arch = Arch::Llama;
  else f.fail("unsupported architecture '" + c.archKey + "' (supported: " + kSupportedArchs + ")");
  c.name = f.getStringOr("general.name", "");
  const std::string p = c.archKey + ".";

  c.nEmbd = readSize(f, p + "embedding_length", std::nullopt, kMaxEmbd);
  c.nLayer = readSize(f, p + "block_count", std::nullopt, kMaxLayers);
  c.nFf = readSize(f, p + "feed_forward_length", std::nullopt, kMaxFf);
  c.nHead = readSize(f, p + "attention.head_count", std::nullopt, kMaxHeads);
  c.nHeadKv = readSize(f, p + "attention.head_count_kv", c.nHead, kMaxHeads);
  c.nCtxTrain = readSize(f, p + "context_length", std::nullopt, kMaxCtx);
  if (c.nHead % c.nHeadKv != 0)
    f.fail("attention.head_count_kv " + std::to_string(c.nHeadKv) +
           " does not divide attention.head_count " + std::to_string(c.nHead));
  if (!f.has(p + "attention.key_length") && c.nEmbd % c.nHead != 0)
    f.fail("attention.head_count " + std::to_string(c.nHead) +
           " does not divide embedding_length " + std::to_string(c.nEmbd));
  c.headDim = readSize(f, p + "attention.key_length", c.nEmbd / c.nHead, kMaxHeadDim);
  if (f.has(p + "attention.value_length") && f.getInt(p + "attention.value_length") != c.headDim)
    f.fail("attention.value_length " + std::to_string(f.getInt(p + "attention.value_length")) +
           " differs from key_length " + std::to_string(c.headDim) + " (not supported)");
  c.nRot = readSize(f, p + "rope.dimension_count", c.headDim, kMaxHeadDim);
  if (c.nRot > c.headDim || c.nRot % 2 != 0)
    f.fail("rope.dimension_count " + std::to_string(c.nRot) + " must be even and <= head dim " +
           std::to_string(c.headDim));

  double theta = f.getFloatOr(p + "rope.freq_base", 10000.0);
  if (!std::isfinite(theta) || theta <= 0 || theta > 1e12)
    f.fail("rope.freq_base " + std::to_string(theta) + " is not a sane positive value");
  c.ropeTheta = static_cast<float>(theta);
  double eps = f.getFloatOr(p + "attention.layer_norm_rms_epsilon", 1e-5);
  if (!std::isfinite(eps) || eps <= 0 || eps >= 1)
    f.fail("attention.layer_norm_rms_epsilon " + std::to_string(eps) + " must be in (0, 1)");
  c.normEps = static_cast<float>(eps);

  if (f.has(p + "vocab_size")) {
    c.nVocab = readSize(f, p + "vocab_size", std::nullopt, kMaxVocab);
  } else if (const gguf::Array* toks = f.findArray("tokenizer.ggml.tokens")) {
    if (toks->items.empty() || toks->items.size() > kMaxVocab)
      f.fail("tokenizer.ggml.tokens has " + std::to_string(toks->items.size()) +
             " entries, not a usable vocabulary size");
    c.nVocab = static_cast<uint32_t>(toks->items.size());
  } else if (const auto* emb = f.findTensor(tensor_names::kTokenEmbd); emb && emb->ne.size() == 2) {
    if (emb->ne[1] > kMaxVocab) f.fail("token_embd.weight has too many rows for a vocabulary");
    c.nVocab = static_cast<uint32_t>(emb->ne[1]);
  } else {
    f.fail("cannot tell the vocabulary size: no " + p + "vocab_size, tokenizer.ggml.tokens or " +
           tensor_names::kTokenEmbd);
  }

  c.rope = isBitnet(c.arch) ? RopeStyle::Neox : RopeStyle::Norm;
  c.ffnAct = c.arch == Arch::BitnetB158 ? FfnAct::ReluSquared : FfnAct::Silu;
  c.subNorms = isBitnet(c.arch);
  c.tiedHead = f.findTensor(tensor_names::kOutput) == nullptr;
  if (const auto* q = f.findTensor(tensor_names::layer(0, "attn_q.weight"))) {
    const auto* tr = tensorTypeTraits(q->type);
    c.ternary = tr && tr->ternary;
  }
  return c;
}

void ModelConfig::validateTensors(const gguf::File& f) const {
  validateTensors(f, 0, nLayer, true, true);
}

bool ModelConfig::stageUses(const std::string& name, uint32_t layerBegin, uint32_t layerEnd,
                            bool embed, bool head) const {
  if (name == tensor_names::kTokenEmbd) return embed || (head && tiedHead);
  if (name == tensor_names::kOutputNorm || name == tensor_names::kOutput) return head;
  if (name.rfind("blk.", 0) != 0) return false;
  const size_t dot = name.find('.', 4);
  if (dot == std::string::npos || dot == 4) return false;
  uint32_t layer = 0;
  for (size_t i = 4; i < dot; ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
    layer = layer * 10 + uint32_t(name[i] - '0');
    if (layer > (1u << 24)) return false;
  }
  return layer >= layerBegin && layer < layerEnd;
}

void ModelConfig::validateTensors(const gguf::File& f, uint32_t layerBegin, uint32_t layerEnd,
                                  bool embed, bool head) const {
  auto check = [&](const std::string& name, std::vector<uint64_t> shape, Role role,
                   bool optional) {
    const gguf::TensorInfo* t = f.findTensor(name);
    if (!t) {
      if (optional) return;
      f.fail("missing tensor '" + name + "' (needed by architecture '" + archKey + "')");
    }
    const auto* tr = tensorTypeTraits(t->type);
    if (t->type == TensorType::I2_S && !isBitnet(arch))
      f.fail("tensor " + name + " has type id 36, which is read as I2_S only in bitnet files "
             "(architecture '" + archKey + "')");
    bool allowed = false;
    switch (role) {
      case Role::Embedding:
        allowed = t->type == TensorType::F32 || t->type == TensorType::F16 ||
                  t->type == TensorType::BF16;
        break;
      case Role::Projection:
        allowed = t->type == TensorType::F32 || t->type == TensorType::F16 ||
                  t->type == TensorType::BF16 || t->type == TensorType::TERN_T2 ||
                  t->type == TensorType::I2_S || t->type == TensorType::TQ2_0 ||
                  t->type == TensorType::TQ1_0 || t->type == TensorType::TERN_TL3;
        break;
      case Role::Norm:
      case Role::Scale:
        allowed = t->type == TensorType::F32;
        break;
    }
    if (!allowed) {
      if (!tr->loadable || role == Role::Projection || role == Role::Embedding)
        f.fail(std::string("tensor type ") + tr->name + " is not yet supported (tensor " + name +
               ")");
      f.fail("tensor " + name + " has type " + tr->name + ", expected F32");
    }
    if (role == Role::Scale) {
      if (t->nelements() != 1)
        f.fail(name + ": shape " + shapeString(t->ne) + ", expected 1 element");
      return;
    }
    if (t->ne != shape)
      f.fail(name + ": shape " + shapeString(t->ne) + ", expected " + shapeString(shape));
  };

  const uint64_t e = nEmbd, v = nVocab, ff = nFf, q = qDim(), kv = kvDim();
  if (embed || (head && tiedHead)) check(tensor_names::kTokenEmbd, {e, v}, Role::Embedding, false);
  if (head) {
    check(tensor_names::kOutputNorm, {e}, Role::Norm, false);
    check(tensor_names::kOutput, {e, v}, Role::Embedding, true);
  }
  static constexpr const char* kProjs[] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                           "ffn_gate", "ffn_up", "ffn_down"};
  for (uint32_t i = layerBegin; i < layerEnd && i < nLayer; ++i) {
    using tensor_names::layer;
    check(layer(i, "attn_norm.weight"), {e}, Role::Norm, false);
    check(layer(i, "attn_q.weight"), {e, q}, Role::Projection, false);
    check(layer(i, "attn_k.weight"), {e, kv}, Role::Projection, false);
    check(layer(i, "attn_v.weight"), {e, kv}, Role::Projection, false);
    check(layer(i, "attn_output.weight"), {q, e}, Role::Projection, false);
    check(layer(i, "ffn_norm.weight"), {e}, Role::Norm, false);
    check(layer(i, "ffn_gate.weight"), {e, ff}, Role::Projection, false);
    check(layer(i, "ffn_up.weight"), {e, ff}, Role::Projection, false);
    check(layer(i, "ffn_down.weight"), {ff, e}, Role::Projection, false);
    if (subNorms) {
      check(layer(i, "attn_sub_norm.weight"), {q}, Role::Norm, false);
      check(layer(i, "ffn_sub_norm.weight"), {ff}, Role::Norm, false);
    }
    for (const char* proj : kProjs)
      check(layer(i, (std::string(proj) + ".scale").c_str()), {1}, Role::Scale, true);
  }
}

uint64_t ModelConfig::nParams(const gguf::File& f) const {
  uint64_t n = 0;
  for (const auto& t : f.tensors()) n += t.nelements();
  return n;
}

}  // namespace tern
