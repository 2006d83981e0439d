#include <memory>
#include <vector>

#include "libscribe/env/conformance.h"
#include "scribe/real_env.h"
#include "scribe/sim_env.h"

namespace scribe {
namespace {

struct LoopFactory {
  const char* name;
  std::function<std::unique_ptr<Loop>()> make;
};

class LoopConformance : public testing::TestWithParam<LoopFactory> {
 protected:
  std::unique_ptr<Loop> loop_ = GetParam().make();
};

TEST_P(LoopConformance, TimersFireInDeadlineOrder) {
  EXPECT_TRUE(conformance::CheckTimersFireInDeadlineOrder(loop_.get()));
}
TEST_P(LoopConformance, CancelledTimerNeverRuns) {
  EXPECT_TRUE(conformance::CheckCancelledTimerNeverRuns(loop_.get()));
}
TEST_P(LoopConformance, RunUntilTimesOut) {
  EXPECT_TRUE(conformance::CheckRunUntilTimesOut(loop_.get()));
}
TEST_P(LoopConformance, ClockIsMonotonic) {
  EXPECT_TRUE(conformance::CheckClockIsMonotonic(loop_.get()));
}

TEST_P(LoopConformance, PostsRunInOrder) {
  std::vector<int> order;
  for (int i = 0; i < 5; ++i) loop_->Post([&order, i] { order.push_back(i); });
  EXPECT_TRUE(loop_->RunUntil([&] { return order.size() == 5; }, 5'000'000'000));
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST_P(LoopConformance, OncePerTurnRunsOncePerTurnAndNotAfterItIsGone) {
  int runs = 0;
  auto once = std::make_unique<OncePerTurn>(loop_.get(), [&] { ++runs; });
  once->Request();
  once->Request();
  once->Request();
  bool later = false;
  loop_->RunAfter(1'000'000, [&] { later = true; });
  EXPECT_TRUE(loop_->RunUntil([&] { return later; }, 5'000'000'000));
  EXPECT_EQ(runs, 1);
  once->Request();  // a new turn: runs again
  later = false;
  loop_->RunAfter(1'000'000, [&] { later = true; });
  EXPECT_TRUE(loop_->RunUntil([&] { return later; }, 5'000'000'000));
  EXPECT_EQ(runs, 2);
  once->Request();
  once.reset();  // gone before its turn: never runs
  later = false;
  loop_->RunAfter(1'000'000, [&] { later = true; });
  EXPECT_TRUE(loop_->RunUntil([&] { return later; }, 5'000'000'000));
  EXPECT_EQ(runs, 2);
}

INSTANTIATE_TEST_SUITE_P(
    All, LoopConformance,
    testing::Values(LoopFactory{"real", [] { return std::unique_ptr<Loop>(RealLoop::Create()); }},
                    LoopFactory{"sim", [] { return std::unique_ptr<Loop>(new SimLoop()); }}),
    [](const auto& info) { return std::string(info.param.name); });

// A loop that drops every other timer: the ordering check must catch it.
class ForgetfulLoop : public SimLoop {
 public:
  TimerId RunAfter(int64_t delay_ns, std::function<void()> fn) override {
    if (++n_ % 2 == 0) return SimLoop::RunAfter(delay_ns, [] {});
    return SimLoop::RunAfter(delay_ns, std::move(fn));
  }

 private:
  int n_ = 0;
};

TEST(LoopConformanceCanFail, DetectsDroppedTimers) {
  ForgetfulLoop loop;
  EXPECT_FALSE(conformance::CheckTimersFireInDeadlineOrder(&loop));
}

TEST(SimLoop, IdleTimeJumpsToNextTimerInstantly) {
  SimLoop loop;
  bool fired = false;
  loop.RunAfter(3'600'000'000'000, [&] { fired = true; });  // one hour of virtual time
  EXPECT_TRUE(loop.RunUntil([&] { return fired; }, 7'200'000'000'000));
  EXPECT_EQ(loop.NowNanos(), 3'600'000'000'000);
}

TEST(RealLoop, PostFromFdCallbackWakesRunUntil) {
  auto loop = RealLoop::Create();
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  bool posted_ran = false;
  auto watch = loop->WatchReadable(fds[0], [&] {
    char c;
    (void)read(fds[0], &c, 1);
    loop->Post([&] { posted_ran = true; });
  });
  ASSERT_EQ(write(fds[1], "x", 1), 1);
  EXPECT_TRUE(loop->RunUntil([&] { return posted_ran; }, 5'000'000'000));
  watch.reset();
  close(fds[0]);
  close(fds[1]);
}

}  // namespace
}  // namespace scribe
