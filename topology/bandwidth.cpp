#include "topology/bandwidth.hpp"

#include <hwloc.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>

namespace tern::topo {
namespace {

constexpr size_t kLineWords = 8;  // 64-byte cache line = 8 uint64 words

// Sum of the words of [p, p + n): eight independent lanes so the compiler keeps several loads in
// flight and vectorises with whatever the baseline ISA offers.
uint64_t sumWords(const uint64_t* p, size_t n) {
  uint64_t lane[kLineWords] = {};
  size_t i = 0;
  for (; i + kLineWords <= n; i += kLineWords) {
    for (size_t j = 0; j < kLineWords; ++j) lane[j] += p[i + j];
  }
  uint64_t s = 0;
  for (; i < n; ++i) s += p[i];
  for (uint64_t v : lane) s ^= v;
  return s;
}

// Thread t's slice [begin, end) of n words, cut on cache-line boundaries.
void slice(size_t n, unsigned threads, unsigned t, size_t& begin, size_t& end) {
  const size_t lines = n / kLineWords;
  begin = lines * t / threads * kLineWords;
  end = t + 1 == threads ? n : lines * (t + 1) / threads * kLineWords;
}

}  // namespace

uint64_t lastLevelCacheBytes() {
  uint64_t best = 0;
  hwloc_topology_t topo = nullptr;
  if (hwloc_topology_init(&topo) == 0) {
    if (hwloc_topology_load(topo) == 0) {
      for (hwloc_obj_type_t type : {HWLOC_OBJ_L1CACHE, HWLOC_OBJ_L2CACHE, HWLOC_OBJ_L3CACHE,
                                    HWLOC_OBJ_L4CACHE, HWLOC_OBJ_L5CACHE}) {
        for (hwloc_obj_t o = hwloc_get_next_obj_by_type(topo, type, nullptr); o != nullptr;
             o = hwloc_get_next_obj_by_type(topo, type, o)) {
          if (o->attr != nullptr) best = std::max<uint64_t>(best, o->attr->cache.size);
        }
      }
    }
    hwloc_topology_destroy(topo);
  }
  if (best == 0) {
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0) best = static_cast<uint64_t>(l3);
  }
  return best > 0 ? best : uint64_t{32} << 20;
}

double measureReadBandwidth(unsigned threads, size_t bytes, int reps) {
  if (threads == 0) throw std::invalid_argument("measureReadBandwidth: threads must be >= 1");
  if (reps < 1) throw std::invalid_argument("measureReadBandwidth: reps must be >= 1");
  if (bytes == 0) bytes = std::max<uint64_t>(uint64_t{1} << 30, 8 * lastLevelCacheBytes());
  const size_t n = bytes / sizeof(uint64_t);
  if (n < size_t{threads} * kLineWords) {
    throw std::invalid_argument("measureReadBandwidth: " + std::to_string(bytes) +
                                " bytes is less than 64 per thread");
  }
  // Left uninitialised: each thread's first write below places its own pages.
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
  uint64_t* p = buf.get();
  const int nt = static_cast<int>(threads);

  // Slice t belongs to thread t; should the runtime grant fewer threads, they share the slices
  // round robin in both loops (every page is still written first, then read, by one thread).
#pragma omp parallel num_threads(nt)
  {
    const unsigned team = static_cast<unsigned>(omp_get_num_threads());
    for (unsigned t = static_cast<unsigned>(omp_get_thread_num()); t < threads; t += team) {
      size_t b = 0, e = 0;
      slice(n, threads, t, b, e);
      for (size_t i = b; i < e; ++i) p[i] = i * 0x9e3779b97f4a7c15ull;
    }
  }

  double best = 0;
  uint64_t check = 0;
  for (int r = 0; r < reps; ++r) {
    uint64_t acc = 0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(nt) reduction(^ : acc)
    {
      const unsigned team = static_cast<unsigned>(omp_get_num_threads());
      for (unsigned t = static_cast<unsigned>(omp_get_thread_num()); t < threads; t += team) {
        size_t b = 0, e = 0;
        slice(n, threads, t, b, e);
        acc ^= sumWords(p + b, e - b);
      }
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    check ^= acc;
    if (s > 0) best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / s);
  }
  // The sums are an observable result, so no pass can be left out.
  asm volatile("" : : "r"(check) : "memory");
  return best * 1e-9;
}

}  // namespace tern::topo
