// The hypervisor seam: what libhypercore needs from the local virtualization layer to
// run a VM whose disks are SCRIBE VSDs exported over NBD. The HA manager (ha.h)
// depends only on this interface. Implementations: LibvirtHypervisor
// (libvirt_hypervisor.h, the real one) and FakeHypervisor (fake_hypervisor.h, for unit
// tests and the deterministic HA simulator). Both pass one conformance suite
// (libhypercore/hypervisor/conformance.h).
//
// A VM is launched from a VmLaunch: its spec plus, for each disk, where the disk is
// served (an NBD export on a Unix socket, normally scribed's), an optional CD-ROM, a
// stable UUID and the *epoch* of this incarnation. The epoch is the storage epoch the
// VM's writes carry: the node that starts a VM got it from the VM's record (one more
// than any earlier owner's), so scribed can refuse writes from an older incarnation
// that a partition left running. The hypervisor records it with the VM and reports it
// in VmStatus.
//
// Contract shared by all implementations:
//  - Operations on one VM take effect in the order they were called (a ForceOff called
//    after a Start that has not completed yet takes effect after it, so the VM ends
//    up off). Status and List report effects that completed.
//  - Every callback runs on the Loop the implementation was given, never from inside
//    the call that started the operation; no callback runs after destruction.
//  - Errors: NOT_FOUND for an unknown VM (except GetStatus, which reports kAbsent),
//    FAILED_PRECONDITION for an operation the VM's state forbids, INVALID_ARGUMENT for
//    a launch that fails ValidateLaunch or that the hypervisor rejects, UNAVAILABLE
//    when the hypervisor cannot be reached, INTERNAL for anything else it reports.
//  - Only VMs that hypercore defined are visible (List); others on the same host are
//    left alone.
//
// Threading: single-threaded on the implementation's Loop.
#ifndef HYPERCORE_HYPERVISOR_H_
#define HYPERCORE_HYPERVISOR_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hypercore/vm_spec.h"

namespace hypercore {

// A block device served over NBD on a Unix socket.
struct NbdSource {
  std::string socket_path;  // absolute path
  std::string export_name;  // non-empty
};

// Where one disk of the VM comes from (QEMU: nbd+unix:///EXPORT?socket=PATH).
struct DiskAttachment {
  NbdSource nbd;
};

// The CD-ROM medium: exactly one of an NBD export (an ISO kept as a VSD) or a file on
// the host.
struct CdromAttachment {
  std::optional<NbdSource> nbd;
  std::string file_path;  // absolute; used when `nbd` is absent
};

struct VmLaunch {
  VmSpec spec;
  std::string uuid;    // 8-4-4-4-12 lowercase hex, stable for the life of the VM
  uint64_t epoch = 0;  // > 0; the storage epoch of this incarnation
  std::vector<DiskAttachment> disks;     // one per spec.disks, in the same order
  std::optional<CdromAttachment> cdrom;  // present exactly when spec.cdrom_iso is
};

// OK, or INVALID_ARGUMENT naming the first problem (the spec's own, see
// ValidateVmSpec, then uuid, epoch, attachments).
absl::Status ValidateLaunch(const VmLaunch& launch);

// True for "8-4-4-4-12" lowercase hex.
bool IsUuid(const std::string& text);

// The NBD export a VM disk is served as: "<vm>/<disk>" ('/' cannot appear in either
// name, so the mapping is one-to-one). The VSD has the same name.
std::string DiskExportName(const std::string& vm, const std::string& disk);

struct NbdLaunchOptions {
  // scribed's NBD socket; every disk is an export on it.
  std::string socket_path;
  // Where ISO files live on every node; the CD-ROM is <iso_directory>/<cdrom_iso>.
  // Empty: the ISO is the export "iso/<cdrom_iso>" on `socket_path` (or
  // iso_export_name's).
  std::string iso_directory;
  // How the daemon names exports, when it differs from the defaults. hypercored serves
  // disk D of VM V as "<VSD>@<epoch>" (scribed refuses an older epoch's connection)
  // and an ISO as its VSD. Both must be pure functions of their arguments and return a
  // non-empty name. Empty: DiskExportName(vm, disk) (the epoch is not part of it) and
  // "iso/<cdrom_iso>".
  std::function<std::string(const std::string& vm, const std::string& disk, uint64_t epoch)>
      disk_export_name;
  std::function<std::string(const std::string& iso)> iso_export_name;
};

// The launch of `spec` with every disk on scribed's socket as DiskExportName() (or
// options.disk_export_name's). The result passes ValidateLaunch when the spec does and
// `uuid`/`epoch` are valid.
VmLaunch MakeNbdLaunch(const VmSpec& spec, const std::string& uuid, uint64_t epoch,
                       const NbdLaunchOptions& options);

enum class VmPowerState {
  kAbsent,   // not defined on this hypervisor
  kShutOff,  // defined, not running
  kRunning,  // running (or paused: its process exists and holds its disks)
};
const char* VmPowerStateName(VmPowerState state);

struct VmStatus {
  std::string name;
  VmPowerState state = VmPowerState::kAbsent;
  uint64_t epoch = 0;  // of the launch that defined it; 0 when absent
};

class Hypervisor {
 public:
  template <typename T>
  using Done = std::function<void(absl::StatusOr<T>)>;
  using StatusDone = std::function<void(absl::Status)>;

  virtual ~Hypervisor() = default;

  // Defines the VM from `launch` (replacing a shut-off definition of the same name) and
  // powers it on; OK once it runs. FAILED_PRECONDITION if a VM of that name is running
  // (whatever its epoch).
  virtual void Start(const VmLaunch& launch, StatusDone done) = 0;
  // Presses the ACPI power button. OK once delivered; the guest powers off in its own
  // time, or never (then ForceOff). FAILED_PRECONDITION if the VM is not running.
  virtual void Shutdown(const std::string& name, StatusDone done) = 0;
  // Pulls the plug. OK means the VM does not run when `done` runs (also when it was
  // already off).
  virtual void ForceOff(const std::string& name, StatusDone done) = 0;
  // Removes the definition of a VM that is not running. FAILED_PRECONDITION if running.
  virtual void Undefine(const std::string& name, StatusDone done) = 0;
  // The VM's state; kAbsent (not an error) for a name this hypervisor does not know.
  virtual void GetStatus(const std::string& name, Done<VmStatus> done) = 0;
  // Every VM hypercore defined on this hypervisor, sorted by name.
  virtual void List(Done<std::vector<VmStatus>> done) = 0;
};

}  // namespace hypercore

#endif  // HYPERCORE_HYPERVISOR_H_
