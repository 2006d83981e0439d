// HypercoreAdmin: each method decodes its parameters into plain values, validates them
// (naming the field in every refusal), then runs a chain of asynchronous steps — HA
// manager calls and MetaStore calls (callbacks turned into KJ promises) and ScribeAdmin
// calls — and encodes the result. A step that fails ends the chain with its status;
// steps that made something (a VSD, a SCRIBE snapshot) are undone first.
//
// Lifetimes: the chains capture `this` and values only; the capnp server outlives the
// calls it runs, and every dependency outlives the server (the daemon destroys the
// listener first).
#include "daemons/hypercored/service.h"

#include <fcntl.h>
#include <cerrno>
#include <cstring>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "daemons/hypercored/records.h"

namespace hypercore::daemon {

std::string VsdName(const std::string& vm, const std::string& disk) { return absl::StrCat(vm, "-", disk); }
std::string MediaVsdName(const std::string& media) { return absl::StrCat("iso-", media); }
std::string EpochExportName(const std::string& vsd, uint64_t epoch) { return absl::StrCat(vsd, "@", epoch); }

NbdLaunchOptions LaunchOptions(const std::string& nbd_socket) {
  NbdLaunchOptions o;
  o.socket_path = nbd_socket;
  o.disk_export_name = [](const std::string& vm, const std::string& disk, uint64_t epoch) {
    return EpochExportName(VsdName(vm, disk), epoch);
  };
  o.iso_export_name = [](const std::string& iso) { return MediaVsdName(iso); };
  return o;
}

namespace {

constexpr uint64_t kScribeBlockBytes = 4096;
constexpr uint64_t kMiB = 1ull << 20;
constexpr size_t kNameLengthMax = 63;
constexpr size_t kPathLengthMax = 4095;

// ------------------------------------------------------------------ promises

// The fulfiller shared by the copies of a callback; if every copy is destroyed without
// having been called (the manager or store went away), the caller gets UNAVAILABLE.
template <typename T>
struct Completion {
  explicit Completion(kj::Own<kj::PromiseFulfiller<T>> f) : fulfiller(kj::mv(f)) {}
  ~Completion() {
    if (fulfiller->isWaiting()) {
      fulfiller->fulfill(T(absl::UnavailableError("the operation was dropped before it completed")));
    }
  }
  kj::Own<kj::PromiseFulfiller<T>> fulfiller;
};

// Calls `start` with a callback and returns a promise for what the callback gets.
template <typename T>
kj::Promise<T> FromCallback(const std::function<void(std::function<void(T)>)>& start) {
  auto paf = kj::newPromiseAndFulfiller<T>();
  auto completion = std::make_shared<Completion<T>>(kj::mv(paf.fulfiller));
  start([completion](T value) { completion->fulfiller->fulfill(kj::mv(value)); });
  return kj::mv(paf.promise);
}

template <typename T>
using OrPromise = kj::Promise<absl::StatusOr<T>>;
using StatusPromise = kj::Promise<absl::Status>;

// Runs step(0), step(1), ... step(n-1) one after the other, stopping at the first
// failure; `*completed` counts the steps that succeeded.
StatusPromise Sequence(size_t n, std::function<StatusPromise(size_t)> step,
                       std::shared_ptr<size_t> completed) {
  if (*completed >= n) return absl::OkStatus();
  return step(*completed).then([n, step, completed](absl::Status st) -> StatusPromise {
    if (!st.ok()) return st;
    ++*completed;
    return Sequence(n, step, completed);
  });
}

absl::Status WithContext(const absl::Status& st, const std::string& context) {
  if (st.ok()) return st;
  return absl::Status(st.code(), absl::StrCat(context, ": ", st.message()));
}

// ------------------------------------------------------------------ encoding

capnp::Text::Reader T(const std::string& s) { return capnp::Text::Reader(s.c_str(), s.size()); }
std::string Str(capnp::Text::Reader t) { return std::string(t.begin(), t.size()); }

void EncodeError(const absl::Status& status, api::Error::Builder out) {
  out.setCode(static_cast<uint16_t>(status.code()));
  const std::string message(status.message());
  out.setMessage(T(message));
}

void EncodeSpec(const VmSpec& spec, api::VmSpec::Builder out) {
  out.setName(T(spec.name));
  out.setDescription(T(spec.description));
  auto tags = out.initTags(static_cast<unsigned>(spec.tags.size()));
  for (size_t i = 0; i < spec.tags.size(); ++i) tags.set(static_cast<unsigned>(i), T(spec.tags[i]));
  out.setVcpus(static_cast<uint16_t>(spec.vcpus));
  out.setRamBytes(spec.ram_bytes);
  auto disks = out.initDisks(static_cast<unsigned>(spec.disks.size()));
  for (size_t i = 0; i < spec.disks.size(); ++i) {
    const VmDisk& d = spec.disks[i];
    auto o = disks[static_cast<unsigned>(i)];
    o.setName(T(d.name));
    o.setSizeBytes(d.size_bytes);
    o.setReplication(static_cast<uint8_t>(d.replication));
    o.setFlashPriority(static_cast<uint8_t>(d.flash_priority));
    const std::string vsd = VsdName(spec.name, d.name);
    o.setVsd(T(vsd));
  }
  if (spec.cdrom_iso) out.setCdrom(T(*spec.cdrom_iso));
  auto nics = out.initNics(static_cast<unsigned>(spec.nics.size()));
  for (size_t i = 0; i < spec.nics.size(); ++i) {
    const VmNic& n = spec.nics[i];
    auto o = nics[static_cast<unsigned>(i)];
    o.setModel(T(n.model));
    o.setVlan(static_cast<uint16_t>(n.vlan.value_or(0)));
    if (n.mac) o.setMac(T(*n.mac));
  }
  if (spec.boot) {
    auto b = out.initBoot();
    b.setKernelPath(T(spec.boot->kernel_path));
    b.setInitrdPath(T(spec.boot->initrd_path));
    b.setCmdline(T(spec.boot->cmdline));
  }
}

// A VM and how it is doing, as the API reports it.
struct VmView {
  VmInfo info;
  std::string status;
};

void EncodeVm(const VmView& v, api::VmInfo::Builder out) {
  EncodeSpec(v.info.spec, out.initSpec());
  out.setUuid(T(v.info.uuid));
  const std::string desired = DesiredStateName(v.info.desired);
  out.setDesired(T(desired));
  out.setStatus(T(v.status));
  out.setNode(T(v.info.owner));
  out.setEpoch(v.info.epoch);
  out.setCondition(T(v.info.condition));
}

void EncodeVmSnapshot(const VmSnapshotRecord& r, api::VmSnapshotInfo::Builder out) {
  out.setVm(T(r.vm));
  out.setName(T(r.name));
  out.setCreatedUnixMs(r.created_unix_ms);
  EncodeSpec(r.spec, out.initSpec());
  auto disks = out.initDisks(static_cast<unsigned>(r.disks.size()));
  for (size_t i = 0; i < r.disks.size(); ++i) {
    auto o = disks[static_cast<unsigned>(i)];
    o.setDisk(T(r.disks[i].disk));
    o.setVsd(T(r.disks[i].vsd));
    o.setSnapshotId(r.disks[i].snapshot_id);
  }
}

void EncodeMedia(const MediaRecord& r, const std::vector<std::string>& vms, api::MediaInfo::Builder out) {
  out.setName(T(r.name));
  out.setVsd(T(r.vsd));
  out.setSizeBytes(r.size_bytes);
  const std::string state = MediaStateName(r.state);
  out.setState(T(state));
  out.setSource(T(r.source));
  out.setNode(T(r.node));
  auto list = out.initVms(static_cast<unsigned>(vms.size()));
  for (size_t i = 0; i < vms.size(); ++i) list.set(static_cast<unsigned>(i), T(vms[i]));
}

// ------------------------------------------------------------------ validation

bool IsNameChar(char c) { return absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-'; }

// A name of a VM snapshot or medium: the VM name rules.
absl::Status CheckName(const std::string& field, const std::string& name) {
  if (name.empty() || name.size() > kNameLengthMax || !std::all_of(name.begin(), name.end(), IsNameChar)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s \"%s\" must be 1..%d characters of [A-Za-z0-9._-]", field, absl::CEscape(name.substr(0, 80)),
        kNameLengthMax));
  }
  return absl::OkStatus();
}

absl::StatusOr<VmSpec> DecodeSpec(api::VmSpec::Reader in, const ServiceOptions& o) {
  VmSpec spec;
  spec.name = Str(in.getName());
  spec.description = Str(in.getDescription());
  if (in.getTags().size() > o.tags_max) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tags: %d tags, more than the limit of %d", in.getTags().size(), o.tags_max));
  }
  for (auto t : in.getTags()) {
    if (t.size() > o.tag_length_max) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tags: a tag of %d bytes, more than the limit of %d", t.size(), o.tag_length_max));
    }
    spec.tags.push_back(Str(t));
  }
  spec.vcpus = in.getVcpus();
  spec.ram_bytes = in.getRamBytes();
  if (in.getDisks().size() > o.vm_disks_max) {
    return absl::InvalidArgumentError(absl::StrFormat("disks: %d disks, more than the limit of %d",
                                                      in.getDisks().size(), o.vm_disks_max));
  }
  for (auto d : in.getDisks()) {
    VmDisk disk;
    disk.name = Str(d.getName());
    disk.size_bytes = d.getSizeBytes();
    disk.replication = d.getReplication() == 0 ? 2 : d.getReplication();
    disk.flash_priority = d.getFlashPriority();
    spec.disks.push_back(std::move(disk));
  }
  if (in.getNics().size() > o.vm_nics_max) {
    return absl::InvalidArgumentError(
        absl::StrFormat("nics: %d NICs, more than the limit of %d", in.getNics().size(), o.vm_nics_max));
  }
  for (auto n : in.getNics()) {
    VmNic nic;
    if (n.getModel().size() > 0) nic.model = Str(n.getModel());
    if (n.getVlan() != 0) nic.vlan = n.getVlan();
    if (n.getMac().size() > 0) nic.mac = Str(n.getMac());
    spec.nics.push_back(std::move(nic));
  }
  if (in.getCdrom().size() > 0) spec.cdrom_iso = Str(in.getCdrom());
  if (in.hasBoot()) {
    auto b = in.getBoot();
    spec.boot = VmBoot{Str(b.getKernelPath()), Str(b.getInitrdPath()), Str(b.getCmdline())};
  }
  return spec;
}

// What hypercored adds to ValidateVmSpec: SCRIBE's block size, media names.
absl::Status CheckSpec(const VmSpec& spec) {
  absl::Status st = ValidateVmSpec(spec);
  if (!st.ok()) return st;
  for (size_t i = 0; i < spec.disks.size(); ++i) {
    if (spec.disks[i].size_bytes % kScribeBlockBytes != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "disks[%d].size_bytes %d is not a multiple of %d (a SCRIBE block)", i, spec.disks[i].size_bytes,
          kScribeBlockBytes));
    }
  }
  if (spec.boot) {
    // The files must be on every node the VM may run on; this node is the one we can see.
    auto readable = [](const char* field, const std::string& path) -> absl::Status {
      struct stat st;
      if (stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), R_OK) == 0) {
        return absl::OkStatus();
      }
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: %s is not a readable file on this node (it must exist on every node the VM may run on)",
          field, path));
    };
    absl::Status st = readable("boot.kernel_path", spec.boot->kernel_path);
    if (st.ok() && !spec.boot->initrd_path.empty()) st = readable("boot.initrd_path", spec.boot->initrd_path);
    if (!st.ok()) return st;
  }
  if (spec.cdrom_iso) return CheckName("cdrom", *spec.cdrom_iso);
  return absl::OkStatus();
}

std::vector<std::string> DiskVsds(const VmSpec& spec) {
  std::vector<std::string> vsds;
  for (const VmDisk& d : spec.disks) vsds.push_back(VsdName(spec.name, d.name));
  return vsds;
}

// ------------------------------------------------------------------ the service

class HypercoreService final : public api::HypercoreAdmin::Server {
 public:
  HypercoreService(ServiceDeps deps, ServiceOptions options)
      : loop_(deps.loop),
        ha_(deps.ha),
        store_(deps.store),
        hv_(deps.hypervisor),
        scribe_(deps.scribe),
        writer_(deps.media_writer),
        options_(std::move(options)) {}

  // ------------------------------------------------------------------ VMs
  kj::Promise<void> createVm(CreateVmContext context) override {
    auto p = context.getParams();
    absl::StatusOr<VmSpec> spec = DecodeSpec(p.getSpec(), options_);
    const bool start = p.getStart();
    if (!spec.ok()) return Fail(context, spec.status(), "create vm");
    return Reply(context, CreateVm(*std::move(spec), start), [](const VmView& v, auto results) {
      EncodeVm(v, results.initVm());
    });
  }

  kj::Promise<void> listVms(ListVmsContext context) override {
    std::vector<std::string> tags;
    for (auto t : context.getParams().getTags()) tags.push_back(Str(t));
    auto views = ListVmViews().then([tags](absl::StatusOr<std::vector<VmView>> all)
                                        -> absl::StatusOr<std::vector<VmView>> {
      if (!all.ok()) return all.status();
      std::vector<VmView> out;
      for (VmView& v : *all) {
        if (MatchesTagFilter(v.info.spec, tags)) out.push_back(std::move(v));
      }
      return out;
    });
    return Reply(context, kj::mv(views), [](const std::vector<VmView>& vms, auto results) {
      auto out = results.initVms(static_cast<unsigned>(vms.size()));
      for (size_t i = 0; i < vms.size(); ++i) EncodeVm(vms[i], out[static_cast<unsigned>(i)]);
    });
  }

  kj::Promise<void> getVm(GetVmContext context) override {
    const std::string name = Str(context.getParams().getName());
    return Reply(context, GetView(name), [](const VmView& v, auto results) { EncodeVm(v, results.initVm()); });
  }

  kj::Promise<void> startVm(StartVmContext context) override {
    const std::string name = Str(context.getParams().getName());
    auto done = AwaitStatus([&](auto cb) { ha_->StartVm(name, cb); })
                    .then([this, name](absl::Status st) -> OrPromise<VmView> {
                      Log(st, absl::StrCat("start vm ", name));
                      if (!st.ok()) return absl::StatusOr<VmView>(st);
                      return GetView(name);
                    });
    return Reply(context, kj::mv(done), [](const VmView& v, auto results) { EncodeVm(v, results.initVm()); });
  }

  kj::Promise<void> stopVm(StopVmContext context) override {
    const std::string name = Str(context.getParams().getName());
    auto done = AwaitStatus([&](auto cb) { ha_->StopVm(name, cb); })
                    .then([this, name](absl::Status st) -> OrPromise<VmView> {
                      Log(st, absl::StrCat("stop vm ", name));
                      if (!st.ok()) return absl::StatusOr<VmView>(st);
                      return GetView(name);
                    });
    return Reply(context, kj::mv(done), [](const VmView& v, auto results) { EncodeVm(v, results.initVm()); });
  }

  kj::Promise<void> forceOffVm(ForceOffVmContext context) override {
    const std::string name = Str(context.getParams().getName());
    auto done = AwaitStatus([&](auto cb) { ha_->ForceOffVm(name, cb); })
                    .then([this, name](absl::Status st) -> OrPromise<VmView> {
                      Log(st, absl::StrCat("force off vm ", name));
                      if (!st.ok()) return absl::StatusOr<VmView>(st);
                      return GetView(name);
                    });
    return Reply(context, kj::mv(done), [](const VmView& v, auto results) { EncodeVm(v, results.initVm()); });
  }

  kj::Promise<void> deleteVm(DeleteVmContext context) override {
    const std::string name = Str(context.getParams().getName());
    return ReplyStatus(context, DeleteVm(name));
  }

  // ------------------------------------------------------------------ nodes, conditions
  kj::Promise<void> listNodes(ListNodesContext context) override {
    auto alive = Await<absl::StatusOr<std::vector<NodeInfo>>>([&](auto cb) { ha_->ListNodes(cb); });
    auto done = alive.then([this](absl::StatusOr<std::vector<NodeInfo>> nodes) {
      return List(kNodesPrefix).then([nodes = std::move(nodes)](absl::StatusOr<scribe::ListResult> regs) mutable
                                         -> absl::StatusOr<std::vector<std::pair<NodeInfo, std::string>>> {
        if (!nodes.ok()) return nodes.status();
        if (!regs.ok()) return regs.status();
        std::map<std::string, std::pair<NodeInfo, std::string>> merged;  // name -> (info, admin)
        std::set<std::string> alive_names;
        for (const NodeInfo& n : *nodes) {
          merged[n.name].first = n;
          alive_names.insert(n.name);
        }
        for (const scribe::KeyValue& kv : regs->kvs) {
          absl::StatusOr<NodeRegistration> r = DecodeNodeRegistration(kv.value);
          if (!r.ok()) continue;
          auto& entry = merged[r->node];
          entry.second = r->admin_address;
          if (!alive_names.contains(r->node)) {
            entry.first.name = r->node;
            entry.first.ram_bytes = r->ram_bytes;
            entry.first.cpus = r->cpus;
            entry.first.lease = 0;
          }
        }
        std::vector<std::pair<NodeInfo, std::string>> out;
        for (auto& [name, entry] : merged) out.push_back(std::move(entry));
        return out;
      });
    });
    return Reply(context, kj::mv(done), [](const std::vector<std::pair<NodeInfo, std::string>>& nodes, auto results) {
      auto out = results.initNodes(static_cast<unsigned>(nodes.size()));
      for (size_t i = 0; i < nodes.size(); ++i) {
        const NodeInfo& n = nodes[i].first;
        auto o = out[static_cast<unsigned>(i)];
        o.setName(T(n.name));
        o.setAlive(n.lease != 0);
        o.setMaintenance(n.maintenance);
        o.setRamBytes(n.ram_bytes);
        o.setRamUsedBytes(n.ram_used_bytes);
        o.setCpus(static_cast<uint32_t>(n.cpus));
        o.setVcpusUsed(static_cast<uint32_t>(n.vcpus_used));
        o.setVms(static_cast<uint32_t>(n.vms));
        o.setAdminAddress(T(nodes[i].second));
      }
    });
  }

  kj::Promise<void> conditions(ConditionsContext context) override {
    auto done = Await<absl::StatusOr<HaConditions>>([&](auto cb) { ha_->GetConditions(cb); });
    return Reply(context, kj::mv(done), [](const HaConditions& c, auto results) {
      auto out = results.initConditions();
      auto failover = out.initFailover(static_cast<unsigned>(c.failover.size()));
      for (size_t i = 0; i < c.failover.size(); ++i) {
        auto o = failover[static_cast<unsigned>(i)];
        o.setNode(T(c.failover[i].node));
        o.setMessage(T(c.failover[i].message));
        auto vms = o.initVms(static_cast<unsigned>(c.failover[i].vms.size()));
        for (size_t j = 0; j < c.failover[i].vms.size(); ++j) vms.set(static_cast<unsigned>(j), T(c.failover[i].vms[j]));
      }
      auto vms = out.initVms(static_cast<unsigned>(c.vms.size()));
      for (size_t i = 0; i < c.vms.size(); ++i) vms.set(static_cast<unsigned>(i), T(c.vms[i]));
    });
  }

  // ------------------------------------------------------------------ VM snapshots
  kj::Promise<void> createVmSnapshot(CreateVmSnapshotContext context) override {
    auto p = context.getParams();
    const std::string vm = Str(p.getVm());
    const std::string name = Str(p.getName());
    return Reply(context, CreateVmSnapshot(vm, name),
                 [](const VmSnapshotRecord& r, auto results) { EncodeVmSnapshot(r, results.initSnapshot()); });
  }

  kj::Promise<void> listVmSnapshots(ListVmSnapshotsContext context) override {
    const std::string vm = Str(context.getParams().getVm());
    auto done = GetVm(vm).then([this, vm](absl::StatusOr<VmInfo> info) -> OrPromise<std::vector<VmSnapshotRecord>> {
      if (!info.ok()) return absl::StatusOr<std::vector<VmSnapshotRecord>>(info.status());
      return ListSnapshotRecords(vm);
    });
    return Reply(context, kj::mv(done), [](const std::vector<VmSnapshotRecord>& list, auto results) {
      auto out = results.initSnapshots(static_cast<unsigned>(list.size()));
      for (size_t i = 0; i < list.size(); ++i) EncodeVmSnapshot(list[i], out[static_cast<unsigned>(i)]);
    });
  }

  kj::Promise<void> deleteVmSnapshot(DeleteVmSnapshotContext context) override {
    auto p = context.getParams();
    return ReplyStatus(context, DeleteVmSnapshot(Str(p.getVm()), Str(p.getName())));
  }

  kj::Promise<void> cloneVm(CloneVmContext context) override {
    auto p = context.getParams();
    return Reply(context, CloneVm(Str(p.getSource()), Str(p.getSnapshot()), Str(p.getName())),
                 [](const VmView& v, auto results) { EncodeVm(v, results.initVm()); });
  }

  kj::Promise<void> revertVm(RevertVmContext context) override {
    auto p = context.getParams();
    return Reply(context, RevertVm(Str(p.getVm()), Str(p.getSnapshot())),
                 [](const VmView& v, auto results) { EncodeVm(v, results.initVm()); });
  }

  // ------------------------------------------------------------------ media
  kj::Promise<void> addMedia(AddMediaContext context) override {
    auto p = context.getParams();
    return Reply(context, AddMedia(Str(p.getName()), Str(p.getPath())), [](const MediaRecord& r, auto results) {
      EncodeMedia(r, {}, results.initMedia());
    });
  }

  kj::Promise<void> listMedia(ListMediaContext context) override {
    auto done = ListMediaRecords().then([this](absl::StatusOr<std::vector<MediaRecord>> media) {
      return Await<absl::StatusOr<std::vector<VmInfo>>>([&](auto cb) { ha_->ListVms(cb); })
          .then([media = std::move(media)](absl::StatusOr<std::vector<VmInfo>> vms) mutable
                -> absl::StatusOr<std::vector<std::pair<MediaRecord, std::vector<std::string>>>> {
            if (!media.ok()) return media.status();
            if (!vms.ok()) return vms.status();
            std::vector<std::pair<MediaRecord, std::vector<std::string>>> out;
            for (MediaRecord& m : *media) {
              std::vector<std::string> users;
              for (const VmInfo& vm : *vms) {
                if (vm.spec.cdrom_iso == m.name) users.push_back(vm.spec.name);
              }
              out.emplace_back(std::move(m), std::move(users));
            }
            return out;
          });
    });
    return Reply(context, kj::mv(done),
                 [](const std::vector<std::pair<MediaRecord, std::vector<std::string>>>& list, auto results) {
                   auto out = results.initMedia(static_cast<unsigned>(list.size()));
                   for (size_t i = 0; i < list.size(); ++i) {
                     EncodeMedia(list[i].first, list[i].second, out[static_cast<unsigned>(i)]);
                   }
                 });
  }

  kj::Promise<void> deleteMedia(DeleteMediaContext context) override {
    return ReplyStatus(context, DeleteMedia(Str(context.getParams().getName())));
  }

  kj::Promise<void> setCdrom(SetCdromContext context) override {
    auto p = context.getParams();
    return Reply(context, SetCdrom(Str(p.getVm()), Str(p.getMedia())),
                 [](const VmView& v, auto results) { EncodeVm(v, results.initVm()); });
  }

 private:
  // ------------------------------------------------------------------ replies

  template <typename Context>
  kj::Promise<void> Fail(Context& context, const absl::Status& status, const std::string& what) {
    Log(status, what);
    EncodeError(status, context.getResults().initError());
    return kj::READY_NOW;
  }

  // Replies with `encode(value, results)` and an OK error, or with the error.
  template <typename Context, typename V, typename Encode>
  kj::Promise<void> Reply(Context& context, OrPromise<V> promise, Encode encode) {
    return promise.then([context, encode](absl::StatusOr<V> r) mutable {
      auto results = context.getResults();
      if (!r.ok()) return EncodeError(r.status(), results.initError());
      encode(*r, results);
      EncodeError(absl::OkStatus(), results.initError());
    });
  }

  template <typename Context>
  kj::Promise<void> ReplyStatus(Context& context, StatusPromise promise) {
    return promise.then([context](absl::Status st) mutable { EncodeError(st, context.getResults().initError()); });
  }

  void Log(const absl::Status& st, const std::string& what) {
    if (!options_.log) return;
    options_.log(st.ok() ? what : absl::StrCat(what, ": refused: ", st.ToString()));
  }

  // ------------------------------------------------------------------ adapters

  template <typename T>
  kj::Promise<T> Await(const std::function<void(std::function<void(T)>)>& start) {
    return FromCallback<T>(start);
  }
  StatusPromise AwaitStatus(const std::function<void(std::function<void(absl::Status)>)>& start) {
    return FromCallback<absl::Status>(start);
  }

  OrPromise<VmInfo> GetVm(const std::string& name) {
    return Await<absl::StatusOr<VmInfo>>([&](auto cb) { ha_->GetVm(name, cb); });
  }

  OrPromise<std::optional<scribe::KeyValue>> Get(const std::string& key) {
    return Await<absl::StatusOr<std::optional<scribe::KeyValue>>>([&](auto cb) { store_->Get(key, cb); });
  }
  OrPromise<scribe::ListResult> List(const std::string& prefix) {
    return Await<absl::StatusOr<scribe::ListResult>>([&](auto cb) { store_->List(prefix, cb); });
  }
  // Creates `key` if absent (ALREADY_EXISTS otherwise: `what` names it), or replaces it
  // at `revision`.
  StatusPromise Cas(const std::string& key, int64_t revision, const std::string& value, const std::string& what) {
    return Await<absl::StatusOr<scribe::CasResult>>(
               [&](auto cb) { store_->CompareAndSwap(key, revision, value, scribe::LeaseId{}, cb); })
        .then([what, revision](absl::StatusOr<scribe::CasResult> r) -> absl::Status {
          if (!r.ok()) return r.status();
          if (!r->succeeded) {
            return revision == 0 ? absl::AlreadyExistsError(absl::StrCat(what, " already exists"))
                                 : absl::AbortedError(absl::StrCat(what, " changed meanwhile; try again"));
          }
          return absl::OkStatus();
        });
  }
  StatusPromise Delete(const std::string& key) {
    return Await<absl::StatusOr<bool>>([&](auto cb) { store_->Delete(key, cb); })
        .then([](absl::StatusOr<bool> r) { return r.status(); });
  }

  // ------------------------------------------------------------------ status

  static std::string StatusText(const VmInfo& vm, const std::optional<VmStatus>& local, const std::string& me) {
    const bool mine = vm.owner == me && local.has_value();
    const bool runs_here = mine && local->state == VmPowerState::kRunning;
    if (vm.desired == DesiredState::kRunning) {
      if (vm.owner.empty()) return "waiting";
      if (mine) return runs_here && local->epoch == vm.epoch ? "running" : "starting";
      return vm.condition.empty() ? "running" : "starting";
    }
    return vm.owner.empty() ? "stopped" : "stopping";
  }

  OrPromise<VmView> View(VmInfo vm) {
    if (vm.owner != options_.node) {
      std::string status = StatusText(vm, std::nullopt, options_.node);
      return absl::StatusOr<VmView>(VmView{std::move(vm), std::move(status)});
    }
    const std::string name = vm.spec.name;
    return Await<absl::StatusOr<VmStatus>>([&](auto cb) { hv_->GetStatus(name, cb); })
        .then([this, vm = std::move(vm)](absl::StatusOr<VmStatus> s) mutable -> absl::StatusOr<VmView> {
          std::optional<VmStatus> local;
          if (s.ok()) local = *s;
          std::string status = StatusText(vm, local, options_.node);
          return VmView{std::move(vm), std::move(status)};
        });
  }

  OrPromise<VmView> GetView(const std::string& name) {
    return GetVm(name).then([this](absl::StatusOr<VmInfo> vm) -> OrPromise<VmView> {
      if (!vm.ok()) return absl::StatusOr<VmView>(vm.status());
      return View(*std::move(vm));
    });
  }

  OrPromise<std::vector<VmView>> ListVmViews() {
    return Await<absl::StatusOr<std::vector<VmInfo>>>([&](auto cb) { ha_->ListVms(cb); })
        .then([this](absl::StatusOr<std::vector<VmInfo>> vms) -> OrPromise<std::vector<VmView>> {
          if (!vms.ok()) return absl::StatusOr<std::vector<VmView>>(vms.status());
          return Await<absl::StatusOr<std::vector<VmStatus>>>([&](auto cb) { hv_->List(cb); })
              .then([this, vms = *std::move(vms)](absl::StatusOr<std::vector<VmStatus>> local) mutable
                    -> absl::StatusOr<std::vector<VmView>> {
                std::map<std::string, VmStatus> here;
                if (local.ok()) {
                  for (VmStatus& s : *local) here[s.name] = s;
                }
                std::vector<VmView> out;
                for (VmInfo& vm : vms) {
                  std::optional<VmStatus> l;
                  if (local.ok()) {
                    auto it = here.find(vm.spec.name);
                    l = it != here.end() ? it->second : VmStatus{vm.spec.name, VmPowerState::kAbsent, 0};
                  }
                  std::string status = StatusText(vm, l, options_.node);
                  out.push_back(VmView{std::move(vm), std::move(status)});
                }
                return out;
              });
        });
  }

  // ------------------------------------------------------------------ storage helpers

  // Deletes `vsds` (one after the other; a VSD already gone is fine). Resolves to "" or
  // to a sentence naming what could not be deleted.
  kj::Promise<std::string> DeleteVsds(std::vector<std::string> vsds) {
    auto failures = std::make_shared<std::vector<std::string>>();
    auto completed = std::make_shared<size_t>(0);
    auto step = [this, vsds, failures](size_t i) -> StatusPromise {
      return scribe_->DeleteVsd(vsds[i]).then([vsd = vsds[i], failures](absl::Status st) {
        if (!st.ok() && !absl::IsNotFound(st)) failures->push_back(absl::StrCat("VSD \"", vsd, "\": ", st.message()));
        return absl::OkStatus();
      });
    };
    return Sequence(vsds.size(), step, completed).then([failures](absl::Status) -> std::string {
      if (failures->empty()) return "";
      return absl::StrCat("; could not delete ", absl::StrJoin(*failures, "; "),
                          " (remove with `scribe vsd delete`)");
    });
  }

  // Runs make(i) for i in 0..n-1 (each making VSD made[i]); on the first failure deletes
  // the VSDs made so far and resolves to the failure (with `what(i)` as context).
  StatusPromise MakeAll(size_t n, std::vector<std::string> made,
                        std::function<StatusPromise(size_t)> make, std::function<std::string(size_t)> what) {
    auto completed = std::make_shared<size_t>(0);
    return Sequence(n, make, completed).then([this, completed, made, what](absl::Status st) -> StatusPromise {
      if (st.ok()) return st;
      const size_t failed = *completed;
      std::vector<std::string> undo(made.begin(), made.begin() + static_cast<long>(failed));
      const absl::Status failure = WithContext(st, what(failed));
      return DeleteVsds(undo).then([failure](std::string left) {
        return absl::Status(failure.code(), absl::StrCat(failure.message(), left));
      });
    });
  }

  // ------------------------------------------------------------------ VM create, delete

  OrPromise<VmView> CreateVm(VmSpec spec, bool start) {
    absl::Status valid = CheckSpec(spec);
    const std::string what = absl::StrCat("create vm ", spec.name);
    if (!valid.ok()) {
      Log(valid, what);
      return absl::StatusOr<VmView>(valid);
    }
    auto state = std::make_shared<VmSpec>(std::move(spec));
    return GetVm(state->name)
        .then([this, state](absl::StatusOr<VmInfo> existing) -> StatusPromise {
          if (existing.ok()) return absl::AlreadyExistsError(absl::StrCat("vm ", state->name, " already exists"));
          if (!absl::IsNotFound(existing.status())) return existing.status();
          return CheckMedia(state->cdrom_iso);
        })
        .then([this, state](absl::Status st) -> StatusPromise {
          if (!st.ok()) return st;
          return CheckCapacity(*state);
        })
        .then([this, state](absl::Status st) -> StatusPromise {
          if (!st.ok()) return st;
          const std::vector<std::string> vsds = DiskVsds(*state);
          return MakeAll(
              vsds.size(), vsds,
              [this, state, vsds](size_t i) {
                const VmDisk& d = state->disks[i];
                return scribe_->CreateVsd(vsds[i], d.size_bytes, d.replication, d.flash_priority);
              },
              [state, vsds](size_t i) {
                return absl::StrCat("disk ", state->disks[i].name, ": creating VSD \"", vsds[i], "\"");
              });
        })
        .then([this, state, start](absl::Status st) -> OrPromise<VmView> {
          if (!st.ok()) return absl::StatusOr<VmView>(st);
          return Await<absl::StatusOr<VmInfo>>([&](auto cb) { ha_->CreateVm(*state, start, cb); })
              .then([this, state](absl::StatusOr<VmInfo> vm) -> OrPromise<VmView> {
                if (vm.ok()) return View(*std::move(vm));
                // Undo the VSDs: the VM does not exist.
                const absl::Status failure = vm.status();
                return DeleteVsds(DiskVsds(*state)).then([failure](std::string left) {
                  return absl::StatusOr<VmView>(absl::Status(failure.code(), absl::StrCat(failure.message(), left)));
                });
              });
        })
        .then([this, what, state](absl::StatusOr<VmView> r) {
          Log(r.status(), absl::StrCat(what, " (", state->disks.size(), " disks)"));
          return r;
        });
  }

  // OK when `media` is absent or names a ready medium.
  StatusPromise CheckMedia(const std::optional<std::string>& media) {
    if (!media) return absl::OkStatus();
    const std::string name = *media;
    return Get(MediaKey(name)).then([name](absl::StatusOr<std::optional<scribe::KeyValue>> kv) -> absl::Status {
      if (!kv.ok()) return kv.status();
      if (!kv->has_value()) {
        return absl::NotFoundError(absl::StrCat("cdrom: no medium named \"", name,
                                                "\" in the media library (see `hc3 media list`)"));
      }
      absl::StatusOr<MediaRecord> m = DecodeMedia((*kv)->value);
      if (!m.ok()) return m.status();
      if (m->state != MediaRecord::State::kReady) {
        return absl::FailedPreconditionError(
            absl::StrCat("cdrom: medium \"", name, "\" is still ", MediaStateName(m->state)));
      }
      return absl::OkStatus();
    });
  }

  // RESOURCE_EXHAUSTED when no node could ever run the VM (more RAM or vCPUs than any
  // node offers). Nothing to compare with while no node is up.
  StatusPromise CheckCapacity(const VmSpec& spec) {
    const std::string name = spec.name;
    const uint64_t ram = spec.ram_bytes;
    const int vcpus = spec.vcpus;
    return Await<absl::StatusOr<std::vector<NodeInfo>>>([&](auto cb) { ha_->ListNodes(cb); })
        .then([name, ram, vcpus](absl::StatusOr<std::vector<NodeInfo>> nodes) -> absl::Status {
          if (!nodes.ok()) return nodes.status();
          if (nodes->empty()) return absl::OkStatus();
          const NodeInfo* most_ram = &(*nodes)[0];
          const NodeInfo* most_cpus = &(*nodes)[0];
          for (const NodeInfo& n : *nodes) {
            if (n.ram_bytes > most_ram->ram_bytes) most_ram = &n;
            if (n.cpus > most_cpus->cpus) most_cpus = &n;
          }
          if (ram > most_ram->ram_bytes) {
            return absl::ResourceExhaustedError(absl::StrFormat(
                "vm %s needs %d MiB of RAM, more than any node offers (largest: %d MiB on %s)", name, ram / kMiB,
                most_ram->ram_bytes / kMiB, most_ram->name));
          }
          if (vcpus > most_cpus->cpus) {
            return absl::ResourceExhaustedError(
                absl::StrFormat("vm %s has %d vCPUs, more than any node has CPUs (most: %d on %s)", name, vcpus,
                                most_cpus->cpus, most_cpus->name));
          }
          return absl::OkStatus();
        });
  }

  // A stopped VM (desired stopped, released): FAILED_PRECONDITION otherwise.
  static absl::Status CheckStopped(const VmInfo& vm, const std::string& action) {
    if (vm.desired == DesiredState::kRunning) {
      return absl::FailedPreconditionError(absl::StrCat("vm ", vm.spec.name, " is meant to run; stop it first (",
                                                        action, " needs a stopped VM)"));
    }
    if (!vm.owner.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("vm ", vm.spec.name, " is still being stopped by ", vm.owner, "; try again shortly"));
    }
    return absl::OkStatus();
  }

  StatusPromise DeleteVm(const std::string& name) {
    auto vm = std::make_shared<VmInfo>();
    return GetVm(name)
        .then([this, vm](absl::StatusOr<VmInfo> info) -> StatusPromise {
          if (!info.ok()) return info.status();
          *vm = *std::move(info);
          absl::Status st = CheckStopped(*vm, "delete");
          if (!st.ok()) return st;
          return AwaitStatus([&](auto cb) { ha_->DeleteVm(vm->spec.name, cb); });
        })
        .then([this, vm](absl::Status st) -> StatusPromise {
          if (!st.ok()) return st;
          // The record is gone: from here on, report what could not be cleaned up.
          return List(VmSnapshotsPrefix(vm->spec.name)).then([this, vm](absl::StatusOr<scribe::ListResult> snaps) {
            kj::Promise<void> deleted = kj::READY_NOW;
            if (snaps.ok()) {
              for (const scribe::KeyValue& kv : snaps->kvs) {
                deleted = deleted.then([this, key = kv.key] { return Delete(key).ignoreResult(); });
              }
            }
            return deleted.then([this, vm] { return DeleteVsds(DiskVsds(vm->spec)); })
                .then([vm](std::string left) -> absl::Status {
                  if (left.empty()) return absl::OkStatus();
                  return absl::InternalError(absl::StrCat("vm ", vm->spec.name, " was deleted", left));
                });
          });
        })
        .then([this, name](absl::Status st) {
          Log(st, absl::StrCat("delete vm ", name));
          return st;
        });
  }

  // ------------------------------------------------------------------ VM snapshots

  OrPromise<std::optional<VmSnapshotRecord>> GetSnapshotRecord(const std::string& vm, const std::string& name) {
    return Get(VmSnapshotKey(vm, name))
        .then([](absl::StatusOr<std::optional<scribe::KeyValue>> kv) -> absl::StatusOr<std::optional<VmSnapshotRecord>> {
          if (!kv.ok()) return kv.status();
          if (!kv->has_value()) return std::optional<VmSnapshotRecord>();
          absl::StatusOr<VmSnapshotRecord> r = DecodeVmSnapshot((*kv)->value);
          if (!r.ok()) return r.status();
          return std::optional<VmSnapshotRecord>(*std::move(r));
        });
  }

  // The snapshot record, NOT_FOUND naming it when absent.
  OrPromise<VmSnapshotRecord> RequireSnapshot(const std::string& vm, const std::string& name) {
    return GetSnapshotRecord(vm, name)
        .then([vm, name](absl::StatusOr<std::optional<VmSnapshotRecord>> r) -> absl::StatusOr<VmSnapshotRecord> {
          if (!r.ok()) return r.status();
          if (!r->has_value()) {
            return absl::NotFoundError(absl::StrCat("vm ", vm, " has no snapshot named \"", name, "\""));
          }
          return **std::move(r);
        });
  }

  OrPromise<std::vector<VmSnapshotRecord>> ListSnapshotRecords(const std::string& vm) {
    return List(VmSnapshotsPrefix(vm))
        .then([](absl::StatusOr<scribe::ListResult> list) -> absl::StatusOr<std::vector<VmSnapshotRecord>> {
          if (!list.ok()) return list.status();
          std::vector<VmSnapshotRecord> out;
          for (const scribe::KeyValue& kv : list->kvs) {
            absl::StatusOr<VmSnapshotRecord> r = DecodeVmSnapshot(kv.value);
            if (!r.ok()) return absl::Status(r.status().code(), absl::StrCat(kv.key, ": ", r.status().message()));
            out.push_back(*std::move(r));
          }
          return out;
        });
  }

  OrPromise<VmSnapshotRecord> CreateVmSnapshot(const std::string& vm_name, const std::string& name) {
    const std::string what = absl::StrCat("snapshot vm ", vm_name, " as ", name);
    absl::Status valid = CheckName("snapshot name", name);
    if (!valid.ok()) {
      Log(valid, what);
      return absl::StatusOr<VmSnapshotRecord>(valid);
    }
    auto record = std::make_shared<VmSnapshotRecord>();
    return GetVm(vm_name)
        .then([this, record, name](absl::StatusOr<VmInfo> vm) -> StatusPromise {
          if (!vm.ok()) return vm.status();
          record->vm = vm->spec.name;
          record->name = name;
          record->spec = vm->spec;
          return GetSnapshotRecord(record->vm, name).then([record](auto existing) -> absl::Status {
            if (!existing.ok()) return existing.status();
            if (existing->has_value()) {
              return absl::AlreadyExistsError(
                  absl::StrCat("vm ", record->vm, " already has a snapshot named \"", record->name, "\""));
            }
            return absl::OkStatus();
          });
        })
        .then([this, record](absl::Status st) -> StatusPromise {
          if (!st.ok()) return st;
          const std::vector<std::string> vsds = DiskVsds(record->spec);
          if (vsds.empty()) return absl::OkStatus();  // a configuration-only snapshot
          return scribe_->CreateGroupSnapshot(vsds, record->name)
              .then([record, vsds](absl::StatusOr<std::vector<uint64_t>> ids) -> absl::Status {
                if (!ids.ok()) {
                  return WithContext(ids.status(), absl::StrCat("group snapshot of VSDs ", absl::StrJoin(vsds, ", ")));
                }
                for (size_t i = 0; i < vsds.size(); ++i) {
                  record->disks.push_back(SnapshotDiskRecord{record->spec.disks[i].name, vsds[i], (*ids)[i]});
                }
                return absl::OkStatus();
              });
        })
        .then([this, record](absl::Status st) -> OrPromise<VmSnapshotRecord> {
          if (!st.ok()) return absl::StatusOr<VmSnapshotRecord>(st);
          record->created_unix_ms = options_.now_unix_ms ? options_.now_unix_ms() : 0;
          return Cas(VmSnapshotKey(record->vm, record->name), 0, EncodeVmSnapshot(*record),
                     absl::StrCat("vm ", record->vm, " snapshot \"", record->name, "\""))
              .then([this, record](absl::Status st) -> OrPromise<VmSnapshotRecord> {
                if (st.ok()) return absl::StatusOr<VmSnapshotRecord>(*record);
                // Another request recorded the name first: drop the SCRIBE snapshots.
                return DeleteScribeSnapshots(*record).then(
                    [st](std::string left) -> absl::StatusOr<VmSnapshotRecord> {
                      return absl::Status(st.code(), absl::StrCat(st.message(), left));
                    });
              });
        })
        .then([this, what](absl::StatusOr<VmSnapshotRecord> r) {
          Log(r.status(), what);
          return r;
        });
  }

  // Deletes the SCRIBE snapshots of a VM snapshot (gone ones are fine).
  kj::Promise<std::string> DeleteScribeSnapshots(const VmSnapshotRecord& record) {
    auto failures = std::make_shared<std::vector<std::string>>();
    auto disks = record.disks;
    const std::string name = record.name;
    auto step = [this, disks, name, failures](size_t i) -> StatusPromise {
      return scribe_->DeleteSnapshot(disks[i].vsd, name).then([vsd = disks[i].vsd, failures](absl::Status st) {
        if (!st.ok() && !absl::IsNotFound(st)) failures->push_back(absl::StrCat("VSD \"", vsd, "\": ", st.message()));
        return absl::OkStatus();
      });
    };
    return Sequence(disks.size(), step, std::make_shared<size_t>(0)).then([failures](absl::Status) -> std::string {
      if (failures->empty()) return "";
      return absl::StrCat("; could not delete the SCRIBE snapshots of ", absl::StrJoin(*failures, "; "));
    });
  }

  StatusPromise DeleteVmSnapshot(const std::string& vm, const std::string& name) {
    return RequireSnapshot(vm, name)
        .then([this](absl::StatusOr<VmSnapshotRecord> r) -> StatusPromise {
          if (!r.ok()) return r.status();
          auto record = std::make_shared<VmSnapshotRecord>(*std::move(r));
          return DeleteScribeSnapshots(*record).then([this, record](std::string left) -> StatusPromise {
            // Keep the record while SCRIBE snapshots remain, so the delete can be retried.
            if (!left.empty()) {
              return absl::UnavailableError(absl::StrCat("vm ", record->vm, " snapshot \"", record->name,
                                                         "\" kept", left));
            }
            return Delete(VmSnapshotKey(record->vm, record->name));
          });
        })
        .then([this, vm, name](absl::Status st) {
          Log(st, absl::StrCat("delete snapshot ", name, " of vm ", vm));
          return st;
        });
  }

  // ------------------------------------------------------------------ clone, revert

  OrPromise<VmView> CloneVm(const std::string& source, const std::string& snapshot, const std::string& name) {
    const std::string what = snapshot.empty() ? absl::StrCat("clone vm ", source, " as ", name)
                                              : absl::StrCat("clone vm ", source, " snapshot ", snapshot, " as ", name);
    auto spec = std::make_shared<VmSpec>();
    return GetVm(source)
        .then([this, spec, snapshot](absl::StatusOr<VmInfo> src) -> StatusPromise {
          if (!src.ok()) return src.status();
          *spec = src->spec;
          if (snapshot.empty()) return absl::OkStatus();
          return RequireSnapshot(src->spec.name, snapshot).then([spec](absl::StatusOr<VmSnapshotRecord> r) {
            if (!r.ok()) return r.status();
            *spec = r->spec;  // the configuration the snapshot was taken with
            return absl::OkStatus();
          });
        })
        .then([this, spec, name](absl::Status st) -> StatusPromise {
          if (!st.ok()) return st;
          // The new VM: the source's configuration under the new name, new MACs.
          VmSpec clone = *spec;
          clone.name = name;
          for (VmNic& nic : clone.nics) nic.mac.reset();
          absl::Status valid = CheckSpec(clone);
          if (!valid.ok()) return valid;
          auto source_spec = std::make_shared<VmSpec>(*spec);
          *spec = std::move(clone);
          return GetVm(name).then([this, spec, source_spec](absl::StatusOr<VmInfo> existing) -> StatusPromise {
            if (existing.ok()) return absl::AlreadyExistsError(absl::StrCat("vm ", spec->name, " already exists"));
            if (!absl::IsNotFound(existing.status())) return existing.status();
            return CheckMedia(spec->cdrom_iso);
          });
        })
        .then([this, spec, source, snapshot](absl::Status st) -> StatusPromise {
          if (!st.ok()) return st;
          const std::vector<std::string> clones = DiskVsds(*spec);
          std::vector<std::string> sources;
          for (const VmDisk& d : spec->disks) sources.push_back(VsdName(source, d.name));
          return MakeAll(
              clones.size(), clones,
              [this, sources, clones, snapshot](size_t i) {
                return snapshot.empty() ? scribe_->CloneVsd(sources[i], clones[i])
                                        : scribe_->CloneFromSnapshot(sources[i], snapshot, clones[i]);
              },
              [sources, clones](size_t i) {
                return absl::StrCat("cloning VSD \"", sources[i], "\" as \"", clones[i], "\"");
              });
        })
        .then([this, spec](absl::Status st) -> OrPromise<VmView> {
          if (!st.ok()) return absl::StatusOr<VmView>(st);
          return Await<absl::StatusOr<VmInfo>>([&](auto cb) { ha_->CreateVm(*spec, false, cb); })
              .then([this, spec](absl::StatusOr<VmInfo> vm) -> OrPromise<VmView> {
                if (vm.ok()) return View(*std::move(vm));
                const absl::Status failure = vm.status();
                return DeleteVsds(DiskVsds(*spec)).then([failure](std::string left) {
                  return absl::StatusOr<VmView>(absl::Status(failure.code(), absl::StrCat(failure.message(), left)));
                });
              });
        })
        .then([this, what](absl::StatusOr<VmView> r) {
          Log(r.status(), what);
          return r;
        });
  }

  OrPromise<VmView> RevertVm(const std::string& vm_name, const std::string& snapshot) {
    const std::string what = absl::StrCat("revert vm ", vm_name, " to ", snapshot);
    auto record = std::make_shared<VmSnapshotRecord>();
    return GetVm(vm_name)
        .then([this, record, snapshot](absl::StatusOr<VmInfo> vm) -> StatusPromise {
          if (!vm.ok()) return vm.status();
          absl::Status st = CheckStopped(*vm, "revert");
          if (!st.ok()) return st;
          auto current = std::make_shared<VmSpec>(vm->spec);
          return RequireSnapshot(vm->spec.name, snapshot)
              .then([record, current](absl::StatusOr<VmSnapshotRecord> r) -> absl::Status {
                if (!r.ok()) return r.status();
                *record = *std::move(r);
                // The disks must still be the snapshot's (a VM's disks are fixed at creation).
                std::set<std::string> now;
                for (const VmDisk& d : current->disks) now.insert(d.name);
                for (const SnapshotDiskRecord& d : record->disks) {
                  if (!now.contains(d.disk) || d.vsd != VsdName(current->name, d.disk)) {
                    return absl::FailedPreconditionError(absl::StrCat(
                        "vm ", current->name, " no longer has disk ", d.disk, " of snapshot \"", record->name, "\""));
                  }
                }
                return absl::OkStatus();
              });
        })
        .then([this, record](absl::Status st) -> StatusPromise {
          if (!st.ok()) return st;
          auto completed = std::make_shared<size_t>(0);
          auto disks = record->disks;
          const std::string name = record->name;
          return Sequence(disks.size(),
                          [this, disks, name](size_t i) { return scribe_->RevertToSnapshot(disks[i].vsd, name); },
                          completed)
              .then([record, completed](absl::Status st) -> absl::Status {
                if (st.ok()) return st;
                std::vector<std::string> done;
                for (size_t i = 0; i < *completed; ++i) done.push_back(record->disks[i].disk);
                return absl::Status(
                    st.code(), absl::StrCat("reverting VSD \"", record->disks[*completed].vsd, "\": ", st.message(),
                                            done.empty() ? std::string(" (no disk was reverted)")
                                                         : absl::StrCat(" (disks ", absl::StrJoin(done, ", "),
                                                                        " were reverted; the configuration was not)")));
              });
        })
        .then([this, record](absl::Status st) -> StatusPromise {
          if (!st.ok()) return st;
          return AwaitStatus([&](auto cb) { ha_->UpdateVmSpec(record->vm, record->spec, cb); });
        })
        .then([this, vm_name, what](absl::Status st) -> OrPromise<VmView> {
          Log(st, what);
          if (!st.ok()) return absl::StatusOr<VmView>(st);
          return GetView(vm_name);
        });
  }

  // ------------------------------------------------------------------ media

  OrPromise<std::vector<MediaRecord>> ListMediaRecords() {
    return List(kMediaPrefix).then([](absl::StatusOr<scribe::ListResult> list) -> absl::StatusOr<std::vector<MediaRecord>> {
      if (!list.ok()) return list.status();
      std::vector<MediaRecord> out;
      for (const scribe::KeyValue& kv : list->kvs) {
        absl::StatusOr<MediaRecord> r = DecodeMedia(kv.value);
        if (!r.ok()) return absl::Status(r.status().code(), absl::StrCat(kv.key, ": ", r.status().message()));
        out.push_back(*std::move(r));
      }
      return out;
    });
  }

  // The image file: a readable regular file; its size.
  static absl::StatusOr<uint64_t> CheckImage(const std::string& path) {
    if (path.empty() || path[0] != '/' || path.size() > kPathLengthMax || path.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("path \"", absl::CEscape(path.substr(0, 200)),
                                                     "\" must be an absolute file name on the node"));
    }
    struct stat st;
    if (stat(path.c_str(), &st) != 0) {
      return absl::NotFoundError(absl::StrCat("path ", path, ": ", std::strerror(errno)));
    }
    if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat("path ", path, " is not a regular file"));
    if (st.st_size == 0) return absl::InvalidArgumentError(absl::StrCat("path ", path, " is empty"));
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return absl::PermissionDeniedError(absl::StrCat("path ", path, ": ", std::strerror(errno)));
    close(fd);
    return static_cast<uint64_t>(st.st_size);
  }

  OrPromise<MediaRecord> AddMedia(const std::string& name, const std::string& path) {
    const std::string what = absl::StrCat("add medium ", name, " from ", path);
    absl::Status valid = CheckName("name", name);
    absl::StatusOr<uint64_t> size = valid.ok() ? CheckImage(path) : absl::StatusOr<uint64_t>(valid);
    if (!size.ok()) {
      Log(size.status(), what);
      return absl::StatusOr<MediaRecord>(size.status());
    }
    auto record = std::make_shared<MediaRecord>();
    record->name = name;
    record->vsd = MediaVsdName(name);
    record->size_bytes = *size;
    record->state = MediaRecord::State::kFilling;
    record->source = path;
    record->node = options_.node;
    filling_.insert(name);
    const uint64_t vsd_bytes = (*size + kScribeBlockBytes - 1) / kScribeBlockBytes * kScribeBlockBytes;
    return Cas(MediaKey(name), 0, EncodeMedia(*record), absl::StrCat("medium \"", name, "\""))
        .then([this, record, vsd_bytes](absl::Status st) -> StatusPromise {
          if (!st.ok()) return st;
          // From here on a failure removes the record (and the VSD) again.
          return scribe_->CreateVsd(record->vsd, vsd_bytes, 2, 0)
              .then([this, record](absl::Status st) -> StatusPromise {
                if (!st.ok()) return WithContext(st, absl::StrCat("creating VSD \"", record->vsd, "\""));
                return scribe_->ExportInfo(record->vsd, scribe_node())
                    .then([this, record](absl::StatusOr<ScribeExport> e) -> StatusPromise {
                      if (!e.ok()) return WithContext(e.status(), absl::StrCat("exporting VSD \"", record->vsd, "\""));
                      return FromCallback<absl::Status>([&](auto cb) { writer_->Write(record->source, e->uri, cb); });
                    })
                    .then([this, record](absl::Status st) -> StatusPromise {
                      if (st.ok()) return st;
                      return DeleteVsds({record->vsd}).then([st](std::string left) {
                        return absl::Status(st.code(), absl::StrCat(st.message(), left));
                      });
                    });
              })
              .then([this, record](absl::Status st) -> StatusPromise {
                if (!st.ok()) {
                  return Delete(MediaKey(record->name)).then([st](absl::Status) { return st; });
                }
                record->state = MediaRecord::State::kReady;
                return Await<absl::StatusOr<int64_t>>([&](auto cb) {
                         store_->Put(MediaKey(record->name), EncodeMedia(*record), cb);
                       })
                    .then([](absl::StatusOr<int64_t> r) { return r.status(); });
              });
        })
        .then([this, name, record, what](absl::Status st) -> absl::StatusOr<MediaRecord> {
          filling_.erase(name);
          Log(st, what);
          if (!st.ok()) return st;
          return *record;
        });
  }

  StatusPromise DeleteMedia(const std::string& name) {
    if (filling_.contains(name)) {
      return absl::FailedPreconditionError(absl::StrCat("medium \"", name, "\" is being added on this node"));
    }
    return Get(MediaKey(name))
        .then([this, name](absl::StatusOr<std::optional<scribe::KeyValue>> kv) -> StatusPromise {
          if (!kv.ok()) return kv.status();
          if (!kv->has_value()) return absl::NotFoundError(absl::StrCat("no medium named \"", name, "\""));
          return Await<absl::StatusOr<std::vector<VmInfo>>>([&](auto cb) { ha_->ListVms(cb); })
              .then([this, name](absl::StatusOr<std::vector<VmInfo>> vms) -> StatusPromise {
                if (!vms.ok()) return vms.status();
                std::vector<std::string> users;
                for (const VmInfo& vm : *vms) {
                  if (vm.spec.cdrom_iso == name) users.push_back(vm.spec.name);
                }
                if (!users.empty()) {
                  return absl::FailedPreconditionError(absl::StrCat("medium \"", name, "\" is the CD-ROM of vm ",
                                                                    absl::StrJoin(users, ", "), "; eject it first"));
                }
                return scribe_->DeleteVsd(MediaVsdName(name)).then([this, name](absl::Status st) -> StatusPromise {
                  if (!st.ok() && !absl::IsNotFound(st)) {
                    return WithContext(st, absl::StrCat("deleting VSD \"", MediaVsdName(name), "\""));
                  }
                  return Delete(MediaKey(name));
                });
              });
        })
        .then([this, name](absl::Status st) {
          Log(st, absl::StrCat("delete medium ", name));
          return st;
        });
  }

  OrPromise<VmView> SetCdrom(const std::string& vm_name, const std::string& media) {
    const std::string what = media.empty() ? absl::StrCat("eject the CD-ROM of vm ", vm_name)
                                           : absl::StrCat("insert medium ", media, " in vm ", vm_name);
    auto spec = std::make_shared<VmSpec>();
    return GetVm(vm_name)
        .then([this, spec, media](absl::StatusOr<VmInfo> vm) -> StatusPromise {
          if (!vm.ok()) return vm.status();
          absl::Status st = CheckStopped(*vm, "changing the CD-ROM");
          if (!st.ok()) return st;
          *spec = vm->spec;
          if (media.empty()) {
            spec->cdrom_iso.reset();
            return absl::OkStatus();
          }
          spec->cdrom_iso = media;
          absl::Status valid = CheckName("media", media);
          if (!valid.ok()) return valid;
          return CheckMedia(spec->cdrom_iso);
        })
        .then([this, spec](absl::Status st) -> StatusPromise {
          if (!st.ok()) return st;
          return AwaitStatus([&](auto cb) { ha_->UpdateVmSpec(spec->name, *spec, cb); });
        })
        .then([this, vm_name, what](absl::Status st) -> OrPromise<VmView> {
          Log(st, what);
          if (!st.ok()) return absl::StatusOr<VmView>(st);
          return GetView(vm_name);
        });
  }

  uint64_t scribe_node() const { return options_.scribe_node; }

  scribe::RealLoop* loop_;
  HaManager* ha_;
  scribe::MetaStore* store_;
  Hypervisor* hv_;
  ScribeClient* scribe_;
  MediaWriter* writer_;
  ServiceOptions options_;
  std::set<std::string> filling_;  // media this node is adding now
};

}  // namespace

// ------------------------------------------------------------------ StartPreparer

struct StartPreparer::Impl : public kj::TaskSet::ErrorHandler {
  Impl(ScribeClient* scribe, uint64_t scribe_node) : scribe(scribe), scribe_node(scribe_node) {}
  void taskFailed(kj::Exception&& e) override { (void)e; }

  ScribeClient* scribe;
  uint64_t scribe_node;
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);
  kj::TaskSet tasks{*this};
};

StartPreparer::StartPreparer(ScribeClient* scribe, uint64_t scribe_node)
    : impl_(std::make_unique<Impl>(scribe, scribe_node)) {}

StartPreparer::~StartPreparer() { *impl_->alive = false; }

void StartPreparer::Prepare(const VmLaunch& launch, std::function<void(absl::Status)> done) {
  struct Disk {
    std::string vsd;
    std::string socket;
  };
  std::vector<Disk> disks;
  for (size_t i = 0; i < launch.spec.disks.size() && i < launch.disks.size(); ++i) {
    disks.push_back(Disk{VsdName(launch.spec.name, launch.spec.disks[i].name), launch.disks[i].nbd.socket_path});
  }
  const uint64_t epoch = launch.epoch;
  ScribeClient* scribe = impl_->scribe;
  const uint64_t node = impl_->scribe_node;
  auto step = [scribe, node, disks, epoch](size_t i) -> StatusPromise {
    const Disk d = disks[i];
    return scribe->ExportInfo(d.vsd, node)
        .then([scribe, d, epoch](absl::StatusOr<ScribeExport> e) -> StatusPromise {
          if (!e.ok()) return WithContext(e.status(), absl::StrCat("VSD \"", d.vsd, "\": export"));
          if (e->nbd_socket != d.socket) {
            return absl::FailedPreconditionError(
                absl::StrCat("VSD \"", d.vsd, "\" is exported on ", e->nbd_socket,
                             " but this hypercored launches VMs on ", d.socket, " (check --nbd-socket)"));
          }
          return scribe->FenceVsd(d.vsd, epoch).then([d, epoch](absl::Status st) {
            return WithContext(st, absl::StrCat("fenceVsd(\"", d.vsd, "\", ", epoch, ")"));
          });
        });
  };
  impl_->tasks.add(Sequence(disks.size(), step, std::make_shared<size_t>(0))
                       .then([alive = impl_->alive, done = std::move(done)](absl::Status st) {
                         if (*alive) done(st);
                       }));
}

kj::Own<api::HypercoreAdmin::Server> NewHypercoreService(ServiceDeps deps, ServiceOptions options) {
  return kj::heap<HypercoreService>(deps, std::move(options));
}

}  // namespace hypercore::daemon
