// TERN_TL3 vs TERN_T2 GEMV micro-benchmark (not a test): run directly. For every kernel variant
// this CPU supports and the 2B4T projection shapes, times one token's integer GEMV streamed from
// DRAM (rotating over enough copies of the weights to exceed the last-level cache), on 1 and 2
// threads, split as ops/linear.cpp splits it (T2: 16-row chunks; TL3: lookup tables built once,
// then 64-row groups). Prints weight GB/s (bytes of the stored format) and GMAC/s.
#include "kernels/dispatch.hpp"
#include "kernels/gemm_tl3.hpp"
#include "kernels/t2.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

using namespace tern::kernels;

namespace {

constexpr uint32_t kRowsPerChunk = 16;
constexpr size_t kStreamBytes = size_t(384) << 20;  // total of the rotated copies

uint64_t nextRand(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

template <class F>
double bestOf(int reps, F&& f) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

void bench(const KernelTable& kt, uint32_t nOut, uint32_t k, int threads) {
  uint64_t s = 0x9e3779b97f4a7c15ull;
  std::vector<int8_t> codes(size_t(nOut) * k);
  for (auto& c : codes) c = int8_t(int(nextRand(s) % 3) - 1);
  std::vector<uint8_t> t2(t2TensorBytes(k, nOut)), tl3(tl3TensorBytes(k, nOut));
  for (uint32_t r = 0; r < nOut; ++r) {
    t2PackRow(codes.data() + size_t(r) * k, k, t2.data() + r * t2RowBytes(k));
    tl3PackRow(codes.data() + size_t(r) * k, k, tl3.data() + r * tl3RowBytes(k));
  }
  std::vector<uint8_t> tl3i(tl3InterleavedBytes(k, nOut));
  tl3Interleave(tl3.data(), k, nOut, tl3i.data());
  const size_t copiesT2 = std::max<size_t>(2, kStreamBytes / t2.size());
  const size_t copiesTl3 = std::max<size_t>(2, kStreamBytes / tl3i.size());
  std::vector<std::vector<uint8_t>> wT2(copiesT2, t2), wTl3(copiesTl3, tl3i);

  const size_t qStride = t2PaddedK(k);
  std::vector<int8_t> q(qStride, 0);
  for (uint32_t i = 0; i < k; ++i) q[i] = int8_t(nextRand(s));
  std::vector<int32_t> acc(nOut);
  std::vector<uint8_t> tables(tl3TableBytes(k));
  const int nChunks = int((nOut + kRowsPerChunk - 1) / kRowsPerChunk);
  const int nGroups = int(tl3Groups(nOut));

  size_t it = 0;
  auto runT2 = [&] {
    const uint8_t* w = wT2[it++ % copiesT2].data();
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int c = 0; c < nChunks; ++c) {
      const uint32_t r0 = uint32_t(c) * kRowsPerChunk, r1 = std::min(nOut, r0 + kRowsPerChunk);
      kt.gemmT2(w, k, r0, r1, q.data(), qStride, 1, acc.data(), nOut);
    }
  };
  auto runTl3 = [&] {
    const uint8_t* w = wTl3[it++ % copiesTl3].data();
    kt.tl3Tables(q.data(), k, tables.data());
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int g = 0; g < nGroups; ++g) {
      const uint32_t r0 = uint32_t(g) * kTl3GroupRows, r1 = std::min(nOut, r0 + kTl3GroupRows);
      kt.gemmTl3(w, k, nOut, r0, r1, tables.data(), tables.size(), 1, acc.data(), nOut);
    }
  };
  auto runTables = [&] { kt.tl3Tables(q.data(), k, tables.data()); };
  const int reps = 40;
  for (int i = 0; i < 3; ++i) runT2(), runTl3();
  // Interleave the two so that machine noise hits both alike; best of each.
  double bT2 = 1e30, bTl3 = 1e30;
  for (int round = 0; round < 5; ++round) {
    bT2 = std::min(bT2, bestOf(reps / 5, runT2));
    bTl3 = std::min(bTl3, bestOf(reps / 5, runTl3));
  }
  const double bTab = bestOf(20, runTables);
  const double macs = double(k) * nOut;
  std::printf("%-7s %5u x %-5u t=%d  T2 %7.1f us %6.1f GB/s %6.1f GMAC/s | TL3 %7.1f us %6.1f GB/s %6.1f GMAC/s"
              " (tables %5.1f us) | TL3/T2 time %.2f\n",
              kt.name, nOut, k, threads, bT2 * 1e6, double(t2.size()) / bT2 / 1e9, macs / bT2 / 1e9, bTl3 * 1e6,
              double(tl3.size()) / bTl3 / 1e9, macs / bTl3 / 1e9, bTab * 1e6, bTl3 / bT2);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> names = supportedKernelNames();
  if (argc > 1) names.assign(argv + 1, argv + argc);
  const uint32_t shapes[][2] = {{2560, 2560}, {6912, 2560}, {2560, 6912}};  // {nOut, k}
  for (const std::string& n : names)
    for (int threads : {1, 2})
      for (const auto& sh : shapes) bench(selectKernels(n), sh[0], sh[1], threads);
  return 0;
}
