// A stand-in for the local scribed in hypercored's tests (testonly): the real ScribeAdmin
// service over a pool on sparse files (so names, sizes, snapshots, clones and reverts
// behave as in scribed), that pool's VSDs exported over NBD on a Unix socket (so media
// can be copied in with qemu-img), and in front of both a recorder that
//  - records every call as a line "<method> <arg> <arg> ..." (arguments in schema
//    order; text as is, numbers in decimal, lists comma-separated);
//  - answers fenceVsd itself (scribed proper gets it in a later change): NOT_FOUND for
//    an unknown VSD, FAILED_PRECONDITION for an epoch below the VSD's current one,
//    else raises the VSD's epoch to it;
//  - can fail the next call of a method with a given status (FailNext), and refuses
//    createVsd beyond a total VSD size (a full pool, vsd_bytes_max).
//
// Threading: single-threaded on the RealLoop.
#ifndef DAEMONS_HYPERCORED_FAKE_SCRIBED_H_
#define DAEMONS_HYPERCORED_FAKE_SCRIBED_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemons/scribe_api.capnp.h"
#include "scribe/pool.h"
#include "scribe/real_env.h"

namespace hypercore::daemon::testing {

struct FakeScribedOptions {
  std::string dir;          // the pool's disk files; must exist
  std::string nbd_socket;   // the NBD export socket (short: a Unix socket path)
  uint64_t disk_bytes = 128ull << 20;  // per node, 3 nodes
  // createVsd is refused RESOURCE_EXHAUSTED once the VSDs' sizes would add up to more
  // than this (0: no limit).
  uint64_t vsd_bytes_max = 0;
};

class FakeScribed {
 public:
  static absl::StatusOr<std::unique_ptr<FakeScribed>> Create(scribe::RealLoop* loop,
                                                             FakeScribedOptions options);
  ~FakeScribed();

  // The recording ScribeAdmin (scribed node 1, the pool owner).
  scribe::api::ScribeAdmin::Client client();
  const std::string& nbd_socket() const;
  uint64_t node_id() const { return 1; }
  scribe::Pool* pool();

  // Every call so far, in order, and those of one method.
  const std::vector<std::string>& calls() const;
  std::vector<std::string> CallsOf(const std::string& method) const;
  void ClearCalls();
  // Also called with every call's line as it is recorded.
  void SetCallObserver(std::function<void(const std::string&)> observer);
  // VSD -> epoch, for every fenced VSD.
  std::map<std::string, uint64_t> fences() const;
  // The next call of `method` (e.g. "createVsd") fails with `status` (not forwarded).
  void FailNext(const std::string& method, absl::Status status);

  struct Impl;

 private:
  explicit FakeScribed(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hypercore::daemon::testing

#endif  // DAEMONS_HYPERCORED_FAKE_SCRIBED_H_
