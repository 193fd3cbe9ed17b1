// TERN_TL3 end to end: tiny-bitnet's I2_S file (written by bitnet.cpp's quantizer) converted with
// `tern convert --to tl3` runs bit-identically to the I2_S file, with every kernel variant, and
// converts back to I2_S with the same codes and scales.
#include "kernels/dispatch.hpp"
#include "kernels/gemm_tl3.hpp"
#include "model/config.hpp"
#include "model/gguf.hpp"
#include "ops/linear.hpp"
#include "ops/stage.hpp"
#include "convert/convert.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <unistd.h>

using namespace tern;
using namespace tern::ops;

namespace {

const std::string kTiny = std::string(TERN_TEST_DATA) + "/tiny-bitnet/";
const std::vector<int32_t> kPrompt = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376};
constexpr size_t kSteps = 16;

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() / ("tern-tl3-" + std::to_string(getpid()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

std::vector<float> forward(Stage& s, uint32_t pos0, const std::vector<int32_t>& toks) {
  const size_t n = toks.size();
  std::vector<uint64_t> seq(n, 0);
  std::vector<uint32_t> pos(n);
  for (size_t i = 0; i < n; ++i) pos[i] = pos0 + uint32_t(i);
  std::vector<uint8_t> want(n, 1);
  BatchOut out;
  s.forward(BatchIn{seq, pos, toks, {}, want}, out);
  return out.logits;
}

// Prompt logits [10][V], then kSteps greedy steps' logits [kSteps][V].
std::vector<float> runLogits(const std::string& path, const std::string& kernels, int threads) {
  auto file = gguf::File::open(path);
  const ModelConfig cfg = ModelConfig::fromGguf(*file);
  StageOptions opts;
  opts.kernels = kernels;
  opts.threads = threads;
  Stage s(file, cfg, {0, cfg.nLayer, true, true}, opts);
  s.openSequence(0, 64);
  std::vector<float> all = forward(s, 0, kPrompt);
  const uint32_t V = cfg.nVocab;
  REQUIRE(all.size() == kPrompt.size() * V);
  int32_t next = int32_t(std::max_element(all.end() - V, all.end()) - (all.end() - V));
  for (size_t k = 0; k < kSteps; ++k) {
    auto row = forward(s, uint32_t(kPrompt.size() + k), {next});
    all.insert(all.end(), row.begin(), row.end());
    next = int32_t(std::max_element(row.begin(), row.end()) - row.begin());
  }
  return all;
}

bool sameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

}  // namespace

TEST_CASE("tl3: tiny-bitnet converted to TERN_TL3 gives the I2_S file's logits bit for bit") {
  TempDir tmp;
  const std::string tl3 = (tmp.path / "tl3.gguf").string();
  convert::ConvertResult r = convert::convertModel({kTiny + "model-i2_s.gguf", tl3, kernels::WeightFormat::TL3});
  CHECK(r.converted == 14);
  CHECK(r.lossy == 0);
  CHECK(r.warnings.empty());
  auto f = gguf::File::open(tl3);
  CHECK(f->findTensor("blk.0.attn_q.weight")->type == TensorType::TERN_TL3);
  CHECK(f->getInt("general.file_type") == 1001);
  // Smaller than I2_S: 5 bits per 3 weights (plus padding of rows to 96).
  CHECK(r.fileBytes < gguf::File::open(kTiny + "model-i2_s.gguf")->fileSize());

  const auto base = runLogits(kTiny + "model-i2_s.gguf", "ref", 1);
  for (const std::string& name : kernels::supportedKernelNames())
    for (int threads : {1, 2}) {
      CAPTURE(name);
      CAPTURE(threads);
      CHECK(sameBits(runLogits(tl3, name, threads), base));
    }

  // And back: TL3 -> I2_S reproduces the original projection bytes.
  const std::string back = (tmp.path / "back.gguf").string();
  convert::convertModel({tl3, back, kernels::WeightFormat::I2S});
  auto orig = gguf::File::open(kTiny + "model-i2_s.gguf");
  auto b = gguf::File::open(back);
  for (const gguf::TensorInfo& t : orig->tensors()) {
    CAPTURE(t.name);
    const auto x = orig->data(t), y = b->data(*b->findTensor(t.name));
    REQUIRE(x.size() == y.size());
    // Projections: codes and scale (bitnet.cpp's I2_S trailer has more than the scale after it).
    const size_t n = t.type == TensorType::I2_S ? x.size() - 28 : x.size();
    CHECK(std::memcmp(x.data(), y.data(), n) == 0);
  }
}

TEST_CASE("tl3: a Linear over TERN_TL3 equals the same weights as TERN_T2, int8 and float") {
  TempDir tmp;
  const std::string tl3 = (tmp.path / "tl3.gguf").string(), t2 = (tmp.path / "t2.gguf").string();
  convert::convertModel({kTiny + "model-i2_s.gguf", tl3, kernels::WeightFormat::TL3});
  convert::convertModel({kTiny + "model-i2_s.gguf", t2, kernels::WeightFormat::T2});
  auto a = gguf::File::open(tl3), b = gguf::File::open(t2);
  const auto* info = a->findTensor("blk.1.ffn_down.weight");
  REQUIRE(info);
  const uint32_t k = uint32_t(info->ne[0]), nOut = uint32_t(info->ne[1]), n = 5;
  std::vector<float> x(size_t(n) * k);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 37 % 201) - 100) / 17.0f;
  for (bool int8 : {true, false}) {
    CAPTURE(int8);
    const Linear la = loadLinear(*a, info->name, k, nOut, int8), lb = loadLinear(*b, info->name, k, nOut, int8);
    CHECK((la.kind == Linear::Kind::TL3) == int8);
    CHECK(la.wScale == lb.wScale);
    for (const std::string& name : kernels::supportedKernelNames()) {
      CAPTURE(name);
      const auto& kt = kernels::selectKernels(name);
      std::vector<float> ya(size_t(n) * nOut), yb(ya.size());
      applyLinear(kt, la, x.data(), n, ya.data(), 2);
      applyLinear(kt, lb, x.data(), n, yb.data(), 2);
      CHECK(sameBits(ya, yb));
    }
  }
}

TEST_CASE("tl3: a corrupt TERN_TL3 magnitude is a clear load error") {
  TempDir tmp;
  const std::string tl3 = (tmp.path / "tl3.gguf").string(), bad = (tmp.path / "bad.gguf").string();
  convert::convertModel({kTiny + "model-i2_s.gguf", tl3, kernels::WeightFormat::TL3});
  std::string name;
  uint32_t k = 0, nOut = 0;
  std::string bytes;
  {
    auto f = gguf::File::open(tl3);
    const auto* t = f->findTensor("blk.0.attn_k.weight");
    REQUIRE(t);
    name = t->name, k = uint32_t(t->ne[0]), nOut = uint32_t(t->ne[1]);
    std::ifstream in(tl3, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    // The tensor's first 64 bytes, found in the file by content, then byte 0 (magnitudes of
    // triples 0 and 16 of row 0) set to 0xff.
    const std::string needle(reinterpret_cast<const char*>(f->data(*t).data()), 64);
    const size_t at = bytes.find(needle);
    REQUIRE(at != std::string::npos);
    REQUIRE(bytes.find(needle, at + 1) == std::string::npos);
    bytes[at] = char(0xff);
  }
  std::ofstream(bad, std::ios::binary) << bytes;
  auto g = gguf::File::open(bad);
  CHECK_THROWS_WITH_AS(loadLinear(*g, name, k, nOut, true),
                       doctest::Contains("invalid TL3 magnitude 15 at row 0"), gguf::FormatError);
}
