// Membership: disks and nodes joining, failing, going offline, leaving; stats.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

void PoolImpl::AddDisk(DiskSpec disk, Done<DiskId> done) {
  absl::Status st = CheckDiskSpec(disk);
  if (!st.ok()) return loop_->Post([done, st] { done(st); });
  auto alive = alive_;
  AddDiskInternal(disk, [this, alive, done](absl::StatusOr<DiskId> r) {
    if (!*alive) return;
    if (!r.ok()) return done(r.status());
    ChooseMirrors();
    Heal();  // degraded chunks may now have somewhere to go
    DiskId id = *r;
    Commit([done, id](absl::Status st) {
      if (!st.ok()) return done(st);
      done(id);
    });
  });
}

void PoolImpl::FailDisk(DiskId disk, StatusDone done) {
  DiskState* d = FindDisk(disk);
  if (!d) return PostError(done, absl::NotFoundError(absl::StrFormat("no disk %d", disk.value)));
  if (!d->failed) FailDiskNow(disk, false);
  ChooseMirrors();
  Commit(done);
}

void PoolImpl::SetNodeOnline(NodeId node, bool online) {
  nodes_online_[node] = online;
  if (!online) {
    // Writes its disks took since their last flush may be lost if the node crashed.
    for (auto& [id, d] : disks_) {
      if (d.node != node) continue;
      MarkStale(id, unflushed_chunks_[id]);
      MarkStale(id, flushing_chunks_[id]);
      unflushed_chunks_.erase(id);
    }
  }
  for (auto& [id, v] : vsds_) {
    if (ChunkState* c = v->open_chunk ? FindChunk(v->open_chunk) : nullptr) {
      for (const Replica& r : c->replicas) {
        if (disks_.at(r.disk).node == node) {
          CloseOpenChunk(v.get());
          break;
        }
      }
    }
  }
  ChooseMirrors();
  if (online) {
    // Copies evicted while away are no longer referenced: their disks start afresh.
    for (auto& [id, d] : disks_) {
      if (d.node == node && d.evicted) pending_resets_.insert(id);
    }
  }
  Heal();
  Commit([](absl::Status) {});
}

void PoolImpl::AttachDevice(DiskSpec spec, Done<DiskId> done) {
  if (spec.device == nullptr) return PostError(done, absl::InvalidArgumentError("null device"));
  if (spec.device->size_bytes() < kSuperblockBytes) {
    return PostError(done, absl::NotFoundError("device is too small to be a pool disk"));
  }
  auto buf = std::make_shared<AlignedBuffer>(kSuperblockBytes);
  auto alive = alive_;
  BlockDevice* dev = spec.device;
  dev->Read(0, kSuperblockBytes, buf->data(), Timed([=, this](absl::Status st) {
    if (!*alive) return;
    if (!st.ok()) {
      return done(absl::UnavailableError(absl::StrFormat("reading the superblock: %s", st.message())));
    }
    Superblock sb;
    if (!DecodeSuperblock(buf->data(), &sb)) {
      return done(absl::NotFoundError("the device holds no pool superblock"));
    }
    if (sb.pool_uuid != pool_uuid_ || sb.metadata_bytes != options_.metadata_bytes) {
      return done(absl::FailedPreconditionError(absl::StrFormat(
          "the device is disk %d of another pool (%016x, this pool is %016x)", sb.disk.value,
          sb.pool_uuid, pool_uuid_)));
    }
    DiskState* d = FindDisk(sb.disk);
    if (d == nullptr) {
      return done(absl::NotFoundError(absl::StrFormat("disk %d is no longer in the pool", sb.disk.value)));
    }
    if (d->dev != nullptr && d->dev != dev && NodeOnline(d->node)) {
      return done(absl::FailedPreconditionError(absl::StrFormat(
          "disk %d already has a device and node %d is online", sb.disk.value, d->node.value)));
    }
    d->dev = dev;
    done(sb.disk);
  }));
}

void PoolImpl::EvictNode(NodeId node, StatusDone done) {
  bool any = false;
  for (auto& [id, d] : disks_) {
    if (d.node != node) continue;
    any = true;
    if (!d.failed) FailDiskNow(id, true);
  }
  if (!any) return PostError(done, absl::NotFoundError(absl::StrFormat("no node %d", node.value)));
  ChooseMirrors();
  Commit(done);
}

std::vector<DiskInfo> PoolImpl::ListDisks() const {
  std::vector<DiskInfo> out;
  for (const auto& [id, d] : disks_) {
    DiskInfo info;
    info.id = id;
    info.node = d.node;
    info.tier = d.tier;
    info.capacity_bytes = d.slots * kChunkBytes;
    info.used_bytes = d.used_slots * kChunkBytes;
    info.chunks = d.used_slots;
    info.failed = d.failed;
    info.online = NodeOnline(d.node) && d.dev != nullptr;
    out.push_back(info);
  }
  return out;
}

int PoolImpl::HealthyCopies(const ChunkState& c) const {
  int n = 0;
  std::set<NodeId> nodes;
  for (const Replica& r : c.replicas) {
    auto it = disks_.find(r.disk);
    if (it == disks_.end() || it->second.failed || it->second.dev == nullptr || r.stale) continue;
    if (nodes.insert(it->second.node).second) ++n;
  }
  return n;
}

PoolStats PoolImpl::Stats() const {
  PoolStats s;
  for (const auto& [id, d] : disks_) {
    if (d.failed) continue;
    s.capacity_bytes[static_cast<int>(d.tier)] += d.slots * kChunkBytes;
    s.used_bytes[static_cast<int>(d.tier)] += d.used_slots * kChunkBytes;
  }
  // Chunks whose records are not in memory are counted from the groups' pages as last
  // read, and are healthy but for copies on disks that are not usable now (a chunk
  // with copies on two such disks counts twice).
  s.chunks = chunks_.size();
  for (const auto& [g, gs] : groups_) {
    if (!gs.resident) s.chunks += gs.chunks;
  }
  for (const auto& [id, c] : chunks_) {
    if (HealthyCopies(c) < TargetCopies(c)) ++s.degraded_chunks;
  }
  for (const auto& [id, d] : disks_) {
    if (DiskUsable(d)) continue;
    for (uint64_t owner : d.slot_owner) s.degraded_chunks += owner != 0 && !RecordResident(owner);
  }
  s.rebuilds_in_flight = rebuilds_in_flight_;
  s.chunks_rebuilt = chunks_rebuilt_;
  s.metadata_sequence = sequence_;
  s.metadata_chunks = meta_chunks_.size();
  s.checkpoints = checkpoints_;
  s.checkpoint_pages_written = checkpoint_pages_written_;
  s.last_checkpoint_pages = last_checkpoint_pages_;
  s.last_checkpoint_root_bytes = last_checkpoint_root_bytes_;
  s.delete_subtrees_pending = doomed_.size();
  s.delete_nodes_freed = delete_nodes_freed_;
  s.delete_bytes_freed = delete_bytes_freed_;
  s.delete_step_max_ns = static_cast<uint64_t>(delete_step_max_ns_);
  s.map_leaves_in_memory = leaf_cache_.size();
  s.map_leaves_read = leaves_read_;
  s.metadata_reserve_chunks_per_node = MetadataReservePerNode();
  s.open_journal_bytes_read = open_journal_bytes_read_;
  s.open_pages_read = open_pages_read_;
  s.map_leaves_evicted = leaves_evicted_;
  s.map_leaf_waits = leaf_waits_;
  s.map_leaf_wait_ns = static_cast<uint64_t>(leaf_wait_ns_);
  s.chunk_states_in_memory = chunk_lru_.size();
  s.chunk_states_read = chunks_read_;
  s.chunk_states_evicted = chunks_evicted_;
  s.chunk_states_with_deltas = deltas_.size();
  s.chunk_groups_in_memory = group_lru_.size();
  s.chunk_groups_read = groups_read_;
  s.chunk_groups_evicted = groups_evicted_;
  s.diffs_from_change_logs = diffs_from_change_logs_;
  s.diffs_walked = diffs_walked_;
  s.fenced = fenced_;
  return s;
}

bool PoolImpl::FullyRedundant() const {
  if (rebuilds_in_flight_ > 0 || !pending_resets_.empty()) return false;
  // A copy on a disk that is not usable now, of a chunk whose record is not in memory.
  for (const auto& [id, d] : disks_) {
    if (DiskUsable(d)) continue;
    for (uint64_t owner : d.slot_owner) {
      if (owner != 0 && !RecordResident(owner)) return false;
    }
  }
  for (const auto& [id, c] : chunks_) {
    if (HealthyCopies(c) < TargetCopies(c)) return false;
    for (const Replica& r : c.replicas) {
      if (!ReplicaWritable(r)) return false;
    }
  }
  return true;
}

}  // namespace scribe
