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

  # Runs `ops` on one disk (the client gathers what it has to send in one loop turn into
  # one call). Each op is admitted and answered on its own terms (its own error, a
  # read's data); the call returns when every op has finished. The data bytes of a
  # batch (write payloads plus read lengths) are at most the server's request limit
  # (8 MiB by default) and a batch holds at most 4096 ops, else every op fails
  # INVALID_ARGUMENT. Offsets and lengths are multiples of 512 and within the disk, as
  # for any BlockDevice. A flush makes every write to this disk that completed before
  # the batch arrived durable; ops of one batch run concurrently, in no set order.
  batch @1 (diskId :UInt64, epoch :UInt64, ops :List(Op)) -> (results :List(OpResult));
}

struct Op {
  kind @0 :Kind;
  offsetBytes @1 :UInt64;  # read, write, discard
  lengthBytes @2 :UInt64;  # read, discard (a write's length is its data's)
  data @3 :Data;           # write

  enum Kind {
    read @0;
    write @1;
    flush @2;
    discard @3;
  }
}

struct OpResult {
  error @0 :Error;
  data @1 :Data;  # a read's bytes when error is OK
}
