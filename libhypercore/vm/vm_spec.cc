#include "hypercore/vm_spec.h"

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include "absl/container/btree_set.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace hypercore {
namespace {

absl::Status Invalid(const std::string& field, const std::string& rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

bool IsNameChar(char c) { return absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-'; }

absl::Status ValidateName(const std::string& field, const std::string& name) {
  if (name.empty() || name.size() > kVmNameLengthMax) {
    return Invalid(field, absl::StrCat("must be 1..", kVmNameLengthMax, " characters, got ",
                                       name.size()));
  }
  if (!std::all_of(name.begin(), name.end(), IsNameChar)) {
    return Invalid(field, absl::StrCat("\"", name, "\" may only contain [A-Za-z0-9._-]"));
  }
  return absl::OkStatus();
}

// "52:54:00:xx:xx:xx": the locally administered QEMU/KVM prefix, then three hex octets.
bool IsKvmMac(const std::string& mac) {
  static constexpr char kPrefix[] = "52:54:00:";
  constexpr size_t kLength = 17;
  if (mac.size() != kLength || mac.compare(0, sizeof(kPrefix) - 1, kPrefix) != 0) return false;
  for (size_t i = sizeof(kPrefix) - 1; i < kLength; ++i) {
    bool colon_position = (i % 3) == 2;
    if (colon_position ? mac[i] != ':' : !absl::ascii_isxdigit(mac[i])) return false;
  }
  return true;
}

absl::Status ValidateDisks(const std::vector<VmDisk>& disks) {
  absl::btree_set<std::string> names;
  for (size_t i = 0; i < disks.size(); ++i) {
    const VmDisk& disk = disks[i];
    const std::string field = absl::StrCat("disks[", i, "]");
    absl::Status name_status = ValidateName(field + ".name", disk.name);
    if (!name_status.ok()) return name_status;
    if (!names.insert(disk.name).second) {
      return Invalid(field + ".name", absl::StrCat("duplicate disk name \"", disk.name, "\""));
    }
    if (disk.size_bytes == 0 || disk.size_bytes % 512 != 0) {
      return Invalid(field + ".size_bytes",
                     absl::StrCat("must be a positive multiple of 512, got ", disk.size_bytes));
    }
    if (disk.flash_priority < 0 || disk.flash_priority > kVmDiskFlashPriorityMax) {
      return Invalid(field + ".flash_priority",
                     absl::StrCat("must be 0..", kVmDiskFlashPriorityMax, ", got ",
                                  disk.flash_priority));
    }
    if (disk.replication != 2 && disk.replication != 3) {
      return Invalid(field + ".replication",
                     absl::StrCat("must be 2 or 3, got ", disk.replication));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateNics(const std::vector<VmNic>& nics) {
  for (size_t i = 0; i < nics.size(); ++i) {
    const VmNic& nic = nics[i];
    const std::string field = absl::StrCat("nics[", i, "]");
    if (nic.model != "virtio") {
      return Invalid(field + ".model", absl::StrCat("must be \"virtio\", got \"", nic.model, "\""));
    }
    if (nic.vlan && (*nic.vlan < kVmNicVlanMin || *nic.vlan > kVmNicVlanMax)) {
      return Invalid(field + ".vlan", absl::StrCat("must be ", kVmNicVlanMin, "..", kVmNicVlanMax,
                                                   ", got ", *nic.vlan));
    }
    if (nic.mac && !IsKvmMac(*nic.mac)) {
      return Invalid(field + ".mac",
                     absl::StrCat("\"", *nic.mac, "\" is not of the form 52:54:00:xx:xx:xx"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateBootPath(const std::string& field, const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return Invalid(field, absl::StrCat("must be an absolute path, got \"", absl::CEscape(path.substr(0, 200)),
                                       "\""));
  }
  if (path.size() > kVmBootPathLengthMax) {
    return Invalid(field, absl::StrCat("must be at most ", kVmBootPathLengthMax, " bytes, got ", path.size()));
  }
  for (char c : path) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return Invalid(field, "must not contain control characters");
    }
  }
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") return Invalid(field, absl::StrCat("must not contain \"..\", got \"", path, "\""));
  }
  return absl::OkStatus();
}

absl::Status ValidateBoot(const VmBoot& boot) {
  absl::Status status = ValidateBootPath("boot.kernel_path", boot.kernel_path);
  if (!status.ok()) return status;
  if (!boot.initrd_path.empty()) {
    status = ValidateBootPath("boot.initrd_path", boot.initrd_path);
    if (!status.ok()) return status;
  }
  if (boot.cmdline.size() > kVmBootCmdlineLengthMax) {
    return Invalid("boot.cmdline", absl::StrCat("must be at most ", kVmBootCmdlineLengthMax,
                                                " bytes, got ", boot.cmdline.size()));
  }
  for (size_t i = 0; i < boot.cmdline.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(boot.cmdline[i]);
    if (c < 0x20 || c > 0x7e) {
      return Invalid("boot.cmdline",
                     absl::StrCat("must be printable ASCII, byte ", i, " is 0x", absl::Hex(c, absl::kZeroPad2)));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateVmSpec(const VmSpec& spec) {
  absl::Status status = ValidateName("name", spec.name);
  if (!status.ok()) return status;
  if (spec.description.size() > kVmDescriptionLengthMax) {
    return Invalid("description", absl::StrCat("must be at most ", kVmDescriptionLengthMax,
                                               " characters, got ", spec.description.size()));
  }
  absl::btree_set<std::string> tags;
  for (size_t i = 0; i < spec.tags.size(); ++i) {
    const std::string field = absl::StrCat("tags[", i, "]");
    if (spec.tags[i].empty()) return Invalid(field, "must not be empty");
    if (!tags.insert(spec.tags[i]).second) {
      return Invalid(field, absl::StrCat("duplicate tag \"", spec.tags[i], "\""));
    }
  }
  if (spec.vcpus < 1 || spec.vcpus > kVmVcpusMax) {
    return Invalid("vcpus", absl::StrCat("must be 1..", kVmVcpusMax, ", got ", spec.vcpus));
  }
  if (spec.ram_bytes < kVmRamBytesMin || spec.ram_bytes > kVmRamBytesMax) {
    return Invalid("ram_bytes", absl::StrCat("must be 64 MiB..1 TiB, got ", spec.ram_bytes));
  }
  if (spec.ram_bytes % kVmRamBytesGranularity != 0) {
    return Invalid("ram_bytes",
                   absl::StrCat("must be a multiple of 1 MiB, got ", spec.ram_bytes));
  }
  status = ValidateDisks(spec.disks);
  if (!status.ok()) return status;
  if (spec.cdrom_iso && spec.cdrom_iso->empty()) {
    return Invalid("cdrom_iso", "must not be empty when present");
  }
  status = ValidateNics(spec.nics);
  if (!status.ok()) return status;
  if (spec.boot) return ValidateBoot(*spec.boot);
  return absl::OkStatus();
}

bool MatchesTagFilter(const VmSpec& spec, const std::vector<std::string>& required_tags) {
  return std::all_of(required_tags.begin(), required_tags.end(), [&](const std::string& tag) {
    return std::find(spec.tags.begin(), spec.tags.end(), tag) != spec.tags.end();
  });
}

}  // namespace hypercore
