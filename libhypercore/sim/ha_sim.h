// The deterministic HA simulator: N nodes (3..5) in one process on a SimLoop, one
// InMemoryMetaStore with a client per node (so one node can be cut off from "etcd"),
// a FakeHypervisor and an HaManager per node, and an independent checker.
//
// Faults and operations: node crash (manager and hypervisor die; its VMs stop at that
// instant), partition from the store (the node keeps running its VMs until it
// self-fences), heal, node return (a fresh manager and hypervisor), guest crash, and
// the cluster API (create, start, stop, delete) — in random seeded schedules
// (RunHaSim) or scripted ones (RunHaScenario, the cmdlist format below).
//
// What the checker holds the managers to, from what the fake hypervisors report (every
// run interval [start, stop) of every VM on every node, with its epoch), the VM
// records (an observer client that is never cut off) and the decision log:
//  - never twice: no VM runs on two nodes at overlapping virtual times;
//  - epochs: a VM never starts with an epoch lower than one already started, nor with
//    the same epoch on another node;
//  - liveness: a VM whose desired state is running is running again within
//    `restart_bound_ms` of the later of its going down and the last disturbance
//    (fault or API call), whenever a healthy node (up, connected) has room for it by
//    the placement rules; and once the schedule ends (everything healed and back,
//    then quiet), every VM runs exactly as its record says or there is no room;
//  - the decision log: times never go back; every start on a hypervisor was decided
//    (a create/start/restart naming that node and epoch) and logged (power on, at the
//    instant it took effect); each VM's decided epochs strictly increase.
// A run stops at its first violation, reporting the seed and the recent log.
//
// Everything derives from the seed: the same seed replays the same run bit for bit
// (`bazel run //libhypercore:ha_simulator -- --seed=S --seeds=1 --trace`).
//
// Scenario cmdlist format (one command per line, '#' starts a comment):
//   nodes NAME:RAM_MIB:CPUS ...      first line: the cluster; every node boots, then
//                                    the run waits until all are active
//   option NAME=VALUE                lease_ttl_ms, fence_margin_ms, restart_grace_ms
//                                    (before `nodes`)
//   create VM RAM_MIB VCPUS [stopped]
//   start VM | stop VM | delete VM   the cluster API, through the first active node
//   crash NODE | return NODE         node death and return
//   partition NODE | heal NODE       cut a node off the store and back
//   crash-after NODE N               crash NODE right after its next N decisions
//   guest-crash VM | ignore-acpi VM
//   conditions                       log the N-1 and VM conditions
//   wait SECONDS                     let virtual time pass (decimals allowed)
// Every command, API error and decision goes to the log; a scenario ends with a quiet
// period and the final-state check.
#ifndef LIBHYPERCORE_SIM_HA_SIM_H_
#define LIBHYPERCORE_SIM_HA_SIM_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hypercore/hypervisor.h"

namespace hypercore {

struct HaSimConfig {
  uint64_t seed = 1;
  // Random schedule: events after the initial VMs are created.
  int events = 30;
  // 3..5; 0: chosen from the seed.
  int nodes = 0;
  int64_t lease_ttl_ms = 3'000;
  int64_t fence_margin_ms = 500;
  int64_t rescan_interval_ms = 1'000;
  int64_t restart_grace_ms = 0;
  // Liveness bound (see above); 0 = lease TTL + restart grace + 3 s.
  int64_t restart_bound_ms = 0;
  // Keep the whole log in the result (scenarios); otherwise only its tail is kept for
  // violation reports.
  bool keep_log = false;
  // Print every log line to stderr as it happens.
  bool trace = false;
  // Test seam: what each node's manager gets instead of its FakeHypervisor (the
  // checker still watches the fake). Tests pass deliberately broken decorators to
  // prove the checker catches them. Null in real runs.
  std::function<std::unique_ptr<Hypervisor>(Hypervisor* fake)> wrap_hypervisor;
};

struct HaSimResult {
  uint64_t events = 0;        // faults and API calls issued
  uint64_t node_crashes = 0;
  uint64_t partitions = 0;
  uint64_t returns = 0;
  uint64_t guest_crashes = 0;
  uint64_t api_calls = 0;
  uint64_t restarts = 0;      // restart decisions (a dead owner's VM placed elsewhere)
  uint64_t self_fences = 0;
  uint64_t vm_starts = 0;     // run intervals begun on any hypervisor
  uint64_t double_runs = 0;
  uint64_t epoch_violations = 0;
  uint64_t liveness_violations = 0;
  uint64_t log_violations = 0;
  uint64_t api_violations = 0;  // an API call answered with a code it must not
  uint64_t violations = 0;    // the sum; a run stops at its first
  // The longest a VM meant to run stayed down before it ran again, leaving out waits
  // for capacity and moments with no healthy node at all.
  int64_t max_restart_ns = 0;
  std::string max_restart_what;  // which VM, from when to when
  int64_t virtual_ns = 0;     // virtual time simulated
  std::vector<std::string> violation_messages;
  std::vector<std::string> log;  // every line with keep_log, else empty
};

// One seeded random run. Deterministic; no global state.
HaSimResult RunHaSim(const HaSimConfig& config);

// Replays a scripted scenario (format above). INVALID_ARGUMENT for a malformed
// cmdlist (naming the line); violations are reported in the result as for random runs.
// `config.seed` seeds the managers' UUIDs/MACs; hypervisor latency is a fixed 10 ms
// and the store's 1 ms, so logs are exact.
absl::StatusOr<HaSimResult> RunHaScenario(const std::string& cmdlist, const HaSimConfig& config);

}  // namespace hypercore

#endif  // LIBHYPERCORE_SIM_HA_SIM_H_
