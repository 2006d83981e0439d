#include "libhypercore/ha/records.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "libhypercore/ha/json_codec.h"

namespace hypercore::ha_internal {
namespace {

using json_codec::DecodeSpec;
using json_codec::EncodeSpec;
using json_codec::Json;
using json_codec::Reader;

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
