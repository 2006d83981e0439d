// VSDs, snapshots, clones, revert and diff.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

void PoolImpl::CreateVsd(VsdOptions options, Done<VsdId> done) {
  absl::Status st = ValidateVsdOptions(options);
  if (!st.ok()) return loop_->Post([done, st] { done(st); });
  const VsdId id{next_vsd_++};
  Encoder e;
  e.U8(kRecCreateVsd);
  EncodeVsdHeader(e, id, options.name, options.size_bytes, options.replication,
                  options.flash_priority);
  Mutate(e.out());
  Commit([done, id](absl::Status st) {
    if (!st.ok()) return done(st);
    done(id);
  });
}

absl::Status PoolImpl::ValidateName(const std::string& name) const {
  if (name.empty() || name.size() > 255) {
    return absl::InvalidArgumentError("a VSD name must have 1 to 255 characters");
  }
  if (vsd_by_name_.count(name)) {
    return absl::AlreadyExistsError(absl::StrFormat("a VSD named '%s' exists", name));
  }
  return absl::OkStatus();
}

absl::Status PoolImpl::ValidateVsdOptions(const VsdOptions& o) const {
  RETURN_IF_ERROR(ValidateName(o.name));
  if (o.size_bytes == 0 || o.size_bytes % kBlockBytes != 0) {
    return absl::InvalidArgumentError("VSD size must be a positive multiple of 4096 bytes");
  }
  if (o.size_bytes > (1ull << 50)) return absl::InvalidArgumentError("VSD size above 1 PiB");
  if (o.replication != 2 && o.replication != 3) {
    return absl::InvalidArgumentError("replication must be 2 or 3");
  }
  if (o.flash_priority < 0 || o.flash_priority > 11) {
    return absl::InvalidArgumentError("flash priority must be 0..11");
  }
  return absl::OkStatus();
}

void PoolImpl::DeleteVsd(VsdId vsd, StatusDone done) {
  if (!FindVsdState(vsd)) return PostError(done, NotFound(vsd));
  Encoder e;
  e.U8(kRecDeleteVsd);
  e.U64(vsd.value);
  Mutate(e.out());
  Commit(done);
}

void PoolImpl::ResizeVsd(VsdId vsd, uint64_t size_bytes, StatusDone done) {
  VsdState* v = FindVsdState(vsd);
  if (!v) return PostError(done, NotFound(vsd));
  if (size_bytes % kBlockBytes != 0 || size_bytes > (1ull << 50)) {
    return PostError(done, absl::InvalidArgumentError("size must be a multiple of 4096, at most 1 PiB"));
  }
  if (size_bytes < v->size_bytes) {
    return PostError(done, absl::InvalidArgumentError(
                               "shrinking a VSD is not supported (it would destroy data)"));
  }
  Encoder e;
  e.U8(kRecResizeVsd);
  e.U64(vsd.value);
  e.U64(size_bytes);
  Mutate(e.out());
  Commit(done);
}

absl::StatusOr<VsdId> PoolImpl::FindVsd(const std::string& name) const {
  auto it = vsd_by_name_.find(name);
  if (it == vsd_by_name_.end()) {
    return absl::NotFoundError(absl::StrFormat("no VSD named '%s'", name));
  }
  return it->second;
}

absl::StatusOr<VsdInfo> PoolImpl::GetVsdInfo(VsdId vsd) const {
  const VsdState* v = FindVsdState(vsd);
  if (!v) return NotFound(vsd);
  VsdInfo info;
  info.id = v->id;
  info.name = v->name;
  info.size_bytes = v->size_bytes;
  info.replication = v->replication;
  info.flash_priority = v->flash_priority;
  auto usage = v->map.ComputeUsage([this](const MapEntry& e) { return RefCount(e); });
  info.allocated_bytes = usage.mapped * kBlockBytes;
  info.unique_bytes = usage.unique * kBlockBytes;
  info.shared_bytes = info.allocated_bytes - info.unique_bytes;
  info.snapshots = v->snapshots.size();
  return info;
}

std::vector<VsdInfo> PoolImpl::ListVsds() const {
  std::vector<VsdInfo> out;
  for (const auto& [id, v] : vsds_) out.push_back(*GetVsdInfo(id));
  return out;
}

absl::Status PoolImpl::NotFound(VsdId id) {
  return absl::NotFoundError(absl::StrFormat("no VSD with id %d", id.value));
}

absl::Status PoolImpl::NotFound(SnapshotId id) {
  return absl::NotFoundError(absl::StrFormat("no snapshot with id %d", id.value));
}

void PoolImpl::PostError(const StatusDone& done, absl::Status st) {
  loop_->Post([done, st] { done(st); });
}

void PoolImpl::CreateSnapshot(VsdId vsd, std::string name, Done<SnapshotId> done) {
  CreateGroupSnapshot({vsd}, std::move(name), [done](absl::StatusOr<std::vector<SnapshotId>> r) {
    if (!r.ok()) return done(r.status());
    done(r->front());
  });
}

void PoolImpl::CreateGroupSnapshot(std::vector<VsdId> vsds, std::string name,
                         Done<std::vector<SnapshotId>> done) {
  if (vsds.empty()) {
    return loop_->Post([done] { done(absl::InvalidArgumentError("no VSDs to snapshot")); });
  }
  for (VsdId id : vsds) {
    if (!FindVsdState(id)) return loop_->Post([done, id] { done(NotFound(id)); });
  }
  if (name.size() > 255) {
    return loop_->Post([done] { done(absl::InvalidArgumentError("snapshot name too long")); });
  }
  // All pins happen in this one turn of the loop: one instant for every VSD.
  std::vector<SnapshotId> ids;
  for (VsdId id : vsds) {
    const SnapshotId sid{next_snapshot_++};
    Encoder e;
    e.U8(kRecSnapshot);
    e.U64(sid.value);
    e.U64(id.value);
    e.Str(name);
    e.U64(sequence_);
    Mutate(e.out());
    ids.push_back(sid);
  }
  Commit([done, ids](absl::Status st) {
    if (!st.ok()) return done(st);
    done(ids);
  });
}

void PoolImpl::DeleteSnapshot(SnapshotId snapshot, StatusDone done) {
  if (!FindSnapshot(snapshot)) return PostError(done, NotFound(snapshot));
  Encoder e;
  e.U8(kRecDeleteSnapshot);
  e.U64(snapshot.value);
  Mutate(e.out());
  Commit(done);
}

std::vector<SnapshotInfo> PoolImpl::ListSnapshots(VsdId vsd) const {
  std::vector<SnapshotInfo> out;
  const VsdState* v = FindVsdState(vsd);
  if (!v) return out;
  for (SnapshotId id : v->snapshots) {
    const SnapshotState& s = *snapshots_.at(id);
    SnapshotInfo info;
    info.id = s.id;
    info.vsd = s.vsd;
    info.name = s.name;
    info.generation = s.generation;
    info.unique_bytes =
        s.map.ComputeUsage([this](const MapEntry& e) { return RefCount(e); }).unique * kBlockBytes;
    out.push_back(info);
  }
  return out;
}

void PoolImpl::CloneFromSnapshot(SnapshotId snapshot, std::string name, Done<VsdId> done) {
  if (!FindSnapshot(snapshot)) return loop_->Post([done, snapshot] { done(NotFound(snapshot)); });
  Clone(true, snapshot.value, std::move(name), std::move(done));
}

void PoolImpl::CloneVsd(VsdId vsd, std::string name, Done<VsdId> done) {
  if (!FindVsdState(vsd)) return loop_->Post([done, vsd] { done(NotFound(vsd)); });
  Clone(false, vsd.value, std::move(name), std::move(done));
}

void PoolImpl::Clone(bool from_snapshot, uint64_t source, std::string name, Done<VsdId> done) {
  absl::Status st = ValidateName(name);
  if (!st.ok()) return loop_->Post([done, st] { done(st); });
  const VsdId id{next_vsd_++};
  Encoder e;
  e.U8(kRecClone);
  e.U64(id.value);
  e.Str(name);
  e.U8(from_snapshot ? 1 : 0);
  e.U64(source);
  Mutate(e.out());
  Commit([done, id](absl::Status st) {
    if (!st.ok()) return done(st);
    done(id);
  });
}

void PoolImpl::RevertToSnapshot(VsdId vsd, SnapshotId snapshot, StatusDone done) {
  if (!FindVsdState(vsd)) return PostError(done, NotFound(vsd));
  SnapshotState* s = FindSnapshot(snapshot);
  if (!s) return PostError(done, NotFound(snapshot));
  if (s->vsd != vsd) {
    return PostError(done, absl::InvalidArgumentError("the snapshot belongs to another VSD"));
  }
  Encoder e;
  e.U8(kRecRevert);
  e.U64(vsd.value);
  e.U64(snapshot.value);
  Mutate(e.out());
  Commit(done);
}

void PoolImpl::Diff(SnapshotId from, SnapshotId to, Done<std::vector<Extent>> done) {
  // The leaves the comparison reaches: where the logs say blocks changed, or all.
  std::vector<std::shared_ptr<BlockMap::Node>> leaves;
  const SnapshotState* a = from.valid() ? FindSnapshot(from) : nullptr;
  const SnapshotState* b = FindSnapshot(to);
  if (b != nullptr && (a != nullptr || !from.valid())) {
    std::optional<std::vector<BlockMap::Range>> ranges;
    if (a != nullptr) ranges = ChangedRanges(*a, *b);
    const std::vector<BlockMap::Range>* r = ranges ? &*ranges : nullptr;
    if (a != nullptr) a->map.CollectLeaves(r, &leaves);
    b->map.CollectLeaves(r, &leaves);
  }
  auto alive = alive_;
  // Snapshots' maps never change, so these are the leaves DiffNow reaches.
  LoadLeaves(std::move(leaves), [this, alive, from, to, done](absl::Status st) {
    if (!*alive) return;
    absl::StatusOr<std::vector<Extent>> r = st.ok() ? DiffNow(from, to) : st;
    loop_->Post([done, r = std::move(r)]() mutable { done(std::move(r)); });
  });
}

absl::StatusOr<std::vector<Extent>> PoolImpl::DiffNow(SnapshotId from, SnapshotId to) const {
  auto it_to = snapshots_.find(to);
  if (it_to == snapshots_.end()) return NotFound(to);
  static const BlockMap kEmpty;
  const BlockMap* a = &kEmpty;
  std::optional<std::vector<BlockMap::Range>> ranges;
  if (from.valid()) {
    auto it_from = snapshots_.find(from);
    if (it_from == snapshots_.end()) return NotFound(from);
    a = &it_from->second->map;
    ranges = ChangedRanges(*it_from->second, *it_to->second);
  }
  const BlockMap& b = it_to->second->map;
  std::vector<Extent> out;
  auto emit = [&](uint64_t lba) {
    const uint64_t off = lba * kBlockBytes;
    if (!out.empty() && out.back().offset_bytes + out.back().length_bytes == off) {
      out.back().length_bytes += kBlockBytes;
    } else {
      out.push_back(Extent{off, kBlockBytes});
    }
  };
  if (ranges) {
    // Only the logged blocks can differ; compare the maps there.
    ++diffs_from_change_logs_;
    out.reserve(ranges->size());  // usually one extent per logged one
    BlockMap::DiffRanges(*a, b, *ranges, emit);
  } else if (a == &kEmpty) {
    ++diffs_walked_;
    b.ForEachMapped([&](uint64_t lba, const MapEntry&) { emit(lba); });
  } else {
    ++diffs_walked_;
    BlockMap::Diff(*a, b, emit);
  }
  return out;
}

}  // namespace scribe
