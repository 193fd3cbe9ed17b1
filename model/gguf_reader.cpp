// GGUF reader: validates the whole header against the file's size before trusting any count,
// then keeps the file memory-mapped for the tensor data.
#include "model/gguf.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <numeric>
#include <stdexcept>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace tern::gguf {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr size_t kHeaderBytes = 24;      // magic, version, n_tensors, n_kv
constexpr int kMaxArrayDepth = 16;
constexpr int kMaxDims = 4;
// Smallest possible encodings, used to bound counts by the bytes left.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // empty key, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // empty name, 1 dim, type, offset

// A name or key made safe for a one-line message: control and non-ASCII bytes escaped, long
// strings cut.
std::string quoted(std::string_view s) {
  static const char* kHex = "0123456789abcdef";
  std::string out = "'";
  size_t n = 0;
  for (unsigned char c : s) {
    if (++n > 120) {
      out += "...";
      break;
    }
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out + "'";
}

std::string shapeString(const std::vector<uint64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

size_t scalarSize(ValueType t) {
  switch (t) {
    case ValueType::U8: case ValueType::I8: case ValueType::Bool: return 1;
    case ValueType::U16: case ValueType::I16: return 2;
    case ValueType::U32: case ValueType::I32: case ValueType::F32: return 4;
    case ValueType::U64: case ValueType::I64: case ValueType::F64: return 8;
    case ValueType::String: case ValueType::Array: return 0;
  }
  return 0;
}

bool knownValueType(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::F64); }

}  // namespace

struct FileParser {
  File& f;
  const std::byte* p = nullptr;
  uint64_t size = 0;
  uint64_t pos = 0;
  std::string ctx;  // what is being read, for truncation messages

  uint64_t left() const { return size - pos; }

  void need(uint64_t n, const char* what) {
    if (n > left())
      f.fail("file truncated in " + ctx + ": " + what + " needs " + std::to_string(n) +
             " bytes at offset " + std::to_string(pos) + ", only " + std::to_string(left()) +
             " left");
  }

  template <typename X>
  X read(const char* what) {
    need(sizeof(X), what);
    X x;
    std::memcpy(&x, p + pos, sizeof(X));
    pos += sizeof(X);
    return x;
  }

  std::string readString(const char* what) {
    uint64_t len = read<uint64_t>(what);
    if (len > left())
      f.fail("string length " + std::to_string(len) + " in " + ctx + " exceeds the " +
             std::to_string(left()) + " bytes left in the file");
    std::string s(reinterpret_cast<const char*>(p + pos), len);
    pos += len;
    return s;
  }

  Value readValue(ValueType t, int depth) {
    Value v;
    switch (t) {
      case ValueType::U8: v.v = read<uint8_t>("u8 value"); break;
      case ValueType::I8: v.v = read<int8_t>("i8 value"); break;
      case ValueType::U16: v.v = read<uint16_t>("u16 value"); break;
      case ValueType::I16: v.v = read<int16_t>("i16 value"); break;
      case ValueType::U32: v.v = read<uint32_t>("u32 value"); break;
      case ValueType::I32: v.v = read<int32_t>("i32 value"); break;
      case ValueType::F32: v.v = read<float>("f32 value"); break;
      case ValueType::U64: v.v = read<uint64_t>("u64 value"); break;
      case ValueType::I64: v.v = read<int64_t>("i64 value"); break;
      case ValueType::F64: v.v = read<double>("f64 value"); break;
      case ValueType::Bool: {
        auto b = read<uint8_t>("bool value");
        if (b > 1) f.fail("bool value " + std::to_string(b) + " (not 0 or 1) in " + ctx);
        v.v = b != 0;
        break;
      }
      case ValueType::String: v.v = readString("string length"); break;
      case ValueType::Array: v.v = readArray(depth + 1); break;
    }
    return v;
  }

  Array readArray(int depth) {
    if (depth > kMaxArrayDepth)
      f.fail("arrays nested deeper than " + std::to_string(kMaxArrayDepth) + " levels in " + ctx);
    auto elem = read<uint32_t>("array element type");
    if (!knownValueType(elem))
      f.fail("unknown array element type " + std::to_string(elem) + " in " + ctx);
    Array a;
    a.elem = static_cast<ValueType>(elem);
    auto count = read<uint64_t>("array count");
    uint64_t minBytes = a.elem == ValueType::String  ? 8
                        : a.elem == ValueType::Array ? 12
                                                     : scalarSize(a.elem);
    if (count > left() / minBytes)
      f.fail("array count " + std::to_string(count) + " of " + valueTypeName(a.elem) + " in " +
             ctx + " cannot fit in the " + std::to_string(left()) + " bytes left");
    a.items.reserve(count);
    for (uint64_t i = 0; i < count; ++i) a.items.push_back(readValue(a.elem, depth));
    return a;
  }

  void parse() {
    size = f.file_size_;
    if (size < 4)
      f.fail("file too small for a GGUF header (" + std::to_string(size) + " bytes)");
    ctx = "the header";
    auto magic = read<uint32_t>("magic");
    if (magic != kMagic) {
      char hex[16];
      std::snprintf(hex, sizeof hex, "0x%08x", magic);
      f.fail(std::string("bad magic ") + hex + " (not a GGUF file)");
    }
    if (size < kHeaderBytes)
      f.fail("file too small for a GGUF header (" + std::to_string(size) + " bytes)");
    auto version = read<uint32_t>("version");
    if (version == 1)
      f.fail("GGUF version 1 is not supported (only versions 2 and 3)");
    if (version == 0x02000000 || version == 0x03000000)
      f.fail("big-endian GGUF files are not supported");
    if (version != 2 && version != 3)
      f.fail("unsupported GGUF version " + std::to_string(version) + " (only 2 and 3)");
    f.version_ = version;
    auto nTensors = read<uint64_t>("n_tensors");
    auto nKv = read<uint64_t>("n_kv");
    if (nKv > left() / kMinKvBytes)
      f.fail("n_kv " + std::to_string(nKv) + " is more key/value pairs than the " +
             std::to_string(size) + "-byte file can hold");
    if (nTensors > left() / kMinTensorInfoBytes)
      f.fail("n_tensors " + std::to_string(nTensors) + " is more tensors than the " +
             std::to_string(size) + "-byte file can hold");

    f.kv_.reserve(nKv);
    for (uint64_t i = 0; i < nKv; ++i) {
      ctx = "metadata key #" + std::to_string(i);
      std::string key = readString("key length");
      ctx = "metadata key " + quoted(key);
      auto type = read<uint32_t>("value type");
      if (!knownValueType(type))
        f.fail("unknown value type " + std::to_string(type) + " for " + ctx);
      Value v = readValue(static_cast<ValueType>(type), 0);
      if (!f.kv_index_.emplace(key, f.kv_.size()).second)
        f.fail("duplicate metadata key " + quoted(key));
      f.kv_.emplace_back(std::move(key), std::move(v));
    }

    if (const Value* a = f.find("general.alignment")) {
      if (a->type() != ValueType::U32)
        f.fail(std::string("general.alignment has type ") + valueTypeName(a->type()) +
               ", expected u32");
      uint32_t al = std::get<uint32_t>(a->v);
      if (al == 0 || (al & (al - 1)) != 0)
        f.fail("general.alignment " + std::to_string(al) + " is not a non-zero power of two");
      f.alignment_ = al;
    }

    f.tensors_.reserve(nTensors);
    for (uint64_t i = 0; i < nTensors; ++i) {
      ctx = "tensor info #" + std::to_string(i);
      TensorInfo t;
      t.name = readString("name length");
      ctx = "tensor info " + quoted(t.name);
      const std::string q = quoted(t.name);
      auto nDims = read<uint32_t>("n_dims");
      if (nDims < 1 || nDims > kMaxDims)
        f.fail("tensor " + q + " has n_dims " + std::to_string(nDims) + " (must be 1..4)");
      t.ne.resize(nDims);
      uint64_t n = 1;
      bool overflow = false;
      for (uint32_t d = 0; d < nDims; ++d) {
        t.ne[d] = read<uint64_t>("ne");
        if (t.ne[d] == 0)
          f.fail("tensor " + q + " has a zero dimension (ne[" + std::to_string(d) + "] = 0)");
        overflow = overflow || __builtin_mul_overflow(n, t.ne[d], &n);
      }
      if (overflow || n > static_cast<uint64_t>(INT64_MAX))
        f.fail("tensor " + q + " element count overflows (shape " + shapeString(t.ne) + ")");
      auto typeId = read<uint32_t>("tensor type");
      const TensorTypeTraits* tr = tensorTypeTraits(typeId);
      if (!tr)
        f.fail("unknown tensor type id " + std::to_string(typeId) + " for tensor " + q);
      t.type = tr->type;
      t.offset = read<uint64_t>("offset");
      if (t.offset % f.alignment_ != 0)
        f.fail("tensor " + q + " data offset " + std::to_string(t.offset) +
               " is not a multiple of the alignment " + std::to_string(f.alignment_));
      if (t.type != TensorType::TL1 && t.type != TensorType::TL2) {
        auto bytes = tensorBytes(t.type, t.ne);
        if (!bytes) {
          std::string why = t.type == TensorType::I2_S ? "element count must be a multiple of 4"
                            : t.ne[0] % tr->blockElems != 0
                                ? "ne[0] must be a multiple of " + std::to_string(tr->blockElems)
                                : "byte size overflows";
          f.fail("tensor " + q + " of type " + tr->name + " cannot have shape " +
                 shapeString(t.ne) + " (" + why + ")");
        }
        t.nbytes = *bytes;
      }
      if (!f.tensor_index_.emplace(t.name, f.tensors_.size()).second)
        f.fail("duplicate tensor name " + q);
      f.tensors_.push_back(std::move(t));
    }

    // The data section starts at the next multiple of the alignment.
    uint64_t dataOffset = pos + (f.alignment_ - pos % f.alignment_) % f.alignment_;
    f.data_offset_ = dataOffset;
    if (f.tensors_.empty()) return;
    if (dataOffset > size)
      f.fail("data section would start at offset " + std::to_string(dataOffset) +
             ", past the end of the file (" + std::to_string(size) + " bytes)");
    uint64_t dataSize = size - dataOffset;

    std::vector<size_t> order(f.tensors_.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return f.tensors_[a].offset < f.tensors_[b].offset;
    });
    uint64_t prevEnd = 0;
    const TensorInfo* prev = nullptr;
    for (size_t k = 0; k < order.size(); ++k) {
      TensorInfo& t = f.tensors_[order[k]];
      const std::string q = quoted(t.name);
      if (t.offset > dataSize)
        f.fail("tensor " + q + " data offset " + std::to_string(t.offset) +
               " is past the end of the file (data section holds " + std::to_string(dataSize) +
               " bytes)");
      if (t.type == TensorType::TL1 || t.type == TensorType::TL2) {
        // Shape-specific layout: the tensor owns the bytes up to the next tensor or the end.
        uint64_t end = k + 1 < order.size() ? f.tensors_[order[k + 1]].offset : dataSize;
        if (end > dataSize) end = dataSize;
        t.nbytes = end - t.offset;
        if (t.nbytes == 0) f.fail("tensor " + q + " of type " + tensorTypeName(t.type) + " has no data");
      }
      if (t.nbytes > dataSize - t.offset)
        f.fail("tensor " + q + " data [" + std::to_string(t.offset) + ", +" +
               std::to_string(t.nbytes) + ") runs past the end of the file (data section holds " +
               std::to_string(dataSize) + " bytes)");
      if (prev && t.offset < prevEnd)
        f.fail("tensor " + q + " data at offset " + std::to_string(t.offset) +
               " overlaps tensor " + quoted(prev->name) + " (ends at " + std::to_string(prevEnd) +
               ")");
      prevEnd = t.offset + t.nbytes;
      prev = &t;
    }
  }
};

std::shared_ptr<const File> File::open(const std::string& path) {
  std::shared_ptr<File> f(new File());
  f->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) f->fail(std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    f->fail("not a regular file");
  }
  f->file_size_ = static_cast<uint64_t>(st.st_size);
  if (f->file_size_ > 0) {
    void* m = ::mmap(nullptr, f->file_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    ::close(fd);
    if (m == MAP_FAILED) f->fail(std::string("cannot map: ") + std::strerror(err));
    f->map_ = static_cast<const std::byte*>(m);
    f->map_size_ = f->file_size_;
  } else {
    ::close(fd);
  }
  FileParser parser{*f, f->map_, 0, 0, {}};
  parser.parse();
  return f;
}

File::~File() {
  if (map_) ::munmap(const_cast<std::byte*>(map_), map_size_);
}

void File::fail(const std::string& msg) const { throw FormatError(path_ + ": " + msg); }

const Value* File::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

namespace {

const Value& require(const File& f, const std::string& key) {
  const Value* v = f.find(key);
  if (!v) f.fail("missing metadata key " + quoted(key));
  return *v;
}

[[noreturn]] void wrongType(const File& f, const std::string& key, const Value& v,
                            const char* expected) {
  f.fail("metadata key " + quoted(key) + " has type " + valueTypeName(v.type()) + ", expected " +
         expected);
}

int64_t toInt(const File& f, const std::string& key, const Value& v) {
  if (auto i = v.asInt(); i && v.type() != ValueType::Bool) return *i;
  if (v.type() == ValueType::U64)
    f.fail("metadata key " + quoted(key) + " value " + std::to_string(std::get<uint64_t>(v.v)) +
           " is out of range");
  wrongType(f, key, v, "an integer");
}

double toFloat(const File& f, const std::string& key, const Value& v) {
  if (auto d = v.asFloat()) return *d;
  wrongType(f, key, v, "a number");
}

}  // namespace

std::string File::getString(const std::string& key) const {
  const Value& v = require(*this, key);
  if (const auto* s = v.asString()) return *s;
  wrongType(*this, key, v, "string");
}

std::string File::getStringOr(const std::string& key, const std::string& def) const {
  return has(key) ? getString(key) : def;
}

int64_t File::getInt(const std::string& key) const {
  return toInt(*this, key, require(*this, key));
}

int64_t File::getIntOr(const std::string& key, int64_t def) const {
  const Value* v = find(key);
  return v ? toInt(*this, key, *v) : def;
}

double File::getFloat(const std::string& key) const {
  return toFloat(*this, key, require(*this, key));
}

double File::getFloatOr(const std::string& key, double def) const {
  const Value* v = find(key);
  return v ? toFloat(*this, key, *v) : def;
}

bool File::getBoolOr(const std::string& key, bool def) const {
  const Value* v = find(key);
  if (!v) return def;
  if (const auto* b = std::get_if<bool>(&v->v)) return *b;
  wrongType(*this, key, *v, "bool");
}

const Array& File::getArray(const std::string& key) const {
  const Value& v = require(*this, key);
  if (const auto* a = v.asArray()) return *a;
  wrongType(*this, key, v, "array");
}

const Array* File::findArray(const std::string& key) const {
  const Value* v = find(key);
  if (!v) return nullptr;
  if (const auto* a = v->asArray()) return a;
  wrongType(*this, key, *v, "array");
}

const TensorInfo* File::findTensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> File::bytes(uint64_t offset, uint64_t n) const {
  if (offset > map_size_ || n > map_size_ - offset) {
    throw std::out_of_range(path_ + ": bytes [" + std::to_string(offset) + ", +" +
                            std::to_string(n) + ") are past the end of the file");
  }
  return {map_ + offset, static_cast<size_t>(n)};
}

std::span<const std::byte> File::data(const TensorInfo& t) const {
  return {map_ + data_offset_ + t.offset, static_cast<size_t>(t.nbytes)};
}

}  // namespace tern::gguf
