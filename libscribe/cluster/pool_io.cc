// The data path: reads (checksummed, any copy), redirect-on-write writes to every
// copy, discards, per-block write locks, I/O deadlines.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

absl::Status PoolImpl::CheckIo(const VsdState* v, uint64_t offset, uint64_t length) const {
  if (offset % BlockDevice::kSectorBytes != 0 || length % BlockDevice::kSectorBytes != 0) {
    return absl::InvalidArgumentError("I/O must be aligned to 512-byte sectors");
  }
  if (offset > v->size_bytes || length > v->size_bytes - offset) {
    return absl::OutOfRangeError(absl::StrFormat(
        "I/O [%d, +%d) is beyond the end of VSD '%s' (%d bytes)", offset, length, v->name,
        v->size_bytes));
  }
  return absl::OkStatus();
}

auto PoolImpl::VsdMap(VsdId vsd) -> MapRef {
  return [this, vsd]() -> const BlockMap* {
    VsdState* v = FindVsdState(vsd);
    return v ? &v->map : nullptr;
  };
}

void PoolImpl::ReadBlocks(MapRef ref, uint64_t b0, uint64_t b1, uint8_t* out, int attempt,
                StatusDone done) {
  auto alive = alive_;
  WithLeaves(ref, b0, b1, [this, alive, ref, b0, b1, out, attempt, done](absl::Status st, const BlockMap* m) {
    if (!*alive) return;
    if (!st.ok()) return done(st);
    // The records of the chunks read (their copies) must be in memory too.
    std::vector<uint64_t> chunks;
    for (uint64_t lba = b0; m && lba < b1 && lba < m->capacity_blocks(); ++lba) {
      const MapEntry e = m->Get(lba);
      if (e.mapped() && (chunks.empty() || chunks.back() != e.chunk)) chunks.push_back(e.chunk);
    }
    if (GroupsResident(chunks)) return ReadBlocksIn(m, ref, b0, b1, out, attempt, done);
    LoadGroups(chunks, [this, alive, ref, b0, b1, out, attempt, done, chunks](absl::Status st) {
      if (!*alive) return;
      if (!st.ok()) return done(st);
      // Held until the read is done, so that the leaves read again (if evicted
      // meanwhile) find the records still here.
      auto pin = PinGroups(chunks);
      ReadBlocks(ref, b0, b1, out, attempt, [pin, done](absl::Status st) { done(st); });
    });
  });
}

void PoolImpl::ReadBlocksIn(const BlockMap* m, MapRef ref, uint64_t b0, uint64_t b1, uint8_t* out,
                  int attempt, StatusDone done) {
  struct Run {
    uint64_t lba;
    uint64_t chunk;
    uint32_t block;
    uint32_t count;
    std::vector<uint32_t> crcs;
  };
  std::vector<Run> runs;
  for (uint64_t lba = b0; lba < b1; ++lba) {
    const MapEntry e = m && lba < m->capacity_blocks() ? m->Get(lba) : MapEntry{};
    uint8_t* dst = out + (lba - b0) * kBlockBytes;
    if (!e.mapped()) {
      std::memset(dst, 0, kBlockBytes);
      continue;
    }
    if (!runs.empty() && runs.back().chunk == e.chunk &&
        runs.back().block + runs.back().count == e.block &&
        runs.back().lba + runs.back().count == lba) {
      runs.back().count++;
      runs.back().crcs.push_back(e.crc);
    } else {
      runs.push_back(Run{lba, e.chunk, e.block, 1, {e.crc}});
    }
  }
  if (runs.empty()) return loop_->Post([done] { done(absl::OkStatus()); });
  auto alive = alive_;
  auto g = MakeGather(static_cast<int>(runs.size()),
                      [this, alive, ref, b0, b1, out, attempt, done](absl::Status st) {
                        if (!*alive) return;
                        if (st.code() == absl::StatusCode::kDataLoss &&
                            attempt < options_.read_retries_max) {
                          // The map may have moved on while we read: look again.
                          return ReadBlocks(ref, b0, b1, out, attempt + 1, done);
                        }
                        done(st);
                      });
  for (Run& run : runs) {
    uint8_t* dst = out + (run.lba - b0) * kBlockBytes;
    ReadRun(run.chunk, run.block, run.count, std::move(run.crcs), dst,
            [g](absl::Status st) { g->Finish(st); });
  }
}

void PoolImpl::ReadRun(uint64_t chunk_id, uint32_t block, uint32_t count, std::vector<uint32_t> crcs,
             uint8_t* dst, StatusDone done) {
  ChunkState* c = FindChunk(chunk_id);
  if (!c) return PostError(done, absl::DataLossError("chunk vanished during read"));
  std::vector<Replica> candidates;
  for (const Replica& r : c->replicas) {
    if (ReplicaWritable(r)) candidates.push_back(r);
  }
  if (candidates.empty()) {
    return PostError(done, absl::UnavailableError(absl::StrFormat(
                               "no reachable copy of chunk %d", chunk_id)));
  }
  // Spread reads over the copies, or read the local one first.
  std::rotate(candidates.begin(), candidates.begin() + (read_rr_++ % candidates.size()),
              candidates.end());
  if (options_.preferred_read_node.valid()) {
    std::stable_partition(candidates.begin(), candidates.end(), [this](const Replica& r) {
      return disks_.at(r.disk).node == options_.preferred_read_node;
    });
  }
  auto state = std::make_shared<ReadRunState>();
  state->chunk = chunk_id;
  state->block = block;
  state->count = count;
  state->crcs = std::move(crcs);
  state->dst = dst;
  state->candidates = std::move(candidates);
  state->buf = AlignedBuffer(count * kBlockBytes, AlignedBuffer::Uninitialized{});
  state->done = std::move(done);
  TryReplica(state, 0);
}

void PoolImpl::TryReplica(std::shared_ptr<ReadRunState> s, size_t i) {
  if (i == s->candidates.size()) {
    return s->done(absl::DataLossError(absl::StrFormat(
        "every copy of chunk %d blocks %d..%d failed its checksum or read", s->chunk,
        s->block, s->block + s->count - 1)));
  }
  const Replica r = s->candidates[i];
  auto it = disks_.find(r.disk);
  if (it == disks_.end() || !DiskUsable(it->second)) return TryReplica(s, i + 1);
  auto alive = alive_;
  it->second.dev->Read(ReplicaOffset(r, s->block), s->count * kBlockBytes, s->buf.data(),
                       Timed([this, alive, s, i, r](absl::Status st) {
                         if (!*alive) return;
                         if (!st.ok()) {
                           NoteIoError(r.disk, st);
                           return TryReplica(s, i + 1);
                         }
                         for (uint32_t k = 0; k < s->count; ++k) {
                           if (Crc32c(s->buf.data() + k * kBlockBytes, kBlockBytes) !=
                               s->crcs[k]) {
                             ++checksum_failures_;
                             s->bad.push_back(r);
                             return TryReplica(s, i + 1);
                           }
                         }
                         std::memcpy(s->dst, s->buf.data(), s->count * kBlockBytes);
                         for (const Replica& b : s->bad) Repair(b, s->chunk, s->block, s->count, s->buf.data());
                         s->done(absl::OkStatus());
                       }));
}

void PoolImpl::Repair(const Replica& r, uint64_t chunk, uint32_t block, uint32_t count, const uint8_t* good,
            StatusDone done) {
  auto it = disks_.find(r.disk);
  if (it == disks_.end() || !DiskUsable(it->second)) {
    return PostError(done, absl::UnavailableError("copy to repair is unreachable"));
  }
  auto buf = std::make_shared<AlignedBuffer>(count * kBlockBytes);
  std::memcpy(buf->data(), good, count * kBlockBytes);
  auto alive = alive_;
  it->second.dev->Write(ReplicaOffset(r, block), count * kBlockBytes, buf->data(),
                        Timed([this, alive, buf, r, chunk, done](absl::Status st) {
                          if (!*alive) return;
                          if (st.ok()) {
                            unflushed_chunks_[r.disk].insert(chunk);
                            ++repaired_;
                          } else {
                            NoteIoError(r.disk, st);
                          }
                          done(st);
                        }));
}

void PoolImpl::NoteIoError(DiskId disk, const absl::Status& st) {
  ++io_errors_;
  if (st.code() == absl::StatusCode::kFailedPrecondition) {
    // A disk refused us for a newer owner's epoch: another node owns the pool now.
    // Stop everything; only a fresh Pool::Open (with the new epoch) may continue.
    if (!fenced_) fenced_status_ = absl::FailedPreconditionError(absl::StrFormat(
                      "this pool instance was fenced by a newer owner: %s", st.message()));
    fenced_ = true;
    return;
  }
  if (st.code() != absl::StatusCode::kUnavailable && st.code() != absl::StatusCode::kDataLoss) return;
  DiskState* d = FindDisk(disk);
  // Errors from a node marked offline (its link broke) say nothing about the disk.
  if (!d || d->failed || !NodeOnline(d->node)) return;
  // A transient error is retried by the caller on another copy; a disk is declared
  // failed after `io_errors_to_fail_disk` errors within `io_error_window_ns`.
  auto& e = d_errors_[disk];
  const int64_t now = loop_->NowNanos();
  if (e.count == 0 || now - e.first_ns > options_.io_error_window_ns) e = ErrorWindow{0, now};
  if (++e.count < options_.io_errors_to_fail_disk) return;
  FailDiskNow(disk, false);
  Commit([](absl::Status) {});
}

void PoolImpl::RecordStale(uint64_t chunk, DiskId disk, bool stale) {
  Encoder rec;
  rec.U8(kRecStale);
  rec.U64(chunk);
  rec.U64(disk.value);
  rec.U8(stale ? 1 : 0);
  Mutate(rec.out());
}

void PoolImpl::MarkStale(DiskId disk, std::set<uint64_t> chunks) {  // a copy: Mutate may commit
  bool any = false;
  for (uint64_t id : chunks) {
    ChunkState* c = FindChunk(id);
    if (!c) continue;
    for (const Replica& r : c->replicas) {
      if (r.disk != disk || r.stale) continue;
      RecordStale(id, disk, true);
      any = true;
    }
  }
  if (any) Heal();
}

void PoolImpl::WriteToCopies(const std::vector<MapEntry>& where, const uint8_t* data,
                   std::shared_ptr<const void> hold, std::function<void(bool)> done) {
  struct Run {
    size_t first;
    uint32_t count;
  };
  std::vector<Run> runs;
  for (size_t i = 0; i < where.size(); ++i) {
    const MapEntry& e = where[i];
    if (!runs.empty()) {
      const MapEntry& p = where[runs.back().first + runs.back().count - 1];
      if (p.chunk == e.chunk && p.block + 1 == e.block) {
        runs.back().count++;
        continue;
      }
    }
    runs.push_back(Run{i, 1});
  }
  if (runs.empty()) return done(true);
  auto alive = alive_;
  auto failed_runs = std::make_shared<int>(0);
  auto g = MakeGather(static_cast<int>(runs.size()), [alive, failed_runs, done](absl::Status) {
    if (*alive) done(*failed_runs == 0);
  });
  for (const Run& run : runs) {
    const MapEntry first = where[run.first];
    ChunkState* c = FindChunk(first.chunk);
    std::vector<Replica> targets;
    for (const Replica& r : c->replicas) {
      if (ReplicaWritable(r)) {
        targets.push_back(r);
      } else if (!r.stale && !disks_.at(r.disk).failed) {
        RecordStale(c->id, r.disk, true);  // its node is away: it misses this write
      }
    }
    if (targets.empty()) {
      ++*failed_runs;
      g->Finish(absl::OkStatus());
      continue;
    }
    ++c->writes_in_flight;
    auto ok_copies = std::make_shared<int>(0);
    const uint64_t chunk_id = c->id;
    auto rg = MakeGather(static_cast<int>(targets.size()),
                         [this, alive, g, ok_copies, failed_runs, chunk_id](absl::Status) {
                           if (!*alive) return;
                           if (ChunkState* c = FindChunk(chunk_id)) {
                             --c->writes_in_flight;
                             MaybeFreeChunk(c);
                           }
                           if (*ok_copies == 0) ++*failed_runs;
                           g->Finish(absl::OkStatus());
                         });
    for (const Replica& r : targets) {
      disks_.at(r.disk).dev->Write(
          ReplicaOffset(r, first.block), run.count * kBlockBytes, data + run.first * kBlockBytes,
          Timed([this, alive, rg, ok_copies, r, chunk_id, hold](absl::Status st) {
            if (!*alive) return;
            if (st.ok()) {
              // Marked on completion: a commit flushes only writes that completed.
              unflushed_chunks_[r.disk].insert(chunk_id);
              ++*ok_copies;
            } else {
              NoteIoError(r.disk, st);
              // This copy lacks the write: it is stale until re-mirrored.
              if (FindChunk(chunk_id)) {
                RecordStale(chunk_id, r.disk, true);
                Heal();
              }
            }
            rg->Finish(absl::OkStatus());
          }));
    }
  }
}

void PoolImpl::FailDiskNow(DiskId disk, bool evicted) {
  Encoder e;
  e.U8(kRecFailDisk);
  e.U64(disk.value);
  e.U8(evicted ? 1 : 0);
  Mutate(e.out());
  heal_scanned_.erase(disk);  // its chunks' records are read (HealStep)
  for (auto& [id, v] : vsds_) {
    if (ChunkState* c = v->open_chunk ? FindChunk(v->open_chunk) : nullptr) {
      for (const Replica& r : c->replicas) {
        if (r.disk == disk) {
          CloseOpenChunk(v.get());  // may free the chunk: stop reading its copies
          break;
        }
      }
    }
  }
  Heal();
}

void PoolImpl::Read(VsdId vsd, uint64_t offset_bytes, size_t length_bytes, void* buf,
          StatusDone done) {
  if (fenced_) return PostError(done, fenced_status_);
  VsdState* v = FindVsdState(vsd);
  if (!v) return PostError(done, NotFound(vsd));
  absl::Status st = CheckIo(v, offset_bytes, length_bytes);
  if (!st.ok()) return PostError(done, st);
  ReadMapped(VsdMap(vsd), offset_bytes, length_bytes, buf, std::move(done));
}

void PoolImpl::ReadSnapshot(SnapshotId snapshot, uint64_t offset_bytes, size_t length_bytes, void* buf,
                  StatusDone done) {
  SnapshotState* s = FindSnapshot(snapshot);
  if (!s) return PostError(done, NotFound(snapshot));
  if (offset_bytes % 512 || length_bytes % 512 || offset_bytes > s->size_bytes ||
      length_bytes > s->size_bytes - offset_bytes) {
    return PostError(done, absl::OutOfRangeError("snapshot read out of range or unaligned"));
  }
  ReadMapped(
      [this, snapshot]() -> const BlockMap* {
        SnapshotState* s = FindSnapshot(snapshot);
        return s ? &s->map : nullptr;
      },
      offset_bytes, length_bytes, buf, std::move(done));
}

void PoolImpl::ReadMapped(MapRef ref, uint64_t offset, size_t length, void* buf, StatusDone done) {
  if (length == 0) return PostError(done, absl::OkStatus());
  const uint64_t b0 = offset / kBlockBytes;
  const uint64_t b1 = RoundUp(offset + length, kBlockBytes) / kBlockBytes;
  auto tmp = std::make_shared<AlignedBuffer>((b1 - b0) * kBlockBytes);
  ReadBlocks(std::move(ref), b0, b1, tmp->data(), 0,
             [tmp, offset, length, buf, b0, done](absl::Status st) {
               if (st.ok()) std::memcpy(buf, tmp->data() + (offset - b0 * kBlockBytes), length);
               done(st);
             });
}

bool PoolImpl::Overlaps(const std::map<uint64_t, uint64_t>& locked, uint64_t b0, uint64_t b1) {
  auto it = locked.upper_bound(b0);
  if (it != locked.begin() && std::prev(it)->second > b0) return true;
  return it != locked.end() && it->first < b1;
}

void PoolImpl::LockBlocks(VsdState* v, uint64_t b0, uint64_t b1, std::function<void()> fn) {
  if (Overlaps(v->locked, b0, b1) || !v->waiters.empty()) {
    v->waiters.push_back(LockWaiter{b0, b1, std::move(fn)});
    return;
  }
  v->locked.emplace(b0, b1);
  fn();
}

void PoolImpl::UnlockBlocks(VsdId vsd, uint64_t b0, uint64_t b1) {
  VsdState* v = FindVsdState(vsd);
  if (!v) return;
  v->locked.erase(b0);
  // Start waiters in arrival order while they can run.
  while (!v->waiters.empty()) {
    LockWaiter& w = v->waiters.front();
    if (Overlaps(v->locked, w.b0, w.b1)) break;
    v->locked.emplace(w.b0, w.b1);
    auto fn = std::move(w.fn);
    v->waiters.pop_front();
    loop_->Post(std::move(fn));
  }
}

void PoolImpl::Write(VsdId vsd, uint64_t offset_bytes, size_t length_bytes, const void* buf, bool fua,
           StatusDone done) {
  if (fenced_) return PostError(done, fenced_status_);
  VsdState* v = FindVsdState(vsd);
  if (!v) return PostError(done, NotFound(vsd));
  absl::Status st = CheckIo(v, offset_bytes, length_bytes);
  if (!st.ok()) return PostError(done, st);
  if (length_bytes == 0) return fua ? Flush(done) : PostError(done, absl::OkStatus());
  if (offset_bytes % kBlockBytes == 0 && length_bytes % kBlockBytes == 0) {
    // Whole blocks: the disks write straight from the caller's buffer when it is
    // aligned for direct I/O (it stays valid until `done`), else from one copy.
    const uint8_t* data = static_cast<const uint8_t*>(buf);
    std::shared_ptr<AlignedBuffer> copy;
    if (reinterpret_cast<uintptr_t>(buf) % BlockDevice::kBufferAlignment != 0) {
      copy = std::make_shared<AlignedBuffer>(length_bytes, AlignedBuffer::Uninitialized{});
      std::memcpy(copy->data(), buf, length_bytes);
      data = copy->data();
    }
    const uint64_t b0 = offset_bytes / kBlockBytes;
    const uint64_t b1 = b0 + length_bytes / kBlockBytes;
    auto alive = alive_;
    LockBlocks(v, b0, b1, [this, alive, vsd, data, copy, fua, done, b0, b1] {
      if (!*alive) return;
      WriteNewBlocks(vsd, b0, b1, data, copy, [this, alive, vsd, b0, b1, fua, done](absl::Status st) {
        if (!*alive) return;
        UnlockBlocks(vsd, b0, b1);
        if (st.ok() && fua) return Commit(done);
        done(st);
      });
    });
    return;
  }
  // Partial blocks: the caller's bytes are kept until the edge blocks are read.
  auto data = std::make_shared<std::string>(static_cast<const char*>(buf), length_bytes);
  WriteBytes(vsd, offset_bytes, std::move(data), fua, std::move(done));
}

void PoolImpl::WriteBytes(VsdId vsd, uint64_t offset, std::shared_ptr<std::string> data, bool fua,
                StatusDone done) {
  VsdState* v = FindVsdState(vsd);
  const uint64_t b0 = offset / kBlockBytes;
  const uint64_t b1 = RoundUp(offset + data->size(), kBlockBytes) / kBlockBytes;
  auto alive = alive_;
  LockBlocks(v, b0, b1, [this, alive, vsd, offset, data, fua, done, b0, b1] {
    if (!*alive) return;
    auto unlock_done = [this, alive, vsd, b0, b1, fua, done](absl::Status st) {
      if (!*alive) return;
      UnlockBlocks(vsd, b0, b1);
      if (st.ok() && fua) return Commit(done);
      done(st);
    };
    VsdState* v = FindVsdState(vsd);
    if (!v) return unlock_done(NotFound(vsd));
    auto buf = std::make_shared<AlignedBuffer>((b1 - b0) * kBlockBytes);
    const uint64_t head = offset - b0 * kBlockBytes;
    const uint64_t end = head + data->size();
    auto fill = [this, alive, vsd, buf, head, data, b0, b1, unlock_done](absl::Status st) {
      if (!*alive) return;
      if (!st.ok()) return unlock_done(st);
      std::memcpy(buf->data() + head, data->data(), data->size());
      WriteNewBlocks(vsd, b0, b1, buf->data(), buf, unlock_done);
    };
    const bool partial_head = head != 0;
    const bool partial_tail = end != (b1 - b0) * kBlockBytes;
    if (!partial_head && !partial_tail) return fill(absl::OkStatus());
    // Read-modify-write of the partial edge blocks.
    MapRef lookup = VsdMap(vsd);
    const int parts = (partial_head ? 1 : 0) + ((partial_tail && (b1 - 1 != b0 || !partial_head)) ? 1 : 0);
    auto g = MakeGather(parts, fill);
    if (partial_head) {
      ReadBlocks(lookup, b0, b0 + 1, buf->data(), 0, [g](absl::Status st) { g->Finish(st); });
    }
    if (partial_tail && (b1 - 1 != b0 || !partial_head)) {
      ReadBlocks(lookup, b1 - 1, b1, buf->data() + (b1 - 1 - b0) * kBlockBytes, 0,
                 [g](absl::Status st) { g->Finish(st); });
    }
  });
}

void PoolImpl::WriteNewBlocks(VsdId vsd, uint64_t b0, uint64_t b1, const uint8_t* data,
                    std::shared_ptr<AlignedBuffer> hold, StatusDone done,
                    bool after_commit) {
  VsdState* v = FindVsdState(vsd);
  if (!v) return done(NotFound(vsd));
  auto blocks = AllocateBlocks(v, b1 - b0);
  if (blocks.status().code() == absl::StatusCode::kResourceExhausted && !after_commit &&
      (!pending_frees_.empty() || committing_ || !doomed_.empty())) {
    // Space a background delete would give back is wanted now.
    ReapSome(SIZE_MAX);
    // Overwritten blocks wait for the commit that makes their replacement durable
    // before they are reused: commit, then try once more.
    auto alive = alive_;
    return Commit([this, alive, vsd, b0, b1, data, hold, done](absl::Status st) {
      if (!*alive) return;
      if (!st.ok()) return done(st);
      WriteNewBlocks(vsd, b0, b1, data, hold, done, /*after_commit=*/true);
    });
  }
  if (!blocks.ok()) return done(blocks.status());
  auto entries = std::make_shared<std::vector<MapEntry>>(std::move(*blocks));
  for (uint64_t i = 0; i < entries->size(); ++i) {
    (*entries)[i].crc = Crc32c(data + i * kBlockBytes, kBlockBytes);
  }
  auto alive = alive_;
  WriteToCopies(*entries, data, hold, [this, alive, vsd, b0, entries, done](bool landed) {
    if (!*alive) return;
    if (!landed) {
      for (const MapEntry& e : *entries) Unreserve(e);
      return done(absl::UnavailableError("write failed on every copy of a chunk"));
    }
    // The map's leaves for the blocks must be in memory to point them at the new ones.
    WithLeaves(VsdMap(vsd), b0, b0 + entries->size(),
               [this, alive, vsd, b0, entries, done](absl::Status st, const BlockMap*) {
                 if (!*alive) return;
                 if (!st.ok()) {
                   for (const MapEntry& e : *entries) Unreserve(e);
                   return done(st);
                 }
                 MapWritten(vsd, b0, *entries, done);
               });
  });
}

void PoolImpl::MapWritten(VsdId vsd, uint64_t b0, const std::vector<MapEntry>& entries, StatusDone done) {
  VsdState* v = FindVsdState(vsd);
  for (const MapEntry& e : entries) {
    ChunkState* c = FindChunk(e.chunk);
    // The map is about to reference it: no longer merely reserved.
    c->busy[e.block] = false;
    --c->used;
    NoteMaybeReusable(c);
  }
  if (!v) {
    for (const MapEntry& e : entries) MaybeFreeChunk(FindChunk(e.chunk));
  }
  // One record per run of consecutive blocks in one chunk.
  for (size_t i = 0; v && i < entries.size();) {
    size_t j = i + 1;
    while (j < entries.size() && entries[j].chunk == entries[i].chunk &&
           entries[j].block == entries[j - 1].block + 1) {
      ++j;
    }
    Encoder rec;
    rec.U8(kRecMap);
    rec.U64(vsd.value);
    rec.U64(b0 + i);
    rec.U64(entries[i].chunk);
    rec.U32(entries[i].block);
    rec.U32(static_cast<uint32_t>(j - i));
    for (size_t k = i; k < j; ++k) rec.U32(entries[k].crc);
    Mutate(rec.out());
    i = j;
  }
  done(v ? absl::OkStatus() : NotFound(vsd));
}

void PoolImpl::Discard(VsdId vsd, uint64_t offset_bytes, uint64_t length_bytes, StatusDone done) {
  if (fenced_) return PostError(done, fenced_status_);
  VsdState* v = FindVsdState(vsd);
  if (!v) return PostError(done, NotFound(vsd));
  absl::Status st = CheckIo(v, offset_bytes, length_bytes);
  if (!st.ok()) return PostError(done, st);
  const uint64_t end = offset_bytes + length_bytes;
  const uint64_t full0 = RoundUp(offset_bytes, kBlockBytes) / kBlockBytes;
  const uint64_t full1 = end / kBlockBytes;
  // Partial blocks at the edges are written with zeros.
  std::vector<std::pair<uint64_t, uint64_t>> parts;
  if (full1 <= full0) {
    parts.push_back({offset_bytes, length_bytes});
  } else {
    if (offset_bytes < full0 * kBlockBytes) parts.push_back({offset_bytes, full0 * kBlockBytes - offset_bytes});
    if (end > full1 * kBlockBytes) parts.push_back({full1 * kBlockBytes, end - full1 * kBlockBytes});
  }
  if (length_bytes == 0 || (parts.empty() && full1 <= full0)) {
    return PostError(done, absl::OkStatus());
  }
  auto g = MakeGather(static_cast<int>(parts.size()) + (full1 > full0 ? 1 : 0), done);
  if (full1 > full0) {
    auto alive = alive_;
    WithLeaves(VsdMap(vsd), full0, full1, [this, alive, vsd, full0, full1, g](absl::Status st, const BlockMap*) {
      if (!*alive) return;
      if (st.ok() && FindVsdState(vsd)) {
        Encoder rec;
        rec.U8(kRecUnmap);
        rec.U64(vsd.value);
        rec.U64(full0);
        rec.U64(full1 - full0);
        Mutate(rec.out());
      }
      g->Finish(st);
    });
  }
  for (auto [off, len] : parts) {
    WriteBytes(vsd, off, std::make_shared<std::string>(len, '\0'), false,
               [g](absl::Status st) { g->Finish(st); });
  }
}

void PoolImpl::Flush(StatusDone done) { Commit(std::move(done)); }

}  // namespace scribe
