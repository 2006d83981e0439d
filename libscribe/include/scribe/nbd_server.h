// An NBD server that exports every VSD of a Pool over a Unix socket, so QEMU, libnbd
// (nbdinfo, nbdcopy, fio's nbd engine) and the kernel's nbd client can use VSDs as
// block devices.
//
// Protocol: fixed-newstyle handshake with NBD_OPT_EXPORT_NAME, LIST, INFO, GO and ABORT
// (the export name is the VSD name); simple replies only (STRUCTURED_REPLY and every
// other option are answered NBD_REP_ERR_UNSUP); no TLS. Transmission: READ, WRITE (FUA
// honoured), FLUSH, TRIM and WRITE_ZEROES (both map to Pool::Discard, after which the
// range reads as zeros), DISC. Many requests run at once on each connection (replies
// may come out of order) and several connections may share an export
// (NBD_FLAG_CAN_MULTI_CONN: the pool is one cache, and a flush is pool-wide).
// Offsets and lengths must be multiples of 512 bytes (advertised with
// NBD_INFO_BLOCK_SIZE); other requests get EINVAL.
//
// Errors: a request the pool fails gets OUT_OF_RANGE/INVALID_ARGUMENT -> EINVAL,
// RESOURCE_EXHAUSTED -> ENOSPC, anything else -> EIO, and the connection carries on. A
// client that breaks the framing (bad magic, a write payload over the limit) loses its
// own connection only.
//
// Threading and ownership: single-threaded on `loop`, like the pool. The loop and the
// pool must outlive the server. Create and the destructor must not be called from inside
// a loop callback of this server. Destroying the server closes every connection; pool
// operations still in flight then complete into buffers the server keeps alive and their
// replies are dropped.
#ifndef SCRIBE_NBD_SERVER_H_
#define SCRIBE_NBD_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "scribe/pool.h"
#include "scribe/real_env.h"

namespace scribe {

struct NbdServerOptions {
  // Largest READ or WRITE payload (advertised as the maximum block size). Larger reads
  // get EINVAL; a larger write closes its connection (its payload cannot be buffered).
  uint32_t max_request_bytes = 32u << 20;
  // Requests read from one connection and not yet answered; the server stops reading
  // that connection's socket at the limit.
  int max_in_flight_per_connection = 64;
  // Payload bytes (write data read, read data not yet sent) held for one connection;
  // a request that would pass it waits unless nothing else is in flight.
  uint64_t max_in_flight_bytes_per_connection = 128ull << 20;
  // Connections beyond this are closed as soon as they are accepted.
  int max_connections = 256;
  // Options a client may send before choosing an export; more closes the connection.
  int max_options_per_connection = 256;
  // A client that has not entered transmission within this time is disconnected.
  int64_t handshake_timeout_ns = 30'000'000'000;
  // Writer fencing per VSD. An export named "NAME@EPOCH" is VSD NAME opened by a writer
  // holding EPOCH (a VM started with that storage epoch). When this returns a higher
  // epoch for NAME (a newer writer was fenced in), such a connection's WRITE, TRIM,
  // WRITE_ZEROES and FLUSH get EPERM and new connections with the old epoch are refused
  // (NBD_REP_ERR_POLICY); reads still work. Plain names declare no epoch and are not
  // fenced (administrative tools). Null: no fencing.
  std::function<uint64_t(const std::string& vsd)> writer_epoch;
};

struct NbdServerStats {
  uint64_t connections_accepted = 0;
  uint64_t connections_refused = 0;  // over max_connections
  uint64_t accept_errors = 0;        // accept() failed (EMFILE...); retried after 100 ms
  uint64_t connections_active = 0;
  uint64_t protocol_errors = 0;  // connections closed for breaking the protocol
  uint64_t requests = 0;         // transmission requests read
  uint64_t request_errors = 0;   // replies with a nonzero error
  uint64_t in_flight_max = 0;    // most requests seen in flight on one connection
  uint64_t fenced_requests = 0;  // refused EPERM: the connection's writer epoch is stale
};

class NbdServer {
 public:
  // Listens on `unix_socket_path` (a stale socket file there is replaced; any other file
  // is an error) and serves `pool`'s VSDs. Errors: INVALID_ARGUMENT for a bad path or
  // options, ALREADY_EXISTS when a non-socket file is in the way, UNAVAILABLE when the
  // socket cannot be made.
  static absl::StatusOr<std::unique_ptr<NbdServer>> Create(RealLoop* loop, Pool* pool,
                                                           std::string unix_socket_path,
                                                           NbdServerOptions options = {});
  // The same server on a TCP address ("127.0.0.1:0" picks a free port): scribed's pool
  // owner serves it to the other nodes, which relay their local Unix-socket clients.
  static absl::StatusOr<std::unique_ptr<NbdServer>> CreateTcp(RealLoop* loop, Pool* pool,
                                                              std::string address,
                                                              NbdServerOptions options = {});
  // Closes every connection and removes the socket file.
  ~NbdServer();

  // The Unix socket path, or "host:port" (with the port bound) for a TCP server.
  const std::string& socket_path() const;
  NbdServerStats Stats() const;

  struct Impl;

 private:
  explicit NbdServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace scribe

#endif  // SCRIBE_NBD_SERVER_H_
