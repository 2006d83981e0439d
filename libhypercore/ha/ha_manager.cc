// HaManager: liveness lease with self-fencing, the owner's reconcile loop, the
// coordinator's restart decisions, and the cluster API. See hypercore/ha.h for the model
// and docs/ARCHITECTURE.md ("HyperCore HA") for the safety argument.
//
// Structure. Everything hangs off one state machine:
//   kStarting --(VMs left by an earlier daemon forced off)--> kJoining
//   kJoining  --(lease granted, node key put)--> kActive
//   kActive   --(deadline passed, or the store says the lease is gone)--> kFenced
//   kFenced   --(every VM forced off)--> kJoining (a fresh lease)
// Each move to kJoining or kFenced bumps `incarnation`; a callback carries the
// incarnation it was issued in and does nothing if it has changed, so nothing from
// before a fence can act after it.
//
// While kActive, a *pass* runs after every watched change under /hc/ and every
// rescan interval: one List of /hc/ (a consistent snapshot at one revision), one List
// of the hypervisor, then the owner's reconcile (start, stop, release, force off) and,
// on the coordinator, the restart decisions, one compare-and-swap at a time. Passes
// never overlap, so each one sees at least what the previous one did.
#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "hypercore/ha.h"
#include "libhypercore/ha/records.h"
#include "scribe/status.h"

namespace hypercore {

using ha_internal::DecodeSnapshot;
using ha_internal::EncodeNode;
using ha_internal::EncodeVm;
using ha_internal::kCoordinatorKey;
using ha_internal::kRootPrefix;
using ha_internal::NodeKey;
using ha_internal::NodeRecord;
using ha_internal::Snapshot;
using ha_internal::VmKey;

namespace {

constexpr int64_t kNsPerMs = 1'000'000;

uint64_t Mib(uint64_t bytes) { return bytes >> 20; }

std::string FormatTime(int64_t ns) {
  return absl::StrFormat("t=%d.%03ds", ns / 1'000'000'000, (ns % 1'000'000'000) / kNsPerMs);
}

std::string FormatSeconds(int64_t ns) {
  return absl::StrFormat("%d.%03ds", ns / 1'000'000'000, (ns % 1'000'000'000) / kNsPerMs);
}

bool IsNameChar(char c) { return absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-'; }

absl::Status InvalidOption(const std::string& field, const std::string& rule) {
  return absl::InvalidArgumentError(absl::StrCat("HaOptions.", field, ": ", rule));
}

int64_t RenewIntervalMs(const HaOptions& o) {
  return o.renew_interval_ms > 0 ? o.renew_interval_ms : o.lease_ttl_ms / 3;
}

}  // namespace

const char* HaStateName(HaManager::State state) {
  switch (state) {
    case HaManager::State::kStarting:
      return "starting";
    case HaManager::State::kJoining:
      return "joining";
    case HaManager::State::kActive:
      return "active";
    case HaManager::State::kFenced:
      return "fenced";
  }
  return "?";
}

const char* HaDecisionKindName(HaDecision::Kind kind) {
  using K = HaDecision::Kind;
  switch (kind) {
    case K::kJoin: return "join";
    case K::kLeaseLost: return "lease-lost";
    case K::kSelfFence: return "self-fence";
    case K::kCoordinator: return "coordinator";
    case K::kCreate: return "create";
    case K::kStart: return "start";
    case K::kStop: return "stop";
    case K::kDelete: return "delete";
    case K::kRestart: return "restart";
    case K::kNoCapacity: return "no-capacity";
    case K::kRelease: return "release";
    case K::kPowerOn: return "power-on";
    case K::kPowerOnFailed: return "power-on-failed";
    case K::kShutdown: return "shutdown";
    case K::kForceOff: return "force-off";
    case K::kUpdate: return "update";
  }
  return "?";
}

std::string HaDecision::ToString() const { return absl::StrCat(FormatTime(time_ns), " ", node, ": ", message); }

absl::Status ValidateHaOptions(const HaOptions& o) {
  if (o.node.empty() || o.node.size() > kVmNameLengthMax ||
      !std::all_of(o.node.begin(), o.node.end(), IsNameChar)) {
    return InvalidOption("node", absl::StrCat("\"", o.node, "\" must be 1..", kVmNameLengthMax,
                                              " characters of [A-Za-z0-9._-]"));
  }
  if (o.ram_bytes == 0) return InvalidOption("ram_bytes", "must be > 0");
  if (o.cpus <= 0) return InvalidOption("cpus", "must be > 0");
  if (o.lease_ttl_ms <= 0 || o.lease_ttl_ms > scribe::MetaStore::kLeaseTtlMsMax) {
    return InvalidOption("lease_ttl_ms", absl::StrCat("must be 1..", scribe::MetaStore::kLeaseTtlMsMax));
  }
  if (o.renew_interval_ms < 0) return InvalidOption("renew_interval_ms", "must be >= 0");
  const int64_t renew_ms = RenewIntervalMs(o);
  if (renew_ms <= 0) return InvalidOption("renew_interval_ms", "the renew interval must be > 0");
  if (o.fence_margin_ms <= 0) return InvalidOption("fence_margin_ms", "must be > 0");
  if (o.fence_margin_ms + renew_ms >= o.lease_ttl_ms) {
    return InvalidOption("fence_margin_ms",
                         absl::StrCat("margin + renew interval (", o.fence_margin_ms, " + ", renew_ms,
                                      " ms) must be below the TTL (", o.lease_ttl_ms,
                                      " ms), or the node fences between two renewals"));
  }
  if (o.renewals_in_flight_max < 1) return InvalidOption("renewals_in_flight_max", "must be >= 1");
  if (o.rescan_interval_ms <= 0) return InvalidOption("rescan_interval_ms", "must be > 0");
  if (o.shutdown_timeout_ms < 0) return InvalidOption("shutdown_timeout_ms", "must be >= 0");
  if (o.start_retry_ms <= 0) return InvalidOption("start_retry_ms", "must be > 0");
  if (o.join_retry_ms <= 0) return InvalidOption("join_retry_ms", "must be > 0");
  if (o.cas_attempts_max < 1) return InvalidOption("cas_attempts_max", "must be >= 1");
  if (o.restart_grace_ms < 0) return InvalidOption("restart_grace_ms", "must be >= 0");
  if (!(o.placement.vcpu_overcommit_ratio >= 1.0)) {
    return InvalidOption("placement.vcpu_overcommit_ratio", "must be >= 1");
  }
  if (o.launch.socket_path.empty() || o.launch.socket_path[0] != '/') {
    return InvalidOption("launch.socket_path", "must be an absolute path (scribed's NBD socket)");
  }
  return absl::OkStatus();
}

struct HaManager::Impl {
  // What the node knows about one VM on its hypervisor.
  struct LocalVm {
    int ops = 0;                    // hypervisor operations (or a prepare_start) in flight
    int64_t shutdown_sent_ns = -1;  // when ACPI was pressed; -1: not pressed
    int64_t next_start_ns = 0;      // earliest retry of a failed start
  };

  // One coordinator pass: the VMs to decide, one CAS at a time. VMs that fit nowhere
  // get their condition at the end, so it names the room left after this pass's
  // placements (and is not rewritten by the next pass).
  struct Coordination {
    std::shared_ptr<const Snapshot> snap;
    std::vector<std::string> work;
    std::vector<std::string> no_room;
    bool conditions_phase = false;
    size_t next = 0;
    std::vector<PlacementNode> nodes;
    std::vector<PlacedVm> placed;
    uint64_t incarnation = 0;
    std::function<void()> done;
  };

  Impl(scribe::Loop* loop, scribe::Random* random, scribe::MetaStore* store, Hypervisor* hv,
       HaOptions options)
      : loop(loop), random(random), store(store), hv(hv), options(std::move(options)) {
    renew_interval_ns = RenewIntervalMs(this->options) * kNsPerMs;
    margin_ns = this->options.fence_margin_ms * kNsPerMs;
  }

  ~Impl() {
    *alive = false;
    CancelTimers();
    watch.reset();
  }

  // ---------------------------------------------------------------- helpers

  void Decide(HaDecision::Kind kind, const std::string& vm, const std::string& target,
              uint64_t epoch, std::string message) {
    if (!options.on_decision) return;
    HaDecision d;
    d.time_ns = loop->NowNanos();
    d.node = options.node;
    d.kind = kind;
    d.vm = vm;
    d.target = target;
    d.epoch = epoch;
    d.message = std::move(message);
    options.on_decision(d);
  }

  void Cancel(scribe::Loop::TimerId& timer) {
    if (timer != 0) loop->Cancel(timer);
    timer = 0;
  }

  void CancelTimers() {
    Cancel(fence_timer);
    Cancel(renew_timer);
    Cancel(rescan_timer);
    Cancel(retry_timer);
  }

  // Runs `fn` after `delay_ns` unless the manager is gone.
  scribe::Loop::TimerId After(int64_t delay_ns, std::function<void()> fn) {
    return loop->RunAfter(delay_ns, [alive = alive, fn = std::move(fn)] {
      if (*alive) fn();
    });
  }

  // Replies on a later loop turn (the API never calls back from inside the call).
  template <typename T>
  void ReplyLater(std::function<void(T)> done, T value) {
    loop->Post([alive = alive, done = std::move(done), value = std::move(value)]() mutable {
      if (*alive) done(std::move(value));
    });
  }

  bool CanAct() const {
    return state == State::kActive && lease.valid() && loop->NowNanos() < deadline_ns;
  }

  // ---------------------------------------------------------------- lifecycle

  void Begin() {
    state = State::kStarting;
    ForceOffEverything("found running when this manager started (a new incarnation owns nothing)",
                       [this] { Join(); });
  }

  // Forces off every hypercore VM the hypervisor runs, and every VM with an operation
  // in flight (a Start not yet complete takes effect before a ForceOff called after it),
  // then calls `then`. Retries until the hypervisor confirms: the node must not rejoin
  // while anything of an older incarnation might run.
  void ForceOffEverything(std::string reason, std::function<void()> then) {
    const uint64_t inc = incarnation;
    hv->List([this, alive = alive, inc, reason, then](absl::StatusOr<std::vector<VmStatus>> list) {
      if (!*alive || inc != incarnation) return;
      if (!list.ok()) {
        retry_timer = After(options.join_retry_ms * kNsPerMs, [this, reason, then] {
          retry_timer = 0;
          ForceOffEverything(reason, then);
        });
        return;
      }
      std::set<std::string> names;
      for (const VmStatus& s : *list) {
        if (s.state == VmPowerState::kRunning) names.insert(s.name);
      }
      for (const auto& [name, local_vm] : local) {
        if (local_vm.ops > 0) names.insert(name);
      }
      if (names.empty()) return then();
      auto pending = std::make_shared<size_t>(names.size());
      auto failed = std::make_shared<bool>(false);
      for (const std::string& name : names) {
        ++local[name].ops;
        Decide(HaDecision::Kind::kForceOff, name, "", 0,
               absl::StrCat("force off vm ", name, ": ", reason));
        hv->ForceOff(name, [this, alive = alive, inc, name, pending, failed, reason,
                            then](absl::Status s) {
          if (!*alive) return;
          --local[name].ops;
          if (!s.ok() && s.code() != absl::StatusCode::kNotFound) *failed = true;
          if (--*pending > 0 || inc != incarnation) return;
          if (*failed) {
            retry_timer = After(options.join_retry_ms * kNsPerMs, [this, reason, then] {
              retry_timer = 0;
              ForceOffEverything(reason, then);
            });
          } else {
            then();
          }
        });
      }
    });
  }

  void Join() {
    state = State::kJoining;
    ++incarnation;
    coordinator = false;
    deadline_ns = 0;
    renewals_in_flight = 0;
    last_renewal_failed = false;
    const uint64_t inc = incarnation;
    const int64_t request_start_ns = loop->NowNanos();
    store->GrantLease(options.lease_ttl_ms, [this, alive = alive, inc,
                                             request_start_ns](absl::StatusOr<scribe::Lease> l) {
      if (!*alive || inc != incarnation) return;
      if (!l.ok()) {
        retry_timer = After(options.join_retry_ms * kNsPerMs, [this] {
          retry_timer = 0;
          Join();
        });
        return;
      }
      lease = l->id;
      lease_ttl_ns = l->ttl_ms * kNsPerMs;
      ExtendDeadline(request_start_ns);
      ScheduleRenew();
      PublishNode(inc);
    });
  }

  void PublishNode(uint64_t inc) {
    NodeRecord record{options.ram_bytes, options.cpus, maintenance};
    store->Put(NodeKey(options.node), EncodeNode(record), lease,
               [this, alive = alive, inc](absl::StatusOr<int64_t> r) {
                 if (!*alive || inc != incarnation) return;
                 if (!r.ok()) {
                   if (r.status().code() == absl::StatusCode::kNotFound) {
                     return LeaseLost("the lease ended before the node key was published");
                   }
                   retry_timer = After(options.join_retry_ms * kNsPerMs, [this, inc] {
                     retry_timer = 0;
                     if (inc == incarnation) PublishNode(inc);
                   });
                   return;
                 }
                 if (old_lease.valid()) {
                   // Best effort: ends the old lease's leftovers (a coordinator key)
                   // now rather than at its expiry. Our VMs are all off already.
                   store->RevokeLease(old_lease, [](absl::Status) {});
                   old_lease = {};
                 }
                 state = State::kActive;
                 Decide(HaDecision::Kind::kJoin, "", "", 0,
                        absl::StrCat("joined (RAM ", Mib(options.ram_bytes), " MiB, ", options.cpus,
                                     " CPUs, lease TTL ", lease_ttl_ns / kNsPerMs, " ms)"));
                 StartWatch();
                 ScheduleRescan();
                 SchedulePass();
               });
  }

  // A renewal (or the grant) whose request started at `request_start_ns` succeeded:
  // the store cannot expire the lease before request_start_ns + TTL.
  void ExtendDeadline(int64_t request_start_ns) {
    const int64_t deadline = request_start_ns + lease_ttl_ns - margin_ns;
    if (deadline <= deadline_ns) return;
    deadline_ns = deadline;
    last_renewal_start_ns = request_start_ns;
    Cancel(fence_timer);
    const uint64_t inc = incarnation;
    fence_timer = After(std::max<int64_t>(0, deadline - loop->NowNanos()), [this, inc] {
      fence_timer = 0;
      if (inc != incarnation) return;
      Fence(absl::StrCat("lease not renewed since ", FormatTime(last_renewal_start_ns),
                         " (deadline ", FormatTime(deadline_ns), ")"));
    });
  }

  // The next renewal starts a renew interval after the last one; after a failed one,
  // a quarter of that, so a node whose store came back renews before its deadline.
  void ScheduleRenew() {
    Cancel(renew_timer);
    renew_timer = After(last_renewal_failed ? renew_interval_ns / 4 : renew_interval_ns, [this] {
      renew_timer = 0;
      RenewTick();
    });
  }

  void RenewTick() {
    if (!lease.valid() || (state != State::kActive && state != State::kJoining)) return;
    if (renewals_in_flight < options.renewals_in_flight_max) {
      ++renewals_in_flight;
      const uint64_t inc = incarnation;
      const scribe::LeaseId renewed = lease;
      const int64_t request_start_ns = loop->NowNanos();
      store->KeepAlive(renewed, [this, alive = alive, inc, renewed,
                                 request_start_ns](absl::StatusOr<int64_t> ttl_ms) {
        if (!*alive || inc != incarnation) return;
        --renewals_in_flight;
        last_renewal_failed = !ttl_ms.ok();
        if (ttl_ms.ok()) {
          lease_ttl_ns = *ttl_ms * kNsPerMs;
          ExtendDeadline(request_start_ns);
        } else if (ttl_ms.status().code() == absl::StatusCode::kNotFound) {
          return LeaseLost(absl::StrCat("the store no longer knows lease ", renewed.value));
        } else if (renew_timer != 0) {
          // UNAVAILABLE: try again sooner; the fence timer guards the rest.
          ScheduleRenew();
        }
      });
    }
    ScheduleRenew();
  }

  void LeaseLost(const std::string& detail) {
    if (state != State::kActive && state != State::kJoining) return;
    Decide(HaDecision::Kind::kLeaseLost, "", "", 0, absl::StrCat("lease lost: ", detail));
    Fence("lease lost");
  }

  void Fence(const std::string& reason) {
    if (state != State::kActive && state != State::kJoining) return;
    state = State::kFenced;
    ++incarnation;
    coordinator = false;
    old_lease = lease;
    lease = {};
    deadline_ns = 0;
    renewals_in_flight = 0;
    CancelTimers();
    watch.reset();
    pass_scheduled = pass_running = pass_again = false;
    dead_owner_seen_ns.clear();
    Decide(HaDecision::Kind::kSelfFence, "", "", 0,
           absl::StrCat("self-fence: ", reason, "; forcing off every VM"));
    ForceOffEverything("self-fence", [this] { Join(); });
  }

  // ---------------------------------------------------------------- passes

  void StartWatch() {
    watch = store->Watch(kRootPrefix, 0, [this](const scribe::WatchEvent& e) {
      if (e.type == scribe::WatchEvent::Type::kDelete && e.key == NodeKey(options.node)) {
        // Our lease ended early (revoked) or someone deleted our key: either way the
        // cluster now treats our VMs as orphans. Fence now, not at the next renewal.
        return LeaseLost("this node's key was deleted from the store");
      }
      if (e.type == scribe::WatchEvent::Type::kCompacted) {
        // The watch has ended; the rescan timer keeps passes going until it is back.
        const uint64_t inc = incarnation;
        loop->Post([this, alive = alive, inc] {
          if (*alive && inc == incarnation && state == State::kActive) StartWatch();
        });
      }
      SchedulePass();
    });
  }

  void ScheduleRescan() {
    Cancel(rescan_timer);
    rescan_timer = After(options.rescan_interval_ms * kNsPerMs, [this] {
      rescan_timer = 0;
      SchedulePass();
      ScheduleRescan();
    });
  }

  void SchedulePass() {
    if (state != State::kActive || pass_scheduled) return;
    pass_scheduled = true;
    const uint64_t inc = incarnation;
    loop->Post([this, alive = alive, inc] {
      if (!*alive || inc != incarnation) return;
      pass_scheduled = false;
      RunPass();
    });
  }

  void RunPass() {
    if (state != State::kActive) return;
    if (pass_running) {
      pass_again = true;
      return;
    }
    pass_running = true;
    const uint64_t inc = incarnation;
    store->List(kRootPrefix, [this, alive = alive, inc](absl::StatusOr<scribe::ListResult> r) {
      if (!*alive || inc != incarnation) return;
      if (!r.ok()) return PassDone();
      auto snap = std::make_shared<const Snapshot>(DecodeSnapshot(*r));
      hv->List([this, alive, inc, snap](absl::StatusOr<std::vector<VmStatus>> vms) {
        if (!*alive || inc != incarnation) return;
        if (vms.ok()) ReconcileLocal(*snap, *vms);
        Coordinate(snap, [this, alive, inc] {
          if (*alive && inc == incarnation) PassDone();
        });
      });
    });
  }

  void PassDone() {
    pass_running = false;
    if (pass_again) {
      pass_again = false;
      SchedulePass();
    }
  }

  // ---------------------------------------------------------------- owner side

  bool OwnedByMe(const VmInfo& vm) const {
    return vm.owner == options.node && vm.owner_lease == lease.value;
  }

  void ReconcileLocal(const Snapshot& snap, const std::vector<VmStatus>& on_hv_list) {
    if (!CanAct()) return;
    const int64_t now = loop->NowNanos();
    std::map<std::string, VmStatus> on_hv;
    for (const VmStatus& s : on_hv_list) on_hv[s.name] = s;
    std::set<std::string> owned;
    for (const auto& [name, vm] : snap.vms) {
      if (!OwnedByMe(vm)) continue;
      owned.insert(name);
      LocalVm& l = local[name];
      if (l.ops > 0) continue;
      auto it = on_hv.find(name);
      const bool defined = it != on_hv.end();
      const bool running = defined && it->second.state == VmPowerState::kRunning;
      if (vm.desired == DesiredState::kRunning) {
        l.shutdown_sent_ns = -1;
        if (running && it->second.epoch == vm.epoch) {
          if (!vm.condition.empty()) SetCondition(vm, "");
          continue;
        }
        if (running) {
          ForceOffVm(name, absl::StrCat("running with epoch ", it->second.epoch,
                                        " but its record says ", vm.epoch));
          continue;
        }
        if (now >= l.next_start_ns) StartLocal(vm);
      } else {
        if (running && vm.force_off) {
          ForceOffVm(name, "force off requested");
          continue;
        }
        if (running) {
          if (l.shutdown_sent_ns < 0) {
            SendShutdown(name);
          } else if (now - l.shutdown_sent_ns >= options.shutdown_timeout_ms * kNsPerMs) {
            ForceOffVm(name, absl::StrCat("ACPI shutdown not done after ",
                                          FormatSeconds(now - l.shutdown_sent_ns)));
          }
          continue;
        }
        l.shutdown_sent_ns = -1;
        Release(vm, defined);
      }
    }
    for (const auto& [name, status] : on_hv) {
      if (owned.contains(name) || local[name].ops > 0) continue;
      if (status.state == VmPowerState::kRunning) {
        auto rec = snap.vms.find(name);
        ForceOffVm(name, rec == snap.vms.end()
                             ? std::string("it has no record")
                             : absl::StrCat("not owned by this node (owner ",
                                            rec->second.owner.empty() ? "none" : rec->second.owner,
                                            ")"));
      } else {
        UndefineQuietly(name);
      }
    }
    for (auto it = local.begin(); it != local.end();) {
      const bool keep = it->second.ops > 0 || owned.contains(it->first) || on_hv.contains(it->first);
      it = keep ? std::next(it) : local.erase(it);
    }
  }

  void StartLocal(const VmInfo& vm) {
    const std::string name = vm.spec.name;
    const uint64_t epoch = vm.epoch;
    VmLaunch launch = MakeNbdLaunch(vm.spec, vm.uuid, vm.epoch, options.launch);
    ++local[name].ops;
    const uint64_t inc = incarnation;
    auto start = [this, alive = alive, inc, name, epoch, vm, launch] {
      hv->Start(launch, [this, alive, inc, name, epoch, vm](absl::Status s) {
        if (!*alive) return;
        --local[name].ops;
        OnStarted(vm, inc, s);
      });
    };
    if (!options.prepare_start) return start();
    options.prepare_start(launch, [this, alive = alive, inc, name, vm, start](absl::Status s) {
      if (!*alive) return;
      if (inc != incarnation || !CanAct()) {
        --local[name].ops;
        return;
      }
      if (!s.ok()) {
        --local[name].ops;
        return OnStarted(vm, inc, absl::Status(s.code(), absl::StrCat("prepare_start: ", s.message())));
      }
      start();
    });
  }

  void OnStarted(const VmInfo& vm, uint64_t inc, const absl::Status& s) {
    const std::string& name = vm.spec.name;
    if (s.ok()) {
      Decide(HaDecision::Kind::kPowerOn, name, options.node, vm.epoch,
             absl::StrCat("power on vm ", name, " (epoch ", vm.epoch, ")"));
      // The fence forces off everything with an operation in flight, after it; this
      // only covers a hypervisor that would not order them.
      if (inc != incarnation || !CanAct()) ForceOffVm(name, "started after this node lost its lease");
      return;
    }
    local[name].next_start_ns = loop->NowNanos() + options.start_retry_ms * kNsPerMs;
    Decide(HaDecision::Kind::kPowerOnFailed, name, options.node, vm.epoch,
           absl::StrCat("power on vm ", name, " (epoch ", vm.epoch, ") failed: ", s.message(),
                        "; retry in ", FormatSeconds(options.start_retry_ms * kNsPerMs)));
    if (inc == incarnation && CanAct()) {
      SetCondition(vm, absl::StrCat("start failed on ", options.node, ": ", s.message()));
    }
  }

  void ForceOffVm(const std::string& name, const std::string& reason) {
    ++local[name].ops;
    Decide(HaDecision::Kind::kForceOff, name, "", 0, absl::StrCat("force off vm ", name, ": ", reason));
    hv->ForceOff(name, [this, alive = alive, name](absl::Status) {
      if (!*alive) return;
      --local[name].ops;
      SchedulePass();  // e.g. release it now rather than at the next rescan
    });
  }

  void SendShutdown(const std::string& name) {
    LocalVm& l = local[name];
    ++l.ops;
    l.shutdown_sent_ns = loop->NowNanos();
    Decide(HaDecision::Kind::kShutdown, name, "", 0,
           absl::StrCat("shutdown vm ", name, " (ACPI): stop requested"));
    hv->Shutdown(name, [this, alive = alive, name](absl::Status) {
      if (*alive) --local[name].ops;
    });
    // Look again when the guest's time is up, not at the next rescan after it.
    const uint64_t inc = incarnation;
    After(options.shutdown_timeout_ms * kNsPerMs, [this, inc] {
      if (inc == incarnation) SchedulePass();
    });
  }

  void UndefineQuietly(const std::string& name) {
    ++local[name].ops;
    hv->Undefine(name, [this, alive = alive, name](absl::Status) {
      if (*alive) --local[name].ops;
    });
  }

  // The VM is off and meant to stay off: clear the owner so it holds no resources.
  void Release(const VmInfo& vm, bool defined) {
    const std::string name = vm.spec.name;
    VmInfo next = vm;
    next.owner.clear();
    next.owner_lease = 0;
    next.condition.clear();
    next.force_off = false;
    ++local[name].ops;
    store->CompareAndSwap(
        VmKey(name), vm.revision, EncodeVm(next), {},
        [this, alive = alive, name, epoch = vm.epoch, defined](absl::StatusOr<scribe::CasResult> r) {
          if (!*alive) return;
          --local[name].ops;
          if (!r.ok() || !r->succeeded) return;  // changed meanwhile: the next pass decides
          Decide(HaDecision::Kind::kRelease, name, "", epoch,
                 absl::StrCat("release vm ", name, " (epoch ", epoch, "): stopped"));
          if (defined) UndefineQuietly(name);
        });
  }

  void SetCondition(const VmInfo& vm, const std::string& condition) {
    if (vm.condition == condition) return;
    VmInfo next = vm;
    next.condition = condition;
    store->CompareAndSwap(VmKey(vm.spec.name), vm.revision, EncodeVm(next), {},
                          [](absl::StatusOr<scribe::CasResult>) {});
  }

  // ---------------------------------------------------------------- coordinator

  void Coordinate(std::shared_ptr<const Snapshot> snap, std::function<void()> done) {
    if (!CanAct()) return done();
    if (!snap->coordinator) {
      const uint64_t inc = incarnation;
      store->CompareAndSwap(
          kCoordinatorKey, 0, options.node, lease,
          [this, alive = alive, inc, done](absl::StatusOr<scribe::CasResult> r) {
            if (!*alive || inc != incarnation) return;
            if (r.ok() && r->succeeded) {
              coordinator = true;
              Decide(HaDecision::Kind::kCoordinator, "", "", 0, "became coordinator");
              pass_again = true;  // decide on a snapshot that shows us as coordinator
            }
            done();
          });
      return;
    }
    const bool me = snap->coordinator->value == options.node && snap->coordinator->lease == lease;
    if (me && !coordinator) Decide(HaDecision::Kind::kCoordinator, "", "", 0, "became coordinator");
    coordinator = me;
    if (!me) return done();

    auto c = std::make_shared<Coordination>();
    c->snap = snap;
    c->incarnation = incarnation;
    c->done = std::move(done);
    for (const auto& [name, node] : snap->nodes) {
      c->nodes.push_back(PlacementNode{name, node.record.ram_bytes, node.record.cpus,
                                       /*alive=*/true, node.record.maintenance});
    }
    std::vector<const VmInfo*> work;
    const int64_t now = loop->NowNanos();
    std::set<std::pair<std::string, int64_t>> dead_now;
    for (const auto& [name, vm] : snap->vms) {
      if (snap->OwnerAlive(vm)) {
        c->placed.push_back(PlacedVm{name, vm.owner, vm.spec.ram_bytes, vm.spec.vcpus});
        continue;
      }
      if (vm.owner.empty()) {
        if (vm.desired == DesiredState::kRunning) work.push_back(&vm);
        continue;
      }
      // A dead owner: wait out the grace from when this coordinator first saw it dead.
      const std::pair<std::string, int64_t> owner{vm.owner, vm.owner_lease};
      dead_now.insert(owner);
      const int64_t seen = dead_owner_seen_ns.emplace(owner, now).first->second;
      if (now - seen >= options.restart_grace_ms * kNsPerMs) work.push_back(&vm);
    }
    for (auto it = dead_owner_seen_ns.begin(); it != dead_owner_seen_ns.end();) {
      it = dead_now.contains(it->first) ? std::next(it) : dead_owner_seen_ns.erase(it);
    }
    // Largest first packs best; the name breaks ties so every coordinator agrees.
    std::sort(work.begin(), work.end(), [](const VmInfo* a, const VmInfo* b) {
      if (a->spec.ram_bytes != b->spec.ram_bytes) return a->spec.ram_bytes > b->spec.ram_bytes;
      return a->spec.name < b->spec.name;
    });
    for (const VmInfo* vm : work) c->work.push_back(vm->spec.name);
    CoordinateStep(c);
  }

  // Why `vm` needs the coordinator.
  static std::string Why(const Snapshot& snap, const VmInfo& vm) {
    if (vm.owner.empty()) return vm.condition.empty() ? "not placed yet" : "waiting for capacity";
    if (snap.nodes.contains(vm.owner)) return absl::StrCat(vm.owner, " rejoined with a new lease");
    return absl::StrCat(vm.owner, " lease expired");
  }

  void CoordinateStep(std::shared_ptr<Coordination> c) {
    if (c->next == c->work.size() && !c->conditions_phase && !c->no_room.empty()) {
      c->work = std::move(c->no_room);
      c->no_room.clear();
      c->next = 0;
      c->conditions_phase = true;
    }
    if (c->incarnation != incarnation || !coordinator || !CanAct() || c->next == c->work.size()) {
      return c->done();
    }
    const VmInfo& vm = c->snap->vms.at(c->work[c->next++]);
    const std::string name = vm.spec.name;
    const std::string why = Why(*c->snap, vm);
    VmInfo next = vm;
    next.owner.clear();
    next.owner_lease = 0;
    HaDecision::Kind kind;
    std::string message;
    std::string target;
    if (vm.desired == DesiredState::kStopped) {
      next.condition.clear();
      next.force_off = false;
      kind = HaDecision::Kind::kRelease;
      message = absl::StrCat("release vm ", name, " (epoch ", vm.epoch, "): ", why, ", desired stopped");
    } else {
      absl::StatusOr<PlacementChoice> choice =
          PlaceVm(VmDemand{name, vm.spec.ram_bytes, vm.spec.vcpus}, c->nodes, c->placed,
                  options.placement);
      if (choice.ok()) {
        target = choice->node;
        next.owner = target;
        next.owner_lease = c->snap->nodes.at(target).lease;
        next.epoch = vm.epoch + 1;
        next.condition.clear();
        kind = vm.owner.empty() ? HaDecision::Kind::kStart : HaDecision::Kind::kRestart;
        message = absl::StrCat(vm.owner.empty() ? "start" : "restart", " vm ", name, " on ", target,
                               " (epoch ", next.epoch, "): ", why, "; most free RAM ",
                               Mib(choice->ram_free_bytes), " MiB");
      } else if (!c->conditions_phase) {
        c->no_room.push_back(name);
        return CoordinateStep(c);
      } else {
        next.condition = std::string(choice.status().message());
        if (vm.owner.empty() && vm.condition == next.condition) {
          return CoordinateStep(c);  // already recorded: nothing new to say
        }
        kind = HaDecision::Kind::kNoCapacity;
        message = absl::StrCat("vm ", name, " stays down (", why, "): ", next.condition);
      }
    }
    store->CompareAndSwap(
        VmKey(name), vm.revision, EncodeVm(next), {},
        [this, alive = alive, c, next, kind, message, target](absl::StatusOr<scribe::CasResult> r) {
          if (!*alive) return;
          // A decision that landed is logged even if this node fenced meanwhile: it
          // was made in time and it holds (the CAS is what makes it safe).
          if (r.ok() && r->succeeded) {
            if (!target.empty()) {
              c->placed.push_back(PlacedVm{next.spec.name, target, next.spec.ram_bytes, next.spec.vcpus});
            }
            Decide(kind, next.spec.name, target, target.empty() ? 0 : next.epoch, message);
          }
          if (c->incarnation != incarnation) return c->done();
          // A lost CAS means the record moved on (an API call, another coordinator):
          // the next pass sees it.
          CoordinateStep(c);
        });
  }

  // ---------------------------------------------------------------- cluster API

  void ReadSnapshot(std::function<void(absl::StatusOr<std::shared_ptr<const Snapshot>>)> done) {
    store->List(kRootPrefix, [alive = alive, done = std::move(done)](absl::StatusOr<scribe::ListResult> r) {
      if (!*alive) return;
      if (!r.ok()) return done(r.status());
      done(std::make_shared<const Snapshot>(DecodeSnapshot(*r)));
    });
  }

  static std::vector<PlacementNode> PlacementNodes(const Snapshot& snap) {
    std::vector<PlacementNode> nodes;
    for (const auto& [name, node] : snap.nodes) {
      nodes.push_back(PlacementNode{name, node.record.ram_bytes, node.record.cpus, true,
                                    node.record.maintenance});
    }
    return nodes;
  }

  static std::vector<PlacedVm> Placed(const Snapshot& snap) {
    std::vector<PlacedVm> placed;
    for (const auto& [name, vm] : snap.vms) {
      if (snap.OwnerAlive(vm)) placed.push_back(PlacedVm{name, vm.owner, vm.spec.ram_bytes, vm.spec.vcpus});
    }
    return placed;
  }

  std::string NewUuid() {
    const uint64_t hi = random->Next64();
    const uint64_t lo = random->Next64();
    // RFC 4122 version 4 (random), variant 10xx.
    const uint64_t h = (hi & 0xffffffffffff0fffull) | 0x0000000000004000ull;
    const uint64_t l = (lo & 0x3fffffffffffffffull) | 0x8000000000000000ull;
    return absl::StrFormat("%08x-%04x-%04x-%04x-%012x", h >> 32, (h >> 16) & 0xffff, h & 0xffff,
                           l >> 48, l & 0xffffffffffffull);
  }

  // Gives every NIC without a MAC one that no VM in `snap` (nor this spec) uses.
  void AssignMacs(VmSpec& spec, const Snapshot& snap) {
    std::set<std::string> used;
    for (const auto& [name, vm] : snap.vms) {
      for (const VmNic& nic : vm.spec.nics) {
        if (nic.mac) used.insert(*nic.mac);
      }
    }
    for (const VmNic& nic : spec.nics) {
      if (nic.mac) used.insert(*nic.mac);
    }
    for (VmNic& nic : spec.nics) {
      if (nic.mac) continue;
      std::string mac;
      do {
        const uint64_t r = random->Uniform(1u << 24);
        mac = absl::StrFormat("52:54:00:%02x:%02x:%02x", (r >> 16) & 0xff, (r >> 8) & 0xff, r & 0xff);
      } while (used.contains(mac));
      used.insert(mac);
      nic.mac = mac;
    }
  }

  void CreateVm(VmSpec spec, bool start, Done<VmInfo> done) {
    absl::Status valid = ValidateVmSpec(spec);
    if (!valid.ok()) return ReplyLater<absl::StatusOr<VmInfo>>(std::move(done), valid);
    ReadSnapshot([this, spec = std::move(spec), start,
                  done](absl::StatusOr<std::shared_ptr<const Snapshot>> snap) mutable {
      if (!snap.ok()) return done(snap.status());
      const Snapshot& s = **snap;
      if (s.vms.contains(spec.name)) {
        return done(absl::AlreadyExistsError(absl::StrCat("vm ", spec.name, " already exists")));
      }
      VmInfo vm;
      AssignMacs(spec, s);
      vm.spec = std::move(spec);
      vm.uuid = NewUuid();
      std::string message = absl::StrCat("create vm ", vm.spec.name, " (stopped)");
      if (start) {
        absl::StatusOr<PlacementChoice> choice =
            PlaceVm(VmDemand{vm.spec.name, vm.spec.ram_bytes, vm.spec.vcpus}, PlacementNodes(s),
                    Placed(s), options.placement);
        if (!choice.ok()) return done(choice.status());
        vm.desired = DesiredState::kRunning;
        vm.owner = choice->node;
        vm.owner_lease = s.nodes.at(choice->node).lease;
        vm.epoch = 1;
        message = absl::StrCat("create vm ", vm.spec.name, " on ", vm.owner, " (epoch 1): most free RAM ",
                               Mib(choice->ram_free_bytes), " MiB");
      }
      store->CompareAndSwap(
          VmKey(vm.spec.name), 0, EncodeVm(vm), {},
          [this, alive = alive, vm, message, done](absl::StatusOr<scribe::CasResult> r) mutable {
            if (!*alive) return;
            if (!r.ok()) return done(r.status());
            if (!r->succeeded) {
              return done(absl::AlreadyExistsError(absl::StrCat("vm ", vm.spec.name, " already exists")));
            }
            vm.revision = r->revision;
            Decide(HaDecision::Kind::kCreate, vm.spec.name, vm.owner, vm.epoch, message);
            done(vm);
          });
    });
  }

  // Reads the VM, lets `change` edit it (or answer without writing), CAS-writes it, and
  // retries from the read when another writer got there first.
  using Change = std::function<absl::Status(const Snapshot& snap, VmInfo& vm, bool* write,
                                            HaDecision* decision)>;
  void Mutate(const std::string& name, Change change, StatusDone done, int attempt = 0) {
    ReadSnapshot([this, name, change, done, attempt](absl::StatusOr<std::shared_ptr<const Snapshot>> snap) {
      if (!snap.ok()) return done(snap.status());
      auto it = (*snap)->vms.find(name);
      if (it == (*snap)->vms.end()) return done(absl::NotFoundError(absl::StrCat("vm ", name, " not found")));
      VmInfo vm = it->second;
      bool write = true;
      HaDecision decision;
      absl::Status st = change(**snap, vm, &write, &decision);
      if (!st.ok() || !write) return done(st);
      store->CompareAndSwap(VmKey(name), it->second.revision, EncodeVm(vm), {},
                            [this, alive = alive, name, change, done, attempt,
                             decision](absl::StatusOr<scribe::CasResult> r) {
                              if (!*alive) return;
                              if (!r.ok()) return done(r.status());
                              if (!r->succeeded) {
                                if (attempt + 1 < options.cas_attempts_max) {
                                  return Mutate(name, change, done, attempt + 1);
                                }
                                return done(absl::AbortedError(absl::StrCat(
                                    "vm ", name, " kept changing under the request; try again")));
                              }
                              Decide(decision.kind, decision.vm, decision.target, decision.epoch,
                                     decision.message);
                              done(absl::OkStatus());
                            });
    });
  }

  void StartVm(const std::string& name, StatusDone done) {
    Mutate(name,
           [this](const Snapshot& snap, VmInfo& vm, bool* write, HaDecision* d) -> absl::Status {
             if (vm.desired == DesiredState::kRunning) {
               *write = false;
               return absl::OkStatus();
             }
             vm.desired = DesiredState::kRunning;
             vm.condition.clear();
             vm.force_off = false;
             d->kind = HaDecision::Kind::kStart;
             d->vm = vm.spec.name;
             if (!vm.owner.empty()) {
               // Still being stopped by its owner (or its owner died and the
               // coordinator will restart it): it stays where it is.
               d->message = absl::StrCat("start vm ", vm.spec.name, ": requested while owned by ",
                                         vm.owner, " (epoch ", vm.epoch, "), stays there");
               return absl::OkStatus();
             }
             absl::StatusOr<PlacementChoice> choice =
                 PlaceVm(VmDemand{vm.spec.name, vm.spec.ram_bytes, vm.spec.vcpus}, PlacementNodes(snap),
                         Placed(snap), options.placement);
             if (!choice.ok()) return choice.status();
             vm.owner = choice->node;
             vm.owner_lease = snap.nodes.at(choice->node).lease;
             ++vm.epoch;
             d->target = vm.owner;
             d->epoch = vm.epoch;
             d->message = absl::StrCat("start vm ", vm.spec.name, " on ", vm.owner, " (epoch ", vm.epoch,
                                       "): requested; most free RAM ", Mib(choice->ram_free_bytes), " MiB");
             return absl::OkStatus();
           },
           std::move(done));
  }

  void StopVm(const std::string& name, StatusDone done) {
    Mutate(name,
           [](const Snapshot&, VmInfo& vm, bool* write, HaDecision* d) -> absl::Status {
             if (vm.desired == DesiredState::kStopped) {
               *write = false;
               return absl::OkStatus();
             }
             vm.desired = DesiredState::kStopped;
             vm.condition.clear();
             d->kind = HaDecision::Kind::kStop;
             d->vm = vm.spec.name;
             d->message = vm.owner.empty()
                              ? absl::StrCat("stop vm ", vm.spec.name, ": requested (it was not placed)")
                              : absl::StrCat("stop vm ", vm.spec.name, " (on ", vm.owner, "): requested");
             return absl::OkStatus();
           },
           std::move(done));
  }

  void RequestForceOff(const std::string& name, StatusDone done) {
    Mutate(name,
           [](const Snapshot&, VmInfo& vm, bool* write, HaDecision* d) -> absl::Status {
             if (vm.desired == DesiredState::kStopped && (vm.owner.empty() || vm.force_off)) {
               *write = false;
               return absl::OkStatus();
             }
             vm.desired = DesiredState::kStopped;
             vm.condition.clear();
             d->kind = HaDecision::Kind::kStop;
             d->vm = vm.spec.name;
             if (vm.owner.empty()) {
               d->message = absl::StrCat("stop vm ", vm.spec.name, ": requested (it was not placed)");
               return absl::OkStatus();
             }
             vm.force_off = true;
             d->message = absl::StrCat("stop vm ", vm.spec.name, " (on ", vm.owner, "): force off requested");
             return absl::OkStatus();
           },
           std::move(done));
  }

  void UpdateVmSpec(const std::string& name, VmSpec spec, StatusDone done) {
    if (spec.name != name) {
      return ReplyLater<absl::Status>(
          std::move(done), absl::InvalidArgumentError(absl::StrCat(
                               "the spec names vm \"", spec.name, "\", not ", name, " (a VM is not renamed)")));
    }
    absl::Status valid = ValidateVmSpec(spec);
    if (!valid.ok()) return ReplyLater<absl::Status>(std::move(done), valid);
    Mutate(name,
           [this, spec](const Snapshot& snap, VmInfo& vm, bool*, HaDecision* d) -> absl::Status {
             if (vm.desired == DesiredState::kRunning) {
               return absl::FailedPreconditionError(
                   absl::StrCat("vm ", vm.spec.name, " is meant to run; stop it first"));
             }
             if (!vm.owner.empty()) {
               return absl::FailedPreconditionError(
                   absl::StrCat("vm ", vm.spec.name, " is still being stopped by ", vm.owner));
             }
             vm.spec = spec;
             AssignMacs(vm.spec, snap);
             d->kind = HaDecision::Kind::kUpdate;
             d->vm = vm.spec.name;
             d->message = absl::StrCat("update vm ", vm.spec.name, ": spec replaced");
             return absl::OkStatus();
           },
           std::move(done));
  }

  void DeleteVm(const std::string& name, StatusDone done) {
    ReadSnapshot([this, name, done](absl::StatusOr<std::shared_ptr<const Snapshot>> snap) {
      if (!snap.ok()) return done(snap.status());
      auto it = (*snap)->vms.find(name);
      if (it == (*snap)->vms.end()) return done(absl::NotFoundError(absl::StrCat("vm ", name, " not found")));
      const VmInfo& vm = it->second;
      if (vm.desired == DesiredState::kRunning) {
        return done(absl::FailedPreconditionError(absl::StrCat("vm ", name, " is meant to run; stop it first")));
      }
      if (!vm.owner.empty()) {
        return done(absl::FailedPreconditionError(
            absl::StrCat("vm ", name, " is still being stopped by ", vm.owner)));
      }
      // Not a compare-and-swap (the store has no conditional delete): a StartVm racing
      // with this delete may be undone, which is safe (its owner finds no record and
      // forces the VM off).
      store->Delete(VmKey(name), [this, alive = alive, name, done](absl::StatusOr<bool> r) {
        if (!*alive) return;
        if (!r.ok()) return done(r.status());
        if (!*r) return done(absl::NotFoundError(absl::StrCat("vm ", name, " not found")));
        Decide(HaDecision::Kind::kDelete, name, "", 0, absl::StrCat("delete vm ", name));
        done(absl::OkStatus());
      });
    });
  }

  void GetVm(const std::string& name, Done<VmInfo> done) {
    ReadSnapshot([name, done](absl::StatusOr<std::shared_ptr<const Snapshot>> snap) {
      if (!snap.ok()) return done(snap.status());
      auto it = (*snap)->vms.find(name);
      if (it == (*snap)->vms.end()) return done(absl::NotFoundError(absl::StrCat("vm ", name, " not found")));
      done(it->second);
    });
  }

  void ListVms(Done<std::vector<VmInfo>> done) {
    ReadSnapshot([done](absl::StatusOr<std::shared_ptr<const Snapshot>> snap) {
      if (!snap.ok()) return done(snap.status());
      std::vector<VmInfo> vms;
      for (const auto& [name, vm] : (*snap)->vms) vms.push_back(vm);
      done(vms);
    });
  }

  void ListNodes(Done<std::vector<NodeInfo>> done) {
    ReadSnapshot([done](absl::StatusOr<std::shared_ptr<const Snapshot>> snap) {
      if (!snap.ok()) return done(snap.status());
      std::map<std::string, NodeInfo> nodes;
      for (const auto& [name, node] : (*snap)->nodes) {
        NodeInfo& info = nodes[name];
        info.name = name;
        info.ram_bytes = node.record.ram_bytes;
        info.cpus = node.record.cpus;
        info.maintenance = node.record.maintenance;
        info.lease = node.lease;
      }
      for (const PlacedVm& vm : Placed(**snap)) {
        NodeInfo& info = nodes.at(vm.node);
        info.ram_used_bytes += vm.ram_bytes;
        info.vcpus_used += vm.vcpus;
        ++info.vms;
      }
      std::vector<NodeInfo> list;
      for (auto& [name, info] : nodes) list.push_back(std::move(info));
      done(list);
    });
  }

  void GetConditions(Done<HaConditions> done) {
    ReadSnapshot([this, done](absl::StatusOr<std::shared_ptr<const Snapshot>> snap) {
      if (!snap.ok()) return done(snap.status());
      HaConditions conditions;
      conditions.failover = CheckNMinusOne(PlacementNodes(**snap), Placed(**snap), options.placement);
      for (const auto& [name, vm] : (*snap)->vms) {
        if (!vm.condition.empty()) conditions.vms.push_back(absl::StrCat(name, ": ", vm.condition));
      }
      for (const std::string& bad : (*snap)->unreadable) {
        conditions.vms.push_back(absl::StrCat("unreadable record ", bad));
      }
      done(conditions);
    });
  }

  void SetMaintenance(bool on, StatusDone done) {
    if (state != State::kActive) {
      return ReplyLater<absl::Status>(std::move(done), absl::FailedPreconditionError(absl::StrCat(
                                                           "node ", options.node, " is ", HaStateName(state),
                                                           ", not active")));
    }
    NodeRecord record{options.ram_bytes, options.cpus, on};
    const uint64_t inc = incarnation;
    store->Put(NodeKey(options.node), EncodeNode(record), lease,
               [this, alive = alive, inc, on, done](absl::StatusOr<int64_t> r) {
                 if (!*alive) return;
                 if (!r.ok()) return done(r.status());
                 // A rejoin publishes the flag again.
                 if (inc == incarnation) maintenance = on;
                 done(absl::OkStatus());
               });
  }

  // ---------------------------------------------------------------- state

  scribe::Loop* loop;
  scribe::Random* random;
  scribe::MetaStore* store;
  Hypervisor* hv;
  HaOptions options;
  int64_t renew_interval_ns = 0;
  int64_t margin_ns = 0;

  State state = State::kStarting;
  uint64_t incarnation = 0;
  scribe::LeaseId lease;
  scribe::LeaseId old_lease;  // the lease before the last fence, revoked on rejoin
  int64_t lease_ttl_ns = 0;
  int64_t deadline_ns = 0;
  int64_t last_renewal_start_ns = 0;
  int renewals_in_flight = 0;
  bool last_renewal_failed = false;
  bool coordinator = false;
  bool maintenance = false;

  scribe::Loop::TimerId fence_timer = 0;
  scribe::Loop::TimerId renew_timer = 0;
  scribe::Loop::TimerId rescan_timer = 0;
  scribe::Loop::TimerId retry_timer = 0;
  std::unique_ptr<scribe::WatchHandle> watch;
  bool pass_scheduled = false;
  bool pass_running = false;
  bool pass_again = false;

  std::map<std::string, LocalVm> local;
  // Coordinator: when it first saw each dead (owner, lease) (HaOptions::restart_grace_ms).
  std::map<std::pair<std::string, int64_t>, int64_t> dead_owner_seen_ns;
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);
};

absl::StatusOr<std::unique_ptr<HaManager>> HaManager::Create(scribe::Loop* loop, scribe::Random* random,
                                                             scribe::MetaStore* store,
                                                             Hypervisor* hypervisor, HaOptions options) {
  absl::Status valid = ValidateHaOptions(options);
  if (!valid.ok()) return valid;
  auto impl = std::make_unique<Impl>(loop, random, store, hypervisor, std::move(options));
  Impl* raw = impl.get();
  std::unique_ptr<HaManager> manager(new HaManager(std::move(impl)));
  raw->Begin();
  return manager;
}

HaManager::HaManager(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HaManager::~HaManager() = default;

void HaManager::CreateVm(VmSpec spec, bool start, Done<VmInfo> done) {
  impl_->CreateVm(std::move(spec), start, std::move(done));
}
void HaManager::StartVm(const std::string& name, StatusDone done) { impl_->StartVm(name, std::move(done)); }
void HaManager::StopVm(const std::string& name, StatusDone done) { impl_->StopVm(name, std::move(done)); }
void HaManager::DeleteVm(const std::string& name, StatusDone done) { impl_->DeleteVm(name, std::move(done)); }
void HaManager::ForceOffVm(const std::string& name, StatusDone done) {
  impl_->RequestForceOff(name, std::move(done));
}
void HaManager::UpdateVmSpec(const std::string& name, VmSpec spec, StatusDone done) {
  impl_->UpdateVmSpec(name, std::move(spec), std::move(done));
}
void HaManager::GetVm(const std::string& name, Done<VmInfo> done) { impl_->GetVm(name, std::move(done)); }
void HaManager::ListVms(Done<std::vector<VmInfo>> done) { impl_->ListVms(std::move(done)); }
void HaManager::ListNodes(Done<std::vector<NodeInfo>> done) { impl_->ListNodes(std::move(done)); }
void HaManager::GetConditions(Done<HaConditions> done) { impl_->GetConditions(std::move(done)); }
void HaManager::SetMaintenance(bool maintenance, StatusDone done) {
  impl_->SetMaintenance(maintenance, std::move(done));
}

HaManager::State HaManager::state() const { return impl_->state; }
bool HaManager::is_coordinator() const { return impl_->coordinator && impl_->CanAct(); }
int64_t HaManager::fence_deadline_ns() const { return impl_->deadline_ns; }
scribe::LeaseId HaManager::lease() const { return impl_->lease; }
const std::string& HaManager::node() const { return impl_->options.node; }

}  // namespace hypercore
