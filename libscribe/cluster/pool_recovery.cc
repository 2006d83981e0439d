// Opening a pool: the newest valid root, the pages it names, the journal tail.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

auto PoolImpl::ParseHalf(const uint8_t* p, uint64_t bytes) const -> Candidate {
  Candidate c;
  uint64_t pos = 0;
  bool complete = false;
  uint64_t epoch = 0, seq = 0;
  while (pos + kBatchHeaderBytes <= bytes) {
    Decoder h(reinterpret_cast<const char*>(p + pos), kBatchHeaderBytes);
    if (h.U32() != kBatchMagic) break;
    const uint32_t hcrc = h.U32();
    if (hcrc != Crc32c(p + pos + 8, kBatchHeaderBytes - 8)) break;
    const uint64_t e = h.U64();
    const uint64_t s = h.U64();
    const uint32_t len = h.U32();
    const uint32_t pcrc = h.U32();
    const uint32_t flags = h.U32();
    if (pos == 0) {
      if (!(flags & kFlagCheckpointBegin)) break;
      epoch = e;
    } else if (e != epoch || s != seq + 1) {
      break;
    }
    if (pos + kBatchHeaderBytes + len > bytes) break;
    if (Crc32c(p + pos + kBatchHeaderBytes, len) != pcrc) break;
    seq = s;
    c.payloads.emplace_back(reinterpret_cast<const char*>(p + pos + kBatchHeaderBytes), len);
    if (flags & kFlagCheckpointEnd) {
      complete = true;
      c.root_payloads = c.payloads.size();
    }
    pos += RoundUp(kBatchHeaderBytes + len, kBlockBytes);
  }
  if (!complete) return Candidate{};
  c.epoch = epoch;
  c.last_seq = seq;
  return c;
}

void PoolImpl::Recover(std::vector<DiskSpec> disks, Done<std::unique_ptr<Pool>> done,
             std::unique_ptr<Pool> self) {
  auto holder = std::make_shared<std::unique_ptr<Pool>>(std::move(self));
  const uint64_t region = kSuperblockBytes + 2 * half_bytes_;
  auto bufs = std::make_shared<std::vector<AlignedBuffer>>();
  for (size_t i = 0; i < disks.size(); ++i) bufs->emplace_back(region);
  auto statuses = std::make_shared<std::vector<absl::Status>>(disks.size());
  auto alive = alive_;
  auto g = MakeGather(static_cast<int>(disks.size()) + 1, [=, this](absl::Status) {
    if (!*alive) return;
    // Superblocks say which disk is which; the best journal wins.
    auto devs = std::make_shared<std::map<DiskId, BlockDevice*>>();
    Candidate best;
    uint64_t uuid = 0;
    std::vector<std::string> why;  // per disk, when no journal is found
    for (size_t i = 0; i < disks.size(); ++i) {
      Superblock sb;
      if (!(*statuses)[i].ok()) {
        why.push_back(absl::StrFormat("disk %d: %s", i, (*statuses)[i].message()));
        continue;
      }
      uint32_t magic;
      std::memcpy(&magic, (*bufs)[i].data(), 4);
      // Older formats: refused with what they were (there is no upgrade).
      static constexpr struct {
        uint32_t magic;
        int format;
        const char* what;
      } kOldFormats[] = {
          {kSuperMagicV1, 1, "metadata kept whole in the journal"},
          {kSuperMagicV2, 2, "block references recounted from every map leaf at open"},
      };
      for (const auto& old : kOldFormats) {
        if (magic != old.magic) continue;
        return done(absl::FailedPreconditionError(absl::StrFormat(
            "disk %d holds a pool in on-disk format %d (%s), which this version cannot open; "
            "format 3 keeps metadata in pages with stored block references, and there is no "
            "upgrade: reformat the disks",
            i, old.format, old.what)));
      }
      if (!DecodeSuperblock((*bufs)[i].data(), &sb)) {
        why.push_back(absl::StrFormat("disk %d: no pool superblock", i));
        continue;
      }
      if (sb.metadata_bytes != options_.metadata_bytes) {
        why.push_back(absl::StrFormat("disk %d: formatted with a %d-byte metadata region, not %d", i,
                                      sb.metadata_bytes, options_.metadata_bytes));
        continue;
      }
      if (uuid == 0) uuid = sb.pool_uuid;
      if (sb.pool_uuid != uuid) continue;
      (*devs)[sb.disk] = disks[i].device;
      bool any = false;
      for (int half = 0; half < 2; ++half) {
        Candidate c = ParseHalf((*bufs)[i].data() + kSuperblockBytes + half * half_bytes_, half_bytes_);
        any = any || c.epoch != 0;
        if (c.epoch > best.epoch || (c.epoch == best.epoch && c.last_seq > best.last_seq)) {
          best = std::move(c);
        }
      }
      if (!any) why.push_back(absl::StrFormat("disk %d (pool disk %d): no complete checkpoint in either journal half", i, sb.disk.value));
    }
    if (best.epoch == 0) {
      return done(absl::DataLossError(absl::StrCat("no disk holds a valid pool metadata journal (",
                                                   absl::StrJoin(why, "; "), ")")));
    }
    pool_uuid_ = uuid;
    replaying_ = true;
    for (size_t i = 0; i < best.root_payloads; ++i) {
      Decoder d(best.payloads[i].data(), best.payloads[i].size());
      while (!d.done() && d.ok()) Apply(d);
      if (!d.ok()) {
        replaying_ = false;
        return done(absl::DataLossError("metadata checkpoint root record is malformed"));
      }
    }
    for (auto& [id, d] : disks_) {
      auto it = devs->find(id);
      d.dev = it == devs->end() ? nullptr : it->second;
    }
    auto journal = std::make_shared<Candidate>(std::move(best));
    // The pages the root names, then the journal after it.
    LoadPages([=, this](absl::Status st) {
      if (!*alive) return;
      if (!st.ok()) {
        replaying_ = false;
        return done(absl::DataLossError(absl::StrCat("opening the pool: ", st.message())));
      }
      FinishRecover(*journal, *devs, holder, done);
    });
  });
  for (size_t i = 0; i < disks.size(); ++i) {
    if (disks[i].device == nullptr || disks[i].device->size_bytes() < region) {
      (*statuses)[i] = absl::InvalidArgumentError("disk too small");
      g->Finish(absl::OkStatus());
      continue;
    }
    disks[i].device->Read(0, region, (*bufs)[i].data(), Timed([g, statuses, i, bufs](absl::Status st) {
      (*statuses)[i] = st;
      g->Finish(absl::OkStatus());
    }));
  }
  g->Finish(absl::OkStatus());
}

void PoolImpl::FinishRecover(const Candidate& best, const std::map<DiskId, BlockDevice*>& devs,
                   std::shared_ptr<std::unique_ptr<Pool>> holder, Done<std::unique_ptr<Pool>> done) {
  // The deletes the root names as unfinished go first, at once: the run that wrote the
  // journal tail went on with them, and its records (a chunk freed once they had
  // emptied it, a freed block reused) follow from their references being gone.
  while (!doomed_.empty()) ReapSome(SIZE_MAX);
  for (size_t i = best.root_payloads; i < best.payloads.size(); ++i) {
    Decoder d(best.payloads[i].data(), best.payloads[i].size());
    while (!d.done() && d.ok()) Apply(d);
    if (!d.ok()) {
      replaying_ = false;
      return done(absl::DataLossError("metadata journal record is malformed"));
    }
  }
  replaying_ = false;
  pending_records_.clear();
  epoch_ = best.epoch;
  sequence_ = best.last_seq;
  for (auto& [id, d] : disks_) {
    auto it = devs.find(id);
    d.dev = it == devs.end() ? nullptr : it->second;
  }
  // A node none of whose disks answered is down (AttachDevice + SetNodeOnline bring
  // it back, EvictNode gives it up); a missing disk of a present node has failed.
  std::set<NodeId> present;
  for (const auto& [id, d] : disks_) {
    if (d.dev != nullptr) present.insert(d.node);
  }
  std::vector<DiskId> missing;
  for (const auto& [id, d] : disks_) {
    if (d.dev != nullptr || d.failed) continue;
    if (present.count(d.node)) {
      missing.push_back(id);
    } else {
      nodes_online_[d.node] = false;
    }
  }
  // Blocks freed by replayed records are free now: their freeing is durable.
  auto frees = std::move(pending_frees_);
  pending_frees_.clear();
  ReleaseFrees(std::move(frees));
  // Chunks allocated for writes that never completed before the crash hold nothing,
  // and metadata chunks whose pages all belonged to older checkpoints hold nothing.
  std::vector<uint64_t> ids;
  for (const auto& [id, c] : chunks_) ids.push_back(id);
  for (uint64_t id : ids) {
    if (ChunkState* c = FindChunk(id)) MaybeFreeChunk(c);
  }
  reuse_candidates_.clear();
  for (const auto& [id, c] : chunks_) NoteMaybeReusable(&c);
  pending_records_.clear();
  for (DiskId id : missing) FailDiskNow(id, false);
  need_checkpoint_ = true;  // start a fresh epoch on the current mirrors
  ChooseMirrors();
  Heal();
  Commit([holder, done](absl::Status st) {
    if (!st.ok()) return done(st);
    done(std::move(*holder));
  });
}

void PoolImpl::LoadPages(StatusDone done) {
  std::vector<MapEntry> groups;
  std::vector<uint64_t> group_ids;
  for (const auto& [g, p] : group_pages_) {
    groups.push_back(p);
    group_ids.push_back(g);
  }
  auto alive = alive_;
  ReadPages(groups, [this, group_ids, groups](size_t i, const uint8_t* page) -> absl::Status {
    absl::StatusOr<std::vector<ChunkRecord>> records = DecodeChunkGroupPage(page, groups[i], pool_uuid_);
    if (!records.ok()) return records.status();
    RETURN_IF_ERROR(ClaimPage(groups[i]));
    for (ChunkRecord& r : *records) {
      if (r.id / kChunksPerGroup != group_ids[i] || FindChunk(r.id) != nullptr) {
        return absl::DataLossError(absl::StrFormat("%s: chunk %d does not belong there",
                                                   DescribePointer(groups[i]), r.id));
      }
      if (!r.state.mapped()) {
        return absl::DataLossError(absl::StrFormat("%s: chunk %d has no state page",
                                                   DescribePointer(groups[i]), r.id));
      }
      RETURN_IF_ERROR(ClaimPage(r.state));
      ChunkState c;
      c.id = r.id;
      c.replication = r.replication;
      c.replicas = std::move(r.replicas);
      c.page = r.state;  // its blocks are read when needed
      c.used = r.used;
      InsertChunk(std::move(c));
    }
    return absl::OkStatus();
  }, [this, alive, done](absl::Status st) {
    if (!*alive) return;
    if (!st.ok()) return done(st);
    dirty_groups_.clear();  // as loaded
    for (const MapEntry& p : load_dropped_) {
      absl::Status claimed = ClaimPage(p);
      if (!claimed.ok()) return done(claimed);
    }
    auto nodes = std::make_shared<std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>>();
    auto pending = std::make_shared<std::vector<std::shared_ptr<BlockMap::Node>>>();
    absl::Status roots = LoadRoots(nodes.get(), pending.get());
    if (!roots.ok()) return done(roots);
    LoadNodes(nodes, pending, [this, alive, nodes, done](absl::Status st) {
      if (!*alive) return;
      if (st.ok()) st = ClaimLoadedNodes(*nodes);
      if (!st.ok()) {
        // A failed open: the loaded nodes reference nothing (their blocks and pages were
        // never counted), so destroying them with the pool must not unreference.
        for (auto& [key, n] : *nodes) {
          if (n->entries) n->entries->fill(MapEntry{});
          n->mapped = 0;
          n->page = MapEntry{};
        }
      }
      nodes->clear();  // only the maps hold nodes now, so sharing counts are exact
      if (!st.ok()) return done(st);
      LoadLogs([this, alive, done](absl::Status st) {
        if (!*alive) return;
        if (!st.ok()) return done(st);
        DropLoadedLeaves(done);
      });
    });
  });
}

void PoolImpl::DropLoadedLeaves(StatusDone done) {
  auto pages = std::make_shared<std::vector<MapEntry>>(std::move(load_dropped_));
  load_dropped_.clear();
  auto alive = alive_;
  ReadPages(*pages, [this, pages](size_t i, const uint8_t* page) -> absl::Status {
    return UnrefLeafPage(page, (*pages)[i]);
  }, [this, alive, pages, done](absl::Status st) {
    if (!*alive) return;
    if (!st.ok()) return done(st);
    for (const MapEntry& p : *pages) DropPage(p);
    done(absl::OkStatus());
  });
}

absl::StatusOr<std::shared_ptr<BlockMap::Node>> PoolImpl::LoadedNode(
    std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>* nodes,
    std::vector<std::shared_ptr<BlockMap::Node>>* pending, const MapEntry& p, int level) {
  auto& n = (*nodes)[{p.chunk, p.block}];
  if (n) {
    if (n->level != level || n->page.crc != p.crc) {
      return absl::DataLossError(absl::StrCat(DescribePointer(p), ": named at two levels or checksums"));
    }
    return n;
  }
  n = std::make_shared<BlockMap::Node>(level, refs_);
  n->page = p;
  pending->push_back(n);
  return n;
}

absl::Status PoolImpl::LoadRoots(std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>* nodes,
                       std::vector<std::shared_ptr<BlockMap::Node>>* pending) {
  for (const LoadRoot& r : load_roots_) {
    BlockMap* map = nullptr;
    if (r.of_snapshot) {
      if (SnapshotState* s = FindSnapshot(SnapshotId{r.owner})) map = &s->map;
    } else if (VsdState* v = FindVsdState(VsdId{r.owner})) {
      map = &v->map;
    }
    if (map == nullptr) continue;
    if (r.levels < map->levels() || r.levels > 8) {
      return absl::DataLossError(absl::StrFormat("the root of %s %d has %d levels for %d blocks",
                                                 r.of_snapshot ? "snapshot" : "VSD", r.owner,
                                                 r.levels, map->capacity_blocks()));
    }
    std::shared_ptr<BlockMap::Node> root;
    if (r.root.mapped()) {
      ASSIGN_OR_RETURN(root, LoadedNode(nodes, pending, r.root, r.levels - 1));
    }
    *map = BlockMap::FromRoot(refs_, map->capacity_blocks(), r.levels, std::move(root));
  }
  load_roots_.clear();
  for (const auto& [level, p] : load_doomed_) {
    if (!p.mapped() || level < 0 || level > 8) {
      return absl::DataLossError(absl::StrFormat("a tree being deleted has a %s at level %d",
                                                 DescribePointer(p), level));
    }
    std::shared_ptr<BlockMap::Node> n;
    ASSIGN_OR_RETURN(n, LoadedNode(nodes, pending, p, level));
    doomed_.push_back(std::move(n));
  }
  load_doomed_.clear();
  return absl::OkStatus();
}

void PoolImpl::LoadNodes(std::shared_ptr<std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>> nodes,
               std::shared_ptr<std::vector<std::shared_ptr<BlockMap::Node>>> pending, StatusDone done) {
  if (pending->empty()) return done(absl::OkStatus());
  auto batch = std::make_shared<std::vector<std::shared_ptr<BlockMap::Node>>>(std::move(*pending));
  pending->clear();
  std::vector<MapEntry> pages;
  for (const auto& n : *batch) pages.push_back(n->page);
  auto alive = alive_;
  ReadPages(pages, [this, nodes, pending, batch](size_t i, const uint8_t* page) -> absl::Status {
    BlockMap::Node* n = (*batch)[i].get();
    std::vector<std::pair<uint32_t, MapEntry>> children;
    RETURN_IF_ERROR(DecodeNodePage(page, n->page, pool_uuid_, n, &children));
    for (const auto& [idx, p] : children) {
      ASSIGN_OR_RETURN(n->children[idx], LoadedNode(nodes.get(), pending.get(), p, n->level - 1));
    }
    return absl::OkStatus();
  }, [this, alive, nodes, pending, batch, done](absl::Status st) {
    // No reference may outlive the load: sharing counts must be exact when the journal
    // is replayed (a replayed delete frees a tree at once).
    batch->clear();
    if (!*alive) return;
    if (!st.ok()) return done(st);
    LoadNodes(nodes, pending, done);
  });
}

absl::Status PoolImpl::ClaimLoadedNodes(
    const std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>& nodes) {
  for (const auto& [key, n] : nodes) {
    RETURN_IF_ERROR(ClaimPage(n->page));
    if (n->level != 0) continue;
    for (const MapEntry& e : *n->entries) {
      if (!e.mapped()) continue;
      ChunkState* c = FindChunk(e.chunk);
      if (c == nullptr || c->meta || e.block >= kBlocksPerChunk) {
        return absl::DataLossError(absl::StrFormat("%s: names block %d of chunk %d, which holds no data",
                                                   DescribePointer(n->page), e.block, e.chunk));
      }
      // Its reference is counted in the chunk's state page.
    }
  }
  dirty_nodes_ = 0;
  return absl::OkStatus();
}

void PoolImpl::LoadLogs(StatusDone done) {
  struct Owner {
    ChangeLog* log;
    uint64_t capacity;
  };
  auto owners = std::make_shared<std::vector<Owner>>();
  std::vector<MapEntry> pages;
  for (LoadLog& l : load_logs_) {
    SnapshotId* base = nullptr;
    ChangeLog* log = nullptr;
    std::vector<MapEntry>* log_pages = nullptr;
    uint64_t capacity = 0;
    if (l.of_snapshot) {
      if (SnapshotState* s = FindSnapshot(SnapshotId{l.owner})) {
        base = &s->base;
        log = &s->changes;
        log_pages = &s->log_pages;
        capacity = s->map.capacity_blocks();
      }
    } else if (VsdState* v = FindVsdState(VsdId{l.owner})) {
      base = &v->base;
      log = &v->changes;
      log_pages = &v->log_pages;
      capacity = v->map.capacity_blocks();
    }
    if (log == nullptr) continue;
    *base = l.base;
    log->Reset();
    if (!l.known) log->MarkUnknown();
    *log_pages = l.pages;
    for (const MapEntry& p : l.pages) {
      pages.push_back(p);
      owners->push_back(Owner{log, capacity});
    }
  }
  load_logs_.clear();
  auto alive = alive_;
  ReadPages(pages, [this, owners, pages](size_t i, const uint8_t* page) -> absl::Status {
    auto extents = DecodeChangeLogPage(page, pages[i], pool_uuid_);
    if (!extents.ok()) return extents.status();
    RETURN_IF_ERROR(ClaimPage(pages[i]));
    const Owner& o = (*owners)[i];
    for (auto [b, e] : *extents) o.log->Add(b, e, ChangeLogExtentsMax(o.capacity));
    return absl::OkStatus();
  }, [this, alive, done](absl::Status st) {
    if (!*alive) return;
    if (!st.ok()) return done(st);
    // Logs as loaded are as written; with logs now disabled they are dropped.
    auto settle = [this](SnapshotId* base, ChangeLog* log, uint64_t* written) {
      if (!ChangeLogsEnabled()) {
        *base = SnapshotId{};
        log->Reset();
        return;
      }
      *written = log->version();
    };
    for (auto& [id, v] : vsds_) settle(&v->base, &v->changes, &v->log_version_written);
    for (auto& [id, s] : snapshots_) settle(&s->base, &s->changes, &s->log_version_written);
    done(absl::OkStatus());
  });
}

}  // namespace scribe
