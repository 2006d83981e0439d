// The block-map leaf cache: eviction beyond PoolOptions::metadata_cache_bytes and
// reading evicted leaves back.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

void PoolImpl::WithLeaves(MapRef ref, uint64_t b0, uint64_t b1,
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

void PoolImpl::LoadLeaves(std::vector<std::shared_ptr<BlockMap::Node>> leaves, StatusDone done) {
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
    if (*alive) ScheduleTrim();  // done may have ended the pool (a failed open)
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

void PoolImpl::ReadLeaves(std::vector<std::shared_ptr<BlockMap::Node>> leaves) {
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

void PoolImpl::ScheduleTrim() {
  if (trim_scheduled_ || (leaf_cache_.size() <= LeafCacheLimit() && chunk_lru_.size() <= ChunkCacheLimit() &&
                          group_lru_.size() <= GroupCacheLimit())) {
    return;
  }
  trim_scheduled_ = true;
  auto alive = alive_;
  loop_->Post([this, alive] {
    if (!*alive) return;
    trim_scheduled_ = false;
    TrimLeaves();
    TrimChunks();
    TrimGroups();
  });
}

size_t PoolImpl::LeafCacheLimit() const { return options_.metadata_cache_bytes / kPageBytes; }

void PoolImpl::TrimLeaves() {
  if (checkpoint_pages_in_flight_) return;
  const size_t limit = LeafCacheLimit();
  size_t budget = leaf_cache_.size();  // each leaf is looked at once
  const BlockMap::Node* n = leaf_cache_.oldest();
  while (leaf_cache_.size() > limit && n != nullptr && budget-- > 0) {
    const BlockMap::Node* next = LeafCache::newer(n);
    if (n->evictable()) {
      const_cast<BlockMap::Node*>(n)->Evict(UniqueBlocks(*n->entries));
      ++leaves_evicted_;
    }
    n = next;
  }
}

uint32_t PoolImpl::UniqueBlocks(const BlockMap::Entries& entries) const {
  uint32_t unique = 0;
  for (const MapEntry& e : entries) unique += e.mapped() && RefCount(e) == 1;
  return unique;
}

void PoolImpl::EvictedLeafDropped(const MapEntry& page) {
  if (!*alive_) return;  // the pool is closing
  dropped_leaves_.push_back(page);
  DropEvictedLeaves();
}

void PoolImpl::DropEvictedLeaves() {
  if (dropping_leaves_ || dropped_leaves_.empty()) return;
  dropping_leaves_ = true;
  const size_t n = std::min(dropped_leaves_.size(), kDroppedLeavesPerTurn);
  auto pages = std::make_shared<std::vector<MapEntry>>(dropped_leaves_.begin(), dropped_leaves_.begin() + n);
  dropped_leaves_.erase(dropped_leaves_.begin(), dropped_leaves_.begin() + n);
  // Until its blocks are unreferenced, a checkpoint still names it (see EncodeRoot).
  dropping_leaves_now_.insert(dropping_leaves_now_.end(), pages->begin(), pages->end());
  auto alive = alive_;
  auto g = MakeGather(static_cast<int>(n), [this, alive](absl::Status) {
    if (!*alive) return;
    dropping_leaves_ = false;
    DropEvictedLeaves();
  });
  for (const MapEntry& p : *pages) {
    ReadPage(p, [this, alive, p, g](absl::StatusOr<std::shared_ptr<AlignedBuffer>> r) {
      if (!*alive) return;
      absl::Status st = r.status();
      if (st.ok()) st = UnrefLeafPage((*r)->data(), p);
      // Unread, its blocks stay referenced (space lost until fsck finds them, never data).
      if (!st.ok()) ++dropped_leaves_unread_;
      auto it = std::find_if(dropping_leaves_now_.begin(), dropping_leaves_now_.end(),
                             [&](const MapEntry& q) { return q.SameBlock(p); });
      if (it != dropping_leaves_now_.end()) dropping_leaves_now_.erase(it);
      DropPage(p);
      g->Finish(absl::OkStatus());
    });
  }
}

absl::Status PoolImpl::UnrefLeafPage(const uint8_t* page, const MapEntry& p) {
  BlockMap::Entries entries{};
  uint32_t mapped = 0;
  RETURN_IF_ERROR(DecodeLeafPage(page, p, pool_uuid_, &entries, &mapped));
  const bool was_reaping = reaping_;
  reaping_ = true;  // it left every tree: it may name chunks already freed (UnrefBlock)
  for (const MapEntry& e : entries) {
    if (e.mapped()) UnrefBlock(e);
  }
  reaping_ = was_reaping;
  return absl::OkStatus();
}

std::vector<std::shared_ptr<BlockMap::Node>> PoolImpl::AllLeaves() const {
  std::vector<std::shared_ptr<BlockMap::Node>> out;
  for (const auto& [id, v] : vsds_) v->map.CollectLeaves(nullptr, &out);
  for (const auto& [id, s] : snapshots_) s->map.CollectLeaves(nullptr, &out);
  for (const auto& n : doomed_) BlockMap::CollectLeavesUnder(n, &out);
  return out;
}

}  // namespace scribe
