#include "libscribe/cluster/meta_pages.h"

#include <cstring>
#include <functional>

#include "absl/strings/str_format.h"
#include "libscribe/chunk/crc32c.h"
#include "scribe/status.h"

namespace scribe {
namespace {

constexpr uint32_t kPageMagic = 0x45474150;  // "PAGE"
constexpr uint64_t kMaxChunkId = (1ull << 56) - 1;

template <typename T>
void Put(uint8_t* at, T v) {
  std::memcpy(at, &v, sizeof(T));
}
template <typename T>
T Get(const uint8_t* at) {
  T v;
  std::memcpy(&v, at, sizeof(T));
  return v;
}

const char* TypeName(PageType t) {
  switch (t) {
    case PageType::kMapLeaf: return "map leaf";
    case PageType::kMapInterior: return "map interior node";
    case PageType::kChunkGroup: return "chunk group";
    case PageType::kChangeLog: return "change log";
    case PageType::kChunkState: return "chunk state";
  }
  return "unknown";
}

}  // namespace

std::string DescribePointer(const MapEntry& e) {
  return absl::StrFormat("page (chunk %d, block %d, crc %08x)", e.chunk, e.block, e.crc);
}

uint32_t SealPage(uint8_t* page, PageType type, int level, uint32_t count, uint64_t pool_uuid) {
  Put<uint32_t>(page, kPageMagic);
  page[8] = static_cast<uint8_t>(type);
  page[9] = static_cast<uint8_t>(level);
  Put<uint16_t>(page + 10, 0);
  Put<uint32_t>(page + 12, count);
  Put<uint64_t>(page + 16, pool_uuid);
  Put<uint64_t>(page + 24, 0);
  Put<uint32_t>(page + 4, Crc32c(page + 8, kPageBytes - 8));
  return Crc32c(page, kPageBytes);
}

absl::StatusOr<uint32_t> CheckPage(const uint8_t* page, const MapEntry& pointer, PageType type,
                                   uint64_t pool_uuid) {
  if (Crc32c(page, kPageBytes) != pointer.crc) {
    return absl::DataLossError(absl::StrFormat("%s (%s): checksum mismatch", DescribePointer(pointer),
                                               TypeName(type)));
  }
  // The pointer checksum matched, so these hold unless the writer was broken.
  if (Get<uint32_t>(page) != kPageMagic || Get<uint32_t>(page + 4) != Crc32c(page + 8, kPageBytes - 8)) {
    return absl::DataLossError(absl::StrFormat("%s: not a metadata page", DescribePointer(pointer)));
  }
  if (Get<uint64_t>(page + 16) != pool_uuid) {
    return absl::DataLossError(absl::StrFormat("%s: belongs to another pool", DescribePointer(pointer)));
  }
  if (page[8] != static_cast<uint8_t>(type)) {
    return absl::DataLossError(absl::StrFormat("%s: a page of type %d where a %s was expected",
                                               DescribePointer(pointer), page[8], TypeName(type)));
  }
  return Get<uint32_t>(page + 12);
}

void PutPointer(uint8_t* at, const MapEntry& e) {
  Put<uint64_t>(at, e.mapped() ? (e.chunk << 8 | e.block) : 0);
  Put<uint32_t>(at + 8, e.mapped() ? e.crc : 0);
}

MapEntry GetPointer(const uint8_t* at) {
  const uint64_t packed = Get<uint64_t>(at);
  MapEntry e;
  if (packed == 0) return e;
  e.chunk = packed >> 8;
  e.block = static_cast<uint32_t>(packed & 0xff);
  e.crc = Get<uint32_t>(at + 8);
  return e;
}

uint32_t EncodeNodePage(const BlockMap::Node& n, uint64_t pool_uuid, uint8_t* page) {
  std::memset(page, 0, kPageBytes);
  uint8_t* body = page + kPageHeaderBytes;
  uint32_t count = 0;
  for (uint32_t i = 0; i < BlockMap::kFanout; ++i) {
    MapEntry e;
    if (n.level == 0) {
      e = (*n.entries)[i];
    } else if (n.children[i]) {
      e = n.children[i]->page;
      SCRIBE_CHECK(e.mapped());  // children are written before their parent
    }
    if (!e.mapped()) continue;
    SCRIBE_CHECK(e.chunk <= kMaxChunkId && e.block < 256);
    PutPointer(body + i * kPageEntryBytes, e);
    ++count;
    if (n.level == 1) {
      const BlockMap::Node& leaf = *n.children[i];
      SCRIBE_CHECK(leaf.mapped <= BlockMap::kFanout && leaf.unique_counted <= leaf.mapped);
      const uint32_t counts = leaf.mapped | leaf.unique_counted << 12;
      uint8_t* at = page + kLeafCountsOffset + i * 3;
      at[0] = counts & 0xff;
      at[1] = (counts >> 8) & 0xff;
      at[2] = counts >> 16;
    }
  }
  return SealPage(page, n.level == 0 ? PageType::kMapLeaf : PageType::kMapInterior, n.level, count,
                  pool_uuid);
}

namespace {
// Checks a node page and calls fn(index, pointer) for each entry it holds.
absl::Status DecodeEntries(const uint8_t* page, const MapEntry& pointer, uint64_t pool_uuid,
                           int level, const std::function<void(uint32_t, const MapEntry&)>& fn) {
  const PageType type = level == 0 ? PageType::kMapLeaf : PageType::kMapInterior;
  absl::StatusOr<uint32_t> count = CheckPage(page, pointer, type, pool_uuid);
  if (!count.ok()) return count.status();
  if (page[9] != level) {
    return absl::DataLossError(absl::StrFormat("%s: level %d where %d was expected",
                                               DescribePointer(pointer), page[9], level));
  }
  const uint8_t* body = page + kPageHeaderBytes;
  uint32_t seen = 0;
  for (uint32_t i = 0; i < BlockMap::kFanout; ++i) {
    const MapEntry e = GetPointer(body + i * kPageEntryBytes);
    if (!e.mapped()) continue;
    ++seen;
    fn(i, e);
  }
  if (seen != *count) {
    return absl::DataLossError(absl::StrFormat("%s: %d entries, the header says %d",
                                               DescribePointer(pointer), seen, *count));
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status DecodeNodePage(const uint8_t* page, const MapEntry& pointer, uint64_t pool_uuid,
                            BlockMap::Node* n, std::vector<ChildPointer>* children) {
  if (n->level == 0) {
    SCRIBE_CHECK(n->entries != nullptr);
    return DecodeLeafPage(page, pointer, pool_uuid, n->entries.get(), &n->mapped);
  }
  bool counts_ok = true;
  RETURN_IF_ERROR(DecodeEntries(page, pointer, pool_uuid, n->level, [&](uint32_t i, const MapEntry& e) {
    ChildPointer c{i, e, 0, 0};
    if (n->level == 1) {
      const uint8_t* at = page + kLeafCountsOffset + i * 3;
      const uint32_t counts = at[0] | at[1] << 8 | at[2] << 16;
      c.mapped = counts & 0xfff;
      c.unique = counts >> 12;
      counts_ok = counts_ok && c.mapped <= BlockMap::kFanout && c.unique <= c.mapped;
    }
    children->push_back(c);
  }));
  if (!counts_ok) {
    return absl::DataLossError(absl::StrFormat("%s: a leaf's block counts are out of range",
                                               DescribePointer(pointer)));
  }
  return absl::OkStatus();
}

absl::Status DecodeLeafPage(const uint8_t* page, const MapEntry& pointer, uint64_t pool_uuid,
                            BlockMap::Entries* entries, uint32_t* mapped) {
  uint32_t seen = 0;
  RETURN_IF_ERROR(DecodeEntries(page, pointer, pool_uuid, 0, [&](uint32_t i, const MapEntry& e) {
    (*entries)[i] = e;
    ++seen;
  }));
  *mapped = seen;
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> EncodeChunkGroupPage(const std::vector<ChunkRecord>& chunks,
                                              uint64_t pool_uuid, uint8_t* page) {
  std::memset(page, 0, kPageBytes);
  if (chunks.size() > kChunksPerGroup) return absl::InternalError("too many chunks for one group page");
  size_t pos = kPageHeaderBytes;
  for (const ChunkRecord& c : chunks) {
    const size_t need = 24 + c.replicas.size() * 9;
    if (pos + need > kPageBytes || c.replicas.size() > 255) {
      return absl::InternalError(absl::StrFormat("chunk %d's record does not fit its group page", c.id));
    }
    Put<uint64_t>(page + pos, c.id);
    page[pos + 8] = static_cast<uint8_t>(c.replication);
    page[pos + 9] = static_cast<uint8_t>(c.replicas.size());
    PutPointer(page + pos + 10, c.state);
    Put<uint16_t>(page + pos + 22, static_cast<uint16_t>(c.used));
    pos += 24;
    for (const Replica& r : c.replicas) {
      if (r.disk.value > UINT32_MAX || r.slot > UINT32_MAX) {
        return absl::InternalError("disk id or slot beyond the page format");
      }
      Put<uint32_t>(page + pos, static_cast<uint32_t>(r.disk.value));
      Put<uint32_t>(page + pos + 4, static_cast<uint32_t>(r.slot));
      page[pos + 8] = r.stale ? 1 : 0;
      pos += 9;
    }
  }
  return SealPage(page, PageType::kChunkGroup, 0, static_cast<uint32_t>(chunks.size()), pool_uuid);
}

absl::StatusOr<std::vector<ChunkRecord>> DecodeChunkGroupPage(const uint8_t* page,
                                                              const MapEntry& pointer,
                                                              uint64_t pool_uuid) {
  absl::StatusOr<uint32_t> count = CheckPage(page, pointer, PageType::kChunkGroup, pool_uuid);
  if (!count.ok()) return count.status();
  std::vector<ChunkRecord> out;
  size_t pos = kPageHeaderBytes;
  auto malformed = [&] {
    return absl::DataLossError(absl::StrFormat("%s: malformed chunk group", DescribePointer(pointer)));
  };
  if (*count > kChunksPerGroup) return malformed();
  for (uint32_t i = 0; i < *count; ++i) {
    if (pos + 24 > kPageBytes) return malformed();
    ChunkRecord c;
    c.id = Get<uint64_t>(page + pos);
    c.replication = page[pos + 8];
    const uint32_t n = page[pos + 9];
    c.state = GetPointer(page + pos + 10);
    c.used = Get<uint16_t>(page + pos + 22);
    pos += 24;
    if (pos + n * 9 > kPageBytes || c.id == 0 || c.used > kBlocksPerChunk) return malformed();
    for (uint32_t k = 0; k < n; ++k) {
      Replica r;
      r.disk.value = Get<uint32_t>(page + pos);
      r.slot = Get<uint32_t>(page + pos + 4);
      r.stale = page[pos + 8] != 0;
      c.replicas.push_back(r);
      pos += 9;
    }
    out.push_back(std::move(c));
  }
  return out;
}

uint32_t EncodeChunkStatePage(uint64_t chunk, const ChunkBlocks& blocks, uint64_t pool_uuid,
                              uint8_t* page) {
  std::memset(page, 0, kPageBytes);
  uint8_t* body = page + kPageHeaderBytes;
  Put<uint64_t>(body, chunk);
  uint32_t referenced = 0;
  for (uint32_t b = 0; b < kBlocksPerChunk; ++b) {
    Put<uint32_t>(body + 8 + 4 * b, blocks.refs[b]);
    Put<uint32_t>(body + 8 + 4 * kBlocksPerChunk + 4 * b, blocks.refs[b] > 0 ? blocks.crc[b] : 0);
    referenced += blocks.refs[b] > 0;
  }
  return SealPage(page, PageType::kChunkState, 0, referenced, pool_uuid);
}

absl::Status DecodeChunkStatePage(const uint8_t* page, const MapEntry& pointer, uint64_t pool_uuid,
                                  uint64_t chunk, ChunkBlocks* blocks) {
  absl::StatusOr<uint32_t> count = CheckPage(page, pointer, PageType::kChunkState, pool_uuid);
  if (!count.ok()) return count.status();
  const uint8_t* body = page + kPageHeaderBytes;
  if (Get<uint64_t>(body) != chunk) {
    return absl::DataLossError(absl::StrFormat("%s: the state of chunk %d where chunk %d's was expected",
                                               DescribePointer(pointer), Get<uint64_t>(body), chunk));
  }
  uint32_t referenced = 0;
  for (uint32_t b = 0; b < kBlocksPerChunk; ++b) {
    blocks->refs[b] = Get<uint32_t>(body + 8 + 4 * b);
    blocks->crc[b] = Get<uint32_t>(body + 8 + 4 * kBlocksPerChunk + 4 * b);
    referenced += blocks->refs[b] > 0;
  }
  if (referenced != *count) {
    return absl::DataLossError(absl::StrFormat("%s: malformed chunk state", DescribePointer(pointer)));
  }
  return absl::OkStatus();
}

uint32_t EncodeChangeLogPage(const std::vector<std::pair<uint64_t, uint64_t>>& extents,
                             uint64_t pool_uuid, uint8_t* page) {
  std::memset(page, 0, kPageBytes);
  SCRIBE_CHECK(extents.size() <= kExtentsPerLogPage);
  uint8_t* body = page + kPageHeaderBytes;
  for (size_t i = 0; i < extents.size(); ++i) {
    Put<uint64_t>(body + 16 * i, extents[i].first);
    Put<uint64_t>(body + 16 * i + 8, extents[i].second);
  }
  return SealPage(page, PageType::kChangeLog, 0, static_cast<uint32_t>(extents.size()), pool_uuid);
}

absl::StatusOr<std::vector<std::pair<uint64_t, uint64_t>>> DecodeChangeLogPage(
    const uint8_t* page, const MapEntry& pointer, uint64_t pool_uuid) {
  absl::StatusOr<uint32_t> count = CheckPage(page, pointer, PageType::kChangeLog, pool_uuid);
  if (!count.ok()) return count.status();
  if (*count > kExtentsPerLogPage) {
    return absl::DataLossError(absl::StrFormat("%s: malformed change log", DescribePointer(pointer)));
  }
  std::vector<std::pair<uint64_t, uint64_t>> out;
  const uint8_t* body = page + kPageHeaderBytes;
  for (uint32_t i = 0; i < *count; ++i) {
    const uint64_t b = Get<uint64_t>(body + 16 * i);
    const uint64_t e = Get<uint64_t>(body + 16 * i + 8);
    if (e <= b) {
      return absl::DataLossError(absl::StrFormat("%s: malformed change log", DescribePointer(pointer)));
    }
    out.push_back({b, e});
  }
  return out;
}

}  // namespace scribe
