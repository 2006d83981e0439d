#include "hypercore/placement.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace hypercore {
namespace {

constexpr uint64_t kMiB = 1ull << 20;

PlacementNode Node(const std::string& name, uint64_t ram_mib, int cpus = 8) {
  return PlacementNode{name, ram_mib * kMiB, cpus, /*alive=*/true, /*maintenance=*/false};
}

PlacedVm Vm(const std::string& name, const std::string& node, uint64_t ram_mib, int vcpus = 1) {
  return PlacedVm{name, node, ram_mib * kMiB, vcpus};
}

VmDemand Demand(const std::string& name, uint64_t ram_mib, int vcpus = 1) {
  return VmDemand{name, ram_mib * kMiB, vcpus};
}

TEST(PlaceVm, MostFreeRamWins) {
  const std::vector<PlacementNode> nodes = {Node("node1", 8192), Node("node2", 8192),
                                            Node("node3", 4096)};
  const std::vector<PlacedVm> placed = {Vm("a", "node1", 4096), Vm("b", "node2", 1024)};
  auto choice = PlaceVm(Demand("web", 1024), nodes, placed, {});
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ(choice->node, "node2");
  EXPECT_EQ(choice->ram_free_bytes, 7168 * kMiB);
}

TEST(PlaceVm, TiesGoToTheFirstNodeName) {
  const std::vector<PlacementNode> nodes = {Node("node3", 4096), Node("node1", 4096),
                                            Node("node2", 4096)};
  auto choice = PlaceVm(Demand("web", 512), nodes, {}, {});
  ASSERT_TRUE(choice.ok());
  EXPECT_EQ(choice->node, "node1");
}

TEST(PlaceVm, SkipsDeadAndMaintenanceNodesAndIgnoresTheirVms) {
  std::vector<PlacementNode> nodes = {Node("node1", 16384), Node("node2", 16384),
                                      Node("node3", 2048)};
  nodes[0].alive = false;
  nodes[1].maintenance = true;
  // A VM still recorded on the dead node must not count anywhere.
  const std::vector<PlacedVm> placed = {Vm("old", "node1", 2048)};
  auto choice = PlaceVm(Demand("web", 1024), nodes, placed, {});
  ASSERT_TRUE(choice.ok());
  EXPECT_EQ(choice->node, "node3");
  EXPECT_EQ(choice->ram_free_bytes, 2048 * kMiB);
}

TEST(PlaceVm, LargestFreeNodeFullFallsBackToOneThatFits) {
  // node1 has the most free RAM but its vCPUs are used up (8 cpus * 2 = 16).
  const std::vector<PlacementNode> nodes = {Node("node1", 16384), Node("node2", 4096)};
  const std::vector<PlacedVm> placed = {Vm("busy", "node1", 1024, 8), Vm("busy2", "node1", 1024, 8)};
  PlacementOptions options;
  options.vcpu_overcommit_ratio = 2.0;
  auto choice = PlaceVm(Demand("web", 1024, 2), nodes, placed, options);
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ(choice->node, "node2");
}

TEST(PlaceVm, OneVmNeverHasMoreVcpusThanTheNodeHasCpus) {
  const std::vector<PlacementNode> nodes = {Node("node1", 16384, 4)};
  auto choice = PlaceVm(Demand("big", 1024, 5), nodes, {}, {});
  ASSERT_FALSE(choice.ok());
  EXPECT_EQ(choice.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(choice.status().message().find("5 vCPUs"), std::string::npos) << choice.status();
  EXPECT_NE(choice.status().message().find("vCPUs to spare"), std::string::npos) << choice.status();
}

TEST(PlaceVm, ExactFitIsAllowed) {
  const std::vector<PlacementNode> nodes = {Node("node1", 4096, 2)};
  const std::vector<PlacedVm> placed = {Vm("a", "node1", 3072, 7)};
  auto choice = PlaceVm(Demand("web", 1024, 1), nodes, placed, {});  // 8 = 2 * 4 vCPUs
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ(choice->ram_free_bytes, 1024 * kMiB);
  EXPECT_FALSE(PlaceVm(Demand("web", 1025, 1), nodes, placed, {}).ok());
  EXPECT_FALSE(PlaceVm(Demand("web", 1024, 2), nodes, placed, {}).ok());
}

TEST(PlaceVm, NoFitNamesVmRamAndLargestFree) {
  const std::vector<PlacementNode> nodes = {Node("node1", 4096), Node("node2", 8192)};
  const std::vector<PlacedVm> placed = {Vm("a", "node2", 5120)};
  auto choice = PlaceVm(Demand("db1", 6144, 2), nodes, placed, {});
  ASSERT_FALSE(choice.ok());
  EXPECT_EQ(choice.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(choice.status().message(),
            "no node can run vm db1 (6144 MiB RAM, 2 vCPUs): largest free RAM is 4096 MiB (node1)");
}

TEST(PlaceVm, NoEligibleNode) {
  std::vector<PlacementNode> nodes = {Node("node1", 4096)};
  nodes[0].alive = false;
  auto choice = PlaceVm(Demand("web", 512), nodes, {}, {});
  ASSERT_FALSE(choice.ok());
  EXPECT_EQ(choice.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(choice.status().message().find("no node is alive"), std::string::npos);
}

TEST(RankNodes, OrderAndLoads) {
  const std::vector<PlacementNode> nodes = {Node("b", 4096, 2), Node("a", 4096, 2),
                                            Node("c", 8192, 4)};
  const std::vector<PlacedVm> placed = {Vm("x", "c", 6144, 3), Vm("y", "a", 1024, 2),
                                        Vm("z", "ghost", 1024, 2)};
  const std::vector<NodeLoad> ranked = RankNodes(nodes, placed, {});
  ASSERT_EQ(ranked.size(), 3u);
  EXPECT_EQ(ranked[0].node, "b");
  EXPECT_EQ(ranked[0].ram_free_bytes, 4096 * kMiB);
  EXPECT_EQ(ranked[1].node, "a");
  EXPECT_EQ(ranked[1].ram_free_bytes, 3072 * kMiB);
  EXPECT_EQ(ranked[1].vcpus_used, 2);
  EXPECT_EQ(ranked[1].vcpus_max, 8);
  EXPECT_EQ(ranked[2].node, "c");
  EXPECT_EQ(ranked[2].ram_free_bytes, 2048 * kMiB);
  EXPECT_EQ(ranked[2].vcpus_max, 16);
}

TEST(RankNodes, OvercommittedNodeHasZeroFree) {
  const std::vector<PlacementNode> nodes = {Node("a", 1024)};
  const std::vector<PlacedVm> placed = {Vm("x", "a", 2048)};
  const std::vector<NodeLoad> ranked = RankNodes(nodes, placed, {});
  ASSERT_EQ(ranked.size(), 1u);
  EXPECT_EQ(ranked[0].ram_free_bytes, 0u);
}

TEST(CheckNMinusOne, HealthyClusterHasNoCondition) {
  const std::vector<PlacementNode> nodes = {Node("node1", 8192), Node("node2", 8192),
                                            Node("node3", 8192)};
  const std::vector<PlacedVm> placed = {Vm("a", "node1", 4096), Vm("b", "node2", 4096),
                                        Vm("c", "node3", 4096)};
  EXPECT_TRUE(CheckNMinusOne(nodes, placed, {}).empty());
}

TEST(CheckNMinusOne, GreedyLargestFirstAccumulatesLoad) {
  // node1's two VMs both go to node3 (6 GiB free, then 3 GiB: still more than the
  // others). node2's 7 GiB VM fits nowhere. node3's VM fits node1 exactly.
  const std::vector<PlacementNode> nodes = {Node("node1", 8192), Node("node2", 8192),
                                            Node("node3", 8192)};
  const std::vector<PlacedVm> placed = {Vm("a1", "node1", 3072), Vm("a2", "node1", 3072),
                                        Vm("big", "node2", 7168), Vm("c", "node3", 2048)};
  const std::vector<FailoverCondition> conditions = CheckNMinusOne(nodes, placed, {});
  ASSERT_EQ(conditions.size(), 1u);
  EXPECT_EQ(conditions[0].node, "node2");
  EXPECT_EQ(conditions[0].vms, std::vector<std::string>{"big"});
  EXPECT_EQ(conditions[0].message,
            "if node2 failed, 1 of its 1 VMs could not be restarted on the other nodes: big "
            "(7168 MiB, 1 vCPUs); largest free RAM left 6144 MiB (node3)");
}

TEST(CheckNMinusOne, SecondVmFailsOnceTheFirstTookTheSpace) {
  const std::vector<PlacementNode> nodes = {Node("node1", 8192), Node("node2", 4096)};
  const std::vector<PlacedVm> placed = {Vm("x", "node1", 3072), Vm("y", "node1", 2048)};
  const std::vector<FailoverCondition> conditions = CheckNMinusOne(nodes, placed, {});
  ASSERT_EQ(conditions.size(), 1u);
  EXPECT_EQ(conditions[0].node, "node1");
  EXPECT_EQ(conditions[0].vms, std::vector<std::string>{"y"});
}

TEST(CheckNMinusOne, DeadNodesNeitherFailNorTake) {
  std::vector<PlacementNode> nodes = {Node("node1", 8192), Node("node2", 8192), Node("node3", 8192)};
  nodes[2].alive = false;
  const std::vector<PlacedVm> placed = {Vm("a", "node1", 6144), Vm("b", "node2", 6144)};
  const std::vector<FailoverCondition> conditions = CheckNMinusOne(nodes, placed, {});
  ASSERT_EQ(conditions.size(), 2u);
  EXPECT_EQ(conditions[0].node, "node1");
  EXPECT_EQ(conditions[1].node, "node2");
}

TEST(CheckNMinusOne, MaintenanceNodeTakesNothing) {
  std::vector<PlacementNode> nodes = {Node("node1", 8192), Node("node2", 8192)};
  nodes[1].maintenance = true;
  const std::vector<PlacedVm> placed = {Vm("a", "node1", 1024)};
  const std::vector<FailoverCondition> conditions = CheckNMinusOne(nodes, placed, {});
  ASSERT_EQ(conditions.size(), 1u);
  EXPECT_NE(conditions[0].message.find("no other node is available"), std::string::npos)
      << conditions[0].message;
}

}  // namespace
}  // namespace hypercore
