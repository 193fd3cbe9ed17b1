#include "convert/generate.hpp"

#include "kernels/t2.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

namespace tern::convert {

namespace {

constexpr uint32_t kMaxLayers = 4096;
constexpr uint32_t kFileTypeTernT2 = 1000;  // general.file_type: "mostly TERN_T2" (tern's id)

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001B3ull;
  return h;
}

// One independent stream per (seed, tensor, row).
struct Rng {
  uint64_t state;
  Rng(uint64_t tensorKey, uint64_t row) : state(tensorKey) {
    state ^= row * 0xD1B54A32D192ED03ull;
    splitmix64(state);
  }
  uint64_t next() { return splitmix64(state); }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  // Marsaglia's polar method; both normals of a pair are used.
  double normal() {
    if (hasSpare) {
      hasSpare = false;
      return spare;
    }
    double u, v, q;
    do {
      u = 2.0 * uniform() - 1.0;
      v = 2.0 * uniform() - 1.0;
      q = u * u + v * v;
    } while (q >= 1.0 || q == 0.0);
    const double m = std::sqrt(-2.0 * std::log(q) / q);
    spare = v * m;
    hasSpare = true;
    return u * m;
  }
  double spare = 0.0;
  bool hasSpare = false;
};

// IEEE binary16, round to nearest even.
uint16_t floatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, a = x & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00u | (a > 0x7F800000u ? 0x200u : 0u));
  if (a >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520: infinity
  if (a < 0x38800000u) {  // below 2^-14: subnormal, units of 2^-24
    float af;
    std::memcpy(&af, &a, 4);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(af * 16777216.0f)));
  }
  uint32_t h = ((((a >> 23) - 127 + 15) << 10) | ((a & 0x7FFFFFu) >> 13));
  const uint32_t rest = a & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float halfToFloat(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0) return (sign ? -1.0f : 1.0f) * std::ldexp(static_cast<float>(m), -24);
  uint32_t x = e == 31 ? (sign | 0x7F800000u | (m << 13)) : (sign | ((e - 15 + 127) << 23) | (m << 13));
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// How one tensor's bytes are made: nRows rows of rowBytes bytes each, then (TERN_T2) a trailer.
struct TensorGen {
  LayoutTensor info;
  uint64_t key = 0;       // stream key from (seed, name)
  uint32_t rowElems = 0;  // ne[0]
  uint64_t nRows = 0;
  uint64_t rowBytes = 0;
  float scale = 0.0f;     // TERN_T2 scale, or the standard deviation of F16 values
  uint32_t zeroBelow = 0;  // TERN_T2: a 15-bit draw below this gives code 0

  void row(uint64_t r, uint8_t* dst, std::vector<int8_t>& codes) const {
    Rng rng(key, r);
    switch (info.type) {
      case TensorType::TERN_T2: {
        codes.resize(rowElems);
        uint32_t i = 0;
        while (i < rowElems) {
          uint64_t bits = rng.next();
          for (int j = 0; j < 4 && i < rowElems; ++j, ++i, bits >>= 16) {
            uint32_t v = static_cast<uint32_t>(bits & 0xFFFFu);
            const int nonZero = (v >> 1) >= zeroBelow;
            codes[i] = static_cast<int8_t>(nonZero * (2 * static_cast<int>(v & 1u) - 1));
          }
        }
        kernels::t2PackRow(codes.data(), rowElems, dst);
        break;
      }
      case TensorType::F16:
        for (uint32_t i = 0; i < rowElems; ++i) {
          uint16_t h = floatToHalf(static_cast<float>(rng.normal() * scale));
          std::memcpy(dst + 2 * i, &h, 2);
        }
        break;
      default:  // F32 norm weights
        for (uint32_t i = 0; i < rowElems; ++i) {
          float v = static_cast<float>(1.0 + 0.05 * rng.normal());
          std::memcpy(dst + 4 * i, &v, 4);
        }
        break;
    }
  }

  // Fills dst with the tensor's bytes [offset, offset + dst.size()).
  void produce(std::span<std::byte> dst, uint64_t offset) const {
    uint8_t* out = reinterpret_cast<uint8_t*>(dst.data());
    const uint64_t end = offset + dst.size(), rowsEnd = nRows * rowBytes;
    if (offset < rowsEnd) {
      const uint64_t r0 = offset / rowBytes, r1 = (std::min(end, rowsEnd) + rowBytes - 1) / rowBytes;
      const auto n = static_cast<int64_t>(r1 - r0);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= 64)
#endif
      for (int64_t j = 0; j < n; ++j) {
        thread_local std::vector<int8_t> codes;
        thread_local std::vector<uint8_t> scratch;
        const uint64_t r = r0 + static_cast<uint64_t>(j);
        const uint64_t b0 = r * rowBytes, b1 = b0 + rowBytes;
        if (b0 >= offset && b1 <= end) {
          row(r, out + (b0 - offset), codes);
        } else {
          scratch.resize(rowBytes);
          row(r, scratch.data(), codes);
          const uint64_t lo = std::max(b0, offset), hi = std::min(b1, end);
          std::memcpy(out + (lo - offset), scratch.data() + (lo - b0), hi - lo);
        }
      }
    }
    if (end > rowsEnd) {  // the TERN_T2 trailer
      uint8_t trailer[kernels::kT2TrailerBytes];
      kernels::t2WriteTrailer(scale, trailer);
      const uint64_t lo = std::max(offset, rowsEnd);
      std::memcpy(out + (lo - offset), trailer + (lo - rowsEnd), end - lo);
    }
  }
};

TensorGen makeGen(const LayoutTensor& t, const Layout& l, uint64_t seed, double z) {
  TensorGen g;
  g.info = t;
  uint64_t s = seed ^ fnv1a(t.name);
  g.key = splitmix64(s);
  g.rowElems = static_cast<uint32_t>(t.ne[0]);
  g.nRows = t.nelements() / t.ne[0];
  switch (t.role) {
    case TensorRole::Projection:
      g.rowBytes = kernels::t2RowBytes(g.rowElems);
      g.scale = halfToFloat(floatToHalf(static_cast<float>(1.0 / std::sqrt((1.0 - z) * double(g.rowElems)))));
      g.zeroBelow = static_cast<uint32_t>(std::lround(z * 32768.0));
      break;
    case TensorRole::Embedding:
    case TensorRole::Output:
      g.rowBytes = 2ull * g.rowElems;
      g.scale = static_cast<float>(3.0 / std::sqrt(double(l.nEmbd)));
      break;
    case TensorRole::Norm:
      g.rowBytes = 4ull * g.rowElems;
      break;
  }
  if (g.rowBytes * g.nRows + (t.type == TensorType::TERN_T2 ? kernels::kT2TrailerBytes : 0) !=
      t.nbytes())
    throw std::logic_error("tern gen: size mismatch for tensor " + t.name);
  return g;
}

void writeHyperparameters(gguf::Writer& w, const Layout& l, const GenOptions& o) {
  const std::string a = archName(l.arch);
  w.setString("general.architecture", a);
  w.setString("general.name", "tern-gen " + l.name);
  w.setU32("general.file_type", kFileTypeTernT2);
  w.setU32(a + ".vocab_size", l.nVocab);
  w.setU32(a + ".context_length", l.nCtx);
  w.setU32(a + ".embedding_length", l.nEmbd);
  w.setU32(a + ".block_count", l.nLayer);
  w.setU32(a + ".feed_forward_length", l.nFf);
  w.setU32(a + ".attention.head_count", l.nHead);
  w.setU32(a + ".attention.head_count_kv", l.nHeadKv);
  w.setU32(a + ".attention.key_length", l.headDim);
  w.setU32(a + ".attention.value_length", l.headDim);
  w.setU32(a + ".rope.dimension_count", l.headDim);
  w.setF32(a + ".rope.freq_base", l.ropeTheta);
  w.setF32(a + ".attention.layer_norm_rms_epsilon", l.normEps);
  w.setString("tern.generator", "tern gen");
  w.set("tern.seed", gguf::Value{o.seed});
  w.setString("tern.layout", l.name);
  w.setF32("tern.zero_fraction", static_cast<float>(o.zeroFraction));
}

}  // namespace

Vocab layoutVocab(const Layout& l, const std::string& dir) {
  if (l.tokenizer == "llama3")
    return llama3VocabFromTiktoken(dir + "/llama3-tokenizer/tokenizer.model", l.nVocab);
  if (l.tokenizer != "llama-spm")
    throw std::logic_error("layout " + l.name + ": unknown tokenizer '" + l.tokenizer + "'");
  auto f = gguf::File::open(dir + "/llama.cpp-vocab/ggml-vocab-llama-spm.gguf");
  Vocab v = Vocab::fromGguf(*f);
  if (v.tokens.size() > l.nVocab)
    throw std::runtime_error(f->path() + ": " + std::to_string(v.tokens.size()) +
                             " tokens, more than the layout's " + std::to_string(l.nVocab));
  if (v.types.empty()) v.types.assign(v.tokens.size(), TokenType::Normal);
  if (v.scores.empty()) v.scores.assign(v.tokens.size(), 0.0f);
  const char* extra[] = {"<pad>", "<mask>"};
  for (size_t i = 0; v.tokens.size() < l.nVocab; ++i) {
    const TokenId id = static_cast<TokenId>(v.tokens.size());
    v.tokens.push_back(i < 2 ? extra[i] : "<extra_" + std::to_string(i) + ">");
    v.scores.push_back(0.0f);
    v.types.push_back(TokenType::UserDefined);
    if (i == 0) v.pad = id;
  }
  return v;
}

GenResult generateModel(const GenOptions& o, const gguf::Writer::Progress& progress) {
  const Layout* base = findLayout(o.layout);
  if (!base)
    throw std::invalid_argument("unknown layout '" + o.layout + "' (valid: " + layoutNames() + ")");
  if (!(o.zeroFraction >= 0.0 && o.zeroFraction <= 0.99))
    throw std::invalid_argument("zero fraction must be in [0, 0.99], got " +
                                std::to_string(o.zeroFraction));
  if (!o.dryRun && o.output.empty()) throw std::invalid_argument("no output file given");
  GenResult res;
  res.layout = *base;
  if (o.nLayer) {
    if (*o.nLayer == 0 || *o.nLayer > kMaxLayers)
      throw std::invalid_argument("layer count must be in [1, " + std::to_string(kMaxLayers) +
                                  "], got " + std::to_string(*o.nLayer));
    res.layout.nLayer = *o.nLayer;
  }
  const Layout& l = res.layout;
  res.size = layoutSize(l);

  gguf::Writer w(3, 32);
  writeHyperparameters(w, l, o);
  layoutVocab(l, o.tokenizerDir).toGguf(w);
  for (const LayoutTensor& t : layoutTensors(l)) {
    auto g = std::make_shared<const TensorGen>(makeGen(t, l, o.seed, o.zeroFraction));
    w.addTensor(t.name, t.type, t.ne,
                [g](std::span<std::byte> dst, uint64_t offset) { g->produce(dst, offset); });
  }
  res.fileBytes = w.totalBytes();
  if (!o.dryRun) w.write(o.output, progress);
  return res;
}

}  // namespace tern::convert
