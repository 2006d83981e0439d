// On-disk metadata pages (pool format 4).
//
// Block-map tree nodes, chunk records and change logs are kept as 4 KiB pages in the
// pool's own space (metadata chunks, mirrored on distinct nodes like data) and written
// copy-on-write: a page that changed is written to a new place at the next checkpoint,
// never over the version the last durable checkpoint names. A page names the pool it
// belongs to and nothing else pool-global, so pages can later belong to one metadata
// domain each.
//
// A pointer to a page is a MapEntry: (chunk, block) and the crc32c of the whole 4 KiB
// page, so a reader finds a page that was replaced, torn or reused by its checksum
// before it decodes a byte. Inside, a 32-byte header (magic, crc32c of bytes 8..4095,
// type, level, count, pool uuid) then the body:
//
//   map leaf      256 entries x 12 bytes: (chunk << 8 | block) u64, crc32c u32 (0 = unmapped)
//   map interior  256 child pointers x 12 bytes, the same encoding; at level 1 then 256 x 3
//                 bytes: each child leaf's mapped and single-reference block counts
//                 (12 bits each), so an open needs no leaf to know a map's usage
//   chunk group   up to kChunksPerGroup chunk records (id, replication, copies, the
//                 pointer to the chunk's state page, blocks in use)
//   chunk state   a data chunk's id, then 256 reference counts and 256 block crc32c
//   change log    up to kExtentsPerLogPage [begin, end) extents of 16 bytes
#ifndef SCRIBE_CLUSTER_META_PAGES_H_
#define SCRIBE_CLUSTER_META_PAGES_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "libscribe/cluster/pool_internal.h"
#include "libscribe/volume/block_map.h"

namespace scribe {

constexpr uint32_t kPageBytes = 4096;
constexpr uint32_t kPageHeaderBytes = 32;
constexpr uint32_t kPageEntryBytes = 12;
// Where a level-1 interior page keeps its leaves' counts (after the 256 pointers).
constexpr uint32_t kLeafCountsOffset = kPageHeaderBytes + 256 * kPageEntryBytes;
static_assert(kLeafCountsOffset + 256 * 3 <= kPageBytes);
// Chunk ids are grouped by id / kChunksPerGroup into one page each (a record is
// 24 + 9 bytes per copy: 32 records fit with up to 11 copies each).
constexpr uint64_t kChunksPerGroup = 32;
constexpr uint32_t kExtentsPerLogPage = (kPageBytes - kPageHeaderBytes) / 16;

enum class PageType : uint8_t {
  kMapLeaf = 1,
  kMapInterior = 2,
  kChunkGroup = 3,
  kChangeLog = 4,
  kChunkState = 5,
};

// Fills in the header of `page` (kPageBytes, body already written) and returns the
// pointer checksum: crc32c of the whole page.
uint32_t SealPage(uint8_t* page, PageType type, int level, uint32_t count, uint64_t pool_uuid);

// Checks a page read from `where` (for the error text) against the pointer that named
// it: the pointer checksum, the header's own checksum, magic, pool and type. Returns
// the header's count.
absl::StatusOr<uint32_t> CheckPage(const uint8_t* page, const MapEntry& pointer, PageType type,
                                   uint64_t pool_uuid);

// Page pointers inside pages.
void PutPointer(uint8_t* at, const MapEntry& e);
MapEntry GetPointer(const uint8_t* at);

// A block-map node. Interior nodes name their children by the children's `page`, which
// must be set (children are written first).
uint32_t EncodeNodePage(const BlockMap::Node& n, uint64_t pool_uuid, uint8_t* page);
// An interior node's child: its index, page, and (children that are leaves) the
// leaf's counts as of its last write.
struct ChildPointer {
  uint32_t index = 0;
  MapEntry page;
  uint32_t mapped = 0;
  uint32_t unique = 0;
};
// Decodes a node page into `n` (whose level must be set): a leaf's entries and mapped
// count, or an interior node's children into `children`. Adds no block references.
absl::Status DecodeNodePage(const uint8_t* page, const MapEntry& pointer, uint64_t pool_uuid,
                            BlockMap::Node* n, std::vector<ChildPointer>* children);
// A leaf page's entries (into `entries`, which must be all unmapped) and their count.
absl::Status DecodeLeafPage(const uint8_t* page, const MapEntry& pointer, uint64_t pool_uuid,
                            BlockMap::Entries* entries, uint32_t* mapped);

// The chunk records of one group (ids in [group * kChunksPerGroup, +kChunksPerGroup)).
struct ChunkRecord {
  uint64_t id = 0;
  int replication = 2;
  std::vector<Replica> replicas;
  MapEntry state;     // the chunk's state page
  uint32_t used = 0;  // blocks referenced
};
absl::StatusOr<uint32_t> EncodeChunkGroupPage(const std::vector<ChunkRecord>& chunks,
                                              uint64_t pool_uuid, uint8_t* page);
absl::StatusOr<std::vector<ChunkRecord>> DecodeChunkGroupPage(const uint8_t* page,
                                                              const MapEntry& pointer,
                                                              uint64_t pool_uuid);

// A data chunk's per-block reference counts and checksums.
uint32_t EncodeChunkStatePage(uint64_t chunk, const ChunkBlocks& blocks, uint64_t pool_uuid,
                              uint8_t* page);
absl::Status DecodeChunkStatePage(const uint8_t* page, const MapEntry& pointer, uint64_t pool_uuid,
                                  uint64_t chunk, ChunkBlocks* blocks);

// One page of a change log's extents.
uint32_t EncodeChangeLogPage(const std::vector<std::pair<uint64_t, uint64_t>>& extents,
                             uint64_t pool_uuid, uint8_t* page);
absl::StatusOr<std::vector<std::pair<uint64_t, uint64_t>>> DecodeChangeLogPage(
    const uint8_t* page, const MapEntry& pointer, uint64_t pool_uuid);

std::string DescribePointer(const MapEntry& e);

}  // namespace scribe

#endif  // SCRIBE_CLUSTER_META_PAGES_H_
