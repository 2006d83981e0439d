// The `hypercore` Python module: bindings over libhypercore's pure public API — the VM
// model and its validation (hypercore/vm_spec.h), placement and the N-1 check
// (hypercore/placement.h). Bindings wrap the library, never hypercored's RPC; errors
// cross into Python through status_py.h as hypercore.Error and its subclasses
// (hypercore.InvalidArgumentError is also a ValueError, ...).
//
// Every function here is pure and deterministic, so it is safe from any Python thread.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bindings/status_py.h"
#include "hypercore/placement.h"
#include "hypercore/vm_spec.h"

namespace py = pybind11;

namespace hypercore::python {
namespace {

constexpr char kModule[] = "hypercore";
constexpr char kVersion[] = "0.1.0";

std::string Optional(const std::optional<std::string>& v) { return v ? "'" + *v + "'" : "None"; }

std::string Repr(const VmDisk& d) {
  return absl::StrCat("VmDisk(name='", d.name, "', size_bytes=", d.size_bytes, ", flash_priority=", d.flash_priority,
                      ", replication=", d.replication, ")");
}

std::string Repr(const VmNic& n) {
  return absl::StrCat("VmNic(model='", n.model, "', vlan=", n.vlan ? std::to_string(*n.vlan) : "None",
                      ", mac=", Optional(n.mac), ")");
}

void Validate(const VmSpec& spec) { scribe::python::ThrowIfError(ValidateVmSpec(spec), kModule); }

PlacementChoice Place(const VmDemand& vm, const std::vector<PlacementNode>& nodes,
                      const std::vector<PlacedVm>& placed, const PlacementOptions& options) {
  if (!(options.vcpu_overcommit_ratio >= 1.0)) {
    scribe::python::ThrowIfError(absl::InvalidArgumentError("vcpu_overcommit_ratio must be >= 1"), kModule);
  }
  return scribe::python::ValueOrThrow(PlaceVm(vm, nodes, placed, options), kModule);
}

}  // namespace
}  // namespace hypercore::python

PYBIND11_MODULE(hypercore, m) {
  using namespace hypercore;
  using hypercore::python::Repr;
  m.doc() = "Python bindings of libhypercore: the VM model, placement and the N-1 check.";
  m.attr("__version__") = hypercore::python::kVersion;
  scribe::python::RegisterStatusExceptions(m);

  m.attr("VM_NAME_LENGTH_MAX") = kVmNameLengthMax;
  m.attr("VM_DESCRIPTION_LENGTH_MAX") = kVmDescriptionLengthMax;
  m.attr("VM_VCPUS_MAX") = kVmVcpusMax;
  m.attr("VM_RAM_BYTES_MIN") = kVmRamBytesMin;
  m.attr("VM_RAM_BYTES_MAX") = kVmRamBytesMax;
  m.attr("VM_RAM_BYTES_GRANULARITY") = kVmRamBytesGranularity;
  m.attr("VM_DISK_FLASH_PRIORITY_MAX") = kVmDiskFlashPriorityMax;
  m.attr("VM_NIC_VLAN_MIN") = kVmNicVlanMin;
  m.attr("VM_NIC_VLAN_MAX") = kVmNicVlanMax;

  // ------------------------------------------------------------------ the VM model
  py::class_<VmDisk>(m, "VmDisk", "A virtual disk of a VM; each becomes one SCRIBE VSD.")
      .def(py::init([](std::string name, uint64_t size_bytes, int flash_priority, int replication) {
             return VmDisk{std::move(name), size_bytes, flash_priority, replication};
           }),
           py::arg("name"), py::arg("size_bytes"), py::arg("flash_priority") = 4, py::arg("replication") = 2)
      .def_readwrite("name", &VmDisk::name)
      .def_readwrite("size_bytes", &VmDisk::size_bytes)
      .def_readwrite("flash_priority", &VmDisk::flash_priority)
      .def_readwrite("replication", &VmDisk::replication)
      .def("__repr__", [](const VmDisk& d) { return Repr(d); });

  py::class_<VmNic>(m, "VmNic", "A virtio NIC, optionally on an 802.1Q VLAN.")
      .def(py::init([](std::string model, std::optional<int> vlan, std::optional<std::string> mac) {
             VmNic n;
             n.model = std::move(model);
             n.vlan = vlan;
             n.mac = std::move(mac);
             return n;
           }),
           py::arg("model") = "virtio", py::arg("vlan") = py::none(), py::arg("mac") = py::none())
      .def_readwrite("model", &VmNic::model)
      .def_readwrite("vlan", &VmNic::vlan)
      .def_readwrite("mac", &VmNic::mac)
      .def("__repr__", [](const VmNic& n) { return Repr(n); });

  py::class_<VmBoot>(m, "VmBoot", "Direct kernel boot: kernel, initramfs and command line on the node.")
      .def(py::init([](std::string kernel_path, std::string initrd_path, std::string cmdline) {
             return VmBoot{std::move(kernel_path), std::move(initrd_path), std::move(cmdline)};
           }),
           py::arg("kernel_path"), py::arg("initrd_path") = "", py::arg("cmdline") = "")
      .def_readwrite("kernel_path", &VmBoot::kernel_path)
      .def_readwrite("initrd_path", &VmBoot::initrd_path)
      .def_readwrite("cmdline", &VmBoot::cmdline);

  py::class_<VmSpec>(m, "VmSpec", "What a user asks for when creating a VM (hypercore/vm_spec.h).")
      .def(py::init([](std::string name, uint64_t ram_bytes, int vcpus, std::vector<VmDisk> disks,
                       std::vector<VmNic> nics, std::vector<std::string> tags, std::string description,
                       std::optional<std::string> cdrom_iso) {
             VmSpec s;
             s.name = std::move(name);
             s.ram_bytes = ram_bytes;
             s.vcpus = vcpus;
             s.disks = std::move(disks);
             s.nics = std::move(nics);
             s.tags = std::move(tags);
             s.description = std::move(description);
             s.cdrom_iso = std::move(cdrom_iso);
             return s;
           }),
           py::arg("name"), py::arg("ram_bytes"), py::arg("vcpus") = 1, py::arg("disks") = std::vector<VmDisk>{},
           py::arg("nics") = std::vector<VmNic>{}, py::arg("tags") = std::vector<std::string>{},
           py::arg("description") = "", py::arg("cdrom_iso") = py::none())
      .def_readwrite("name", &VmSpec::name)
      .def_readwrite("ram_bytes", &VmSpec::ram_bytes)
      .def_readwrite("vcpus", &VmSpec::vcpus)
      .def_readwrite("disks", &VmSpec::disks)
      .def_readwrite("nics", &VmSpec::nics)
      .def_readwrite("tags", &VmSpec::tags)
      .def_readwrite("description", &VmSpec::description)
      .def_readwrite("cdrom_iso", &VmSpec::cdrom_iso)
      .def_readwrite("boot", &VmSpec::boot)
      .def("validate", &hypercore::python::Validate,
           "Raises InvalidArgumentError naming the first offending field and its rule.")
      .def("matches_tags", &MatchesTagFilter, py::arg("tags"),
           "True when the spec carries every tag in `tags` (an empty filter matches).")
      .def("__repr__", [](const VmSpec& s) {
        std::vector<std::string> disks, nics;
        for (const VmDisk& d : s.disks) disks.push_back(Repr(d));
        for (const VmNic& n : s.nics) nics.push_back(Repr(n));
        return absl::StrCat("VmSpec(name='", s.name, "', ram_bytes=", s.ram_bytes, ", vcpus=", s.vcpus, ", disks=[",
                            absl::StrJoin(disks, ", "), "], nics=[", absl::StrJoin(nics, ", "), "])");
      });

  m.def("validate_vm_spec", &hypercore::python::Validate, py::arg("spec"),
        "Raises InvalidArgumentError naming the first offending field ('vcpus', 'disks[1].name', ...).");

  // ------------------------------------------------------------------ placement
  py::class_<PlacementNode>(m, "PlacementNode", "A node as placement sees it.")
      .def(py::init([](std::string name, uint64_t ram_bytes, int cpus, bool alive, bool maintenance) {
             return PlacementNode{std::move(name), ram_bytes, cpus, alive, maintenance};
           }),
           py::arg("name"), py::arg("ram_bytes"), py::arg("cpus"), py::arg("alive") = true,
           py::arg("maintenance") = false)
      .def_readwrite("name", &PlacementNode::name)
      .def_readwrite("ram_bytes", &PlacementNode::ram_bytes)
      .def_readwrite("cpus", &PlacementNode::cpus)
      .def_readwrite("alive", &PlacementNode::alive)
      .def_readwrite("maintenance", &PlacementNode::maintenance);

  py::class_<PlacedVm>(m, "PlacedVm", "A VM holding resources on a node.")
      .def(py::init([](std::string name, std::string node, uint64_t ram_bytes, int vcpus) {
             return PlacedVm{std::move(name), std::move(node), ram_bytes, vcpus};
           }),
           py::arg("name"), py::arg("node"), py::arg("ram_bytes"), py::arg("vcpus") = 1)
      .def_readwrite("name", &PlacedVm::name)
      .def_readwrite("node", &PlacedVm::node)
      .def_readwrite("ram_bytes", &PlacedVm::ram_bytes)
      .def_readwrite("vcpus", &PlacedVm::vcpus);

  py::class_<VmDemand>(m, "VmDemand", "What a VM to be placed needs.")
      .def(py::init([](std::string name, uint64_t ram_bytes, int vcpus) {
             return VmDemand{std::move(name), ram_bytes, vcpus};
           }),
           py::arg("name"), py::arg("ram_bytes"), py::arg("vcpus") = 1)
      .def_readwrite("name", &VmDemand::name)
      .def_readwrite("ram_bytes", &VmDemand::ram_bytes)
      .def_readwrite("vcpus", &VmDemand::vcpus);

  py::class_<PlacementOptions>(m, "PlacementOptions")
      .def(py::init([](double ratio) { return PlacementOptions{ratio}; }), py::arg("vcpu_overcommit_ratio") = 4.0)
      .def_readwrite("vcpu_overcommit_ratio", &PlacementOptions::vcpu_overcommit_ratio);

  py::class_<PlacementChoice>(m, "PlacementChoice")
      .def_readonly("node", &PlacementChoice::node)
      .def_readonly("ram_free_bytes", &PlacementChoice::ram_free_bytes)
      .def("__repr__", [](const PlacementChoice& c) {
        return absl::StrCat("PlacementChoice(node='", c.node, "', ram_free_bytes=", c.ram_free_bytes, ")");
      });

  py::class_<NodeLoad>(m, "NodeLoad")
      .def_readonly("node", &NodeLoad::node)
      .def_readonly("ram_bytes", &NodeLoad::ram_bytes)
      .def_readonly("ram_free_bytes", &NodeLoad::ram_free_bytes)
      .def_readonly("cpus", &NodeLoad::cpus)
      .def_readonly("vcpus_used", &NodeLoad::vcpus_used)
      .def_readonly("vcpus_max", &NodeLoad::vcpus_max);

  py::class_<FailoverCondition>(m, "FailoverCondition", "The VMs of `node` could not restart elsewhere.")
      .def_readonly("node", &FailoverCondition::node)
      .def_readonly("vms", &FailoverCondition::vms)
      .def_readonly("message", &FailoverCondition::message)
      .def("__repr__", [](const FailoverCondition& c) { return c.message; });

  m.def("place_vm", &hypercore::python::Place, py::arg("vm"), py::arg("nodes"), py::arg("placed") = std::vector<PlacedVm>{},
        py::arg("options") = PlacementOptions{},
        "The node with the most free RAM among the eligible ones where the VM fits (ties by name); "
        "raises ResourceExhaustedError naming the VM and the largest free RAM when none fits.");
  m.def("rank_nodes", &RankNodes, py::arg("nodes"), py::arg("placed") = std::vector<PlacedVm>{},
        py::arg("options") = PlacementOptions{}, "Every eligible node with its load, most free RAM first.");
  m.def("check_n_minus_one", &CheckNMinusOne, py::arg("nodes"), py::arg("placed") = std::vector<PlacedVm>{},
        py::arg("options") = PlacementOptions{},
        "One FailoverCondition per node some of whose VMs could not be restarted on the others; "
        "empty when the cluster can lose any one node.");
}
