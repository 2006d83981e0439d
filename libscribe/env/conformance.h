// Conformance checks for the environment interfaces. Each check drives an
// implementation through its public contract only and returns a failure naming the
// first deviation, so the same check runs against the real and the simulated
// implementation, and against deliberately broken ones to prove it can fail.
#ifndef SCRIBE_ENV_CONFORMANCE_H_
#define SCRIBE_ENV_CONFORMANCE_H_

#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "scribe/env.h"

namespace scribe::conformance {

// Runs `op` and the loop until its callback reports; a timeout is DEADLINE_EXCEEDED.
absl::Status Await(Loop* loop, const std::function<void(BlockDevice::Callback)>& op,
                   int64_t timeout_ns = 10'000'000'000);

// --- Loop ---
testing::AssertionResult CheckTimersFireInDeadlineOrder(Loop* loop);
testing::AssertionResult CheckCancelledTimerNeverRuns(Loop* loop);
testing::AssertionResult CheckRunUntilTimesOut(Loop* loop);
testing::AssertionResult CheckClockIsMonotonic(Loop* loop);

// --- BlockDevice (a device whose first 8 MiB may be overwritten) ---
// Random sector-aligned writes of many lengths read back byte for byte, including
// partial overwrites of earlier writes.
testing::AssertionResult CheckReadBackExact(Loop* loop, BlockDevice* dev, Random* random);
// Unaligned, out-of-range and misaligned-buffer requests fail with the documented codes
// and change nothing.
testing::AssertionResult CheckRejectsBadRequests(Loop* loop, BlockDevice* dev);
// Many writes in flight at once to disjoint ranges all land.
testing::AssertionResult CheckConcurrentWrites(Loop* loop, BlockDevice* dev, Random* random);
// A durable (FUA) write reads back exactly.
// Writes to adjacent ranges with gaps and reads among them, issued in one loop turn.
testing::AssertionResult CheckAdjacentWrites(Loop* loop, BlockDevice* dev, Random* random);
testing::AssertionResult CheckWriteDurable(Loop* loop, BlockDevice* dev, Random* random);
// Flush succeeds and keeps data; a discarded range reads as zeros or as its old data.
testing::AssertionResult CheckFlushAndDiscard(Loop* loop, BlockDevice* dev, Random* random);

// --- Transport (endpoints on one loop, all peers of each other) ---
// Every endpoint sends to every other, including empty, binary and 1 MiB payloads;
// each arrives exactly once, whole, with the right sender.
testing::AssertionResult CheckAllPairsDelivery(Loop* loop, const std::vector<Transport*>& eps);
// Sending to a node nobody knows is dropped without disturbing other traffic.
testing::AssertionResult CheckUnknownPeerIsDropped(Loop* loop, const std::vector<Transport*>& eps);

}  // namespace scribe::conformance

#endif  // SCRIBE_ENV_CONFORMANCE_H_
