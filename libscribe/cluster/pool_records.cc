// Metadata records: every change to pool metadata is a record, applied to memory at once
// (Apply) and journaled (Mutate); the record codecs; block reference counts.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

void PoolImpl::Mutate(const std::string& rec) {
  Decoder d(rec.data(), rec.size());
  Apply(d);
  SCRIBE_CHECK(d.ok() && d.done());
  pending_records_.append(rec);
  // Bound what a crash can lose and what one batch holds: commit in the background
  // once enough metadata is pending, even if nobody flushes; and bound the pages the
  // next checkpoint writes (and the space it needs) by checkpointing once enough
  // nodes changed.
  if ((pending_records_.size() > kPendingRecordBytesMax ||
       dirty_nodes_ >= options_.checkpoint_dirty_pages_max) &&
      !committing_) {
    Commit([](absl::Status) {});
  }
}

DiskState* PoolImpl::FindDisk(DiskId id) {
  auto it = disks_.find(id);
  return it == disks_.end() ? nullptr : &it->second;
}

ChunkState* PoolImpl::FindChunk(uint64_t id) {
  auto it = chunk_index_.find(id);
  return it == chunk_index_.end() ? nullptr : it->second;
}

const ChunkState* PoolImpl::FindChunk(uint64_t id) const {
  auto it = chunk_index_.find(id);
  return it == chunk_index_.end() ? nullptr : it->second;
}

VsdState* PoolImpl::FindVsdState(VsdId id) {
  auto it = vsds_.find(id);
  return it == vsds_.end() ? nullptr : it->second.get();
}

const VsdState* PoolImpl::FindVsdState(VsdId id) const {
  auto it = vsds_.find(id);
  return it == vsds_.end() ? nullptr : it->second.get();
}

SnapshotState* PoolImpl::FindSnapshot(SnapshotId id) {
  auto it = snapshots_.find(id);
  return it == snapshots_.end() ? nullptr : it->second.get();
}

bool PoolImpl::SkipMapRecord(Decoder& d, VsdId* vsd, uint64_t* lba, uint64_t* count) {
  Decoder peek = d;
  const uint8_t type = peek.U8();
  if (type != kRecMap && type != kRecUnmap) return false;
  vsd->value = peek.U64();
  *lba = peek.U64();
  if (type == kRecMap) {  // as Apply reads it
    peek.U64();  // chunk
    peek.U32();  // first block
    const uint32_t n = peek.U32();
    if (n > kBlocksPerChunk) return false;
    for (uint32_t i = 0; i < n; ++i) peek.U32();  // crcs
    *count = n;
  } else {
    *count = peek.U64();
  }
  if (!peek.ok()) return false;
  d = peek;
  return true;
}

void PoolImpl::Apply(Decoder& d) {
  const uint8_t type = d.U8();
  switch (type) {
    case kRecCounters: {
      next_disk_ = std::max(next_disk_, d.U64());
      next_chunk_ = std::max(next_chunk_, d.U64());
      next_vsd_ = std::max(next_vsd_, d.U64());
      next_snapshot_ = std::max(next_snapshot_, d.U64());
      break;
    }
    case kRecAddDisk: {
      DiskId id{d.U64()};
      DiskState& disk = disks_[id];
      disk.id = id;
      disk.node.value = d.U64();
      disk.tier = static_cast<Tier>(d.U8());
      const uint64_t size = d.U64();
      disk.data_start = RoundUp(kSuperblockBytes + options_.metadata_bytes, kBlockBytes);
      disk.slots = (size - disk.data_start) / kChunkBytes;
      disk.slot_owner.assign(disk.slots, 0);
      next_disk_ = std::max(next_disk_, id.value + 1);
      nodes_online_.try_emplace(disk.node, true);
      break;
    }
    case kRecFailDisk: {
      DiskState* disk = FindDisk(DiskId{d.U64()});
      const bool evicted = d.U8() != 0;
      if (disk) {
        disk->failed = true;
        disk->evicted = evicted;
      }
      break;
    }
    case kRecResetDisk: {
      DiskState* disk = FindDisk(DiskId{d.U64()});
      if (disk) {
        disk->failed = disk->evicted = false;
        disk->slot_owner.assign(disk->slots, 0);
        disk->used_slots = 0;
        disk->free_hint = 0;
      }
      break;
    }
    case kRecAddChunk: {
      ChunkState c;
      c.id = d.U64();
      c.replication = d.U8();
      c.meta = (d.U8() & kChunkMeta) != 0;
      const uint32_t n = d.U32();
      for (uint32_t i = 0; i < n && d.ok(); ++i) {
        Replica r;
        r.disk.value = d.U64();
        r.slot = d.U64();
        r.stale = d.U8() != 0;
        c.replicas.push_back(r);
      }
      if (d.ok()) InsertChunk(std::move(c));
      break;
    }
    case kRecFreeChunk: {
      const uint64_t id = d.U64();
      ChunkState* c = FindChunk(id);
      if (c) {
        ChunkRecordChanged(*c);
        for (const Replica& r : c->replicas) ReleaseSlot(r.disk, r.slot, id);
        if (c->page.mapped()) DropPage(c->page);
        if (c->blocks && !c->meta) chunk_lru_.erase(c->lru);
        dirty_chunks_.erase(id);
        deltas_.erase(id);
        reuse_candidates_.erase(id);
        if (c->meta) meta_chunks_.erase(id);
        chunk_index_.erase(id);
        chunks_.erase(id);
      }
      break;
    }
    case kRecSetReplica: {
      ChunkState* c = FindChunk(d.U64());
      const uint32_t index = d.U32();
      Replica r;
      r.disk.value = d.U64();
      r.slot = d.U64();
      if (!c) break;
      ChunkRecordChanged(*c);
      if (index < c->replicas.size()) {
        ReleaseSlot(c->replicas[index].disk, c->replicas[index].slot, c->id);
        c->replicas[index] = r;
      } else {
        c->replicas.push_back(r);
      }
      ClaimSlot(r.disk, r.slot, c->id);
      break;
    }
    case kRecStale: {
      ChunkState* c = FindChunk(d.U64());
      const DiskId disk{d.U64()};
      const bool stale = d.U8() != 0;
      if (c) {
        ChunkRecordChanged(*c);
        for (Replica& r : c->replicas) {
          if (r.disk == disk) r.stale = stale;
        }
      }
      break;
    }
    case kRecCreateVsd: {
      auto v = DecodeVsdHeader(d);
      v->map = BlockMap(refs_, v->size_bytes / kBlockBytes);
      InsertVsd(std::move(v));
      break;
    }
    case kRecDeleteVsd: {
      VsdState* v = FindVsdState(VsdId{d.U64()});
      if (!v) break;
      // Writes queued behind block locks find the VSD gone and report NOT_FOUND.
      for (LockWaiter& w : v->waiters) loop_->Post(std::move(w.fn));
      v->waiters.clear();
      // Its own interval goes with it; clones based on its snapshots are rebased.
      StartInterval(v, SnapshotId{});
      UnlinkSnapshots(std::set<SnapshotId>(v->snapshots.begin(), v->snapshots.end()));
      for (SnapshotId s : v->snapshots) {
        if (SnapshotState* doomed = FindSnapshot(s)) {
          DropLogPages(&doomed->log_pages);
          Retire(&doomed->map);
        }
        snapshots_.erase(s);
      }
      DropLogPages(&v->log_pages);
      Retire(&v->map);
      CloseOpenChunk(v);
      vsd_by_name_.erase(v->name);
      vsds_.erase(v->id);
      break;
    }
    case kRecResizeVsd: {
      VsdState* v = FindVsdState(VsdId{d.U64()});
      const uint64_t size = d.U64();
      if (v) {
        v->size_bytes = size;
        v->map.Grow(size / kBlockBytes);
      }
      break;
    }
    case kRecMap: {
      // A run: `count` consecutive logical blocks onto consecutive blocks of a chunk.
      VsdState* v = FindVsdState(VsdId{d.U64()});
      const uint64_t lba = d.U64();
      MapEntry e;
      e.chunk = d.U64();
      const uint32_t first = d.U32();
      const uint32_t count = d.U32();
      if (count > kBlocksPerChunk || first > kBlocksPerChunk - count) {
        d.Raw(nullptr, SIZE_MAX);  // malformed: fail the batch
        break;
      }
      // A chunk that is not in memory is a data chunk (metadata chunks always are).
      const ChunkState* c = FindChunk(e.chunk);
      const bool data = c != nullptr ? !c->meta : !RecordResident(e.chunk);
      for (uint32_t i = 0; i < count && d.ok(); ++i) {
        e.block = first + i;
        e.crc = d.U32();
        if (data) SetBlockCrc(e.chunk, e.block, e.crc);
        if (v && lba + i < v->map.capacity_blocks()) v->map.Set(lba + i, e);
      }
      if (v && d.ok()) LogChange(v, lba, lba + count);
      break;
    }
    case kRecUnmap: {
      VsdState* v = FindVsdState(VsdId{d.U64()});
      const uint64_t lba = d.U64();
      const uint64_t count = d.U64();
      if (v) {
        for (uint64_t i = lba; i < lba + count && i < v->map.capacity_blocks(); ++i) {
          v->map.Clear(i);
        }
        LogChange(v, lba, lba + std::min(count, UINT64_MAX - lba));
      }
      break;
    }
    case kRecSnapshot: {
      auto s = DecodeSnapshotHeader(d);
      VsdState* v = FindVsdState(s->vsd);
      next_snapshot_ = std::max(next_snapshot_, s->id.value + 1);
      if (!v) break;
      s->size_bytes = v->size_bytes;
      s->map = v->map;
      // The live interval ends here and a new one starts at this snapshot.
      s->base = v->base;
      s->changes = std::move(v->changes);
      StartInterval(v, s->id);
      InsertSnapshot(std::move(s));
      break;
    }
    case kRecDeleteSnapshot: {
      SnapshotState* s = FindSnapshot(SnapshotId{d.U64()});
      if (!s) break;
      if (VsdState* v = FindVsdState(s->vsd)) {
        std::erase(v->snapshots, s->id);
      }
      UnlinkSnapshots({s->id});
      DropLogPages(&s->log_pages);
      Retire(&s->map);
      snapshots_.erase(s->id);
      break;
    }
    case kRecClone: {
      auto v = std::make_unique<VsdState>();
      v->id.value = d.U64();
      v->name = d.Str();
      const bool from_snapshot = d.U8() != 0;
      const uint64_t source = d.U64();
      next_vsd_ = std::max(next_vsd_, v->id.value + 1);
      if (from_snapshot) {
        SnapshotState* s = FindSnapshot(SnapshotId{source});
        VsdState* parent = s ? FindVsdState(s->vsd) : nullptr;
        if (!s) break;
        v->size_bytes = s->size_bytes;
        v->map = s->map;
        v->replication = parent ? parent->replication : 2;
        v->flash_priority = parent ? parent->flash_priority : 4;
        StartInterval(v.get(), s->id);
      } else {
        // No interval: logging it would mean copying the source's log (not O(1)).
        VsdState* src = FindVsdState(VsdId{source});
        if (!src) break;
        v->size_bytes = src->size_bytes;
        v->map = src->map;
        v->replication = src->replication;
        v->flash_priority = src->flash_priority;
      }
      InsertVsd(std::move(v));
      break;
    }
    case kRecRevert: {
      VsdState* v = FindVsdState(VsdId{d.U64()});
      SnapshotState* s = FindSnapshot(SnapshotId{d.U64()});
      if (v && s) {
        Retire(&v->map);
        v->map = s->map;
        v->size_bytes = s->size_bytes;
        StartInterval(v, s->id);
      }
      break;
    }
    case kRecDropReplica: {
      ChunkState* c = FindChunk(d.U64());
      const uint32_t index = d.U32();
      if (!c || index >= c->replicas.size()) break;
      ChunkRecordChanged(*c);
      ReleaseSlot(c->replicas[index].disk, c->replicas[index].slot, c->id);
      c->replicas.erase(c->replicas.begin() + index);
      break;
    }
    case kRecCkptChunkGroup: {
      const uint64_t group = d.U64();
      MapEntry page;
      page.chunk = d.U64();
      page.block = d.U32();
      page.crc = d.U32();
      if (d.ok()) {
        GroupState& gs = groups_[group];
        gs.page = page;
        gs.resident = false;  // LoadPages reads it
      }
      break;
    }
    case kRecCkptVsd: {
      auto v = DecodeVsdHeader(d);
      const int levels = d.U8();
      const MapEntry root = DecodePagePointer(d);
      v->map = BlockMap(refs_, v->size_bytes / kBlockBytes);
      load_roots_.push_back(LoadRoot{false, v->id.value, levels, root});
      InsertVsd(std::move(v));
      break;
    }
    case kRecCkptSnapshot: {
      auto s = DecodeSnapshotHeader(d);
      s->size_bytes = d.U64();
      const int levels = d.U8();
      const MapEntry root = DecodePagePointer(d);
      s->map = BlockMap(refs_, s->size_bytes / kBlockBytes);
      load_roots_.push_back(LoadRoot{true, s->id.value, levels, root});
      InsertSnapshot(std::move(s));
      break;
    }
    case kRecCkptChangeLog: {
      // Follows its VSD's or snapshot's record; the extents are in pages.
      LoadLog l;
      l.of_snapshot = d.U8() != 0;
      l.owner = d.U64();
      l.base = SnapshotId{d.U64()};
      l.known = d.U8() != 0;
      const uint32_t count = d.U32();
      for (uint32_t i = 0; i < count && d.ok(); ++i) l.pages.push_back(DecodePagePointer(d));
      if (d.ok()) load_logs_.push_back(std::move(l));
      break;
    }
    case kRecCkptDoomed: {
      const int level = d.U8();
      const MapEntry root = DecodePagePointer(d);
      if (d.ok()) load_doomed_.push_back({level, root});
      break;
    }
    case kRecCkptDroppedLeaf: {
      const MapEntry page = DecodePagePointer(d);
      if (d.ok()) load_dropped_.push_back(page);
      break;
    }
    case kRecCkptEnd:
      break;
    default:
      // Unknown record: recovery treats the batch as invalid (decoder not done).
      d.Raw(nullptr, SIZE_MAX);
      break;
  }
}

std::unique_ptr<VsdState> PoolImpl::DecodeVsdHeader(Decoder& d) {
  auto v = std::make_unique<VsdState>();
  v->id.value = d.U64();
  v->name = d.Str();
  v->size_bytes = d.U64();
  v->replication = d.U8();
  v->flash_priority = d.U8();
  return v;
}

void PoolImpl::EncodeVsdHeader(Encoder& e, VsdId id, const std::string& name, uint64_t size_bytes,
                            int replication, int flash_priority) {
  e.U64(id.value);
  e.Str(name);
  e.U64(size_bytes);
  e.U8(static_cast<uint8_t>(replication));
  e.U8(static_cast<uint8_t>(flash_priority));
}

void PoolImpl::InsertVsd(std::unique_ptr<VsdState> v) {
  next_vsd_ = std::max(next_vsd_, v->id.value + 1);
  vsd_by_name_[v->name] = v->id;
  vsds_[v->id] = std::move(v);
}

std::unique_ptr<SnapshotState> PoolImpl::DecodeSnapshotHeader(Decoder& d) {
  auto s = std::make_unique<SnapshotState>();
  s->id.value = d.U64();
  s->vsd.value = d.U64();
  s->name = d.Str();
  s->generation = d.U64();
  return s;
}

void PoolImpl::InsertSnapshot(std::unique_ptr<SnapshotState> s) {
  next_snapshot_ = std::max(next_snapshot_, s->id.value + 1);
  if (VsdState* v = FindVsdState(s->vsd)) v->snapshots.push_back(s->id);
  snapshots_[s->id] = std::move(s);
}

void PoolImpl::InsertChunk(ChunkState c, bool changed) {
  for (const Replica& r : c.replicas) ClaimSlot(r.disk, r.slot, c.id);
  next_chunk_ = std::max(next_chunk_, c.id + 1);
  const uint64_t id = c.id;
  if (c.meta) meta_chunks_.insert(id);
  // A new chunk (not one a group page names) starts empty, in memory.
  const bool fresh = !c.page.mapped() && !c.blocks;
  if (fresh) c.blocks = std::make_unique<ChunkBlocks>();
  ChunkState& slot = chunks_[id];
  if (slot.blocks && !slot.meta) chunk_lru_.erase(slot.lru);  // replaced (replay)
  slot = std::move(c);
  chunk_index_[id] = &slot;
  if (slot.blocks && !slot.meta) slot.lru = chunk_lru_.insert(chunk_lru_.end(), id);
  if (fresh && !slot.meta) ChunkDirtied(&slot);
  if (changed) ChunkRecordChanged(slot);
}

void PoolImpl::ChunkRecordChanged(const ChunkState& c) {
  if (c.meta) {
    need_checkpoint_ = true;
  } else {
    dirty_groups_.insert(c.id / kChunksPerGroup);
  }
}

void PoolImpl::EncodeAddChunk(Encoder& e, uint64_t id, int replication, bool meta,
                           const std::vector<Replica>& replicas) {
  e.U8(kRecAddChunk);
  e.U64(id);
  e.U8(static_cast<uint8_t>(replication));
  e.U8(meta ? kChunkMeta : 0);
  e.U32(static_cast<uint32_t>(replicas.size()));
  for (const Replica& r : replicas) {
    e.U64(r.disk.value);
    e.U64(r.slot);
    e.U8(r.stale ? 1 : 0);
  }
}

MapEntry PoolImpl::DecodePagePointer(Decoder& d) {
  MapEntry e;
  e.chunk = d.U64();
  e.block = d.U32();
  e.crc = d.U32();
  return e;
}

void PoolImpl::EncodePagePointer(Encoder& e, const MapEntry& p) {
  e.U64(p.chunk);
  e.U32(p.block);
  e.U32(p.crc);
}

void PoolImpl::ClaimSlot(DiskId disk_id, uint64_t slot, uint64_t chunk) {
  DiskState* disk = FindDisk(disk_id);
  if (!disk || slot >= disk->slots) return;
  if (disk->slot_owner[slot] == 0) ++disk->used_slots;
  disk->slot_owner[slot] = chunk;
}

void PoolImpl::ReleaseSlot(DiskId disk_id, uint64_t slot, uint64_t chunk) {
  DiskState* disk = FindDisk(disk_id);
  if (!disk || slot >= disk->slots || disk->slot_owner[slot] != chunk) return;
  disk->slot_owner[slot] = 0;
  --disk->used_slots;
  disk->free_hint = std::min(disk->free_hint, slot);
}

void PoolImpl::RefBlock(const MapEntry& e) {
  ChunkState* c = FindChunk(e.chunk);
  SCRIBE_CHECK(c != nullptr || !RecordResident(e.chunk));
  if (c == nullptr || !c->blocks) {
    ++DeltaOf(e.chunk)->refs[e.block];
    if (c != nullptr) ChunkDirtied(c);
    return;
  }
  if (c->blocks->refs[e.block]++ == 0 && !c->busy[e.block]) ++c->used;
  ChunkDirtied(c);
}

void PoolImpl::UnrefBlock(const MapEntry& e) {
  ChunkState* c = FindChunk(e.chunk);
  if (c == nullptr && !RecordResident(e.chunk)) {
    // Applied when the record and the page are read back (a chunk that turns out to be
    // gone then: see DecodeGroup).
    --DeltaOf(e.chunk)->refs[e.block];
    return;
  }
  if (c == nullptr && reaping_) {
    // A tree deleted before a crash names a chunk that the replayed journal freed (the
    // run before the crash had finished that part of the delete): nothing to drop.
    ++unrefs_of_freed_chunks_;
    return;
  }
  SCRIBE_CHECK(c != nullptr);
  if (!c->blocks) {
    // Applied (and the block freed, when it reaches 0) once the page is read back.
    --DeltaOf(e.chunk)->refs[e.block];
    ChunkDirtied(c);
    return;
  }
  SCRIBE_CHECK(c->blocks->refs[e.block] > 0);
  ChunkDirtied(c);
  if (--c->blocks->refs[e.block] == 0) {
    if (replaying_) {
      // Replayed records are durable already: the block is free at once (a later
      // record may reuse it).
      --c->used;
      NoteMaybeReusable(c);
      return;
    }
    // Not reusable until the metadata that dropped it is durable.
    SCRIBE_CHECK(!c->busy[e.block]);
    c->busy[e.block] = true;
    pending_frees_.push_back({e.chunk, e.block});
  }
}

void PoolImpl::ReleaseFrees(BlockFrees frees) {
  for (auto [chunk, block] : frees) {
    ChunkState* c = FindChunk(chunk);
    if (!c || !c->busy[block] || !c->blocks || c->blocks->refs[block] != 0) continue;
    c->busy[block] = false;
    --c->used;
    NoteMaybeReusable(c);
    MaybeFreeChunk(c);
  }
}

void PoolImpl::MaybeFreeChunk(ChunkState* c) {
  // A chunk with a delta may have gained references its `used` does not show yet.
  if (c->used != 0 || deltas_.contains(c->id) || c->open || c->rebuilding || c->writes_in_flight != 0) return;
  Encoder e;
  e.U8(kRecFreeChunk);
  e.U64(c->id);
  Mutate(e.out());
}

void PoolImpl::RefFromMap(const MapEntry& e) { RefBlock(e); }

void PoolImpl::UnrefFromMap(const MapEntry& e) { UnrefBlock(e); }

}  // namespace scribe
