#include "hypercore/placement.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace hypercore {
namespace {

uint64_t Mib(uint64_t bytes) { return bytes >> 20; }

bool Eligible(const PlacementNode& node) { return node.alive && !node.maintenance; }

int VcpusMax(const PlacementNode& node, const PlacementOptions& options) {
  const double ratio = std::max(1.0, options.vcpu_overcommit_ratio);
  return static_cast<int>(std::floor(node.cpus * ratio));
}

bool MostFreeFirst(const NodeLoad& a, const NodeLoad& b) {
  if (a.ram_free_bytes != b.ram_free_bytes) return a.ram_free_bytes > b.ram_free_bytes;
  return a.node < b.node;
}

bool Fits(const VmDemand& vm, const NodeLoad& load) {
  return vm.ram_bytes <= load.ram_free_bytes && vm.vcpus <= load.cpus &&
         load.vcpus_used + vm.vcpus <= load.vcpus_max;
}

// RankNodes over an explicit node subset (used by the N-1 check to leave one node out).
std::vector<NodeLoad> Rank(const std::vector<PlacementNode>& nodes,
                           const std::vector<PlacedVm>& placed, const PlacementOptions& options,
                           const std::string& excluded) {
  absl::btree_map<std::string, NodeLoad> loads;
  for (const PlacementNode& node : nodes) {
    if (!Eligible(node) || node.name == excluded) continue;
    NodeLoad& load = loads[node.name];
    load.node = node.name;
    load.ram_bytes = node.ram_bytes;
    load.cpus = node.cpus;
    load.vcpus_max = VcpusMax(node, options);
  }
  absl::btree_map<std::string, uint64_t> ram_used;
  for (const PlacedVm& vm : placed) {
    auto it = loads.find(vm.node);
    if (it == loads.end()) continue;
    ram_used[vm.node] += vm.ram_bytes;
    it->second.vcpus_used += vm.vcpus;
  }
  std::vector<NodeLoad> ranked;
  for (auto& [name, load] : loads) {
    const uint64_t used = ram_used[name];
    load.ram_free_bytes = used >= load.ram_bytes ? 0 : load.ram_bytes - used;
    ranked.push_back(load);
  }
  std::sort(ranked.begin(), ranked.end(), MostFreeFirst);
  return ranked;
}

absl::StatusOr<PlacementChoice> PlaceAmong(const VmDemand& vm, const std::vector<NodeLoad>& ranked) {
  for (const NodeLoad& load : ranked) {
    if (Fits(vm, load)) return PlacementChoice{load.node, load.ram_free_bytes};
  }
  const std::string what = absl::StrCat("vm ", vm.name, " (", Mib(vm.ram_bytes), " MiB RAM, ", vm.vcpus,
                                        " vCPUs)");
  if (ranked.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no node can run ", what, ": no node is alive and out of maintenance"));
  }
  // `ranked` is sorted by free RAM: the first one has the most.
  const NodeLoad& best = ranked.front();
  std::string why = absl::StrCat("largest free RAM is ", Mib(best.ram_free_bytes), " MiB (",
                                 best.node, ")");
  if (vm.ram_bytes <= best.ram_free_bytes) {
    // RAM would fit somewhere: CPUs are what is missing.
    absl::StrAppend(&why, "; no node with enough RAM has ", vm.vcpus, " vCPUs to spare");
  }
  return absl::ResourceExhaustedError(absl::StrCat("no node can run ", what, ": ", why));
}

}  // namespace

std::vector<NodeLoad> RankNodes(const std::vector<PlacementNode>& nodes,
                                const std::vector<PlacedVm>& placed,
                                const PlacementOptions& options) {
  return Rank(nodes, placed, options, /*excluded=*/"");
}

absl::StatusOr<PlacementChoice> PlaceVm(const VmDemand& vm, const std::vector<PlacementNode>& nodes,
                                        const std::vector<PlacedVm>& placed,
                                        const PlacementOptions& options) {
  return PlaceAmong(vm, Rank(nodes, placed, options, /*excluded=*/""));
}

std::vector<FailoverCondition> CheckNMinusOne(const std::vector<PlacementNode>& nodes,
                                              const std::vector<PlacedVm>& placed,
                                              const PlacementOptions& options) {
  std::vector<PlacementNode> sorted_nodes = nodes;
  std::sort(sorted_nodes.begin(), sorted_nodes.end(),
            [](const PlacementNode& a, const PlacementNode& b) { return a.name < b.name; });
  std::vector<FailoverCondition> conditions;
  for (const PlacementNode& failing : sorted_nodes) {
    if (!failing.alive) continue;
    std::vector<PlacedVm> survivors_load;
    std::vector<PlacedVm> to_move;
    for (const PlacedVm& vm : placed) {
      (vm.node == failing.name ? to_move : survivors_load).push_back(vm);
    }
    if (to_move.empty()) continue;
    std::sort(to_move.begin(), to_move.end(), [](const PlacedVm& a, const PlacedVm& b) {
      if (a.ram_bytes != b.ram_bytes) return a.ram_bytes > b.ram_bytes;
      return a.name < b.name;
    });
    std::vector<std::string> stranded;
    std::vector<std::string> stranded_text;
    for (const PlacedVm& vm : to_move) {
      const VmDemand demand{vm.name, vm.ram_bytes, vm.vcpus};
      auto choice = PlaceAmong(demand, Rank(sorted_nodes, survivors_load, options, failing.name));
      if (choice.ok()) {
        survivors_load.push_back(PlacedVm{vm.name, choice->node, vm.ram_bytes, vm.vcpus});
      } else {
        stranded.push_back(vm.name);
        stranded_text.push_back(
            absl::StrCat(vm.name, " (", Mib(vm.ram_bytes), " MiB, ", vm.vcpus, " vCPUs)"));
      }
    }
    if (stranded.empty()) continue;
    const std::vector<NodeLoad> after = Rank(sorted_nodes, survivors_load, options, failing.name);
    std::string largest = after.empty()
                              ? std::string("no other node is available")
                              : absl::StrCat("largest free RAM left ", Mib(after.front().ram_free_bytes),
                                             " MiB (", after.front().node, ")");
    FailoverCondition condition;
    condition.node = failing.name;
    condition.message = absl::StrCat(
        "if ", failing.name, " failed, ", stranded.size(), " of its ", to_move.size(),
        " VMs could not be restarted on the other nodes: ", absl::StrJoin(stranded_text, ", "),
        "; ", largest);
    condition.vms = std::move(stranded);
    conditions.push_back(std::move(condition));
  }
  return conditions;
}

}  // namespace hypercore
