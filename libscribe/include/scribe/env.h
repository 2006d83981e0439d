// The environment seam: every source of time, randomness, disk I/O and network traffic
// that libscribe and libhypercore use goes through these interfaces. Production wires
// the real implementations (scribe/real_env.h); the deterministic simulator wires the
// simulated ones (scribe/sim_env.h), so a whole cluster runs in one process and any
// failure replays from its seed.
//
// Threading: everything is single-threaded per Loop. Every callback an implementation
// invokes (timers, I/O completions, message deliveries) runs on its Loop's thread, from
// inside Loop::RunUntil. No callback is ever invoked re-entrantly from the call that
// started the operation.
#ifndef SCRIBE_ENV_H_
#define SCRIBE_ENV_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"

namespace scribe {

// A single-threaded event loop with a monotonic clock and timers.
class Loop {
 public:
  using TimerId = uint64_t;

  virtual ~Loop() = default;

  // Monotonic time in nanoseconds since an arbitrary origin.
  virtual int64_t NowNanos() = 0;

  // Runs `fn` on the loop no earlier than `delay_ns` from now (0: the next turn).
  // Callbacks with equal deadlines run in the order they were scheduled.
  virtual TimerId RunAfter(int64_t delay_ns, std::function<void()> fn) = 0;
  // Runs `fn` on the next turn; posted callbacks run in the order they were posted.
  // (A loop may keep them apart from its timers: they need no deadline bookkeeping.)
  virtual void Post(std::function<void()> fn) { RunAfter(0, std::move(fn)); }

  // Cancels a timer that has not fired. Returns false if it already ran or is unknown.
  virtual bool Cancel(TimerId id) = 0;

  // Runs callbacks until `done()` returns true (checked before starting and after every
  // callback) or `timeout_ns` of loop time passed. Returns whether `done()` became true.
  // A simulated loop advances virtual time instantly when idle.
  virtual bool RunUntil(const std::function<bool()>& done, int64_t timeout_ns) = 0;
};

// Runs `fn` once at the end of the current loop turn however often Request() is called
// before then: how a stage gathers what one turn produced into one system call or one
// message (aio submissions, backplane batches, NBD replies). Destroying it drops a
// pending run. Single-threaded, like its loop.
class OncePerTurn {
 public:
  OncePerTurn(Loop* loop, std::function<void()> fn)
      : loop_(loop), fn_(std::move(fn)), alive_(std::make_shared<bool>(true)) {}
  ~OncePerTurn() { *alive_ = false; }
  OncePerTurn(const OncePerTurn&) = delete;
  OncePerTurn& operator=(const OncePerTurn&) = delete;

  void Request() {
    if (posted_) return;
    posted_ = true;
    loop_->Post([this, alive = alive_] {
      if (!*alive) return;
      posted_ = false;
      fn_();
    });
  }

 private:
  Loop* loop_;
  std::function<void()> fn_;
  std::shared_ptr<bool> alive_;
  bool posted_ = false;
};

// Randomness. Libraries never call rand(): they take a Random and so replay under a seed.
class Random {
 public:
  virtual ~Random() = default;
  virtual uint64_t Next64() = 0;
  // Uniform in [0, n); n > 0.
  uint64_t Uniform(uint64_t n);
  // True with probability `p` (0..1).
  bool Bernoulli(double p);
};

// A block device: fixed size, addressed in bytes at 512-byte sector granularity.
//
// Buffers handed to Read/Write must be aligned to kBufferAlignment (O_DIRECT needs it)
// and stay valid until the callback runs. Offsets and lengths must be multiples of
// kSectorBytes and within size_bytes(); anything else completes with INVALID_ARGUMENT
// or OUT_OF_RANGE and touches nothing.
//
// Durability contract (that of a real disk with a volatile write cache): a completed
// Write is visible to later Reads but may be lost in a power cut until a later Flush
// completes; each sector of a lost write reads either its old or its new contents.
class BlockDevice {
 public:
  static constexpr uint64_t kSectorBytes = 512;
  static constexpr size_t kBufferAlignment = 4096;
  using Callback = std::function<void(absl::Status)>;

  virtual ~BlockDevice() = default;
  virtual uint64_t size_bytes() const = 0;
  virtual void Read(uint64_t offset_bytes, size_t length_bytes, void* buf, Callback done) = 0;
  virtual void Write(uint64_t offset_bytes, size_t length_bytes, const void* buf,
                     Callback done) = 0;
  // Makes every write completed before this call durable.
  virtual void Flush(Callback done) = 0;
  // A write that is durable when `done` runs (FUA). The default writes, then flushes;
  // devices that can do it in one operation override it.
  virtual void WriteDurable(uint64_t offset_bytes, size_t length_bytes, const void* buf,
                            Callback done);
  // Tells the device the range's contents are no longer needed; afterwards the range
  // reads as zeros or as its old contents.
  virtual void Discard(uint64_t offset_bytes, size_t length_bytes, Callback done) = 0;

 protected:
  // Shared argument validation: OK or the error every implementation returns.
  absl::Status CheckRange(uint64_t offset_bytes, size_t length_bytes, const void* buf) const;
};

// Message transport between cluster nodes, one endpoint per node.
//
// Delivery is best effort: a message may be delayed, reordered or dropped (peer down,
// partition) but is never corrupted or duplicated, and arrives whole. Callers build
// request/response with timeouts on top of it.
class Transport {
 public:
  using NodeId = uint32_t;
  using Handler = std::function<void(NodeId from, std::string payload)>;

  virtual ~Transport() = default;
  virtual NodeId self() const = 0;
  virtual void Send(NodeId to, std::string payload) = 0;
  // Sets the function that receives this endpoint's messages on the loop thread.
  virtual void SetHandler(Handler handler) = 0;
};

// A heap buffer aligned for direct I/O; the unit every engine read and write uses.
// Zero-filled unless made with Uninitialized (for buffers about to be overwritten whole:
// a socket read, a copy, a device read). Buffers of up to 1 MiB are recycled through
// a small per-thread cache (the I/O path makes and drops one or more per request).
class AlignedBuffer {
 public:
  struct Uninitialized {};
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t size_bytes);
  AlignedBuffer(size_t size_bytes, Uninitialized);
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer();

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace scribe

#endif  // SCRIBE_ENV_H_
