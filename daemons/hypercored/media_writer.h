// Copies an ISO image file into a VSD through scribed's NBD export (the media library's
// "media add"). The real writer runs `qemu-img convert -n` as a child process, so the
// daemon's loop keeps serving while a large image is copied; its exit status and
// standard error decide the result.
//
// Threading: single-threaded on the RealLoop; `done` runs there, never from inside
// Write. Destroying the writer kills copies still running (their `done` never runs).
#ifndef DAEMONS_HYPERCORED_MEDIA_WRITER_H_
#define DAEMONS_HYPERCORED_MEDIA_WRITER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "scribe/real_env.h"

namespace hypercore::daemon {

class MediaWriter {
 public:
  virtual ~MediaWriter() = default;
  // Writes the whole file at `path` (raw) to the start of the NBD export `nbd_uri`
  // ("nbd+unix:///<export>?socket=<path>"), which must be at least as large. INTERNAL
  // with the copier's message when it fails.
  virtual void Write(const std::string& path, const std::string& nbd_uri,
                     std::function<void(absl::Status)> done) = 0;
};

struct QemuImgWriterOptions {
  std::string qemu_img = "/usr/bin/qemu-img";
  // Bytes of the child's standard error kept for the error message.
  size_t stderr_bytes_max = 4096;
};

// DO NOT CALL THIS in a library: a daemon's main() (or a test) creates it. `loop` must
// outlive the writer.
std::unique_ptr<MediaWriter> NewQemuImgWriter(scribe::RealLoop* loop, QemuImgWriterOptions options);

}  // namespace hypercore::daemon

#endif  // DAEMONS_HYPERCORED_MEDIA_WRITER_H_
