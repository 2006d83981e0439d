#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "hypercore/hypervisor.h"

namespace hypercore {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr char kUuid[] = "0b1c2d3e-4f50-4617-8899-aabbccddeeff";

VmSpec Spec() {
  VmSpec spec;
  spec.name = "web1";
  spec.ram_bytes = 512 * kMiB;
  spec.disks = {VmDisk{"root", 1ull << 30}, VmDisk{"data", 1ull << 30}};
  return spec;
}

NbdLaunchOptions Nbd() {
  NbdLaunchOptions o;
  o.socket_path = "/run/scribed/nbd.sock";
  return o;
}

TEST(MakeNbdLaunch, OneExportPerDiskOnScribedsSocket) {
  const VmLaunch launch = MakeNbdLaunch(Spec(), kUuid, 7, Nbd());
  EXPECT_TRUE(ValidateLaunch(launch).ok()) << ValidateLaunch(launch);
  ASSERT_EQ(launch.disks.size(), 2u);
  EXPECT_EQ(launch.disks[0].nbd.socket_path, "/run/scribed/nbd.sock");
  EXPECT_EQ(launch.disks[0].nbd.export_name, "web1/root");
  EXPECT_EQ(launch.disks[1].nbd.export_name, "web1/data");
  EXPECT_EQ(launch.epoch, 7u);
  EXPECT_FALSE(launch.cdrom.has_value());
}

TEST(MakeNbdLaunch, IsoAsExportOrFile) {
  VmSpec spec = Spec();
  spec.cdrom_iso = "debian-12.iso";
  VmLaunch launch = MakeNbdLaunch(spec, kUuid, 1, Nbd());
  ASSERT_TRUE(launch.cdrom.has_value());
  ASSERT_TRUE(launch.cdrom->nbd.has_value());
  EXPECT_EQ(launch.cdrom->nbd->export_name, "iso/debian-12.iso");
  EXPECT_TRUE(ValidateLaunch(launch).ok());

  NbdLaunchOptions files = Nbd();
  files.iso_directory = "/var/lib/hc/iso";
  launch = MakeNbdLaunch(spec, kUuid, 1, files);
  ASSERT_TRUE(launch.cdrom.has_value());
  EXPECT_FALSE(launch.cdrom->nbd.has_value());
  EXPECT_EQ(launch.cdrom->file_path, "/var/lib/hc/iso/debian-12.iso");
  EXPECT_TRUE(ValidateLaunch(launch).ok());
}

TEST(MakeNbdLaunch, DaemonNamesTheExports) {
  VmSpec spec = Spec();
  spec.cdrom_iso = "debian-12";
  NbdLaunchOptions o = Nbd();
  o.disk_export_name = [](const std::string& vm, const std::string& disk, uint64_t epoch) {
    return vm + "-" + disk + "@" + std::to_string(epoch);
  };
  o.iso_export_name = [](const std::string& iso) { return "iso-" + iso; };
  const VmLaunch launch = MakeNbdLaunch(spec, kUuid, 12, o);
  EXPECT_TRUE(ValidateLaunch(launch).ok()) << ValidateLaunch(launch);
  ASSERT_EQ(launch.disks.size(), 2u);
  EXPECT_EQ(launch.disks[0].nbd.export_name, "web1-root@12");
  EXPECT_EQ(launch.disks[1].nbd.export_name, "web1-data@12");
  EXPECT_EQ(launch.disks[1].nbd.socket_path, "/run/scribed/nbd.sock");
  ASSERT_TRUE(launch.cdrom.has_value() && launch.cdrom->nbd.has_value());
  EXPECT_EQ(launch.cdrom->nbd->export_name, "iso-debian-12");
}

TEST(ValidateLaunch, NamesTheProblem) {
  const VmLaunch good = MakeNbdLaunch(Spec(), kUuid, 1, Nbd());
  struct Case {
    const char* what;
    std::function<void(VmLaunch&)> breakit;
    const char* expect;
  };
  const Case cases[] = {
      {"spec", [](VmLaunch& l) { l.spec.vcpus = 0; }, "vcpus"},
      {"uuid", [](VmLaunch& l) { l.uuid = "0B1C2D3E-4F50-4617-8899-AABBCCDDEEFF"; }, "launch.uuid"},
      {"epoch", [](VmLaunch& l) { l.epoch = 0; }, "launch.epoch"},
      {"count", [](VmLaunch& l) { l.disks.pop_back(); }, "launch.disks"},
      {"relative socket", [](VmLaunch& l) { l.disks[1].nbd.socket_path = "nbd.sock"; },
       "launch.disks[1].nbd.socket_path"},
      {"long socket", [](VmLaunch& l) { l.disks[0].nbd.socket_path = "/" + std::string(107, 's'); },
       "Unix socket"},
      {"export", [](VmLaunch& l) { l.disks[0].nbd.export_name.clear(); }, "export_name"},
      {"cdrom without iso",
       [](VmLaunch& l) { l.cdrom = CdromAttachment{std::nullopt, "/x.iso"}; }, "launch.cdrom"},
      {"iso without cdrom", [](VmLaunch& l) { l.spec.cdrom_iso = "x.iso"; }, "launch.cdrom"},
      {"both", [](VmLaunch& l) {
         l.spec.cdrom_iso = "x.iso";
         l.cdrom = CdromAttachment{NbdSource{"/s", "iso/x.iso"}, "/x.iso"};
       }, "not both"},
      {"dotdot", [](VmLaunch& l) {
         l.spec.cdrom_iso = "../../etc/shadow";
         l.cdrom = CdromAttachment{std::nullopt, "/var/lib/hc/iso/../../etc/shadow"};
       }, ".."},
  };
  for (const Case& c : cases) {
    VmLaunch launch = good;
    c.breakit(launch);
    const absl::Status st = ValidateLaunch(launch);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_NE(st.message().find(c.expect), std::string::npos) << c.what << ": " << st;
  }
}

TEST(IsUuid, Shape) {
  EXPECT_TRUE(IsUuid(kUuid));
  EXPECT_FALSE(IsUuid(""));
  EXPECT_FALSE(IsUuid("0b1c2d3e04f50-4617-8899-aabbccddeeff"));
  EXPECT_FALSE(IsUuid("0b1c2d3e-4f50-4617-8899-aabbccddeefg"));
}

TEST(DiskExportName, IsVmSlashDisk) { EXPECT_EQ(DiskExportName("a.b", "c-d"), "a.b/c-d"); }

}  // namespace
}  // namespace hypercore
