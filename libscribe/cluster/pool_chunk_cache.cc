// Chunk states in pages: reading a data chunk's reference counts and checksums back,
// applying what changed while they were out of memory, evicting them.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

void PoolImpl::LoadChunks(std::vector<uint64_t> ids, StatusDone done) {
  if (!GroupsResident(ids)) {
    // Their records first.
    auto alive = alive_;
    auto ids_copy = std::make_shared<std::vector<uint64_t>>(ids);
    return LoadGroups(ids, [this, alive, ids_copy, done](absl::Status st) {
      if (!*alive) return;
      if (!st.ok()) return done(st);
      auto pin = PinGroups(*ids_copy);
      LoadChunks(std::move(*ids_copy), [pin, done](absl::Status st) { done(st); });
    });
  }
  std::vector<uint64_t> missing;
  for (uint64_t id : ids) {
    const ChunkState* c = FindChunk(id);
    if (c != nullptr && !c->blocks) missing.push_back(id);
  }
  if (missing.empty()) return done(absl::OkStatus());
  std::sort(missing.begin(), missing.end());
  missing.erase(std::unique(missing.begin(), missing.end()), missing.end());
  auto alive = alive_;
  auto g = MakeGather(static_cast<int>(missing.size()), [this, alive, done](absl::Status st) {
    if (!*alive) return;
    done(st);
    if (*alive) ScheduleTrim();  // done may have ended the pool (a failed open)
  });
  std::vector<uint64_t> to_read;
  for (uint64_t id : missing) {
    std::vector<StatusDone>& waiters = chunk_loads_[id];
    if (waiters.empty()) to_read.push_back(id);
    waiters.push_back([g](absl::Status st) { g->Finish(st); });
  }
  if (to_read.empty()) return;
  std::vector<MapEntry> pages;
  for (uint64_t id : to_read) pages.push_back(FindChunk(id)->page);
  auto ids_read = std::make_shared<std::vector<uint64_t>>(std::move(to_read));
  ReadPages(pages, [this, ids_read, pages](size_t i, const uint8_t* page) -> absl::Status {
    ChunkState* c = FindChunk((*ids_read)[i]);
    // Gone, or read back already by someone else, or rewritten meanwhile: nothing to do.
    if (c == nullptr || c->blocks || !c->page.SameBlock(pages[i])) return absl::OkStatus();
    auto blocks = std::make_unique<ChunkBlocks>();
    RETURN_IF_ERROR(DecodeChunkStatePage(page, pages[i], pool_uuid_, c->id, blocks.get()));
    ChunkLoaded(c, std::move(blocks));
    return absl::OkStatus();
  }, [this, alive, ids_read](absl::Status st) {
    if (!*alive) return;
    std::vector<std::pair<absl::Status, std::vector<StatusDone>>> results;
    for (uint64_t id : *ids_read) {
      auto it = chunk_loads_.find(id);
      const ChunkState* c = FindChunk(id);
      absl::Status result = st;
      if (c == nullptr || c->blocks) {
        result = absl::OkStatus();
      } else if (result.ok()) {
        result = absl::DataLossError(absl::StrFormat("the state of chunk %d (%s) was not read", id,
                                                     DescribePointer(c->page)));
      }
      results.push_back({result, std::move(it->second)});
      chunk_loads_.erase(it);
    }
    for (auto& [result, waiters] : results) {
      for (auto& w : waiters) w(result);
    }
  });
}

void PoolImpl::WithChunk(uint64_t id, std::function<void(absl::Status, ChunkState*)> fn) {
  ChunkState* c = FindChunk(id);
  if (c == nullptr && RecordResident(id)) {
    return fn(absl::NotFoundError(absl::StrFormat("chunk %d is gone", id)), nullptr);
  }
  if (c != nullptr && c->blocks) return fn(absl::OkStatus(), c);
  auto alive = alive_;
  LoadChunks({id}, [this, alive, id, fn](absl::Status st) {
    if (!*alive) return;
    ChunkState* c = FindChunk(id);
    if (st.ok() && (c == nullptr || !c->blocks)) {
      st = absl::NotFoundError(absl::StrFormat("chunk %d is gone", id));
    }
    fn(st, st.ok() ? c : nullptr);
  });
}

void PoolImpl::ChunkLoaded(ChunkState* c, std::unique_ptr<ChunkBlocks> blocks) {
  ++chunks_read_;
  c->blocks = std::move(blocks);
  c->lru = chunk_lru_.insert(chunk_lru_.end(), c->id);
  auto it = deltas_.find(c->id);
  if (it == deltas_.end()) return;
  std::unique_ptr<ChunkDelta> delta = std::move(it->second);
  deltas_.erase(it);
  ChunkBlocks& b = *c->blocks;
  for (uint32_t i = 0; i < kBlocksPerChunk; ++i) {
    if (delta->crc_set[i]) b.crc[i] = delta->crc[i];
    if (delta->refs[i] == 0) continue;
    const int64_t before = b.refs[i];
    const int64_t after = before + delta->refs[i];
    SCRIBE_CHECK(after >= 0);
    b.refs[i] = static_cast<uint32_t>(after);
    if (before == 0 && after > 0 && !c->busy[i]) ++c->used;  // a replayed write
    if (before > 0 && after == 0) {
      // Freed while out of memory: reusable once the metadata that dropped it is
      // durable (the next commit), as UnrefBlock does.
      c->busy[i] = true;
      pending_frees_.push_back({c->id, i});
    }
  }
  ChunkDirtied(c);
}

ChunkDelta* PoolImpl::DeltaOf(uint64_t id) {
  std::unique_ptr<ChunkDelta>& d = deltas_[id];
  if (!d) {
    d = std::make_unique<ChunkDelta>();
    NoteNodeDirtied();  // its state page is rewritten at the next checkpoint
  }
  return d.get();
}

void PoolImpl::ChunkDirtied(ChunkState* c) {
  if (c->meta || c->dirty) return;
  c->dirty = true;
  dirty_chunks_.insert(c->id);
  NoteNodeDirtied();  // one more page for the next checkpoint
}

void PoolImpl::TouchChunk(ChunkState* c) {
  if (c->blocks && !c->meta) chunk_lru_.splice(chunk_lru_.end(), chunk_lru_, c->lru);
}

void PoolImpl::SetBlockCrc(uint64_t id, uint32_t block, uint32_t crc) {
  ChunkState* c = FindChunk(id);
  if (c != nullptr && c->blocks) {
    c->blocks->crc[block] = crc;
  } else {
    ChunkDelta* d = DeltaOf(id);
    d->crc[block] = crc;
    d->crc_set[block] = true;
  }
  if (c != nullptr) ChunkDirtied(c);
}

bool PoolImpl::ChunkEvictable(const ChunkState& c) const {
  return !c.meta && c.blocks && !c.dirty && c.page.mapped() && !c.open && !c.rebuilding &&
         c.writes_in_flight == 0 && c.busy.none() && !chunk_loads_.contains(c.id);
}

size_t PoolImpl::ChunkCacheLimit() const {
  return std::max<size_t>(1, options_.metadata_cache_bytes / 4 / sizeof(ChunkBlocks));
}

void PoolImpl::TrimChunks() {
  // Not while a checkpoint's pages are in flight (a failed one marks its chunks dirty
  // again, and needs their blocks), nor while fsck compares them with the maps.
  if (checkpoint_pages_in_flight_ || fsck_running_ > 0) return;
  const size_t limit = ChunkCacheLimit();
  size_t budget = chunk_lru_.size();
  for (auto it = chunk_lru_.begin(); chunk_lru_.size() > limit && it != chunk_lru_.end() && budget-- > 0;) {
    ChunkState* c = FindChunk(*it);
    if (c == nullptr || !ChunkEvictable(*c)) {
      ++it;
      continue;
    }
    it = chunk_lru_.erase(it);
    c->blocks.reset();
    ++chunks_evicted_;
  }
}

void PoolImpl::LoadDeltaChunks() {
  if (loading_delta_chunks_ || deltas_.empty()) return;
  loading_delta_chunks_ = true;
  auto alive = alive_;
  std::vector<uint64_t> ids;
  for (const auto& [id, d] : deltas_) ids.push_back(id);
  LoadChunks(std::move(ids),
             [this, alive](absl::Status st) {
               if (!*alive) return;
               loading_delta_chunks_ = false;
               if (!st.ok()) {
                 // Commits that need a checkpoint fail until the pages can be read.
                 auto waiters = std::move(commit_waiters_);
                 commit_waiters_.clear();
                 for (auto& w : waiters) w(st);
                 return;
               }
               // The checkpoint that was due (for a waiting commit, or because enough
               // pages changed) can be written now.
               if (!committing_) Commit([](absl::Status) {});
             });
}

uint32_t PoolImpl::RefCount(const MapEntry& e) const {
  const ChunkState* c = FindChunk(e.chunk);
  if (c == nullptr) return 0;
  // Not in memory: counted as shared (usage figures are as of the states in memory).
  if (!c->blocks) return 2;
  return c->blocks->refs[e.block];
}

}  // namespace scribe
