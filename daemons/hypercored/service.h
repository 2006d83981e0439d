// HypercoreAdmin (daemons/hypercore_api.capnp) over the HA manager, the local scribed
// and the hypercored records in etcd: decodes a call, runs it (a VM's VSDs, its record,
// snapshots, clones, reverts, media) and encodes the result. Any node answers for the
// whole cluster; the only node-local things are the hypervisor (whose view of the VMs
// this node runs refines their status) and the ISO files `addMedia` reads.
//
// Storage naming (the integration contract with scribed):
//  - disk D of VM V is the VSD "V-D" (VsdName), created with the disk's size,
//    replication and flash priority when the VM is created, deleted with the VM;
//  - the hypervisor opens it as the NBD export "V-D@E" (EpochExportName) on the local
//    scribed's socket, E being the VM's epoch in that incarnation; before QEMU starts,
//    PrepareStart calls fenceVsd("V-D", E) for every disk, after which scribed refuses
//    connections (and writes) that name an older epoch;
//  - ISO medium M is the VSD "iso-M" (MediaVsdName), filled through the plain export
//    "iso-M" and attached read-only under that name (it is never fenced).
//
// Failures leave nothing half-made: VSDs (and SCRIBE snapshots) made by a call that
// then fails are deleted again before the error is returned.
//
// Threading: single-threaded on the daemon's RealLoop (the KJ event loop).
#ifndef DAEMONS_HYPERCORED_SERVICE_H_
#define DAEMONS_HYPERCORED_SERVICE_H_

#include <kj/async.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "daemons/hypercore_api.capnp.h"
#include "daemons/hypercored/media_writer.h"
#include "daemons/hypercored/scribe_client.h"
#include "hypercore/ha.h"
#include "hypercore/hypervisor.h"
#include "scribe/meta_store.h"
#include "scribe/real_env.h"

namespace hypercore::daemon {

// "<vm>-<disk>".
std::string VsdName(const std::string& vm, const std::string& disk);
// "iso-<media>".
std::string MediaVsdName(const std::string& media);
// "<vsd>@<epoch>".
std::string EpochExportName(const std::string& vsd, uint64_t epoch);
// The launch naming above on `nbd_socket`, for HaOptions::launch.
NbdLaunchOptions LaunchOptions(const std::string& nbd_socket);

struct ServiceOptions {
  std::string node;          // this node's name (HaOptions::node)
  uint64_t scribe_node = 0;  // the local scribed's node id (asked in exportInfo)
  std::string nbd_socket;    // the local scribed's NBD socket, as in the launches
  // Wall-clock time for snapshot timestamps.
  std::function<uint64_t()> now_unix_ms;
  // One line per change made or refused (optional).
  std::function<void(const std::string&)> log;
  // Limits on what one request may ask for.
  size_t vm_disks_max = 32;
  size_t vm_nics_max = 16;
  size_t tags_max = 64;
  size_t tag_length_max = 255;
};

// HaOptions::prepare_start of hypercored: for every disk of the launch, checks that the
// local scribed exports its VSD on the launch's socket (exportInfo for this node), then
// raises the VSD's writer epoch to the launch's (fenceVsd). The first failure fails
// the start with a message naming the VSD. `scribe` must outlive it.
class StartPreparer {
 public:
  StartPreparer(ScribeClient* scribe, uint64_t scribe_node);
  ~StartPreparer();
  void Prepare(const VmLaunch& launch, std::function<void(absl::Status)> done);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct ServiceDeps {
  scribe::RealLoop* loop = nullptr;
  HaManager* ha = nullptr;
  scribe::MetaStore* store = nullptr;
  Hypervisor* hypervisor = nullptr;  // this node's, for the status of the VMs it runs
  ScribeClient* scribe = nullptr;
  MediaWriter* media_writer = nullptr;
};

// The server object to hand to capnp. Every dependency must outlive it.
kj::Own<api::HypercoreAdmin::Server> NewHypercoreService(ServiceDeps deps, ServiceOptions options);

}  // namespace hypercore::daemon

#endif  // DAEMONS_HYPERCORED_SERVICE_H_
