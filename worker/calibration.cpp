#include "worker/calibration.hpp"

#include "kernels/dispatch.hpp"
#include "kernels/t2.hpp"
#include "ops/group.hpp"

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace tern::worker {

Calibration calibrateT2Gemv(unsigned threads, double targetSeconds, const std::string& kernels) {
  if (threads == 0) throw std::invalid_argument("calibration: threads = 0");
  const kernels::KernelTable& kt = kernels::selectKernels(kernels);
  constexpr uint32_t k = 2560, nOut = 6912;
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
  // One token of activations, quantised per call as a forward pass does.
  std::vector<float> x(k);
  for (uint32_t i = 0; i < k; ++i) x[i] = float(int(next() % 2001) - 1000) / 1000.0f;
  std::vector<float> y(nOut);
  ops::Linear lin;
  lin.kind = ops::Linear::Kind::T2;
  lin.int8 = true;
  lin.data = w.data();
  lin.k = k;
  lin.nOut = nOut;
  const ops::Projection proj[1] = {{&lin, nullptr, y.data()}};
  // The engine's own BitLinear path (ops/group.hpp): quantise, then rows claimed in pieces by
  // the team, integer GEMV and epilogue, as every projection of a forward pass runs.
  auto gemv = [&] { ops::applyGroup(kt, proj, x.data(), 1, k, static_cast<int>(threads), true); };

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
