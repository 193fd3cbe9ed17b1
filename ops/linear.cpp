#include "ops/linear.hpp"

#include "kernels/f16.hpp"
#include "kernels/gemm_tl3.hpp"
#include "kernels/t2.hpp"
#include "kernels/weight_formats.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace tern::ops {

namespace {

constexpr uint32_t kRowsPerChunk = 16;  // output rows per parallel work item
// Below this many multiply-adds a matmul runs on the calling thread: a parallel region costs
// more than it saves. Results do not change (every output element has the same arithmetic).
constexpr uint64_t kMinParallelMacs = uint64_t(1) << 18;

std::string shapeText(const std::vector<uint64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

// Row r of a float tensor [rows][k] as fp32.
void floatRow(const gguf::File& file, const gguf::TensorInfo& t, uint64_t r, uint32_t k, float* dst) {
  const std::byte* p = file.data(t).data();
  switch (t.type) {
    case TensorType::F32:
      std::memcpy(dst, p + r * k * 4, size_t(k) * 4);
      return;
    case TensorType::F16:
    case TensorType::BF16:
      for (uint32_t i = 0; i < k; ++i) {
        uint16_t h;
        std::memcpy(&h, p + (r * k + i) * 2, 2);
        dst[i] = t.type == TensorType::F16 ? kernels::fp16ToFp32(h) : kernels::bf16ToFp32(h);
      }
      return;
    default:
      file.fail(t.name + ": not a float tensor");
  }
}

}  // namespace

Linear loadLinear(const gguf::File& file, const std::string& name, uint32_t k, uint32_t nOut,
                  bool int8) {
  const gguf::TensorInfo* t = file.findTensor(name);
  if (!t) file.fail("missing tensor '" + name + "'");
  if (t->ne.size() < 2 || t->ne[0] != k || t->ne[1] != nOut ||
      std::any_of(t->ne.begin() + 2, t->ne.end(), [](uint64_t d) { return d != 1; }))
    file.fail(name + ": shape " + shapeText(t->ne) + ", expected [" + std::to_string(k) + ", " +
              std::to_string(nOut) + "]");
  const std::span<const std::byte> bytes = file.data(*t);
  Linear lin;
  lin.k = k;
  lin.nOut = nOut;
  lin.data = bytes.data();
  lin.bytes = bytes.size();
  size_t elemBytes = 0;
  switch (t->type) {
    case TensorType::TERN_T2: {
      if (bytes.size() != kernels::t2TensorBytes(k, nOut))
        file.fail(name + ": " + std::to_string(bytes.size()) + " bytes, expected " +
                  std::to_string(kernels::t2TensorBytes(k, nOut)) + " for TERN_T2");
      lin.kind = Linear::Kind::T2;
      lin.int8 = int8;
      lin.wScale = kernels::t2ReadTrailer(reinterpret_cast<const uint8_t*>(bytes.data()) +
                                          kernels::t2RowBytes(k) * nOut);
      if (!std::isfinite(lin.wScale)) file.fail(name + ": TERN_T2 scale is not finite");
      return lin;
    }
    case TensorType::TERN_TL3:
      if (int8) {
        if (bytes.size() != kernels::tl3TensorBytes(k, nOut))
          file.fail(name + ": " + std::to_string(bytes.size()) + " bytes, expected " +
                    std::to_string(kernels::tl3TensorBytes(k, nOut)) + " for TERN_TL3");
        const auto* src = reinterpret_cast<const uint8_t*>(bytes.data());
        lin.owned.resize(kernels::tl3InterleavedBytes(k, nOut));
        try {
          lin.wScale = kernels::tl3ReadScale(src, k, nOut);
          kernels::tl3Interleave(src, k, nOut, lin.owned.data());
        } catch (const kernels::WeightFormatError& e) {
          file.fail(name + " (TERN_TL3): " + e.what());
        }
        lin.kind = Linear::Kind::TL3;
        lin.int8 = true;
        lin.data = lin.owned.data();
        return lin;  // lin.bytes: the file's bytes, which is what a token streams
      }
      [[fallthrough]];  // float activations: run on TERN_T2 codes
    case TensorType::I2_S:
    case TensorType::TQ2_0:
    case TensorType::TQ1_0: {
      // Repacked once into the in-memory TERN_T2 layout, written here by the loading thread.
      const auto fmt = *kernels::weightFormatFromGgmlType(static_cast<uint32_t>(t->type));
      const auto& tr = kernels::weightFormat(fmt);
      const auto want = tr.tensorBytes(k, nOut);
      if (!want)
        file.fail(name + ": shape " + shapeText(t->ne) + " cannot be stored as " + tr.name +
                  (fmt == kernels::WeightFormat::I2S ? " (elements must be a multiple of 128)"
                                                     : " (ne0 must be a multiple of 256)"));
      if (bytes.size() != *want)
        file.fail(name + ": " + std::to_string(bytes.size()) + " bytes, expected " +
                  std::to_string(*want) + " for " + tr.name);
      lin.owned.resize(kernels::t2TensorBytes(k, nOut));
      try {
        lin.wScale = kernels::repackToT2(fmt, reinterpret_cast<const uint8_t*>(bytes.data()), k,
                                         nOut, lin.owned.data());
      } catch (const kernels::WeightFormatError& e) {
        file.fail(name + " (" + tr.name + "): " + e.what());
      }
      lin.kind = Linear::Kind::T2;
      lin.int8 = int8;
      lin.data = lin.owned.data();
      lin.bytes = lin.owned.size();
      return lin;
    }
    case TensorType::F32: lin.kind = Linear::Kind::F32; elemBytes = 4; break;
    case TensorType::F16: lin.kind = Linear::Kind::F16; elemBytes = 2; break;
    case TensorType::BF16: lin.kind = Linear::Kind::BF16; elemBytes = 2; break;
    default:
      file.fail(name + ": tensor type " + tensorTypeName(t->type) +
                " is not supported for projections (F32, F16, BF16, TERN_T2, I2_S, TQ2_0, TQ1_0, "
                "TERN_TL3)");
  }
  if (bytes.size() != uint64_t(k) * nOut * elemBytes)
    file.fail(name + ": " + std::to_string(bytes.size()) + " bytes, expected " +
              std::to_string(uint64_t(k) * nOut * elemBytes));
  if (reinterpret_cast<uintptr_t>(bytes.data()) % elemBytes != 0)
    file.fail(name + ": tensor data is not aligned to its element size");
  if (!int8) return lin;

  // Forced int8 on float weights: derive T2 codes, s = max|W|.
  std::vector<float> row(k);
  float s = 0.0f;
  for (uint32_t r = 0; r < nOut; ++r) {
    floatRow(file, *t, r, k, row.data());
    for (float w : row) s = std::max(s, std::fabs(w));
  }
  if (!std::isfinite(s)) file.fail(name + ": weights are not finite");
  const size_t rowBytes = kernels::t2RowBytes(k);
  lin.owned.resize(kernels::t2TensorBytes(k, nOut));
  std::vector<int8_t> codes(k);
  for (uint32_t r = 0; r < nOut; ++r) {
    floatRow(file, *t, r, k, row.data());
    for (uint32_t i = 0; i < k; ++i) {
      const float c = s > 0.0f ? std::nearbyint(row[i] / s) : 0.0f;
      codes[i] = int8_t(std::clamp(c, -1.0f, 1.0f));
    }
    kernels::t2PackRow(codes.data(), k, lin.owned.data() + r * rowBytes);
  }
  kernels::t2WriteTrailer(s, lin.owned.data() + rowBytes * nOut);
  lin.kind = Linear::Kind::T2;
  lin.int8 = true;
  lin.wScale = s;
  lin.data = lin.owned.data();
  lin.bytes = lin.owned.size();
  return lin;
}

void loadOutScale(const gguf::File& file, const std::string& name, Linear& lin) {
  const gguf::TensorInfo* t = file.findTensor(name);
  if (!t) return;
  if (t->type != TensorType::F32 || t->nelements() != 1)
    file.fail(name + ": expected one F32 value");
  floatRow(file, *t, 0, 1, &lin.outScale);
  lin.hasOutScale = true;
}

void applyLinear(const kernels::KernelTable& kt, const Linear& lin, const float* x, uint32_t n,
                 float* y, int threads) {
  const uint32_t k = lin.k, nOut = lin.nOut;
  const int nChunks = int((nOut + kRowsPerChunk - 1) / kRowsPerChunk);
  const bool par = uint64_t(n) * k * nOut >= kMinParallelMacs && threads > 1;
  if (lin.kind == Linear::Kind::TL3) {
    // Quantise, build each token's lookup tables once, then parallel over 64-row groups.
    const size_t qStride = kernels::t2PaddedK(k), tStride = kernels::tl3TableBytes(k);
    std::vector<int8_t> q(qStride * n, 0);
    std::vector<uint8_t> tables(tStride * n);
    std::vector<float> aScale(n);
    std::vector<int32_t> acc(size_t(n) * nOut);
#pragma omp parallel for schedule(static) num_threads(threads) if (par && n > 1)
    for (int t = 0; t < int(n); ++t) {
      int32_t sumQ;
      aScale[t] = kt.quantizeRow(x + size_t(t) * k, k, q.data() + t * qStride, &sumQ);
      kt.tl3Tables(q.data() + t * qStride, k, tables.data() + t * tStride);
    }
    const auto* w = static_cast<const uint8_t*>(lin.data);
    const int nGroups = int(kernels::tl3Groups(nOut));
#pragma omp parallel for schedule(static) num_threads(threads) if (par)
    for (int g = 0; g < nGroups; ++g) {
      const uint32_t r0 = uint32_t(g) * kernels::kTl3GroupRows;
      const uint32_t r1 = std::min(nOut, r0 + kernels::kTl3GroupRows);
      kt.gemmTl3(w, k, nOut, r0, r1, tables.data(), tStride, n, acc.data(), nOut);
    }
    for (uint32_t t = 0; t < n; ++t)
      kt.t2Epilogue(acc.data() + size_t(t) * nOut, nOut, aScale[t], lin.wScale, y + size_t(t) * nOut);
  } else if (lin.kind == Linear::Kind::T2 && lin.int8) {
    const size_t qStride = kernels::t2PaddedK(k);
    std::vector<int8_t> q(qStride * n, 0);
    std::vector<float> aScale(n);
    std::vector<int32_t> acc(size_t(n) * nOut);
#pragma omp parallel for schedule(static) num_threads(threads) if (par && n > 1)
    for (int t = 0; t < int(n); ++t) {
      int32_t sumQ;
      aScale[t] = kt.quantizeRow(x + size_t(t) * k, k, q.data() + t * qStride, &sumQ);
    }
    const auto* w = static_cast<const uint8_t*>(lin.data);
#pragma omp parallel for schedule(static) num_threads(threads) if (par)
    for (int c = 0; c < nChunks; ++c) {
      const uint32_t r0 = uint32_t(c) * kRowsPerChunk, r1 = std::min(nOut, r0 + kRowsPerChunk);
      kt.gemmT2(w, k, r0, r1, q.data(), qStride, n, acc.data(), nOut);
    }
    for (uint32_t t = 0; t < n; ++t)
      kt.t2Epilogue(acc.data() + size_t(t) * nOut, nOut, aScale[t], lin.wScale, y + size_t(t) * nOut);
  } else {
#pragma omp parallel for schedule(static) num_threads(threads) if (par)
    for (int c = 0; c < nChunks; ++c) {
      const uint32_t r0 = uint32_t(c) * kRowsPerChunk, r1 = std::min(nOut, r0 + kRowsPerChunk);
      switch (lin.kind) {
        case Linear::Kind::T2:
          kt.matmulT2Float(static_cast<const uint8_t*>(lin.data), k, lin.wScale, r0, r1, x, k, n, y, nOut);
          break;
        case Linear::Kind::F32:
          kt.matmulF32(static_cast<const float*>(lin.data), k, r0, r1, x, k, n, y, nOut);
          break;
        case Linear::Kind::F16:
          kt.matmulF16(static_cast<const uint16_t*>(lin.data), k, r0, r1, x, k, n, y, nOut);
          break;
        case Linear::Kind::BF16:
          kt.matmulBf16(static_cast<const uint16_t*>(lin.data), k, r0, r1, x, k, n, y, nOut);
          break;
        case Linear::Kind::TL3:  // handled above
          break;
      }
    }
  }
  if (lin.hasOutScale)
    for (size_t i = 0; i < size_t(n) * nOut; ++i) y[i] *= lin.outScale;
}

}  // namespace tern::ops
