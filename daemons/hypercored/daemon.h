// hypercored: the compute daemon of one node. It wires the HA manager (libhypercore)
// to etcd (EtcdMetaStore), to libvirt (LibvirtHypervisor) and to the local scribed
// (ScribeAdmin over TCP: VSDs for VM disks, fencing before every start, snapshots,
// clones, media), and serves HypercoreAdmin (daemons/hypercore_api.capnp) on its admin
// address. Any node answers for the whole cluster.
//
// Startup: connects to etcd and libvirt, learns the local scribed's node id and NBD
// socket from scribed's cluster view (unless given), starts the HA manager (which
// forces off hypercore VMs a previous incarnation left running, then joins), registers
// under /hcd/nodes/<node> and serves.
//
// Threading: single-threaded on the RealLoop passed to Start.
#ifndef DAEMONS_HYPERCORED_DAEMON_H_
#define DAEMONS_HYPERCORED_DAEMON_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "hypercore/libvirt_hypervisor.h"
#include "scribe/real_env.h"

namespace hypercore::daemon {

struct DaemonConfig {
  std::string node;  // this node's name: 1..63 of [A-Za-z0-9._-]
  std::string etcd = "http://127.0.0.1:2379";
  std::string admin = "127.0.0.1:7101";         // HypercoreAdmin
  std::string scribe_admin = "127.0.0.1:7001";  // the local scribed's ScribeAdmin
  // The local scribed's node id; 0: the node of scribed's cluster whose admin address
  // is `scribe_admin`.
  uint64_t scribe_node = 0;
  // The local scribed's NBD socket; empty: as scribed's cluster view reports it.
  std::string nbd_socket;
  LibvirtHypervisorOptions libvirt;
  // Capacity advertised to placement (RAM for VMs, CPU threads); both > 0.
  uint64_t ram_bytes = 0;
  int cpus = 0;
  int64_t lease_ttl_ms = 3'000;
  int64_t fence_margin_ms = 500;
  int64_t shutdown_timeout_ms = 60'000;
  int64_t start_retry_ms = 5'000;
  std::string qemu_img = "/usr/bin/qemu-img";
  // A ScribeAdmin call not answered in this time fails (a start then fails and is retried).
  int64_t scribe_call_timeout_ms = 60'000;
  // How long startup waits for scribed and etcd.
  int64_t startup_timeout_ms = 60'000;
  // Where log lines go (default: stderr with a "hypercored: " prefix).
  std::function<void(const std::string&)> log;
};

class Daemon {
 public:
  // Must be called from main() (it runs the loop while it waits), not from a callback.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(scribe::RealLoop* loop, DaemonConfig config);
  virtual ~Daemon() = default;

  virtual uint16_t admin_port() const = 0;
  // One line for logs: node, HA state, coordinator or not.
  virtual std::string Describe() const = 0;
};

}  // namespace hypercore::daemon

#endif  // DAEMONS_HYPERCORED_DAEMON_H_
