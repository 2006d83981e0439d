// Runs the libFuzzer entry point (nbd_protocol_fuzz.cc) under gtest over a few thousand
// inputs: well-formed messages, the same with bytes flipped, truncated or extended, and
// random bytes, all from a fixed seed so a failure replays. The entry point aborts on a
// broken property, which fails the test.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "libscribe/nbd/nbd_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace scribe::nbd {
namespace {

int FuzzOne(const std::string& s) {
  return LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

std::string RequestBytes(const Request& r) {
  uint8_t b[kRequestHeaderBytes];
  EncodeRequestHeader(r, b);
  return std::string(reinterpret_cast<char*>(b), sizeof(b));
}

std::string Be64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (56 - 8 * i));
  return s;
}

// Well-formed messages of every kind the parsers see.
std::vector<std::string> Seeds() {
  std::vector<std::string> seeds;
  const uint16_t types[] = {kCmdRead,  kCmdWrite,       kCmdDisc,        kCmdFlush, kCmdTrim,
                            kCmdCache, kCmdWriteZeroes, kCmdBlockStatus, 0xffff};
  const uint16_t flags[] = {
      0,          kCmdFlagFua,      kCmdFlagNoHole, kCmdFlagFua | kCmdFlagNoHole,
      kCmdFlagDf, kCmdFlagFastZero, 0xffff};
  const uint64_t offsets[] = {
      0, 512, 4096, (1ull << 30) - 512, 1ull << 30, UINT64_MAX - 511, UINT64_MAX};
  const uint32_t lengths[] = {0, 1, 512, 4096, 32u << 20, (32u << 20) + 512, UINT32_MAX};
  for (uint16_t t : types) {
    for (uint16_t f : flags) {
      for (uint64_t o : offsets) {
        for (uint32_t l : lengths) {
          std::string r = RequestBytes(Request{f, t, 0x1234, o, l});
          seeds.push_back(r);
          if (o == 4096) seeds.push_back(r + Be64(1ull << 30) + Be64(4096) + std::string(1, 9));
        }
      }
    }
  }
  seeds.push_back(EncodeGreeting());
  for (uint32_t f : {0u, 1u, 3u, 4u}) seeds.push_back(EncodeClientFlags(f));
  for (uint32_t opt :
       {kOptExportName, kOptAbort, kOptList, kOptInfo, kOptGo, kOptStructuredReply, 99u}) {
    seeds.push_back(EncodeOptionHeader(opt, ""));
    seeds.push_back(EncodeOptionHeader(opt, EncodeInfoRequest("vm1", {kInfoBlockSize})));
  }
  seeds.push_back(EncodeInfoRequest("", {}));
  seeds.push_back(
      EncodeInfoRequest("disk", {kInfoExport, kInfoName, kInfoDescription, kInfoBlockSize}));
  seeds.push_back(EncodeInfoRequest(std::string(kStringBytesMax, 'n'), {1}));
  seeds.push_back(EncodeOptionReply(kOptGo, kRepAck));
  seeds.push_back(EncodeOptionReply(kOptList, kRepServer, EncodeServerReplyData("vm1")));
  uint8_t reply[kSimpleReplyHeaderBytes];
  EncodeSimpleReplyHeader(kEinval, 7, reply);
  seeds.push_back(std::string(reinterpret_cast<char*>(reply), sizeof(reply)));
  return seeds;
}

TEST(NbdProtocolFuzzReplay, SeedsAndMutationsKeepEveryProperty) {
  std::mt19937_64 rng(20240501);
  const std::vector<std::string> seeds = Seeds();
  size_t runs = 0;
  for (const std::string& s : seeds) {
    ASSERT_EQ(FuzzOne(s), 0);
    ++runs;
  }
  // Mutations: flip, truncate, extend, splice two seeds.
  for (int i = 0; i < 4000; ++i) {
    std::string s = seeds[rng() % seeds.size()];
    switch (rng() % 4) {
      case 0:
        for (int k = 0, n = 1 + rng() % 4; k < n && !s.empty(); ++k) {
          s[rng() % s.size()] ^= static_cast<char>(1 << (rng() % 8));
        }
        break;
      case 1:
        s.resize(rng() % (s.size() + 1));
        break;
      case 2:
        for (int k = 0, n = rng() % 32; k < n; ++k) s.push_back(static_cast<char>(rng()));
        break;
      default:
        s += seeds[rng() % seeds.size()].substr(0, rng() % 64);
        break;
    }
    ASSERT_EQ(FuzzOne(s), 0);
    ++runs;
  }
  // Random bytes of every small length.
  for (int i = 0; i < 2000; ++i) {
    std::string s(rng() % 96, '\0');
    for (char& c : s) c = static_cast<char>(rng());
    ASSERT_EQ(FuzzOne(s), 0);
    ++runs;
  }
  ASSERT_EQ(FuzzOne(""), 0);
  ++runs;
  std::printf("replayed %zu inputs\n", runs);
  EXPECT_GT(runs, 5000u);
}

}  // namespace
}  // namespace scribe::nbd
