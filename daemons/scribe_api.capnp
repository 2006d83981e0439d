@0xd5e0cacd46c96be1;
# The management API scribed serves to the `scribe` CLI (and to hypercore): VSDs,
# snapshots, clones, disks and pool health. It mirrors scribe/pool.h; scribed decodes a
# call, runs it on the Pool and encodes the result.
#
# Errors. A business error (unknown name, full pool, bad argument) is not an RPC
# exception: every method returns an `error`, whose code is OK (0) on success, and the
# other result fields are meaningful only then. Exceptions are left for transport
# failures (disconnected, overloaded).
#
# Units are in field names (`sizeBytes`); ids are the pool's strong ids as UInt64.

$import "/capnp/c++.capnp".namespace("scribe::api");

struct Error {
  code @0 :UInt16;
  # An absl::StatusCode value: 0 OK, 3 INVALID_ARGUMENT, 5 NOT_FOUND, 6 ALREADY_EXISTS,
  # 8 RESOURCE_EXHAUSTED, 9 FAILED_PRECONDITION, 13 INTERNAL, 14 UNAVAILABLE, ...
  message @1 :Text;
}

enum Tier {
  ssd @0;
  hdd @1;
}

struct VsdInfo {
  id @0 :UInt64;
  name @1 :Text;
  sizeBytes @2 :UInt64;
  replication @3 :UInt8;      # 2 or 3 copies
  flashPriority @4 :UInt8;    # 0..11
  allocatedBytes @5 :UInt64;  # mapped blocks of the live VSD
  uniqueBytes @6 :UInt64;     # blocks no snapshot or clone shares
  sharedBytes @7 :UInt64;     # allocatedBytes - uniqueBytes
  snapshots @8 :UInt32;
}

struct SnapshotInfo {
  id @0 :UInt64;
  vsd @1 :UInt64;
  name @2 :Text;
  generation @3 :UInt64;   # pool metadata sequence at creation
  uniqueBytes @4 :UInt64;  # freed if this snapshot alone were deleted
}

struct DiskInfo {
  id @0 :UInt64;
  node @1 :UInt64;
  tier @2 :Tier;
  capacityBytes @3 :UInt64;
  usedBytes @4 :UInt64;
  chunks @5 :UInt64;
  failed @6 :Bool;
  online @7 :Bool;
}

struct PoolStats {
  ssdCapacityBytes @0 :UInt64;
  ssdUsedBytes @1 :UInt64;
  hddCapacityBytes @2 :UInt64;
  hddUsedBytes @3 :UInt64;
  chunks @4 :UInt64;
  degradedChunks @5 :UInt64;
  rebuildsInFlight @6 :UInt64;
  chunksRebuilt @7 :UInt64;
  metadataSequence @8 :UInt64;
  fullyRedundant @9 :Bool;     # no degraded chunk and no rebuild running
  fenced @10 :Bool;
  # A disk refused this pool for a newer owner's epoch: every later call fails.
  metadataChunks @11 :UInt64;       # chunks holding metadata pages (in `chunks`)
  checkpoints @12 :UInt64;          # since the pool was opened
  lastCheckpointPages @13 :UInt64;  # pages the last checkpoint wrote (what had changed)
  lastCheckpointRootBytes @14 :UInt64;
  deleteSubtreesPending @15 :UInt64;  # deleted snapshots/VSDs still being freed (0: done)
  deleteBytesFreed @16 :UInt64;       # by background deletes since the pool was opened
}

struct Extent {
  offsetBytes @0 :UInt64;
  lengthBytes @1 :UInt64;
}

struct NodeStatus {
  # One scribed as the cluster sees it (membership lives in etcd).
  id @0 :UInt64;
  backplaneAddress @1 :Text;  # DiskService, "host:port"
  adminAddress @2 :Text;      # ScribeAdmin, "host:port"
  nbdSocket @3 :Text;         # where this node exports VSDs over NBD
  alive @4 :Bool;             # holds its etcd lease
  reachable @5 :Bool;         # the pool owner can reach its disks
  owner @6 :Bool;             # runs the pool
}

struct ClusterStatus {
  ownerNode @0 :UInt64;  # 0: no owner yet (forming, or electing after a failure)
  epoch @1 :UInt64;      # the owner's fencing epoch
  state @2 :Text;        # "forming (2 of 3 nodes)", "running", ...
  nodes @3 :List(NodeStatus);
}

struct ScrubReport {
  chunksChecked @0 :UInt64;
  blocksChecked @1 :UInt64;
  badCopies @2 :UInt64;
  repaired @3 :UInt64;
  unrecoverable @4 :UInt64;
}

interface ScribeAdmin {
  # VSDs are named by `name` (unique in the pool); snapshots by (vsd name, snapshot name).

  createVsd @0 (name :Text, sizeBytes :UInt64, replication :UInt8, flashPriority :UInt8)
      -> (vsd :VsdInfo, error :Error);
  listVsds @1 () -> (vsds :List(VsdInfo), error :Error);
  deleteVsd @2 (name :Text) -> (error :Error);
  resizeVsd @3 (name :Text, sizeBytes :UInt64) -> (vsd :VsdInfo, error :Error);

  createSnapshot @4 (vsd :Text, name :Text) -> (snapshot :SnapshotInfo, error :Error);
  listSnapshots @5 (vsd :Text) -> (snapshots :List(SnapshotInfo), error :Error);
  deleteSnapshot @6 (vsd :Text, name :Text) -> (error :Error);
  cloneFromSnapshot @7 (vsd :Text, snapshot :Text, cloneName :Text)
      -> (clone :VsdInfo, error :Error);
  diff @8 (vsd :Text, from :Text, to :Text) -> (extents :List(Extent), error :Error);
  # Extents that differ between snapshots `from` and `to` of `vsd`; an empty `from`
  # means everything mapped in `to`.

  listDisks @9 () -> (disks :List(DiskInfo), error :Error);
  failDisk @10 (disk :UInt64) -> (error :Error);
  stats @11 () -> (stats :PoolStats, error :Error);
  scrub @12 () -> (report :ScrubReport, error :Error);
  # Reads and verifies every copy of every used block; returns when done.

  cluster @13 () -> (status :ClusterStatus, error :Error);
  # Membership and ownership; answered without the pool (any node that can reach etcd).
  addDisk @14 (node :UInt64, path :Text, sizeBytes :UInt64, tier :Tier)
      -> (disk :UInt64, error :Error);
  # Adds the file or block device at `path` on node `node` to the pool. A missing file is
  # created (sparse) with `sizeBytes`; 0 means "use the existing file or device as is".
  cloneVsd @15 (vsd :Text, cloneName :Text) -> (clone :VsdInfo, error :Error);
  # A thin clone of the live VSD as it is now.
  revertToSnapshot @16 (vsd :Text, snapshot :Text) -> (error :Error);
  # Brings the VSD back to the snapshot's contents and size; later writes are discarded.
  createGroupSnapshot @17 (vsds :List(Text), name :Text)
      -> (snapshots :List(SnapshotInfo), error :Error);
  # One point in time across several VSDs (a VM's disks), each snapshot named `name`;
  # results in `vsds` order.
  getVsd @18 (name :Text) -> (vsd :VsdInfo, error :Error);
  exportInfo @19 (vsd :Text, node :UInt64)
      -> (node :UInt64, nbdSocket :Text, exportName :Text, uri :Text, error :Error);
  # How to reach `vsd` over NBD on node `node` (0: the pool owner; the owner answers
  # calls forwarded from other nodes, so the caller names the node it wants):
  # `uri` is "nbd+unix:///<vsd>?socket=<nbdSocket>" (the name percent-encoded), `node`
  # the node that was resolved.
  fenceVsd @20 (vsd :Text, epoch :UInt64) -> (error :Error);
  # Raises `vsd`'s writer epoch to `epoch` (persisted in etcd; lower than the current one:
  # FAILED_PRECONDITION, equal: no change). NBD clients that opened the export as
  # "<vsd>@<older epoch>" can no longer write, nor reconnect with that epoch; the VM
  # restarted with `epoch` opens "<vsd>@<epoch>". Plain export names are not fenced.
}
