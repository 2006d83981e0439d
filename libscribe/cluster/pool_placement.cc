// Placement: which disks take a chunk's copies, which chunk a write goes to.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

bool PoolImpl::DiskUsable(const DiskState& d) const {
  return d.dev != nullptr && !d.failed && NodeOnline(d.node);
}

bool PoolImpl::NodeOnline(NodeId n) const {
  auto it = nodes_online_.find(n);
  return it == nodes_online_.end() || it->second;
}

bool PoolImpl::ReplicaWritable(const Replica& r) const {
  auto it = disks_.find(r.disk);
  return it != disks_.end() && DiskUsable(it->second) && !r.stale;
}

std::vector<std::pair<DiskId, uint64_t>> PoolImpl::PlaceSlots(int count, const std::set<NodeId>& exclude,
                                                             bool data) {
  std::map<NodeId, const DiskState*> best;
  std::map<NodeId, uint64_t> node_free;
  for (const auto& [id, d] : disks_) {
    if (!DiskUsable(d) || exclude.count(d.node) || d.used_slots >= d.slots) continue;
    node_free[d.node] += d.slots - d.used_slots;
    const DiskState*& b = best[d.node];
    if (b == nullptr || d.slots - d.used_slots > b->slots - b->used_slots) b = &d;
  }
  std::vector<const DiskState*> order;
  const uint64_t reserve = data ? MetadataReservePerNode() : 0;  // data leaves it on every node
  for (auto& [node, d] : best) {
    if (data && node_free[node] <= reserve) continue;
    order.push_back(d);
  }
  std::stable_sort(order.begin(), order.end(), [](const DiskState* a, const DiskState* b) {
    return a->slots - a->used_slots > b->slots - b->used_slots;
  });
  std::vector<std::pair<DiskId, uint64_t>> out;
  for (const DiskState* c : order) {
    if (static_cast<int>(out.size()) == count) break;
    // First free slot, from where the last search ended (slots freed since lower it):
    // each allocation moves past the slots it finds used once, not all of them.
    DiskState& d = disks_.at(c->id);
    for (uint64_t s = d.free_hint; s < d.slots; ++s) {
      if (d.slot_owner[s] == 0) {
        d.free_hint = s;
        out.push_back({d.id, s});
        break;
      }
    }
  }
  return out;
}

int PoolImpl::TargetCopies(const ChunkState& c) const {
  return c.meta ? std::min(c.replication, MetaReplication()) : c.replication;
}

size_t PoolImpl::AliveNodes() const {
  std::set<NodeId> nodes;
  for (const auto& [id, d] : disks_) {
    if (DiskUsable(d)) nodes.insert(d.node);
  }
  return nodes.size();
}

size_t PoolImpl::UsableNodes() const {
  std::set<NodeId> nodes;
  for (const auto& [id, d] : disks_) {
    if (DiskUsable(d) && d.used_slots < d.slots) nodes.insert(d.node);
  }
  return nodes.size();
}

void PoolImpl::CloseOpenChunk(VsdState* v) {
  if (v->open_chunk == 0) return;
  if (ChunkState* c = FindChunk(v->open_chunk)) {
    c->open = false;
    NoteMaybeReusable(c);
    MaybeFreeChunk(c);
  }
  v->open_chunk = 0;
}

bool PoolImpl::ChunkAcceptsWrites(const ChunkState& c) const {
  if (c.rebuilding) return false;
  for (const Replica& r : c.replicas) {
    if (!ReplicaWritable(r)) return false;
  }
  // Counting nodes scans every disk: only needed for a chunk short of copies, which
  // takes writes while the nodes it lacks are down (a data chunk) or full (metadata).
  if (static_cast<int>(c.replicas.size()) >= TargetCopies(c)) return true;
  const size_t nodes = c.meta ? UsableNodes() : AliveNodes();
  return static_cast<int>(c.replicas.size()) >= std::min<int>(c.replication, static_cast<int>(nodes));
}

ChunkState* PoolImpl::ReusableChunk(int replication) {
  ChunkState* best = nullptr;
  for (auto it = reuse_candidates_.begin(); it != reuse_candidates_.end();) {
    ChunkState* c = FindChunk(*it);
    if (c == nullptr || c->used > kBlocksPerChunk / 2) {
      it = reuse_candidates_.erase(it);  // gone, or filled up: back when it drains
      continue;
    }
    ++it;
    if (c->open || c->meta || c->replication != replication || !ChunkAcceptsWrites(*c)) continue;
    if (!c->blocks) {
      // Its free blocks are known once its state is read: next time.
      LoadChunks({c->id}, [](absl::Status) {});
      continue;
    }
    if (best == nullptr || c->used < best->used) best = c;
  }
  if (best == nullptr && !reuse_groups_.empty()) {
    // Chunks with room whose records are not in memory: read a group for next time.
    const uint64_t g = *reuse_groups_.begin();
    reuse_groups_.erase(reuse_groups_.begin());
    LoadGroups({g * kChunksPerGroup}, [](absl::Status) {});
  }
  return best;
}

void PoolImpl::NoteMaybeReusable(const ChunkState* c) {
  if (c->used <= kBlocksPerChunk / 2) reuse_candidates_.insert(c->id);
}

ChunkState* PoolImpl::AnyChunkWithRoom(int replication) {
  ChunkState* best = nullptr;
  std::vector<uint64_t> unread;
  for (auto& [id, c] : chunks_) {
    if (c.open || c.meta || c.used >= kBlocksPerChunk || c.replication != replication ||
        !ChunkAcceptsWrites(c)) {
      continue;
    }
    if (!c.blocks) {
      if (unread.size() < 8) unread.push_back(id);
      continue;
    }
    if (best == nullptr || c.used < best->used) best = &c;
  }
  // A full pool's room may be in chunks not in memory: read some for the next try.
  if (best == nullptr) {
    for (const auto& [g, gs] : groups_) {
      if (unread.size() >= 8) break;
      if (!gs.resident && gs.room > 0) unread.push_back(g * kChunksPerGroup);
    }
  }
  if (best == nullptr && !unread.empty()) LoadChunks(std::move(unread), [](absl::Status) {});
  return best;
}

absl::StatusOr<std::vector<MapEntry>> PoolImpl::AllocateBlocks(VsdState* v, uint64_t n) {
  std::vector<MapEntry> out;
  while (out.size() < n) {
    ChunkState* c = v->open_chunk ? FindChunk(v->open_chunk) : nullptr;
    if (c == nullptr || c->used == kBlocksPerChunk || !ChunkAcceptsWrites(*c)) {
      CloseOpenChunk(v);
      c = ReusableChunk(v->replication);
      if (c == nullptr) {
        absl::StatusOr<ChunkState*> fresh = NewChunk(v->replication);
        if (fresh.ok()) {
          c = *fresh;
        } else if ((c = AnyChunkWithRoom(v->replication)) == nullptr) {
          for (const MapEntry& e : out) Unreserve(e);
          return fresh.status();
        }
      }
      c->open = true;
      v->open_chunk = c->id;
    }
    SCRIBE_CHECK(c->blocks != nullptr);
    TouchChunk(c);
    for (uint32_t b = 0; b < kBlocksPerChunk && out.size() < n; ++b) {
      if (c->blocks->refs[b] == 0 && !c->busy[b]) {
        c->busy[b] = true;
        ++c->used;
        out.push_back(MapEntry{c->id, b, 0});
      }
    }
  }
  return out;
}

void PoolImpl::Unreserve(const MapEntry& e) {
  ChunkState* c = FindChunk(e.chunk);
  if (!c || !c->busy[e.block]) return;
  c->busy[e.block] = false;
  if (c->blocks->refs[e.block] == 0) --c->used;
  NoteMaybeReusable(c);
  MaybeFreeChunk(c);
}

absl::StatusOr<ChunkState*> PoolImpl::NewChunk(int replication, bool meta) {
  const size_t nodes = UsableNodes();
  if (nodes == 0) {
    return absl::ResourceExhaustedError("pool is full: no healthy disk has a free chunk");
  }
  // A data chunk starts short of copies only while nodes are down or their disks failed
  // (the healer adds copies when they return); never two copies on one node. Healthy
  // nodes that are full make the pool full for this replication: acknowledging a write
  // with fewer copies than asked while every node is up would be a silent loss of
  // redundancy that nothing can heal. Metadata chunks take what there is (a checkpoint
  // must always be able to land; they are healed like the rest).
  const int copies = std::min<int>(replication, static_cast<int>(meta ? nodes : AliveNodes()));
  if (static_cast<int>(nodes) < copies) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "pool is full: %d nodes have a free chunk, a replication-%d VSD needs %d", nodes, replication,
        copies));
  }
  auto slots = PlaceSlots(copies, {}, !meta);
  if (static_cast<int>(slots.size()) < copies) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "pool is full: fewer than %d nodes have a free chunk beyond the %d each keeps for "
        "metadata (commits, deletes, healing)",
        copies, meta ? 0 : MetadataReservePerNode()));
  }
  const uint64_t id = next_chunk_++;
  std::vector<Replica> replicas;
  for (auto [disk, slot] : slots) replicas.push_back(Replica{disk, slot, false});
  Encoder e;
  EncodeAddChunk(e, id, replication, meta, replicas);
  if (meta) {
    Decoder d(e.out().data(), e.out().size());
    Apply(d);
  } else {
    Mutate(e.out());
  }
  if (copies < replication) Heal();
  return FindChunk(id);
}

uint64_t PoolImpl::ReplicaOffset(const Replica& r, uint32_t block) const {
  const DiskState& d = disks_.at(r.disk);
  return d.data_start + r.slot * kChunkBytes + static_cast<uint64_t>(block) * kBlockBytes;
}

}  // namespace scribe
