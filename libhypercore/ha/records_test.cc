#include "libhypercore/ha/records.h"

#include <gtest/gtest.h>

#include <string>

namespace hypercore::ha_internal {
namespace {

VmInfo FullVm() {
  VmInfo vm;
  vm.spec.name = "web1";
  vm.spec.description = "front end \"<&>\" \xc3\xa9";
  vm.spec.tags = {"prod", "web"};
  vm.spec.vcpus = 4;
  vm.spec.ram_bytes = 6ull << 30;
  vm.spec.disks = {VmDisk{"root", 20ull << 30, 7, 3}, VmDisk{"data", 1ull << 40, 0, 2}};
  vm.spec.cdrom_iso = "debian.iso";
  VmNic tagged;
  tagged.vlan = 4094;
  tagged.mac = "52:54:00:ab:cd:ef";
  vm.spec.nics = {VmNic{}, tagged};
  vm.spec.boot = VmBoot{"/srv/guest/vmlinuz", "/srv/guest/initrd.gz", "console=ttyS0 hc3.mode=loop \"q\""};
  vm.uuid = "0b1c2d3e-4f50-4617-8899-aabbccddeeff";
  vm.desired = DesiredState::kRunning;
  vm.owner = "node3";
  vm.owner_lease = 7'587'890'123'456'789'012;
  vm.epoch = 41;
  vm.condition = "start failed on node3: x";
  vm.force_off = true;
  return vm;
}

void ExpectSameVm(const VmInfo& a, const VmInfo& b) {
  EXPECT_EQ(a.spec.name, b.spec.name);
  EXPECT_EQ(a.spec.description, b.spec.description);
  EXPECT_EQ(a.spec.tags, b.spec.tags);
  EXPECT_EQ(a.spec.vcpus, b.spec.vcpus);
  EXPECT_EQ(a.spec.ram_bytes, b.spec.ram_bytes);
  ASSERT_EQ(a.spec.disks.size(), b.spec.disks.size());
  for (size_t i = 0; i < a.spec.disks.size(); ++i) {
    EXPECT_EQ(a.spec.disks[i].name, b.spec.disks[i].name);
    EXPECT_EQ(a.spec.disks[i].size_bytes, b.spec.disks[i].size_bytes);
    EXPECT_EQ(a.spec.disks[i].flash_priority, b.spec.disks[i].flash_priority);
    EXPECT_EQ(a.spec.disks[i].replication, b.spec.disks[i].replication);
  }
  EXPECT_EQ(a.spec.cdrom_iso, b.spec.cdrom_iso);
  ASSERT_EQ(a.spec.nics.size(), b.spec.nics.size());
  for (size_t i = 0; i < a.spec.nics.size(); ++i) {
    EXPECT_EQ(a.spec.nics[i].model, b.spec.nics[i].model);
    EXPECT_EQ(a.spec.nics[i].vlan, b.spec.nics[i].vlan);
    EXPECT_EQ(a.spec.nics[i].mac, b.spec.nics[i].mac);
  }
  ASSERT_EQ(a.spec.boot.has_value(), b.spec.boot.has_value());
  if (a.spec.boot) {
    EXPECT_EQ(a.spec.boot->kernel_path, b.spec.boot->kernel_path);
    EXPECT_EQ(a.spec.boot->initrd_path, b.spec.boot->initrd_path);
    EXPECT_EQ(a.spec.boot->cmdline, b.spec.boot->cmdline);
  }
  EXPECT_EQ(a.uuid, b.uuid);
  EXPECT_EQ(a.desired, b.desired);
  EXPECT_EQ(a.owner, b.owner);
  EXPECT_EQ(a.owner_lease, b.owner_lease);
  EXPECT_EQ(a.epoch, b.epoch);
  EXPECT_EQ(a.condition, b.condition);
  EXPECT_EQ(a.force_off, b.force_off);
}

TEST(VmRecord, RoundTripsEveryField) {
  const VmInfo vm = FullVm();
  auto decoded = DecodeVm(EncodeVm(vm));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ExpectSameVm(vm, *decoded);

  VmInfo bare;
  bare.spec.name = "x";
  bare.spec.ram_bytes = 64ull << 20;
  decoded = DecodeVm(EncodeVm(bare));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ExpectSameVm(bare, *decoded);
  EXPECT_FALSE(decoded->spec.cdrom_iso.has_value());
  EXPECT_FALSE(decoded->spec.boot.has_value());
  // boot is written only when present: records of older writers (without it) still read.
  EXPECT_EQ(EncodeVm(bare).find("boot"), std::string::npos);
  // force_off is written only when set: a record without it reads as false.
  EXPECT_EQ(EncodeVm(bare).find("force_off"), std::string::npos);
}

TEST(VmRecord, IsReadableJson) {
  const std::string text = EncodeVm(FullVm());
  EXPECT_NE(text.find("\"desired\":\"running\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"epoch\":41"), std::string::npos) << text;
  EXPECT_NE(text.find("\"owner\":\"node3\""), std::string::npos) << text;
}

TEST(VmRecord, DamageIsDataLossNamingTheField) {
  struct Case {
    std::string value;
    std::string expect;
  };
  const Case cases[] = {
      {"not json", "not valid JSON"},
      {"[]", "not a JSON object"},
      {R"({"uuid":"u","desired":"running","owner":"","owner_lease":0,"epoch":1,"condition":""})", "\"spec\""},
      {R"({"spec":{"name":"x","description":"","tags":[],"vcpus":1,"ram_bytes":67108864,"disks":[],"nics":[]},
           "uuid":"u","desired":"maybe","owner":"","owner_lease":0,"epoch":1,"condition":""})", "maybe"},
      {R"({"spec":{"name":"x","description":"","tags":[],"vcpus":1,"ram_bytes":-1,"disks":[],"nics":[]},
           "uuid":"u","desired":"running","owner":"","owner_lease":0,"epoch":1,"condition":""})", "ram_bytes"},
      {R"({"spec":{"name":"x","description":"","tags":[],"vcpus":1,"ram_bytes":1,"disks":[{"name":"d"}],"nics":[]},
           "uuid":"u","desired":"running","owner":"","owner_lease":0,"epoch":1,"condition":""})", "size_bytes"},
      {R"({"spec":{"name":"x","description":"","tags":[],"vcpus":1,"ram_bytes":1,"disks":[],"nics":[]},
           "uuid":"u","desired":"running","owner":5,"owner_lease":0,"epoch":1,"condition":""})", "owner"},
      {R"({"spec":{"name":"x","description":"","tags":[],"vcpus":1,"ram_bytes":1,"disks":[],"nics":[],
           "boot":{"kernel_path":"/k","initrd_path":""}},
           "uuid":"u","desired":"running","owner":"","owner_lease":0,"epoch":1,"condition":""})", "cmdline"},
      {R"({"spec":{"name":"x","description":"","tags":[],"vcpus":1,"ram_bytes":1,"disks":[],"nics":[],
           "boot":"/k"},
           "uuid":"u","desired":"running","owner":"","owner_lease":0,"epoch":1,"condition":""})", "spec.boot"},
  };
  for (const Case& c : cases) {
    auto decoded = DecodeVm(c.value);
    ASSERT_FALSE(decoded.ok()) << c.value;
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(decoded.status().message().find(c.expect), std::string::npos) << decoded.status();
  }
}

TEST(NodeRecord, RoundTripAndDamage) {
  auto node = DecodeNode(EncodeNode(NodeRecord{12ull << 30, 16, true}));
  ASSERT_TRUE(node.ok());
  EXPECT_EQ(node->ram_bytes, 12ull << 30);
  EXPECT_EQ(node->cpus, 16);
  EXPECT_TRUE(node->maintenance);
  EXPECT_EQ(DecodeNode(R"({"ram_bytes":1,"cpus":"many","maintenance":false})").status().code(),
            absl::StatusCode::kDataLoss);
}

scribe::KeyValue Kv(const std::string& key, const std::string& value, int64_t lease, int64_t rev) {
  scribe::KeyValue kv;
  kv.key = key;
  kv.value = value;
  kv.lease = scribe::LeaseId{lease};
  kv.mod_revision = rev;
  return kv;
}

TEST(Snapshot, DecodesNodesVmsCoordinatorAndSetsAsideDamage) {
  VmInfo alive_owner = FullVm();
  alive_owner.owner = "node1";
  alive_owner.owner_lease = 11;
  VmInfo rejoined_owner = FullVm();
  rejoined_owner.spec.name = "web2";
  rejoined_owner.owner = "node1";
  rejoined_owner.owner_lease = 5;
  VmInfo dead_owner = FullVm();
  dead_owner.spec.name = "web3";
  dead_owner.owner = "node9";
  VmInfo misnamed = FullVm();
  scribe::ListResult list;
  list.revision = 99;
  list.kvs = {Kv(kCoordinatorKey, "node1", 11, 3),
              Kv(NodeKey("node1"), EncodeNode(NodeRecord{8ull << 30, 4, false}), 11, 4),
              Kv(NodeKey("node2"), "garbage", 12, 5),
              Kv(VmKey("web1"), EncodeVm(alive_owner), 0, 6),
              Kv(VmKey("web2"), EncodeVm(rejoined_owner), 0, 7),
              Kv(VmKey("web3"), EncodeVm(dead_owner), 0, 8),
              Kv(VmKey("other"), EncodeVm(misnamed), 0, 9)};
  const Snapshot snap = DecodeSnapshot(list);
  EXPECT_EQ(snap.revision, 99);
  ASSERT_TRUE(snap.coordinator.has_value());
  EXPECT_EQ(snap.coordinator->value, "node1");
  ASSERT_EQ(snap.nodes.size(), 1u);
  EXPECT_EQ(snap.nodes.at("node1").lease, 11);
  ASSERT_EQ(snap.vms.size(), 3u);
  EXPECT_EQ(snap.vms.at("web2").revision, 7);
  EXPECT_TRUE(snap.OwnerAlive(snap.vms.at("web1")));
  EXPECT_FALSE(snap.OwnerAlive(snap.vms.at("web2"))) << "node1 holds another lease now";
  EXPECT_FALSE(snap.OwnerAlive(snap.vms.at("web3")));
  ASSERT_EQ(snap.unreadable.size(), 2u);
  EXPECT_NE(snap.unreadable[0].find("/hc/nodes/node2"), std::string::npos);
  EXPECT_NE(snap.unreadable[1].find("names another VM"), std::string::npos);
}

}  // namespace
}  // namespace hypercore::ha_internal
