// The P0 reproduction (issue 12) as a simulator scenario: a cluster shaped like the
// README's (3 nodes, one disk each) with the smallest journal region there is (256 KiB:
// format 1 had to fit its whole state, ~20 bytes per mapped block and snapshot map, in
// one 128 KiB half), under the simulator's faults: power cuts of every disk (the
// engine's death) followed by an open, disk failures, node outages, corruptions of data
// and metadata pages. pool_test's PoolMetadata.MoreMetadataThanTheJournalRegion... shows
// the same region holding 12,000+ scattered blocks (format 1: >= 240 KiB).
#include <gtest/gtest.h>

#include "absl/strings/str_join.h"
#include "libscribe/sim/pool_sim.h"

namespace scribe {
namespace {

TEST(PoolSimP0, MetadataFarLargerThanTheJournalRegionSurvivesEveryCrash) {
  uint64_t power_cuts = 0, reads = 0;
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    PoolSimConfig config;
    config.seed = seed;
    config.ops = 300;
    config.nodes = 3;
    config.disks_per_node = 1;
    config.disk_bytes = 160ull << 20;
    config.pool_options.metadata_bytes = 256 << 10;
    config.vary_leaf_cache = true;  // seeds 3, 6, 9, 12 with a cache of a few leaves
    config.vary_fill = false;       // a fill seed would have small disks instead
    const PoolSimResult r = RunPoolSim(config);
    EXPECT_EQ(r.violations, 0u) << "seed " << seed << "\n" << absl::StrJoin(r.violation_messages, "\n");
    EXPECT_EQ(r.ops, 300u) << "seed " << seed;
    power_cuts += r.power_cuts;
    reads += r.reads_checked;
  }
  // The scenario is only worth its name if the engine died and came back often.
  EXPECT_GT(power_cuts, 20u);
  EXPECT_GT(reads, 10000u);
}

}  // namespace
}  // namespace scribe
