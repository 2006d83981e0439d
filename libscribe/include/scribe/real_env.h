// Production implementations of the environment seam: a Cap'n Proto (KJ) event loop,
// files or block devices opened O_DIRECT and driven through libaio, and a Cap'n Proto
// RPC message transport over TCP.
//
// Libraries never construct these: a daemon's main() (or a test that means to use real
// files and sockets) creates them and hands the interfaces down.
#ifndef SCRIBE_REAL_ENV_H_
#define SCRIBE_REAL_ENV_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "scribe/env.h"

namespace scribe {

// The real event loop: KJ's epoll-based loop with CLOCK_MONOTONIC time. One per thread;
// creating it makes it the thread's KJ event loop.
class RealLoop : public Loop {
 public:
  static std::unique_ptr<RealLoop> Create();
  ~RealLoop() override;

  int64_t NowNanos() override;
  TimerId RunAfter(int64_t delay_ns, std::function<void()> fn) override;
  void Post(std::function<void()> fn) override;
  bool Cancel(TimerId id) override;
  bool RunUntil(const std::function<bool()>& done, int64_t timeout_ns) override;

  // Calls `on_readable` on the loop whenever `fd` becomes readable (level-triggered
  // semantics are up to the caller: it must drain the fd). The fd must outlive the watch.
  class FdWatch {
   public:
    virtual ~FdWatch() = default;
  };
  std::unique_ptr<FdWatch> WatchReadable(int fd, std::function<void()> on_readable);

  // Implementation detail shared with the other real components.
  struct Impl;
  Impl* impl() { return impl_.get(); }

  // Runs `fn` as a loop callback: every callback the real components deliver goes
  // through here, so RunUntil can re-check its predicate after each one.
  void Dispatch(const std::function<void()>& fn);

 private:
  RealLoop();
  std::unique_ptr<Impl> impl_;
};

struct AioDeviceOptions {
  // Created (sparse) with this size if the file does not exist; 0 = must exist.
  uint64_t create_size_bytes = 0;
  // Upper bound on operations submitted to the kernel at once; more wait in a queue.
  int queue_depth_max = 128;
};

// Opens a file or block device with O_DIRECT and serves it through libaio, completions
// arriving on `loop` via an eventfd. `loop` must outlive the device.
absl::StatusOr<std::unique_ptr<BlockDevice>> OpenAioDevice(RealLoop* loop,
                                                           const std::string& path,
                                                           const AioDeviceOptions& options);

// A PRNG seeded from the kernel's entropy source.
std::unique_ptr<Random> NewSystemRandom();

// The real Transport: each node listens on a TCP address and exposes the Cap'n Proto
// `Backplane` interface (libscribe/env/backplane.capnp); Send() is a one-way `deliver`
// call on a lazily made, automatically re-made connection to the peer. Messages to a
// peer that is down are dropped, as the Transport contract allows.
class CapnpTransport : public Transport {
 public:
  // Listens on `listen_address` ("127.0.0.1:0" picks a free port; see port()).
  static absl::StatusOr<std::unique_ptr<CapnpTransport>> Create(RealLoop* loop, NodeId self,
                                                                const std::string& listen_address);
  ~CapnpTransport() override;

  // Adds or replaces the address of peer `id`.
  void AddPeer(NodeId id, const std::string& address);
  uint16_t port() const;

  NodeId self() const override;
  void Send(NodeId to, std::string payload) override;
  void SetHandler(Handler handler) override;

  struct Impl;

 private:
  explicit CapnpTransport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace scribe

#endif  // SCRIBE_REAL_ENV_H_
