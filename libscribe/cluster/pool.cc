// The Pool implementation: placement, the replicated redirect-on-write data path,
// snapshots and clones over BlockMap, the mirrored metadata journal with checkpoints,
// recovery, self-healing and scrub. See scribe/pool.h for the contract and
// docs/ARCHITECTURE.md for the design.
#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "libscribe/chunk/crc32c.h"
#include "libscribe/cluster/codec.h"
#include "libscribe/cluster/meta_pages.h"
#include "libscribe/cluster/pool_internal.h"
#include "scribe/pool.h"
#include "scribe/status.h"

namespace scribe {
namespace {

// Format 2: paged copy-on-write metadata. Format 1 ("SCRB") kept the whole state in
// the journal region; such disks are refused with a message (no upgrade path).
constexpr uint32_t kSuperMagic = 0x32524353;    // "SCR2"
constexpr uint32_t kSuperMagicV1 = 0x42524353;  // "SCRB"
constexpr uint32_t kBatchMagic = 0x4c4e524a;  // "JRNL"
constexpr uint32_t kBatchHeaderBytes = 64;
constexpr uint32_t kFlagCheckpointBegin = 1;
constexpr uint32_t kFlagCheckpointEnd = 2;
// A checkpoint's root is written in batches of at most this many payload bytes.
constexpr size_t kCheckpointBatchBytes = 1 << 20;
// Page reads (runs of pages, or single pages) in flight while a pool opens.
constexpr size_t kPageReadsInFlight = 16;
// A change log may always hold this many extents, however small its VSD.
constexpr uint64_t kChangeLogExtentsMin = 16;

uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Blocks (chunk, block) whose freeing awaits the commit that makes it durable.
using BlockFrees = std::deque<std::pair<uint64_t, uint32_t>>;

// Counts down parallel sub-operations and reports the first error once all finish.
struct Gather {
  int remaining = 0;
  absl::Status first_error;
  std::function<void(absl::Status)> done;
  void Finish(const absl::Status& st) {
    if (!st.ok() && first_error.ok()) first_error = st;
    if (--remaining == 0) done(first_error);
  }
};

std::shared_ptr<Gather> MakeGather(int n, std::function<void(absl::Status)> done) {
  auto g = std::make_shared<Gather>();
  g->remaining = n;
  g->done = std::move(done);
  return g;
}

struct Superblock {
  uint64_t pool_uuid = 0;
  DiskId disk;
  NodeId node;
  Tier tier = Tier::kHdd;
  uint64_t metadata_bytes = 0;
};

std::string EncodeSuperblock(const Superblock& sb) {
  Encoder e;
  e.U32(kSuperMagic);
  e.U64(sb.pool_uuid);
  e.U64(sb.disk.value);
  e.U64(sb.node.value);
  e.U8(static_cast<uint8_t>(sb.tier));
  e.U64(sb.metadata_bytes);
  e.U32(Crc32c(e.out().data(), e.out().size()));
  return e.out();
}

bool DecodeSuperblock(const uint8_t* p, Superblock* sb) {
  Decoder d(reinterpret_cast<const char*>(p), kSuperblockBytes);
  if (d.U32() != kSuperMagic) return false;
  sb->pool_uuid = d.U64();
  sb->disk.value = d.U64();
  sb->node.value = d.U64();
  sb->tier = static_cast<Tier>(d.U8());
  sb->metadata_bytes = d.U64();
  const size_t covered = 4 + 8 + 8 + 8 + 1 + 8;
  const uint32_t crc = d.U32();
  return d.ok() && crc == Crc32c(p, covered);
}

class PoolImpl;

class Refs : public BlockRefs {
 public:
  explicit Refs(PoolImpl* pool) : pool_(pool) {}
  void Ref(const MapEntry& e) override;
  void Unref(const MapEntry& e) override;
  void PageDropped(const MapEntry& page) override;
  void NodeDirtied() override;
  void EvictedLeafDropped(const MapEntry& page) override;
  LeafCache* leaf_cache() override;

 private:
  PoolImpl* pool_;
};

class PoolImpl : public Pool {
 public:
  friend class Refs;
  // A map, looked up again whenever it is used after a wait (null: gone).
  using MapRef = std::function<const BlockMap*()>;

  PoolImpl(Loop* loop, Random* random, PoolOptions options)
      : loop_(loop), random_(random), options_(options), refs_(this) {
    half_bytes_ = options_.metadata_bytes / 2 / kBlockBytes * kBlockBytes;
  }

  ~PoolImpl() override {
    *alive_ = false;
    // Trees unreference blocks as they go; drop them while chunks still exist.
    snapshots_.clear();
    vsds_.clear();
    doomed_.clear();
  }

  // ---------------------------------------------------------------- creation
  void Format(std::vector<DiskSpec> disks, Done<std::unique_ptr<Pool>> done,
              std::unique_ptr<Pool> self) {
    pool_uuid_ = random_->Next64() | 1;
    for (const DiskSpec& spec : disks) {
      absl::Status st = CheckDiskSpec(spec);
      if (!st.ok()) return loop_->Post([done, st] { done(st); });
    }
    auto holder = std::make_shared<std::unique_ptr<Pool>>(std::move(self));
    auto g = MakeGather(static_cast<int>(disks.size()) + 1, [this, holder, done](absl::Status st) {
      if (!st.ok()) return done(st);
      ChooseMirrors();
      Commit([holder, done](absl::Status st) {
        if (!st.ok()) return done(st);
        done(std::move(*holder));
      });
    });
    for (const DiskSpec& spec : disks) {
      AddDiskInternal(spec, [g](absl::StatusOr<DiskId> r) { g->Finish(r.status()); });
    }
    g->Finish(absl::OkStatus());
  }

  absl::Status CheckDiskSpec(const DiskSpec& spec) {
    if (spec.device == nullptr) return absl::InvalidArgumentError("disk has no device");
    if (!spec.node.valid()) return absl::InvalidArgumentError("disk has no node id");
    const uint64_t data_start = RoundUp(kSuperblockBytes + options_.metadata_bytes, kBlockBytes);
    if (spec.device->size_bytes() < data_start + kChunkBytes) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "a %d-byte disk is too small: metadata needs %d bytes plus at least one 1 MiB chunk",
          spec.device->size_bytes(), data_start));
    }
    for (const auto& [id, d] : disks_) {
      if (d.dev == spec.device) return absl::AlreadyExistsError("disk is already in the pool");
    }
    return absl::OkStatus();
  }

  void AddDiskInternal(const DiskSpec& spec, Done<DiskId> done) {
    const DiskId id{next_disk_++};
    Superblock sb{pool_uuid_, id, spec.node, spec.tier, options_.metadata_bytes};
    auto buf = std::make_shared<AlignedBuffer>(kSuperblockBytes);
    std::string enc = EncodeSuperblock(sb);
    std::memcpy(buf->data(), enc.data(), enc.size());
    BlockDevice* dev = spec.device;
    auto alive = alive_;
    auto finish = [=, this](absl::Status st) {
      if (!*alive) return;
      if (!st.ok()) return done(st);
      Encoder e;
      e.U8(kRecAddDisk);
      e.U64(id.value);
      e.U64(spec.node.value);
      e.U8(static_cast<uint8_t>(spec.tier));
      e.U64(dev->size_bytes());
      Mutate(e.out());
      disks_[id].dev = dev;
      done(id);
    };
    // Zero the whole metadata region: an older pool's journal must not be replayed,
    // and later journal writes then overwrite allocated space, which keeps their
    // flushes cheap on files. Then the superblock, then a flush.
    ZeroRange(dev, kSuperblockBytes, 2 * half_bytes_, [=, this](absl::Status st) {
      if (!*alive) return;
      if (!st.ok()) return finish(st);
      dev->Write(0, kSuperblockBytes, buf->data(), Timed([=, this](absl::Status st) {
        (void)buf;  // the device reads it until it completes
        if (!*alive) return;
        if (!st.ok()) return finish(st);
        dev->Flush(Timed([=](absl::Status st) { finish(st); }));
      }));
    });
  }

  void ZeroRange(BlockDevice* dev, uint64_t offset, uint64_t length, StatusDone done,
                 std::shared_ptr<AlignedBuffer> zeros = nullptr) {
    constexpr uint64_t kPieceBytes = 4 << 20;
    if (length == 0) return done(absl::OkStatus());
    if (!zeros) zeros = std::make_shared<AlignedBuffer>(kPieceBytes);
    const uint64_t n = std::min(length, kPieceBytes);
    auto alive = alive_;
    dev->Write(offset, n, zeros->data(), Timed([=, this](absl::Status st) {
      if (!*alive) return;
      if (!st.ok()) return done(st);
      ZeroRange(dev, offset + n, length - n, done, zeros);
    }));
  }

  // Wraps a device callback so it runs exactly once: on completion, or with UNAVAILABLE
  // after `io_timeout_ns` when the disk (or, later, its node) stops answering. The
  // original callback, and the buffers it holds, live until the device really finishes.
  //
  // Every deadline is "issued + io_timeout_ns", so deadlines follow issue order: the
  // I/Os wait in one FIFO with one loop timer for its front, instead of a timer each
  // (setting and cancelling a timer per I/O showed in profiles).
  struct TimedIo {
    bool fired = false;
    int64_t deadline_ns = 0;
    BlockDevice::Callback cb;
  };

  BlockDevice::Callback Timed(BlockDevice::Callback cb) {
    auto io = std::make_shared<TimedIo>();
    io->cb = std::move(cb);
    io->deadline_ns = loop_->NowNanos() + options_.io_timeout_ns;
    timed_.push_back(io);
    if (!timed_armed_) ArmTimedIo();
    auto alive = alive_;
    return [this, io, alive](absl::Status st) {
      if (io->fired) {
        io->cb = nullptr;
        return;
      }
      io->fired = true;
      BlockDevice::Callback cb = std::move(io->cb);
      if (*alive) {
        while (!timed_.empty() && timed_.front()->fired) timed_.pop_front();
      }
      cb(st);
    };
  }

  void ArmTimedIo() {
    timed_armed_ = true;
    const int64_t wait = std::max<int64_t>(0, timed_.front()->deadline_ns - loop_->NowNanos());
    auto alive = alive_;
    loop_->RunAfter(wait, [this, alive] {
      if (!*alive) return;
      timed_armed_ = false;
      const int64_t now = loop_->NowNanos();
      while (!timed_.empty() && (timed_.front()->fired || timed_.front()->deadline_ns <= now)) {
        std::shared_ptr<TimedIo> io = std::move(timed_.front());
        timed_.pop_front();
        if (io->fired) continue;
        io->fired = true;
        BlockDevice::Callback copy = io->cb;  // the device still holds the original
        copy(absl::UnavailableError("I/O timed out: the disk stopped answering"));
        if (!*alive) return;
      }
      if (!timed_.empty() && !timed_armed_) ArmTimedIo();
    });
  }

  // ---------------------------------------------------------------- records
  // Applies a record to memory and queues it for the journal.
  void Mutate(const std::string& rec) {
    Decoder d(rec.data(), rec.size());
    Apply(d);
    SCRIBE_CHECK(d.ok() && d.done());
    pending_records_.append(rec);
    // Bound what a crash can lose and what one batch holds: commit in the background
    // once enough metadata is pending, even if nobody flushes; and bound the pages the
    // next checkpoint writes (and the space it needs) by checkpointing once enough
    // nodes changed.
    if ((pending_records_.size() > kPendingRecordBytesMax ||
         dirty_nodes_ >= options_.checkpoint_dirty_pages_max) &&
        !committing_) {
      Commit([](absl::Status) {});
    }
  }

  DiskState* FindDisk(DiskId id) {
    auto it = disks_.find(id);
    return it == disks_.end() ? nullptr : &it->second;
  }
  ChunkState* FindChunk(uint64_t id) {
    auto it = chunk_index_.find(id);
    return it == chunk_index_.end() ? nullptr : it->second;
  }
  const ChunkState* FindChunk(uint64_t id) const {
    auto it = chunk_index_.find(id);
    return it == chunk_index_.end() ? nullptr : it->second;
  }
  VsdState* FindVsdState(VsdId id) {
    auto it = vsds_.find(id);
    return it == vsds_.end() ? nullptr : it->second.get();
  }
  const VsdState* FindVsdState(VsdId id) const {
    auto it = vsds_.find(id);
    return it == vsds_.end() ? nullptr : it->second.get();
  }
  SnapshotState* FindSnapshot(SnapshotId id) {
    auto it = snapshots_.find(id);
    return it == snapshots_.end() ? nullptr : it->second.get();
  }

  void Apply(Decoder& d) {
    const uint8_t type = d.U8();
    switch (type) {
      case kRecCounters: {
        next_disk_ = std::max(next_disk_, d.U64());
        next_chunk_ = std::max(next_chunk_, d.U64());
        next_vsd_ = std::max(next_vsd_, d.U64());
        next_snapshot_ = std::max(next_snapshot_, d.U64());
        break;
      }
      case kRecAddDisk: {
        DiskId id{d.U64()};
        DiskState& disk = disks_[id];
        disk.id = id;
        disk.node.value = d.U64();
        disk.tier = static_cast<Tier>(d.U8());
        const uint64_t size = d.U64();
        disk.data_start = RoundUp(kSuperblockBytes + options_.metadata_bytes, kBlockBytes);
        disk.slots = (size - disk.data_start) / kChunkBytes;
        disk.slot_owner.assign(disk.slots, 0);
        next_disk_ = std::max(next_disk_, id.value + 1);
        nodes_online_.try_emplace(disk.node, true);
        break;
      }
      case kRecFailDisk: {
        DiskState* disk = FindDisk(DiskId{d.U64()});
        const bool evicted = d.U8() != 0;
        if (disk) {
          disk->failed = true;
          disk->evicted = evicted;
        }
        break;
      }
      case kRecResetDisk: {
        DiskState* disk = FindDisk(DiskId{d.U64()});
        if (disk) {
          disk->failed = disk->evicted = false;
          disk->slot_owner.assign(disk->slots, 0);
          disk->used_slots = 0;
        }
        break;
      }
      case kRecAddChunk: {
        ChunkState c;
        c.id = d.U64();
        c.replication = d.U8();
        c.meta = (d.U8() & kChunkMeta) != 0;
        const uint32_t n = d.U32();
        for (uint32_t i = 0; i < n && d.ok(); ++i) {
          Replica r;
          r.disk.value = d.U64();
          r.slot = d.U64();
          r.stale = d.U8() != 0;
          c.replicas.push_back(r);
        }
        if (d.ok()) InsertChunk(std::move(c));
        break;
      }
      case kRecFreeChunk: {
        const uint64_t id = d.U64();
        ChunkState* c = FindChunk(id);
        if (c) {
          ChunkRecordChanged(*c);
          for (const Replica& r : c->replicas) ReleaseSlot(r.disk, r.slot, id);
          if (c->meta) meta_chunks_.erase(id);
          chunk_index_.erase(id);
          chunks_.erase(id);
        }
        break;
      }
      case kRecSetReplica: {
        ChunkState* c = FindChunk(d.U64());
        const uint32_t index = d.U32();
        Replica r;
        r.disk.value = d.U64();
        r.slot = d.U64();
        if (!c) break;
        ChunkRecordChanged(*c);
        if (index < c->replicas.size()) {
          ReleaseSlot(c->replicas[index].disk, c->replicas[index].slot, c->id);
          c->replicas[index] = r;
        } else {
          c->replicas.push_back(r);
        }
        ClaimSlot(r.disk, r.slot, c->id);
        break;
      }
      case kRecStale: {
        ChunkState* c = FindChunk(d.U64());
        const DiskId disk{d.U64()};
        const bool stale = d.U8() != 0;
        if (c) {
          ChunkRecordChanged(*c);
          for (Replica& r : c->replicas) {
            if (r.disk == disk) r.stale = stale;
          }
        }
        break;
      }
      case kRecCreateVsd: {
        auto v = DecodeVsdHeader(d);
        v->map = BlockMap(&refs_, v->size_bytes / kBlockBytes);
        InsertVsd(std::move(v));
        break;
      }
      case kRecDeleteVsd: {
        VsdState* v = FindVsdState(VsdId{d.U64()});
        if (!v) break;
        // Writes queued behind block locks find the VSD gone and report NOT_FOUND.
        for (LockWaiter& w : v->waiters) loop_->Post(std::move(w.fn));
        v->waiters.clear();
        // Its own interval goes with it; clones based on its snapshots are rebased.
        StartInterval(v, SnapshotId{});
        UnlinkSnapshots(std::set<SnapshotId>(v->snapshots.begin(), v->snapshots.end()));
        for (SnapshotId s : v->snapshots) {
          if (SnapshotState* doomed = FindSnapshot(s)) {
            DropLogPages(&doomed->log_pages);
            Retire(&doomed->map);
          }
          snapshots_.erase(s);
        }
        DropLogPages(&v->log_pages);
        Retire(&v->map);
        CloseOpenChunk(v);
        vsd_by_name_.erase(v->name);
        vsds_.erase(v->id);
        break;
      }
      case kRecResizeVsd: {
        VsdState* v = FindVsdState(VsdId{d.U64()});
        const uint64_t size = d.U64();
        if (v) {
          v->size_bytes = size;
          v->map.Grow(size / kBlockBytes);
        }
        break;
      }
      case kRecMap: {
        // A run: `count` consecutive logical blocks onto consecutive blocks of a chunk.
        VsdState* v = FindVsdState(VsdId{d.U64()});
        const uint64_t lba = d.U64();
        MapEntry e;
        e.chunk = d.U64();
        const uint32_t first = d.U32();
        const uint32_t count = d.U32();
        ChunkState* c = FindChunk(e.chunk);
        if (count > kBlocksPerChunk || first > kBlocksPerChunk - count) {
          d.Raw(nullptr, SIZE_MAX);  // malformed: fail the batch
          break;
        }
        for (uint32_t i = 0; i < count && d.ok(); ++i) {
          e.block = first + i;
          e.crc = d.U32();
          if (c) c->crc[e.block] = e.crc;
          if (v && lba + i < v->map.capacity_blocks()) v->map.Set(lba + i, e);
        }
        if (v && d.ok()) LogChange(v, lba, lba + count);
        break;
      }
      case kRecUnmap: {
        VsdState* v = FindVsdState(VsdId{d.U64()});
        const uint64_t lba = d.U64();
        const uint64_t count = d.U64();
        if (v) {
          for (uint64_t i = lba; i < lba + count && i < v->map.capacity_blocks(); ++i) {
            v->map.Clear(i);
          }
          LogChange(v, lba, lba + std::min(count, UINT64_MAX - lba));
        }
        break;
      }
      case kRecSnapshot: {
        auto s = DecodeSnapshotHeader(d);
        VsdState* v = FindVsdState(s->vsd);
        next_snapshot_ = std::max(next_snapshot_, s->id.value + 1);
        if (!v) break;
        s->size_bytes = v->size_bytes;
        s->map = v->map;
        // The live interval ends here and a new one starts at this snapshot.
        s->base = v->base;
        s->changes = std::move(v->changes);
        StartInterval(v, s->id);
        InsertSnapshot(std::move(s));
        break;
      }
      case kRecDeleteSnapshot: {
        SnapshotState* s = FindSnapshot(SnapshotId{d.U64()});
        if (!s) break;
        if (VsdState* v = FindVsdState(s->vsd)) {
          std::erase(v->snapshots, s->id);
        }
        UnlinkSnapshots({s->id});
        DropLogPages(&s->log_pages);
        Retire(&s->map);
        snapshots_.erase(s->id);
        break;
      }
      case kRecClone: {
        auto v = std::make_unique<VsdState>();
        v->id.value = d.U64();
        v->name = d.Str();
        const bool from_snapshot = d.U8() != 0;
        const uint64_t source = d.U64();
        next_vsd_ = std::max(next_vsd_, v->id.value + 1);
        if (from_snapshot) {
          SnapshotState* s = FindSnapshot(SnapshotId{source});
          VsdState* parent = s ? FindVsdState(s->vsd) : nullptr;
          if (!s) break;
          v->size_bytes = s->size_bytes;
          v->map = s->map;
          v->replication = parent ? parent->replication : 2;
          v->flash_priority = parent ? parent->flash_priority : 4;
          StartInterval(v.get(), s->id);
        } else {
          // No interval: logging it would mean copying the source's log (not O(1)).
          VsdState* src = FindVsdState(VsdId{source});
          if (!src) break;
          v->size_bytes = src->size_bytes;
          v->map = src->map;
          v->replication = src->replication;
          v->flash_priority = src->flash_priority;
        }
        InsertVsd(std::move(v));
        break;
      }
      case kRecRevert: {
        VsdState* v = FindVsdState(VsdId{d.U64()});
        SnapshotState* s = FindSnapshot(SnapshotId{d.U64()});
        if (v && s) {
          Retire(&v->map);
          v->map = s->map;
          v->size_bytes = s->size_bytes;
          StartInterval(v, s->id);
        }
        break;
      }
      case kRecDropReplica: {
        ChunkState* c = FindChunk(d.U64());
        const uint32_t index = d.U32();
        if (!c || index >= c->replicas.size()) break;
        ChunkRecordChanged(*c);
        ReleaseSlot(c->replicas[index].disk, c->replicas[index].slot, c->id);
        c->replicas.erase(c->replicas.begin() + index);
        break;
      }
      case kRecCkptChunkGroup: {
        const uint64_t group = d.U64();
        MapEntry page;
        page.chunk = d.U64();
        page.block = d.U32();
        page.crc = d.U32();
        if (d.ok()) group_pages_[group] = page;
        break;
      }
      case kRecCkptVsd: {
        auto v = DecodeVsdHeader(d);
        const int levels = d.U8();
        const MapEntry root = DecodePagePointer(d);
        v->map = BlockMap(&refs_, v->size_bytes / kBlockBytes);
        load_roots_.push_back(LoadRoot{false, v->id.value, levels, root});
        InsertVsd(std::move(v));
        break;
      }
      case kRecCkptSnapshot: {
        auto s = DecodeSnapshotHeader(d);
        s->size_bytes = d.U64();
        const int levels = d.U8();
        const MapEntry root = DecodePagePointer(d);
        s->map = BlockMap(&refs_, s->size_bytes / kBlockBytes);
        load_roots_.push_back(LoadRoot{true, s->id.value, levels, root});
        InsertSnapshot(std::move(s));
        break;
      }
      case kRecCkptChangeLog: {
        // Follows its VSD's or snapshot's record; the extents are in pages.
        LoadLog l;
        l.of_snapshot = d.U8() != 0;
        l.owner = d.U64();
        l.base = SnapshotId{d.U64()};
        l.known = d.U8() != 0;
        const uint32_t count = d.U32();
        for (uint32_t i = 0; i < count && d.ok(); ++i) l.pages.push_back(DecodePagePointer(d));
        if (d.ok()) load_logs_.push_back(std::move(l));
        break;
      }
      case kRecCkptEnd:
        break;
      default:
        // Unknown record: recovery treats the batch as invalid (decoder not done).
        d.Raw(nullptr, SIZE_MAX);
        break;
    }
  }

  // The fields kRecCreateVsd and kRecCkptVsd start with.
  static std::unique_ptr<VsdState> DecodeVsdHeader(Decoder& d) {
    auto v = std::make_unique<VsdState>();
    v->id.value = d.U64();
    v->name = d.Str();
    v->size_bytes = d.U64();
    v->replication = d.U8();
    v->flash_priority = d.U8();
    return v;
  }
  static void EncodeVsdHeader(Encoder& e, VsdId id, const std::string& name, uint64_t size_bytes,
                              int replication, int flash_priority) {
    e.U64(id.value);
    e.Str(name);
    e.U64(size_bytes);
    e.U8(static_cast<uint8_t>(replication));
    e.U8(static_cast<uint8_t>(flash_priority));
  }

  void InsertVsd(std::unique_ptr<VsdState> v) {
    next_vsd_ = std::max(next_vsd_, v->id.value + 1);
    vsd_by_name_[v->name] = v->id;
    vsds_[v->id] = std::move(v);
  }

  // The fields kRecSnapshot and kRecCkptSnapshot start with.
  static std::unique_ptr<SnapshotState> DecodeSnapshotHeader(Decoder& d) {
    auto s = std::make_unique<SnapshotState>();
    s->id.value = d.U64();
    s->vsd.value = d.U64();
    s->name = d.Str();
    s->generation = d.U64();
    return s;
  }

  void InsertSnapshot(std::unique_ptr<SnapshotState> s) {
    next_snapshot_ = std::max(next_snapshot_, s->id.value + 1);
    if (VsdState* v = FindVsdState(s->vsd)) v->snapshots.push_back(s->id);
    snapshots_[s->id] = std::move(s);
  }

  void InsertChunk(ChunkState c) {
    for (const Replica& r : c.replicas) ClaimSlot(r.disk, r.slot, c.id);
    next_chunk_ = std::max(next_chunk_, c.id + 1);
    const uint64_t id = c.id;
    if (c.meta) meta_chunks_.insert(id);
    ChunkState& slot = chunks_[id];
    slot = std::move(c);
    chunk_index_[id] = &slot;
    ChunkRecordChanged(slot);
  }

  // A chunk's record (copies, stale flags, existence) changed: a data chunk's group
  // page is rewritten at the next checkpoint; metadata chunks are listed in every
  // checkpoint's root, and a change to one is checkpointed soon, so that an open never
  // reads pages from copies the journal has since replaced.
  void ChunkRecordChanged(const ChunkState& c) {
    if (c.meta) {
      need_checkpoint_ = true;
    } else {
      dirty_groups_.insert(c.id / kChunksPerGroup);
    }
  }

  static void EncodeAddChunk(Encoder& e, uint64_t id, int replication, bool meta,
                             const std::vector<Replica>& replicas) {
    e.U8(kRecAddChunk);
    e.U64(id);
    e.U8(static_cast<uint8_t>(replication));
    e.U8(meta ? kChunkMeta : 0);
    e.U32(static_cast<uint32_t>(replicas.size()));
    for (const Replica& r : replicas) {
      e.U64(r.disk.value);
      e.U64(r.slot);
      e.U8(r.stale ? 1 : 0);
    }
  }

  static MapEntry DecodePagePointer(Decoder& d) {
    MapEntry e;
    e.chunk = d.U64();
    e.block = d.U32();
    e.crc = d.U32();
    return e;
  }
  static void EncodePagePointer(Encoder& e, const MapEntry& p) {
    e.U64(p.chunk);
    e.U32(p.block);
    e.U32(p.crc);
  }

  void ClaimSlot(DiskId disk_id, uint64_t slot, uint64_t chunk) {
    DiskState* disk = FindDisk(disk_id);
    if (!disk || slot >= disk->slots) return;
    if (disk->slot_owner[slot] == 0) ++disk->used_slots;
    disk->slot_owner[slot] = chunk;
  }

  void ReleaseSlot(DiskId disk_id, uint64_t slot, uint64_t chunk) {
    DiskState* disk = FindDisk(disk_id);
    if (!disk || slot >= disk->slots || disk->slot_owner[slot] != chunk) return;
    disk->slot_owner[slot] = 0;
    --disk->used_slots;
  }

  // ---------------------------------------------------------------- change logs
  // Each VSD logs the blocks whose mapping changes between its snapshots (see
  // VsdState::base). Only Apply() changes the logs, so replay rebuilds them exactly.
  bool ChangeLogsEnabled() const { return options_.change_log_blocks_per_extent != 0; }

  // The most extents a log of a map of `capacity_blocks` keeps before it is dropped.
  // The bound is for memory: at that density the changes touch nearly every leaf, so a
  // walk costs what it always did (the log would still be a few times faster).
  size_t ChangeLogExtentsMax(uint64_t capacity_blocks) const {
    if (!ChangeLogsEnabled()) return 0;
    return std::max(kChangeLogExtentsMin, capacity_blocks / options_.change_log_blocks_per_extent);
  }

  // `v`'s map now equals snapshot `base`'s: its interval starts there, empty.
  void StartInterval(VsdState* v, SnapshotId base) {
    v->base = ChangeLogsEnabled() ? base : SnapshotId{};
    v->changes.Reset();
  }

  // The mapping of blocks [begin, end) of `v` changed (or may have).
  void LogChange(VsdState* v, uint64_t begin, uint64_t end) {
    if (!v->base.valid()) return;
    const uint64_t capacity = v->map.capacity_blocks();
    v->changes.Add(begin, std::min(end, capacity), ChangeLogExtentsMax(capacity));
  }

  // Snapshots `doomed` are being deleted: every other interval based on one of them is
  // rebased on the first snapshot below them that stays, with the logs of those on the
  // way added, so chains through them still answer diffs. Without such a snapshot the
  // interval loses its base (and its log, of no use then) without merging anything.
  void UnlinkSnapshots(const std::set<SnapshotId>& doomed) {
    if (doomed.empty()) return;
    auto rebase = [&](SnapshotId& base, ChangeLog& changes, uint64_t capacity_blocks) {
      if (!doomed.count(base)) return;
      std::vector<const SnapshotState*> via;
      SnapshotId b = base;
      while (b.valid() && doomed.count(b)) {
        const SnapshotState* s = FindSnapshot(b);
        // Bases are older than their snapshots: the walk ends.
        if (s == nullptr || s->base >= b) {
          b = SnapshotId{};
          break;
        }
        via.push_back(s);
        b = s->base;
      }
      base = b;
      if (!base.valid()) {
        changes.Reset();
        return;
      }
      for (const SnapshotState* s : via) {
        changes.Merge(s->changes, ChangeLogExtentsMax(capacity_blocks));
      }
    };
    for (auto& [id, v] : vsds_) rebase(v->base, v->changes, v->map.capacity_blocks());
    // A snapshot's base is older than it: only later snapshots can be based on these.
    for (auto it = snapshots_.upper_bound(*doomed.begin()); it != snapshots_.end(); ++it) {
      if (doomed.count(it->first)) continue;
      SnapshotState& t = *it->second;
      rebase(t.base, t.changes, t.map.capacity_blocks());
    }
  }

  // The snapshot whose map `s`'s interval starts from, if its log is known.
  const SnapshotState* Predecessor(const SnapshotState& s) const {
    if (!s.base.valid() || !s.changes.known() || s.base >= s.id) return nullptr;
    auto it = snapshots_.find(s.base);
    return it == snapshots_.end() ? nullptr : it->second.get();
  }

  // The blocks that may map differently in snapshots `a` and `b`: the logs of the
  // intervals from their nearest common snapshot to each, merged. Nullopt when a log on
  // the way is unknown, or together they hold more extents than one log may (the same
  // bound: the work of merging them stays below that of a walk).
  std::optional<std::vector<BlockMap::Range>> ChangedRanges(const SnapshotState& a,
                                                            const SnapshotState& b) const {
    if (!ChangeLogsEnabled()) return std::nullopt;
    const size_t extents_max =
        ChangeLogExtentsMax(std::max(a.map.capacity_blocks(), b.map.capacity_blocks()));
    std::vector<const ChangeLog*> logs;
    size_t extents = 0;
    // Bases are older than their snapshots, so the newer of the two cannot be an
    // ancestor of the older: step it back until both meet.
    const SnapshotState* x = &a;
    const SnapshotState* y = &b;
    while (x != y) {
      const SnapshotState*& newer = x->id > y->id ? x : y;
      const SnapshotState* next = Predecessor(*newer);
      if (next == nullptr) return std::nullopt;
      logs.push_back(&newer->changes);
      extents += newer->changes.extent_count();
      if (extents > extents_max) return std::nullopt;
      newer = next;
    }
    std::vector<BlockMap::Range> ranges;
    ranges.reserve(extents);
    for (const ChangeLog* log : logs) {
      for (const auto& extent : log->extents()) ranges.push_back(extent);
    }
    if (logs.size() > 1) {
      std::sort(ranges.begin(), ranges.end());
      size_t n = 0;
      for (const BlockMap::Range& r : ranges) {
        if (n > 0 && r.first <= ranges[n - 1].second) {
          ranges[n - 1].second = std::max(ranges[n - 1].second, r.second);
        } else {
          ranges[n++] = r;
        }
      }
      ranges.resize(n);
    }
    return ranges;
  }

  // ---------------------------------------------------------------- leaf cache
  // Block-map leaves not changed since the last checkpoint are evicted beyond
  // PoolOptions::metadata_cache_bytes, least recently used first (their pages hold
  // them); whatever maps, reads or diffs blocks reads the evicted leaves it needs back
  // first. Interior nodes (1/256 of the nodes) always stay.

  // Calls fn(OK, map) once every leaf of [b0, b1) in `ref`'s map is in memory: at once
  // when they are, else when the evicted ones have been read back. They stay in memory
  // until fn returns.
  void WithLeaves(MapRef ref, uint64_t b0, uint64_t b1,
                  std::function<void(absl::Status, const BlockMap*)> fn) {
    const BlockMap* m = ref();
    std::vector<std::shared_ptr<BlockMap::Node>> leaves;
    if (m != nullptr && b0 < b1) {
      const std::vector<BlockMap::Range> r{{b0, b1}};
      m->CollectLeaves(&r, &leaves);
    }
    bool all = true;
    for (const auto& n : leaves) all = all && n->entries != nullptr;
    if (all) {
      // Only the trees may hold nodes while they change: a node held twice is shared
      // (a write would copy it).
      leaves.clear();
      return fn(absl::OkStatus(), m);
    }
    auto alive = alive_;
    LoadLeaves(std::move(leaves), [this, alive, ref, b0, b1, fn](absl::Status st) {
      if (!*alive) return;
      if (!st.ok()) return fn(st, nullptr);
      // The map may have moved on while they were read (a write shadowed a leaf, a
      // revert replaced the tree): look again, with these still pinned.
      WithLeaves(ref, b0, b1, fn);
    });
  }

  // Reads the evicted ones of `leaves` back, then calls done (at once if none is
  // evicted). None of `leaves` is evicted before done runs (evictions are posted, so
  // none happens inside it either). Nodes are held only while reads are in flight: a
  // node held besides its trees counts as shared (a write would copy it).
  void LoadLeaves(std::vector<std::shared_ptr<BlockMap::Node>> leaves, StatusDone done) {
    auto held = std::make_shared<std::vector<std::shared_ptr<BlockMap::Node>>>(std::move(leaves));
    std::vector<std::shared_ptr<BlockMap::Node>> missing;
    absl::flat_hash_set<const BlockMap::Node*> seen;
    for (const auto& n : *held) {
      ++n->pins;
      if (!n->entries && seen.insert(n.get()).second) missing.push_back(n);
    }
    auto alive = alive_;
    const int64_t start = loop_->NowNanos();
    auto finish = [this, alive, held, start, waited = !missing.empty(), done](absl::Status st) {
      if (!*alive) return;
      if (waited) {
        ++leaf_waits_;
        leaf_wait_ns_ += loop_->NowNanos() - start;
      }
      for (const auto& n : *held) --n->pins;
      held->clear();
      done(st);
      ScheduleTrim();
    };
    if (missing.empty()) return finish(absl::OkStatus());
    auto g = MakeGather(static_cast<int>(missing.size()), finish);
    std::vector<std::shared_ptr<BlockMap::Node>> to_read;
    for (auto& n : missing) {
      std::vector<StatusDone>& waiters = leaf_loads_[n.get()];
      if (waiters.empty()) to_read.push_back(n);
      waiters.push_back([g](absl::Status st) { g->Finish(st); });
    }
    if (!to_read.empty()) ReadLeaves(std::move(to_read));
  }

  void ReadLeaves(std::vector<std::shared_ptr<BlockMap::Node>> leaves) {
    auto nodes = std::make_shared<std::vector<std::shared_ptr<BlockMap::Node>>>(std::move(leaves));
    std::vector<MapEntry> pages;
    for (const auto& n : *nodes) pages.push_back(n->page);
    auto alive = alive_;
    ReadPages(pages, [this, nodes](size_t i, const uint8_t* page) -> absl::Status {
      BlockMap::Node* n = (*nodes)[i].get();
      auto entries = std::make_unique<BlockMap::Entries>();
      uint32_t mapped = 0;
      RETURN_IF_ERROR(DecodeLeafPage(page, n->page, pool_uuid_, entries.get(), &mapped));
      if (mapped != n->mapped) {
        return absl::DataLossError(absl::StrFormat("%s: %d blocks mapped, the leaf had %d",
                                                   DescribePointer(n->page), mapped, n->mapped));
      }
      n->Reload(std::move(entries));
      ++leaves_read_;
      return absl::OkStatus();
    }, [this, alive, nodes](absl::Status st) {
      if (!*alive) return;
      std::vector<std::pair<absl::Status, std::vector<StatusDone>>> results;
      for (const auto& n : *nodes) {
        auto it = leaf_loads_.find(n.get());
        absl::Status result = st;
        if (n->entries) {
          result = absl::OkStatus();
        } else if (result.ok()) {
          result = absl::DataLossError(absl::StrCat(DescribePointer(n->page), ": not read"));
        }
        results.push_back({result, std::move(it->second)});
        leaf_loads_.erase(it);
      }
      nodes->clear();  // before the waiters run (see LoadLeaves)
      for (auto& [result, waiters] : results) {
        for (auto& w : waiters) w(result);
      }
    });
  }

  void ScheduleTrim() {
    if (trim_scheduled_ || leaf_cache_.size() <= LeafCacheLimit()) return;
    trim_scheduled_ = true;
    auto alive = alive_;
    loop_->Post([this, alive] {
      if (!*alive) return;
      trim_scheduled_ = false;
      TrimLeaves();
    });
  }

  size_t LeafCacheLimit() const { return options_.metadata_cache_bytes / kPageBytes; }

  // Evicts clean, unpinned leaves, oldest first, down to the limit. Not while a
  // checkpoint's pages are being written: a leaf's new page is not its own until they
  // are (a failed write forgets it).
  void TrimLeaves() {
    if (checkpoint_pages_in_flight_) return;
    const size_t limit = LeafCacheLimit();
    size_t budget = leaf_cache_.size();  // each leaf is looked at once
    const BlockMap::Node* n = leaf_cache_.oldest();
    while (leaf_cache_.size() > limit && n != nullptr && budget-- > 0) {
      const BlockMap::Node* next = LeafCache::newer(n);
      if (n->evictable()) {
        uint32_t unique = 0;
        for (const MapEntry& e : *n->entries) unique += e.mapped() && RefCount(e) == 1;
        const_cast<BlockMap::Node*>(n)->Evict(unique);
        ++leaves_evicted_;
      }
      n = next;
    }
  }

  // An evicted leaf left every tree: its blocks lose their references once its page is
  // read, then the page goes. Until then its blocks stay referenced (kept, not lost).
  void EvictedLeafDropped(const MapEntry& page) {
    if (!*alive_) return;  // the pool is closing
    dropped_leaves_.push_back(page);
    DropEvictedLeaves();
  }

  static constexpr size_t kDroppedLeavesPerTurn = 16;

  void DropEvictedLeaves() {
    if (dropping_leaves_ || dropped_leaves_.empty()) return;
    dropping_leaves_ = true;
    const size_t n = std::min(dropped_leaves_.size(), kDroppedLeavesPerTurn);
    auto pages = std::make_shared<std::vector<MapEntry>>(dropped_leaves_.begin(), dropped_leaves_.begin() + n);
    dropped_leaves_.erase(dropped_leaves_.begin(), dropped_leaves_.begin() + n);
    auto alive = alive_;
    auto g = MakeGather(static_cast<int>(n), [this, alive](absl::Status) {
      if (!*alive) return;
      dropping_leaves_ = false;
      DropEvictedLeaves();
    });
    for (const MapEntry& p : *pages) {
      ReadPage(p, [this, alive, p, g](absl::StatusOr<std::shared_ptr<AlignedBuffer>> r) {
        if (!*alive) return;
        BlockMap::Entries entries{};
        uint32_t mapped = 0;
        absl::Status st = r.status();
        if (st.ok()) st = DecodeLeafPage((*r)->data(), p, pool_uuid_, &entries, &mapped);
        if (st.ok()) {
          for (const MapEntry& e : entries) {
            if (e.mapped()) UnrefBlock(e);
          }
        } else {
          // Its blocks stay referenced (space lost until fsck finds them, never data).
          ++dropped_leaves_unread_;
        }
        DropPage(p);
        g->Finish(absl::OkStatus());
      });
    }
  }

  // Every leaf of every map and of every tree being deleted.
  std::vector<std::shared_ptr<BlockMap::Node>> AllLeaves() const {
    std::vector<std::shared_ptr<BlockMap::Node>> out;
    for (const auto& [id, v] : vsds_) v->map.CollectLeaves(nullptr, &out);
    for (const auto& [id, s] : snapshots_) s->map.CollectLeaves(nullptr, &out);
    for (const auto& n : doomed_) BlockMap::CollectLeavesUnder(n, &out);
    return out;
  }

  // ---------------------------------------------------------------- refcounts
  void RefBlock(const MapEntry& e) {
    ChunkState* c = FindChunk(e.chunk);
    SCRIBE_CHECK(c != nullptr);
    if (c->refs[e.block]++ == 0 && !c->busy[e.block]) ++c->used;
  }

  void UnrefBlock(const MapEntry& e) {
    ChunkState* c = FindChunk(e.chunk);
    SCRIBE_CHECK(c != nullptr && c->refs[e.block] > 0);
    if (--c->refs[e.block] == 0) {
      if (replaying_) {
        // Replayed records are durable already: the block is free at once (a later
        // record may reuse it).
        --c->used;
        NoteMaybeReusable(c);
        return;
      }
      // Not reusable until the metadata that dropped it is durable.
      SCRIBE_CHECK(!c->busy[e.block]);
      c->busy[e.block] = true;
      pending_frees_.push_back({e.chunk, e.block});
    }
  }

  // Called once the records that freed them are durable (or replayed).
  void ReleaseFrees(BlockFrees frees) {
    for (auto [chunk, block] : frees) {
      ChunkState* c = FindChunk(chunk);
      if (!c || !c->busy[block] || c->refs[block] != 0) continue;
      c->busy[block] = false;
      --c->used;
      NoteMaybeReusable(c);
      MaybeFreeChunk(c);
    }
  }

  void MaybeFreeChunk(ChunkState* c) {
    if (c->used != 0 || c->open || c->rebuilding || c->writes_in_flight != 0) return;
    Encoder e;
    e.U8(kRecFreeChunk);
    e.U64(c->id);
    Mutate(e.out());
  }

  // ---------------------------------------------------------------- placement
  bool DiskUsable(const DiskState& d) const {
    return d.dev != nullptr && !d.failed && NodeOnline(d.node);
  }
  bool NodeOnline(NodeId n) const {
    auto it = nodes_online_.find(n);
    return it == nodes_online_.end() || it->second;
  }
  bool ReplicaWritable(const Replica& r) const {
    auto it = disks_.find(r.disk);
    return it != disks_.end() && DiskUsable(it->second) && !r.stale;
  }

  // Picks the disk with the most free slots on each node not in `exclude`, then the
  // `count` emptiest such nodes (ties broken by node id, for determinism).
  std::vector<std::pair<DiskId, uint64_t>> PlaceSlots(int count, const std::set<NodeId>& exclude) {
    std::map<NodeId, const DiskState*> best;
    for (const auto& [id, d] : disks_) {
      if (!DiskUsable(d) || exclude.count(d.node) || d.used_slots >= d.slots) continue;
      const DiskState*& b = best[d.node];
      if (b == nullptr || d.slots - d.used_slots > b->slots - b->used_slots) b = &d;
    }
    std::vector<const DiskState*> order;
    for (auto& [node, d] : best) order.push_back(d);
    std::stable_sort(order.begin(), order.end(), [](const DiskState* a, const DiskState* b) {
      return a->slots - a->used_slots > b->slots - b->used_slots;
    });
    std::vector<std::pair<DiskId, uint64_t>> out;
    for (const DiskState* d : order) {
      if (static_cast<int>(out.size()) == count) break;
      // First free slot: a linear scan bounded by the disk's slot count.
      for (uint64_t s = 0; s < d->slots; ++s) {
        if (d->slot_owner[s] == 0) {
          out.push_back({d->id, s});
          break;
        }
      }
    }
    return out;
  }

  // Copies a chunk should have: its replication; for a metadata chunk, one per node the
  // pool still has, up to its replication (a pool that lost nodes for good keeps its
  // metadata on all that remain and is then fully redundant again).
  int TargetCopies(const ChunkState& c) const {
    return c.meta ? std::min(c.replication, MetaReplication()) : c.replication;
  }

  size_t UsableNodes() const {
    std::set<NodeId> nodes;
    for (const auto& [id, d] : disks_) {
      if (DiskUsable(d) && d.used_slots < d.slots) nodes.insert(d.node);
    }
    return nodes.size();
  }

  void CloseOpenChunk(VsdState* v) {
    if (v->open_chunk == 0) return;
    if (ChunkState* c = FindChunk(v->open_chunk)) {
      c->open = false;
      NoteMaybeReusable(c);
      MaybeFreeChunk(c);
    }
    v->open_chunk = 0;
  }

  // A chunk takes new blocks while every copy is writable and it has as many copies as
  // the healthy nodes allow.
  bool ChunkAcceptsWrites(const ChunkState& c) const {
    if (c.rebuilding) return false;
    for (const Replica& r : c.replicas) {
      if (!ReplicaWritable(r)) return false;
    }
    // Counting usable nodes scans every disk: only needed for a chunk short of copies.
    if (static_cast<int>(c.replicas.size()) >= TargetCopies(c)) return true;
    return static_cast<int>(c.replicas.size()) >= std::min<int>(c.replication, static_cast<int>(UsableNodes()));
  }

  // The closed chunk of this replication with the most free blocks, if at least half
  // of it is free: space freed by overwrites is reused before new chunks are taken.
  // Only chunks that were at least half free when they last lost a block (or were
  // closed) are looked at, so the cost follows fragmentation, not the pool's size.
  ChunkState* ReusableChunk(int replication) {
    ChunkState* best = nullptr;
    for (auto it = reuse_candidates_.begin(); it != reuse_candidates_.end();) {
      ChunkState* c = FindChunk(*it);
      if (c == nullptr || c->used > kBlocksPerChunk / 2) {
        it = reuse_candidates_.erase(it);  // gone, or filled up: back when it drains
        continue;
      }
      ++it;
      if (c->open || c->meta || c->replication != replication || !ChunkAcceptsWrites(*c)) continue;
      if (best == nullptr || c->used < best->used) best = c;
    }
    return best;
  }

  void NoteMaybeReusable(const ChunkState* c) {
    if (c->used <= kBlocksPerChunk / 2) reuse_candidates_.insert(c->id);
  }

  // With no free chunk left: the closed chunk of this replication with the most free
  // blocks, however few. Scans every chunk, but only while the pool has no free chunk,
  // and the chunk found then takes writes until it is full.
  ChunkState* AnyChunkWithRoom(int replication) {
    ChunkState* best = nullptr;
    for (auto& [id, c] : chunks_) {
      if (c.open || c.meta || c.used >= kBlocksPerChunk || c.replication != replication ||
          !ChunkAcceptsWrites(c)) {
        continue;
      }
      if (best == nullptr || c.used < best->used) best = &c;
    }
    return best;
  }

  // Reserves `n` free blocks for a write of `v`, from its open chunk and then others.
  absl::StatusOr<std::vector<MapEntry>> AllocateBlocks(VsdState* v, uint64_t n) {
    std::vector<MapEntry> out;
    while (out.size() < n) {
      ChunkState* c = v->open_chunk ? FindChunk(v->open_chunk) : nullptr;
      if (c == nullptr || c->used == kBlocksPerChunk || !ChunkAcceptsWrites(*c)) {
        CloseOpenChunk(v);
        c = ReusableChunk(v->replication);
        if (c == nullptr) {
          absl::StatusOr<ChunkState*> fresh = NewChunk(v->replication);
          if (fresh.ok()) {
            c = *fresh;
          } else if ((c = AnyChunkWithRoom(v->replication)) == nullptr) {
            for (const MapEntry& e : out) Unreserve(e);
            return fresh.status();
          }
        }
        c->open = true;
        v->open_chunk = c->id;
      }
      for (uint32_t b = 0; b < kBlocksPerChunk && out.size() < n; ++b) {
        if (c->refs[b] == 0 && !c->busy[b]) {
          c->busy[b] = true;
          ++c->used;
          out.push_back(MapEntry{c->id, b, 0});
        }
      }
    }
    return out;
  }

  void Unreserve(const MapEntry& e) {
    ChunkState* c = FindChunk(e.chunk);
    if (!c || !c->busy[e.block]) return;
    c->busy[e.block] = false;
    if (c->refs[e.block] == 0) --c->used;
    NoteMaybeReusable(c);
    MaybeFreeChunk(c);
  }

  // A new chunk. A data chunk leaves the metadata reserve free and is journaled; a
  // metadata chunk may use the reserve and is not journaled: only checkpoints write
  // pages, and the checkpoint that first uses it lists it in its root.
  absl::StatusOr<ChunkState*> NewChunk(int replication, bool meta = false) {
    const size_t nodes = UsableNodes();
    if (nodes == 0) {
      return absl::ResourceExhaustedError("pool is full: no healthy disk has a free chunk");
    }
    // With fewer usable nodes than copies, the chunk starts degraded and the healer
    // adds copies when nodes return; never two copies on one node.
    const int copies = std::min<int>(replication, static_cast<int>(nodes));
    if (!meta && FreeSlots() < MetadataReserveSlots() + copies) {
      return absl::ResourceExhaustedError(
          "pool is full: the free chunks left are reserved for metadata (commits, deletes, healing)");
    }
    auto slots = PlaceSlots(copies, {});
    if (static_cast<int>(slots.size()) < copies) {
      return absl::ResourceExhaustedError("pool is full: not enough free chunks on distinct nodes");
    }
    const uint64_t id = next_chunk_++;
    std::vector<Replica> replicas;
    for (auto [disk, slot] : slots) replicas.push_back(Replica{disk, slot, false});
    Encoder e;
    EncodeAddChunk(e, id, replication, meta, replicas);
    if (meta) {
      Decoder d(e.out().data(), e.out().size());
      Apply(d);
    } else {
      Mutate(e.out());
    }
    if (copies < replication) Heal();
    return FindChunk(id);
  }

  uint64_t ReplicaOffset(const Replica& r, uint32_t block) const {
    const DiskState& d = disks_.at(r.disk);
    return d.data_start + r.slot * kChunkBytes + static_cast<uint64_t>(block) * kBlockBytes;
  }

  // ---------------------------------------------------------------- VSD management
  void CreateVsd(VsdOptions options, Done<VsdId> done) override {
    absl::Status st = ValidateVsdOptions(options);
    if (!st.ok()) return loop_->Post([done, st] { done(st); });
    const VsdId id{next_vsd_++};
    Encoder e;
    e.U8(kRecCreateVsd);
    EncodeVsdHeader(e, id, options.name, options.size_bytes, options.replication,
                    options.flash_priority);
    Mutate(e.out());
    Commit([done, id](absl::Status st) {
      if (!st.ok()) return done(st);
      done(id);
    });
  }

  absl::Status ValidateName(const std::string& name) const {
    if (name.empty() || name.size() > 255) {
      return absl::InvalidArgumentError("a VSD name must have 1 to 255 characters");
    }
    if (vsd_by_name_.count(name)) {
      return absl::AlreadyExistsError(absl::StrFormat("a VSD named '%s' exists", name));
    }
    return absl::OkStatus();
  }

  absl::Status ValidateVsdOptions(const VsdOptions& o) const {
    RETURN_IF_ERROR(ValidateName(o.name));
    if (o.size_bytes == 0 || o.size_bytes % kBlockBytes != 0) {
      return absl::InvalidArgumentError("VSD size must be a positive multiple of 4096 bytes");
    }
    if (o.size_bytes > (1ull << 50)) return absl::InvalidArgumentError("VSD size above 1 PiB");
    if (o.replication != 2 && o.replication != 3) {
      return absl::InvalidArgumentError("replication must be 2 or 3");
    }
    if (o.flash_priority < 0 || o.flash_priority > 11) {
      return absl::InvalidArgumentError("flash priority must be 0..11");
    }
    return absl::OkStatus();
  }

  void DeleteVsd(VsdId vsd, StatusDone done) override {
    if (!FindVsdState(vsd)) return PostError(done, NotFound(vsd));
    Encoder e;
    e.U8(kRecDeleteVsd);
    e.U64(vsd.value);
    Mutate(e.out());
    Commit(done);
  }

  void ResizeVsd(VsdId vsd, uint64_t size_bytes, StatusDone done) override {
    VsdState* v = FindVsdState(vsd);
    if (!v) return PostError(done, NotFound(vsd));
    if (size_bytes % kBlockBytes != 0 || size_bytes > (1ull << 50)) {
      return PostError(done, absl::InvalidArgumentError("size must be a multiple of 4096, at most 1 PiB"));
    }
    if (size_bytes < v->size_bytes) {
      return PostError(done, absl::InvalidArgumentError(
                                 "shrinking a VSD is not supported (it would destroy data)"));
    }
    Encoder e;
    e.U8(kRecResizeVsd);
    e.U64(vsd.value);
    e.U64(size_bytes);
    Mutate(e.out());
    Commit(done);
  }

  absl::StatusOr<VsdId> FindVsd(const std::string& name) const override {
    auto it = vsd_by_name_.find(name);
    if (it == vsd_by_name_.end()) {
      return absl::NotFoundError(absl::StrFormat("no VSD named '%s'", name));
    }
    return it->second;
  }

  uint32_t RefCount(const MapEntry& e) const {
    const ChunkState* c = FindChunk(e.chunk);
    return c == nullptr ? 0 : c->refs[e.block];
  }

  absl::StatusOr<VsdInfo> GetVsdInfo(VsdId vsd) const override {
    const VsdState* v = FindVsdState(vsd);
    if (!v) return NotFound(vsd);
    VsdInfo info;
    info.id = v->id;
    info.name = v->name;
    info.size_bytes = v->size_bytes;
    info.replication = v->replication;
    info.flash_priority = v->flash_priority;
    auto usage = v->map.ComputeUsage([this](const MapEntry& e) { return RefCount(e); });
    info.allocated_bytes = usage.mapped * kBlockBytes;
    info.unique_bytes = usage.unique * kBlockBytes;
    info.shared_bytes = info.allocated_bytes - info.unique_bytes;
    info.snapshots = v->snapshots.size();
    return info;
  }

  std::vector<VsdInfo> ListVsds() const override {
    std::vector<VsdInfo> out;
    for (const auto& [id, v] : vsds_) out.push_back(*GetVsdInfo(id));
    return out;
  }

  static absl::Status NotFound(VsdId id) {
    return absl::NotFoundError(absl::StrFormat("no VSD with id %d", id.value));
  }
  static absl::Status NotFound(SnapshotId id) {
    return absl::NotFoundError(absl::StrFormat("no snapshot with id %d", id.value));
  }
  void PostError(const StatusDone& done, absl::Status st) {
    loop_->Post([done, st] { done(st); });
  }

  // ---------------------------------------------------------------- I/O
  absl::Status CheckIo(const VsdState* v, uint64_t offset, uint64_t length) const {
    if (offset % BlockDevice::kSectorBytes != 0 || length % BlockDevice::kSectorBytes != 0) {
      return absl::InvalidArgumentError("I/O must be aligned to 512-byte sectors");
    }
    if (offset > v->size_bytes || length > v->size_bytes - offset) {
      return absl::OutOfRangeError(absl::StrFormat(
          "I/O [%d, +%d) is beyond the end of VSD '%s' (%d bytes)", offset, length, v->name,
          v->size_bytes));
    }
    return absl::OkStatus();
  }

  MapRef VsdMap(VsdId vsd) {
    return [this, vsd]() -> const BlockMap* {
      VsdState* v = FindVsdState(vsd);
      return v ? &v->map : nullptr;
    };
  }

  // Reads logical blocks [b0, b1) of the map `ref` names into `out` ((b1-b0) * 4 KiB),
  // verifying checksums, trying other copies and repairing bad ones.
  void ReadBlocks(MapRef ref, uint64_t b0, uint64_t b1, uint8_t* out, int attempt,
                  StatusDone done) {
    auto alive = alive_;
    WithLeaves(ref, b0, b1, [this, alive, ref, b0, b1, out, attempt, done](absl::Status st, const BlockMap* m) {
      if (!*alive) return;
      if (!st.ok()) return done(st);
      ReadBlocksIn(m, ref, b0, b1, out, attempt, done);
    });
  }

  void ReadBlocksIn(const BlockMap* m, MapRef ref, uint64_t b0, uint64_t b1, uint8_t* out,
                    int attempt, StatusDone done) {
    struct Run {
      uint64_t lba;
      uint64_t chunk;
      uint32_t block;
      uint32_t count;
      std::vector<uint32_t> crcs;
    };
    std::vector<Run> runs;
    for (uint64_t lba = b0; lba < b1; ++lba) {
      const MapEntry e = m && lba < m->capacity_blocks() ? m->Get(lba) : MapEntry{};
      uint8_t* dst = out + (lba - b0) * kBlockBytes;
      if (!e.mapped()) {
        std::memset(dst, 0, kBlockBytes);
        continue;
      }
      if (!runs.empty() && runs.back().chunk == e.chunk &&
          runs.back().block + runs.back().count == e.block &&
          runs.back().lba + runs.back().count == lba) {
        runs.back().count++;
        runs.back().crcs.push_back(e.crc);
      } else {
        runs.push_back(Run{lba, e.chunk, e.block, 1, {e.crc}});
      }
    }
    if (runs.empty()) return loop_->Post([done] { done(absl::OkStatus()); });
    auto alive = alive_;
    auto g = MakeGather(static_cast<int>(runs.size()),
                        [this, alive, ref, b0, b1, out, attempt, done](absl::Status st) {
                          if (!*alive) return;
                          if (st.code() == absl::StatusCode::kDataLoss &&
                              attempt < options_.read_retries_max) {
                            // The map may have moved on while we read: look again.
                            return ReadBlocks(ref, b0, b1, out, attempt + 1, done);
                          }
                          done(st);
                        });
    for (Run& run : runs) {
      uint8_t* dst = out + (run.lba - b0) * kBlockBytes;
      ReadRun(run.chunk, run.block, run.count, std::move(run.crcs), dst,
              [g](absl::Status st) { g->Finish(st); });
    }
  }

  // Reads `count` blocks of one chunk from the first copy whose checksums all match.
  void ReadRun(uint64_t chunk_id, uint32_t block, uint32_t count, std::vector<uint32_t> crcs,
               uint8_t* dst, StatusDone done) {
    ChunkState* c = FindChunk(chunk_id);
    if (!c) return PostError(done, absl::DataLossError("chunk vanished during read"));
    std::vector<Replica> candidates;
    for (const Replica& r : c->replicas) {
      if (ReplicaWritable(r)) candidates.push_back(r);
    }
    if (candidates.empty()) {
      return PostError(done, absl::UnavailableError(absl::StrFormat(
                                 "no reachable copy of chunk %d", chunk_id)));
    }
    // Spread reads over the copies, or read the local one first.
    std::rotate(candidates.begin(), candidates.begin() + (read_rr_++ % candidates.size()),
                candidates.end());
    if (options_.preferred_read_node.valid()) {
      std::stable_partition(candidates.begin(), candidates.end(), [this](const Replica& r) {
        return disks_.at(r.disk).node == options_.preferred_read_node;
      });
    }
    auto state = std::make_shared<ReadRunState>();
    state->chunk = chunk_id;
    state->block = block;
    state->count = count;
    state->crcs = std::move(crcs);
    state->dst = dst;
    state->candidates = std::move(candidates);
    state->buf = AlignedBuffer(count * kBlockBytes, AlignedBuffer::Uninitialized{});
    state->done = std::move(done);
    TryReplica(state, 0);
  }

  struct ReadRunState {
    uint64_t chunk;
    uint32_t block, count;
    std::vector<uint32_t> crcs;
    uint8_t* dst;
    std::vector<Replica> candidates;
    AlignedBuffer buf;
    std::vector<Replica> bad;  // copies to repair once a good one is found
    StatusDone done;
  };

  void TryReplica(std::shared_ptr<ReadRunState> s, size_t i) {
    if (i == s->candidates.size()) {
      return s->done(absl::DataLossError(absl::StrFormat(
          "every copy of chunk %d blocks %d..%d failed its checksum or read", s->chunk,
          s->block, s->block + s->count - 1)));
    }
    const Replica r = s->candidates[i];
    auto it = disks_.find(r.disk);
    if (it == disks_.end() || !DiskUsable(it->second)) return TryReplica(s, i + 1);
    auto alive = alive_;
    it->second.dev->Read(ReplicaOffset(r, s->block), s->count * kBlockBytes, s->buf.data(),
                         Timed([this, alive, s, i, r](absl::Status st) {
                           if (!*alive) return;
                           if (!st.ok()) {
                             NoteIoError(r.disk, st);
                             return TryReplica(s, i + 1);
                           }
                           for (uint32_t k = 0; k < s->count; ++k) {
                             if (Crc32c(s->buf.data() + k * kBlockBytes, kBlockBytes) !=
                                 s->crcs[k]) {
                               ++checksum_failures_;
                               s->bad.push_back(r);
                               return TryReplica(s, i + 1);
                             }
                           }
                           std::memcpy(s->dst, s->buf.data(), s->count * kBlockBytes);
                           for (const Replica& b : s->bad) Repair(b, s->chunk, s->block, s->count, s->buf.data());
                           s->done(absl::OkStatus());
                         }));
  }

  // Rewrites a copy that failed its checksum with good data (the block's contents never
  // change while it is referenced, so this races with nothing but its own freeing).
  void Repair(const Replica& r, uint64_t chunk, uint32_t block, uint32_t count, const uint8_t* good,
              StatusDone done = [](absl::Status) {}) {
    auto it = disks_.find(r.disk);
    if (it == disks_.end() || !DiskUsable(it->second)) {
      return PostError(done, absl::UnavailableError("copy to repair is unreachable"));
    }
    auto buf = std::make_shared<AlignedBuffer>(count * kBlockBytes);
    std::memcpy(buf->data(), good, count * kBlockBytes);
    auto alive = alive_;
    it->second.dev->Write(ReplicaOffset(r, block), count * kBlockBytes, buf->data(),
                          Timed([this, alive, buf, r, chunk, done](absl::Status st) {
                            if (!*alive) return;
                            if (st.ok()) {
                              unflushed_chunks_[r.disk].insert(chunk);
                              ++repaired_;
                            } else {
                              NoteIoError(r.disk, st);
                            }
                            done(st);
                          }));
  }

  // An I/O error on a disk: EIO-class errors fail the disk (its chunks are re-mirrored).
  void NoteIoError(DiskId disk, const absl::Status& st) {
    ++io_errors_;
    if (st.code() == absl::StatusCode::kFailedPrecondition) {
      // A disk refused us for a newer owner's epoch: another node owns the pool now.
      // Stop everything; only a fresh Pool::Open (with the new epoch) may continue.
      if (!fenced_) fenced_status_ = absl::FailedPreconditionError(absl::StrFormat(
                        "this pool instance was fenced by a newer owner: %s", st.message()));
      fenced_ = true;
      return;
    }
    if (st.code() != absl::StatusCode::kUnavailable && st.code() != absl::StatusCode::kDataLoss) return;
    DiskState* d = FindDisk(disk);
    // Errors from a node marked offline (its link broke) say nothing about the disk.
    if (!d || d->failed || !NodeOnline(d->node)) return;
    // A transient error is retried by the caller on another copy; a disk is declared
    // failed after `io_errors_to_fail_disk` errors within `io_error_window_ns`.
    auto& e = d_errors_[disk];
    const int64_t now = loop_->NowNanos();
    if (e.count == 0 || now - e.first_ns > options_.io_error_window_ns) e = ErrorWindow{0, now};
    if (++e.count < options_.io_errors_to_fail_disk) return;
    FailDiskNow(disk, false);
    Commit([](absl::Status) {});
  }

  // Records that chunk `chunk`'s copy on `disk` lacks writes (or caught up).
  void RecordStale(uint64_t chunk, DiskId disk, bool stale) {
    Encoder rec;
    rec.U8(kRecStale);
    rec.U64(chunk);
    rec.U64(disk.value);
    rec.U8(stale ? 1 : 0);
    Mutate(rec.out());
  }

  // Marks the copies on `disk` of `chunks` stale (they may lack recent writes).
  void MarkStale(DiskId disk, std::set<uint64_t> chunks) {  // a copy: Mutate may commit
    bool any = false;
    for (uint64_t id : chunks) {
      ChunkState* c = FindChunk(id);
      if (!c) continue;
      for (const Replica& r : c->replicas) {
        if (r.disk != disk || r.stale) continue;
        RecordStale(id, disk, true);
        any = true;
      }
    }
    if (any) Heal();
  }

  // Writes the blocks `where` names (data[i * 4 KiB] to where[i]) to every writable copy
  // of their chunks, one device write per run of consecutive blocks of a chunk per copy.
  // A copy that cannot take it (its node is away, or the write fails) is recorded stale
  // and caught up later. `done(true)` once every run reached at least one copy; `hold`
  // keeps `data` alive until then. Used for VSD data and for metadata pages alike.
  void WriteToCopies(const std::vector<MapEntry>& where, const uint8_t* data,
                     std::shared_ptr<const void> hold, std::function<void(bool)> done) {
    struct Run {
      size_t first;
      uint32_t count;
    };
    std::vector<Run> runs;
    for (size_t i = 0; i < where.size(); ++i) {
      const MapEntry& e = where[i];
      if (!runs.empty()) {
        const MapEntry& p = where[runs.back().first + runs.back().count - 1];
        if (p.chunk == e.chunk && p.block + 1 == e.block) {
          runs.back().count++;
          continue;
        }
      }
      runs.push_back(Run{i, 1});
    }
    if (runs.empty()) return done(true);
    auto alive = alive_;
    auto failed_runs = std::make_shared<int>(0);
    auto g = MakeGather(static_cast<int>(runs.size()), [alive, failed_runs, done](absl::Status) {
      if (*alive) done(*failed_runs == 0);
    });
    for (const Run& run : runs) {
      const MapEntry first = where[run.first];
      ChunkState* c = FindChunk(first.chunk);
      std::vector<Replica> targets;
      for (const Replica& r : c->replicas) {
        if (ReplicaWritable(r)) {
          targets.push_back(r);
        } else if (!r.stale && !disks_.at(r.disk).failed) {
          RecordStale(c->id, r.disk, true);  // its node is away: it misses this write
        }
      }
      if (targets.empty()) {
        ++*failed_runs;
        g->Finish(absl::OkStatus());
        continue;
      }
      ++c->writes_in_flight;
      auto ok_copies = std::make_shared<int>(0);
      const uint64_t chunk_id = c->id;
      auto rg = MakeGather(static_cast<int>(targets.size()),
                           [this, alive, g, ok_copies, failed_runs, chunk_id](absl::Status) {
                             if (!*alive) return;
                             if (ChunkState* c = FindChunk(chunk_id)) {
                               --c->writes_in_flight;
                               MaybeFreeChunk(c);
                             }
                             if (*ok_copies == 0) ++*failed_runs;
                             g->Finish(absl::OkStatus());
                           });
      for (const Replica& r : targets) {
        disks_.at(r.disk).dev->Write(
            ReplicaOffset(r, first.block), run.count * kBlockBytes, data + run.first * kBlockBytes,
            Timed([this, alive, rg, ok_copies, r, chunk_id, hold](absl::Status st) {
              if (!*alive) return;
              if (st.ok()) {
                // Marked on completion: a commit flushes only writes that completed.
                unflushed_chunks_[r.disk].insert(chunk_id);
                ++*ok_copies;
              } else {
                NoteIoError(r.disk, st);
                // This copy lacks the write: it is stale until re-mirrored.
                if (FindChunk(chunk_id)) {
                  RecordStale(chunk_id, r.disk, true);
                  Heal();
                }
              }
              rg->Finish(absl::OkStatus());
            }));
      }
    }
  }

  void FailDiskNow(DiskId disk, bool evicted) {
    Encoder e;
    e.U8(kRecFailDisk);
    e.U64(disk.value);
    e.U8(evicted ? 1 : 0);
    Mutate(e.out());
    for (auto& [id, v] : vsds_) {
      if (ChunkState* c = v->open_chunk ? FindChunk(v->open_chunk) : nullptr) {
        for (const Replica& r : c->replicas) {
          if (r.disk == disk) CloseOpenChunk(v.get());
        }
      }
    }
    Heal();
  }

  void Read(VsdId vsd, uint64_t offset_bytes, size_t length_bytes, void* buf,
            StatusDone done) override {
    if (fenced_) return PostError(done, fenced_status_);
    VsdState* v = FindVsdState(vsd);
    if (!v) return PostError(done, NotFound(vsd));
    absl::Status st = CheckIo(v, offset_bytes, length_bytes);
    if (!st.ok()) return PostError(done, st);
    ReadMapped(VsdMap(vsd), offset_bytes, length_bytes, buf, std::move(done));
  }

  void ReadSnapshot(SnapshotId snapshot, uint64_t offset_bytes, size_t length_bytes, void* buf,
                    StatusDone done) override {
    SnapshotState* s = FindSnapshot(snapshot);
    if (!s) return PostError(done, NotFound(snapshot));
    if (offset_bytes % 512 || length_bytes % 512 || offset_bytes > s->size_bytes ||
        length_bytes > s->size_bytes - offset_bytes) {
      return PostError(done, absl::OutOfRangeError("snapshot read out of range or unaligned"));
    }
    ReadMapped(
        [this, snapshot]() -> const BlockMap* {
          SnapshotState* s = FindSnapshot(snapshot);
          return s ? &s->map : nullptr;
        },
        offset_bytes, length_bytes, buf, std::move(done));
  }

  void ReadMapped(MapRef ref, uint64_t offset, size_t length, void* buf, StatusDone done) {
    if (length == 0) return PostError(done, absl::OkStatus());
    const uint64_t b0 = offset / kBlockBytes;
    const uint64_t b1 = RoundUp(offset + length, kBlockBytes) / kBlockBytes;
    auto tmp = std::make_shared<AlignedBuffer>((b1 - b0) * kBlockBytes);
    ReadBlocks(std::move(ref), b0, b1, tmp->data(), 0,
               [tmp, offset, length, buf, b0, done](absl::Status st) {
                 if (st.ok()) std::memcpy(buf, tmp->data() + (offset - b0 * kBlockBytes), length);
                 done(st);
               });
  }

  // Per-VSD block locks serialise writes that touch the same 4 KiB block (a partial
  // block write is a read-modify-write).
  static bool Overlaps(const std::map<uint64_t, uint64_t>& locked, uint64_t b0, uint64_t b1) {
    auto it = locked.upper_bound(b0);
    if (it != locked.begin() && std::prev(it)->second > b0) return true;
    return it != locked.end() && it->first < b1;
  }

  void LockBlocks(VsdState* v, uint64_t b0, uint64_t b1, std::function<void()> fn) {
    if (Overlaps(v->locked, b0, b1) || !v->waiters.empty()) {
      v->waiters.push_back(LockWaiter{b0, b1, std::move(fn)});
      return;
    }
    v->locked.emplace(b0, b1);
    fn();
  }

  void UnlockBlocks(VsdId vsd, uint64_t b0, uint64_t b1) {
    VsdState* v = FindVsdState(vsd);
    if (!v) return;
    v->locked.erase(b0);
    // Start waiters in arrival order while they can run.
    while (!v->waiters.empty()) {
      LockWaiter& w = v->waiters.front();
      if (Overlaps(v->locked, w.b0, w.b1)) break;
      v->locked.emplace(w.b0, w.b1);
      auto fn = std::move(w.fn);
      v->waiters.pop_front();
      loop_->Post(std::move(fn));
    }
  }

  void Write(VsdId vsd, uint64_t offset_bytes, size_t length_bytes, const void* buf, bool fua,
             StatusDone done) override {
    if (fenced_) return PostError(done, fenced_status_);
    VsdState* v = FindVsdState(vsd);
    if (!v) return PostError(done, NotFound(vsd));
    absl::Status st = CheckIo(v, offset_bytes, length_bytes);
    if (!st.ok()) return PostError(done, st);
    if (length_bytes == 0) return fua ? Flush(done) : PostError(done, absl::OkStatus());
    if (offset_bytes % kBlockBytes == 0 && length_bytes % kBlockBytes == 0) {
      // Whole blocks: the disks write straight from the caller's buffer when it is
      // aligned for direct I/O (it stays valid until `done`), else from one copy.
      const uint8_t* data = static_cast<const uint8_t*>(buf);
      std::shared_ptr<AlignedBuffer> copy;
      if (reinterpret_cast<uintptr_t>(buf) % BlockDevice::kBufferAlignment != 0) {
        copy = std::make_shared<AlignedBuffer>(length_bytes, AlignedBuffer::Uninitialized{});
        std::memcpy(copy->data(), buf, length_bytes);
        data = copy->data();
      }
      const uint64_t b0 = offset_bytes / kBlockBytes;
      const uint64_t b1 = b0 + length_bytes / kBlockBytes;
      auto alive = alive_;
      LockBlocks(v, b0, b1, [this, alive, vsd, data, copy, fua, done, b0, b1] {
        if (!*alive) return;
        WriteNewBlocks(vsd, b0, b1, data, copy, [this, alive, vsd, b0, b1, fua, done](absl::Status st) {
          if (!*alive) return;
          UnlockBlocks(vsd, b0, b1);
          if (st.ok() && fua) return Commit(done);
          done(st);
        });
      });
      return;
    }
    // Partial blocks: the caller's bytes are kept until the edge blocks are read.
    auto data = std::make_shared<std::string>(static_cast<const char*>(buf), length_bytes);
    WriteBytes(vsd, offset_bytes, std::move(data), fua, std::move(done));
  }

  void WriteBytes(VsdId vsd, uint64_t offset, std::shared_ptr<std::string> data, bool fua,
                  StatusDone done) {
    VsdState* v = FindVsdState(vsd);
    const uint64_t b0 = offset / kBlockBytes;
    const uint64_t b1 = RoundUp(offset + data->size(), kBlockBytes) / kBlockBytes;
    auto alive = alive_;
    LockBlocks(v, b0, b1, [this, alive, vsd, offset, data, fua, done, b0, b1] {
      if (!*alive) return;
      auto unlock_done = [this, alive, vsd, b0, b1, fua, done](absl::Status st) {
        if (!*alive) return;
        UnlockBlocks(vsd, b0, b1);
        if (st.ok() && fua) return Commit(done);
        done(st);
      };
      VsdState* v = FindVsdState(vsd);
      if (!v) return unlock_done(NotFound(vsd));
      auto buf = std::make_shared<AlignedBuffer>((b1 - b0) * kBlockBytes);
      const uint64_t head = offset - b0 * kBlockBytes;
      const uint64_t end = head + data->size();
      auto fill = [this, alive, vsd, buf, head, data, b0, b1, unlock_done](absl::Status st) {
        if (!*alive) return;
        if (!st.ok()) return unlock_done(st);
        std::memcpy(buf->data() + head, data->data(), data->size());
        WriteNewBlocks(vsd, b0, b1, buf->data(), buf, unlock_done);
      };
      const bool partial_head = head != 0;
      const bool partial_tail = end != (b1 - b0) * kBlockBytes;
      if (!partial_head && !partial_tail) return fill(absl::OkStatus());
      // Read-modify-write of the partial edge blocks.
      MapRef lookup = VsdMap(vsd);
      const int parts = (partial_head ? 1 : 0) + ((partial_tail && (b1 - 1 != b0 || !partial_head)) ? 1 : 0);
      auto g = MakeGather(parts, fill);
      if (partial_head) {
        ReadBlocks(lookup, b0, b0 + 1, buf->data(), 0, [g](absl::Status st) { g->Finish(st); });
      }
      if (partial_tail && (b1 - 1 != b0 || !partial_head)) {
        ReadBlocks(lookup, b1 - 1, b1, buf->data() + (b1 - 1 - b0) * kBlockBytes, 0,
                   [g](absl::Status st) { g->Finish(st); });
      }
    });
  }

  // Writes whole blocks [b0, b1) from `buf` to newly allocated blocks on every copy,
  // then points the map at them.
  // `data` is aligned for direct I/O and stays valid (held by `hold`, or by the caller
  // until `done`) while the disks write it.
  void WriteNewBlocks(VsdId vsd, uint64_t b0, uint64_t b1, const uint8_t* data,
                      std::shared_ptr<AlignedBuffer> hold, StatusDone done,
                      bool after_commit = false) {
    VsdState* v = FindVsdState(vsd);
    if (!v) return done(NotFound(vsd));
    auto blocks = AllocateBlocks(v, b1 - b0);
    if (blocks.status().code() == absl::StatusCode::kResourceExhausted && !after_commit &&
        (!pending_frees_.empty() || committing_ || !doomed_.empty())) {
      // Space a background delete would give back is wanted now.
      ReapSome(SIZE_MAX);
      // Overwritten blocks wait for the commit that makes their replacement durable
      // before they are reused: commit, then try once more.
      auto alive = alive_;
      return Commit([this, alive, vsd, b0, b1, data, hold, done](absl::Status st) {
        if (!*alive) return;
        if (!st.ok()) return done(st);
        WriteNewBlocks(vsd, b0, b1, data, hold, done, /*after_commit=*/true);
      });
    }
    if (!blocks.ok()) return done(blocks.status());
    auto entries = std::make_shared<std::vector<MapEntry>>(std::move(*blocks));
    for (uint64_t i = 0; i < entries->size(); ++i) {
      (*entries)[i].crc = Crc32c(data + i * kBlockBytes, kBlockBytes);
    }
    auto alive = alive_;
    WriteToCopies(*entries, data, hold, [this, alive, vsd, b0, entries, done](bool landed) {
      if (!*alive) return;
      if (!landed) {
        for (const MapEntry& e : *entries) Unreserve(e);
        return done(absl::UnavailableError("write failed on every copy of a chunk"));
      }
      // The map's leaves for the blocks must be in memory to point them at the new ones.
      WithLeaves(VsdMap(vsd), b0, b0 + entries->size(),
                 [this, alive, vsd, b0, entries, done](absl::Status st, const BlockMap*) {
                   if (!*alive) return;
                   if (!st.ok()) {
                     for (const MapEntry& e : *entries) Unreserve(e);
                     return done(st);
                   }
                   MapWritten(vsd, b0, *entries, done);
                 });
    });
  }

  // Points the map at blocks just written (their leaves are in memory).
  void MapWritten(VsdId vsd, uint64_t b0, const std::vector<MapEntry>& entries, StatusDone done) {
    VsdState* v = FindVsdState(vsd);
    for (const MapEntry& e : entries) {
      ChunkState* c = FindChunk(e.chunk);
      // The map is about to reference it: no longer merely reserved.
      c->busy[e.block] = false;
      --c->used;
      NoteMaybeReusable(c);
    }
    if (!v) {
      for (const MapEntry& e : entries) MaybeFreeChunk(FindChunk(e.chunk));
    }
    // One record per run of consecutive blocks in one chunk.
    for (size_t i = 0; v && i < entries.size();) {
      size_t j = i + 1;
      while (j < entries.size() && entries[j].chunk == entries[i].chunk &&
             entries[j].block == entries[j - 1].block + 1) {
        ++j;
      }
      Encoder rec;
      rec.U8(kRecMap);
      rec.U64(vsd.value);
      rec.U64(b0 + i);
      rec.U64(entries[i].chunk);
      rec.U32(entries[i].block);
      rec.U32(static_cast<uint32_t>(j - i));
      for (size_t k = i; k < j; ++k) rec.U32(entries[k].crc);
      Mutate(rec.out());
      i = j;
    }
    done(v ? absl::OkStatus() : NotFound(vsd));
  }

  void Discard(VsdId vsd, uint64_t offset_bytes, uint64_t length_bytes, StatusDone done) override {
    if (fenced_) return PostError(done, fenced_status_);
    VsdState* v = FindVsdState(vsd);
    if (!v) return PostError(done, NotFound(vsd));
    absl::Status st = CheckIo(v, offset_bytes, length_bytes);
    if (!st.ok()) return PostError(done, st);
    const uint64_t end = offset_bytes + length_bytes;
    const uint64_t full0 = RoundUp(offset_bytes, kBlockBytes) / kBlockBytes;
    const uint64_t full1 = end / kBlockBytes;
    // Partial blocks at the edges are written with zeros.
    std::vector<std::pair<uint64_t, uint64_t>> parts;
    if (full1 <= full0) {
      parts.push_back({offset_bytes, length_bytes});
    } else {
      if (offset_bytes < full0 * kBlockBytes) parts.push_back({offset_bytes, full0 * kBlockBytes - offset_bytes});
      if (end > full1 * kBlockBytes) parts.push_back({full1 * kBlockBytes, end - full1 * kBlockBytes});
    }
    if (length_bytes == 0 || (parts.empty() && full1 <= full0)) {
      return PostError(done, absl::OkStatus());
    }
    auto g = MakeGather(static_cast<int>(parts.size()) + (full1 > full0 ? 1 : 0), done);
    if (full1 > full0) {
      auto alive = alive_;
      WithLeaves(VsdMap(vsd), full0, full1, [this, alive, vsd, full0, full1, g](absl::Status st, const BlockMap*) {
        if (!*alive) return;
        if (st.ok() && FindVsdState(vsd)) {
          Encoder rec;
          rec.U8(kRecUnmap);
          rec.U64(vsd.value);
          rec.U64(full0);
          rec.U64(full1 - full0);
          Mutate(rec.out());
        }
        g->Finish(st);
      });
    }
    for (auto [off, len] : parts) {
      WriteBytes(vsd, off, std::make_shared<std::string>(len, '\0'), false,
                 [g](absl::Status st) { g->Finish(st); });
    }
  }

  void Flush(StatusDone done) override { Commit(std::move(done)); }

  // ---------------------------------------------------------------- snapshots
  void CreateSnapshot(VsdId vsd, std::string name, Done<SnapshotId> done) override {
    CreateGroupSnapshot({vsd}, std::move(name), [done](absl::StatusOr<std::vector<SnapshotId>> r) {
      if (!r.ok()) return done(r.status());
      done(r->front());
    });
  }

  void CreateGroupSnapshot(std::vector<VsdId> vsds, std::string name,
                           Done<std::vector<SnapshotId>> done) override {
    if (vsds.empty()) {
      return loop_->Post([done] { done(absl::InvalidArgumentError("no VSDs to snapshot")); });
    }
    for (VsdId id : vsds) {
      if (!FindVsdState(id)) return loop_->Post([done, id] { done(NotFound(id)); });
    }
    if (name.size() > 255) {
      return loop_->Post([done] { done(absl::InvalidArgumentError("snapshot name too long")); });
    }
    // All pins happen in this one turn of the loop: one instant for every VSD.
    std::vector<SnapshotId> ids;
    for (VsdId id : vsds) {
      const SnapshotId sid{next_snapshot_++};
      Encoder e;
      e.U8(kRecSnapshot);
      e.U64(sid.value);
      e.U64(id.value);
      e.Str(name);
      e.U64(sequence_);
      Mutate(e.out());
      ids.push_back(sid);
    }
    Commit([done, ids](absl::Status st) {
      if (!st.ok()) return done(st);
      done(ids);
    });
  }

  void DeleteSnapshot(SnapshotId snapshot, StatusDone done) override {
    if (!FindSnapshot(snapshot)) return PostError(done, NotFound(snapshot));
    Encoder e;
    e.U8(kRecDeleteSnapshot);
    e.U64(snapshot.value);
    Mutate(e.out());
    Commit(done);
  }

  std::vector<SnapshotInfo> ListSnapshots(VsdId vsd) const override {
    std::vector<SnapshotInfo> out;
    const VsdState* v = FindVsdState(vsd);
    if (!v) return out;
    for (SnapshotId id : v->snapshots) {
      const SnapshotState& s = *snapshots_.at(id);
      SnapshotInfo info;
      info.id = s.id;
      info.vsd = s.vsd;
      info.name = s.name;
      info.generation = s.generation;
      info.unique_bytes =
          s.map.ComputeUsage([this](const MapEntry& e) { return RefCount(e); }).unique * kBlockBytes;
      out.push_back(info);
    }
    return out;
  }

  void CloneFromSnapshot(SnapshotId snapshot, std::string name, Done<VsdId> done) override {
    if (!FindSnapshot(snapshot)) return loop_->Post([done, snapshot] { done(NotFound(snapshot)); });
    Clone(true, snapshot.value, std::move(name), std::move(done));
  }

  void CloneVsd(VsdId vsd, std::string name, Done<VsdId> done) override {
    if (!FindVsdState(vsd)) return loop_->Post([done, vsd] { done(NotFound(vsd)); });
    Clone(false, vsd.value, std::move(name), std::move(done));
  }

  void Clone(bool from_snapshot, uint64_t source, std::string name, Done<VsdId> done) {
    absl::Status st = ValidateName(name);
    if (!st.ok()) return loop_->Post([done, st] { done(st); });
    const VsdId id{next_vsd_++};
    Encoder e;
    e.U8(kRecClone);
    e.U64(id.value);
    e.Str(name);
    e.U8(from_snapshot ? 1 : 0);
    e.U64(source);
    Mutate(e.out());
    Commit([done, id](absl::Status st) {
      if (!st.ok()) return done(st);
      done(id);
    });
  }

  void RevertToSnapshot(VsdId vsd, SnapshotId snapshot, StatusDone done) override {
    if (!FindVsdState(vsd)) return PostError(done, NotFound(vsd));
    SnapshotState* s = FindSnapshot(snapshot);
    if (!s) return PostError(done, NotFound(snapshot));
    if (s->vsd != vsd) {
      return PostError(done, absl::InvalidArgumentError("the snapshot belongs to another VSD"));
    }
    Encoder e;
    e.U8(kRecRevert);
    e.U64(vsd.value);
    e.U64(snapshot.value);
    Mutate(e.out());
    Commit(done);
  }

  void Diff(SnapshotId from, SnapshotId to, Done<std::vector<Extent>> done) override {
    // The leaves the comparison reaches: where the logs say blocks changed, or all.
    std::vector<std::shared_ptr<BlockMap::Node>> leaves;
    const SnapshotState* a = from.valid() ? FindSnapshot(from) : nullptr;
    const SnapshotState* b = FindSnapshot(to);
    if (b != nullptr && (a != nullptr || !from.valid())) {
      std::optional<std::vector<BlockMap::Range>> ranges;
      if (a != nullptr) ranges = ChangedRanges(*a, *b);
      const std::vector<BlockMap::Range>* r = ranges ? &*ranges : nullptr;
      if (a != nullptr) a->map.CollectLeaves(r, &leaves);
      b->map.CollectLeaves(r, &leaves);
    }
    auto alive = alive_;
    // Snapshots' maps never change, so these are the leaves DiffNow reaches.
    LoadLeaves(std::move(leaves), [this, alive, from, to, done](absl::Status st) {
      if (!*alive) return;
      absl::StatusOr<std::vector<Extent>> r = st.ok() ? DiffNow(from, to) : st;
      loop_->Post([done, r = std::move(r)]() mutable { done(std::move(r)); });
    });
  }

  absl::StatusOr<std::vector<Extent>> DiffNow(SnapshotId from, SnapshotId to) const {
    auto it_to = snapshots_.find(to);
    if (it_to == snapshots_.end()) return NotFound(to);
    static const BlockMap kEmpty;
    const BlockMap* a = &kEmpty;
    std::optional<std::vector<BlockMap::Range>> ranges;
    if (from.valid()) {
      auto it_from = snapshots_.find(from);
      if (it_from == snapshots_.end()) return NotFound(from);
      a = &it_from->second->map;
      ranges = ChangedRanges(*it_from->second, *it_to->second);
    }
    const BlockMap& b = it_to->second->map;
    std::vector<Extent> out;
    auto emit = [&](uint64_t lba) {
      const uint64_t off = lba * kBlockBytes;
      if (!out.empty() && out.back().offset_bytes + out.back().length_bytes == off) {
        out.back().length_bytes += kBlockBytes;
      } else {
        out.push_back(Extent{off, kBlockBytes});
      }
    };
    if (ranges) {
      // Only the logged blocks can differ; compare the maps there.
      ++diffs_from_change_logs_;
      out.reserve(ranges->size());  // usually one extent per logged one
      BlockMap::DiffRanges(*a, b, *ranges, emit);
    } else if (a == &kEmpty) {
      ++diffs_walked_;
      b.ForEachMapped([&](uint64_t lba, const MapEntry&) { emit(lba); });
    } else {
      ++diffs_walked_;
      BlockMap::Diff(*a, b, emit);
    }
    return out;
  }

  // ---------------------------------------------------------------- membership
  void AddDisk(DiskSpec disk, Done<DiskId> done) override {
    absl::Status st = CheckDiskSpec(disk);
    if (!st.ok()) return loop_->Post([done, st] { done(st); });
    auto alive = alive_;
    AddDiskInternal(disk, [this, alive, done](absl::StatusOr<DiskId> r) {
      if (!*alive) return;
      if (!r.ok()) return done(r.status());
      ChooseMirrors();
      Heal();  // degraded chunks may now have somewhere to go
      DiskId id = *r;
      Commit([done, id](absl::Status st) {
        if (!st.ok()) return done(st);
        done(id);
      });
    });
  }

  void FailDisk(DiskId disk, StatusDone done) override {
    DiskState* d = FindDisk(disk);
    if (!d) return PostError(done, absl::NotFoundError(absl::StrFormat("no disk %d", disk.value)));
    if (!d->failed) FailDiskNow(disk, false);
    ChooseMirrors();
    Commit(done);
  }

  void SetNodeOnline(NodeId node, bool online) override {
    nodes_online_[node] = online;
    if (!online) {
      // Writes its disks took since their last flush may be lost if the node crashed.
      for (auto& [id, d] : disks_) {
        if (d.node != node) continue;
        MarkStale(id, unflushed_chunks_[id]);
        MarkStale(id, flushing_chunks_[id]);
        unflushed_chunks_.erase(id);
      }
    }
    for (auto& [id, v] : vsds_) {
      if (ChunkState* c = v->open_chunk ? FindChunk(v->open_chunk) : nullptr) {
        for (const Replica& r : c->replicas) {
          if (disks_.at(r.disk).node == node) {
            CloseOpenChunk(v.get());
            break;
          }
        }
      }
    }
    ChooseMirrors();
    if (online) {
      // Copies evicted while away are no longer referenced: their disks start afresh.
      for (auto& [id, d] : disks_) {
        if (d.node == node && d.evicted) pending_resets_.insert(id);
      }
    }
    Heal();
    Commit([](absl::Status) {});
  }

  void AttachDevice(DiskSpec spec, Done<DiskId> done) override {
    if (spec.device == nullptr) return PostError(done, absl::InvalidArgumentError("null device"));
    if (spec.device->size_bytes() < kSuperblockBytes) {
      return PostError(done, absl::NotFoundError("device is too small to be a pool disk"));
    }
    auto buf = std::make_shared<AlignedBuffer>(kSuperblockBytes);
    auto alive = alive_;
    BlockDevice* dev = spec.device;
    dev->Read(0, kSuperblockBytes, buf->data(), Timed([=, this](absl::Status st) {
      if (!*alive) return;
      if (!st.ok()) {
        return done(absl::UnavailableError(absl::StrFormat("reading the superblock: %s", st.message())));
      }
      Superblock sb;
      if (!DecodeSuperblock(buf->data(), &sb)) {
        return done(absl::NotFoundError("the device holds no pool superblock"));
      }
      if (sb.pool_uuid != pool_uuid_ || sb.metadata_bytes != options_.metadata_bytes) {
        return done(absl::FailedPreconditionError(absl::StrFormat(
            "the device is disk %d of another pool (%016x, this pool is %016x)", sb.disk.value,
            sb.pool_uuid, pool_uuid_)));
      }
      DiskState* d = FindDisk(sb.disk);
      if (d == nullptr) {
        return done(absl::NotFoundError(absl::StrFormat("disk %d is no longer in the pool", sb.disk.value)));
      }
      if (d->dev != nullptr && d->dev != dev && NodeOnline(d->node)) {
        return done(absl::FailedPreconditionError(absl::StrFormat(
            "disk %d already has a device and node %d is online", sb.disk.value, d->node.value)));
      }
      d->dev = dev;
      done(sb.disk);
    }));
  }

  void EvictNode(NodeId node, StatusDone done) override {
    bool any = false;
    for (auto& [id, d] : disks_) {
      if (d.node != node) continue;
      any = true;
      if (!d.failed) FailDiskNow(id, true);
    }
    if (!any) return PostError(done, absl::NotFoundError(absl::StrFormat("no node %d", node.value)));
    ChooseMirrors();
    Commit(done);
  }

  std::vector<DiskInfo> ListDisks() const override {
    std::vector<DiskInfo> out;
    for (const auto& [id, d] : disks_) {
      DiskInfo info;
      info.id = id;
      info.node = d.node;
      info.tier = d.tier;
      info.capacity_bytes = d.slots * kChunkBytes;
      info.used_bytes = d.used_slots * kChunkBytes;
      info.chunks = d.used_slots;
      info.failed = d.failed;
      info.online = NodeOnline(d.node) && d.dev != nullptr;
      out.push_back(info);
    }
    return out;
  }

  int HealthyCopies(const ChunkState& c) const {
    int n = 0;
    std::set<NodeId> nodes;
    for (const Replica& r : c.replicas) {
      auto it = disks_.find(r.disk);
      if (it == disks_.end() || it->second.failed || it->second.dev == nullptr || r.stale) continue;
      if (nodes.insert(it->second.node).second) ++n;
    }
    return n;
  }

  PoolStats Stats() const override {
    PoolStats s;
    for (const auto& [id, d] : disks_) {
      if (d.failed) continue;
      s.capacity_bytes[static_cast<int>(d.tier)] += d.slots * kChunkBytes;
      s.used_bytes[static_cast<int>(d.tier)] += d.used_slots * kChunkBytes;
    }
    s.chunks = chunks_.size();
    for (const auto& [id, c] : chunks_) {
      if (HealthyCopies(c) < TargetCopies(c)) ++s.degraded_chunks;
    }
    s.rebuilds_in_flight = rebuilds_in_flight_;
    s.chunks_rebuilt = chunks_rebuilt_;
    s.metadata_sequence = sequence_;
    s.metadata_chunks = meta_chunks_.size();
    s.checkpoints = checkpoints_;
    s.checkpoint_pages_written = checkpoint_pages_written_;
    s.last_checkpoint_pages = last_checkpoint_pages_;
    s.last_checkpoint_root_bytes = last_checkpoint_root_bytes_;
    s.delete_subtrees_pending = doomed_.size();
    s.delete_nodes_freed = delete_nodes_freed_;
    s.delete_bytes_freed = delete_bytes_freed_;
    s.delete_step_max_ns = static_cast<uint64_t>(delete_step_max_ns_);
    s.map_leaves_in_memory = leaf_cache_.size();
    s.map_leaves_read = leaves_read_;
    s.map_leaves_evicted = leaves_evicted_;
    s.map_leaf_waits = leaf_waits_;
    s.map_leaf_wait_ns = static_cast<uint64_t>(leaf_wait_ns_);
    s.diffs_from_change_logs = diffs_from_change_logs_;
    s.diffs_walked = diffs_walked_;
    s.fenced = fenced_;
    return s;
  }

  bool FullyRedundant() const override {
    if (rebuilds_in_flight_ > 0 || !pending_resets_.empty()) return false;
    for (const auto& [id, c] : chunks_) {
      if (HealthyCopies(c) < TargetCopies(c)) return false;
      for (const Replica& r : c.replicas) {
        if (!ReplicaWritable(r)) return false;
      }
    }
    return true;
  }

  // ---------------------------------------------------------------- self-healing
  // Starts re-mirroring / catch-up work for degraded chunks, a few at a time. Called
  // whenever health changes; re-arms itself while work remains.
  void Heal() {
    if (heal_scheduled_) return;
    heal_scheduled_ = true;
    auto alive = alive_;
    loop_->Post([this, alive] {
      if (!*alive) return;
      heal_scheduled_ = false;
      HealStep();
    });
  }

  void HealStep() {
    // Disks of a returned, evicted node are reset once nothing references them.
    for (auto it = pending_resets_.begin(); it != pending_resets_.end();) {
      DiskState* d = FindDisk(*it);
      if (!d || !d->evicted) {
        it = pending_resets_.erase(it);
        continue;
      }
      bool referenced = false;
      for (uint64_t s = 0; s < d->slots && !referenced; ++s) referenced = d->slot_owner[s] != 0;
      if (referenced) {
        ++it;
        continue;
      }
      Encoder e;
      e.U8(kRecResetDisk);
      e.U64(d->id.value);
      Mutate(e.out());
      it = pending_resets_.erase(it);
      ChooseMirrors();
      Commit([](absl::Status) {});
    }
    bool waiting = false;
    std::vector<uint64_t> ids;
    for (const auto& [id, c] : chunks_) ids.push_back(id);
    for (uint64_t id : ids) {
      if (rebuilds_in_flight_ >= static_cast<uint64_t>(options_.rebuild_chunks_in_flight_max)) {
        waiting = true;
        break;
      }
      ChunkState* cp = FindChunk(id);
      if (cp == nullptr || cp->rebuilding) continue;
      ChunkState& c = *cp;
      int action = -1;  // index of the copy to replace or catch up; size() = add one
      for (size_t i = 0; i < c.replicas.size(); ++i) {
        const Replica& r = c.replicas[i];
        const DiskState& d = disks_.at(r.disk);
        if (d.failed || (d.dev == nullptr && NodeOnline(d.node))) {
          action = static_cast<int>(i);
          break;
        }
        if (r.stale && DiskUsable(d)) {
          action = static_cast<int>(i);
          break;
        }
      }
      // A metadata chunk keeps one copy per remaining node: a copy on a failed disk
      // beyond that is dropped rather than replaced (there is no node left for it).
      if (action >= 0 && c.meta && disks_.at(c.replicas[action].disk).failed &&
          static_cast<int>(c.replicas.size()) > TargetCopies(c)) {
        Encoder e;
        e.U8(kRecDropReplica);
        e.U64(c.id);
        e.U32(static_cast<uint32_t>(action));
        Mutate(e.out());
        Commit([](absl::Status) {});
        continue;
      }
      if (action < 0 && static_cast<int>(c.replicas.size()) < TargetCopies(c)) {
        action = static_cast<int>(c.replicas.size());
      }
      if (action < 0) continue;
      if (c.open || c.writes_in_flight > 0) {
        // Seal it first: close it for allocation and let writes in flight land.
        for (auto& [vid, v] : vsds_) {
          if (v->open_chunk == c.id) CloseOpenChunk(v.get());
        }
        if (meta_open_chunk_ == c.id) CloseMetaChunk();
        waiting = true;
        continue;
      }
      // Without a healthy source or a target it waits for the next change in health.
      StartRebuild(&c, action);
    }
    if (waiting) {
      auto alive = alive_;
      loop_->RunAfter(1'000'000, [this, alive] {
        if (*alive) Heal();
      });
    }
  }

  // Copies the chunk from a healthy copy to either the stale copy `index` (catch-up) or
  // a new slot on a node the chunk does not use yet, verifying every used block's
  // checksum on the way.
  bool StartRebuild(ChunkState* c, int index) {
    std::vector<Replica> sources;
    for (const Replica& r : c->replicas) {
      if (ReplicaWritable(r)) sources.push_back(r);
    }
    if (sources.empty()) return false;
    Replica target;
    const bool catch_up = index < static_cast<int>(c->replicas.size()) &&
                          c->replicas[index].stale && DiskUsable(disks_.at(c->replicas[index].disk));
    if (catch_up) {
      target = c->replicas[index];
    } else {
      std::set<NodeId> exclude;
      for (size_t i = 0; i < c->replicas.size(); ++i) {
        if (static_cast<int>(i) == index) continue;
        exclude.insert(disks_.at(c->replicas[i].disk).node);
      }
      auto slots = PlaceSlots(1, exclude);
      if (slots.empty()) return false;
      target.disk = slots[0].first;
      target.slot = slots[0].second;
      ClaimSlot(target.disk, target.slot, c->id);  // reserved while copying
    }
    c->rebuilding = true;
    ++rebuilds_in_flight_;
    auto buf = std::make_shared<AlignedBuffer>(kChunkBytes);
    const uint64_t chunk_id = c->id;
    auto alive = alive_;
    ReadWholeChunk(chunk_id, sources, 0, buf, [=, this](absl::Status st) {
      if (!*alive) return;
      ChunkState* c = FindChunk(chunk_id);
      auto finish = [=, this](bool ok) {
        ChunkState* c = FindChunk(chunk_id);
        --rebuilds_in_flight_;
        if (c) c->rebuilding = false;
        if (!ok && !catch_up) ReleaseSlot(target.disk, target.slot, chunk_id);
        if (ok && c) {
          ++chunks_rebuilt_;
          Encoder e;
          if (catch_up) {
            e.U8(kRecStale);
            e.U64(chunk_id);
            e.U64(target.disk.value);
            e.U8(0);
          } else {
            e.U8(kRecSetReplica);
            e.U64(chunk_id);
            e.U32(static_cast<uint32_t>(index));
            e.U64(target.disk.value);
            e.U64(target.slot);
          }
          Mutate(e.out());
          Commit([](absl::Status) {});
        }
        if (c) MaybeFreeChunk(c);
        Heal();
      };
      if (!st.ok() || !c) return finish(false);
      DiskState* td = FindDisk(target.disk);
      if (!td || !DiskUsable(*td)) return finish(false);
      td->dev->Write(ReplicaOffset(target, 0), kChunkBytes, buf->data(), Timed([=, this](absl::Status st) {
        (void)buf;  // the device reads it until it completes
        if (!*alive) return;
        if (st.ok()) unflushed_chunks_[target.disk].insert(chunk_id);
        if (!st.ok()) NoteIoError(target.disk, st);
        finish(st.ok());
      }));
    });
    return true;
  }

  // Reads a whole chunk from `sources[i]`, falling back per block to the other sources
  // when a used block fails its checksum.
  void ReadWholeChunk(uint64_t chunk_id, std::vector<Replica> sources, size_t i,
                      std::shared_ptr<AlignedBuffer> buf, StatusDone done) {
    if (i == sources.size()) return done(absl::DataLossError("no good copy to rebuild from"));
    const Replica r = sources[i];
    DiskState* d = FindDisk(r.disk);
    if (!d || !DiskUsable(*d)) return ReadWholeChunk(chunk_id, sources, i + 1, buf, done);
    auto alive = alive_;
    d->dev->Read(ReplicaOffset(r, 0), kChunkBytes, buf->data(), Timed([=, this](absl::Status st) {
      if (!*alive) return;
      ChunkState* c = FindChunk(chunk_id);
      if (!c) return done(absl::NotFoundError("chunk freed"));
      if (!st.ok()) {
        NoteIoError(r.disk, st);
        return ReadWholeChunk(chunk_id, sources, i + 1, buf, done);
      }
      // Blocks that fail their checksum are fetched from the other copies.
      std::vector<uint32_t> bad;
      for (uint32_t b = 0; b < kBlocksPerChunk; ++b) {
        if (c->refs[b] > 0 && Crc32c(buf->data() + b * kBlockBytes, kBlockBytes) != c->crc[b]) {
          bad.push_back(b);
        }
      }
      if (bad.empty()) return done(absl::OkStatus());
      ++checksum_failures_;
      auto g = MakeGather(static_cast<int>(bad.size()), done);
      for (uint32_t b : bad) {
        std::vector<Replica> others;
        for (size_t k = 0; k < sources.size(); ++k) {
          if (k != i) others.push_back(sources[k]);
        }
        if (others.empty()) {
          g->Finish(absl::DataLossError("a block has no good copy"));
          continue;
        }
        auto one = std::make_shared<ReadRunState>();
        one->chunk = chunk_id;
        one->block = b;
        one->count = 1;
        one->crcs = {c->crc[b]};
        one->dst = buf->data() + b * kBlockBytes;
        one->candidates = others;
        one->buf = AlignedBuffer(kBlockBytes);
        one->done = [g](absl::Status st) { g->Finish(st); };
        TryReplica(one, 0);
      }
    }));
  }

  // ---------------------------------------------------------------- scrub
  void Scrub(Done<ScrubReport> done) override {
    auto report = std::make_shared<ScrubReport>();
    std::vector<uint64_t> ids;
    for (const auto& [id, c] : chunks_) ids.push_back(id);
    ScrubNext(std::make_shared<std::vector<uint64_t>>(std::move(ids)), 0, report,
              [this, report, done](absl::Status st) {
                if (!st.ok()) return done(st);
                // Repaired copies are durable before the scrub reports them.
                Commit([report, done](absl::Status st) {
                  if (!st.ok()) return done(st);
                  done(*report);
                });
              });
  }

  void ScrubNext(std::shared_ptr<std::vector<uint64_t>> ids, size_t i,
                 std::shared_ptr<ScrubReport> report, StatusDone done) {
    if (i == ids->size()) return loop_->Post([done] { done(absl::OkStatus()); });
    ChunkState* c = FindChunk((*ids)[i]);
    if (!c || c->rebuilding) return ScrubNext(ids, i + 1, report, done);
    std::vector<Replica> copies;
    for (const Replica& r : c->replicas) {
      if (ReplicaWritable(r)) copies.push_back(r);
    }
    report->chunks_checked++;
    auto bufs = std::make_shared<std::vector<AlignedBuffer>>();
    for (size_t k = 0; k < copies.size(); ++k) bufs->emplace_back(kChunkBytes);
    auto statuses = std::make_shared<std::vector<absl::Status>>(copies.size());
    const uint64_t chunk_id = c->id;
    auto alive = alive_;
    auto g = MakeGather(static_cast<int>(copies.size()) + 1, [=, this](absl::Status) {
      if (!*alive) return;
      ChunkState* c = FindChunk(chunk_id);
      // The next chunk starts once this chunk's repairs have landed.
      auto repairs = MakeGather(1, [=, this](absl::Status) {
        if (*alive) ScrubNext(ids, i + 1, report, done);
      });
      if (c) {
        for (uint32_t b = 0; b < kBlocksPerChunk; ++b) {
          if (c->refs[b] == 0 || c->busy[b]) continue;
          report->blocks_checked++;
          int good = -1;
          std::vector<size_t> bad;
          for (size_t k = 0; k < copies.size(); ++k) {
            const bool ok = (*statuses)[k].ok() &&
                            Crc32c((*bufs)[k].data() + b * kBlockBytes, kBlockBytes) == c->crc[b];
            if (ok && good < 0) good = static_cast<int>(k);
            if (!ok) bad.push_back(k);
          }
          report->bad_copies += bad.size();
          if (good < 0) {
            if (!copies.empty()) report->unrecoverable++;
            continue;
          }
          for (size_t k : bad) {
            ++repairs->remaining;
            Repair(copies[k], chunk_id, b, 1, (*bufs)[good].data() + b * kBlockBytes,
                   [report, repairs](absl::Status st) {
                     if (st.ok()) report->repaired++;
                     repairs->Finish(absl::OkStatus());
                   });
          }
        }
      }
      repairs->Finish(absl::OkStatus());
    });
    for (size_t k = 0; k < copies.size(); ++k) {
      disks_.at(copies[k].disk).dev->Read(ReplicaOffset(copies[k], 0), kChunkBytes, (*bufs)[k].data(),
                                          Timed([g, statuses, k, bufs](absl::Status st) {
                                            (*statuses)[k] = st;
                                            g->Finish(absl::OkStatus());
                                          }));
    }
    g->Finish(absl::OkStatus());
  }

  // ---------------------------------------------------------------- fsck
  void Fsck(Done<FsckReport> done) override {
    ++fsck_running_;  // background deletes pause: the trees stay as counted
    FsckWhenLoaded(std::move(done));
  }

  // Checks once every leaf is in memory and no evicted leaf that left the trees still
  // holds references (their pages are being read).
  void FsckWhenLoaded(Done<FsckReport> done) {
    auto alive = alive_;
    if (dropping_leaves_ || !dropped_leaves_.empty()) {
      loop_->RunAfter(1'000'000, [this, alive, done] {
        if (*alive) FsckWhenLoaded(done);
      });
      return;
    }
    LoadLeaves(AllLeaves(), [this, alive, done](absl::Status st) {
      if (!*alive) return;
      if (st.ok() && (dropping_leaves_ || !dropped_leaves_.empty())) return FsckWhenLoaded(done);
      absl::StatusOr<FsckReport> r = st.ok() ? absl::StatusOr<FsckReport>(FsckNow()) : st;
      --fsck_running_;
      ScheduleReap();
      loop_->Post([done, r = std::move(r)]() mutable { done(std::move(r)); });
    });
  }

  FsckReport FsckNow() const {
    FsckReport report;
    std::map<std::pair<uint64_t, uint32_t>, uint32_t> expected;
    std::set<const BlockMap::Node*> seen;
    // Each metadata page in use is named once: by a node, a chunk group or a change log.
    auto expect_page = [&](const MapEntry& p, const char* what) {
      expected[{p.chunk, p.block}]++;
      auto it = chunks_.find(p.chunk);
      if (it == chunks_.end() || !it->second.meta) {
        report.errors.push_back(absl::StrFormat("a %s's %s is not in a metadata chunk", what, DescribePointer(p)));
      } else if (it->second.crc[p.block] != p.crc) {
        report.errors.push_back(absl::StrFormat("checksum of %s disagrees with its chunk", DescribePointer(p)));
      }
    };
    std::function<void(const BlockMap::Node*)> visit = [&](const BlockMap::Node* n) {
      if (n == nullptr || !seen.insert(n).second) return;
      if (n->page.mapped()) expect_page(n->page, "tree node");
      if (n->level == 0) {
        uint32_t mapped = 0;
        SCRIBE_CHECK(n->entries != nullptr);
        for (const MapEntry& e : *n->entries) {
          if (!e.mapped()) continue;
          ++mapped;
          expected[{e.chunk, e.block}]++;
          auto it = chunks_.find(e.chunk);
          if (it == chunks_.end()) {
            report.errors.push_back(absl::StrFormat("a map names missing chunk %d", e.chunk));
          } else if (it->second.meta) {
            report.errors.push_back(absl::StrFormat("a map names block %d of metadata chunk %d", e.block, e.chunk));
          } else if (e.block >= kBlocksPerChunk) {
            report.errors.push_back(absl::StrFormat("a map names block %d of chunk %d", e.block, e.chunk));
          } else if (it->second.crc[e.block] != e.crc) {
            report.errors.push_back(absl::StrFormat("checksum of chunk %d block %d disagrees with its map", e.chunk, e.block));
          }
        }
        if (mapped != n->mapped) report.errors.push_back("a leaf's mapped count is wrong");
        return;
      }
      for (const auto& c : n->children) visit(c.get());
    };
    for (const auto& [id, v] : vsds_) {
      visit(v->map.root().get());
      for (const MapEntry& p : v->log_pages) expect_page(p, "change log");
    }
    for (const auto& [id, s] : snapshots_) {
      visit(s->map.root().get());
      for (const MapEntry& p : s->log_pages) expect_page(p, "change log");
    }
    for (const auto& [g, p] : group_pages_) expect_page(p, "chunk group");
    for (const auto& n : doomed_) visit(n.get());  // detached, not yet freed
    size_t meta_chunks = 0;
    for (const auto& [id, c] : chunks_) meta_chunks += c.meta ? 1 : 0;
    if (meta_chunks != meta_chunks_.size()) {
      report.errors.push_back(absl::StrFormat("%d metadata chunks, %d listed", meta_chunks, meta_chunks_.size()));
    }
    report.blocks_referenced = expected.size();
    report.chunks = chunks_.size();
    if (chunk_index_.size() != chunks_.size()) {
      report.errors.push_back(absl::StrFormat("the chunk index has %d entries for %d chunks",
                                              chunk_index_.size(), chunks_.size()));
    }
    std::map<std::pair<DiskId, uint64_t>, uint64_t> slot_users;
    for (const auto& [id, c] : chunks_) {
      if (FindChunk(id) != &c) report.errors.push_back(absl::StrFormat("chunk %d is not indexed", id));
      uint32_t used = 0;
      for (uint32_t b = 0; b < kBlocksPerChunk; ++b) {
        auto it = expected.find({id, b});
        const uint32_t want = it == expected.end() ? 0 : it->second;
        if (c.refs[b] != want) {
          report.errors.push_back(absl::StrFormat("chunk %d block %d has %d references, maps hold %d",
                                                  id, b, c.refs[b], want));
        }
        if (c.refs[b] > 0 || c.busy[b]) ++used;
      }
      if (used != c.used) report.errors.push_back(absl::StrFormat("chunk %d used count is wrong", id));
      std::set<NodeId> nodes;
      for (const Replica& r : c.replicas) {
        auto dit = disks_.find(r.disk);
        if (dit == disks_.end()) {
          report.errors.push_back(absl::StrFormat("chunk %d has a copy on unknown disk %d", id, r.disk.value));
          continue;
        }
        if (!nodes.insert(dit->second.node).second) {
          report.errors.push_back(absl::StrFormat("chunk %d has two copies on node %d", id, dit->second.node.value));
        }
        if (r.slot >= dit->second.slots || dit->second.slot_owner[r.slot] != id) {
          report.errors.push_back(absl::StrFormat("chunk %d's slot %d on disk %d is not recorded as its own",
                                                  id, r.slot, r.disk.value));
        }
        if (!slot_users.emplace(std::make_pair(r.disk, r.slot), id).second) {
          report.errors.push_back(absl::StrFormat("slot %d of disk %d is used twice", r.slot, r.disk.value));
        }
      }
      if (used == 0 && !c.open && !c.rebuilding && c.writes_in_flight == 0) {
        report.errors.push_back(absl::StrFormat("chunk %d is empty but not freed (leak)", id));
      }
    }
    for (const auto& [id, d] : disks_) {
      uint64_t owned = 0;
      for (uint64_t s = 0; s < d.slots; ++s) {
        if (d.slot_owner[s] == 0) continue;
        ++owned;
        auto cit = chunks_.find(d.slot_owner[s]);
        bool listed = false;
        if (cit != chunks_.end()) {
          for (const Replica& r : cit->second.replicas) listed = listed || (r.disk == id && r.slot == s);
          listed = listed || cit->second.rebuilding;
        }
        if (!listed) report.errors.push_back(absl::StrFormat("disk %d slot %d is held by no chunk (leak)", id.value, s));
      }
      if (owned != d.used_slots) report.errors.push_back(absl::StrFormat("disk %d used-slot count is wrong", id.value));
    }
    return report;
  }

  // ---------------------------------------------------------------- journal
  void ChooseMirrors() {
    std::map<NodeId, DiskId> per_node;
    for (const auto& [id, d] : disks_) {
      if (!DiskUsable(d)) continue;
      auto it = per_node.find(d.node);
      // Prefer SSD for metadata, then the lowest id (deterministic).
      if (it == per_node.end() ||
          (d.tier == Tier::kSsd && disks_.at(it->second).tier != Tier::kSsd)) {
        per_node[d.node] = id;
      }
    }
    std::vector<DiskId> mirrors;
    for (const auto& [node, disk] : per_node) {
      if (static_cast<int>(mirrors.size()) == options_.metadata_mirrors_max) break;
      mirrors.push_back(disk);
    }
    if (mirrors != mirrors_) {
      mirrors_ = std::move(mirrors);
      need_checkpoint_ = true;
    }
  }

  void Commit(StatusDone done) {
    if (fenced_) return PostError(done, fenced_status_);
    commit_waiters_.push_back(std::move(done));
    if (committing_) return;
    StartCommit();
  }

  void StartCommit() {
    committing_ = true;
    auto waiters = std::make_shared<std::vector<StatusDone>>(std::move(commit_waiters_));
    commit_waiters_.clear();
    auto alive = alive_;
    // The batch is what is pending now: records of writes that complete while the
    // flushes below run describe data those flushes may miss, so they wait for the
    // next commit.
    auto records = std::make_shared<std::string>(std::move(pending_records_));
    pending_records_.clear();
    auto frees = std::make_shared<BlockFrees>(std::move(pending_frees_));
    pending_frees_.clear();
    // A checkpoint, when due, is prepared now too: it must describe exactly the state
    // these records lead to, not writes completing later.
    ChooseMirrors();
    auto mirrors = std::make_shared<std::vector<DiskId>>(mirrors_);
    std::shared_ptr<Checkpoint> ckpt;
    if (need_checkpoint_ || dirty_nodes_ >= options_.checkpoint_dirty_pages_max ||
        journal_pos_ + RoundUp(kBatchHeaderBytes + records->size(), kBlockBytes) > half_bytes_) {
      absl::StatusOr<std::shared_ptr<Checkpoint>> c = PrepareCheckpoint();
      if (!c.ok()) {
        pending_records_.insert(0, *records);
        for (auto& f : *frees) pending_frees_.push_back(f);
        committing_ = false;
        for (auto& w : *waiters) w(c.status());
        return;
      }
      ckpt = std::move(*c);
      need_checkpoint_ = false;
    }
    // Returns a failed commit's records and frees to the next one.
    auto fail = [this, alive, waiters, records, frees](absl::Status st) {
      if (!*alive) return;
      pending_records_.insert(0, *records);
      for (auto& f : *frees) pending_frees_.push_back(f);
      committing_ = false;
      for (auto& w : *waiters) w(st);
      if (!commit_waiters_.empty()) StartCommit();
    };
    auto after_data = [this, alive, waiters, records, frees, ckpt, mirrors](absl::Status st) {
      if (!*alive) return;
      // 2. Then the journal (or the checkpoint's root): the batch now describes
      // durable data and pages only.
      WriteJournal(std::move(*records), ckpt ? &ckpt->root : nullptr, *mirrors,
                   [this, alive, waiters, frees, ckpt](absl::Status st) {
        if (!*alive) return;
        // 3. Blocks those records freed, and pages the new checkpoint no longer names,
        // may now be reused.
        if (st.ok()) {
          ReleaseFrees(std::move(*frees));
          if (ckpt) {
            ReleaseDroppedPages(std::move(ckpt->frees));
            ++checkpoints_;
            checkpoint_pages_written_ += ckpt->pages.size();
            last_checkpoint_pages_ = ckpt->pages.size();
            last_checkpoint_root_bytes_ = 0;
            for (const auto& b : ckpt->root) last_checkpoint_root_bytes_ += b.size();
          }
        } else {
          for (auto& f : *frees) pending_frees_.push_back(f);
          // The pages written stay valid (they are durable); the previous checkpoint
          // still names the ones this one replaced.
          if (ckpt) {
            for (const MapEntry& p : ckpt->frees) page_frees_.push_back(p);
          }
        }
        committing_ = false;
        for (auto& w : *waiters) w(st);
        if (!commit_waiters_.empty()) StartCommit();
      });
    };
    // 1. Make every completed data write and the checkpoint's pages durable: write the
    // pages, then flush each disk written since the last commit.
    auto flush_data = [this, alive, after_data]() {
      std::vector<DiskId> devs;
      flushing_chunks_ = std::move(unflushed_chunks_);
      unflushed_chunks_.clear();
      for (const auto& [id, chunks] : flushing_chunks_) {
        DiskState* d = FindDisk(id);
        if (d && DiskUsable(*d)) devs.push_back(id);
      }
      if (devs.empty()) return after_data(absl::OkStatus());
      auto g = MakeGather(static_cast<int>(devs.size()), after_data);
      for (DiskId id : devs) {
        disks_.at(id).dev->Flush(Timed([this, alive, g, id](absl::Status st) {
          if (!*alive) return;
          if (!st.ok()) {
            // Its recent writes may not be durable: those copies are stale until rebuilt
            // from the others.
            NoteIoError(id, st);
            MarkStale(id, flushing_chunks_[id]);
          }
          flushing_chunks_.erase(id);
          g->Finish(absl::OkStatus());
        }));
      }
    };
    if (!ckpt) return flush_data();
    checkpoint_pages_in_flight_ = true;
    WritePages(ckpt, [this, alive, ckpt, fail, flush_data](absl::Status st) {
      if (!*alive) return;
      checkpoint_pages_in_flight_ = false;
      if (!st.ok()) {
        UndoCheckpoint(*ckpt);
        return fail(st);
      }
      ScheduleTrim();  // the leaves it wrote may go now
      flush_data();
    });
  }

  std::string MakeBatch(const std::string& payload, uint64_t seq, uint32_t flags) const {
    std::string out(RoundUp(kBatchHeaderBytes + payload.size(), kBlockBytes), '\0');
    Encoder h;
    h.U32(kBatchMagic);
    h.U32(0);  // header crc, filled below
    h.U64(epoch_);
    h.U64(seq);
    h.U32(static_cast<uint32_t>(payload.size()));
    h.U32(Crc32c(payload.data(), payload.size()));
    h.U32(flags);
    std::memcpy(out.data(), h.out().data(), h.out().size());
    const uint32_t crc = Crc32c(out.data() + 8, kBatchHeaderBytes - 8);
    std::memcpy(out.data() + 4, &crc, 4);
    std::memcpy(out.data() + kBatchHeaderBytes, payload.data(), payload.size());
    return out;
  }

  // Writes `records` as one journal batch to every mirror (or a whole checkpoint when
  // one is due or the batch does not fit), then flushes the mirrors.
  // Writes `records` as one journal batch (or the checkpoint `ckpt`, which already
  // includes them) to `mirrors`, then flushes them.
  void WriteJournal(std::string records, const std::vector<std::string>* ckpt,
                    std::vector<DiskId> mirrors, StatusDone done) {
    std::erase_if(mirrors, [this](DiskId m) { return !DiskUsable(disks_.at(m)); });
    if (mirrors.empty()) {
      pending_records_.insert(0, records);
      need_checkpoint_ = true;
      return loop_->Post([done] { done(absl::UnavailableError("no healthy disk for metadata")); });
    }
    std::vector<std::string> batches;
    uint64_t offset;
    if (ckpt != nullptr) {
      ++epoch_;
      offset = (epoch_ % 2) * half_bytes_;
      for (size_t i = 0; i < ckpt->size(); ++i) {
        uint32_t flags = (i == 0 ? kFlagCheckpointBegin : 0) | (i + 1 == ckpt->size() ? kFlagCheckpointEnd : 0);
        batches.push_back(MakeBatch((*ckpt)[i], ++sequence_, flags));
      }
      journal_pos_ = 0;
    } else {
      if (records.empty()) return loop_->Post([done] { done(absl::OkStatus()); });
      offset = (epoch_ % 2) * half_bytes_ + journal_pos_;
      batches.push_back(MakeBatch(records, ++sequence_, 0));
    }
    auto data = std::make_shared<AlignedBuffer>(0);
    size_t total = 0;
    for (auto& b : batches) total += b.size();
    *data = AlignedBuffer(total);
    size_t pos = 0;
    for (auto& b : batches) {
      std::memcpy(data->data() + pos, b.data(), b.size());
      pos += b.size();
    }
    journal_pos_ += total;
    const uint64_t at = kSuperblockBytes + offset;
    auto ok_mirrors = std::make_shared<int>(0);
    auto alive = alive_;
    auto g = MakeGather(static_cast<int>(mirrors.size()),
                        [this, alive, ok_mirrors, done, data](absl::Status) {
                          if (!*alive) return;
                          if (*ok_mirrors == 0) {
                            need_checkpoint_ = true;
                            return done(absl::UnavailableError("metadata journal write failed on every mirror"));
                          }
                          done(absl::OkStatus());
                        });
    for (DiskId m : mirrors) {
      BlockDevice* dev = disks_.at(m).dev;
      // Durable in one operation where the device can (RWF_DSYNC on files).
      dev->WriteDurable(at, total, data->data(), Timed([this, alive, g, ok_mirrors, m, data](absl::Status st) {
        if (!*alive) return;
        if (st.ok()) {
          ++*ok_mirrors;
        } else {
          need_checkpoint_ = true;  // this mirror missed a batch: rewrite all later
          NoteIoError(m, st);
        }
        g->Finish(absl::OkStatus());
      }));
    }
  }

  // ---------------------------------------------------------------- metadata pages
  // Metadata pages live in metadata chunks, mirrored on up to three distinct nodes (as
  // many as the pool has), allocated from the pool's own space as checkpoints need them.
  int MetaReplication() const {
    std::set<NodeId> nodes;
    for (const auto& [id, d] : disks_) {
      if (!d.failed) nodes.insert(d.node);
    }
    return std::clamp<int>(static_cast<int>(nodes.size()), 1, 3);
  }

  // Slots data allocation leaves free so that checkpoints (which write changed pages
  // before they free the old ones) can always commit, delete and heal on a full pool.
  uint64_t MetadataReserveSlots() const {
    uint64_t slots = 0;
    for (const auto& [id, d] : disks_) {
      if (!d.failed) slots += d.slots;
    }
    const uint64_t most = 2 * options_.checkpoint_dirty_pages_max / kBlocksPerChunk + 2;
    return static_cast<uint64_t>(MetaReplication()) * std::clamp<uint64_t>(slots / 64, 2, most);
  }

  uint64_t FreeSlots() const {
    uint64_t free = 0;
    for (const auto& [id, d] : disks_) {
      if (DiskUsable(d)) free += d.slots - d.used_slots;
    }
    return free;
  }

  void CloseMetaChunk() {
    if (meta_open_chunk_ == 0) return;
    const uint64_t id = meta_open_chunk_;
    meta_open_chunk_ = 0;
    if (ChunkState* c = FindChunk(id)) {
      c->open = false;
      MaybeFreeChunk(c);
    }
  }

  // Takes `n` free page slots (refs 1: in use from now on).
  absl::StatusOr<std::vector<MapEntry>> AllocatePages(size_t n) {
    std::vector<MapEntry> out;
    while (out.size() < n) {
      ChunkState* c = meta_open_chunk_ ? FindChunk(meta_open_chunk_) : nullptr;
      if (c == nullptr || c->used == kBlocksPerChunk || !ChunkAcceptsWrites(*c)) {
        CloseMetaChunk();
        c = nullptr;
        for (uint64_t id : meta_chunks_) {  // the emptiest metadata chunk with room
          ChunkState* m = FindChunk(id);
          if (m == nullptr || m->used == kBlocksPerChunk || !ChunkAcceptsWrites(*m)) continue;
          if (c == nullptr || m->used < c->used) c = m;
        }
        if (c == nullptr || c->used > kBlocksPerChunk / 2) {
          absl::StatusOr<ChunkState*> fresh = NewChunk(MetaReplication(), /*meta=*/true);
          if (fresh.ok()) {
            c = *fresh;
          } else if (c == nullptr) {
            for (const MapEntry& e : out) ReleasePage(e);
            return absl::ResourceExhaustedError(absl::StrCat(
                "no space for metadata pages: ", fresh.status().message()));
          }
        }
        c->open = true;
        meta_open_chunk_ = c->id;
      }
      for (uint32_t b = 0; b < kBlocksPerChunk && out.size() < n; ++b) {
        if (c->refs[b] == 0 && !c->busy[b]) {
          c->refs[b] = 1;
          ++c->used;
          out.push_back(MapEntry{c->id, b, 0});
        }
      }
    }
    return out;
  }

  // A page that no durable checkpoint names (one just allocated) is free at once.
  void ReleasePage(const MapEntry& p) {
    ChunkState* c = FindChunk(p.chunk);
    if (c == nullptr || c->refs[p.block] == 0) return;
    c->refs[p.block] = 0;
    --c->used;
    MaybeFreeChunk(c);
  }

  // A page named by the last durable checkpoint stopped describing anything: it is
  // reused only after the next checkpoint is durable.
  void DropPage(const MapEntry& p) {
    ChunkState* c = FindChunk(p.chunk);
    if (c == nullptr || !c->meta || c->refs[p.block] == 0) return;  // e.g. a failed open
    c->refs[p.block] = 0;
    c->busy[p.block] = true;
    page_frees_.push_back(p);
  }

  void ReleaseDroppedPages(std::vector<MapEntry> pages) {
    for (const MapEntry& p : pages) {
      ChunkState* c = FindChunk(p.chunk);
      if (c == nullptr || !c->busy[p.block] || c->refs[p.block] != 0) continue;
      c->busy[p.block] = false;
      --c->used;
      MaybeFreeChunk(c);
    }
  }

  void NoteNodeDirtied() { ++dirty_nodes_; }

  // ---------------------------------------------------------------- background deletes
  // A tree no snapshot or VSD uses any more is queued here and destroyed a bounded number
  // of nodes per loop turn (a leaf unreferences its blocks, a written node drops its
  // page), so deleting a snapshot of any size never stalls I/O. Crash-safe as it is:
  // the record that detached the tree is in the journal, and an open counts block
  // references from the trees that remain.
  // A step frees at most this many nodes (a leaf: up to 256 block references, ~0.2 ms
  // for a step of leaves here).
  static constexpr size_t kReapNodesPerTurn = 16;

  void Retire(BlockMap* map) {
    std::shared_ptr<BlockMap::Node> root = map->ReleaseRoot();
    if (!root) return;
    // Replayed records may already free the chunks this tree's blocks are in (the run
    // that wrote them had reaped it): at recovery the tree goes at once.
    if (replaying_) return;
    doomed_.push_back(std::move(root));
    ScheduleReap();
  }

  void ScheduleReap() {
    if (reap_scheduled_ || doomed_.empty() || fsck_running_ > 0) return;
    reap_scheduled_ = true;
    auto alive = alive_;
    // A timer, not Post: posted callbacks run before the loop polls for I/O.
    loop_->RunAfter(options_.background_delete_pause_ns, [this, alive] {
      if (!*alive) return;
      reap_scheduled_ = false;
      if (fsck_running_ > 0) return;  // fsck schedules it again
      const int64_t start = loop_->NowNanos();
      ReapSome(kReapNodesPerTurn);
      delete_step_max_ns_ = std::max(delete_step_max_ns_, loop_->NowNanos() - start);
      ScheduleReap();
    });
  }

  // Destroys up to `budget` queued nodes, depth first (the queue stays a path long).
  void ReapSome(size_t budget) {
    const size_t frees_before = pending_frees_.size();
    while (budget > 0 && !doomed_.empty()) {
      std::shared_ptr<BlockMap::Node> n = std::move(doomed_.back());
      doomed_.pop_back();
      if (n.use_count() > 1) continue;  // a live tree shares it: only this reference goes
      if (n->level > 0) {
        for (auto& c : n->children) {
          if (c) doomed_.push_back(std::move(c));
        }
      }
      --budget;
      ++delete_nodes_freed_;
    }  // the last node is destroyed here
    if (pending_frees_.size() > frees_before) {
      delete_bytes_freed_ += (pending_frees_.size() - frees_before) * kBlockBytes;
    }
  }

  void DropLogPages(std::vector<MapEntry>* pages) {
    for (const MapEntry& p : *pages) DropPage(p);
    pages->clear();
  }

  // What one checkpoint writes: new pages, and the small root that names them.
  struct Checkpoint {
    std::vector<MapEntry> pages;  // in write order; data holds them back to back
    AlignedBuffer data;
    std::vector<std::weak_ptr<BlockMap::Node>> nodes;  // given pages[i] for i < nodes.size()
    std::vector<uint64_t> groups;                      // chunk groups rewritten
    struct LogRef {
      bool of_snapshot;
      uint64_t owner;
    };
    std::vector<LogRef> logs;  // change logs rewritten
    std::vector<MapEntry> frees;  // pages the previous checkpoint named that this one does not
    std::vector<std::string> root;
  };

  // Writes every node, change log and chunk group that changed since the last checkpoint
  // to new pages (in memory: `data`), and encodes the root naming them. Synchronous, so
  // the checkpoint describes exactly the state after the records committed with it.
  absl::StatusOr<std::shared_ptr<Checkpoint>> PrepareCheckpoint() {
    auto ck = std::make_shared<Checkpoint>();
    // Changed tree nodes, children before parents. A node with a page has no changed
    // node below it (changing a node unsets the pages of its whole path), and a shared
    // node is never changed in place.
    std::vector<std::shared_ptr<BlockMap::Node>> nodes;
    std::set<const BlockMap::Node*> seen;
    std::function<void(const std::shared_ptr<BlockMap::Node>&)> collect =
        [&](const std::shared_ptr<BlockMap::Node>& n) {
          if (!n || n->page.mapped() || !seen.insert(n.get()).second) return;
          if (n->level > 0) {
            for (const auto& c : n->children) collect(c);
          }
          nodes.push_back(n);
        };
    for (const auto& [id, v] : vsds_) collect(v->map.root());
    for (const auto& [id, s] : snapshots_) collect(s->map.root());
    // Change logs whose contents changed since they were written.
    struct LogJob {
      Checkpoint::LogRef ref;
      const ChangeLog* log;
      std::vector<MapEntry>* pages;
      uint64_t* written;
      size_t count;
    };
    std::vector<LogJob> logs;
    auto consider_log = [&](bool of_snapshot, uint64_t owner, SnapshotId base, const ChangeLog& log,
                            std::vector<MapEntry>* pages, uint64_t* written) {
      if (*written == log.version()) return;
      const size_t extents = base.valid() && log.known() ? log.extent_count() : 0;
      logs.push_back(LogJob{{of_snapshot, owner}, &log, pages, written,
                            (extents + kExtentsPerLogPage - 1) / kExtentsPerLogPage});
    };
    for (auto& [id, v] : vsds_) {
      consider_log(false, id.value, v->base, v->changes, &v->log_pages, &v->log_version_written);
    }
    for (auto& [id, s] : snapshots_) {
      consider_log(true, id.value, s->base, s->changes, &s->log_pages, &s->log_version_written);
    }
    size_t need = nodes.size() + dirty_groups_.size();
    for (const LogJob& j : logs) need += j.count;
    absl::StatusOr<std::vector<MapEntry>> where = AllocatePages(need);
    if (!where.ok()) return where.status();
    ck->data = AlignedBuffer(need * kPageBytes);
    ck->pages.reserve(need);  // take() hands out pointers into it
    size_t next = 0;
    auto take = [&]() -> std::pair<MapEntry*, uint8_t*> {
      ck->pages.push_back((*where)[next]);
      return {&ck->pages.back(), ck->data.data() + next++ * kPageBytes};
    };
    auto seal = [&](MapEntry* p, uint32_t crc) {
      p->crc = crc;
      FindChunk(p->chunk)->crc[p->block] = crc;
    };
    for (const auto& n : nodes) {
      auto [p, buf] = take();
      seal(p, EncodeNodePage(*n, pool_uuid_, buf));
      n->page = *p;
      ck->nodes.push_back(n);
    }
    for (const LogJob& j : logs) {
      for (const MapEntry& old : *j.pages) DropPage(old);
      j.pages->clear();
      auto it = j.log->extents().begin();
      for (size_t k = 0; k < j.count; ++k) {
        std::vector<std::pair<uint64_t, uint64_t>> extents;
        for (; it != j.log->extents().end() && extents.size() < kExtentsPerLogPage; ++it) {
          extents.push_back(*it);
        }
        auto [p, buf] = take();
        seal(p, EncodeChangeLogPage(extents, pool_uuid_, buf));
        j.pages->push_back(*p);
      }
      *j.written = j.log->version();
      ck->logs.push_back(j.ref);
    }
    absl::Status group_status;
    for (uint64_t g : dirty_groups_) {
      auto old = group_pages_.find(g);
      if (old != group_pages_.end()) {
        DropPage(old->second);
        group_pages_.erase(old);
      }
      ck->groups.push_back(g);
      std::vector<ChunkRecord> records;
      for (auto it = chunks_.lower_bound(g * kChunksPerGroup);
           it != chunks_.end() && it->first < (g + 1) * kChunksPerGroup; ++it) {
        if (it->second.meta) continue;
        records.push_back(ChunkRecord{it->first, it->second.replication, it->second.replicas});
      }
      if (records.empty()) continue;
      auto [p, buf] = take();
      absl::StatusOr<uint32_t> crc = EncodeChunkGroupPage(records, pool_uuid_, buf);
      if (!crc.ok()) {
        group_status = crc.status();
        break;
      }
      seal(p, *crc);
      group_pages_[g] = *p;
    }
    dirty_groups_.clear();
    // Pages taken for groups that turned out empty.
    for (size_t k = next; k < where->size(); ++k) ReleasePage((*where)[k]);
    ck->frees = std::move(page_frees_);
    page_frees_.clear();
    dirty_nodes_ = 0;
    if (!group_status.ok()) {
      UndoCheckpoint(*ck);
      return group_status;
    }
    absl::StatusOr<std::vector<std::string>> root = EncodeRoot();
    if (!root.ok()) {
      UndoCheckpoint(*ck);
      return root.status();
    }
    ck->root = std::move(*root);
    return ck;
  }

  // A checkpoint that could not be written: what it wrote is forgotten (and rewritten by
  // the next one), and the pages it would have freed stay until a checkpoint lands.
  void UndoCheckpoint(Checkpoint& ck) {
    std::set<std::pair<uint64_t, uint32_t>> undone;
    auto forget = [&](MapEntry* p) {
      undone.insert({p->chunk, p->block});
      *p = MapEntry{};
    };
    for (size_t i = 0; i < ck.nodes.size(); ++i) {
      std::shared_ptr<BlockMap::Node> n = ck.nodes[i].lock();
      // A node changed since then already dropped its page (released with the frees).
      if (n && n->page.mapped() && n->page.SameBlock(ck.pages[i])) forget(&n->page);
    }
    auto forget_log = [&](std::vector<MapEntry>* pages, uint64_t* written) {
      for (MapEntry& p : *pages) forget(&p);
      pages->clear();
      *written = 0;  // a log still at version 0 is empty and has no pages
    };
    for (const Checkpoint::LogRef& l : ck.logs) {
      if (l.of_snapshot) {
        if (SnapshotState* s = FindSnapshot(SnapshotId{l.owner})) forget_log(&s->log_pages, &s->log_version_written);
      } else if (VsdState* v = FindVsdState(VsdId{l.owner})) {
        forget_log(&v->log_pages, &v->log_version_written);
      }
    }
    for (uint64_t g : ck.groups) {
      auto it = group_pages_.find(g);
      if (it != group_pages_.end()) {
        MapEntry p = it->second;
        forget(&p);
        group_pages_.erase(it);
      }
      dirty_groups_.insert(g);
    }
    for (const MapEntry& p : ck.pages) {
      if (undone.count({p.chunk, p.block})) ReleasePage(p);
    }
    ck.pages.clear();
    ck.nodes.clear();
    for (const MapEntry& p : ck.frees) page_frees_.push_back(p);
    ck.frees.clear();
    need_checkpoint_ = true;
    dirty_nodes_ = std::max<uint64_t>(dirty_nodes_, 1);
  }

  // Writes a checkpoint's pages to every writable copy of their chunks. Fails when some
  // page reached no copy.
  void WritePages(std::shared_ptr<Checkpoint> ck, StatusDone done) {
    WriteToCopies(ck->pages, ck->data.data(), ck, [done](bool landed) {
      done(landed ? absl::OkStatus() : absl::UnavailableError("a metadata page reached no copy"));
    });
  }

  // The checkpoint's root: counters, disks, metadata chunks, and pointers to the pages
  // of everything else. Its size follows the number of disks, metadata chunks, chunk
  // groups and VSDs/snapshots, not the data mapped.
  absl::StatusOr<std::vector<std::string>> EncodeRoot() const {
    std::vector<std::string> out(1);
    auto add = [&](const std::string& rec) {
      if (out.back().size() + rec.size() > kCheckpointBatchBytes) out.emplace_back();
      out.back().append(rec);
    };
    {
      Encoder e;
      e.U8(kRecCounters);
      e.U64(next_disk_);
      e.U64(next_chunk_);
      e.U64(next_vsd_);
      e.U64(next_snapshot_);
      add(e.out());
    }
    for (const auto& [id, d] : disks_) {
      Encoder e;
      e.U8(kRecAddDisk);
      e.U64(id.value);
      e.U64(d.node.value);
      e.U8(static_cast<uint8_t>(d.tier));
      e.U64(d.data_start + d.slots * kChunkBytes);
      add(e.out());
      if (d.failed) {
        Encoder f;
        f.U8(kRecFailDisk);
        f.U64(id.value);
        f.U8(d.evicted ? 1 : 0);
        add(f.out());
      }
    }
    for (uint64_t id : meta_chunks_) {
      const ChunkState& c = chunks_.at(id);
      Encoder e;
      EncodeAddChunk(e, id, c.replication, true, c.replicas);
      add(e.out());
    }
    for (const auto& [g, page] : group_pages_) {
      Encoder e;
      e.U8(kRecCkptChunkGroup);
      e.U64(g);
      EncodePagePointer(e, page);
      add(e.out());
    }
    auto add_log = [&](bool of_snapshot, uint64_t owner, SnapshotId base, const ChangeLog& log,
                       const std::vector<MapEntry>& pages) {
      if (!base.valid()) return;
      Encoder e;
      e.U8(kRecCkptChangeLog);
      e.U8(of_snapshot ? 1 : 0);
      e.U64(owner);
      e.U64(base.value);
      e.U8(log.known() ? 1 : 0);
      e.U32(static_cast<uint32_t>(pages.size()));
      for (const MapEntry& p : pages) EncodePagePointer(e, p);
      add(e.out());
    };
    for (const auto& [id, v] : vsds_) {
      Encoder e;
      e.U8(kRecCkptVsd);
      EncodeVsdHeader(e, id, v->name, v->size_bytes, v->replication, v->flash_priority);
      e.U8(static_cast<uint8_t>(v->map.levels()));
      EncodePagePointer(e, v->map.root() ? v->map.root()->page : MapEntry{});
      add(e.out());
      add_log(false, id.value, v->base, v->changes, v->log_pages);
    }
    for (const auto& [id, s] : snapshots_) {
      Encoder e;
      e.U8(kRecCkptSnapshot);
      e.U64(id.value);
      e.U64(s->vsd.value);
      e.Str(s->name);
      e.U64(s->generation);
      e.U64(s->size_bytes);
      e.U8(static_cast<uint8_t>(s->map.levels()));
      EncodePagePointer(e, s->map.root() ? s->map.root()->page : MapEntry{});
      add(e.out());
      add_log(true, id.value, s->base, s->changes, s->log_pages);
    }
    Encoder end;
    end.U8(kRecCkptEnd);
    add(end.out());
    uint64_t bytes = 0;
    for (const auto& b : out) bytes += RoundUp(kBatchHeaderBytes + b.size(), kBlockBytes);
    // Leave room in the half for journal batches after the checkpoint.
    if (bytes > half_bytes_ * 3 / 4) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "the metadata root needs %d bytes, more than a journal half holds (%d); raise "
          "PoolOptions::metadata_bytes (now %d)",
          bytes, half_bytes_ * 3 / 4, options_.metadata_bytes));
    }
    return out;
  }

  // ---------------------------------------------------------------- recovery
  struct Candidate {
    uint64_t epoch = 0;
    uint64_t last_seq = 0;
    std::vector<std::string> payloads;
    size_t root_payloads = 0;  // the first ones: the checkpoint's root; then journal batches
  };

  // Parses one half of a metadata region: a complete checkpoint and the batches after it.
  Candidate ParseHalf(const uint8_t* p, uint64_t bytes) const {
    Candidate c;
    uint64_t pos = 0;
    bool complete = false;
    uint64_t epoch = 0, seq = 0;
    while (pos + kBatchHeaderBytes <= bytes) {
      Decoder h(reinterpret_cast<const char*>(p + pos), kBatchHeaderBytes);
      if (h.U32() != kBatchMagic) break;
      const uint32_t hcrc = h.U32();
      if (hcrc != Crc32c(p + pos + 8, kBatchHeaderBytes - 8)) break;
      const uint64_t e = h.U64();
      const uint64_t s = h.U64();
      const uint32_t len = h.U32();
      const uint32_t pcrc = h.U32();
      const uint32_t flags = h.U32();
      if (pos == 0) {
        if (!(flags & kFlagCheckpointBegin)) break;
        epoch = e;
      } else if (e != epoch || s != seq + 1) {
        break;
      }
      if (pos + kBatchHeaderBytes + len > bytes) break;
      if (Crc32c(p + pos + kBatchHeaderBytes, len) != pcrc) break;
      seq = s;
      c.payloads.emplace_back(reinterpret_cast<const char*>(p + pos + kBatchHeaderBytes), len);
      if (flags & kFlagCheckpointEnd) {
        complete = true;
        c.root_payloads = c.payloads.size();
      }
      pos += RoundUp(kBatchHeaderBytes + len, kBlockBytes);
    }
    if (!complete) return Candidate{};
    c.epoch = epoch;
    c.last_seq = seq;
    return c;
  }

  void Recover(std::vector<DiskSpec> disks, Done<std::unique_ptr<Pool>> done,
               std::unique_ptr<Pool> self) {
    auto holder = std::make_shared<std::unique_ptr<Pool>>(std::move(self));
    const uint64_t region = kSuperblockBytes + 2 * half_bytes_;
    auto bufs = std::make_shared<std::vector<AlignedBuffer>>();
    for (size_t i = 0; i < disks.size(); ++i) bufs->emplace_back(region);
    auto statuses = std::make_shared<std::vector<absl::Status>>(disks.size());
    auto alive = alive_;
    auto g = MakeGather(static_cast<int>(disks.size()) + 1, [=, this](absl::Status) {
      if (!*alive) return;
      // Superblocks say which disk is which; the best journal wins.
      auto devs = std::make_shared<std::map<DiskId, BlockDevice*>>();
      Candidate best;
      uint64_t uuid = 0;
      std::vector<std::string> why;  // per disk, when no journal is found
      for (size_t i = 0; i < disks.size(); ++i) {
        Superblock sb;
        if (!(*statuses)[i].ok()) {
          why.push_back(absl::StrFormat("disk %d: %s", i, (*statuses)[i].message()));
          continue;
        }
        uint32_t magic;
        std::memcpy(&magic, (*bufs)[i].data(), 4);
        if (magic == kSuperMagicV1) {
          return done(absl::FailedPreconditionError(absl::StrFormat(
              "disk %d holds a pool in on-disk format 1 (metadata kept whole in the journal), "
              "which this version cannot open; format 2 keeps metadata in pages and there is "
              "no upgrade: reformat the disks",
              i)));
        }
        if (!DecodeSuperblock((*bufs)[i].data(), &sb)) {
          why.push_back(absl::StrFormat("disk %d: no pool superblock", i));
          continue;
        }
        if (sb.metadata_bytes != options_.metadata_bytes) {
          why.push_back(absl::StrFormat("disk %d: formatted with a %d-byte metadata region, not %d", i,
                                        sb.metadata_bytes, options_.metadata_bytes));
          continue;
        }
        if (uuid == 0) uuid = sb.pool_uuid;
        if (sb.pool_uuid != uuid) continue;
        (*devs)[sb.disk] = disks[i].device;
        bool any = false;
        for (int half = 0; half < 2; ++half) {
          Candidate c = ParseHalf((*bufs)[i].data() + kSuperblockBytes + half * half_bytes_, half_bytes_);
          any = any || c.epoch != 0;
          if (c.epoch > best.epoch || (c.epoch == best.epoch && c.last_seq > best.last_seq)) {
            best = std::move(c);
          }
        }
        if (!any) why.push_back(absl::StrFormat("disk %d (pool disk %d): no complete checkpoint in either journal half", i, sb.disk.value));
      }
      if (best.epoch == 0) {
        return done(absl::DataLossError(absl::StrCat("no disk holds a valid pool metadata journal (",
                                                     absl::StrJoin(why, "; "), ")")));
      }
      pool_uuid_ = uuid;
      replaying_ = true;
      for (size_t i = 0; i < best.root_payloads; ++i) {
        Decoder d(best.payloads[i].data(), best.payloads[i].size());
        while (!d.done() && d.ok()) Apply(d);
        if (!d.ok()) {
          replaying_ = false;
          return done(absl::DataLossError("metadata checkpoint root record is malformed"));
        }
      }
      for (auto& [id, d] : disks_) {
        auto it = devs->find(id);
        d.dev = it == devs->end() ? nullptr : it->second;
      }
      auto journal = std::make_shared<Candidate>(std::move(best));
      // The pages the root names, then the journal after it.
      LoadPages([=, this](absl::Status st) {
        if (!*alive) return;
        if (!st.ok()) {
          replaying_ = false;
          return done(absl::DataLossError(absl::StrCat("opening the pool: ", st.message())));
        }
        FinishRecover(*journal, *devs, holder, done);
      });
    });
    for (size_t i = 0; i < disks.size(); ++i) {
      if (disks[i].device == nullptr || disks[i].device->size_bytes() < region) {
        (*statuses)[i] = absl::InvalidArgumentError("disk too small");
        g->Finish(absl::OkStatus());
        continue;
      }
      disks[i].device->Read(0, region, (*bufs)[i].data(), Timed([g, statuses, i, bufs](absl::Status st) {
        (*statuses)[i] = st;
        g->Finish(absl::OkStatus());
      }));
    }
    g->Finish(absl::OkStatus());
  }

  void FinishRecover(const Candidate& best, const std::map<DiskId, BlockDevice*>& devs,
                     std::shared_ptr<std::unique_ptr<Pool>> holder, Done<std::unique_ptr<Pool>> done) {
    for (size_t i = best.root_payloads; i < best.payloads.size(); ++i) {
      Decoder d(best.payloads[i].data(), best.payloads[i].size());
      while (!d.done() && d.ok()) Apply(d);
      if (!d.ok()) {
        replaying_ = false;
        return done(absl::DataLossError("metadata journal record is malformed"));
      }
    }
    replaying_ = false;
    pending_records_.clear();
    epoch_ = best.epoch;
    sequence_ = best.last_seq;
    for (auto& [id, d] : disks_) {
      auto it = devs.find(id);
      d.dev = it == devs.end() ? nullptr : it->second;
    }
    // A node none of whose disks answered is down (AttachDevice + SetNodeOnline bring
    // it back, EvictNode gives it up); a missing disk of a present node has failed.
    std::set<NodeId> present;
    for (const auto& [id, d] : disks_) {
      if (d.dev != nullptr) present.insert(d.node);
    }
    std::vector<DiskId> missing;
    for (const auto& [id, d] : disks_) {
      if (d.dev != nullptr || d.failed) continue;
      if (present.count(d.node)) {
        missing.push_back(id);
      } else {
        nodes_online_[d.node] = false;
      }
    }
    // Blocks freed by replayed records are free now: their freeing is durable.
    auto frees = std::move(pending_frees_);
    pending_frees_.clear();
    ReleaseFrees(std::move(frees));
    // Chunks allocated for writes that never completed before the crash hold nothing,
    // and metadata chunks whose pages all belonged to older checkpoints hold nothing.
    std::vector<uint64_t> ids;
    for (const auto& [id, c] : chunks_) ids.push_back(id);
    for (uint64_t id : ids) {
      if (ChunkState* c = FindChunk(id)) MaybeFreeChunk(c);
    }
    reuse_candidates_.clear();
    for (const auto& [id, c] : chunks_) NoteMaybeReusable(&c);
    pending_records_.clear();
    for (DiskId id : missing) FailDiskNow(id, false);
    need_checkpoint_ = true;  // start a fresh epoch on the current mirrors
    ChooseMirrors();
    Heal();
    Commit([holder, done](absl::Status st) {
      if (!st.ok()) return done(st);
      done(std::move(*holder));
    });
  }

  // Reads one page from the first copy whose contents match the pointer's checksum.
  void ReadPage(const MapEntry& p, std::function<void(absl::StatusOr<std::shared_ptr<AlignedBuffer>>)> done) {
    const ChunkState* c = FindChunk(p.chunk);
    if (c == nullptr || !c->meta || p.block >= kBlocksPerChunk) {
      // Posted: callers (ReadPages) must never be re-entered.
      absl::Status st = absl::DataLossError(absl::StrCat(DescribePointer(p), ": not in a metadata chunk"));
      return loop_->Post([done, st] { done(st); });
    }
    auto buf = std::make_shared<AlignedBuffer>(kPageBytes);
    auto why = std::make_shared<std::vector<std::string>>();
    // Up-to-date copies first; a stale one may still hold the page (its checksum says).
    auto copies = std::make_shared<std::vector<Replica>>(c->replicas);
    std::stable_partition(copies->begin(), copies->end(), [](const Replica& r) { return !r.stale; });
    auto alive = alive_;
    auto attempt = std::make_shared<std::function<void(size_t)>>();
    *attempt = [this, alive, p, buf, why, copies, attempt, done](size_t i) {
      if (i == copies->size()) {
        absl::Status st = absl::DataLossError(
            absl::StrFormat("%s: no good copy (%s)", DescribePointer(p), absl::StrJoin(*why, "; ")));
        loop_->Post([done, st] { done(st); });
        *attempt = nullptr;  // break the cycle (this lambda and its captures are gone now)
        return;
      }
      const Replica r = (*copies)[i];
      const DiskState* d = FindDisk(r.disk);
      if (d == nullptr || !DiskUsable(*d)) {
        why->push_back(absl::StrFormat("disk %d: %s", r.disk.value,
                                       d == nullptr || d->dev == nullptr ? "absent"
                                       : d->failed                      ? "failed"
                                                                        : "node offline"));
        return (*attempt)(i + 1);
      }
      d->dev->Read(ReplicaOffset(r, p.block), kPageBytes, buf->data(),
                   Timed([this, alive, p, buf, why, attempt, done, r, i](absl::Status st) {
                     if (!*alive) return;
                     if (st.ok() && Crc32c(buf->data(), kPageBytes) == p.crc) {
                       *attempt = nullptr;
                       return done(buf);
                     }
                     why->push_back(absl::StrFormat("disk %d: %s", r.disk.value,
                                                    st.ok() ? "checksum mismatch" : st.message()));
                     (*attempt)(i + 1);
                   }));
    };
    (*attempt)(0);
  }

  // Reads `pages` and calls `each` for every one (in any order); stops at the first
  // error. Pages at consecutive blocks of a chunk (a checkpoint writes a parent's
  // children side by side) are read as one run of up to kPagesPerRun from one copy; a
  // page whose copy there fails its checksum (or a run whose read fails) is read alone,
  // from every copy in turn (ReadPage). At most kPageReadsInFlight reads at once.
  static constexpr size_t kPagesPerRun = 64;

  void ReadPages(std::vector<MapEntry> pages,
                 std::function<absl::Status(size_t, const uint8_t*)> each, StatusDone done) {
    struct State {
      std::vector<MapEntry> pages;
      std::function<absl::Status(size_t, const uint8_t*)> each;
      StatusDone done;
      std::deque<std::vector<size_t>> runs;  // indexes into pages, consecutive blocks
      std::deque<size_t> singles;            // pages to read alone
      size_t in_flight = 0;
      absl::Status error;
    };
    auto s = std::make_shared<State>();
    s->pages = std::move(pages);
    s->each = std::move(each);
    s->done = std::move(done);
    std::vector<size_t> order(s->pages.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t x, size_t y) {
      const MapEntry& a = s->pages[x];
      const MapEntry& b = s->pages[y];
      return a.chunk != b.chunk ? a.chunk < b.chunk : a.block < b.block;
    });
    for (size_t i : order) {
      if (!s->runs.empty()) {
        std::vector<size_t>& r = s->runs.back();
        const MapEntry& last = s->pages[r.back()];
        const MapEntry& p = s->pages[i];
        if (r.size() < kPagesPerRun && p.chunk == last.chunk && p.block == last.block + 1) {
          r.push_back(i);
          continue;
        }
      }
      s->runs.push_back({i});
    }
    auto alive = alive_;
    auto pump = std::make_shared<std::function<void()>>();
    *pump = [this, alive, s, pump]() {
      while (s->error.ok() && (!s->singles.empty() || !s->runs.empty()) &&
             s->in_flight < kPageReadsInFlight) {
        ++s->in_flight;
        if (!s->singles.empty()) {
          const size_t i = s->singles.front();
          s->singles.pop_front();
          ReadPage(s->pages[i], [alive, s, pump, i](absl::StatusOr<std::shared_ptr<AlignedBuffer>> r) {
            if (!*alive) return;
            --s->in_flight;
            if (s->error.ok()) s->error = r.ok() ? s->each(i, (*r)->data()) : r.status();
            (*pump)();
          });
          continue;
        }
        auto run = std::make_shared<std::vector<size_t>>(std::move(s->runs.front()));
        s->runs.pop_front();
        ReadPageRun(s->pages, *run, [alive, s, pump, run](std::shared_ptr<AlignedBuffer> buf) {
          if (!*alive) return;
          --s->in_flight;
          for (size_t k = 0; k < run->size() && s->error.ok(); ++k) {
            const size_t i = (*run)[k];
            const uint8_t* page = buf ? buf->data() + k * kPageBytes : nullptr;
            if (page != nullptr && Crc32c(page, kPageBytes) == s->pages[i].crc) {
              s->error = s->each(i, page);
            } else {
              s->singles.push_back(i);  // this copy is bad or unreadable: try them all
            }
          }
          (*pump)();
        });
      }
      if (s->in_flight == 0 && (!s->error.ok() || (s->singles.empty() && s->runs.empty()))) {
        StatusDone d = std::move(s->done);
        const absl::Status error = s->error;
        *pump = nullptr;  // break the cycle (this lambda and its captures are gone now)
        if (d) d(error);
      }
    };
    (*pump)();
  }

  // Reads the pages `run` names (consecutive blocks of one chunk) from the first copy
  // that has a device; `done` gets the pages back to back, or null when that read failed
  // or there is no such copy (the caller then reads each page alone). Always posted.
  void ReadPageRun(const std::vector<MapEntry>& pages, const std::vector<size_t>& run,
                   std::function<void(std::shared_ptr<AlignedBuffer>)> done) {
    const MapEntry first = pages[run.front()];
    const ChunkState* c = FindChunk(first.chunk);
    const Replica* from = nullptr;
    if (c != nullptr && c->meta && first.block + run.size() <= kBlocksPerChunk) {
      for (const Replica& r : c->replicas) {
        if (ReplicaWritable(r)) {
          from = &r;
          break;
        }
      }
    }
    if (from == nullptr) return loop_->Post([done] { done(nullptr); });
    auto buf = std::make_shared<AlignedBuffer>(run.size() * kPageBytes, AlignedBuffer::Uninitialized{});
    auto alive = alive_;
    disks_.at(from->disk).dev->Read(ReplicaOffset(*from, first.block), run.size() * kPageBytes, buf->data(),
                                    Timed([alive, buf, done](absl::Status st) {
                                      if (!*alive) return;
                                      done(st.ok() ? buf : nullptr);
                                    }));
  }

  // A page a loaded checkpoint names: in use.
  absl::Status ClaimPage(const MapEntry& p) {
    ChunkState* c = FindChunk(p.chunk);
    if (c == nullptr || !c->meta || p.block >= kBlocksPerChunk) {
      return absl::DataLossError(absl::StrCat(DescribePointer(p), ": not in a metadata chunk"));
    }
    if (c->refs[p.block] != 0) {
      return absl::DataLossError(absl::StrCat(DescribePointer(p), ": named twice"));
    }
    c->refs[p.block] = 1;
    c->crc[p.block] = p.crc;
    ++c->used;
    return absl::OkStatus();
  }

  // Loads what the checkpoint root names: the data chunks' records, then every block
  // map's nodes (breadth first, each shared node once), then the change logs. Block
  // references are counted from the leaves once all are loaded.
  void LoadPages(StatusDone done) {
    std::vector<MapEntry> groups;
    std::vector<uint64_t> group_ids;
    for (const auto& [g, p] : group_pages_) {
      groups.push_back(p);
      group_ids.push_back(g);
    }
    auto alive = alive_;
    ReadPages(groups, [this, group_ids, groups](size_t i, const uint8_t* page) -> absl::Status {
      absl::StatusOr<std::vector<ChunkRecord>> records = DecodeChunkGroupPage(page, groups[i], pool_uuid_);
      if (!records.ok()) return records.status();
      RETURN_IF_ERROR(ClaimPage(groups[i]));
      for (ChunkRecord& r : *records) {
        if (r.id / kChunksPerGroup != group_ids[i] || FindChunk(r.id) != nullptr) {
          return absl::DataLossError(absl::StrFormat("%s: chunk %d does not belong there",
                                                     DescribePointer(groups[i]), r.id));
        }
        ChunkState c;
        c.id = r.id;
        c.replication = r.replication;
        c.replicas = std::move(r.replicas);
        InsertChunk(std::move(c));
      }
      return absl::OkStatus();
    }, [this, alive, done](absl::Status st) {
      if (!*alive) return;
      if (!st.ok()) return done(st);
      dirty_groups_.clear();  // as loaded
      auto nodes = std::make_shared<std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>>();
      auto pending = std::make_shared<std::vector<std::shared_ptr<BlockMap::Node>>>();
      absl::Status roots = LoadRoots(nodes.get(), pending.get());
      if (!roots.ok()) return done(roots);
      LoadNodes(nodes, pending, [this, alive, nodes, done](absl::Status st) {
        if (!*alive) return;
        if (st.ok()) st = CountLoadedNodes(*nodes);
        if (!st.ok()) {
          // A failed open: the loaded nodes reference nothing (their blocks and pages were
          // never counted), so destroying them with the pool must not unreference.
          for (auto& [key, n] : *nodes) {
            if (n->entries) n->entries->fill(MapEntry{});
            n->mapped = 0;
            n->page = MapEntry{};
          }
        }
        nodes->clear();  // only the maps hold nodes now, so sharing counts are exact
        if (!st.ok()) return done(st);
        LoadLogs(done);
      });
    });
  }

  // The node a page holds: one object per page, however many parents name it.
  absl::StatusOr<std::shared_ptr<BlockMap::Node>> LoadedNode(
      std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>* nodes,
      std::vector<std::shared_ptr<BlockMap::Node>>* pending, const MapEntry& p, int level) {
    auto& n = (*nodes)[{p.chunk, p.block}];
    if (n) {
      if (n->level != level || n->page.crc != p.crc) {
        return absl::DataLossError(absl::StrCat(DescribePointer(p), ": named at two levels or checksums"));
      }
      return n;
    }
    n = std::make_shared<BlockMap::Node>(level, &refs_);
    n->page = p;
    pending->push_back(n);
    return n;
  }

  absl::Status LoadRoots(std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>* nodes,
                         std::vector<std::shared_ptr<BlockMap::Node>>* pending) {
    for (const LoadRoot& r : load_roots_) {
      BlockMap* map = nullptr;
      if (r.of_snapshot) {
        if (SnapshotState* s = FindSnapshot(SnapshotId{r.owner})) map = &s->map;
      } else if (VsdState* v = FindVsdState(VsdId{r.owner})) {
        map = &v->map;
      }
      if (map == nullptr) continue;
      if (r.levels < map->levels() || r.levels > 8) {
        return absl::DataLossError(absl::StrFormat("the root of %s %d has %d levels for %d blocks",
                                                   r.of_snapshot ? "snapshot" : "VSD", r.owner,
                                                   r.levels, map->capacity_blocks()));
      }
      std::shared_ptr<BlockMap::Node> root;
      if (r.root.mapped()) {
        ASSIGN_OR_RETURN(root, LoadedNode(nodes, pending, r.root, r.levels - 1));
      }
      *map = BlockMap::FromRoot(&refs_, map->capacity_blocks(), r.levels, std::move(root));
    }
    load_roots_.clear();
    return absl::OkStatus();
  }

  void LoadNodes(std::shared_ptr<std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>> nodes,
                 std::shared_ptr<std::vector<std::shared_ptr<BlockMap::Node>>> pending, StatusDone done) {
    if (pending->empty()) return done(absl::OkStatus());
    auto batch = std::make_shared<std::vector<std::shared_ptr<BlockMap::Node>>>(std::move(*pending));
    pending->clear();
    std::vector<MapEntry> pages;
    for (const auto& n : *batch) pages.push_back(n->page);
    auto alive = alive_;
    ReadPages(pages, [this, nodes, pending, batch](size_t i, const uint8_t* page) -> absl::Status {
      BlockMap::Node* n = (*batch)[i].get();
      std::vector<std::pair<uint32_t, MapEntry>> children;
      RETURN_IF_ERROR(DecodeNodePage(page, n->page, pool_uuid_, n, &children));
      for (const auto& [idx, p] : children) {
        ASSIGN_OR_RETURN(n->children[idx], LoadedNode(nodes.get(), pending.get(), p, n->level - 1));
      }
      return absl::OkStatus();
    }, [this, alive, nodes, pending, batch, done](absl::Status st) {
      // No reference may outlive the load: sharing counts must be exact when the journal
      // is replayed (a replayed delete frees a tree at once).
      batch->clear();
      if (!*alive) return;
      if (!st.ok()) return done(st);
      LoadNodes(nodes, pending, done);
    });
  }

  // Every loaded node's page is in use, and every leaf entry references its block.
  absl::Status CountLoadedNodes(
      const std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>& nodes) {
    for (const auto& [key, n] : nodes) {
      RETURN_IF_ERROR(ClaimPage(n->page));
      if (n->level != 0) continue;
      for (const MapEntry& e : *n->entries) {
        if (!e.mapped()) continue;
        ChunkState* c = FindChunk(e.chunk);
        if (c == nullptr || c->meta || e.block >= kBlocksPerChunk) {
          return absl::DataLossError(absl::StrFormat("%s: names block %d of chunk %d, which holds no data",
                                                     DescribePointer(n->page), e.block, e.chunk));
        }
        c->crc[e.block] = e.crc;
        RefBlock(e);
      }
    }
    dirty_nodes_ = 0;
    return absl::OkStatus();
  }

  void LoadLogs(StatusDone done) {
    struct Owner {
      ChangeLog* log;
      uint64_t capacity;
    };
    auto owners = std::make_shared<std::vector<Owner>>();
    std::vector<MapEntry> pages;
    for (LoadLog& l : load_logs_) {
      SnapshotId* base = nullptr;
      ChangeLog* log = nullptr;
      std::vector<MapEntry>* log_pages = nullptr;
      uint64_t capacity = 0;
      if (l.of_snapshot) {
        if (SnapshotState* s = FindSnapshot(SnapshotId{l.owner})) {
          base = &s->base;
          log = &s->changes;
          log_pages = &s->log_pages;
          capacity = s->map.capacity_blocks();
        }
      } else if (VsdState* v = FindVsdState(VsdId{l.owner})) {
        base = &v->base;
        log = &v->changes;
        log_pages = &v->log_pages;
        capacity = v->map.capacity_blocks();
      }
      if (log == nullptr) continue;
      *base = l.base;
      log->Reset();
      if (!l.known) log->MarkUnknown();
      *log_pages = l.pages;
      for (const MapEntry& p : l.pages) {
        pages.push_back(p);
        owners->push_back(Owner{log, capacity});
      }
    }
    load_logs_.clear();
    auto alive = alive_;
    ReadPages(pages, [this, owners, pages](size_t i, const uint8_t* page) -> absl::Status {
      auto extents = DecodeChangeLogPage(page, pages[i], pool_uuid_);
      if (!extents.ok()) return extents.status();
      RETURN_IF_ERROR(ClaimPage(pages[i]));
      const Owner& o = (*owners)[i];
      for (auto [b, e] : *extents) o.log->Add(b, e, ChangeLogExtentsMax(o.capacity));
      return absl::OkStatus();
    }, [this, alive, done](absl::Status st) {
      if (!*alive) return;
      if (!st.ok()) return done(st);
      // Logs as loaded are as written; with logs now disabled they are dropped.
      auto settle = [this](SnapshotId* base, ChangeLog* log, uint64_t* written) {
        if (!ChangeLogsEnabled()) {
          *base = SnapshotId{};
          log->Reset();
          return;
        }
        *written = log->version();
      };
      for (auto& [id, v] : vsds_) settle(&v->base, &v->changes, &v->log_version_written);
      for (auto& [id, s] : snapshots_) settle(&s->base, &s->changes, &s->log_version_written);
      done(absl::OkStatus());
    });
  }

  void RefFromMap(const MapEntry& e) { RefBlock(e); }
  void UnrefFromMap(const MapEntry& e) { UnrefBlock(e); }

 private:
  static constexpr size_t kPendingRecordBytesMax = 4 << 20;

  Loop* loop_;
  Random* random_;
  PoolOptions options_;
  Refs refs_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  // Device I/Os in issue order (so in deadline order) until they finish; see Timed().
  std::deque<std::shared_ptr<TimedIo>> timed_;
  bool timed_armed_ = false;  // a loop timer is set for the front's deadline
  uint64_t pool_uuid_ = 0;
  uint64_t half_bytes_ = 0;

  std::map<DiskId, DiskState> disks_;
  std::map<NodeId, bool> nodes_online_;
  // Chunks that may be at least half free (see ReusableChunk); a superset.
  std::set<uint64_t> reuse_candidates_;
  struct ErrorWindow {
    int count = 0;
    int64_t first_ns = 0;
  };
  std::map<DiskId, ErrorWindow> d_errors_;
  bool fenced_ = false;
  absl::Status fenced_status_;
  std::map<uint64_t, ChunkState> chunks_;  // ordered: heal, scrub and checkpoints go by id
  // The same chunks for lookups on the I/O path (a tree walk per lookup showed in
  // profiles); entries of a std::map never move.
  absl::flat_hash_map<uint64_t, ChunkState*> chunk_index_;
  std::map<VsdId, std::unique_ptr<VsdState>> vsds_;
  std::map<std::string, VsdId> vsd_by_name_;
  std::map<SnapshotId, std::unique_ptr<SnapshotState>> snapshots_;
  // Metadata pages (see meta_pages.h).
  std::set<uint64_t> meta_chunks_;
  uint64_t meta_open_chunk_ = 0;
  std::map<uint64_t, MapEntry> group_pages_;  // chunk group -> its page (as last written)
  std::set<uint64_t> dirty_groups_;           // groups whose page is out of date
  std::vector<MapEntry> page_frees_;          // pages dropped since the last checkpoint
  uint64_t dirty_nodes_ = 0;                  // tree nodes changed since the last checkpoint
  uint64_t checkpoints_ = 0;
  uint64_t checkpoint_pages_written_ = 0;
  uint64_t last_checkpoint_pages_ = 0;
  uint64_t last_checkpoint_root_bytes_ = 0;
  // What a checkpoint root names, between reading the root and loading the pages.
  struct LoadRoot {
    bool of_snapshot;
    uint64_t owner;
    int levels;
    MapEntry root;
  };
  struct LoadLog {
    bool of_snapshot = false;
    uint64_t owner = 0;
    SnapshotId base;
    bool known = true;
    std::vector<MapEntry> pages;
  };
  std::vector<LoadRoot> load_roots_;
  std::vector<LoadLog> load_logs_;
  // Detached trees awaiting background destruction (see Retire).
  std::vector<std::shared_ptr<BlockMap::Node>> doomed_;
  bool reap_scheduled_ = false;
  uint64_t delete_nodes_freed_ = 0;
  uint64_t delete_bytes_freed_ = 0;
  int64_t delete_step_max_ns_ = 0;
  std::set<DiskId> pending_resets_;
  // Chunks written on each disk since its last flush, and those in the flush running
  // now: the copies a crash or outage of that disk may have lost.
  std::map<DiskId, std::set<uint64_t>> unflushed_chunks_;
  std::map<DiskId, std::set<uint64_t>> flushing_chunks_;

  uint64_t next_disk_ = 1, next_chunk_ = 1, next_vsd_ = 1, next_snapshot_ = 1;

  // Journal state.
  std::vector<DiskId> mirrors_;
  uint64_t epoch_ = 0;
  uint64_t sequence_ = 0;
  uint64_t journal_pos_ = 0;
  bool need_checkpoint_ = true;
  std::string pending_records_;
  // A deque: it grows without moving what it holds (a background delete can queue
  // hundreds of thousands of blocks between two commits; a vector's regrowth stalled the
  // loop for milliseconds).
  BlockFrees pending_frees_;
  bool committing_ = false;
  LeafCache leaf_cache_;
  // Evicted leaves being read back, and who waits for each.
  absl::flat_hash_map<const BlockMap::Node*, std::vector<StatusDone>> leaf_loads_;
  bool trim_scheduled_ = false;
  bool checkpoint_pages_in_flight_ = false;
  std::deque<MapEntry> dropped_leaves_;  // pages of evicted leaves that left every tree
  bool dropping_leaves_ = false;
  uint64_t leaves_read_ = 0;
  uint64_t leaves_evicted_ = 0;
  uint64_t leaf_waits_ = 0;     // operations that waited for leaves to be read
  int64_t leaf_wait_ns_ = 0;    // and how long, in total
  uint64_t dropped_leaves_unread_ = 0;
  int fsck_running_ = 0;
  std::vector<StatusDone> commit_waiters_;

  bool replaying_ = false;  // applying journal records at recovery
  bool heal_scheduled_ = false;
  uint64_t rebuilds_in_flight_ = 0;
  uint64_t chunks_rebuilt_ = 0;
  uint64_t repaired_ = 0;
  uint64_t checksum_failures_ = 0;
  uint64_t io_errors_ = 0;
  uint64_t read_rr_ = 0;
  // Counted by the const Diff (for Stats: which path answered).
  mutable uint64_t diffs_from_change_logs_ = 0;
  mutable uint64_t diffs_walked_ = 0;
};

void Refs::Ref(const MapEntry& e) { pool_->RefFromMap(e); }
void Refs::Unref(const MapEntry& e) { pool_->UnrefFromMap(e); }
void Refs::PageDropped(const MapEntry& page) { pool_->DropPage(page); }
void Refs::NodeDirtied() { pool_->NoteNodeDirtied(); }
void Refs::EvictedLeafDropped(const MapEntry& page) { pool_->EvictedLeafDropped(page); }
LeafCache* Refs::leaf_cache() { return &pool_->leaf_cache_; }

}  // namespace

void Pool::Create(Loop* loop, Random* random, PoolOptions options, std::vector<DiskSpec> disks,
                  Done<std::unique_ptr<Pool>> done) {
  if (options.metadata_bytes < 64 * kBlockBytes || options.metadata_mirrors_max < 1) {
    return loop->Post([done] {
      done(absl::InvalidArgumentError("metadata_bytes must be at least 256 KiB, mirrors at least 1"));
    });
  }
  if (disks.empty()) {
    return loop->Post([done] { done(absl::InvalidArgumentError("a pool needs at least one disk")); });
  }
  auto pool = std::make_unique<PoolImpl>(loop, random, options);
  PoolImpl* raw = pool.get();
  raw->Format(std::move(disks), std::move(done), std::move(pool));
}

void Pool::Open(Loop* loop, Random* random, PoolOptions options, std::vector<DiskSpec> disks,
                Done<std::unique_ptr<Pool>> done) {
  if (disks.empty()) {
    return loop->Post([done] { done(absl::InvalidArgumentError("a pool needs at least one disk")); });
  }
  auto pool = std::make_unique<PoolImpl>(loop, random, options);
  PoolImpl* raw = pool.get();
  raw->Recover(std::move(disks), std::move(done), std::move(pool));
}

}  // namespace scribe
