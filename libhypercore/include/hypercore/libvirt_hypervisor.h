// LibvirtHypervisor: the Hypervisor over libvirt's C API (QEMU/KVM in production,
// libvirt's in-process "test:///default" driver in unit tests).
//
// Domains. Start generates the domain XML (DomainXml below), defines the domain
// persistently (replacing an older shut-off definition of the same name) and starts it.
// Each hypercore domain carries a metadata element in hypercore's namespace
// (kHypercoreXmlNamespace) with the launch's epoch: List shows only domains that have
// it, so other domains on the host are never touched, and GetStatus reports the epoch
// a domain was started with (also after hypercored restarts).
//
// Threading and blocking: single-threaded on `loop`. libvirt's API is synchronous, so
// every call blocks the loop thread for the duration of the libvirt call (define and
// start of a QEMU domain: typically tens to hundreds of milliseconds); the result is
// then delivered through Loop::Post. The HA manager's self-fencing deadline is enforced
// on the same loop, so its fence margin must cover the longest libvirt call (see
// HaOptions::fence_margin_ms).
//
// DO NOT CONSTRUCT THIS in a library: a daemon's main() (or a test) creates it and hands
// the Hypervisor down.
#ifndef HYPERCORE_LIBVIRT_HYPERVISOR_H_
#define HYPERCORE_LIBVIRT_HYPERVISOR_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hypercore/hypervisor.h"
#include "scribe/env.h"

namespace hypercore {

// The XML namespace of hypercore's <metadata> element in domain XML.
inline constexpr char kHypercoreXmlNamespace[] = "urn:hc3:hypercore:1";

struct LibvirtHypervisorOptions {
  // libvirt connection URI: "qemu:///system" on a node, "test:///default" in tests.
  std::string uri = "qemu:///system";
  // <domain type=...>: "kvm" with hardware acceleration, "qemu" for TCG.
  std::string domain_type = "kvm";
  std::string arch = "x86_64";
  // <type machine=...>; empty lets libvirt choose.
  std::string machine;

  // How NICs reach the network. QEMU honours a <vlan><tag/></vlan> only on an Open
  // vSwitch bridge or on a libvirt network whose forward mode supports it (an OVS
  // network, SR-IOV/macvtap passthrough); a plain Linux bridge refuses it at start.
  enum class NicMode {
    kBridge,   // <interface type='bridge'><source bridge='nic_source'/>
    kNetwork,  // <interface type='network'><source network='nic_source'/>
  };
  NicMode nic_mode = NicMode::kBridge;
  std::string nic_source = "br0";
  // kBridge only: adds <virtualport type='openvswitch'/>, which VLAN tags require.
  bool nic_openvswitch = true;

  // The serial console goes to "<console_log_dir>/<vm>.log" when set, else to a pty.
  std::string console_log_dir;
};

// The domain XML of `launch` (which must pass ValidateLaunch: INVALID_ARGUMENT
// otherwise). Every text and attribute value is XML-escaped. Shape:
//   <domain type=...> name, uuid, description, metadata (epoch), memory (KiB), vcpu,
//   os (hvm; boot from disk, then CD-ROM; or the spec's direct kernel boot: kernel,
//   initrd, cmdline), features acpi+apic, on_poweroff destroy,
//   on_reboot restart, on_crash destroy; devices: one virtio disk per VM disk
//   (vda, vdb, ...) as <disk type='network'><source protocol='nbd' name=EXPORT><host
//   transport='unix' socket=PATH/></source>, raw, cache none, discard unmap; the CD-ROM
//   (SATA, read-only, NBD or file); one virtio NIC per VmNic with its MAC and VLAN tag;
//   a serial console (file or pty).
absl::StatusOr<std::string> DomainXml(const VmLaunch& launch,
                                      const LibvirtHypervisorOptions& options);

// The virtio disk name of the i-th disk: vda..vdz, vdaa, vdab, ...
std::string VirtioDiskName(size_t index);

class LibvirtHypervisor : public Hypervisor {
 public:
  // Connects to libvirt at options.uri (UNAVAILABLE if it cannot). `loop` must outlive
  // the hypervisor.
  static absl::StatusOr<std::unique_ptr<LibvirtHypervisor>> Create(
      scribe::Loop* loop, LibvirtHypervisorOptions options);
  ~LibvirtHypervisor() override;

  void Start(const VmLaunch& launch, StatusDone done) override;
  void Shutdown(const std::string& name, StatusDone done) override;
  void ForceOff(const std::string& name, StatusDone done) override;
  void Undefine(const std::string& name, StatusDone done) override;
  void GetStatus(const std::string& name, Done<VmStatus> done) override;
  void List(Done<std::vector<VmStatus>> done) override;

  // The domain XML libvirt holds for `name` (as virDomainGetXMLDesc returns it), for
  // tests and diagnostics. NOT_FOUND for an unknown domain.
  absl::StatusOr<std::string> DescribeDomain(const std::string& name);

  struct Impl;

 private:
  explicit LibvirtHypervisor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hypercore

#endif  // HYPERCORE_LIBVIRT_HYPERVISOR_H_
