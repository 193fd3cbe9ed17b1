// Binding threads and memory to the host's cores and NUMA nodes (hwloc, real topology only).
//
// Core numbers are OS indexes of processing units, as sched_getcpu() reports and as
// Machine's NumaNode::cores lists them (the first allowed PU of each core). Placement is decided
// elsewhere ("topology in, cpusets out", testable on synthetic machines); these calls apply it to
// the running process. Where the OS refuses (a restricted container, seccomp, no NUMA support),
// they return a status whose warning says why; they never throw for a refusal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tern::topo {

// A set of OS processor indexes, sorted and without duplicates.
struct CpuSet {
  std::vector<unsigned> cpus;

  CpuSet() = default;
  explicit CpuSet(std::vector<unsigned> osIndexes);  // sorts and deduplicates
  bool empty() const { return cpus.empty(); }
  size_t size() const { return cpus.size(); }
  bool contains(unsigned cpu) const;
  bool containsAll(const CpuSet& other) const;
  std::string toString() const;  // ranges: "0-3,8,10-11"; "" when empty
  bool operator==(const CpuSet&) const = default;
};

// The processors this process may run on (hwloc's allowed cpuset of the host topology).
CpuSet allowedCpus();

struct BindStatus {
  bool ok = false;
  std::string warning;  // why the binding was refused or not applied; empty when ok
  explicit operator bool() const { return ok; }
};

// Binds the calling thread to the given PUs (one core: that PU only). Cores outside the allowed
// set are refused before asking the OS.
BindStatus bindCurrentThreadToCores(const std::vector<unsigned>& osCores);
// The calling thread's binding as the OS reports it (PU OS indexes); empty when unsupported.
std::vector<unsigned> currentThreadBinding();

// Binds the calling OpenMP team: one `#pragma omp parallel num_threads(nThreads)` in which
// thread t binds itself to osCores[t % osCores.size()] (each thread binds itself, so no thread
// inherits another's affinity: toolchain gotcha 13). nThreads 0 = one thread per core. libgomp
// reuses the threads of a master's team, so later parallel regions of the same calling thread
// with at most nThreads threads keep these bindings: call it from the thread that runs compute.
struct TeamBinding {
  BindStatus status;                          // ok when every thread is bound
  std::vector<std::vector<unsigned>> perThread;  // [nThreads] each thread's read-back binding
};
TeamBinding bindOpenMpTeam(const std::vector<unsigned>& osCores, int nThreads = 0);
// Each thread's binding in a `#pragma omp parallel num_threads(nThreads)` region.
std::vector<std::vector<unsigned>> openMpTeamBinding(int nThreads);

// OS indexes of the host's NUMA nodes that hold allowed memory.
std::vector<unsigned> numaNodeIndexes();

// Sets the calling thread's memory policy: its future page allocations come from node `node`.
BindStatus bindThreadMemoryToNode(unsigned node);

// Memory placed on one NUMA node: allocated with a strict hwloc membind when the OS allows it,
// otherwise plainly (status says why), then every page is first touched by the calling OpenMP
// team, so the pages also land on the node when that team is bound to the node's cores.
class NodeBuffer {
 public:
  NodeBuffer() = default;
  // Throws std::bad_alloc when no memory at all can be had; bytes 0 gives an empty buffer.
  NodeBuffer(size_t bytes, unsigned node);
  ~NodeBuffer();
  NodeBuffer(NodeBuffer&& o) noexcept;
  NodeBuffer& operator=(NodeBuffer&& o) noexcept;
  NodeBuffer(const NodeBuffer&) = delete;
  NodeBuffer& operator=(const NodeBuffer&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  unsigned node() const { return node_; }
  const BindStatus& status() const { return status_; }  // ok: bound to the node by the OS

 private:
  void release();
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  unsigned node_ = 0;
  bool hwlocOwned_ = false;  // freed with hwloc_free, else with std::free
  BindStatus status_;
};

// The NUMA node holding the pages of [addr, addr + bytes) (all touched); nullopt when the pages
// span several nodes or the OS cannot tell.
std::optional<unsigned> memoryNode(const void* addr, size_t bytes);

}  // namespace tern::topo
