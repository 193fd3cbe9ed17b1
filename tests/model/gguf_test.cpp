// GGUF reader/writer: round trips, hand-built malformed files, and real third-party files.
#include "model/gguf.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace tern;
using namespace tern::gguf;

namespace {

// A per-process scratch folder, removed at exit.
struct ScratchDir {
  fs::path path;
  ScratchDir() : path(fs::temp_directory_path() / ("tern_gguf_test_" + std::to_string(::getpid()))) {
    fs::create_directories(path);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

fs::path tempDir() {
  static ScratchDir dir;
  return dir.path;
}

std::string writeFile(const std::string& name, const std::vector<uint8_t>& bytes) {
  std::string path = (tempDir() / name).string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return path;
}

std::vector<uint8_t> readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Little-endian byte builder, independent of gguf::Writer, for hand-made files.
struct Raw {
  std::vector<uint8_t> b;
  Raw& u8(uint8_t x) { b.push_back(x); return *this; }
  Raw& u32(uint32_t x) { for (int i = 0; i < 4; ++i) b.push_back(uint8_t(x >> (8 * i))); return *this; }
  Raw& u64(uint64_t x) { for (int i = 0; i < 8; ++i) b.push_back(uint8_t(x >> (8 * i))); return *this; }
  Raw& str(const std::string& s) { u64(s.size()); b.insert(b.end(), s.begin(), s.end()); return *this; }
  Raw& header(uint64_t nTensors, uint64_t nKv, uint32_t version = 3) {
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    return u32(version).u64(nTensors).u64(nKv);
  }
  Raw& kvU32(const std::string& k, uint32_t v) { return str(k).u32(4).u32(v); }
  Raw& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name).u32(uint32_t(ne.size()));
    for (uint64_t n : ne) u64(n);
    return u32(type).u64(offset);
  }
  Raw& padTo(size_t a) { while (b.size() % a) b.push_back(0); return *this; }
  Raw& zeros(size_t n) { b.insert(b.end(), n, 0); return *this; }
};

// Opens a file that must be rejected; checks the one-line "<path>: ..." message.
std::string rejectMessage(const std::string& path, const std::string& expect) {
  try {
    File::open(path);
  } catch (const FormatError& e) {
    std::string msg = e.what();
    INFO("message: " << msg);
    CHECK(msg.rfind(path + ": ", 0) == 0);
    CHECK(msg.find(expect) != std::string::npos);
    CHECK(msg.find('\n') == std::string::npos);
    return msg;
  }
  FAIL("no FormatError for " << path << " (expected '" << expect << "')");
  return {};
}

bool sameValue(const Value& a, const Value& b) {
  if (a.type() != b.type()) return false;
  if (const auto* x = a.asArray()) {
    const auto* y = b.asArray();
    if (x->elem != y->elem || x->items.size() != y->items.size()) return false;
    for (size_t i = 0; i < x->items.size(); ++i)
      if (!sameValue(x->items[i], y->items[i])) return false;
    return true;
  }
  if (const auto* s = a.asString()) return *s == *b.asString();
  if (const auto* f = std::get_if<float>(&a.v)) return std::memcmp(f, &std::get<float>(b.v), 4) == 0;
  if (const auto* d = std::get_if<double>(&a.v)) return std::memcmp(d, &std::get<double>(b.v), 8) == 0;
  return a.v.index() == b.v.index() && a.asInt() == b.asInt() &&
         (a.type() != ValueType::U64 || std::get<uint64_t>(a.v) == std::get<uint64_t>(b.v));
}

Value arr(ValueType elem, std::vector<Value> items) { return Value{Array{elem, std::move(items)}}; }

std::vector<std::byte> patternBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& x : v) x = std::byte(rng() & 0xff);
  return v;
}

}  // namespace

TEST_CASE("tensorBytes and the traits table") {
  using T = TensorType;
  auto bytes = [](T t, std::vector<uint64_t> ne) { return tensorBytes(t, ne); };
  CHECK(bytes(T::F32, {4096, 4096}) == 4096ull * 4096 * 4);
  CHECK(bytes(T::F16, {3, 5, 7}) == 3ull * 5 * 7 * 2);
  CHECK(bytes(T::BF16, {10}) == 20);
  CHECK(bytes(T::Q8_0, {64, 3}) == 2 * 34 * 3);
  CHECK(bytes(T::Q8_0, {33, 3}) == std::nullopt);
  CHECK(bytes(T::Q4_K, {256, 2}) == 288);
  CHECK(bytes(T::Q4_K, {100}) == std::nullopt);
  CHECK(bytes(T::Q6_K, {512, 1, 1, 2}) == 2 * 210 * 2);
  CHECK(bytes(T::IQ4_NL, {32}) == 18);
  CHECK(bytes(T::IQ4_XS, {256}) == 136);
  CHECK(bytes(T::TQ1_0, {256, 256}) == 256 * 54);
  CHECK(bytes(T::TQ2_0, {256, 256}) == 256 * 66);
  CHECK(bytes(T::I2_S, {256, 256}) == 16416);  // the tiny-bitnet attn_q size
  CHECK(bytes(T::I2_S, {6}) == std::nullopt);  // 6 elements: not a whole number of bytes
  CHECK(bytes(T::TERN_T2, {256, 256}) == 256 * 64 + 32);
  CHECK(bytes(T::TERN_T2, {130, 3}) == 3 * 64 + 32);  // rows padded to 256 elements
  CHECK(bytes(T::TERN_T2, {130}) == 64 + 32);
  CHECK(bytes(T::TL1, {256, 256}) == std::nullopt);
  CHECK(bytes(T::TL2, {256, 256}) == std::nullopt);
  CHECK(bytes(T::F32, {1ull << 40, 1ull << 40}) == std::nullopt);
  CHECK(bytes(T::F32, {}) == std::nullopt);
  CHECK(bytes(T::F32, {4, 0}) == std::nullopt);
  CHECK(tensorBytes(static_cast<T>(4), std::vector<uint64_t>{32}) == std::nullopt);

  // Every enum id resolves, names round-trip, ids ggml dropped or never used do not.
  for (uint32_t id = 0; id < 2000; ++id) {
    const auto* tr = tensorTypeTraits(id);
    if (!tr) continue;
    CHECK(static_cast<uint32_t>(tr->type) == id);
    CHECK(tensorTypeFromName(tr->name) == tr->type);
  }
  for (uint32_t id : {4u, 5u, 31u, 32u, 33u, 37u, 40u, 999u, 1002u}) CHECK(tensorTypeTraits(id) == nullptr);
  CHECK(std::string(tensorTypeName(T::TERN_T2)) == "TERN_T2");
  CHECK(std::string(tensorTypeName(static_cast<T>(77))) == "unknown");
  CHECK(tensorTypeFromName("Q9_9") == std::nullopt);
  CHECK(tensorTypeTraits(T::I2_S)->ternary);
  CHECK(tensorTypeTraits(T::I2_S)->loadable);  // repacked to TERN_T2 on load
  CHECK(tensorTypeTraits(T::TQ2_0)->loadable);
  CHECK(tensorTypeTraits(T::TQ1_0)->loadable);
  CHECK_FALSE(tensorTypeTraits(T::TL2)->loadable);
  CHECK(tensorTypeTraits(T::TERN_T2)->loadable);
  CHECK(tensorTypeTraits(T::BF16)->loadable);
  CHECK_FALSE(tensorTypeTraits(T::Q8_0)->loadable);
  CHECK_FALSE(tensorTypeTraits(T::F32)->ternary);
}

TEST_CASE("Value conversions") {
  CHECK(Value{uint64_t(std::numeric_limits<uint64_t>::max())}.asInt() == std::nullopt);
  CHECK(Value{uint64_t(42)}.asInt() == 42);
  CHECK(Value{int8_t(-5)}.asInt() == -5);
  CHECK(Value{true}.asInt() == 1);
  CHECK(Value{1.5f}.asInt() == std::nullopt);
  CHECK(Value{std::string("7")}.asInt() == std::nullopt);
  CHECK(Value{int32_t(-3)}.asFloat() == -3.0);
  CHECK(Value{2.5}.asFloat() == 2.5);
  CHECK(Value{std::string("x")}.asFloat() == std::nullopt);
  CHECK(Value{uint16_t(1)}.type() == ValueType::U16);
  CHECK(std::string(valueTypeName(ValueType::F64)) == "f64");
}

TEST_CASE("writer -> reader round trip of every metadata type and writable tensor type") {
  for (uint64_t alignment : {32u, 64u}) {
    CAPTURE(alignment);
    Writer w(3, alignment);
    std::vector<std::pair<std::string, Value>> kv = {
        {"u8", Value{uint8_t(255)}},
        {"i8", Value{int8_t(-128)}},
        {"u16", Value{uint16_t(65535)}},
        {"i16", Value{int16_t(-32768)}},
        {"u32", Value{std::numeric_limits<uint32_t>::max()}},
        {"i32", Value{std::numeric_limits<int32_t>::min()}},
        {"f32", Value{std::numeric_limits<float>::denorm_min()}},
        {"f32.neg0", Value{-0.0f}},
        {"f32.inf", Value{-std::numeric_limits<float>::infinity()}},
        {"bool.t", Value{true}},
        {"bool.f", Value{false}},
        {"str.empty", Value{std::string()}},
        {"str.bytes", Value{std::string("\xff\xfe\0x\n", 5)}},  // not UTF-8, embedded NUL
        {"u64", Value{std::numeric_limits<uint64_t>::max()}},
        {"i64", Value{std::numeric_limits<int64_t>::min()}},
        {"f64", Value{std::numeric_limits<double>::max()}},
        {"arr.empty", arr(ValueType::U8, {})},
        {"arr.str", arr(ValueType::String, {Value{std::string("a")}, Value{std::string()}})},
        {"arr.nested",
         arr(ValueType::Array, {arr(ValueType::I32, {Value{int32_t(1)}, Value{int32_t(-2)}}),
                                arr(ValueType::I32, {})})},
        {"arr.nested3",
         arr(ValueType::Array,
             {arr(ValueType::Array, {arr(ValueType::String, {Value{std::string("deep")}})})})},
        {"", Value{uint8_t(1)}},  // an empty key is legal
    };
    for (const auto& [k, v] : kv) w.set(k, v);
    w.set("u8", Value{uint8_t(7)});  // replaces, keeps first position
    kv[0].second = Value{uint8_t(7)};
    w.setF32Array("arr.f32", {1.0f, -2.5f});
    w.setI32Array("arr.i32", {std::numeric_limits<int32_t>::max()});
    w.setStringArray("arr.str2", {"x", "yz"});

    struct Spec {
      std::string name;
      TensorType type;
      std::vector<uint64_t> ne;
      uint64_t nbytes;  // hand-computed
    };
    std::vector<Spec> specs = {
        {"f32", TensorType::F32, {3, 2}, 24},
        {"f16", TensorType::F16, {4}, 8},
        {"bf16", TensorType::BF16, {2, 2, 1, 3}, 24},
        {"t2", TensorType::TERN_T2, {130, 3}, 3 * 64 + 32},
        {"i8", TensorType::I8, {5}, 5},
        {"i32", TensorType::I32, {3, 1, 2}, 24},
        {"q8_0", TensorType::Q8_0, {64, 2}, 2 * 2 * 34},
    };
    std::vector<std::vector<std::byte>> datas;
    for (size_t i = 0; i < specs.size(); ++i) {
      datas.push_back(patternBytes(specs[i].nbytes, uint32_t(i + 1)));
      if (i % 2 == 0) {
        w.addTensorBytes(specs[i].name, specs[i].type, specs[i].ne, datas[i]);
      } else {
        // Producer that checks the chunking contract.
        auto expectedOffset = std::make_shared<uint64_t>(0);
        auto src = datas[i];
        w.addTensor(specs[i].name, specs[i].type, specs[i].ne,
                    [src, expectedOffset](std::span<std::byte> dst, uint64_t off) {
                      REQUIRE(dst.size() <= 7);
                      REQUIRE(off == *expectedOffset);
                      std::memcpy(dst.data(), src.data() + off, dst.size());
                      *expectedOffset += dst.size();
                    });
      }
    }
    std::string path = (tempDir() / ("rt" + std::to_string(alignment) + ".gguf")).string();
    uint64_t lastDone = 0, lastTotal = 0;
    w.write(path, [&](uint64_t done, uint64_t total) {
      CHECK(done >= lastDone);
      lastDone = done;
      lastTotal = total;
    }, 7);
    CHECK_FALSE(fs::exists(path + ".tmp"));
    CHECK(fs::file_size(path) == w.totalBytes());
    CHECK(lastDone == lastTotal);
    CHECK(lastTotal == w.totalBytes());

    auto raw = readAll(path);
    CHECK(std::memcmp(raw.data(), "GGUF\x03\x00\x00\x00", 8) == 0);
    CHECK(raw[8] == specs.size());  // n_tensors, little endian u64

    auto f = File::open(path);
    CHECK(f->version() == 3);
    CHECK(f->alignment() == alignment);
    for (const auto& [k, v] : kv) {
      CAPTURE(k);
      const Value* got = f->find(k);
      REQUIRE(got != nullptr);
      CHECK(sameValue(*got, v));
    }
    CHECK(f->metadata()[0].first == "u8");  // insertion order
    CHECK(f->metadata()[1].first == "i8");
    CHECK(std::get<float>(f->getArray("arr.f32").items[1].v) == -2.5f);
    CHECK(f->getArray("arr.str2").items.size() == 2);
    CHECK(f->getInt("i64") == std::numeric_limits<int64_t>::min());
    CHECK(f->getFloat("f64") == std::numeric_limits<double>::max());
    CHECK(f->getString("str.bytes") == std::string("\xff\xfe\0x\n", 5));
    CHECK(f->has("general.alignment") == (alignment != 32));
    const Array& names = f->getArray("tern.tensor_types");
    REQUIRE(names.items.size() == 1);
    CHECK(*names.items[0].asString() == "TERN_T2");

    REQUIRE(f->tensors().size() == specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      CAPTURE(specs[i].name);
      const TensorInfo& t = f->tensors()[i];
      CHECK(t.name == specs[i].name);
      CHECK(t.type == specs[i].type);
      CHECK(t.ne == specs[i].ne);
      CHECK(t.nbytes == specs[i].nbytes);
      CHECK(t.offset % alignment == 0);
      auto d = f->data(t);
      CHECK(reinterpret_cast<uintptr_t>(d.data()) % alignment == 0);
      REQUIRE(d.size() == datas[i].size());
      CHECK(std::memcmp(d.data(), datas[i].data(), d.size()) == 0);
      CHECK(f->findTensor(specs[i].name) == &t);
    }
    CHECK(f->findTensor("nope") == nullptr);
  }
}

TEST_CASE("writer: version 2, no tensors, typed setters, bad input") {
  Writer w(2);
  w.setString("general.architecture", "llama");
  w.setU32("a.u32", 5);
  w.setI32("a.i32", -5);
  w.setF32("a.f32", 0.5f);
  w.setBool("a.bool", true);
  std::string path = (tempDir() / "v2.gguf").string();
  w.write(path);
  auto f = File::open(path);
  CHECK(f->version() == 2);
  CHECK(f->tensors().empty());
  CHECK(f->fileSize() % 32 == 0);
  CHECK(f->getString("general.architecture") == "llama");
  CHECK(f->getInt("a.u32") == 5);
  CHECK(f->getInt("a.i32") == -5);
  CHECK(f->getFloat("a.f32") == 0.5);
  CHECK(f->getFloat("a.u32") == 5.0);
  CHECK(f->getBoolOr("a.bool", false));
  CHECK_FALSE(f->has("tern.tensor_types"));
  CHECK(f->getIntOr("absent", 9) == 9);
  CHECK(f->getFloatOr("absent", 1.5) == 1.5);
  CHECK(f->getStringOr("absent", "d") == "d");
  CHECK(f->findArray("absent") == nullptr);
  CHECK_THROWS_WITH_AS(f->getInt("general.architecture"),
                       doctest::Contains("'general.architecture' has type string"), FormatError);
  CHECK_THROWS_WITH_AS(f->getString("a.u32"), doctest::Contains("'a.u32' has type u32"), FormatError);
  CHECK_THROWS_WITH_AS(f->getString("absent"), doctest::Contains("missing metadata key 'absent'"),
                       FormatError);
  CHECK_THROWS_AS(f->getBoolOr("a.u32", false), FormatError);
  CHECK_THROWS_AS(f->getArray("a.u32"), FormatError);
  CHECK_THROWS_AS(f->findArray("a.u32"), FormatError);

  CHECK_THROWS_AS(Writer(1), std::invalid_argument);
  CHECK_THROWS_AS(Writer(3, 48), std::invalid_argument);
  Writer bad;
  CHECK_THROWS_AS(bad.addTensorBytes("q", TensorType::Q8_0, {33}, {}), std::invalid_argument);
  CHECK_THROWS_AS(bad.addTensorBytes("f", TensorType::F32, {2}, std::vector<std::byte>(7)),
                  std::invalid_argument);
  CHECK_THROWS_AS(bad.addTensorBytes("f", TensorType::F32, {2, 0}, {}), std::invalid_argument);
  CHECK_THROWS_AS(bad.addTensorBytes("f", TensorType::F32, {1, 1, 1, 1, 1}, std::vector<std::byte>(4)),
                  std::invalid_argument);
  bad.addTensorBytes("f", TensorType::F32, {1}, std::vector<std::byte>(4));
  CHECK_THROWS_AS(bad.addTensorBytes("f", TensorType::F32, {1}, std::vector<std::byte>(4)),
                  std::invalid_argument);

  // A producer that fails leaves neither the file nor the temporary behind.
  Writer failing;
  failing.addTensor("x", TensorType::F32, {1024}, [](std::span<std::byte>, uint64_t off) {
    if (off > 0) throw std::runtime_error("producer failed");
  });
  std::string failPath = (tempDir() / "failed.gguf").string();
  CHECK_THROWS_WITH(failing.write(failPath, {}, 256), "producer failed");
  CHECK_FALSE(fs::exists(failPath));
  CHECK_FALSE(fs::exists(failPath + ".tmp"));
}

namespace {

// A small valid file: one kv, two F32 tensors, the last ending exactly at the end of the file.
Raw validRaw() {
  Raw r;
  r.header(2, 1).kvU32("k", 1);
  r.tensor("a", {4}, 0, 0).tensor("b", {8}, 0, 32);
  r.padTo(32).zeros(64);
  return r;
}

}  // namespace

TEST_CASE("malformed files are rejected with distinct one-line messages") {
  std::set<std::string> messages;
  int n = 0;
  auto reject = [&](const Raw& r, const std::string& expect) {
    std::string path = writeFile("bad" + std::to_string(n++) + ".gguf", r.b);
    CAPTURE(expect);
    messages.insert(rejectMessage(path, expect));
  };
  const uint32_t kArray = 9, kString = 8;

  CHECK_NOTHROW(File::open(writeFile("valid.gguf", validRaw().b)));

  reject(Raw{}, "file too small");
  reject(Raw{{'G', 'G', 'U', 'F', 3, 0}}, "file too small for a GGUF header (6 bytes)");
  reject(Raw{{'G', 'G', 'M', 'L', 3, 0, 0, 0}}, "bad magic");
  reject(Raw().header(0, 0, 1), "version 1 is not supported");
  reject(Raw().header(0, 0, 99), "unsupported GGUF version 99");
  reject(Raw().header(0, 0, 0x03000000), "big-endian");
  reject(Raw().header(0, uint64_t(1) << 60), "n_kv");
  reject(Raw().header(uint64_t(1) << 60, 0), "n_tensors");
  reject(Raw().header(0, 1).u64(uint64_t(1) << 62).zeros(16), "string length");
  reject(Raw().header(0, 1).str("big").u32(kArray).u32(0).u64(uint64_t(1) << 40), "array count");
  reject(Raw().header(0, 1).str("strs").u32(kArray).u32(kString).u64(1000).zeros(100),
         "array count 1000 of string");
  {
    Raw r;
    r.header(0, 1).str("deep").u32(kArray);
    for (int i = 0; i < 20; ++i) r.u32(kArray).u64(1);
    r.u32(0).u64(0).zeros(16);
    reject(r, "nested deeper than 16");
  }
  reject(Raw().header(0, 1).str("k").u32(13).u32(0), "unknown value type 13 for metadata key 'k'");
  reject(Raw().header(0, 1).str("k").u32(kArray).u32(42).u64(0), "unknown array element type 42");
  reject(Raw().header(0, 1).str("flag").u32(7).u8(2).zeros(8), "bool value 2");
  reject(Raw().header(0, 2).kvU32("dup", 1).kvU32("dup", 2), "duplicate metadata key 'dup'");
  reject(Raw().header(0, 1).kvU32("general.alignment", 48), "general.alignment 48 is not a non-zero power of two");
  reject(Raw().header(0, 1).kvU32("general.alignment", 0), "general.alignment 0 is not");
  reject(Raw().header(0, 1).str("general.alignment").u32(10).u64(64), "general.alignment has type u64");
  reject(Raw().header(0, 2).kvU32("first", 1).str("second").u32(4).u8(0), "file truncated in metadata key 'second'");
  reject(Raw().header(1, 0).tensor("x", {4}, 77, 0).padTo(32).zeros(16), "unknown tensor type id 77 for tensor 'x'");
  reject(Raw().header(1, 0).tensor("x", {}, 0, 0).padTo(32).zeros(16), "tensor 'x' has n_dims 0");
  reject(Raw().header(1, 0).tensor("x", {1, 1, 1, 1, 1}, 0, 0).padTo(32).zeros(16), "tensor 'x' has n_dims 5");
  reject(Raw().header(1, 0).tensor("x", {4, 0}, 0, 0).padTo(32).zeros(16), "zero dimension (ne[1] = 0)");
  reject(Raw().header(1, 0).tensor("x", {1ull << 32, 1ull << 32}, 0, 0).padTo(32), "element count overflows");
  reject(Raw().header(1, 0).tensor("x", {33}, 8, 0).padTo(32).zeros(64), "of type Q8_0 cannot have shape [33]");
  reject(Raw().header(1, 0).tensor("x", {4}, 0, 16).padTo(32).zeros(64), "is not a multiple of the alignment 32");
  reject(Raw().header(1, 0).tensor("x", {4}, 0, 4096).padTo(32).zeros(64), "is past the end of the file");
  reject(Raw().header(1, 0).tensor("x", {100}, 0, 0).padTo(32).zeros(64), "runs past the end of the file");
  reject(Raw().header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {4}, 0, 32).padTo(32).zeros(128),
         "tensor 'b' data at offset 32 overlaps tensor 'a'");
  reject(Raw().header(2, 0).tensor("a", {4}, 0, 0).tensor("a", {4}, 0, 32).padTo(32).zeros(64),
         "duplicate tensor name 'a'");
  reject(Raw().header(1, 0).str("abcdefghijklmnop").u32(1).u64(4).u32(0), "file truncated in tensor info 'abcdefghijklmnop'");
  reject(Raw().header(1, 0).str("x\nnewline").u32(7).zeros(16), "tensor 'x\\x0anewline' has n_dims 7");
  {
    Raw r;
    r.header(1, 0).tensor("x", {4}, 0, 0);  // header ends exactly at a 64-byte boundary after padding
    reject(r, "data section would start at offset");
  }
  CHECK(messages.size() == size_t(n));  // every problem has its own message

  // Missing file and a directory are FormatErrors too.
  rejectMessage((tempDir() / "does-not-exist.gguf").string(), "cannot open");
  rejectMessage(tempDir().string(), "not a regular file");
}

TEST_CASE("every truncation of a valid file is rejected") {
  const Raw full = validRaw();
  for (size_t len = 0; len < full.b.size(); ++len) {
    CAPTURE(len);
    Raw cut;
    cut.b.assign(full.b.begin(), full.b.begin() + long(len));
    std::string path = writeFile("trunc.gguf", cut.b);
    try {
      File::open(path);
      FAIL("truncated file opened");
    } catch (const FormatError& e) {
      CHECK(std::string(e.what()).rfind(path + ": ", 0) == 0);
    }
  }
}

TEST_CASE("random corruption of a header never crashes") {
  const Raw full = validRaw();
  std::mt19937 rng(1234);
  int opened = 0, rejected = 0;
  for (int iter = 0; iter < 400; ++iter) {
    Raw r = full;
    int flips = 1 + int(rng() % 4);
    for (int k = 0; k < flips; ++k) r.b[rng() % 120] = uint8_t(rng());
    std::string path = writeFile("fuzz.gguf", r.b);
    try {
      auto f = File::open(path);
      for (const auto& t : f->tensors()) CHECK(f->data(t).size() == t.nbytes);
      ++opened;
    } catch (const FormatError& e) {
      CHECK(std::string(e.what()).find('\n') == std::string::npos);
      ++rejected;
    }
  }
  CHECK(opened + rejected == 400);
  CHECK(rejected > 0);
}

TEST_CASE("TL1 tensors take their size from the next tensor's offset or the file end") {
  Raw r;
  r.header(2, 0).tensor("tl", {256, 4}, 38, 0).tensor("f", {8}, 0, 96);
  r.padTo(32).zeros(96 + 32 + 32);
  auto f = File::open(writeFile("tl1.gguf", r.b));
  CHECK(f->findTensor("tl")->type == TensorType::TL1);
  CHECK(f->findTensor("tl")->nbytes == 96);
  CHECK(f->findTensor("f")->nbytes == 32);
}

TEST_CASE("real file: llama.cpp SentencePiece vocab (GGUF v3, no tensors)") {
  auto f = File::open(TERN_TEST_DATA "/llama.cpp-vocab/ggml-vocab-llama-spm.gguf");
  CHECK(f->version() == 3);
  CHECK(f->tensors().empty());
  CHECK(f->getString("tokenizer.ggml.model") == "llama");
  const Array& toks = f->getArray("tokenizer.ggml.tokens");
  CHECK(toks.elem == ValueType::String);
  REQUIRE(toks.items.size() == 32000);
  CHECK(*toks.items[0].asString() == "<unk>");
  CHECK(*toks.items[1].asString() == "<s>");
  CHECK(*toks.items[2].asString() == "</s>");
  CHECK(f->getArray("tokenizer.ggml.scores").items.size() == 32000);
}

TEST_CASE("real file: stories260K opens with 48 F32 tensors") {
  auto f = File::open(TERN_TEST_DATA "/stories260K/stories260K.gguf");
  CHECK(f->version() == 3);
  CHECK(f->getString("general.architecture") == "llama");
  CHECK(f->tensors().size() == 48);
  for (const auto& t : f->tensors()) {
    CHECK(t.type == TensorType::F32);
    CHECK(t.nbytes == t.nelements() * 4);
  }
  const TensorInfo* emb = f->findTensor("token_embd.weight");
  REQUIRE(emb);
  CHECK(emb->ne == std::vector<uint64_t>{64, 512});
}
