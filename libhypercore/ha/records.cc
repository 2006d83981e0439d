#include "libhypercore/ha/records.h"

#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace hypercore::ha_internal {
namespace {

using Json = nlohmann::json;

// Strict accessors: a record we wrote always has every field with its type, so anything
// else is damage (or a newer writer), reported instead of guessed. They never throw.
class Reader {
 public:
  explicit Reader(const Json& object, std::string where) : object_(object), where_(std::move(where)) {}

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
    if (!f->is_string()) return Fail(name, "a string"), "";
    return f->get<std::string>();
  }

  uint64_t Unsigned(const char* name) {
    const Json* f = Field(name);
    if (f == nullptr) return 0;
    if (!f->is_number_unsigned()) return Fail(name, "an unsigned integer"), 0;
    return f->get<uint64_t>();
  }

  int64_t Signed(const char* name) {
    const Json* f = Field(name);
    if (f == nullptr) return 0;
    if (!f->is_number_integer()) return Fail(name, "an integer"), 0;
    return f->get<int64_t>();
  }

  int Int(const char* name) {
    const int64_t v = Signed(name);
    if (v < INT32_MIN || v > INT32_MAX) return Fail(name, "a 32-bit integer"), 0;
    return static_cast<int>(v);
  }

  bool Bool(const char* name) {
    const Json* f = Field(name);
    if (f == nullptr) return false;
    if (!f->is_boolean()) return Fail(name, "a boolean"), false;
    return f->get<bool>();
  }

  const Json* Array(const char* name) {
    const Json* f = Field(name);
    if (f == nullptr) return nullptr;
    if (!f->is_array()) return Fail(name, "an array"), nullptr;
    return f;
  }

  std::nullptr_t Fail(const std::string& what) {
    if (status_.ok()) status_ = absl::DataLossError(absl::StrCat(where_, " ", what));
    return nullptr;
  }
  void Fail(const char* field, const char* type) {
    Fail(absl::StrCat("field \"", field, "\" is not ", type));
  }

 private:
  const Json& object_;
  std::string where_;
  absl::Status status_;
};

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
  Json out = {{"name", spec.name},
              {"description", spec.description},
              {"tags", spec.tags},
              {"vcpus", spec.vcpus},
              {"ram_bytes", spec.ram_bytes},
              {"disks", std::move(disks)},
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

absl::StatusOr<Json> Parse(const std::string& value) {
  Json json = Json::parse(value, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return absl::DataLossError("value is not valid JSON");
  return json;
}

}  // namespace

std::string NodeKey(const std::string& node) { return absl::StrCat(kNodesPrefix, node); }
std::string VmKey(const std::string& vm) { return absl::StrCat(kVmsPrefix, vm); }

std::string EncodeNode(const NodeRecord& node) {
  return Json({{"ram_bytes", node.ram_bytes}, {"cpus", node.cpus}, {"maintenance", node.maintenance}})
      .dump();
}

absl::StatusOr<NodeRecord> DecodeNode(const std::string& value) {
  absl::StatusOr<Json> json = Parse(value);
  if (!json.ok()) return json.status();
  Reader r(*json, "node record");
  NodeRecord node;
  node.ram_bytes = r.Unsigned("ram_bytes");
  node.cpus = r.Int("cpus");
  node.maintenance = r.Bool("maintenance");
  if (!r.status().ok()) return r.status();
  return node;
}

std::string EncodeVm(const VmInfo& vm) {
  Json out = Json({{"spec", EncodeSpec(vm.spec)},
               {"uuid", vm.uuid},
               {"desired", DesiredStateName(vm.desired)},
               {"owner", vm.owner},
               {"owner_lease", vm.owner_lease},
               {"epoch", vm.epoch},
               {"condition", vm.condition}});
  // Written only when set, so records of VMs stopped the usual way stay as they were.
  if (vm.force_off) out["force_off"] = true;
  return out.dump();
}

absl::StatusOr<VmInfo> DecodeVm(const std::string& value) {
  absl::StatusOr<Json> json = Parse(value);
  if (!json.ok()) return json.status();
  Reader r(*json, "vm record");
  VmInfo vm;
  if (const Json* spec = r.Field("spec")) {
    absl::StatusOr<VmSpec> decoded = DecodeSpec(*spec);
    if (!decoded.ok()) return decoded.status();
    vm.spec = *std::move(decoded);
  }
  vm.uuid = r.String("uuid");
  const std::string desired = r.String("desired");
  vm.owner = r.String("owner");
  vm.owner_lease = r.Signed("owner_lease");
  vm.epoch = r.Unsigned("epoch");
  vm.condition = r.String("condition");
  if (r.Field("force_off", /*required=*/false) != nullptr) vm.force_off = r.Bool("force_off");
  if (!r.status().ok()) return r.status();
  if (desired == DesiredStateName(DesiredState::kRunning)) {
    vm.desired = DesiredState::kRunning;
  } else if (desired == DesiredStateName(DesiredState::kStopped)) {
    vm.desired = DesiredState::kStopped;
  } else {
    return absl::DataLossError(absl::StrCat("vm record: unknown desired state \"", desired, "\""));
  }
  return vm;
}

bool Snapshot::OwnerAlive(const VmInfo& vm) const {
  if (vm.owner.empty()) return false;
  auto it = nodes.find(vm.owner);
  return it != nodes.end() && it->second.lease == vm.owner_lease;
}

Snapshot DecodeSnapshot(const scribe::ListResult& list) {
  Snapshot snap;
  snap.revision = list.revision;
  for (const scribe::KeyValue& kv : list.kvs) {
    if (kv.key == kCoordinatorKey) {
      snap.coordinator = kv;
    } else if (absl::StartsWith(kv.key, kNodesPrefix)) {
      absl::StatusOr<NodeRecord> node = DecodeNode(kv.value);
      if (!node.ok()) {
        snap.unreadable.push_back(absl::StrCat(kv.key, ": ", node.status().message()));
        continue;
      }
      snap.nodes[kv.key.substr(sizeof(kNodesPrefix) - 1)] = Snapshot::Node{*node, kv.lease.value};
    } else if (absl::StartsWith(kv.key, kVmsPrefix)) {
      absl::StatusOr<VmInfo> vm = DecodeVm(kv.value);
      const std::string name = kv.key.substr(sizeof(kVmsPrefix) - 1);
      if (!vm.ok() || vm->spec.name != name) {
        snap.unreadable.push_back(absl::StrCat(
            kv.key, ": ", vm.ok() ? "the record names another VM" : vm.status().message()));
        continue;
      }
      vm->revision = kv.mod_revision;
      snap.vms[name] = *std::move(vm);
    }
  }
  return snap;
}

}  // namespace hypercore::ha_internal

namespace hypercore {

// Here rather than with the manager: the codec spells the states.
const char* DesiredStateName(DesiredState state) {
  return state == DesiredState::kRunning ? "running" : "stopped";
}

}  // namespace hypercore
