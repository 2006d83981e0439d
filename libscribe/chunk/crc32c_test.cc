#include "libscribe/chunk/crc32c.h"

#include <gtest/gtest.h>

#include <string>

namespace scribe {
namespace {

TEST(Crc32c, KnownVectors) {
  // RFC 3720 appendix B.4 test vectors.
  std::string zeros(32, '\0');
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8a9136aau);
  std::string ones(32, '\xff');
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62a8ab43u);
  EXPECT_EQ(Crc32c("123456789", 9), 0xe3069283u);
}

TEST(Crc32c, ChainingEqualsOneShot) {
  std::string s = "the quick brown fox jumps over the lazy dog";
  uint32_t a = Crc32c(s.data(), 10);
  EXPECT_EQ(Crc32c(s.data() + 10, s.size() - 10, a), Crc32c(s.data(), s.size()));
}

}  // namespace
}  // namespace scribe
