// In-memory state of a Pool and the metadata records that change it. Every change to
// pool metadata is a record: applied to memory at once and appended to the journal, and
// replayed through the same Apply() on recovery, so live and recovered state cannot
// drift apart.
#ifndef SCRIBE_CLUSTER_POOL_INTERNAL_H_
#define SCRIBE_CLUSTER_POOL_INTERNAL_H_

#include <array>
#include <bitset>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "libscribe/volume/block_map.h"
#include "libscribe/volume/change_log.h"
#include "scribe/pool.h"

namespace scribe {

constexpr uint64_t kBlockBytes = 4096;
constexpr uint64_t kChunkBytes = 1ull << 20;
constexpr uint32_t kBlocksPerChunk = kChunkBytes / kBlockBytes;
constexpr uint64_t kSuperblockBytes = 4096;

enum RecordType : uint8_t {
  kRecCounters = 1,
  kRecAddDisk,
  kRecFailDisk,
  kRecResetDisk,
  kRecAddChunk,     // id, replication, flags (kChunkMeta), copies
  kRecFreeChunk,
  kRecSetReplica,   // chunk, index, disk, slot (index == size: append)
  kRecStale,        // chunk, disk, stale
  kRecCreateVsd,
  kRecDeleteVsd,
  kRecResizeVsd,
  kRecMap,          // vsd, lba, chunk, first block, count, crc x count
  kRecUnmap,        // vsd, lba, count
  kRecSnapshot,
  kRecDeleteSnapshot,
  kRecClone,        // new vsd from a snapshot or a vsd
  kRecRevert,
  kRecDropReplica,  // chunk, index: a metadata chunk's copy on a failed disk, not replaced
  // Checkpoint records (format 2): the small root of the paged metadata. Everything
  // that grows with the data (tree nodes, data chunk records, change logs) is in pages
  // these records point to (see meta_pages.h).
  kRecCkptChunkGroup,  // group index, page pointer: the records of the data chunks in it
  kRecCkptVsd,         // a VSD: its header, tree levels and root page pointer
  kRecCkptSnapshot,    // a snapshot: its header, size, tree levels and root page pointer
  kRecCkptChangeLog,   // a VSD's or snapshot's change log: base, known, its pages
  kRecCkptEnd,
  // Format 3: block references are stored (chunk state pages), so the root also names
  // what still holds references without being part of a map.
  kRecCkptDoomed,       // a detached tree being deleted: level, page pointer
  kRecCkptDroppedLeaf,  // an evicted leaf that left every tree: its page pointer
};

// kRecAddChunk flags.
constexpr uint8_t kChunkMeta = 1;  // holds metadata pages, not VSD data

struct DiskState {
  DiskId id;
  NodeId node;
  Tier tier = Tier::kHdd;
  BlockDevice* dev = nullptr;  // null: named in metadata but not present
  uint64_t data_start = 0;
  uint64_t slots = 0;
  std::vector<uint64_t> slot_owner;  // chunk id or 0
  uint64_t used_slots = 0;
  uint64_t free_hint = 0;  // no free slot below it (where the search for one starts)
  bool failed = false;
  bool evicted = false;
};

struct Replica {
  DiskId disk;
  uint64_t slot = 0;
  bool stale = false;  // missed writes while its node was away
};

// A chunk's per-block state. A data chunk's is one metadata page (PageType::kChunkState),
// read back on demand and dropped from memory beyond the metadata cache once written; a
// metadata chunk's stays in memory (its pages are claimed again at every open).
struct ChunkBlocks {
  std::array<uint32_t, kBlocksPerChunk> refs{};
  std::array<uint32_t, kBlocksPerChunk> crc{};  // of each block with refs > 0
};

// Changes to a data chunk whose blocks (or whose record) are not in memory (a leaf
// copied or dropped, a journal record replayed), kept by chunk id and applied when the
// page is read back. Never a reference from 0 to 1 outside replay: a new block is
// written into a chunk in memory.
struct ChunkDelta {
  std::array<int32_t, kBlocksPerChunk> refs{};
  std::array<uint32_t, kBlocksPerChunk> crc{};
  std::bitset<kBlocksPerChunk> crc_set;
};

struct ChunkState {
  uint64_t id = 0;
  int replication = 2;
  std::vector<Replica> replicas;
  std::unique_ptr<ChunkBlocks> blocks;  // null: evicted, or never read since the open
  MapEntry page;       // data chunk: where `blocks` was last written (unmapped: never)
  bool dirty = false;  // `blocks` (or its delta) changed since written at `page`
  std::list<uint64_t>::iterator lru;  // in PoolImpl::chunk_lru_ while `blocks` is set
  std::bitset<kBlocksPerChunk> busy;  // allocated to a write in flight, or freed but not yet durable
  // Blocks with refs > 0 or busy. Exact unless it has a delta (then as of the page plus
  // what is known).
  uint32_t used = 0;
  int writes_in_flight = 0;
  bool open = false;       // some VSD (or, for a metadata chunk, the page writer) allocates from it
  bool rebuilding = false;
  // Holds metadata pages (refs is 1 for a page some structure names). Metadata chunks
  // are listed in every checkpoint's root (their pages hold everything else).
  bool meta = false;
};

struct LockWaiter {
  uint64_t b0, b1;
  std::function<void()> fn;
};

struct VsdState {
  VsdId id;
  std::string name;
  uint64_t size_bytes = 0;
  int replication = 2;
  int flash_priority = 4;
  BlockMap map;
  // The interval since the latest snapshot: `map` equals snapshot `base`'s map except
  // for the blocks in `changes`. No base: nothing to diff against (never snapshotted,
  // cloned from a live VSD, logs disabled), and nothing is logged.
  SnapshotId base;
  ChangeLog changes;
  // The pages holding `changes` as of its version `log_version_written`.
  std::vector<MapEntry> log_pages;
  uint64_t log_version_written = 0;
  uint64_t open_chunk = 0;
  std::vector<SnapshotId> snapshots;
  std::map<uint64_t, uint64_t> locked;  // write-locked block ranges [b0, b1)
  std::deque<LockWaiter> waiters;
};

struct SnapshotState {
  SnapshotId id;
  VsdId vsd;
  std::string name;
  uint64_t generation = 0;
  uint64_t size_bytes = 0;
  BlockMap map;
  // The interval that ended here: `map` equals snapshot `base`'s map (the previous
  // snapshot of the VSD, or the snapshot a clone or revert started from) except for the
  // blocks in `changes`. Diff follows these links back to a common snapshot.
  SnapshotId base;
  ChangeLog changes;
  std::vector<MapEntry> log_pages;
  uint64_t log_version_written = 0;
};

}  // namespace scribe

#endif  // SCRIBE_CLUSTER_POOL_INTERNAL_H_
