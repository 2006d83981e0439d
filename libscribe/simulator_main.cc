// The long-run pool simulator: runs many seeded whole-pool simulations (pool_sim.h) and
// prints one summary line, plus the message and a replay command for every failing seed.
//
//   bazel run //libscribe:simulator -- --seed=1 --seeds=1000 --ops=500
//
// Flags: --seed=N (first seed, default 1), --seeds=K (how many, default 100),
// --ops=N (operations per seed, default that of PoolSimConfig), --no-faults,
// --no-fill (no fill seeds: every seed keeps the pool below half full),
// --nodes=N, --disks-per-node=N, --verbose (a line per seed), --trace (every operation
// to stderr as it happens: what led up to an engine abort). Exits 1 on any violation.
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "libscribe/sim/pool_sim.h"

namespace {

bool ParseUint(const char* text, uint64_t* out) {
  if (*text == '\0') return false;
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (errno != 0 || *end != '\0' || text[0] == '-') return false;
  *out = v;
  return true;
}

// Matches "--name=value"; false when `arg` is another flag.
bool FlagValue(const char* arg, const char* name, const char** value) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  *value = arg + n + 1;
  return true;
}

int Usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--seed=N] [--seeds=K] [--ops=N] [--no-faults] [--no-fill] [--nodes=N] "
               "[--disks-per-node=N] [--verbose] [--trace]\n",
               argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t first_seed = 1;
  uint64_t seeds = 100;
  scribe::PoolSimConfig base;
  bool ops_given = false, nodes_given = false, disks_given = false;
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    const char* arg = argv[i];
    const char* value = nullptr;
    uint64_t v = 0;
    if (FlagValue(arg, "--seed", &value)) {
      if (!ParseUint(value, &first_seed)) return Usage(argv[0]);
    } else if (FlagValue(arg, "--seeds", &value)) {
      if (!ParseUint(value, &seeds)) return Usage(argv[0]);
    } else if (FlagValue(arg, "--ops", &value)) {
      if (!ParseUint(value, &v) || v > 1'000'000) return Usage(argv[0]);
      base.ops = static_cast<int>(v);
      ops_given = true;
    } else if (FlagValue(arg, "--nodes", &value)) {
      if (!ParseUint(value, &v) || v < 2 || v > 64) return Usage(argv[0]);
      base.nodes = static_cast<int>(v);
      nodes_given = true;
    } else if (FlagValue(arg, "--disks-per-node", &value)) {
      if (!ParseUint(value, &v) || v < 1 || v > 16) return Usage(argv[0]);
      base.disks_per_node = static_cast<int>(v);
      disks_given = true;
    } else if (std::strcmp(arg, "--no-faults") == 0) {
      base.faults = false;
    } else if (std::strcmp(arg, "--no-fill") == 0) {
      base.vary_fill = false;
    } else if (std::strcmp(arg, "--trace") == 0) {
      base.trace = true;
    } else if (std::strcmp(arg, "--verbose") == 0) {
      verbose = true;
    } else {
      std::fprintf(stderr, "unknown flag: %s\n", arg);
      return Usage(argv[0]);
    }
  }

  // The flags a replay needs besides the seed.
  std::string extra;
  if (ops_given) extra += " --ops=" + std::to_string(base.ops);
  if (!base.faults) extra += " --no-faults";
  if (!base.vary_fill) extra += " --no-fill";
  if (nodes_given) extra += " --nodes=" + std::to_string(base.nodes);
  if (disks_given) extra += " --disks-per-node=" + std::to_string(base.disks_per_node);

  scribe::PoolSimResult total;
  uint64_t small_cache_seeds = 0;
  uint64_t fill_seeds = 0;
  uint64_t fill_peak_min_permille = 1000, fill_peak_max_permille = 0;
  std::vector<uint64_t> failed;
  const auto start = std::chrono::steady_clock::now();
  for (uint64_t seed = first_seed; seed < first_seed + seeds; ++seed) {
    scribe::PoolSimConfig config = base;
    config.seed = seed;
    const scribe::PoolSimResult r = scribe::RunPoolSim(config);
    total.ops += r.ops;
    total.faults += r.faults;
    total.power_cuts += r.power_cuts;
    total.partial_power_cuts += r.partial_power_cuts;
    total.disk_failures += r.disk_failures;
    total.corruptions += r.corruptions;
    total.page_corruptions += r.page_corruptions;
    total.node_outages += r.node_outages;
    total.node_crashes += r.node_crashes;
    total.reads_checked += r.reads_checked;
    total.diffs_checked += r.diffs_checked;
    total.diffs_from_change_logs += r.diffs_from_change_logs;
    small_cache_seeds += r.small_leaf_cache ? 1 : 0;
    total.map_leaves_read += r.map_leaves_read;
    total.chunk_groups_read += r.chunk_groups_read;
    total.copy_checks += r.copy_checks;
    total.blocks_copy_checked += r.blocks_copy_checked;
    total.accounting_checks += r.accounting_checks;
    if (r.fill_seed) {
      ++fill_seeds;
      // The least full fill seed: how far every one of them got.
      fill_peak_min_permille = std::min(fill_peak_min_permille, r.peak_used_permille);
      fill_peak_max_permille = std::max(fill_peak_max_permille, r.peak_used_permille);
    }
    total.full_refusals += r.full_refusals;
    total.full_verifications += r.full_verifications;
    total.violations += r.violations;
    if (verbose) {
      std::printf(
          "seed=%llu ops=%llu faults=%llu reads_checked=%llu copy_checks=%llu%s peak_used=%.1f%% "
          "full_refusals=%llu violations=%llu\n",
          static_cast<unsigned long long>(seed), static_cast<unsigned long long>(r.ops),
          static_cast<unsigned long long>(r.faults),
          static_cast<unsigned long long>(r.reads_checked),
          static_cast<unsigned long long>(r.copy_checks), r.fill_seed ? " fill" : "",
          r.peak_used_permille / 10.0, static_cast<unsigned long long>(r.full_refusals),
          static_cast<unsigned long long>(r.violations));
    }
    if (r.violations > 0) {
      failed.push_back(seed);
      for (const std::string& msg : r.violation_messages) std::printf("%s\n", msg.c_str());
      std::printf("replay: bazel run //libscribe:simulator -- --seed=%llu --seeds=1%s\n\n",
                  static_cast<unsigned long long>(seed), extra.c_str());
      std::fflush(stdout);
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (fill_seeds == 0) fill_peak_min_permille = 0;
  std::printf(
      "seeds=%llu ops=%llu faults=%llu (power_cuts=%llu partial_power_cuts=%llu "
      "disk_failures=%llu corruptions=%llu (metadata pages %llu) node_outages=%llu "
      "node_crashes=%llu) reads_checked=%llu diffs_checked=%llu (from change logs %llu) "
      "copy_checks=%llu (blocks %llu) accounting_checks=%llu fill_seeds=%llu (peak used "
      "%.1f%%..%.1f%%, full_refusals=%llu, full_verifications=%llu) "
      "small_leaf_cache_seeds=%llu (leaves read back %llu) chunk_groups_read_back=%llu violations=%llu\n",
      static_cast<unsigned long long>(seeds), static_cast<unsigned long long>(total.ops),
      static_cast<unsigned long long>(total.faults),
      static_cast<unsigned long long>(total.power_cuts),
      static_cast<unsigned long long>(total.partial_power_cuts),
      static_cast<unsigned long long>(total.disk_failures),
      static_cast<unsigned long long>(total.corruptions),
      static_cast<unsigned long long>(total.page_corruptions),
      static_cast<unsigned long long>(total.node_outages),
      static_cast<unsigned long long>(total.node_crashes),
      static_cast<unsigned long long>(total.reads_checked),
      static_cast<unsigned long long>(total.diffs_checked),
      static_cast<unsigned long long>(total.diffs_from_change_logs),
      static_cast<unsigned long long>(total.copy_checks),
      static_cast<unsigned long long>(total.blocks_copy_checked),
      static_cast<unsigned long long>(total.accounting_checks),
      static_cast<unsigned long long>(fill_seeds), fill_peak_min_permille / 10.0,
      fill_peak_max_permille / 10.0, static_cast<unsigned long long>(total.full_refusals),
      static_cast<unsigned long long>(total.full_verifications),
      static_cast<unsigned long long>(small_cache_seeds),
      static_cast<unsigned long long>(total.map_leaves_read),
      static_cast<unsigned long long>(total.chunk_groups_read),
      static_cast<unsigned long long>(total.violations));
  // Wall time goes to stderr so stdout stays identical from run to run.
  std::fprintf(stderr, "%.1f s wall, %llu failing seeds\n", seconds,
               static_cast<unsigned long long>(failed.size()));
  return failed.empty() ? 0 : 1;
}
