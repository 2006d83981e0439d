// The deterministic whole-pool simulator: one SimLoop, one SimDisk per disk (nodes are
// groups of disks), a random workload over the public Pool API, faults (power cuts of
// every disk or of some, disk failures, silent corruption, transient EIO, node outages,
// crashes and evictions) and a model checker that knows, for every sector of every VSD
// and snapshot, which contents the pool may legally return.
//
// Everything derives from `PoolSimConfig::seed`: the same seed replays the same run bit
// for bit, so a violation is reproduced with `bazel run //libscribe:simulator --
// --seed=S --seeds=1`.
//
// What the checker holds the pool to (pool.h's contract):
//  - a read returns exactly the last completed write (or zeros: never written or
//    discarded), for live VSDs and snapshots, despite corruption and failed copies;
//  - after a power cut and Pool::Open, each sector holds its contents at the last
//    completed flush or that of a write/discard issued since; a write with `fua` and
//    every completed metadata operation (create, snapshot, clone, revert, delete,
//    resize) survive exactly;
//  - a Diff covers every sector that differs between its two snapshots, and reports no
//    4 KiB block that cannot map differently: one with the same contents in both that
//    no write or discard touched since the snapshots' histories diverged, or that is
//    unmapped (never written, or wholly discarded) in both;
//  - Fsck is clean after every operation, and full redundancy comes back after every
//    fault the replication can tolerate; whenever the pool says it is fully redundant,
//    the simulator counts the copies itself on the simulated disks: every non-zero 4 KiB
//    block of every VSD and snapshot, with exactly its bytes, on at least its VSD's
//    replication of distinct nodes;
//  - GetVsdInfo's allocated_bytes is exactly the model's mapped blocks (give or take the
//    blocks a power cut left in doubt);
//  - a write or discard is refused with RESOURCE_EXHAUSTED only when the pool is nearly
//    full (on the fill seeds, which fill it), and changes nothing acknowledged.
#ifndef LIBSCRIBE_SIM_POOL_SIM_H_
#define LIBSCRIBE_SIM_POOL_SIM_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "scribe/pool.h"

namespace scribe {

// The options the simulator gives the pool unless told otherwise: a metadata region
// small enough for 96 MiB simulated disks.
inline PoolOptions PoolSimDefaultPoolOptions() {
  PoolOptions options;
  options.metadata_bytes = 8ull << 20;
  return options;
}

struct PoolSimConfig {
  uint64_t seed = 1;
  // Workload operations (a burst of concurrent writes counts as one).
  int ops = 300;
  int nodes = 4;
  int disks_per_node = 2;
  uint64_t disk_bytes = 96ull << 20;
  PoolOptions pool_options = PoolSimDefaultPoolOptions();
  // Injects faults between operations; false runs the workload on a healthy pool.
  bool faults = true;
  // One seed in three runs with a block-map leaf cache of 1 to 8 leaves
  // (PoolOptions::metadata_cache_bytes), far smaller than its maps: leaves are evicted
  // as soon as a checkpoint has written them and read back by every I/O that needs them.
  bool vary_leaf_cache = true;
  // One seed in seven (seed % 7 == 4) is a fill seed: small disks and large writes with
  // no limit on fullness, so that writes meet a full pool (RESOURCE_EXHAUSTED), which
  // the checker then accepts (only) while the pool is nearly full.
  bool vary_fill = true;
  // Prints every operation-log line to stderr as it happens, so a run the engine
  // aborts (a failed SCRIBE_CHECK) still shows what led up to it.
  bool trace = false;
  // Test seam: when set, every pool the simulator creates or opens is passed through
  // it (tests wrap the engine in a deliberately broken decorator to prove the checker
  // catches it). Null in real runs.
  std::function<std::unique_ptr<Pool>(std::unique_ptr<Pool>)> wrap_pool;
};

struct PoolSimResult {
  uint64_t ops = 0;     // workload operations completed
  uint64_t faults = 0;  // faults injected, all kinds
  uint64_t power_cuts = 0;          // every disk at once
  uint64_t partial_power_cuts = 0;  // a restart in which only some disks lose power
  uint64_t disk_failures = 0;
  uint64_t corruptions = 0;
  uint64_t page_corruptions = 0;  // of those, one copy of a metadata page
  uint64_t node_outages = 0;   // including evictions
  uint64_t node_crashes = 0;   // a node's disks lose their unsynced writes, the pool runs on
  uint64_t reads_checked = 0;  // reads (live, snapshot, post-crash) compared to the model
  uint64_t diffs_checked = 0;  // Diff results compared to the model
  // Of those, answered from the pool's change logs (PoolStats::diffs_from_change_logs).
  uint64_t diffs_from_change_logs = 0;
  bool small_leaf_cache = false;  // this seed ran with a leaf cache of a few leaves
  uint64_t map_leaves_read = 0;   // evicted leaves read back (PoolStats::map_leaves_read)
  uint64_t chunk_groups_read = 0;  // chunk record groups read back (PoolStats::chunk_groups_read)
  // The simulator's own counts of every block's copies on the disks, and the blocks
  // counted (summed over the checks).
  uint64_t copy_checks = 0;
  uint64_t blocks_copy_checked = 0;
  uint64_t accounting_checks = 0;  // exact allocated_bytes checks (all VSDs each)
  bool fill_seed = false;          // this seed filled the pool (PoolSimConfig::vary_fill)
  uint64_t peak_used_permille = 0;  // highest chunk-slot use seen after an operation
  uint64_t full_refusals = 0;       // writes and discards refused as the pool was full
  uint64_t full_verifications = 0;  // read-backs of everything after a refusal
  uint64_t violations = 0;
  // One message per violation, naming seed, operation and details, the first followed
  // by the recent-operation log. A run stops at its first violation (the model can no
  // longer be trusted after it), so there is at most one.
  std::vector<std::string> violation_messages;
};

// Whether `config` makes a fill seed (PoolSimConfig::vary_fill).
bool IsFillSeed(const PoolSimConfig& config);

// Runs one seeded simulation to completion (or to its first violation). Deterministic;
// uses no global state, so distinct seeds may run on distinct threads.
PoolSimResult RunPoolSim(const PoolSimConfig& config);

}  // namespace scribe

#endif  // LIBSCRIBE_SIM_POOL_SIM_H_
