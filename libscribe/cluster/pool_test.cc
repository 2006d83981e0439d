// The Pool through its public contract, on simulated disks (fast, deterministic) and on
// real files through libaio.
#include "scribe/pool.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "scribe/real_env.h"
#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe {
namespace {

template <typename T>
absl::StatusOr<T> Wait(Loop* loop, std::function<void(Pool::Done<T>)> op) {
  std::optional<absl::StatusOr<T>> result;
  op([&](absl::StatusOr<T> r) { result = std::move(r); });
  loop->RunUntil([&] { return result.has_value(); }, 600'000'000'000);
  if (!result) return absl::DeadlineExceededError("no completion");
  return std::move(*result);
}

absl::Status WaitStatus(Loop* loop, std::function<void(Pool::StatusDone)> op) {
  std::optional<absl::Status> result;
  op([&](absl::Status st) { result = st; });
  loop->RunUntil([&] { return result.has_value(); }, 600'000'000'000);
  return result ? *result : absl::DeadlineExceededError("no completion");
}

class SimPool {
 public:
  explicit SimPool(int nodes = 3, int disks_per_node = 2, uint64_t disk_bytes = 64ull << 20)
      : random_(11) {
    options_.metadata_bytes = 4ull << 20;
    for (int n = 0; n < nodes; ++n) {
      for (int d = 0; d < disks_per_node; ++d) {
        SimDiskOptions o;
        o.size_bytes = disk_bytes;
        disks_.push_back(std::make_unique<SimDisk>(&loop_, &random_, o));
        specs_.push_back(DiskSpec{NodeId{static_cast<uint64_t>(n + 1)}, Tier::kHdd, disks_.back().get()});
      }
    }
    auto p = Wait<std::unique_ptr<Pool>>(&loop_, [&](auto done) {
      Pool::Create(&loop_, &random_, options_, specs_, done);
    });
    SCRIBE_CHECK(p.ok());
    pool_ = std::move(*p);
  }

  void Crash(PowerLossMode mode) {
    pool_.reset();
    for (auto& d : disks_) d->PowerCut(mode);
    auto p = Wait<std::unique_ptr<Pool>>(&loop_, [&](auto done) {
      Pool::Open(&loop_, &random_, options_, specs_, done);
    });
    ASSERT_TRUE(p.ok()) << p.status();
    pool_ = std::move(*p);
  }

  VsdId Create(const std::string& name, uint64_t size, int rf = 2) {
    auto id = Wait<VsdId>(&loop_, [&](auto done) {
      pool_->CreateVsd(VsdOptions{name, size, rf, 4}, done);
    });
    SCRIBE_CHECK(id.ok());
    return *id;
  }
  absl::Status Write(VsdId v, uint64_t off, const std::string& data, bool fua = false) {
    return WaitStatus(&loop_, [&](auto done) { pool_->Write(v, off, data.size(), data.data(), fua, done); });
  }
  absl::StatusOr<std::string> Read(VsdId v, uint64_t off, size_t len) {
    std::string out(len, '?');
    absl::Status st = WaitStatus(&loop_, [&](auto done) { pool_->Read(v, off, len, out.data(), done); });
    if (!st.ok()) return st;
    return out;
  }
  absl::StatusOr<std::string> ReadSnap(SnapshotId s, uint64_t off, size_t len) {
    std::string out(len, '?');
    absl::Status st = WaitStatus(&loop_, [&](auto done) { pool_->ReadSnapshot(s, off, len, out.data(), done); });
    if (!st.ok()) return st;
    return out;
  }
  absl::Status Flush() { return WaitStatus(&loop_, [&](auto done) { pool_->Flush(done); }); }
  SnapshotId Snap(VsdId v, const std::string& name) {
    auto s = Wait<SnapshotId>(&loop_, [&](auto done) { pool_->CreateSnapshot(v, name, done); });
    SCRIBE_CHECK(s.ok());
    return *s;
  }
  bool WaitRedundant() {
    return loop_.RunUntil([&] { return pool_->FullyRedundant(); }, 600'000'000'000);
  }

  SimLoop loop_;
  SeededRandom random_;
  PoolOptions options_;
  std::vector<std::unique_ptr<SimDisk>> disks_;
  std::vector<DiskSpec> specs_;
  std::unique_ptr<Pool> pool_;
};

std::string Pattern(char seed, size_t len) {
  std::string s(len, 0);
  for (size_t i = 0; i < len; ++i) s[i] = static_cast<char>(seed + i * 7 + (i >> 9));
  return s;
}

TEST(Pool, WriteReadAnyAlignmentAndZerosElsewhere) {
  SimPool p;
  VsdId v = p.Create("vm-disk", 8 << 20);
  ASSERT_TRUE(p.Write(v, 512, Pattern('a', 512)).ok());          // sub-block
  ASSERT_TRUE(p.Write(v, 4096 * 3 + 1024, Pattern('b', 10240)).ok());  // spans blocks
  ASSERT_TRUE(p.Write(v, 1 << 20, Pattern('c', 1 << 20)).ok());  // whole chunk
  EXPECT_EQ(*p.Read(v, 0, 512), std::string(512, '\0'));
  EXPECT_EQ(*p.Read(v, 512, 512), Pattern('a', 512));
  EXPECT_EQ(*p.Read(v, 1024, 512), std::string(512, '\0'));
  EXPECT_EQ(*p.Read(v, 4096 * 3 + 1024, 10240), Pattern('b', 10240));
  EXPECT_EQ(*p.Read(v, 1 << 20, 1 << 20), Pattern('c', 1 << 20));
  EXPECT_EQ(*p.Read(v, 4 << 20, 4096), std::string(4096, '\0'));
  EXPECT_TRUE(p.pool_->Fsck().ok());
}

TEST(Pool, BadRequestsGetClearErrorsAndChangeNothing) {
  SimPool p;
  VsdId v = p.Create("d", 1 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('x', 4096)).ok());
  EXPECT_EQ(p.Write(v, 100, "abc").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.Write(v, 1 << 20, Pattern('y', 512)).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(p.Read(v, (1 << 20) - 512, 1024).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(p.Read(VsdId{999}, 0, 512).status().code(), absl::StatusCode::kNotFound);
  auto dup = Wait<VsdId>(&p.loop_, [&](auto done) { p.pool_->CreateVsd(VsdOptions{"d", 1 << 20}, done); });
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kAlreadyExists);
  auto bad_rf = Wait<VsdId>(&p.loop_, [&](auto done) { p.pool_->CreateVsd(VsdOptions{"e", 1 << 20, 5}, done); });
  EXPECT_EQ(bad_rf.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*p.Read(v, 0, 4096), Pattern('x', 4096));
}

TEST(Pool, FullPoolIsResourceExhaustedAndKeepsData) {
  SimPool p(3, 1, 12ull << 20);  // 4 MiB metadata + ~8 chunks per disk
  VsdId v = p.Create("big", 64 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('k', 1 << 20)).ok());
  absl::Status st;
  uint64_t off = 1 << 20;
  for (; off < (64 << 20); off += 1 << 20) {
    st = p.Write(v, off, Pattern('z', 1 << 20));
    if (!st.ok()) break;
  }
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_EQ(*p.Read(v, 0, 1 << 20), Pattern('k', 1 << 20));
  EXPECT_TRUE(p.pool_->Fsck().ok());
}

TEST(Pool, CopiesLandOnDistinctNodes) {
  SimPool p(3, 2);
  VsdId v = p.Create("d", 16 << 20, 3);
  ASSERT_TRUE(p.Write(v, 0, Pattern('q', 8 << 20)).ok());
  auto report = p.pool_->Fsck();
  EXPECT_TRUE(report.ok()) << report.errors.front();
  uint64_t used = 0;
  for (const DiskInfo& d : p.pool_->ListDisks()) used += d.chunks;
  EXPECT_EQ(used, 3 * p.pool_->Stats().chunks);
}

TEST(Pool, SnapshotsAreFrozenClonesAreIndependent) {
  SimPool p;
  VsdId v = p.Create("base", 4 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('1', 8192)).ok());
  SnapshotId s1 = p.Snap(v, "s1");
  ASSERT_TRUE(p.Write(v, 0, Pattern('2', 4096)).ok());
  EXPECT_EQ(*p.ReadSnap(s1, 0, 8192), Pattern('1', 8192));
  auto clone = Wait<VsdId>(&p.loop_, [&](auto done) { p.pool_->CloneFromSnapshot(s1, "clone", done); });
  ASSERT_TRUE(clone.ok());
  ASSERT_TRUE(p.Write(*clone, 4096, Pattern('3', 4096)).ok());
  // Deleting the source and its snapshot never affects the clone.
  ASSERT_TRUE(WaitStatus(&p.loop_, [&](auto d) { p.pool_->DeleteVsd(v, d); }).ok());
  EXPECT_EQ(*p.Read(*clone, 0, 4096), Pattern('1', 8192).substr(0, 4096));
  EXPECT_EQ(*p.Read(*clone, 4096, 4096), Pattern('3', 4096));
  auto report = p.pool_->Fsck();
  EXPECT_TRUE(report.ok()) << report.errors.front();
  auto info = p.pool_->GetVsdInfo(*clone);
  EXPECT_EQ(info->allocated_bytes, 8192u);
  EXPECT_EQ(info->unique_bytes, 8192u);
}

TEST(Pool, DiffReportsOnlyChangedExtents) {
  SimPool p;
  VsdId v = p.Create("d", 16 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('a', 4 << 20)).ok());
  SnapshotId s1 = p.Snap(v, "s1");
  ASSERT_TRUE(p.Write(v, 8192, Pattern('b', 4096)).ok());
  ASSERT_TRUE(p.Write(v, 10 << 20, Pattern('c', 512)).ok());
  SnapshotId s2 = p.Snap(v, "s2");
  auto diff = p.pool_->Diff(s1, s2);
  ASSERT_TRUE(diff.ok());
  std::vector<Extent> want = {{8192, 4096}, {10 << 20, 4096}};
  EXPECT_EQ(*diff, want);
  auto all = p.pool_->Diff(SnapshotId{}, s1);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0], (Extent{0, 4 << 20}));
}

TEST(Pool, FlushedWritesSurvivePowerLossUnflushedNeverTear) {
  SimPool p;
  VsdId v = p.Create("d", 4 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('f', 65536)).ok());
  ASSERT_TRUE(p.Flush().ok());
  ASSERT_TRUE(p.Write(v, 0, Pattern('g', 65536)).ok());  // not flushed
  ASSERT_TRUE(p.Write(v, 1 << 20, Pattern('h', 4096), /*fua=*/true).ok());
  p.Crash(PowerLossMode::kTear);
  auto got = p.Read(v, 0, 65536);
  ASSERT_TRUE(got.ok()) << got.status();
  for (size_t b = 0; b < 16; ++b) {
    std::string blk = got->substr(b * 4096, 4096);
    EXPECT_TRUE(blk == Pattern('f', 65536).substr(b * 4096, 4096) ||
                blk == Pattern('g', 65536).substr(b * 4096, 4096))
        << "block " << b << " is torn";
  }
  EXPECT_EQ(*p.Read(v, 1 << 20, 4096), Pattern('h', 4096));
  EXPECT_TRUE(p.pool_->Fsck().ok());
}

TEST(Pool, CorruptCopyIsDetectedAndRepaired) {
  SimPool p(3, 1);
  VsdId v = p.Create("d", 4 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('c', 1 << 20)).ok());
  ASSERT_TRUE(p.Flush().ok());
  // Corrupt the data area of every disk's first slot on one disk only.
  const uint64_t data_start = 4096 + p.options_.metadata_bytes;
  p.disks_[0]->Corrupt(data_start, 1 << 20);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(*p.Read(v, 0, 1 << 20), Pattern('c', 1 << 20));
  auto report = Wait<ScrubReport>(&p.loop_, [&](auto done) { p.pool_->Scrub(done); });
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->unrecoverable, 0u);
  p.loop_.RunUntil([] { return false; }, 100'000'000);
  auto again = Wait<ScrubReport>(&p.loop_, [&](auto done) { p.pool_->Scrub(done); });
  EXPECT_EQ(again->bad_copies, 0u);
  EXPECT_GT(again->blocks_checked, 0u);
}

TEST(Pool, FailedDiskIsReMirroredAndIoContinues) {
  SimPool p(3, 2);
  VsdId v = p.Create("d", 16 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('r', 8 << 20)).ok());
  DiskId victim = p.pool_->ListDisks()[0].id;
  p.disks_[0]->SetFailed(true);
  ASSERT_TRUE(WaitStatus(&p.loop_, [&](auto d) { p.pool_->FailDisk(victim, d); }).ok());
  EXPECT_EQ(*p.Read(v, 0, 8 << 20), Pattern('r', 8 << 20));
  ASSERT_TRUE(p.WaitRedundant());
  EXPECT_GT(p.pool_->Stats().chunks_rebuilt, 0u);
  EXPECT_EQ(p.pool_->ListDisks()[0].used_bytes, 0u);
  EXPECT_TRUE(p.pool_->Fsck().ok()) << p.pool_->Fsck().errors.front();
  p.Crash(PowerLossMode::kDropAll);
  EXPECT_EQ(*p.Read(v, 0, 8 << 20), Pattern('r', 8 << 20));
}

TEST(Pool, NodeOutageThenRejoinCatchesUp) {
  SimPool p(3, 1);
  VsdId v = p.Create("d", 8 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('o', 2 << 20)).ok());
  p.pool_->SetNodeOnline(NodeId{2}, false);
  ASSERT_TRUE(p.Write(v, 4096, Pattern('p', 4096)).ok());
  EXPECT_EQ(*p.Read(v, 4096, 4096), Pattern('p', 4096));
  p.pool_->SetNodeOnline(NodeId{2}, true);
  ASSERT_TRUE(p.WaitRedundant());
  EXPECT_TRUE(p.pool_->Fsck().ok());
  // Every copy is now good: fail each other node in turn and read.
  EXPECT_EQ(*p.Read(v, 0, 8192), Pattern('o', 2 << 20).substr(0, 4096) + Pattern('p', 4096));
}

TEST(Pool, NodeCrashLosingUnflushedWritesIsCaughtUpOnRejoin) {
  SimPool p(2, 1);
  VsdId v = p.Create("d", 4 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('u', 1 << 20)).ok());  // acked, not flushed
  p.pool_->SetNodeOnline(NodeId{2}, false);
  p.disks_[1]->PowerCut(PowerLossMode::kDropAll);  // node 2 crashed: its copy is gone
  ASSERT_TRUE(p.Flush().ok());                      // durable on node 1 only
  p.pool_->SetNodeOnline(NodeId{2}, true);
  ASSERT_TRUE(p.WaitRedundant());
  // Node 2's copy must have been caught up: read with node 1 away.
  p.pool_->SetNodeOnline(NodeId{1}, false);
  EXPECT_EQ(*p.Read(v, 0, 1 << 20), Pattern('u', 1 << 20));
}

TEST(Pool, DiskThatStopsAnsweringTimesOutInsteadOfHanging) {
  SimPool p(3, 1);
  VsdId v = p.Create("d", 4 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('t', 8192)).ok());
  // A power cut drops the disk's in-flight operations: they never complete. The buffer
  // must outlive the writes (pool.h): a 4 KiB-aligned one is written without a copy.
  const std::string x = Pattern('x', 4096);
  for (int i = 0; i < 3; ++i) {
    bool done = false;
    absl::Status st;
    p.pool_->Write(v, 8192, 4096, x.data(), false, [&](absl::Status s) {
      st = s;
      done = true;
    });
    p.disks_[0]->PowerCut(PowerLossMode::kDropAll);
    ASSERT_TRUE(p.loop_.RunUntil([&] { return done; }, 120'000'000'000));
  }
  ASSERT_TRUE(p.Flush().ok());
  EXPECT_EQ(*p.Read(v, 0, 8192), Pattern('t', 8192));
  ASSERT_TRUE(p.WaitRedundant());
  EXPECT_TRUE(p.pool_->Fsck().ok());
}

TEST(Pool, EvictedNodeReturnsWithItsStaleCopiesFreed) {
  SimPool p(4, 1);
  VsdId v = p.Create("d", 8 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('e', 4 << 20)).ok());
  p.pool_->SetNodeOnline(NodeId{1}, false);
  ASSERT_TRUE(WaitStatus(&p.loop_, [&](auto d) { p.pool_->EvictNode(NodeId{1}, d); }).ok());
  p.pool_->SetNodeOnline(NodeId{1}, true);
  ASSERT_TRUE(p.WaitRedundant());
  auto fsck = p.pool_->Fsck();
  EXPECT_TRUE(fsck.ok()) << fsck.errors.front();
  EXPECT_EQ(*p.Read(v, 0, 4 << 20), Pattern('e', 4 << 20));
  for (const DiskInfo& d : p.pool_->ListDisks()) EXPECT_FALSE(d.failed);
}

TEST(Pool, ReadsRealFilesThroughLibaio) {
  auto loop = RealLoop::Create();
  SeededRandom random(3);
  std::vector<std::unique_ptr<BlockDevice>> devs;
  std::vector<DiskSpec> specs;
  const char* tmp = std::getenv("TEST_TMPDIR");
  for (int n = 0; n < 3; ++n) {
    std::string path = std::string(tmp ? tmp : "/tmp") + "/pool_disk" + std::to_string(n) + "." + std::to_string(getpid());
    unlink(path.c_str());
    AioDeviceOptions o;
    o.create_size_bytes = 64ull << 20;
    auto d = OpenAioDevice(loop.get(), path, o);
    ASSERT_TRUE(d.ok()) << d.status();
    unlink(path.c_str());
    devs.push_back(std::move(*d));
    specs.push_back(DiskSpec{NodeId{static_cast<uint64_t>(n + 1)}, Tier::kHdd, devs.back().get()});
  }
  PoolOptions options;
  options.metadata_bytes = 4 << 20;
  auto pool = Wait<std::unique_ptr<Pool>>(loop.get(), [&](auto done) {
    Pool::Create(loop.get(), &random, options, specs, done);
  });
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto v = Wait<VsdId>(loop.get(), [&](auto done) { (*pool)->CreateVsd(VsdOptions{"real", 16 << 20}, done); });
  ASSERT_TRUE(v.ok());
  std::string data = Pattern('R', 3 << 20);
  ASSERT_TRUE(WaitStatus(loop.get(), [&](auto d) { (*pool)->Write(*v, 512, data.size(), data.data(), true, d); }).ok());
  pool->reset();
  auto reopened = Wait<std::unique_ptr<Pool>>(loop.get(), [&](auto done) {
    Pool::Open(loop.get(), &random, options, specs, done);
  });
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  std::string got(data.size(), 0);
  ASSERT_TRUE(WaitStatus(loop.get(), [&](auto d) { (*reopened)->Read(*v, 512, got.size(), got.data(), d); }).ok());
  EXPECT_EQ(got, data);
  reopened->reset();
}

}  // namespace
}  // namespace scribe
