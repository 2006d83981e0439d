// The SCRIBE storage pool: every disk of every node in one pool of mirrored,
// wide-striped, thin virtual disks (VSDs) with instant snapshots and clones.
//
// Model. A disk is a BlockDevice carved into 1 MiB chunk slots after a reserved
// metadata region. A chunk is `replication` slots on distinct nodes holding identical
// 4 KiB blocks. A VSD maps each 4 KiB logical block to (chunk, block, crc32c) through a
// copy-on-write radix tree; writes always go to fresh blocks (redirect-on-write), so a
// crash never tears a block, a snapshot is a pinned root (O(1)), a clone is a new VSD
// sharing that root (O(1), no parent chain), and a diff walks only subtrees that differ.
// Block reference counts are the number of tree leaves naming a block, kept with each
// block's checksum in one metadata page per chunk; a block is freed when its last leaf
// goes, and only after the metadata that stopped using it is durable.
//
// Durability. A completed Write is visible to reads but, like a disk's volatile cache,
// may be lost in a power cut until a Flush (or a write with `fua`) completes; a lost
// write leaves each 4 KiB block entirely old. Metadata changes go to a journal that is
// mirrored on up to three disks of distinct nodes; a flush makes data durable on every
// copy first, then the journal.
//
// Threading. Single-threaded: every method must be called on the pool's Loop thread
// and every callback runs there.
#ifndef SCRIBE_POOL_H_
#define SCRIBE_POOL_H_

#include <compare>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "scribe/env.h"

namespace scribe {

// Strong ids: a VsdId cannot be passed where a SnapshotId is meant.
template <typename Tag>
struct Id {
  uint64_t value = 0;
  auto operator<=>(const Id&) const = default;
  bool valid() const { return value != 0; }
};
using NodeId = Id<struct NodeTag>;
using DiskId = Id<struct DiskTag>;
using VsdId = Id<struct VsdTag>;
using SnapshotId = Id<struct SnapshotTag>;

enum class Tier { kSsd = 0, kHdd = 1 };

struct PoolOptions {
  // Bytes reserved at the start of every disk for the mirrored metadata journal: two
  // halves, each holding a checkpoint's root (its size follows the number of disks,
  // VSDs and snapshots and about 40 bytes per 256 MiB of metadata pages, not the data)
  // and the journal batches after it. Block maps, chunk records and change logs are
  // pages in the pool's own space.
  uint64_t metadata_bytes = 64ull << 20;
  // How many disks (on distinct nodes) carry the metadata journal.
  int metadata_mirrors_max = 3;
  // A checkpoint is written once this many block-map nodes changed since the last one
  // (besides when a journal half fills): it bounds what one checkpoint writes and the
  // space reserved for it on a full pool.
  uint64_t checkpoint_dirty_pages_max = 16384;
  // Deleted snapshots and VSDs are freed in the background: 16 tree nodes (up to 4,096
  // block references) per step, with this pause between steps for the I/O in flight.
  int64_t background_delete_pause_ns = 100'000;
  // Memory for metadata that has not changed since the last checkpoint: block-map leaves
  // (4 KiB each, mapping 256 blocks) and, in a quarter of it beyond the leaves, chunk
  // states (2 KiB each: the reference counts and checksums of a 1 MiB chunk's blocks),
  // and in an eighth, data chunk records (copies, blocks in use; ~256 bytes each, kept
  // by groups of 32). Beyond it the least recently used are dropped and read back from
  // their pages when an I/O, a diff, heal, scrub or fsck needs them. The default keeps
  // the maps of 64 GiB of sequentially written data, the states of 32 GiB of chunks and
  // the records of 128 GiB. Changed ones stay until the next checkpoint
  // (checkpoint_dirty_pages_max bounds them), and so do degraded or busy chunks' records.
  uint64_t metadata_cache_bytes = 256ull << 20;
  // Times a read retries when every copy of a block fails its checksum (the block may
  // have been rewritten and reused underneath it).
  int read_retries_max = 4;
  // Re-mirroring copies this many chunks at once.
  int rebuild_chunks_in_flight_max = 4;
  // A disk operation not answered in this time fails with UNAVAILABLE (its copy is
  // treated as bad for that operation).
  int64_t io_timeout_ns = 30'000'000'000;
  // A disk is declared failed (and re-mirrored) after this many EIO-class errors
  // within the window; fewer are retried on other copies.
  int io_errors_to_fail_disk = 3;
  int64_t io_error_window_ns = 60'000'000'000;
  // Reads go first to the copy on this node when it has one (the node running the pool:
  // its disks are local); invalid = spread reads over the copies.
  NodeId preferred_read_node;
  // Each VSD logs which blocks change between its snapshots, so Diff of nearby
  // snapshots costs what changed. A log holding more extents (runs of changed blocks)
  // than max(16, the VSD's 4 KiB blocks / this) is dropped and diffs over it walk the
  // block maps: the changes then touch nearly every leaf anyway. The bound is on memory:
  // ~20-40 bytes of memory and 16 bytes of checkpoint per extent. 0 disables the logs.
  uint64_t change_log_blocks_per_extent = 32;
};

struct DiskSpec {
  NodeId node;
  Tier tier = Tier::kHdd;
  BlockDevice* device = nullptr;  // not owned; must outlive the pool
};

struct VsdOptions {
  std::string name;
  uint64_t size_bytes = 0;
  int replication = 2;     // 2 or 3 copies
  int flash_priority = 4;  // 0..11: how strongly HEAT favours SSD for this VSD
};

struct DiskInfo {
  DiskId id;
  NodeId node;
  Tier tier;
  uint64_t capacity_bytes = 0;  // space for chunks
  uint64_t used_bytes = 0;      // chunk slots in use
  uint64_t chunks = 0;
  bool failed = false;
  bool online = true;  // false while its node is down
};

struct VsdInfo {
  VsdId id;
  std::string name;
  uint64_t size_bytes = 0;
  int replication = 2;
  int flash_priority = 4;
  uint64_t allocated_bytes = 0;  // mapped 4 KiB blocks of the live VSD
  uint64_t unique_bytes = 0;     // blocks nothing else (no snapshot, no clone) uses
  uint64_t shared_bytes = 0;     // allocated_bytes - unique_bytes
  size_t snapshots = 0;
};

struct SnapshotInfo {
  SnapshotId id;
  VsdId vsd;
  std::string name;
  uint64_t generation = 0;  // pool metadata sequence at creation
  uint64_t unique_bytes = 0;  // freed if this snapshot alone were deleted
};

struct Extent {
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
  bool operator==(const Extent&) const = default;
};

struct PoolStats {
  uint64_t capacity_bytes[2] = {0, 0};  // by Tier
  uint64_t used_bytes[2] = {0, 0};
  uint64_t chunks = 0;
  uint64_t degraded_chunks = 0;  // fewer healthy copies than their VSD's replication
  uint64_t rebuilds_in_flight = 0;
  uint64_t chunks_rebuilt = 0;
  uint64_t metadata_sequence = 0;
  // Paged metadata: chunks holding metadata pages (included in `chunks`), and since this
  // instance was created or opened: checkpoints written, the pages they wrote, and the
  // last one's pages and root bytes (a checkpoint writes what changed since the last).
  uint64_t metadata_chunks = 0;
  // Free chunks data leaves on every node for metadata (a node with no more free than
  // this takes no new data chunk nor data copy being healed).
  uint64_t metadata_reserve_chunks_per_node = 0;
  uint64_t checkpoints = 0;
  uint64_t checkpoint_pages_written = 0;
  uint64_t last_checkpoint_pages = 0;
  uint64_t last_checkpoint_root_bytes = 0;
  // What the open of this instance read (0 for a created pool): journal bytes (as far as
  // its batches go, not the whole region) and metadata pages (chunk groups, interior
  // tree nodes, change logs, and leaves only for journal records that change them).
  uint64_t open_journal_bytes_read = 0;
  uint64_t open_pages_read = 0;
  // Deleting a snapshot or VSD (or reverting) detaches its tree at once and frees it in
  // the background, a bounded number of nodes per loop turn: subtrees still queued (0
  // when done), tree nodes freed and bytes of blocks freed so far by that work.
  uint64_t delete_subtrees_pending = 0;
  uint64_t delete_nodes_freed = 0;
  uint64_t delete_bytes_freed = 0;
  uint64_t delete_step_max_ns = 0;  // the longest step: how long the loop was held
  // Block-map leaves (see PoolOptions::metadata_cache_bytes): in memory now, and since
  // this instance was created or opened: read back from their pages, evicted, and the
  // operations that waited for a read-back with their total wait.
  uint64_t map_leaves_in_memory = 0;
  uint64_t map_leaves_read = 0;
  uint64_t map_leaves_evicted = 0;
  uint64_t map_leaf_waits = 0;
  uint64_t map_leaf_wait_ns = 0;
  // Data chunk states (see PoolOptions::metadata_cache_bytes): in memory now, read back
  // and evicted since this instance was created or opened, and with changes waiting for
  // their page to be read.
  uint64_t chunk_states_in_memory = 0;
  uint64_t chunk_states_read = 0;
  uint64_t chunk_states_evicted = 0;
  uint64_t chunk_states_with_deltas = 0;
  // Groups of data chunk records (kChunksPerGroup records each, see
  // PoolOptions::metadata_cache_bytes): in memory now (with a page), read back and
  // evicted since this instance was created or opened.
  uint64_t chunk_groups_in_memory = 0;
  uint64_t chunk_groups_read = 0;
  uint64_t chunk_groups_evicted = 0;
  // Diffs since this instance was created or opened: answered from the change logs of
  // the snapshot intervals between the two snapshots, or by walking both block maps.
  uint64_t diffs_from_change_logs = 0;
  uint64_t diffs_walked = 0;
  // A disk refused this instance for a newer owner's epoch (see scribe/remote.h):
  // every later call fails with FAILED_PRECONDITION.
  bool fenced = false;
};

struct ScrubReport {
  uint64_t chunks_checked = 0;
  uint64_t blocks_checked = 0;
  uint64_t bad_copies = 0;     // a copy that failed its checksum or read
  uint64_t repaired = 0;       // of those, rewritten from a good copy
  uint64_t unrecoverable = 0;  // blocks with no good copy left
};

struct FsckReport {
  uint64_t blocks_referenced = 0;
  uint64_t chunks = 0;
  std::vector<std::string> errors;  // empty when consistent
  bool ok() const { return errors.empty(); }
};

class Pool {
 public:
  template <typename T>
  using Done = std::function<void(absl::StatusOr<T>)>;
  using StatusDone = std::function<void(absl::Status)>;

  // Formats `disks` as a new pool (destroying their contents). `loop` and `random` must
  // outlive the pool.
  static void Create(Loop* loop, Random* random, PoolOptions options,
                     std::vector<DiskSpec> disks, Done<std::unique_ptr<Pool>> done);
  // Opens the pool on `disks` after a clean stop or a crash: every flushed write and
  // every completed metadata operation is there.
  static void Open(Loop* loop, Random* random, PoolOptions options, std::vector<DiskSpec> disks,
                   Done<std::unique_ptr<Pool>> done);

  virtual ~Pool() = default;

  // --- Membership ---
  // Adds a disk (formatting it); its space is usable as soon as `done` runs.
  virtual void AddDisk(DiskSpec disk, Done<DiskId> done) = 0;
  // Marks a disk failed: no more I/O goes to it and its chunks are re-mirrored.
  virtual void FailDisk(DiskId disk, StatusDone done) = 0;
  // A node going down (crash, partition): its disks are skipped; chunks written while it
  // is away, or written on it since its last flush, remember that its copies are stale.
  // `SetNodeOnline(true)` brings it back: stale copies are caught up. Online state is
  // not persisted: after Open every node present is online.
  virtual void SetNodeOnline(NodeId node, bool online) = 0;
  // Declares an offline node lost: its copies are re-mirrored onto the other nodes.
  virtual void EvictNode(NodeId node, StatusDone done) = 0;
  // Gives the pool the device of one of its own disks that it has none for: a disk whose
  // node was down at Open (that node starts offline; a missing disk of a present node is
  // failed). The superblock says which disk it is; `disk.node` and `disk.tier` are
  // ignored. Bring the node back with SetNodeOnline(true) afterwards (stale copies are
  // then caught up, or freed if the node was evicted). Errors: UNAVAILABLE when the
  // superblock cannot be read, NOT_FOUND when the device holds no disk of this pool
  // (blank: AddDisk it), FAILED_PRECONDITION for another pool's disk or a disk whose
  // node is online with a device already.
  virtual void AttachDevice(DiskSpec disk, Done<DiskId> done) = 0;

  // --- VSDs ---
  // Sizes are multiples of 4096 bytes (INVALID_ARGUMENT otherwise); names are unique.
  virtual void CreateVsd(VsdOptions options, Done<VsdId> done) = 0;
  // Deletes the VSD and its snapshots; clones made from them are unaffected.
  virtual void DeleteVsd(VsdId vsd, StatusDone done) = 0;
  // Grows a VSD (shrinking is refused: it would destroy data).
  virtual void ResizeVsd(VsdId vsd, uint64_t size_bytes, StatusDone done) = 0;
  virtual absl::StatusOr<VsdId> FindVsd(const std::string& name) const = 0;
  virtual absl::StatusOr<VsdInfo> GetVsdInfo(VsdId vsd) const = 0;
  virtual std::vector<VsdInfo> ListVsds() const = 0;

  // I/O at 512-byte granularity; `buf` needs no alignment and must stay valid until
  // `done` runs. Unwritten space reads as zeros.
  virtual void Read(VsdId vsd, uint64_t offset_bytes, size_t length_bytes, void* buf,
                    StatusDone done) = 0;
  virtual void Write(VsdId vsd, uint64_t offset_bytes, size_t length_bytes, const void* buf,
                     bool fua, StatusDone done) = 0;
  // Afterwards the range reads as zeros (whole 4 KiB blocks are unmapped and their space
  // freed; partial blocks are written with zeros). Not ordered against writes in flight
  // to the same blocks, like a disk's TRIM.
  virtual void Discard(VsdId vsd, uint64_t offset_bytes, uint64_t length_bytes,
                       StatusDone done) = 0;
  virtual void Flush(StatusDone done) = 0;

  // --- Snapshots and clones ---
  // A snapshot holds every write completed before the call, flushed or not, and is
  // durable (exactly so, across a power cut) when `done` runs.
  virtual void CreateSnapshot(VsdId vsd, std::string name, Done<SnapshotId> done) = 0;
  // One point in time across several VSDs (a VM's disks); ids in `vsds` order.
  virtual void CreateGroupSnapshot(std::vector<VsdId> vsds, std::string name,
                                   Done<std::vector<SnapshotId>> done) = 0;
  virtual void DeleteSnapshot(SnapshotId snapshot, StatusDone done) = 0;
  virtual std::vector<SnapshotInfo> ListSnapshots(VsdId vsd) const = 0;
  virtual void ReadSnapshot(SnapshotId snapshot, uint64_t offset_bytes, size_t length_bytes,
                            void* buf, StatusDone done) = 0;
  // A new independent VSD with the contents (and the replication and flash priority) of
  // a snapshot's VSD or of a live VSD.
  virtual void CloneFromSnapshot(SnapshotId snapshot, std::string name, Done<VsdId> done) = 0;
  virtual void CloneVsd(VsdId vsd, std::string name, Done<VsdId> done) = 0;
  // Brings the VSD back to the snapshot's contents and size (writes since are discarded).
  virtual void RevertToSnapshot(VsdId vsd, SnapshotId snapshot, StatusDone done) = 0;

  // Extents whose block mapping differs between two snapshots (or `to` = a snapshot and
  // `from` invalid: everything mapped), ascending and merged, in time proportional to
  // what changed. A block rewritten with the same bytes counts as changed; a block
  // written and then discarded where it was unmapped before does not. Works across a
  // clone boundary: the snapshots may belong to a clone and its source. Snapshots a few
  // intervals apart in one lineage (the same VSD, or a clone made from a snapshot) are
  // answered from the logs of the blocks written in between; others walk both maps.
  // Map pages not in memory are read first (see PoolOptions::metadata_cache_bytes).
  virtual void Diff(SnapshotId from, SnapshotId to, Done<std::vector<Extent>> done) = 0;

  // --- Health and accounting ---
  virtual std::vector<DiskInfo> ListDisks() const = 0;
  virtual PoolStats Stats() const = 0;
  // Reads every copy of every used block, verifies checksums, repairs bad copies.
  virtual void Scrub(Done<ScrubReport> done) = 0;
  // Checks metadata invariants: reference counts exact, no leaks, no double references,
  // every chunk's copies on distinct nodes. Reads the map pages not in memory; pauses
  // background deletes while it runs.
  virtual void Fsck(Done<FsckReport> done) = 0;
  // True when no chunk is degraded and no rebuild is running.
  virtual bool FullyRedundant() const = 0;
};

}  // namespace scribe

#endif  // SCRIBE_POOL_H_
