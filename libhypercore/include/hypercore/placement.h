// VM placement: which node runs a new or restarted VM, and whether the cluster could
// restart every VM of any one node on the others (the "N-1" condition the HC3 papers
// alert on).
//
// Rule. A VM goes to the node with the most free RAM among the eligible nodes where it
// fits; ties go to the node whose name sorts first, so the choice is deterministic.
//  - Eligible: alive (holds a liveness lease) and not in maintenance.
//  - Free RAM: the node's RAM for VMs minus the RAM of the VMs placed on it.
//  - Fits: its RAM is at most the node's free RAM, and its vCPUs respect the overcommit
//    rule: the vCPUs of all VMs on a node may add up to at most
//    floor(cpus * vcpu_overcommit_ratio), and one VM never has more vCPUs than the node
//    has CPUs (a guest with more vCPUs than host threads only contends with itself).
//    RAM is never overcommitted: a guest's RAM is reserved in full.
//
// Pure functions over a snapshot: no clock, no I/O, deterministic, any thread.
#ifndef HYPERCORE_PLACEMENT_H_
#define HYPERCORE_PLACEMENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hypercore {

struct PlacementNode {
  std::string name;
  uint64_t ram_bytes = 0;    // RAM this node offers to VMs (host overhead already removed)
  int cpus = 0;              // CPU threads
  bool alive = true;         // holds its liveness lease
  bool maintenance = false;  // takes no new or restarted VMs
};

// A VM that holds resources on a node (running, starting or stopping there).
struct PlacedVm {
  std::string name;
  std::string node;
  uint64_t ram_bytes = 0;
  int vcpus = 0;
};

// What a VM to be placed needs.
struct VmDemand {
  std::string name;
  uint64_t ram_bytes = 0;
  int vcpus = 1;
};

struct PlacementOptions {
  // vCPUs of all VMs on a node <= floor(cpus * vcpu_overcommit_ratio). >= 1.
  double vcpu_overcommit_ratio = 4.0;
};

// The free resources of one eligible node.
struct NodeLoad {
  std::string node;
  uint64_t ram_bytes = 0;       // the node's RAM for VMs
  uint64_t ram_free_bytes = 0;  // ram_bytes minus the RAM of its placed VMs (0 if over)
  int cpus = 0;
  int vcpus_used = 0;
  int vcpus_max = 0;  // floor(cpus * vcpu_overcommit_ratio)
};

// Every eligible node with its load, most free RAM first, ties by name. VMs placed on
// nodes that are not eligible (dead, in maintenance, unknown) are left out of the sums.
std::vector<NodeLoad> RankNodes(const std::vector<PlacementNode>& nodes,
                                const std::vector<PlacedVm>& placed,
                                const PlacementOptions& options);

struct PlacementChoice {
  std::string node;
  uint64_t ram_free_bytes = 0;  // the chosen node's free RAM before this VM
};

// The node for `vm` by the rule above. RESOURCE_EXHAUSTED when no eligible node fits,
// naming the VM, its RAM and vCPUs and the largest free RAM (and its node); the same
// code when no node is eligible at all.
absl::StatusOr<PlacementChoice> PlaceVm(const VmDemand& vm, const std::vector<PlacementNode>& nodes,
                                        const std::vector<PlacedVm>& placed,
                                        const PlacementOptions& options);

// "The VMs of node X could not be restarted on the others."
struct FailoverCondition {
  std::string node;                 // the node whose failure would strand VMs
  std::vector<std::string> vms;     // the VMs that would find no place, largest first
  std::string message;              // one line for operators
};

// For every alive node, places its VMs (largest RAM first, then by name) greedily onto
// the other eligible nodes with PlaceVm, each placement adding to the next one's load;
// returns one condition per node some of whose VMs would not fit, sorted by node name.
// Empty when the cluster can lose any one node. Nodes in maintenance are checked as
// failing nodes but take nothing.
std::vector<FailoverCondition> CheckNMinusOne(const std::vector<PlacementNode>& nodes,
                                              const std::vector<PlacedVm>& placed,
                                              const PlacementOptions& options);

}  // namespace hypercore

#endif  // HYPERCORE_PLACEMENT_H_
