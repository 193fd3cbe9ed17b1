// Projections run by a team of threads inside one OpenMP parallel region: the projections that
// read the same activations (Q/K/V, gate/up) form a group, quantised once, whose output rows are
// split into fixed contiguous shares, one per thread. Every output element is computed by one
// thread with the same kernel call arithmetic as applyLinear (ops/linear.hpp), so results are bit
// for bit those of applyLinear, for every team size.
//
// Also the optional int8 head (`--head q8`).
#pragma once

#include "kernels/dispatch.hpp"
#include "ops/huge_buffer.hpp"
#include "ops/linear.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace tern::ops {

// A thread's place in its team (omp_get_thread_num / omp_get_num_threads of the region).
struct Team {
  int id = 0;
  int size = 1;
  // This thread's contiguous share [begin, end) of n items: fixed for a given team size.
  std::pair<uint32_t, uint32_t> share(uint32_t n) const {
    return {uint32_t(uint64_t(n) * id / size), uint32_t(uint64_t(n) * (id + 1) / size)};
  }
};

// The int8 head: each row r quantised at load to w = round_half_even(row / s_r) with
// s_r = max|row| / 127 (s_r = 0 for an all-zero row, giving w = 0); hidden states are quantised
// per token like BitLinear activations (a_s = 127 / max|x|, kernels/quantize.hpp), and
// logit = ((float)(sum w * q) / a_s) * s_r.
struct HeadQ8 {
  HugeBuffer w;                 // [nOut][k] int8
  std::vector<float> rowScale;  // [nOut] s_r
  uint32_t k = 0;
  uint32_t nOut = 0;
  const int8_t* weights() const { return reinterpret_cast<const int8_t*>(w.data()); }
  uint64_t bytes() const { return uint64_t(w.size()) + uint64_t(rowScale.size()) * 4; }
};
// From a float projection (Kind F32, F16 or BF16); rows split over `threads` threads.
// Throws std::invalid_argument for another kind or non-finite weights.
HeadQ8 quantizeHeadQ8(const Linear& lin, int threads);

// Activations of n tokens shared by one group's projections (all with the same k).
struct GroupInput {
  const float* x = nullptr;     // [n][k]
  uint32_t n = 0;
  uint32_t k = 0;
  bool int8 = false;            // some projection quantises its input
  bool tl3 = false;             // some projection is Kind::TL3 (needs lookup tables)
  std::vector<int8_t> q;        // [n][qStride]
  size_t qStride = 0;
  std::vector<float> aScale;    // [n]
  std::vector<uint8_t> tables;  // [n][tStride]
  size_t tStride = 0;
  // Sizes the buffers (call before the parallel region; keeps capacity).
  void reserve(uint32_t nTok, uint32_t kIn, bool needInt8, bool needTl3);
};

// One projection of a group: a Linear or the int8 head, writing y [n][nOut].
struct Projection {
  const Linear* lin = nullptr;
  const HeadQ8* q8 = nullptr;
  float* y = nullptr;
  uint32_t nOut() const { return lin ? lin->nOut : q8->nOut; }
  bool int8() const { return q8 || lin->int8 || lin->kind == Linear::Kind::TL3; }
};

// Int32 scratch a group needs: n x the sum of its projections' nOut.
size_t groupAccElems(std::span<const Projection> group, uint32_t n);

// Team calls: every thread of the team makes the same call; there is no barrier inside.
// prepareInput quantises (and builds TL3 tables for) this thread's share of the tokens;
// runGroup computes the group's output rows (after a barrier that follows prepareInput) in
// pieces of 64 rows (256 for one token): with next == nullptr this thread's fixed contiguous
// share; otherwise the threads claim pieces from the shared counter *next (zero before the
// call, one counter per call), so a thread that the OS delays does not hold the others up.
// Which thread computes a piece never changes its arithmetic. acc: [groupAccElems] scratch.
void prepareInput(const kernels::KernelTable& kt, GroupInput& in, const Team& team);
void runGroup(const kernels::KernelTable& kt, std::span<const Projection> group, const GroupInput& in,
              int32_t* acc, const Team& team, std::atomic<uint32_t>* next = nullptr);

// A whole group on `threads` threads (its own parallel region): for tests and one-off calls.
void applyGroup(const kernels::KernelTable& kt, std::span<const Projection> group, const float* x,
                uint32_t n, uint32_t k, int threads, bool dynamic = false);

}  // namespace tern::ops
