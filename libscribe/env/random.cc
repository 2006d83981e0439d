#include <sys/random.h>

#include "scribe/real_env.h"
#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe {

std::unique_ptr<Random> NewSystemRandom() {
  uint64_t seed = 0;
  SCRIBE_CHECK(getrandom(&seed, sizeof(seed), 0) == sizeof(seed));
  return std::make_unique<SeededRandom>(seed);
}

}  // namespace scribe
