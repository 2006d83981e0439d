#include "libscribe/nbd/nbd_protocol.h"

#include <cstring>

#include "absl/strings/str_format.h"

namespace scribe::nbd {
namespace {

uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint32_t Get32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 |
         static_cast<uint32_t>(p[2]) << 8 | static_cast<uint32_t>(p[3]);
}
uint64_t Get64(const uint8_t* p) { return static_cast<uint64_t>(Get32(p)) << 32 | Get32(p + 4); }

void Put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
void Put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (24 - 8 * i));
}
void Put64(uint8_t* p, uint64_t v) {
  Put32(p, static_cast<uint32_t>(v >> 32));
  Put32(p + 4, static_cast<uint32_t>(v));
}

void Append16(std::string* s, uint16_t v) {
  uint8_t b[2];
  Put16(b, v);
  s->append(reinterpret_cast<const char*>(b), 2);
}
void Append32(std::string* s, uint32_t v) {
  uint8_t b[4];
  Put32(b, v);
  s->append(reinterpret_cast<const char*>(b), 4);
}
void Append64(std::string* s, uint64_t v) {
  uint8_t b[8];
  Put64(b, v);
  s->append(reinterpret_cast<const char*>(b), 8);
}

const uint8_t* Bytes(std::string_view s) { return reinterpret_cast<const uint8_t*>(s.data()); }

absl::Status CheckName(std::string_view name) {
  if (name.size() > kStringBytesMax) {
    return absl::InvalidArgumentError(
        absl::StrFormat("export name of %d bytes is longer than %d", name.size(), kStringBytesMax));
  }
  if (name.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError("export name contains NUL");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<uint16_t> ParseGreeting(const uint8_t bytes[kGreetingBytes]) {
  if (Get64(bytes) != kNbdMagic) return absl::InvalidArgumentError("greeting: bad NBDMAGIC");
  if (Get64(bytes + 8) != kIHaveOpt) {
    return absl::InvalidArgumentError("greeting: not a newstyle server (no IHAVEOPT)");
  }
  return Get16(bytes + 16);
}

absl::StatusOr<ClientFlags> ParseClientFlags(const uint8_t bytes[kClientFlagsBytes]) {
  const uint32_t flags = Get32(bytes);
  const uint32_t known = kClientFlagFixedNewstyle | kClientFlagNoZeroes;
  if (flags & ~known) {
    return absl::InvalidArgumentError(absl::StrFormat("unknown client flags 0x%x", flags & ~known));
  }
  return ClientFlags{(flags & kClientFlagFixedNewstyle) != 0, (flags & kClientFlagNoZeroes) != 0};
}

absl::StatusOr<OptionHeader> ParseOptionHeader(const uint8_t bytes[kOptionHeaderBytes],
                                               size_t data_bytes_max) {
  if (Get64(bytes) != kIHaveOpt) return absl::InvalidArgumentError("option: bad IHAVEOPT magic");
  OptionHeader h{Get32(bytes + 8), Get32(bytes + 12)};
  if (h.length_bytes > data_bytes_max) {
    return absl::InvalidArgumentError(
        absl::StrFormat("option %d carries %d bytes of data, more than %d", h.option,
                        h.length_bytes, data_bytes_max));
  }
  return h;
}

absl::StatusOr<std::string> ParseExportName(std::string_view data) {
  absl::Status st = CheckName(data);
  if (!st.ok()) return st;
  return std::string(data);
}

absl::StatusOr<InfoRequest> ParseInfoRequest(std::string_view data) {
  // 32-bit name length + name + 16-bit count + 2 * count.
  if (data.size() < 6) return absl::InvalidArgumentError("info request shorter than 6 bytes");
  const uint32_t name_bytes = Get32(Bytes(data));
  if (name_bytes > data.size() - 6) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "info request name length %d exceeds the option data (%d bytes)", name_bytes, data.size()));
  }
  std::string_view name = data.substr(4, name_bytes);
  absl::Status st = CheckName(name);
  if (!st.ok()) return st;
  const size_t count_at = 4 + name_bytes;
  const uint16_t count = Get16(Bytes(data) + count_at);
  const size_t rest = data.size() - count_at - 2;
  if (rest != static_cast<size_t>(count) * 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("info request lists %d information types in %d bytes", count, rest));
  }
  InfoRequest r;
  r.export_name = std::string(name);
  r.info_types.reserve(count);
  for (uint16_t i = 0; i < count; ++i) {
    r.info_types.push_back(Get16(Bytes(data) + count_at + 2 + 2 * i));
  }
  return r;
}

absl::StatusOr<OptionReplyHeader> ParseOptionReplyHeader(
    const uint8_t bytes[kOptionReplyHeaderBytes]) {
  if (Get64(bytes) != kOptionReplyMagic) {
    return absl::InvalidArgumentError("option reply: bad magic");
  }
  return OptionReplyHeader{Get32(bytes + 8), Get32(bytes + 12), Get32(bytes + 16)};
}

absl::StatusOr<Request> ParseRequestHeader(const uint8_t bytes[kRequestHeaderBytes]) {
  const uint32_t magic = Get32(bytes);
  if (magic != kRequestMagic) {
    return absl::InvalidArgumentError(absl::StrFormat("request: bad magic 0x%08x", magic));
  }
  Request r;
  r.flags = Get16(bytes + 4);
  r.type = Get16(bytes + 6);
  r.handle = Get64(bytes + 8);
  r.offset_bytes = Get64(bytes + 16);
  r.length_bytes = Get32(bytes + 24);
  return r;
}

absl::StatusOr<SimpleReplyHeader> ParseSimpleReplyHeader(
    const uint8_t bytes[kSimpleReplyHeaderBytes]) {
  if (Get32(bytes) != kSimpleReplyMagic) {
    return absl::InvalidArgumentError("reply: bad magic (not a simple reply)");
  }
  return SimpleReplyHeader{Get32(bytes + 4), Get64(bytes + 8)};
}

RequestCheck ValidateRequest(const Request& r, uint64_t export_size_bytes,
                             const RequestLimits& limits) {
  auto fail = [](uint32_t error) { return RequestCheck{error, false}; };
  uint16_t allowed_flags = kCmdFlagFua;
  bool has_range = true;
  uint32_t past_end_error = kEinval;
  switch (r.type) {
    case kCmdDisc:
      return RequestCheck{};
    case kCmdRead:
      if (r.length_bytes > limits.payload_bytes_max) return fail(kEinval);
      break;
    case kCmdWrite:
      // The payload follows whatever we decide; one we will not buffer ends the session.
      if (r.length_bytes > limits.payload_bytes_max) return RequestCheck{kEinval, true};
      past_end_error = kEnospc;
      break;
    case kCmdFlush:
      has_range = false;
      break;
    case kCmdTrim:
      break;
    case kCmdWriteZeroes:
      allowed_flags |= kCmdFlagNoHole;
      past_end_error = kEnospc;
      break;
    default:
      return fail(kEinval);
  }
  if (r.flags & ~allowed_flags) return fail(kEinval);
  if (!has_range) {
    return r.offset_bytes == 0 && r.length_bytes == 0 ? RequestCheck{} : fail(kEinval);
  }
  const uint32_t block = limits.block_bytes_min == 0 ? 1 : limits.block_bytes_min;
  if (r.offset_bytes % block != 0 || r.length_bytes % block != 0) return fail(kEinval);
  if (r.offset_bytes > export_size_bytes || r.length_bytes > export_size_bytes - r.offset_bytes) {
    return fail(past_end_error);
  }
  return RequestCheck{};
}

uint32_t ErrorFromStatus(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 0;
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kInvalidArgument:
      return kEinval;
    case absl::StatusCode::kResourceExhausted:
      return kEnospc;
    default:
      return kEio;
  }
}

std::string EncodeGreeting(uint16_t handshake_flags) {
  std::string s;
  Append64(&s, kNbdMagic);
  Append64(&s, kIHaveOpt);
  Append16(&s, handshake_flags);
  return s;
}

std::string EncodeClientFlags(uint32_t flags) {
  std::string s;
  Append32(&s, flags);
  return s;
}

std::string EncodeOptionHeader(uint32_t option, std::string_view data) {
  std::string s;
  Append64(&s, kIHaveOpt);
  Append32(&s, option);
  Append32(&s, static_cast<uint32_t>(data.size()));
  s.append(data);
  return s;
}

std::string EncodeInfoRequest(std::string_view export_name, const std::vector<uint16_t>& types) {
  std::string s;
  Append32(&s, static_cast<uint32_t>(export_name.size()));
  s.append(export_name);
  Append16(&s, static_cast<uint16_t>(types.size()));
  for (uint16_t t : types) Append16(&s, t);
  return s;
}

std::string EncodeOptionReply(uint32_t option, uint32_t type, std::string_view data) {
  std::string s;
  Append64(&s, kOptionReplyMagic);
  Append32(&s, option);
  Append32(&s, type);
  Append32(&s, static_cast<uint32_t>(data.size()));
  s.append(data);
  return s;
}

std::string EncodeServerReplyData(std::string_view export_name) {
  std::string s;
  Append32(&s, static_cast<uint32_t>(export_name.size()));
  s.append(export_name);
  return s;
}

std::string EncodeInfoExportData(uint64_t export_size_bytes, uint16_t transmission_flags) {
  std::string s;
  Append16(&s, kInfoExport);
  Append64(&s, export_size_bytes);
  Append16(&s, transmission_flags);
  return s;
}

std::string EncodeInfoBlockSizeData(uint32_t minimum_bytes, uint32_t preferred_bytes,
                                    uint32_t maximum_bytes) {
  std::string s;
  Append16(&s, kInfoBlockSize);
  Append32(&s, minimum_bytes);
  Append32(&s, preferred_bytes);
  Append32(&s, maximum_bytes);
  return s;
}

std::string EncodeExportNameReply(uint64_t export_size_bytes, uint16_t transmission_flags,
                                  bool no_zeroes) {
  std::string s;
  Append64(&s, export_size_bytes);
  Append16(&s, transmission_flags);
  if (!no_zeroes) s.append(kExportNameZeroesBytes, '\0');
  return s;
}

void EncodeRequestHeader(const Request& r, uint8_t out[kRequestHeaderBytes]) {
  Put32(out, kRequestMagic);
  Put16(out + 4, r.flags);
  Put16(out + 6, r.type);
  Put64(out + 8, r.handle);
  Put64(out + 16, r.offset_bytes);
  Put32(out + 24, r.length_bytes);
}

void EncodeSimpleReplyHeader(uint32_t error, uint64_t handle,
                             uint8_t out[kSimpleReplyHeaderBytes]) {
  Put32(out, kSimpleReplyMagic);
  Put32(out + 4, error);
  Put64(out + 8, handle);
}

}  // namespace scribe::nbd
