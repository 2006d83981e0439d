// Error handling helpers shared by libscribe and libhypercore.
//
// Operating errors are absl::Status / absl::StatusOr with canonical codes (a full pool
// is RESOURCE_EXHAUSTED, an unknown name NOT_FOUND, a stale epoch FAILED_PRECONDITION).
// Broken invariants are SCRIBE_CHECK failures, which stay on in release builds.
#ifndef SCRIBE_STATUS_H_
#define SCRIBE_STATUS_H_

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SCRIBE_STATUS_CONCAT_INNER_(a, b) a##b
#define SCRIBE_STATUS_CONCAT_(a, b) SCRIBE_STATUS_CONCAT_INNER_(a, b)

// Returns from the current function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    ::absl::Status scribe_status_ = (expr);          \
    if (!scribe_status_.ok()) return scribe_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, F())` binds the value of an absl::StatusOr or returns its
// error from the current function.
#define ASSIGN_OR_RETURN(lhs, expr)                                                    \
  auto SCRIBE_STATUS_CONCAT_(scribe_statusor_, __LINE__) = (expr);                     \
  if (!SCRIBE_STATUS_CONCAT_(scribe_statusor_, __LINE__).ok())                         \
    return SCRIBE_STATUS_CONCAT_(scribe_statusor_, __LINE__).status();                 \
  lhs = std::move(SCRIBE_STATUS_CONCAT_(scribe_statusor_, __LINE__)).value()

// Invariant check that is never compiled out: a violated invariant means the process
// state cannot be trusted, so it aborts with the location.
#define SCRIBE_CHECK(cond)                                                          \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: invariant violated: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

#endif  // SCRIBE_STATUS_H_
