// FakeHypervisor beyond the conformance suite: the observer's run intervals, latency,
// guest faults and the host dying.
#include "hypercore/fake_hypervisor.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "libhypercore/hypervisor/conformance.h"
#include "scribe/sim_env.h"

namespace hypercore {
namespace {

using hypervisor_conformance::AwaitStatus;
using hypervisor_conformance::TestLaunch;
constexpr int64_t kMs = 1'000'000;

class FakeHypervisorTest : public testing::Test {
 protected:
  FakeHypervisorTest() : random_(1) {
    FakeHypervisorOptions o;
    o.host = "node7";
    o.latency_ns_min = 10 * kMs;
    o.latency_ns_max = 20 * kMs;
    o.acpi_shutdown_ns = 500 * kMs;
    hv_ = std::make_unique<FakeHypervisor>(&loop_, &random_, o);
    hv_->SetObserver([this](const FakeRunEvent& e) { events_.push_back(e); });
  }
  absl::Status Start(const std::string& name, uint64_t epoch) {
    return AwaitStatus(&loop_, [&](auto done) { hv_->Start(TestLaunch(name, epoch), done); });
  }

  scribe::SimLoop loop_;
  scribe::SeededRandom random_;
  std::vector<FakeRunEvent> events_;  // before hv_: its destructor reports stops here
  std::unique_ptr<FakeHypervisor> hv_;
};

TEST_F(FakeHypervisorTest, ObserverSeesStartAndStopAtTheirEffectTimes) {
  const int64_t t0 = loop_.NowNanos();
  ASSERT_TRUE(Start("a", 4).ok());
  ASSERT_EQ(events_.size(), 1u);
  EXPECT_EQ(events_[0].kind, FakeRunEvent::Kind::kStart);
  EXPECT_EQ(events_[0].host, "node7");
  EXPECT_EQ(events_[0].vm, "a");
  EXPECT_EQ(events_[0].epoch, 4u);
  EXPECT_GE(events_[0].time_ns, t0 + 10 * kMs);
  EXPECT_LE(events_[0].time_ns, t0 + 20 * kMs);
  EXPECT_EQ(events_[0].ram_bytes, 256ull << 20);
  ASSERT_TRUE(AwaitStatus(&loop_, [&](auto done) { hv_->ForceOff("a", done); }).ok());
  ASSERT_EQ(events_.size(), 2u);
  EXPECT_EQ(events_[1].kind, FakeRunEvent::Kind::kStop);
  EXPECT_EQ(events_[1].reason, "force off");
}

TEST_F(FakeHypervisorTest, AcpiShutdownTakesTheGuestsTime) {
  ASSERT_TRUE(Start("a", 1).ok());
  ASSERT_TRUE(AwaitStatus(&loop_, [&](auto done) { hv_->Shutdown("a", done); }).ok());
  const int64_t pressed = loop_.NowNanos();
  EXPECT_EQ(hv_->Running(), std::vector<std::string>{"a"});
  loop_.RunUntil([&] { return hv_->Running().empty(); }, 10'000 * kMs);
  EXPECT_TRUE(hv_->Running().empty());
  EXPECT_GE(loop_.NowNanos() - pressed, 500 * kMs - 20 * kMs);
  EXPECT_EQ(events_.back().reason, "acpi");
}

TEST_F(FakeHypervisorTest, GuestIgnoringAcpiKeepsRunning) {
  ASSERT_TRUE(Start("a", 1).ok());
  hv_->SetIgnoresAcpi("a", true);
  ASSERT_TRUE(AwaitStatus(&loop_, [&](auto done) { hv_->Shutdown("a", done); }).ok());
  loop_.RunUntil([] { return false; }, 5'000 * kMs);
  EXPECT_EQ(hv_->Running(), std::vector<std::string>{"a"});
}

TEST_F(FakeHypervisorTest, LateAcpiTimerDoesNotStopTheNextIncarnation) {
  ASSERT_TRUE(Start("a", 1).ok());
  ASSERT_TRUE(AwaitStatus(&loop_, [&](auto done) { hv_->Shutdown("a", done); }).ok());
  ASSERT_TRUE(AwaitStatus(&loop_, [&](auto done) { hv_->ForceOff("a", done); }).ok());
  ASSERT_TRUE(Start("a", 2).ok());
  loop_.RunUntil([] { return false; }, 2'000 * kMs);
  EXPECT_EQ(hv_->Running(), std::vector<std::string>{"a"});
}

TEST_F(FakeHypervisorTest, CrashGuestAndInjectedStartFailure) {
  ASSERT_TRUE(Start("a", 1).ok());
  EXPECT_TRUE(hv_->CrashGuest("a"));
  EXPECT_FALSE(hv_->CrashGuest("a"));
  EXPECT_EQ(events_.back().reason, "guest crash");
  hv_->FailNextStarts(1);
  EXPECT_EQ(Start("a", 2).code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(hv_->Running().empty());
  ASSERT_NE(hv_->DefinedLaunch("a"), nullptr);
  EXPECT_EQ(hv_->DefinedLaunch("a")->epoch, 2u);
  EXPECT_TRUE(Start("a", 2).ok());
  EXPECT_EQ(hv_->starts(), 2u);
}

TEST_F(FakeHypervisorTest, HostDeathStopsEveryVmAndDropsCallbacks) {
  ASSERT_TRUE(Start("a", 1).ok());
  ASSERT_TRUE(Start("b", 1).ok());
  bool called = false;
  hv_->Start(TestLaunch("c", 1), [&](absl::Status) { called = true; });
  const int64_t death = loop_.NowNanos();
  hv_.reset();
  loop_.RunUntil([] { return false; }, 1'000 * kMs);
  EXPECT_FALSE(called);
  ASSERT_EQ(events_.size(), 4u);
  for (size_t i = 2; i < 4; ++i) {
    EXPECT_EQ(events_[i].kind, FakeRunEvent::Kind::kStop);
    EXPECT_EQ(events_[i].reason, "host died");
    EXPECT_EQ(events_[i].time_ns, death);
  }
}

}  // namespace
}  // namespace hypercore
