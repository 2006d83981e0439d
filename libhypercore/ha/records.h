// The HA manager's records in the MetaStore: key layout and JSON codecs. Internal to
// libhypercore (the daemon and tools read records through HaManager).
#ifndef LIBHYPERCORE_HA_RECORDS_H_
#define LIBHYPERCORE_HA_RECORDS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "hypercore/ha.h"
#include "scribe/meta_store.h"

namespace hypercore::ha_internal {

inline constexpr char kRootPrefix[] = "/hc/";
inline constexpr char kNodesPrefix[] = "/hc/nodes/";
inline constexpr char kVmsPrefix[] = "/hc/vms/";
inline constexpr char kCoordinatorKey[] = "/hc/coordinator";

std::string NodeKey(const std::string& node);
std::string VmKey(const std::string& vm);

// The value of /hc/nodes/<node>.
struct NodeRecord {
  uint64_t ram_bytes = 0;
  int cpus = 0;
  bool maintenance = false;
};

std::string EncodeNode(const NodeRecord& node);
// DATA_LOSS naming the problem when the value is not a node record.
absl::StatusOr<NodeRecord> DecodeNode(const std::string& value);

// The value of /hc/vms/<vm> (VmInfo without `revision`, which is the key's).
std::string EncodeVm(const VmInfo& vm);
absl::StatusOr<VmInfo> DecodeVm(const std::string& value);

// Everything under /hc/ at one store revision.
struct Snapshot {
  struct Node {
    NodeRecord record;
    int64_t lease = 0;
  };
  int64_t revision = 0;
  std::map<std::string, Node> nodes;  // decodable node keys, by name
  std::map<std::string, VmInfo> vms;  // decodable VM records, by name (revision set)
  std::optional<scribe::KeyValue> coordinator;
  // Keys under /hc/ that did not decode: "key: error".
  std::vector<std::string> unreadable;

  // True when `vm`'s owner is a live node holding the lease the record names.
  bool OwnerAlive(const VmInfo& vm) const;
};

Snapshot DecodeSnapshot(const scribe::ListResult& list);

}  // namespace hypercore::ha_internal

#endif  // LIBHYPERCORE_HA_RECORDS_H_
