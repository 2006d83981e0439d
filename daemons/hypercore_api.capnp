@0xa75a9efc19715359;
# The management API hypercored serves to the `hc3` CLI (and to scripts): VMs and their
# lifecycle, nodes, conditions, VM snapshots, clones and reverts, and the ISO media
# library. Every hypercored answers for the whole cluster: VM state lives in etcd (the
# HA manager's records, libhypercore/include/hypercore/ha.h), the disks are SCRIBE VSDs
# that hypercored manages through its local scribed's ScribeAdmin (scribe_api.capnp).
#
# Errors. A business error (unknown name, a name in use, no node with enough RAM, a
# scribed refusal) is not an RPC exception: every method returns an `error`, whose code
# is OK (0) on success, and the other result fields are meaningful only then. Exceptions
# are left for transport failures. A failed call leaves nothing half-made: VSDs created
# before the failure are deleted again.
#
# Units are in field names (`ramBytes`). Names of VMs, disks, VM snapshots and media are
# 1..63 characters of [A-Za-z0-9._-].

$import "/capnp/c++.capnp".namespace("hypercore::api");

struct Error {
  code @0 :UInt16;
  # An absl::StatusCode value: 0 OK, 3 INVALID_ARGUMENT, 5 NOT_FOUND, 6 ALREADY_EXISTS,
  # 8 RESOURCE_EXHAUSTED, 9 FAILED_PRECONDITION, 13 INTERNAL, 14 UNAVAILABLE, ...
  message @1 :Text;
}

struct Disk {
  name @0 :Text;             # unique within the VM
  sizeBytes @1 :UInt64;      # > 0, a multiple of 4096 (a SCRIBE block)
  replication @2 :UInt8;     # 2 or 3 copies; 0 means 2
  flashPriority @3 :UInt8;   # 0..11
  vsd @4 :Text;              # results only: the VSD backing it, "<vm>-<disk>"
}

struct Nic {
  model @0 :Text;   # "virtio" (empty: virtio)
  vlan @1 :UInt16;  # 802.1Q tag 1..4094; 0: untagged
  mac @2 :Text;     # "52:54:00:xx:xx:xx"; empty: assigned at creation
}

struct Boot {
  # Direct kernel boot: files on the node that runs the VM (every node it may run on).
  kernelPath @0 :Text;  # absolute, no ".." component
  initrdPath @1 :Text;  # the same rules; empty: no initramfs
  cmdline @2 :Text;     # printable ASCII, at most 2048 bytes
}

struct VmSpec {
  name @0 :Text;
  description @1 :Text;       # at most 4096 characters
  tags @2 :List(Text);        # each non-empty, no duplicates
  vcpus @3 :UInt16;           # 1..64
  ramBytes @4 :UInt64;        # 64 MiB..1 TiB, a multiple of 1 MiB
  disks @5 :List(Disk);
  cdrom @6 :Text;             # a media library name (see addMedia); empty: no CD-ROM
  nics @7 :List(Nic);
  boot @8 :Boot;              # direct kernel boot when set; absent: boot from the disks
}

struct VmInfo {
  spec @0 :VmSpec;
  uuid @1 :Text;
  desired @2 :Text;    # "running" or "stopped"
  status @3 :Text;
  # "running", "starting", "stopping", "stopped", or "waiting" (meant to run, placed
  # nowhere: see `condition`). Observed on the hypervisor when the VM's node is the one
  # answering, else from the record.
  node @4 :Text;       # the node responsible for it (running or stopping it); empty if none
  epoch @5 :UInt64;    # the storage epoch of its current (or last) incarnation
  condition @6 :Text;  # why it is not as desired; empty when it is
}

struct NodeInfo {
  name @0 :Text;
  alive @1 :Bool;          # holds its liveness lease
  maintenance @2 :Bool;
  ramBytes @3 :UInt64;     # RAM offered to VMs
  ramUsedBytes @4 :UInt64; # RAM of the VMs it is responsible for
  cpus @5 :UInt32;
  vcpusUsed @6 :UInt32;
  vms @7 :UInt32;
  adminAddress @8 :Text;   # its hypercored's HypercoreAdmin, "host:port" ("" if unknown)
}

struct FailoverCondition {
  node @0 :Text;          # the node whose failure would strand VMs
  vms @1 :List(Text);     # the VMs that would find no place
  message @2 :Text;
}

struct Conditions {
  failover @0 :List(FailoverCondition);  # N-1: empty when any one node can fail
  vms @1 :List(Text);                    # "vm: condition" (no capacity, start failed)
}

struct SnapshotDisk {
  disk @0 :Text;        # the VM disk
  vsd @1 :Text;         # its VSD
  snapshotId @2 :UInt64;  # scribed's snapshot id (named like the VM snapshot)
}

struct VmSnapshotInfo {
  vm @0 :Text;
  name @1 :Text;
  createdUnixMs @2 :UInt64;
  spec @3 :VmSpec;                 # the VM's configuration when it was taken
  disks @4 :List(SnapshotDisk);
}

struct MediaInfo {
  name @0 :Text;
  vsd @1 :Text;          # "iso-<name>"
  sizeBytes @2 :UInt64;  # of the image file
  state @3 :Text;        # "filling" (being copied in) or "ready"
  source @4 :Text;       # the file it was copied from, on node `node`
  node @5 :Text;
  vms @6 :List(Text);    # VMs whose CD-ROM it is
}

interface HypercoreAdmin {
  createVm @0 (spec :VmSpec, start :Bool) -> (vm :VmInfo, error :Error);
  # Creates one VSD per disk ("<vm>-<disk>", with the disk's size, replication and
  # flash priority), then the VM record (MACs and UUID assigned); with `start`, places
  # and starts it. Refused before anything is created for an invalid spec, a name in
  # use, an unknown or unready CD-ROM medium, or more RAM/vCPUs than any node has.
  listVms @1 (tags :List(Text)) -> (vms :List(VmInfo), error :Error);
  # VMs carrying every tag in `tags` (empty: all), sorted by name.
  getVm @2 (name :Text) -> (vm :VmInfo, error :Error);
  startVm @3 (name :Text) -> (vm :VmInfo, error :Error);
  # Places it on the node with the most free RAM; RESOURCE_EXHAUSTED if none fits.
  stopVm @4 (name :Text) -> (vm :VmInfo, error :Error);
  # ACPI shutdown; forced off after the node's shutdown timeout.
  forceOffVm @5 (name :Text) -> (vm :VmInfo, error :Error);
  deleteVm @6 (name :Text) -> (error :Error);
  # A stopped VM, its VM snapshots and its VSDs (with their SCRIBE snapshots).

  listNodes @7 () -> (nodes :List(NodeInfo), error :Error);
  conditions @8 () -> (conditions :Conditions, error :Error);

  createVmSnapshot @9 (vm :Text, name :Text) -> (snapshot :VmSnapshotInfo, error :Error);
  # One consistent point over all the VM's disks (scribed createGroupSnapshot, each VSD
  # snapshot named `name`) plus the VM's configuration. The VM may run.
  listVmSnapshots @10 (vm :Text) -> (snapshots :List(VmSnapshotInfo), error :Error);
  deleteVmSnapshot @11 (vm :Text, name :Text) -> (error :Error);
  cloneVm @12 (source :Text, snapshot :Text, name :Text) -> (vm :VmInfo, error :Error);
  # A new, stopped VM `name` whose disks are thin clones of `source`'s disks as they are
  # now (empty `snapshot`) or as VM snapshot `snapshot` holds them, with that
  # configuration (new UUID and MACs). Independent of the source afterwards.
  revertVm @13 (vm :Text, snapshot :Text) -> (vm :VmInfo, error :Error);
  # A stopped VM: every disk back to the snapshot, and its configuration restored.

  addMedia @14 (name :Text, path :Text) -> (media :MediaInfo, error :Error);
  # Copies the ISO at `path` (a regular file on the answering node) into a new VSD
  # "iso-<name>" through scribed's NBD export; returns once it is ready.
  listMedia @15 () -> (media :List(MediaInfo), error :Error);
  deleteMedia @16 (name :Text) -> (error :Error);
  # Refused while a VM has it as CD-ROM.
  setCdrom @17 (vm :Text, media :Text) -> (vm :VmInfo, error :Error);
  # Inserts medium `media` in a stopped VM's CD-ROM drive (empty: ejects it).
}
