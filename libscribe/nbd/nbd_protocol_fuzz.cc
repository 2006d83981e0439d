// libFuzzer entry point for the NBD wire format: every parser and ValidateRequest on
// arbitrary bytes, with the properties each must keep checked by SCRIBE_CHECK (an abort
// is a finding). Built with clang -fsanitize=fuzzer,address by scripts/fuzz-nbd, and
// replayed under gtest by nbd_protocol_fuzz_replay_test.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "libscribe/nbd/nbd_protocol.h"
#include "scribe/status.h"

namespace {

using namespace scribe::nbd;

uint64_t Load64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | p[i];
  return v;
}

void FuzzRequest(const uint8_t* data, size_t size) {
  if (size < kRequestHeaderBytes) return;
  auto req = ParseRequestHeader(data);
  SCRIBE_CHECK(req.ok() ==
               (data[0] == 0x25 && data[1] == 0x60 && data[2] == 0x95 && data[3] == 0x13));
  if (!req.ok()) return;
  // Re-encoding gives back the same bytes.
  uint8_t again[kRequestHeaderBytes];
  EncodeRequestHeader(*req, again);
  SCRIBE_CHECK(std::memcmp(again, data, kRequestHeaderBytes) == 0);

  // Export size and limits from the bytes after the header, when there are any.
  uint64_t export_size =
      size >= kRequestHeaderBytes + 8 ? Load64(data + kRequestHeaderBytes) : (1ull << 30);
  RequestLimits limits;
  if (size >= kRequestHeaderBytes + 12) {
    limits.payload_bytes_max =
        static_cast<uint32_t>(Load64(data + kRequestHeaderBytes + 4) & 0xffffffff);
  }
  if (size >= kRequestHeaderBytes + 13) {
    limits.block_bytes_min = 1u << (data[kRequestHeaderBytes + 12] % 17);
  }
  RequestCheck c = ValidateRequest(*req, export_size, limits);
  if (c.disconnect)
    SCRIBE_CHECK(req->type == kCmdWrite && req->length_bytes > limits.payload_bytes_max);
  if (c.ok() && req->type != kCmdDisc) {
    // What passes is in range, aligned, within limits, with documented flags only.
    SCRIBE_CHECK(req->type == kCmdRead || req->type == kCmdWrite || req->type == kCmdFlush ||
                 req->type == kCmdTrim || req->type == kCmdWriteZeroes);
    SCRIBE_CHECK(req->offset_bytes <= export_size);
    SCRIBE_CHECK(req->length_bytes <= export_size - req->offset_bytes);
    SCRIBE_CHECK(req->offset_bytes % limits.block_bytes_min == 0);
    SCRIBE_CHECK(req->length_bytes % limits.block_bytes_min == 0);
    if (req->type == kCmdRead || req->type == kCmdWrite) {
      SCRIBE_CHECK(req->length_bytes <= limits.payload_bytes_max);
    }
    SCRIBE_CHECK((req->flags & ~(kCmdFlagFua | kCmdFlagNoHole)) == 0);
    if (req->flags & kCmdFlagNoHole) SCRIBE_CHECK(req->type == kCmdWriteZeroes);
    if (req->type == kCmdFlush) SCRIBE_CHECK(req->offset_bytes == 0 && req->length_bytes == 0);
  }
  if (!c.ok()) {
    SCRIBE_CHECK(c.error == kEinval || c.error == kEnospc);
  }
  SCRIBE_CHECK(RequestPayloadBytes(*req) == (req->type == kCmdWrite ? req->length_bytes : 0));
}

void FuzzOptions(const uint8_t* data, size_t size) {
  if (size >= kOptionHeaderBytes) {
    auto h = ParseOptionHeader(data);
    if (h.ok()) {
      SCRIBE_CHECK(h->length_bytes <= kOptionDataBytesMax);
      std::string again = EncodeOptionHeader(h->option, std::string(h->length_bytes, '\0'));
      SCRIBE_CHECK(std::memcmp(again.data(), data, kOptionHeaderBytes) == 0);
    }
  }
  if (size >= kOptionReplyHeaderBytes) (void)ParseOptionReplyHeader(data);
  if (size >= kSimpleReplyHeaderBytes) (void)ParseSimpleReplyHeader(data);
  if (size >= kGreetingBytes) (void)ParseGreeting(data);
  if (size >= kClientFlagsBytes) {
    auto f = ParseClientFlags(data);
    if (f.ok()) SCRIBE_CHECK(data[0] == 0 && data[1] == 0 && data[2] == 0 && (data[3] & ~3) == 0);
  }

  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto name = ParseExportName(bytes);
  if (name.ok()) SCRIBE_CHECK(*name == bytes && name->size() <= kStringBytesMax);

  auto info = ParseInfoRequest(bytes);
  if (info.ok()) {
    // Accepted input is exactly what the encoder would produce for it.
    SCRIBE_CHECK(info->export_name.size() <= kStringBytesMax);
    SCRIBE_CHECK(EncodeInfoRequest(info->export_name, info->info_types) == bytes);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzRequest(data, size);
  FuzzOptions(data, size);
  return 0;
}
