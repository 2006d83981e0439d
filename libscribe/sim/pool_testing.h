// Test helpers for code that drives a Pool on a loop.
#ifndef LIBSCRIBE_SIM_POOL_TESTING_H_
#define LIBSCRIBE_SIM_POOL_TESTING_H_

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <utility>

#include "scribe/env.h"
#include "scribe/pool.h"

namespace scribe {

// Pool::Fsck, with the loop run until it answers. A failed Fsck (its metadata pages
// could not be read, or no answer within `timeout_ns`) fails the test and comes back as
// a report holding that error, so that a caller's `EXPECT_TRUE(report.ok())` fails too.
inline FsckReport FsckOrFailure(Loop* loop, Pool* pool, int64_t timeout_ns = 600'000'000'000) {
  std::optional<absl::StatusOr<FsckReport>> r;
  pool->Fsck([&](absl::StatusOr<FsckReport> v) { r = std::move(v); });
  loop->RunUntil([&] { return r.has_value(); }, timeout_ns);
  const absl::Status st = r ? r->status() : absl::DeadlineExceededError("Fsck did not complete");
  if (st.ok()) return std::move(**r);
  ADD_FAILURE() << "Fsck failed: " << st;
  FsckReport failed;
  failed.errors.push_back("Fsck failed: " + st.ToString());
  return failed;
}

}  // namespace scribe

#endif  // LIBSCRIBE_SIM_POOL_TESTING_H_
