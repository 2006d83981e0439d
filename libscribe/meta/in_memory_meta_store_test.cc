// InMemoryMetaStore beyond the shared conformance suite: virtual-time lease expiry,
// clients cut off independently, watches pausing and catching up, history compaction,
// determinism and teardown.
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "libscribe/meta/conformance.h"
#include "scribe/meta_store.h"
#include "scribe/sim_env.h"

namespace scribe {
namespace {

using meta_conformance::Await;
constexpr int64_t kMs = 1'000'000;

class InMemoryMetaStoreTest : public testing::Test {
 protected:
  absl::StatusOr<int64_t> Put(MetaStore* s, const std::string& key, const std::string& value,
                              LeaseId lease = {}) {
    return Await<int64_t>(&loop_, [&](auto done) { s->Put(key, value, lease, done); });
  }
  absl::StatusOr<std::optional<KeyValue>> Get(MetaStore* s, const std::string& key) {
    return Await<std::optional<KeyValue>>(&loop_, [&](auto done) { s->Get(key, done); });
  }
  absl::StatusOr<Lease> Grant(MetaStore* s, int64_t ttl_ms) {
    return Await<Lease>(&loop_, [&](auto done) { s->GrantLease(ttl_ms, done); });
  }
  absl::StatusOr<int64_t> KeepAlive(MetaStore* s, LeaseId lease) {
    return Await<int64_t>(&loop_, [&](auto done) { s->KeepAlive(lease, done); });
  }
  void RunFor(int64_t ns) {
    const int64_t until = loop_.NowNanos() + ns;
    loop_.RunUntil([&] { return loop_.NowNanos() >= until; }, ns);
  }

  SimLoop loop_;
};

TEST_F(InMemoryMetaStoreTest, LeaseExpiresExactlyAtItsTtlInVirtualTime) {
  auto store = InMemoryMetaStore::Create(&loop_);
  auto lease = Grant(store.get(), 10'000);
  ASSERT_TRUE(lease.ok());
  const int64_t granted_ns = loop_.NowNanos();
  ASSERT_TRUE(Put(store.get(), "/a", "1", lease->id).ok());
  ASSERT_TRUE(Put(store.get(), "/b", "2", lease->id).ok());
  const int64_t before = store->revision();
  loop_.RunUntil([] { return false; }, granted_ns + 10'000 * kMs - 1 - loop_.NowNanos());
  EXPECT_TRUE(Get(store.get(), "/a")->has_value());
  loop_.RunUntil([] { return false; }, 1);
  EXPECT_FALSE(Get(store.get(), "/a")->has_value());
  EXPECT_FALSE(Get(store.get(), "/b")->has_value());
  EXPECT_EQ(store->revision(), before + 1) << "both keys go in one revision";
}

TEST_F(InMemoryMetaStoreTest, CutOffClientFailsWhileOthersCarryOn) {
  auto a = InMemoryMetaStore::Create(&loop_);
  auto b = a->NewClient();
  std::vector<WatchEvent> seen;
  auto watch = b->Watch("/", 0, [&](const WatchEvent& e) { seen.push_back(e); });
  b->SetAvailable(false);
  EXPECT_EQ(Put(b.get(), "/x", "from b").status().code(), absl::StatusCode::kUnavailable);
  std::vector<int64_t> revisions;
  for (int i = 0; i < 5; ++i) revisions.push_back(*Put(a.get(), "/x", absl::StrFormat("%d", i)));
  RunFor(100 * kMs);
  EXPECT_TRUE(seen.empty()) << "a cut-off client's watch delivers nothing";
  b->SetAvailable(true);
  loop_.RunUntil([&] { return seen.size() == 5; }, 1'000 * kMs);
  ASSERT_EQ(seen.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(seen[i].value, absl::StrFormat("%d", i));
    EXPECT_EQ(seen[i].revision, revisions[i]);
  }
  EXPECT_EQ((*Get(b.get(), "/x"))->value, "4");
}

TEST_F(InMemoryMetaStoreTest, CallInFlightWhenCutOffFails) {
  InMemoryMetaStoreOptions options;
  options.latency_ns = 10 * kMs;
  auto store = InMemoryMetaStore::Create(&loop_, options);
  std::optional<absl::StatusOr<int64_t>> result;
  store->Put("/k", "v", [&](absl::StatusOr<int64_t> r) { result = r; });
  store->SetAvailable(false);
  loop_.RunUntil([&] { return result.has_value(); }, 100 * kMs);
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->status().code(), absl::StatusCode::kUnavailable);
  store->SetAvailable(true);
  EXPECT_FALSE(Get(store.get(), "/k")->has_value());
}

TEST_F(InMemoryMetaStoreTest, IsolatedNodeLosesItsLease) {
  auto node = InMemoryMetaStore::Create(&loop_);
  auto peer = node->NewClient();
  auto lease = Grant(node.get(), 3'000);
  ASSERT_TRUE(Put(node.get(), "/nodes/1", "alive", lease->id).ok());
  node->SetAvailable(false);
  EXPECT_EQ(KeepAlive(node.get(), lease->id).status().code(), absl::StatusCode::kUnavailable);
  RunFor(3'001 * kMs);
  EXPECT_FALSE(Get(peer.get(), "/nodes/1")->has_value());
  node->SetAvailable(true);
  EXPECT_EQ(KeepAlive(node.get(), lease->id).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(InMemoryMetaStoreTest, WatchFromCompactedHistoryReportsCompaction) {
  InMemoryMetaStoreOptions options;
  options.history_events_max = 4;
  auto store = InMemoryMetaStore::Create(&loop_, options);
  std::vector<int64_t> revisions;
  for (int i = 0; i < 10; ++i)
    revisions.push_back(*Put(store.get(), "/k", absl::StrFormat("%d", i)));
  std::vector<WatchEvent> old_events, kept_events;
  auto old_watch =
      store->Watch("/", revisions[0], [&](const WatchEvent& e) { old_events.push_back(e); });
  auto kept_watch =
      store->Watch("/", revisions[6], [&](const WatchEvent& e) { kept_events.push_back(e); });
  RunFor(10 * kMs);
  ASSERT_EQ(old_events.size(), 1u);
  EXPECT_EQ(old_events[0].type, WatchEvent::Type::kCompacted);
  EXPECT_EQ(old_events[0].revision, revisions[6]);
  ASSERT_EQ(kept_events.size(), 4u);
  EXPECT_EQ(kept_events[0].value, "6");
  // The ended watch stays silent; the other goes on.
  ASSERT_TRUE(Put(store.get(), "/k", "10").ok());
  RunFor(10 * kMs);
  EXPECT_EQ(old_events.size(), 1u);
  EXPECT_EQ(kept_events.size(), 5u);
}

TEST_F(InMemoryMetaStoreTest, WatcherThatFallsBehindWhileCutOffIsCompacted) {
  InMemoryMetaStoreOptions options;
  options.history_events_max = 3;
  auto a = InMemoryMetaStore::Create(&loop_, options);
  auto b = a->NewClient();
  std::vector<WatchEvent> seen;
  auto watch = b->Watch("/", 0, [&](const WatchEvent& e) { seen.push_back(e); });
  b->SetAvailable(false);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Put(a.get(), "/k", "v").ok());
  b->SetAvailable(true);
  RunFor(10 * kMs);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].type, WatchEvent::Type::kCompacted);
}

TEST_F(InMemoryMetaStoreTest, WatchFromZeroSeesOnlyLaterChanges) {
  auto store = InMemoryMetaStore::Create(&loop_);
  ASSERT_TRUE(Put(store.get(), "/k", "before").ok());
  std::vector<WatchEvent> seen;
  auto watch = store->Watch("/", 0, [&](const WatchEvent& e) { seen.push_back(e); });
  ASSERT_TRUE(Put(store.get(), "/k", "after").ok());
  RunFor(10 * kMs);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].value, "after");
}

TEST_F(InMemoryMetaStoreTest, SameCallsGiveSameRevisionsAndLeaseIds) {
  auto run = [&] {
    SimLoop loop;
    auto store = InMemoryMetaStore::Create(&loop);
    std::vector<int64_t> out;
    for (int i = 0; i < 3; ++i) {
      out.push_back(Await<Lease>(&loop, [&](auto d) { store->GrantLease(1'000, d); })->id.value);
      out.push_back(*Await<int64_t>(&loop, [&](auto d) { store->Put("/k", "v", d); }));
    }
    loop.RunUntil([] { return false; }, 5'000 * kMs);
    out.push_back(store->revision());
    return out;
  };
  EXPECT_EQ(run(), run());
}

TEST_F(InMemoryMetaStoreTest, TeardownDropsCallbacksAndKeepsSharedData) {
  InMemoryMetaStoreOptions options;
  options.latency_ns = 10 * kMs;
  auto a = InMemoryMetaStore::Create(&loop_, options);
  auto b = a->NewClient();
  auto first = Put(a.get(), "/k", "v");
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(Put(b.get(), "/k", "w").ok());
  // A call and a watch with events to deliver, both pending when their client goes.
  bool called = false;
  a->Get("/k", [&](auto) { called = true; });
  auto watch = a->Watch("/", *first, [&](const WatchEvent&) { called = true; });
  a.reset();
  RunFor(100 * kMs);
  EXPECT_FALSE(called);
  watch.reset();  // after its store: harmless
  EXPECT_EQ((*Get(b.get(), "/k"))->value, "w") << "the data lives while any client does";
}

}  // namespace
}  // namespace scribe
