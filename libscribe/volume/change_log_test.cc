#include "libscribe/volume/change_log.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <set>
#include <utility>
#include <vector>

namespace scribe {
namespace {

std::vector<std::pair<uint64_t, uint64_t>> Extents(const ChangeLog& log) {
  return {log.extents().begin(), log.extents().end()};
}

TEST(ChangeLog, MergesOverlappingAndAdjacentExtents) {
  ChangeLog log;
  log.Add(10, 12, 100);
  log.Add(20, 25, 100);
  log.Add(12, 13, 100);  // adjacent to [10, 12)
  log.Add(22, 23, 100);  // inside [20, 25)
  using V = std::vector<std::pair<uint64_t, uint64_t>>;
  EXPECT_EQ(Extents(log), (V{{10, 13}, {20, 25}}));
  log.Add(5, 30, 100);  // swallows both
  EXPECT_EQ(Extents(log), (V{{5, 30}}));
  log.Add(7, 7, 100);  // empty
  EXPECT_EQ(log.block_count(), 25u);
  EXPECT_TRUE(log.known());
}

TEST(ChangeLog, BecomesUnknownPastItsLimitAndStaysSo) {
  ChangeLog log;
  for (uint64_t i = 0; i < 4; ++i) log.Add(i * 10, i * 10 + 1, 4);
  EXPECT_TRUE(log.known());
  log.Add(100, 101, 4);
  EXPECT_FALSE(log.known());
  EXPECT_EQ(log.extent_count(), 0u);  // memory released
  log.Add(0, 1, 4);
  EXPECT_FALSE(log.known());
  ChangeLog other;
  other.Add(1, 2, 4);
  other.Merge(log, 4);  // merging an unknown log makes the result unknown
  EXPECT_FALSE(other.known());
  other.Reset();
  EXPECT_TRUE(other.known());
  EXPECT_EQ(other.extent_count(), 0u);
}

// Random adds against a set of blocks: the extents cover exactly the blocks added and
// are disjoint, ascending and never adjacent.
TEST(ChangeLog, MatchesASetOfBlocks) {
  std::mt19937_64 rng(7);
  ChangeLog a, b;
  std::set<uint64_t> want;
  for (int i = 0; i < 2000; ++i) {
    const uint64_t begin = rng() % 5000;
    const uint64_t end = begin + 1 + rng() % (rng() % 4 == 0 ? 64 : 3);
    (i % 2 ? a : b).Add(begin, end, 1 << 20);
    for (uint64_t x = begin; x < end; ++x) want.insert(x);
  }
  a.Merge(b, 1 << 20);
  std::set<uint64_t> got;
  uint64_t prev_end = 0;
  bool first = true;
  for (const auto& [begin, end] : a.extents()) {
    ASSERT_LT(begin, end);
    if (!first) {
      ASSERT_GT(begin, prev_end);  // a gap between extents
    }
    first = false;
    prev_end = end;
    for (uint64_t x = begin; x < end; ++x) got.insert(x);
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(a.block_count(), want.size());
}

}  // namespace
}  // namespace scribe
