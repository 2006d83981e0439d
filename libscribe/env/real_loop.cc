#include <time.h>

#include <kj/debug.h>

#include <utility>

#include "libscribe/env/real_loop_internal.h"
#include "scribe/status.h"

namespace scribe {

RealLoop::RealLoop() : impl_(std::make_unique<Impl>()) {}
RealLoop::~RealLoop() = default;

std::unique_ptr<RealLoop> RealLoop::Create() { return std::unique_ptr<RealLoop>(new RealLoop()); }

int64_t RealLoop::NowNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

Loop::TimerId RealLoop::RunAfter(int64_t delay_ns, std::function<void()> fn) {
  SCRIBE_CHECK(delay_ns >= 0);
  const TimerId id = impl_->next_id++;
  const int64_t deadline = NowNanos() + delay_ns;
  impl_->timers.emplace(Impl::Key{deadline, id}, std::move(fn));
  impl_->deadline_of.emplace(id, deadline);
  // A timer set from a KJ-driven callback must wake a blocked RunUntil.
  if (impl_->wakeup) impl_->wakeup->fulfill();
  return id;
}

void RealLoop::Post(std::function<void()> fn) {
  impl_->ready.push_back(std::move(fn));
  if (impl_->wakeup) impl_->wakeup->fulfill();
}

bool RealLoop::Cancel(TimerId id) {
  auto it = impl_->deadline_of.find(id);
  if (it == impl_->deadline_of.end()) return false;
  impl_->timers.erase(Impl::Key{it->second, id});
  impl_->deadline_of.erase(it);
  return true;
}

void RealLoop::Dispatch(const std::function<void()>& fn) {
  fn();
  if (impl_->wakeup) impl_->wakeup->fulfill();
}

bool RealLoop::RunUntil(const std::function<bool()>& done, int64_t timeout_ns) {
  SCRIBE_CHECK(!impl_->in_run_until);  // callbacks must not nest RunUntil
  impl_->in_run_until = true;
  const int64_t deadline = NowNanos() + timeout_ns;
  bool result = false;
  // Posted callbacks and due timers run first, but never more than this many between
  // two polls for I/O: a stream of them (work that posts more work, completions that
  // re-arm timers) must not starve device completions and RPC deliveries.
  constexpr int kCallbacksBetweenPolls = 64;
  int budget = kCallbacksBetweenPolls;
  for (;;) {
    if (done()) {
      result = true;
      break;
    }
    // Posted callbacks, one at a time, in order.
    if (!impl_->ready.empty() && budget > 0) {
      std::function<void()> fn = std::move(impl_->ready.front());
      impl_->ready.pop_front();
      --budget;
      fn();
      continue;
    }
    // Due timers, one at a time, in deadline order.
    const int64_t now = NowNanos();
    if (!impl_->timers.empty() && impl_->timers.begin()->first.deadline_ns <= now && budget > 0) {
      auto it = impl_->timers.begin();
      std::function<void()> fn = std::move(it->second);
      impl_->deadline_of.erase(it->first.id);
      impl_->timers.erase(it);
      --budget;
      fn();
      continue;
    }
    // Whatever KJ has ready (I/O completions, RPC deliveries) without blocking.
    budget = kCallbacksBetweenPolls;
    impl_->io.waitScope.poll();
    if (done()) {
      result = true;
      break;
    }
    const int64_t after_poll = NowNanos();
    if (!impl_->ready.empty() ||
        (!impl_->timers.empty() && impl_->timers.begin()->first.deadline_ns <= after_poll)) {
      continue;
    }
    if (after_poll >= deadline) break;
    int64_t wake = deadline;
    if (!impl_->timers.empty()) wake = std::min(wake, impl_->timers.begin()->first.deadline_ns);
    auto paf = kj::newPromiseAndFulfiller<void>();
    impl_->wakeup = std::move(paf.fulfiller);
    auto sleep = impl_->io.provider->getTimer().afterDelay((wake - after_poll) * kj::NANOSECONDS);
    paf.promise.exclusiveJoin(kj::mv(sleep)).wait(impl_->io.waitScope);
    impl_->wakeup = nullptr;
  }
  impl_->in_run_until = false;
  return result;
}

namespace {
class KjFdWatch : public RealLoop::FdWatch {
 public:
  KjFdWatch(RealLoop* loop, int fd, std::function<void()> on_readable)
      : loop_(loop),
        observer_(loop->impl()->io.unixEventPort, fd, kj::UnixEventPort::FdObserver::OBSERVE_READ),
        on_readable_(std::move(on_readable)),
        task_(Watch().eagerlyEvaluate([](kj::Exception&& e) {
          KJ_LOG(FATAL, "fd watch failed", e);
          std::abort();
        })) {}
  // KJ promises may throw from destructors; a watch going away must not.
  ~KjFdWatch() noexcept override {}

 private:
  kj::Promise<void> Watch() {
    return observer_.whenBecomesReadable().then([this]() {
      loop_->Dispatch(on_readable_);
      return Watch();
    });
  }
  RealLoop* loop_;
  kj::UnixEventPort::FdObserver observer_;
  std::function<void()> on_readable_;
  kj::Promise<void> task_;
};
}  // namespace

std::unique_ptr<RealLoop::FdWatch> RealLoop::WatchReadable(int fd,
                                                           std::function<void()> on_readable) {
  return std::make_unique<KjFdWatch>(this, fd, std::move(on_readable));
}

}  // namespace scribe
