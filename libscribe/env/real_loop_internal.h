// Internals of RealLoop shared with the other real components (aio device, transport).
#ifndef SCRIBE_ENV_REAL_LOOP_INTERNAL_H_
#define SCRIBE_ENV_REAL_LOOP_INTERNAL_H_

#include <kj/async-io.h>
#include <kj/async-unix.h>

#include <deque>
#include <functional>
#include <map>

#include "scribe/real_env.h"

namespace scribe {

struct RealLoop::Impl {
  kj::AsyncIoContext io = kj::setupAsyncIo();

  struct Key {
    int64_t deadline_ns;
    TimerId id;
    bool operator<(const Key& o) const {
      return deadline_ns != o.deadline_ns ? deadline_ns < o.deadline_ns : id < o.id;
    }
  };
  TimerId next_id = 1;
  std::map<Key, std::function<void()>> timers;
  std::map<TimerId, int64_t> deadline_of;
  // Posted callbacks, in order: run before due timers, with no deadline bookkeeping.
  std::deque<std::function<void()>> ready;

  // Set while RunUntil blocks in KJ: any callback fulfils it so RunUntil re-checks.
  kj::Own<kj::PromiseFulfiller<void>> wakeup;
  bool in_run_until = false;
};

}  // namespace scribe

#endif  // SCRIBE_ENV_REAL_LOOP_INTERNAL_H_
