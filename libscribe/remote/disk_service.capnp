@0xc73b64e3f0867358;
# Block I/O on one node's local disks for the pool owner on another node.
#
# Every request names a disk (its id on the serving node) and carries the caller's
# ownership epoch (from etcd). The server remembers, per disk, the highest epoch it has
# seen: a request with a lower one fails FAILED_PRECONDITION ("stale epoch N < M") and
# does nothing; a higher one raises that fence, and requests of the new epoch start only
# after those of older epochs already running have finished. A deposed owner that is
# partitioned away therefore cannot change a disk once its successor has talked to it.
#
# Operating errors travel in `error` (never as RPC exceptions); an exception means the
# connection or the server broke.

$import "/capnp/c++.capnp".namespace("scribe::remote::wire");

struct Error {
  code @0 :UInt16;   # an absl::StatusCode; 0 = OK
  message @1 :Text;
}

interface DiskService {
  # Checks that the disk is served here, raises its fence to `epoch` (waiting for older
  # epochs' requests to finish) and returns its size.
  open @0 (diskId :UInt64, epoch :UInt64) -> (sizeBytes :UInt64, error :Error);

  # `lengthBytes` is at most the server's request limit (8 MiB by default); offsets and
  # lengths are multiples of 512 and within the disk, as for any BlockDevice.
  read @1 (diskId :UInt64, epoch :UInt64, offsetBytes :UInt64, lengthBytes :UInt32)
      -> (data :Data, error :Error);
  write @2 (diskId :UInt64, epoch :UInt64, offsetBytes :UInt64, data :Data) -> (error :Error);
  # Makes every write to this disk that completed before the call durable.
  flush @3 (diskId :UInt64, epoch :UInt64) -> (error :Error);
  discard @4 (diskId :UInt64, epoch :UInt64, offsetBytes :UInt64, lengthBytes :UInt64)
      -> (error :Error);
}
