// Disks of one node used by the pool owner on another, over the Cap'n Proto backplane.
//
// Each scribed serves its local disks with a DiskServer; the node holding the pool-owner
// lease opens the other nodes' disks as RemoteBlockDevices (OpenRemoteDevice) and runs
// the Pool over them like local ones. Schema: libscribe/remote/disk_service.capnp.
//
// Fencing. Every request carries the owner's epoch (from etcd). The server remembers per
// disk the highest epoch it has seen and refuses older ones with FAILED_PRECONDITION
// ("stale epoch N < M"); requests of a newer epoch start only after those of older
// epochs already running have finished. So once a new owner's OpenRemoteDevice has
// completed on a disk, nothing of a deposed owner reaches that disk any more. The fence
// lives in memory: a restarted server must be given the current epoch
// (DiskServerOptions::epoch_min) or it would take an old owner's requests again.
//
// Threading: like every real component, single-threaded on its RealLoop; every callback
// runs there, as a loop callback of its own. DiskServer::Create waits for the listening
// socket, so (like CapnpTransport::Create) it must not be called from inside a KJ event
// (an aio completion); from main() or a loop callback (timers, Post) it is fine.
#ifndef SCRIBE_REMOTE_H_
#define SCRIBE_REMOTE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "scribe/env.h"
#include "scribe/real_env.h"

namespace scribe {

struct DiskServerOptions {
  // Largest read or write one request may carry; larger ones fail INVALID_ARGUMENT.
  // RemoteBlockDevice splits bigger I/O, so its own limit must not be above this.
  uint32_t request_bytes_max = 8u << 20;
  // Data bytes (reads being read, writes being written) in the disks at once across all
  // connections; further requests wait in arrival order.
  uint64_t in_flight_bytes_max = 256ull << 20;
  // Request bytes one connection may have received and not yet answered; beyond it the
  // server stops reading that connection (Cap'n Proto flow limit), so a client that
  // floods the server is held back by TCP.
  uint64_t connection_request_bytes_max = 64ull << 20;
  // Connections beyond this are closed as soon as they are accepted.
  int connections_max = 256;
  // Every disk starts fenced at this epoch (requests below it are stale). A restarted
  // server passes the current owner epoch so the fence it forgot stays up.
  uint64_t epoch_min = 0;
};

struct DiskServerStats {
  uint64_t connections_accepted = 0;
  uint64_t connections_refused = 0;  // over connections_max
  uint64_t connections_active = 0;
  uint64_t requests = 0;
  uint64_t stale_epoch_rejections = 0;
  uint64_t request_errors = 0;        // any reply with a non-OK error, stale ones included
  uint64_t requests_waiting_max = 0;  // most requests queued behind limits or a fence
};

// Serves a fixed set of local disks on a TCP address. Owns nothing it is given: `loop`
// and every device must outlive the server. Destroying it closes every connection;
// device operations still running finish into buffers the server keeps alive, and their
// replies are dropped.
class DiskServer {
 public:
  // Listens on `listen_address` ("127.0.0.1:0" picks a free port; see port()) and serves
  // `disks` by id. Errors: INVALID_ARGUMENT for a null loop or device or bad options,
  // UNAVAILABLE when the address cannot be listened on.
  static absl::StatusOr<std::unique_ptr<DiskServer>> Create(RealLoop* loop,
                                                            std::string listen_address,
                                                            std::map<uint64_t, BlockDevice*> disks,
                                                            DiskServerOptions options = {});
  ~DiskServer();

  uint16_t port() const;
  // The highest epoch seen for `disk_id` (its fence); NOT_FOUND for a disk not served.
  absl::StatusOr<uint64_t> FenceEpoch(uint64_t disk_id) const;
  DiskServerStats Stats() const;
  // Serves one more disk (not owned; must outlive the server), fenced at the highest
  // epoch any disk here has seen. ALREADY_EXISTS if `disk_id` is served already.
  absl::Status AddDisk(uint64_t disk_id, BlockDevice* device);
  // The same disk for a caller in this process (the pool owner's own disks): every call
  // passes the fence and admission a remote request would, without Cap'n Proto, and
  // raises the fence to `epoch` now (FAILED_PRECONDITION if it is stale). Once the
  // server is destroyed the device fails every call UNAVAILABLE. Callbacks run as loop
  // callbacks of their own. The device must not outlive the loop.
  absl::StatusOr<std::unique_ptr<BlockDevice>> OpenLocal(uint64_t disk_id, uint64_t epoch);

  struct Impl;

 private:
  explicit DiskServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct RemoteDeviceOptions {
  // A call not answered in this time fails UNAVAILABLE, and the connection is dropped
  // (a peer that stopped answering is treated as gone; the next call reconnects).
  int64_t call_timeout_ns = 30'000'000'000;
  // After a connection attempt fails, or a connection dies before answering anything,
  // calls fail UNAVAILABLE at once for this long before the next attempt; the wait
  // doubles per failure up to the max and resets once the server answers.
  int64_t reconnect_backoff_min_ns = 50'000'000;
  int64_t reconnect_backoff_max_ns = 5'000'000'000;
  // Reads and writes larger than this are split into several requests (they may then
  // partly happen before an error, as a disk's may). At most the server's limit.
  uint32_t request_bytes_max = 8u << 20;
};

// An UNAVAILABLE made by the remote device itself: the server could not be reached,
// the connection was lost, or a call timed out. A disk error the server reports (EIO is
// UNAVAILABLE too, see BlockDevice) carries no such mark: a caller that takes the
// peer's node for gone on a lost link must not on a failing disk.
absl::Status RemoteTransportError(const std::string& message);
bool IsRemoteTransportError(const absl::Status& status);

// Opens disk `disk_id` served by the DiskServer at `address` ("host:port") as the owner
// of epoch `epoch`, raising the disk's fence to it. `done` runs on `loop` with the
// device, or with the server's error (NOT_FOUND, FAILED_PRECONDITION for a stale epoch)
// or UNAVAILABLE when the server cannot be reached.
//
// The device (a BlockDevice, same contract and argument checks as a local one) queues
// every Read/Write/Flush/Discard and sends what one loop turn queued as one `batch` RPC
// carrying `epoch` (one message and one reply for many ops: the cost per message, not
// per op, is what limits a loopback cluster); write data is copied into the message
// when the batch goes out, at the end of the turn. Losing the connection fails the
// calls in flight with UNAVAILABLE; the next call reconnects (with backoff). Calls
// fenced off by a newer owner fail FAILED_PRECONDITION. Completion callbacks run as
// loop callbacks of their own, never inside KJ. Destroying the device drops the
// callbacks of calls in flight (they never run) and their replies (nothing is written
// into their buffers). `loop` must outlive the device.
void OpenRemoteDevice(RealLoop* loop, std::string address, uint64_t disk_id, uint64_t epoch,
                      std::function<void(absl::StatusOr<std::unique_ptr<BlockDevice>>)> done,
                      RemoteDeviceOptions options = {});

}  // namespace scribe

#endif  // SCRIBE_REMOTE_H_
