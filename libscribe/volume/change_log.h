// The logical 4 KiB blocks of one VSD whose mapping changed during one snapshot
// interval (between a snapshot and the next, or since the last snapshot for the live
// VSD), kept as disjoint, non-adjacent [begin, end) extents of block indexes.
//
// It lets a diff of nearby snapshots look at what was written instead of walking the
// whole block maps. A log is a superset: it holds every block whose mapping changed and
// may hold blocks that changed back (written, then discarded), so its user compares the
// two maps for the logged blocks. A log is either known or unknown (dropped because it
// grew past its limit, or never recorded); only a known log may answer a diff.
//
// Memory: one btree entry (two uint64_t plus node overhead, ~20-40 bytes) per extent,
// bounded by the `extents_max` the owner passes to every change.
//
// Not thread-safe; the owner (the pool) serialises all access.
#ifndef SCRIBE_VOLUME_CHANGE_LOG_H_
#define SCRIBE_VOLUME_CHANGE_LOG_H_

#include <cstddef>
#include <cstdint>

#include "absl/container/btree_map.h"

namespace scribe {

class ChangeLog {
 public:
  // Adds blocks [begin, end). A log that would hold more than `extents_max` extents
  // becomes unknown (and frees its memory). Does nothing to an unknown log.
  void Add(uint64_t begin, uint64_t end, size_t extents_max);
  // Adds every block of `other`; an unknown `other` makes this log unknown.
  void Merge(const ChangeLog& other, size_t extents_max);
  // Forgets the blocks: the log no longer answers diffs.
  void MarkUnknown();
  // Known and empty: the start of an interval.
  void Reset();

  bool known() const { return known_; }
  // Changes with every call that may change the log; unique across all logs of the
  // process (so a log moved to another owner is never mistaken for one written before).
  uint64_t version() const { return version_; }
  size_t extent_count() const { return extents_.size(); }
  uint64_t block_count() const;
  // begin -> end, ascending, disjoint and non-adjacent. Empty when unknown.
  const absl::btree_map<uint64_t, uint64_t>& extents() const { return extents_; }

 private:
  void Touch();
  bool known_ = true;
  uint64_t version_ = 0;
  absl::btree_map<uint64_t, uint64_t> extents_;
};

}  // namespace scribe

#endif  // SCRIBE_VOLUME_CHANGE_LOG_H_
