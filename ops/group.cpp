#include "ops/group.hpp"

#include "kernels/f16.hpp"
#include "kernels/gemm_tl3.hpp"
#include "kernels/t2.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace tern::ops {

namespace {

// Rows are shared out in units of kUnitRows (a TL3 group), and one kernel call covers at most
// kCallRows rows of one projection: their weights (T2: 160 KiB at k = 2560) stay in L2 while
// every token tile of a prefill batch passes over them.
constexpr uint32_t kUnitRows = kernels::kTl3GroupRows;
constexpr uint32_t kCallRows = 256;
static_assert(kCallRows % kUnitRows == 0);

uint32_t units(uint32_t nOut) { return (nOut + kUnitRows - 1) / kUnitRows; }

// Rows [r0, r1) of one projection for all n tokens.
void runRows(const kernels::KernelTable& kt, const Projection& p, const GroupInput& in, int32_t* acc,
             uint32_t r0, uint32_t r1) {
  const uint32_t n = in.n, k = in.k, nOut = p.nOut();
  float* y = p.y;
  if (p.q8) {
    kt.gemmQ8(p.q8->weights(), k, r0, r1, in.q.data(), in.qStride, n, acc, nOut);
    for (uint32_t t = 0; t < n; ++t) {
      const int32_t* a = acc + size_t(t) * nOut;
      float* yt = y + size_t(t) * nOut;
      const float as = in.aScale[t];
      for (uint32_t r = r0; r < r1; ++r) yt[r] = float(a[r]) / as * p.q8->rowScale[r];
    }
    return;
  }
  const Linear& lin = *p.lin;
  const bool integer = lin.kind == Linear::Kind::TL3 || (lin.kind == Linear::Kind::T2 && lin.int8);
  if (integer) {
    const auto* w = static_cast<const uint8_t*>(lin.data);
    if (lin.kind == Linear::Kind::TL3)
      kt.gemmTl3(w, k, nOut, r0, r1, in.tables.data(), in.tStride, n, acc, nOut);
    else
      kt.gemmT2(w, k, r0, r1, in.q.data(), in.qStride, n, acc, nOut);
    for (uint32_t t = 0; t < n; ++t)
      kt.t2Epilogue(acc + size_t(t) * nOut + r0, r1 - r0, in.aScale[t], lin.wScale, y + size_t(t) * nOut + r0);
  } else {
    switch (lin.kind) {
      case Linear::Kind::T2:
        kt.matmulT2Float(static_cast<const uint8_t*>(lin.data), k, lin.wScale, r0, r1, in.x, k, n, y, nOut);
        break;
      case Linear::Kind::F32:
        kt.matmulF32(static_cast<const float*>(lin.data), k, r0, r1, in.x, k, n, y, nOut);
        break;
      case Linear::Kind::F16:
        kt.matmulF16(static_cast<const uint16_t*>(lin.data), k, r0, r1, in.x, k, n, y, nOut);
        break;
      case Linear::Kind::BF16:
        kt.matmulBf16(static_cast<const uint16_t*>(lin.data), k, r0, r1, in.x, k, n, y, nOut);
        break;
      default:
        break;  // integer kinds handled above
    }
  }
  if (lin.hasOutScale)
    for (uint32_t t = 0; t < n; ++t)
      for (uint32_t r = r0; r < r1; ++r) y[size_t(t) * nOut + r] *= lin.outScale;
}

}  // namespace

HeadQ8 quantizeHeadQ8(const Linear& lin, int threads) {
  if (lin.kind != Linear::Kind::F32 && lin.kind != Linear::Kind::F16 && lin.kind != Linear::Kind::BF16)
    throw std::invalid_argument("int8 head: the head must be F32, F16 or BF16");
  HeadQ8 h;
  h.k = lin.k;
  h.nOut = lin.nOut;
  h.w = HugeBuffer(size_t(lin.k) * lin.nOut);
  h.rowScale.resize(lin.nOut);
  const uint32_t k = lin.k;
  bool finite = true;
#pragma omp parallel num_threads(std::max(threads, 1)) reduction(&& : finite)
  {
    std::vector<float> row(k);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < int64_t(lin.nOut); ++r) {
      for (uint32_t i = 0; i < k; ++i) {
        const size_t at = size_t(r) * k + i;
        switch (lin.kind) {
          case Linear::Kind::F32: row[i] = static_cast<const float*>(lin.data)[at]; break;
          case Linear::Kind::F16: row[i] = kernels::fp16ToFp32(static_cast<const uint16_t*>(lin.data)[at]); break;
          default: row[i] = kernels::bf16ToFp32(static_cast<const uint16_t*>(lin.data)[at]); break;
        }
      }
      float m = 0.0f;
      for (float v : row) m = std::max(m, std::fabs(v));
      if (!std::isfinite(m)) finite = false;
      const float s = m / 127.0f;
      h.rowScale[r] = s;
      int8_t* dst = reinterpret_cast<int8_t*>(h.w.data()) + size_t(r) * k;
      for (uint32_t i = 0; i < k; ++i)
        dst[i] = s > 0.0f ? int8_t(std::clamp(std::nearbyint(row[i] / s), -127.0f, 127.0f)) : int8_t(0);
    }
  }
  if (!finite) throw std::invalid_argument("int8 head: weights are not finite");
  return h;
}

void GroupInput::reserve(uint32_t nTok, uint32_t kIn, bool needInt8, bool needTl3) {
  n = nTok;
  k = kIn;
  int8 = needInt8 || needTl3;
  tl3 = needTl3;
  if (int8) {
    qStride = std::max<size_t>(kernels::t2PaddedK(k), kernels::tl3PaddedK(k));
    q.assign(qStride * n, 0);  // padding stays zero
    aScale.resize(n);
  }
  if (tl3) {
    tStride = kernels::tl3TableBytes(k);
    tables.resize(tStride * n);
  }
}

size_t groupAccElems(std::span<const Projection> group, uint32_t n) {
  size_t rows = 0;
  for (const Projection& p : group) rows += p.nOut();
  return rows * n;
}

void prepareInput(const kernels::KernelTable& kt, GroupInput& in, const Team& team) {
  if (!in.int8) return;
  const auto [t0, t1] = team.share(in.n);
  for (uint32_t t = t0; t < t1; ++t) {
    int32_t sumQ;
    int8_t* q = in.q.data() + t * in.qStride;
    in.aScale[t] = kt.quantizeRow(in.x + size_t(t) * in.k, in.k, q, &sumQ);
    if (in.tl3) kt.tl3Tables(q, in.k, in.tables.data() + t * in.tStride);
  }
}

void runGroup(const kernels::KernelTable& kt, std::span<const Projection> group, const GroupInput& in,
              int32_t* acc, const Team& team, std::atomic<uint32_t>* next) {
  uint32_t total = 0;
  for (const Projection& p : group) total += units(p.nOut());
  if (next) {
    // Pieces never straddle two projections: piece boundaries are unit boundaries of each.
    const uint32_t per = in.n == 1 ? kCallRows / kUnitRows : 1;  // units per claimed piece
    std::vector<uint32_t> first;  // first piece of each projection
    uint32_t pieces = 0;
    for (const Projection& p : group) {
      first.push_back(pieces);
      pieces += (units(p.nOut()) + per - 1) / per;
    }
    for (uint32_t c = next->fetch_add(1, std::memory_order_relaxed); c < pieces;
         c = next->fetch_add(1, std::memory_order_relaxed)) {
      size_t j = first.size() - 1;
      while (first[j] > c) --j;
      size_t accOff = 0;
      for (size_t i = 0; i < j; ++i) accOff += size_t(group[i].nOut()) * in.n;
      const uint32_t nOut = group[j].nOut();
      const uint32_t r0 = (c - first[j]) * per * kUnitRows;
      runRows(kt, group[j], in, acc + accOff, r0, std::min(nOut, r0 + per * kUnitRows));
    }
    return;
  }
  const auto [u0, u1] = team.share(total);
  uint32_t base = 0;  // first unit of projection j
  size_t accOff = 0;
  for (const Projection& p : group) {
    const uint32_t nOut = p.nOut(), nu = units(nOut);
    const uint32_t b = std::max(u0, base), e = std::min(u1, base + nu);
    for (uint32_t u = b; u < e; u += kCallRows / kUnitRows) {
      const uint32_t r0 = (u - base) * kUnitRows;
      const uint32_t r1 = std::min({nOut, (e - base) * kUnitRows, r0 + kCallRows});
      runRows(kt, p, in, acc + accOff, r0, r1);
    }
    base += nu;
    accOff += size_t(nOut) * in.n;
  }
}

void applyGroup(const kernels::KernelTable& kt, std::span<const Projection> group, const float* x,
                uint32_t n, uint32_t k, int threads, bool dynamic) {
  GroupInput in;
  bool int8 = false, tl3 = false;
  for (const Projection& p : group) {
    int8 = int8 || p.int8();
    tl3 = tl3 || (p.lin && p.lin->kind == Linear::Kind::TL3);
  }
  in.reserve(n, k, int8, tl3);
  in.x = x;
  std::vector<int32_t> acc(groupAccElems(group, n));
  std::atomic<uint32_t> next{0};
#pragma omp parallel num_threads(std::max(threads, 1))
  {
    const Team team{omp_get_thread_num(), omp_get_num_threads()};
    prepareInput(kt, in, team);
#pragma omp barrier
    runGroup(kt, group, in, acc.data(), team, dynamic ? &next : nullptr);
  }
}

}  // namespace tern::ops
