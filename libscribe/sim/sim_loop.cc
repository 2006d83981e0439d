#include <utility>

#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe {

Loop::TimerId SimLoop::RunAfter(int64_t delay_ns, std::function<void()> fn) {
  SCRIBE_CHECK(delay_ns >= 0);
  const TimerId id = next_id_++;
  const int64_t deadline = now_ns_ + delay_ns;
  timers_.emplace(Key{deadline, id}, std::move(fn));
  deadline_of_.emplace(id, deadline);
  return id;
}

bool SimLoop::Cancel(TimerId id) {
  auto it = deadline_of_.find(id);
  if (it == deadline_of_.end()) return false;
  timers_.erase(Key{it->second, id});
  deadline_of_.erase(it);
  return true;
}

bool SimLoop::RunOne() {
  if (timers_.empty()) return false;
  auto it = timers_.begin();
  SCRIBE_CHECK(it->first.deadline_ns >= now_ns_);
  now_ns_ = it->first.deadline_ns;
  std::function<void()> fn = std::move(it->second);
  deadline_of_.erase(it->first.id);
  timers_.erase(it);
  fn();
  return true;
}

bool SimLoop::RunUntil(const std::function<bool()>& done, int64_t timeout_ns) {
  const int64_t deadline = now_ns_ + timeout_ns;
  while (!done()) {
    if (timers_.empty() || timers_.begin()->first.deadline_ns > deadline) {
      // Nothing can happen before the deadline: time passes idle.
      if (deadline > now_ns_) now_ns_ = deadline;
      return done();
    }
    RunOne();
  }
  return true;
}

}  // namespace scribe
