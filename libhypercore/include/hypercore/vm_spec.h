// The VM model: what a user asks for when creating or editing a virtual machine (CPUs,
// memory, disks backed by SCRIBE VSDs, CD-ROM, NICs, tags), and the rules a spec must
// satisfy before anything is scheduled or allocated.
//
// A VmSpec is plain data: copyable, no ids assigned by the cluster, safe to use from any
// thread. Validation is pure and deterministic.
#ifndef HYPERCORE_VM_SPEC_H_
#define HYPERCORE_VM_SPEC_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace hypercore {

// A virtual disk of the VM; each becomes one SCRIBE VSD.
struct VmDisk {
  std::string name;         // unique within the VM; same character rules as VmSpec::name
  uint64_t size_bytes = 0;  // > 0, a multiple of 512
  int flash_priority = 4;   // 0..11: how strongly SSD is favoured (scribe::VsdOptions)
  int replication = 2;      // 2 or 3 copies
};

struct VmNic {
  std::string model = "virtio";  // only "virtio" is supported
  std::optional<int> vlan;       // 802.1Q tag 1..4094; untagged when absent
  std::optional<std::string> mac;  // "52:54:00:xx:xx:xx" (hex); assigned when absent
};

// Direct kernel boot (libvirt <os><kernel/><initrd/><cmdline/>): the hypervisor loads a
// kernel (and optionally an initramfs) from files on the node that runs the VM, instead
// of booting from a disk or CD-ROM. The files must exist on every node the VM may run
// on (a shared path: HA restarts it elsewhere).
struct VmBoot {
  std::string kernel_path;  // absolute, no ".." component, at most kVmBootPathLengthMax
  std::string initrd_path;  // the same rules; empty: no initramfs
  std::string cmdline;      // printable ASCII (0x20..0x7e), at most kVmBootCmdlineLengthMax
};

struct VmSpec {
  std::string name;         // 1..63 characters of [A-Za-z0-9._-]
  std::string description;  // at most 4096 characters
  std::vector<std::string> tags;  // each non-empty, no duplicates
  int vcpus = 1;            // 1..64
  uint64_t ram_bytes = 0;   // 64 MiB..1 TiB, a multiple of 1 MiB
  std::vector<VmDisk> disks;
  std::optional<std::string> cdrom_iso;  // a non-empty ISO name when present
  std::vector<VmNic> nics;
  std::optional<VmBoot> boot;  // direct kernel boot when present
};

// Limits a VmSpec must respect.
inline constexpr size_t kVmNameLengthMax = 63;
inline constexpr size_t kVmDescriptionLengthMax = 4096;
inline constexpr int kVmVcpusMax = 64;
inline constexpr uint64_t kVmRamBytesMin = 64ull << 20;
inline constexpr uint64_t kVmRamBytesMax = 1ull << 40;
inline constexpr uint64_t kVmRamBytesGranularity = 1ull << 20;
inline constexpr int kVmDiskFlashPriorityMax = 11;
inline constexpr int kVmNicVlanMin = 1;
inline constexpr int kVmNicVlanMax = 4094;
inline constexpr size_t kVmBootPathLengthMax = 4095;     // PATH_MAX - 1
inline constexpr size_t kVmBootCmdlineLengthMax = 2048;  // x86's COMMAND_LINE_SIZE

// OK, or INVALID_ARGUMENT naming the first offending field ("vcpus", "disks[1].name",
// "nics[0].mac", ...) and the rule it breaks.
absl::Status ValidateVmSpec(const VmSpec& spec);

// True when `spec` carries every tag in `required_tags` (an empty filter matches every
// VM). Tags compare exactly (case-sensitive).
bool MatchesTagFilter(const VmSpec& spec, const std::vector<std::string>& required_tags);

}  // namespace hypercore

#endif  // HYPERCORE_VM_SPEC_H_
