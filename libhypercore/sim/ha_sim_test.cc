// The HA simulator as a test: 1,000 random seeds must finish without a violation; a
// run is a function of its seed; seeds that once found bugs stay as named regressions;
// and deliberately broken hypervisors (a fence that does not stop anything, epochs
// that are not passed on, starts that never happen) prove each check can fail.
#include "libhypercore/sim/ha_sim.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "hypercore/hypervisor.h"
#include "scribe/env.h"

namespace hypercore {
namespace {

constexpr uint64_t kSeedsPerBatch = 100;
constexpr uint64_t kBatches = 10;

std::string Summary(const HaSimResult& r) {
  return absl::StrCat("events=", r.events, " crashes=", r.node_crashes, " partitions=", r.partitions,
                      " restarts=", r.restarts, " self_fences=", r.self_fences, " vm_starts=", r.vm_starts,
                      " double_runs=", r.double_runs, " epoch_violations=", r.epoch_violations,
                      " liveness_violations=", r.liveness_violations, " log_violations=", r.log_violations,
                      " api_violations=", r.api_violations, " max_restart_ms=", r.max_restart_ns / 1'000'000);
}

// --- 1,000 seeds, in batches --------------------------------------------------------

class HaSimSeeds : public testing::TestWithParam<uint64_t> {};

TEST_P(HaSimSeeds, NoViolations) {
  const uint64_t first = 1 + GetParam() * kSeedsPerBatch;
  uint64_t restarts = 0, self_fences = 0, crashes = 0;
  for (uint64_t seed = first; seed < first + kSeedsPerBatch; ++seed) {
    HaSimConfig config;
    config.seed = seed;
    const HaSimResult r = RunHaSim(config);
    ASSERT_EQ(r.violations, 0u) << Summary(r) << "\n"
                                << absl::StrJoin(r.violation_messages, "\n")
                                << "\nreplay: bazel run //libhypercore:ha_simulator -- --seed=" << seed
                                << " --seeds=1 --trace";
    EXPECT_EQ(r.events, static_cast<uint64_t>(config.events)) << "seed " << seed;
    // Any restart took at most the liveness bound (TTL 3 s + 3 s) plus a cascade.
    EXPECT_LT(r.max_restart_ns, 12'000'000'000) << "seed " << seed << ": " << r.max_restart_what;
    restarts += r.restarts;
    self_fences += r.self_fences;
    crashes += r.node_crashes;
  }
  // The schedules did exercise what they are for.
  EXPECT_GT(crashes, kSeedsPerBatch);
  EXPECT_GT(restarts, kSeedsPerBatch);
  EXPECT_GT(self_fences, kSeedsPerBatch / 2);
}

INSTANTIATE_TEST_SUITE_P(Batches, HaSimSeeds, testing::Range<uint64_t>(0, kBatches),
                         [](const testing::TestParamInfo<uint64_t>& info) {
                           return absl::StrCat("seeds", 1 + info.param * kSeedsPerBatch, "to",
                                               (info.param + 1) * kSeedsPerBatch);
                         });

TEST(HaSim, SameSeedSameRun) {
  HaSimConfig config;
  config.seed = 4242;
  config.keep_log = true;
  const HaSimResult a = RunHaSim(config);
  const HaSimResult b = RunHaSim(config);
  EXPECT_EQ(Summary(a), Summary(b));
  EXPECT_EQ(a.log, b.log);
  EXPECT_GT(a.log.size(), 50u);
}

TEST(HaSim, EveryClusterSizeAndAGracePeriod) {
  for (int nodes = 3; nodes <= 5; ++nodes) {
    for (uint64_t seed = 1; seed <= 20; ++seed) {
      HaSimConfig config;
      config.seed = seed;
      config.nodes = nodes;
      config.restart_grace_ms = nodes == 4 ? 3'000 : 0;
      const HaSimResult r = RunHaSim(config);
      ASSERT_EQ(r.violations, 0u) << "nodes=" << nodes << " seed=" << seed << " " << Summary(r) << "\n"
                                  << absl::StrJoin(r.violation_messages, "\n");
    }
  }
}

// --- Seeds that found bugs (STYLE.md habit 9) -----------------------------------------

HaSimResult RunSeed(uint64_t seed) {
  HaSimConfig config;
  config.seed = seed;
  return RunHaSim(config);
}

// A coordinator fenced while its compare-and-swap was in flight: the CAS landed but the
// decision was not logged, so a start looked undecided.
TEST(HaSimRegression, Seed1348DecisionLandingAfterTheFenceIsLogged) {
  const HaSimResult r = RunSeed(1348);
  EXPECT_EQ(r.violations, 0u) << absl::StrJoin(r.violation_messages, "\n");
}

// The checker counted a crashed guest's room as free although its owner keeps it
// while restarting it in place (found as seed 1966; seed 53 trips it in today's runs).
TEST(HaSimRegression, Seed53CrashedGuestKeepsItsRoom) {
  const HaSimResult r = RunSeed(53);
  EXPECT_EQ(r.violations, 0u) << absl::StrJoin(r.violation_messages, "\n");
}

// --- The checker can fail ----------------------------------------------------------------

// Forwards to the fake, except what a subclass breaks.
class Decorator : public Hypervisor {
 public:
  explicit Decorator(Hypervisor* inner) : inner_(inner) {}
  void Start(const VmLaunch& launch, StatusDone done) override { inner_->Start(launch, done); }
  void Shutdown(const std::string& name, StatusDone done) override { inner_->Shutdown(name, done); }
  void ForceOff(const std::string& name, StatusDone done) override { inner_->ForceOff(name, done); }
  void Undefine(const std::string& name, StatusDone done) override { inner_->Undefine(name, done); }
  void GetStatus(const std::string& name, Done<VmStatus> done) override { inner_->GetStatus(name, done); }
  void List(Done<std::vector<VmStatus>> done) override { inner_->List(done); }

 protected:
  Hypervisor* inner_;
};

// A manager without working self-fencing: "force off" is acknowledged and ignored, so
// a partitioned node keeps running its VMs while they restart elsewhere.
class NoFence : public Decorator {
 public:
  using Decorator::Decorator;
  void ForceOff(const std::string& name, StatusDone done) override {
    inner_->GetStatus(name, [done](absl::StatusOr<VmStatus>) { done(absl::OkStatus()); });
  }
};

// Every incarnation starts with epoch 1: storage could not fence the old one.
class EpochAlwaysOne : public Decorator {
 public:
  using Decorator::Decorator;
  void Start(const VmLaunch& launch, StatusDone done) override {
    VmLaunch copy = launch;
    copy.epoch = 1;
    inner_->Start(copy, done);
  }
};

// Starts never complete: VMs meant to run stay down.
class StartHangs : public Decorator {
 public:
  using Decorator::Decorator;
  void Start(const VmLaunch&, StatusDone) override {}
};

template <typename Broken>
HaSimResult FirstFailure(uint64_t seeds) {
  HaSimResult last;
  for (uint64_t seed = 1; seed <= seeds; ++seed) {
    HaSimConfig config;
    config.seed = seed;
    config.wrap_hypervisor = [](Hypervisor* fake) { return std::make_unique<Broken>(fake); };
    last = RunHaSim(config);
    if (last.violations > 0) return last;
  }
  return last;
}

TEST(HaSimCheckerCanFail, ManagerWithoutSelfFencingDoubleRuns) {
  const HaSimResult r = FirstFailure<NoFence>(50);
  ASSERT_GT(r.violations, 0u) << "a broken fence went unnoticed in 50 seeds";
  EXPECT_EQ(r.double_runs, 1u) << absl::StrJoin(r.violation_messages, "\n");
  EXPECT_NE(r.violation_messages[0].find("while running on"), std::string::npos) << r.violation_messages[0];
}

TEST(HaSimCheckerCanFail, EpochNotPassedOn) {
  const HaSimResult r = FirstFailure<EpochAlwaysOne>(50);
  ASSERT_GT(r.violations, 0u);
  EXPECT_EQ(r.epoch_violations + r.log_violations, 1u) << absl::StrJoin(r.violation_messages, "\n");
}

TEST(HaSimCheckerCanFail, StartsThatNeverHappen) {
  const HaSimResult r = FirstFailure<StartHangs>(10);
  ASSERT_GT(r.violations, 0u);
  EXPECT_EQ(r.liveness_violations, 1u) << absl::StrJoin(r.violation_messages, "\n");
  EXPECT_NE(r.violation_messages[0].find("is meant to run"), std::string::npos) << r.violation_messages[0];
}

}  // namespace
}  // namespace hypercore
