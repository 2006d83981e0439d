// The MetaStore conformance suite against every implementation: the in-memory store on a
// simulated and on a real loop, and a real etcd (a child process per test); then against
// deliberately broken stores, to show each check can fail.
#include <stdlib.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "absl/strings/str_format.h"
#include "libscribe/meta/conformance.h"
#include "libscribe/meta/etcd_process.h"
#include "scribe/meta_store.h"
#include "scribe/real_env.h"
#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe {
namespace {

namespace mc = meta_conformance;

std::string MakeTempDir() {
  const char* base = getenv("TEST_TMPDIR");
  std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/etcd.XXXXXX";
  SCRIBE_CHECK(mkdtemp(pattern.data()) != nullptr);
  return pattern;
}

// Members in destruction order bottom-up: stores, then etcd, then the loop.
struct StoreSetup {
  std::unique_ptr<Loop> loop;
  std::unique_ptr<EtcdProcess> etcd;
  std::unique_ptr<MetaStore> a, b;  // two clients of one store
  std::unique_ptr<MetaStore> down;  // a client that cannot reach it
  std::string down_message_part;
  int64_t down_within_ms = 0;
  mc::Timing timing;
  absl::Status error;  // set if the store could not be made
};

struct StoreFactory {
  const char* name;
  std::unique_ptr<StoreSetup> (*make)();
};

std::unique_ptr<StoreSetup> MakeInMemory(std::unique_ptr<Loop> loop, int64_t latency_ns) {
  auto s = std::make_unique<StoreSetup>();
  s->loop = std::move(loop);
  InMemoryMetaStoreOptions options;
  options.latency_ns = latency_ns;
  auto a = InMemoryMetaStore::Create(s->loop.get(), options);
  auto down = a->NewClient();
  down->SetAvailable(false);
  s->b = a->NewClient();
  s->down = std::move(down);
  s->a = std::move(a);
  s->down_message_part = "in-memory meta store";
  s->down_within_ms = 10;
  return s;
}

std::unique_ptr<StoreSetup> MakeInMemorySim() {
  auto s = MakeInMemory(std::make_unique<SimLoop>(), 1'000'000);
  s->timing.lease_ttl_ms = 2'000;
  s->timing.expiry_slack_ms = 100;  // one poll and a little latency
  return s;
}

std::unique_ptr<StoreSetup> MakeInMemoryReal() {
  auto s = MakeInMemory(RealLoop::Create(), 0);
  s->timing.lease_ttl_ms = 300;
  s->timing.expiry_slack_ms = 500;
  s->timing.settle_ms = 100;
  return s;
}

std::unique_ptr<StoreSetup> MakeEtcd() {
  auto s = std::make_unique<StoreSetup>();
  auto loop = RealLoop::Create();
  RealLoop* real = loop.get();
  s->loop = std::move(loop);
  auto etcd = EtcdProcess::Start(real, MakeTempDir());
  if (!etcd.ok()) {
    s->error = etcd.status();
    return s;
  }
  s->etcd = std::move(etcd).value();
  EtcdMetaStoreOptions options;
  options.endpoint = s->etcd->endpoint();
  options.request_timeout_ms = 2'000;
  s->a = EtcdMetaStore::Create(real, options).value();
  s->b = EtcdMetaStore::Create(real, options).value();
  // Nothing listens on a port the kernel just handed out and took back.
  const std::string dead = absl::StrFormat("127.0.0.1:%d", FreeLoopbackPort().value());
  options.endpoint = "http://" + dead;
  options.request_timeout_ms = 1'000;
  s->down = EtcdMetaStore::Create(real, options).value();
  s->down_message_part = dead;
  s->down_within_ms = 1'000;
  s->timing.lease_ttl_ms = 1'000;  // etcd's minimum with the test's raft timing
  s->timing.expiry_slack_ms = 3'000;
  s->timing.settle_ms = 300;
  return s;
}

class MetaStoreConformance : public testing::TestWithParam<StoreFactory> {
 protected:
  void SetUp() override { ASSERT_TRUE(s_->error.ok()) << s_->error; }
  std::unique_ptr<StoreSetup> s_ = GetParam().make();
};

TEST_P(MetaStoreConformance, GetPutDelete) {
  EXPECT_TRUE(mc::CheckGetPutDelete(s_->loop.get(), s_->a.get(), s_->timing));
}
TEST_P(MetaStoreConformance, ListSortedAndPrefixBounded) {
  EXPECT_TRUE(mc::CheckListSortedAndPrefixBounded(s_->loop.get(), s_->a.get(), s_->timing));
}
TEST_P(MetaStoreConformance, CasConflict) {
  EXPECT_TRUE(mc::CheckCasConflict(s_->loop.get(), s_->a.get(), s_->b.get(), s_->timing));
}
TEST_P(MetaStoreConformance, LeaseExpiry) {
  EXPECT_TRUE(mc::CheckLeaseExpiry(s_->loop.get(), s_->a.get(), s_->timing));
}
TEST_P(MetaStoreConformance, KeepAliveKeepsKeys) {
  EXPECT_TRUE(mc::CheckKeepAliveKeepsKeys(s_->loop.get(), s_->a.get(), s_->timing));
}
TEST_P(MetaStoreConformance, WatchSeesChangesInOrder) {
  EXPECT_TRUE(mc::CheckWatchSeesChangesInOrder(s_->loop.get(), s_->a.get(), s_->timing));
}
TEST_P(MetaStoreConformance, UnavailableFailsFast) {
  EXPECT_TRUE(mc::CheckUnavailableFailsFast(s_->loop.get(), s_->down.get(), s_->down_within_ms,
                                            s_->down_message_part));
}
// Every check, one after another, on one store (they use disjoint prefixes).
TEST_P(MetaStoreConformance, AllChecksShareOneStore) {
  Loop* loop = s_->loop.get();
  EXPECT_TRUE(mc::CheckGetPutDelete(loop, s_->a.get(), s_->timing));
  EXPECT_TRUE(mc::CheckWatchSeesChangesInOrder(loop, s_->b.get(), s_->timing));
  EXPECT_TRUE(mc::CheckListSortedAndPrefixBounded(loop, s_->b.get(), s_->timing));
  EXPECT_TRUE(mc::CheckCasConflict(loop, s_->b.get(), s_->a.get(), s_->timing));
}

INSTANTIATE_TEST_SUITE_P(All, MetaStoreConformance,
                         testing::Values(StoreFactory{"in_memory_sim", MakeInMemorySim},
                                         StoreFactory{"in_memory_real", MakeInMemoryReal},
                                         StoreFactory{"etcd", MakeEtcd}),
                         [](const auto& info) { return std::string(info.param.name); });

// --- The checks catch broken stores ---

enum class Flaw {
  kCasAlwaysSucceeds,    // CompareAndSwap is a plain Put
  kListUnbounded,        // List returns every key from the prefix on
  kLeasesIgnored,        // Put drops the lease, so keys never expire
  kKeepAliveIgnored,     // KeepAlive answers but renews nothing
  kWatchDropsDeletes,    // watches never see deletes
  kRevisionsStandStill,  // Put reports revision 1
};

// An in-memory store with one deliberate flaw.
class BrokenMetaStore : public MetaStore {
 public:
  BrokenMetaStore(Loop* loop, Flaw flaw)
      : MetaStore(loop), inner_(InMemoryMetaStore::Create(loop)), flaw_(flaw) {}

 protected:
  void DoGet(const std::string& key, Done<std::optional<KeyValue>> done) override {
    inner_->Get(key, std::move(done));
  }
  void DoList(const std::string& prefix, Done<ListResult> done) override {
    if (flaw_ != Flaw::kListUnbounded) return inner_->List(prefix, std::move(done));
    inner_->List("", [prefix, done](absl::StatusOr<ListResult> r) {
      if (r.ok()) std::erase_if(r->kvs, [&](const KeyValue& kv) { return kv.key < prefix; });
      done(std::move(r));
    });
  }
  void DoPut(const std::string& key, const std::string& value, LeaseId lease,
             Done<int64_t> done) override {
    if (flaw_ == Flaw::kLeasesIgnored) lease = LeaseId{};
    if (flaw_ == Flaw::kRevisionsStandStill) {
      return inner_->Put(key, value, lease, [done](absl::StatusOr<int64_t> r) {
        done(r.ok() ? absl::StatusOr<int64_t>(1) : r);
      });
    }
    inner_->Put(key, value, lease, std::move(done));
  }
  void DoDelete(const std::string& key, Done<bool> done) override {
    inner_->Delete(key, std::move(done));
  }
  void DoCompareAndSwap(const std::string& key, int64_t expected, const std::string& value,
                        LeaseId lease, Done<CasResult> done) override {
    if (flaw_ != Flaw::kCasAlwaysSucceeds) {
      return inner_->CompareAndSwap(key, expected, value, lease, std::move(done));
    }
    inner_->Put(key, value, lease, [done](absl::StatusOr<int64_t> r) {
      if (!r.ok()) return done(r.status());
      done(CasResult{true, *r});
    });
  }
  void DoGrantLease(int64_t ttl_ms, Done<Lease> done) override {
    inner_->GrantLease(ttl_ms, std::move(done));
  }
  void DoKeepAlive(LeaseId lease, Done<int64_t> done) override {
    if (flaw_ != Flaw::kKeepAliveIgnored) return inner_->KeepAlive(lease, std::move(done));
    loop()->Post([done] { done(kLeaseTtlMsMax); });
  }
  void DoRevokeLease(LeaseId lease, StatusDone done) override {
    inner_->RevokeLease(lease, std::move(done));
  }
  std::unique_ptr<WatchHandle> DoWatch(const std::string& prefix, int64_t start_revision,
                                       WatchCallback on_event) override {
    if (flaw_ != Flaw::kWatchDropsDeletes) {
      return inner_->Watch(prefix, start_revision, std::move(on_event));
    }
    return inner_->Watch(prefix, start_revision, [on_event](const WatchEvent& e) {
      if (e.type != WatchEvent::Type::kDelete) on_event(e);
    });
  }

 private:
  std::unique_ptr<InMemoryMetaStore> inner_;
  Flaw flaw_;
};

class MetaStoreConformanceCanFail : public testing::Test {
 protected:
  SimLoop loop_;
  mc::Timing timing_;
};

TEST_F(MetaStoreConformanceCanFail, CasThatAlwaysSucceeds) {
  BrokenMetaStore store(&loop_, Flaw::kCasAlwaysSucceeds);
  EXPECT_FALSE(mc::CheckCasConflict(&loop_, &store, &store, timing_));
}
TEST_F(MetaStoreConformanceCanFail, ListNotBoundedByPrefix) {
  BrokenMetaStore store(&loop_, Flaw::kListUnbounded);
  EXPECT_FALSE(mc::CheckListSortedAndPrefixBounded(&loop_, &store, timing_));
}
TEST_F(MetaStoreConformanceCanFail, LeasesThatNeverExpire) {
  BrokenMetaStore store(&loop_, Flaw::kLeasesIgnored);
  EXPECT_FALSE(mc::CheckLeaseExpiry(&loop_, &store, timing_));
}
TEST_F(MetaStoreConformanceCanFail, KeepAliveThatRenewsNothing) {
  BrokenMetaStore store(&loop_, Flaw::kKeepAliveIgnored);
  EXPECT_FALSE(mc::CheckKeepAliveKeepsKeys(&loop_, &store, timing_));
}
TEST_F(MetaStoreConformanceCanFail, WatchThatDropsDeletes) {
  BrokenMetaStore store(&loop_, Flaw::kWatchDropsDeletes);
  EXPECT_FALSE(mc::CheckWatchSeesChangesInOrder(&loop_, &store, timing_));
}
TEST_F(MetaStoreConformanceCanFail, RevisionsThatStandStill) {
  BrokenMetaStore store(&loop_, Flaw::kRevisionsStandStill);
  EXPECT_FALSE(mc::CheckGetPutDelete(&loop_, &store, timing_));
}
TEST_F(MetaStoreConformanceCanFail, ReachableStoreIsNotUnavailable) {
  auto store = InMemoryMetaStore::Create(&loop_);
  EXPECT_FALSE(mc::CheckUnavailableFailsFast(&loop_, store.get(), 1'000, "in-memory"));
}
TEST_F(MetaStoreConformanceCanFail, SlowFailureIsNotFast) {
  InMemoryMetaStoreOptions options;
  options.latency_ns = 2'000'000'000;
  auto store = InMemoryMetaStore::Create(&loop_, options);
  store->SetAvailable(false);
  EXPECT_FALSE(mc::CheckUnavailableFailsFast(&loop_, store.get(), 1'000, "in-memory"));
}

}  // namespace
}  // namespace scribe
