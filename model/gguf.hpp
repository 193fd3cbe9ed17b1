// GGUF container: reader (memory-mapped tensor data) and streaming writer.
//
// ref: GGUF v2/v3 as written by ggml/llama.cpp (described in ../shared/docs/formats.md).
// File layout (little endian):
//   magic "GGUF" | u32 version (2 or 3) | u64 n_tensors | u64 n_kv
//   n_kv x { string key | u32 value_type | value }
//   n_tensors x { string name | u32 n_dims | n_dims x u64 ne | u32 tensor_type | u64 offset }
//   padding to `general.alignment` (default 32)
//   tensor data; each tensor's offset is relative to the start of the data section and aligned.
// A string is { u64 length | bytes } (not NUL-terminated). An array is
// { u32 elem_type | u64 count | count x value } and may nest.
#pragma once

#include "model/tensor_type.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace tern::gguf {

// Every problem with a file's contents. what() is one line: "<path>: <problem>".
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class ValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7,
  String = 8, Array = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* valueTypeName(ValueType t);

struct Value;
// A typed array: every item has type `elem` (items of an Array elem are arrays themselves).
struct Array {
  ValueType elem = ValueType::U8;
  std::vector<Value> items;
};

// One metadata value. The variant index order matches nothing on disk; use type().
struct Value {
  std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool, std::string,
               Array, uint64_t, int64_t, double>
      v;

  ValueType type() const;
  // Integer of any integer type (or bool), range-checked into int64; nullopt if not integral
  // or out of range.
  std::optional<int64_t> asInt() const;
  // Float32/64 or any integer, as double; nullopt for strings/arrays.
  std::optional<double> asFloat() const;
  const std::string* asString() const;  // nullptr unless a string
  const Array* asArray() const;         // nullptr unless an array
};

// Shape convention: ne[0] is the contiguous (innermost) dimension, as in ggml.
// A 2-D weight [n_out, n_in] has ne = {n_in, n_out}.
struct TensorInfo {
  std::string name;
  TensorType type = TensorType::F32;
  std::vector<uint64_t> ne;  // 1..4 dims
  uint64_t offset = 0;       // bytes, relative to the data section
  uint64_t nbytes = 0;       // bytes of data (from tensorBytes())
  uint64_t nelements() const;
};

// A read-only GGUF file. Tensor data stays memory-mapped for the lifetime of the File
// (shared_ptr so stages can keep views alive).
class File {
 public:
  // Parses and validates header, metadata and tensor infos; maps the data. Throws FormatError
  // (one line naming the file and the problem) on any malformed input; never allocates more than
  // the file's size would justify.
  static std::shared_ptr<const File> open(const std::string& path);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t fileSize() const { return file_size_; }
  // Absolute offset of the data section: bytes [0, dataOffset()) are header, metadata, tensor
  // directory and padding.
  uint64_t dataOffset() const { return data_offset_; }
  // Bytes [offset, offset + n) of the mapped file. Throws std::out_of_range past its end.
  std::span<const std::byte> bytes(uint64_t offset, uint64_t n) const;

  // Metadata in file order, and lookup by key.
  const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
  const Value* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }
  // Typed getters: throw FormatError naming the key if present with the wrong type;
  // the *Or variants return the default if the key is absent.
  std::string getString(const std::string& key) const;
  std::string getStringOr(const std::string& key, const std::string& def) const;
  int64_t getInt(const std::string& key) const;
  int64_t getIntOr(const std::string& key, int64_t def) const;
  double getFloat(const std::string& key) const;
  double getFloatOr(const std::string& key, double def) const;
  bool getBoolOr(const std::string& key, bool def) const;
  const Array& getArray(const std::string& key) const;
  const Array* findArray(const std::string& key) const;  // nullptr if absent

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* findTensor(const std::string& name) const;
  // Bytes of a tensor's data inside the mapping.
  std::span<const std::byte> data(const TensorInfo& t) const;

  // Error helper: a FormatError whose message is "<path>: <msg>".
  [[noreturn]] void fail(const std::string& msg) const;

 private:
  File() = default;
  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t file_size_ = 0;
  uint64_t data_offset_ = 0;  // absolute offset of the data section
  std::vector<std::pair<std::string, Value>> kv_;
  std::map<std::string, size_t> kv_index_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
  const std::byte* map_ = nullptr;
  size_t map_size_ = 0;
  friend struct FileParser;
};

// Streaming writer: declare metadata and tensors first, then write() emits the header and
// asks for each tensor's bytes in order through its producer, chunk by chunk, so a file larger
// than memory can be written. Writes to "<path>.tmp" and renames at the end, so a failed or
// interrupted write never leaves a truncated file under the final name.
class Writer {
 public:
  // Called with (dst, offset_in_tensor) to fill dst completely; dst.size() <= chunkBytes.
  using Producer = std::function<void(std::span<std::byte> dst, uint64_t offset)>;
  // Progress callback: bytes written so far, total bytes.
  using Progress = std::function<void(uint64_t done, uint64_t total)>;

  explicit Writer(uint32_t version = 3, uint64_t alignment = 32);

  void set(const std::string& key, Value v);  // replaces an existing key, keeps first position
  void setString(const std::string& key, std::string s);
  void setU32(const std::string& key, uint32_t x);
  void setI32(const std::string& key, int32_t x);
  void setF32(const std::string& key, float x);
  void setBool(const std::string& key, bool x);
  void setStringArray(const std::string& key, std::vector<std::string> items);
  void setF32Array(const std::string& key, std::vector<float> items);
  void setI32Array(const std::string& key, std::vector<int32_t> items);

  // Adds a tensor whose bytes come from `produce`. Size is tensorBytes(type, ne); throws
  // std::invalid_argument for a shape the type cannot hold.
  void addTensor(std::string name, TensorType type, std::vector<uint64_t> ne, Producer produce);
  // Convenience: copies `bytes` (must be exactly the tensor's size) when written.
  void addTensorBytes(std::string name, TensorType type, std::vector<uint64_t> ne,
                      std::vector<std::byte> bytes);

  uint64_t totalBytes() const;  // the exact size of the file write() will produce
  // Emits the file's bytes in order through `out` (chunks of at most chunkBytes; the header may
  // come as one larger piece), for streaming a file to another process.
  using ByteSink = std::function<void(std::span<const std::byte> bytes)>;
  void stream(const ByteSink& out, size_t chunkBytes = 4u << 20) const;
  void write(const std::string& path, const Progress& progress = {},
             size_t chunkBytes = 4u << 20) const;

 private:
  struct PendingTensor {
    std::string name;
    TensorType type;
    std::vector<uint64_t> ne;
    uint64_t nbytes;
    Producer produce;
  };
  uint32_t version_;
  uint64_t alignment_;
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<PendingTensor> tensors_;
};

}  // namespace tern::gguf
