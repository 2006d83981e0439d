// An NBD relay that survives a change of server: local clients connect to its Unix
// socket, and it carries each session to the node that currently serves the pool,
// reconnecting to the next one when that node dies or steps down.
//
// The relay speaks NBD (fixed newstyle, simple replies; nbd_protocol.h): it passes the
// client's handshake through and remembers the client flags and the option that chose
// the export (NBD_OPT_GO or NBD_OPT_EXPORT_NAME). In transmission it gives every request
// a handle of its own and keeps it until the server answers. When the server connection
// breaks, it connects to the new server (`upstream` names it; retried every
// `retry_interval_ns`), repeats the handshake, and sends again
//   1. every write, trim and write-zeroes already acknowledged to the client but not yet
//      covered by a completed flush (the old server may have lost it: NBD promises
//      durability only after a flush), waiting for all of them to be acknowledged, then
//   2. every request the client is still waiting for, in arrival order.
// The client sees a pause, not an error. A request is never answered twice; a write may
// be executed twice (same data, same place: harmless). The acknowledged-but-unflushed
// writes are bounded: past `unflushed_bytes_max` the relay sends a flush of its own.
//
// A session ends when the client hangs up, when no server could be reached for
// `reconnect_timeout_ns`, when the new server refuses the export (for instance a newer
// writer fenced this one: NBD_REP_ERR_POLICY), or when a replayed acknowledged write
// fails (the data cannot be vouched for: the client's connection is closed, loudly).
//
// Threading: single-threaded on `loop`; the loop must outlive the relay. Destroying the
// relay closes every session. The process must ignore SIGPIPE (the daemons do), so that a
// peer's hang-up is an error on one session, not the end of the process.
#ifndef SCRIBE_NBD_RELAY_H_
#define SCRIBE_NBD_RELAY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "scribe/real_env.h"

namespace scribe {

struct NbdRelayOptions {
  // The server to use now, as "HOST:PORT" or "unix:PATH"; empty while there is none.
  std::function<std::string()> upstream;
  // A session with no server for this long is closed.
  int64_t reconnect_timeout_ns = 60'000'000'000;
  int64_t retry_interval_ns = 200'000'000;
  // Acknowledged writes kept for replay (memory per session); past this the relay
  // flushes on its own (one pool commit; at 70 MB/s of writes, about 4 a second).
  uint64_t unflushed_bytes_max = 16ull << 20;
  // Largest write payload relayed; a larger one closes the session.
  uint32_t max_request_bytes = 32u << 20;
  // Reports reconnects and session failures (may be null).
  std::function<void(const std::string&)> log;
};

struct NbdRelayStats {
  uint64_t sessions = 0;       // accepted in all
  uint64_t reconnects = 0;     // server connections remade inside sessions
  uint64_t replayed = 0;       // requests sent again after a reconnect
  uint64_t relay_flushes = 0;  // flushes the relay sent on its own
};

class NbdRelay {
 public:
  static std::unique_ptr<NbdRelay> Create(RealLoop* loop, NbdRelayOptions options);
  ~NbdRelay();

  // Accepts clients on a Unix socket at `socket_path` (an old socket file is replaced),
  // instead of any socket listened on before. Sessions already open carry on.
  absl::Status Listen(const std::string& socket_path);
  // Stops accepting; sessions already open carry on.
  void StopListening();
  // Ends every session (their clients see the connection close).
  void CloseSessions();

  int open_sessions() const;
  NbdRelayStats stats() const;

  struct Impl;

 private:
  explicit NbdRelay(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace scribe

#endif  // SCRIBE_NBD_RELAY_H_
