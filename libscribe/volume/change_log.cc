#include "libscribe/volume/change_log.h"

#include <algorithm>
#include <atomic>
#include <iterator>

namespace scribe {

void ChangeLog::Touch() {
  static std::atomic<uint64_t> next{1};
  version_ = next.fetch_add(1, std::memory_order_relaxed);
}

void ChangeLog::Add(uint64_t begin, uint64_t end, size_t extents_max) {
  if (!known_ || begin >= end) return;
  Touch();
  // Absorb the extent that starts at or before `begin` if it reaches it, then every
  // extent that starts inside (or right after) the new one.
  auto it = extents_.upper_bound(begin);
  if (it != extents_.begin()) {
    auto prev = std::prev(it);
    if (prev->second >= begin) {
      if (prev->second >= end) return;  // already covered
      begin = prev->first;
      it = prev;
    }
  }
  while (it != extents_.end() && it->first <= end) {
    end = std::max(end, it->second);
    it = extents_.erase(it);
  }
  extents_.emplace_hint(it, begin, end);
  if (extents_.size() > extents_max) MarkUnknown();
}

void ChangeLog::Merge(const ChangeLog& other, size_t extents_max) {
  if (!other.known_) return MarkUnknown();
  for (const auto& [begin, end] : other.extents_) {
    if (!known_) return;
    Add(begin, end, extents_max);
  }
}

void ChangeLog::MarkUnknown() {
  Touch();
  known_ = false;
  extents_.clear();
}

void ChangeLog::Reset() {
  Touch();
  known_ = true;
  extents_.clear();
}

uint64_t ChangeLog::block_count() const {
  uint64_t n = 0;
  for (const auto& [begin, end] : extents_) n += end - begin;
  return n;
}

}  // namespace scribe
