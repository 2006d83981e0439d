// The Pool through its public contract, on simulated disks (fast, deterministic) and on
// real files through libaio.
#include "scribe/pool.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "scribe/real_env.h"
#include "scribe/sim_env.h"
#include "scribe/status.h"
#include "libscribe/sim/pool_testing.h"

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

FsckReport FsckOf(Loop* loop, Pool* pool) { return FsckOrFailure(loop, pool); }

absl::StatusOr<std::vector<Extent>> DiffOf(Loop* loop, Pool* pool, SnapshotId from, SnapshotId to) {
  return Wait<std::vector<Extent>>(loop, [&](auto done) { pool->Diff(from, to, done); });
}

PoolOptions TestPoolOptions(uint64_t metadata_bytes = 4ull << 20) {
  PoolOptions options;
  options.metadata_bytes = metadata_bytes;
  return options;
}

class SimPool {
 public:
  explicit SimPool(int nodes = 3, int disks_per_node = 2, uint64_t disk_bytes = 64ull << 20,
                   PoolOptions options = TestPoolOptions())
      : random_(11), options_(options) {
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
  absl::Status Discard(VsdId v, uint64_t off, uint64_t len) {
    return WaitStatus(&loop_, [&](auto done) { pool_->Discard(v, off, len, done); });
  }
  absl::Status DeleteSnap(SnapshotId s) {
    return WaitStatus(&loop_, [&](auto done) { pool_->DeleteSnapshot(s, done); });
  }
  absl::Status Revert(VsdId v, SnapshotId s) {
    return WaitStatus(&loop_, [&](auto done) { pool_->RevertToSnapshot(v, s, done); });
  }
  absl::StatusOr<VsdId> CloneSnap(SnapshotId s, const std::string& name) {
    return Wait<VsdId>(&loop_, [&](auto done) { pool_->CloneFromSnapshot(s, name, done); });
  }
  absl::StatusOr<VsdId> CloneLive(VsdId v, const std::string& name) {
    return Wait<VsdId>(&loop_, [&](auto done) { pool_->CloneVsd(v, name, done); });
  }
  FsckReport Fsck() { return FsckOf(&loop_, pool_.get()); }
  absl::StatusOr<std::vector<Extent>> Diff(SnapshotId from, SnapshotId to) {
    return DiffOf(&loop_, pool_.get(), from, to);
  }
  // Diff, and whether the change logs answered it.
  std::pair<std::vector<Extent>, bool> DiffAndPath(SnapshotId from, SnapshotId to) {
    const uint64_t before = pool_->Stats().diffs_from_change_logs;
    auto d = Diff(from, to);
    SCRIBE_CHECK(d.ok());
    return {*d, pool_->Stats().diffs_from_change_logs > before};
  }

  SimLoop loop_;
  SeededRandom random_;
  PoolOptions options_;  // used by Create and by Open after a crash
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
  EXPECT_TRUE(p.Fsck().ok());
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

// Paged metadata (format 2). The reproduction of the pool lost after 12 GiB: the whole
// metadata had to fit half of the per-disk journal region. Here the region is the
// smallest allowed (256 KiB: a 96 KiB root at most), and the maps, chunk records and
// change logs of 64 MiB of scattered 4 KiB writes with snapshots in between (about
// 320 KiB as a whole-state checkpoint of format 1) live in pages in the pool's space.
TEST(PoolMetadata, MoreMetadataThanTheJournalRegionOpensAfterEveryCrash) {
  PoolOptions options = TestPoolOptions(256 << 10);
  SimPool p(3, 1, 256ull << 20, options);
  VsdId v = p.Create("big", 128 << 20);
  std::mt19937_64 rng(5);
  std::map<uint64_t, char> model;  // block -> pattern seed
  std::vector<std::pair<SnapshotId, std::map<uint64_t, char>>> snaps;
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 4096; ++i) {
      const uint64_t block = rng() % (32768);
      const char seed = static_cast<char>(rng());
      ASSERT_TRUE(p.Write(v, block * 4096, Pattern(seed, 4096)).ok());
      model[block] = seed;
    }
    snaps.push_back({p.Snap(v, "s" + std::to_string(round)), model});
    ASSERT_TRUE(p.Flush().ok());
    p.Crash(PowerLossMode::kDropAll);
    const PoolStats st = p.pool_->Stats();
    EXPECT_GT(st.metadata_chunks, 0u);
    EXPECT_LT(st.last_checkpoint_root_bytes, 96u << 10);
    FsckReport fsck = p.Fsck();
    ASSERT_TRUE(fsck.ok()) << fsck.errors[0];
  }
  EXPECT_GT(model.size(), 12000u);
  for (const auto& [block, seed] : model) {
    ASSERT_EQ(*p.Read(v, block * 4096, 4096), Pattern(seed, 4096)) << "block " << block;
  }
  // Every snapshot still reads as it was taken.
  for (const auto& [snap, m] : snaps) {
    for (int i = 0; i < 200; ++i) {
      auto it = std::next(m.begin(), static_cast<long>(rng() % m.size()));
      ASSERT_EQ(*p.ReadSnap(snap, it->first * 4096, 4096), Pattern(it->second, 4096));
    }
  }
}

// With a leaf cache far smaller than the maps, leaves are evicted once written and read
// back by whatever needs them (reads, writes, diff, fsck), and deleting a snapshot whose
// leaves are evicted drops exactly their references.
TEST(PoolMetadata, ASmallLeafCacheReadsLeavesBackAndLosesNothing) {
  PoolOptions options = TestPoolOptions();
  options.metadata_cache_bytes = 4 * 4096;  // 4 leaves for 128 (128 MiB, 4 KiB scattered)
  options.checkpoint_dirty_pages_max = 32;
  SimPool p(3, 1, 256ull << 20, options);
  VsdId v = p.Create("d", 128 << 20);
  std::mt19937_64 rng(9);
  std::map<uint64_t, char> model;
  auto write_some = [&](int n, std::set<uint64_t>* written) {
    for (int i = 0; i < n; ++i) {
      const uint64_t block = rng() % 32768;
      const char seed = static_cast<char>(rng());
      ASSERT_TRUE(p.Write(v, block * 4096, Pattern(seed, 4096)).ok());
      model[block] = seed;
      if (written) written->insert(block);
    }
  };
  write_some(3000, nullptr);
  const SnapshotId s1 = p.Snap(v, "s1");
  const std::map<uint64_t, char> at_s1 = model;
  std::set<uint64_t> changed;
  write_some(500, &changed);
  const SnapshotId s2 = p.Snap(v, "s2");
  ASSERT_TRUE(p.Flush().ok());
  p.loop_.RunUntil([] { return false; }, 10'000'000);
  PoolStats st = p.pool_->Stats();
  EXPECT_GT(st.map_leaves_evicted, 100u);
  EXPECT_GT(st.map_leaves_read, 100u);  // the writes read evicted leaves back
  EXPECT_LE(st.map_leaves_in_memory, 4u + 32u) << "the limit plus the dirty ones";
  for (const auto& [block, seed] : model) {
    ASSERT_EQ(*p.Read(v, block * 4096, 4096), Pattern(seed, 4096)) << "block " << block;
  }
  for (int i = 0; i < 300; ++i) {
    auto it = std::next(at_s1.begin(), static_cast<long>(rng() % at_s1.size()));
    ASSERT_EQ(*p.ReadSnap(s1, it->first * 4096, 4096), Pattern(it->second, 4096));
  }
  // Diff reads the leaves it compares.
  auto d = p.Diff(s1, s2);
  ASSERT_TRUE(d.ok()) << d.status();
  std::set<uint64_t> reported;
  for (const Extent& e : *d) {
    for (uint64_t b = e.offset_bytes / 4096; b < (e.offset_bytes + e.length_bytes) / 4096; ++b) reported.insert(b);
  }
  EXPECT_EQ(reported, changed);
  FsckReport fsck = p.Fsck();
  ASSERT_TRUE(fsck.ok()) << fsck.errors[0];
  // The leaves s1 alone holds are evicted: deleting it reads their pages to drop their
  // blocks' references; fsck proves every count exact afterwards.
  ASSERT_TRUE(p.DeleteSnap(s1).ok());
  ASSERT_TRUE(p.Flush().ok());
  p.loop_.RunUntil([&] { return p.pool_->Stats().delete_subtrees_pending == 0; }, 1'000'000'000);
  fsck = p.Fsck();
  ASSERT_TRUE(fsck.ok()) << fsck.errors[0];
  p.Crash(PowerLossMode::kDropAll);
  EXPECT_LE(p.pool_->Stats().map_leaves_in_memory, 128u + 2u);
  write_some(200, nullptr);
  ASSERT_TRUE(p.Flush().ok());
  p.Crash(PowerLossMode::kDropAll);
  for (const auto& [block, seed] : model) {
    ASSERT_EQ(*p.Read(v, block * 4096, 4096), Pattern(seed, 4096)) << "block " << block;
  }
  fsck = p.Fsck();
  ASSERT_TRUE(fsck.ok()) << fsck.errors[0];
}

// An open reads the root, the chunk groups, the interior tree nodes and what the journal
// holds: no leaf (a level-1 page carries its leaves' counts, so usage figures need none)
// but those the journal tail changes, and not the whole journal region. A delete the
// crash interrupted goes on in the background after the open.
TEST(PoolMetadata, AnOpenReadsNoLeafButThoseTheJournalTailChanges) {
  PoolOptions options = TestPoolOptions(16ull << 20);  // 8 MiB journal halves
  SimPool p(3, 1, 512ull << 20, options);
  VsdId v = p.Create("d", 256 << 20);
  std::map<uint64_t, char> model;  // 4 KiB block -> pattern seed
  auto write = [&](uint64_t block, uint64_t blocks, char seed) {
    std::string data;
    for (uint64_t b = 0; b < blocks; ++b) {
      data += Pattern(static_cast<char>(seed + b), 4096);
      model[block + b] = static_cast<char>(seed + b);
    }
    ASSERT_TRUE(p.Write(v, block * 4096, data).ok());
  };
  for (int i = 0; i < 64; ++i) write(i * 256, 256, static_cast<char>(i));  // 64 full leaves
  const std::map<uint64_t, char> at_snap = model;
  const SnapshotId s = p.Snap(v, "s");
  for (int i = 0; i < 16; ++i) write(i * 256, 256, static_cast<char>(100 + i));
  ASSERT_TRUE(p.Flush().ok());
  const VsdInfo before = *p.pool_->GetVsdInfo(v);
  EXPECT_EQ(before.allocated_bytes, 64u << 20);
  EXPECT_EQ(before.unique_bytes, 16u << 20);
  // All of that is in the journal (no checkpoint was due): this open replays it and ends
  // with a checkpoint, so the next one has no tail.
  p.Crash(PowerLossMode::kDropAll);
  EXPECT_EQ(p.pool_->GetVsdInfo(v)->unique_bytes, before.unique_bytes);

  p.Crash(PowerLossMode::kDropAll);
  PoolStats st = p.pool_->Stats();
  EXPECT_EQ(st.map_leaves_read, 0u);
  EXPECT_EQ(st.map_leaves_in_memory, 0u);
  EXPECT_GT(st.open_pages_read, 0u);
  EXPECT_LT(st.open_pages_read, 24u) << "chunk groups, interior nodes and change logs only";
  const VsdInfo after = *p.pool_->GetVsdInfo(v);
  EXPECT_EQ(after.allocated_bytes, before.allocated_bytes);
  EXPECT_EQ(after.unique_bytes, before.unique_bytes) << "from the counts in the level-1 pages";

  // A tail longer than an open's first journal read (1 MiB): 300 flushed batches of at
  // least a block each, into three leaves.
  for (int i = 0; i < 300; ++i) {
    write((20 + 10 * (i % 3)) * 256 + i / 3, 1, static_cast<char>(i));
    ASSERT_TRUE(p.Flush().ok());
  }
  p.Crash(PowerLossMode::kDropAll);
  st = p.pool_->Stats();
  EXPECT_EQ(st.map_leaves_read, 3u) << "the leaves the journal tail changes";
  // 1 MiB of each half of each of the 3 disks first, then 1 MiB more of the tail's half.
  EXPECT_GT(st.open_journal_bytes_read, 6u << 20) << "it read on past the first piece";
  EXPECT_LT(st.open_journal_bytes_read, 3u * (16u << 20) / 2) << "not every region whole";
  for (const auto& [block, seed] : model) {
    ASSERT_EQ(*p.Read(v, block * 4096, 4096), Pattern(seed, 4096)) << "block " << block;
  }

  for (uint64_t block = 0; block < 64 * 256; block += 97) {
    ASSERT_EQ(*p.ReadSnap(s, block * 4096, 4096), Pattern(at_snap.at(block), 4096)) << "block " << block;
  }

  // Deleting the snapshot (its leaves not in memory), cut short by a crash: the open
  // reads none of its leaves and the delete goes on afterwards, exactly.
  ASSERT_TRUE(p.DeleteSnap(s).ok());
  ASSERT_TRUE(p.Flush().ok());
  p.Crash(PowerLossMode::kDropAll);
  st = p.pool_->Stats();
  EXPECT_EQ(st.map_leaves_read, 0u);
  p.loop_.RunUntil([&] { return p.pool_->Stats().delete_subtrees_pending == 0; }, 10'000'000'000);
  FsckReport fsck = p.Fsck();
  ASSERT_TRUE(fsck.ok()) << fsck.errors[0];
  EXPECT_EQ(p.pool_->GetVsdInfo(v)->unique_bytes, 64u << 20) << "nothing shares its blocks now";
  for (const auto& [block, seed] : model) {
    ASSERT_EQ(*p.Read(v, block * 4096, 4096), Pattern(seed, 4096)) << "block " << block;
  }
}

// Data chunk records leave memory by groups beyond the cache and come back when a read,
// a write over old data, heal, scrub or fsck needs them; an open keeps none it does not
// need. 200 chunks (7 groups) with room for 2 groups.
TEST(PoolMetadata, ChunkRecordsLeaveMemoryAndComeBackWhenNeeded) {
  PoolOptions options = TestPoolOptions(16ull << 20);
  options.metadata_cache_bytes = 64 << 10;  // 16 leaves, 8 chunk states, 2 record groups
  SimPool p(3, 1, 512ull << 20, options);
  VsdId v = p.Create("d", 256 << 20);
  std::map<uint64_t, char> model;  // 4 KiB block -> pattern seed
  auto write = [&](uint64_t block, uint64_t blocks, char seed) {
    std::string data;
    for (uint64_t b = 0; b < blocks; ++b) {
      data += Pattern(static_cast<char>(seed + b), 4096);
      model[block + b] = static_cast<char>(seed + b);
    }
    ASSERT_TRUE(p.Write(v, block * 4096, data).ok());
  };
  auto check_all = [&] {
    for (const auto& [block, seed] : model) {
      ASSERT_EQ(*p.Read(v, block * 4096, 4096), Pattern(seed, 4096)) << "block " << block;
    }
  };
  for (int i = 0; i < 200; ++i) write(i * 256, 256, static_cast<char>(i));
  ASSERT_TRUE(p.Flush().ok());
  p.Crash(PowerLossMode::kDropAll);  // replays, then checkpoints: every group has a page
  p.Crash(PowerLossMode::kDropAll);
  PoolStats st = p.pool_->Stats();
  const uint64_t chunks = st.chunks;
  EXPECT_GE(chunks, 200u) << "counted from the groups' pages";
  EXPECT_LE(st.chunk_groups_in_memory, 1u) << "an open keeps only the group new chunks go to";
  EXPECT_EQ(st.chunk_groups_read, 0u);
  check_all();
  st = p.pool_->Stats();
  EXPECT_GE(st.chunk_groups_read, 6u) << "the reads needed their copies";
  EXPECT_GT(st.chunk_groups_evicted, 0u);
  EXPECT_LE(st.chunk_groups_in_memory, 3u) << "the cache holds 2 (and the group new chunks go to)";

  // Scattered overwrites: the old blocks' chunks lose references while their records
  // are not in memory (deltas, applied before the next checkpoint).
  for (int i = 0; i < 300; ++i) write((i * 7919) % (200 * 256), 1, static_cast<char>(i));
  ASSERT_TRUE(p.Flush().ok());
  p.Crash(PowerLossMode::kDropAll);
  check_all();
  FsckReport fsck = p.Fsck();
  ASSERT_TRUE(fsck.ok()) << fsck.errors[0];
  EXPECT_EQ(fsck.chunks, p.pool_->Stats().chunks) << "Stats counts the records not in memory";

  // A disk fails: heal finds its chunks through their slots, reads their groups and
  // re-mirrors every one; scrub reads every chunk's group in turn.
  p.Crash(PowerLossMode::kDropAll);
  ASSERT_LE(p.pool_->Stats().chunk_groups_in_memory, 3u);
  const DiskId victim = p.pool_->ListDisks()[1].id;
  ASSERT_TRUE(WaitStatus(&p.loop_, [&](auto d) { p.pool_->FailDisk(victim, d); }).ok());
  EXPECT_FALSE(p.pool_->FullyRedundant());
  EXPECT_GT(p.pool_->Stats().degraded_chunks, 100u) << "counted through the failed disk's slots";
  ASSERT_TRUE(p.WaitRedundant());
  EXPECT_EQ(p.pool_->Stats().degraded_chunks, 0u);
  EXPECT_GT(p.pool_->Stats().chunks_rebuilt, 100u);
  auto scrub = Wait<ScrubReport>(&p.loop_, [&](auto done) { p.pool_->Scrub(done); });
  ASSERT_TRUE(scrub.ok()) << scrub.status();
  EXPECT_EQ(scrub->chunks_checked, p.pool_->Stats().chunks) << "every chunk, in memory or not";
  EXPECT_EQ(scrub->bad_copies, 0u);
  EXPECT_LE(p.pool_->Stats().chunk_groups_in_memory, 3u);
  check_all();
  fsck = p.Fsck();
  ASSERT_TRUE(fsck.ok()) << fsck.errors[0];
}

// A full pool keeps free chunks for metadata on every node, not just somewhere: a
// metadata chunk (3 copies on distinct nodes) made while a node is away then finds room
// for its copy on that node when it returns (simulator seeds 11 and 53, where the
// pool-wide reserve sat on the nodes the chunk already used).
TEST(PoolMetadata, AFullPoolKeepsEveryNodesMetadataReserve) {
  SimPool p(4, 1, 40ull << 20);
  const uint64_t reserve = p.pool_->Stats().metadata_reserve_chunks_per_node;
  EXPECT_GE(reserve, 2u);
  VsdId v = p.Create("d", 256 << 20);
  absl::Status st;
  int written = 0;
  for (; written < 256; ++written) {
    st = p.Write(v, static_cast<uint64_t>(written) << 20, Pattern(static_cast<char>(written), 1 << 20));
    if (!st.ok()) break;
  }
  ASSERT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_NE(st.message().find("metadata"), std::string::npos) << st;
  EXPECT_GT(written, 40);
  auto node_free = [&] {
    std::map<uint64_t, uint64_t> free;
    for (const DiskInfo& d : p.pool_->ListDisks()) free[d.node.value] += (d.capacity_bytes - d.used_bytes) >> 20;
    return free;
  };
  for (const auto& [node, free] : node_free()) EXPECT_GE(free, reserve) << "node " << node;
  // A node goes away; metadata keeps changing (snapshots, checkpoints), so metadata
  // chunks are made on the other three; it returns and every chunk gets its copies.
  p.pool_->SetNodeOnline(NodeId{2}, false);
  for (int i = 0; i < 6; ++i) {
    p.Snap(v, "s" + std::to_string(i));
    ASSERT_TRUE(p.Flush().ok());
    p.Crash(PowerLossMode::kKeepAll);  // each open ends with a checkpoint
    p.pool_->SetNodeOnline(NodeId{2}, false);
  }
  p.pool_->SetNodeOnline(NodeId{2}, true);
  ASSERT_TRUE(p.WaitRedundant()) << "node 2 returned and a chunk still lacks a copy";
  FsckReport fsck = p.Fsck();
  ASSERT_TRUE(fsck.ok()) << fsck.errors[0];
  for (int i = 0; i < written; ++i) {
    ASSERT_EQ(*p.Read(v, static_cast<uint64_t>(i) << 20, 4096), Pattern(static_cast<char>(i), 4096)) << i;
  }
}

// A checkpoint writes what changed since the last one, not the whole state.
TEST(PoolMetadata, ACheckpointWritesOnlyThePagesThatChanged) {
  PoolOptions options = TestPoolOptions();
  options.checkpoint_dirty_pages_max = 1;  // every commit that changed a node checkpoints
  SimPool p(3, 1, 256ull << 20, options);
  VsdId v = p.Create("d", 128 << 20);
  for (uint64_t b = 0; b < 32768; b += 16) ASSERT_TRUE(p.Write(v, b * 4096, Pattern('a', 4096)).ok());
  ASSERT_TRUE(p.Flush().ok());
  const uint64_t pages_before = p.pool_->Stats().checkpoint_pages_written;
  // 128 MiB = 128 leaves + 1 interior node: one write changes one leaf and the root.
  ASSERT_TRUE(p.Write(v, 5000 * 4096, Pattern('b', 4096)).ok());
  ASSERT_TRUE(p.Flush().ok());
  const PoolStats st = p.pool_->Stats();
  // The leaf and the root, the state page of the chunk the block went to and that
  // chunk's group page (a whole-state checkpoint would write all 129 nodes and the
  // states of all 8 chunks).
  EXPECT_LE(st.last_checkpoint_pages, 4u) << "pages written " << st.checkpoint_pages_written - pages_before;
  EXPECT_GE(st.last_checkpoint_pages, 4u);
  p.Crash(PowerLossMode::kDropAll);
  EXPECT_EQ(*p.Read(v, 5000 * 4096, 4096), Pattern('b', 4096));
  EXPECT_EQ(*p.Read(v, 4096 * 4096, 4096), Pattern('a', 4096));
  EXPECT_TRUE(p.Fsck().ok());
}

// Checkpoints come often enough that none writes much more than the dirty-node limit.
TEST(PoolMetadata, CheckpointsKeepUpWithTheDirtyNodeLimit) {
  PoolOptions options = TestPoolOptions(64ull << 20);
  options.checkpoint_dirty_pages_max = 64;
  SimPool p(3, 1, 1ull << 30, options);
  VsdId v = p.Create("d", 512 << 20);
  const std::string mib = Pattern('m', 1 << 20);
  for (uint64_t i = 0; i < 512; ++i) ASSERT_TRUE(p.Write(v, i << 20, mib).ok());
  ASSERT_TRUE(p.Flush().ok());
  const PoolStats st = p.pool_->Stats();
  // 512 leaves and 512 chunk states (+ parents and chunk groups): at least 1024 / 64
  // checkpoints, each writing a few pages beyond the leaves and states it counted.
  EXPECT_GE(st.checkpoints, 16u) << st.checkpoint_pages_written << " pages";
  EXPECT_LE(st.checkpoint_pages_written, 1024u + st.checkpoints * 4 + 64) << st.checkpoints << " checkpoints";
}

// A root page bad on every copy is reported with the page and each copy's fault.
TEST(PoolMetadata, ACorruptPageOnEveryCopyIsReportedNotPaperedOver) {
  SimPool p(3, 1, 64ull << 20);
  VsdId v = p.Create("d", 8 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('a', 8 << 20)).ok());
  ASSERT_TRUE(p.Flush().ok());
  p.Crash(PowerLossMode::kKeepAll);  // an open writes a checkpoint: the map is in pages now
  ASSERT_GT(p.pool_->Stats().last_checkpoint_pages, 0u);
  const uint64_t data_start = 4096 + p.options_.metadata_bytes;
  // Corrupts one byte of every metadata page (they start with the magic "PAGE") on the
  // given disks.
  auto corrupt_pages = [&](size_t first_disk, size_t end_disk) {
    int corrupted = 0;
    for (size_t i = first_disk; i < end_disk; ++i) {
      SimDisk* d = p.disks_[i].get();
      for (uint64_t off = data_start; off + 4096 <= d->size_bytes(); off += 4096) {
        AlignedBuffer page(4096);
        absl::Status st = WaitStatus(&p.loop_, [&](auto done) { d->Read(off, 4096, page.data(), done); });
        EXPECT_TRUE(st.ok());
        if (std::memcmp(page.data(), "PAGE", 4) != 0) continue;
        d->Corrupt(off + 100, 1);
        ++corrupted;
      }
    }
    return corrupted;
  };
  // One copy bad: every page is read from another, and the pool opens.
  p.pool_.reset();
  ASSERT_GT(corrupt_pages(0, 1), 0);
  p.Crash(PowerLossMode::kKeepAll);
  EXPECT_EQ(*p.Read(v, 0, 8 << 20), Pattern('a', 8 << 20));
  // Scrub finds the bad page copies (pages are blocks with a checksum like any other)
  // and rewrites them from a good copy.
  auto scrub = Wait<ScrubReport>(&p.loop_, [&](auto done) { p.pool_->Scrub(done); });
  ASSERT_TRUE(scrub.ok());
  EXPECT_GT(scrub->bad_copies, 0u);
  EXPECT_EQ(scrub->repaired, scrub->bad_copies);
  EXPECT_EQ(scrub->unrecoverable, 0u);
  auto again = Wait<ScrubReport>(&p.loop_, [&](auto done) { p.pool_->Scrub(done); });
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->bad_copies, 0u);
  // Every copy bad.
  p.pool_.reset();
  ASSERT_GT(corrupt_pages(0, p.disks_.size()), 0);
  auto reopened = Wait<std::unique_ptr<Pool>>(&p.loop_, [&](auto done) {
    Pool::Open(&p.loop_, &p.random_, p.options_, p.specs_, done);
  });
  ASSERT_FALSE(reopened.ok());
  EXPECT_EQ(reopened.status().code(), absl::StatusCode::kDataLoss) << reopened.status();
  EXPECT_NE(reopened.status().message().find("page (chunk"), std::string::npos) << reopened.status();
  EXPECT_NE(reopened.status().message().find("checksum mismatch"), std::string::npos) << reopened.status();
}

// Deleting a snapshot detaches its tree at once and frees it in bounded steps; the
// space comes back, progress is visible, and a crash in the middle loses nothing.
TEST(PoolDelete, ASnapshotIsFreedInTheBackgroundInSteps) {
  SimPool p(3, 1, 512ull << 20);
  VsdId v = p.Create("d", 128 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('a', 128 << 20)).ok());
  SnapshotId s = p.Snap(v, "old");
  ASSERT_TRUE(p.Write(v, 0, Pattern('b', 128 << 20)).ok());  // the snapshot alone holds 'a'
  ASSERT_TRUE(p.Flush().ok());
  const PoolStats before = p.pool_->Stats();
  ASSERT_TRUE(p.DeleteSnap(s).ok());
  // Observe the background work in small steps of (virtual) time.
  std::set<uint64_t> seen;
  uint64_t last = UINT64_MAX;
  for (int i = 0; i < 100000 && p.pool_->Stats().delete_subtrees_pending > 0; ++i) {
    p.loop_.RunUntil([] { return false; }, 50'000);
    const uint64_t freed = p.pool_->Stats().delete_nodes_freed;
    if (freed != last) seen.insert(freed);
    last = freed;
    EXPECT_TRUE(p.Fsck().ok()) << "while deleting";
  }
  const PoolStats after = p.pool_->Stats();
  EXPECT_EQ(after.delete_subtrees_pending, 0u);
  EXPECT_GE(after.delete_nodes_freed - before.delete_nodes_freed, 129u);  // 128 leaves + root
  EXPECT_EQ(after.delete_bytes_freed - before.delete_bytes_freed, 128u << 20);
  // Observed part-way (16 nodes a step): the tree was not freed in one go.
  EXPECT_GE(seen.size(), 2u);
  EXPECT_LT(*seen.begin(), after.delete_nodes_freed) << "the tree was freed in one step";
  ASSERT_TRUE(p.Flush().ok());
  EXPECT_LT(p.pool_->Stats().used_bytes[1], before.used_bytes[1]);
  EXPECT_EQ(*p.Read(v, 0, 128 << 20), Pattern('b', 128 << 20));
  FsckReport fsck = p.Fsck();
  EXPECT_TRUE(fsck.ok()) << fsck.errors[0];
}

TEST(PoolDelete, ACrashHalfWayThroughABackgroundDeleteLosesNothing) {
  PoolOptions options = TestPoolOptions();
  options.background_delete_pause_ns = 50'000'000;  // slow steps: crash between two
  SimPool p(3, 1, 1ull << 30, options);
  constexpr uint64_t kSize = 192 << 20;  // the doomed snapshot alone holds 192 leaves
  VsdId v = p.Create("d", kSize);
  ASSERT_TRUE(p.Write(v, 0, Pattern('a', kSize)).ok());
  SnapshotId keep = p.Snap(v, "keep");
  ASSERT_TRUE(p.Write(v, 0, Pattern('b', kSize)).ok());
  SnapshotId doomed = p.Snap(v, "doomed");
  ASSERT_TRUE(p.Write(v, 0, Pattern('c', kSize)).ok());
  ASSERT_TRUE(p.DeleteSnap(doomed).ok());
  p.loop_.RunUntil([&] { return p.pool_->Stats().delete_nodes_freed > 0; }, 1'000'000'000);
  ASSERT_GT(p.pool_->Stats().delete_subtrees_pending, 0u);
  ASSERT_TRUE(p.Flush().ok());
  p.Crash(PowerLossMode::kDropAll);
  EXPECT_EQ(*p.Read(v, 0, kSize), Pattern('c', kSize));
  EXPECT_EQ(*p.ReadSnap(keep, 0, kSize), Pattern('a', kSize));
  EXPECT_EQ(p.pool_->ListSnapshots(v).size(), 1u);
  FsckReport fsck = p.Fsck();
  EXPECT_TRUE(fsck.ok()) << fsck.errors[0];
  // The open took the unfinished delete up again (the root names the detached tree; the
  // stored reference counts include it): once it is done, only 'a' and 'c' hold data.
  p.loop_.RunUntil([&] { return p.pool_->Stats().delete_subtrees_pending == 0; }, 60'000'000'000);
  ASSERT_EQ(p.pool_->Stats().delete_subtrees_pending, 0u);
  ASSERT_TRUE(p.Flush().ok());
  ASSERT_TRUE(p.Flush().ok());
  const PoolStats st = p.pool_->Stats();
  EXPECT_LE(st.chunks - st.metadata_chunks, 2 * (kSize >> 20) + 4) << "chunks of 'b' were not freed";
  fsck = p.Fsck();
  EXPECT_TRUE(fsck.ok()) << fsck.errors[0];
}

// Chunk states (reference counts and checksums, a page per chunk) beyond the cache are
// dropped and read back; references changed meanwhile (a snapshot's leaves copied, old
// blocks dropped) wait as deltas, which a checkpoint applies first. Nothing is lost or
// miscounted across crashes, and open reads no chunk state at all.
TEST(PoolMetadata, ChunkStatesBeyondTheCacheAreReadBackAndStayExact) {
  PoolOptions options = TestPoolOptions();
  options.metadata_cache_bytes = 4 * 4096;  // leaves: 4; chunk states: 2
  options.checkpoint_dirty_pages_max = 16;
  SimPool p(3, 1, 256ull << 20, options);
  VsdId v = p.Create("d", 64 << 20);
  std::mt19937_64 rng(5);
  std::map<uint64_t, char> model;
  auto write_some = [&](int n) {
    for (int i = 0; i < n; ++i) {
      const uint64_t block = rng() % 16384;
      const char seed = static_cast<char>(rng());
      ASSERT_TRUE(p.Write(v, block * 4096, Pattern(seed, 4096)).ok());
      model[block] = seed;
    }
  };
  write_some(4000);  // ~16 chunks of scattered blocks
  ASSERT_TRUE(p.Flush().ok());
  p.loop_.RunUntil([] { return false; }, 10'000'000);
  PoolStats st = p.pool_->Stats();
  EXPECT_GT(st.chunk_states_evicted, 8u);
  EXPECT_LE(st.chunk_states_in_memory, 2u + 2u) << "the limit plus the open chunk and one being filled";
  const SnapshotId s1 = p.Snap(v, "s1");
  const std::map<uint64_t, char> at_s1 = model;
  write_some(600);  // copies shared leaves: references on chunks not in memory
  st = p.pool_->Stats();
  EXPECT_GT(st.chunk_states_with_deltas + st.chunk_states_read, 0u);
  ASSERT_TRUE(p.Flush().ok());
  for (int round = 0; round < 2; ++round) {
    p.Crash(PowerLossMode::kDropAll);
    st = p.pool_->Stats();
    EXPECT_LE(st.chunk_states_read, 4u) << "open reads only the states the journal tail changed, of "
                                        << st.chunks - st.metadata_chunks;
    for (const auto& [block, seed] : model) {
      ASSERT_EQ(*p.Read(v, block * 4096, 4096), Pattern(seed, 4096)) << "block " << block;
    }
    for (const auto& [block, seed] : at_s1) {
      ASSERT_EQ(*p.ReadSnap(s1, block * 4096, 4096), Pattern(seed, 4096)) << "block " << block;
    }
    FsckReport fsck = p.Fsck();
    ASSERT_TRUE(fsck.ok()) << fsck.errors[0];
    // Overwrite and discard without a flush (lost in the next crash), then delete the
    // snapshot: its unique blocks are freed through deltas too.
    write_some(100);
    ASSERT_TRUE(p.Flush().ok());
  }
  ASSERT_TRUE(p.DeleteSnap(s1).ok());
  p.loop_.RunUntil([&] { return p.pool_->Stats().delete_subtrees_pending == 0; }, 10'000'000'000);
  ASSERT_TRUE(p.Flush().ok());
  ASSERT_TRUE(p.Flush().ok());
  p.Crash(PowerLossMode::kDropAll);
  for (const auto& [block, seed] : model) {
    ASSERT_EQ(*p.Read(v, block * 4096, 4096), Pattern(seed, 4096)) << "block " << block;
  }
  FsckReport fsck = p.Fsck();
  ASSERT_TRUE(fsck.ok()) << fsck.errors[0];
}

// A power cut at every step of a commit that writes a checkpoint: before the k-th
// device operation it issues (page writes, flushes, the root), for every k until the
// commit completes. The process "dies" at the cut: nothing after it is acknowledged.
// Whatever the step, the pool opens, acknowledged data is intact, unacknowledged 4 KiB
// blocks are old or new (never torn), and fsck is clean.
class CutDevice : public BlockDevice {
 public:
  CutDevice(SimDisk* disk, std::function<bool()> cut_now) : disk_(disk), cut_now_(std::move(cut_now)) {}
  uint64_t size_bytes() const override { return disk_->size_bytes(); }
  void Read(uint64_t o, size_t n, void* b, Callback done) override {
    if (!cut_now_()) disk_->Read(o, n, b, std::move(done));
  }
  void Write(uint64_t o, size_t n, const void* b, Callback done) override {
    if (!cut_now_()) disk_->Write(o, n, b, std::move(done));
  }
  void Flush(Callback done) override {
    if (!cut_now_()) disk_->Flush(std::move(done));
  }
  void Discard(uint64_t o, size_t n, Callback done) override {
    if (!cut_now_()) disk_->Discard(o, n, std::move(done));
  }

 private:
  SimDisk* disk_;
  std::function<bool()> cut_now_;
};

TEST(PoolMetadata, APowerCutAtEveryStepOfACheckpointLosesNothingAcknowledged) {
  // The checkpoint cut is the one every open writes: it writes the pages the replayed
  // journal dirtied (32 leaves and their parents) and a new root. Before it, everything
  // was flushed: acknowledged. A cut before any of its reads, page writes, flushes or
  // root writes, then an open without cuts, must find all of it.
  int steps = 0;
  for (int k = 0;; ++k) {
    SCOPED_TRACE("cut before operation " + std::to_string(k) + " of the open");
    SimLoop loop;
    SeededRandom random(7);
    std::vector<std::unique_ptr<SimDisk>> disks;
    uint64_t ops = 0, cut_at = UINT64_MAX;
    bool dead = false;
    auto cut_now = [&] {
      if (!dead && ++ops >= cut_at) {
        dead = true;
        for (auto& d : disks) d->PowerCut(k % 2 ? PowerLossMode::kTear : PowerLossMode::kDropAll);
      }
      return dead;
    };
    std::vector<std::unique_ptr<CutDevice>> cuts;
    std::vector<DiskSpec> specs, raw;
    for (uint64_t n = 1; n <= 3; ++n) {
      SimDiskOptions o;
      o.size_bytes = 128ull << 20;
      disks.push_back(std::make_unique<SimDisk>(&loop, &random, o));
      cuts.push_back(std::make_unique<CutDevice>(disks.back().get(), cut_now));
      specs.push_back(DiskSpec{NodeId{n}, Tier::kHdd, cuts.back().get()});
      raw.push_back(DiskSpec{NodeId{n}, Tier::kHdd, disks.back().get()});
    }
    const PoolOptions options = TestPoolOptions();
    auto pool = Wait<std::unique_ptr<Pool>>(&loop, [&](auto done) { Pool::Create(&loop, &random, options, specs, done); });
    ASSERT_TRUE(pool.ok());
    auto v = Wait<VsdId>(&loop, [&](auto done) { (*pool)->CreateVsd(VsdOptions{"d", 64 << 20, 2, 4}, done); });
    ASSERT_TRUE(v.ok());
    auto write = [&](uint64_t off, const std::string& data) {
      return WaitStatus(&loop, [&](auto done) { (*pool)->Write(*v, off, data.size(), data.data(), false, done); });
    };
    for (uint64_t mib = 0; mib < 64; mib += 4) ASSERT_TRUE(write(mib << 20, Pattern('a', 1 << 20)).ok());
    auto snap = Wait<SnapshotId>(&loop, [&](auto done) { (*pool)->CreateSnapshot(*v, "s", done); });
    ASSERT_TRUE(snap.ok());
    // An open writes a checkpoint: from here on the maps are in pages, which the cut
    // open below reads before it replays.
    pool->reset();
    pool = Wait<std::unique_ptr<Pool>>(&loop, [&](auto done) { Pool::Open(&loop, &random, options, specs, done); });
    ASSERT_TRUE(pool.ok()) << pool.status();
    std::vector<uint64_t> blocks;  // one in each of 32 leaves
    for (uint64_t i = 0; i < 32; ++i) blocks.push_back(i * 512 + 3);
    for (uint64_t b : blocks) ASSERT_TRUE(write(b * 4096, Pattern('b', 4096)).ok());
    ASSERT_TRUE(WaitStatus(&loop, [&](auto done) { (*pool)->Flush(done); }).ok());
    pool->reset();
    cut_at = ops + k + 1;
    std::optional<absl::StatusOr<std::unique_ptr<Pool>>> opened;
    Pool::Open(&loop, &random, options, specs, [&](absl::StatusOr<std::unique_ptr<Pool>> r) { opened = std::move(r); });
    loop.RunUntil([&] { return opened.has_value() || dead; }, 60'000'000'000);
    Pool* p = nullptr;
    std::unique_ptr<Pool> reopened;
    if (opened.has_value() && !dead) {
      cut_at = UINT64_MAX;  // the open finished first: no cut from here on
      ASSERT_TRUE(opened->ok()) << opened->status();
      reopened = std::move(**opened);
      p = reopened.get();
      // The open's checkpoint wrote at least the 32 leaves the journal had changed.
      EXPECT_GE(p->Stats().last_checkpoint_pages, 33u);
      steps = k;
    } else {
      ASSERT_TRUE(dead) << "the open neither finished nor reached the cut";
      // The cut open's disks answer nothing from here on: it fails once its I/Os time
      // out (until then it holds itself through their callbacks, as any open waiting
      // for its disks does).
      loop.RunUntil([&] { return opened.has_value(); }, 600'000'000'000);
      ASSERT_TRUE(opened.has_value()) << "an open whose disks stopped answering never ended";
      opened.reset();
      auto again = Wait<std::unique_ptr<Pool>>(&loop, [&](auto done) { Pool::Open(&loop, &random, options, raw, done); });
      ASSERT_TRUE(again.ok()) << again.status();
      reopened = std::move(*again);
      p = reopened.get();
    }
    for (uint64_t b : blocks) {
      std::string got(4096, '?');
      ASSERT_TRUE(WaitStatus(&loop, [&](auto done) { p->Read(*v, b * 4096, 4096, got.data(), done); }).ok());
      ASSERT_EQ(got, Pattern('b', 4096)) << "acknowledged block " << b;
    }
    for (uint64_t mib = 0; mib < 64; mib += 4) {
      std::string got(1 << 20, '?');
      ASSERT_TRUE(WaitStatus(&loop, [&](auto done) { p->ReadSnapshot(*snap, mib << 20, 1 << 20, got.data(), done); }).ok());
      ASSERT_EQ(got, Pattern('a', 1 << 20)) << "snapshot, MiB " << mib;
    }
    FsckReport fsck = FsckOf(&loop, p);
    ASSERT_TRUE(fsck.ok()) << fsck.errors[0];
    if (steps > 0) break;  // the open finished before operation k: every step was cut
    ASSERT_LT(k, 500) << "the open did not finish within 500 operations";
  }
  EXPECT_GT(steps, 10);  // reads, page writes, flushes and the root
  std::printf("an open (reads + checkpoint) issued %d device operations; a cut before each lost nothing\n", steps);
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
  EXPECT_TRUE(p.Fsck().ok());
  // The metadata reserve: a full pool still commits, snapshots, checkpoints at open
  // (writing every changed page), deletes and frees.
  ASSERT_TRUE(p.Flush().ok());
  SnapshotId snap = p.Snap(v, "when-full");
  p.Crash(PowerLossMode::kKeepAll);
  EXPECT_GT(p.pool_->Stats().last_checkpoint_pages, 0u);
  EXPECT_EQ(*p.ReadSnap(snap, 0, 1 << 20), Pattern('k', 1 << 20));
  ASSERT_TRUE(p.DeleteSnap(snap).ok());
  ASSERT_TRUE(p.Discard(v, 1 << 20, off - (1 << 20)).ok());
  ASSERT_TRUE(p.Flush().ok());
  p.loop_.RunUntil([&] { return p.pool_->Stats().delete_subtrees_pending == 0; }, 1'000'000'000);
  ASSERT_TRUE(p.Flush().ok());
  EXPECT_TRUE(p.Write(v, 8 << 20, Pattern('y', 1 << 20)).ok()) << "space did not come back";
  EXPECT_EQ(*p.Read(v, 0, 1 << 20), Pattern('k', 1 << 20));
  FsckReport fsck = p.Fsck();
  EXPECT_TRUE(fsck.ok()) << fsck.errors[0];
}

// Format 1 kept the whole metadata in the journal region; its disks are refused with a
// message that says so, and nothing on them is touched.
// A pool whose superblocks carry an older format's magic is refused, naming the format
// and saying what to do.
void ExpectOldFormatRefused(const char magic[4], const std::string& format) {
  SimPool p(3, 1, 64ull << 20);
  p.pool_.reset();
  for (auto& d : p.disks_) {
    AlignedBuffer sb(4096);
    ASSERT_TRUE(WaitStatus(&p.loop_, [&](auto done) { d->Read(0, 4096, sb.data(), done); }).ok());
    std::memcpy(sb.data(), magic, 4);
    ASSERT_TRUE(WaitStatus(&p.loop_, [&](auto done) { d->Write(0, 4096, sb.data(), done); }).ok());
  }
  auto r = Wait<std::unique_ptr<Pool>>(&p.loop_, [&](auto done) {
    Pool::Open(&p.loop_, &p.random_, p.options_, p.specs_, done);
  });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_NE(r.status().message().find(format), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("reformat"), std::string::npos) << r.status();
}

TEST(PoolMetadata, AFormatOneDiskIsRefusedWithAMessage) { ExpectOldFormatRefused("SCRB", "format 1"); }

TEST(PoolMetadata, AFormatTwoDiskIsRefusedWithAMessage) { ExpectOldFormatRefused("SCR2", "format 2"); }

TEST(PoolMetadata, AFormatThreeDiskIsRefusedWithAMessage) { ExpectOldFormatRefused("SCR3", "format 3"); }

// Overwrites free their old blocks only once the map change is durable (a commit), and
// a chunk is reused once half of it is free: a thin VSD filling most of the pool,
// overwritten many times over by a client that never flushes, must still not run out of
// space (the pool commits to release the freed blocks and reuses any chunk with room).
TEST(Pool, OverwritesWithoutFlushNeverFillTheSpaceTheyFree) {
  SimPool p(3, 1, 24ull << 20);  // 4 MiB metadata + ~20 chunks per disk: ~30 MiB at RF 2
  const uint64_t kBlocks = (20ull << 20) / 4096;  // a 20 MiB VSD: two thirds of the pool
  VsdId v = p.Create("busy", kBlocks * 4096);
  std::vector<uint32_t> version(kBlocks, 0);
  auto block = [](uint64_t b, uint32_t ver) {
    std::string s(4096, 0);
    for (size_t i = 0; i < s.size(); i += 8) {
      uint64_t x = (b << 32) ^ ver ^ (i * 0x9e3779b97f4a7c15ull);
      std::memcpy(&s[i], &x, 8);
    }
    return s;
  };
  for (uint64_t b = 0; b < kBlocks; b += 256) {
    std::string run;
    for (uint64_t k = b; k < std::min(kBlocks, b + 256); ++k) run += block(k, 0);
    ASSERT_TRUE(p.Write(v, b * 4096, run).ok());
  }
  std::mt19937_64 rng(5);
  for (int i = 0; i < 4 * static_cast<int>(kBlocks); ++i) {  // 80 MiB of overwrites
    const uint64_t b = rng() % kBlocks;
    absl::Status st = p.Write(v, b * 4096, block(b, ++version[b]));
    ASSERT_TRUE(st.ok()) << "overwrite " << i << " of block " << b << ": " << st;
  }
  for (uint64_t b = 0; b < kBlocks; b += 97) {
    EXPECT_EQ(*p.Read(v, b * 4096, 4096), block(b, version[b])) << b;
  }
  EXPECT_TRUE(p.Fsck().ok());
  // The pool is still bounded: a second VSD filling it gets a clear error.
  VsdId w = p.Create("more", 64 << 20);
  absl::Status st;
  for (uint64_t off = 0; off < (64 << 20) && st.ok(); off += 1 << 20) {
    st = p.Write(w, off, Pattern('m', 1 << 20));
  }
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_EQ(*p.Read(v, 0, 4096), block(0, version[0]));
}

TEST(Pool, CopiesLandOnDistinctNodes) {
  SimPool p(3, 2);
  VsdId v = p.Create("d", 16 << 20, 3);
  ASSERT_TRUE(p.Write(v, 0, Pattern('q', 8 << 20)).ok());
  auto report = p.Fsck();
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
  auto report = p.Fsck();
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
  auto diff = p.Diff(s1, s2);
  ASSERT_TRUE(diff.ok());
  std::vector<Extent> want = {{8192, 4096}, {10 << 20, 4096}};
  EXPECT_EQ(*diff, want);
  auto all = p.Diff(SnapshotId{}, s1);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0], (Extent{0, 4 << 20}));
}

// The blocks of a diff, one per 4 KiB block (extents are merged, so comparing blocks
// also checks the merging).
std::set<uint64_t> Blocks(const std::vector<Extent>& extents) {
  std::set<uint64_t> out;
  for (const Extent& e : extents) {
    for (uint64_t off = e.offset_bytes; off < e.offset_bytes + e.length_bytes; off += 4096) {
      out.insert(off / 4096);
    }
  }
  return out;
}

// The fast path can be told apart: snapshots a few intervals apart in one lineage are
// diffed from the change logs (and exactly), everything else walks the maps.
TEST(PoolDiff, NearbySnapshotsAreAnsweredFromChangeLogs) {
  SimPool p(3, 2, 64ull << 20, TestPoolOptions(8ull << 20));
  VsdId v = p.Create("d", 32 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('a', 8 << 20)).ok());
  SnapshotId s1 = p.Snap(v, "s1");
  for (uint64_t b : {3, 700, 701, 1500}) ASSERT_TRUE(p.Write(v, b * 4096, Pattern('b', 4096)).ok());
  SnapshotId s2 = p.Snap(v, "s2");
  ASSERT_TRUE(p.Write(v, 7000 * 4096 + 512, Pattern('c', 512)).ok());  // a partial block
  ASSERT_TRUE(p.Discard(v, 1500 * 4096, 4096).ok());
  ASSERT_TRUE(p.Discard(v, 7500 * 4096, 4096).ok());  // was never mapped: no change
  SnapshotId s3 = p.Snap(v, "s3");

  auto [d12, logs12] = p.DiffAndPath(s1, s2);
  EXPECT_TRUE(logs12);
  EXPECT_EQ(d12, (std::vector<Extent>{{3 * 4096, 4096}, {700 * 4096, 8192}, {1500 * 4096, 4096}}));
  auto [d13, logs13] = p.DiffAndPath(s1, s3);  // two intervals
  EXPECT_TRUE(logs13);
  EXPECT_EQ(Blocks(d13), (std::set<uint64_t>{3, 700, 701, 1500, 7000}));
  auto [d31, logs31] = p.DiffAndPath(s3, s1);  // either direction
  EXPECT_TRUE(logs31);
  EXPECT_EQ(d31, d13);
  auto [d33, logs33] = p.DiffAndPath(s3, s3);
  EXPECT_TRUE(logs33);
  EXPECT_TRUE(d33.empty());
  auto [all, logs_all] = p.DiffAndPath(SnapshotId{}, s1);  // everything mapped: a walk
  EXPECT_FALSE(logs_all);
  EXPECT_EQ(all, (std::vector<Extent>{{0, 8 << 20}}));

  // Deleting the middle snapshot merges its log into the next one's.
  ASSERT_TRUE(p.DeleteSnap(s2).ok());
  auto [d13b, logs13b] = p.DiffAndPath(s1, s3);
  EXPECT_TRUE(logs13b);
  EXPECT_EQ(d13b, d13);

  // A clone made from a snapshot continues its lineage.
  auto clone = p.CloneSnap(s3, "clone");
  ASSERT_TRUE(clone.ok());
  ASSERT_TRUE(p.Write(*clone, 8000 * 4096, Pattern('d', 4096)).ok());
  SnapshotId c1 = p.Snap(*clone, "c1");
  auto [dc, logs_c] = p.DiffAndPath(s1, c1);
  EXPECT_TRUE(logs_c);
  EXPECT_EQ(Blocks(dc), (std::set<uint64_t>{3, 700, 701, 1500, 7000, 8000}));

  // A revert starts a new interval at the snapshot: diffs to the old branch meet there.
  ASSERT_TRUE(p.Revert(v, s1).ok());
  ASSERT_TRUE(p.Write(v, 20 * 4096, Pattern('e', 4096)).ok());
  SnapshotId s4 = p.Snap(v, "s4");
  auto [d34, logs34] = p.DiffAndPath(s3, s4);
  EXPECT_TRUE(logs34);
  EXPECT_EQ(Blocks(d34), (std::set<uint64_t>{3, 20, 700, 701, 1500, 7000}));

  // A clone of a live VSD has no interval to follow: its diffs walk.
  auto live_clone = p.CloneLive(v, "live-clone");
  ASSERT_TRUE(live_clone.ok());
  SnapshotId l1 = p.Snap(*live_clone, "l1");
  auto [dl, logs_l] = p.DiffAndPath(s4, l1);
  EXPECT_FALSE(logs_l);
  EXPECT_TRUE(dl.empty());

  // The logs survive a crash: rebuilt from the journal, then from the checkpoint that
  // recovery writes.
  for (int crash = 0; crash < 2; ++crash) {
    p.Crash(PowerLossMode::kDropAll);
    auto [d13c, logs13c] = p.DiffAndPath(s1, s3);
    EXPECT_TRUE(logs13c) << "after crash " << crash;
    EXPECT_EQ(d13c, d13);
    auto [dcc, logs_cc] = p.DiffAndPath(s1, c1);
    EXPECT_TRUE(logs_cc) << "after crash " << crash;
    EXPECT_EQ(dcc, dc);
  }
  const PoolStats stats = p.pool_->Stats();  // counted since the last Open
  EXPECT_EQ(stats.diffs_from_change_logs, 2u);
  EXPECT_EQ(stats.diffs_walked, 0u);
  EXPECT_TRUE(p.Fsck().ok());
}

// Deleting a VSD rebases clones made from its snapshots onto the first snapshot below
// them that stays (merging the logs on the way), or leaves them without a base.
TEST(PoolDiff, DeletingAVsdRebasesClonesOfItsSnapshots) {
  SimPool p(3, 2, 64ull << 20, TestPoolOptions(8ull << 20));
  VsdId u = p.Create("u", 4 << 20);
  ASSERT_TRUE(p.Write(u, 0, Pattern('u', 100 * 4096)).ok());
  SnapshotId x = p.Snap(u, "x");
  auto w = p.CloneSnap(x, "w");
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(p.Write(*w, 5 * 4096, Pattern('5', 4096)).ok());
  SnapshotId w1 = p.Snap(*w, "w1");
  ASSERT_TRUE(p.Write(*w, 7 * 4096, Pattern('7', 4096)).ok());
  SnapshotId w2 = p.Snap(*w, "w2");
  auto z = p.CloneSnap(w2, "z");
  ASSERT_TRUE(z.ok());
  ASSERT_TRUE(p.Write(*z, 9 * 4096, Pattern('9', 4096)).ok());
  SnapshotId z1 = p.Snap(*z, "z1");
  auto [before, logs_before] = p.DiffAndPath(x, z1);
  EXPECT_TRUE(logs_before);
  EXPECT_EQ(Blocks(before), (std::set<uint64_t>{5, 7, 9}));
  (void)w1;
  ASSERT_TRUE(WaitStatus(&p.loop_, [&](auto d) { p.pool_->DeleteVsd(*w, d); }).ok());
  for (int crash = 0; crash < 2; ++crash) {
    auto [after, logs_after] = p.DiffAndPath(x, z1);
    EXPECT_TRUE(logs_after) << "crash " << crash;
    EXPECT_EQ(after, before);
    p.Crash(PowerLossMode::kDropAll);
  }
  // A clone based on a deleted VSD's snapshots with nothing below them loses its base.
  VsdId v = p.Create("v", 4 << 20);
  SnapshotId v1 = p.Snap(v, "v1");
  auto y = p.CloneSnap(v1, "y");
  ASSERT_TRUE(y.ok());
  ASSERT_TRUE(p.Write(*y, 3 * 4096, Pattern('3', 4096)).ok());
  SnapshotId y1 = p.Snap(*y, "y1");
  ASSERT_TRUE(p.Write(*y, 4 * 4096, Pattern('4', 4096)).ok());
  SnapshotId y2 = p.Snap(*y, "y2");
  ASSERT_TRUE(WaitStatus(&p.loop_, [&](auto d) { p.pool_->DeleteVsd(v, d); }).ok());
  auto [dy, logs_y] = p.DiffAndPath(y1, y2);  // the chain above the deleted base stays
  EXPECT_TRUE(logs_y);
  EXPECT_EQ(dy, (std::vector<Extent>{{4 * 4096, 4096}}));
  auto [dy1, logs_y1] = p.DiffAndPath(SnapshotId{}, y1);
  EXPECT_FALSE(logs_y1);
  EXPECT_EQ(dy1, (std::vector<Extent>{{3 * 4096, 4096}}));
  EXPECT_TRUE(p.Fsck().ok());
}

// A log past its limit is dropped: the diff walks the maps and is still exact.
TEST(PoolDiff, ScatteredChangesPastTheLimitWalkTheMaps) {
  PoolOptions options = TestPoolOptions(8ull << 20);
  options.change_log_blocks_per_extent = 256;  // 4096 blocks: at most 16 extents
  SimPool p(3, 2, 64ull << 20, options);
  VsdId v = p.Create("d", 16 << 20);
  SnapshotId s0 = p.Snap(v, "s0");
  std::set<uint64_t> want;
  for (uint64_t b = 0; b < 16; ++b) {
    ASSERT_TRUE(p.Write(v, b * 2 * 4096, Pattern('x', 4096)).ok());
    want.insert(b * 2);
  }
  SnapshotId s1 = p.Snap(v, "s1");
  auto [d01, logs01] = p.DiffAndPath(s0, s1);
  EXPECT_TRUE(logs01);  // 16 extents: still kept
  EXPECT_EQ(Blocks(d01), want);
  ASSERT_TRUE(p.Write(v, 100 * 4096, Pattern('y', 4096)).ok());
  SnapshotId s2 = p.Snap(v, "s2");
  auto [d12, logs12] = p.DiffAndPath(s1, s2);
  EXPECT_TRUE(logs12);
  auto [d02, logs02] = p.DiffAndPath(s0, s2);  // 17 extents together: walk
  EXPECT_FALSE(logs02);
  want.insert(100);
  EXPECT_EQ(Blocks(d02), want);
  for (uint64_t b = 0; b < 17; ++b) ASSERT_TRUE(p.Write(v, (200 + b * 2) * 4096, Pattern('z', 4096)).ok());
  SnapshotId s3 = p.Snap(v, "s3");
  auto [d23, logs23] = p.DiffAndPath(s2, s3);  // its own log overflowed
  EXPECT_FALSE(logs23);
  EXPECT_EQ(d23.size(), 17u);
  // Deleting s2 merges an unknown log into s3's: still unknown, still exact.
  ASSERT_TRUE(p.DeleteSnap(s2).ok());
  auto [d13, logs13] = p.DiffAndPath(s1, s3);
  EXPECT_FALSE(logs13);
  EXPECT_EQ(d13.size(), 18u);
}

// A power cut that loses unflushed writes loses their log entries with them: after
// recovery the logs still describe the maps exactly (checked against the same disks
// reopened without logs, where every diff walks).
TEST(PoolDiff, LogsStayExactWhenAPowerCutLosesUnflushedWrites) {
  SimPool p(3, 2, 64ull << 20, TestPoolOptions(8ull << 20));
  VsdId v = p.Create("d", 16 << 20);
  std::mt19937_64 rng(3);
  auto scatter = [&](int n) {
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(p.Write(v, (rng() % 4096) * 4096, Pattern(static_cast<char>(i), 4096)).ok());
    }
  };
  scatter(50);
  SnapshotId s1 = p.Snap(v, "s1");
  scatter(40);
  SnapshotId s2 = p.Snap(v, "s2");
  scatter(40);  // not flushed: the power cut may drop any of these
  p.Crash(PowerLossMode::kTear);
  scatter(40);
  SnapshotId s3 = p.Snap(v, "s3");
  ASSERT_TRUE(p.DeleteSnap(s2).ok());
  scatter(40);
  p.Crash(PowerLossMode::kDropAll);
  SnapshotId s4 = p.Snap(v, "s4");
  const std::vector<SnapshotId> snaps = {s1, s3, s4};
  std::map<std::pair<uint64_t, uint64_t>, std::vector<Extent>> from_logs;
  for (SnapshotId x : snaps) {
    for (SnapshotId y : snaps) {
      auto [d, logs] = p.DiffAndPath(x, y);
      EXPECT_TRUE(logs) << x.value << " -> " << y.value;
      from_logs[{x.value, y.value}] = d;
    }
  }
  p.options_.change_log_blocks_per_extent = 0;  // reopen without logs
  p.Crash(PowerLossMode::kDropAll);
  for (SnapshotId x : snaps) {
    for (SnapshotId y : snaps) {
      auto [d, logs] = p.DiffAndPath(x, y);
      EXPECT_FALSE(logs);
      EXPECT_EQ(d, (from_logs[{x.value, y.value}])) << x.value << " -> " << y.value;
    }
  }
}

// Random workloads on two pools driven identically, one with change logs and one
// without (every diff a walk): every diff between any two snapshots is the same, across
// snapshot deletion in the middle of chains, clones, reverts, resizes and crashes.
TEST(PoolDiff, ChangeLogDiffsEqualTreeWalksOnRandomWorkloads) {
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    PoolOptions with_logs = TestPoolOptions(8ull << 20);
    with_logs.change_log_blocks_per_extent = seed % 2 ? 32 : 512;  // 512: logs often dropped
    PoolOptions walk_only = with_logs;
    walk_only.change_log_blocks_per_extent = 0;
    SimPool a(3, 2, 96ull << 20, with_logs), b(3, 2, 96ull << 20, walk_only);
    std::mt19937_64 rng(seed);
    struct Vsd {
      VsdId id;
      uint64_t size_bytes;
      std::vector<SnapshotId> snaps;
    };
    std::vector<Vsd> vsds;
    std::vector<SnapshotId> all_snaps;
    int names = 0;
    auto create = [&](uint64_t size) {
      const std::string name = "v" + std::to_string(++names);
      VsdId ia = a.Create(name, size), ib = b.Create(name, size);
      ASSERT_EQ(ia, ib);
      vsds.push_back(Vsd{ia, size, {}});
    };
    auto snap = [&](Vsd& v) {
      const std::string name = "s" + std::to_string(++names);
      SnapshotId sa = a.Snap(v.id, name), sb = b.Snap(v.id, name);
      ASSERT_EQ(sa, sb);
      v.snaps.push_back(sa);
      all_snaps.push_back(sa);
    };
    uint64_t from_logs = 0, checked = 0;
    auto compare_all = [&](const std::string& when) {
      for (SnapshotId x : all_snaps) {
        for (SnapshotId y : all_snaps) {
          auto [da, logs] = a.DiffAndPath(x, y);
          auto [db, walked_logs] = b.DiffAndPath(x, y);
          ASSERT_FALSE(walked_logs);
          ASSERT_EQ(da, db) << "seed " << seed << " " << when << ": Diff(" << x.value << ", "
                            << y.value << ")" << (logs ? " from change logs" : " walked");
          from_logs += logs;
          ++checked;
        }
      }
    };
    create(8 << 20);
    for (int op = 0; op < 160; ++op) {
      Vsd& v = vsds[rng() % vsds.size()];
      const uint64_t blocks = v.size_bytes / 4096;
      switch (rng() % 12) {
        case 0:
        case 1:
        case 2: {  // scattered single blocks
          for (int i = 0, n = 1 + rng() % 8; i < n; ++i) {
            const uint64_t off = (rng() % blocks) * 4096;
            const std::string data = Pattern(static_cast<char>(rng()), 4096);
            ASSERT_TRUE(a.Write(v.id, off, data).ok());
            ASSERT_TRUE(b.Write(v.id, off, data).ok());
          }
          break;
        }
        case 3: {  // a run, sometimes not block-aligned
          const uint64_t sectors = 1 + rng() % 256;
          const uint64_t off = (rng() % (v.size_bytes / 512 - sectors)) * 512;
          const std::string data = Pattern(static_cast<char>(rng()), sectors * 512);
          ASSERT_TRUE(a.Write(v.id, off, data).ok());
          ASSERT_TRUE(b.Write(v.id, off, data).ok());
          break;
        }
        case 4: {
          const uint64_t sectors = 1 + rng() % 512;
          const uint64_t off = (rng() % (v.size_bytes / 512 - sectors)) * 512;
          ASSERT_TRUE(a.Discard(v.id, off, sectors * 512).ok());
          ASSERT_TRUE(b.Discard(v.id, off, sectors * 512).ok());
          break;
        }
        case 5:
        case 6:
          if (v.snaps.size() < 6) snap(v);
          break;
        case 7: {  // delete a snapshot, often one in the middle of a chain
          if (v.snaps.empty()) break;
          const size_t i = rng() % v.snaps.size();
          const SnapshotId s = v.snaps[i];
          ASSERT_TRUE(a.DeleteSnap(s).ok());
          ASSERT_TRUE(b.DeleteSnap(s).ok());
          v.snaps.erase(v.snaps.begin() + i);
          std::erase(all_snaps, s);
          break;
        }
        case 8: {  // clone, from a snapshot or the live VSD
          if (vsds.size() >= 4) break;
          const std::string name = "c" + std::to_string(++names);
          absl::StatusOr<VsdId> ca, cb;
          if (!v.snaps.empty() && rng() % 3 != 0) {
            const SnapshotId s = v.snaps[rng() % v.snaps.size()];
            ca = a.CloneSnap(s, name);
            cb = b.CloneSnap(s, name);
          } else {
            ca = a.CloneLive(v.id, name);
            cb = b.CloneLive(v.id, name);
          }
          ASSERT_TRUE(ca.ok() && cb.ok());
          ASSERT_EQ(*ca, *cb);
          const uint64_t size = a.pool_->GetVsdInfo(*ca)->size_bytes;
          vsds.push_back(Vsd{*ca, size, {}});
          break;
        }
        case 9: {
          if (v.snaps.empty()) break;
          const SnapshotId s = v.snaps[rng() % v.snaps.size()];
          ASSERT_TRUE(a.Revert(v.id, s).ok());
          ASSERT_TRUE(b.Revert(v.id, s).ok());
          v.size_bytes = a.pool_->GetVsdInfo(v.id)->size_bytes;
          break;
        }
        case 10: {
          if (v.size_bytes >= (24 << 20)) break;
          v.size_bytes += (1 + rng() % 64) * 65536;
          ASSERT_TRUE(WaitStatus(&a.loop_, [&](auto d) { a.pool_->ResizeVsd(v.id, v.size_bytes, d); }).ok());
          ASSERT_TRUE(WaitStatus(&b.loop_, [&](auto d) { b.pool_->ResizeVsd(v.id, v.size_bytes, d); }).ok());
          break;
        }
        case 11: {  // a crash after a flush: both pools keep the same history
          if (rng() % 3 != 0) break;
          ASSERT_TRUE(a.Flush().ok());
          ASSERT_TRUE(b.Flush().ok());
          std::map<std::pair<uint64_t, uint64_t>, std::pair<std::vector<Extent>, bool>> before;
          for (SnapshotId x : all_snaps) {
            for (SnapshotId y : all_snaps) before[{x.value, y.value}] = a.DiffAndPath(x, y);
          }
          a.Crash(PowerLossMode::kDropAll);
          b.Crash(PowerLossMode::kDropAll);
          // The same logs come back: the same answers, from the same path.
          for (SnapshotId x : all_snaps) {
            for (SnapshotId y : all_snaps) {
              ASSERT_EQ(a.DiffAndPath(x, y), (before[{x.value, y.value}]))
                  << "seed " << seed << " op " << op << ": Diff(" << x.value << ", " << y.value
                  << ") after recovery";
            }
          }
          break;
        }
      }
      if (op % 8 == 7) compare_all("op " + std::to_string(op));
    }
    compare_all("end");
    EXPECT_GT(from_logs, checked / 4) << "seed " << seed;
    FsckReport fsck = a.Fsck();
    EXPECT_TRUE(fsck.ok()) << (fsck.errors.empty() ? "" : fsck.errors[0]);
  }
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
  EXPECT_TRUE(p.Fsck().ok());
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
  const FsckReport fsck = p.Fsck();
  EXPECT_TRUE(fsck.ok()) << fsck.errors.front();
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
  EXPECT_TRUE(p.Fsck().ok());
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
  EXPECT_TRUE(p.Fsck().ok());
}

TEST(Pool, EvictedNodeReturnsWithItsStaleCopiesFreed) {
  SimPool p(4, 1);
  VsdId v = p.Create("d", 8 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('e', 4 << 20)).ok());
  p.pool_->SetNodeOnline(NodeId{1}, false);
  ASSERT_TRUE(WaitStatus(&p.loop_, [&](auto d) { p.pool_->EvictNode(NodeId{1}, d); }).ok());
  p.pool_->SetNodeOnline(NodeId{1}, true);
  ASSERT_TRUE(p.WaitRedundant());
  auto fsck = p.Fsck();
  EXPECT_TRUE(fsck.ok()) << fsck.errors.front();
  EXPECT_EQ(*p.Read(v, 0, 4 << 20), Pattern('e', 4 << 20));
  for (const DiskInfo& d : p.pool_->ListDisks()) EXPECT_FALSE(d.failed);
}

// A node that is down while the pool is opened (a new owner takes over) starts offline,
// not failed: its copies wait for it, and once its disk is attached they are caught up.
TEST(Pool, NodeDownAtOpenIsOfflineThenAttachedAndCaughtUp) {
  SimPool p(3, 1);
  VsdId v = p.Create("d", 8 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('a', 2 << 20)).ok());
  ASSERT_TRUE(p.Flush().ok());
  p.pool_.reset();
  std::vector<DiskSpec> present = {p.specs_[0], p.specs_[1]};
  auto reopened = Wait<std::unique_ptr<Pool>>(&p.loop_, [&](auto done) {
    Pool::Open(&p.loop_, &p.random_, p.options_, present, done);
  });
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  p.pool_ = std::move(*reopened);
  for (const DiskInfo& d : p.pool_->ListDisks()) {
    EXPECT_FALSE(d.failed) << "disk " << d.id.value;
    EXPECT_EQ(d.online, d.node != NodeId{3}) << "disk " << d.id.value;
  }
  EXPECT_EQ(*p.Read(v, 0, 2 << 20), Pattern('a', 2 << 20));
  ASSERT_TRUE(p.Write(v, 4096, Pattern('b', 8192)).ok());  // node 3's copies go stale
  // A blank device is not a disk of this pool; the missing one is.
  SimDiskOptions o;
  o.size_bytes = 64 << 20;
  SimDisk blank(&p.loop_, &p.random_, o);
  auto none = Wait<DiskId>(&p.loop_, [&](auto done) {
    p.pool_->AttachDevice(DiskSpec{NodeId{3}, Tier::kHdd, &blank}, done);
  });
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound) << none.status();
  auto attached = Wait<DiskId>(&p.loop_, [&](auto done) { p.pool_->AttachDevice(p.specs_[2], done); });
  ASSERT_TRUE(attached.ok()) << attached.status();
  p.pool_->SetNodeOnline(NodeId{3}, true);
  ASSERT_TRUE(p.WaitRedundant());
  EXPECT_TRUE(p.Fsck().ok());
  // Node 3's copies hold the writes made while it was away: read with node 1 away.
  p.pool_->SetNodeOnline(NodeId{1}, false);
  std::string want = Pattern('a', 2 << 20);
  want.replace(4096, 8192, Pattern('b', 8192));
  EXPECT_EQ(*p.Read(v, 0, 2 << 20), want);
}

// Errors from a node already marked offline (its link broke) do not fail its disks:
// here a write in flight to node 2 is lost and times out after node 2 went offline.
TEST(Pool, ErrorsFromAnOfflineNodeDoNotFailItsDisks) {
  SimPool p(3, 1);
  p.options_.io_errors_to_fail_disk = 1;
  p.Crash(PowerLossMode::kKeepAll);  // reopen with the option
  VsdId v = p.Create("d", 8 << 20);
  ASSERT_TRUE(p.Write(v, 0, Pattern('c', 1 << 20)).ok());
  bool done = false;
  absl::Status st;
  const std::string data = Pattern('d', 1 << 20);
  p.pool_->Write(v, 0, data.size(), data.data(), false, [&](absl::Status s) {
    st = s;
    done = true;
  });
  p.disks_[0]->PowerCut(PowerLossMode::kKeepAll);  // in-flight ops to nodes 1 and 2 vanish
  p.disks_[1]->PowerCut(PowerLossMode::kKeepAll);
  p.pool_->SetNodeOnline(NodeId{1}, false);
  p.pool_->SetNodeOnline(NodeId{2}, false);
  ASSERT_TRUE(p.loop_.RunUntil([&] { return done; }, 120'000'000'000));
  for (const DiskInfo& d : p.pool_->ListDisks()) EXPECT_FALSE(d.failed) << "disk " << d.id.value;
  p.pool_->SetNodeOnline(NodeId{1}, true);
  p.pool_->SetNodeOnline(NodeId{2}, true);
  ASSERT_TRUE(p.Write(v, 0, data).ok());
  ASSERT_TRUE(p.WaitRedundant());
  EXPECT_EQ(*p.Read(v, 0, 1 << 20), data);
  EXPECT_TRUE(p.Fsck().ok());
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
