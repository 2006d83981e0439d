// Background deletes: detached trees freed a few nodes per loop turn.
#include "libscribe/cluster/pool_impl.h"

namespace scribe {

void PoolImpl::Retire(BlockMap* map) {
  std::shared_ptr<BlockMap::Node> root = map->ReleaseRoot();
  if (!root) return;
  doomed_.push_back(std::move(root));
  ScheduleReap();
}

void PoolImpl::ScheduleReap() {
  // (Not while the journal is replayed: the open schedules it when done.)
  if (reap_scheduled_ || doomed_.empty() || fsck_running_ > 0 || replaying_) return;
  reap_scheduled_ = true;
  auto alive = alive_;
  // A timer, not Post: posted callbacks run before the loop polls for I/O.
  loop_->RunAfter(options_.background_delete_pause_ns, [this, alive] {
    if (!*alive) return;
    reap_scheduled_ = false;
    if (fsck_running_ > 0) return;  // fsck schedules it again
    const int64_t start = loop_->NowNanos();
    ReapSome(kReapNodesPerTurn);
    delete_step_max_ns_ = std::max(delete_step_max_ns_, loop_->NowNanos() - start);
    ScheduleReap();
  });
}

void PoolImpl::ReapSome(size_t budget) {
  const size_t frees_before = pending_frees_.size();
  const bool was_reaping = reaping_;
  reaping_ = true;  // see UnrefBlock
  while (budget > 0 && !doomed_.empty()) {
    std::shared_ptr<BlockMap::Node> n = std::move(doomed_.back());
    doomed_.pop_back();
    if (n.use_count() > 1) continue;  // a live tree shares it: only this reference goes
    if (n->level > 0) {
      for (auto& c : n->children) {
        if (c) doomed_.push_back(std::move(c));
      }
    }
    --budget;
    ++delete_nodes_freed_;
  }  // the last node is destroyed here
  reaping_ = was_reaping;
  if (pending_frees_.size() > frees_before) {
    delete_bytes_freed_ += (pending_frees_.size() - frees_before) * kBlockBytes;
  }
}

void PoolImpl::DropLogPages(std::vector<MapEntry>* pages) {
  for (const MapEntry& p : *pages) DropPage(p);
  pages->clear();
}

}  // namespace scribe
