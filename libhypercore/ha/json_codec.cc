#include "libhypercore/ha/json_codec.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace hypercore::json_codec {

Reader::Reader(const Json& object, std::string where) : object_(object), where_(std::move(where)) {}

const Json* Reader::Field(const char* name, bool required) {
  if (!object_.is_object()) return Fail("is not a JSON object");
  auto it = object_.find(name);
  if (it == object_.end()) {
    if (required) Fail(absl::StrCat("has no field \"", name, "\""));
    return nullptr;
  }
  return &*it;
}

std::string Reader::String(const char* name, bool required) {
  const Json* f = Field(name, required);
  if (f == nullptr) return "";
  if (!f->is_string()) return Fail(name, "a string"), "";
  return f->get<std::string>();
}

uint64_t Reader::Unsigned(const char* name) {
  const Json* f = Field(name);
  if (f == nullptr) return 0;
  if (!f->is_number_unsigned()) return Fail(name, "an unsigned integer"), 0;
  return f->get<uint64_t>();
}

int64_t Reader::Signed(const char* name) {
  const Json* f = Field(name);
  if (f == nullptr) return 0;
  if (!f->is_number_integer()) return Fail(name, "an integer"), 0;
  return f->get<int64_t>();
}

int Reader::Int(const char* name) {
  const int64_t v = Signed(name);
  if (v < INT32_MIN || v > INT32_MAX) return Fail(name, "a 32-bit integer"), 0;
  return static_cast<int>(v);
}

bool Reader::Bool(const char* name) {
  const Json* f = Field(name);
  if (f == nullptr) return false;
  if (!f->is_boolean()) return Fail(name, "a boolean"), false;
  return f->get<bool>();
}

const Json* Reader::Array(const char* name) {
  const Json* f = Field(name);
  if (f == nullptr) return nullptr;
  if (!f->is_array()) return Fail(name, "an array"), nullptr;
  return f;
}

std::nullptr_t Reader::Fail(const std::string& what) {
  if (status_.ok()) status_ = absl::DataLossError(absl::StrCat(where_, " ", what));
  return nullptr;
}

void Reader::Fail(const char* field, const char* type) {
  Fail(absl::StrCat("field \"", field, "\" is not ", type));
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
  Json out = {{"name", spec.name},
              {"description", spec.description},
              {"tags", spec.tags},
              {"vcpus", spec.vcpus},
              {"ram_bytes", spec.ram_bytes},
              {"disks", std::move(disks)},
              {"nics", std::move(nics)}};
  if (spec.cdrom_iso) out["cdrom_iso"] = *spec.cdrom_iso;
  // Only when present: records of VMs without it stay as older writers made them.
  if (spec.boot) {
    out["boot"] = {{"kernel_path", spec.boot->kernel_path},
                   {"initrd_path", spec.boot->initrd_path},
                   {"cmdline", spec.boot->cmdline}};
  }
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
  if (const Json* boot = r.Field("boot", /*required=*/false)) {
    Reader br(*boot, "spec.boot");
    VmBoot b;
    b.kernel_path = br.String("kernel_path");
    b.initrd_path = br.String("initrd_path");
    b.cmdline = br.String("cmdline");
    if (!br.status().ok()) return br.status();
    spec.boot = std::move(b);
  }
  if (!r.status().ok()) return r.status();
  return spec;
}

}  // namespace hypercore::json_codec
