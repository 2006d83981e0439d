// The NBD wire protocol (NetworkBlockDevice/nbd doc/proto.md), fixed-newstyle handshake
// and simple replies: constants, parsers and encoders. Pure functions: no I/O, no
// state, and every allocation is bounded by a limit named here (a parser never trusts a
// length field to size a buffer beyond the input it was given).
//
// All multi-byte fields are big-endian ("network byte order") on the wire.
//
// Thread-safety: everything here is stateless and may be called from any thread.
#ifndef SCRIBE_NBD_NBD_PROTOCOL_H_
#define SCRIBE_NBD_NBD_PROTOCOL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace scribe::nbd {

// --- Handshake (proto.md "Fixed newstyle negotiation") ---
inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943ull;  // "NBDMAGIC"
inline constexpr uint64_t kIHaveOpt = 0x49484156454f5054ull;  // "IHAVEOPT"
inline constexpr uint64_t kOptionReplyMagic = 0x3e889045565a9ull;

// Handshake flags (server, 16 bits).
inline constexpr uint16_t kFlagFixedNewstyle = 1u << 0;
inline constexpr uint16_t kFlagNoZeroes = 1u << 1;
inline constexpr uint16_t kHandshakeFlags = kFlagFixedNewstyle | kFlagNoZeroes;

// Client flags (32 bits). Any other bit set means the server must drop the connection.
inline constexpr uint32_t kClientFlagFixedNewstyle = 1u << 0;
inline constexpr uint32_t kClientFlagNoZeroes = 1u << 1;

// Transmission flags (16 bits).
inline constexpr uint16_t kFlagHasFlags = 1u << 0;
inline constexpr uint16_t kFlagReadOnly = 1u << 1;
inline constexpr uint16_t kFlagSendFlush = 1u << 2;
inline constexpr uint16_t kFlagSendFua = 1u << 3;
inline constexpr uint16_t kFlagRotational = 1u << 4;
inline constexpr uint16_t kFlagSendTrim = 1u << 5;
inline constexpr uint16_t kFlagSendWriteZeroes = 1u << 6;
inline constexpr uint16_t kFlagSendDf = 1u << 7;
inline constexpr uint16_t kFlagCanMultiConn = 1u << 8;
// What this server offers for every export: flush, FUA, trim and write-zeroes, and
// several connections per export (the pool is one cache; a flush is pool-wide).
inline constexpr uint16_t kTransmissionFlags = kFlagHasFlags | kFlagSendFlush | kFlagSendFua |
                                               kFlagSendTrim | kFlagSendWriteZeroes |
                                               kFlagCanMultiConn;

// Options (32 bits).
inline constexpr uint32_t kOptExportName = 1;
inline constexpr uint32_t kOptAbort = 2;
inline constexpr uint32_t kOptList = 3;
inline constexpr uint32_t kOptStartTls = 5;
inline constexpr uint32_t kOptInfo = 6;
inline constexpr uint32_t kOptGo = 7;
inline constexpr uint32_t kOptStructuredReply = 8;
inline constexpr uint32_t kOptListMetaContext = 9;
inline constexpr uint32_t kOptSetMetaContext = 10;
inline constexpr uint32_t kOptExtendedHeaders = 11;

// Option reply types (32 bits); errors have bit 31 set.
inline constexpr uint32_t kRepAck = 1;
inline constexpr uint32_t kRepServer = 2;
inline constexpr uint32_t kRepInfo = 3;
inline constexpr uint32_t kRepFlagError = 1u << 31;
inline constexpr uint32_t kRepErrUnsup = kRepFlagError | 1;
inline constexpr uint32_t kRepErrPolicy = kRepFlagError | 2;
inline constexpr uint32_t kRepErrInvalid = kRepFlagError | 3;
inline constexpr uint32_t kRepErrPlatform = kRepFlagError | 4;
inline constexpr uint32_t kRepErrTlsReqd = kRepFlagError | 5;
inline constexpr uint32_t kRepErrUnknown = kRepFlagError | 6;
inline constexpr uint32_t kRepErrShutdown = kRepFlagError | 7;
inline constexpr uint32_t kRepErrBlockSizeReqd = kRepFlagError | 8;

// Information types of NBD_OPT_INFO / NBD_OPT_GO (16 bits).
inline constexpr uint16_t kInfoExport = 0;
inline constexpr uint16_t kInfoName = 1;
inline constexpr uint16_t kInfoDescription = 2;
inline constexpr uint16_t kInfoBlockSize = 3;

// --- Transmission ---
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;

// Commands (16 bits).
inline constexpr uint16_t kCmdRead = 0;
inline constexpr uint16_t kCmdWrite = 1;
inline constexpr uint16_t kCmdDisc = 2;
inline constexpr uint16_t kCmdFlush = 3;
inline constexpr uint16_t kCmdTrim = 4;
inline constexpr uint16_t kCmdCache = 5;
inline constexpr uint16_t kCmdWriteZeroes = 6;
inline constexpr uint16_t kCmdBlockStatus = 7;

// Command flags (16 bits).
inline constexpr uint16_t kCmdFlagFua = 1u << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1u << 1;
inline constexpr uint16_t kCmdFlagDf = 1u << 2;
inline constexpr uint16_t kCmdFlagReqOne = 1u << 3;
inline constexpr uint16_t kCmdFlagFastZero = 1u << 4;

// Error values of the reply's error field (proto.md "Error values").
inline constexpr uint32_t kEperm = 1;
inline constexpr uint32_t kEio = 5;
inline constexpr uint32_t kEnomem = 12;
inline constexpr uint32_t kEinval = 22;
inline constexpr uint32_t kEnospc = 28;
inline constexpr uint32_t kEoverflow = 75;
inline constexpr uint32_t kEnotsup = 95;
inline constexpr uint32_t kEshutdown = 108;

// --- Sizes and limits ---
inline constexpr size_t kGreetingBytes = 18;  // NBDMAGIC, IHAVEOPT, flags
inline constexpr size_t kClientFlagsBytes = 4;
inline constexpr size_t kOptionHeaderBytes = 16;       // IHAVEOPT, option, length
inline constexpr size_t kOptionReplyHeaderBytes = 20;  // magic, option, type, length
inline constexpr size_t kRequestHeaderBytes = 28;
inline constexpr size_t kSimpleReplyHeaderBytes = 16;
inline constexpr size_t kExportNameZeroesBytes = 124;
// Strings (export names, messages) "MUST be no longer than 4096 bytes".
inline constexpr size_t kStringBytesMax = 4096;
// Largest option payload accepted: an INFO/GO request with a maximal name and a list of
// information requests. Anything longer is treated as abuse (hard disconnect).
inline constexpr size_t kOptionDataBytesMax = 4 + kStringBytesMax + 2 + 2 * 1024;
// The default maximum payload every server should accept (proto.md "Size constraints").
inline constexpr uint32_t kDefaultPayloadBytesMax = 32u << 20;

// --- Parsed messages ---
struct ClientFlags {
  bool fixed_newstyle = false;
  bool no_zeroes = false;
};

struct OptionHeader {
  uint32_t option = 0;
  uint32_t length_bytes = 0;  // of the option data that follows
};

// The data of NBD_OPT_INFO and NBD_OPT_GO.
struct InfoRequest {
  std::string export_name;
  std::vector<uint16_t> info_types;  // as sent, duplicates removed by nothing
};

struct OptionReplyHeader {
  uint32_t option = 0;
  uint32_t type = 0;
  uint32_t length_bytes = 0;
};

struct Request {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t handle = 0;
  uint64_t offset_bytes = 0;
  uint32_t length_bytes = 0;
  bool operator==(const Request&) const = default;
};

struct SimpleReplyHeader {
  uint32_t error = 0;
  uint64_t handle = 0;
};

// --- Parsers. Each reads exactly the bytes it is given and nothing else. ---

// The server's 18-byte greeting (for clients and tests).
absl::StatusOr<uint16_t> ParseGreeting(const uint8_t bytes[kGreetingBytes]);

// Rejects unknown client flag bits (INVALID_ARGUMENT): the server must then disconnect.
absl::StatusOr<ClientFlags> ParseClientFlags(const uint8_t bytes[kClientFlagsBytes]);

// Rejects a wrong magic and data longer than `data_bytes_max` (INVALID_ARGUMENT).
absl::StatusOr<OptionHeader> ParseOptionHeader(const uint8_t bytes[kOptionHeaderBytes],
                                               size_t data_bytes_max = kOptionDataBytesMax);

// NBD_OPT_EXPORT_NAME's data is the name itself; too long or containing NUL is invalid.
absl::StatusOr<std::string> ParseExportName(std::string_view data);

// NBD_OPT_INFO / NBD_OPT_GO data: 32-bit name length, name, 16-bit count, count x 16-bit
// information types. Any inconsistency between the lengths and `data.size()` is invalid.
absl::StatusOr<InfoRequest> ParseInfoRequest(std::string_view data);

absl::StatusOr<OptionReplyHeader> ParseOptionReplyHeader(
    const uint8_t bytes[kOptionReplyHeaderBytes]);

// Rejects only a wrong magic: command and flag values are judged by ValidateRequest, so
// that a well-framed request with an unknown command gets an error reply, not a hang-up.
absl::StatusOr<Request> ParseRequestHeader(const uint8_t bytes[kRequestHeaderBytes]);

absl::StatusOr<SimpleReplyHeader> ParseSimpleReplyHeader(
    const uint8_t bytes[kSimpleReplyHeaderBytes]);

// --- Request validation ---
struct RequestLimits {
  // Largest READ or WRITE payload; larger READs get EINVAL, larger WRITEs cannot be
  // accepted (their payload would have to be buffered) and close the connection.
  uint32_t payload_bytes_max = kDefaultPayloadBytesMax;
  // Offsets and lengths must be multiples of this (the pool's 512-byte sector).
  uint32_t block_bytes_min = 512;
};

struct RequestCheck {
  uint32_t error = 0;       // NBD error to reply with; 0: serve the request
  bool disconnect = false;  // hard disconnect instead of replying
  bool ok() const { return error == 0 && !disconnect; }
};

// Judges a request against the export size and limits, per proto.md:
//  - unknown command, or a flag not documented for the command (FUA is valid on all;
//    NO_HOLE on WRITE_ZEROES only; DF, REQ_ONE, FAST_ZERO are never advertised): EINVAL;
//  - READ longer than the payload limit: EINVAL; WRITE longer: disconnect;
//  - offset or length not a multiple of block_bytes_min: EINVAL;
//  - a range past the end (overflow included): ENOSPC for WRITE and WRITE_ZEROES,
//    EINVAL for READ and TRIM;
//  - FLUSH with a nonzero offset or length (reserved, MUST be zero): EINVAL.
// DISC is always fine. A zero length is allowed (the spec leaves it to the server).
RequestCheck ValidateRequest(const Request& request, uint64_t export_size_bytes,
                             const RequestLimits& limits = {});

// Bytes of payload that follow a request header on the wire (WRITE only).
inline uint32_t RequestPayloadBytes(const Request& request) {
  return request.type == kCmdWrite ? request.length_bytes : 0;
}

// Pool status -> NBD error: OK 0, OUT_OF_RANGE/INVALID_ARGUMENT EINVAL,
// RESOURCE_EXHAUSTED ENOSPC, anything else EIO.
uint32_t ErrorFromStatus(const absl::Status& status);

// --- Encoders ---
std::string EncodeGreeting(uint16_t handshake_flags = kHandshakeFlags);
std::string EncodeClientFlags(uint32_t flags);
std::string EncodeOptionHeader(uint32_t option, std::string_view data);  // header + data
std::string EncodeInfoRequest(std::string_view export_name, const std::vector<uint16_t>& types);
std::string EncodeOptionReply(uint32_t option, uint32_t type, std::string_view data = {});
// NBD_REP_SERVER data: name length, name.
std::string EncodeServerReplyData(std::string_view export_name);
// NBD_REP_INFO data for NBD_INFO_EXPORT: type, size, transmission flags (12 bytes).
std::string EncodeInfoExportData(uint64_t export_size_bytes, uint16_t transmission_flags);
// NBD_REP_INFO data for NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum (14 bytes).
std::string EncodeInfoBlockSizeData(uint32_t minimum_bytes, uint32_t preferred_bytes,
                                    uint32_t maximum_bytes);
// Reply to NBD_OPT_EXPORT_NAME: size, flags, then 124 zero bytes unless NO_ZEROES.
std::string EncodeExportNameReply(uint64_t export_size_bytes, uint16_t transmission_flags,
                                  bool no_zeroes);
void EncodeRequestHeader(const Request& request, uint8_t out[kRequestHeaderBytes]);
void EncodeSimpleReplyHeader(uint32_t error, uint64_t handle, uint8_t out[kSimpleReplyHeaderBytes]);

}  // namespace scribe::nbd

#endif  // SCRIBE_NBD_NBD_PROTOCOL_H_
