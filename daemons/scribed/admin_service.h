// The ScribeAdmin Cap'n Proto server (daemons/scribe_api.capnp): decodes a management
// call, runs it on the pool, encodes the result. scribed serves it on the node that owns
// the pool; every other node forwards its admin connections there, so any node answers
// for the whole cluster.
//
// Business errors (unknown name, full pool, bad argument, no pool owner yet) travel in
// each result's `error` (an absl::StatusCode and a message naming what was wrong); RPC
// exceptions are left to transport failures.
//
// Threading: single-threaded on the RealLoop that runs the pool and the RPC system.
#ifndef DAEMONS_SCRIBED_ADMIN_SERVICE_H_
#define DAEMONS_SCRIBED_ADMIN_SERVICE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "daemons/scribe_api.capnp.h"
#include "scribe/pool.h"
#include "scribe/real_env.h"

namespace scribe::daemon {

// One scribed as the cluster sees it (membership lives in etcd).
struct NodeStatus {
  uint64_t id = 0;
  std::string backplane_address;  // DiskService, "host:port"
  std::string admin_address;      // ScribeAdmin, "host:port"
  std::string nbd_socket;         // where this node exports VSDs over NBD
  bool alive = false;             // holds its etcd lease
  bool reachable = false;         // the pool owner can reach its disks
  bool owner = false;             // runs the pool
};

struct ClusterStatus {
  uint64_t owner_node = 0;  // 0: no owner yet (forming, or electing after a failure)
  uint64_t epoch = 0;       // the owner's fencing epoch
  std::string state;        // "forming (2 of 3 nodes)", "running", ...
  std::vector<NodeStatus> nodes;
};

// What the admin service needs from the daemon around it.
class AdminBackend {
 public:
  virtual ~AdminBackend() = default;
  // The pool, or null when this node does not run it (calls then fail UNAVAILABLE
  // "no pool owner yet" / name the owner).
  virtual Pool* pool() = 0;
  virtual ClusterStatus Cluster() = 0;
  // Adds a disk (a file created with `size_bytes` if missing, or a block device) to
  // node `node`; its space joins the pool. `done` gets the pool's disk id.
  virtual void AddDisk(uint64_t node, std::string path, uint64_t size_bytes, Tier tier,
                       std::function<void(absl::StatusOr<uint64_t>)> done) = 0;
  // Raises a VSD's writer epoch (see fenceVsd in scribe_api.capnp); `done` runs once it
  // is durable. The default refuses (UNIMPLEMENTED).
  virtual void FenceVsd(std::string vsd, uint64_t epoch, std::function<void(absl::Status)> done) {
    (void)vsd;
    (void)epoch;
    done(absl::UnimplementedError("this backend has no writer fencing"));
  }
};

// The server object to hand to capnp (e.g. as a TwoPartyServer's bootstrap).
// `backend` and `loop` must outlive it.
kj::Own<api::ScribeAdmin::Server> NewAdminService(RealLoop* loop, AdminBackend* backend);

}  // namespace scribe::daemon

#endif  // DAEMONS_SCRIBED_ADMIN_SERVICE_H_
