// Test support for the admin service (testonly): a Pool on sparse files with a fake
// AdminBackend around it, and a loopback TCP listener that serves one capability to every
// connection. Used by admin_service_test and by admin_test_server (the `scribe` CLI's
// test peer). scribed proper has its own backend (etcd membership, remote disks).
//
// Threading: everything here runs on the RealLoop's thread.
#ifndef DAEMONS_SCRIBED_ADMIN_TEST_SUPPORT_H_
#define DAEMONS_SCRIBED_ADMIN_TEST_SUPPORT_H_

#include <capnp/capability.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemons/scribed/admin_service.h"
#include "scribe/pool.h"
#include "scribe/real_env.h"

namespace scribe::daemon::testing {

struct FilePoolOptions {
  std::string dir;  // where the disk files go; must exist
  int nodes = 3;    // one disk file per node, nodes 1..nodes
  uint64_t disk_bytes = 128ull << 20;
  uint64_t metadata_bytes = 8ull << 20;
  // How long Create waits for the pool to form.
  int64_t create_timeout_ns = 60'000'000'000;
};

// An AdminBackend over a pool it makes on files: node N's disk is `<dir>/nodeN.disk`.
// The cluster it reports is fixed (owner node 1, epoch 1, "running", every node alive
// and reachable, node N's NBD socket `<dir>/nodeN.nbd`) and may be edited by the test.
class FilePoolBackend : public AdminBackend {
 public:
  // Creates the files and formats a new pool on them, running `loop` until it is formed.
  // `loop` must outlive the backend.
  static absl::StatusOr<std::unique_ptr<FilePoolBackend>> Create(RealLoop* loop,
                                                                 FilePoolOptions options);
  ~FilePoolBackend() override;

  // AdminBackend. pool() is null while serving_pool is false (a node that is not the
  // owner).
  Pool* pool() override { return serving_pool_ ? pool_.get() : nullptr; }
  ClusterStatus Cluster() override { return cluster_; }
  // Opens (creating with `size_bytes` if missing) the file at `path` and adds it to the
  // pool on node `node`.
  void AddDisk(uint64_t node, std::string path, uint64_t size_bytes, Tier tier,
               std::function<void(absl::StatusOr<uint64_t>)> done) override;

  Pool* real_pool() { return pool_.get(); }
  void set_serving_pool(bool serving) { serving_pool_ = serving; }
  ClusterStatus& cluster() { return cluster_; }
  int add_disk_calls() const { return add_disk_calls_; }
  // While set, AddDisk destroys its callback without calling it (a dropped operation).
  void set_drop_add_disk(bool drop) { drop_add_disk_ = drop; }
  // Holds every disk operation (not started) until ReleaseIo, so that a test can keep a
  // pool operation in flight.
  void HoldIo();
  void ReleaseIo();
  size_t held_io() const;

  class Gate;  // implementation detail of HoldIo

 private:
  FilePoolBackend(RealLoop* loop, FilePoolOptions options);

  RealLoop* loop_;
  FilePoolOptions options_;
  std::unique_ptr<Random> random_;
  ClusterStatus cluster_;
  bool serving_pool_ = true;
  int add_disk_calls_ = 0;
  bool drop_add_disk_ = false;
  std::unique_ptr<Gate> gate_;
  // Declared before the pool, so the pool goes first: the files, and the gated devices
  // over them that the pool uses.
  std::vector<std::unique_ptr<BlockDevice>> devices_;
  std::unique_ptr<Pool> pool_;
};

// Listens on a TCP address and serves `bootstrap` as the bootstrap capability of a
// Cap'n Proto two-party RPC system per accepted connection.
class CapabilityListener {
 public:
  // `address` like "127.0.0.1:0" (0: a free port, see port()). `loop` must outlive it.
  static absl::StatusOr<std::unique_ptr<CapabilityListener>> Create(
      RealLoop* loop, const std::string& address, capnp::Capability::Client bootstrap);
  ~CapabilityListener();

  uint16_t port() const;
  int connections_active() const;

  struct Impl;

 private:
  explicit CapabilityListener(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace scribe::daemon::testing

#endif  // DAEMONS_SCRIBED_ADMIN_TEST_SUPPORT_H_
