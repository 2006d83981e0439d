// Conversions between absl::Status and the schema's Error, shared by both ends.
#ifndef SCRIBE_REMOTE_WIRE_H_
#define SCRIBE_REMOTE_WIRE_H_

#include <string>

#include "absl/status/status.h"
#include "libscribe/remote/disk_service.capnp.h"

namespace scribe::remote {

inline void EncodeError(const absl::Status& status, wire::Error::Builder out) {
  out.setCode(static_cast<uint16_t>(status.code()));
  if (!status.ok()) {
    out.setMessage(capnp::Text::Reader(status.message().data(), status.message().size()));
  }
}

inline absl::Status DecodeError(wire::Error::Reader in) {
  const uint16_t code = in.getCode();
  if (code == 0) return absl::OkStatus();
  const auto text = in.getMessage();
  std::string message(text.begin(), text.size());
  // absl's canonical codes are 1..16; anything else comes from a newer or broken peer.
  if (code > static_cast<uint16_t>(absl::StatusCode::kUnauthenticated)) {
    return absl::InternalError("disk server sent unknown status code " + std::to_string(code) +
                               ": " + message);
  }
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

}  // namespace scribe::remote

#endif  // SCRIBE_REMOTE_WIRE_H_
