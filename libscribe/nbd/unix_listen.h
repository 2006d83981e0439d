// A listening Unix stream socket for the NBD server and the NBD relay.
#ifndef SCRIBE_NBD_UNIX_LISTEN_H_
#define SCRIBE_NBD_UNIX_LISTEN_H_

#include <string>

#include "absl/status/statusor.h"

namespace scribe::nbd {

// Binds and listens on `path` (non-blocking, close-on-exec) and returns the fd. An
// existing socket file is replaced unless someone is listening on it; any other file
// there is left alone (ALREADY_EXISTS).
absl::StatusOr<int> ListenOnUnixSocket(const std::string& path);

}  // namespace scribe::nbd

#endif  // SCRIBE_NBD_UNIX_LISTEN_H_
