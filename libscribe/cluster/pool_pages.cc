// The page store: metadata chunks, page allocation and release, page reads.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

int PoolImpl::MetaReplication() const {
  std::set<NodeId> nodes;
  for (const auto& [id, d] : disks_) {
    if (!d.failed) nodes.insert(d.node);
  }
  return std::clamp<int>(static_cast<int>(nodes.size()), 1, 3);
}

uint64_t PoolImpl::MetadataReservePerNode() const {
  // Up to two checkpoints' worth of pages (2 x checkpoint_dirty_pages_max), at most
  // 1/64 of the smallest node and at least 2 chunks.
  uint64_t smallest = UINT64_MAX;
  std::map<NodeId, uint64_t> slots;
  for (const auto& [id, d] : disks_) {
    if (!d.failed) slots[d.node] += d.slots;
  }
  for (const auto& [node, n] : slots) smallest = std::min(smallest, n);
  if (slots.empty()) smallest = 0;
  const uint64_t most = 2 * options_.checkpoint_dirty_pages_max / kBlocksPerChunk + 2;
  return std::clamp<uint64_t>(smallest / 64, 2, most);
}

void PoolImpl::CloseMetaChunk() {
  if (meta_open_chunk_ == 0) return;
  const uint64_t id = meta_open_chunk_;
  meta_open_chunk_ = 0;
  if (ChunkState* c = FindChunk(id)) {
    c->open = false;
    MaybeFreeChunk(c);
  }
}

absl::StatusOr<std::vector<MapEntry>> PoolImpl::AllocatePages(size_t n) {
  std::vector<MapEntry> out;
  while (out.size() < n) {
    ChunkState* c = meta_open_chunk_ ? FindChunk(meta_open_chunk_) : nullptr;
    if (c == nullptr || c->used == kBlocksPerChunk || !ChunkAcceptsWrites(*c)) {
      CloseMetaChunk();
      c = nullptr;
      for (uint64_t id : meta_chunks_) {  // the emptiest metadata chunk with room
        ChunkState* m = FindChunk(id);
        if (m == nullptr || m->used == kBlocksPerChunk || !ChunkAcceptsWrites(*m)) continue;
        if (c == nullptr || m->used < c->used) c = m;
      }
      if (c == nullptr || c->used > kBlocksPerChunk / 2) {
        absl::StatusOr<ChunkState*> fresh = NewChunk(MetaReplication(), /*meta=*/true);
        if (fresh.ok()) {
          c = *fresh;
        } else if (c == nullptr) {
          for (const MapEntry& e : out) ReleasePage(e);
          return absl::ResourceExhaustedError(absl::StrCat(
              "no space for metadata pages: ", fresh.status().message()));
        }
      }
      c->open = true;
      meta_open_chunk_ = c->id;
    }
    for (uint32_t b = 0; b < kBlocksPerChunk && out.size() < n; ++b) {
      if (c->blocks->refs[b] == 0 && !c->busy[b]) {
        c->blocks->refs[b] = 1;
        ++c->used;
        out.push_back(MapEntry{c->id, b, 0});
      }
    }
  }
  return out;
}

void PoolImpl::ReleasePage(const MapEntry& p) {
  ChunkState* c = FindChunk(p.chunk);
  if (c == nullptr || c->blocks->refs[p.block] == 0) return;
  c->blocks->refs[p.block] = 0;
  --c->used;
  MaybeFreeChunk(c);
}

void PoolImpl::DropPage(const MapEntry& p) {
  ChunkState* c = FindChunk(p.chunk);
  if (c == nullptr || !c->meta || c->blocks->refs[p.block] == 0) return;  // e.g. a failed open
  c->blocks->refs[p.block] = 0;
  c->busy[p.block] = true;
  page_frees_.push_back(p);
}

void PoolImpl::ReleaseDroppedPages(std::vector<MapEntry> pages) {
  for (const MapEntry& p : pages) {
    ChunkState* c = FindChunk(p.chunk);
    if (c == nullptr || !c->busy[p.block] || c->blocks->refs[p.block] != 0) continue;
    c->busy[p.block] = false;
    --c->used;
    MaybeFreeChunk(c);
  }
}

void PoolImpl::NoteNodeDirtied() { ++dirty_nodes_; }

void PoolImpl::ReadPage(const MapEntry& p, std::function<void(absl::StatusOr<std::shared_ptr<AlignedBuffer>>)> done) {
  const ChunkState* c = FindChunk(p.chunk);
  if (c == nullptr || !c->meta || p.block >= kBlocksPerChunk) {
    // Posted: callers (ReadPages) must never be re-entered.
    absl::Status st = absl::DataLossError(absl::StrCat(DescribePointer(p), ": not in a metadata chunk"));
    return loop_->Post([done, st] { done(st); });
  }
  auto buf = std::make_shared<AlignedBuffer>(kPageBytes);
  auto why = std::make_shared<std::vector<std::string>>();
  // Up-to-date copies first; a stale one may still hold the page (its checksum says).
  auto copies = std::make_shared<std::vector<Replica>>(c->replicas);
  std::stable_partition(copies->begin(), copies->end(), [](const Replica& r) { return !r.stale; });
  auto alive = alive_;
  // The next attempt. It names itself weakly: the read in flight holds it, so it goes
  // when that read's callback does (answered, or dropped with the pool or the device).
  auto attempt = std::make_shared<std::function<void(size_t)>>();
  std::weak_ptr<std::function<void(size_t)>> self = attempt;
  *attempt = [this, alive, p, buf, why, copies, self, done](size_t i) {
    auto attempt = self.lock();
    if (i == copies->size()) {
      absl::Status st = absl::DataLossError(
          absl::StrFormat("%s: no good copy (%s)", DescribePointer(p), absl::StrJoin(*why, "; ")));
      loop_->Post([done, st] { done(st); });
      return;
    }
    const Replica r = (*copies)[i];
    const DiskState* d = FindDisk(r.disk);
    if (d == nullptr || !DiskUsable(*d)) {
      why->push_back(absl::StrFormat("disk %d: %s", r.disk.value,
                                     d == nullptr || d->dev == nullptr ? "absent"
                                     : d->failed                      ? "failed"
                                                                      : "node offline"));
      return (*attempt)(i + 1);
    }
    d->dev->Read(ReplicaOffset(r, p.block), kPageBytes, buf->data(),
                 Timed([this, alive, p, buf, why, attempt, done, r, i](absl::Status st) {
                   if (!*alive) return;
                   if (st.ok() && Crc32c(buf->data(), kPageBytes) == p.crc) return done(buf);
                   why->push_back(absl::StrFormat("disk %d: %s", r.disk.value,
                                                  st.ok() ? "checksum mismatch" : st.message()));
                   (*attempt)(i + 1);
                 }));
  };
  (*attempt)(0);
}

void PoolImpl::ReadPages(std::vector<MapEntry> pages,
               std::function<absl::Status(size_t, const uint8_t*)> each, StatusDone done) {
  if (replaying_) open_pages_read_ += pages.size();  // an open in progress
  struct State {
    std::vector<MapEntry> pages;
    std::function<absl::Status(size_t, const uint8_t*)> each;
    StatusDone done;
    std::deque<std::vector<size_t>> runs;  // indexes into pages, consecutive blocks
    std::deque<size_t> singles;            // pages to read alone
    size_t in_flight = 0;
    absl::Status error;
  };
  auto s = std::make_shared<State>();
  s->pages = std::move(pages);
  s->each = std::move(each);
  s->done = std::move(done);
  std::vector<size_t> order(s->pages.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    const MapEntry& a = s->pages[x];
    const MapEntry& b = s->pages[y];
    return a.chunk != b.chunk ? a.chunk < b.chunk : a.block < b.block;
  });
  for (size_t i : order) {
    if (!s->runs.empty()) {
      std::vector<size_t>& r = s->runs.back();
      const MapEntry& last = s->pages[r.back()];
      const MapEntry& p = s->pages[i];
      if (r.size() < kPagesPerRun && p.chunk == last.chunk && p.block == last.block + 1) {
        r.push_back(i);
        continue;
      }
    }
    s->runs.push_back({i});
  }
  auto alive = alive_;
  // Issues reads while fewer than kPageReadsInFlight are. It names itself weakly: the
  // reads in flight hold it, so it goes with their callbacks (answered, or dropped with
  // the pool or the device), never in a cycle.
  auto pump = std::make_shared<std::function<void()>>();
  std::weak_ptr<std::function<void()>> self = pump;
  *pump = [this, alive, s, self]() {
    auto pump = self.lock();
    while (s->error.ok() && (!s->singles.empty() || !s->runs.empty()) &&
           s->in_flight < kPageReadsInFlight) {
      ++s->in_flight;
      if (!s->singles.empty()) {
        const size_t i = s->singles.front();
        s->singles.pop_front();
        ReadPage(s->pages[i], [alive, s, pump, i](absl::StatusOr<std::shared_ptr<AlignedBuffer>> r) {
          if (!*alive) return;
          --s->in_flight;
          if (s->error.ok()) s->error = r.ok() ? s->each(i, (*r)->data()) : r.status();
          (*pump)();
        });
        continue;
      }
      auto run = std::make_shared<std::vector<size_t>>(std::move(s->runs.front()));
      s->runs.pop_front();
      ReadPageRun(s->pages, *run, [alive, s, pump, run](std::shared_ptr<AlignedBuffer> buf) {
        if (!*alive) return;
        --s->in_flight;
        for (size_t k = 0; k < run->size() && s->error.ok(); ++k) {
          const size_t i = (*run)[k];
          const uint8_t* page = buf ? buf->data() + k * kPageBytes : nullptr;
          if (page != nullptr && Crc32c(page, kPageBytes) == s->pages[i].crc) {
            s->error = s->each(i, page);
          } else {
            s->singles.push_back(i);  // this copy is bad or unreadable: try them all
          }
        }
        (*pump)();
      });
    }
    if (s->in_flight == 0 && (!s->error.ok() || (s->singles.empty() && s->runs.empty()))) {
      StatusDone d = std::move(s->done);
      if (d) d(s->error);
    }
  };
  (*pump)();
}

void PoolImpl::ReadPageRun(const std::vector<MapEntry>& pages, const std::vector<size_t>& run,
                 std::function<void(std::shared_ptr<AlignedBuffer>)> done) {
  const MapEntry first = pages[run.front()];
  const ChunkState* c = FindChunk(first.chunk);
  const Replica* from = nullptr;
  if (c != nullptr && c->meta && first.block + run.size() <= kBlocksPerChunk) {
    for (const Replica& r : c->replicas) {
      if (ReplicaWritable(r)) {
        from = &r;
        break;
      }
    }
  }
  if (from == nullptr) return loop_->Post([done] { done(nullptr); });
  auto buf = std::make_shared<AlignedBuffer>(run.size() * kPageBytes, AlignedBuffer::Uninitialized{});
  auto alive = alive_;
  disks_.at(from->disk).dev->Read(ReplicaOffset(*from, first.block), run.size() * kPageBytes, buf->data(),
                                  Timed([alive, buf, done](absl::Status st) {
                                    if (!*alive) return;
                                    done(st.ok() ? buf : nullptr);
                                  }));
}

absl::Status PoolImpl::ClaimPage(const MapEntry& p) {
  ChunkState* c = FindChunk(p.chunk);
  if (c == nullptr || !c->meta || p.block >= kBlocksPerChunk) {
    return absl::DataLossError(absl::StrCat(DescribePointer(p), ": not in a metadata chunk"));
  }
  if (c->blocks->refs[p.block] != 0) {
    return absl::DataLossError(absl::StrCat(DescribePointer(p), ": named twice"));
  }
  c->blocks->refs[p.block] = 1;
  c->blocks->crc[p.block] = p.crc;
  ++c->used;
  return absl::OkStatus();
}

}  // namespace scribe
