// Chunk records in pages: reading a group of data chunk records back when something
// needs one of them, evicting idle groups beyond the cache.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

bool PoolImpl::RecordResident(uint64_t id) const {
  auto it = groups_.find(id / kChunksPerGroup);
  return it == groups_.end() || it->second.resident;
}

bool PoolImpl::GroupsResident(const std::vector<uint64_t>& ids) {
  bool all = true;
  for (uint64_t id : ids) {
    auto it = groups_.find(id / kChunksPerGroup);
    if (it == groups_.end()) continue;
    if (!it->second.resident) {
      all = false;
    } else if (it->second.page.mapped()) {
      group_lru_.splice(group_lru_.end(), group_lru_, it->second.lru);
    }
  }
  return all;
}

std::shared_ptr<void> PoolImpl::PinGroups(const std::vector<uint64_t>& ids) {
  auto groups = std::make_shared<std::vector<uint64_t>>();
  for (uint64_t id : ids) groups->push_back(id / kChunksPerGroup);
  std::sort(groups->begin(), groups->end());
  groups->erase(std::unique(groups->begin(), groups->end()), groups->end());
  for (uint64_t g : *groups) ++group_pins_[g];
  auto alive = alive_;
  return std::shared_ptr<void>(nullptr, [this, alive, groups](void*) {
    if (!*alive) return;
    for (uint64_t g : *groups) {
      auto it = group_pins_.find(g);
      if (--it->second == 0) group_pins_.erase(it);
    }
    ScheduleTrim();
  });
}

absl::Status PoolImpl::DecodeGroup(uint64_t g, const uint8_t* page, const MapEntry& p, bool claim,
                                   bool insert, uint32_t* room, bool* needed, uint32_t* count) {
  absl::StatusOr<std::vector<ChunkRecord>> records = DecodeChunkGroupPage(page, p, pool_uuid_);
  if (!records.ok()) return records.status();
  if (claim) RETURN_IF_ERROR(ClaimPage(p));
  *room = 0;
  *needed = false;
  *count = static_cast<uint32_t>(records->size());
  for (const ChunkRecord& r : *records) {
    if (r.id / kChunksPerGroup != g || FindChunk(r.id) != nullptr) {
      return absl::DataLossError(
          absl::StrFormat("%s: chunk %d does not belong there", DescribePointer(p), r.id));
    }
    if (!r.state.mapped() || r.used > kBlocksPerChunk) {
      return absl::DataLossError(
          absl::StrFormat("%s: chunk %d has no state page or a bad count", DescribePointer(p), r.id));
    }
    if (claim) {
      RETURN_IF_ERROR(ClaimPage(r.state));
      for (const Replica& c : r.replicas) ClaimSlot(c.disk, c.slot, r.id);
    }
    *room = std::max(*room, kBlocksPerChunk - r.used);
    // An empty chunk is freed by the open; a degraded one is healed: both need records.
    bool degraded = static_cast<int>(r.replicas.size()) < r.replication;
    for (const Replica& c : r.replicas) degraded = degraded || c.stale;
    *needed = *needed || r.used == 0 || degraded;
  }
  if (!insert) return absl::OkStatus();
  for (ChunkRecord& r : *records) {
    ChunkState c;
    c.id = r.id;
    c.replication = r.replication;
    c.replicas = std::move(r.replicas);
    c.page = r.state;  // its blocks are read when needed
    c.used = r.used;
    InsertChunk(std::move(c), /*changed=*/false);
    NoteMaybeReusable(FindChunk(r.id));
  }
  // Deltas of chunks the group no longer holds: a tree deleted before a crash named
  // chunks the replayed journal freed (see UnrefBlock). Nothing to drop.
  for (auto it = deltas_.lower_bound(g * kChunksPerGroup);
       it != deltas_.end() && it->first < (g + 1) * kChunksPerGroup;) {
    if (FindChunk(it->first) != nullptr) {
      ++it;
      continue;
    }
    for (int32_t d : it->second->refs) SCRIBE_CHECK(d <= 0);
    ++unrefs_of_freed_chunks_;
    it = deltas_.erase(it);
  }
  return absl::OkStatus();
}

void PoolImpl::LoadGroups(const std::vector<uint64_t>& ids, StatusDone done) {
  std::vector<uint64_t> missing;
  for (uint64_t id : ids) {
    auto it = groups_.find(id / kChunksPerGroup);
    if (it != groups_.end() && !it->second.resident) missing.push_back(it->first);
  }
  if (missing.empty()) return done(absl::OkStatus());
  std::sort(missing.begin(), missing.end());
  missing.erase(std::unique(missing.begin(), missing.end()), missing.end());
  auto alive = alive_;
  auto g = MakeGather(static_cast<int>(missing.size()), [this, alive, done](absl::Status st) {
    if (!*alive) return;
    done(st);
    if (*alive) ScheduleTrim();
  });
  std::vector<uint64_t> to_read;
  for (uint64_t group : missing) {
    std::vector<StatusDone>& waiters = group_loads_[group];
    if (waiters.empty()) to_read.push_back(group);
    waiters.push_back([g](absl::Status st) { g->Finish(st); });
  }
  if (to_read.empty()) return;
  std::vector<MapEntry> pages;
  for (uint64_t group : to_read) pages.push_back(groups_.at(group).page);
  auto read = std::make_shared<std::vector<uint64_t>>(std::move(to_read));
  ReadPages(pages, [this, read, pages](size_t i, const uint8_t* page) -> absl::Status {
    const uint64_t group = (*read)[i];
    auto it = groups_.find(group);
    // A group not in memory does not change, so its page is still the one read.
    if (it == groups_.end() || it->second.resident || !it->second.page.SameBlock(pages[i])) {
      return absl::OkStatus();
    }
    uint32_t room = 0, count = 0;
    bool needed = false;
    RETURN_IF_ERROR(DecodeGroup(group, page, pages[i], /*claim=*/false, /*insert=*/true, &room, &needed, &count));
    it->second.resident = true;
    it->second.lru = group_lru_.insert(group_lru_.end(), group);
    reuse_groups_.erase(group);
    ++groups_read_;
    return absl::OkStatus();
  }, [this, alive, read](absl::Status st) {
    if (!*alive) return;
    std::vector<std::pair<absl::Status, std::vector<StatusDone>>> results;
    for (uint64_t group : *read) {
      auto it = group_loads_.find(group);
      auto git = groups_.find(group);
      absl::Status result = st;
      if (git == groups_.end() || git->second.resident) {
        result = absl::OkStatus();
      } else if (result.ok()) {
        result = absl::DataLossError(absl::StrFormat("chunk group %d (%s) was not read", group,
                                                     DescribePointer(git->second.page)));
      }
      results.push_back({result, std::move(it->second)});
      group_loads_.erase(it);
    }
    for (auto& [result, waiters] : results) {
      for (auto& w : waiters) w(result);
    }
  });
}

bool PoolImpl::GroupEvictable(uint64_t g) const {
  auto it = groups_.find(g);
  if (it == groups_.end() || !it->second.resident || !it->second.page.mapped()) return false;
  // New chunks take ids in the group of next_chunk_: it stays (a chunk is never added
  // to a group that is not in memory).
  if (dirty_groups_.contains(g) || group_loads_.contains(g) || group_pins_.contains(g) ||
      g == next_chunk_ / kChunksPerGroup) {
    return false;
  }
  for (auto c = chunks_.lower_bound(g * kChunksPerGroup);
       c != chunks_.end() && c->first < (g + 1) * kChunksPerGroup; ++c) {
    const ChunkState& s = c->second;
    if (s.meta) continue;
    if (s.dirty || s.open || s.rebuilding || s.writes_in_flight != 0 || s.busy.any() ||
        chunk_loads_.contains(s.id) || (s.blocks && !ChunkEvictable(s))) {
      return false;
    }
    // Heal finds degraded chunks among those in memory (and the chunks of failed disks
    // by their slots): a stale or missing copy keeps its record here until healed.
    if (static_cast<int>(s.replicas.size()) < TargetCopies(s)) return false;
    for (const Replica& r : s.replicas) {
      const DiskState& d = disks_.at(r.disk);
      if (r.stale || d.failed || (d.dev == nullptr && NodeOnline(d.node))) return false;
    }
    // A disk's flush may still mark them stale.
    for (const auto& [disk, ids] : unflushed_chunks_) {
      if (ids.contains(s.id)) return false;
    }
    for (const auto& [disk, ids] : flushing_chunks_) {
      if (ids.contains(s.id)) return false;
    }
  }
  return true;
}

size_t PoolImpl::GroupCacheLimit() const {
  // About 256 bytes per record in memory.
  return std::max<size_t>(2, options_.metadata_cache_bytes / 8 / (kChunksPerGroup * 256));
}

void PoolImpl::TrimGroups() {
  // Not while a checkpoint's pages are in flight (a failed one dirties its groups
  // again), while fsck runs, or while the journal is replayed.
  if (checkpoint_pages_in_flight_ || fsck_running_ > 0 || replaying_) return;
  const size_t limit = GroupCacheLimit();
  size_t budget = group_lru_.size();
  for (auto it = group_lru_.begin(); group_lru_.size() > limit && it != group_lru_.end() && budget-- > 0;) {
    const uint64_t g = *it;
    if (!GroupEvictable(g)) {
      ++it;
      continue;
    }
    uint32_t room = 0, count = 0;
    for (auto c = chunks_.lower_bound(g * kChunksPerGroup);
         c != chunks_.end() && c->first < (g + 1) * kChunksPerGroup;) {
      ChunkState& s = c->second;
      if (s.meta) {
        ++c;
        continue;
      }
      room = std::max(room, kBlocksPerChunk - s.used);
      ++count;
      if (s.blocks) {
        chunk_lru_.erase(s.lru);
        ++chunks_evicted_;
      }
      reuse_candidates_.erase(s.id);
      chunk_index_.erase(s.id);
      c = chunks_.erase(c);
    }
    GroupState& gs = groups_.at(g);
    gs.resident = false;
    gs.room = room;
    gs.chunks = count;
    if (room >= kBlocksPerChunk / 2) reuse_groups_.insert(g);
    it = group_lru_.erase(it);
    ++groups_evicted_;
  }
}

std::vector<uint64_t> PoolImpl::AllGroups() const {
  std::set<uint64_t> out;
  for (const auto& [g, s] : groups_) out.insert(g);
  for (const auto& [id, c] : chunks_) out.insert(id / kChunksPerGroup);
  return std::vector<uint64_t>(out.begin(), out.end());
}

}  // namespace scribe
