// The HA manager: one per node, over the cluster's MetaStore (etcd), the node's
// Hypervisor and its Loop. Together the managers keep every VM whose desired state is
// "running" running on exactly one node, restart the VMs of a failed node on the
// survivors, and never let a VM run on two nodes at once.
//
// Keys (values are JSON, readable with etcdctl):
//   /hc/nodes/<node>   the node's resources; put with the node's liveness lease, so it
//                      disappears when the node stops renewing (crash, partition).
//   /hc/vms/<vm>       the VM record: spec, uuid, desired state, owner node, the owner's
//                      lease id, epoch, condition. Every change is a compare-and-swap on
//                      the record's mod_revision.
//   /hc/coordinator    the node that decides restarts; put with its liveness lease.
//
// Ownership. A node runs exactly the VMs whose record names it *and its current lease*
// as owner with desired state running; it stops and releases (owner cleared) those
// whose desired state is stopped, and forces off anything else it finds running. Every
// time a record names a new owner its epoch grows by one: the epoch is the storage
// epoch the VM's writes carry in that incarnation (VmLaunch::epoch), so scribed can
// refuse an older incarnation's writes.
//
// Liveness and self-fencing. The node renews its lease every renew interval. Its local
// deadline is (start time of the last *successful* renewal request) + TTL - margin:
// etcd restarts the TTL when it applies the renewal, which is after the request
// started, so the lease cannot expire before start + TTL. At the deadline the node
// forces off every VM it runs and stops acting; it rejoins only with a fresh lease,
// after every VM is off, and starts nothing until a record names it with that lease.
// It also fences at once when it sees its own node key deleted (a lease ended early).
//
// Recovery. One node at a time is coordinator (CAS on /hc/coordinator). When a VM's
// owner is dead — no node key, or a node key with a different lease (the node rejoined)
// — the coordinator places the VM (placement.h: most free RAM first; after
// restart_grace_ms, 0 by default) and CAS-writes the new owner, its lease and
// epoch + 1; a VM that fits nowhere gets a condition and
// waits (owner cleared) until capacity appears. Never twice: the old owner's VMs were
// off by its deadline, which is before its lease could expire at etcd, which is before
// the coordinator could see its key gone, which is before the new owner saw the record
// naming it. A stale coordinator cannot double-assign: each decision is a CAS on the
// revision it read, and an owner once dead stays dead (a lease never comes back).
// docs/ARCHITECTURE.md ("HyperCore HA") has the full argument.
//
// Every decision and action is reported to HaOptions::on_decision as an HaDecision
// whose ToString() is one reviewable line, e.g.
//   t=12.000s node2: restart vm web1 on node3 (epoch 4): node1 lease expired; most free RAM 3072 MiB
//
// Threading and ownership: single-threaded on `loop`; every callback runs there. The
// loop, random, store and hypervisor must outlive the manager. Destroying the manager
// stops it acting (timers cancelled, callbacks dropped) but leaves VMs running, as a
// crashed daemon would; its lease then expires and the survivors take over.
#ifndef HYPERCORE_HA_H_
#define HYPERCORE_HA_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hypercore/hypervisor.h"
#include "hypercore/placement.h"
#include "hypercore/vm_spec.h"
#include "scribe/env.h"
#include "scribe/meta_store.h"

namespace hypercore {

enum class DesiredState { kStopped, kRunning };
const char* DesiredStateName(DesiredState state);

// A VM record as stored under /hc/vms/<name>.
struct VmInfo {
  VmSpec spec;  // MAC addresses assigned at creation
  std::string uuid;
  DesiredState desired = DesiredState::kStopped;
  // The node responsible for the VM's instance (running it, or stopping it); empty
  // when nobody is: stopped, or waiting for capacity.
  std::string owner;
  int64_t owner_lease = 0;  // the owner's liveness lease id when it was made owner
  uint64_t epoch = 0;       // 0 until first placed; +1 with every new owner
  std::string condition;    // why it is not as desired (no capacity, start failed); or empty
  // A stop asked to pull the plug: the owner forces the VM off at once instead of
  // pressing the ACPI button first. Cleared when the VM is released or started.
  bool force_off = false;
  int64_t revision = 0;     // the record's mod_revision when read
};

struct NodeInfo {
  std::string name;
  uint64_t ram_bytes = 0;
  int cpus = 0;
  bool maintenance = false;
  int64_t lease = 0;
  // What the VMs it owns hold.
  uint64_t ram_used_bytes = 0;
  int vcpus_used = 0;
  int vms = 0;
};

struct HaConditions {
  // N-1: nodes whose VMs could not all be restarted on the others.
  std::vector<FailoverCondition> failover;
  // VMs whose record carries a condition, as "vm: condition", sorted by VM name.
  std::vector<std::string> vms;
};

// One decision or action of a manager.
struct HaDecision {
  enum class Kind {
    kJoin,           // got a lease and published its node key
    kLeaseLost,      // the store says the lease is gone
    kSelfFence,      // the local deadline passed (or the lease was lost): VMs forced off
    kCoordinator,    // became coordinator
    kCreate,         // created a VM record (placed when created running)
    kStart,          // desired state -> running (placed), or a waiting VM placed
    kStop,           // desired state -> stopped
    kDelete,         // record deleted
    kRestart,        // a dead owner's VM placed on a new owner
    kNoCapacity,     // a VM to place fits nowhere: stays down with a condition
    kRelease,        // owner cleared (stopped, or dead owner of a VM meant to stop)
    kPowerOn,        // this node's hypervisor started a VM
    kPowerOnFailed,  // ... failed to
    kShutdown,       // ACPI shutdown sent
    kForceOff,       // force off sent
    kUpdate,         // a stopped VM's spec replaced
  };
  int64_t time_ns = 0;  // the manager's loop time
  std::string node;     // the node that decided
  Kind kind = Kind::kJoin;
  std::string vm;       // empty for node-level decisions
  std::string target;   // the node a VM was placed on (kCreate, kStart, kRestart)
  uint64_t epoch = 0;   // the epoch written or started with (0 if none)
  std::string message;  // the text after "<node>: "

  // "t=12.000s node2: <message>"
  std::string ToString() const;
};
const char* HaDecisionKindName(HaDecision::Kind kind);

struct HaOptions {
  // This node's name: 1..63 characters of [A-Za-z0-9._-].
  std::string node;
  // What it offers to VMs (see PlacementNode).
  uint64_t ram_bytes = 0;
  int cpus = 0;

  // Liveness lease TTL asked of the store (it may grant more; the granted TTL is used).
  int64_t lease_ttl_ms = 3'000;
  // Renewals start this often; 0 = lease_ttl_ms / 3.
  int64_t renew_interval_ms = 0;
  // Self-fence this long before the lease could expire at the store. Must cover the
  // time forcing off the VMs takes (hypervisor calls block the loop, see
  // libvirt_hypervisor.h) plus the clock-rate difference between node and store over
  // one TTL. 0 < margin < lease_ttl_ms - renew interval.
  int64_t fence_margin_ms = 500;
  // Renewal requests allowed in flight at once (a store that stops answering must not
  // pile them up).
  int renewals_in_flight_max = 3;
  // A full pass (read /hc/, coordinate, reconcile the hypervisor) runs at least this
  // often, and after every change the watch reports.
  int64_t rescan_interval_ms = 1'000;
  // ACPI shutdown is given this long before the VM is forced off.
  int64_t shutdown_timeout_ms = 60'000;
  // A VM whose start failed is retried after this long.
  int64_t start_retry_ms = 5'000;
  // A failed join (lease grant or node key put) is retried after this long.
  int64_t join_retry_ms = 1'000;
  // The coordinator restarts a dead owner's VMs only once it has seen that owner dead
  // (node key gone, or another lease) for this long. 0 trusts the store: a lease ends
  // only by expiring, by which time its holder has fenced itself. A lease can also end
  // early — someone revokes it (`etcdctl lease revoke`) or deletes the node key — and
  // then the holder fences only when it notices (its own key's delete event, or its
  // next renewal failing): set this to lease_ttl_ms if that can happen, at the cost of
  // that much more downtime per failure.
  int64_t restart_grace_ms = 0;
  // Mutating API calls retry this many times when another writer changed the record
  // between read and compare-and-swap (then ABORTED).
  int cas_attempts_max = 3;

  PlacementOptions placement;
  // Where a VM's disks are served: every disk is the NBD export "<vm>/<disk>" on
  // launch.socket_path (MakeNbdLaunch).
  NbdLaunchOptions launch;
  // Called with the complete launch (epoch included) before the hypervisor starts a
  // VM: hypercored asks scribed here to serve the VM's exports at that epoch (fencing
  // older writers). A non-OK status fails the start (retried after start_retry_ms).
  // Optional.
  std::function<void(const VmLaunch& launch, std::function<void(absl::Status)> done)> prepare_start;
  // Every decision and action, in order. Optional.
  std::function<void(const HaDecision&)> on_decision;
};

// INVALID_ARGUMENT naming the first bad field.
absl::Status ValidateHaOptions(const HaOptions& options);

class HaManager {
 public:
  template <typename T>
  using Done = std::function<void(absl::StatusOr<T>)>;
  using StatusDone = std::function<void(absl::Status)>;

  enum class State {
    kStarting,  // forcing off VMs left running by a previous incarnation of the daemon
    kJoining,   // asking for a lease and publishing the node key
    kActive,    // holds a lease: runs its VMs, may coordinate
    kFenced,    // lost its lease (or its deadline passed): forcing everything off
  };

  // Starts the manager at once: it forces off any hypercore VM still running on the
  // hypervisor (a new incarnation owns nothing), then joins. INVALID_ARGUMENT for bad
  // options.
  static absl::StatusOr<std::unique_ptr<HaManager>> Create(scribe::Loop* loop,
                                                           scribe::Random* random,
                                                           scribe::MetaStore* store,
                                                           Hypervisor* hypervisor,
                                                           HaOptions options);
  ~HaManager();

  // --- The cluster API: any node answers for the whole cluster, reading the store
  // fresh. A failed call changes nothing. UNAVAILABLE when the store cannot be reached.

  // Validates the spec (INVALID_ARGUMENT), assigns MAC addresses to NICs without one
  // and a UUID, and creates the record (ALREADY_EXISTS if the name is taken). With
  // `start`, places it (RESOURCE_EXHAUSTED naming the VM, its RAM and the largest free
  // RAM if no node fits) and its owner starts it.
  void CreateVm(VmSpec spec, bool start, Done<VmInfo> done);
  // Desired state -> running. A stopped VM is placed (RESOURCE_EXHAUSTED if nothing
  // fits); one still being stopped stays with its owner. NOT_FOUND for an unknown VM.
  // OK without change if already running.
  void StartVm(const std::string& name, StatusDone done);
  // Desired state -> stopped: its owner shuts it down (ACPI, then force off after
  // shutdown_timeout_ms) and releases it. NOT_FOUND for an unknown VM.
  void StopVm(const std::string& name, StatusDone done);
  // Desired state -> stopped, without the ACPI grace: its owner forces it off at once
  // (also when an ACPI shutdown is already under way) and releases it. NOT_FOUND for an
  // unknown VM; OK without change if it is stopped and released already.
  void ForceOffVm(const std::string& name, StatusDone done);
  // Replaces the spec of a stopped VM (desired stopped, no owner), keeping its uuid and
  // epoch — e.g. a revert restoring the configuration saved with a snapshot. NICs
  // without a MAC get one. INVALID_ARGUMENT for an invalid spec or one naming another
  // VM, FAILED_PRECONDITION unless stopped and released, NOT_FOUND for an unknown VM.
  void UpdateVmSpec(const std::string& name, VmSpec spec, StatusDone done);
  // Deletes a stopped VM's record (FAILED_PRECONDITION while it is meant to run or is
  // still being stopped). NOT_FOUND for an unknown VM.
  void DeleteVm(const std::string& name, StatusDone done);
  void GetVm(const std::string& name, Done<VmInfo> done);
  // Every VM, sorted by name.
  void ListVms(Done<std::vector<VmInfo>> done);
  // Every node holding a lease, sorted by name.
  void ListNodes(Done<std::vector<NodeInfo>> done);
  void GetConditions(Done<HaConditions> done);
  // Puts this node in or out of maintenance (it takes no new or restarted VMs; the
  // ones it runs stay). FAILED_PRECONDITION unless active.
  void SetMaintenance(bool maintenance, StatusDone done);

  // --- This node.
  State state() const;
  bool is_coordinator() const;
  // The loop time at which this node self-fences unless a renewal succeeds first.
  int64_t fence_deadline_ns() const;
  scribe::LeaseId lease() const;
  const std::string& node() const;

  struct Impl;

 private:
  explicit HaManager(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

const char* HaStateName(HaManager::State state);

}  // namespace hypercore

#endif  // HYPERCORE_HA_H_
