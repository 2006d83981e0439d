// EtcdMetaStore against a real etcd child process: what the shared conformance suite
// cannot show — etcd dying and coming back under a live watch, a server that accepts
// connections but never answers, compaction under a watch, and etcd's lease rounding.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "libscribe/meta/conformance.h"
#include "libscribe/meta/etcd_process.h"
#include "scribe/meta_store.h"
#include "scribe/real_env.h"
#include "scribe/status.h"

namespace scribe {
namespace {

using meta_conformance::Await;

std::string MakeTempDir() {
  const char* base = getenv("TEST_TMPDIR");
  std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/etcd.XXXXXX";
  SCRIBE_CHECK(mkdtemp(pattern.data()) != nullptr);
  return pattern;
}

int64_t NowMs(Loop* loop) { return loop->NowNanos() / 1'000'000; }

void Sleep(Loop* loop, int64_t ms) {
  bool fired = false;
  loop->RunAfter(ms * 1'000'000, [&] { fired = true; });
  loop->RunUntil([&] { return fired; }, (ms + 10'000) * 1'000'000);
}

absl::StatusOr<int64_t> Put(Loop* loop, MetaStore* store, const std::string& key,
                            const std::string& value) {
  return Await<int64_t>(loop, [&](auto done) { store->Put(key, value, done); });
}

class EtcdMetaStoreTest : public testing::Test {
 protected:
  void SetUp() override {
    auto etcd = EtcdProcess::Start(loop_.get(), MakeTempDir());
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(etcd).value();
    EtcdMetaStoreOptions options;
    options.endpoint = etcd_->endpoint();
    options.request_timeout_ms = kTimeoutMs;
    options.watch_retry_ms = 100;
    store_ = EtcdMetaStore::Create(loop_.get(), options).value();
  }

  static constexpr int64_t kTimeoutMs = 1'000;
  std::unique_ptr<RealLoop> loop_ = RealLoop::Create();
  std::unique_ptr<EtcdProcess> etcd_;
  std::unique_ptr<EtcdMetaStore> store_;
};

TEST_F(EtcdMetaStoreTest, KilledEtcdFailsUnavailableWithinTimeoutAndWatchResumes) {
  Loop* loop = loop_.get();
  auto listed = Await<ListResult>(loop, [&](auto done) { store_->List("/nodes/", done); });
  ASSERT_TRUE(listed.ok()) << listed.status();
  std::vector<WatchEvent> events;
  auto watch = store_->Watch("/nodes/", listed->revision + 1,
                             [&](const WatchEvent& e) { events.push_back(e); });
  auto r1 = Put(loop, store_.get(), "/nodes/1", "up");
  ASSERT_TRUE(r1.ok()) << r1.status();
  loop->RunUntil([&] { return events.size() == 1; }, 5'000'000'000);
  ASSERT_EQ(events.size(), 1u);

  etcd_->Kill();
  for (int i = 0; i < 3; ++i) {
    const int64_t start = NowMs(loop);
    auto r =
        Await<std::optional<KeyValue>>(loop, [&](auto done) { store_->Get("/nodes/1", done); });
    const int64_t took_ms = NowMs(loop) - start;
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), etcd_->address())) << r.status();
    EXPECT_LE(took_ms, kTimeoutMs + 100);
  }
  const int64_t start = NowMs(loop);
  auto put = Put(loop, store_.get(), "/nodes/2", "up");
  EXPECT_EQ(put.status().code(), absl::StatusCode::kUnavailable) << put.status();
  EXPECT_LE(NowMs(loop) - start, kTimeoutMs + 100);
  auto lease = Await<Lease>(loop, [&](auto done) { store_->GrantLease(5'000, done); });
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kUnavailable) << lease.status();

  // Back on the same data: the same client works again, and the watch resumes after
  // the event it had, missing nothing written once etcd is back (even before the watch
  // has reconnected) and repeating nothing.
  ASSERT_TRUE(etcd_->Restart().ok());
  auto got =
      Await<std::optional<KeyValue>>(loop, [&](auto done) { store_->Get("/nodes/1", done); });
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->value, "up");
  EXPECT_EQ((*got)->mod_revision, *r1);
  auto r2 = Put(loop, store_.get(), "/nodes/2", "up");
  auto r3 = Put(loop, store_.get(), "/nodes/1", "down");
  ASSERT_TRUE(r2.ok() && r3.ok());
  loop->RunUntil([&] { return events.size() >= 3; }, 10'000'000'000);
  Sleep(loop, 300);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[1].key, "/nodes/2");
  EXPECT_EQ(events[1].revision, *r2);
  EXPECT_EQ(events[2].key, "/nodes/1");
  EXPECT_EQ(events[2].value, "down");
  EXPECT_EQ(events[2].revision, *r3);
}

TEST_F(EtcdMetaStoreTest, ServerThatNeverAnswersTimesOut) {
  // A socket that listens but never accepts: connections complete in the kernel and
  // requests go unanswered.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 64), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string address = absl::StrFormat("127.0.0.1:%d", ntohs(addr.sin_port));

  EtcdMetaStoreOptions options;
  options.endpoint = address;
  options.request_timeout_ms = 300;
  auto silent = EtcdMetaStore::Create(loop_.get(), options).value();
  EXPECT_TRUE(
      meta_conformance::CheckUnavailableFailsFast(loop_.get(), silent.get(), 300 + 100, address));
  auto r = Await<bool>(loop_.get(), [&](auto done) { silent->Delete("/k", done); });
  EXPECT_TRUE(absl::StrContains(r.status().message(), "no answer within 300 ms")) << r.status();

  // Destroying a store with calls in flight drops their callbacks.
  bool called = false;
  silent->Get("/k", [&](auto) { called = true; });
  auto watch = silent->Watch("/", 0, [&](const WatchEvent&) { called = true; });
  Sleep(loop_.get(), 50);
  silent.reset();
  Sleep(loop_.get(), 500);
  EXPECT_FALSE(called);
  watch.reset();  // after the store: harmless
  close(fd);
}

TEST_F(EtcdMetaStoreTest, WatchFromCompactedRevisionReportsCompaction) {
  Loop* loop = loop_.get();
  int64_t last = 0;
  for (int i = 0; i < 5; ++i) {
    auto r = Put(loop, store_.get(), "/c/k", absl::StrFormat("%d", i));
    ASSERT_TRUE(r.ok()) << r.status();
    last = *r;
  }
  const std::string command = absl::StrFormat(
      "ETCDCTL_API=3 etcdctl --endpoints=%s compact %d >/dev/null 2>&1", etcd_->endpoint(), last);
  ASSERT_EQ(system(command.c_str()), 0) << "etcdctl compact failed (etcd-client is in scripts/packages.txt)";
  std::vector<WatchEvent> events;
  auto watch = store_->Watch("/c/", last - 3, [&](const WatchEvent& e) { events.push_back(e); });
  loop->RunUntil([&] { return !events.empty(); }, 5'000'000'000);
  Sleep(loop, 300);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, WatchEvent::Type::kCompacted);
  EXPECT_EQ(events[0].revision, last);
  // From the compaction revision on, history is there.
  events.clear();
  auto from_last = store_->Watch("/c/", last, [&](const WatchEvent& e) { events.push_back(e); });
  loop->RunUntil([&] { return !events.empty(); }, 5'000'000'000);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, WatchEvent::Type::kPut);
  EXPECT_EQ(events[0].value, "4");
}

TEST_F(EtcdMetaStoreTest, LeaseTtlIsRoundedUpToWholeSeconds) {
  auto a = Await<Lease>(loop_.get(), [&](auto done) { store_->GrantLease(1'500, done); });
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->ttl_ms, 2'000);
  auto b = Await<Lease>(loop_.get(), [&](auto done) { store_->GrantLease(1, done); });
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->ttl_ms, 1'000);
  EXPECT_NE(a->id, b->id);
  auto ttl = Await<int64_t>(loop_.get(), [&](auto done) { store_->KeepAlive(a->id, done); });
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  EXPECT_EQ(*ttl, 2'000);
}

TEST(EtcdMetaStoreCreate, RejectsBadEndpoints) {
  auto loop = RealLoop::Create();
  EtcdMetaStoreOptions options;
  options.endpoint = "https://127.0.0.1:2379";
  EXPECT_EQ(EtcdMetaStore::Create(loop.get(), options).status().code(),
            absl::StatusCode::kUnimplemented);
  options.endpoint = "http://127.0.0.1:2379/v3";
  EXPECT_EQ(EtcdMetaStore::Create(loop.get(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.endpoint = "127.0.0.1";
  auto defaulted = EtcdMetaStore::Create(loop.get(), options);
  ASSERT_TRUE(defaulted.ok());
  EXPECT_EQ((*defaulted)->address(), "127.0.0.1:2379");
  options.endpoint = " http://127.0.0.1:2379/, 127.0.0.2 ,127.0.0.3:4000";
  auto list = EtcdMetaStore::Create(loop.get(), options);
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ((*list)->address(), "127.0.0.1:2379,127.0.0.2:2379,127.0.0.3:4000");
  for (const char* bad : {"127.0.0.1:2379,", ",127.0.0.1:2379", "127.0.0.1:2379,,127.0.0.2"}) {
    options.endpoint = bad;
    auto st = EtcdMetaStore::Create(loop.get(), options).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StrContains(st.message(), bad)) << st;
  }
  options.endpoint = "http://127.0.0.1:2379";
  options.request_timeout_ms = 0;
  EXPECT_EQ(EtcdMetaStore::Create(loop.get(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A loopback port nothing listens on: connecting to it is refused at once.
std::string DeadEndpoint() { return absl::StrFormat("127.0.0.1:%d", FreeLoopbackPort().value()); }

// A member that cannot be reached is passed over within the call (nothing was sent to
// it); with none reachable the call fails UNAVAILABLE naming every member.
TEST_F(EtcdMetaStoreTest, UnreachableMembersArePassedOver) {
  const std::string dead1 = DeadEndpoint(), dead2 = DeadEndpoint();
  EtcdMetaStoreOptions options;
  options.endpoint = absl::StrFormat("%s,%s,%s", dead1, dead2, etcd_->endpoint());
  options.request_timeout_ms = kTimeoutMs;
  auto store = EtcdMetaStore::Create(loop_.get(), options).value();
  auto put = Put(loop_.get(), store.get(), "/k", "v");
  ASSERT_TRUE(put.ok()) << put.status();
  auto got = Await<std::optional<KeyValue>>(loop_.get(), [&](auto done) { store->Get("/k", done); });
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  EXPECT_EQ((*got)->value, "v");

  options.endpoint = absl::StrFormat("%s,%s", dead1, dead2);
  auto none = EtcdMetaStore::Create(loop_.get(), options).value();
  auto failed = Put(loop_.get(), none.get(), "/k", "w");
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable) << failed.status();
  EXPECT_TRUE(absl::StrContains(failed.status().message(), dead1 + "," + dead2)) << failed.status();
}

// A 3-member etcd: the store keeps working, its watch and its lease too, when the
// member it talks to dies; with two of three gone calls fail UNAVAILABLE (no quorum)
// and work again once a second member is back.
TEST(EtcdMetaStoreCluster, SurvivesTheLossOfTheMemberInUse) {
  auto loop = RealLoop::Create();
  auto cluster = EtcdProcess::StartCluster(loop.get(), MakeTempDir(), 3);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto& members = *cluster;
  EtcdMetaStoreOptions options;
  options.endpoint = absl::StrFormat("%s,%s,%s", members[0]->endpoint(), members[1]->endpoint(),
                                     members[2]->endpoint());
  options.request_timeout_ms = 1'000;
  options.watch_retry_ms = 100;
  auto store = EtcdMetaStore::Create(loop.get(), options).value();
  Loop* l = loop.get();

  auto lease = Await<Lease>(l, [&](auto done) { store->GrantLease(2'000, done); });
  ASSERT_TRUE(lease.ok()) << lease.status();
  auto leased = Await<int64_t>(l, [&](auto done) { store->Put("/live/1", "up", lease->id, done); });
  ASSERT_TRUE(leased.ok()) << leased.status();
  std::vector<WatchEvent> events;
  auto watch = store->Watch("/w/", *leased + 1, [&](const WatchEvent& e) { events.push_back(e); });
  ASSERT_TRUE(Put(l, store.get(), "/w/0", "0").ok());
  l->RunUntil([&] { return events.size() == 1; }, 5'000'000'000);
  ASSERT_EQ(events.size(), 1u);

  // The member every call and the watch go to dies (it may have been the leader: calls
  // in flight during the election may fail, the daemons retry them).
  members[0]->Kill();
  const int64_t killed_ms = NowMs(l);
  int failures = 0;
  absl::StatusOr<int64_t> put = absl::UnavailableError("not tried");
  while (!put.ok() && NowMs(l) - killed_ms < 5'000) {
    put = Put(l, store.get(), "/w/1", "1");
    if (!put.ok()) {
      EXPECT_EQ(put.status().code(), absl::StatusCode::kUnavailable) << put.status();
      ++failures;
    }
  }
  ASSERT_TRUE(put.ok()) << "no put succeeded 5 s after the member died: " << put.status();
  std::cerr << "first put after the member died: " << NowMs(l) - killed_ms << " ms, "
            << failures << " failed before\n";
  for (int i = 2; i <= 10; ++i) {
    auto next = Put(l, store.get(), absl::StrFormat("/w/%d", i), std::to_string(i));
    ASSERT_TRUE(next.ok()) << "put " << i << ": " << next.status();
    auto ttl = Await<int64_t>(l, [&](auto done) { store->KeepAlive(lease->id, done); });
    ASSERT_TRUE(ttl.ok()) << ttl.status();
    Sleep(l, 250);  // 2.25 s in all: the lease would expire without the keepalives
  }
  // The watch moved to another member and lost nothing: every key, in revision order,
  // no revision twice (a put retried after an unknown outcome may show twice, as two
  // revisions).
  l->RunUntil([&] { return !events.empty() && events.back().key == "/w/10"; }, 10'000'000'000);
  ASSERT_FALSE(events.empty());
  ASSERT_EQ(events.back().key, "/w/10");
  std::set<std::string> keys;
  for (size_t i = 0; i < events.size(); ++i) {
    if (i > 0) {
      EXPECT_GT(events[i].revision, events[i - 1].revision);
    }
    keys.insert(events[i].key);
  }
  EXPECT_EQ(keys.size(), 11u);
  auto live = Await<std::optional<KeyValue>>(l, [&](auto done) { store->Get("/live/1", done); });
  ASSERT_TRUE(live.ok() && live->has_value()) << "the leased key expired: " << live.status();

  members[1]->Kill();  // no quorum left
  auto stuck = Put(l, store.get(), "/w/x", "x");
  EXPECT_EQ(stuck.status().code(), absl::StatusCode::kUnavailable) << stuck.status();
  ASSERT_TRUE(members[0]->Restart().ok());
  absl::StatusOr<int64_t> again = absl::UnavailableError("not tried");
  for (int i = 0; i < 20 && !again.ok(); ++i) {
    again = Put(l, store.get(), "/w/11", "11");
    if (!again.ok()) Sleep(l, 200);
  }
  ASSERT_TRUE(again.ok()) << again.status();
}

}  // namespace
}  // namespace scribe
