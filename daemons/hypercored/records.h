// hypercored's own records in etcd, beside the HA manager's /hc/ keys (which hold the
// VMs, nodes and coordinator; see hypercore/ha.h). Kept under a prefix of their own,
// /hcd/, so the HA manager's passes (which list all of /hc/) do not read them.
//
//   /hcd/nodes/<node>              hypercored on that node: its API address, capacity
//                                  and local scribed (persistent: shows dead nodes too)
//   /hcd/snapshots/<vm>/<snap>     a VM snapshot: the VM's spec then, its disks' VSDs
//                                  and SCRIBE snapshot ids
//   /hcd/media/<name>              an ISO in the media library: VSD, size, state
//
// Values are JSON, readable with etcdctl. Decoding is strict: a value that is not what
// this code writes is DATA_LOSS naming the field.
#ifndef DAEMONS_HYPERCORED_RECORDS_H_
#define DAEMONS_HYPERCORED_RECORDS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hypercore/vm_spec.h"

namespace hypercore::daemon {

inline constexpr char kNodesPrefix[] = "/hcd/nodes/";
inline constexpr char kSnapshotsPrefix[] = "/hcd/snapshots/";
inline constexpr char kMediaPrefix[] = "/hcd/media/";

std::string NodeRegistrationKey(const std::string& node);
// "/hcd/snapshots/<vm>/" (with the slash: a prefix of that VM's snapshots only).
std::string VmSnapshotsPrefix(const std::string& vm);
std::string VmSnapshotKey(const std::string& vm, const std::string& snapshot);
std::string MediaKey(const std::string& name);

struct NodeRegistration {
  std::string node;
  std::string admin_address;  // HypercoreAdmin, "host:port"
  uint64_t ram_bytes = 0;
  int cpus = 0;
  uint64_t scribe_node = 0;
  std::string nbd_socket;
};

struct SnapshotDiskRecord {
  std::string disk;
  std::string vsd;
  uint64_t snapshot_id = 0;
};

struct VmSnapshotRecord {
  std::string vm;
  std::string name;
  uint64_t created_unix_ms = 0;
  VmSpec spec;  // the VM's configuration when taken (MACs included)
  std::vector<SnapshotDiskRecord> disks;
};

struct MediaRecord {
  enum class State { kFilling, kReady };
  std::string name;
  std::string vsd;
  uint64_t size_bytes = 0;  // of the image file
  State state = State::kFilling;
  std::string source;  // the file it came from, on `node`
  std::string node;
};
const char* MediaStateName(MediaRecord::State state);

std::string EncodeNodeRegistration(const NodeRegistration& r);
absl::StatusOr<NodeRegistration> DecodeNodeRegistration(const std::string& value);
std::string EncodeVmSnapshot(const VmSnapshotRecord& r);
absl::StatusOr<VmSnapshotRecord> DecodeVmSnapshot(const std::string& value);
std::string EncodeMedia(const MediaRecord& r);
absl::StatusOr<MediaRecord> DecodeMedia(const std::string& value);

}  // namespace hypercore::daemon

#endif  // DAEMONS_HYPERCORED_RECORDS_H_
