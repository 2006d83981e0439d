#include "daemons/hypercored/records.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "libhypercore/ha/json_codec.h"

namespace hypercore::daemon {
namespace {

using json_codec::DecodeSpec;
using json_codec::EncodeSpec;
using json_codec::Json;
using json_codec::Reader;

absl::StatusOr<Json> Parse(const std::string& value, const char* what) {
  Json json = Json::parse(value, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return absl::DataLossError(absl::StrCat(what, " is not valid JSON"));
  return json;
}

}  // namespace

std::string NodeRegistrationKey(const std::string& node) { return absl::StrCat(kNodesPrefix, node); }
std::string VmSnapshotsPrefix(const std::string& vm) { return absl::StrCat(kSnapshotsPrefix, vm, "/"); }
std::string VmSnapshotKey(const std::string& vm, const std::string& snapshot) {
  return absl::StrCat(VmSnapshotsPrefix(vm), snapshot);
}
std::string MediaKey(const std::string& name) { return absl::StrCat(kMediaPrefix, name); }

const char* MediaStateName(MediaRecord::State state) {
  return state == MediaRecord::State::kReady ? "ready" : "filling";
}

std::string EncodeNodeRegistration(const NodeRegistration& r) {
  return Json({{"node", r.node},
               {"admin_address", r.admin_address},
               {"ram_bytes", r.ram_bytes},
               {"cpus", r.cpus},
               {"scribe_node", r.scribe_node},
               {"nbd_socket", r.nbd_socket}})
      .dump();
}

absl::StatusOr<NodeRegistration> DecodeNodeRegistration(const std::string& value) {
  absl::StatusOr<Json> json = Parse(value, "node registration");
  if (!json.ok()) return json.status();
  Reader r(*json, "node registration");
  NodeRegistration out;
  out.node = r.String("node");
  out.admin_address = r.String("admin_address");
  out.ram_bytes = r.Unsigned("ram_bytes");
  out.cpus = r.Int("cpus");
  out.scribe_node = r.Unsigned("scribe_node");
  out.nbd_socket = r.String("nbd_socket");
  if (!r.status().ok()) return r.status();
  return out;
}

std::string EncodeVmSnapshot(const VmSnapshotRecord& r) {
  Json disks = Json::array();
  for (const SnapshotDiskRecord& d : r.disks) {
    disks.push_back({{"disk", d.disk}, {"vsd", d.vsd}, {"snapshot_id", d.snapshot_id}});
  }
  return Json({{"vm", r.vm},
               {"name", r.name},
               {"created_unix_ms", r.created_unix_ms},
               {"spec", EncodeSpec(r.spec)},
               {"disks", std::move(disks)}})
      .dump();
}

absl::StatusOr<VmSnapshotRecord> DecodeVmSnapshot(const std::string& value) {
  absl::StatusOr<Json> json = Parse(value, "vm snapshot");
  if (!json.ok()) return json.status();
  Reader r(*json, "vm snapshot");
  VmSnapshotRecord out;
  out.vm = r.String("vm");
  out.name = r.String("name");
  out.created_unix_ms = r.Unsigned("created_unix_ms");
  if (const Json* spec = r.Field("spec")) {
    absl::StatusOr<VmSpec> decoded = DecodeSpec(*spec);
    if (!decoded.ok()) return decoded.status();
    out.spec = *std::move(decoded);
  }
  if (const Json* disks = r.Array("disks")) {
    for (const Json& d : *disks) {
      Reader dr(d, "vm snapshot disks[]");
      SnapshotDiskRecord disk;
      disk.disk = dr.String("disk");
      disk.vsd = dr.String("vsd");
      disk.snapshot_id = dr.Unsigned("snapshot_id");
      if (!dr.status().ok()) return dr.status();
      out.disks.push_back(std::move(disk));
    }
  }
  if (!r.status().ok()) return r.status();
  return out;
}

std::string EncodeMedia(const MediaRecord& r) {
  return Json({{"name", r.name},
               {"vsd", r.vsd},
               {"size_bytes", r.size_bytes},
               {"state", MediaStateName(r.state)},
               {"source", r.source},
               {"node", r.node}})
      .dump();
}

absl::StatusOr<MediaRecord> DecodeMedia(const std::string& value) {
  absl::StatusOr<Json> json = Parse(value, "media record");
  if (!json.ok()) return json.status();
  Reader r(*json, "media record");
  MediaRecord out;
  out.name = r.String("name");
  out.vsd = r.String("vsd");
  out.size_bytes = r.Unsigned("size_bytes");
  const std::string state = r.String("state");
  out.source = r.String("source");
  out.node = r.String("node");
  if (!r.status().ok()) return r.status();
  if (state == "ready") {
    out.state = MediaRecord::State::kReady;
  } else if (state == "filling") {
    out.state = MediaRecord::State::kFilling;
  } else {
    return absl::DataLossError(absl::StrCat("media record: unknown state \"", state, "\""));
  }
  return out;
}

}  // namespace hypercore::daemon
