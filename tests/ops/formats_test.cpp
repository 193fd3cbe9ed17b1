// The peers' ternary formats (I2_S, TQ2_0, TQ1_0) load losslessly: tiny-bitnet stored in each
// (tests/data/tiny-bitnet, written by bitnet.cpp's and llama.cpp's own quantizers) decodes to the
// F32 file's weights and runs bit-identically; `tern convert` between them changes nothing.
#include "kernels/weight_formats.hpp"
#include "model/config.hpp"
#include "model/gguf.hpp"
#include "ops/stage.hpp"
#include "tests/ops/reference_files.hpp"
#include "convert/convert.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

using namespace tern;
using namespace tern::ops;
using kernels::WeightFormat;

namespace {

using namespace tern::testing;

const std::string kTiny = std::string(TERN_TEST_DATA) + "/tiny-bitnet/";
const std::vector<int32_t> kPrompt = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376};
constexpr size_t kSteps = 32;

const char* const kQuantFiles[] = {"model-i2_s.gguf", "model-tq2_0.gguf", "model-tq1_0.gguf"};
constexpr WeightFormat kTargets[] = {WeightFormat::T2, WeightFormat::I2S, WeightFormat::TQ2_0,
                                     WeightFormat::TQ1_0};






struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() / ("tern-formats-" + std::to_string(getpid()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

// Prompt logits [10][V] (all rows), then kSteps greedy steps: ids g0.. and their logits rows.
struct Run {
  std::vector<float> prompt;
  std::vector<int32_t> ids;
  std::vector<float> gen;  // [kSteps][V]: row k = logits after feeding ids[k]
  std::vector<float> act;  // [10][nEmbd] final hidden state of the prompt (before output_norm)
};

std::vector<float> forward(Stage& s, uint32_t pos0, const std::vector<int32_t>& toks, bool all) {
  const size_t n = toks.size();
  std::vector<uint64_t> seq(n, 0);
  std::vector<uint32_t> pos(n);
  for (size_t i = 0; i < n; ++i) pos[i] = pos0 + uint32_t(i);
  std::vector<uint8_t> want(n, all ? 1 : 0);
  want.back() = 1;
  BatchOut out;
  s.forward(BatchIn{seq, pos, toks, {}, want}, out);
  return s.range().head ? out.logits : out.act;
}

Run runModel(const std::string& path, ActQuant aq = ActQuant::Int8) {
  auto file = gguf::File::open(path);
  const ModelConfig cfg = ModelConfig::fromGguf(*file);
  StageOptions opts;
  opts.actQuant = aq;
  const uint32_t V = cfg.nVocab;
  Run r;
  Stage body(file, cfg, {0, cfg.nLayer, true, false}, opts);
  body.openSequence(0, 64);
  r.act = forward(body, 0, kPrompt, true);
  Stage s(file, cfg, {0, cfg.nLayer, true, true}, opts);
  s.openSequence(0, 64);
  r.prompt = forward(s, 0, kPrompt, true);
  REQUIRE(r.prompt.size() == kPrompt.size() * V);
  r.ids.push_back(argmax(&r.prompt[(kPrompt.size() - 1) * V], V));
  for (size_t k = 0; k < kSteps; ++k) {
    auto row = forward(s, uint32_t(kPrompt.size() + k), {r.ids.back()}, false);
    r.gen.insert(r.gen.end(), row.begin(), row.end());
    if (k + 1 < kSteps) r.ids.push_back(argmax(row.data(), V));
  }
  return r;
}

bool sameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

bool sameRun(const Run& a, const Run& b) {
  return sameBits(a.prompt, b.prompt) && a.ids == b.ids && sameBits(a.gen, b.gen) &&
         sameBits(a.act, b.act);
}

bool isProjection(const std::string& name) {
  for (const char* p : {".attn_q.", ".attn_k.", ".attn_v.", ".attn_output.", ".ffn_gate.",
                        ".ffn_up.", ".ffn_down."})
    if (name.find(p) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST_CASE("formats: tiny-bitnet I2_S / TQ2_0 / TQ1_0 decode to the F32 file's weights") {
  auto f32 = gguf::File::open(kTiny + "model-f32.gguf");
  for (const char* name : kQuantFiles) {
    CAPTURE(name);
    auto q = gguf::File::open(kTiny + name);
    size_t nProj = 0;
    for (const gguf::TensorInfo& t : q->tensors()) {
      if (!isProjection(t.name)) continue;
      CAPTURE(t.name);
      ++nProj;
      const auto fmt = kernels::weightFormatFromGgmlType(uint32_t(t.type));
      REQUIRE(fmt);
      const auto& tr = kernels::weightFormat(*fmt);
      const uint32_t k = uint32_t(t.ne[0]), nOut = uint32_t(t.ne[1]);
      const auto* p = reinterpret_cast<const uint8_t*>(q->data(t).data());
      const float s = tr.readScale(p, k, nOut);
      const gguf::TensorInfo* ft = f32->findTensor(t.name);
      REQUIRE(ft);
      REQUIRE(ft->type == TensorType::F32);
      std::vector<float> ref(size_t(k) * nOut);
      std::memcpy(ref.data(), f32->data(*ft).data(), ref.size() * 4);
      float maxAbs = 0;
      for (float v : ref) maxAbs = std::max(maxAbs, std::fabs(v));
      CHECK(s == maxAbs);  // every scale is exact in fp16 (README), and max|w| = s
      std::vector<int8_t> codes(k);
      size_t bad = 0;
      for (uint32_t r = 0; r < nOut; ++r) {
        tr.unpackRow(p, k, nOut, r, codes.data());
        for (uint32_t i = 0; i < k; ++i) bad += float(codes[i]) * s != ref[size_t(r) * k + i];
      }
      CHECK(bad == 0);
    }
    CHECK(nProj == 14);
  }
}

TEST_CASE("formats: the three files run bit-identically, and equal forced-int8 F32") {
  const Run i2s = runModel(kTiny + "model-i2_s.gguf");
  const Run tq2 = runModel(kTiny + "model-tq2_0.gguf");
  const Run tq1 = runModel(kTiny + "model-tq1_0.gguf");
  CHECK(sameRun(i2s, tq2));
  CHECK(sameRun(i2s, tq1));

  // The F32 file holds the same weights (token_embd F32 with F16-exact values), run with forced
  // int8 activations: the whole run, logits included, must be bit-identical.
  const Run f32 = runModel(kTiny + "model-f32.gguf");
  CHECK(sameRun(f32, i2s));

  // Against bitnet.cpp running the I2_S file.
  const std::string pre = kTiny + "bitnetcpp-i2_s.prompt1";
  const auto ref = readF32(pre + ".logits.bin");
  const auto refGen = readF32(pre + ".gen_logits.bin");
  const auto refIds = readIdsField(pre + ".ids.txt", "greedy_ids");
  const uint32_t V = 512;
  REQUIRE(ref.size() == 10 * V);
  REQUIRE(refGen.size() == kSteps * V);
  REQUIRE(refIds.size() == kSteps);
  const float d0 = maxAbsDiff(i2s.prompt.data(), ref.data(), V);
  const float dAll = maxAbsDiff(i2s.prompt.data(), ref.data(), ref.size());
  int top1 = 0, checked = 0;
  for (uint32_t p = 0; p < 10; ++p) {
    const bool same = argmax(&i2s.prompt[p * V], V) == argmax(&ref[p * V], V);
    top1 += same;
    if (topGap(&ref[p * V], V) > 0.1f) {
      ++checked;
      CHECK(same);
    }
  }
  // Generation rows while our greedy ids follow bitnet.cpp's.
  size_t agree = 0;
  float dGen = 0;
  for (size_t k = 0; k < kSteps && i2s.ids[k] == refIds[k]; ++k) {
    ++agree;
    dGen = std::max(dGen, maxAbsDiff(&i2s.gen[k * V], &refGen[k * V], V));
    if (topGap(&refGen[k * V], V) > 0.1f) CHECK(argmax(&i2s.gen[k * V], V) == argmax(&refGen[k * V], V));
  }
  MESSAGE("I2_S/TQ vs bitnet.cpp: prompt max |dlogit| pos0 ", d0, ", all ", dAll, ", top-1 ", top1,
          "/10 (", checked, " with gap > 0.1 checked); greedy ids equal for ", agree,
          "/32 steps, gen max |dlogit| over them ", dGen);
  CHECK(d0 < 0.01f);
  CHECK(dAll < 0.5f);
  CHECK(dGen < 0.5f);
  CHECK(agree >= 1);
}

TEST_CASE("formats: tern convert between all formats changes no result") {
  TempDir tmp;
  const Run base = runModel(kTiny + "model-i2_s.gguf");
  for (const char* name : kQuantFiles) {
    for (WeightFormat to : kTargets) {
      const auto& tr = kernels::weightFormat(to);
      CAPTURE(name);
      CAPTURE(tr.name);
      const std::string out = (tmp.path / (std::string(tr.shortName) + "-" + name)).string();
      convert::ConvertResult r = convert::convertModel({kTiny + name, out, to});
      CHECK(r.converted == 14);
      CHECK(r.lossy == 0);
      CHECK(r.copied == 10);
      CHECK(r.warnings.empty());
      auto f = gguf::File::open(out);
      CHECK(f->fileSize() == r.fileBytes);
      CHECK(f->findTensor("blk.1.ffn_down.weight")->type == TensorType(tr.ggmlType));
      CHECK(f->findTensor("token_embd.weight")->type == TensorType::F16);
      CHECK(f->getInt("general.file_type") ==
            (to == WeightFormat::T2 ? 1000 : to == WeightFormat::I2S ? 40 : to == WeightFormat::TQ2_0 ? 37 : 36));
      CHECK(sameRun(runModel(out), base));
    }
  }
  // A round trip reproduces the source file's tensor bytes (I2_S: but for the trailer padding,
  // which bitnet.cpp leaves unspecified and tern writes as zeros).
  for (const char* name : {"model-tq2_0.gguf", "model-tq1_0.gguf"}) {
    CAPTURE(name);
    const std::string mid = (tmp.path / "mid.gguf").string(), back = (tmp.path / "back.gguf").string();
    const auto to = std::string(name) == "model-tq2_0.gguf" ? WeightFormat::TQ2_0 : WeightFormat::TQ1_0;
    convert::convertModel({kTiny + name, mid, WeightFormat::I2S});
    convert::convertModel({mid, back, to});
    auto a = gguf::File::open(kTiny + name), b = gguf::File::open(back);
    for (const gguf::TensorInfo& t : a->tensors()) {
      CAPTURE(t.name);
      auto x = a->data(t), y = b->data(*b->findTensor(t.name));
      CHECK((x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size()) == 0));
    }
  }
  // The F32 file's ternary values convert exactly (no absmean), to the same weights.
  const std::string fromF32 = (tmp.path / "f32-tq1.gguf").string();
  convert::ConvertResult r = convert::convertModel({kTiny + "model-f32.gguf", fromF32, WeightFormat::TQ1_0});
  CHECK(r.lossy == 0);
  const Run f32 = runModel(kTiny + "model-f32.gguf");
  const Run conv = runModel(fromF32);
  CHECK(sameBits(conv.prompt, f32.prompt));  // token_embd stays F32: the same head as the F32 run
  CHECK(conv.ids == f32.ids);
}

TEST_CASE("formats: a whole model converted generates the same tokens (and errors)") {
  TempDir tmp;
  // stories260K: a float llama model, not ternary: absmean ternarisation, lossy, warned.
  const std::string stories = std::string(TERN_TEST_DATA) + "/stories260K/stories260K.gguf";
  const std::string t2 = (tmp.path / "s-t2.gguf").string();
  std::vector<std::string> warned;
  convert::ConvertResult r = convert::convertModel({stories, t2, WeightFormat::T2}, {},
                                           [&](const std::string& w) { warned.push_back(w); });
  CHECK(r.converted == 35);
  CHECK(r.lossy == 35);
  CHECK(warned.size() == 35);
  CHECK(warned[0].find("lossy") != std::string::npos);
  // Its ternarised weights: T2 and its own round trip through T2 again run identically.
  const std::string t2b = (tmp.path / "s-t2b.gguf").string();
  CHECK(convert::convertModel({t2, t2b, WeightFormat::T2}).lossy == 0);
  CHECK(sameRun(runModel(t2), runModel(t2b)));
  // Hand check of absmean on one tensor: s = mean|W| of the float weights.
  {
    auto src = gguf::File::open(stories), out = gguf::File::open(t2);
    const auto* t = src->findTensor("blk.0.attn_q.weight");
    REQUIRE(t->type == TensorType::F32);
    std::vector<float> w(t->nelements());
    std::memcpy(w.data(), src->data(*t).data(), w.size() * 4);
    double sum = 0;
    for (float v : w) sum += std::fabs(v);
    const auto* o = out->findTensor("blk.0.attn_q.weight");
    const auto& tr = kernels::weightFormat(WeightFormat::T2);
    const uint32_t k = uint32_t(t->ne[0]), nOut = uint32_t(t->ne[1]);
    const auto* p = reinterpret_cast<const uint8_t*>(out->data(*o).data());
    const float s = tr.readScale(p, k, nOut);
    CHECK(s == float(sum / double(w.size())));
    std::vector<int8_t> codes(k);
    tr.unpackRow(p, k, nOut, 0, codes.data());
    for (uint32_t i = 0; i < k; ++i)
      CHECK(codes[i] == int8_t(std::clamp(std::nearbyint(w[i] / s), -1.0f, 1.0f)));
  }

  CHECK_THROWS_WITH_AS(convert::convertModel({stories, (tmp.path / "x.gguf").string(), WeightFormat::TQ2_0}),
                       doctest::Contains("is not a multiple of 256"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(convert::convertModel({stories, (tmp.path / "x.gguf").string(), WeightFormat::I2S}),
                       doctest::Contains("I2_S is written only for bitnet"), std::invalid_argument);
  CHECK_FALSE(std::filesystem::exists(tmp.path / "x.gguf"));
  CHECK_THROWS_AS(convert::parseConvertTarget("q4_k"), std::invalid_argument);
  CHECK(convert::parseConvertTarget("tq1_0") == WeightFormat::TQ1_0);

  // A TQ2_0 file whose blocks carry different scales is refused on load, naming the tensor.
  auto src = gguf::File::open(kTiny + "model-tq2_0.gguf");
  gguf::Writer w;
  for (const auto& [key, value] : src->metadata()) w.set(key, value);
  for (const gguf::TensorInfo& t : src->tensors()) {
    auto d = src->data(t);
    std::vector<std::byte> bytes(d.begin(), d.end());
    if (t.name == "blk.1.attn_k.weight") bytes[3 * 66 + 65] ^= std::byte{0x04};  // block 3's d
    w.addTensorBytes(t.name, t.type, t.ne, std::move(bytes));
  }
  const std::string bad = (tmp.path / "bad.gguf").string();
  w.write(bad);
  auto f = gguf::File::open(bad);
  const ModelConfig cfg = ModelConfig::fromGguf(*f);
  CHECK_THROWS_WITH_AS(Stage(f, cfg, {0, cfg.nLayer, true, true}, {}),
                       doctest::Contains("blk.1.attn_k.weight (TQ2_0): per-block scales"),
                       gguf::FormatError);
  CHECK_THROWS_WITH_AS(convert::convertModel({bad, (tmp.path / "y.gguf").string(), WeightFormat::T2}),
                       doctest::Contains("one scale per tensor"), gguf::FormatError);
}
