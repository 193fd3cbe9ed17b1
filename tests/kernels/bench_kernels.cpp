// Kernel micro-benchmark (not a test): `meson test --benchmark kernels` or run directly.
// For every kernel variant this CPU supports, times ternary GEMV (1 token) on the 2B4T shapes,
// the same from DRAM (cold copies), a 128-token ternary GEMM, a plain streaming read, and the F16 tied head [128256 x 2560], on 1 thread and on all
// OpenMP threads (16-row chunks, as ops/linear.cpp cuts them). Prints GB/s of weights read.
#include "kernels/cpu_features.hpp"
#include "kernels/dispatch.hpp"
#include "kernels/t2.hpp"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace tern::kernels;

namespace {

constexpr uint32_t kRowsPerChunk = 16;

uint64_t nextRand(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

// Best of reps wall times, in seconds.
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

void benchT2(const KernelTable& kt, uint32_t nOut, uint32_t k, uint32_t nTok, int threads) {
  uint64_t s = 0x9e3779b97f4a7c15ull;
  const size_t rowBytes = t2RowBytes(k);
  std::vector<uint8_t> w(t2TensorBytes(k, nOut));
  for (auto& b : w) {
    b = 0;
    for (int j = 0; j < 4; ++j) b = uint8_t(b | ((nextRand(s) % 3) << (2 * j)));
  }
  const size_t stride = t2PaddedK(k);
  std::vector<int8_t> q(stride * nTok);
  for (auto& v : q) v = int8_t(nextRand(s));
  std::vector<int32_t> acc(size_t(nOut) * nTok);
  const int nChunks = int((nOut + kRowsPerChunk - 1) / kRowsPerChunk);
  auto run = [&] {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int c = 0; c < nChunks; ++c) {
      const uint32_t r0 = uint32_t(c) * kRowsPerChunk, r1 = std::min(nOut, r0 + kRowsPerChunk);
      kt.gemmT2(w.data(), k, r0, r1, q.data(), stride, nTok, acc.data(), nOut);
    }
  };
  run();
  const double bytes = double(rowBytes) * nOut;
  const int reps = std::string(kt.name) == "ref" ? 3 : 20;
  const double t = bestOf(reps, run);
  std::printf("  %-7s t=%d  gemmT2 %5u x %5u, %3u tok: %9.3f ms  %7.2f GB/s weights  %8.1f GMAC/s\n", kt.name,
              threads, nOut, k, nTok, t * 1e3, bytes / t * 1e-9, double(nOut) * k * nTok / t * 1e-9);
}

// GEMV over enough distinct weight copies (>= 256 MiB) that they stream from DRAM, as in decode.
void benchT2Cold(const KernelTable& kt, uint32_t nOut, uint32_t k, int threads) {
  const size_t tensorBytes = t2TensorBytes(k, nOut);
  const size_t copies = (size_t(256) << 20) / tensorBytes + 1;
  std::vector<uint8_t> w(tensorBytes * copies);
  uint64_t s = 0x2545f4914f6cdd1dull;
  for (auto& b : w) b = uint8_t(0x55u ^ (nextRand(s) & 0x41u));  // codes 0..2 only
  const size_t stride = t2PaddedK(k);
  std::vector<int8_t> q(stride);
  for (auto& v : q) v = int8_t(nextRand(s));
  std::vector<int32_t> acc(nOut);
  const int nChunks = int((nOut + kRowsPerChunk - 1) / kRowsPerChunk);
  auto run = [&] {
    for (size_t c0 = 0; c0 < copies; ++c0) {
      const uint8_t* wc = w.data() + c0 * tensorBytes;
#pragma omp parallel for schedule(static) num_threads(threads)
      for (int c = 0; c < nChunks; ++c) {
        const uint32_t r0 = uint32_t(c) * kRowsPerChunk, r1 = std::min(nOut, r0 + kRowsPerChunk);
        kt.gemmT2(wc, k, r0, r1, q.data(), stride, 1, acc.data(), nOut);
      }
    }
  };
  run();
  const double t = bestOf(std::string(kt.name) == "ref" ? 1 : 3, run);
  std::printf("  %-7s t=%d  gemmT2 %5u x %5u, 1 tok, %zu cold copies: %7.3f ms each  %7.2f GB/s weights\n", kt.name,
              threads, nOut, k, copies, t / double(copies) * 1e3, double(t2RowBytes(k)) * nOut * double(copies) / t * 1e-9);
}

// Plain streaming read of n bytes (sum of uint64), as a memory-bandwidth yardstick.
void benchRead(const std::vector<uint16_t>& buf, int threads) {
  const uint64_t* p = reinterpret_cast<const uint64_t*>(buf.data());
  const long n = long(buf.size() * sizeof(uint16_t) / sizeof(uint64_t));
  uint64_t sink = 0;
  auto run = [&] {
    uint64_t total = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+ : total)
    for (long i = 0; i < n; ++i) total += p[i];
    sink += total;
  };
  run();
  const double t = bestOf(5, run);
  std::printf("  memory  t=%d  streaming read %.0f MB: %7.2f GB/s (checksum %llu)\n", threads, double(n) * 8e-6,
              double(n) * 8 / t * 1e-9, static_cast<unsigned long long>(sink & 0xff));
}

void benchF16(const KernelTable& kt, const std::vector<uint16_t>& w, uint32_t nOut, uint32_t k, int threads) {
  std::vector<float> x(k), y(nOut);
  for (uint32_t i = 0; i < k; ++i) x[i] = float(int(i % 17) - 8) * 0.125f;
  const int nChunks = int((nOut + kRowsPerChunk - 1) / kRowsPerChunk);
  auto run = [&] {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int c = 0; c < nChunks; ++c) {
      const uint32_t r0 = uint32_t(c) * kRowsPerChunk, r1 = std::min(nOut, r0 + kRowsPerChunk);
      kt.matmulF16(w.data(), k, r0, r1, x.data(), k, 1, y.data(), nOut);
    }
  };
  run();
  const double t = bestOf(std::string(kt.name) == "ref" ? 1 : 5, run);
  std::printf("  %-7s t=%d  F16 head %6u x %4u, 1 tok: %9.3f ms  %7.2f GB/s weights\n", kt.name, threads, nOut, k,
              t * 1e3, double(nOut) * k * 2 / t * 1e-9);
}

}  // namespace

int main() {
  std::printf("cpu features: %s\n", cpuFeatureString(cpuFeatures()).c_str());
  const int maxThreads = omp_get_max_threads();
  std::vector<int> threadCounts{1};
  if (maxThreads > 1) threadCounts.push_back(maxThreads);
  const auto names = supportedKernelNames();
  for (int threads : threadCounts)
    for (const std::string& n : names) {
      const KernelTable& kt = selectKernels(n);
      benchT2(kt, 2560, 2560, 1, threads);
      benchT2(kt, 6912, 2560, 1, threads);
      benchT2(kt, 2560, 6912, 1, threads);
      benchT2(kt, 2560, 2560, 128, threads);
      benchT2Cold(kt, 6912, 2560, threads);
    }
  const uint32_t headRows = 128256, headK = 2560;
  std::vector<uint16_t> head(size_t(headRows) * headK);
  uint64_t s = 12345;
  // random fp16 in about [-2, 2]: sign, exponent 13..15 (0x3400..0x3fff), random mantissa
  for (auto& h : head) {
    const uint64_t r = nextRand(s);
    h = uint16_t(((r & 1) << 15) | (0x3400u + (r >> 8) % 0x0c00u));
  }
  for (int threads : threadCounts) benchRead(head, threads);
  for (int threads : threadCounts)
    for (const std::string& n : names) benchF16(selectKernels(n), head, headRows, headK, threads);
  return 0;
}
