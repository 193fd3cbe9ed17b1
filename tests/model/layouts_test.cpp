#include "model/layouts.hpp"

#include "kernels/t2.hpp"
#include "model/config.hpp"
#include "model/tokenizer.hpp"
#include "convert/generate.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;
using namespace tern;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("tern_layouts_test_" + std::to_string(::getpid()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

std::vector<char> readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

convert::GenResult gen(const std::string& layout, const std::string& out, uint64_t seed,
                   double zeroFraction = 0.4, std::optional<uint32_t> nLayer = {}) {
  convert::GenOptions o;
  o.layout = layout;
  o.output = out;
  o.seed = seed;
  o.zeroFraction = zeroFraction;
  o.nLayer = nLayer;
  o.tokenizerDir = TERN_TEST_DATA;
  return convert::generateModel(o);
}

// Codes of a TERN_T2 tensor, [nOut][k] values in {-1, 0, +1}, and its scale.
std::vector<int8_t> unpackT2(const gguf::File& f, const gguf::TensorInfo& t, float* scale) {
  const auto k = static_cast<uint32_t>(t.ne[0]);
  const uint64_t rows = t.ne[1];
  auto data = f.data(t);
  REQUIRE(data.size() == kernels::t2TensorBytes(k, static_cast<uint32_t>(rows)));
  const auto* p = reinterpret_cast<const uint8_t*>(data.data());
  std::vector<int8_t> w(k * rows);
  for (uint64_t r = 0; r < rows; ++r) kernels::t2UnpackRow(p + r * kernels::t2RowBytes(k), k, &w[r * k]);
  *scale = kernels::t2ReadTrailer(p + rows * kernels::t2RowBytes(k));
  return w;
}

std::vector<float> f32Values(const gguf::File& f, const gguf::TensorInfo& t) {
  auto d = f.data(t);
  std::vector<float> v(t.nelements());
  std::memcpy(v.data(), d.data(), v.size() * 4);
  return v;
}

}  // namespace

TEST_CASE("layouts: table matches formats.md") {
  for (const Layout& l : allLayouts()) {
    CAPTURE(l.name);
    CHECK(l.qDim() == l.nEmbd);  // true of every model in the formats.md tables
    CHECK(l.nHead % l.nHeadKv == 0);
    CHECK(findLayout(l.name) == &l);
    CHECK((l.tokenizer == "llama3" || l.tokenizer == "llama-spm"));
    CHECK(l.nVocab == (l.tokenizer == "llama-spm" ? 32002u : l.name.rfind("Falcon3", 0) == 0 ? 131072u : 128256u));
    CHECK(l.tiedHead == (l.arch != Arch::Llama));
  }
  CHECK(allLayouts().size() == 21);
  CHECK(findLayout("100b") == findLayout("100B"));
  CHECK(findLayout("BITNET-TINY") != nullptr);
  CHECK(findLayout("nope") == nullptr);

  const Layout* l = findLayout("100B");
  REQUIRE(l);
  CHECK(l->arch == Arch::Bitnet);
  CHECK(l->nEmbd == 8192);
  CHECK(l->nFf == 45568);
  CHECK(l->nLayer == 72);
  CHECK(l->nHead == 64);
  CHECK(l->nHeadKv == 64);
  CHECK(l->headDim == 128);
  l = findLayout("1.5B");
  REQUIRE(l);
  CHECK(l->headDim == 48);
  CHECK(l->nFf == 9216);
  l = findLayout("2B4T");
  REQUIRE(l);
  CHECK(l->arch == Arch::BitnetB158);
  CHECK(l->nHeadKv == 5);
  CHECK(l->ropeTheta == 500000.0f);
  CHECK(l->nCtx == 4096);
  l = findLayout("Falcon3-10B");
  REQUIRE(l);
  CHECK(l->nCtx == 32768);
  CHECK(l->headDim == 256);
  CHECK(l->normEps == 1e-6f);
  CHECK(!l->tiedHead);
  l = findLayout("3B");
  REQUIRE(l);
  CHECK(l->headDim == 100);
}

TEST_CASE("layouts: 100B sizes") {
  const Layout& l = *findLayout("100B");
  LayoutSize s = layoutSize(l);
  // 72 layers x (4 x 8192^2 + 3 x 8192 x 45568) ternary weights.
  CHECK(s.ternaryParams == 99'958'652'928ull);
  CHECK(formatCount(s.ternaryParams) == "99.96 B");
  // Plus the F16 embedding (32002 x 8192) and F32 norms (72 x (2 x 8192 + 8192 + 45568) + 8192).
  CHECK(s.totalParams == 99'958'652'928ull + 32002ull * 8192 + 72ull * (3 * 8192 + 45568) + 8192);
  // 2 bits per ternary weight: about 25 GB, plus 0.52 GB of embedding.
  CHECK(s.tensorBytes > 99'958'652'928ull / 4 + 32002ull * 8192 * 2);
  CHECK(s.tensorBytes < 25'600'000'000ull);
  CHECK(formatBytes(25'514'459'136ull) == "25.51 GB");
  CHECK(humanBytes(1'277'952) == "1.22 MiB");
  CHECK(humanBytes(1ull << 30) == "1.00 GiB");
  CHECK(humanBytes(12'288) == "12.0 KiB");
  CHECK(humanBytes(100) == "100 bytes");
  // Untied head: Llama3-8B has an output tensor.
  auto t = layoutTensors(*findLayout("Llama3-8B-1.58"));
  CHECK(t.back().name == "output.weight");
  CHECK(t.back().ne == std::vector<uint64_t>{4096, 128256});
}

TEST_CASE("tern gen: bitnet-tiny file") {
  TempDir dir;
  const std::string a = dir.file("a.gguf"), b = dir.file("b.gguf"), c = dir.file("c.gguf");
  auto res = gen("bitnet-tiny", a, 42);
  auto f = gguf::File::open(a);
  CHECK(fs::file_size(a) == res.fileBytes);

  ModelConfig cfg = ModelConfig::fromGguf(*f);
  CHECK_NOTHROW(cfg.validateTensors(*f));
  CHECK(cfg.arch == Arch::Bitnet);
  CHECK(cfg.nEmbd == 128);
  CHECK(cfg.nFf == 256);
  CHECK(cfg.nLayer == 2);
  CHECK(cfg.nHead == 2);
  CHECK(cfg.headDim == 64);
  CHECK(cfg.nVocab == 32002);
  CHECK(cfg.tiedHead);
  CHECK(cfg.ternary);
  CHECK(cfg.subNorms);
  CHECK(f->getString("tern.generator") == "tern gen");
  CHECK(f->getInt("tern.seed") == 42);
  CHECK(f->getString("tern.layout") == "bitnet-tiny");

  // Tokenizer: the Llama-2 SPM vocab plus <pad>, <mask>.
  Vocab v = Vocab::fromGguf(*f);
  REQUIRE(v.tokens.size() == 32002);
  CHECK(v.tokens[32000] == "<pad>");
  CHECK(v.tokens[32001] == "<mask>");
  CHECK(v.pad == 32000);
  CHECK(v.bos == 1);

  SUBCASE("projection codes and scale") {
    float scale = 0;
    auto w = unpackT2(*f, *f->findTensor("blk.1.ffn_down.weight"), &scale);  // k = 256
    size_t count[3] = {0, 0, 0};
    for (int8_t x : w) ++count[x + 1];
    const double n = static_cast<double>(w.size());
    CHECK(count[0] > 0);
    CHECK(count[2] > 0);
    CHECK(std::abs(count[1] / n - 0.4) < 0.02);
    CHECK(std::abs(count[0] / n - 0.3) < 0.02);
    CHECK(scale == doctest::Approx(1.0 / std::sqrt(0.6 * 256)).epsilon(1e-3));
  }
  SUBCASE("norms and embedding") {
    auto norm = f32Values(*f, *f->findTensor("blk.0.ffn_sub_norm.weight"));
    double mean = 0;
    for (float x : norm) mean += x / norm.size();
    CHECK(mean == doctest::Approx(1.0).epsilon(0.02));
    const auto* e = f->findTensor("token_embd.weight");
    REQUIRE(e->type == TensorType::F16);
    CHECK(e->ne == std::vector<uint64_t>{128, 32002});
  }
  SUBCASE("same seed: same bytes; other seed: other bytes") {
    gen("bitnet-tiny", b, 42);
    gen("bitnet-tiny", c, 43);
    auto ba = readAll(a);
    CHECK(ba == readAll(b));
    CHECK(ba != readAll(c));
  }
  SUBCASE("other zero fraction, fewer layers") {
    gen("bitnet-tiny", b, 42, 0.1, 1u);
    auto g = gguf::File::open(b);
    ModelConfig c1 = ModelConfig::fromGguf(*g);
    CHECK(c1.nLayer == 1);
    CHECK_NOTHROW(c1.validateTensors(*g));
    float scale = 0;
    auto w = unpackT2(*g, *g->findTensor("blk.0.attn_q.weight"), &scale);
    size_t zeros = 0;
    for (int8_t x : w) zeros += x == 0;
    CHECK(std::abs(double(zeros) / w.size() - 0.1) < 0.02);
    // A tensor's values depend on the seed and its name only, not on the layer count.
    const auto* t0 = f->findTensor("blk.0.attn_norm.weight");
    const auto* t1 = g->findTensor("blk.0.attn_norm.weight");
    auto d0 = f->data(*t0), d1 = g->data(*t1);
    CHECK(std::equal(d0.begin(), d0.end(), d1.begin(), d1.end()));
  }
}

TEST_CASE("tern gen: 2B4T-tiny has the Llama-3 tokenizer") {
  TempDir dir;
  const std::string a = dir.file("t.gguf");
  gen("2B4T-tiny", a, 7);
  auto f = gguf::File::open(a);
  ModelConfig cfg = ModelConfig::fromGguf(*f);
  CHECK_NOTHROW(cfg.validateTensors(*f));
  CHECK(cfg.arch == Arch::BitnetB158);
  CHECK(cfg.nHeadKv == 2);
  CHECK(cfg.nHead == 4);
  CHECK(cfg.ffnAct == FfnAct::ReluSquared);
  Vocab v = Vocab::fromGguf(*f);
  CHECK(v.model == "gpt2");
  CHECK(v.tokens.size() == 128256);
  CHECK(v.bos == 128000);
}

TEST_CASE("tern gen: bad options") {
  convert::GenOptions o;
  o.layout = "nope";
  o.dryRun = true;
  o.tokenizerDir = TERN_TEST_DATA;
  try {
    convert::generateModel(o);
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("bitnet-tiny") != std::string::npos);
  }
  o.layout = "bitnet-tiny";
  o.zeroFraction = 1.5;
  CHECK_THROWS_AS(convert::generateModel(o), std::invalid_argument);
  o.zeroFraction = 0.4;
  o.nLayer = 0;
  CHECK_THROWS_AS(convert::generateModel(o), std::invalid_argument);
  o.nLayer.reset();
  o.tokenizerDir = "/nonexistent";
  CHECK_THROWS(convert::generateModel(o));
  // A dry run computes the exact size without writing.
  o.tokenizerDir = TERN_TEST_DATA;
  auto r = convert::generateModel(o);
  CHECK(r.fileBytes > layoutSize(r.layout).tensorBytes);
}
