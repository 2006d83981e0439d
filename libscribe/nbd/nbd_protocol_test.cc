// The NBD wire format: byte-exact encodings against proto.md, parse/encode round trips,
// and every malformed input each parser must refuse.
#include "libscribe/nbd/nbd_protocol.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace scribe::nbd {
namespace {

const uint8_t* U8(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

std::string Hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

TEST(NbdProtocol, ConstantsMatchTheSpec) {
  EXPECT_EQ(kNbdMagic, 0x4e42444d41474943ull);
  EXPECT_EQ(kIHaveOpt, 0x49484156454F5054ull);
  EXPECT_EQ(kOptionReplyMagic, 0x3e889045565a9ull);
  EXPECT_EQ(kRequestMagic, 0x25609513u);
  EXPECT_EQ(kSimpleReplyMagic, 0x67446698u);
  EXPECT_EQ(kHandshakeFlags, 0x3);
  // HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES | CAN_MULTI_CONN.
  EXPECT_EQ(kTransmissionFlags, 0x1 | 0x4 | 0x8 | 0x20 | 0x40 | 0x100);
  EXPECT_EQ(kRepErrUnsup, 0x80000001u);
  EXPECT_EQ(kRepErrPolicy, 0x80000002u);
  EXPECT_EQ(kRepErrInvalid, 0x80000003u);
  EXPECT_EQ(kRepErrUnknown, 0x80000006u);
  EXPECT_EQ(kEinval, 22u);
  EXPECT_EQ(kEnospc, 28u);
  EXPECT_EQ(kEio, 5u);
  EXPECT_EQ(kEoverflow, 75u);
}

TEST(NbdProtocol, GreetingIsNbdmagicIhaveoptFlags) {
  std::string g = EncodeGreeting();
  ASSERT_EQ(g.size(), kGreetingBytes);
  EXPECT_EQ(g.substr(0, 16), "NBDMAGICIHAVEOPT");
  EXPECT_EQ(Hex(g.substr(16)), "0003");
  auto flags = ParseGreeting(U8(g));
  ASSERT_TRUE(flags.ok());
  EXPECT_EQ(*flags, kHandshakeFlags);
  std::string bad = g;
  bad[0] = 'X';
  EXPECT_FALSE(ParseGreeting(U8(bad)).ok());
  bad = g;
  bad[8] = 'X';  // an oldstyle server would send cliserv_magic here
  EXPECT_FALSE(ParseGreeting(U8(bad)).ok());
}

TEST(NbdProtocol, ClientFlagsRejectUnknownBits) {
  for (uint32_t f : {0u, 1u, 2u, 3u}) {
    auto c = ParseClientFlags(U8(EncodeClientFlags(f)));
    ASSERT_TRUE(c.ok()) << f;
    EXPECT_EQ(c->fixed_newstyle, (f & 1) != 0);
    EXPECT_EQ(c->no_zeroes, (f & 2) != 0);
  }
  for (uint32_t f : {4u, 0x80000000u, 0xffffffffu, 0x103u}) {
    EXPECT_EQ(ParseClientFlags(U8(EncodeClientFlags(f))).status().code(),
              absl::StatusCode::kInvalidArgument)
        << f;
  }
}

TEST(NbdProtocol, OptionHeaderRoundTripAndLimits) {
  std::string o = EncodeOptionHeader(kOptGo, "abc");
  ASSERT_EQ(o.size(), kOptionHeaderBytes + 3);
  EXPECT_EQ(Hex(o.substr(0, 16)),
            "49484156454f5054"
            "00000007"
            "00000003");
  auto h = ParseOptionHeader(U8(o));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->option, kOptGo);
  EXPECT_EQ(h->length_bytes, 3u);

  std::string bad = o;
  bad[7] ^= 1;
  EXPECT_FALSE(ParseOptionHeader(U8(bad)).ok());

  // A length over the limit is refused before anything is allocated for it.
  std::string huge = EncodeOptionHeader(kOptList, "");
  huge[12] = '\xff';
  EXPECT_EQ(ParseOptionHeader(U8(huge)).status().code(), absl::StatusCode::kInvalidArgument);
  std::string at_limit = EncodeOptionHeader(kOptList, std::string(kOptionDataBytesMax, 'x'));
  EXPECT_TRUE(ParseOptionHeader(U8(at_limit)).ok());
  std::string over = EncodeOptionHeader(kOptList, std::string(kOptionDataBytesMax + 1, 'x'));
  EXPECT_FALSE(ParseOptionHeader(U8(over)).ok());
  EXPECT_FALSE(ParseOptionHeader(U8(o), 2).ok());
}

TEST(NbdProtocol, ExportNameLimits) {
  EXPECT_EQ(*ParseExportName("vm-disk"), "vm-disk");
  EXPECT_EQ(*ParseExportName(""), "");
  EXPECT_TRUE(ParseExportName(std::string(kStringBytesMax, 'a')).ok());
  EXPECT_FALSE(ParseExportName(std::string(kStringBytesMax + 1, 'a')).ok());
  EXPECT_FALSE(ParseExportName(std::string("a\0b", 3)).ok());
}

TEST(NbdProtocol, InfoRequestRoundTrip) {
  std::string d = EncodeInfoRequest("disk0", {kInfoBlockSize, kInfoName});
  EXPECT_EQ(Hex(d), "00000005" + Hex("disk0") +
                        "0002"
                        "0003"
                        "0001");
  auto r = ParseInfoRequest(d);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->export_name, "disk0");
  EXPECT_EQ(r->info_types, (std::vector<uint16_t>{kInfoBlockSize, kInfoName}));

  auto empty = ParseInfoRequest(EncodeInfoRequest("", {}));
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->export_name, "");
  EXPECT_TRUE(empty->info_types.empty());
}

TEST(NbdProtocol, InfoRequestRejectsEveryInconsistency) {
  const std::string good = EncodeInfoRequest("abc", {3});
  // Too short for the fixed fields.
  for (size_t n = 0; n < 6; ++n) EXPECT_FALSE(ParseInfoRequest(std::string(n, '\0')).ok()) << n;
  // Truncated anywhere.
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_FALSE(ParseInfoRequest(good.substr(0, n)).ok()) << n;
  }
  // Trailing garbage.
  EXPECT_FALSE(ParseInfoRequest(good + "x").ok());
  // Name length larger than the data (and the maximum 32-bit value: no overflow).
  std::string big = good;
  big[3] = 100;
  EXPECT_FALSE(ParseInfoRequest(big).ok());
  big = good;
  big[0] = big[1] = big[2] = big[3] = '\xff';
  EXPECT_FALSE(ParseInfoRequest(big).ok());
  // Count disagreeing with the bytes that follow, both ways.
  std::string count = good;
  count[4 + 3 + 1] = 2;
  EXPECT_FALSE(ParseInfoRequest(count).ok());
  count[4 + 3 + 1] = 0;
  EXPECT_FALSE(ParseInfoRequest(count).ok());
  count[4 + 3] = '\xff';
  count[4 + 3 + 1] = '\xff';
  EXPECT_FALSE(ParseInfoRequest(count).ok());
  // NUL in the name, and a name over 4096 bytes.
  EXPECT_FALSE(ParseInfoRequest(EncodeInfoRequest(std::string("a\0", 2), {})).ok());
  EXPECT_FALSE(ParseInfoRequest(EncodeInfoRequest(std::string(kStringBytesMax + 1, 'n'), {})).ok());
}

TEST(NbdProtocol, OptionRepliesAreByteExact) {
  std::string ack = EncodeOptionReply(kOptGo, kRepAck);
  EXPECT_EQ(Hex(ack),
            "0003e889045565a9"
            "00000007"
            "00000001"
            "00000000");
  auto h = ParseOptionReplyHeader(U8(ack));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->option, kOptGo);
  EXPECT_EQ(h->type, kRepAck);
  EXPECT_EQ(h->length_bytes, 0u);

  std::string server = EncodeOptionReply(kOptList, kRepServer, EncodeServerReplyData("vm1"));
  EXPECT_EQ(Hex(server),
            "0003e889045565a9"
            "00000003"
            "00000002"
            "00000007"
            "00000003" +
                Hex("vm1"));

  std::string info = EncodeInfoExportData(1ull << 30, kTransmissionFlags);
  EXPECT_EQ(info.size(), 12u);
  EXPECT_EQ(Hex(info),
            "0000"
            "0000000040000000"
            "016d");

  std::string bs = EncodeInfoBlockSizeData(512, 4096, 32 << 20);
  EXPECT_EQ(bs.size(), 14u);
  EXPECT_EQ(Hex(bs),
            "0003"
            "00000200"
            "00001000"
            "02000000");

  std::string err = EncodeOptionReply(kOptInfo, kRepErrUnknown, "no such export");
  auto eh = ParseOptionReplyHeader(U8(err));
  ASSERT_TRUE(eh.ok());
  EXPECT_EQ(eh->type, kRepErrUnknown);
  EXPECT_EQ(eh->length_bytes, 14u);
  EXPECT_EQ(err.substr(kOptionReplyHeaderBytes), "no such export");
  for (uint32_t t : {kRepErrUnsup, kRepErrInvalid, kRepErrPolicy}) {
    EXPECT_EQ(ParseOptionReplyHeader(U8(EncodeOptionReply(1, t)))->type, t);
  }

  std::string bad = ack;
  bad[1] = 0;
  EXPECT_FALSE(ParseOptionReplyHeader(U8(bad)).ok());
}

TEST(NbdProtocol, ExportNameReplyZeroesUnlessNegotiated) {
  std::string with = EncodeExportNameReply(4096, kTransmissionFlags, false);
  EXPECT_EQ(with.size(), 8u + 2u + 124u);
  EXPECT_EQ(with.substr(10), std::string(124, '\0'));
  std::string without = EncodeExportNameReply(4096, kTransmissionFlags, true);
  EXPECT_EQ(Hex(without),
            "0000000000001000"
            "016d");
}

TEST(NbdProtocol, RequestHeaderRoundTrip) {
  Request r{kCmdFlagFua, kCmdWrite, 0x0102030405060708ull, 0x1122334455667788ull, 0x99aabbcc};
  uint8_t b[kRequestHeaderBytes];
  EncodeRequestHeader(r, b);
  EXPECT_EQ(Hex(std::string(reinterpret_cast<char*>(b), sizeof(b))),
            "25609513"
            "0001"
            "0001"
            "0102030405060708"
            "1122334455667788"
            "99aabbcc");
  auto p = ParseRequestHeader(b);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, r);
}

TEST(NbdProtocol, RequestHeaderRejectsBadMagicOnly) {
  Request r{0xffff, 0xffff, 1, 2, 3};  // any flags and type parse: ValidateRequest judges
  uint8_t b[kRequestHeaderBytes];
  EncodeRequestHeader(r, b);
  EXPECT_TRUE(ParseRequestHeader(b).ok());
  for (int i = 0; i < 4; ++i) {
    uint8_t c[kRequestHeaderBytes];
    std::memcpy(c, b, sizeof(c));
    c[i] ^= 0x40;
    EXPECT_EQ(ParseRequestHeader(c).status().code(), absl::StatusCode::kInvalidArgument) << i;
  }
  // A simple reply's magic is not a request's.
  uint8_t reply[kRequestHeaderBytes] = {};
  EncodeSimpleReplyHeader(0, 1, reply);
  EXPECT_FALSE(ParseRequestHeader(reply).ok());
}

TEST(NbdProtocol, SimpleReplyRoundTrip) {
  uint8_t b[kSimpleReplyHeaderBytes];
  EncodeSimpleReplyHeader(kEinval, 0xdeadbeefcafef00dull, b);
  EXPECT_EQ(Hex(std::string(reinterpret_cast<char*>(b), sizeof(b))),
            "67446698"
            "00000016"
            "deadbeefcafef00d");
  auto p = ParseSimpleReplyHeader(b);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->error, kEinval);
  EXPECT_EQ(p->handle, 0xdeadbeefcafef00dull);
  b[3] ^= 1;
  EXPECT_FALSE(ParseSimpleReplyHeader(b).ok());
}

constexpr uint64_t kSize = 1 << 20;

RequestCheck Check(uint16_t type, uint64_t off, uint32_t len, uint16_t flags = 0,
                   RequestLimits limits = {}) {
  return ValidateRequest(Request{flags, type, 7, off, len}, kSize, limits);
}

TEST(NbdProtocol, ValidRequestsPass) {
  EXPECT_TRUE(Check(kCmdRead, 0, 4096).ok());
  EXPECT_TRUE(Check(kCmdRead, kSize - 512, 512).ok());
  EXPECT_TRUE(Check(kCmdRead, kSize, 0).ok());  // zero length at the end
  EXPECT_TRUE(Check(kCmdWrite, 512, 1024, kCmdFlagFua).ok());
  EXPECT_TRUE(Check(kCmdFlush, 0, 0).ok());
  EXPECT_TRUE(Check(kCmdFlush, 0, 0, kCmdFlagFua).ok());  // FUA is valid on every command
  EXPECT_TRUE(Check(kCmdTrim, 0, kSize).ok());
  EXPECT_TRUE(Check(kCmdWriteZeroes, 4096, 8192, kCmdFlagNoHole | kCmdFlagFua).ok());
  EXPECT_TRUE(Check(kCmdDisc, 123, 456, 0xffff).ok());  // a disconnect is always honoured
}

TEST(NbdProtocol, OutOfRangeIsEinvalForReadsEnospcForWrites) {
  EXPECT_EQ(Check(kCmdRead, kSize, 512).error, kEinval);
  EXPECT_EQ(Check(kCmdRead, kSize - 512, 1024).error, kEinval);
  EXPECT_EQ(Check(kCmdTrim, kSize + 512, 512).error, kEinval);
  EXPECT_EQ(Check(kCmdWrite, kSize, 512).error, kEnospc);
  EXPECT_EQ(Check(kCmdWriteZeroes, kSize - 512, 4096).error, kEnospc);
  // offset + length wrapping around 2^64 is out of range, not "small".
  EXPECT_EQ(Check(kCmdRead, UINT64_MAX - 511, 1024).error, kEinval);
  EXPECT_EQ(Check(kCmdWrite, UINT64_MAX - 511, 1024).error, kEnospc);
  EXPECT_FALSE(Check(kCmdWrite, kSize, 512).disconnect);  // payload is read, then refused
}

TEST(NbdProtocol, LengthLimitsAndAlignment) {
  RequestLimits small;
  small.payload_bytes_max = 4096;
  RequestCheck read = ValidateRequest(Request{0, kCmdRead, 1, 0, 8192}, kSize, small);
  EXPECT_EQ(read.error, kEinval);
  EXPECT_FALSE(read.disconnect);
  RequestCheck write = ValidateRequest(Request{0, kCmdWrite, 1, 0, 8192}, kSize, small);
  EXPECT_TRUE(write.disconnect);  // 8 KiB of payload we will not buffer
  // Trim and write-zeroes carry no payload: larger than the payload limit is fine.
  EXPECT_TRUE(ValidateRequest(Request{0, kCmdTrim, 1, 0, 65536}, kSize, small).ok());
  EXPECT_TRUE(ValidateRequest(Request{0, kCmdWriteZeroes, 1, 0, 65536}, kSize, small).ok());
  // Default: 32 MiB.
  EXPECT_TRUE(ValidateRequest(Request{0, kCmdRead, 1, 0, 32u << 20}, 1ull << 40).ok());
  EXPECT_EQ(ValidateRequest(Request{0, kCmdRead, 1, 0, (32u << 20) + 512}, 1ull << 40).error,
            kEinval);
  EXPECT_TRUE(
      ValidateRequest(Request{0, kCmdWrite, 1, 0, (32u << 20) + 512}, 1ull << 40).disconnect);

  EXPECT_EQ(Check(kCmdRead, 100, 512).error, kEinval);
  EXPECT_EQ(Check(kCmdRead, 0, 100).error, kEinval);
  EXPECT_EQ(Check(kCmdWrite, 512, 513).error, kEinval);
  EXPECT_FALSE(Check(kCmdWrite, 512, 513).disconnect);
  EXPECT_EQ(Check(kCmdTrim, 1, 512).error, kEinval);
  RequestLimits bytes;
  bytes.block_bytes_min = 1;
  EXPECT_TRUE(ValidateRequest(Request{0, kCmdRead, 1, 3, 5}, kSize, bytes).ok());
}

TEST(NbdProtocol, UnknownCommandsAndFlagsAreEinval) {
  for (uint16_t type : {kCmdCache, kCmdBlockStatus, uint16_t{8}, uint16_t{0xffff}}) {
    RequestCheck c = Check(type, 0, 512);
    EXPECT_EQ(c.error, kEinval) << type;
    EXPECT_FALSE(c.disconnect) << type;
  }
  EXPECT_EQ(Check(kCmdRead, 0, 512, kCmdFlagDf).error, kEinval);  // DF is never advertised
  EXPECT_EQ(Check(kCmdRead, 0, 512, kCmdFlagNoHole).error, kEinval);
  EXPECT_EQ(Check(kCmdWrite, 0, 512, kCmdFlagNoHole).error, kEinval);
  EXPECT_EQ(Check(kCmdWriteZeroes, 0, 512, kCmdFlagFastZero).error, kEinval);
  EXPECT_EQ(Check(kCmdTrim, 0, 512, kCmdFlagReqOne).error, kEinval);
  EXPECT_EQ(Check(kCmdRead, 0, 512, 0x8000).error, kEinval);
  EXPECT_EQ(Check(kCmdFlush, 512, 0).error, kEinval);  // reserved fields must be zero
  EXPECT_EQ(Check(kCmdFlush, 0, 512).error, kEinval);
}

TEST(NbdProtocol, StatusToError) {
  EXPECT_EQ(ErrorFromStatus(absl::OkStatus()), 0u);
  EXPECT_EQ(ErrorFromStatus(absl::OutOfRangeError("x")), kEinval);
  EXPECT_EQ(ErrorFromStatus(absl::InvalidArgumentError("x")), kEinval);
  EXPECT_EQ(ErrorFromStatus(absl::ResourceExhaustedError("x")), kEnospc);
  EXPECT_EQ(ErrorFromStatus(absl::DataLossError("x")), kEio);
  EXPECT_EQ(ErrorFromStatus(absl::UnavailableError("x")), kEio);
  EXPECT_EQ(ErrorFromStatus(absl::NotFoundError("x")), kEio);
  EXPECT_EQ(ErrorFromStatus(absl::DeadlineExceededError("x")), kEio);
}

}  // namespace
}  // namespace scribe::nbd
