// Memory read bandwidth of this machine, as the decode bound uses it: the rate at which `threads`
// cores stream a buffer far larger than the caches from DRAM.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tern::topo {

// Bytes of the largest cache hwloc reports (the last level, e.g. L3); when hwloc knows none,
// the C library's L3 size, else 32 MiB.
uint64_t lastLevelCacheBytes();

// Read bandwidth in GB/s (1e9 bytes per second), best of `reps` passes: `threads` OpenMP threads
// each sum the 64-bit words of their own contiguous slice of one buffer of `bytes` bytes (0 =
// max(1 GiB, 8 x lastLevelCacheBytes())), which that same thread wrote first (first touch places
// its pages on the thread's NUMA node). Throws std::invalid_argument for threads == 0, reps < 1
// or fewer than 64 bytes per thread, std::bad_alloc when the buffer cannot be allocated.
double measureReadBandwidth(unsigned threads, size_t bytes = 0, int reps = 5);

}  // namespace tern::topo
