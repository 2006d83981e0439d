// Fsck: every metadata invariant, checked against the maps.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

void PoolImpl::Fsck(Done<FsckReport> done) {
  ++fsck_running_;  // background deletes pause: the trees stay as counted
  FsckWhenLoaded(std::move(done));
}

void PoolImpl::FsckWhenLoaded(Done<FsckReport> done) {
  auto alive = alive_;
  if (dropping_leaves_ || !dropped_leaves_.empty()) {
    loop_->RunAfter(1'000'000, [this, alive, done] {
      if (*alive) FsckWhenLoaded(done);
    });
    return;
  }
  // Every chunk record and state (kept in memory while fsck runs), then every leaf.
  std::vector<uint64_t> groups;
  for (uint64_t g : AllGroups()) groups.push_back(g * kChunksPerGroup);
  LoadGroups(groups, [this, alive, done](absl::Status st) {
    if (!*alive) return;
    if (!st.ok()) {
      --fsck_running_;
      ScheduleReap();
      ScheduleTrim();
      return loop_->Post([done, st] { done(st); });
    }
    std::vector<uint64_t> ids;
    for (const auto& [id, c] : chunks_) {
      if (!c.blocks) ids.push_back(id);
    }
    LoadChunks(std::move(ids), [this, alive, done](absl::Status st) {
    if (!*alive) return;
    auto finish = [this, done](absl::StatusOr<FsckReport> r) {
      --fsck_running_;
      ScheduleReap();
      ScheduleTrim();
      loop_->Post([done, r = std::move(r)]() mutable { done(std::move(r)); });
    };
    if (!st.ok()) return finish(st);
    LoadLeaves(AllLeaves(), [this, alive, done, finish](absl::Status st) {
      if (!*alive) return;
      bool all = true;
      for (const auto& [id, c] : chunks_) all = all && c.blocks != nullptr;
      for (const auto& [g, gs] : groups_) all = all && gs.resident;
      if (st.ok() && (dropping_leaves_ || !dropped_leaves_.empty() || !all)) {
        return FsckWhenLoaded(done);  // something changed meanwhile: look again
      }
      finish(st.ok() ? absl::StatusOr<FsckReport>(FsckNow()) : st);
    });
  });
  });
}

FsckReport PoolImpl::FsckNow() const {
  FsckReport report;
  std::map<std::pair<uint64_t, uint32_t>, uint32_t> expected;
  std::set<const BlockMap::Node*> seen;
  // Each metadata page in use is named once: by a node, a chunk group or a change log.
  auto expect_page = [&](const MapEntry& p, const char* what) {
    expected[{p.chunk, p.block}]++;
    auto it = chunks_.find(p.chunk);
    if (it == chunks_.end() || !it->second.meta) {
      report.errors.push_back(absl::StrFormat("a %s's %s is not in a metadata chunk", what, DescribePointer(p)));
    } else if (it->second.blocks->crc[p.block] != p.crc) {
      report.errors.push_back(absl::StrFormat("checksum of %s disagrees with its chunk", DescribePointer(p)));
    }
  };
  // `detached`: only trees being deleted reach it. Those may name chunks that a journal
  // replayed at open freed, and blocks reused since with other data (see FinishRecover):
  // such entries are not counted.
  std::function<void(const BlockMap::Node*, bool)> visit = [&](const BlockMap::Node* n, bool detached) {
    if (n == nullptr || !seen.insert(n).second) return;
    if (n->page.mapped()) expect_page(n->page, "tree node");
    if (n->level == 0) {
      uint32_t mapped = 0;
      SCRIBE_CHECK(n->entries != nullptr);
      for (const MapEntry& e : *n->entries) {
        if (!e.mapped()) continue;
        ++mapped;
        auto it = chunks_.find(e.chunk);
        if (detached && it == chunks_.end()) continue;
        expected[{e.chunk, e.block}]++;
        if (detached) continue;
        if (it == chunks_.end()) {
          report.errors.push_back(absl::StrFormat("a map names missing chunk %d", e.chunk));
        } else if (it->second.meta) {
          report.errors.push_back(absl::StrFormat("a map names block %d of metadata chunk %d", e.block, e.chunk));
        } else if (e.block >= kBlocksPerChunk) {
          report.errors.push_back(absl::StrFormat("a map names block %d of chunk %d", e.block, e.chunk));
        } else if (it->second.blocks->crc[e.block] != e.crc) {
          report.errors.push_back(absl::StrFormat("checksum of chunk %d block %d disagrees with its map", e.chunk, e.block));
        }
      }
      if (mapped != n->mapped) report.errors.push_back("a leaf's mapped count is wrong");
      return;
    }
    for (const auto& c : n->children) visit(c.get(), detached);
  };
  for (const auto& [id, v] : vsds_) {
    visit(v->map.root().get(), false);
    for (const MapEntry& p : v->log_pages) expect_page(p, "change log");
  }
  for (const auto& [id, s] : snapshots_) {
    visit(s->map.root().get(), false);
    for (const MapEntry& p : s->log_pages) expect_page(p, "change log");
  }
  for (const auto& [g, gs] : groups_) expect_page(gs.page, "chunk group");
  for (const auto& [id, c] : chunks_) {
    if (c.page.mapped()) expect_page(c.page, "chunk state");
  }
  for (const auto& n : doomed_) visit(n.get(), true);  // detached, not yet freed
  size_t meta_chunks = 0;
  for (const auto& [id, c] : chunks_) meta_chunks += c.meta ? 1 : 0;
  if (meta_chunks != meta_chunks_.size()) {
    report.errors.push_back(absl::StrFormat("%d metadata chunks, %d listed", meta_chunks, meta_chunks_.size()));
  }
  report.blocks_referenced = expected.size();
  report.chunks = chunks_.size();
  if (chunk_index_.size() != chunks_.size()) {
    report.errors.push_back(absl::StrFormat("the chunk index has %d entries for %d chunks",
                                            chunk_index_.size(), chunks_.size()));
  }
  std::map<std::pair<DiskId, uint64_t>, uint64_t> slot_users;
  for (const auto& [id, c] : chunks_) {
    if (FindChunk(id) != &c) report.errors.push_back(absl::StrFormat("chunk %d is not indexed", id));
    if (c.meta && c.page.mapped()) report.errors.push_back(absl::StrFormat("metadata chunk %d has a state page", id));
    if (!c.meta && !c.page.mapped() && !c.dirty) {
      report.errors.push_back(absl::StrFormat("chunk %d has neither a state page nor changes to write", id));
    }
    uint32_t used = 0;
    for (uint32_t b = 0; b < kBlocksPerChunk; ++b) {
      auto it = expected.find({id, b});
      const uint32_t want = it == expected.end() ? 0 : it->second;
      if (c.blocks->refs[b] != want) {
        report.errors.push_back(absl::StrFormat("chunk %d block %d has %d references, maps hold %d",
                                                id, b, c.blocks->refs[b], want));
      }
      if (c.blocks->refs[b] > 0 || c.busy[b]) ++used;
    }
    if (used != c.used) report.errors.push_back(absl::StrFormat("chunk %d used count is wrong", id));
    std::set<NodeId> nodes;
    for (const Replica& r : c.replicas) {
      auto dit = disks_.find(r.disk);
      if (dit == disks_.end()) {
        report.errors.push_back(absl::StrFormat("chunk %d has a copy on unknown disk %d", id, r.disk.value));
        continue;
      }
      if (!nodes.insert(dit->second.node).second) {
        report.errors.push_back(absl::StrFormat("chunk %d has two copies on node %d", id, dit->second.node.value));
      }
      if (r.slot >= dit->second.slots || dit->second.slot_owner[r.slot] != id) {
        report.errors.push_back(absl::StrFormat("chunk %d's slot %d on disk %d is not recorded as its own",
                                                id, r.slot, r.disk.value));
      }
      if (!slot_users.emplace(std::make_pair(r.disk, r.slot), id).second) {
        report.errors.push_back(absl::StrFormat("slot %d of disk %d is used twice", r.slot, r.disk.value));
      }
    }
    if (used == 0 && !c.open && !c.rebuilding && c.writes_in_flight == 0) {
      report.errors.push_back(absl::StrFormat("chunk %d is empty but not freed (leak)", id));
    }
  }
  for (const auto& [id, d] : disks_) {
    uint64_t owned = 0;
    for (uint64_t s = 0; s < d.slots; ++s) {
      if (d.slot_owner[s] == 0) continue;
      ++owned;
      auto cit = chunks_.find(d.slot_owner[s]);
      bool listed = false;
      if (cit != chunks_.end()) {
        for (const Replica& r : cit->second.replicas) listed = listed || (r.disk == id && r.slot == s);
        listed = listed || cit->second.rebuilding;
      }
      if (!listed) report.errors.push_back(absl::StrFormat("disk %d slot %d is held by no chunk (leak)", id.value, s));
    }
    if (owned != d.used_slots) report.errors.push_back(absl::StrFormat("disk %d used-slot count is wrong", id.value));
  }
  return report;
}

}  // namespace scribe
