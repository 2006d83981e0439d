// A VSD's block map: 4 KiB logical block -> (chunk, block, crc32c), as a copy-on-write
// radix tree whose nodes are shared between a VSD, its snapshots and its clones.
//
// Sharing is by reference count (std::shared_ptr): a node referenced from one place
// only is changed in place; a shared node is copied first ("shadowing"), so copying a
// BlockMap (a snapshot or a clone) is O(1) and later writes copy only the path they
// touch. Each data block's reference count is the number of leaves naming it: copying a
// leaf adds a reference to each of its blocks, and destroying one drops them, through
// the BlockRefs the map was made with. Diff compares two maps subtree by subtree and
// skips subtrees that are the same node, so it costs what changed, not the map's size;
// DiffRanges does the same for given block ranges only (the pool's change logs say
// which).
//
// Leaves can be evicted (their entries dropped, kept on their page) and read back by the
// owner: Get, Set and the diffs need the leaves they reach in memory (the owner reads
// them first; see CollectLeaves), ComputeUsage does not.
//
// Not thread-safe; the owner (the pool) serialises all access.
#ifndef SCRIBE_VOLUME_BLOCK_MAP_H_
#define SCRIBE_VOLUME_BLOCK_MAP_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

namespace scribe {

struct MapEntry {
  uint64_t chunk = 0;  // 0: unmapped (reads as zeros)
  uint32_t block = 0;  // index within the chunk
  uint32_t crc = 0;    // crc32c of the block's 4 KiB
  bool mapped() const { return chunk != 0; }
  bool SameBlock(const MapEntry& o) const { return chunk == o.chunk && block == o.block; }
};

class LeafCache;

// Reference counting of data blocks, implemented by the pool. It also hears of nodes
// whose on-disk page (see Node::page) stops describing them, and of new nodes: the
// pool writes changed nodes to new pages at its next checkpoint.
class BlockRefs {
 public:
  virtual ~BlockRefs() = default;
  virtual void Ref(const MapEntry& e) = 0;
  virtual void Unref(const MapEntry& e) = 0;
  // A node written to `page` was changed or destroyed: the page is garbage once no
  // durable checkpoint names it.
  virtual void PageDropped(const MapEntry& page) { (void)page; }
  // A node was created or changed since it was last written (it needs a page).
  virtual void NodeDirtied() {}
  // An evicted leaf (see Node::entries) was destroyed: the blocks named on `page` lose
  // a reference each, and then the page is dropped, once the owner has read it.
  virtual void EvictedLeafDropped(const MapEntry& page) { (void)page; }
  // The list of leaves in memory, if the owner evicts leaves.
  virtual LeafCache* leaf_cache() { return nullptr; }
  // Every node made with these refs, and its end (the last call a node makes: the
  // owner may count nodes to outlive the last one).
  virtual void NodeCreated() {}
  virtual void NodeDestroyed() {}
};

class BlockMap {
 public:
  static constexpr int kFanoutBits = 8;
  static constexpr uint64_t kFanout = 1ull << kFanoutBits;
  using Entries = std::array<MapEntry, kFanout>;

  struct Node {
    explicit Node(int level, BlockRefs* refs);
    Node(const Node& other);  // a shadow copy: leaves add references to their blocks
    ~Node();
    int level;  // 0: leaf
    BlockRefs* refs;
    // Where this node's current contents are on disk (a metadata page), or unmapped
    // while it changed since it was last written. A copy starts unwritten; changing a
    // node through Set() unsets the page of every node on the path (each parent's page
    // names its children's pages).
    MapEntry page;
    uint32_t mapped = 0;  // leaf: entries mapped (kept while evicted)
    // An evicted leaf: how many of its blocks had a single reference when it was
    // evicted (ComputeUsage reports evicted leaves as of then).
    uint32_t unique_when_evicted = 0;
    // Operations in flight that need the entries: the leaf is not evicted meanwhile.
    uint32_t pins = 0;
    // A leaf's entries, one allocation (unused in interior nodes, which are 1/256 of
    // all nodes). Null while the leaf is evicted: its page (always set then) holds them,
    // and Get/Set/Diff must not reach it until the owner reads them back (Reload).
    std::unique_ptr<Entries> entries;
    std::vector<std::shared_ptr<Node>> children;  // interior
    // The LeafCache's list, while the leaf's entries are in memory.
    mutable const Node* lru_prev = nullptr;
    mutable const Node* lru_next = nullptr;

    bool resident() const { return level != 0 || entries != nullptr; }
    bool evictable() const { return level == 0 && entries && pins == 0 && page.mapped(); }
    // Drops a clean, unpinned leaf's entries (the page keeps them).
    void Evict(uint32_t unique);
    // Gives an evicted leaf its entries back, as read from its page.
    void Reload(std::unique_ptr<Entries> e);
  };

  BlockMap() = default;
  BlockMap(BlockRefs* refs, uint64_t capacity_blocks);

  uint64_t capacity_blocks() const { return capacity_blocks_; }
  int levels() const { return levels_; }

  MapEntry Get(uint64_t lba) const;
  // Maps `lba` (copying shared nodes on its path); the old block loses a reference.
  void Set(uint64_t lba, const MapEntry& entry);
  void Clear(uint64_t lba) { Set(lba, MapEntry{}); }
  // Grows the addressable range (never shrinks).
  void Grow(uint64_t capacity_blocks);

  // Calls fn(lba, entry) for each mapped block in ascending order.
  void ForEachMapped(const std::function<void(uint64_t, const MapEntry&)>& fn) const;
  // Calls fn(lba) for each block mapped differently in `a` and `b`, ascending.
  static void Diff(const BlockMap& a, const BlockMap& b, const std::function<void(uint64_t)>& fn);
  // The same, restricted to the blocks of `ranges` ([begin, end) pairs, ascending and
  // disjoint): costs the trees' depth per range plus the blocks in the ranges (less
  // where a subtree is shared), not the maps' size. Blocks beyond a map read as unmapped.
  using Range = std::pair<uint64_t, uint64_t>;
  static void DiffRanges(const BlockMap& a, const BlockMap& b, const std::vector<Range>& ranges,
                         const std::function<void(uint64_t)>& fn);

  // Counts mapped blocks; `unique` counts those referenced from this map alone (no other
  // map shares their leaf and the block has a single reference).
  struct Usage {
    uint64_t mapped = 0;
    uint64_t unique = 0;
  };
  Usage ComputeUsage(const std::function<uint32_t(const MapEntry&)>& refcount) const;

  // Appends the leaves (in memory or evicted) that hold blocks of `ranges` ([begin, end)
  // pairs, ascending), or of the whole map when `ranges` is null.
  void CollectLeaves(const std::vector<Range>* ranges, std::vector<std::shared_ptr<Node>>* out) const;
  // Appends every leaf of the subtree under `n`.
  static void CollectLeavesUnder(const std::shared_ptr<Node>& n, std::vector<std::shared_ptr<Node>>* out);

  const std::shared_ptr<Node>& root() const { return root_; }
  // Hands the tree to the caller (to destroy it a little at a time); the map is empty.
  std::shared_ptr<Node> ReleaseRoot() { return std::move(root_); }
  // Rebuilds a map around an existing root (metadata recovery).
  static BlockMap FromRoot(BlockRefs* refs, uint64_t capacity_blocks, int levels,
                           std::shared_ptr<Node> root);

 private:
  static int LevelsFor(uint64_t capacity_blocks);
  BlockRefs* refs_ = nullptr;
  uint64_t capacity_blocks_ = 0;
  int levels_ = 1;  // a tree of `levels_` levels addresses kFanout^levels_ blocks
  std::shared_ptr<Node> root_;
};

// The leaves whose entries are in memory, least recently used first (an intrusive
// list: nodes link themselves in and out).
class LeafCache {
 public:
  using Node = BlockMap::Node;
  size_t size() const { return size_; }
  void Add(const Node* n);
  void Remove(const Node* n);
  void Touch(const Node* n);  // now the most recently used
  const Node* oldest() const { return head_; }
  static const Node* newer(const Node* n) { return n->lru_next; }

 private:
  const Node* head_ = nullptr;
  const Node* tail_ = nullptr;
  size_t size_ = 0;
};

}  // namespace scribe

#endif  // SCRIBE_VOLUME_BLOCK_MAP_H_
