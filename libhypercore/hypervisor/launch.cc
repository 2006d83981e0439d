// VmLaunch helpers shared by every Hypervisor implementation and by the HA manager.
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "hypercore/hypervisor.h"

namespace hypercore {
namespace {

// sockaddr_un::sun_path holds 108 bytes including the terminating NUL.
constexpr size_t kUnixSocketPathLengthMax = 107;

absl::Status Invalid(const std::string& field, const std::string& rule) {
  return absl::InvalidArgumentError(absl::StrCat("launch.", field, ": ", rule));
}

absl::Status ValidateNbd(const std::string& field, const NbdSource& nbd) {
  if (nbd.socket_path.empty() || nbd.socket_path[0] != '/') {
    return Invalid(field + ".socket_path",
                   absl::StrCat("must be an absolute path, got \"", nbd.socket_path, "\""));
  }
  if (nbd.socket_path.size() > kUnixSocketPathLengthMax) {
    return Invalid(field + ".socket_path",
                   absl::StrCat("must be at most ", kUnixSocketPathLengthMax,
                                " bytes (a Unix socket path), got ", nbd.socket_path.size()));
  }
  if (nbd.export_name.empty()) return Invalid(field + ".export_name", "must not be empty");
  return absl::OkStatus();
}

bool HasDotDot(const std::string& path) {
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") return true;
  }
  return false;
}

}  // namespace

bool IsUuid(const std::string& text) {
  if (text.size() != 36) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? text[i] != '-'
             : !(absl::ascii_isdigit(text[i]) || (text[i] >= 'a' && text[i] <= 'f'))) {
      return false;
    }
  }
  return true;
}

absl::Status ValidateLaunch(const VmLaunch& launch) {
  absl::Status status = ValidateVmSpec(launch.spec);
  if (!status.ok()) return status;
  if (!IsUuid(launch.uuid)) {
    return Invalid("uuid", absl::StrCat("\"", launch.uuid, "\" is not 8-4-4-4-12 lowercase hex"));
  }
  if (launch.epoch == 0) return Invalid("epoch", "must be > 0");
  if (launch.disks.size() != launch.spec.disks.size()) {
    return Invalid("disks", absl::StrCat("one attachment per disk: spec has ",
                                         launch.spec.disks.size(), ", launch has ",
                                         launch.disks.size()));
  }
  for (size_t i = 0; i < launch.disks.size(); ++i) {
    status = ValidateNbd(absl::StrCat("disks[", i, "].nbd"), launch.disks[i].nbd);
    if (!status.ok()) return status;
  }
  if (launch.cdrom.has_value() != launch.spec.cdrom_iso.has_value()) {
    return Invalid("cdrom", launch.spec.cdrom_iso ? "the spec has a CD-ROM ISO but no attachment"
                                                  : "an attachment without a CD-ROM ISO in the spec");
  }
  if (launch.cdrom) {
    if (launch.cdrom->nbd) {
      if (!launch.cdrom->file_path.empty()) {
        return Invalid("cdrom", "either an NBD export or a file, not both");
      }
      status = ValidateNbd("cdrom.nbd", *launch.cdrom->nbd);
      if (!status.ok()) return status;
    } else if (launch.cdrom->file_path.empty() || launch.cdrom->file_path[0] != '/') {
      return Invalid("cdrom.file_path", absl::StrCat("must be an absolute path, got \"",
                                                     launch.cdrom->file_path, "\""));
    } else if (HasDotDot(launch.cdrom->file_path)) {
      // An ISO name like "../../etc/shadow" must not reach outside the ISO directory.
      return Invalid("cdrom.file_path", absl::StrCat("must not contain a \"..\" component, got \"",
                                                     launch.cdrom->file_path, "\""));
    }
  }
  return absl::OkStatus();
}

std::string DiskExportName(const std::string& vm, const std::string& disk) {
  return absl::StrCat(vm, "/", disk);
}

VmLaunch MakeNbdLaunch(const VmSpec& spec, const std::string& uuid, uint64_t epoch,
                       const NbdLaunchOptions& options) {
  VmLaunch launch;
  launch.spec = spec;
  launch.uuid = uuid;
  launch.epoch = epoch;
  for (const VmDisk& disk : spec.disks) {
    launch.disks.push_back(DiskAttachment{NbdSource{
        options.socket_path, options.disk_export_name
                                 ? options.disk_export_name(spec.name, disk.name, epoch)
                                 : DiskExportName(spec.name, disk.name)}});
  }
  if (spec.cdrom_iso) {
    CdromAttachment cdrom;
    if (options.iso_directory.empty()) {
      cdrom.nbd = NbdSource{options.socket_path, options.iso_export_name
                                                     ? options.iso_export_name(*spec.cdrom_iso)
                                                     : absl::StrCat("iso/", *spec.cdrom_iso)};
    } else {
      cdrom.file_path = absl::StrCat(options.iso_directory, "/", *spec.cdrom_iso);
    }
    launch.cdrom = std::move(cdrom);
  }
  return launch;
}

const char* VmPowerStateName(VmPowerState state) {
  switch (state) {
    case VmPowerState::kAbsent:
      return "absent";
    case VmPowerState::kShutOff:
      return "shut off";
    case VmPowerState::kRunning:
      return "running";
  }
  return "?";
}

}  // namespace hypercore
