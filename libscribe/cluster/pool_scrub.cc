// Scrub: reading every copy of every used block, repairing bad copies.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

void PoolImpl::Scrub(Done<ScrubReport> done) {
  auto report = std::make_shared<ScrubReport>();
  // Chunk groups in id order; their records are read as the scrub reaches them.
  ScrubNext(std::make_shared<std::vector<uint64_t>>(AllGroups()), 0, report,
            [this, report, done](absl::Status st) {
              if (!st.ok()) return done(st);
              // Repaired copies are durable before the scrub reports them.
              Commit([report, done](absl::Status st) {
                if (!st.ok()) return done(st);
                done(*report);
              });
            });
}

void PoolImpl::ScrubNext(std::shared_ptr<std::vector<uint64_t>> groups, size_t i,
               std::shared_ptr<ScrubReport> report, StatusDone done) {
  // `i` counts chunk ids through the groups.
  const std::shared_ptr<std::vector<uint64_t>>& ids = groups;
  if (i == groups->size() * kChunksPerGroup) return loop_->Post([done] { done(absl::OkStatus()); });
  const uint64_t id = (*groups)[i / kChunksPerGroup] * kChunksPerGroup + i % kChunksPerGroup;
  if (!RecordResident(id)) {
    auto alive = alive_;
    return LoadGroups({id}, [=, this](absl::Status st) {
      if (!*alive) return;
      if (!st.ok()) return done(st);
      ScrubNext(ids, i, report, done);
    });
  }
  ChunkState* c = FindChunk(id);
  if (!c || c->rebuilding) return ScrubNext(ids, i + 1, report, done);
  std::vector<Replica> copies;
  for (const Replica& r : c->replicas) {
    if (ReplicaWritable(r)) copies.push_back(r);
  }
  report->chunks_checked++;
  auto bufs = std::make_shared<std::vector<AlignedBuffer>>();
  for (size_t k = 0; k < copies.size(); ++k) bufs->emplace_back(kChunkBytes);
  auto statuses = std::make_shared<std::vector<absl::Status>>(copies.size());
  const uint64_t chunk_id = c->id;
  auto alive = alive_;
  auto g = MakeGather(static_cast<int>(copies.size()) + 1, [=, this](absl::Status) {
    if (!*alive) return;
    // The checksums are in the chunk's state (read back first if not in memory).
    WithChunk(chunk_id, [=, this](absl::Status st, ChunkState* c) {
      if (!*alive) return;
      if (!st.ok() && !absl::IsNotFound(st)) return done(st);
      // The next chunk starts once this chunk's repairs have landed.
      auto repairs = MakeGather(1, [=, this](absl::Status) {
        if (*alive) ScrubNext(ids, i + 1, report, done);
      });
      if (c) {
        for (uint32_t b = 0; b < kBlocksPerChunk; ++b) {
          if (c->blocks->refs[b] == 0 || c->busy[b]) continue;
          report->blocks_checked++;
          int good = -1;
          std::vector<size_t> bad;
          for (size_t k = 0; k < copies.size(); ++k) {
            const bool ok = (*statuses)[k].ok() &&
                            Crc32c((*bufs)[k].data() + b * kBlockBytes, kBlockBytes) == c->blocks->crc[b];
            if (ok && good < 0) good = static_cast<int>(k);
            if (!ok) bad.push_back(k);
          }
          report->bad_copies += bad.size();
          if (good < 0) {
            if (!copies.empty()) report->unrecoverable++;
            continue;
          }
          for (size_t k : bad) {
            ++repairs->remaining;
            Repair(copies[k], chunk_id, b, 1, (*bufs)[good].data() + b * kBlockBytes,
                   [report, repairs](absl::Status st) {
                     if (st.ok()) report->repaired++;
                     repairs->Finish(absl::OkStatus());
                   });
          }
        }
      }
      repairs->Finish(absl::OkStatus());
    });
  });
  for (size_t k = 0; k < copies.size(); ++k) {
    disks_.at(copies[k].disk).dev->Read(ReplicaOffset(copies[k], 0), kChunkBytes, (*bufs)[k].data(),
                                        Timed([g, statuses, k, bufs](absl::Status st) {
                                          (*statuses)[k] = st;
                                          g->Finish(absl::OkStatus());
                                        }));
  }
  g->Finish(absl::OkStatus());
}

}  // namespace scribe
