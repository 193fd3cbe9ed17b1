// The worker's calibration: how fast its threads run tern's hot kernel, so the coordinator's
// planner can weigh workers by measured speed (WorkerInfo.calibrationGmacs).
#pragma once

#include <string>

namespace tern::worker {

struct Calibration {
  double gmacs = 0;      // multiply-accumulates per second / 1e9
  double seconds = 0;    // time spent measuring
  unsigned calls = 0;    // GEMV calls timed
  std::string kernel;    // kernel variant measured
};

// Times a T2 GEMV of a 2560 x 6912 matrix of random codes (k = 2560 inputs, 6912 output rows:
// 2B4T's ffn_up) against one token, through the engine's own BitLinear path (ops::applyGroup:
// int8 quantisation, rows claimed in pieces by `threads` OpenMP threads, the integer GEMV of the
// dispatch table of `kernels`, "auto" = the best variant, and the epilogue), repeated for about
// `targetSeconds`. MACs counted are k x nOut per call.
// Throws std::invalid_argument for threads == 0 or an unknown kernel name.
Calibration calibrateT2Gemv(unsigned threads, double targetSeconds = 0.1,
                            const std::string& kernels = "auto");

}  // namespace tern::worker
