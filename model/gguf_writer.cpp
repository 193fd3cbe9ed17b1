// GGUF writer: header built in memory, tensor data streamed chunk by chunk into "<path>.tmp",
// renamed over <path> once complete.
#include "model/gguf.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

namespace tern::gguf {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little endian
constexpr uint32_t kFirstTernTypeId = 1000;

uint64_t alignUp(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

class Bytes {
 public:
  template <typename X>
  void put(X x) {
    append(&x, sizeof(X));
  }
  void putString(const std::string& s) {
    put<uint64_t>(s.size());
    append(s.data(), s.size());
  }
  void append(const void* p, size_t n) {
    size_t at = buf_.size();
    buf_.resize(at + n);
    if (n) std::memcpy(buf_.data() + at, p, n);
  }
  void putValue(const Value& v) {
    std::visit(
        [&](const auto& x) {
          using X = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<X, std::string>) {
            putString(x);
          } else if constexpr (std::is_same_v<X, Array>) {
            put<uint32_t>(static_cast<uint32_t>(x.elem));
            put<uint64_t>(x.items.size());
            for (const Value& item : x.items) {
              if (item.type() != x.elem)
                throw std::invalid_argument(
                    std::string("gguf array of ") + valueTypeName(x.elem) + " holds a " +
                    valueTypeName(item.type()));
              putValue(item);
            }
          } else if constexpr (std::is_same_v<X, bool>) {
            put<uint8_t>(x ? 1 : 0);
          } else {
            put<X>(x);
          }
        },
        v.v);
  }
  void padTo(uint64_t alignment) { buf_.resize(alignUp(buf_.size(), alignment), std::byte{0}); }
  const std::vector<std::byte>& data() const { return buf_; }

 private:
  std::vector<std::byte> buf_;
};

void checkShape(const std::string& name, const std::vector<uint64_t>& ne) {
  if (ne.empty() || ne.size() > 4)
    throw std::invalid_argument("gguf tensor '" + name + "': n_dims must be 1..4");
  for (uint64_t n : ne)
    if (n == 0) throw std::invalid_argument("gguf tensor '" + name + "': zero dimension");
}

}  // namespace

Writer::Writer(uint32_t version, uint64_t alignment) : version_(version), alignment_(alignment) {
  if (version != 2 && version != 3)
    throw std::invalid_argument("gguf writer: version must be 2 or 3");
  if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > (uint64_t{1} << 31))
    throw std::invalid_argument("gguf writer: alignment must be a power of two <= 2^31");
}

void Writer::set(const std::string& key, Value v) {
  for (auto& [k, old] : kv_) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  kv_.emplace_back(key, std::move(v));
}

void Writer::setString(const std::string& key, std::string s) { set(key, Value{std::move(s)}); }
void Writer::setU32(const std::string& key, uint32_t x) { set(key, Value{x}); }
void Writer::setI32(const std::string& key, int32_t x) { set(key, Value{x}); }
void Writer::setF32(const std::string& key, float x) { set(key, Value{x}); }
void Writer::setBool(const std::string& key, bool x) { set(key, Value{x}); }

void Writer::setStringArray(const std::string& key, std::vector<std::string> items) {
  Array a{ValueType::String, {}};
  a.items.reserve(items.size());
  for (auto& s : items) a.items.push_back(Value{std::move(s)});
  set(key, Value{std::move(a)});
}

void Writer::setF32Array(const std::string& key, std::vector<float> items) {
  Array a{ValueType::F32, {}};
  a.items.reserve(items.size());
  for (float x : items) a.items.push_back(Value{x});
  set(key, Value{std::move(a)});
}

void Writer::setI32Array(const std::string& key, std::vector<int32_t> items) {
  Array a{ValueType::I32, {}};
  a.items.reserve(items.size());
  for (int32_t x : items) a.items.push_back(Value{x});
  set(key, Value{std::move(a)});
}

void Writer::addTensor(std::string name, TensorType type, std::vector<uint64_t> ne,
                       Producer produce) {
  checkShape(name, ne);
  for (const auto& t : tensors_)
    if (t.name == name) throw std::invalid_argument("gguf tensor '" + name + "' added twice");
  auto bytes = tensorBytes(type, ne);
  if (!bytes)
    throw std::invalid_argument("gguf tensor '" + name + "': type " + tensorTypeName(type) +
                                " cannot hold this shape");
  if (!produce) throw std::invalid_argument("gguf tensor '" + name + "': no producer");
  tensors_.push_back({std::move(name), type, std::move(ne), *bytes, std::move(produce)});
}

void Writer::addTensorBytes(std::string name, TensorType type, std::vector<uint64_t> ne,
                            std::vector<std::byte> bytes) {
  checkShape(name, ne);
  auto expected = tensorBytes(type, ne);
  if (expected && *expected != bytes.size())
    throw std::invalid_argument("gguf tensor '" + name + "': " + std::to_string(bytes.size()) +
                                " bytes given, the shape needs " + std::to_string(*expected));
  auto shared = std::make_shared<std::vector<std::byte>>(std::move(bytes));
  addTensor(std::move(name), type, std::move(ne),
            [shared](std::span<std::byte> dst, uint64_t offset) {
              std::memcpy(dst.data(), shared->data() + offset, dst.size());
            });
}

namespace {

// The header (everything before the data section, padded) for the given metadata and tensors.
template <typename Tensors>
std::vector<std::byte> buildHeader(uint32_t version, uint64_t alignment,
                                   std::vector<std::pair<std::string, Value>> kv,
                                   const Tensors& tensors) {
  auto setKv = [&](const std::string& key, Value v) {
    for (auto& [k, old] : kv)
      if (k == key) {
        old = std::move(v);
        return;
      }
    kv.emplace_back(key, std::move(v));
  };
  if (alignment != 32) setKv("general.alignment", Value{static_cast<uint32_t>(alignment)});
  // Name tern's own type ids so that other tools can tell what they mean.
  std::set<uint32_t> ternIds;
  for (const auto& t : tensors)
    if (static_cast<uint32_t>(t.type) >= kFirstTernTypeId)
      ternIds.insert(static_cast<uint32_t>(t.type));
  if (!ternIds.empty()) {
    Array a{ValueType::String, {}};
    for (uint32_t id : ternIds) a.items.push_back(Value{std::string(tensorTypeName(static_cast<TensorType>(id)))});
    setKv("tern.tensor_types", Value{std::move(a)});
  }

  Bytes b;
  b.put<uint32_t>(kMagic);
  b.put<uint32_t>(version);
  b.put<uint64_t>(tensors.size());
  b.put<uint64_t>(kv.size());
  for (const auto& [key, v] : kv) {
    b.putString(key);
    b.put<uint32_t>(static_cast<uint32_t>(v.type()));
    b.putValue(v);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    b.putString(t.name);
    b.put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (uint64_t n : t.ne) b.put<uint64_t>(n);
    b.put<uint32_t>(static_cast<uint32_t>(t.type));
    b.put<uint64_t>(offset);
    offset += alignUp(t.nbytes, alignment);
  }
  b.padTo(alignment);
  return b.data();
}

}  // namespace

uint64_t Writer::totalBytes() const {
  uint64_t n = buildHeader(version_, alignment_, kv_, tensors_).size();
  for (const auto& t : tensors_) n += alignUp(t.nbytes, alignment_);
  return n;
}

void Writer::stream(const ByteSink& out, size_t chunkBytes) const {
  if (chunkBytes == 0) throw std::invalid_argument("gguf writer: chunkBytes must be > 0");
  const std::vector<std::byte> header = buildHeader(version_, alignment_, kv_, tensors_);
  out(std::span<const std::byte>(header));
  std::vector<std::byte> buf;
  const std::vector<std::byte> zeros(alignment_, std::byte{0});
  for (const auto& t : tensors_) {
    buf.resize(static_cast<size_t>(std::min<uint64_t>(chunkBytes, t.nbytes)));
    for (uint64_t off = 0; off < t.nbytes;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), t.nbytes - off));
      t.produce(std::span<std::byte>(buf.data(), n), off);
      out(std::span<const std::byte>(buf.data(), n));
      off += n;
    }
    const auto pad = static_cast<size_t>(alignUp(t.nbytes, alignment_) - t.nbytes);
    if (pad) out(std::span<const std::byte>(zeros.data(), pad));
  }
}

void Writer::write(const std::string& path, const Progress& progress, size_t chunkBytes) const {
  if (chunkBytes == 0) throw std::invalid_argument("gguf writer: chunkBytes must be > 0");
  const uint64_t total = totalBytes();
  const std::string tmp = path + ".tmp";
  std::FILE* out = std::fopen(tmp.c_str(), "wb");
  if (!out) throw std::runtime_error(tmp + ": cannot create: " + std::strerror(errno));
  uint64_t done = 0;
  try {
    if (progress) progress(done, total);
    stream([&](std::span<const std::byte> b) {
      if (!b.empty() && std::fwrite(b.data(), 1, b.size(), out) != b.size())
        throw std::runtime_error(tmp + ": write failed: " + std::strerror(errno));
      done += b.size();
      if (progress) progress(done, total);
    }, chunkBytes);
    if (std::fflush(out) != 0)
      throw std::runtime_error(tmp + ": write failed: " + std::strerror(errno));
  } catch (...) {
    std::fclose(out);
    std::remove(tmp.c_str());
    throw;
  }
  if (std::fclose(out) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(tmp + ": close failed: " + std::strerror(errno));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot rename from " + tmp + ": " + ec.message());
  }
}

}  // namespace tern::gguf
