// The machine as hwloc sees it, in tern's own types: packages, NUMA nodes, cores, PUs.
//
// Only the allowed cpuset counts (a container restricted with --cpuset-cpus sees its own cores).
// Placement is computed from a Machine ("topology in, cpusets out", testable on synthetic
// topologies); topology/binding.hpp applies it to the running process (threads, OpenMP teams,
// memory on a NUMA node).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tern::topo {

struct NumaNode {
  unsigned index = 0;        // OS index of the node
  uint64_t memoryBytes = 0;  // local memory in bytes (0 when unknown; synthetic: 1 GiB unless
                             // given, e.g. "numa:2(memory=64GB)", GB = 1e9, GiB = 2^30)
  std::vector<unsigned> cores;  // OS index of the first allowed PU of each core in this node
};

struct Machine {
  unsigned packages = 0;
  unsigned numaNodes = 0;
  unsigned cores = 0;  // physical cores with at least one allowed PU
  unsigned pus = 0;    // allowed processing units (hardware threads)
  std::vector<NumaNode> nodes;
  std::string cpuModel;  // "CPUModel" info of the first package; may be empty

  // The host. Throws std::runtime_error when hwloc cannot build a topology.
  static Machine detect();
  // A synthetic topology in hwloc's syntax, e.g. "pack:2 numa:1 core:4 pu:2" (the last level
  // must be pu). Throws
  // std::invalid_argument for a description hwloc rejects.
  static Machine fromSynthetic(const std::string& desc);

  // One line: "2 packages, 2 NUMA nodes, 8 cores, 16 threads (Intel Xeon ...)".
  std::string summary() const;
  // Physical cores in the allowed cpuset (at least 1): threadsFor(0, cores).
  unsigned defaultThreads() const;
};

// Compute threads for a team: `requested` when given (> 0), else one per core of the `cores` it
// runs on (at least 1). Every "0 = the cores" default (workers, in-process or not) is this.
unsigned threadsFor(unsigned requested, unsigned cores);

}  // namespace tern::topo
