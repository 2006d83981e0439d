// Opening a pool: the newest valid root, the pages it names, the journal tail.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

auto PoolImpl::ParseHalf(const uint8_t* p, uint64_t bytes, bool* truncated) const -> Candidate {
  Candidate c;
  uint64_t pos = 0;
  bool complete = false;
  uint64_t epoch = 0, seq = 0;
  *truncated = false;
  while (true) {
    if (pos + kBatchHeaderBytes > bytes) {
      *truncated = true;
      break;
    }
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
    if (pos + kBatchHeaderBytes + len > bytes) {
      *truncated = true;
      break;
    }
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

void PoolImpl::ReadHalf(BlockDevice* dev, int half, std::shared_ptr<AlignedBuffer> have,
                        uint64_t have_bytes, uint64_t bytes,
                        std::function<void(absl::Status, Candidate)> done) {
  // What was read already is kept; only the rest is read.
  auto buf = std::make_shared<AlignedBuffer>(bytes);
  if (have_bytes > 0) std::memcpy(buf->data(), have->data(), have_bytes);
  auto alive = alive_;
  dev->Read(kSuperblockBytes + half * half_bytes_ + have_bytes, bytes - have_bytes,
            buf->data() + have_bytes,
            Timed([this, alive, dev, half, have_bytes, bytes, buf, done](absl::Status st) {
              if (!*alive) return;
              if (!st.ok()) return done(st, Candidate{});
              open_journal_bytes_read_ += bytes - have_bytes;
              bool truncated = false;
              Candidate c = ParseHalf(buf->data(), bytes, &truncated);
              if (truncated && bytes < half_bytes_) {
                return ReadHalf(dev, half, buf, bytes, std::min(bytes * 2, half_bytes_), done);
              }
              done(absl::OkStatus(), std::move(c));
            }));
}

void PoolImpl::Recover(std::vector<DiskSpec> disks, Done<std::unique_ptr<Pool>> done,
             std::unique_ptr<Pool> self) {
  auto holder = std::make_shared<std::unique_ptr<Pool>>(std::move(self));
  const uint64_t region = kSuperblockBytes + 2 * half_bytes_;
  // Per disk: its superblock, then each journal half as far as its batches go.
  struct DiskRead {
    absl::Status status;
    AlignedBuffer superblock{kSuperblockBytes};
    Superblock sb;
    bool ours = false;
    Candidate halves[2];
  };
  auto reads = std::make_shared<std::vector<DiskRead>>(disks.size());
  auto alive = alive_;
  auto choose = [=, this]() {
    // The best journal wins.
    auto devs = std::make_shared<std::map<DiskId, BlockDevice*>>();
    Candidate best;
    uint64_t uuid = 0;
    std::vector<std::string> why;  // per disk, when no journal is found
    for (size_t i = 0; i < disks.size(); ++i) {
      DiskRead& r = (*reads)[i];
      if (!r.ours) continue;
      if (!r.status.ok()) {
        why.push_back(absl::StrFormat("disk %d: %s", i, r.status.message()));
        continue;
      }
      if (uuid == 0) uuid = r.sb.pool_uuid;
      (*devs)[r.sb.disk] = disks[i].device;
      bool any = false;
      for (Candidate& c : r.halves) {
        any = any || c.epoch != 0;
        if (c.epoch > best.epoch || (c.epoch == best.epoch && c.last_seq > best.last_seq)) {
          best = std::move(c);
        }
      }
      if (!any) why.push_back(absl::StrFormat("disk %d (pool disk %d): no complete checkpoint in either journal half", i, r.sb.disk.value));
    }
    for (size_t i = 0; i < disks.size(); ++i) {
      const DiskRead& r = (*reads)[i];
      if (!r.ours && !r.status.ok()) why.push_back(absl::StrFormat("disk %d: %s", i, r.status.message()));
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
      FinishRecover(journal, devs, holder, done);
    });
  };
  auto superblocks = MakeGather(static_cast<int>(disks.size()) + 1, [=, this](absl::Status) {
    if (!*alive) return;
    // Superblocks say which disk is which (the first pool seen; older formats refused).
    uint64_t uuid = 0;
    for (size_t i = 0; i < disks.size(); ++i) {
      DiskRead& r = (*reads)[i];
      if (!r.status.ok()) continue;
      uint32_t magic;
      std::memcpy(&magic, r.superblock.data(), 4);
      // Older formats: refused with what they were (there is no upgrade).
      static constexpr struct {
        uint32_t magic;
        int format;
        const char* what;
      } kOldFormats[] = {
          {kSuperMagicV1, 1, "metadata kept whole in the journal"},
          {kSuperMagicV2, 2, "block references recounted from every map leaf at open"},
          {kSuperMagicV3, 3, "every map leaf read at open"},
      };
      for (const auto& old : kOldFormats) {
        if (magic != old.magic) continue;
        return done(absl::FailedPreconditionError(absl::StrFormat(
            "disk %d holds a pool in on-disk format %d (%s), which this version cannot open; "
            "format 4 keeps metadata in pages, opens without reading map leaves, and there is no "
            "upgrade: reformat the disks",
            i, old.format, old.what)));
      }
      if (!DecodeSuperblock(r.superblock.data(), &r.sb)) {
        r.status = absl::DataLossError("no pool superblock");
        continue;
      }
      if (r.sb.metadata_bytes != options_.metadata_bytes) {
        r.status = absl::FailedPreconditionError(absl::StrFormat(
            "formatted with a %d-byte metadata region, not %d", r.sb.metadata_bytes, options_.metadata_bytes));
        continue;
      }
      if (uuid == 0) uuid = r.sb.pool_uuid;
      r.ours = r.sb.pool_uuid == uuid;
    }
    auto halves = MakeGather(1, [=](absl::Status) {
      if (*alive) choose();
    });
    for (size_t i = 0; i < disks.size(); ++i) {
      if (!(*reads)[i].ours) continue;
      for (int half = 0; half < 2; ++half) {
        ++halves->remaining;
        ReadHalf(disks[i].device, half, nullptr, 0, std::min<uint64_t>(kJournalFirstRead, half_bytes_),
                 [reads, i, half, halves](absl::Status st, Candidate c) {
                   DiskRead& r = (*reads)[i];
                   if (!st.ok()) r.status = st;
                   r.halves[half] = std::move(c);
                   halves->Finish(absl::OkStatus());
                 });
      }
    }
    halves->Finish(absl::OkStatus());
  });
  for (size_t i = 0; i < disks.size(); ++i) {
    if (disks[i].device == nullptr || disks[i].device->size_bytes() < region) {
      (*reads)[i].status = absl::InvalidArgumentError("disk too small");
      superblocks->Finish(absl::OkStatus());
      continue;
    }
    disks[i].device->Read(0, kSuperblockBytes, (*reads)[i].superblock.data(),
                          Timed([reads, i, superblocks](absl::Status st) {
                            (*reads)[i].status = st;
                            superblocks->Finish(absl::OkStatus());
                          }));
  }
  superblocks->Finish(absl::OkStatus());
}

void PoolImpl::FinishRecover(std::shared_ptr<Candidate> best,
                             std::shared_ptr<std::map<DiskId, BlockDevice*>> devs,
                             std::shared_ptr<std::unique_ptr<Pool>> holder,
                             Done<std::unique_ptr<Pool>> done) {
  // The journal tail, each record once the leaves it changes are in memory. The deletes
  // the root names as unfinished go on in the background afterwards: their references
  // are still counted, so replayed records see blocks they had freed as still in use
  // (harmless: counts only add up later) and may free chunks those trees still name
  // (their references to them are then ignored; chunk ids are never reused).
  auto replay = std::make_shared<TailReplay>(TailReplay{best, best->root_payloads, 0});
  auto alive = alive_;
  ReplayTail(replay, [this, alive, best, devs, holder, done](absl::Status st) {
    if (!*alive) return;
    replaying_ = false;
    if (!st.ok()) return done(absl::DataLossError(absl::StrCat("opening the pool: ", st.message())));
    FinishOpen(*best, *devs, holder, done);
  });
}

void PoolImpl::ReplayTail(std::shared_ptr<TailReplay> r, StatusDone done) {
  const std::vector<std::string>& payloads = r->journal->payloads;
  for (; r->payload < payloads.size(); ++r->payload, r->offset = 0) {
    const std::string& p = payloads[r->payload];
    while (r->offset < p.size()) {
      Decoder d(p.data() + r->offset, p.size() - r->offset);
      // A record that changes a chunk's record needs its group in memory.
      if (const std::optional<uint64_t> chunk = ChunkOfRecord(d); chunk && !RecordResident(*chunk)) {
        auto alive = alive_;
        LoadGroups({*chunk}, [this, alive, r, done](absl::Status st) {
          if (!*alive) return;
          if (!st.ok()) return done(st);
          ReplayTail(r, done);
        });
        return;
      }
      std::vector<std::shared_ptr<BlockMap::Node>> missing = LeavesToReplay(d);
      if (!missing.empty()) {
        auto alive = alive_;
        LoadLeaves(std::move(missing), [this, alive, r, done](absl::Status st) {
          if (!*alive) return;
          if (!st.ok()) return done(st);
          ReplayTail(r, done);
        });
        return;
      }
      Apply(d);
      if (!d.ok()) return done(absl::DataLossError("metadata journal record is malformed"));
      r->offset = p.size() - d.remaining();
    }
  }
  done(absl::OkStatus());
}

std::optional<uint64_t> PoolImpl::ChunkOfRecord(Decoder d) {
  switch (d.U8()) {
    case kRecAddChunk:
    case kRecFreeChunk:
    case kRecSetReplica:
    case kRecStale:
    case kRecDropReplica: {
      const uint64_t id = d.U64();
      if (d.ok()) return id;
      return std::nullopt;
    }
    default:
      return std::nullopt;
  }
}

std::vector<std::shared_ptr<BlockMap::Node>> PoolImpl::LeavesToReplay(Decoder d) {
  // The next record's leaves; if one is not in memory, also those of the map records
  // right after it (read together). Those in memory too: loading pins them all, so the
  // cache cannot drop one while another is read.
  std::vector<std::shared_ptr<BlockMap::Node>> out;
  bool any_missing = false;
  for (bool first = true; !d.done() && out.size() < kReplayLeavesPerRead; first = false) {
    VsdId vsd;
    uint64_t lba = 0, count = 0;
    if (!SkipMapRecord(d, &vsd, &lba, &count)) break;
    const VsdState* v = FindVsdState(vsd);
    if (v != nullptr && lba < v->map.capacity_blocks() && count > 0) {
      const std::vector<BlockMap::Range> range{{lba, lba + std::min(count, v->map.capacity_blocks() - lba)}};
      std::vector<std::shared_ptr<BlockMap::Node>> leaves;
      v->map.CollectLeaves(&range, &leaves);
      for (auto& n : leaves) {
        if (first && !n->entries) any_missing = true;
        out.push_back(std::move(n));
      }
    }
    if (first && !any_missing) return {};  // it can be applied now
  }
  return out;
}

void PoolImpl::FinishOpen(const Candidate& best, const std::map<DiskId, BlockDevice*>& devs,
                          std::shared_ptr<std::unique_ptr<Pool>> holder,
                          Done<std::unique_ptr<Pool>> done) {
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
  // Unfinished deletes go on.
  for (const MapEntry& p : load_dropped_) EvictedLeafDropped(p);
  load_dropped_.clear();
  ScheduleReap();
  Commit([holder, done](absl::Status st) {
    if (!st.ok()) return done(st);
    done(std::move(*holder));
  });
}

void PoolImpl::LoadPages(StatusDone done) {
  std::vector<MapEntry> groups;
  std::vector<uint64_t> group_ids;
  for (const auto& [g, gs] : groups_) {
    groups.push_back(gs.page);
    group_ids.push_back(g);
  }
  auto alive = alive_;
  // Every group page is read for the slots and pages it claims; only the groups the
  // open needs (an empty chunk to free, a degraded one to heal) keep their records.
  ReadPages(groups, [this, group_ids, groups](size_t i, const uint8_t* page) -> absl::Status {
    uint32_t room = 0, count = 0;
    bool needed = false;
    RETURN_IF_ERROR(DecodeGroup(group_ids[i], page, groups[i], /*claim=*/true, /*insert=*/false,
                                &room, &needed, &count));
    GroupState& gs = groups_.at(group_ids[i]);
    gs.room = room;
    gs.chunks = count;
    // New chunks are added to the group of next_chunk_, which must be in memory.
    if (needed || group_ids[i] == next_chunk_ / kChunksPerGroup) {
      RETURN_IF_ERROR(DecodeGroup(group_ids[i], page, groups[i], /*claim=*/false, /*insert=*/true,
                                  &room, &needed, &count));
      gs.resident = true;
      gs.lru = group_lru_.insert(group_lru_.end(), group_ids[i]);
    } else if (room >= kBlocksPerChunk / 2) {
      reuse_groups_.insert(group_ids[i]);
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
      LoadLogs(done);
    });
  });
}

absl::StatusOr<std::shared_ptr<BlockMap::Node>> PoolImpl::LoadedNode(
    std::map<std::pair<uint64_t, uint32_t>, std::shared_ptr<BlockMap::Node>>* nodes,
    std::vector<std::shared_ptr<BlockMap::Node>>* pending, const MapEntry& p, int level,
    const ChildPointer* counts) {
  auto& n = (*nodes)[{p.chunk, p.block}];
  if (n) {
    if (n->level != level || n->page.crc != p.crc) {
      return absl::DataLossError(absl::StrCat(DescribePointer(p), ": named at two levels or checksums"));
    }
    return n;
  }
  if (level == 0 && counts != nullptr) {
    // Not read: an evicted leaf, read back when something needs it.
    n = std::make_shared<BlockMap::Node>(refs_, p, counts->mapped, counts->unique);
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
      ASSIGN_OR_RETURN(root, LoadedNode(nodes, pending, r.root, r.levels - 1, nullptr));
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
    ASSIGN_OR_RETURN(n, LoadedNode(nodes, pending, p, level, nullptr));
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
    std::vector<ChildPointer> children;
    RETURN_IF_ERROR(DecodeNodePage(page, n->page, pool_uuid_, n, &children));
    for (const ChildPointer& c : children) {
      ASSIGN_OR_RETURN(n->children[c.index], LoadedNode(nodes.get(), pending.get(), c.page, n->level - 1, &c));
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
  // Leaf entries are not checked here: most leaves are not read, and those of trees
  // being deleted may name chunks already freed (see FinishRecover). Fsck checks them.
  for (const auto& [key, n] : nodes) RETURN_IF_ERROR(ClaimPage(n->page));
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
