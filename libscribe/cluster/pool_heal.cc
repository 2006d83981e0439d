// Self-healing: re-mirroring chunks with fewer good copies than they should have.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

void PoolImpl::Heal() {
  if (heal_scheduled_) return;
  heal_scheduled_ = true;
  auto alive = alive_;
  loop_->Post([this, alive] {
    if (!*alive) return;
    heal_scheduled_ = false;
    HealStep();
  });
}

void PoolImpl::HealStep() {
  // Disks of a returned, evicted node are reset once nothing references them.
  for (auto it = pending_resets_.begin(); it != pending_resets_.end();) {
    DiskState* d = FindDisk(*it);
    if (!d || !d->evicted) {
      it = pending_resets_.erase(it);
      continue;
    }
    bool referenced = false;
    for (uint64_t s = 0; s < d->slots && !referenced; ++s) referenced = d->slot_owner[s] != 0;
    if (referenced) {
      ++it;
      continue;
    }
    Encoder e;
    e.U8(kRecResetDisk);
    e.U64(d->id.value);
    Mutate(e.out());
    it = pending_resets_.erase(it);
    ChooseMirrors();
    Commit([](absl::Status) {});
  }
  // Degraded chunks keep their records in memory (GroupEvictable), but a disk that
  // failed or vanished degrades chunks whose records are not: read their groups (a
  // batch at a time) and look again.
  // Once read they stay (a copy on such a disk pins its record), so each disk is
  // looked through once (heal_scanned_: how far), again if it fails anew.
  std::vector<uint64_t> unread;
  for (const auto& [id, d] : disks_) {
    if (!d.failed && (d.dev != nullptr || !NodeOnline(d.node))) continue;
    uint64_t& s = heal_scanned_[id];
    for (; s < d.slots && unread.size() < kHealGroupsPerRead && !heal_loading_; ++s) {
      const uint64_t owner = d.slot_owner[s];
      if (owner != 0 && !RecordResident(owner) &&
          (unread.empty() || unread.back() / kChunksPerGroup != owner / kChunksPerGroup)) {
        unread.push_back(owner);
      }
    }
  }
  if (!unread.empty()) {
    heal_loading_ = true;
    auto alive = alive_;
    LoadGroups(unread, [this, alive](absl::Status st) {
      if (!*alive) return;
      heal_loading_ = false;
      if (!st.ok()) {
        // Unreadable group pages: look through the disks again later.
        heal_scanned_.clear();
        loop_->RunAfter(1'000'000'000, [this, alive] {
          if (*alive) Heal();
        });
        return;
      }
      Heal();
    });
  }
  bool waiting = false;
  std::vector<uint64_t> ids;
  for (const auto& [id, c] : chunks_) ids.push_back(id);
  for (uint64_t id : ids) {
    if (rebuilds_in_flight_ >= static_cast<uint64_t>(options_.rebuild_chunks_in_flight_max)) {
      waiting = true;
      break;
    }
    ChunkState* cp = FindChunk(id);
    if (cp == nullptr || cp->rebuilding) continue;
    ChunkState& c = *cp;
    int action = -1;  // index of the copy to replace or catch up; size() = add one
    for (size_t i = 0; i < c.replicas.size(); ++i) {
      const Replica& r = c.replicas[i];
      const DiskState& d = disks_.at(r.disk);
      if (d.failed || (d.dev == nullptr && NodeOnline(d.node))) {
        action = static_cast<int>(i);
        break;
      }
      if (r.stale && DiskUsable(d)) {
        action = static_cast<int>(i);
        break;
      }
    }
    // A metadata chunk keeps one copy per remaining node: a copy on a failed disk
    // beyond that is dropped rather than replaced (there is no node left for it).
    if (action >= 0 && c.meta && disks_.at(c.replicas[action].disk).failed &&
        static_cast<int>(c.replicas.size()) > TargetCopies(c)) {
      Encoder e;
      e.U8(kRecDropReplica);
      e.U64(c.id);
      e.U32(static_cast<uint32_t>(action));
      Mutate(e.out());
      Commit([](absl::Status) {});
      continue;
    }
    if (action < 0 && static_cast<int>(c.replicas.size()) < TargetCopies(c)) {
      action = static_cast<int>(c.replicas.size());
    }
    if (action < 0) continue;
    if (c.open || c.writes_in_flight > 0) {
      // Seal it first: close it for allocation and let writes in flight land.
      for (auto& [vid, v] : vsds_) {
        if (v->open_chunk == c.id) CloseOpenChunk(v.get());
      }
      if (meta_open_chunk_ == c.id) CloseMetaChunk();
      waiting = true;
      continue;
    }
    // Without a healthy source or a target it waits for the next change in health.
    StartRebuild(&c, action);
  }
  if (waiting) {
    auto alive = alive_;
    loop_->RunAfter(1'000'000, [this, alive] {
      if (*alive) Heal();
    });
  }
}

bool PoolImpl::StartRebuild(ChunkState* c, int index) {
  std::vector<Replica> sources;
  for (const Replica& r : c->replicas) {
    if (ReplicaWritable(r)) sources.push_back(r);
  }
  if (sources.empty()) return false;
  Replica target;
  const bool catch_up = index < static_cast<int>(c->replicas.size()) &&
                        c->replicas[index].stale && DiskUsable(disks_.at(c->replicas[index].disk));
  if (catch_up) {
    target = c->replicas[index];
  } else {
    std::set<NodeId> exclude;
    for (size_t i = 0; i < c->replicas.size(); ++i) {
      if (static_cast<int>(i) == index) continue;
      exclude.insert(disks_.at(c->replicas[i].disk).node);
    }
    auto slots = PlaceSlots(1, exclude, !c->meta);
    if (slots.empty()) return false;
    target.disk = slots[0].first;
    target.slot = slots[0].second;
    ClaimSlot(target.disk, target.slot, c->id);  // reserved while copying
  }
  c->rebuilding = true;
  ++rebuilds_in_flight_;
  auto buf = std::make_shared<AlignedBuffer>(kChunkBytes);
  const uint64_t chunk_id = c->id;
  auto alive = alive_;
  ReadWholeChunk(chunk_id, sources, 0, buf, [=, this](absl::Status st) {
    if (!*alive) return;
    ChunkState* c = FindChunk(chunk_id);
    auto finish = [=, this](bool ok) {
      ChunkState* c = FindChunk(chunk_id);
      --rebuilds_in_flight_;
      if (c) c->rebuilding = false;
      if (!ok && !catch_up) ReleaseSlot(target.disk, target.slot, chunk_id);
      if (ok && c) {
        ++chunks_rebuilt_;
        Encoder e;
        if (catch_up) {
          e.U8(kRecStale);
          e.U64(chunk_id);
          e.U64(target.disk.value);
          e.U8(0);
        } else {
          e.U8(kRecSetReplica);
          e.U64(chunk_id);
          e.U32(static_cast<uint32_t>(index));
          e.U64(target.disk.value);
          e.U64(target.slot);
        }
        Mutate(e.out());
        Commit([](absl::Status) {});
      }
      if (c) MaybeFreeChunk(c);
      Heal();
    };
    if (!st.ok() || !c) return finish(false);
    DiskState* td = FindDisk(target.disk);
    if (!td || !DiskUsable(*td)) return finish(false);
    td->dev->Write(ReplicaOffset(target, 0), kChunkBytes, buf->data(), Timed([=, this](absl::Status st) {
      (void)buf;  // the device reads it until it completes
      if (!*alive) return;
      if (st.ok()) unflushed_chunks_[target.disk].insert(chunk_id);
      if (!st.ok()) NoteIoError(target.disk, st);
      finish(st.ok());
    }));
  });
  return true;
}

void PoolImpl::ReadWholeChunk(uint64_t chunk_id, std::vector<Replica> sources, size_t i,
                    std::shared_ptr<AlignedBuffer> buf, StatusDone done) {
  if (i == sources.size()) return done(absl::DataLossError("no good copy to rebuild from"));
  const Replica r = sources[i];
  DiskState* d = FindDisk(r.disk);
  if (!d || !DiskUsable(*d)) return ReadWholeChunk(chunk_id, sources, i + 1, buf, done);
  auto alive = alive_;
  d->dev->Read(ReplicaOffset(r, 0), kChunkBytes, buf->data(), Timed([=, this](absl::Status st) {
    if (!*alive) return;
    if (!FindChunk(chunk_id)) return done(absl::NotFoundError("chunk freed"));
    if (!st.ok()) {
      NoteIoError(r.disk, st);
      return ReadWholeChunk(chunk_id, sources, i + 1, buf, done);
    }
    // The checksums are in the chunk's state (read back first if it is not in memory;
    // a rebuilding chunk then stays).
    WithChunk(chunk_id, [=, this](absl::Status st, ChunkState* c) {
      if (!st.ok()) return done(st);
      CheckWholeChunk(c, sources, i, buf, done);
    });
  }));
}

void PoolImpl::CheckWholeChunk(ChunkState* c, const std::vector<Replica>& sources, size_t i,
                               std::shared_ptr<AlignedBuffer> buf, StatusDone done) {
  const uint64_t chunk_id = c->id;
  {
    // Blocks that fail their checksum are fetched from the other copies.
    std::vector<uint32_t> bad;
    for (uint32_t b = 0; b < kBlocksPerChunk; ++b) {
      if (c->blocks->refs[b] > 0 && Crc32c(buf->data() + b * kBlockBytes, kBlockBytes) != c->blocks->crc[b]) {
        bad.push_back(b);
      }
    }
    if (bad.empty()) return done(absl::OkStatus());
    ++checksum_failures_;
    auto g = MakeGather(static_cast<int>(bad.size()), done);
    for (uint32_t b : bad) {
      std::vector<Replica> others;
      for (size_t k = 0; k < sources.size(); ++k) {
        if (k != i) others.push_back(sources[k]);
      }
      if (others.empty()) {
        g->Finish(absl::DataLossError("a block has no good copy"));
        continue;
      }
      auto one = std::make_shared<ReadRunState>();
      one->chunk = chunk_id;
      one->block = b;
      one->count = 1;
      one->crcs = {c->blocks->crc[b]};
      one->dst = buf->data() + b * kBlockBytes;
      one->candidates = others;
      one->buf = AlignedBuffer(kBlockBytes);
      one->done = [g](absl::Status st) { g->Finish(st); };
      TryReplica(one, 0);
    }
  }
}

}  // namespace scribe
