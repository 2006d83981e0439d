// The Pool implementation: placement, the replicated redirect-on-write data path,
// snapshots and clones over BlockMap, the mirrored metadata journal with checkpoints,
// recovery, self-healing and scrub. See scribe/pool.h for the contract and
// docs/ARCHITECTURE.md for the design.
//
// PoolImpl is declared here and implemented in one file per mechanism (as LevelDB
// splits db_impl and TigerBeetle its vsr files):
//
//   pool.cc              creation, Pool::Create / Open
//   pool_records.cc      metadata records: Apply, Mutate, the record codecs; block refcounts
//   pool_change_logs.cc  per-interval change logs (what Diff reads)
//   pool_placement.cc    where chunks and copies go; block allocation
//   pool_vsds.cc         VSDs, snapshots, clones, revert, diff (the admin API)
//   pool_io.cc           the data path: reads, writes, discards, block locks
//   pool_leaf_cache.cc   evicting block-map leaves and reading them back
//   pool_chunk_cache.cc  chunk states (refcounts, checksums) in pages, read on demand
//   pool_chunk_groups.cc chunk records (copies, blocks in use) by group, read on demand
//   pool_membership.cc   disks and nodes joining, failing, leaving; stats
//   pool_heal.cc         re-mirroring degraded chunks
//   pool_scrub.cc        reading every copy, repairing bad ones
//   pool_fsck.cc         checking every invariant
//   pool_journal.cc      commits: data flush, then a journal batch or a checkpoint root
//   pool_pages.cc        the page store: metadata chunks, page allocation, page reads
//   pool_checkpoint.cc   writing what changed since the last checkpoint, and its root
//   pool_delete.cc       background deletes of detached trees
//   pool_recovery.cc     open: newest root, pages, journal replay
#ifndef SCRIBE_CLUSTER_POOL_IMPL_H_
#define SCRIBE_CLUSTER_POOL_IMPL_H_

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


// Format 3: paged copy-on-write metadata with per-chunk state pages (block reference
// counts are stored, not counted at open). Format 1 ("SCRB") kept the whole state in
// the journal region, format 2 ("SCR2") recounted references from every leaf at open;
// such disks are refused with a message (no upgrade path).
constexpr uint32_t kSuperMagic = 0x34524353;    // "SCR4"
constexpr uint32_t kSuperMagicV3 = 0x33524353;  // "SCR3"
constexpr uint32_t kSuperMagicV2 = 0x32524353;  // "SCR2"
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

inline uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

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

inline std::shared_ptr<Gather> MakeGather(int n, std::function<void(absl::Status)> done) {
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

inline std::string EncodeSuperblock(const Superblock& sb) {
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

inline bool DecodeSuperblock(const uint8_t* p, Superblock* sb) {
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

// The pool's BlockRefs. It counts the nodes made with it and outlives the pool while
// any remains: a callback of a page read that never finished (the pool was destroyed
// first, or the device dropped it) may hold nodes, and their end then changes nothing.
class Refs : public BlockRefs {
 public:
  explicit Refs(PoolImpl* pool) : pool_(pool) {}
  void Ref(const MapEntry& e) override;
  void Unref(const MapEntry& e) override;
  void PageDropped(const MapEntry& page) override;
  void NodeDirtied() override;
  void EvictedLeafDropped(const MapEntry& page) override;
  LeafCache* leaf_cache() override;
  void NodeCreated() override { ++nodes_; }
  void NodeDestroyed() override {
    if (--nodes_ == 0 && pool_ == nullptr) delete this;
  }
  // The pool is going: from now on nodes change nothing; the last one deletes this.
  void Detach() {
    pool_ = nullptr;
    if (nodes_ == 0) delete this;
  }

 private:
  PoolImpl* pool_;
  uint64_t nodes_ = 0;
};

class PoolImpl : public Pool {
 public:
  friend class Refs;
  // A map, looked up again whenever it is used after a wait (null: gone).
  using MapRef = std::function<const BlockMap*()>;

  PoolImpl(Loop* loop, Random* random, PoolOptions options)
      : loop_(loop), random_(random), options_(options), refs_(new Refs(this)) {
    half_bytes_ = options_.metadata_bytes / 2 / kBlockBytes * kBlockBytes;
  }

  ~PoolImpl() override {
    *alive_ = false;
    reaping_ = true;  // trees being deleted may name chunks already freed (UnrefBlock)
    // Trees unreference blocks as they go; drop them while chunks still exist.
    snapshots_.clear();
    vsds_.clear();
    doomed_.clear();
    refs_->Detach();
  }

  // ---------------------------------------------------------------- creation
  void Format(std::vector<DiskSpec> disks, Done<std::unique_ptr<Pool>> done,
              std::unique_ptr<Pool> self);

  absl::Status CheckDiskSpec(const DiskSpec& spec);

  void AddDiskInternal(const DiskSpec& spec, Done<DiskId> done);

  void ZeroRange(BlockDevice* dev, uint64_t offset, uint64_t length, StatusDone done,
                 std::shared_ptr<AlignedBuffer> zeros = nullptr);

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

  BlockDevice::Callback Timed(BlockDevice::Callback cb);

  void ArmTimedIo();

  // ---------------------------------------------------------------- records
  // Applies a record to memory and queues it for the journal.
  void Mutate(const std::string& rec);

  DiskState* FindDisk(DiskId id);
  ChunkState* FindChunk(uint64_t id);
  const ChunkState* FindChunk(uint64_t id) const;
  VsdState* FindVsdState(VsdId id);
  const VsdState* FindVsdState(VsdId id) const;
  SnapshotState* FindSnapshot(SnapshotId id);

  void Apply(Decoder& d);

  // The fields kRecCreateVsd and kRecCkptVsd start with.
  static std::unique_ptr<VsdState> DecodeVsdHeader(Decoder& d);
  static void EncodeVsdHeader(Encoder& e, VsdId id, const std::string& name, uint64_t size_bytes,
                              int replication, int flash_priority);

  void InsertVsd(std::unique_ptr<VsdState> v);

  // The fields kRecSnapshot and kRecCkptSnapshot start with.
  static std::unique_ptr<SnapshotState> DecodeSnapshotHeader(Decoder& d);

  void InsertSnapshot(std::unique_ptr<SnapshotState> s);

  // `changed`: a new or changed record (its group's page is rewritten); not for one
  // read back from its group's page.
  void InsertChunk(ChunkState c, bool changed = true);

  // A chunk's record (copies, stale flags, existence) changed: a data chunk's group
  // page is rewritten at the next checkpoint; metadata chunks are listed in every
  // checkpoint's root, and a change to one is checkpointed soon, so that an open never
  // reads pages from copies the journal has since replaced.
  void ChunkRecordChanged(const ChunkState& c);

  static void EncodeAddChunk(Encoder& e, uint64_t id, int replication, bool meta,
                             const std::vector<Replica>& replicas);

  static MapEntry DecodePagePointer(Decoder& d);
  static void EncodePagePointer(Encoder& e, const MapEntry& p);

  void ClaimSlot(DiskId disk_id, uint64_t slot, uint64_t chunk);

  void ReleaseSlot(DiskId disk_id, uint64_t slot, uint64_t chunk);

  // ---------------------------------------------------------------- change logs
  // Each VSD logs the blocks whose mapping changes between its snapshots (see
  // VsdState::base). Only Apply() changes the logs, so replay rebuilds them exactly.
  bool ChangeLogsEnabled() const;

  // The most extents a log of a map of `capacity_blocks` keeps before it is dropped.
  // The bound is for memory: at that density the changes touch nearly every leaf, so a
  // walk costs what it always did (the log would still be a few times faster).
  size_t ChangeLogExtentsMax(uint64_t capacity_blocks) const;

  // `v`'s map now equals snapshot `base`'s: its interval starts there, empty.
  void StartInterval(VsdState* v, SnapshotId base);

  // The mapping of blocks [begin, end) of `v` changed (or may have).
  void LogChange(VsdState* v, uint64_t begin, uint64_t end);

  // Snapshots `doomed` are being deleted: every other interval based on one of them is
  // rebased on the first snapshot below them that stays, with the logs of those on the
  // way added, so chains through them still answer diffs. Without such a snapshot the
  // interval loses its base (and its log, of no use then) without merging anything.
  void UnlinkSnapshots(const std::set<SnapshotId>& doomed);

  // The snapshot whose map `s`'s interval starts from, if its log is known.
  const SnapshotState* Predecessor(const SnapshotState& s) const;

  // The blocks that may map differently in snapshots `a` and `b`: the logs of the
  // intervals from their nearest common snapshot to each, merged. Nullopt when a log on
  // the way is unknown, or together they hold more extents than one log may (the same
  // bound: the work of merging them stays below that of a walk).
  std::optional<std::vector<BlockMap::Range>> ChangedRanges(const SnapshotState& a,
                                                            const SnapshotState& b) const;

  // ---------------------------------------------------------------- leaf cache
  // Block-map leaves not changed since the last checkpoint are evicted beyond
  // PoolOptions::metadata_cache_bytes, least recently used first (their pages hold
  // them); whatever maps, reads or diffs blocks reads the evicted leaves it needs back
  // first. Interior nodes (1/256 of the nodes) always stay.

  // Calls fn(OK, map) once every leaf of [b0, b1) in `ref`'s map is in memory: at once
  // when they are, else when the evicted ones have been read back. They stay in memory
  // until fn returns.
  void WithLeaves(MapRef ref, uint64_t b0, uint64_t b1,
                  std::function<void(absl::Status, const BlockMap*)> fn);

  // Reads the evicted ones of `leaves` back, then calls done (at once if none is
  // evicted). None of `leaves` is evicted before done runs (evictions are posted, so
  // none happens inside it either). Nodes are held only while reads are in flight: a
  // node held besides its trees counts as shared (a write would copy it).
  void LoadLeaves(std::vector<std::shared_ptr<BlockMap::Node>> leaves, StatusDone done);

  void ReadLeaves(std::vector<std::shared_ptr<BlockMap::Node>> leaves);

  void ScheduleTrim();

  size_t LeafCacheLimit() const;

  // Evicts clean, unpinned leaves, oldest first, down to the limit. Not while a
  // checkpoint's pages are being written: a leaf's new page is not its own until they
  // are (a failed write forgets it).
  void TrimLeaves();

  // An evicted leaf left every tree: its blocks lose their references once its page is
  // read, then the page goes. Until then its blocks stay referenced (kept, not lost).
  void EvictedLeafDropped(const MapEntry& page);

  static constexpr size_t kDroppedLeavesPerTurn = 16;

  void DropEvictedLeaves();

  // Drops one reference from each block a leaf page names (every chunk must exist).
  absl::Status UnrefLeafPage(const uint8_t* page, const MapEntry& p);
  // A leaf's blocks with a single reference (as RefCount sees them), kept with the leaf
  // when it is written or evicted.
  uint32_t UniqueBlocks(const BlockMap::Entries& entries) const;

  // Every leaf of every map and of every tree being deleted.
  std::vector<std::shared_ptr<BlockMap::Node>> AllLeaves() const;

  // ---------------------------------------------------------------- chunk states
  // A data chunk's reference counts and checksums (ChunkBlocks) are a page, written at
  // checkpoints when changed. Beyond a quarter of PoolOptions::metadata_cache_bytes the
  // least recently used clean ones leave memory; a reference change to one that is not
  // in memory is kept as a delta (ChunkDelta) and applied when it is read back, which a
  // checkpoint does first for every chunk with a delta. What needs the counts themselves
  // (allocating from a chunk, heal, scrub, fsck) reads the chunk first.

  // Calls done once every chunk of `ids` that still exists has its blocks in memory.
  // They stay in memory until done returns (evictions are posted).
  void LoadChunks(std::vector<uint64_t> ids, StatusDone done);

  // The blocks of chunk `id` in memory (null when it is gone or cannot be read).
  void WithChunk(uint64_t id, std::function<void(absl::Status, ChunkState*)> fn);

  // Gives a chunk read back its blocks, applying its delta.
  void ChunkLoaded(ChunkState* c, std::unique_ptr<ChunkBlocks> blocks);

  // The delta of chunk `id`, whose blocks (or record) are not in memory (made on first
  // use).
  ChunkDelta* DeltaOf(uint64_t id);

  // The chunk's blocks changed (they need a page at the next checkpoint).
  void ChunkDirtied(ChunkState* c);

  // Makes `c` the most recently used chunk in memory.
  void TouchChunk(ChunkState* c);

  void SetBlockCrc(uint64_t id, uint32_t block, uint32_t crc);

  bool ChunkEvictable(const ChunkState& c) const;

  size_t ChunkCacheLimit() const;

  void TrimChunks();

  // Reads, in the background, the chunks with deltas (a checkpoint needs none), then
  // commits (the checkpoint that was due).
  void LoadDeltaChunks();

  // ---------------------------------------------------------------- chunk records
  // Data chunk records (copies, blocks in use, where the state page is) are kept by
  // group (kChunksPerGroup consecutive ids, one page). A group not in memory is read
  // back whole when something needs one of its chunks; beyond an eighth of
  // PoolOptions::metadata_cache_bytes the least recently used groups whose chunks are
  // all idle, clean and fully redundant leave memory (GroupEvictable). An open keeps
  // only the groups the open itself needs. Metadata chunks always stay in memory (the
  // root lists them). Reference changes to a chunk not in memory are deltas (DeltaOf).

  // Calls done once the record of every chunk of `ids` is in memory (or is known not to
  // exist: its group is). They stay in memory until done returns (evictions are posted).
  void LoadGroups(const std::vector<uint64_t>& ids, StatusDone done);

  // Whether chunk `id`'s record, if it exists, is in memory.
  bool RecordResident(uint64_t id) const;

  // Touches the groups of `ids` (most recently used); false if one is not in memory.
  bool GroupsResident(const std::vector<uint64_t>& ids);

  // Decodes a group page: claims its pages and slots (`claim`: at open) and, if
  // `insert`, makes its records resident. `room`: the most free blocks of one chunk.
  absl::Status DecodeGroup(uint64_t g, const uint8_t* page, const MapEntry& p, bool claim,
                           bool insert, uint32_t* room, bool* needed, uint32_t* count);

  // Keeps the groups of `ids` in memory while the result is held.
  std::shared_ptr<void> PinGroups(const std::vector<uint64_t>& ids);

  bool GroupEvictable(uint64_t g) const;
  size_t GroupCacheLimit() const;
  void TrimGroups();
  // Every group with a page or a chunk in memory, in id order (scrub, fsck).
  std::vector<uint64_t> AllGroups() const;

  // ---------------------------------------------------------------- refcounts
  void RefBlock(const MapEntry& e);

  void UnrefBlock(const MapEntry& e);

  // Called once the records that freed them are durable (or replayed).
  void ReleaseFrees(BlockFrees frees);

  void MaybeFreeChunk(ChunkState* c);

  // ---------------------------------------------------------------- placement
  bool DiskUsable(const DiskState& d) const;
  bool NodeOnline(NodeId n) const;
  bool ReplicaWritable(const Replica& r) const;

  // Picks the disk with the most free slots on each node not in `exclude`, then the
  // `count` emptiest such nodes (ties broken by node id, for determinism). For `data`,
  // only nodes with more free slots than their metadata reserve.
  std::vector<std::pair<DiskId, uint64_t>> PlaceSlots(int count, const std::set<NodeId>& exclude,
                                                      bool data);

  // Copies a chunk should have: its replication; for a metadata chunk, one per node the
  // pool still has, up to its replication (a pool that lost nodes for good keeps its
  // metadata on all that remain and is then fully redundant again).
  int TargetCopies(const ChunkState& c) const;

  size_t UsableNodes() const;

  // Nodes online with at least one healthy disk (full or not).
  size_t AliveNodes() const;

  void CloseOpenChunk(VsdState* v);

  // A chunk takes new blocks while every copy is writable and it has as many copies as
  // the healthy nodes allow.
  bool ChunkAcceptsWrites(const ChunkState& c) const;

  // The closed chunk of this replication with the most free blocks, if at least half
  // of it is free: space freed by overwrites is reused before new chunks are taken.
  // Only chunks that were at least half free when they last lost a block (or were
  // closed) are looked at, so the cost follows fragmentation, not the pool's size.
  ChunkState* ReusableChunk(int replication);

  void NoteMaybeReusable(const ChunkState* c);

  // With no free chunk left: the closed chunk of this replication with the most free
  // blocks, however few. Scans every chunk, but only while the pool has no free chunk,
  // and the chunk found then takes writes until it is full.
  ChunkState* AnyChunkWithRoom(int replication);

  // Reserves `n` free blocks for a write of `v`, from its open chunk and then others.
  absl::StatusOr<std::vector<MapEntry>> AllocateBlocks(VsdState* v, uint64_t n);

  void Unreserve(const MapEntry& e);

  // A new chunk. A data chunk leaves the metadata reserve free and is journaled; a
  // metadata chunk may use the reserve and is not journaled: only checkpoints write
  // pages, and the checkpoint that first uses it lists it in its root.
  absl::StatusOr<ChunkState*> NewChunk(int replication, bool meta = false);

  uint64_t ReplicaOffset(const Replica& r, uint32_t block) const;

  // ---------------------------------------------------------------- VSD management
  void CreateVsd(VsdOptions options, Done<VsdId> done) override;

  absl::Status ValidateName(const std::string& name) const;

  absl::Status ValidateVsdOptions(const VsdOptions& o) const;

  void DeleteVsd(VsdId vsd, StatusDone done) override;

  void ResizeVsd(VsdId vsd, uint64_t size_bytes, StatusDone done) override;

  absl::StatusOr<VsdId> FindVsd(const std::string& name) const override;

  uint32_t RefCount(const MapEntry& e) const;

  absl::StatusOr<VsdInfo> GetVsdInfo(VsdId vsd) const override;

  std::vector<VsdInfo> ListVsds() const override;

  static absl::Status NotFound(VsdId id);
  static absl::Status NotFound(SnapshotId id);
  void PostError(const StatusDone& done, absl::Status st);

  // ---------------------------------------------------------------- I/O
  absl::Status CheckIo(const VsdState* v, uint64_t offset, uint64_t length) const;

  MapRef VsdMap(VsdId vsd);

  // Reads logical blocks [b0, b1) of the map `ref` names into `out` ((b1-b0) * 4 KiB),
  // verifying checksums, trying other copies and repairing bad ones.
  void ReadBlocks(MapRef ref, uint64_t b0, uint64_t b1, uint8_t* out, int attempt,
                  StatusDone done);

  void ReadBlocksIn(const BlockMap* m, MapRef ref, uint64_t b0, uint64_t b1, uint8_t* out,
                    int attempt, StatusDone done);

  // Reads `count` blocks of one chunk from the first copy whose checksums all match.
  void ReadRun(uint64_t chunk_id, uint32_t block, uint32_t count, std::vector<uint32_t> crcs,
               uint8_t* dst, StatusDone done);

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

  void TryReplica(std::shared_ptr<ReadRunState> s, size_t i);

  // Rewrites a copy that failed its checksum with good data (the block's contents never
  // change while it is referenced, so this races with nothing but its own freeing).
  void Repair(const Replica& r, uint64_t chunk, uint32_t block, uint32_t count, const uint8_t* good,
              StatusDone done = [](absl::Status) {});

  // An I/O error on a disk: EIO-class errors fail the disk (its chunks are re-mirrored).
  void NoteIoError(DiskId disk, const absl::Status& st);

  // Records that chunk `chunk`'s copy on `disk` lacks writes (or caught up).
  void RecordStale(uint64_t chunk, DiskId disk, bool stale);

  // Marks the copies on `disk` of `chunks` stale (they may lack recent writes).
  void MarkStale(DiskId disk, std::set<uint64_t> chunks);

  // Writes the blocks `where` names (data[i * 4 KiB] to where[i]) to every writable copy
  // of their chunks, one device write per run of consecutive blocks of a chunk per copy.
  // A copy that cannot take it (its node is away, or the write fails) is recorded stale
  // and caught up later. `done(true)` once every run reached at least one copy; `hold`
  // keeps `data` alive until then. Used for VSD data and for metadata pages alike.
  void WriteToCopies(const std::vector<MapEntry>& where, const uint8_t* data,
                     std::shared_ptr<const void> hold, std::function<void(bool)> done);

  void FailDiskNow(DiskId disk, bool evicted);

  void Read(VsdId vsd, uint64_t offset_bytes, size_t length_bytes, void* buf,
            StatusDone done) override;

  void ReadSnapshot(SnapshotId snapshot, uint64_t offset_bytes, size_t length_bytes, void* buf,
                    StatusDone done) override;

  void ReadMapped(MapRef ref, uint64_t offset, size_t length, void* buf, StatusDone done);

  // Per-VSD block locks serialise writes that touch the same 4 KiB block (a partial
  // block write is a read-modify-write).
  static bool Overlaps(const std::map<uint64_t, uint64_t>& locked, uint64_t b0, uint64_t b1);

  void LockBlocks(VsdState* v, uint64_t b0, uint64_t b1, std::function<void()> fn);

  void UnlockBlocks(VsdId vsd, uint64_t b0, uint64_t b1);

  void Write(VsdId vsd, uint64_t offset_bytes, size_t length_bytes, const void* buf, bool fua,
             StatusDone done) override;

  void WriteBytes(VsdId vsd, uint64_t offset, std::shared_ptr<std::string> data, bool fua,
                  StatusDone done);

  // Writes whole blocks [b0, b1) from `buf` to newly allocated blocks on every copy,
  // then points the map at them.
  // `data` is aligned for direct I/O and stays valid (held by `hold`, or by the caller
  // until `done`) while the disks write it.
  void WriteNewBlocks(VsdId vsd, uint64_t b0, uint64_t b1, const uint8_t* data,
                      std::shared_ptr<AlignedBuffer> hold, StatusDone done,
                      bool after_commit = false);

  // Points the map at blocks just written (their leaves are in memory).
  void MapWritten(VsdId vsd, uint64_t b0, const std::vector<MapEntry>& entries, StatusDone done);

  void Discard(VsdId vsd, uint64_t offset_bytes, uint64_t length_bytes, StatusDone done) override;

  void Flush(StatusDone done) override;

  // ---------------------------------------------------------------- snapshots
  void CreateSnapshot(VsdId vsd, std::string name, Done<SnapshotId> done) override;

  void CreateGroupSnapshot(std::vector<VsdId> vsds, std::string name,
                           Done<std::vector<SnapshotId>> done) override;

  void DeleteSnapshot(SnapshotId snapshot, StatusDone done) override;

  std::vector<SnapshotInfo> ListSnapshots(VsdId vsd) const override;

  void CloneFromSnapshot(SnapshotId snapshot, std::string name, Done<VsdId> done) override;

  void CloneVsd(VsdId vsd, std::string name, Done<VsdId> done) override;

  void Clone(bool from_snapshot, uint64_t source, std::string name, Done<VsdId> done);

  void RevertToSnapshot(VsdId vsd, SnapshotId snapshot, StatusDone done) override;

  void Diff(SnapshotId from, SnapshotId to, Done<std::vector<Extent>> done) override;

  absl::StatusOr<std::vector<Extent>> DiffNow(SnapshotId from, SnapshotId to) const;

  // ---------------------------------------------------------------- membership
  void AddDisk(DiskSpec disk, Done<DiskId> done) override;

  void FailDisk(DiskId disk, StatusDone done) override;

  void SetNodeOnline(NodeId node, bool online) override;

  void AttachDevice(DiskSpec spec, Done<DiskId> done) override;

  void EvictNode(NodeId node, StatusDone done) override;

  std::vector<DiskInfo> ListDisks() const override;

  int HealthyCopies(const ChunkState& c) const;

  PoolStats Stats() const override;

  bool FullyRedundant() const override;

  // ---------------------------------------------------------------- self-healing
  // Starts re-mirroring / catch-up work for degraded chunks, a few at a time. Called
  // whenever health changes; re-arms itself while work remains.
  void Heal();

  void HealStep();

  // Copies the chunk from a healthy copy to either the stale copy `index` (catch-up) or
  // a new slot on a node the chunk does not use yet, verifying every used block's
  // checksum on the way.
  bool StartRebuild(ChunkState* c, int index);

  // Reads a whole chunk from `sources[i]`, falling back per block to the other sources
  // when a used block fails its checksum.
  void ReadWholeChunk(uint64_t chunk_id, std::vector<Replica> sources, size_t i,
                      std::shared_ptr<AlignedBuffer> buf, StatusDone done);

  // Checks the copy read into `buf` (from sources[i]) block by block against the
  // chunk's checksums; bad blocks are read from the other copies.
  void CheckWholeChunk(ChunkState* c, const std::vector<Replica>& sources, size_t i,
                       std::shared_ptr<AlignedBuffer> buf, StatusDone done);

  // ---------------------------------------------------------------- scrub
  void Scrub(Done<ScrubReport> done) override;

  void ScrubNext(std::shared_ptr<std::vector<uint64_t>> ids, size_t i,
                 std::shared_ptr<ScrubReport> report, StatusDone done);

  // ---------------------------------------------------------------- fsck
  void Fsck(Done<FsckReport> done) override;

  // Checks once every leaf is in memory and no evicted leaf that left the trees still
  // holds references (their pages are being read).
  void FsckWhenLoaded(Done<FsckReport> done);

  FsckReport FsckNow() const;

  // ---------------------------------------------------------------- journal
  void ChooseMirrors();

  void Commit(StatusDone done);

  void StartCommit();

  std::string MakeBatch(const std::string& payload, uint64_t seq, uint32_t flags) const;

  // Writes `records` as one journal batch to every mirror (or a whole checkpoint when
  // one is due or the batch does not fit), then flushes the mirrors.
  // Writes `records` as one journal batch (or the checkpoint `ckpt`, which already
  // includes them) to `mirrors`, then flushes them.
  void WriteJournal(std::string records, const std::vector<std::string>* ckpt,
                    std::vector<DiskId> mirrors, StatusDone done);

  // ---------------------------------------------------------------- metadata pages
  // Metadata pages live in metadata chunks, mirrored on up to three distinct nodes (as
  // many as the pool has), allocated from the pool's own space as checkpoints need them.
  int MetaReplication() const;

  // Slots data allocation (new chunks and their healing) leaves free on *every node*,
  // so that checkpoints (which write changed pages before they free the old ones) can
  // always commit, delete and heal on a full pool, and a metadata chunk made while a
  // node was away finds room for its copy there when it returns.
  uint64_t MetadataReservePerNode() const;

  void CloseMetaChunk();

  // Takes `n` free page slots (refs 1: in use from now on).
  absl::StatusOr<std::vector<MapEntry>> AllocatePages(size_t n);

  // A page that no durable checkpoint names (one just allocated) is free at once.
  void ReleasePage(const MapEntry& p);

  // A page named by the last durable checkpoint stopped describing anything: it is
  // reused only after the next checkpoint is durable.
  void DropPage(const MapEntry& p);

  void ReleaseDroppedPages(std::vector<MapEntry> pages);

  void NoteNodeDirtied();

  // ---------------------------------------------------------------- background deletes
  // A tree no snapshot or VSD uses any more is queued here and destroyed a bounded number
  // of nodes per loop turn (a leaf unreferences its blocks, a written node drops its
  // page), so deleting a snapshot of any size never stalls I/O. Crash-safe as it is:
  // the record that detached the tree is in the journal, and an open counts block
  // references from the trees that remain.
  // A step frees at most this many nodes (a leaf: up to 256 block references, ~0.2 ms
  // for a step of leaves here).
  static constexpr size_t kReapNodesPerTurn = 16;

  void Retire(BlockMap* map);

  void ScheduleReap();

  // Destroys up to `budget` queued nodes, depth first (the queue stays a path long).
  void ReapSome(size_t budget);

  void DropLogPages(std::vector<MapEntry>* pages);

  // What one checkpoint writes: new pages, and the small root that names them.
  struct Checkpoint {
    std::vector<MapEntry> pages;  // in write order; data holds them back to back
    AlignedBuffer data;
    std::vector<std::weak_ptr<BlockMap::Node>> nodes;  // given pages[i] for i < nodes.size()
    std::vector<uint64_t> groups;                      // chunk groups rewritten
    std::vector<uint64_t> chunks;                      // chunk states rewritten
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
  absl::StatusOr<std::shared_ptr<Checkpoint>> PrepareCheckpoint();

  // A checkpoint that could not be written: what it wrote is forgotten (and rewritten by
  // the next one), and the pages it would have freed stay until a checkpoint lands.
  void UndoCheckpoint(Checkpoint& ck);

  // Writes a checkpoint's pages to every writable copy of their chunks. Fails when some
  // page reached no copy.
  void WritePages(std::shared_ptr<Checkpoint> ck, StatusDone done);

  // The checkpoint's root: counters, disks, metadata chunks, and pointers to the pages
  // of everything else. Its size follows the number of disks, metadata chunks, chunk
  // groups and VSDs/snapshots, not the data mapped.
  absl::StatusOr<std::vector<std::string>> EncodeRoot() const;

  // ---------------------------------------------------------------- recovery
  struct Candidate {
    uint64_t epoch = 0;
    uint64_t last_seq = 0;
    std::vector<std::string> payloads;
    size_t root_payloads = 0;  // the first ones: the checkpoint's root; then journal batches
  };

  // Parses one half of a metadata region: a complete checkpoint and the batches after it.
  // `truncated`: the batches ran to the end of the `bytes` given (there may be more).
  Candidate ParseHalf(const uint8_t* p, uint64_t bytes, bool* truncated) const;

  // Reads journal half `half` of `dev` as far as its batches go: the first `bytes`
  // (beyond the `have_bytes` already in `have`), then twice as much while they run to
  // the end of what was read. An open thus reads at most twice what the journal holds,
  // not the whole region.
  static constexpr uint64_t kJournalFirstRead = 1 << 20;
  void ReadHalf(BlockDevice* dev, int half, std::shared_ptr<AlignedBuffer> have, uint64_t have_bytes,
                uint64_t bytes, std::function<void(absl::Status, Candidate)> done);

  void Recover(std::vector<DiskSpec> disks, Done<std::unique_ptr<Pool>> done,
               std::unique_ptr<Pool> self);

  // Replays the journal tail (ReplayTail), then FinishOpen.
  void FinishRecover(std::shared_ptr<Candidate> best, std::shared_ptr<std::map<DiskId, BlockDevice*>> devs,
                     std::shared_ptr<std::unique_ptr<Pool>> holder, Done<std::unique_ptr<Pool>> done);

  // Where the replay of a journal tail is: a payload and the offset of its next record.
  struct TailReplay {
    std::shared_ptr<Candidate> journal;
    size_t payload = 0;
    size_t offset = 0;
  };
  // Applies the records from where `r` is, first reading the leaves each changes.
  void ReplayTail(std::shared_ptr<TailReplay> r, StatusDone done);
  // Nothing if the record at `d` can be applied now; else the leaves it changes, with
  // those of the map records right after it (up to kReplayLeavesPerRead), to load.
  static constexpr size_t kReplayLeavesPerRead = 1024;
  std::vector<std::shared_ptr<BlockMap::Node>> LeavesToReplay(Decoder d);
  // Reads past a kRecMap or kRecUnmap record (false, for any other record), giving the
  // blocks it changes.
  static bool SkipMapRecord(Decoder& d, VsdId* vsd, uint64_t* lba, uint64_t* count);
  // The chunk whose record the record at `d` changes, if any.
  static std::optional<uint64_t> ChunkOfRecord(Decoder d);
  // Disks, chunks left empty, a fresh checkpoint; unfinished deletes go on.
  void FinishOpen(const Candidate& best, const std::map<DiskId, BlockDevice*>& devs,
                  std::shared_ptr<std::unique_ptr<Pool>> holder, Done<std::unique_ptr<Pool>> done);

  // Reads one page from the first copy whose contents match the pointer's checksum.
  void ReadPage(const MapEntry& p, std::function<void(absl::StatusOr<std::shared_ptr<AlignedBuffer>>)> done);

  // Reads `pages` and calls `each` for every one (in any order); stops at the first
  // error. Pages at consecutive blocks of a chunk (a checkpoint writes a parent's
  // children side by side) are read as one run of up to kPagesPerRun from one copy; a
  // page whose copy there fails its checksum (or a run whose read fails) is read alone,
  // from every copy in turn (ReadPage). At most kPageReadsInFlight reads at once.
  static constexpr size_t kPagesPerRun = 64;

  void ReadPages(std::vector<MapEntry> pages,
                 std::function<absl::Status(size_t, const uint8_t*)> each, StatusDone done);

  // Reads the pages `run` names (consecutive blocks of one chunk) from the first copy
  // that has a device; `done` gets the pages back to back, or null when that read failed
  // or there is no such copy (the caller then reads each page alone). Always posted.
  void ReadPageRun(const std::vector<MapEntry>& pages, const std::vector<size_t>& run,
                   std::function<void(std::shared_ptr<AlignedBuffer>)> done);

  // A page a loaded checkpoint names: in use.
  absl::Status ClaimPage(const MapEntry& p);

  // Loads what the checkpoint root names: the data chunks' records (their states are
  // read when needed), then the interior nodes of every block map and of trees being
  // deleted (breadth first, each shared node once; a leaf is known from its parent's
  // page and read when needed), then the change logs. Block references are in the
  // chunk states, not counted here.
  void LoadPages(StatusDone done);

  // The node a page holds: one object per page, however many parents name it. A leaf
  // named by a parent (`counts`) is not read; others are (`pending`).
  absl::StatusOr<std::shared_ptr<BlockMap::Node>> LoadedNode(
      std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>* nodes,
      std::vector<std::shared_ptr<BlockMap::Node>>* pending, const MapEntry& p, int level,
      const ChildPointer* counts);

  absl::Status LoadRoots(std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>* nodes,
                         std::vector<std::shared_ptr<BlockMap::Node>>* pending);

  void LoadNodes(std::shared_ptr<std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>> nodes,
                 std::shared_ptr<std::vector<std::shared_ptr<BlockMap::Node>>> pending, StatusDone done);

  // Every loaded node's page is in use.
  absl::Status ClaimLoadedNodes(
      const std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>& nodes);

  void LoadLogs(StatusDone done);

  void RefFromMap(const MapEntry& e);
  void UnrefFromMap(const MapEntry& e);

 private:
  static constexpr size_t kPendingRecordBytesMax = 4 << 20;

  Loop* loop_;
  Random* random_;
  PoolOptions options_;
  Refs* refs_;  // owned with the nodes made with it (see Refs)
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
  // A chunk group with a page: the page as last written, whether its records are in
  // memory, and (when not) how much room its emptiest chunk had when they left.
  struct GroupState {
    MapEntry page;
    bool resident = true;
    uint32_t room = 0;
    uint32_t chunks = 0;  // when not resident: how many records its page holds
    std::list<uint64_t>::iterator lru;  // in group_lru_ while resident
  };
  absl::btree_map<uint64_t, GroupState> groups_;
  std::list<uint64_t> group_lru_;  // resident groups with a page, least recently used first
  absl::flat_hash_map<uint64_t, std::vector<StatusDone>> group_loads_;
  absl::flat_hash_map<uint64_t, int> group_pins_;  // see PinGroups
  // Not-resident groups whose emptiest chunk was at least half free (see ReusableChunk).
  std::set<uint64_t> reuse_groups_;
  uint64_t groups_read_ = 0;
  uint64_t groups_evicted_ = 0;
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
  // Data chunks whose blocks are in memory, least recently used first.
  std::list<uint64_t> chunk_lru_;
  // Chunks being read back, and who waits for each.
  absl::flat_hash_map<uint64_t, std::vector<StatusDone>> chunk_loads_;
  std::set<uint64_t> dirty_chunks_;  // data chunks whose page is out of date
  // Deltas of data chunks whose blocks (or records) are not in memory.
  std::map<uint64_t, std::unique_ptr<ChunkDelta>> deltas_;
  bool loading_delta_chunks_ = false;
  uint64_t chunks_read_ = 0;
  uint64_t chunks_evicted_ = 0;
  // Detached trees and dropped leaves a checkpoint root names (see EncodeRoot), between
  // reading the root and loading the pages.
  std::vector<std::pair<int, MapEntry>> load_doomed_;
  std::vector<MapEntry> load_dropped_;
  // Evicted leaves being read back, and who waits for each.
  absl::flat_hash_map<const BlockMap::Node*, std::vector<StatusDone>> leaf_loads_;
  bool trim_scheduled_ = false;
  bool checkpoint_pages_in_flight_ = false;
  std::deque<MapEntry> dropped_leaves_;  // pages of evicted leaves that left every tree
  std::vector<MapEntry> dropping_leaves_now_;  // taken from dropped_leaves_, being read
  bool dropping_leaves_ = false;
  uint64_t leaves_read_ = 0;
  uint64_t leaves_evicted_ = 0;
  uint64_t leaf_waits_ = 0;     // operations that waited for leaves to be read
  int64_t leaf_wait_ns_ = 0;    // and how long, in total
  uint64_t dropped_leaves_unread_ = 0;
  int fsck_running_ = 0;
  std::vector<StatusDone> commit_waiters_;

  bool replaying_ = false;  // applying journal records at recovery
  uint64_t open_journal_bytes_read_ = 0;
  uint64_t open_pages_read_ = 0;
  // Destroying nodes that left every tree (see UnrefBlock).
  bool reaping_ = false;
  uint64_t unrefs_of_freed_chunks_ = 0;
  bool heal_scheduled_ = false;
  bool heal_loading_ = false;  // HealStep is reading the groups of a failed disk's chunks
  std::map<DiskId, uint64_t> heal_scanned_;  // slots of a failed disk HealStep looked at
  static constexpr size_t kHealGroupsPerRead = 64;
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

}  // namespace scribe

#endif  // SCRIBE_CLUSTER_POOL_IMPL_H_
