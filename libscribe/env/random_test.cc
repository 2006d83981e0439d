#include <gtest/gtest.h>

#include <array>
#include <memory>

#include "scribe/real_env.h"
#include "scribe/sim_env.h"

namespace scribe {
namespace {

// Conformance for Random: uniform within range, roughly flat, and Bernoulli honours p.
void CheckDistribution(Random* r) {
  std::array<int, 10> buckets{};
  for (int i = 0; i < 100000; ++i) {
    uint64_t v = r->Uniform(10);
    ASSERT_LT(v, 10u);
    buckets[v]++;
  }
  for (int b : buckets) {
    EXPECT_GT(b, 9000);
    EXPECT_LT(b, 11000);
  }
  int heads = 0;
  for (int i = 0; i < 100000; ++i) heads += r->Bernoulli(0.25);
  EXPECT_GT(heads, 23500);
  EXPECT_LT(heads, 26500);
}

TEST(RandomConformance, Seeded) {
  SeededRandom r(42);
  CheckDistribution(&r);
}

TEST(RandomConformance, System) { CheckDistribution(NewSystemRandom().get()); }

TEST(SeededRandom, SameSeedSameSequenceDifferentSeedDiffers) {
  SeededRandom a(5), b(5), c(6);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    uint64_t x = a.Next64();
    EXPECT_EQ(x, b.Next64());
    differs |= x != c.Next64();
  }
  EXPECT_TRUE(differs);
}

}  // namespace
}  // namespace scribe
