// hc3: the command-line client of hypercored's management API
// (daemons/hypercore_api.capnp): VMs, nodes, conditions, VM snapshots, clones, reverts
// and the ISO media library.
//
// Decodes the command line, makes one or a few HypercoreAdmin calls over TCP, and prints
// aligned tables (or, with --json anywhere on the line, one JSON document on stdout).
// Errors go to stderr as "hc3: <command>: <message>" with exit status 1; usage errors
// exit 2 with the usage text. `hc3 help` prints the usage.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "daemons/cli/cli_common.h"
#include "daemons/cli/format.h"
#include "daemons/hypercore_api.capnp.h"

namespace hc3::cli {
namespace {

namespace api = ::hypercore::api;
using scribe::cli::Args;
using scribe::cli::Check;
using scribe::cli::Command;
using scribe::cli::CommandError;
using scribe::cli::CommandLine;
using scribe::cli::FlagPrefix;
using scribe::cli::FlagSpec;
using scribe::cli::HumanBytes;
using scribe::cli::JsonWriter;
using scribe::cli::Num;
using scribe::cli::Print;
using scribe::cli::PrintJson;
using scribe::cli::SizeArg;
using scribe::cli::Str;
using scribe::cli::Table;
using scribe::cli::Text;
using scribe::cli::UintArg;
using scribe::cli::UsageError;
using scribe::cli::YesNo;
using Connection = scribe::cli::Connection;

constexpr char kDefaultAddress[] = "127.0.0.1:7101";
constexpr unsigned kDefaultPort = 7101;
// Media add copies a whole image, so it gets more than the usual call timeout.
constexpr int64_t kMediaAddTimeoutSeconds = 3600;
constexpr int64_t kWaitPollMs = 250;
constexpr double kWaitDefaultSeconds = 120;

constexpr char kUsage[] = R"(usage: hc3 [--addr HOST:PORT] [--json] COMMAND [ARGS]

Talks to hypercored's API at --addr, else $HC3_ADDR, else 127.0.0.1:7101 (any node
answers for the whole cluster). SIZE takes an optional suffix: 512M, 20G, 1T (powers of
1024; bytes without one).

VMs:
  vm create NAME --ram SIZE [--vcpus N] [--disk NAME:SIZE[:RF[:PRIO]]]...
            [--cdrom MEDIA] [--nic [vlan=N]]... [--tag T]... [--description TEXT]
            [--kernel PATH [--initrd PATH] [--cmdline TEXT]] [--start]
                                 each disk becomes the VSD NAME-DISK (RF 2 or 3 copies,
                                 flash priority PRIO 0..11; defaults 2 and 4); --kernel:
                                 direct kernel boot from files on the node running it
  vm list [--tag T]...           VMs carrying every given tag
  vm info NAME
  vm start NAME [--wait [--timeout S]]
  vm stop NAME [--wait [--timeout S]]       ACPI shutdown (forced off after the node's timeout)
  vm force-off NAME [--wait [--timeout S]]  pull the plug
  vm delete NAME                 a stopped VM, with its disks and snapshots
  vm cdrom NAME MEDIA|--eject    change a stopped VM's CD-ROM
VM snapshots, clones:
  vm snapshot NAME SNAP          one consistent point over all the VM's disks + its config
  vm snapshots NAME
  vm snapshot-delete NAME SNAP
  vm clone SRC NEW [--snapshot SNAP]        thin clones of the disks, as they are now or at SNAP
  vm revert NAME SNAP            a stopped VM: disks and configuration back to SNAP
Cluster:
  node list
  conditions                     N-1 (could every node's VMs restart elsewhere?) and VM conditions
Media (ISO images):
  media add NAME PATH            copy the file PATH (on the node answering) into the VSD iso-NAME
  media list
  media delete NAME
  help                           this text

Options (anywhere on the line):
  --addr HOST:PORT   the hypercored to talk to
  --json             print one JSON document on stdout instead of tables
Exit status: 0 success, 1 failure (message on stderr), 2 usage error.
)";

constexpr const char* kGroups[] = {"vm", "node", "media"};
constexpr scribe::cli::Tool kTool = {
    .name = "hc3",
    .daemon = "hypercored",
    .usage = kUsage,
    .default_address = kDefaultAddress,
    .default_port = kDefaultPort,
    .groups = kGroups,
    .switches = {},
};

struct Options {
  std::string address;
  bool json = false;
};

// ------------------------------------------------------------------ arguments

double SecondsArg(const std::string& what, const std::string& text) {
  double v = 0;
  if (!absl::SimpleAtod(text, &v) || !(v > 0) || v > 86400) {
    throw UsageError{absl::StrFormat("%s wants a number of seconds (0 < S <= 86400), not '%s'", what, text)};
  }
  return v;
}

// ------------------------------------------------------------------- encoding

std::string Tags(capnp::List<capnp::Text>::Reader tags) {
  std::vector<std::string> out;
  for (auto t : tags) out.push_back(Str(t));
  return absl::StrJoin(out, ",");
}

std::string TimeText(uint64_t unix_ms) {
  const time_t t = static_cast<time_t>(unix_ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

void JsonSpec(JsonWriter& j, api::VmSpec::Reader s) {
  j.BeginObject()
      .Field("name", Str(s.getName()))
      .Field("description", Str(s.getDescription()))
      .Key("tags")
      .BeginArray();
  for (auto t : s.getTags()) j.String(Str(t));
  j.EndArray()
      .Field("vcpus", uint64_t{s.getVcpus()})
      .Field("ram_bytes", s.getRamBytes())
      .Key("disks")
      .BeginArray();
  for (auto d : s.getDisks()) {
    j.BeginObject()
        .Field("name", Str(d.getName()))
        .Field("size_bytes", d.getSizeBytes())
        .Field("replication", uint64_t{d.getReplication()})
        .Field("flash_priority", uint64_t{d.getFlashPriority()})
        .Field("vsd", Str(d.getVsd()))
        .EndObject();
  }
  j.EndArray().Key("cdrom");
  if (s.getCdrom().size() > 0) {
    j.String(Str(s.getCdrom()));
  } else {
    j.Null();
  }
  j.Key("nics").BeginArray();
  for (auto n : s.getNics()) {
    j.BeginObject().Field("model", Str(n.getModel())).Key("vlan");
    if (n.getVlan() != 0) {
      j.Uint(n.getVlan());
    } else {
      j.Null();
    }
    j.Field("mac", Str(n.getMac())).EndObject();
  }
  j.EndArray().Key("boot");
  if (s.hasBoot()) {
    auto b = s.getBoot();
    j.BeginObject()
        .Field("kernel_path", Str(b.getKernelPath()))
        .Field("initrd_path", Str(b.getInitrdPath()))
        .Field("cmdline", Str(b.getCmdline()))
        .EndObject();
  } else {
    j.Null();
  }
  j.EndObject();
}

void JsonVm(JsonWriter& j, api::VmInfo::Reader v) {
  j.BeginObject()
      .Field("name", Str(v.getSpec().getName()))
      .Field("uuid", Str(v.getUuid()))
      .Field("status", Str(v.getStatus()))
      .Field("desired", Str(v.getDesired()))
      .Field("node", Str(v.getNode()))
      .Field("epoch", v.getEpoch())
      .Field("condition", Str(v.getCondition()))
      .Key("spec");
  JsonSpec(j, v.getSpec());
  j.EndObject();
}

void JsonSnapshot(JsonWriter& j, api::VmSnapshotInfo::Reader s) {
  j.BeginObject()
      .Field("vm", Str(s.getVm()))
      .Field("name", Str(s.getName()))
      .Field("created_unix_ms", s.getCreatedUnixMs())
      .Key("disks")
      .BeginArray();
  for (auto d : s.getDisks()) {
    j.BeginObject()
        .Field("disk", Str(d.getDisk()))
        .Field("vsd", Str(d.getVsd()))
        .Field("snapshot_id", d.getSnapshotId())
        .EndObject();
  }
  j.EndArray().Key("spec");
  JsonSpec(j, s.getSpec());
  j.EndObject();
}

void JsonMedia(JsonWriter& j, api::MediaInfo::Reader m) {
  j.BeginObject()
      .Field("name", Str(m.getName()))
      .Field("vsd", Str(m.getVsd()))
      .Field("size_bytes", m.getSizeBytes())
      .Field("state", Str(m.getState()))
      .Field("source", Str(m.getSource()))
      .Field("node", Str(m.getNode()))
      .Key("vms")
      .BeginArray();
  for (auto v : m.getVms()) j.String(Str(v));
  j.EndArray().EndObject();
}

std::string VmInfoText(api::VmInfo::Reader v) {
  auto s = v.getSpec();
  std::string out;
  auto line = [&](const char* key, const std::string& value) { out += absl::StrFormat("%-12s %s\n", key, value); };
  line("name:", Str(s.getName()));
  line("status:", Str(v.getStatus()) + (v.getCondition().size() > 0 ? " (" + Str(v.getCondition()) + ")" : ""));
  line("desired:", Str(v.getDesired()));
  line("node:", v.getNode().size() > 0 ? Str(v.getNode()) : "-");
  line("epoch:", Num(v.getEpoch()));
  line("uuid:", Str(v.getUuid()));
  line("vcpus:", Num(s.getVcpus()));
  line("ram:", HumanBytes(s.getRamBytes()));
  line("tags:", s.getTags().size() > 0 ? Tags(s.getTags()) : "-");
  line("cdrom:", s.getCdrom().size() > 0 ? Str(s.getCdrom()) : "-");
  line("description:", Str(s.getDescription()));
  if (s.hasBoot()) {
    auto b = s.getBoot();
    line("kernel:", Str(b.getKernelPath()));
    line("initrd:", b.getInitrdPath().size() > 0 ? Str(b.getInitrdPath()) : "-");
    line("cmdline:", Str(b.getCmdline()));
  }
  out += "\n";
  Table disks({"DISK", "SIZE", "COPIES", "FLASH PRIORITY", "VSD"});
  for (auto d : s.getDisks()) {
    disks.AddRow({Str(d.getName()), HumanBytes(d.getSizeBytes()), Num(d.getReplication()), Num(d.getFlashPriority()),
                  Str(d.getVsd())});
  }
  out += disks.Render();
  if (s.getNics().size() > 0) {
    out += "\n";
    Table nics({"NIC", "MODEL", "VLAN", "MAC"});
    unsigned i = 0;
    for (auto n : s.getNics()) {
      nics.AddRow({Num(i++), Str(n.getModel()), n.getVlan() != 0 ? Num(n.getVlan()) : "-", Str(n.getMac())});
    }
    out += nics.Render();
  }
  return out;
}

// ------------------------------------------------------------------ commands

class Cli {
 public:
  explicit Cli(Options options) : options_(std::move(options)) {}
  int Run(const std::vector<std::string>& words);

 private:
  Connection& conn() {
    if (!connection_) connection_ = std::make_unique<Connection>(kTool, options_.address);
    return *connection_;
  }
  api::HypercoreAdmin::Client admin() { return conn().Main<api::HypercoreAdmin>(); }
  void PrintVm(api::VmInfo::Reader v, const std::string& what) {
    if (options_.json) {
      JsonWriter j;
      JsonVm(j, v);
      return PrintJson(j);
    }
    Print(absl::StrFormat("%s vm %s: %s%s\n", what, Str(v.getSpec().getName()), Str(v.getStatus()),
                          v.getNode().size() > 0 ? " on " + Str(v.getNode()) : ""));
  }
  void Done(const std::string& message) {
    if (options_.json) {
      JsonWriter j;
      j.BeginObject().Field("ok", true).Field("message", message).EndObject();
      return PrintJson(j);
    }
    Print(message + "\n");
  }
  // Polls the VM until its status is `status` (or the timeout passes: exit 1).
  void WaitFor(const std::string& name, const std::string& status, double timeout_s);

  void VmCreate(const Args& a);
  void VmList(const Args& a);
  void VmInfo(const Args& a);
  void VmStart(const Args& a);
  void VmStop(const Args& a);
  void VmForceOff(const Args& a);
  void VmDelete(const Args& a);
  void VmCdrom(const Args& a);
  void VmSnapshot(const Args& a);
  void VmSnapshots(const Args& a);
  void VmSnapshotDelete(const Args& a);
  void VmClone(const Args& a);
  void VmRevert(const Args& a);
  void NodeList(const Args& a);
  void Conditions(const Args& a);
  void MediaAdd(const Args& a);
  void MediaList(const Args& a);
  void MediaDelete(const Args& a);

  Options options_;
  std::unique_ptr<Connection> connection_;
};

void Cli::VmCreate(const Args& a) {
  a.ExpectCount(1, 1, "NAME and options");
  auto req = admin().createVmRequest();
  auto spec = req.initSpec();
  spec.setName(Text(a.at(0)));
  std::optional<std::string> ram = a.Flag("--ram");
  if (!ram) throw UsageError{"--ram SIZE is required (e.g. --ram 512M)"};
  spec.setRamBytes(SizeArg("--ram", *ram));
  spec.setVcpus(static_cast<uint16_t>(UintArg("--vcpus", a.Flag("--vcpus").value_or("1"), 1024)));
  if (auto d = a.Flag("--description")) spec.setDescription(Text(*d));
  if (auto c = a.Flag("--cdrom")) spec.setCdrom(Text(*c));
  std::optional<std::string> kernel = a.Flag("--kernel");
  if (!kernel && (a.Flag("--initrd") || a.Flag("--cmdline"))) {
    throw UsageError{"--initrd and --cmdline need --kernel PATH (direct kernel boot)"};
  }
  if (kernel) {
    auto boot = spec.initBoot();
    boot.setKernelPath(Text(*kernel));
    boot.setInitrdPath(Text(a.Flag("--initrd").value_or("")));
    boot.setCmdline(Text(a.Flag("--cmdline").value_or("")));
  }
  const std::vector<std::string> tags = a.All("--tag");
  auto tag_list = spec.initTags(static_cast<unsigned>(tags.size()));
  for (size_t i = 0; i < tags.size(); ++i) tag_list.set(static_cast<unsigned>(i), Text(tags[i]));
  const std::vector<std::string> disks = a.All("--disk");
  auto disk_list = spec.initDisks(static_cast<unsigned>(disks.size()));
  for (size_t i = 0; i < disks.size(); ++i) {
    std::vector<std::string> parts = absl::StrSplit(disks[i], ':');
    if (parts.size() < 2 || parts.size() > 4 || parts[0].empty()) {
      throw UsageError{absl::StrFormat("--disk '%s' is not NAME:SIZE[:RF[:PRIO]]", disks[i])};
    }
    auto d = disk_list[static_cast<unsigned>(i)];
    d.setName(Text(parts[0]));
    d.setSizeBytes(SizeArg("disk size", parts[1]));
    d.setReplication(static_cast<uint8_t>(parts.size() > 2 ? UintArg("disk copies (RF)", parts[2], 255) : 2));
    d.setFlashPriority(static_cast<uint8_t>(parts.size() > 3 ? UintArg("disk flash priority", parts[3], 255) : 4));
  }
  const std::vector<std::string> nics = a.All("--nic");
  auto nic_list = spec.initNics(static_cast<unsigned>(nics.size()));
  for (size_t i = 0; i < nics.size(); ++i) {
    auto n = nic_list[static_cast<unsigned>(i)];
    n.setModel("virtio");
    if (nics[i].empty()) continue;
    for (absl::string_view kv : absl::StrSplit(nics[i], ',')) {
      std::vector<std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      if (p.size() == 2 && p[0] == "vlan") {
        n.setVlan(static_cast<uint16_t>(UintArg("--nic vlan", p[1], 65535)));
      } else if (p.size() == 2 && p[0] == "mac") {
        n.setMac(Text(p[1]));
      } else {
        throw UsageError{absl::StrFormat("--nic takes vlan=N and mac=MAC, not '%s'", std::string(kv))};
      }
    }
  }
  req.setStart(a.Has("--start"));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  PrintVm(reply.getVm(), "created");
}

void Cli::VmList(const Args& a) {
  a.ExpectCount(0, 0, "no arguments besides --tag");
  auto req = admin().listVmsRequest();
  const std::vector<std::string> tags = a.All("--tag");
  auto list = req.initTags(static_cast<unsigned>(tags.size()));
  for (size_t i = 0; i < tags.size(); ++i) list.set(static_cast<unsigned>(i), Text(tags[i]));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Key("vms").BeginArray();
    for (auto v : reply.getVms()) JsonVm(j, v);
    j.EndArray().EndObject();
    return PrintJson(j);
  }
  Table t({"NAME", "STATUS", "NODE", "VCPUS", "RAM", "DISKS", "TAGS", "CONDITION"});
  for (auto v : reply.getVms()) {
    auto s = v.getSpec();
    uint64_t disk_bytes = 0;
    for (auto d : s.getDisks()) disk_bytes += d.getSizeBytes();
    t.AddRow({Str(s.getName()), Str(v.getStatus()), v.getNode().size() > 0 ? Str(v.getNode()) : "-",
              Num(s.getVcpus()), HumanBytes(s.getRamBytes()),
              absl::StrFormat("%d (%s)", s.getDisks().size(), HumanBytes(disk_bytes)),
              s.getTags().size() > 0 ? Tags(s.getTags()) : "-", Str(v.getCondition())});
  }
  Print(t.Render());
}

void Cli::VmInfo(const Args& a) {
  a.ExpectCount(1, 1, "NAME");
  auto req = admin().getVmRequest();
  req.setName(Text(a.at(0)));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    JsonVm(j, reply.getVm());
    return PrintJson(j);
  }
  Print(VmInfoText(reply.getVm()));
}

void Cli::WaitFor(const std::string& name, const std::string& status, double timeout_s) {
  const auto start = std::chrono::steady_clock::now();
  std::string last;
  for (;;) {
    auto req = admin().getVmRequest();
    req.setName(Text(name));
    auto reply = conn().Wait(req.send());
    Check(reply.getError());
    last = Str(reply.getVm().getStatus());
    if (reply.getVm().getCondition().size() > 0) last += " (" + Str(reply.getVm().getCondition()) + ")";
    if (Str(reply.getVm().getStatus()) == status) return;
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout_s) {
      throw CommandError{absl::StrFormat("vm %s is not %s after %g s: %s", name, status, timeout_s, last)};
    }
    conn().Sleep(kWaitPollMs);
  }
}

void Cli::VmStart(const Args& a) {
  a.ExpectCount(1, 1, "NAME");
  auto req = admin().startVmRequest();
  req.setName(Text(a.at(0)));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (a.Has("--wait")) {
    WaitFor(a.at(0), "running", a.Flag("--timeout") ? SecondsArg("--timeout", *a.Flag("--timeout")) : kWaitDefaultSeconds);
    auto get = admin().getVmRequest();
    get.setName(Text(a.at(0)));
    auto now = conn().Wait(get.send());
    Check(now.getError());
    return PrintVm(now.getVm(), "started");
  }
  PrintVm(reply.getVm(), "started");
}

void Cli::VmStop(const Args& a) {
  a.ExpectCount(1, 1, "NAME");
  auto req = admin().stopVmRequest();
  req.setName(Text(a.at(0)));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (a.Has("--wait")) {
    WaitFor(a.at(0), "stopped", a.Flag("--timeout") ? SecondsArg("--timeout", *a.Flag("--timeout")) : kWaitDefaultSeconds);
    return Done(absl::StrFormat("stopped vm %s", a.at(0)));
  }
  PrintVm(reply.getVm(), "stopping");
}

void Cli::VmForceOff(const Args& a) {
  a.ExpectCount(1, 1, "NAME");
  auto req = admin().forceOffVmRequest();
  req.setName(Text(a.at(0)));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (a.Has("--wait")) {
    WaitFor(a.at(0), "stopped", a.Flag("--timeout") ? SecondsArg("--timeout", *a.Flag("--timeout")) : kWaitDefaultSeconds);
    return Done(absl::StrFormat("forced off vm %s", a.at(0)));
  }
  PrintVm(reply.getVm(), "forcing off");
}

void Cli::VmDelete(const Args& a) {
  a.ExpectCount(1, 1, "NAME");
  auto req = admin().deleteVmRequest();
  req.setName(Text(a.at(0)));
  Check(conn().Wait(req.send()).getError());
  Done(absl::StrFormat("deleted vm %s with its disks and snapshots", a.at(0)));
}

void Cli::VmCdrom(const Args& a) {
  const bool eject = a.Has("--eject");
  if (eject) {
    a.ExpectCount(1, 1, "NAME --eject");
  } else {
    a.ExpectCount(2, 2, "NAME MEDIA, or NAME --eject");
  }
  auto req = admin().setCdromRequest();
  req.setVm(Text(a.at(0)));
  req.setMedia(Text(eject ? std::string() : a.at(1)));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  PrintVm(reply.getVm(), eject ? "ejected the CD-ROM of" : "changed the CD-ROM of");
}

void Cli::VmSnapshot(const Args& a) {
  a.ExpectCount(2, 2, "NAME SNAP");
  auto req = admin().createVmSnapshotRequest();
  req.setVm(Text(a.at(0)));
  req.setName(Text(a.at(1)));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    JsonSnapshot(j, reply.getSnapshot());
    return PrintJson(j);
  }
  Print(absl::StrFormat("snapshot %s of vm %s: %d disk(s)\n", a.at(1), a.at(0), reply.getSnapshot().getDisks().size()));
}

void Cli::VmSnapshots(const Args& a) {
  a.ExpectCount(1, 1, "NAME");
  auto req = admin().listVmSnapshotsRequest();
  req.setVm(Text(a.at(0)));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Key("snapshots").BeginArray();
    for (auto s : reply.getSnapshots()) JsonSnapshot(j, s);
    j.EndArray().EndObject();
    return PrintJson(j);
  }
  Table t({"SNAPSHOT", "CREATED", "DISKS", "RAM", "VCPUS"});
  for (auto s : reply.getSnapshots()) {
    t.AddRow({Str(s.getName()), TimeText(s.getCreatedUnixMs()), Num(s.getDisks().size()),
              HumanBytes(s.getSpec().getRamBytes()), Num(s.getSpec().getVcpus())});
  }
  Print(t.Render());
}

void Cli::VmSnapshotDelete(const Args& a) {
  a.ExpectCount(2, 2, "NAME SNAP");
  auto req = admin().deleteVmSnapshotRequest();
  req.setVm(Text(a.at(0)));
  req.setName(Text(a.at(1)));
  Check(conn().Wait(req.send()).getError());
  Done(absl::StrFormat("deleted snapshot %s of vm %s", a.at(1), a.at(0)));
}

void Cli::VmClone(const Args& a) {
  a.ExpectCount(2, 2, "SRC NEW");
  auto req = admin().cloneVmRequest();
  req.setSource(Text(a.at(0)));
  req.setName(Text(a.at(1)));
  req.setSnapshot(Text(a.Flag("--snapshot").value_or("")));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  PrintVm(reply.getVm(), "cloned");
}

void Cli::VmRevert(const Args& a) {
  a.ExpectCount(2, 2, "NAME SNAP");
  auto req = admin().revertVmRequest();
  req.setVm(Text(a.at(0)));
  req.setSnapshot(Text(a.at(1)));
  auto reply = conn().Wait(req.send());
  Check(reply.getError());
  PrintVm(reply.getVm(), "reverted");
}

void Cli::NodeList(const Args& a) {
  a.ExpectCount(0, 0, "no arguments");
  auto reply = conn().Wait(admin().listNodesRequest().send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Key("nodes").BeginArray();
    for (auto n : reply.getNodes()) {
      j.BeginObject()
          .Field("name", Str(n.getName()))
          .Field("alive", n.getAlive())
          .Field("maintenance", n.getMaintenance())
          .Field("ram_bytes", n.getRamBytes())
          .Field("ram_used_bytes", n.getRamUsedBytes())
          .Field("cpus", uint64_t{n.getCpus()})
          .Field("vcpus_used", uint64_t{n.getVcpusUsed()})
          .Field("vms", uint64_t{n.getVms()})
          .Field("admin_address", Str(n.getAdminAddress()))
          .EndObject();
    }
    j.EndArray().EndObject();
    return PrintJson(j);
  }
  Table t({"NODE", "ALIVE", "RAM", "RAM USED", "CPUS", "VCPUS USED", "VMS", "MAINTENANCE", "ADDRESS"});
  for (auto n : reply.getNodes()) {
    t.AddRow({Str(n.getName()), YesNo(n.getAlive()), HumanBytes(n.getRamBytes()), HumanBytes(n.getRamUsedBytes()),
              Num(n.getCpus()), Num(n.getVcpusUsed()), Num(n.getVms()), YesNo(n.getMaintenance()),
              Str(n.getAdminAddress())});
  }
  Print(t.Render());
}

void Cli::Conditions(const Args& a) {
  a.ExpectCount(0, 0, "no arguments");
  auto reply = conn().Wait(admin().conditionsRequest().send());
  Check(reply.getError());
  auto c = reply.getConditions();
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Key("failover").BeginArray();
    for (auto f : c.getFailover()) {
      j.BeginObject().Field("node", Str(f.getNode())).Field("message", Str(f.getMessage())).Key("vms").BeginArray();
      for (auto v : f.getVms()) j.String(Str(v));
      j.EndArray().EndObject();
    }
    j.EndArray().Key("vms").BeginArray();
    for (auto v : c.getVms()) j.String(Str(v));
    j.EndArray().EndObject();
    return PrintJson(j);
  }
  if (c.getFailover().size() == 0 && c.getVms().size() == 0) {
    return Print("no conditions: every node's VMs could restart elsewhere\n");
  }
  std::string out;
  for (auto f : c.getFailover()) out += absl::StrFormat("N-1: %s\n", Str(f.getMessage()));
  for (auto v : c.getVms()) out += absl::StrFormat("vm %s\n", Str(v));
  Print(out);
}

void Cli::MediaAdd(const Args& a) {
  a.ExpectCount(2, 2, "NAME PATH");
  std::string path = a.at(1);
  if (!path.empty() && path[0] != '/') {
    // Relative to where hc3 runs (the usual case: on the node itself).
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof(cwd)) != nullptr) path = std::string(cwd) + "/" + path;
  }
  auto req = admin().addMediaRequest();
  req.setName(Text(a.at(0)));
  req.setPath(Text(path));
  auto reply = conn().Wait(req.send(), kMediaAddTimeoutSeconds);
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    JsonMedia(j, reply.getMedia());
    return PrintJson(j);
  }
  Print(absl::StrFormat("added medium %s (%s) as VSD %s\n", a.at(0), HumanBytes(reply.getMedia().getSizeBytes()),
                        Str(reply.getMedia().getVsd())));
}

void Cli::MediaList(const Args& a) {
  a.ExpectCount(0, 0, "no arguments");
  auto reply = conn().Wait(admin().listMediaRequest().send());
  Check(reply.getError());
  if (options_.json) {
    JsonWriter j;
    j.BeginObject().Key("media").BeginArray();
    for (auto m : reply.getMedia()) JsonMedia(j, m);
    j.EndArray().EndObject();
    return PrintJson(j);
  }
  Table t({"MEDIUM", "STATE", "SIZE", "VSD", "NODE", "SOURCE", "USED BY"});
  for (auto m : reply.getMedia()) {
    std::vector<std::string> vms;
    for (auto v : m.getVms()) vms.push_back(Str(v));
    t.AddRow({Str(m.getName()), Str(m.getState()), HumanBytes(m.getSizeBytes()), Str(m.getVsd()), Str(m.getNode()),
              Str(m.getSource()), vms.empty() ? "-" : absl::StrJoin(vms, ",")});
  }
  Print(t.Render());
}

void Cli::MediaDelete(const Args& a) {
  a.ExpectCount(1, 1, "NAME");
  auto req = admin().deleteMediaRequest();
  req.setName(Text(a.at(0)));
  Check(conn().Wait(req.send()).getError());
  Done(absl::StrFormat("deleted medium %s", a.at(0)));
}

int Cli::Run(const std::vector<std::string>& words) {
  const FlagSpec wait{{"--timeout"}, {}, {"--wait"}, {}};
  const std::vector<Command<Cli>> commands = {
      {"vm create",
       {{"--ram", "--vcpus", "--cdrom", "--description", "--kernel", "--initrd", "--cmdline"}, {"--disk", "--tag"}, {"--start"}, {"--nic"}},
       &Cli::VmCreate},
      {"vm list", {{}, {"--tag"}, {}, {}}, &Cli::VmList},
      {"vm info", {}, &Cli::VmInfo},
      {"vm start", wait, &Cli::VmStart},
      {"vm stop", wait, &Cli::VmStop},
      {"vm force-off", wait, &Cli::VmForceOff},
      {"vm delete", {}, &Cli::VmDelete},
      {"vm cdrom", {{}, {}, {"--eject"}, {}}, &Cli::VmCdrom},
      {"vm snapshot", {}, &Cli::VmSnapshot},
      {"vm snapshots", {}, &Cli::VmSnapshots},
      {"vm snapshot-delete", {}, &Cli::VmSnapshotDelete},
      {"vm clone", {{"--snapshot"}, {}, {}, {}}, &Cli::VmClone},
      {"vm revert", {}, &Cli::VmRevert},
      {"node list", {}, &Cli::NodeList},
      {"conditions", {}, &Cli::Conditions},
      {"media add", {}, &Cli::MediaAdd},
      {"media list", {}, &Cli::MediaList},
      {"media delete", {}, &Cli::MediaDelete},
  };
  return scribe::cli::RunCommand(kTool, *this, commands, words, FlagPrefix::kDoubleDash);
}

int Main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  const CommandLine line =
      scribe::cli::ParseCommandLine(kTool, std::vector<std::string>(argv + 1, argv + argc), std::getenv("HC3_ADDR"));
  return scribe::cli::RunReportingErrors(kTool, line, [&] {
    Cli cli(Options{.address = line.address, .json = line.json});
    return cli.Run(line.words);
  });
}

}  // namespace
}  // namespace hc3::cli

int main(int argc, char** argv) { return hc3::cli::Main(argc, argv); }
