#include "model/gguf.hpp"

#include <array>
#include <cmath>
#include <limits>
#include <type_traits>

namespace tern::gguf {

const char* valueTypeName(ValueType t) {
  switch (t) {
    case ValueType::U8: return "u8";
    case ValueType::I8: return "i8";
    case ValueType::U16: return "u16";
    case ValueType::I16: return "i16";
    case ValueType::U32: return "u32";
    case ValueType::I32: return "i32";
    case ValueType::F32: return "f32";
    case ValueType::Bool: return "bool";
    case ValueType::String: return "string";
    case ValueType::Array: return "array";
    case ValueType::U64: return "u64";
    case ValueType::I64: return "i64";
    case ValueType::F64: return "f64";
  }
  return "unknown";
}

ValueType Value::type() const {
  return std::visit(
      [](const auto& x) -> ValueType {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<X, uint8_t>) return ValueType::U8;
        else if constexpr (std::is_same_v<X, int8_t>) return ValueType::I8;
        else if constexpr (std::is_same_v<X, uint16_t>) return ValueType::U16;
        else if constexpr (std::is_same_v<X, int16_t>) return ValueType::I16;
        else if constexpr (std::is_same_v<X, uint32_t>) return ValueType::U32;
        else if constexpr (std::is_same_v<X, int32_t>) return ValueType::I32;
        else if constexpr (std::is_same_v<X, float>) return ValueType::F32;
        else if constexpr (std::is_same_v<X, bool>) return ValueType::Bool;
        else if constexpr (std::is_same_v<X, std::string>) return ValueType::String;
        else if constexpr (std::is_same_v<X, Array>) return ValueType::Array;
        else if constexpr (std::is_same_v<X, uint64_t>) return ValueType::U64;
        else if constexpr (std::is_same_v<X, int64_t>) return ValueType::I64;
        else return ValueType::F64;
      },
      v);
}

std::optional<int64_t> Value::asInt() const {
  return std::visit(
      [](const auto& x) -> std::optional<int64_t> {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<X, bool>) {
          return x ? 1 : 0;
        } else if constexpr (std::is_same_v<X, uint64_t>) {
          if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
          return static_cast<int64_t>(x);
        } else if constexpr (std::is_integral_v<X>) {
          return static_cast<int64_t>(x);
        } else {
          return std::nullopt;
        }
      },
      v);
}

std::optional<double> Value::asFloat() const {
  return std::visit(
      [](const auto& x) -> std::optional<double> {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<X, bool>) return std::nullopt;
        else if constexpr (std::is_arithmetic_v<X>) return static_cast<double>(x);
        else return std::nullopt;
      },
      v);
}

const std::string* Value::asString() const { return std::get_if<std::string>(&v); }
const Array* Value::asArray() const { return std::get_if<Array>(&v); }

uint64_t TensorInfo::nelements() const {
  uint64_t n = 1;
  for (uint64_t d : ne) n *= d;  // the reader and writer reject shapes that overflow
  return n;
}

}  // namespace tern::gguf
