#include "daemons/hypercored/records.h"

#include <nlohmann/json.hpp>

#include <utility>

#include "absl/strings/str_cat.h"

namespace hypercore::daemon {
namespace {

using Json = nlohmann::json;

// Field accessors that record the first problem instead of throwing.
class Reader {
 public:
  Reader(const Json& object, std::string where) : object_(object), where_(std::move(where)) {}
  const absl::Status& status() const { return status_; }

  const Json* Field(const char* name, bool required = true) {
    if (!object_.is_object()) return Fail("is not a JSON object");
    auto it = object_.find(name);
    if (it == object_.end()) {
      if (required) Fail(absl::StrCat("has no field \"", name, "\""));
      return nullptr;
    }
    return &*it;
  }
  std::string String(const char* name, bool required = true) {
    const Json* f = Field(name, required);
    if (f == nullptr) return "";
    if (!f->is_string()) return Fail(absl::StrCat("field \"", name, "\" is not a string")), "";
    return f->get<std::string>();
  }
  uint64_t Unsigned(const char* name) {
    const Json* f = Field(name);
    if (f == nullptr) return 0;
    if (!f->is_number_unsigned()) return Fail(absl::StrCat("field \"", name, "\" is not an unsigned integer")), 0;
    return f->get<uint64_t>();
  }
  int Int(const char* name) {
    const Json* f = Field(name);
    if (f == nullptr) return 0;
    if (!f->is_number_integer() || f->get<int64_t>() < INT32_MIN || f->get<int64_t>() > INT32_MAX) {
      return Fail(absl::StrCat("field \"", name, "\" is not a 32-bit integer")), 0;
    }
    return static_cast<int>(f->get<int64_t>());
  }
  const Json* Array(const char* name) {
    const Json* f = Field(name);
    if (f == nullptr) return nullptr;
    if (!f->is_array()) return Fail(absl::StrCat("field \"", name, "\" is not an array"));
    return f;
  }
  std::nullptr_t Fail(const std::string& what) {
    if (status_.ok()) status_ = absl::DataLossError(absl::StrCat(where_, " ", what));
    return nullptr;
  }

 private:
  const Json& object_;
  std::string where_;
  absl::Status status_;
};

absl::StatusOr<Json> Parse(const std::string& value, const char* what) {
  Json json = Json::parse(value, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return absl::DataLossError(absl::StrCat(what, " is not valid JSON"));
  return json;
}

Json EncodeSpec(const VmSpec& spec) {
  Json disks = Json::array();
  for (const VmDisk& d : spec.disks) {
    disks.push_back({{"name", d.name},
                     {"size_bytes", d.size_bytes},
                     {"flash_priority", d.flash_priority},
                     {"replication", d.replication}});
  }
  Json nics = Json::array();
  for (const VmNic& n : spec.nics) {
    Json nic = {{"model", n.model}};
    if (n.vlan) nic["vlan"] = *n.vlan;
    if (n.mac) nic["mac"] = *n.mac;
    nics.push_back(std::move(nic));
  }
  Json out = {{"name", spec.name},   {"description", spec.description}, {"tags", spec.tags},
              {"vcpus", spec.vcpus}, {"ram_bytes", spec.ram_bytes},     {"disks", std::move(disks)},
              {"nics", std::move(nics)}};
  if (spec.cdrom_iso) out["cdrom_iso"] = *spec.cdrom_iso;
  return out;
}

absl::StatusOr<VmSpec> DecodeSpec(const Json& json) {
  Reader r(json, "spec");
  VmSpec spec;
  spec.name = r.String("name");
  spec.description = r.String("description");
  if (const Json* tags = r.Array("tags")) {
    for (const Json& t : *tags) {
      if (!t.is_string()) return absl::DataLossError("spec.tags holds a non-string");
      spec.tags.push_back(t.get<std::string>());
    }
  }
  spec.vcpus = r.Int("vcpus");
  spec.ram_bytes = r.Unsigned("ram_bytes");
  if (const Json* disks = r.Array("disks")) {
    for (const Json& d : *disks) {
      Reader dr(d, "spec.disks[]");
      VmDisk disk;
      disk.name = dr.String("name");
      disk.size_bytes = dr.Unsigned("size_bytes");
      disk.flash_priority = dr.Int("flash_priority");
      disk.replication = dr.Int("replication");
      if (!dr.status().ok()) return dr.status();
      spec.disks.push_back(std::move(disk));
    }
  }
  if (const Json* nics = r.Array("nics")) {
    for (const Json& n : *nics) {
      Reader nr(n, "spec.nics[]");
      VmNic nic;
      nic.model = nr.String("model");
      if (nr.Field("vlan", /*required=*/false) != nullptr) nic.vlan = nr.Int("vlan");
      if (nr.Field("mac", /*required=*/false) != nullptr) nic.mac = nr.String("mac");
      if (!nr.status().ok()) return nr.status();
      spec.nics.push_back(std::move(nic));
    }
  }
  if (r.Field("cdrom_iso", /*required=*/false) != nullptr) spec.cdrom_iso = r.String("cdrom_iso");
  if (!r.status().ok()) return r.status();
  return spec;
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
