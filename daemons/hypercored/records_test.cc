#include "daemons/hypercored/records.h"

#include <gtest/gtest.h>

namespace hypercore::daemon {
namespace {

TEST(Records, KeysKeepToTheirPrefix) {
  EXPECT_EQ(NodeRegistrationKey("node1"), "/hcd/nodes/node1");
  EXPECT_EQ(VmSnapshotKey("web", "daily"), "/hcd/snapshots/web/daily");
  // A VM's snapshot prefix does not cover a VM whose name extends it.
  EXPECT_EQ(VmSnapshotsPrefix("web"), "/hcd/snapshots/web/");
  EXPECT_NE(VmSnapshotKey("web2", "x").rfind(VmSnapshotsPrefix("web"), 0), 0u);
  EXPECT_EQ(MediaKey("debian"), "/hcd/media/debian");
}

TEST(Records, VmSnapshotRoundTrips) {
  VmSnapshotRecord r;
  r.vm = "web";
  r.name = "before-upgrade";
  r.created_unix_ms = 1'700'000'000'123;
  r.spec.name = "web";
  r.spec.description = "front \"end\"";
  r.spec.tags = {"prod", "eu"};
  r.spec.vcpus = 2;
  r.spec.ram_bytes = 1ull << 30;
  r.spec.disks = {VmDisk{"root", 8ull << 30, 7, 3}};
  r.spec.cdrom_iso = "debian";
  VmNic nic;
  nic.vlan = 42;
  nic.mac = "52:54:00:01:02:03";
  r.spec.nics = {nic};
  r.disks = {SnapshotDiskRecord{"root", "web-root", 17}};
  auto back = DecodeVmSnapshot(EncodeVmSnapshot(r));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->vm, "web");
  EXPECT_EQ(back->name, "before-upgrade");
  EXPECT_EQ(back->created_unix_ms, r.created_unix_ms);
  EXPECT_EQ(back->spec.description, r.spec.description);
  EXPECT_EQ(back->spec.tags, r.spec.tags);
  EXPECT_EQ(back->spec.vcpus, 2);
  ASSERT_EQ(back->spec.disks.size(), 1u);
  EXPECT_EQ(back->spec.disks[0].flash_priority, 7);
  EXPECT_EQ(back->spec.disks[0].replication, 3);
  EXPECT_EQ(back->spec.cdrom_iso, "debian");
  ASSERT_EQ(back->spec.nics.size(), 1u);
  EXPECT_EQ(back->spec.nics[0].vlan, 42);
  EXPECT_EQ(back->spec.nics[0].mac, "52:54:00:01:02:03");
  ASSERT_EQ(back->disks.size(), 1u);
  EXPECT_EQ(back->disks[0].vsd, "web-root");
  EXPECT_EQ(back->disks[0].snapshot_id, 17u);
}

TEST(Records, MediaAndNodesRoundTrip) {
  MediaRecord m{"debian", "iso-debian", 123456, MediaRecord::State::kReady, "/srv/debian.iso", "node2"};
  auto mb = DecodeMedia(EncodeMedia(m));
  ASSERT_TRUE(mb.ok()) << mb.status();
  EXPECT_EQ(mb->state, MediaRecord::State::kReady);
  EXPECT_EQ(mb->size_bytes, 123456u);
  EXPECT_EQ(mb->source, "/srv/debian.iso");
  NodeRegistration n{"node1", "127.0.0.1:7101", 4ull << 30, 4, 1, "/run/scribe/nbd-1.sock"};
  auto nb = DecodeNodeRegistration(EncodeNodeRegistration(n));
  ASSERT_TRUE(nb.ok()) << nb.status();
  EXPECT_EQ(nb->admin_address, "127.0.0.1:7101");
  EXPECT_EQ(nb->scribe_node, 1u);
}

TEST(Records, DamageIsDataLossNamingTheField) {
  EXPECT_EQ(DecodeMedia("{").status().code(), absl::StatusCode::kDataLoss);
  auto bad = DecodeMedia(R"({"name":"x","vsd":"iso-x","size_bytes":1,"state":"sideways","source":"/a","node":"n"})");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("sideways"), std::string::npos);
  auto missing = DecodeVmSnapshot(R"({"vm":"web","name":"s"})");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("created_unix_ms"), std::string::npos)
      << missing.status();
}

}  // namespace
}  // namespace hypercore::daemon
