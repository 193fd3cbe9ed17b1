#include "worker/calibration.hpp"

#include "kernels/dispatch.hpp"
#include "kernels/t2.hpp"

#include <omp.h>

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace tern::worker {

Calibration calibrateT2Gemv(unsigned threads, double targetSeconds, const std::string& kernels) {
  if (threads == 0) throw std::invalid_argument("calibration: threads = 0");
  const kernels::KernelTable& kt = kernels::selectKernels(kernels);
  constexpr uint32_t k = 2560, nOut = 6912, kChunk = 16;
  const uint32_t padded = kernels::t2PaddedK(k);
  const size_t rowBytes = kernels::t2RowBytes(k);

  // Random codes 0..2 (w = -1, 0, +1) from a fixed-seed generator, packed row by row.
  uint64_t state = 0x9e3779b97f4a7c15ull;
  auto next = [&state] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(state >> 33);
  };
  std::vector<uint8_t> w(kernels::t2TensorBytes(k, nOut));
  std::vector<int8_t> row(k);
  for (uint32_t r = 0; r < nOut; ++r) {
    for (uint32_t i = 0; i < k; ++i) row[i] = static_cast<int8_t>(int(next() % 3) - 1);
    kernels::t2PackRow(row.data(), k, w.data() + size_t(r) * rowBytes);
  }
  kernels::t2WriteTrailer(1.0f, w.data() + size_t(nOut) * rowBytes);
  std::vector<int8_t> q(padded, 0);  // one token; the padding stays zero
  for (uint32_t i = 0; i < k; ++i) q[i] = static_cast<int8_t>(int(next() % 255) - 127);
  std::vector<int32_t> acc(nOut);

  const uint32_t nChunks = (nOut + kChunk - 1) / kChunk;
  auto gemv = [&] {
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(threads))
    for (int64_t c = 0; c < int64_t(nChunks); ++c) {
      const uint32_t r0 = uint32_t(c) * kChunk;
      const uint32_t r1 = r0 + kChunk < nOut ? r0 + kChunk : nOut;
      kt.gemmT2(w.data(), k, r0, r1, q.data(), padded, 1, acc.data(), nOut);
    }
  };

  gemv();  // warm-up: page faults, thread start
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  Calibration cal;
  cal.kernel = kt.name;
  double elapsed = 0;
  do {
    for (int i = 0; i < 8; ++i) gemv();
    cal.calls += 8;
    elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (elapsed < targetSeconds);
  cal.seconds = elapsed;
  cal.gmacs = double(cal.calls) * double(k) * double(nOut) / elapsed / 1e9;
  return cal;
}

}  // namespace tern::worker
