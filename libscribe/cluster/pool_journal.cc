// Commits: flush the data, then one journal batch (or a checkpoint root) to every
// metadata mirror.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

void PoolImpl::ChooseMirrors() {
  std::map<NodeId, DiskId> per_node;
  for (const auto& [id, d] : disks_) {
    if (!DiskUsable(d)) continue;
    auto it = per_node.find(d.node);
    // Prefer SSD for metadata, then the lowest id (deterministic).
    if (it == per_node.end() ||
        (d.tier == Tier::kSsd && disks_.at(it->second).tier != Tier::kSsd)) {
      per_node[d.node] = id;
    }
  }
  std::vector<DiskId> mirrors;
  for (const auto& [node, disk] : per_node) {
    if (static_cast<int>(mirrors.size()) == options_.metadata_mirrors_max) break;
    mirrors.push_back(disk);
  }
  if (mirrors != mirrors_) {
    mirrors_ = std::move(mirrors);
    need_checkpoint_ = true;
  }
}

void PoolImpl::Commit(StatusDone done) {
  if (fenced_) return PostError(done, fenced_status_);
  commit_waiters_.push_back(std::move(done));
  if (committing_) return;
  StartCommit();
}

void PoolImpl::StartCommit() {
  bool journal_full = journal_pos_ + RoundUp(kBatchHeaderBytes + pending_records_.size(), kBlockBytes) > half_bytes_;
  bool checkpoint_due = need_checkpoint_ || journal_full || dirty_nodes_ >= options_.checkpoint_dirty_pages_max;
  if (checkpoint_due && !deltas_.empty()) {
    // A checkpoint writes exact chunk states: the chunks with deltas are read first
    // (LoadDeltaChunks commits when done). Meanwhile a journal batch will do, unless
    // the checkpoint cannot wait.
    LoadDeltaChunks();
    if (need_checkpoint_ || journal_full) return;
    checkpoint_due = false;
  }
  committing_ = true;
  auto waiters = std::make_shared<std::vector<StatusDone>>(std::move(commit_waiters_));
  commit_waiters_.clear();
  auto alive = alive_;
  // The batch is what is pending now: records of writes that complete while the
  // flushes below run describe data those flushes may miss, so they wait for the
  // next commit.
  auto records = std::make_shared<std::string>(std::move(pending_records_));
  pending_records_.clear();
  auto frees = std::make_shared<BlockFrees>(std::move(pending_frees_));
  pending_frees_.clear();
  // A checkpoint, when due, is prepared now too: it must describe exactly the state
  // these records lead to, not writes completing later.
  ChooseMirrors();
  auto mirrors = std::make_shared<std::vector<DiskId>>(mirrors_);
  std::shared_ptr<Checkpoint> ckpt;
  if (checkpoint_due) {
    absl::StatusOr<std::shared_ptr<Checkpoint>> c = PrepareCheckpoint();
    if (!c.ok()) {
      pending_records_.insert(0, *records);
      for (auto& f : *frees) pending_frees_.push_back(f);
      committing_ = false;
      for (auto& w : *waiters) w(c.status());
      return;
    }
    ckpt = std::move(*c);
    need_checkpoint_ = false;
  }
  // Copies this commit cannot make durable (their disk's flush failed, or its node went
  // away before the flush) are marked stale by records of this very batch: written
  // after a checkpoint's root, or appended to the journal batch. A crash right after
  // the commit must not forget that those copies may lack what it acknowledged.
  auto stale = std::make_shared<std::string>();
  auto mark_stale = [this, stale](DiskId disk, std::set<uint64_t> chunks) {
    const size_t before = pending_records_.size();
    MarkStale(disk, std::move(chunks));
    stale->append(pending_records_, before, std::string::npos);
    pending_records_.resize(before);
  };
  // Returns a failed commit's records and frees to the next one.
  auto fail = [this, alive, waiters, records, frees, stale](absl::Status st) {
    if (!*alive) return;
    pending_records_.insert(0, *stale);
    pending_records_.insert(0, *records);
    for (auto& f : *frees) pending_frees_.push_back(f);
    committing_ = false;
    for (auto& w : *waiters) w(st);
    if (!commit_waiters_.empty()) StartCommit();
  };
  auto after_data = [this, alive, waiters, records, frees, ckpt, mirrors, stale](absl::Status st) {
    if (!*alive) return;
    // 2. Then the journal (or the checkpoint's root): the batch now describes
    // durable data and pages only (a checkpoint's root includes `records`).
    WriteJournal(ckpt ? *stale : *records + *stale, ckpt ? &ckpt->root : nullptr, *mirrors,
                 [this, alive, waiters, frees, ckpt, stale](absl::Status st) {
      if (!*alive) return;
      // 3. Blocks those records freed, and pages the new checkpoint no longer names,
      // may now be reused.
      if (st.ok()) {
        ReleaseFrees(std::move(*frees));
        if (ckpt) {
          ReleaseDroppedPages(std::move(ckpt->frees));
          ++checkpoints_;
          checkpoint_pages_written_ += ckpt->pages.size();
          last_checkpoint_pages_ = ckpt->pages.size();
          last_checkpoint_root_bytes_ = 0;
          for (const auto& b : ckpt->root) last_checkpoint_root_bytes_ += b.size();
        }
      } else {
        pending_records_.insert(0, *stale);  // applied already; written again
        for (auto& f : *frees) pending_frees_.push_back(f);
        // The pages written stay valid (they are durable); the previous checkpoint
        // still names the ones this one replaced.
        if (ckpt) {
          for (const MapEntry& p : ckpt->frees) page_frees_.push_back(p);
        }
      }
      committing_ = false;
      for (auto& w : *waiters) w(st);
      if (!commit_waiters_.empty()) StartCommit();
    });
  };
  // 1. Make every completed data write and the checkpoint's pages durable: write the
  // pages, then flush each disk written since the last commit.
  auto flush_data = [this, alive, after_data, mark_stale]() {
    std::vector<DiskId> devs;
    flushing_chunks_ = std::move(unflushed_chunks_);
    unflushed_chunks_.clear();
    std::vector<DiskId> away;
    for (const auto& [id, chunks] : flushing_chunks_) {
      DiskState* d = FindDisk(id);
      if (d && DiskUsable(*d)) {
        devs.push_back(id);
      } else if (d && !d->failed) {
        away.push_back(id);  // its node went away since: it cannot flush what it took
      }
    }
    for (DiskId id : away) {
      mark_stale(id, flushing_chunks_[id]);
      flushing_chunks_.erase(id);
    }
    if (devs.empty()) return after_data(absl::OkStatus());
    auto g = MakeGather(static_cast<int>(devs.size()), after_data);
    for (DiskId id : devs) {
      disks_.at(id).dev->Flush(Timed([this, alive, g, id, mark_stale](absl::Status st) {
        if (!*alive) return;
        if (!st.ok()) {
          // Its recent writes may not be durable: those copies are stale until rebuilt
          // from the others.
          NoteIoError(id, st);
          mark_stale(id, flushing_chunks_[id]);
        }
        flushing_chunks_.erase(id);
        g->Finish(absl::OkStatus());
      }));
    }
  };
  if (!ckpt) return flush_data();
  checkpoint_pages_in_flight_ = true;
  WritePages(ckpt, [this, alive, ckpt, fail, flush_data](absl::Status st) {
    if (!*alive) return;
    checkpoint_pages_in_flight_ = false;
    if (!st.ok()) {
      UndoCheckpoint(*ckpt);
      return fail(st);
    }
    ScheduleTrim();  // the leaves it wrote may go now
    flush_data();
  });
}

std::string PoolImpl::MakeBatch(const std::string& payload, uint64_t seq, uint32_t flags) const {
  std::string out(RoundUp(kBatchHeaderBytes + payload.size(), kBlockBytes), '\0');
  Encoder h;
  h.U32(kBatchMagic);
  h.U32(0);  // header crc, filled below
  h.U64(epoch_);
  h.U64(seq);
  h.U32(static_cast<uint32_t>(payload.size()));
  h.U32(Crc32c(payload.data(), payload.size()));
  h.U32(flags);
  std::memcpy(out.data(), h.out().data(), h.out().size());
  const uint32_t crc = Crc32c(out.data() + 8, kBatchHeaderBytes - 8);
  std::memcpy(out.data() + 4, &crc, 4);
  std::memcpy(out.data() + kBatchHeaderBytes, payload.data(), payload.size());
  return out;
}

void PoolImpl::WriteJournal(std::string records, const std::vector<std::string>* ckpt,
                  std::vector<DiskId> mirrors, StatusDone done) {
  std::erase_if(mirrors, [this](DiskId m) { return !DiskUsable(disks_.at(m)); });
  if (mirrors.empty()) {
    pending_records_.insert(0, records);
    need_checkpoint_ = true;
    return loop_->Post([done] { done(absl::UnavailableError("no healthy disk for metadata")); });
  }
  std::vector<std::string> batches;
  uint64_t offset;
  if (ckpt != nullptr) {
    ++epoch_;
    offset = (epoch_ % 2) * half_bytes_;
    for (size_t i = 0; i < ckpt->size(); ++i) {
      uint32_t flags = (i == 0 ? kFlagCheckpointBegin : 0) | (i + 1 == ckpt->size() ? kFlagCheckpointEnd : 0);
      batches.push_back(MakeBatch((*ckpt)[i], ++sequence_, flags));
    }
    journal_pos_ = 0;
    // Records made after the checkpoint was prepared (see StartCommit): a batch of the
    // new journal right after the root.
    if (!records.empty()) batches.push_back(MakeBatch(records, ++sequence_, 0));
  } else {
    if (records.empty()) return loop_->Post([done] { done(absl::OkStatus()); });
    offset = (epoch_ % 2) * half_bytes_ + journal_pos_;
    batches.push_back(MakeBatch(records, ++sequence_, 0));
  }
  auto data = std::make_shared<AlignedBuffer>(0);
  size_t total = 0;
  for (auto& b : batches) total += b.size();
  *data = AlignedBuffer(total);
  size_t pos = 0;
  for (auto& b : batches) {
    std::memcpy(data->data() + pos, b.data(), b.size());
    pos += b.size();
  }
  journal_pos_ += total;
  const uint64_t at = kSuperblockBytes + offset;
  auto ok_mirrors = std::make_shared<int>(0);
  auto alive = alive_;
  auto g = MakeGather(static_cast<int>(mirrors.size()),
                      [this, alive, ok_mirrors, done, data](absl::Status) {
                        if (!*alive) return;
                        if (*ok_mirrors == 0) {
                          need_checkpoint_ = true;
                          return done(absl::UnavailableError("metadata journal write failed on every mirror"));
                        }
                        done(absl::OkStatus());
                      });
  for (DiskId m : mirrors) {
    BlockDevice* dev = disks_.at(m).dev;
    // Durable in one operation where the device can (RWF_DSYNC on files).
    dev->WriteDurable(at, total, data->data(), Timed([this, alive, g, ok_mirrors, m, data](absl::Status st) {
      if (!*alive) return;
      if (st.ok()) {
        ++*ok_mirrors;
      } else {
        need_checkpoint_ = true;  // this mirror missed a batch: rewrite all later
        NoteIoError(m, st);
      }
      g->Finish(absl::OkStatus());
    }));
  }
}

}  // namespace scribe
