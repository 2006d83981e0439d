// One scribed: a node of the storage cluster.
//
// Every node serves its own disks on the backplane (DiskService over Cap'n Proto, fenced
// by epoch), holds a liveness lease in etcd under /scribe/nodes/<id>, answers the
// management API (ScribeAdmin) on its admin address and exports every VSD over NBD on
// its Unix socket. One node at a time *owns* the pool: it won /scribe/owner (a key on its
// lease) by compare-and-swap, raised the cluster epoch (/scribe/epoch) and runs the Pool
// over every node's disks as RemoteBlockDevices at that epoch; the disk servers then
// refuse anything older, so a deposed owner cannot change data. The other nodes forward
// admin calls to the owner and relay their NBD clients to the owner's NBD over TCP. When
// the owner's lease ends, any node takes over (Pool::Open replays the journal).
//
// The owner maps membership onto the pool: a node whose lease key vanished, or whose
// link broke, is set offline at once (I/O continues on the other copies); after
// `evict_grace_ms` it is evicted (its copies are re-mirrored elsewhere); a node that
// comes back (its key reappears and its disks answer) is set online, so its stale
// copies are caught up, or freed if it had been evicted. A node that registers disks
// the pool has not seen gets them added.
//
// Threading: single-threaded on the RealLoop passed to Start, like every real component.
#ifndef DAEMONS_SCRIBED_NODE_H_
#define DAEMONS_SCRIBED_NODE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemons/scribed/admin_service.h"
#include "scribe/pool.h"
#include "scribe/real_env.h"

namespace scribe::daemon {

struct DiskConfig {
  std::string path;         // a file (created sparse with size_bytes if missing) or a device
  uint64_t size_bytes = 0;  // 0: the file or device must exist
  Tier tier = Tier::kHdd;
};

struct NodeConfig {
  uint64_t node_id = 0;  // >= 1, unique in the cluster
  std::string etcd = "http://127.0.0.1:2379";
  std::string backplane = "127.0.0.1:0";  // DiskService
  std::string admin = "127.0.0.1:0";      // ScribeAdmin
  std::string nbd_socket;                 // local NBD exports (Unix socket path)
  std::string nbd_tcp = "127.0.0.1:0";    // the owner's NBD for the other nodes' relays
  std::vector<DiskConfig> disks;
  // Nodes that must be up to format a new pool; an existing pool opens once a majority
  // of the nodes that ever joined are up (the journal's newest copy is then among them).
  int cluster_min_nodes = 3;
  int64_t lease_ttl_ms = 3'000;
  int64_t evict_grace_ms = 30'000;
  // How often the node re-reads cluster state and probes unreachable peers.
  int64_t tick_ms = 250;
  // Fault injection for tests: while this file exists the node behaves as if cut off
  // from the network (no etcd calls, its disk server closed, its NBD relay refusing).
  std::string isolate_file;
  // An owner that cannot renew its lease stops its pool before the lease can have
  // expired (self-fencing). Tests turn it off to show that the disk fences alone stop a
  // deposed owner.
  bool self_fence = true;
  PoolOptions pool_options;
};

class Node : public AdminBackend {
 public:
  // Opens the disks, starts the servers and registers in etcd (waiting up to 30 s for
  // etcd). Must be called from main(), not from a loop callback.
  static absl::StatusOr<std::unique_ptr<Node>> Start(RealLoop* loop, NodeConfig config);
  ~Node() override = default;

  virtual uint16_t admin_port() const = 0;
  virtual uint16_t backplane_port() const = 0;
  // One line for logs: role, epoch, pool state.
  virtual std::string Describe() = 0;
};

}  // namespace scribe::daemon

#endif  // DAEMONS_SCRIBED_NODE_H_
