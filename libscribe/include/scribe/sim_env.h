// Deterministic simulated environment: virtual time, seeded randomness, disks that lose
// unsynced writes on a power cut and inject EIO / latency / corruption, and a network
// with delay, drop, reorder and partitions. Everything is driven by one SimLoop; given
// the same seed and the same calls, a run is bit-for-bit repeatable.
#ifndef SCRIBE_SIM_ENV_H_
#define SCRIBE_SIM_ENV_H_

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/container/btree_map.h"
#include "scribe/env.h"

namespace scribe {

// A fast, seedable PRNG (xoshiro256**). Also the production PRNG once seeded from the
// system (NewSystemRandom in real_env.h).
class SeededRandom : public Random {
 public:
  explicit SeededRandom(uint64_t seed);
  uint64_t Next64() override;

 private:
  uint64_t s_[4];
};

// Virtual-time loop. Time only moves when the loop is idle: RunUntil jumps to the next
// timer's deadline. Not thread-safe (nothing in a simulation is).
class SimLoop : public Loop {
 public:
  SimLoop() = default;
  int64_t NowNanos() override { return now_ns_; }
  TimerId RunAfter(int64_t delay_ns, std::function<void()> fn) override;
  bool Cancel(TimerId id) override;
  bool RunUntil(const std::function<bool()>& done, int64_t timeout_ns) override;

  // Runs the earliest pending callback, advancing time to it. False when none is left.
  bool RunOne();
  size_t pending() const { return timers_.size(); }

 private:
  struct Key {
    int64_t deadline_ns;
    TimerId id;
    bool operator<(const Key& o) const {
      return deadline_ns != o.deadline_ns ? deadline_ns < o.deadline_ns : id < o.id;
    }
  };
  int64_t now_ns_ = 0;
  TimerId next_id_ = 1;
  std::map<Key, std::function<void()>> timers_;
  std::map<TimerId, int64_t> deadline_of_;
};

struct SimDiskOptions {
  uint64_t size_bytes = 64ull << 20;
  int64_t latency_ns_min = 20'000;
  int64_t latency_ns_max = 200'000;
};

// What a power cut does to writes that completed but were not yet flushed.
enum class PowerLossMode {
  kDropAll,  // every unsynced sector reverts to its durable contents
  kKeepAll,  // every unsynced sector survives
  kTear,     // each unsynced sector independently survives or reverts
};

// A simulated disk honouring BlockDevice's contract, with a volatile write cache.
// Contents are stored sparsely (4 KiB pages), so large sizes cost only what is written.
class SimDisk : public BlockDevice {
 public:
  // `loop` and `random` must outlive the disk.
  SimDisk(SimLoop* loop, Random* random, SimDiskOptions options);
  ~SimDisk() override;

  uint64_t size_bytes() const override { return options_.size_bytes; }
  void Read(uint64_t offset_bytes, size_t length_bytes, void* buf, Callback done) override;
  void Write(uint64_t offset_bytes, size_t length_bytes, const void* buf,
             Callback done) override;
  void Flush(Callback done) override;
  void Discard(uint64_t offset_bytes, size_t length_bytes, Callback done) override;

  // Power loss: unsynced writes are resolved per `mode`, and operations still in flight
  // never complete (their callbacks are dropped). The disk then works again, as after a
  // reboot, with what survived.
  void PowerCut(PowerLossMode mode);
  // A failed disk completes every later operation with EIO (until SetFailed(false)).
  void SetFailed(bool failed) { failed_ = failed; }
  bool failed() const { return failed_; }
  // The next `count` operations touching [offset, offset+length) complete with EIO.
  void InjectIoErrors(uint64_t offset_bytes, uint64_t length_bytes, int count);
  // Silently flips one byte in each sector of the range (durable and cached copies).
  void Corrupt(uint64_t offset_bytes, uint64_t length_bytes);

  uint64_t unsynced_sectors() const;
  uint64_t ops_completed() const { return ops_completed_; }

 private:
  static constexpr uint64_t kPageBytes = 4096;
  static constexpr int kSectorsPerPage = kPageBytes / kSectorBytes;
  struct Page {
    std::array<uint8_t, kPageBytes> bytes{};
  };
  struct CachedPage {
    std::array<uint8_t, kPageBytes> bytes{};
    uint8_t dirty_mask = 0;  // bit i: sector i holds unsynced data
  };
  struct ErrorRange {
    uint64_t offset_bytes, length_bytes;
    int remaining;
  };

  int64_t Latency();
  bool TakeInjectedError(uint64_t offset_bytes, uint64_t length_bytes);
  void Complete(std::function<absl::Status()> apply, Callback done);
  void ReadSectors(uint64_t offset_bytes, size_t length_bytes, uint8_t* out) const;
  void WriteSectors(uint64_t offset_bytes, size_t length_bytes, const uint8_t* in);

  SimLoop* loop_;
  Random* random_;
  SimDiskOptions options_;
  bool failed_ = false;
  uint64_t power_epoch_ = 0;  // bumped by PowerCut; completions of older epochs vanish
  uint64_t ops_completed_ = 0;
  std::vector<ErrorRange> error_ranges_;
  absl::btree_map<uint64_t, std::unique_ptr<Page>> durable_;
  absl::btree_map<uint64_t, std::unique_ptr<CachedPage>> cache_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

struct SimNetworkOptions {
  int64_t delay_ns_min = 50'000;
  int64_t delay_ns_max = 500'000;  // random delays also reorder messages
  double drop_probability = 0.0;
};

// A simulated network of Transport endpoints. Links can be cut in either direction;
// a message in flight when its link is cut is dropped on arrival.
class SimNetwork {
 public:
  SimNetwork(SimLoop* loop, Random* random, SimNetworkOptions options);
  ~SimNetwork();

  // Creates the endpoint of node `id` (owned by the caller; must not outlive this).
  std::unique_ptr<Transport> AddNode(Transport::NodeId id);

  // Cuts or restores delivery from `from` to `to`.
  void SetLink(Transport::NodeId from, Transport::NodeId to, bool up);
  // Cuts every link between the two groups, both ways.
  void Partition(const std::set<Transport::NodeId>& a, const std::set<Transport::NodeId>& b);
  // Cuts or restores every link of `id` (a crashed or isolated node).
  void SetNodeUp(Transport::NodeId id, bool up);
  void HealAll();
  void set_drop_probability(double p) { options_.drop_probability = p; }

  uint64_t delivered() const { return delivered_; }
  uint64_t dropped() const { return dropped_; }

 private:
  class Endpoint;
  bool LinkUp(Transport::NodeId from, Transport::NodeId to) const;
  void Deliver(Transport::NodeId from, Transport::NodeId to, std::string payload);

  SimLoop* loop_;
  Random* random_;
  SimNetworkOptions options_;
  std::map<Transport::NodeId, Endpoint*> endpoints_;
  std::set<std::pair<Transport::NodeId, Transport::NodeId>> cut_;
  std::set<Transport::NodeId> down_;
  uint64_t delivered_ = 0;
  uint64_t dropped_ = 0;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace scribe

#endif  // SCRIBE_SIM_ENV_H_
