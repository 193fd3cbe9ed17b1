#include "topology/machine.hpp"

#include <hwloc.h>

#include <memory>
#include <stdexcept>

namespace tern::topo {
namespace {

struct TopologyDeleter {
  void operator()(hwloc_topology* t) const { hwloc_topology_destroy(t); }
};
using TopologyPtr = std::unique_ptr<hwloc_topology, TopologyDeleter>;

struct BitmapDeleter {
  void operator()(hwloc_bitmap_s* b) const { hwloc_bitmap_free(b); }
};
using BitmapPtr = std::unique_ptr<hwloc_bitmap_s, BitmapDeleter>;

unsigned countAllowed(hwloc_topology_t topo, hwloc_obj_type_t type, hwloc_const_cpuset_t allowed) {
  unsigned n = 0;
  for (hwloc_obj_t o = hwloc_get_next_obj_by_type(topo, type, nullptr); o != nullptr;
       o = hwloc_get_next_obj_by_type(topo, type, o)) {
    if (o->cpuset == nullptr || hwloc_bitmap_intersects(o->cpuset, allowed)) ++n;
  }
  return n;
}

Machine fromTopology(hwloc_topology_t topo) {
  Machine m;
  hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(topo);
  m.packages = countAllowed(topo, HWLOC_OBJ_PACKAGE, allowed);
  m.cores = countAllowed(topo, HWLOC_OBJ_CORE, allowed);
  m.pus = countAllowed(topo, HWLOC_OBJ_PU, allowed);
  if (m.cores == 0) m.cores = m.pus;  // some VMs report PUs without cores

  for (hwloc_obj_t node = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, nullptr);
       node != nullptr; node = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, node)) {
    if (node->cpuset != nullptr && !hwloc_bitmap_intersects(node->cpuset, allowed)) continue;
    NumaNode n;
    n.index = node->os_index;
    n.memoryBytes = node->attr != nullptr ? node->attr->numanode.local_memory : 0;
    // NUMA nodes are memory children in hwloc 2: find the cores covered by the node's cpuset.
    for (hwloc_obj_t core = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_CORE, nullptr);
         core != nullptr; core = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_CORE, core)) {
      if (core->cpuset == nullptr || !hwloc_bitmap_isincluded(core->cpuset, node->cpuset)) continue;
      BitmapPtr mine(hwloc_bitmap_alloc());
      hwloc_bitmap_and(mine.get(), core->cpuset, allowed);
      int first = hwloc_bitmap_first(mine.get());
      if (first >= 0) n.cores.push_back(static_cast<unsigned>(first));
    }
    m.nodes.push_back(std::move(n));
  }
  m.numaNodes = static_cast<unsigned>(m.nodes.size());
  if (m.numaNodes == 0) m.numaNodes = 1;

  hwloc_obj_t pkg = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_PACKAGE, nullptr);
  if (pkg != nullptr) {
    const char* model = hwloc_obj_get_info_by_name(pkg, "CPUModel");
    if (model != nullptr) m.cpuModel = model;
  }
  return m;
}

TopologyPtr makeTopology() {
  hwloc_topology_t raw = nullptr;
  if (hwloc_topology_init(&raw) != 0) throw std::runtime_error("hwloc: topology init failed");
  return TopologyPtr(raw);
}

}  // namespace

Machine Machine::detect() {
  TopologyPtr topo = makeTopology();
  if (hwloc_topology_load(topo.get()) != 0) throw std::runtime_error("hwloc: topology load failed");
  return fromTopology(topo.get());
}

Machine Machine::fromSynthetic(const std::string& desc) {
  TopologyPtr topo = makeTopology();
  if (hwloc_topology_set_synthetic(topo.get(), desc.c_str()) != 0) {
    throw std::invalid_argument("hwloc rejects the synthetic topology '" + desc + "'");
  }
  if (hwloc_topology_load(topo.get()) != 0) throw std::runtime_error("hwloc: topology load failed");
  return fromTopology(topo.get());
}

std::string Machine::summary() const {
  auto plural = [](unsigned n, const char* one, const char* many) {
    return std::to_string(n) + " " + (n == 1 ? one : many);
  };
  std::string s = plural(packages, "package", "packages") + ", " +
                  plural(numaNodes, "NUMA node", "NUMA nodes") + ", " +
                  plural(cores, "core", "cores") + ", " + plural(pus, "thread", "threads");
  if (!cpuModel.empty()) s += " (" + cpuModel + ")";
  return s;
}

unsigned threadsFor(unsigned requested, unsigned cores) {
  if (requested > 0) return requested;
  return cores > 0 ? cores : 1;
}

unsigned Machine::defaultThreads() const { return threadsFor(0, cores); }

}  // namespace tern::topo
