// Change logs: which blocks each snapshot interval changed (what Diff reads).
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

bool PoolImpl::ChangeLogsEnabled() const { return options_.change_log_blocks_per_extent != 0; }

size_t PoolImpl::ChangeLogExtentsMax(uint64_t capacity_blocks) const {
  if (!ChangeLogsEnabled()) return 0;
  return std::max(kChangeLogExtentsMin, capacity_blocks / options_.change_log_blocks_per_extent);
}

void PoolImpl::StartInterval(VsdState* v, SnapshotId base) {
  v->base = ChangeLogsEnabled() ? base : SnapshotId{};
  v->changes.Reset();
}

void PoolImpl::LogChange(VsdState* v, uint64_t begin, uint64_t end) {
  if (!v->base.valid()) return;
  const uint64_t capacity = v->map.capacity_blocks();
  v->changes.Add(begin, std::min(end, capacity), ChangeLogExtentsMax(capacity));
}

void PoolImpl::UnlinkSnapshots(const std::set<SnapshotId>& doomed) {
  if (doomed.empty()) return;
  auto rebase = [&](SnapshotId& base, ChangeLog& changes, uint64_t capacity_blocks) {
    if (!doomed.count(base)) return;
    std::vector<const SnapshotState*> via;
    SnapshotId b = base;
    while (b.valid() && doomed.count(b)) {
      const SnapshotState* s = FindSnapshot(b);
      // Bases are older than their snapshots: the walk ends.
      if (s == nullptr || s->base >= b) {
        b = SnapshotId{};
        break;
      }
      via.push_back(s);
      b = s->base;
    }
    base = b;
    if (!base.valid()) {
      changes.Reset();
      return;
    }
    for (const SnapshotState* s : via) {
      changes.Merge(s->changes, ChangeLogExtentsMax(capacity_blocks));
    }
  };
  for (auto& [id, v] : vsds_) rebase(v->base, v->changes, v->map.capacity_blocks());
  // A snapshot's base is older than it: only later snapshots can be based on these.
  for (auto it = snapshots_.upper_bound(*doomed.begin()); it != snapshots_.end(); ++it) {
    if (doomed.count(it->first)) continue;
    SnapshotState& t = *it->second;
    rebase(t.base, t.changes, t.map.capacity_blocks());
  }
}

const SnapshotState* PoolImpl::Predecessor(const SnapshotState& s) const {
  if (!s.base.valid() || !s.changes.known() || s.base >= s.id) return nullptr;
  auto it = snapshots_.find(s.base);
  return it == snapshots_.end() ? nullptr : it->second.get();
}

std::optional<std::vector<BlockMap::Range>> PoolImpl::ChangedRanges(const SnapshotState& a,
                                                          const SnapshotState& b) const {
  if (!ChangeLogsEnabled()) return std::nullopt;
  const size_t extents_max =
      ChangeLogExtentsMax(std::max(a.map.capacity_blocks(), b.map.capacity_blocks()));
  std::vector<const ChangeLog*> logs;
  size_t extents = 0;
  // Bases are older than their snapshots, so the newer of the two cannot be an
  // ancestor of the older: step it back until both meet.
  const SnapshotState* x = &a;
  const SnapshotState* y = &b;
  while (x != y) {
    const SnapshotState*& newer = x->id > y->id ? x : y;
    const SnapshotState* next = Predecessor(*newer);
    if (next == nullptr) return std::nullopt;
    logs.push_back(&newer->changes);
    extents += newer->changes.extent_count();
    if (extents > extents_max) return std::nullopt;
    newer = next;
  }
  std::vector<BlockMap::Range> ranges;
  ranges.reserve(extents);
  for (const ChangeLog* log : logs) {
    for (const auto& extent : log->extents()) ranges.push_back(extent);
  }
  if (logs.size() > 1) {
    std::sort(ranges.begin(), ranges.end());
    size_t n = 0;
    for (const BlockMap::Range& r : ranges) {
      if (n > 0 && r.first <= ranges[n - 1].second) {
        ranges[n - 1].second = std::max(ranges[n - 1].second, r.second);
      } else {
        ranges[n++] = r;
      }
    }
    ranges.resize(n);
  }
  return ranges;
}

}  // namespace scribe
