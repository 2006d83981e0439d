#include <sys/random.h>

#include "scribe/real_env.h"
#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe {

// SeededRandom (declared in scribe/sim_env.h) is xoshiro256**: the simulator's PRNG and,
// seeded by getrandom, the real one.
namespace {
// splitmix64: expands one seed into the xoshiro state.
uint64_t SplitMix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

SeededRandom::SeededRandom(uint64_t seed) {
  for (auto& s : s_) s = SplitMix(seed);
}

uint64_t SeededRandom::Next64() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

std::unique_ptr<Random> NewSystemRandom() {
  uint64_t seed = 0;
  SCRIBE_CHECK(getrandom(&seed, sizeof(seed), 0) == sizeof(seed));
  return std::make_unique<SeededRandom>(seed);
}

}  // namespace scribe
