#include "libscribe/volume/block_map.h"

#include <algorithm>
#include <array>
#include <utility>

#include "scribe/status.h"

namespace scribe {

namespace {
LeafCache* CacheOf(BlockRefs* refs) { return refs ? refs->leaf_cache() : nullptr; }
}  // namespace

BlockMap::Node::Node(int level, BlockRefs* refs) : level(level), refs(refs) {
  if (level != 0) {
    children.resize(kFanout);
  } else {
    entries = std::make_unique<Entries>();
    if (LeafCache* c = CacheOf(refs)) c->Add(this);
  }
  if (refs) {
    refs->NodeCreated();
    refs->NodeDirtied();
  }
}

BlockMap::Node::Node(const Node& other)
    : level(other.level), refs(other.refs), mapped(other.mapped), children(other.children) {
  SCRIBE_CHECK(other.resident());
  if (level == 0) {
    entries = std::make_unique<Entries>(*other.entries);
    for (const MapEntry& e : *entries) {
      if (e.mapped()) refs->Ref(e);
    }
    if (LeafCache* c = CacheOf(refs)) c->Add(this);
  }
  refs->NodeCreated();
  refs->NodeDirtied();
}

BlockMap::Node::~Node() {
  if (level == 0 && !entries) {
    // Evicted: the owner reads the page to drop the blocks' references, then the page.
    if (refs) refs->EvictedLeafDropped(page);
  } else {
    if (entries) {
      if (LeafCache* c = CacheOf(refs)) c->Remove(this);
      for (const MapEntry& e : *entries) {
        if (e.mapped()) refs->Unref(e);
      }
    }
    if (page.mapped() && refs) refs->PageDropped(page);
  }
  if (refs) refs->NodeDestroyed();  // last: it may end `refs`
}

void BlockMap::Node::Evict(uint32_t unique) {
  SCRIBE_CHECK(evictable());
  if (LeafCache* c = CacheOf(refs)) c->Remove(this);
  entries.reset();
  unique_when_evicted = unique;
}

void BlockMap::Node::Reload(std::unique_ptr<Entries> e) {
  SCRIBE_CHECK(level == 0 && !entries && e);
  entries = std::move(e);
  if (LeafCache* c = CacheOf(refs)) c->Add(this);
}

namespace {
// A leaf an operation reaches: it must be in memory (the owner reads evicted leaves
// back before it maps, reads or diffs their blocks).
const BlockMap::Entries& EntriesOf(const BlockMap::Node* n) {
  SCRIBE_CHECK(n->entries != nullptr);
  if (LeafCache* c = CacheOf(n->refs)) c->Touch(n);
  return *n->entries;
}
}  // namespace

int BlockMap::LevelsFor(uint64_t capacity_blocks) {
  int levels = 1;
  uint64_t span = kFanout;
  while (span < capacity_blocks) {
    span <<= kFanoutBits;
    ++levels;
  }
  return levels;
}

BlockMap::BlockMap(BlockRefs* refs, uint64_t capacity_blocks)
    : refs_(refs), capacity_blocks_(capacity_blocks), levels_(LevelsFor(capacity_blocks)) {}

BlockMap BlockMap::FromRoot(BlockRefs* refs, uint64_t capacity_blocks, int levels,
                            std::shared_ptr<Node> root) {
  BlockMap m(refs, capacity_blocks);
  SCRIBE_CHECK(levels >= m.levels_);
  m.levels_ = levels;
  m.root_ = std::move(root);
  SCRIBE_CHECK(!m.root_ || m.root_->level == levels - 1);
  return m;
}

MapEntry BlockMap::Get(uint64_t lba) const {
  SCRIBE_CHECK(lba < capacity_blocks_);
  const Node* n = root_.get();
  while (n != nullptr) {
    const uint64_t idx = (lba >> (n->level * kFanoutBits)) & (kFanout - 1);
    if (n->level == 0) return EntriesOf(n)[idx];
    n = n->children[idx].get();
  }
  return MapEntry{};
}

void BlockMap::Set(uint64_t lba, const MapEntry& entry) {
  SCRIBE_CHECK(lba < capacity_blocks_);
  // Clearing an unmapped block changes nothing (and must not dirty the path).
  if (!entry.mapped() && !Get(lba).mapped()) return;
  std::shared_ptr<Node>* slot = &root_;
  for (int level = levels_ - 1;; --level) {
    if (!*slot) {
      *slot = std::make_shared<Node>(level, refs_);
    } else if (slot->use_count() > 1) {
      *slot = std::make_shared<Node>(**slot);  // shadow a shared node
    }
    Node* n = slot->get();
    if (n->page.mapped()) {  // changed in place: its page no longer describes it
      refs_->PageDropped(n->page);
      n->page = MapEntry{};
      refs_->NodeDirtied();
    }
    const uint64_t idx = (lba >> (level * kFanoutBits)) & (kFanout - 1);
    if (level == 0) {
      MapEntry& e = const_cast<BlockMap::Entries&>(EntriesOf(n))[idx];
      if (entry.mapped()) refs_->Ref(entry);
      if (e.mapped()) {
        refs_->Unref(e);
        --n->mapped;
      }
      e = entry;
      if (e.mapped()) ++n->mapped;
      return;
    }
    slot = &n->children[idx];
  }
}

void BlockMap::Grow(uint64_t capacity_blocks) {
  SCRIBE_CHECK(capacity_blocks >= capacity_blocks_);
  capacity_blocks_ = capacity_blocks;
  const int want = LevelsFor(capacity_blocks);
  while (levels_ < want) {
    if (root_) {
      auto parent = std::make_shared<Node>(levels_, refs_);
      parent->children[0] = std::move(root_);
      root_ = std::move(parent);
    }
    ++levels_;
  }
}

namespace {

void Walk(const BlockMap::Node* n, uint64_t base,
          const std::function<void(uint64_t, const MapEntry&)>& fn) {
  if (n == nullptr) return;
  if (n->level == 0) {
    const BlockMap::Entries& entries = EntriesOf(n);
    for (uint64_t i = 0; i < BlockMap::kFanout; ++i) {
      if (entries[i].mapped()) fn(base + i, entries[i]);
    }
    return;
  }
  const int shift = n->level * BlockMap::kFanoutBits;
  for (uint64_t i = 0; i < BlockMap::kFanout; ++i) {
    Walk(n->children[i].get(), base + (i << shift), fn);
  }
}

void DiffNodes(const BlockMap::Node* a, const BlockMap::Node* b, int level, uint64_t base,
               const std::function<void(uint64_t)>& fn) {
  if (a == b) return;  // the same subtree: nothing changed below
  if (a == nullptr || b == nullptr) {
    Walk(a ? a : b, base, [&](uint64_t lba, const MapEntry&) { fn(lba); });
    return;
  }
  if (level == 0) {
    const BlockMap::Entries& ea = EntriesOf(a);
    const BlockMap::Entries& eb = EntriesOf(b);
    for (uint64_t i = 0; i < BlockMap::kFanout; ++i) {
      const MapEntry& x = ea[i];
      const MapEntry& y = eb[i];
      if (x.mapped() != y.mapped() || (x.mapped() && !x.SameBlock(y))) fn(base + i);
    }
    return;
  }
  const int shift = level * BlockMap::kFanoutBits;
  for (uint64_t i = 0; i < BlockMap::kFanout; ++i) {
    DiffNodes(a->children[i].get(), b->children[i].get(), level - 1, base + (i << shift), fn);
  }
}

// Maps of different depths: the deeper one's extra levels hold the shallower root at
// child 0 (Grow), so descend it along child 0 and compare the rest against nothing.
const BlockMap::Node* Descend(const BlockMap::Node* n, int from_level, int to_level,
                              const std::function<void(uint64_t)>& fn) {
  for (int level = from_level; level > to_level && n != nullptr; --level) {
    const int shift = level * BlockMap::kFanoutBits;
    for (uint64_t i = 1; i < BlockMap::kFanout; ++i) {
      Walk(n->children[i].get(), i << shift, [&](uint64_t lba, const MapEntry&) { fn(lba); });
    }
    n = n->children[0].get();
  }
  return n;
}

// The child `i` of `n` seen as a node at `level`. A map shallower than the other is
// compared as if Grow had deepened it: above its root's own level, its root is child 0.
const BlockMap::Node* ChildAt(const BlockMap::Node* n, int level, uint64_t i) {
  if (n == nullptr) return nullptr;
  if (n->level < level) return i == 0 ? n : nullptr;
  return n->children[i].get();
}

void DiffNodesIn(const BlockMap::Node* a, const BlockMap::Node* b, int level, uint64_t base,
                 const BlockMap::Range* r, const BlockMap::Range* r_end,
                 const std::function<void(uint64_t)>& fn);

// Compares the leaves under `a` and `b` (nodes at level 1 covering [base, base +
// kFanout^2)) over the ranges [r, r_end). Ranges are often single scattered blocks, one
// per leaf, so the cost is memory latency: first every leaf entry the ranges start at
// is prefetched (its address needs one load), then the leaves are
// compared, so the loads of different leaves overlap instead of following one another.
void DiffLeavesIn(const BlockMap::Node* a, const BlockMap::Node* b, uint64_t base,
                  const BlockMap::Range* r, const BlockMap::Range* r_end,
                  const std::function<void(uint64_t)>& fn) {
  constexpr int kLevel = 1;
  constexpr int kShift = BlockMap::kFanoutBits;
  struct Leaf {
    const BlockMap::Node* a;
    const BlockMap::Node* b;
    uint64_t base;
    const BlockMap::Range* r;
    const BlockMap::Range* r_end;
  };
  std::array<Leaf, BlockMap::kFanout> leaves;
  size_t n = 0;
  uint64_t child = 0;
  while (r != r_end) {
    child = std::max(child, (std::max(r->first, base) - base) >> kShift);
    if (child >= BlockMap::kFanout) break;
    const uint64_t child_base = base + (child << kShift);
    const uint64_t child_end = child_base + BlockMap::kFanout;
    const BlockMap::Range* q = r;
    while (q != r_end && q->first < child_end) ++q;
    const BlockMap::Node* la = ChildAt(a, kLevel, child);
    const BlockMap::Node* lb = ChildAt(b, kLevel, child);
    if (la != lb) {
      leaves[n++] = Leaf{la, lb, child_base, r, q};
      const uint64_t first = std::max(r->first, child_base) - child_base;
      if (la) __builtin_prefetch(&EntriesOf(la)[first]);
      if (lb) __builtin_prefetch(&EntriesOf(lb)[first]);
    }
    r = (q - 1)->second > child_end ? q - 1 : q;
    ++child;
  }
  for (size_t i = 0; i < n; ++i) {
    DiffNodesIn(leaves[i].a, leaves[i].b, 0, leaves[i].base, leaves[i].r, leaves[i].r_end, fn);
  }
}

// Compares `a` and `b` (nodes at `level` covering [base, base + kFanout^(level+1)))
// over the ranges [r, r_end), each of which intersects that span.
void DiffNodesIn(const BlockMap::Node* a, const BlockMap::Node* b, int level, uint64_t base,
                 const BlockMap::Range* r, const BlockMap::Range* r_end,
                 const std::function<void(uint64_t)>& fn) {
  if (a == b) return;  // the same subtree (or both empty)
  if (level == 0) {
    static const BlockMap::Entries kUnmapped{};
    const BlockMap::Entries& ea = a ? EntriesOf(a) : kUnmapped;
    const BlockMap::Entries& eb = b ? EntriesOf(b) : kUnmapped;
    for (; r != r_end; ++r) {
      const uint64_t lo = std::max(r->first, base);
      const uint64_t hi = std::min(r->second, base + BlockMap::kFanout);
      for (uint64_t lba = lo; lba < hi; ++lba) {
        const MapEntry& x = ea[lba - base];
        const MapEntry& y = eb[lba - base];
        if (x.mapped() != y.mapped() || (x.mapped() && !x.SameBlock(y))) fn(lba);
      }
    }
    return;
  }
  if (level == 1) return DiffLeavesIn(a, b, base, r, r_end, fn);
  const int shift = level * BlockMap::kFanoutBits;
  uint64_t child = 0;
  while (r != r_end) {
    child = std::max(child, (std::max(r->first, base) - base) >> shift);
    if (child >= BlockMap::kFanout) return;
    const uint64_t child_base = base + (child << shift);
    const uint64_t child_end = child_base + (1ull << shift);
    const BlockMap::Range* q = r;
    while (q != r_end && q->first < child_end) ++q;
    DiffNodesIn(ChildAt(a, level, child), ChildAt(b, level, child), level - 1, child_base, r, q,
                fn);
    // Ranges that end in this child are done; the last one may go on into the next.
    r = (q - 1)->second > child_end ? q - 1 : q;
    ++child;
  }
}

}  // namespace

void BlockMap::DiffRanges(const BlockMap& a, const BlockMap& b, const std::vector<Range>& ranges,
                          const std::function<void(uint64_t)>& fn) {
  const int levels = std::max(a.levels_, b.levels_);
  const uint64_t span = 1ull << (levels * kFanoutBits);
  // Only the part of the ranges either tree can address.
  auto end = std::lower_bound(ranges.begin(), ranges.end(), span,
                              [](const Range& r, uint64_t v) { return r.first < v; });
  if (end == ranges.begin()) return;
  std::vector<Range> clipped;
  const Range* first = ranges.data();
  const Range* last = ranges.data() + (end - ranges.begin());
  if ((last - 1)->second > span) {
    clipped.assign(ranges.begin(), end);
    clipped.back().second = span;
    first = clipped.data();
    last = clipped.data() + clipped.size();
  }
  DiffNodesIn(a.root_.get(), b.root_.get(), levels - 1, 0, first, last, fn);
}

void BlockMap::ForEachMapped(const std::function<void(uint64_t, const MapEntry&)>& fn) const {
  Walk(root_.get(), 0, fn);
}

void BlockMap::Diff(const BlockMap& a, const BlockMap& b, const std::function<void(uint64_t)>& fn) {
  const int level = std::min(a.levels_, b.levels_) - 1;
  // Extents only the deeper map can address are reported by Descend, in order after
  // the common part would be; collect them to keep the output ascending.
  std::vector<uint64_t> beyond;
  auto collect = [&](uint64_t lba) { beyond.push_back(lba); };
  const Node* ra = Descend(a.root_.get(), a.levels_ - 1, level, collect);
  const Node* rb = Descend(b.root_.get(), b.levels_ - 1, level, collect);
  DiffNodes(ra, rb, level, 0, fn);
  std::sort(beyond.begin(), beyond.end());
  for (uint64_t lba : beyond) fn(lba);
}

BlockMap::Usage BlockMap::ComputeUsage(
    const std::function<uint32_t(const MapEntry&)>& refcount) const {
  Usage usage;
  std::function<void(const std::shared_ptr<Node>&, bool)> visit =
      [&](const std::shared_ptr<Node>& n, bool shared) {
        if (!n) return;
        shared = shared || n.use_count() > 1;
        if (n->level == 0 && !n->entries) {  // evicted: as of its eviction
          usage.mapped += n->mapped;
          if (!shared) usage.unique += n->unique_when_evicted;
          return;
        }
        if (n->level == 0) {
          for (const MapEntry& e : *n->entries) {
            if (!e.mapped()) continue;
            ++usage.mapped;
            if (!shared && refcount(e) == 1) ++usage.unique;
          }
          return;
        }
        for (const auto& c : n->children) visit(c, shared);
      };
  visit(root_, false);
  return usage;
}

void BlockMap::CollectLeaves(const std::vector<Range>* ranges,
                             std::vector<std::shared_ptr<Node>>* out) const {
  // Descends only into children that some range reaches.
  std::function<void(const std::shared_ptr<Node>&, uint64_t, size_t)> visit =
      [&](const std::shared_ptr<Node>& n, uint64_t base, size_t r) {
        if (!n) return;
        if (n->level == 0) {
          out->push_back(n);
          return;
        }
        const int shift = n->level * kFanoutBits;
        for (uint64_t i = 0; i < kFanout; ++i) {
          if (!n->children[i]) continue;
          const uint64_t lo = base + (i << shift);
          const uint64_t hi = lo + (1ull << shift);
          if (ranges != nullptr) {
            while (r < ranges->size() && (*ranges)[r].second <= lo) ++r;
            if (r == ranges->size()) return;
            if ((*ranges)[r].first >= hi) continue;
          }
          visit(n->children[i], lo, r);
        }
      };
  visit(root_, 0, 0);
}

void BlockMap::CollectLeavesUnder(const std::shared_ptr<Node>& n,
                                  std::vector<std::shared_ptr<Node>>* out) {
  if (!n) return;
  if (n->level == 0) {
    out->push_back(n);
    return;
  }
  for (const auto& c : n->children) CollectLeavesUnder(c, out);
}

void LeafCache::Add(const Node* n) {
  n->lru_prev = tail_;
  n->lru_next = nullptr;
  if (tail_) {
    tail_->lru_next = n;
  } else {
    head_ = n;
  }
  tail_ = n;
  ++size_;
}

void LeafCache::Remove(const Node* n) {
  if (n->lru_prev) {
    n->lru_prev->lru_next = n->lru_next;
  } else {
    head_ = n->lru_next;
  }
  if (n->lru_next) {
    n->lru_next->lru_prev = n->lru_prev;
  } else {
    tail_ = n->lru_prev;
  }
  n->lru_prev = n->lru_next = nullptr;
  --size_;
}

void LeafCache::Touch(const Node* n) {
  if (tail_ == n) return;
  Remove(n);
  Add(n);
}

}  // namespace scribe
