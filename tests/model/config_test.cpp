// ModelConfig: hyperparameters from real files, and rejection of bad configurations and tensors.
#include "model/config.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace tern;
using gguf::FormatError;

namespace {

std::shared_ptr<const gguf::File> openData(const char* rel) {
  return gguf::File::open(std::string(TERN_TEST_DATA) + "/" + rel);
}

// A per-process scratch folder, removed at exit.
struct ScratchDir {
  fs::path path;
  ScratchDir() : path(fs::temp_directory_path() / ("tern_config_test_" + std::to_string(::getpid()))) {
    fs::create_directories(path);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string tempPath(const std::string& name) {
  static ScratchDir dir;
  return (dir.path / name).string();
}

void zeroFill(std::span<std::byte> dst, uint64_t) { std::memset(dst.data(), 0, dst.size()); }

// A tiny synthetic model: embd 8, 2 heads (1 kv head) of dim 4, ffn 16, vocab 10, 2 layers.
struct Synth {
  std::string arch = "llama";
  uint32_t embd = 8, heads = 2, kvHeads = 1, ff = 16, vocab = 10, layers = 2;
  TensorType proj = TensorType::F32;
  bool withOutput = true;
  bool subNorms = false;
  // Hooks to alter the file before it is written.
  std::function<void(gguf::Writer&)> extraMeta;
  std::map<std::string, std::pair<TensorType, std::vector<uint64_t>>> overrides;
  std::set<std::string> skip;
  std::vector<std::pair<std::string, std::vector<uint64_t>>> extraTensors;

  std::shared_ptr<const gguf::File> write(const std::string& name) const {
    gguf::Writer w;
    w.setString("general.architecture", arch);
    const std::string p = arch + ".";
    w.setU32(p + "embedding_length", embd);
    w.setU32(p + "block_count", layers);
    w.setU32(p + "feed_forward_length", ff);
    w.setU32(p + "attention.head_count", heads);
    w.setU32(p + "attention.head_count_kv", kvHeads);
    w.setU32(p + "context_length", 64);
    w.setU32(p + "vocab_size", vocab);
    if (extraMeta) extraMeta(w);
    const uint64_t hd = embd / heads, q = heads * hd, kv = kvHeads * hd;
    auto add = [&](const std::string& n, TensorType t, std::vector<uint64_t> ne) {
      if (skip.count(n)) return;
      if (auto it = overrides.find(n); it != overrides.end()) {
        t = it->second.first;
        ne = it->second.second;
      }
      w.addTensor(n, t, ne, zeroFill);
    };
    add("token_embd.weight", TensorType::F32, {embd, vocab});
    for (uint32_t i = 0; i < layers; ++i) {
      auto l = [&](const char* s) { return tensor_names::layer(i, s); };
      add(l("attn_norm.weight"), TensorType::F32, {embd});
      add(l("attn_q.weight"), proj, {embd, q});
      add(l("attn_k.weight"), proj, {embd, kv});
      add(l("attn_v.weight"), proj, {embd, kv});
      add(l("attn_output.weight"), proj, {q, embd});
      add(l("ffn_norm.weight"), TensorType::F32, {embd});
      add(l("ffn_gate.weight"), proj, {embd, ff});
      add(l("ffn_up.weight"), proj, {embd, ff});
      add(l("ffn_down.weight"), proj, {ff, embd});
      if (subNorms) {
        add(l("attn_sub_norm.weight"), TensorType::F32, {q});
        add(l("ffn_sub_norm.weight"), TensorType::F32, {ff});
      }
    }
    add("output_norm.weight", TensorType::F32, {embd});
    if (withOutput) add("output.weight", TensorType::F32, {embd, vocab});
    for (const auto& [n, ne] : extraTensors) add(n, TensorType::F32, ne);
    std::string path = tempPath(name);
    w.write(path);
    return gguf::File::open(path);
  }
};

void checkThrows(const std::function<void()>& fn, const std::string& expect) {
  try {
    fn();
  } catch (const FormatError& e) {
    INFO("message: " << e.what());
    CHECK(std::string(e.what()).find(expect) != std::string::npos);
    CHECK(std::string(e.what()).find('\n') == std::string::npos);
    return;
  }
  FAIL("no FormatError (expected '" << expect << "')");
}

}  // namespace

TEST_CASE("config: stories260K (llama)") {
  auto f = openData("stories260K/stories260K.gguf");
  ModelConfig c = ModelConfig::fromGguf(*f);
  CHECK(c.arch == Arch::Llama);
  CHECK(c.archKey == "llama");
  CHECK(c.nEmbd == 64);
  CHECK(c.nLayer == 5);
  CHECK(c.nHead == 8);
  CHECK(c.nHeadKv == 4);
  CHECK(c.headDim == 8);
  CHECK(c.nFf == 172);
  CHECK(c.nVocab == 512);
  CHECK(c.nCtxTrain == 128);
  CHECK(c.nRot == 8);
  CHECK(c.rope == RopeStyle::Norm);
  CHECK(c.ffnAct == FfnAct::Silu);
  CHECK_FALSE(c.subNorms);
  CHECK_FALSE(c.tiedHead);
  CHECK_FALSE(c.ternary);
  CHECK(c.qDim() == 64);
  CHECK(c.kvDim() == 32);
  CHECK_NOTHROW(c.validateTensors(*f));
  // embeddings + head 2*512*64, output_norm 64; per layer: 2 norms 128, q/o 2*64*64,
  // k/v 2*64*32, ffn 3*64*172.
  CHECK(c.nParams(*f) == 2 * 512 * 64 + 64 + 5 * (128 + 2 * 4096 + 2 * 2048 + 3 * 64 * 172));
}

TEST_CASE("config: tiny-bitnet F32 (bitnet)") {
  auto f = openData("tiny-bitnet/model-f32.gguf");
  ModelConfig c = ModelConfig::fromGguf(*f);
  CHECK(c.arch == Arch::Bitnet);
  CHECK(std::string(archName(c.arch)) == "bitnet");
  CHECK(c.nEmbd == 256);
  CHECK(c.nLayer == 2);
  CHECK(c.nHead == 4);
  CHECK(c.nHeadKv == 2);
  CHECK(c.headDim == 64);
  CHECK(c.nFf == 512);
  CHECK(c.nVocab == 512);
  CHECK(c.nCtxTrain == 256);
  CHECK(c.nRot == 64);
  CHECK(c.ropeTheta == 10000.0f);
  CHECK(c.normEps == doctest::Approx(1e-5));
  CHECK(c.rope == RopeStyle::Neox);
  CHECK(c.ffnAct == FfnAct::Silu);
  CHECK(c.subNorms);
  CHECK(c.tiedHead);
  CHECK_FALSE(c.ternary);
  CHECK_NOTHROW(c.validateTensors(*f));
}

TEST_CASE("config: tiny-bitnet I2_S / TQ2_0 / TQ1_0 open and validate") {
  struct Case {
    const char* file;
    TensorType type;
    const char* name;
    uint64_t attnQBytes;  // [256 x 256]
    uint64_t ffnDownBytes;  // ne {512, 256}
  };
  const Case cases[] = {
      {"tiny-bitnet/model-i2_s.gguf", TensorType::I2_S, "I2_S", 256 * 256 / 4 + 32, 512 * 256 / 4 + 32},
      {"tiny-bitnet/model-tq2_0.gguf", TensorType::TQ2_0, "TQ2_0", 256 * 66, 2 * 256 * 66},
      {"tiny-bitnet/model-tq1_0.gguf", TensorType::TQ1_0, "TQ1_0", 256 * 54, 2 * 256 * 54},
  };
  for (const auto& cs : cases) {
    CAPTURE(cs.file);
    auto f = openData(cs.file);
    const auto* q = f->findTensor("blk.0.attn_q.weight");
    REQUIRE(q);
    CHECK(q->type == cs.type);
    CHECK(q->nbytes == cs.attnQBytes);
    CHECK(f->findTensor("blk.1.ffn_down.weight")->nbytes == cs.ffnDownBytes);
    CHECK(f->findTensor("token_embd.weight")->type == TensorType::F16);
    CHECK(f->findTensor("token_embd.weight")->nbytes == 512 * 256 * 2);
    CHECK(f->findTensor("output_norm.weight")->type == TensorType::F32);
    ModelConfig c = ModelConfig::fromGguf(*f);
    CHECK(c.ternary);
    CHECK(c.nEmbd == 256);
    CHECK_NOTHROW(c.validateTensors(*f));  // loaded by repacking to TERN_T2
  }
}

TEST_CASE("config: synthetic files") {
  SUBCASE("valid llama with defaults") {
    Synth s;
    auto f = s.write("ok.gguf");
    ModelConfig c = ModelConfig::fromGguf(*f);
    CHECK(c.headDim == 4);
    CHECK(c.nRot == 4);
    CHECK(c.ropeTheta == 10000.0f);
    CHECK(c.normEps == 1e-5f);
    CHECK_FALSE(c.tiedHead);
    CHECK_NOTHROW(c.validateTensors(*f));
  }
  SUBCASE("bitnet-25 is bitnet-b1.58: ReLU squared, NEOX, sub-norms, TERN_T2 projections") {
    Synth s;
    s.arch = "bitnet-25";
    s.subNorms = true;
    s.withOutput = false;
    s.embd = 128;
    s.ff = 256;
    s.proj = TensorType::TERN_T2;
    s.extraMeta = [](gguf::Writer& w) {
      w.setF32("bitnet-25.rope.freq_base", 500000.0f);
      w.setF32("bitnet-25.attention.layer_norm_rms_epsilon", 1e-6f);
    };
    auto f = s.write("b158.gguf");
    ModelConfig c = ModelConfig::fromGguf(*f);
    CHECK(c.arch == Arch::BitnetB158);
    CHECK(c.archKey == "bitnet-25");
    CHECK(std::string(archName(c.arch)) == "bitnet-b1.58");
    CHECK(c.ffnAct == FfnAct::ReluSquared);
    CHECK(c.rope == RopeStyle::Neox);
    CHECK(c.subNorms);
    CHECK(c.tiedHead);
    CHECK(c.ternary);
    CHECK(c.ropeTheta == 500000.0f);
    CHECK(c.normEps == 1e-6f);
    CHECK_NOTHROW(c.validateTensors(*f));
    CHECK(*f->getArray("tern.tensor_types").items[0].asString() == "TERN_T2");
  }
  SUBCASE("rope dimension count and key_length") {
    Synth s;
    s.extraMeta = [](gguf::Writer& w) { w.setU32("llama.rope.dimension_count", 2); };
    auto f = s.write("rope.gguf");
    CHECK(ModelConfig::fromGguf(*f).nRot == 2);
    s.extraMeta = [](gguf::Writer& w) { w.setU32("llama.attention.key_length", 6); };
    auto g = s.write("keylen.gguf");
    ModelConfig c = ModelConfig::fromGguf(*g);
    CHECK(c.headDim == 6);
    CHECK(c.qDim() == 12);
    checkThrows([&] { c.validateTensors(*g); }, "blk.0.attn_q.weight: shape [8, 8], expected [8, 12]");
  }
  SUBCASE("vocab size falls back to the tokenizer, then token_embd") {
    // No vocab_size (and no head_count_kv: it defaults to head_count).
    gguf::Writer w;
    w.setString("general.architecture", "llama");
    for (auto [k, v] : {std::pair{"embedding_length", 8u}, {"block_count", 1u},
                        {"feed_forward_length", 16u}, {"attention.head_count", 2u},
                        {"context_length", 32u}})
      w.setU32(std::string("llama.") + k, v);
    w.addTensor("token_embd.weight", TensorType::F32, {8, 13}, zeroFill);
    std::string path = tempPath("vocab_embd.gguf");
    w.write(path);
    CHECK(ModelConfig::fromGguf(*gguf::File::open(path)).nVocab == 13);
    w.setStringArray("tokenizer.ggml.tokens", {"a", "b", "c"});
    w.write(path);
    auto f = gguf::File::open(path);
    ModelConfig c = ModelConfig::fromGguf(*f);
    CHECK(c.nVocab == 3);
    CHECK(c.nHeadKv == 2);
    checkThrows([&] { c.validateTensors(*f); }, "token_embd.weight: shape [8, 13], expected [8, 3]");
  }
}

TEST_CASE("config: bad hyperparameters are rejected") {
  auto expectBad = [](const std::string& name, std::function<void(Synth&)> edit,
                      const std::string& expect) {
    CAPTURE(name);
    Synth s;
    edit(s);
    auto f = s.write(name + ".gguf");
    checkThrows([&] { ModelConfig::fromGguf(*f); }, expect);
  };
  expectBad("gpt2", [](Synth& s) { s.arch = "gpt2"; },
            "unsupported architecture 'gpt2' (supported: bitnet-b1.58");
  expectBad("zero_embd", [](Synth& s) {
    s.extraMeta = [](gguf::Writer& w) { w.setU32("llama.embedding_length", 0); };
  }, "llama.embedding_length = 0 must be positive");
  expectBad("huge_embd", [](Synth& s) {
    s.extraMeta = [](gguf::Writer& w) { w.setU32("llama.embedding_length", (1u << 20) + 2); };
  }, "llama.embedding_length = 1048578 is above the limit");
  expectBad("layers", [](Synth& s) {
    s.extraMeta = [](gguf::Writer& w) { w.setU32("llama.block_count", 5000); };
  }, "llama.block_count = 5000 is above the limit 4096");
  expectBad("kv_div", [](Synth& s) { s.kvHeads = 3; s.heads = 4; },
            "head_count_kv 3 does not divide attention.head_count 4");
  expectBad("head_div", [](Synth& s) { s.heads = 3; s.kvHeads = 3; },
            "head_count 3 does not divide embedding_length 8");
  expectBad("neg", [](Synth& s) {
    s.extraMeta = [](gguf::Writer& w) { w.setI32("llama.feed_forward_length", -4); };
  }, "llama.feed_forward_length = -4 must be positive");
  expectBad("type", [](Synth& s) {
    s.extraMeta = [](gguf::Writer& w) { w.setString("llama.context_length", "long"); };
  }, "'llama.context_length' has type string, expected an integer");
  expectBad("missing", [](Synth& s) {
    s.extraMeta = [](gguf::Writer& w) { w.setString("general.architecture", "bitnet"); };
  }, "missing metadata key 'bitnet.embedding_length'");
  expectBad("rope", [](Synth& s) {
    s.extraMeta = [](gguf::Writer& w) { w.setU32("llama.rope.dimension_count", 6); };
  }, "rope.dimension_count 6 must be even and <= head dim 4");
  expectBad("eps", [](Synth& s) {
    s.extraMeta = [](gguf::Writer& w) { w.setF32("llama.attention.layer_norm_rms_epsilon", -1.0f); };
  }, "layer_norm_rms_epsilon");
}

TEST_CASE("config: bad tensors are rejected naming the tensor") {
  auto expectBad = [](const std::string& name, std::function<void(Synth&)> edit,
                      const std::string& expect) {
    CAPTURE(name);
    Synth s;
    edit(s);
    auto f = s.write(name + ".gguf");
    ModelConfig c = ModelConfig::fromGguf(*f);
    checkThrows([&] { c.validateTensors(*f); }, expect);
  };
  expectBad("shape", [](Synth& s) {
    s.overrides["blk.1.attn_k.weight"] = {TensorType::F32, {8, 8}};
  }, "blk.1.attn_k.weight: shape [8, 8], expected [8, 4]");
  expectBad("transposed", [](Synth& s) {
    s.overrides["blk.0.ffn_down.weight"] = {TensorType::F32, {8, 16}};
  }, "blk.0.ffn_down.weight: shape [8, 16], expected [16, 8]");
  expectBad("missing", [](Synth& s) { s.skip.insert("blk.1.ffn_up.weight"); },
            "missing tensor 'blk.1.ffn_up.weight'");
  expectBad("sub_norm", [](Synth& s) { s.arch = "bitnet"; },
            "missing tensor 'blk.0.attn_sub_norm.weight'");
  expectBad("norm_f16", [](Synth& s) {
    s.overrides["output_norm.weight"] = {TensorType::F16, {8}};
  }, "tensor output_norm.weight has type F16, expected F32");
  expectBad("q8", [](Synth& s) {
    s.overrides["blk.0.attn_v.weight"] = {TensorType::Q8_0, {32, 4}};
  }, "tensor type Q8_0 is not yet supported (tensor blk.0.attn_v.weight)");
  expectBad("q4k", [](Synth& s) {
    s.overrides["blk.0.attn_k.weight"] = {TensorType::Q4_K, {256, 4}};
  }, "tensor type Q4_K is not yet supported (tensor blk.0.attn_k.weight)");
  expectBad("i2s_llama", [](Synth& s) {
    s.overrides["blk.0.attn_q.weight"] = {TensorType::I2_S, {8, 8}};
  }, "tensor blk.0.attn_q.weight has type id 36, which is read as I2_S only in bitnet files");
  expectBad("scale", [](Synth& s) {
    s.extraTensors.push_back({"blk.0.attn_q.scale", {2}});
  }, "blk.0.attn_q.scale: shape [2], expected 1 element");
  expectBad("output", [](Synth& s) {
    s.overrides["output.weight"] = {TensorType::F32, {8, 11}};
  }, "output.weight: shape [8, 11], expected [8, 10]");

  // Extra unknown tensors and a legacy scale of one element are fine.
  Synth s;
  s.extraTensors.push_back({"something.else", {3, 3}});
  s.extraTensors.push_back({"blk.1.ffn_down.scale", {1}});
  auto f = s.write("extra.gguf");
  CHECK_NOTHROW(ModelConfig::fromGguf(*f).validateTensors(*f));
  CHECK(tensor_names::layer(3, "attn_q.weight") == "blk.3.attn_q.weight");
}

TEST_CASE("config: a stage checks and uses only its own tensors") {
  Synth s;
  s.skip = {"blk.1.ffn_up.weight", "output_norm.weight"};
  auto f = s.write("stage.gguf");
  ModelConfig c = ModelConfig::fromGguf(*f);
  // Layer 0 with the embedding reads neither missing tensor.
  CHECK_NOTHROW(c.validateTensors(*f, 0, 1, true, false));
  checkThrows([&] { c.validateTensors(*f, 1, 2, false, false); },
              "missing tensor 'blk.1.ffn_up.weight'");
  checkThrows([&] { c.validateTensors(*f, 2, 2, false, true); },
              "missing tensor 'output_norm.weight'");
  checkThrows([&] { c.validateTensors(*f); }, "missing tensor 'output_norm.weight'");

  CHECK(c.stageUses("blk.1.attn_q.weight", 1, 2, false, false));
  CHECK_FALSE(c.stageUses("blk.1.attn_q.weight", 0, 1, true, false));
  CHECK_FALSE(c.stageUses("blk.10.attn_q.weight", 1, 2, false, false));
  CHECK_FALSE(c.stageUses("blk.x.attn_q.weight", 0, 2, false, false));
  CHECK(c.stageUses("token_embd.weight", 0, 1, true, false));
  CHECK_FALSE(c.stageUses("token_embd.weight", 1, 2, false, false));
  CHECK(c.stageUses("output_norm.weight", 2, 2, false, true));
  CHECK_FALSE(c.stageUses("output_norm.weight", 0, 2, true, false));
  // A tied head reads the embedding matrix.
  CHECK(c.stageUses("token_embd.weight", 2, 2, false, true) == c.tiedHead);
}
