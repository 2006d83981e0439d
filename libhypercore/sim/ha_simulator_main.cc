// The long-run HA simulator: many seeded whole-cluster runs (libhypercore/sim/ha_sim.h),
// one summary line, and for every failing seed its message and a replay command.
//
//   bazel run //libhypercore:ha_simulator -- --seed=1 --seeds=10000
//   bazel run //libhypercore:ha_simulator -- --seed=17 --seeds=1 --trace     # replay one
//   bazel run //libhypercore:ha_simulator -- --scenario=$PWD/libhypercore/sim/scenarios/node_crash/cmdlist
//
// Flags: --seed=N (first seed, default 1), --seeds=K (default 100), --events=N (random
// events per seed, default that of HaSimConfig), --nodes=N (3..5; default: from the
// seed), --restart-grace-ms=N, --verbose (a line per seed), --trace (every log line to
// stderr as it happens), --scenario=PATH (replay a cmdlist and print its log: how
// log.expect files are made). Exits 1 on any violation.
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "libhypercore/sim/ha_sim.h"

namespace {

bool ParseUint(const char* text, uint64_t* out) {
  if (*text == '\0' || text[0] == '-') return false;
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

bool FlagValue(const char* arg, const char* name, const char** value) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  *value = arg + n + 1;
  return true;
}

int Usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--seed=N] [--seeds=K] [--events=N] [--nodes=3..5] [--restart-grace-ms=N] "
               "[--verbose] [--trace] [--scenario=PATH]\n",
               argv0);
  return 2;
}

int RunScenario(const std::string& path, const hypercore::HaSimConfig& config) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    return 2;
  }
  std::stringstream text;
  text << in.rdbuf();
  auto result = hypercore::RunHaScenario(text.str(), config);
  if (!result.ok()) {
    std::fprintf(stderr, "%s\n", std::string(result.status().message()).c_str());
    return 2;
  }
  for (const std::string& line : result->log) std::printf("%s\n", line.c_str());
  for (const std::string& msg : result->violation_messages) std::fprintf(stderr, "%s\n", msg.c_str());
  return result->violations == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t first_seed = 1;
  uint64_t seeds = 100;
  bool verbose = false;
  std::string scenario;
  hypercore::HaSimConfig base;
  std::string extra;  // flags a replay needs besides the seed
  for (int i = 1; i < argc; ++i) {
    const char* arg = argv[i];
    const char* value = nullptr;
    uint64_t v = 0;
    if (FlagValue(arg, "--seed", &value)) {
      if (!ParseUint(value, &first_seed)) return Usage(argv[0]);
    } else if (FlagValue(arg, "--seeds", &value)) {
      if (!ParseUint(value, &seeds)) return Usage(argv[0]);
    } else if (FlagValue(arg, "--events", &value)) {
      if (!ParseUint(value, &v) || v > 100'000) return Usage(argv[0]);
      base.events = static_cast<int>(v);
      extra += std::string(" ") + arg;
    } else if (FlagValue(arg, "--nodes", &value)) {
      if (!ParseUint(value, &v) || v < 3 || v > 5) return Usage(argv[0]);
      base.nodes = static_cast<int>(v);
      extra += std::string(" ") + arg;
    } else if (FlagValue(arg, "--restart-grace-ms", &value)) {
      if (!ParseUint(value, &v) || v > 600'000) return Usage(argv[0]);
      base.restart_grace_ms = static_cast<int64_t>(v);
      extra += std::string(" ") + arg;
    } else if (FlagValue(arg, "--scenario", &value)) {
      scenario = value;
    } else if (std::strcmp(arg, "--trace") == 0) {
      base.trace = true;
    } else if (std::strcmp(arg, "--verbose") == 0) {
      verbose = true;
    } else {
      std::fprintf(stderr, "unknown flag: %s\n", arg);
      return Usage(argv[0]);
    }
  }
  if (!scenario.empty()) {
    base.seed = first_seed;
    return RunScenario(scenario, base);
  }

  hypercore::HaSimResult total;
  int64_t virtual_ns = 0;
  std::vector<uint64_t> failed;
  const auto start = std::chrono::steady_clock::now();
  for (uint64_t seed = first_seed; seed < first_seed + seeds; ++seed) {
    hypercore::HaSimConfig config = base;
    config.seed = seed;
    const hypercore::HaSimResult r = hypercore::RunHaSim(config);
    total.events += r.events;
    total.node_crashes += r.node_crashes;
    total.partitions += r.partitions;
    total.returns += r.returns;
    total.guest_crashes += r.guest_crashes;
    total.api_calls += r.api_calls;
    total.restarts += r.restarts;
    total.self_fences += r.self_fences;
    total.vm_starts += r.vm_starts;
    total.double_runs += r.double_runs;
    total.epoch_violations += r.epoch_violations;
    total.liveness_violations += r.liveness_violations;
    total.log_violations += r.log_violations;
    total.api_violations += r.api_violations;
    total.violations += r.violations;
    if (r.max_restart_ns > total.max_restart_ns) {
      total.max_restart_ns = r.max_restart_ns;
      total.max_restart_what = r.max_restart_what;
    }
    virtual_ns += r.virtual_ns;
    if (verbose) {
      std::printf("seed=%llu events=%llu crashes=%llu partitions=%llu restarts=%llu self_fences=%llu "
                  "max_restart=%.3fs violations=%llu\n",
                  static_cast<unsigned long long>(seed), static_cast<unsigned long long>(r.events),
                  static_cast<unsigned long long>(r.node_crashes), static_cast<unsigned long long>(r.partitions),
                  static_cast<unsigned long long>(r.restarts), static_cast<unsigned long long>(r.self_fences),
                  r.max_restart_ns / 1e9, static_cast<unsigned long long>(r.violations));
    }
    if (r.violations > 0) {
      failed.push_back(seed);
      for (const std::string& msg : r.violation_messages) std::printf("%s\n", msg.c_str());
      std::printf("replay: bazel run //libhypercore:ha_simulator -- --seed=%llu --seeds=1%s --trace\n\n",
                  static_cast<unsigned long long>(seed), extra.c_str());
      std::fflush(stdout);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "seeds=%llu events=%llu node_deaths=%llu partitions=%llu returns=%llu guest_crashes=%llu api_calls=%llu "
      "restarts=%llu self_fences=%llu vm_starts=%llu double_runs=%llu epoch_violations=%llu "
      "liveness_violations=%llu log_violations=%llu api_violations=%llu max_time_to_restart=%.3fs "
      "virtual=%.0fs violations=%llu\n",
      static_cast<unsigned long long>(seeds), static_cast<unsigned long long>(total.events),
      static_cast<unsigned long long>(total.node_crashes), static_cast<unsigned long long>(total.partitions),
      static_cast<unsigned long long>(total.returns), static_cast<unsigned long long>(total.guest_crashes),
      static_cast<unsigned long long>(total.api_calls), static_cast<unsigned long long>(total.restarts),
      static_cast<unsigned long long>(total.self_fences), static_cast<unsigned long long>(total.vm_starts),
      static_cast<unsigned long long>(total.double_runs), static_cast<unsigned long long>(total.epoch_violations),
      static_cast<unsigned long long>(total.liveness_violations),
      static_cast<unsigned long long>(total.log_violations), static_cast<unsigned long long>(total.api_violations),
      total.max_restart_ns / 1e9, virtual_ns / 1e9, static_cast<unsigned long long>(total.violations));
  if (verbose && !total.max_restart_what.empty()) {
    std::printf("longest restart: %s\n", total.max_restart_what.c_str());
  }
  // Wall time goes to stderr so stdout stays identical from run to run.
  std::fprintf(stderr, "%.1f s wall, %zu failing seeds\n", seconds, failed.size());
  return failed.empty() ? 0 : 1;
}
