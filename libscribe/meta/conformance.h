// Conformance checks for MetaStore. Each check drives a store through its public
// contract only and returns a failure naming the first deviation, so the same checks run
// against InMemoryMetaStore (on a SimLoop and on a RealLoop), against a real etcd, and
// against deliberately broken stores to prove they can fail.
//
// Every check writes only under its own key prefix ("/conformance/<check>/"), so checks
// may share one store, each at most once.
#ifndef SCRIBE_META_CONFORMANCE_H_
#define SCRIBE_META_CONFORMANCE_H_

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "scribe/meta_store.h"

namespace scribe::meta_conformance {

// How long things may take on the store under test (loop time).
struct Timing {
  // TTL asked for in the lease checks. etcd grants whole seconds.
  int64_t lease_ttl_ms = 1'000;
  // How long after its TTL a lease may take to vanish (etcd checks every 500 ms and
  // revokes through raft).
  int64_t expiry_slack_ms = 3'000;
  // How long a store is given to show a watch event (or that there is none).
  int64_t settle_ms = 1'000;
  // Bound on any single call.
  int64_t call_timeout_ms = 10'000;
};

// Runs `op` and the loop until its callback reports, or the timeout passes (then
// DEADLINE_EXCEEDED, which no store returns by itself).
template <typename T>
absl::StatusOr<T> Await(Loop* loop, const std::function<void(MetaStore::Done<T>)>& op,
                        int64_t timeout_ms = 10'000) {
  bool done = false;
  absl::StatusOr<T> result = absl::UnknownError("no result");
  op([&](absl::StatusOr<T> r) {
    result = std::move(r);
    done = true;
  });
  if (!loop->RunUntil([&] { return done; }, timeout_ms * 1'000'000)) {
    return absl::DeadlineExceededError("meta store call did not complete");
  }
  return result;
}

// Get/Put/Delete semantics: missing keys, revisions that grow, binary keys and values,
// empty values, Delete reporting whether the key existed, oversized requests rejected.
testing::AssertionResult CheckGetPutDelete(Loop* loop, MetaStore* store, const Timing& timing);
// List returns exactly the keys under the prefix, sorted bytewise (keys next to the
// prefix's bounds, and bytes 0x00 and 0xff, included), at a revision no older than the
// last write.
testing::AssertionResult CheckListSortedAndPrefixBounded(Loop* loop, MetaStore* store,
                                                         const Timing& timing);
// Two clients `a` and `b` of the same store race: create-if-absent (expected 0) and
// swap-from-the-same-revision each have exactly one winner, whose value stays; stale and
// "must not exist" swaps on an existing key fail without changing it.
testing::AssertionResult CheckCasConflict(Loop* loop, MetaStore* a, MetaStore* b,
                                          const Timing& timing);
// Keys put with a lease vanish once its TTL passes without renewal — never before the
// TTL, and within expiry_slack_ms after — while other keys stay; the ended lease is
// then NOT_FOUND for KeepAlive, Put and RevokeLease.
testing::AssertionResult CheckLeaseExpiry(Loop* loop, MetaStore* store, const Timing& timing);
// Renewing every third of the TTL keeps leased keys for several TTLs; revoking the lease
// removes them at once.
testing::AssertionResult CheckKeepAliveKeepsKeys(Loop* loop, MetaStore* store,
                                                 const Timing& timing);
// A watch from a listed revision sees exactly the puts and deletes under its prefix, in
// order, with the revisions the writes reported (lease revocation included); a second
// watch started later from the same revision replays the same history; a cancelled
// watch sees nothing more.
testing::AssertionResult CheckWatchSeesChangesInOrder(Loop* loop, MetaStore* store,
                                                      const Timing& timing);
// A store that cannot reach its backend fails every call UNAVAILABLE within `within_ms`,
// with `message_part` (e.g. the address) in the message.
testing::AssertionResult CheckUnavailableFailsFast(Loop* loop, MetaStore* down_store,
                                                   int64_t within_ms,
                                                   const std::string& message_part);

}  // namespace scribe::meta_conformance

#endif  // SCRIBE_META_CONFORMANCE_H_
