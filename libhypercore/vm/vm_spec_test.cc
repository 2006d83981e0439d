#include "hypercore/vm_spec.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace hypercore {
namespace {

VmSpec ValidSpec() {
  VmSpec spec;
  spec.name = "web-01.prod_a";
  spec.description = "front end";
  spec.tags = {"prod", "web"};
  spec.vcpus = 4;
  spec.ram_bytes = 8ull << 30;
  spec.disks = {VmDisk{"root", 40ull << 30, 6, 2}, VmDisk{"data", 200ull << 30, 0, 3}};
  spec.cdrom_iso = "debian-12.iso";
  spec.nics = {VmNic{"virtio", 100, "52:54:00:ab:CD:01"}, VmNic{}};
  spec.boot = VmBoot{"/var/lib/hc3/vmlinuz", "/var/lib/hc3/initrd.img", "console=ttyS0 root=/dev/vda1 ro"};
  return spec;
}

TEST(ValidateVmSpec, AcceptsValidSpecs) {
  EXPECT_TRUE(ValidateVmSpec(ValidSpec()).ok()) << ValidateVmSpec(ValidSpec());

  VmSpec minimal;
  minimal.name = "a";
  minimal.vcpus = 1;
  minimal.ram_bytes = 64ull << 20;
  EXPECT_TRUE(ValidateVmSpec(minimal).ok()) << ValidateVmSpec(minimal);

  VmSpec limits = ValidSpec();
  limits.name = std::string(63, 'x');
  limits.description = std::string(4096, 'd');
  limits.vcpus = 64;
  limits.ram_bytes = 1ull << 40;
  limits.disks[0].flash_priority = 11;
  limits.nics[0].vlan = 4094;
  limits.nics[1].vlan = 1;
  limits.boot->kernel_path = "/" + std::string(4094, 'k');
  limits.boot->cmdline = std::string(2048, '~');
  EXPECT_TRUE(ValidateVmSpec(limits).ok()) << ValidateVmSpec(limits);

  VmSpec kernel_only = ValidSpec();
  kernel_only.boot->initrd_path = "";
  kernel_only.boot->cmdline = "";
  EXPECT_TRUE(ValidateVmSpec(kernel_only).ok()) << ValidateVmSpec(kernel_only);
  limits.boot.reset();
  EXPECT_TRUE(ValidateVmSpec(limits).ok()) << ValidateVmSpec(limits);
}

struct BadCase {
  std::string label;
  std::function<void(VmSpec&)> mutate;
  std::string field;  // the message must start with this field name
};

TEST(ValidateVmSpec, RejectsEachBrokenRuleNamingTheField) {
  const std::vector<BadCase> cases = {
      {"empty name", [](VmSpec& s) { s.name = ""; }, "name:"},
      {"long name", [](VmSpec& s) { s.name = std::string(64, 'x'); }, "name:"},
      {"name with space", [](VmSpec& s) { s.name = "web 01"; }, "name:"},
      {"name with slash", [](VmSpec& s) { s.name = "a/b"; }, "name:"},
      {"long description", [](VmSpec& s) { s.description = std::string(4097, 'd'); },
       "description:"},
      {"empty tag", [](VmSpec& s) { s.tags = {"prod", ""}; }, "tags[1]:"},
      {"duplicate tag", [](VmSpec& s) { s.tags = {"prod", "web", "prod"}; }, "tags[2]:"},
      {"zero vcpus", [](VmSpec& s) { s.vcpus = 0; }, "vcpus:"},
      {"too many vcpus", [](VmSpec& s) { s.vcpus = 65; }, "vcpus:"},
      {"too little ram", [](VmSpec& s) { s.ram_bytes = (64ull << 20) - (1ull << 20); },
       "ram_bytes:"},
      {"too much ram", [](VmSpec& s) { s.ram_bytes = (1ull << 40) + (1ull << 20); },
       "ram_bytes:"},
      {"ram not MiB multiple", [](VmSpec& s) { s.ram_bytes = (128ull << 20) + 4096; },
       "ram_bytes:"},
      {"duplicate disk", [](VmSpec& s) { s.disks[1].name = "root"; }, "disks[1].name:"},
      {"bad disk name", [](VmSpec& s) { s.disks[0].name = ""; }, "disks[0].name:"},
      {"zero disk size", [](VmSpec& s) { s.disks[1].size_bytes = 0; }, "disks[1].size_bytes:"},
      {"unaligned disk size", [](VmSpec& s) { s.disks[0].size_bytes = 1000; },
       "disks[0].size_bytes:"},
      {"flash priority high", [](VmSpec& s) { s.disks[0].flash_priority = 12; },
       "disks[0].flash_priority:"},
      {"flash priority negative", [](VmSpec& s) { s.disks[1].flash_priority = -1; },
       "disks[1].flash_priority:"},
      {"replication 1", [](VmSpec& s) { s.disks[0].replication = 1; }, "disks[0].replication:"},
      {"replication 4", [](VmSpec& s) { s.disks[1].replication = 4; }, "disks[1].replication:"},
      {"empty cdrom", [](VmSpec& s) { s.cdrom_iso = ""; }, "cdrom_iso:"},
      {"nic model", [](VmSpec& s) { s.nics[1].model = "e1000"; }, "nics[1].model:"},
      {"vlan 0", [](VmSpec& s) { s.nics[0].vlan = 0; }, "nics[0].vlan:"},
      {"vlan 4095", [](VmSpec& s) { s.nics[1].vlan = 4095; }, "nics[1].vlan:"},
      {"mac prefix", [](VmSpec& s) { s.nics[0].mac = "00:11:22:33:44:55"; }, "nics[0].mac:"},
      {"mac not hex", [](VmSpec& s) { s.nics[0].mac = "52:54:00:zz:00:01"; }, "nics[0].mac:"},
      {"mac separators", [](VmSpec& s) { s.nics[0].mac = "52:54:00-ab-cd-01"; }, "nics[0].mac:"},
      {"mac short", [](VmSpec& s) { s.nics[0].mac = "52:54:00:ab:cd"; }, "nics[0].mac:"},
      {"no kernel", [](VmSpec& s) { s.boot->kernel_path = ""; }, "boot.kernel_path:"},
      {"relative kernel", [](VmSpec& s) { s.boot->kernel_path = "vmlinuz"; }, "boot.kernel_path:"},
      {"kernel ..", [](VmSpec& s) { s.boot->kernel_path = "/boot/../etc/shadow"; }, "boot.kernel_path:"},
      {"long kernel", [](VmSpec& s) { s.boot->kernel_path = "/" + std::string(4095, 'k'); },
       "boot.kernel_path:"},
      {"kernel newline", [](VmSpec& s) { s.boot->kernel_path = "/boot/a\nb"; }, "boot.kernel_path:"},
      {"relative initrd", [](VmSpec& s) { s.boot->initrd_path = "initrd"; }, "boot.initrd_path:"},
      {"long cmdline", [](VmSpec& s) { s.boot->cmdline = std::string(2049, 'c'); }, "boot.cmdline:"},
      {"cmdline newline", [](VmSpec& s) { s.boot->cmdline = "console=ttyS0\ninit=/x"; }, "boot.cmdline:"},
      {"cmdline utf-8", [](VmSpec& s) { s.boot->cmdline = "a=\xc3\xa9"; }, "boot.cmdline:"},
  };
  for (const BadCase& c : cases) {
    VmSpec spec = ValidSpec();
    c.mutate(spec);
    absl::Status status = ValidateVmSpec(spec);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.label << ": " << status;
    EXPECT_EQ(std::string(status.message()).rfind(c.field, 0), 0u)
        << c.label << ": message \"" << status.message() << "\" does not name " << c.field;
  }
}

TEST(MatchesTagFilter, RequiresEveryTag) {
  VmSpec spec = ValidSpec();  // tags: prod, web
  EXPECT_TRUE(MatchesTagFilter(spec, {}));
  EXPECT_TRUE(MatchesTagFilter(spec, {"web"}));
  EXPECT_TRUE(MatchesTagFilter(spec, {"web", "prod"}));
  EXPECT_FALSE(MatchesTagFilter(spec, {"web", "db"}));
  EXPECT_FALSE(MatchesTagFilter(spec, {"Prod"}));  // case-sensitive
  spec.tags.clear();
  EXPECT_TRUE(MatchesTagFilter(spec, {}));
  EXPECT_FALSE(MatchesTagFilter(spec, {"prod"}));
}

}  // namespace
}  // namespace hypercore
