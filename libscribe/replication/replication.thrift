// Cluster-to-cluster replication: a source cluster ships snapshots of a VSD to a
// target cluster, as the changed extents between a base snapshot the target already
// holds and a new one.
//
// One replication of one snapshot is a session:
//   hello                  once per connection: agree on a protocol version and limits;
//   beginSnapshot          open a session for (vsd, base snapshot -> new snapshot);
//   putExtents             any number of batches, in any order, each idempotent;
//   commitSnapshot         the target makes the new snapshot visible, atomically;
//   abortSession           the target drops everything the session wrote.
// A session the source stops driving is dropped by the target after
// Session.idle_timeout_ms; the source then starts again from beginSnapshot.
//
// Evolution rules (the protocol is versioned, both clusters upgrade independently):
//   * field ids are never reused or renumbered; removed fields leave their id retired;
//   * a field added to an existing struct is `optional`, and old peers skip it;
//   * a change old peers cannot ignore bumps PROTOCOL_VERSION, and a source only uses
//     it when hello negotiated a version that has it.

namespace cpp scribe.replication

// The version this IDL describes; the newest one a peer built from it speaks.
const i32 PROTOCOL_VERSION = 1
// The oldest version a peer built from this IDL still speaks.
const i32 PROTOCOL_VERSION_MIN = 1

// SnapshotDescriptor.id of "no snapshot": a beginSnapshot with this base sends the
// whole VSD (the first replication, or a resync after the target lost its base).
const i64 NO_SNAPSHOT = 0

typedef i64 VsdId
typedef i64 SnapshotId
typedef i64 SessionId

enum ErrorCode {
  // The sender's code is newer than this IDL; treat as INTERNAL.
  UNKNOWN = 0,
  // hello: no protocol version both peers speak.
  VERSION_MISMATCH = 1,
  // The target has no session with this id (never opened, committed, aborted or timed
  // out). The source starts over with beginSnapshot.
  SESSION_NOT_FOUND = 2,
  // beginSnapshot: the target does not hold the base snapshot, or its newest snapshot
  // of the VSD is not the base. The source resends from NO_SNAPSHOT.
  BASE_SNAPSHOT_MISMATCH = 3,
  // beginSnapshot: the VSD on the target differs (size, replication factor) from the
  // descriptor, or the new snapshot id is already taken.
  VSD_CONFLICT = 4,
  // putExtents: an extent reaches past the VSD's size_bytes.
  OUT_OF_RANGE = 5,
  // A malformed request: misaligned extent, data length != length_bytes, a batch over
  // the limits hello announced, data on a zero extent.
  INVALID_ARGUMENT = 6,
  // The target's pool cannot hold the snapshot.
  RESOURCE_EXHAUSTED = 7,
  // The target cannot serve now (not the leader, too many sessions); retry later.
  UNAVAILABLE = 8,
  // A broken invariant on the target.
  INTERNAL = 9,
}

// Source -> target, first call on a connection.
struct HelloRequest {
  1: required i32 protocol_version_min
  2: required i32 protocol_version_max
  // Stable id of the source cluster (sessions and logs are keyed by it).
  3: required string cluster_id
  4: optional string cluster_name
}

// Target -> source: the version both will speak and the limits the target enforces.
struct HelloResponse {
  // The highest version in both ranges.
  1: required i32 protocol_version
  2: required string cluster_id
  3: optional string cluster_name
  // Every Extent.length_bytes and offset_bytes is a multiple of this.
  4: required i32 block_size_bytes
  // Limits on one putExtents call.
  5: required i64 batch_bytes_max
  6: required i32 batch_extents_max
}

struct VsdDescriptor {
  1: required VsdId id
  2: required string name
  3: required i64 size_bytes
  // How many copies the target keeps of each block (its own placement decides where).
  4: required i16 replication_factor
}

struct SnapshotDescriptor {
  1: required SnapshotId id
  2: required string name
  // The source VSD's write generation the snapshot captured; orders snapshots.
  3: required i64 created_generation
}

// A range of the new snapshot that differs from the base. Exactly one of: `data` of
// length_bytes bytes, or `zero` (the range reads as zeros; no data is sent).
struct Extent {
  1: required i64 offset_bytes
  2: required i64 length_bytes
  3: optional binary data
  4: optional bool zero = false
}

struct Session {
  1: required SessionId id
  // The target drops the session after this long without a call on it.
  2: required i32 idle_timeout_ms
}

exception ReplicationError {
  1: required ErrorCode code
  2: required string message
  // True when the same call may succeed later unchanged (e.g. UNAVAILABLE).
  3: optional bool retryable = false
}

exception VersionMismatch {
  1: required i32 protocol_version_min
  2: required i32 protocol_version_max
  3: required string message
}

// Served by the target cluster; called by the source cluster.
service ReplicationTarget {
  HelloResponse hello(1: HelloRequest request)
      throws (1: VersionMismatch mismatch, 2: ReplicationError error)

  // base_snapshot.id == NO_SNAPSHOT sends the whole VSD.
  Session beginSnapshot(1: VsdDescriptor vsd,
                        2: SnapshotDescriptor base_snapshot,
                        3: SnapshotDescriptor new_snapshot)
      throws (1: ReplicationError error)

  // Durable on the target when this returns. Re-sending an extent is harmless.
  void putExtents(1: SessionId session, 2: list<Extent> extents)
      throws (1: ReplicationError error)

  // Returns the snapshot as the target now holds it.
  SnapshotDescriptor commitSnapshot(1: SessionId session)
      throws (1: ReplicationError error)

  // Idempotent: aborting an unknown session succeeds.
  void abortSession(1: SessionId session)
      throws (1: ReplicationError error)
}
