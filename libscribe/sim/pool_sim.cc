#include "libscribe/sim/pool_sim.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "scribe/sim_env.h"
#include "scribe/status.h"

namespace scribe {
namespace {

constexpr uint64_t kSectorBytes = 512;
constexpr uint64_t kBlockBytes = 4096;
constexpr uint64_t kSectorsPerBlock = kBlockBytes / kSectorBytes;
constexpr uint64_t kKiB = 1ull << 10;
constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kChunkBytes = 1 * kMiB;  // a chunk slot (pool.h)
constexpr int64_t kMillisecondNs = 1'000'000;
constexpr int64_t kSecondNs = 1'000'000'000;

// --- Limits (TIGER_STYLE: put a limit on everything) ---
constexpr int64_t kOpTimeoutNs = 60 * kSecondNs;
constexpr int64_t kOpenTimeoutNs = 120 * kSecondNs;
constexpr int64_t kRedundancyTimeoutNs = 600 * kSecondNs;
// Time given to I/O already in flight when a node goes offline, before the simulator
// starts counting I/O to its disks as a violation.
constexpr int64_t kOfflineSettleNs = 50 * kMillisecondNs;
// Callbacks one wait may run. A pool that keeps posting zero-delay work never lets
// virtual time reach a timeout; this bound turns such a livelock into a violation.
constexpr uint64_t kLoopStepsMax = 4'000'000;
constexpr size_t kOpLogMax = 30;
constexpr size_t kVsdsMax = 8;
constexpr size_t kSnapshotsMax = 24;
constexpr size_t kSnapshotsPerVsdMax = 6;
constexpr uint64_t kVsdBytesMin = 1 * kMiB;
constexpr uint64_t kVsdBytesCreateMax = 16 * kMiB;
constexpr uint64_t kVsdBytesMax = 32 * kMiB;  // after growing
constexpr uint64_t kWriteBytesMax = 128 * kKiB;
constexpr uint64_t kReadBytesMax = 1 * kMiB;
constexpr uint64_t kDiscardBytesMax = 1 * kMiB;
constexpr uint64_t kVerifyReadBytes = 1 * kMiB;
constexpr uint64_t kCorruptBytesMax = 64 * kKiB;
constexpr uint64_t kMetadataMarginBytes = 64 * kKiB;
constexpr int kBurstIosMin = 2;
constexpr int kBurstIosMax = 8;
constexpr int kBurstReadsMax = 2;
constexpr int kIoErrorsMax = 4;
// Above this fraction of healthy capacity in use the workload stops writing and frees
// space, so a full pool (a legitimate RESOURCE_EXHAUSTED) never masks a bug. Fill seeds
// (below) have no such limit.
constexpr double kUsedFractionWritesMax = 0.45;
// One seed in kFillSeedEvery (seed % kFillSeedEvery == kFillSeedRemainder) is a fill
// seed: disks of kFillDiskDataBytes past the metadata region, VSDs of up to
// kVsdBytesMax, twice the writes of up to kFillWriteBytesMax, fewer deletes, and no
// write limit: the pool fills until writes fail with
// RESOURCE_EXHAUSTED, then the workload frees space for a few operations and fills again.
constexpr uint64_t kFillSeedEvery = 7;
constexpr uint64_t kFillSeedRemainder = 4;
constexpr uint64_t kFillDiskDataBytes = 16 * kMiB;
constexpr uint64_t kFillWriteBytesMax = 2 * kMiB;
constexpr int kFillDrainOpsMin = 4;
constexpr int kFillDrainOpsMax = 12;
// RESOURCE_EXHAUSTED is accepted from a write (or a discard, whose partial blocks are
// written with zeros) only on a fill seed and only while the request's new chunks would
// leave at most this fraction of the chunk slots of the usable disks (not failed,
// online) free, or fewer nodes than the VSD's replication have a free slot. pool.h does
// not say how full "full" is; the engine keeps a few percent of the slots for metadata
// (checkpoints, deletes, healing), and refuses a write whose chunks do not all fit.
constexpr double kFullFreeFractionMax = 0.10;
// After a refused write, everything acknowledged is read back (at most once per this
// many operations).
constexpr int kFullVerifyEveryOps = 50;
// A redundancy-reducing fault is only injected if what is in use would still fit in
// this fraction of the capacity left afterwards.
constexpr double kUsedFractionAfterFaultMax = 0.6;
constexpr double kFaultProbability = 0.07;  // per operation, when no fault is active
// Fsck and the list checks run after every operation; the accounting and the
// simulator's own count of every block's copies every this many.
constexpr int kDeepCheckEveryOps = 10;
// Violations the copy check lists in one message.
constexpr size_t kCopyViolationsListed = 4;
// Block contents whose fingerprints the copy check remembers (about 100 bytes each).
constexpr size_t kFingerprintsMax = 1 << 20;

constexpr uint64_t kGarbageToken = ~0ull;

// --- Sector contents: a deterministic function of (write token, sector index) ---
//
// A sector written by write `token` at VSD sector `sector` holds the token, the sector
// index and 62 words derived from both, so the checker can tell which write a sector
// came from (and that it landed at the right place) from its bytes alone.

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void FillSector(uint64_t token, uint64_t sector, uint8_t* out) {
  if (token == 0) {
    std::memset(out, 0, kSectorBytes);
    return;
  }
  uint64_t words[kSectorBytes / 8];
  words[0] = token;
  words[1] = sector;
  uint64_t x = Mix(token ^ Mix(sector));
  for (size_t i = 2; i < kSectorBytes / 8; ++i) {
    x = Mix(x + i);
    words[i] = x;
  }
  std::memcpy(out, words, kSectorBytes);
}

bool IsZero(const uint8_t* in, size_t length) {
  static const uint8_t kZeros[kBlockBytes] = {};
  for (size_t off = 0; off < length; off += kBlockBytes) {
    if (std::memcmp(in + off, kZeros, std::min<size_t>(kBlockBytes, length - off)) != 0) {
      return false;
    }
  }
  return true;
}

// The token whose contents `in` holds for `sector`, 0 for zeros, kGarbageToken for
// anything no write produced.
uint64_t DecodeSector(const uint8_t* in, uint64_t sector) {
  uint64_t token;
  std::memcpy(&token, in, sizeof(token));
  if (token == 0) return IsZero(in, kSectorBytes) ? 0 : kGarbageToken;
  if (token == kGarbageToken) return kGarbageToken;
  uint8_t expected[kSectorBytes];
  FillSector(token, sector, expected);
  return std::memcmp(in, expected, kSectorBytes) == 0 ? token : kGarbageToken;
}

// A 64-bit fingerprint of a 4 KiB block's bytes, for comparing a copy on a disk with
// what the model expects there without regenerating the expected bytes for every copy.
// Four lanes of words (for speed); each step of a lane is a bijection of the lane's
// value given the word, and the lanes are summed with odd (invertible) factors, so any
// single changed word (a flipped byte) always changes the fingerprint; other collisions
// are as likely as in any 64-bit hash (the contents are not adversarial).
uint64_t BlockFingerprint(const uint8_t* block) {
  constexpr uint64_t kOdd[4] = {0x9e3779b97f4a7c15ull, 0xbf58476d1ce4e5b9ull,
                                0x94d049bb133111ebull, 0xd6e8feb86659fd93ull};
  uint64_t h[4] = {0x243f6a8885a308d3ull, 0x13198a2e03707344ull, 0xa4093822299f31d0ull,
                   0x082efa98ec4e6c89ull};
  for (size_t i = 0; i < kBlockBytes / 8; i += 4) {
    for (size_t j = 0; j < 4; ++j) {
      uint64_t w;
      std::memcpy(&w, block + (i + j) * 8, sizeof(w));
      h[j] ^= w;
      h[j] = (h[j] << 29) | (h[j] >> 35);
      h[j] *= kOdd[j];
    }
  }
  return h[0] + kOdd[1] * h[1] + kOdd[2] * h[2] + kOdd[3] * h[3];
}

// A 4 KiB block's contents as the model knows them: the VSD sector of its first sector
// and the write token of each of its sectors (0: zeros).
struct BlockContents {
  uint64_t first_sector = 0;
  std::array<uint64_t, kSectorsPerBlock> tokens{};
  bool operator==(const BlockContents&) const = default;
  template <typename H>
  friend H AbslHashValue(H h, const BlockContents& b) {
    return H::combine(std::move(h), b.first_sector, b.tokens);
  }
};

// What the model knows of a 4 KiB block's mapping in the engine (whether it names a
// data block), for checking that a Diff reports nothing that cannot have changed.
enum class Mapping : uint8_t {
  kUnmapped,  // never written, or wholly discarded since
  kMapped,    // written (a partial discard writes zeros, which maps the block too)
  kUnknown,   // touched by writes a power cut may or may not have kept, and reads zeros
};

struct SectorRange {
  uint64_t vsd = 0;
  uint64_t begin = 0;  // sectors
  uint64_t end = 0;
  bool Overlaps(const SectorRange& o) const {
    return vsd == o.vsd && begin < o.end && o.begin < end;
  }
  bool Contains(uint64_t v, uint64_t sector) const {
    return vsd == v && begin <= sector && sector < end;
  }
};

// The model of one live VSD.
struct VsdModel {
  VsdId id;
  std::string name;
  int replication = 2;
  // VSDs related by cloning share a family: diffs between their snapshots are legal.
  uint64_t family = 0;
  // Token per sector that a read must return now.
  std::vector<uint64_t> current;
  // Token per sector as of the last durability point (flush, fua, metadata operation).
  std::vector<uint64_t> durable;
  // Sectors written or discarded since their durability point: every token issued
  // since (0 for a discard). A power cut may leave any of these, or `durable`.
  std::map<uint64_t, std::vector<uint64_t>> pending;
  // Per 4 KiB block: a stamp that changes whenever a write or discard touches the block
  // (unique across the run; 0: never touched), and what is known of its mapping. Two
  // snapshots whose block has the same stamp share its mapping: nothing touched it in
  // either history since they diverged, so a Diff must not report it.
  std::vector<uint64_t> stamps;
  std::vector<Mapping> mapping;
  std::vector<uint64_t> snapshots;  // SnapshotId values, oldest first
  uint64_t size_bytes() const { return current.size() * kSectorBytes; }
  void Resize(uint64_t size_bytes) {
    current.resize(size_bytes / kSectorBytes, 0);
    durable.resize(size_bytes / kSectorBytes, 0);
    stamps.resize(size_bytes / kBlockBytes, 0);
    mapping.resize(size_bytes / kBlockBytes, Mapping::kUnmapped);
  }
};

struct SnapshotModel {
  SnapshotId id;
  VsdId vsd;
  uint64_t family = 0;
  std::string name;
  std::vector<uint64_t> data;  // token per sector, frozen
  std::vector<uint64_t> stamps;   // per 4 KiB block, as VsdModel's
  std::vector<Mapping> mapping;   // per 4 KiB block, as VsdModel's
  int replication = 2;            // its VSD's
};

enum class FaultKind { kNone, kDiskFailure, kCorruption, kIoErrors, kNodeOutage };

// The one redundancy-reducing fault that may be outstanding.
struct Fault {
  FaultKind kind = FaultKind::kNone;
  int ops_left = 0;
  size_t disk = 0;           // index into the simulator's disks
  bool disk_marked = false;  // FailDisk has been called (else the disk died silently)
  NodeId node;
  // The node crashed rather than went away: its disks lost their unsynced writes
  // (SimDisk::PowerCut of only its disks) while the rest of the pool kept running.
  bool crash = false;
  bool evict = false;  // the outage ends with EvictNode, then a rejoin
  bool evicted = false;
  bool rejoined = false;  // SetNodeOnline(true) was called: the outage is ending
  uint64_t offline_io_baseline = 0;
  int io_errors = 0;
};

const char* ModeName(PowerLossMode mode) {
  switch (mode) {
    case PowerLossMode::kDropAll:
      return "drop-all";
    case PowerLossMode::kKeepAll:
      return "keep-all";
    case PowerLossMode::kTear:
      return "tear";
  }
  return "?";
}

// The BlockDevice the pool gets for each simulated disk: it forwards everything to the
// SimDisk and keeps its own copy of what a read of the disk returns now (the write cache
// over the durable contents), updated as each write or discard completes. The simulator
// reads this copy to count a block's copies on the disks at one instant, without asking
// the engine and without running the loop (a scan through SimDisk::Read takes virtual
// time, during which the pool's background work, a rebuild say, goes on).
//
// It follows the disk exactly through everything but a power cut (which keeps or drops
// each unsynced sector as the disk's own random choice says) and SimDisk::Corrupt (which
// flips a random byte): only the pages written since the disk's last completed flush,
// or the corrupted range, can differ then, and the simulator reads them back (`Resync`).
class ShadowDisk : public BlockDevice {
 public:
  static constexpr uint64_t kPageBytes = 4096;
  using Page = std::array<uint8_t, kPageBytes>;

  explicit ShadowDisk(SimDisk* disk) : disk_(disk) {}
  ~ShadowDisk() override { *alive_ = false; }

  uint64_t size_bytes() const override { return disk_->size_bytes(); }
  void Read(uint64_t offset_bytes, size_t length_bytes, void* buf, Callback done) override {
    disk_->Read(offset_bytes, length_bytes, buf, std::move(done));
  }
  void Write(uint64_t offset_bytes, size_t length_bytes, const void* buf,
             Callback done) override {
    // SimDisk reads `buf` as the write completes, just before calling back: it is still
    // the caller's (the pool frees it in `done`).
    disk_->Write(offset_bytes, length_bytes, buf,
                 [this, alive = alive_, offset_bytes, length_bytes, buf,
                  done = std::move(done)](absl::Status st) {
                   if (st.ok() && *alive) {
                     Apply(offset_bytes, length_bytes, static_cast<const uint8_t*>(buf));
                   }
                   done(st);
                 });
  }
  void Flush(Callback done) override {
    // A completed flush makes the whole cache durable, writes completed after it was
    // issued included (SimDisk::Flush).
    disk_->Flush([this, alive = alive_, done = std::move(done)](absl::Status st) {
      if (st.ok() && *alive) unsynced_pages_.clear();
      done(st);
    });
  }
  void Discard(uint64_t offset_bytes, size_t length_bytes, Callback done) override {
    disk_->Discard(offset_bytes, length_bytes,
                   [this, alive = alive_, offset_bytes, length_bytes,
                    done = std::move(done)](absl::Status st) {
                     if (st.ok() && *alive) Apply(offset_bytes, length_bytes, nullptr);
                     done(st);
                   });
  }

  const absl::btree_map<uint64_t, std::unique_ptr<Page>>& pages() const { return pages_; }
  // Pages that may have changed in a power cut, ascending; forgets them.
  std::vector<uint64_t> TakeUnsyncedPages() {
    std::vector<uint64_t> out(unsynced_pages_.begin(), unsynced_pages_.end());
    unsynced_pages_.clear();
    return out;
  }
  // What a read of page `page` returned (after a power cut or a corruption).
  void SetPage(uint64_t page, const uint8_t* bytes) {
    auto& slot = pages_[page];
    if (!slot) slot = std::make_unique<Page>();
    std::memcpy(slot->data(), bytes, kPageBytes);
  }

 private:
  // `in` null: zeros.
  void Apply(uint64_t offset_bytes, uint64_t length_bytes, const uint8_t* in) {
    for (uint64_t pos = offset_bytes; pos < offset_bytes + length_bytes;) {
      const uint64_t page = pos / kPageBytes;
      const uint64_t in_page = pos % kPageBytes;
      const uint64_t n = std::min(kPageBytes - in_page, offset_bytes + length_bytes - pos);
      auto& slot = pages_[page];
      if (!slot) slot = std::make_unique<Page>();
      if (in != nullptr) {
        std::memcpy(slot->data() + in_page, in + (pos - offset_bytes), n);
      } else {
        std::memset(slot->data() + in_page, 0, n);
      }
      unsynced_pages_.insert(page);
      pos += n;
    }
  }

  SimDisk* disk_;
  absl::btree_map<uint64_t, std::unique_ptr<Page>> pages_;
  std::set<uint64_t> unsynced_pages_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

class PoolSim {
 public:
  explicit PoolSim(const PoolSimConfig& config)
      : config_(WithSeedOptions(config)),
        fill_(IsFillSeed(config)),
        workload_(config.seed),
        env_random_(Mix(config.seed) ^ 0xd15c),
        pool_random_(Mix(config.seed) ^ 0x9001) {}

  static bool IsFillSeed(const PoolSimConfig& config) {
    return config.vary_fill && config.seed % kFillSeedEvery == kFillSeedRemainder;
  }

  static PoolSimConfig WithSeedOptions(PoolSimConfig config) {
    if (config.vary_leaf_cache && config.seed % 3 == 0) {
      config.pool_options.metadata_cache_bytes = 4096 * (1 + Mix(config.seed) % 8);
    }
    if (IsFillSeed(config)) {
      // Small disks, so that the workload fills them within its operations. The 1 MiB on
      // top covers the superblock before the metadata region.
      config.disk_bytes = config.pool_options.metadata_bytes + 1 * kMiB + kFillDiskDataBytes;
    }
    return config;
  }

  ~PoolSim() {
    // The pool first (it holds callbacks into the disks and the loop), then the disks.
    pool_.reset();
    disks_.clear();
  }

  PoolSimResult Run() {
    if (Setup()) {
      for (op_ = 1; op_ <= static_cast<uint64_t>(config_.ops) && !stopped_; ++op_) {
        MaybeFault();
        if (stopped_) break;
        RunOneOp();
        if (stopped_) break;
        ++result_.ops;
        CheckAfterOp();
      }
      if (!stopped_) Finish();
    }
    CountPoolStats();
    pool_.reset();
    result_.small_leaf_cache = config_.pool_options.metadata_cache_bytes < (1ull << 20);
    result_.fill_seed = fill_;
    return result_;
  }

 private:
  struct DiskSlot {
    std::unique_ptr<SimDisk> disk;
    std::unique_ptr<ShadowDisk> shadow;  // what the pool is given (spec.device)
    DiskSpec spec;
    DiskId id;
  };

  // ---------------------------------------------------------------------------------
  // Plumbing

  // Runs the loop until `done()`; OK, DEADLINE_EXCEEDED after `timeout_ns` of virtual
  // time, or INTERNAL after kLoopStepsMax callbacks (a livelock).
  absl::Status RunLoop(const std::function<bool()>& done, int64_t timeout_ns) {
    const int64_t start_ns = loop_.NowNanos();
    uint64_t steps = 0;
    bool livelock = false;
    const bool ok = loop_.RunUntil(
        [&] {
          if (done()) return true;
          livelock = ++steps > kLoopStepsMax;
          return livelock;
        },
        timeout_ns);
    if (livelock) {
      return absl::InternalError(absl::StrFormat(
          "livelock: %d loop callbacks ran in %.6f s of virtual time without finishing",
          kLoopStepsMax, static_cast<double>(loop_.NowNanos() - start_ns) / kSecondNs));
    }
    if (!ok) {
      return absl::DeadlineExceededError(
          absl::StrFormat("did not finish within %d s of virtual time", timeout_ns / kSecondNs));
    }
    return absl::OkStatus();
  }

  // Lets `duration_ns` of virtual time pass (the pool's background work runs).
  bool Idle(int64_t duration_ns, const std::string& why) {
    absl::Status st = RunLoop([] { return false; }, duration_ns);
    if (absl::IsDeadlineExceeded(st)) return true;
    return ExpectOk(st, why);
  }

  absl::Status AwaitStatus(const std::function<void(Pool::StatusDone)>& start,
                           int64_t timeout_ns = kOpTimeoutNs) {
    auto result = std::make_shared<std::optional<absl::Status>>();
    auto calls = std::make_shared<int>(0);
    start([result, calls](absl::Status st) {
      ++*calls;
      *result = std::move(st);
    });
    RETURN_IF_ERROR(RunLoop([&] { return result->has_value(); }, timeout_ns));
    if (*calls != 1) return absl::InternalError("callback ran more than once");
    return **result;
  }

  template <typename T>
  absl::StatusOr<T> AwaitValue(const std::function<void(Pool::Done<T>)>& start,
                               int64_t timeout_ns = kOpTimeoutNs) {
    auto result = std::make_shared<std::optional<absl::StatusOr<T>>>();
    start([result](absl::StatusOr<T> v) { *result = std::move(v); });
    RETURN_IF_ERROR(RunLoop([&] { return result->has_value(); }, timeout_ns));
    return std::move(**result);
  }

  absl::Status AwaitDevice(const std::function<void(BlockDevice::Callback)>& start) {
    return AwaitStatus([&](Pool::StatusDone done) { start(std::move(done)); });
  }

  void Log(std::string line) {
    log_.push_back(absl::StrFormat("op %d t=%.6fs %s", op_,
                                   static_cast<double>(loop_.NowNanos()) / kSecondNs, line));
    if (config_.trace) std::fprintf(stderr, "%s\n", log_.back().c_str());
    if (log_.size() > kOpLogMax) log_.pop_front();
  }

  // Records a violation and stops the run. Always returns false.
  bool Violation(const std::string& what) {
    if (stopped_) return false;
    stopped_ = true;
    ++result_.violations;
    std::string msg = absl::StrFormat("seed=%d op=%d t=%.6fs: %s", config_.seed, op_,
                                      static_cast<double>(loop_.NowNanos()) / kSecondNs, what);
    absl::StrAppend(&msg, "\n  recent operations (oldest first):");
    for (const auto& line : log_) absl::StrAppend(&msg, "\n    ", line);
    if (config_.trace) std::fprintf(stderr, "VIOLATION %s\n", msg.c_str());
    result_.violation_messages.push_back(std::move(msg));
    return false;
  }

  bool ExpectOk(const absl::Status& st, const std::string& what) {
    if (st.ok()) return true;
    return Violation(absl::StrCat(what, " failed: ", st.ToString()));
  }

  std::string TokenName(uint64_t token) const {
    if (token == 0) return "zeros";
    if (token == kGarbageToken) return "garbage";
    auto it = token_op_.find(token);
    return absl::StrFormat("w%d(op %d)", token,
                           it == token_op_.end() ? 0 : static_cast<int64_t>(it->second));
  }

  // What a sector that matched no expectation holds, for the violation message.
  std::string Describe(const uint8_t* p, uint64_t sector) const {
    const uint64_t token = DecodeSector(p, sector);
    if (token != kGarbageToken) return TokenName(token);
    uint64_t words[2];
    std::memcpy(words, p, sizeof(words));
    std::string hex;
    for (int i = 0; i < 16; ++i) absl::StrAppend(&hex, absl::Hex(p[i], absl::kZeroPad2));
    return absl::StrFormat("garbage (first bytes %s: token field %d, sector field %d)", hex,
                           words[0], words[1]);
  }

  uint64_t NewToken() {
    const uint64_t token = next_token_++;
    token_op_[token] = op_;
    return token;
  }

  std::vector<DiskSpec> Specs() const {
    std::vector<DiskSpec> specs;
    for (const auto& d : disks_) specs.push_back(d.spec);
    return specs;
  }

  size_t AddSimDisk(NodeId node, Tier tier) {
    SimDiskOptions options;
    options.size_bytes = config_.disk_bytes;
    DiskSlot slot;
    slot.disk = std::make_unique<SimDisk>(&loop_, &env_random_, options);
    slot.shadow = std::make_unique<ShadowDisk>(slot.disk.get());
    slot.spec = DiskSpec{node, tier, slot.shadow.get()};
    disks_.push_back(std::move(slot));
    return disks_.size() - 1;
  }

  void InstallPool(std::unique_ptr<Pool> pool) {
    pool_ = config_.wrap_pool ? config_.wrap_pool(std::move(pool)) : std::move(pool);
  }

  // Adds the counters of the pool instance about to go to the result.
  void CountPoolStats() {
    if (pool_ == nullptr) return;
    const PoolStats s = pool_->Stats();
    result_.map_leaves_read += s.map_leaves_read;
    result_.chunk_groups_read += s.chunk_groups_read;
  }

  // ---------------------------------------------------------------------------------
  // Setup and teardown

  bool Setup() {
    if (config_.nodes < 1 || config_.disks_per_node < 1) {
      return Violation("bad config: need at least one node and one disk per node");
    }
    for (int n = 1; n <= config_.nodes; ++n) {
      for (int d = 0; d < config_.disks_per_node; ++d) {
        // One SSD per node when there are several disks, as in a hybrid HC3 node.
        const Tier tier = (d == 0 && config_.disks_per_node > 1) ? Tier::kSsd : Tier::kHdd;
        AddSimDisk(NodeId{static_cast<uint64_t>(n)}, tier);
      }
    }
    if (config_.pool_options.metadata_cache_bytes < (1ull << 20)) {
      Log(absl::StrFormat("leaf cache: %d leaves", config_.pool_options.metadata_cache_bytes / 4096));
    }
    Log(absl::StrFormat("create pool: %d nodes x %d disks of %d MiB", config_.nodes,
                        config_.disks_per_node, config_.disk_bytes / kMiB));
    auto pool = AwaitValue<std::unique_ptr<Pool>>(
        [&](Pool::Done<std::unique_ptr<Pool>> done) {
          Pool::Create(&loop_, &pool_random_, config_.pool_options, Specs(), done);
        },
        kOpenTimeoutNs);
    if (!pool.ok()) return ExpectOk(pool.status(), "Pool::Create");
    InstallPool(std::move(pool).value());
    // pool.h gives no way to ask which DiskId a device got; the simulator assumes ids
    // ascend in the order of the DiskSpecs passed to Create, and checks the nodes agree.
    std::vector<DiskInfo> infos = pool_->ListDisks();
    std::sort(infos.begin(), infos.end(),
              [](const DiskInfo& a, const DiskInfo& b) { return a.id < b.id; });
    if (infos.size() != disks_.size()) {
      return Violation(absl::StrFormat("ListDisks after Create has %d disks, expected %d",
                                       infos.size(), disks_.size()));
    }
    for (size_t i = 0; i < infos.size(); ++i) {
      if (infos[i].node != disks_[i].spec.node || !infos[i].id.valid()) {
        return Violation(absl::StrFormat(
            "cannot map DiskIds to devices: disk #%d (id %d) is on node %d, spec says %d", i,
            infos[i].id.value, infos[i].node.value, disks_[i].spec.node.value));
      }
      disks_[i].id = infos[i].id;
    }
    return CheckFsck("after Create");
  }

  void Finish() {
    op_ = config_.ops + 1;
    Log("finish: end outstanding fault");
    for (int i = 0; i < 8 && fault_.kind != FaultKind::kNone && !stopped_; ++i) AdvanceFault();
    if (stopped_) return;
    if (fault_.kind != FaultKind::kNone) {
      Violation("finish: fault still outstanding after 8 steps (simulator bug)");
      return;
    }
    if (!WaitRedundant("finish")) return;
    if (!VerifyAllExact("final check")) return;
    Log("final flush");
    if (!ExpectOk(AwaitStatus([&](Pool::StatusDone done) { pool_->Flush(done); }), "final Flush")) {
      return;
    }
    CollapseAll({});
    // A clean stop: after the flush everything must come back exactly.
    if (!Restart(PowerLossMode::kDropAll, "clean restart after final flush")) return;
    if (!VerifyAllExact("after clean restart")) return;
    // Every copy was flushed: the count of copies now sees only durable contents.
    if (!WaitRedundant("after clean restart")) return;
    auto report =
        AwaitValue<ScrubReport>([&](Pool::Done<ScrubReport> done) { pool_->Scrub(done); });
    if (!report.ok()) {
      ExpectOk(report.status(), "final Scrub");
      return;
    }
    Log(absl::StrFormat("final scrub: %d chunks %d blocks bad=%d repaired=%d lost=%d",
                        report->chunks_checked, report->blocks_checked, report->bad_copies,
                        report->repaired, report->unrecoverable));
    if (report->bad_copies != 0 || report->unrecoverable != 0) {
      Violation(absl::StrFormat(
          "final Scrub on a healthy, fully redundant pool found %d bad copies (%d "
          "unrecoverable): copies diverged with no fault outstanding (a repair or rebuild "
          "write that a power cut undid, or a write that missed a copy)",
          report->bad_copies, report->unrecoverable));
      return;
    }
    CheckFsck("final");
  }

  // ---------------------------------------------------------------------------------
  // Model bookkeeping

  VsdModel* FindModel(VsdId id) {
    auto it = vsds_.find(id.value);
    return it == vsds_.end() ? nullptr : &it->second;
  }

  VsdModel* PickVsd() {
    if (vsds_.empty()) return nullptr;
    auto it = vsds_.begin();
    std::advance(it, workload_.Uniform(vsds_.size()));
    return &it->second;
  }

  SnapshotModel* PickSnapshot() {
    if (snaps_.empty()) return nullptr;
    auto it = snaps_.begin();
    std::advance(it, workload_.Uniform(snaps_.size()));
    return &it->second;
  }

  // A write (or, with token 0, a discard) of sectors [begin, end) is issued.
  void Issue(VsdModel& v, uint64_t begin, uint64_t end, uint64_t token) {
    for (uint64_t s = begin; s < end; ++s) v.pending[s].push_back(token);
    // The engine maps every block the write touches to a new block; a discard unmaps
    // the blocks it covers whole and writes zeros into the others.
    for (uint64_t b = begin / kSectorsPerBlock; b * kSectorsPerBlock < end; ++b) {
      v.stamps[b] = next_stamp_++;
      const bool whole = begin <= b * kSectorsPerBlock && (b + 1) * kSectorsPerBlock <= end;
      v.mapping[b] = token == 0 && whole ? Mapping::kUnmapped : Mapping::kMapped;
    }
  }

  void Complete(VsdModel& v, uint64_t begin, uint64_t end, uint64_t token, bool durable) {
    for (uint64_t s = begin; s < end; ++s) {
      v.current[s] = token;
      if (durable) {
        v.durable[s] = token;
        v.pending.erase(s);
      }
    }
  }

  // A completed Flush: every sector not written by an I/O that was still in flight when
  // the flush was issued is durable as it is now.
  void CollapseAll(const std::vector<SectorRange>& in_flight) {
    for (auto& [id, v] : vsds_) {
      for (auto it = v.pending.begin(); it != v.pending.end();) {
        const uint64_t s = it->first;
        bool keep = false;
        for (const auto& r : in_flight) keep = keep || r.Contains(id, s);
        if (keep) {
          ++it;
          continue;
        }
        v.durable[s] = v.current[s];
        it = v.pending.erase(it);
      }
    }
  }

  bool IsCandidate(const VsdModel& v, uint64_t s, uint64_t token) const {
    if (v.durable[s] == token) return true;
    auto it = v.pending.find(s);
    if (it == v.pending.end()) return false;
    return std::find(it->second.begin(), it->second.end(), token) != it->second.end();
  }

  std::string Candidates(const VsdModel& v, uint64_t s) const {
    std::vector<std::string> names = {TokenName(v.durable[s]) + " (durable)"};
    auto it = v.pending.find(s);
    if (it != v.pending.end()) {
      for (uint64_t t : it->second) names.push_back(TokenName(t));
    }
    return absl::StrJoin(names, ", ");
  }

  int MaxReplication() const {
    int rf = 0;
    for (const auto& [id, v] : vsds_) rf = std::max(rf, v.replication);
    return rf;
  }

  // ---------------------------------------------------------------------------------
  // Disk and node health, from the pool's own view

  std::set<uint64_t> HealthyNodes(uint64_t skip_node = 0, uint64_t skip_disk = 0) const {
    std::set<uint64_t> nodes;
    for (const DiskInfo& d : pool_->ListDisks()) {
      if (d.failed || !d.online || d.node.value == skip_node || d.id.value == skip_disk) {
        continue;
      }
      nodes.insert(d.node.value);
    }
    return nodes;
  }

  // Whether what is in use would still fit comfortably without `skip_*`: in total, and
  // on each other node, which may have to take a new copy of every chunk the skipped
  // disks held (a chunk of replication 3 on four nodes has one node left to go to).
  bool CapacityAllows(uint64_t skip_node, uint64_t skip_disk) const {
    uint64_t used = 0, capacity = 0, lost = 0;
    std::map<uint64_t, uint64_t> free_by_node;
    for (const DiskInfo& d : pool_->ListDisks()) {
      if (d.failed) continue;
      used += d.used_bytes;
      if (d.node.value == skip_node || d.id.value == skip_disk) {
        lost += d.used_bytes;
        continue;
      }
      if (!d.online) continue;
      capacity += d.capacity_bytes;
      free_by_node[d.node.value] += d.capacity_bytes - std::min(d.used_bytes, d.capacity_bytes);
    }
    for (const auto& [node, free] : free_by_node) {
      if (free < lost) return false;
    }
    return static_cast<double>(used) <= kUsedFractionAfterFaultMax * capacity;
  }

  double UsedFraction() const {
    uint64_t used = 0, capacity = 0;
    for (const DiskInfo& d : pool_->ListDisks()) {
      if (d.failed) continue;
      used += d.used_bytes;
      capacity += d.capacity_bytes;
    }
    return capacity == 0 ? 1.0 : static_cast<double>(used) / capacity;
  }

  std::optional<DiskInfo> InfoOf(DiskId id) const {
    for (const DiskInfo& d : pool_->ListDisks()) {
      if (d.id == id) return d;
    }
    return std::nullopt;
  }

  std::string DisksSummary() const {
    std::vector<std::string> parts;
    for (const DiskInfo& d : pool_->ListDisks()) {
      parts.push_back(absl::StrFormat("disk%d@node%d%s%s used=%dMiB chunks=%d", d.id.value,
                                      d.node.value, d.failed ? " FAILED" : "",
                                      d.online ? "" : " offline", d.used_bytes / kMiB, d.chunks));
    }
    return absl::StrJoin(parts, "; ");
  }

  bool WaitRedundant(const std::string& why) {
    const int64_t start = loop_.NowNanos();
    absl::Status st = RunLoop([&] { return pool_->FullyRedundant(); }, kRedundancyTimeoutNs);
    if (!st.ok()) {
      const PoolStats stats = pool_->Stats();
      return Violation(absl::StrFormat(
          "%s: pool not fully redundant (%s; degraded_chunks=%d rebuilds_in_flight=%d "
          "chunks_rebuilt=%d) disks: %s",
          why, st.message(), stats.degraded_chunks, stats.rebuilds_in_flight, stats.chunks_rebuilt,
          DisksSummary()));
    }
    const PoolStats stats = pool_->Stats();
    if (stats.degraded_chunks != 0 || stats.rebuilds_in_flight != 0) {
      return Violation(
          absl::StrFormat("%s: FullyRedundant() is true but Stats() says degraded_chunks=%d "
                          "rebuilds_in_flight=%d",
                          why, stats.degraded_chunks, stats.rebuilds_in_flight));
    }
    Log(absl::StrFormat("%s: fully redundant after %.3f s (chunks_rebuilt=%d)", why,
                        static_cast<double>(loop_.NowNanos() - start) / kSecondNs,
                        stats.chunks_rebuilt));
    if (stopped_) return false;
    // Not on the pool's word alone: count the copies on the disks.
    return corruption_outstanding_ || CheckCopies(why);
  }

  // The fingerprint of the bytes a block with `contents` holds, remembered across checks
  // (most blocks stay the same from one check to the next).
  uint64_t ExpectedFingerprint(const BlockContents& contents) {
    if (fingerprints_.size() > kFingerprintsMax) fingerprints_.clear();
    auto [it, inserted] = fingerprints_.try_emplace(contents, 0);
    if (!inserted) return it->second;
    uint8_t block[kBlockBytes];
    for (uint64_t k = 0; k < kSectorsPerBlock; ++k) {
      FillSector(contents.tokens[k], contents.first_sector + k, block + k * kSectorBytes);
    }
    it->second = BlockFingerprint(block);
    return it->second;
  }

  // Whether the simulator itself has taken `node` away (an outage or a crash not yet
  // ended by a rejoin).
  bool SimNodeDown(NodeId node) const {
    return fault_.kind == FaultKind::kNodeOutage && fault_.node == node && !fault_.rejoined;
  }

  // The simulator's own count of every modelled block's copies, from what the disks hold
  // (ShadowDisk) rather than from the engine: each 4 KiB block of a live VSD or snapshot
  // that holds anything but zeros must be on the disks, with exactly the bytes the model
  // says (every sector carries its write's token and its VSD sector, see FillSector; a
  // disk block is found by its first non-zero sector's token and sector, then compared
  // whole by fingerprint), on at least its VSD's replication of distinct nodes. Only disks the pool can read count:
  // not failed (by the simulator, or by the pool on its own), not on a node the simulator
  // took away or the pool lists offline. A block of zeros cannot be told from unused space
  // and is not counted. A stale copy holding the same bytes (a copy left in a freed or
  // reset slot) can only raise a count: the check may miss a lost copy, but never
  // reports a present one lost.
  //
  // Called where the pool says it is fully redundant, unless a corruption is outstanding
  // (a corrupted copy is a lost one that the pool cannot know of before reading it).
  bool CheckCopies(const std::string& why) {
    static constexpr uint32_t kNone = ~0u;
    struct Expected {
      BlockContents contents;
      uint64_t fingerprint = 0;  // of its bytes (BlockFingerprint)
      int replication = 0;
      // The first holder, for the message.
      bool snapshot = false;
      uint64_t holder = 0;
      uint64_t nodes = 0;  // bit n-1: node n holds a good copy
      uint32_t next = kNone;  // the next with the same first non-zero sector
    };
    std::vector<Expected> expected;
    // (token, VSD sector) of a block's first non-zero sector -> the first of the blocks
    // in `expected` starting so (chained by `next`).
    absl::flat_hash_map<std::pair<uint64_t, uint64_t>, uint32_t> by_first;
    auto add = [&](const std::vector<uint64_t>& data, int replication, bool snapshot,
                   uint64_t holder) {
      for (uint64_t s0 = 0; s0 + kSectorsPerBlock <= data.size(); s0 += kSectorsPerBlock) {
        Expected e;
        int first = -1;
        for (uint64_t i = 0; i < kSectorsPerBlock; ++i) {
          e.contents.tokens[i] = data[s0 + i];
          if (e.contents.tokens[i] != 0 && first < 0) first = static_cast<int>(i);
        }
        if (first < 0) continue;
        e.contents.first_sector = s0;
        e.replication = replication;
        e.snapshot = snapshot;
        e.holder = holder;
        auto [head, inserted] =
            by_first.try_emplace(std::make_pair(e.contents.tokens[first], s0 + first), kNone);
        bool known = false;
        for (uint32_t i = head->second; i != kNone; i = expected[i].next) {
          if (expected[i].contents == e.contents) {
            expected[i].replication = std::max(expected[i].replication, replication);
            known = true;
            break;
          }
        }
        if (known) continue;
        e.fingerprint = ExpectedFingerprint(e.contents);
        e.next = head->second;
        head->second = static_cast<uint32_t>(expected.size());
        expected.push_back(e);
      }
    };
    for (const auto& [id, v] : vsds_) add(v.current, v.replication, false, id);
    for (const auto& [id, snap] : snaps_) add(snap.data, snap.replication, true, id);

    uint64_t disks_scanned = 0;
    for (const DiskSlot& d : disks_) {
      if (d.disk->failed() || SimNodeDown(d.spec.node) || d.spec.node.value == 0 ||
          d.spec.node.value > 64) {
        continue;
      }
      const std::optional<DiskInfo> info = InfoOf(d.id);
      if (!info || info->failed || !info->online) continue;
      ++disks_scanned;
      const uint64_t node_bit = 1ull << (d.spec.node.value - 1);
      for (const auto& [page, bytes] : d.shadow->pages()) {
        const uint8_t* p = bytes->data();
        // The first non-zero sector names the block's candidates.
        int first = -1;
        uint64_t words[2] = {0, 0};
        for (uint64_t i = 0; i < kSectorsPerBlock; ++i) {
          std::memcpy(words, p + i * kSectorBytes, sizeof(words));
          if (words[0] != 0) {
            first = static_cast<int>(i);
            break;
          }
          if (!IsZero(p + i * kSectorBytes, kSectorBytes)) break;  // no write's contents
        }
        if (first < 0 || words[1] % kSectorsPerBlock != static_cast<uint64_t>(first)) continue;
        auto it = by_first.find(std::make_pair(words[0], words[1]));
        if (it == by_first.end()) continue;
        const uint64_t fingerprint = BlockFingerprint(p);
        for (uint32_t i = it->second; i != kNone; i = expected[i].next) {
          if (expected[i].fingerprint == fingerprint) expected[i].nodes |= node_bit;
        }
      }
    }
    ++result_.copy_checks;
    result_.blocks_copy_checked += expected.size();
    uint64_t short_blocks = 0;
    std::vector<std::string> listed;
    for (const Expected& e : expected) {
      const int copies = __builtin_popcountll(e.nodes);
      if (copies >= e.replication) continue;
      ++short_blocks;
      if (listed.size() >= kCopyViolationsListed) continue;
      std::vector<uint64_t> nodes;
      for (uint64_t n = 0; n < 64; ++n) {
        if (e.nodes & (1ull << n)) nodes.push_back(n + 1);
      }
      listed.push_back(absl::StrFormat(
          "%s %d block %d (byte %d; %s at its first sector): good copies on %d nodes {%s}, "
          "replication %d",
          e.snapshot ? "snapshot" : "vsd", e.holder, e.contents.first_sector / kSectorsPerBlock,
          e.contents.first_sector * kSectorBytes, TokenName(e.contents.tokens[0]), copies,
          absl::StrJoin(nodes, ","), e.replication));
    }
    if (short_blocks != 0) {
      return Violation(absl::StrFormat(
          "%s: the pool says it is fully redundant, but counting the copies on the %d "
          "readable disks finds %d of %d non-zero 4 KiB blocks on fewer distinct nodes than "
          "their replication: %s%s; disks: %s",
          why, disks_scanned, short_blocks, expected.size(), absl::StrJoin(listed, "; "),
          short_blocks > listed.size() ? "; ..." : "", DisksSummary()));
    }
    Log(absl::StrFormat("%s: copies counted on %d disks: %d non-zero blocks, each on enough "
                        "nodes",
                        why, disks_scanned, expected.size()));
    return true;
  }

  // Runs Fsck to completion (the loop runs meanwhile, as for every awaited call); a Fsck
  // that fails (metadata pages unreadable) is a violation like one that finds errors.
  bool CheckFsck(const std::string& when) {
    auto result =
        AwaitValue<FsckReport>([&](Pool::Done<FsckReport> done) { pool_->Fsck(done); });
    if (!result.ok()) return ExpectOk(result.status(), absl::StrCat("Fsck ", when));
    const FsckReport& report = *result;
    if (report.ok()) return true;
    std::vector<std::string> first(
        report.errors.begin(), report.errors.begin() + std::min<size_t>(report.errors.size(), 8));
    return Violation(absl::StrFormat("Fsck %s: %d errors: %s", when, report.errors.size(),
                                     absl::StrJoin(first, " | ")));
  }

  // ---------------------------------------------------------------------------------
  // Reading and checking

  // Reads [offset, +length) of a VSD (or a snapshot when `snap` is set) into a buffer
  // that is deliberately misaligned now and then (pool.h promises no alignment need).
  absl::StatusOr<std::shared_ptr<std::vector<uint8_t>>> ReadRaw(VsdId vsd, SnapshotId snap,
                                                                uint64_t offset, uint64_t length,
                                                                size_t* misalign) {
    *misalign = workload_.Bernoulli(0.25) ? 1 + workload_.Uniform(7) : 0;
    auto buf = std::make_shared<std::vector<uint8_t>>(length + *misalign, 0xee);
    uint8_t* p = buf->data() + *misalign;
    absl::Status st = AwaitStatus([&](Pool::StatusDone done) {
      auto keep = [buf, done](absl::Status s) { done(std::move(s)); };
      if (snap.valid()) {
        pool_->ReadSnapshot(snap, offset, length, p, keep);
      } else {
        pool_->Read(vsd, offset, length, p, keep);
      }
    });
    if (!st.ok()) return st;
    ++result_.reads_checked;
    return buf;
  }

  // Reads a live range and compares it with `current` exactly.
  bool ReadAndCheck(VsdModel& v, uint64_t offset, uint64_t length, const std::string& what) {
    size_t misalign;
    auto buf = ReadRaw(v.id, SnapshotId{}, offset, length, &misalign);
    const std::string where =
        absl::StrFormat("%s: Read vsd %d [%d, +%d)", what, v.id.value, offset, length);
    if (!buf.ok()) return ExpectOk(buf.status(), where);
    const uint8_t* p = (*buf)->data() + misalign;
    for (uint64_t i = 0; i < length / kSectorBytes; ++i) {
      const uint64_t s = offset / kSectorBytes + i;
      const uint64_t got = DecodeSector(p + i * kSectorBytes, s);
      if (got != v.current[s]) {
        return Violation(absl::StrFormat("%s: sector %d (byte %d) holds %s, expected %s", where, s,
                                         s * kSectorBytes, Describe(p + i * kSectorBytes, s),
                                         TokenName(v.current[s])));
      }
    }
    return true;
  }

  bool ReadSnapshotAndCheck(const SnapshotModel& snap, uint64_t offset, uint64_t length,
                            const std::string& what) {
    size_t misalign;
    auto buf = ReadRaw(snap.vsd, snap.id, offset, length, &misalign);
    const std::string where = absl::StrFormat("%s: ReadSnapshot %d (of vsd %d) [%d, +%d)", what,
                                              snap.id.value, snap.vsd.value, offset, length);
    if (!buf.ok()) return ExpectOk(buf.status(), where);
    const uint8_t* p = (*buf)->data() + misalign;
    for (uint64_t i = 0; i < length / kSectorBytes; ++i) {
      const uint64_t s = offset / kSectorBytes + i;
      const uint64_t got = DecodeSector(p + i * kSectorBytes, s);
      if (got != snap.data[s]) {
        return Violation(absl::StrFormat("%s: sector %d (byte %d) holds %s, expected %s", where, s,
                                         s * kSectorBytes, Describe(p + i * kSectorBytes, s),
                                         TokenName(snap.data[s])));
      }
    }
    return true;
  }

  bool CheckVsdInfo(const VsdModel& v, const std::string& when) {
    auto info = pool_->GetVsdInfo(v.id);
    if (!info.ok()) return ExpectOk(info.status(), absl::StrCat(when, ": GetVsdInfo"));
    if (info->size_bytes != v.size_bytes() || info->replication != v.replication ||
        info->name != v.name) {
      return Violation(absl::StrFormat(
          "%s: GetVsdInfo(%d) says name=%s size=%d replication=%d, model has %s %d %d", when,
          v.id.value, info->name, info->size_bytes, info->replication, v.name, v.size_bytes(),
          v.replication));
    }
    return true;
  }

  // Every VSD and snapshot read back completely and compared exactly.
  bool VerifyAllExact(const std::string& when) {
    for (auto& [id, v] : vsds_) {
      if (!CheckVsdInfo(v, when)) return false;
      for (uint64_t off = 0; off < v.size_bytes(); off += kVerifyReadBytes) {
        if (!ReadAndCheck(v, off, std::min(kVerifyReadBytes, v.size_bytes() - off), when)) {
          return false;
        }
      }
    }
    for (auto& [id, s] : snaps_) {
      const uint64_t size = s.data.size() * kSectorBytes;
      for (uint64_t off = 0; off < size; off += kVerifyReadBytes) {
        if (!ReadSnapshotAndCheck(s, off, std::min(kVerifyReadBytes, size - off), when)) {
          return false;
        }
      }
    }
    Log(absl::StrFormat("%s: %d vsds and %d snapshots verified exactly", when, vsds_.size(),
                        snaps_.size()));
    return true;
  }

  bool CheckListsMatchModel(const std::string& when) {
    std::set<uint64_t> listed;
    for (const VsdInfo& info : pool_->ListVsds()) listed.insert(info.id.value);
    std::set<uint64_t> model;
    for (const auto& [id, v] : vsds_) model.insert(id);
    if (listed != model) {
      return Violation(absl::StrFormat("%s: ListVsds has {%s}, model has {%s}", when,
                                       absl::StrJoin(listed, ","), absl::StrJoin(model, ",")));
    }
    for (const auto& [id, v] : vsds_) {
      std::set<uint64_t> snaps_listed;
      for (const SnapshotInfo& s : pool_->ListSnapshots(v.id)) {
        snaps_listed.insert(s.id.value);
        if (s.vsd != v.id) {
          return Violation(absl::StrFormat("%s: ListSnapshots(%d) returned snapshot %d of vsd %d",
                                           when, id, s.id.value, s.vsd.value));
        }
      }
      const std::set<uint64_t> snaps_model(v.snapshots.begin(), v.snapshots.end());
      if (snaps_listed != snaps_model) {
        return Violation(absl::StrFormat("%s: ListSnapshots(%d) has {%s}, model has {%s}", when, id,
                                         absl::StrJoin(snaps_listed, ","),
                                         absl::StrJoin(snaps_model, ",")));
      }
    }
    return true;
  }

  // Accounting, exactly where the model knows the answer. allocated_bytes is pool.h's
  // "mapped 4 KiB blocks of the live VSD", and the model tracks each block's mapping
  // (Issue): the engine maps a block on every write to it (redirect-on-write; zeros too:
  // a partial discard writes zeros into its edge blocks, which maps them), unmaps it only
  // on a discard covering it whole, and a revert or clone takes the snapshot's or source's
  // mapping. Only a power cut leaves blocks in doubt (Mapping::kUnknown: writes or
  // discards were in flight and the block reads as zeros, so it is either unmapped or a
  // mapped block of zeros), so allocated_bytes must be exactly the mapped blocks, plus
  // any number of the blocks in doubt. (The check was `allocated >= non-zero blocks`,
  // which a pool over-reporting its allocation passed.) Also exact: unique + shared =
  // allocated, the snapshot count, and per disk used_bytes = chunks x 1 MiB (pool.h:
  // "1 MiB chunk slots", used_bytes "chunk slots in use") <= capacity_bytes.
  bool CheckAccounting(const std::string& when) {
    for (const auto& [id, v] : vsds_) {
      auto info = pool_->GetVsdInfo(v.id);
      if (!info.ok()) return ExpectOk(info.status(), absl::StrCat(when, ": GetVsdInfo"));
      uint64_t mapped = 0, unknown = 0;
      for (uint64_t b = 0; b < v.mapping.size(); ++b) {
        bool nonzero = false;
        for (uint64_t s = b * kSectorsPerBlock; s < (b + 1) * kSectorsPerBlock; ++s) {
          nonzero = nonzero || v.current[s] != 0;
        }
        if (nonzero && v.mapping[b] != Mapping::kMapped) {
          return Violation(absl::StrFormat(
              "simulator bug: the model has vsd %d block %d non-zero but not mapped", id, b));
        }
        mapped += v.mapping[b] == Mapping::kMapped;
        unknown += v.mapping[b] == Mapping::kUnknown;
      }
      if (info->allocated_bytes < mapped * kBlockBytes ||
          info->allocated_bytes > (mapped + unknown) * kBlockBytes ||
          info->allocated_bytes % kBlockBytes != 0 ||
          info->shared_bytes + info->unique_bytes != info->allocated_bytes ||
          info->snapshots != v.snapshots.size()) {
        return Violation(absl::StrFormat(
            "%s: GetVsdInfo(%d) allocated=%d unique=%d shared=%d snapshots=%d; the model has "
            "%d mapped 4 KiB blocks (%d bytes) and %d in doubt after a power cut, and %d "
            "snapshots",
            when, id, info->allocated_bytes, info->unique_bytes, info->shared_bytes,
            info->snapshots, mapped, mapped * kBlockBytes, unknown, v.snapshots.size()));
      }
    }
    for (const DiskInfo& d : pool_->ListDisks()) {
      if (d.used_bytes > d.capacity_bytes || d.used_bytes != d.chunks * kChunkBytes) {
        return Violation(absl::StrFormat("%s: disk %d uses %d of %d bytes with %d chunks", when,
                                         d.id.value, d.used_bytes, d.capacity_bytes, d.chunks));
      }
    }
    ++result_.accounting_checks;
    return true;
  }

  void CheckAfterOp() {
    result_.peak_used_permille = std::max<uint64_t>(
        result_.peak_used_permille, static_cast<uint64_t>(UsedFraction() * 1000));
    if (!CheckFsck("after operation")) return;
    if (!CheckListsMatchModel("after operation")) return;
    if (op_ % kDeepCheckEveryOps == 0 && !CheckAccounting("after operation")) return;
    if (fault_.kind == FaultKind::kNone && !pool_->FullyRedundant()) {
      const PoolStats stats = pool_->Stats();
      Violation(
          absl::StrFormat("pool not fully redundant with no fault outstanding (degraded_chunks=%d "
                          "rebuilds_in_flight=%d) disks: %s",
                          stats.degraded_chunks, stats.rebuilds_in_flight, DisksSummary()));
      return;
    }
    if (op_ % kDeepCheckEveryOps == 0 && fault_.kind == FaultKind::kNone &&
        !corruption_outstanding_) {
      CheckCopies("after operation");
    }
  }

  // ---------------------------------------------------------------------------------
  // Workload

  // A random 512-byte aligned range inside the VSD, biased to 4 KiB alignment now and
  // then so both the read-modify-write and the whole-block paths are exercised.
  std::pair<uint64_t, uint64_t> RandomRange(const VsdModel& v, uint64_t max_bytes) {
    const uint64_t sectors = v.current.size();
    uint64_t len_sectors;
    switch (workload_.Uniform(4)) {
      case 0:
        len_sectors = 1 + workload_.Uniform(8);
        break;
      case 1:
        len_sectors = kSectorsPerBlock * (1 + workload_.Uniform(16));
        break;
      default:
        len_sectors = 1 + workload_.Uniform(max_bytes / kSectorBytes);
        break;
    }
    len_sectors = std::min({len_sectors, max_bytes / kSectorBytes, sectors});
    uint64_t start = workload_.Uniform(sectors - len_sectors + 1);
    if (workload_.Bernoulli(0.5)) start -= start % kSectorsPerBlock;
    return {start * kSectorBytes, len_sectors * kSectorBytes};
  }

  std::shared_ptr<std::vector<uint8_t>> MakeWriteData(uint64_t token, uint64_t offset,
                                                      uint64_t length, size_t misalign) {
    auto buf = std::make_shared<std::vector<uint8_t>>(length + misalign);
    for (uint64_t i = 0; i < length / kSectorBytes; ++i) {
      FillSector(token, offset / kSectorBytes + i, buf->data() + misalign + i * kSectorBytes);
    }
    return buf;
  }

  void RunOneOp() {
    if (vsds_.empty()) {
      OpCreateVsd();
      return;
    }
    // A fill seed writes until the pool refuses, then frees space for a few operations.
    const bool pressure = fill_ ? drain_ops_ > 0 : UsedFraction() > kUsedFractionWritesMax;
    if (drain_ops_ > 0) --drain_ops_;
    struct Choice {
      double weight;
      void (PoolSim::*op)();
    };
    // A fill seed writes twice as much and deletes less while it fills.
    const double more = fill_ ? 2.0 : 1.0;
    const double fewer = fill_ ? 0.3 : 1.0;
    const std::vector<Choice> choices = {
        {pressure ? 0.0 : 26 * more, &PoolSim::OpWrite},
        {pressure ? 0.0 : 5, &PoolSim::OpFuaWrite},
        {pressure ? 0.0 : 8 * more, &PoolSim::OpBurst},
        {16, &PoolSim::OpRead},
        {pressure ? 12.0 : 4, &PoolSim::OpDiscard},
        {5, &PoolSim::OpFlush},
        {vsds_.size() < kVsdsMax && !pressure ? 2.5 : 0, &PoolSim::OpCreateVsd},
        {snaps_.size() < kSnapshotsMax ? 5.0 : 0, &PoolSim::OpSnapshot},
        {snaps_.size() + 1 < kSnapshotsMax ? 2.0 : 0, &PoolSim::OpGroupSnapshot},
        {5, &PoolSim::OpReadSnapshot},
        {vsds_.size() < kVsdsMax && !pressure ? 3.0 : 0, &PoolSim::OpClone},
        {2, &PoolSim::OpRevert},
        {pressure || snaps_.size() >= kSnapshotsMax ? 10.0 : 3 * fewer, &PoolSim::OpDeleteSnapshot},
        {pressure || vsds_.size() >= kVsdsMax ? 4.0 : 1.2 * fewer, &PoolSim::OpDeleteVsd},
        {pressure ? 0.0 : 2, &PoolSim::OpResize},
        {4, &PoolSim::OpDiff},
        {1, &PoolSim::OpBadRequest},
    };
    double total = 0;
    for (const auto& c : choices) total += c.weight;
    double x = static_cast<double>(workload_.Next64() >> 11) * 0x1.0p-53 * total;
    for (const auto& c : choices) {
      if (x < c.weight) {
        (this->*c.op)();
        return;
      }
      x -= c.weight;
    }
    (this->*choices.back().op)();
  }

  void OpCreateVsd() {
    VsdOptions options;
    options.name = absl::StrCat("vsd-", ++names_);
    const uint64_t create_max = fill_ ? kVsdBytesMax : kVsdBytesCreateMax;
    options.size_bytes =
        kVsdBytesMin + 64 * kKiB * workload_.Uniform((create_max - kVsdBytesMin) / (64 * kKiB) + 1);
    // Sometimes a size that is not a multiple of 64 KiB (the engine wants 4 KiB).
    if (workload_.Bernoulli(0.15)) options.size_bytes += kBlockBytes * (1 + workload_.Uniform(15));
    const bool rf3_possible = config_.nodes >= 3 && HealthyNodes().size() >= 3;
    options.replication = rf3_possible && workload_.Bernoulli(0.4) ? 3 : 2;
    options.flash_priority = static_cast<int>(workload_.Uniform(12));
    Log(absl::StrFormat("CreateVsd %s size=%d rf=%d", options.name, options.size_bytes,
                        options.replication));
    auto id = AwaitValue<VsdId>([&](Pool::Done<VsdId> done) { pool_->CreateVsd(options, done); });
    if (!id.ok()) {
      ExpectOk(id.status(), "CreateVsd");
      return;
    }
    if (!id->valid() || vsds_.count(id->value)) {
      Violation(absl::StrFormat("CreateVsd returned id %d, invalid or already in use", id->value));
      return;
    }
    VsdModel v;
    v.id = *id;
    v.name = options.name;
    v.replication = options.replication;
    v.family = id->value;
    v.Resize(options.size_bytes);
    Log(absl::StrFormat("  -> vsd %d", id->value));
    auto [it, inserted] = vsds_.emplace(id->value, std::move(v));
    auto found = pool_->FindVsd(options.name);
    if (!found.ok() || *found != *id) {
      Violation(absl::StrFormat("FindVsd(%s) = %s, expected %d", options.name,
                                found.ok() ? absl::StrCat(found->value) : found.status().ToString(),
                                id->value));
      return;
    }
    CheckVsdInfo(it->second, "after CreateVsd");
  }

  uint64_t WriteBytesMax() const { return fill_ ? kFillWriteBytesMax : kWriteBytesMax; }

  // What a write or discard of sectors [begin, end) is about to change, so that a
  // refusal (RESOURCE_EXHAUSTED) can put the model back.
  struct Before {
    uint64_t begin = 0, end = 0;          // sectors
    std::vector<uint64_t> tokens;         // current[begin, end)
    uint64_t first_block = 0;
    std::vector<Mapping> mapping;         // of blocks first_block...
    std::vector<uint64_t> stamps;
  };

  Before Capture(const VsdModel& v, uint64_t begin, uint64_t end) const {
    Before b;
    b.begin = begin;
    b.end = end;
    b.tokens.assign(v.current.begin() + begin, v.current.begin() + end);
    b.first_block = begin / kSectorsPerBlock;
    const uint64_t last_block = (end + kSectorsPerBlock - 1) / kSectorsPerBlock;
    b.mapping.assign(v.mapping.begin() + b.first_block, v.mapping.begin() + last_block);
    b.stamps.assign(v.stamps.begin() + b.first_block, v.stamps.begin() + last_block);
    return b;
  }

  // Chunk slots a write or discard of `length` bytes to a VSD of `replication` copies
  // may take: one chunk per MiB plus one for the block it starts in, each copy a slot.
  static uint64_t SlotsFor(int replication, uint64_t length) {
    return replication * ((length + kChunkBytes - 1) / kChunkBytes + 1);
  }

  // Whether the pool may refuse a write or discard of `length` bytes to a VSD of
  // `replication` copies as full now (while other requests in flight may take
  // `concurrent_slots`): only on a fill seed, and only when the request's chunks (with
  // those of the others) do not fit on distinct nodes beyond the chunks every node keeps
  // for metadata (a documented pool property), or would leave at most
  // kFullFreeFractionMax of the chunk slots of the usable disks free. `state` describes
  // the pool's fullness for the log or the violation.
  bool MayBeFull(int replication, uint64_t length, uint64_t concurrent_slots, std::string* state) const {
    uint64_t slots = 0, free = 0;
    std::map<uint64_t, uint64_t> node_free;
    for (const DiskInfo& d : pool_->ListDisks()) {
      if (d.failed || !d.online) continue;
      slots += d.capacity_bytes / kChunkBytes;
      const uint64_t f = (d.capacity_bytes - std::min(d.used_bytes, d.capacity_bytes)) / kChunkBytes;
      free += f;
      node_free[d.node.value] += f;
    }
    const uint64_t reserve = pool_->Stats().metadata_reserve_chunks_per_node;
    // How many chunks of `replication` copies on distinct nodes fit in what each node
    // has beyond its reserve: the largest m with sum(min(spare, m)) >= replication * m.
    uint64_t placeable = 0;
    for (uint64_t m = 1;; ++m) {
      uint64_t sum = 0;
      for (const auto& [node, f] : node_free) sum += std::min(f > reserve ? f - reserve : 0, m);
      if (sum < static_cast<uint64_t>(replication) * m) break;
      placeable = m;
    }
    const uint64_t needed = SlotsFor(replication, length) + concurrent_slots;
    *state = absl::StrFormat(
        "%d of %d chunk slots of the usable disks free, room beyond the %d chunks each node "
        "keeps for metadata for %d chunks of %d copies; the request may need %d slots%s",
        free, slots, reserve, placeable, replication, SlotsFor(replication, length),
        concurrent_slots > 0 ? absl::StrFormat(", the requests beside it %d", concurrent_slots) : "");
    if (!fill_) return false;
    return placeable * replication < needed ||
           static_cast<double>(free) <=
               kFullFreeFractionMax * static_cast<double>(slots) + static_cast<double>(needed);
  }

  // A write (token != 0) or discard (token 0) of `b`'s sectors failed with `st`. A
  // RESOURCE_EXHAUSTED the pool may give (MayBeFull) is accepted: each sector must then
  // hold what it held before or what the request wrote (pool.h does not promise that a
  // refused request changes nothing), and the model takes what it holds; the first
  // refusal in a while also reads everything back (nothing acknowledged may be lost to a
  // full pool). Any other failure is a violation. Refusals of concurrent requests sharing
  // blocks are undone newest first (their `Before`s nest).
  bool Refused(VsdModel& v, const Before& b, uint64_t token, const absl::Status& st,
               const std::string& what, uint64_t concurrent_slots = 0) {
    std::string state;
    if (!absl::IsResourceExhausted(st) ||
        !MayBeFull(v.replication, (b.end - b.begin) * kSectorBytes, concurrent_slots, &state)) {
      if (absl::IsResourceExhausted(st)) {
        return Violation(absl::StrFormat("%s refused as the pool is full (%s) while %s%s", what,
                                         st.ToString(), state,
                                         fill_ ? "" : " (not a fill seed: the workload keeps "
                                                      "the pool below half full)"));
      }
      return ExpectOk(st, what);
    }
    ++result_.full_refusals;
    const uint64_t offset = b.begin * kSectorBytes;
    const uint64_t length = (b.end - b.begin) * kSectorBytes;
    Log(absl::StrFormat("  %s refused: pool full (%s)", what, state));
    size_t misalign;
    auto buf = ReadRaw(v.id, SnapshotId{}, offset, length, &misalign);
    if (!buf.ok()) return ExpectOk(buf.status(), absl::StrCat("reading back after a refused ", what));
    const uint8_t* p = (*buf)->data() + misalign;
    std::vector<bool> changed_block(b.mapping.size(), false);
    for (uint64_t s = b.begin; s < b.end; ++s) {
      const uint8_t* sector = p + (s - b.begin) * kSectorBytes;
      const uint64_t old = b.tokens[s - b.begin];
      const uint64_t got = DecodeSector(sector, s);
      if (got != old && got != token) {
        return Violation(absl::StrFormat(
            "after %s was refused as the pool is full: sector %d (byte %d) holds %s; only %s "
            "(before) or %s (the refused request) are legal",
            what, s, s * kSectorBytes, Describe(sector, s), TokenName(old), TokenName(token)));
      }
      v.current[s] = got;
      if (got != old) {
        changed_block[s / kSectorsPerBlock - b.first_block] = true;
        continue;
      }
      // Not applied: the request is no candidate after a power cut either.
      auto it = v.pending.find(s);
      if (it != v.pending.end()) {
        auto pos = std::find(it->second.rbegin(), it->second.rend(), token);
        if (pos != it->second.rend()) it->second.erase(std::next(pos).base());
        if (it->second.empty()) v.pending.erase(it);
      }
    }
    for (uint64_t i = 0; i < b.mapping.size(); ++i) {
      const uint64_t blk = b.first_block + i;
      const bool whole = b.begin <= blk * kSectorsPerBlock && (blk + 1) * kSectorsPerBlock <= b.end;
      bool old_zero = true;  // the request's part of the block held zeros before
      for (uint64_t s = std::max(b.begin, blk * kSectorsPerBlock);
           s < std::min(b.end, (blk + 1) * kSectorsPerBlock); ++s) {
        old_zero = old_zero && b.tokens[s - b.begin] == 0;
      }
      if (token != 0) {
        // A write maps what it changed; unchanged, nothing happened to the block.
        v.mapping[blk] = changed_block[i] ? Mapping::kMapped : b.mapping[i];
        if (!changed_block[i]) v.stamps[blk] = b.stamps[i];
      } else if (whole) {
        // A whole block is unmapped by the discard or left alone; zeros before and after
        // cannot tell which.
        v.mapping[blk] = changed_block[i]                          ? Mapping::kUnmapped
                         : !old_zero                               ? b.mapping[i]
                         : b.mapping[i] == Mapping::kUnmapped      ? Mapping::kUnmapped
                                                                   : Mapping::kUnknown;
      } else {
        // An edge block is written with zeros (mapped) or left alone.
        v.mapping[blk] = changed_block[i]                      ? Mapping::kMapped
                         : !old_zero                           ? b.mapping[i]
                         : b.mapping[i] == Mapping::kMapped    ? Mapping::kMapped
                                                               : Mapping::kUnknown;
      }
    }
    drain_ops_ = kFillDrainOpsMin +
                 static_cast<int>(workload_.Uniform(kFillDrainOpsMax - kFillDrainOpsMin + 1));
    if (last_full_verify_op_ == 0 || op_ >= last_full_verify_op_ + kFullVerifyEveryOps) {
      last_full_verify_op_ = op_;
      ++result_.full_verifications;
      return VerifyAllExact("after a request refused as the pool is full");
    }
    return true;
  }

  bool DoWrite(VsdModel& v, uint64_t offset, uint64_t length, bool fua) {
    const uint64_t token = NewToken();
    const size_t misalign = workload_.Bernoulli(0.25) ? 1 + workload_.Uniform(7) : 0;
    auto buf = MakeWriteData(token, offset, length, misalign);
    Log(absl::StrFormat("Write vsd %d [%d, +%d) w%d%s", v.id.value, offset, length, token,
                        fua ? " fua" : ""));
    const uint64_t begin = offset / kSectorBytes, end = (offset + length) / kSectorBytes;
    const Before before = Capture(v, begin, end);
    Issue(v, begin, end, token);
    absl::Status st = AwaitStatus([&](Pool::StatusDone done) {
      pool_->Write(v.id, offset, length, buf->data() + misalign, fua,
                   [buf, done](absl::Status s) { done(std::move(s)); });
    });
    if (!st.ok()) {
      return Refused(v, before, token, st,
                     absl::StrFormat("Write vsd %d [%d, +%d)", v.id.value, offset, length));
    }
    Complete(v, begin, end, token, fua);
    return true;
  }

  void OpWrite() {
    VsdModel* v = PickVsd();
    auto [offset, length] = RandomRange(*v, WriteBytesMax());
    DoWrite(*v, offset, length, false);
  }

  void OpFuaWrite() {
    VsdModel* v = PickVsd();
    auto [offset, length] = RandomRange(*v, WriteBytesMax());
    DoWrite(*v, offset, length, true);
  }

  void OpRead() {
    VsdModel* v = PickVsd();
    // A whole-VSD read now and then: after corruption this is what finds it.
    if (workload_.Bernoulli(0.1)) {
      Log(absl::StrFormat("Read all of vsd %d", v->id.value));
      for (uint64_t off = 0; off < v->size_bytes() && !stopped_; off += kVerifyReadBytes) {
        ReadAndCheck(*v, off, std::min(kVerifyReadBytes, v->size_bytes() - off), "read");
      }
      return;
    }
    auto [offset, length] = RandomRange(*v, kReadBytesMax);
    Log(absl::StrFormat("Read vsd %d [%d, +%d)", v->id.value, offset, length));
    ReadAndCheck(*v, offset, length, "read");
  }

  void OpDiscard() {
    VsdModel* v = PickVsd();
    auto [offset, length] = RandomRange(*v, kDiscardBytesMax);
    Log(absl::StrFormat("Discard vsd %d [%d, +%d)", v->id.value, offset, length));
    const uint64_t begin = offset / kSectorBytes, end = (offset + length) / kSectorBytes;
    const Before before = Capture(*v, begin, end);
    Issue(*v, begin, end, 0);
    absl::Status st =
        AwaitStatus([&](Pool::StatusDone done) { pool_->Discard(v->id, offset, length, done); });
    if (!st.ok()) {
      // Its partial edge blocks are written with zeros, which takes space.
      Refused(*v, before, 0, st,
              absl::StrFormat("Discard vsd %d [%d, +%d)", v->id.value, offset, length));
      return;
    }
    Complete(*v, begin, end, 0, false);
  }

  void OpFlush() {
    Log("Flush");
    if (!ExpectOk(AwaitStatus([&](Pool::StatusDone done) { pool_->Flush(done); }), "Flush")) {
      return;
    }
    CollapseAll({});
  }

  // 2..8 writes to disjoint ranges (possibly sharing 4 KiB blocks, possibly on different
  // VSDs) in flight at once, with a few reads of untouched ranges and sometimes a flush.
  void OpBurst() {
    struct Io {
      bool is_write = true;
      uint64_t vsd = 0;
      uint64_t offset = 0, length = 0;
      uint64_t token = 0;
      bool fua = false;
      size_t misalign = 0;
      std::shared_ptr<std::vector<uint8_t>> buf;
      std::vector<uint64_t> expected;  // reads: tokens at issue
      Before before;                   // writes: what a refusal puts back
      std::optional<absl::Status> status;
    };
    struct Burst {
      std::vector<Io> ios;
      std::optional<absl::Status> flush_status;
      bool abandoned = false;  // a power cut struck: completions no longer count
    };
    auto burst = std::make_shared<Burst>();
    // The chunk slots the burst's other writes may take (they compete for the same room).
    auto BurstSlotsBeside = [this](const Burst& b, const Io& self) {
      uint64_t slots = 0;
      for (const Io& io : b.ios) {
        if (io.is_write && &io != &self) slots += SlotsFor(vsds_.at(io.vsd).replication, io.length);
      }
      return slots;
    };
    std::vector<SectorRange> ranges;
    const int writes =
        kBurstIosMin + static_cast<int>(workload_.Uniform(kBurstIosMax - kBurstIosMin + 1));
    const int reads = static_cast<int>(workload_.Uniform(kBurstReadsMax + 1));
    for (int i = 0; i < writes + reads; ++i) {
      for (int attempt = 0; attempt < 10; ++attempt) {
        VsdModel* v = PickVsd();
        auto [offset, length] = RandomRange(*v, i < writes ? WriteBytesMax() : 64 * kKiB);
        SectorRange r{v->id.value, offset / kSectorBytes, (offset + length) / kSectorBytes};
        bool overlaps = false;
        for (const auto& o : ranges) overlaps = overlaps || o.Overlaps(r);
        if (overlaps) continue;
        ranges.push_back(r);
        Io io;
        io.is_write = i < writes;
        io.vsd = v->id.value;
        io.offset = offset;
        io.length = length;
        io.misalign = workload_.Bernoulli(0.25) ? 1 + workload_.Uniform(7) : 0;
        if (io.is_write) {
          io.token = NewToken();
          io.fua = workload_.Bernoulli(0.2);
          io.buf = MakeWriteData(io.token, offset, length, io.misalign);
        } else {
          io.buf = std::make_shared<std::vector<uint8_t>>(length + io.misalign, 0xee);
          io.expected.assign(v->current.begin() + r.begin, v->current.begin() + r.end);
        }
        burst->ios.push_back(std::move(io));
        break;
      }
    }
    const bool with_flush = workload_.Bernoulli(0.3);
    std::vector<std::string> parts;
    for (const Io& io : burst->ios) {
      parts.push_back(io.is_write
                          ? absl::StrFormat("W vsd %d [%d, +%d) w%d%s", io.vsd, io.offset,
                                            io.length, io.token, io.fua ? " fua" : "")
                          : absl::StrFormat("R vsd %d [%d, +%d)", io.vsd, io.offset, io.length));
    }
    if (with_flush) parts.push_back("Flush");
    Log(absl::StrCat("Burst: ", absl::StrJoin(parts, "; ")));

    std::vector<SectorRange> write_ranges;
    for (size_t i = 0; i < burst->ios.size(); ++i) {
      Io& io = burst->ios[i];
      VsdModel& v = vsds_.at(io.vsd);
      const uint64_t begin = io.offset / kSectorBytes, end = (io.offset + io.length) / kSectorBytes;
      if (io.is_write) {
        write_ranges.push_back(SectorRange{io.vsd, begin, end});
        io.before = Capture(v, begin, end);
        Issue(v, begin, end, io.token);
        pool_->Write(v.id, io.offset, io.length, io.buf->data() + io.misalign, io.fua,
                     [this, burst, i, begin, end](absl::Status st) {
                       if (burst->abandoned) return;
                       Io& io = burst->ios[i];
                       if (io.status.has_value()) {
                         io.status = absl::InternalError("callback ran twice");
                         return;
                       }
                       if (st.ok()) Complete(vsds_.at(io.vsd), begin, end, io.token, io.fua);
                       io.status = std::move(st);
                     });
      } else {
        pool_->Read(v.id, io.offset, io.length, io.buf->data() + io.misalign,
                    [burst, i, buf = io.buf](absl::Status st) {
                      if (burst->abandoned) return;
                      burst->ios[i].status = std::move(st);
                    });
      }
    }
    if (with_flush) {
      pool_->Flush([this, burst, write_ranges](absl::Status st) {
        if (burst->abandoned) return;
        // Only what completed before the flush was issued is covered by it: nothing of
        // this burst's writes.
        if (st.ok()) CollapseAll(write_ranges);
        burst->flush_status = std::move(st);
      });
    }
    auto all_done = [&] {
      for (const Io& io : burst->ios) {
        if (!io.status.has_value()) return false;
      }
      return !with_flush || burst->flush_status.has_value();
    };

    // Sometimes the power goes while the burst is in flight: for every disk, for some
    // disks only (a partial cut), or for one node that crashes while the pool carries on
    // (the burst must then complete on the other nodes' copies).
    if (config_.faults && fault_.kind == FaultKind::kNone && workload_.Bernoulli(0.1)) {
      const int64_t delay_ns = static_cast<int64_t>(workload_.Uniform(3 * kMillisecondNs));
      absl::Status st = RunLoop(all_done, delay_ns);
      if (!st.ok() && !absl::IsDeadlineExceeded(st)) {
        burst->abandoned = true;
        ExpectOk(st, "burst");
        return;
      }
      int completed = 0;
      for (const Io& io : burst->ios) completed += io.status.has_value();
      const uint64_t kind = workload_.Uniform(5);  // 0-2 all disks, 3 some, 4 one node
      if (kind == 4 && !NodeOutageCandidates().empty()) {
        Log(absl::StrFormat("  node crash %d us into the burst (%d of %d I/Os completed)",
                            delay_ns / 1000, completed, burst->ios.size()));
        StartNodeOutage(/*crash=*/true);
        if (stopped_) {
          burst->abandoned = true;
          return;
        }
      } else {
        burst->abandoned = true;
        Log(absl::StrFormat("  %s %d us into the burst (%d of %d I/Os completed)",
                            kind == 3 ? "partial power cut" : "power cut", delay_ns / 1000,
                            completed, burst->ios.size()));
        for (const Io& io : burst->ios) {
          if (io.status.has_value() && !io.status->ok()) {
            std::string state;
            // A write refused as full stays a candidate in the model (weaker, not wrong).
            if (io.is_write && absl::IsResourceExhausted(*io.status) &&
                MayBeFull(vsds_.at(io.vsd).replication, io.length, BurstSlotsBeside(*burst, io), &state)) {
              ++result_.full_refusals;
              continue;
            }
            ExpectOk(*io.status, absl::StrFormat("burst I/O on vsd %d [%d, +%d)", io.vsd,
                                                 io.offset, io.length));
            return;
          }
        }
        if (kind == 3) {
          PartialPowerCut("partial power cut during a burst");
        } else {
          PowerCut(RandomMode(), "power cut during a burst");
        }
        return;
      }
    }

    if (absl::Status st = RunLoop(all_done, kOpTimeoutNs); !st.ok()) {
      burst->abandoned = true;
      ExpectOk(st, "burst");
      return;
    }
    // Writes the pool refused as full: undone newest first (their `Before`s nest where
    // they share blocks), then the blocks of the writes that landed are mapped again.
    bool refused = false;
    for (size_t i = burst->ios.size(); i-- > 0;) {
      const Io& io = burst->ios[i];
      if (io.status->ok()) continue;
      if (!io.is_write || !absl::IsResourceExhausted(*io.status)) {
        ExpectOk(*io.status,
                 absl::StrFormat("burst %s vsd %d [%d, +%d)", io.is_write ? "Write" : "Read",
                                 io.vsd, io.offset, io.length));
        return;
      }
      refused = true;
      if (!Refused(vsds_.at(io.vsd), io.before, io.token, *io.status,
                   absl::StrFormat("burst Write vsd %d [%d, +%d)", io.vsd, io.offset,
                                   io.length),
                   BurstSlotsBeside(*burst, io))) {
        return;
      }
    }
    if (refused) {
      for (const Io& io : burst->ios) {
        if (!io.is_write || !io.status->ok()) continue;
        VsdModel& v = vsds_.at(io.vsd);
        for (uint64_t b = io.before.first_block;
             b < io.before.first_block + io.before.mapping.size(); ++b) {
          v.mapping[b] = Mapping::kMapped;
        }
      }
    }
    if (with_flush && !ExpectOk(*burst->flush_status, "burst Flush")) return;
    for (const Io& io : burst->ios) {
      if (io.is_write) continue;
      ++result_.reads_checked;
      const uint8_t* p = io.buf->data() + io.misalign;
      for (uint64_t i = 0; i < io.length / kSectorBytes; ++i) {
        const uint64_t s = io.offset / kSectorBytes + i;
        const uint64_t got = DecodeSector(p + i * kSectorBytes, s);
        if (got != io.expected[i]) {
          Violation(absl::StrFormat(
              "burst Read vsd %d [%d, +%d): sector %d holds %s, expected %s (concurrent "
              "writes elsewhere disturbed it)",
              io.vsd, io.offset, io.length, s, Describe(p + i * kSectorBytes, s),
              TokenName(io.expected[i])));
          return;
        }
      }
    }
  }

  bool RecordSnapshot(VsdModel& v, SnapshotId id, const std::string& name) {
    if (!id.valid() || snaps_.count(id.value)) {
      return Violation(absl::StrFormat("snapshot id %d is invalid or already in use", id.value));
    }
    SnapshotModel s;
    s.id = id;
    s.vsd = v.id;
    s.family = v.family;
    s.name = name;
    s.data = v.current;
    s.stamps = v.stamps;
    s.mapping = v.mapping;
    s.replication = v.replication;
    snaps_.emplace(id.value, std::move(s));
    v.snapshots.push_back(id.value);
    return true;
  }

  void OpSnapshot() {
    VsdModel* v = PickVsd();
    if (v->snapshots.size() >= kSnapshotsPerVsdMax) {
      OpDeleteSnapshot();
      return;
    }
    const std::string name = absl::StrCat("snap-", ++names_);
    Log(absl::StrFormat("CreateSnapshot vsd %d %s", v->id.value, name));
    auto id = AwaitValue<SnapshotId>(
        [&](Pool::Done<SnapshotId> done) { pool_->CreateSnapshot(v->id, name, done); });
    if (!id.ok()) {
      ExpectOk(id.status(), absl::StrFormat("CreateSnapshot vsd %d", v->id.value));
      return;
    }
    Log(absl::StrFormat("  -> snapshot %d", id->value));
    RecordSnapshot(*v, *id, name);
  }

  void OpGroupSnapshot() {
    if (vsds_.size() < 2) return;
    VsdModel* a = PickVsd();
    VsdModel* b = PickVsd();
    for (int i = 0; i < 8 && a == b; ++i) b = PickVsd();
    if (a == b || a->snapshots.size() >= kSnapshotsPerVsdMax ||
        b->snapshots.size() >= kSnapshotsPerVsdMax) {
      return;
    }
    const std::string name = absl::StrCat("group-", ++names_);
    Log(absl::StrFormat("CreateGroupSnapshot vsds %d,%d %s", a->id.value, b->id.value, name));
    auto ids = AwaitValue<std::vector<SnapshotId>>([&](Pool::Done<std::vector<SnapshotId>> done) {
      pool_->CreateGroupSnapshot({a->id, b->id}, name, done);
    });
    if (!ids.ok()) {
      ExpectOk(ids.status(), "CreateGroupSnapshot");
      return;
    }
    if (ids->size() != 2) {
      Violation(absl::StrFormat("CreateGroupSnapshot of 2 VSDs returned %d ids", ids->size()));
      return;
    }
    Log(absl::StrFormat("  -> snapshots %d,%d", (*ids)[0].value, (*ids)[1].value));
    if (!RecordSnapshot(*a, (*ids)[0], name)) return;
    if (!RecordSnapshot(*b, (*ids)[1], name)) return;
    for (int i = 0; i < 2; ++i) {
      const VsdId vsd = i == 0 ? a->id : b->id;
      bool found = false;
      for (const SnapshotInfo& s : pool_->ListSnapshots(vsd)) found = found || s.id == (*ids)[i];
      if (!found) {
        Violation(
            absl::StrFormat("group snapshot %d missing from ListSnapshots(%d) (ids must "
                            "be in the order of the VSDs)",
                            (*ids)[i].value, vsd.value));
        return;
      }
    }
  }

  void OpReadSnapshot() {
    SnapshotModel* s = PickSnapshot();
    if (s == nullptr) {
      OpSnapshot();
      return;
    }
    VsdModel probe;  // only for RandomRange's sizing
    probe.current.resize(s->data.size());
    auto [offset, length] = RandomRange(probe, kReadBytesMax);
    Log(absl::StrFormat("ReadSnapshot %d [%d, +%d)", s->id.value, offset, length));
    ReadSnapshotAndCheck(*s, offset, length, "read snapshot");
  }

  void AddClone(VsdId id, const std::string& name, uint64_t family, int replication,
                const std::vector<uint64_t>& contents, const std::vector<uint64_t>& stamps,
                const std::vector<Mapping>& mapping) {
    if (!id.valid() || vsds_.count(id.value)) {
      Violation(absl::StrFormat("clone id %d is invalid or already in use", id.value));
      return;
    }
    VsdModel v;
    v.id = id;
    v.name = name;
    v.replication = replication;
    v.family = family;
    v.current = contents;
    v.durable = contents;
    v.stamps = stamps;
    v.mapping = mapping;
    auto [it, inserted] = vsds_.emplace(id.value, std::move(v));
    CheckVsdInfo(it->second, "after clone");
  }

  void OpClone() {
    const std::string name = absl::StrCat("clone-", ++names_);
    SnapshotModel* s = PickSnapshot();
    if (s != nullptr && workload_.Bernoulli(0.6)) {
      Log(absl::StrFormat("CloneFromSnapshot %d -> %s", s->id.value, name));
      auto id = AwaitValue<VsdId>(
          [&](Pool::Done<VsdId> done) { pool_->CloneFromSnapshot(s->id, name, done); });
      if (!id.ok()) {
        ExpectOk(id.status(), absl::StrFormat("CloneFromSnapshot %d", s->id.value));
        return;
      }
      Log(absl::StrFormat("  -> vsd %d", id->value));
      AddClone(*id, name, s->family, vsds_.at(s->vsd.value).replication, s->data, s->stamps,
               s->mapping);
      return;
    }
    VsdModel* v = PickVsd();
    Log(absl::StrFormat("CloneVsd %d -> %s", v->id.value, name));
    auto id =
        AwaitValue<VsdId>([&](Pool::Done<VsdId> done) { pool_->CloneVsd(v->id, name, done); });
    if (!id.ok()) {
      ExpectOk(id.status(), absl::StrFormat("CloneVsd %d", v->id.value));
      return;
    }
    Log(absl::StrFormat("  -> vsd %d", id->value));
    AddClone(*id, name, v->family, v->replication, v->current, v->stamps, v->mapping);
  }

  void OpRevert() {
    VsdModel* v = PickVsd();
    if (v->snapshots.empty()) {
      OpSnapshot();
      return;
    }
    const SnapshotModel& s = snaps_.at(v->snapshots[workload_.Uniform(v->snapshots.size())]);
    Log(absl::StrFormat("RevertToSnapshot vsd %d to snapshot %d", v->id.value, s.id.value));
    absl::Status st =
        AwaitStatus([&](Pool::StatusDone done) { pool_->RevertToSnapshot(v->id, s.id, done); });
    if (!ExpectOk(
            st, absl::StrFormat("RevertToSnapshot vsd %d snapshot %d", v->id.value, s.id.value))) {
      return;
    }
    auto info = pool_->GetVsdInfo(v->id);
    if (!info.ok()) {
      ExpectOk(info.status(), "GetVsdInfo after revert");
      return;
    }
    // pool.h does not say whether a revert undoes a resize made since the snapshot; both
    // are accepted, and space beyond the snapshot reads as zeros (writes since are gone).
    const uint64_t snap_bytes = s.data.size() * kSectorBytes;
    if (info->size_bytes != snap_bytes && info->size_bytes != v->size_bytes()) {
      Violation(absl::StrFormat("after revert vsd %d has size %d; snapshot had %d, vsd had %d",
                                v->id.value, info->size_bytes, snap_bytes, v->size_bytes()));
      return;
    }
    v->current = s.data;
    v->stamps = s.stamps;
    v->mapping = s.mapping;
    v->Resize(info->size_bytes);
    v->durable = v->current;
    v->pending.clear();
  }

  void OpDeleteSnapshot() {
    SnapshotModel* s = PickSnapshot();
    if (s == nullptr) return;
    const SnapshotId id = s->id;
    const VsdId vsd = s->vsd;
    Log(absl::StrFormat("DeleteSnapshot %d (of vsd %d)", id.value, vsd.value));
    absl::Status st = AwaitStatus([&](Pool::StatusDone done) { pool_->DeleteSnapshot(id, done); });
    if (!ExpectOk(st, absl::StrFormat("DeleteSnapshot %d", id.value))) return;
    ForgetSnapshot(id.value);
  }

  void ForgetSnapshot(uint64_t id) {
    auto it = snaps_.find(id);
    if (it == snaps_.end()) return;
    if (VsdModel* v = FindModel(it->second.vsd)) {
      v->snapshots.erase(std::remove(v->snapshots.begin(), v->snapshots.end(), id),
                         v->snapshots.end());
    }
    snaps_.erase(it);
  }

  void OpDeleteVsd() {
    if (vsds_.size() < 2) return;
    VsdModel* v = PickVsd();
    const VsdId id = v->id;
    Log(absl::StrFormat("DeleteVsd %d (%d snapshots)", id.value, v->snapshots.size()));
    absl::Status st = AwaitStatus([&](Pool::StatusDone done) { pool_->DeleteVsd(id, done); });
    if (absl::IsFailedPrecondition(st) && !v->snapshots.empty()) {
      // pool.h does not say whether a VSD with snapshots may be deleted; refusing is
      // accepted, then the snapshots go first.
      Log("  refused (has snapshots): deleting them first");
      for (uint64_t snap : std::vector<uint64_t>(v->snapshots)) {
        absl::Status del = AwaitStatus(
            [&](Pool::StatusDone done) { pool_->DeleteSnapshot(SnapshotId{snap}, done); });
        if (!ExpectOk(del, absl::StrFormat("DeleteSnapshot %d", snap))) return;
        ForgetSnapshot(snap);
      }
      st = AwaitStatus([&](Pool::StatusDone done) { pool_->DeleteVsd(id, done); });
    }
    if (!ExpectOk(st, absl::StrFormat("DeleteVsd %d", id.value))) return;
    for (uint64_t snap : std::vector<uint64_t>(v->snapshots)) ForgetSnapshot(snap);
    vsds_.erase(id.value);
    auto info = pool_->GetVsdInfo(id);
    if (!absl::IsNotFound(info.status())) {
      Violation(absl::StrFormat("GetVsdInfo(%d) after DeleteVsd: %s, expected NOT_FOUND", id.value,
                                info.status().ToString()));
      return;
    }
    deleted_vsds_.push_back(id.value);
  }

  void OpResize() {
    VsdModel* v = PickVsd();
    if (v->size_bytes() >= kVsdBytesMax) return;
    const uint64_t grow =
        std::min(kVsdBytesMax - v->size_bytes(), 64 * kKiB * (1 + workload_.Uniform(64)));
    const uint64_t size = v->size_bytes() + grow;
    Log(absl::StrFormat("ResizeVsd %d %d -> %d", v->id.value, v->size_bytes(), size));
    absl::Status st =
        AwaitStatus([&](Pool::StatusDone done) { pool_->ResizeVsd(v->id, size, done); });
    if (!ExpectOk(st, absl::StrFormat("ResizeVsd %d to %d", v->id.value, size))) return;
    v->Resize(size);
    CheckVsdInfo(*v, "after resize");
  }

  void OpDiff() {
    if (snaps_.empty()) {
      OpSnapshot();
      return;
    }
    SnapshotModel* to = PickSnapshot();
    SnapshotModel* from = nullptr;
    if (workload_.Bernoulli(0.8)) {
      std::vector<SnapshotModel*> related;
      for (auto& [id, s] : snaps_) {
        if (s.family == to->family && id != to->id.value) related.push_back(&s);
      }
      if (!related.empty()) from = related[workload_.Uniform(related.size())];
    }
    const SnapshotId from_id = from ? from->id : SnapshotId{};
    Log(absl::StrFormat("Diff %d -> %d", from_id.value, to->id.value));
    const uint64_t from_logs_before = pool_->Stats().diffs_from_change_logs;
    auto extents = AwaitValue<std::vector<Extent>>(
        [&](Pool::Done<std::vector<Extent>> done) { pool_->Diff(from_id, to->id, done); });
    const bool from_logs = pool_->Stats().diffs_from_change_logs > from_logs_before;
    if (!extents.ok()) {
      ExpectOk(extents.status(), absl::StrFormat("Diff(%d, %d)", from_id.value, to->id.value));
      return;
    }
    static const std::vector<uint64_t> kEmpty;
    const std::vector<uint64_t>& a = from ? from->data : kEmpty;
    const std::vector<uint64_t>& b = to->data;
    const uint64_t sectors = std::max(a.size(), b.size());
    const uint64_t limit_bytes =
        (sectors * kSectorBytes + kBlockBytes - 1) / kBlockBytes * kBlockBytes;
    std::vector<bool> covered(sectors, false);
    uint64_t extent_bytes = 0;
    for (const Extent& e : *extents) {
      if (e.offset_bytes + e.length_bytes > limit_bytes ||
          e.offset_bytes + e.length_bytes < e.offset_bytes) {
        Violation(absl::StrFormat(
            "Diff(%d, %d) returned extent [%d, +%d) beyond the %d bytes "
            "of the larger snapshot",
            from_id.value, to->id.value, e.offset_bytes, e.length_bytes, sectors * kSectorBytes));
        return;
      }
      extent_bytes += e.length_bytes;
      const uint64_t first = e.offset_bytes / kSectorBytes;
      const uint64_t last = std::min<uint64_t>(
          sectors, (e.offset_bytes + e.length_bytes + kSectorBytes - 1) / kSectorBytes);
      for (uint64_t s = first; s < last; ++s) covered[s] = true;
    }
    uint64_t differing = 0;
    for (uint64_t s = 0; s < sectors; ++s) {
      const uint64_t ta = s < a.size() ? a[s] : 0;
      const uint64_t tb = s < b.size() ? b[s] : 0;
      if (ta == tb) continue;
      ++differing;
      if (!covered[s]) {
        Violation(absl::StrFormat(
            "Diff(%d, %d) misses sector %d (byte %d): %s in snapshot %d vs %s in snapshot %d "
            "(%d extents returned)",
            from_id.value, to->id.value, s, s * kSectorBytes, TokenName(ta), from_id.value,
            TokenName(tb), to->id.value, extents->size()));
        return;
      }
    }
    // Nor more than may differ: a reported block either differs in contents, or was
    // touched since the snapshots' histories diverged (a rewrite with equal bytes) and
    // is mapped in at least one of them.
    static const std::vector<uint64_t> kNoStamps;
    static const std::vector<Mapping> kNoMapping;
    const std::vector<uint64_t>& stamps_a = from ? from->stamps : kNoStamps;
    const std::vector<Mapping>& mapping_a = from ? from->mapping : kNoMapping;
    for (const Extent& e : *extents) {
      for (uint64_t blk = e.offset_bytes / kBlockBytes;
           blk * kBlockBytes < e.offset_bytes + e.length_bytes; ++blk) {
        bool contents_differ = false;
        for (uint64_t s = blk * kSectorsPerBlock; s < (blk + 1) * kSectorsPerBlock; ++s) {
          const uint64_t ta = s < a.size() ? a[s] : 0;
          const uint64_t tb = s < b.size() ? b[s] : 0;
          contents_differ = contents_differ || ta != tb;
        }
        if (contents_differ) continue;
        const uint64_t stamp_a = blk < stamps_a.size() ? stamps_a[blk] : 0;
        const uint64_t stamp_b = blk < to->stamps.size() ? to->stamps[blk] : 0;
        const Mapping map_a = blk < mapping_a.size() ? mapping_a[blk] : Mapping::kUnmapped;
        const Mapping map_b = blk < to->mapping.size() ? to->mapping[blk] : Mapping::kUnmapped;
        const char* why = nullptr;
        if (stamp_a == stamp_b) {
          why = "no write or discard touched it in either history since they diverged";
        } else if (map_a == Mapping::kUnmapped && map_b == Mapping::kUnmapped) {
          why = "it is unmapped in both";
        }
        if (why != nullptr) {
          Violation(absl::StrFormat(
              "Diff(%d, %d) reports block %d (byte %d), which cannot differ: same contents "
              "(%s at its first sector) and %s",
              from_id.value, to->id.value, blk, blk * kBlockBytes,
              TokenName(blk * kSectorsPerBlock < b.size() ? b[blk * kSectorsPerBlock] : 0),
              why));
          return;
        }
      }
    }
    ++result_.diffs_checked;
    result_.diffs_from_change_logs += from_logs;
    Log(absl::StrFormat("  %d extents, %d bytes, covering %d differing sectors (%s)",
                        extents->size(), extent_bytes, differing,
                        from_logs ? "from change logs" : "walked"));
  }

  // Requests the contract says must fail cleanly and change nothing.
  void OpBadRequest() {
    VsdModel* v = PickVsd();
    std::vector<uint8_t> buf(8 * kKiB, 0xab);
    auto expect = [&](const absl::Status& st, std::initializer_list<absl::StatusCode> codes,
                      const std::string& what) {
      for (absl::StatusCode c : codes) {
        if (st.code() == c) return true;
      }
      return Violation(absl::StrFormat("bad request %s returned %s", what, st.ToString()));
    };
    switch (workload_.Uniform(5)) {
      case 0: {
        const uint64_t offset = v->size_bytes() - kSectorBytes;
        Log(absl::StrFormat("bad: Read vsd %d across its end", v->id.value));
        expect(AwaitStatus([&](Pool::StatusDone done) {
                 pool_->Read(v->id, offset, 2 * kSectorBytes, buf.data(), done);
               }),
               {absl::StatusCode::kOutOfRange, absl::StatusCode::kInvalidArgument},
               "Read across the end");
        break;
      }
      case 1: {
        Log(absl::StrFormat("bad: Write vsd %d at a misaligned offset", v->id.value));
        expect(AwaitStatus([&](Pool::StatusDone done) {
                 pool_->Write(v->id, 100, kSectorBytes, buf.data(), false, done);
               }),
               {absl::StatusCode::kInvalidArgument}, "misaligned Write");
        break;
      }
      case 2: {
        uint64_t gone = deleted_vsds_.empty() ? 1ull << 60 : deleted_vsds_.back();
        if (vsds_.count(gone)) gone = 1ull << 60;  // the id was reused
        Log(absl::StrFormat("bad: Write to deleted/unknown vsd %d", gone));
        expect(AwaitStatus([&](Pool::StatusDone done) {
                 pool_->Write(VsdId{gone}, 0, kSectorBytes, buf.data(), false, done);
               }),
               {absl::StatusCode::kNotFound}, "Write to an unknown VSD");
        break;
      }
      case 3: {
        Log("bad: ReadSnapshot of an unknown snapshot");
        expect(AwaitStatus([&](Pool::StatusDone done) {
                 pool_->ReadSnapshot(SnapshotId{1ull << 60}, 0, kSectorBytes, buf.data(), done);
               }),
               {absl::StatusCode::kNotFound}, "ReadSnapshot of an unknown snapshot");
        break;
      }
      default: {
        VsdOptions options;
        options.name = v->name;  // taken
        options.size_bytes = kVsdBytesMin;
        Log(absl::StrFormat("bad: CreateVsd with the taken name %s", v->name));
        auto id =
            AwaitValue<VsdId>([&](Pool::Done<VsdId> done) { pool_->CreateVsd(options, done); });
        if (id.ok()) {
          Violation(absl::StrFormat("CreateVsd with the taken name %s succeeded (vsd %d)", v->name,
                                    id->value));
          return;
        }
        expect(id.status(), {absl::StatusCode::kAlreadyExists, absl::StatusCode::kInvalidArgument},
               "CreateVsd with a taken name");
        break;
      }
    }
  }

  // ---------------------------------------------------------------------------------
  // Faults

  PowerLossMode RandomMode() {
    switch (workload_.Uniform(3)) {
      case 0:
        return PowerLossMode::kDropAll;
      case 1:
        return PowerLossMode::kKeepAll;
      default:
        return PowerLossMode::kTear;
    }
  }

  void MaybeFault() {
    if (!config_.faults) return;
    if (fault_.kind != FaultKind::kNone) {
      if (--fault_.ops_left <= 0) {
        AdvanceFault();
      } else if (fault_.kind == FaultKind::kDiskFailure && fault_.disk_marked &&
                 workload_.Bernoulli(0.05)) {
        // The rebuild is interrupted by a power cut, of every disk or of some.
        if (workload_.Bernoulli(0.7)) {
          PowerCut(RandomMode(), "power cut during a rebuild");
        } else {
          PartialPowerCut("partial power cut during a rebuild");
        }
      }
      return;
    }
    if (!workload_.Bernoulli(kFaultProbability)) return;
    switch (workload_.Uniform(13)) {
      case 0:
      case 1:
      case 2:
        PowerCut(RandomMode(), "power cut");
        break;
      case 3:
        PartialPowerCut("partial power cut");
        break;
      case 4:
      case 5:
        StartDiskFailure();
        break;
      case 6:
      case 7:
        StartCorruption();
        break;
      case 8:
      case 9:
        StartIoErrors();
        break;
      case 10:
      case 11:
        StartNodeOutage(/*crash=*/false);
        break;
      default:
        StartNodeOutage(/*crash=*/true);
        break;
    }
  }

  // Disks that are healthy and reachable, as indices into disks_.
  std::vector<size_t> UsableDisks() const {
    std::vector<size_t> out;
    for (size_t i = 0; i < disks_.size(); ++i) {
      auto info = InfoOf(disks_[i].id);
      if (info && !info->failed && info->online && !disks_[i].disk->failed()) out.push_back(i);
    }
    return out;
  }

  void StartDiskFailure() {
    const size_t need = std::max<size_t>(MaxReplication(), std::min(config_.nodes, 3));
    std::vector<size_t> candidates;
    for (size_t i : UsableDisks()) {
      if (HealthyNodes(0, disks_[i].id.value).size() >= need &&
          CapacityAllows(0, disks_[i].id.value)) {
        candidates.push_back(i);
      }
    }
    if (candidates.empty()) return;
    fault_ = Fault{};
    fault_.kind = FaultKind::kDiskFailure;
    fault_.disk = candidates[workload_.Uniform(candidates.size())];
    fault_.ops_left = 1 + static_cast<int>(workload_.Uniform(6));
    ++result_.faults;
    ++result_.disk_failures;
    DiskSlot& d = disks_[fault_.disk];
    if (workload_.Bernoulli(0.4)) {
      // The disk dies silently: the pool meets EIO before anyone tells it.
      Log(absl::StrFormat("FAULT: disk %d (node %d) dies silently", d.id.value, d.spec.node.value));
      d.disk->SetFailed(true);
      return;
    }
    MarkDiskFailed();
  }

  void MarkDiskFailed() {
    DiskSlot& d = disks_[fault_.disk];
    Log(absl::StrFormat("FAULT: FailDisk %d (node %d)", d.id.value, d.spec.node.value));
    absl::Status st = AwaitStatus([&](Pool::StatusDone done) { pool_->FailDisk(d.id, done); });
    auto info = InfoOf(d.id);
    // The pool may have failed the disk itself after the EIO; saying so is fine.
    if (!st.ok() && !(info && info->failed)) {
      ExpectOk(st, absl::StrFormat("FailDisk %d", d.id.value));
      return;
    }
    if (!info || !info->failed) {
      Violation(
          absl::StrFormat("ListDisks does not show disk %d failed after FailDisk", d.id.value));
      return;
    }
    d.disk->SetFailed(true);  // dead for good: any I/O the pool still sends gets EIO
    fault_.disk_marked = true;
    fault_.ops_left = static_cast<int>(workload_.Uniform(6));
  }

  void StartCorruption() {
    std::vector<size_t> candidates = UsableDisks();
    if (candidates.empty()) return;
    const size_t i = candidates[workload_.Uniform(candidates.size())];
    // pool.h calls metadata_bytes "reserved at the start of every disk" but the engine
    // may keep more before its first chunk slot (a superblock); stay clear by a margin.
    const uint64_t meta = config_.pool_options.metadata_bytes + kMetadataMarginBytes;
    const uint64_t disk_bytes = disks_[i].disk->size_bytes();
    if (disk_bytes <= meta + kCorruptBytesMax) return;
    const uint64_t length = kBlockBytes * (1 + workload_.Uniform(kCorruptBytesMax / kBlockBytes));
    // Aim at data: a 4 KiB block that holds some write's contents (looked up on the
    // device directly, as only a simulator can). Random space would mostly hit unused
    // slots and prove nothing.
    // Now and then a metadata page instead (block-map nodes, chunk groups, change logs
    // live in pages on the same disks): opens read it from another copy, scrub repairs it.
    const bool page = workload_.Bernoulli(0.3);
    std::vector<uint64_t> targets = page ? MetadataPageBlocks(i, meta) : WrittenBlocks(i, meta);
    if (stopped_) return;
    uint64_t offset =
        targets.empty() ? meta + kBlockBytes * workload_.Uniform((disk_bytes - meta) / kBlockBytes)
                        : targets[workload_.Uniform(targets.size())];
    offset = std::min(offset, disk_bytes - length);
    offset -= offset % kBlockBytes;
    fault_ = Fault{};
    fault_.kind = FaultKind::kCorruption;
    fault_.disk = i;
    fault_.ops_left = 1 + static_cast<int>(workload_.Uniform(8));
    ++result_.faults;
    ++result_.corruptions;
    if (page) {
      // One page, one copy: the pool must open and scrub from the others.
      ++result_.page_corruptions;
    }
    Log(absl::StrFormat("FAULT: corrupt disk %d (node %d) [%d, +%d) (%d live %s seen)",
                        disks_[i].id.value, disks_[i].spec.node.value, offset, page ? kBlockBytes : length,
                        targets.size(), page ? "metadata pages" : "blocks"));
    // The copy is lost to the pool until it reads or scrubs it: the count of copies
    // waits for a scrub that repairs everything.
    corruption_outstanding_ = true;
    if (page) {
      disks_[i].disk->Corrupt(offset + 64, 16);
      if (!ResyncShadow(i, offset, kBlockBytes)) return;
      // Reopen now and then: the page is read at open, from a good copy.
      if (workload_.Bernoulli(0.5)) PowerCut(PowerLossMode::kKeepAll, "after a metadata page corruption");
      if (!stopped_ && workload_.Bernoulli(0.5)) ScrubAndCheck("scrub after a metadata page corruption");
      return;
    }
    disks_[i].disk->Corrupt(offset, length);
    if (!ResyncShadow(i, offset, length)) return;
    // Read one VSD through at once: the corrupted copy must be caught by its checksum.
    if (workload_.Bernoulli(0.5) && !vsds_.empty()) {
      VsdModel* v = PickVsd();
      Log(absl::StrFormat("Read all of vsd %d after corruption", v->id.value));
      for (uint64_t off = 0; off < v->size_bytes() && !stopped_; off += kVerifyReadBytes) {
        ReadAndCheck(*v, off, std::min(kVerifyReadBytes, v->size_bytes() - off),
                     "read after corruption");
      }
    }
    if (!stopped_ && workload_.Bernoulli(0.3)) ScrubAndCheck("scrub right after corruption");
  }

  // Offsets of the 4 KiB blocks past `from` on disk `i` whose first sector holds what
  // some live VSD or snapshot holds at that sector (freed blocks keep their old bytes;
  // they are skipped as far as the model can tell).
  std::vector<uint64_t> WrittenBlocks(size_t i, uint64_t from) {
    std::vector<std::pair<uint64_t, uint64_t>> live;  // (token, sector), sorted
    for (const auto& [id, v] : vsds_) {
      for (uint64_t s = 0; s < v.current.size(); s += kSectorsPerBlock) {
        if (v.current[s] != 0) live.push_back({v.current[s], s});
      }
    }
    for (const auto& [id, snap] : snaps_) {
      for (uint64_t s = 0; s < snap.data.size(); s += kSectorsPerBlock) {
        if (snap.data[s] != 0) live.push_back({snap.data[s], s});
      }
    }
    std::sort(live.begin(), live.end());
    return BlocksWhere(i, from, [&](const uint8_t* block) {
      uint64_t words[2];
      std::memcpy(words, block, sizeof(words));
      return words[0] != 0 && DecodeSector(block, words[1]) == words[0] &&
             std::binary_search(live.begin(), live.end(), std::make_pair(words[0], words[1]));
    });
  }

  // Offsets of the 4 KiB blocks past `from` on disk `i` whose contents satisfy `match`,
  // from what the simulated device holds (ShadowDisk; a block never written holds zeros
  // and is not offered).
  std::vector<uint64_t> BlocksWhere(size_t i, uint64_t from,
                                    const std::function<bool(const uint8_t*)>& match) {
    std::vector<uint64_t> out;
    const auto& pages = disks_[i].shadow->pages();
    for (auto it = pages.lower_bound(from / kBlockBytes); it != pages.end(); ++it) {
      if (match(it->second->data())) out.push_back(it->first * kBlockBytes);
    }
    return out;
  }

  // Reads [offset, +length) of disk `i` (4 KiB aligned) into its ShadowDisk's copy: after
  // a corruption, or a power cut, changed what the disk holds behind the pool's back. Runs
  // the loop; the pool's writes completing meanwhile are in either way (a read returns
  // what the disk holds when it completes).
  bool ResyncShadow(size_t i, uint64_t offset, uint64_t length) {
    const uint64_t first = offset / kBlockBytes;
    const uint64_t last = (offset + length + kBlockBytes - 1) / kBlockBytes;
    std::vector<uint64_t> pages;
    for (uint64_t p = first; p < last; ++p) pages.push_back(p);
    return ResyncPages(i, pages);
  }

  // `pages` ascending.
  bool ResyncPages(size_t i, const std::vector<uint64_t>& pages) {
    SimDisk* disk = disks_[i].disk.get();
    if (disk->failed()) return true;  // never read again
    AlignedBuffer buf(kVerifyReadBytes);
    for (size_t k = 0; k < pages.size();) {
      size_t n = 1;  // a run of consecutive pages, up to kVerifyReadBytes
      while (k + n < pages.size() && pages[k + n] == pages[k] + n &&
             (n + 1) * kBlockBytes <= kVerifyReadBytes) {
        ++n;
      }
      absl::Status st;
      // Injected errors left over from a transient-EIO fault fail a few reads.
      for (int attempt = 0; attempt <= kIoErrorsMax + 1; ++attempt) {
        st = AwaitDevice([&](BlockDevice::Callback done) {
          disk->Read(pages[k] * kBlockBytes, n * kBlockBytes, buf.data(), std::move(done));
        });
        if (st.ok()) break;
      }
      if (!ExpectOk(st, "reading a simulated disk directly")) return false;
      for (size_t j = 0; j < n; ++j) {
        disks_[i].shadow->SetPage(pages[k + j], buf.data() + j * kBlockBytes);
      }
      k += n;
    }
    return true;
  }

  // Offsets of the 4 KiB blocks past `from` on disk `i` that hold a metadata page (they
  // start with the page magic; a freed page may still be there, which is harmless).
  std::vector<uint64_t> MetadataPageBlocks(size_t i, uint64_t from) {
    return BlocksWhere(i, from, [](const uint8_t* block) { return std::memcmp(block, "PAGE", 4) == 0; });
  }

  bool ScrubAndCheck(const std::string& why) {
    auto report =
        AwaitValue<ScrubReport>([&](Pool::Done<ScrubReport> done) { pool_->Scrub(done); });
    if (!report.ok()) return ExpectOk(report.status(), why);
    Log(absl::StrFormat("%s: %d chunks %d blocks bad=%d repaired=%d lost=%d", why,
                        report->chunks_checked, report->blocks_checked, report->bad_copies,
                        report->repaired, report->unrecoverable));
    if (report->unrecoverable != 0 || report->repaired != report->bad_copies) {
      return Violation(absl::StrFormat(
          "%s: %d bad copies but only %d repaired, %d unrecoverable (one fault at a time "
          "always leaves a good copy)",
          why, report->bad_copies, report->repaired, report->unrecoverable));
    }
    scrub_bad_copies_ += report->bad_copies;
    corruption_outstanding_ = false;  // every bad copy found was repaired
    return true;
  }

  void StartIoErrors() {
    // The pool may answer EIO by failing the disk for good (pool.h leaves the policy
    // open), so only a disk whose loss the pool could absorb gets errors.
    const size_t need = std::max<size_t>(MaxReplication(), std::min(config_.nodes, 3));
    std::vector<size_t> candidates;
    for (size_t i : UsableDisks()) {
      if (HealthyNodes(0, disks_[i].id.value).size() >= need &&
          CapacityAllows(0, disks_[i].id.value)) {
        candidates.push_back(i);
      }
    }
    if (candidates.empty()) return;
    const size_t i = candidates[workload_.Uniform(candidates.size())];
    fault_ = Fault{};
    fault_.kind = FaultKind::kIoErrors;
    fault_.disk = i;
    fault_.io_errors = 1 + static_cast<int>(workload_.Uniform(kIoErrorsMax));
    fault_.ops_left = 2 + static_cast<int>(workload_.Uniform(5));
    ++result_.faults;
    Log(absl::StrFormat("FAULT: next %d I/Os to disk %d (node %d) fail with EIO", fault_.io_errors,
                        disks_[i].id.value, disks_[i].spec.node.value));
    disks_[i].disk->InjectIoErrors(0, disks_[i].disk->size_bytes(), fault_.io_errors);
  }

  // Nodes whose loss the other nodes can absorb.
  std::vector<uint64_t> NodeOutageCandidates() const {
    const size_t need = std::max<size_t>(MaxReplication(), 2);
    std::vector<uint64_t> candidates;
    for (uint64_t n : HealthyNodes()) {
      if (HealthyNodes(n).size() >= need) candidates.push_back(n);
    }
    return candidates;
  }

  // A node goes away while the pool runs on; it comes back after a few operations
  // (AdvanceFault), or is evicted first. With `crash` it went away because it crashed:
  // its disks lose their unsynced writes (SimDisk::PowerCut of its disks alone, I/O in
  // flight to them never completing), which the pool must not miss once the node is back
  // (pool.h: chunks "written on it since its last flush remember that its copies are
  // stale"); the simulator counts the copies when the pool says it is redundant again.
  void StartNodeOutage(bool crash) {
    std::vector<uint64_t> candidates = NodeOutageCandidates();
    if (candidates.empty()) return;
    fault_ = Fault{};
    fault_.kind = FaultKind::kNodeOutage;
    fault_.node = NodeId{candidates[workload_.Uniform(candidates.size())]};
    fault_.crash = crash;
    fault_.evict = workload_.Bernoulli(0.35) && CapacityAllows(fault_.node.value, 0);
    fault_.ops_left = 3 + static_cast<int>(workload_.Uniform(10));
    const PowerLossMode mode = crash ? RandomMode() : PowerLossMode::kKeepAll;
    ++result_.faults;
    ++(crash ? result_.node_crashes : result_.node_outages);
    Log(absl::StrFormat("FAULT: node %d %s%s", fault_.node.value,
                        crash ? absl::StrCat("crashes (its disks: ", ModeName(mode), ")")
                              : std::string("goes offline"),
                        fault_.evict ? " (will be evicted)" : ""));
    pool_->SetNodeOnline(fault_.node, false);
    if (crash) {
      // In the same turn of the loop: nothing completes on its disks in between.
      for (auto& d : disks_) {
        if (d.spec.node == fault_.node) d.disk->PowerCut(mode);
      }
    }
    for (const DiskInfo& d : pool_->ListDisks()) {
      if (d.node == fault_.node && d.online) {
        Violation(absl::StrFormat("disk %d still online after SetNodeOnline(%d, false)", d.id.value,
                                  fault_.node.value));
        return;
      }
    }
    if (crash) {
      // The pool keeps away from the node's disks (checked below), so reading what the
      // crash left on them races with nothing.
      for (size_t i = 0; i < disks_.size(); ++i) {
        if (disks_[i].spec.node != fault_.node) continue;
        if (!ResyncPages(i, disks_[i].shadow->TakeUnsyncedPages())) return;
      }
    }
    // I/O already in flight may land; after that, nothing may reach the node's disks.
    if (!Idle(kOfflineSettleNs, "settling after a node went offline")) return;
    fault_.offline_io_baseline = OfflineNodeIo();
  }

  uint64_t OfflineNodeIo() const {
    uint64_t n = 0;
    for (const auto& d : disks_) {
      if (d.spec.node == fault_.node) n += d.disk->ops_completed();
    }
    return n;
  }

  void AdvanceFault() {
    switch (fault_.kind) {
      case FaultKind::kNone:
        return;
      case FaultKind::kDiskFailure: {
        if (!fault_.disk_marked) {
          MarkDiskFailed();
          return;
        }
        if (!WaitRedundant(
                absl::StrFormat("rebuild after losing disk %d", disks_[fault_.disk].id.value))) {
          return;
        }
        if (workload_.Bernoulli(0.5)) ReplaceDisk(disks_[fault_.disk].spec.node);
        break;
      }
      case FaultKind::kCorruption: {
        // Latent corruption must be gone before another fault may take a copy away; a
        // second scrub proves the first really repaired (not just reported) it.
        if (!ScrubAndCheck("scrub after corruption")) return;
        auto again =
            AwaitValue<ScrubReport>([&](Pool::Done<ScrubReport> done) { pool_->Scrub(done); });
        if (!again.ok()) {
          ExpectOk(again.status(), "second scrub after corruption");
          return;
        }
        if (again->bad_copies != 0) {
          Violation(absl::StrFormat(
              "a scrub right after a scrub that reported every bad copy repaired still "
              "finds %d bad copies (%d unrecoverable): the repairs had not landed when the "
              "first scrub's callback ran",
              again->bad_copies, again->unrecoverable));
          return;
        }
        if (!WaitRedundant("after corruption")) return;
        break;
      }
      case FaultKind::kIoErrors: {
        // Use up whatever injected errors the pool did not meet, so none linger into the
        // next fault.
        DiskSlot& d = disks_[fault_.disk];
        AlignedBuffer buf(kBlockBytes);
        for (int i = 0; i < fault_.io_errors; ++i) {
          AwaitDevice([&](BlockDevice::Callback done) {
            d.disk->Read(0, kBlockBytes, buf.data(), done);
          }).IgnoreError();
        }
        if (!WaitRedundant("after transient EIO")) return;
        auto info = InfoOf(d.id);
        if (info && info->failed) {
          Log(absl::StrFormat("  the pool failed disk %d for good after the transient EIO",
                              d.id.value));
          if (workload_.Bernoulli(0.5)) ReplaceDisk(d.spec.node);
        }
        break;
      }
      case FaultKind::kNodeOutage: {
        const uint64_t io = OfflineNodeIo();
        if (io != fault_.offline_io_baseline) {
          Violation(absl::StrFormat("%d I/Os reached the disks of offline node %d",
                                    io - fault_.offline_io_baseline, fault_.node.value));
          return;
        }
        if (fault_.evict && !fault_.evicted) {
          Log(absl::StrFormat("EvictNode %d", fault_.node.value));
          absl::Status st =
              AwaitStatus([&](Pool::StatusDone done) { pool_->EvictNode(fault_.node, done); });
          if (!ExpectOk(st, absl::StrFormat("EvictNode %d", fault_.node.value))) return;
          if (!WaitRedundant(
                  absl::StrFormat("re-mirror after evicting node %d", fault_.node.value))) {
            return;
          }
          fault_.evicted = true;
          fault_.ops_left = 1 + static_cast<int>(workload_.Uniform(5));
          return;
        }
        Log(absl::StrFormat("node %d comes back online%s", fault_.node.value,
                            fault_.evicted ? " after eviction" : ""));
        pool_->SetNodeOnline(fault_.node, true);
        fault_.rejoined = true;
        if (!WaitRedundant(absl::StrFormat("node %d rejoined", fault_.node.value))) return;
        break;
      }
    }
    fault_ = Fault{};
    CheckFsck("after a fault ended");
  }

  void ReplaceDisk(NodeId node) {
    const size_t i = AddSimDisk(node, Tier::kHdd);
    Log(absl::StrFormat("AddDisk (replacement) on node %d", node.value));
    auto id =
        AwaitValue<DiskId>([&](Pool::Done<DiskId> done) { pool_->AddDisk(disks_[i].spec, done); });
    if (!id.ok()) {
      ExpectOk(id.status(), "AddDisk");
      return;
    }
    auto info = InfoOf(*id);
    if (!info || info->node != node || info->failed) {
      Violation(
          absl::StrFormat("AddDisk returned id %d that ListDisks does not show healthy on "
                          "node %d",
                          id->value, node.value));
      return;
    }
    disks_[i].id = *id;
  }

  // The pool stops at once and is opened again; disk i loses power with modes[i] meanwhile
  // (kKeepAll: it kept power, and its write cache survives).
  bool Restart(const std::vector<PowerLossMode>& modes, const std::string& why) {
    Log(why);
    for (size_t i = 0; i < disks_.size(); ++i) disks_[i].disk->PowerCut(modes[i]);
    CountPoolStats();
    pool_.reset();
    // What the disks hold now, for the count of copies: only what was unsynced can have
    // changed, and a disk that kept everything has nothing to read back.
    for (size_t i = 0; i < disks_.size(); ++i) {
      std::vector<uint64_t> pages = disks_[i].shadow->TakeUnsyncedPages();
      if (modes[i] != PowerLossMode::kKeepAll && !ResyncPages(i, pages)) return false;
    }
    auto pool = AwaitValue<std::unique_ptr<Pool>>(
        [&](Pool::Done<std::unique_ptr<Pool>> done) {
          Pool::Open(&loop_, &pool_random_, config_.pool_options, Specs(), done);
        },
        kOpenTimeoutNs);
    if (!pool.ok()) return ExpectOk(pool.status(), absl::StrCat("Pool::Open after ", why));
    InstallPool(std::move(pool).value());
    for (const auto& d : disks_) {
      auto info = InfoOf(d.id);
      if (!info || info->node != d.spec.node) {
        return Violation(absl::StrFormat("after Open disk %d (node %d) is missing from ListDisks",
                                         d.id.value, d.spec.node.value));
      }
      if (d.disk->failed() && !info->failed) {
        return Violation(
            absl::StrFormat("after Open disk %d is no longer marked failed", d.id.value));
      }
    }
    return CheckFsck(absl::StrCat("after Open (", why, ")")) &&
           CheckListsMatchModel(absl::StrCat("after Open (", why, ")"));
  }

  bool Restart(PowerLossMode mode, const std::string& why) {
    return Restart(std::vector<PowerLossMode>(disks_.size(), mode),
                   absl::StrFormat("%s (%s)", why, ModeName(mode)));
  }

  // Power cut of every disk, then Open, then: every sector one of its candidates, every
  // snapshot exact, and the model adopts what survived.
  void PowerCut(PowerLossMode mode, const std::string& why) {
    ++result_.faults;
    ++result_.power_cuts;
    PowerCutAndCheck(std::vector<PowerLossMode>(disks_.size(), mode),
                     absl::StrFormat("%s (%s)", why, ModeName(mode)));
  }

  // The pool restarts (its process crashed) while only some disks lose power: the disks of
  // one node, or a random subset; the others keep their write caches. Copies of one
  // chunk, and the journal's mirrors, then disagree about what was unsynced; the same
  // guarantees hold as after a power cut of every disk.
  void PartialPowerCut(const std::string& why) {
    std::vector<PowerLossMode> modes(disks_.size(), PowerLossMode::kKeepAll);
    const PowerLossMode mode =
        workload_.Bernoulli(0.5) ? PowerLossMode::kDropAll : PowerLossMode::kTear;
    std::vector<std::string> cut;
    if (workload_.Bernoulli(0.5)) {
      const NodeId node = disks_[workload_.Uniform(disks_.size())].spec.node;
      for (size_t i = 0; i < disks_.size(); ++i) {
        if (disks_[i].spec.node == node) modes[i] = mode;
      }
    } else {
      for (size_t i = 0; i < disks_.size(); ++i) {
        if (workload_.Bernoulli(0.5)) modes[i] = mode;
      }
      modes[workload_.Uniform(disks_.size())] = mode;  // at least one
      modes[workload_.Uniform(disks_.size())] = PowerLossMode::kKeepAll;  // not every one
    }
    for (size_t i = 0; i < disks_.size(); ++i) {
      if (modes[i] != PowerLossMode::kKeepAll) cut.push_back(absl::StrCat(disks_[i].id.value));
    }
    ++result_.faults;
    ++result_.partial_power_cuts;
    PowerCutAndCheck(modes, absl::StrFormat("%s: disks {%s} lose power (%s), the others keep "
                                            "their caches",
                                            why, absl::StrJoin(cut, ","), ModeName(mode)));
  }

  void PowerCutAndCheck(const std::vector<PowerLossMode>& modes, const std::string& why) {
    if (!Restart(modes, why)) return;
    uint64_t rolled_back = 0;  // sectors that came back as an earlier candidate
    for (auto& [id, v] : vsds_) {
      if (!CheckVsdInfo(v, "after power cut")) return;
      for (uint64_t off = 0; off < v.size_bytes(); off += kVerifyReadBytes) {
        const uint64_t length = std::min(kVerifyReadBytes, v.size_bytes() - off);
        size_t misalign;
        auto buf = ReadRaw(v.id, SnapshotId{}, off, length, &misalign);
        if (!buf.ok()) {
          ExpectOk(buf.status(), absl::StrFormat("after power cut: Read vsd %d [%d, +%d)",
                                                 v.id.value, off, length));
          return;
        }
        const uint8_t* p = (*buf)->data() + misalign;
        for (uint64_t i = 0; i < length / kSectorBytes; ++i) {
          const uint64_t s = off / kSectorBytes + i;
          const uint64_t got = DecodeSector(p + i * kSectorBytes, s);
          if (!IsCandidate(v, s, got)) {
            Violation(absl::StrFormat(
                "after %s: vsd %d sector %d (byte %d) holds %s; the only legal "
                "contents are %s",
                why, v.id.value, s, s * kSectorBytes, Describe(p + i * kSectorBytes, s),
                Candidates(v, s)));
            return;
          }
          if (got != v.current[s]) ++rolled_back;
          v.current[s] = got;
        }
      }
      // A block with writes in doubt is mapped if it holds anything but zeros; a zero
      // one may be either (discarded, or a write of it lost).
      for (const auto& [s, tokens] : v.pending) {
        const uint64_t b = s / kSectorsPerBlock;
        bool nonzero = false;
        for (uint64_t i = b * kSectorsPerBlock; i < (b + 1) * kSectorsPerBlock; ++i) {
          nonzero = nonzero || v.current[i] != 0;
        }
        v.mapping[b] = nonzero ? Mapping::kMapped : Mapping::kUnknown;
      }
      v.durable = v.current;
      v.pending.clear();
    }
    for (auto& [id, s] : snaps_) {
      const uint64_t size = s.data.size() * kSectorBytes;
      for (uint64_t off = 0; off < size; off += kVerifyReadBytes) {
        if (!ReadSnapshotAndCheck(s, off, std::min(kVerifyReadBytes, size - off),
                                  "after power cut")) {
          return;
        }
      }
    }
    Log(absl::StrFormat(
        "  after power cut: %d vsds within their candidates (%d sectors rolled back to an "
        "earlier one), %d snapshots exact",
        vsds_.size(), rolled_back, snaps_.size()));
    WaitRedundant("after power cut");
  }

  const PoolSimConfig config_;
  const bool fill_;  // a fill seed (IsFillSeed)
  SeededRandom workload_;     // the workload's and the fault schedule's choices
  SeededRandom env_random_;   // disk latencies, torn writes, corruption bytes
  SeededRandom pool_random_;  // handed to the pool
  SimLoop loop_;
  std::vector<DiskSlot> disks_;
  std::unique_ptr<Pool> pool_;

  std::map<uint64_t, VsdModel> vsds_;
  std::map<uint64_t, SnapshotModel> snaps_;
  std::vector<uint64_t> deleted_vsds_;
  std::map<uint64_t, uint64_t> token_op_;  // token -> op that wrote it
  uint64_t next_token_ = 1;
  uint64_t next_stamp_ = 1;
  uint64_t names_ = 0;
  Fault fault_;
  absl::flat_hash_map<BlockContents, uint64_t> fingerprints_;  // ExpectedFingerprint
  // A copy was corrupted and no scrub has repaired everything since.
  bool corruption_outstanding_ = false;
  uint64_t scrub_bad_copies_ = 0;
  // Fill seeds: operations left in which the workload frees space after a refusal, and
  // the operation of the last read-back of everything after one.
  int drain_ops_ = 0;
  uint64_t last_full_verify_op_ = 0;

  uint64_t op_ = 0;
  bool stopped_ = false;
  std::deque<std::string> log_;
  PoolSimResult result_;
};

}  // namespace

bool IsFillSeed(const PoolSimConfig& config) { return PoolSim::IsFillSeed(config); }

PoolSimResult RunPoolSim(const PoolSimConfig& config) {
  PoolSim sim(config);
  return sim.Run();
}

}  // namespace scribe
