#include "topology/binding.hpp"
#include "topology/machine.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

using tern::topo::allowedCpus;
using tern::topo::CpuSet;
using tern::topo::Machine;

namespace {

// Restores the calling thread's binding on scope exit.
struct BindingGuard {
  std::vector<unsigned> saved = tern::topo::currentThreadBinding();
  ~BindingGuard() {
    if (!saved.empty()) (void)tern::topo::bindCurrentThreadToCores(saved);
  }
};

}  // namespace

TEST_CASE("topology: CpuSet sorts, deduplicates and prints ranges") {
  CpuSet s({8, 1, 0, 3, 2, 1, 10, 11});
  CHECK(s.cpus == std::vector<unsigned>{0, 1, 2, 3, 8, 10, 11});
  CHECK(s.toString() == "0-3,8,10-11");
  CHECK(s.contains(8));
  CHECK_FALSE(s.contains(9));
  CHECK(s.containsAll(CpuSet({2, 10})));
  CHECK_FALSE(s.containsAll(CpuSet({2, 9})));
  CHECK(CpuSet().toString().empty());
}

TEST_CASE("topology: synthetic pack:2 numa:2 core:8 pu:1 with node memory") {
  // hwloc 2.9 needs PUs as the last level ("pack:2 numa:2 core:8" is rejected); GB = 1e9 bytes.
  Machine m = Machine::fromSynthetic("pack:2 numa:2(memory=64GB) core:8 pu:1");
  CHECK(m.packages == 2);
  CHECK(m.numaNodes == 4);
  CHECK(m.cores == 32);
  CHECK(m.pus == 32);
  REQUIRE(m.nodes.size() == 4);
  for (unsigned i = 0; i < 4; ++i) {
    CHECK(m.nodes[i].index == i);
    CHECK(m.nodes[i].memoryBytes == 64'000'000'000ull);
    std::vector<unsigned> want;
    for (unsigned c = 0; c < 8; ++c) want.push_back(8 * i + c);
    CHECK(m.nodes[i].cores == want);
  }
}

TEST_CASE("topology: synthetic SMT lists the first PU of each core, GiB memory") {
  Machine m = Machine::fromSynthetic("pack:1 numa:2(memory=2GiB) core:2 pu:2");
  CHECK(m.cores == 4);
  CHECK(m.pus == 8);
  REQUIRE(m.nodes.size() == 2);
  CHECK(m.nodes[0].memoryBytes == (2ull << 30));
  CHECK(m.nodes[0].cores == std::vector<unsigned>{0, 2});
  CHECK(m.nodes[1].cores == std::vector<unsigned>{4, 6});
  CHECK_THROWS_AS(Machine::fromSynthetic("pack:2 numa:2 core:8"), std::invalid_argument);
}

TEST_CASE("topology: binding this thread to one allowed core reads back that core") {
  CpuSet allowed = allowedCpus();
  REQUIRE_FALSE(allowed.empty());
  BindingGuard guard;
  const unsigned core = allowed.cpus.back();
  tern::topo::BindStatus s = tern::topo::bindCurrentThreadToCores({core});
  if (!s) {
    WARN_MESSAGE(false, s.warning);  // the OS refused (restricted runtime): a warning, no crash
    CHECK_FALSE(s.warning.empty());
    return;
  }
  CHECK(s.warning.empty());
  CHECK(tern::topo::currentThreadBinding() == std::vector<unsigned>{core});
}

TEST_CASE("topology: binding outside the allowed set is refused with a warning") {
  BindingGuard guard;
  const std::vector<unsigned> before = tern::topo::currentThreadBinding();
  tern::topo::BindStatus s = tern::topo::bindCurrentThreadToCores({allowedCpus().cpus.back() + 4096});
  CHECK_FALSE(s.ok);
  CHECK(s.warning.find("not in this process's allowed cpuset") != std::string::npos);
  CHECK(tern::topo::currentThreadBinding() == before);
  CHECK_FALSE(tern::topo::bindCurrentThreadToCores({}).ok);
  tern::topo::TeamBinding t = tern::topo::bindOpenMpTeam({4096 + 7});
  CHECK_FALSE(t.status.ok);
  CHECK(t.status.warning.find("4103") != std::string::npos);
}

TEST_CASE("topology: an OpenMP team bound to the node's cores reads back one core per thread") {
  Machine m = Machine::detect();
  REQUIRE_FALSE(m.nodes.empty());
  const std::vector<unsigned> cores = m.nodes.front().cores;
  REQUIRE_FALSE(cores.empty());
  BindingGuard guard;
  tern::topo::TeamBinding team = tern::topo::bindOpenMpTeam(cores);
  if (!team.status) {
    WARN_MESSAGE(false, team.status.warning);
    return;
  }
  REQUIRE(team.perThread.size() == cores.size());
  for (size_t t = 0; t < cores.size(); ++t)
    CHECK(team.perThread[t] == std::vector<unsigned>{cores[t]});
  // The next parallel region of this thread reuses the bound threads.
  std::vector<std::vector<unsigned>> again = tern::topo::openMpTeamBinding(static_cast<int>(cores.size()));
  std::vector<unsigned> seen;
  for (const auto& b : again) {
    REQUIRE(b.size() == 1);
    seen.push_back(b[0]);
  }
  std::sort(seen.begin(), seen.end());
  std::vector<unsigned> want = cores;
  std::sort(want.begin(), want.end());
  CHECK(seen == want);
}

TEST_CASE("topology: memory on a NUMA node is bound or placed by first touch with a warning") {
  std::vector<unsigned> nodes = tern::topo::numaNodeIndexes();
  REQUIRE_FALSE(nodes.empty());
  const size_t bytes = size_t(4) << 20;
  tern::topo::NodeBuffer buf(bytes, nodes.front());
  REQUIRE(buf.data() != nullptr);
  CHECK(buf.size() == bytes);
  CHECK((buf.status().ok || !buf.status().warning.empty()));
  if (!buf.status().ok) MESSAGE("membind refused: " << buf.status().warning);
  CHECK(std::all_of(buf.data(), buf.data() + bytes, [](std::byte b) { return b == std::byte{0}; }));
  buf.data()[bytes - 1] = std::byte{7};
  // On a one-node host every page is on that node, bound or not.
  std::optional<unsigned> where = tern::topo::memoryNode(buf.data(), bytes);
  if (nodes.size() == 1 && where) CHECK(*where == nodes.front());
  if (buf.status().ok && where) CHECK(*where == nodes.front());

  tern::topo::NodeBuffer moved = std::move(buf);
  CHECK(buf.data() == nullptr);
  CHECK(moved.data()[bytes - 1] == std::byte{7});

  tern::topo::NodeBuffer nowhere(4096, 9999);
  CHECK_FALSE(nowhere.status().ok);
  CHECK(nowhere.status().warning.find("9999") != std::string::npos);
  REQUIRE(nowhere.data() != nullptr);  // still usable memory

  tern::topo::BindStatus ms = tern::topo::bindThreadMemoryToNode(9999);
  CHECK_FALSE(ms.ok);
  CHECK_FALSE(ms.warning.empty());
}
