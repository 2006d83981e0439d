#include "libscribe/cluster/meta_pages.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "libscribe/chunk/crc32c.h"

namespace scribe {
namespace {

constexpr uint64_t kUuid = 0x1234567890abcdefull;

// Nodes here reference no real blocks.
class NoRefs : public BlockRefs {
 public:
  void Ref(const MapEntry&) override {}
  void Unref(const MapEntry&) override {}
};
NoRefs no_refs;

MapEntry At(uint64_t chunk, uint32_t block, uint32_t crc) { return MapEntry{chunk, block, crc}; }

TEST(MetaPages, LeafRoundTrips) {
  BlockMap::Node leaf(0, &no_refs);
  (*leaf.entries)[0] = At(7, 3, 0xdeadbeef);
  (*leaf.entries)[255] = At((1ull << 56) - 1, 255, 1);
  leaf.mapped = 2;
  std::vector<uint8_t> page(kPageBytes);
  const uint32_t crc = EncodeNodePage(leaf, kUuid, page.data());
  EXPECT_EQ(crc, Crc32c(page.data(), kPageBytes));

  BlockMap::Node out(0, &no_refs);
  std::vector<ChildPointer> children;
  ASSERT_TRUE(DecodeNodePage(page.data(), At(9, 9, crc), kUuid, &out, &children).ok());
  EXPECT_TRUE(children.empty());
  EXPECT_EQ(out.mapped, 2u);
  EXPECT_EQ((*out.entries)[0].chunk, 7u);
  EXPECT_EQ((*out.entries)[0].block, 3u);
  EXPECT_EQ((*out.entries)[0].crc, 0xdeadbeefu);
  EXPECT_EQ((*out.entries)[255].chunk, (1ull << 56) - 1);
  EXPECT_EQ((*out.entries)[255].block, 255u);
  for (int i = 1; i < 255; ++i) EXPECT_FALSE((*out.entries)[i].mapped()) << i;
}

TEST(MetaPages, InteriorNamesItsChildrenPages) {
  auto child = std::make_shared<BlockMap::Node>(0, &no_refs);
  child->page = At(5, 17, 0xabcd);
  child->mapped = 256;
  child->unique_counted = 17;
  BlockMap::Node parent(1, &no_refs);
  parent.children[42] = child;
  std::vector<uint8_t> page(kPageBytes);
  const uint32_t crc = EncodeNodePage(parent, kUuid, page.data());
  BlockMap::Node out(1, &no_refs);
  std::vector<ChildPointer> children;
  ASSERT_TRUE(DecodeNodePage(page.data(), At(1, 1, crc), kUuid, &out, &children).ok());
  ASSERT_EQ(children.size(), 1u);
  EXPECT_EQ(children[0].index, 42u);
  EXPECT_TRUE(children[0].page.SameBlock(child->page));
  EXPECT_EQ(children[0].page.crc, 0xabcdu);
  // A level-1 page carries its leaves' counts (an open reads no leaf).
  EXPECT_EQ(children[0].mapped, 256u);
  EXPECT_EQ(children[0].unique, 17u);

  // One level up, no counts.
  auto upper_child = std::make_shared<BlockMap::Node>(1, &no_refs);
  upper_child->page = At(6, 1, 0x1234);
  BlockMap::Node upper(2, &no_refs);
  upper.children[3] = upper_child;
  const uint32_t upper_crc = EncodeNodePage(upper, kUuid, page.data());
  BlockMap::Node upper_out(2, &no_refs);
  children.clear();
  ASSERT_TRUE(DecodeNodePage(page.data(), At(1, 2, upper_crc), kUuid, &upper_out, &children).ok());
  ASSERT_EQ(children.size(), 1u);
  EXPECT_EQ(children[0].index, 3u);
  EXPECT_EQ(children[0].mapped, 0u);
}

TEST(MetaPages, RejectsLeafCountsOutOfRange) {
  auto child = std::make_shared<BlockMap::Node>(0, &no_refs);
  child->page = At(5, 17, 0xabcd);
  child->mapped = 3;
  BlockMap::Node parent(1, &no_refs);
  parent.children[0] = child;
  std::vector<uint8_t> page(kPageBytes);
  EncodeNodePage(parent, kUuid, page.data());
  page[kLeafCountsOffset] = 0xff;  // mapped 4095 (then resealed: only the range check can see it)
  page[kLeafCountsOffset + 1] = 0x0f;
  const uint32_t crc = SealPage(page.data(), PageType::kMapInterior, 1, 1, kUuid);
  BlockMap::Node out(1, &no_refs);
  std::vector<ChildPointer> children;
  absl::Status st = DecodeNodePage(page.data(), At(1, 1, crc), kUuid, &out, &children);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_NE(st.message().find("counts"), std::string::npos) << st;
}

TEST(MetaPages, RejectsAFlippedByteAWrongPoolAndAWrongLevel) {
  BlockMap::Node leaf(0, &no_refs);
  (*leaf.entries)[1] = At(3, 4, 5);
  leaf.mapped = 1;
  std::vector<uint8_t> page(kPageBytes);
  const uint32_t crc = EncodeNodePage(leaf, kUuid, page.data());
  std::vector<ChildPointer> children;
  {
    std::vector<uint8_t> bad = page;
    bad[2000] ^= 1;
    BlockMap::Node out(0, &no_refs);
    absl::Status st = DecodeNodePage(bad.data(), At(1, 2, crc), kUuid, &out, &children);
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(st.message().find("chunk 1, block 2"), std::string::npos) << st;
  }
  {
    BlockMap::Node out(0, &no_refs);
    EXPECT_EQ(DecodeNodePage(page.data(), At(1, 2, crc), kUuid + 1, &out, &children).code(),
              absl::StatusCode::kDataLoss);
  }
  {
    BlockMap::Node out(1, &no_refs);  // a leaf where an interior node was expected
    EXPECT_EQ(DecodeNodePage(page.data(), At(1, 2, crc), kUuid, &out, &children).code(),
              absl::StatusCode::kDataLoss);
  }
}

TEST(MetaPages, ChunkGroupRoundTrips) {
  std::vector<ChunkRecord> records;
  for (uint64_t i = 0; i < kChunksPerGroup; ++i) {
    ChunkRecord c;
    c.id = 64 + i;
    c.replication = 3;
    for (uint64_t k = 0; k < 4; ++k) c.replicas.push_back(Replica{DiskId{k + 1}, i * 10 + k, k == 2});
    c.state = MapEntry{7, static_cast<uint32_t>(i), static_cast<uint32_t>(0xabc00000 + i)};
    c.used = static_cast<uint32_t>(i * 8);
    records.push_back(c);
  }
  std::vector<uint8_t> page(kPageBytes);
  absl::StatusOr<uint32_t> crc = EncodeChunkGroupPage(records, kUuid, page.data());
  ASSERT_TRUE(crc.ok()) << crc.status();
  auto out = DecodeChunkGroupPage(page.data(), At(2, 0, *crc), kUuid);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ((*out)[i].id, records[i].id);
    EXPECT_EQ((*out)[i].replication, 3);
    EXPECT_TRUE((*out)[i].state.SameBlock(records[i].state));
    EXPECT_EQ((*out)[i].state.crc, records[i].state.crc);
    EXPECT_EQ((*out)[i].used, records[i].used);
    ASSERT_EQ((*out)[i].replicas.size(), 4u);
    for (size_t k = 0; k < 4; ++k) {
      EXPECT_EQ((*out)[i].replicas[k].disk, records[i].replicas[k].disk);
      EXPECT_EQ((*out)[i].replicas[k].slot, records[i].replicas[k].slot);
      EXPECT_EQ((*out)[i].replicas[k].stale, records[i].replicas[k].stale);
    }
  }
  // A group that cannot fit is refused, not truncated.
  for (auto& r : records) r.replicas.resize(12, Replica{DiskId{1}, 1, false});
  EXPECT_FALSE(EncodeChunkGroupPage(records, kUuid, page.data()).ok());
}

TEST(MetaPages, ChunkStateRoundTripsAndIsRefusedForAnotherChunk) {
  ChunkBlocks blocks;
  for (uint32_t b = 0; b < kBlocksPerChunk; ++b) {
    blocks.refs[b] = b % 3 == 0 ? 0 : b * 1000;
    blocks.crc[b] = 0x9e3779b9u * (b + 1);
  }
  std::vector<uint8_t> page(kPageBytes);
  const uint32_t crc = EncodeChunkStatePage(42, blocks, kUuid, page.data());
  ChunkBlocks out;
  ASSERT_TRUE(DecodeChunkStatePage(page.data(), At(3, 5, crc), kUuid, 42, &out).ok());
  for (uint32_t b = 0; b < kBlocksPerChunk; ++b) {
    EXPECT_EQ(out.refs[b], blocks.refs[b]) << b;
    // A free block's checksum means nothing and is not kept.
    EXPECT_EQ(out.crc[b], blocks.refs[b] > 0 ? blocks.crc[b] : 0u) << b;
  }
  // The page of another chunk (a misdirected pointer with a matching checksum).
  absl::Status other = DecodeChunkStatePage(page.data(), At(3, 5, crc), kUuid, 43, &out);
  EXPECT_EQ(other.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(other.message().find("chunk 42"), std::string::npos) << other;
  // Any flipped byte fails the pointer's checksum.
  page[kPageHeaderBytes + 100] ^= 1;
  EXPECT_EQ(DecodeChunkStatePage(page.data(), At(3, 5, crc), kUuid, 42, &out).code(),
            absl::StatusCode::kDataLoss);
}

TEST(MetaPages, ChangeLogRoundTripsAndRefusesEmptyExtents) {
  std::vector<std::pair<uint64_t, uint64_t>> extents;
  for (uint64_t i = 0; i < kExtentsPerLogPage; ++i) extents.push_back({i * 10, i * 10 + 3});
  std::vector<uint8_t> page(kPageBytes);
  const uint32_t crc = EncodeChangeLogPage(extents, kUuid, page.data());
  auto out = DecodeChangeLogPage(page.data(), At(1, 1, crc), kUuid);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, extents);
  // A page of another type is refused even with the right checksum.
  EXPECT_FALSE(DecodeChunkGroupPage(page.data(), At(1, 1, crc), kUuid).ok());
}

}  // namespace
}  // namespace scribe
