#include <utility>

#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe {

namespace {
// splitmix64: expands one seed into the xoshiro state.
uint64_t SplitMix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

SeededRandom::SeededRandom(uint64_t seed) {
  for (auto& s : s_) s = SplitMix(seed);
}

uint64_t SeededRandom::Next64() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

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
