#include "convert/convert.hpp"

#include "kernels/f16.hpp"
#include "model/config.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <sstream>
#include <stdexcept>

namespace tern::convert {

namespace {

using kernels::WeightFormat;

constexpr const char* kProjSuffixes[] = {".attn_q.weight",    ".attn_k.weight", ".attn_v.weight",
                                         ".attn_output.weight", ".ffn_gate.weight",
                                         ".ffn_up.weight",    ".ffn_down.weight"};

bool isProjection(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return false;
  for (const char* suf : kProjSuffixes) {
    const size_t n = std::strlen(suf);
    if (name.size() > n && name.compare(name.size() - n, n, suf) == 0) return true;
  }
  return false;
}

uint32_t fileTypeOf(WeightFormat f) {
  switch (f) {
    case WeightFormat::T2: return 1000;  // tern's "mostly TERN_T2", as `tern gen` writes
    case WeightFormat::I2S: return 40;
    case WeightFormat::TQ2_0: return 37;
    case WeightFormat::TQ1_0: return 36;
    case WeightFormat::TL3: return 1001;  // tern's "mostly TERN_TL3"
  }
  return 0;
}

std::string fmtFloat(double x) {
  std::ostringstream s;
  s.precision(9);
  s << x;
  return s.str();
}

// Codes [nOut][k] and the scale of one projection.
struct Ternary {
  std::vector<int8_t> codes;
  float scale = 0.0f;
  bool lossy = false;
  std::string note;  // why it is lossy
};

Ternary decodeTernary(const gguf::File& f, const gguf::TensorInfo& t, WeightFormat src, uint32_t k,
                      uint32_t nOut) {
  const auto& tr = kernels::weightFormat(src);
  const auto* p = reinterpret_cast<const uint8_t*>(f.data(t).data());
  Ternary r;
  r.codes.resize(size_t(k) * nOut);
  try {
    r.scale = tr.readScale(p, k, nOut);
    for (uint32_t row = 0; row < nOut; ++row)
      tr.unpackRow(p, k, nOut, row, r.codes.data() + size_t(row) * k);
  } catch (const kernels::WeightFormatError& e) {
    f.fail(t.name + " (" + tr.name + "): " + e.what());
  }
  return r;
}

Ternary decodeFloat(const gguf::File& f, const gguf::TensorInfo& t, uint32_t k, uint32_t nOut) {
  const size_t n = size_t(k) * nOut;
  const std::byte* p = f.data(t).data();
  std::vector<float> w(n);
  for (size_t i = 0; i < n; ++i) {
    if (t.type == TensorType::F32) {
      std::memcpy(&w[i], p + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      w[i] = t.type == TensorType::F16 ? kernels::fp16ToFp32(h) : kernels::bf16ToFp32(h);
    }
    if (!std::isfinite(w[i])) f.fail(t.name + ": weight " + std::to_string(i) + " is not finite");
  }
  Ternary r;
  r.codes.resize(n);
  float s = 0.0f;
  for (float v : w) s = std::max(s, std::fabs(v));
  const bool exact = std::all_of(w.begin(), w.end(), [s](float v) { return v == 0.0f || std::fabs(v) == s; });
  if (exact) {
    r.scale = s;
    for (size_t i = 0; i < n; ++i) r.codes[i] = int8_t(w[i] > 0.0f ? 1 : w[i] < 0.0f ? -1 : 0);
    return r;
  }
  // BitNet b1.58's absmean ternarisation.
  double sum = 0.0;
  for (float v : w) sum += std::fabs(v);
  r.scale = std::max(float(sum / double(n)), 1e-5f);
  for (size_t i = 0; i < n; ++i)
    r.codes[i] = int8_t(std::clamp(std::nearbyint(w[i] / r.scale), -1.0f, 1.0f));
  r.lossy = true;
  r.note = "float weights are not ternary: ternarised with absmean scale " + fmtFloat(r.scale) +
           " (lossy)";
  return r;
}

std::vector<uint8_t> encode(const Ternary& tern, WeightFormat to, uint32_t k, uint32_t nOut) {
  const auto& tr = kernels::weightFormat(to);
  std::vector<uint8_t> out(*tr.tensorBytes(k, nOut), 0);
  for (uint32_t row = 0; row < nOut; ++row)
    tr.packRow(tern.codes.data() + size_t(row) * k, k, nOut, row, out.data());
  tr.writeScale(tern.scale, k, nOut, out.data());
  return out;
}

}  // namespace

WeightFormat parseConvertTarget(const std::string& s) {
  if (auto f = kernels::weightFormatFromName(s)) return *f;
  throw std::invalid_argument("unknown target format '" + s + "' (valid: t2, i2_s, tq2_0, tq1_0, tl3)");
}

ConvertResult convertModel(const ConvertOptions& opts, const gguf::Writer::Progress& progress,
                           const std::function<void(const std::string&)>& warn) {
  if (opts.input.empty()) throw std::invalid_argument("convert: an input file is required (-m)");
  if (opts.output.empty()) throw std::invalid_argument("convert: an output file is required (-o)");
  std::shared_ptr<const gguf::File> file = gguf::File::open(opts.input);
  const gguf::File& f = *file;
  const ModelConfig cfg = ModelConfig::fromGguf(f);
  cfg.validateTensors(f);
  const auto& target = kernels::weightFormat(opts.to);
  const bool bitnet = cfg.arch == Arch::Bitnet || cfg.arch == Arch::BitnetB158;
  if (opts.to == WeightFormat::I2S && !bitnet)
    throw std::invalid_argument(std::string("I2_S is written only for bitnet architectures (type id "
                                            "36 means something else elsewhere); this model is '") +
                                cfg.archKey + "'");

  auto result = std::make_shared<ConvertResult>();
  auto note = [result, &warn](const std::string& line) {
    result->warnings.push_back(line);
    if (warn) warn(line);
  };

  gguf::Writer w(3, f.alignment());
  for (const auto& [key, value] : f.metadata())
    if (key != "general.alignment" && key != "tern.tensor_types") w.set(key, value);
  w.setU32("general.file_type", fileTypeOf(opts.to));

  for (const gguf::TensorInfo& t : f.tensors()) {
    if (!isProjection(t.name)) {
      const auto bytes = f.data(t);
      w.addTensor(t.name, t.type, t.ne, [file, bytes](std::span<std::byte> dst, uint64_t off) {
        std::memcpy(dst.data(), bytes.data() + off, dst.size());
      });
      ++result->copied;
      continue;
    }
    if (t.ne.size() < 2 || t.ne[0] > UINT32_MAX || t.nelements() / t.ne[0] > UINT32_MAX)
      f.fail(t.name + ": not a 2-D projection of supported size");
    const uint32_t k = uint32_t(t.ne[0]), nOut = uint32_t(t.nelements() / t.ne[0]);
    if (!target.tensorBytes(k, nOut)) {
      if (opts.to == WeightFormat::I2S)
        throw std::invalid_argument(t.name + ": " + std::to_string(t.nelements()) +
                                    " elements is not a multiple of 128; I2_S cannot hold it");
      throw std::invalid_argument(t.name + ": ne0 = " + std::to_string(k) +
                                  " is not a multiple of 256; " + target.name + " cannot hold it");
    }
    const auto src = kernels::weightFormatFromGgmlType(static_cast<uint32_t>(t.type));
    if (src) {
      // Fail before writing anything on per-block scales or a bad trailer.
      try {
        const float s = kernels::weightFormat(*src).readScale(
            reinterpret_cast<const uint8_t*>(f.data(t).data()), k, nOut);
        if (!kernels::scaleExact(opts.to, s)) {
          note(t.name + ": scale " + fmtFloat(s) + " is stored as fp16 " +
               fmtFloat(kernels::fp16ToFp32(kernels::fp32ToFp16(s))) + " in " + target.name +
               " (lossy)");
          ++result->lossy;
        }
      } catch (const kernels::WeightFormatError& e) {
        f.fail(t.name + " (" + kernels::weightFormat(*src).name + "): " + e.what());
      }
    } else if (t.type != TensorType::F32 && t.type != TensorType::F16 &&
               t.type != TensorType::BF16) {
      f.fail(t.name + ": tensor type " + tensorTypeName(t.type) + " cannot be converted");
    }
    // Encoded once, on the first chunk, and released after the last.
    auto buf = std::make_shared<std::vector<uint8_t>>();
    const TensorType outType = static_cast<TensorType>(target.ggmlType);
    w.addTensor(t.name, outType, t.ne,
                [file, &t, src, k, nOut, to = opts.to, buf, note, result](std::span<std::byte> dst,
                                                                         uint64_t off) {
                  if (off == 0) {
                    Ternary tern = src ? decodeTernary(*file, t, *src, k, nOut)
                                       : decodeFloat(*file, t, k, nOut);
                    if (tern.lossy) {
                      note(t.name + ": " + tern.note);
                      ++result->lossy;
                    } else if (!src && !kernels::scaleExact(to, tern.scale)) {
                      note(t.name + ": scale " + fmtFloat(tern.scale) + " is stored as fp16 in " +
                           kernels::weightFormat(to).name + " (lossy)");
                      ++result->lossy;
                    }
                    *buf = encode(tern, to, k, nOut);
                  }
                  std::memcpy(dst.data(), buf->data() + off, dst.size());
                  if (off + dst.size() == buf->size()) std::vector<uint8_t>().swap(*buf);
                });
    ++result->converted;
  }
  result->fileBytes = w.totalBytes();
  w.write(opts.output, progress);
  return *result;
}

}  // namespace tern::convert
