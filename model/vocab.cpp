// Vocab <-> GGUF `tokenizer.ggml.*` metadata.
#include "model/tokenizer.hpp"
#include "model/tokenizer_impl.hpp"

#include <algorithm>

namespace tern {
namespace {

constexpr const char* kModelKey = "tokenizer.ggml.model";
constexpr const char* kPreKey = "tokenizer.ggml.pre";
constexpr const char* kTokensKey = "tokenizer.ggml.tokens";
constexpr const char* kScoresKey = "tokenizer.ggml.scores";
constexpr const char* kTypesKey = "tokenizer.ggml.token_type";
constexpr const char* kMergesKey = "tokenizer.ggml.merges";
constexpr const char* kBosKey = "tokenizer.ggml.bos_token_id";
constexpr const char* kEosKey = "tokenizer.ggml.eos_token_id";
constexpr const char* kUnkKey = "tokenizer.ggml.unknown_token_id";
constexpr const char* kPadKey = "tokenizer.ggml.padding_token_id";
constexpr const char* kEotKey = "tokenizer.ggml.eot_token_id";
constexpr const char* kAddBosKey = "tokenizer.ggml.add_bos_token";
constexpr const char* kAddSpacePrefixKey = "tokenizer.ggml.add_space_prefix";

const gguf::Array* arrayOf(const gguf::File& f, const char* key, gguf::ValueType elem,
                           bool required) {
  const gguf::Value* v = f.find(key);
  if (!v) {
    if (required) f.fail(std::string("missing key ") + key);
    return nullptr;
  }
  const gguf::Array* a = v->asArray();
  if (!a) f.fail(std::string(key) + ": expected an array, got " + gguf::valueTypeName(v->type()));
  if (a->elem != elem) {
    f.fail(std::string(key) + ": expected an array of " + gguf::valueTypeName(elem) + ", got " +
           gguf::valueTypeName(a->elem));
  }
  return a;
}

std::vector<std::string> stringArray(const gguf::File& f, const char* key, const gguf::Array& a) {
  std::vector<std::string> out;
  out.reserve(a.items.size());
  for (const gguf::Value& item : a.items) {
    const std::string* s = item.asString();
    if (!s) f.fail(std::string(key) + ": array item is not a string");
    out.push_back(*s);
  }
  return out;
}

std::string stringOr(const gguf::File& f, const char* key, const std::string& def) {
  const gguf::Value* v = f.find(key);
  if (!v) return def;
  const std::string* s = v->asString();
  if (!s) f.fail(std::string(key) + ": expected a string, got " + gguf::valueTypeName(v->type()));
  return *s;
}

bool boolOr(const gguf::File& f, const char* key, bool def) {
  const gguf::Value* v = f.find(key);
  if (!v) return def;
  if (v->type() != gguf::ValueType::Bool) {
    f.fail(std::string(key) + ": expected a bool, got " + gguf::valueTypeName(v->type()));
  }
  return std::get<bool>(v->v);
}

TokenId tokenIdOr(const gguf::File& f, const char* key, TokenId def, size_t nTokens) {
  const gguf::Value* v = f.find(key);
  if (!v) return def;
  const std::optional<int64_t> id = v->asInt();
  if (!id) f.fail(std::string(key) + ": expected an integer, got " + gguf::valueTypeName(v->type()));
  // llama.cpp writes "none" as u32 0xFFFFFFFF (or -1).
  if (*id == -1 || *id == static_cast<int64_t>(UINT32_MAX)) return -1;
  if (*id < 0 || static_cast<uint64_t>(*id) >= nTokens) {
    f.fail(std::string(key) + ": token id " + std::to_string(*id) + " out of range (" +
           std::to_string(nTokens) + " tokens)");
  }
  return static_cast<TokenId>(*id);
}

}  // namespace

Vocab Vocab::fromGguf(const gguf::File& f) {
  Vocab v;
  if (!f.has(kModelKey)) f.fail(std::string("missing key ") + kModelKey);
  v.model = stringOr(f, kModelKey, "");
  if (v.model != "llama" && v.model != "gpt2") {
    f.fail(std::string(kModelKey) + ": unsupported tokenizer model '" + v.model +
           "' (supported: llama, gpt2)");
  }
  const bool spm = v.model == "llama";
  v.pre = stringOr(f, kPreKey, "default");

  v.tokens = stringArray(f, kTokensKey, *arrayOf(f, kTokensKey, gguf::ValueType::String, true));
  const size_t n = v.tokens.size();
  if (n == 0) f.fail(std::string(kTokensKey) + ": empty vocabulary");
  if (n > static_cast<size_t>(INT32_MAX)) f.fail(std::string(kTokensKey) + ": too many tokens");

  if (const gguf::Array* a = arrayOf(f, kScoresKey, gguf::ValueType::F32, spm)) {
    if (a->items.size() != n) {
      f.fail(std::string(kScoresKey) + ": " + std::to_string(a->items.size()) +
             " entries but " + std::to_string(n) + " tokens");
    }
    v.scores.reserve(n);
    for (const gguf::Value& item : a->items) v.scores.push_back(std::get<float>(item.v));
  }
  if (const gguf::Array* a = arrayOf(f, kTypesKey, gguf::ValueType::I32, false)) {
    if (a->items.size() != n) {
      f.fail(std::string(kTypesKey) + ": " + std::to_string(a->items.size()) +
             " entries but " + std::to_string(n) + " tokens");
    }
    v.types.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const int32_t t = std::get<int32_t>(a->items[i].v);
      if (t < 0 || t > static_cast<int32_t>(TokenType::Byte)) {
        f.fail(std::string(kTypesKey) + ": invalid token type " + std::to_string(t) +
               " for token " + std::to_string(i));
      }
      v.types.push_back(static_cast<TokenType>(t));
    }
  }
  if (!spm) {
    const gguf::Array* a = arrayOf(f, kMergesKey, gguf::ValueType::String, true);
    v.merges = stringArray(f, kMergesKey, *a);
    for (size_t i = 0; i < v.merges.size(); ++i) {
      const size_t sp = v.merges[i].find(' ', 1);
      if (sp == std::string::npos || sp + 1 >= v.merges[i].size()) {
        f.fail(std::string(kMergesKey) + ": entry " + std::to_string(i) +
               " is not 'left right'");
      }
    }
  }

  // llama.cpp's defaults for SentencePiece vocabs when the ids are absent.
  const bool hasDefaults = spm && n > 2;
  v.bos = tokenIdOr(f, kBosKey, hasDefaults ? 1 : -1, n);
  v.eos = tokenIdOr(f, kEosKey, hasDefaults ? 2 : -1, n);
  v.unk = tokenIdOr(f, kUnkKey, hasDefaults ? 0 : -1, n);
  v.pad = tokenIdOr(f, kPadKey, -1, n);
  v.eot = tokenIdOr(f, kEotKey, -1, n);

  bool addBosDefault = spm;
  if (!spm && detail::preSplitFor(v.pre) == detail::PreSplit::Llama3) addBosDefault = true;
  v.addBos = boolOr(f, kAddBosKey, addBosDefault);
  v.addSpacePrefix = boolOr(f, kAddSpacePrefixKey, spm);

  auto addEog = [&v](TokenId id) {
    if (id >= 0 && std::find(v.eogIds.begin(), v.eogIds.end(), id) == v.eogIds.end()) {
      v.eogIds.push_back(id);
    }
  };
  addEog(v.eos);
  addEog(v.eot);
  for (const char* name : {"<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|end|>"}) {
    const auto it = std::find(v.tokens.begin(), v.tokens.end(), name);
    if (it != v.tokens.end()) addEog(static_cast<TokenId>(it - v.tokens.begin()));
  }
  return v;
}

void Vocab::toGguf(gguf::Writer& w) const {
  const size_t n = tokens.size();
  if ((!scores.empty() && scores.size() != n) || (!types.empty() && types.size() != n)) {
    throw std::invalid_argument("Vocab::toGguf: scores/token_type length differs from tokens");
  }
  w.setString(kModelKey, model);
  w.setString(kPreKey, pre);
  w.setStringArray(kTokensKey, tokens);
  if (!scores.empty()) w.setF32Array(kScoresKey, scores);
  if (!types.empty()) {
    std::vector<int32_t> t(types.size());
    std::transform(types.begin(), types.end(), t.begin(),
                   [](TokenType x) { return static_cast<int32_t>(x); });
    w.setI32Array(kTypesKey, std::move(t));
  }
  if (!merges.empty() || model == "gpt2") w.setStringArray(kMergesKey, merges);
  auto setId = [&w](const char* key, TokenId id) {
    if (id >= 0) w.setU32(key, static_cast<uint32_t>(id));
  };
  setId(kBosKey, bos);
  setId(kEosKey, eos);
  setId(kUnkKey, unk);
  setId(kPadKey, pad);
  setId(kEotKey, eot);
  w.setBool(kAddBosKey, addBos);
  if (model == "llama") w.setBool(kAddSpacePrefixKey, addSpacePrefix);
}

}  // namespace tern
