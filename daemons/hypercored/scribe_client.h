// hypercored's side of the storage: typed calls to the local scribed's ScribeAdmin
// (daemons/scribe_api.capnp) returning absl::Status, and where that capability comes
// from (a TCP connection that is re-made after a failure, or, in tests, an in-process
// server).
//
// Errors. A scribed business error keeps its code and message; a transport failure
// (scribed down, connection lost) is UNAVAILABLE naming the address ("cannot reach
// scribed at 127.0.0.1:7001: ..."), and the link reconnects on the next call.
//
// Threading: single-threaded on the RealLoop (the KJ event loop) of the daemon.
#ifndef DAEMONS_HYPERCORED_SCRIBE_CLIENT_H_
#define DAEMONS_HYPERCORED_SCRIBE_CLIENT_H_

#include <kj/async.h>
#include <kj/timer.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemons/scribe_api.capnp.h"
#include "scribe/real_env.h"

namespace hypercore::daemon {

// Where the ScribeAdmin capability comes from.
class ScribeLink {
 public:
  virtual ~ScribeLink() = default;
  // The capability to call; connecting may still be under way (calls queue on it).
  virtual scribe::api::ScribeAdmin::Client Get() = 0;
  // A call through the capability Get() returned failed in transport: the next Get()
  // connects afresh.
  virtual void Broken() = 0;
  // "scribed at 127.0.0.1:7001", for messages.
  virtual const std::string& description() const = 0;
};

// Connects to `address` ("host:port") lazily, over the loop's network. `loop` must
// outlive the link.
std::unique_ptr<ScribeLink> NewTcpScribeLink(scribe::RealLoop* loop, std::string address);
// Always the same capability (tests: an in-process server).
std::unique_ptr<ScribeLink> NewFixedScribeLink(scribe::api::ScribeAdmin::Client client,
                                               std::string description);

struct ScribeExport {
  uint64_t node = 0;
  std::string nbd_socket;
  std::string export_name;
  std::string uri;  // "nbd+unix:///<vsd>?socket=<path>"
};

struct ScribeNode {
  uint64_t id = 0;
  std::string admin_address;
  std::string nbd_socket;
  bool alive = false;
};

// One method per ScribeAdmin call hypercored makes. `link` (and `timer`) must outlive
// the client. With a timer, a call not answered within `call_timeout_ms` fails
// DEADLINE_EXCEEDED (it may or may not have taken effect) and the link reconnects: a
// hung scribed must not hang a VM start (HaOptions::prepare_start) forever.
class ScribeClient {
 public:
  explicit ScribeClient(ScribeLink* link, kj::Timer* timer = nullptr, int64_t call_timeout_ms = 60'000)
      : link_(link), timer_(timer), call_timeout_ms_(call_timeout_ms) {}

  kj::Promise<absl::Status> CreateVsd(const std::string& name, uint64_t size_bytes,
                                      int replication, int flash_priority);
  kj::Promise<absl::Status> DeleteVsd(const std::string& name);
  // The snapshot ids, in `vsds` order.
  kj::Promise<absl::StatusOr<std::vector<uint64_t>>> CreateGroupSnapshot(
      const std::vector<std::string>& vsds, const std::string& name);
  kj::Promise<absl::Status> DeleteSnapshot(const std::string& vsd, const std::string& name);
  kj::Promise<absl::Status> CloneVsd(const std::string& vsd, const std::string& clone);
  kj::Promise<absl::Status> CloneFromSnapshot(const std::string& vsd, const std::string& snapshot,
                                              const std::string& clone);
  kj::Promise<absl::Status> RevertToSnapshot(const std::string& vsd, const std::string& snapshot);
  kj::Promise<absl::StatusOr<ScribeExport>> ExportInfo(const std::string& vsd, uint64_t node);
  kj::Promise<absl::Status> FenceVsd(const std::string& vsd, uint64_t epoch);
  kj::Promise<absl::StatusOr<std::vector<ScribeNode>>> Cluster();

  const std::string& description() const { return link_->description(); }

 private:
  template <typename Results, typename Decode>
  auto Call(capnp::RemotePromise<Results>&& call, Decode decode)
      -> kj::Promise<decltype(decode(std::declval<typename Results::Reader>()))>;

  ScribeLink* link_;
  kj::Timer* timer_;
  int64_t call_timeout_ms_;
};

}  // namespace hypercore::daemon

#endif  // DAEMONS_HYPERCORED_SCRIBE_CLIENT_H_
