// Checkpoints: the pages changed since the last one, written to new places, then a
// small root.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

auto PoolImpl::PrepareCheckpoint() -> absl::StatusOr<std::shared_ptr<Checkpoint>> {
  // Chunks with deltas are read back first (LoadDeltaChunks): the state pages written
  // here must be exact.
  SCRIBE_CHECK(deltas_.empty());
  auto ck = std::make_shared<Checkpoint>();
  // Changed tree nodes, children before parents. A node with a page has no changed
  // node below it (changing a node unsets the pages of its whole path), and a shared
  // node is never changed in place.
  std::vector<std::shared_ptr<BlockMap::Node>> nodes;
  std::set<const BlockMap::Node*> seen;
  std::function<void(const std::shared_ptr<BlockMap::Node>&)> collect =
      [&](const std::shared_ptr<BlockMap::Node>& n) {
        if (!n || n->page.mapped() || !seen.insert(n.get()).second) return;
        if (n->level > 0) {
          for (const auto& c : n->children) collect(c);
        }
        nodes.push_back(n);
      };
  for (const auto& [id, v] : vsds_) collect(v->map.root());
  for (const auto& [id, s] : snapshots_) collect(s->map.root());
  // Detached trees still hold references (the chunk states count them): the root names
  // them until they are destroyed.
  for (const auto& n : doomed_) collect(n);
  // Change logs whose contents changed since they were written.
  struct LogJob {
    Checkpoint::LogRef ref;
    const ChangeLog* log;
    std::vector<MapEntry>* pages;
    uint64_t* written;
    size_t count;
  };
  std::vector<LogJob> logs;
  auto consider_log = [&](bool of_snapshot, uint64_t owner, SnapshotId base, const ChangeLog& log,
                          std::vector<MapEntry>* pages, uint64_t* written) {
    if (*written == log.version()) return;
    const size_t extents = base.valid() && log.known() ? log.extent_count() : 0;
    logs.push_back(LogJob{{of_snapshot, owner}, &log, pages, written,
                          (extents + kExtentsPerLogPage - 1) / kExtentsPerLogPage});
  };
  for (auto& [id, v] : vsds_) {
    consider_log(false, id.value, v->base, v->changes, &v->log_pages, &v->log_version_written);
  }
  for (auto& [id, s] : snapshots_) {
    consider_log(true, id.value, s->base, s->changes, &s->log_pages, &s->log_version_written);
  }
  // Chunk states that changed: a new page each, which changes their group's page too.
  std::vector<uint64_t> chunk_ids;
  for (uint64_t id : dirty_chunks_) {
    ChunkState* c = FindChunk(id);
    if (c == nullptr || c->meta) continue;
    SCRIBE_CHECK(c->blocks != nullptr);
    chunk_ids.push_back(id);
    dirty_groups_.insert(id / kChunksPerGroup);
  }
  size_t need = nodes.size() + chunk_ids.size() + dirty_groups_.size();
  for (const LogJob& j : logs) need += j.count;
  absl::StatusOr<std::vector<MapEntry>> where = AllocatePages(need);
  if (!where.ok()) return where.status();
  ck->data = AlignedBuffer(need * kPageBytes);
  ck->pages.reserve(need);  // take() hands out pointers into it
  size_t next = 0;
  auto take = [&]() -> std::pair<MapEntry*, uint8_t*> {
    ck->pages.push_back((*where)[next]);
    return {&ck->pages.back(), ck->data.data() + next++ * kPageBytes};
  };
  auto seal = [&](MapEntry* p, uint32_t crc) {
    p->crc = crc;
    FindChunk(p->chunk)->blocks->crc[p->block] = crc;
  };
  for (const auto& n : nodes) {
    // Its parent's page carries the counts (an open reads no leaf).
    if (n->level == 0) n->unique_counted = UniqueBlocks(*n->entries);
    auto [p, buf] = take();
    seal(p, EncodeNodePage(*n, pool_uuid_, buf));
    n->page = *p;
    ck->nodes.push_back(n);
  }
  for (const LogJob& j : logs) {
    for (const MapEntry& old : *j.pages) DropPage(old);
    j.pages->clear();
    auto it = j.log->extents().begin();
    for (size_t k = 0; k < j.count; ++k) {
      std::vector<std::pair<uint64_t, uint64_t>> extents;
      for (; it != j.log->extents().end() && extents.size() < kExtentsPerLogPage; ++it) {
        extents.push_back(*it);
      }
      auto [p, buf] = take();
      seal(p, EncodeChangeLogPage(extents, pool_uuid_, buf));
      j.pages->push_back(*p);
    }
    *j.written = j.log->version();
    ck->logs.push_back(j.ref);
  }
  for (uint64_t id : chunk_ids) {
    ChunkState* c = FindChunk(id);
    if (c->page.mapped()) DropPage(c->page);
    auto [p, buf] = take();
    seal(p, EncodeChunkStatePage(id, *c->blocks, pool_uuid_, buf));
    c->page = *p;
    c->dirty = false;
    ck->chunks.push_back(id);
  }
  dirty_chunks_.clear();
  absl::Status group_status;
  for (uint64_t g : dirty_groups_) {
    // A changed group is in memory (only records in memory change).
    auto old = groups_.find(g);
    if (old != groups_.end()) {
      SCRIBE_CHECK(old->second.resident);
      DropPage(old->second.page);
      group_lru_.erase(old->second.lru);
      groups_.erase(old);
    }
    ck->groups.push_back(g);
    std::vector<ChunkRecord> records;
    for (auto it = chunks_.lower_bound(g * kChunksPerGroup);
         it != chunks_.end() && it->first < (g + 1) * kChunksPerGroup; ++it) {
      const ChunkState& c = it->second;
      if (c.meta) continue;
      uint32_t used = c.used;
      if (c.blocks) {
        used = 0;
        for (uint32_t r : c.blocks->refs) used += r > 0;
      }
      records.push_back(ChunkRecord{it->first, c.replication, c.replicas, c.page, used});
    }
    if (records.empty()) continue;
    auto [p, buf] = take();
    absl::StatusOr<uint32_t> crc = EncodeChunkGroupPage(records, pool_uuid_, buf);
    if (!crc.ok()) {
      group_status = crc.status();
      break;
    }
    seal(p, *crc);
    GroupState& gs = groups_[g];
    gs.page = *p;
    gs.lru = group_lru_.insert(group_lru_.end(), g);
  }
  dirty_groups_.clear();
  // Pages taken for groups that turned out empty.
  for (size_t k = next; k < where->size(); ++k) ReleasePage((*where)[k]);
  ck->frees = std::move(page_frees_);
  page_frees_.clear();
  dirty_nodes_ = 0;
  if (!group_status.ok()) {
    UndoCheckpoint(*ck);
    return group_status;
  }
  absl::StatusOr<std::vector<std::string>> root = EncodeRoot();
  if (!root.ok()) {
    UndoCheckpoint(*ck);
    return root.status();
  }
  ck->root = std::move(*root);
  return ck;
}

void PoolImpl::UndoCheckpoint(Checkpoint& ck) {
  std::set<std::pair<uint64_t, uint32_t>> undone;
  std::set<std::pair<uint64_t, uint32_t>> ck_page_set;
  for (const MapEntry& p : ck.pages) ck_page_set.insert({p.chunk, p.block});
  auto forget = [&](MapEntry* p) {
    undone.insert({p->chunk, p->block});
    *p = MapEntry{};
  };
  for (size_t i = 0; i < ck.nodes.size(); ++i) {
    std::shared_ptr<BlockMap::Node> n = ck.nodes[i].lock();
    // A node changed since then already dropped its page (released with the frees).
    if (n && n->page.mapped() && n->page.SameBlock(ck.pages[i])) forget(&n->page);
  }
  auto forget_log = [&](std::vector<MapEntry>* pages, uint64_t* written) {
    for (MapEntry& p : *pages) forget(&p);
    pages->clear();
    *written = 0;  // a log still at version 0 is empty and has no pages
  };
  for (const Checkpoint::LogRef& l : ck.logs) {
    if (l.of_snapshot) {
      if (SnapshotState* s = FindSnapshot(SnapshotId{l.owner})) forget_log(&s->log_pages, &s->log_version_written);
    } else if (VsdState* v = FindVsdState(VsdId{l.owner})) {
      forget_log(&v->log_pages, &v->log_version_written);
    }
  }
  for (uint64_t id : ck.chunks) {
    ChunkState* c = FindChunk(id);
    if (c == nullptr) continue;  // freed since: its page went with it (and is released below)
    if (c->page.mapped() && ck_page_set.count({c->page.chunk, c->page.block})) forget(&c->page);
    if (!c->dirty) {
      c->dirty = true;
      dirty_chunks_.insert(id);
    }
  }
  for (uint64_t g : ck.groups) {
    auto it = groups_.find(g);
    if (it != groups_.end()) {
      MapEntry p = it->second.page;
      forget(&p);
      group_lru_.erase(it->second.lru);
      groups_.erase(it);
    }
    dirty_groups_.insert(g);
  }
  for (const MapEntry& p : ck.pages) {
    if (undone.count({p.chunk, p.block})) ReleasePage(p);
  }
  ck.pages.clear();
  ck.nodes.clear();
  for (const MapEntry& p : ck.frees) page_frees_.push_back(p);
  ck.frees.clear();
  need_checkpoint_ = true;
  dirty_nodes_ = std::max<uint64_t>(dirty_nodes_, 1);
}

void PoolImpl::WritePages(std::shared_ptr<Checkpoint> ck, StatusDone done) {
  WriteToCopies(ck->pages, ck->data.data(), ck, [done](bool landed) {
    done(landed ? absl::OkStatus() : absl::UnavailableError("a metadata page reached no copy"));
  });
}

absl::StatusOr<std::vector<std::string>> PoolImpl::EncodeRoot() const {
  std::vector<std::string> out(1);
  auto add = [&](const std::string& rec) {
    if (out.back().size() + rec.size() > kCheckpointBatchBytes) out.emplace_back();
    out.back().append(rec);
  };
  {
    Encoder e;
    e.U8(kRecCounters);
    e.U64(next_disk_);
    e.U64(next_chunk_);
    e.U64(next_vsd_);
    e.U64(next_snapshot_);
    add(e.out());
  }
  for (const auto& [id, d] : disks_) {
    Encoder e;
    e.U8(kRecAddDisk);
    e.U64(id.value);
    e.U64(d.node.value);
    e.U8(static_cast<uint8_t>(d.tier));
    e.U64(d.data_start + d.slots * kChunkBytes);
    add(e.out());
    if (d.failed) {
      Encoder f;
      f.U8(kRecFailDisk);
      f.U64(id.value);
      f.U8(d.evicted ? 1 : 0);
      add(f.out());
    }
  }
  for (uint64_t id : meta_chunks_) {
    const ChunkState& c = chunks_.at(id);
    Encoder e;
    EncodeAddChunk(e, id, c.replication, true, c.replicas);
    add(e.out());
  }
  for (const auto& [g, gs] : groups_) {
    Encoder e;
    e.U8(kRecCkptChunkGroup);
    e.U64(g);
    EncodePagePointer(e, gs.page);
    add(e.out());
  }
  auto add_log = [&](bool of_snapshot, uint64_t owner, SnapshotId base, const ChangeLog& log,
                     const std::vector<MapEntry>& pages) {
    if (!base.valid()) return;
    Encoder e;
    e.U8(kRecCkptChangeLog);
    e.U8(of_snapshot ? 1 : 0);
    e.U64(owner);
    e.U64(base.value);
    e.U8(log.known() ? 1 : 0);
    e.U32(static_cast<uint32_t>(pages.size()));
    for (const MapEntry& p : pages) EncodePagePointer(e, p);
    add(e.out());
  };
  for (const auto& [id, v] : vsds_) {
    Encoder e;
    e.U8(kRecCkptVsd);
    EncodeVsdHeader(e, id, v->name, v->size_bytes, v->replication, v->flash_priority);
    e.U8(static_cast<uint8_t>(v->map.levels()));
    EncodePagePointer(e, v->map.root() ? v->map.root()->page : MapEntry{});
    add(e.out());
    add_log(false, id.value, v->base, v->changes, v->log_pages);
  }
  for (const auto& n : doomed_) {
    Encoder e;
    e.U8(kRecCkptDoomed);
    e.U8(static_cast<uint8_t>(n->level));
    EncodePagePointer(e, n->page);
    add(e.out());
  }
  auto add_dropped = [&](const MapEntry& p) {
    Encoder e;
    e.U8(kRecCkptDroppedLeaf);
    EncodePagePointer(e, p);
    add(e.out());
  };
  for (const MapEntry& p : dropped_leaves_) add_dropped(p);
  for (const MapEntry& p : dropping_leaves_now_) add_dropped(p);
  for (const auto& [id, s] : snapshots_) {
    Encoder e;
    e.U8(kRecCkptSnapshot);
    e.U64(id.value);
    e.U64(s->vsd.value);
    e.Str(s->name);
    e.U64(s->generation);
    e.U64(s->size_bytes);
    e.U8(static_cast<uint8_t>(s->map.levels()));
    EncodePagePointer(e, s->map.root() ? s->map.root()->page : MapEntry{});
    add(e.out());
    add_log(true, id.value, s->base, s->changes, s->log_pages);
  }
  Encoder end;
  end.U8(kRecCkptEnd);
  add(end.out());
  uint64_t bytes = 0;
  for (const auto& b : out) bytes += RoundUp(kBatchHeaderBytes + b.size(), kBlockBytes);
  // Leave room in the half for journal batches after the checkpoint.
  if (bytes > half_bytes_ * 3 / 4) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the metadata root needs %d bytes, more than a journal half holds (%d); raise "
        "PoolOptions::metadata_bytes (now %d)",
        bytes, half_bytes_ * 3 / 4, options_.metadata_bytes));
  }
  return out;
}

}  // namespace scribe
