#include "topology/binding.hpp"

#include <hwloc.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

namespace tern::topo {
namespace {

struct BitmapDeleter {
  void operator()(hwloc_bitmap_s* b) const { hwloc_bitmap_free(b); }
};
using BitmapPtr = std::unique_ptr<hwloc_bitmap_s, BitmapDeleter>;

// The host topology, loaded once per process. hwloc allows concurrent read-only use (binding
// calls included) of a loaded topology.
class HostTopology {
 public:
  static const HostTopology& get() {
    static const HostTopology host;
    return host;
  }
  ~HostTopology() {
    if (topo_ != nullptr) hwloc_topology_destroy(topo_);
  }
  hwloc_topology_t topo() const { return topo_; }  // nullptr when hwloc failed
  const std::string& error() const { return error_; }

 private:
  HostTopology() {
    if (hwloc_topology_init(&topo_) != 0) {
      topo_ = nullptr;
      error_ = "hwloc: topology init failed";
      return;
    }
    if (hwloc_topology_load(topo_) != 0) {
      hwloc_topology_destroy(topo_);
      topo_ = nullptr;
      error_ = "hwloc: topology load failed";
    }
  }
  hwloc_topology_t topo_ = nullptr;
  std::string error_;
};

std::vector<unsigned> toVector(hwloc_const_bitmap_t set) {
  std::vector<unsigned> v;
  for (int i = hwloc_bitmap_first(set); i >= 0; i = hwloc_bitmap_next(set, i))
    v.push_back(static_cast<unsigned>(i));
  return v;
}

std::string errnoText(int err) { return std::strerror(err); }

BindStatus refused(std::string why) { return BindStatus{false, std::move(why)}; }

// The binding target for osCores, or a refusal naming the first core outside the allowed set.
BindStatus makeCpuset(hwloc_topology_t topo, const std::vector<unsigned>& osCores,
                      hwloc_bitmap_t out) {
  if (osCores.empty()) return refused("no core to bind to");
  hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(topo);
  for (unsigned c : osCores) {
    if (c >= (1u << 20) || !hwloc_bitmap_isset(allowed, c)) {
      return refused("core " + std::to_string(c) + " is not in this process's allowed cpuset " +
                     CpuSet(toVector(allowed)).toString() + ": binding skipped");
    }
    hwloc_bitmap_set(out, c);
  }
  return BindStatus{true, {}};
}

BindStatus bindThisThread(hwloc_topology_t topo, hwloc_const_cpuset_t set) {
  const hwloc_topology_support* sup = hwloc_topology_get_support(topo);
  if (sup == nullptr || sup->cpubind == nullptr || !sup->cpubind->set_thisthread_cpubind)
    return refused("this OS does not support binding threads (hwloc): binding skipped");
  if (hwloc_set_cpubind(topo, set, HWLOC_CPUBIND_THREAD) != 0) {
    const int err = errno;
    char* text = nullptr;
    hwloc_bitmap_list_asprintf(&text, set);
    std::string s = text != nullptr ? text : "?";
    std::free(text);
    return refused("the OS refused to bind a thread to cores " + s + " (" + errnoText(err) +
                   "): running unbound");
  }
  return BindStatus{true, {}};
}

}  // namespace

CpuSet::CpuSet(std::vector<unsigned> osIndexes) : cpus(std::move(osIndexes)) {
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
}

bool CpuSet::contains(unsigned cpu) const {
  return std::binary_search(cpus.begin(), cpus.end(), cpu);
}

bool CpuSet::containsAll(const CpuSet& other) const {
  return std::includes(cpus.begin(), cpus.end(), other.cpus.begin(), other.cpus.end());
}

std::string CpuSet::toString() const {
  std::string s;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!s.empty()) s += ',';
    s += std::to_string(cpus[i]);
    if (j > i) s += '-' + std::to_string(cpus[j]);
    i = j + 1;
  }
  return s;
}

CpuSet allowedCpus() {
  const HostTopology& host = HostTopology::get();
  if (host.topo() == nullptr) return {};
  return CpuSet(toVector(hwloc_topology_get_allowed_cpuset(host.topo())));
}

BindStatus bindCurrentThreadToCores(const std::vector<unsigned>& osCores) {
  const HostTopology& host = HostTopology::get();
  if (host.topo() == nullptr) return refused(host.error() + ": binding skipped");
  BitmapPtr set(hwloc_bitmap_alloc());
  BindStatus s = makeCpuset(host.topo(), osCores, set.get());
  if (!s) return s;
  return bindThisThread(host.topo(), set.get());
}

std::vector<unsigned> currentThreadBinding() {
  const HostTopology& host = HostTopology::get();
  if (host.topo() == nullptr) return {};
  BitmapPtr set(hwloc_bitmap_alloc());
  if (hwloc_get_cpubind(host.topo(), set.get(), HWLOC_CPUBIND_THREAD) != 0) return {};
  return toVector(set.get());
}

TeamBinding bindOpenMpTeam(const std::vector<unsigned>& osCores, int nThreads) {
  TeamBinding team;
  const HostTopology& host = HostTopology::get();
  if (host.topo() == nullptr) {
    team.status = refused(host.error() + ": binding skipped");
    return team;
  }
  BitmapPtr all(hwloc_bitmap_alloc());
  team.status = makeCpuset(host.topo(), osCores, all.get());
  if (!team.status) return team;
  if (nThreads <= 0) nThreads = static_cast<int>(osCores.size());
  team.perThread.assign(static_cast<size_t>(nThreads), {});
  std::vector<BindStatus> results(static_cast<size_t>(nThreads));
  int teamSize = 0;
#pragma omp parallel num_threads(nThreads)
  {
    const int t = omp_get_thread_num();
#pragma omp single
    teamSize = omp_get_num_threads();
    BitmapPtr mine(hwloc_bitmap_alloc());
    hwloc_bitmap_only(mine.get(), osCores[static_cast<size_t>(t) % osCores.size()]);
    results[static_cast<size_t>(t)] = bindThisThread(host.topo(), mine.get());
    team.perThread[static_cast<size_t>(t)] = currentThreadBinding();
  }
  team.status = BindStatus{true, {}};
  if (teamSize != nThreads) {
    team.perThread.resize(static_cast<size_t>(teamSize));
    team.status = refused("OpenMP gave " + std::to_string(teamSize) + " threads instead of " +
                          std::to_string(nThreads));
  }
  for (int t = 0; t < teamSize; ++t) {
    if (!results[static_cast<size_t>(t)]) {
      team.status = results[static_cast<size_t>(t)];
      break;
    }
  }
  return team;
}

std::vector<std::vector<unsigned>> openMpTeamBinding(int nThreads) {
  if (nThreads <= 0) nThreads = 1;
  std::vector<std::vector<unsigned>> per(static_cast<size_t>(nThreads));
  int teamSize = nThreads;
#pragma omp parallel num_threads(nThreads)
  {
#pragma omp single
    teamSize = omp_get_num_threads();
    per[static_cast<size_t>(omp_get_thread_num())] = currentThreadBinding();
  }
  per.resize(static_cast<size_t>(teamSize));
  return per;
}

std::vector<unsigned> numaNodeIndexes() {
  std::vector<unsigned> v;
  const HostTopology& host = HostTopology::get();
  if (host.topo() == nullptr) return v;
  hwloc_const_nodeset_t allowed = hwloc_topology_get_allowed_nodeset(host.topo());
  for (hwloc_obj_t n = hwloc_get_next_obj_by_type(host.topo(), HWLOC_OBJ_NUMANODE, nullptr);
       n != nullptr; n = hwloc_get_next_obj_by_type(host.topo(), HWLOC_OBJ_NUMANODE, n)) {
    if (hwloc_bitmap_isset(allowed, n->os_index)) v.push_back(n->os_index);
  }
  return v;
}

namespace {

// The nodeset holding only `node`, or a refusal when the host has no such allowed node.
BindStatus makeNodeset(hwloc_topology_t topo, unsigned node, hwloc_bitmap_t out) {
  hwloc_obj_t obj = hwloc_get_numanode_obj_by_os_index(topo, node);
  if (obj == nullptr || !hwloc_bitmap_isset(hwloc_topology_get_allowed_nodeset(topo), node))
    return refused("NUMA node " + std::to_string(node) + " does not exist on this host or is not allowed");
  hwloc_bitmap_only(out, node);
  return BindStatus{true, {}};
}

}  // namespace

BindStatus bindThreadMemoryToNode(unsigned node) {
  const HostTopology& host = HostTopology::get();
  if (host.topo() == nullptr) return refused(host.error() + ": memory binding skipped");
  BitmapPtr set(hwloc_bitmap_alloc());
  BindStatus s = makeNodeset(host.topo(), node, set.get());
  if (!s) return s;
  const int flags = HWLOC_MEMBIND_THREAD | HWLOC_MEMBIND_BYNODESET | HWLOC_MEMBIND_STRICT;
  if (hwloc_set_membind(host.topo(), set.get(), HWLOC_MEMBIND_BIND, flags) != 0) {
    return refused("the OS refused to bind memory to NUMA node " + std::to_string(node) + " (" +
                   errnoText(errno) + "): first touch decides where pages land");
  }
  return BindStatus{true, {}};
}

NodeBuffer::NodeBuffer(size_t bytes, unsigned node) : size_(bytes), node_(node) {
  if (bytes == 0) {
    status_ = BindStatus{true, {}};
    return;
  }
  const HostTopology& host = HostTopology::get();
  if (host.topo() != nullptr) {
    BitmapPtr set(hwloc_bitmap_alloc());
    status_ = makeNodeset(host.topo(), node, set.get());
    if (status_) {
      void* p = hwloc_alloc_membind(host.topo(), bytes, set.get(), HWLOC_MEMBIND_BIND,
                                    HWLOC_MEMBIND_BYNODESET | HWLOC_MEMBIND_STRICT);
      if (p != nullptr) {
        data_ = static_cast<std::byte*>(p);
        hwlocOwned_ = true;
      } else {
        status_ = refused("the OS refused to bind memory to NUMA node " + std::to_string(node) +
                          " (" + errnoText(errno) + "): pages placed by first touch");
      }
    }
  } else {
    status_ = refused(host.error() + ": pages placed by first touch");
  }
  if (data_ == nullptr) {
    const size_t page = static_cast<size_t>(std::max(4096L, sysconf(_SC_PAGESIZE)));
    void* p = std::aligned_alloc(page, (bytes + page - 1) / page * page);
    if (p == nullptr) throw std::bad_alloc();
    data_ = static_cast<std::byte*>(p);
  }
  // First touch, page by page, by the calling team.
  const long pageL = std::max(4096L, sysconf(_SC_PAGESIZE));
  const long n = static_cast<long>((bytes + static_cast<size_t>(pageL) - 1) / static_cast<size_t>(pageL));
  std::byte* base = data_;
#pragma omp parallel for schedule(static)
  for (long i = 0; i < n; ++i) {
    const size_t off = static_cast<size_t>(i) * static_cast<size_t>(pageL);
    std::memset(base + off, 0, std::min(static_cast<size_t>(pageL), bytes - off));
  }
}

void NodeBuffer::release() {
  if (data_ == nullptr) return;
  if (hwlocOwned_) hwloc_free(HostTopology::get().topo(), data_, size_);
  else std::free(data_);
  data_ = nullptr;
}

NodeBuffer::~NodeBuffer() { release(); }

NodeBuffer::NodeBuffer(NodeBuffer&& o) noexcept
    : data_(o.data_), size_(o.size_), node_(o.node_), hwlocOwned_(o.hwlocOwned_),
      status_(std::move(o.status_)) {
  o.data_ = nullptr;
  o.size_ = 0;
}

NodeBuffer& NodeBuffer::operator=(NodeBuffer&& o) noexcept {
  if (this != &o) {
    release();
    data_ = o.data_;
    size_ = o.size_;
    node_ = o.node_;
    hwlocOwned_ = o.hwlocOwned_;
    status_ = std::move(o.status_);
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

std::optional<unsigned> memoryNode(const void* addr, size_t bytes) {
  const HostTopology& host = HostTopology::get();
  if (host.topo() == nullptr || addr == nullptr || bytes == 0) return std::nullopt;
  BitmapPtr set(hwloc_bitmap_alloc());
  if (hwloc_get_area_memlocation(host.topo(), addr, bytes, set.get(), HWLOC_MEMBIND_BYNODESET) != 0)
    return std::nullopt;
  if (hwloc_bitmap_weight(set.get()) != 1) return std::nullopt;
  return static_cast<unsigned>(hwloc_bitmap_first(set.get()));
}

}  // namespace tern::topo
