#include "libscribe/volume/block_map.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <utility>
#include <vector>

namespace scribe {
namespace {

// Counts references exactly as the pool does.
class CountingRefs : public BlockRefs {
 public:
  void Ref(const MapEntry& e) override { refs[{e.chunk, e.block}]++; }
  void Unref(const MapEntry& e) override {
    auto it = refs.find({e.chunk, e.block});
    ASSERT_NE(it, refs.end());
    if (--it->second == 0) refs.erase(it);
  }
  std::map<std::pair<uint64_t, uint32_t>, int> refs;
};

MapEntry E(uint64_t chunk, uint32_t block) { return MapEntry{chunk, block, 0}; }

TEST(BlockMap, SetGetClearAndRefcounts) {
  CountingRefs refs;
  {
    BlockMap m(&refs, 1 << 20);
    EXPECT_FALSE(m.Get(5).mapped());
    m.Set(5, E(1, 2));
    m.Set(70000, E(1, 3));
    EXPECT_TRUE(m.Get(5).SameBlock(E(1, 2)));
    EXPECT_EQ(refs.refs.size(), 2u);
    m.Set(5, E(2, 0));  // overwrite drops the old block's reference
    EXPECT_EQ(refs.refs.count({1, 2}), 0u);
    m.Clear(70000);
    EXPECT_EQ(refs.refs.size(), 1u);
  }
  EXPECT_TRUE(refs.refs.empty());  // destroying the map releases everything
}

TEST(BlockMap, SnapshotSharesUntilWrittenThenShadowsOnlyThePath) {
  CountingRefs refs;
  BlockMap live(&refs, 1 << 16);
  for (uint64_t i = 0; i < 1000; ++i) live.Set(i, E(1 + i / 256, i % 256));
  BlockMap snap = live;  // O(1): shares the root
  EXPECT_EQ(snap.root().get(), live.root().get());
  live.Set(3, E(100, 0));
  EXPECT_NE(snap.root().get(), live.root().get());
  EXPECT_TRUE(snap.Get(3).SameBlock(E(1, 3)));
  EXPECT_TRUE(live.Get(3).SameBlock(E(100, 0)));
  // The copied leaf added one reference to each block it names.
  EXPECT_EQ((refs.refs[{1, 4}]), 2);
  EXPECT_EQ((refs.refs[{2, 4}]), 1);  // other leaves are still shared, not copied
  int changed = 0;
  BlockMap::Diff(snap, live, [&](uint64_t lba) {
    EXPECT_EQ(lba, 3u);
    ++changed;
  });
  EXPECT_EQ(changed, 1);
  auto usage = live.ComputeUsage([&](const MapEntry& e) { return refs.refs[{e.chunk, e.block}]; });
  EXPECT_EQ(usage.mapped, 1000u);
  EXPECT_EQ(usage.unique, 1u);  // only the rewritten block is live's alone
}

TEST(BlockMap, GrowKeepsContentsAndDiffsAcrossDepths) {
  CountingRefs refs;
  BlockMap m(&refs, 256);
  m.Set(7, E(1, 7));
  BlockMap small = m;
  m.Grow(1 << 20);
  EXPECT_GT(m.levels(), small.levels());
  EXPECT_TRUE(m.Get(7).SameBlock(E(1, 7)));
  m.Set(500000, E(2, 1));
  std::vector<uint64_t> diff;
  BlockMap::Diff(small, m, [&](uint64_t lba) { diff.push_back(lba); });
  EXPECT_EQ(diff, std::vector<uint64_t>{500000});
}

// DiffRanges reports exactly what Diff reports inside the ranges, for maps of different
// depths, shared and unshared subtrees, and ranges beyond either map.
TEST(BlockMap, DiffRangesEqualsDiffRestrictedToTheRanges) {
  CountingRefs refs;
  std::mt19937_64 rng(5);
  BlockMap base(&refs, 300);
  for (uint64_t i = 0; i < 300; i += 3) base.Set(i, E(1, i % 256));
  BlockMap later = base;
  later.Grow(1 << 18);
  for (int i = 0; i < 400; ++i) {
    const uint64_t lba = rng() % 2 ? rng() % 300 : rng() % (1 << 18);
    if (rng() % 4 == 0) {
      later.Clear(lba);
    } else {
      later.Set(lba, E(2 + lba / 256, lba % 256));
    }
  }
  std::vector<uint64_t> all;
  BlockMap::Diff(base, later, [&](uint64_t lba) { all.push_back(lba); });
  ASSERT_FALSE(all.empty());
  for (int round = 0; round < 50; ++round) {
    std::vector<BlockMap::Range> ranges;
    uint64_t at = rng() % 200;
    while (at < (1ull << 19)) {  // past the end of both maps too
      const uint64_t len = 1 + (rng() % 3 == 0 ? rng() % 70000 : rng() % 300);
      ranges.push_back({at, at + len});
      at += len + 1 + rng() % 90000;
    }
    std::vector<uint64_t> want;
    for (uint64_t lba : all) {
      for (const auto& [b, e] : ranges) {
        if (b <= lba && lba < e) want.push_back(lba);
      }
    }
    std::vector<uint64_t> got, got_reversed;
    BlockMap::DiffRanges(base, later, ranges, [&](uint64_t lba) { got.push_back(lba); });
    BlockMap::DiffRanges(later, base, ranges, [&](uint64_t lba) { got_reversed.push_back(lba); });
    EXPECT_EQ(got, want) << "round " << round;
    EXPECT_EQ(got_reversed, want) << "round " << round;
  }
  std::vector<uint64_t> same;
  BlockMap::DiffRanges(later, later, {{0, 1 << 18}}, [&](uint64_t lba) { same.push_back(lba); });
  EXPECT_TRUE(same.empty());
}

// A cache owner: evicts leaves (as the pool does, once they have a page), reads them
// back, and reads the pages of evicted leaves that were destroyed.
class CachingRefs : public CountingRefs {
 public:
  void EvictedLeafDropped(const MapEntry& page) override { dropped.push_back(page); }
  LeafCache* leaf_cache() override { return &cache; }
  LeafCache cache;
  std::vector<MapEntry> dropped;
};

TEST(BlockMap, EvictedLeavesKeepTheirCountsAndComeBackWhole) {
  CachingRefs refs;
  BlockMap m(&refs, 1 << 16);
  for (uint64_t i = 0; i < 1024; ++i) m.Set(i, E(1 + i / 256, i % 256));  // 4 leaves
  EXPECT_EQ(refs.cache.size(), 4u);
  std::vector<BlockMap::Node*> leaves;
  {
    std::vector<std::shared_ptr<BlockMap::Node>> all, some;
    m.CollectLeaves(nullptr, &all);
    ASSERT_EQ(all.size(), 4u);
    std::vector<BlockMap::Range> one{{300, 301}};
    m.CollectLeaves(&one, &some);
    ASSERT_EQ(some.size(), 1u);
    EXPECT_EQ(some[0], all[1]);
    for (const auto& n : all) leaves.push_back(n.get());  // held by the map alone again
  }
  // Only a written (paged), unpinned leaf can go.
  EXPECT_FALSE(leaves[0]->evictable());
  leaves[0]->page = MapEntry{99, 1, 7};
  leaves[0]->pins = 1;
  EXPECT_FALSE(leaves[0]->evictable());
  leaves[0]->pins = 0;
  BlockMap::Entries saved = *leaves[0]->entries;
  leaves[0]->Evict(200);
  EXPECT_EQ(refs.cache.size(), 3u);
  EXPECT_FALSE(leaves[0]->resident());
  // The blocks keep their references while evicted; usage counts it as of eviction.
  EXPECT_EQ((refs.refs[{1, 5}]), 1);
  BlockMap::Usage u = m.ComputeUsage([&](const MapEntry& e) { return refs.refs[{e.chunk, e.block}]; });
  EXPECT_EQ(u.mapped, 1024u);
  EXPECT_EQ(u.unique, 200u + 768u);
  EXPECT_DEATH(m.Get(5), "");  // reaching an evicted leaf is a bug, not a zero
  leaves[0]->Reload(std::make_unique<BlockMap::Entries>(saved));
  EXPECT_EQ(refs.cache.size(), 4u);
  EXPECT_TRUE(m.Get(5).SameBlock(E(1, 5)));
  // The least recently used leaf is first in line.
  EXPECT_EQ(refs.cache.oldest(), leaves[1]);
  m.Get(300);
  EXPECT_EQ(refs.cache.oldest(), leaves[2]);
  // An evicted leaf destroyed: its page goes to the owner (which drops the blocks'
  // references once it has read it); a resident one drops them itself.
  leaves[3]->page = MapEntry{99, 2, 8};
  leaves[3]->Evict(0);
  m = BlockMap();
  ASSERT_EQ(refs.dropped.size(), 1u);
  EXPECT_EQ(refs.dropped[0].block, 2u);
  EXPECT_EQ(refs.refs.size(), 256u);  // the evicted leaf's blocks, until the owner reads it
  EXPECT_EQ(refs.cache.size(), 0u);
}

}  // namespace
}  // namespace scribe
