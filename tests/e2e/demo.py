"""The main job (scripts/demo): a 3-node scribed cluster on loopback doing real work.

etcd + 3 scribed with file disks; a mirrored VSD written and verified through NBD (fio,
crc32c); a snapshot and a thin clone that sees the snapshot's data and not later writes;
the diff between two snapshots; a failed disk re-mirrored while data stays readable; a
short report. Everything runs in a temporary directory removed at the end.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster  # noqa: E402

MiB = 1 << 20


def step(text):
    print("==> " + text, flush=True)


def main():
    report = []
    t0 = time.time()
    with Cluster(nodes=3, disk_bytes=1 << 30, lease_ttl_ms=2000) as c:
        step("starting etcd and 3 scribed nodes on loopback (files under %s)" % c.root)
        c.start()
        owner = c.owner()
        report.append("cluster formed in %.1f s; pool owner node %d" % (time.time() - t0, owner.id))
        print(c.scribe("status").stdout)

        step("creating VSD 'vm1-disk0' (256 MiB, 2 copies) and writing it through NBD with fio verify")
        c.scribe("vsd", "create", "vm1-disk0", "256M")
        node2 = c.nodes[2] if owner.id != 2 else c.nodes[3]
        t = time.time()
        c.fio(node2.uri("vm1-disk0"), "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=64m",
              "--verify=crc32c", "--do_verify=1", "--verify_state_save=0")
        report.append("fio wrote and verified 64 MiB of 4 KiB random writes via node %d's NBD socket in %.1f s"
                      % (node2.id, time.time() - t))

        step("writing a marker, snapshotting, cloning, then overwriting the original")
        c.qemu_io(owner.uri("vm1-disk0"), "write -P 0x5a 128M 1M", "flush")
        c.scribe("snapshot", "create", "vm1-disk0", "before")
        c.scribe("clone", "vm1-disk0", "vm1-clone", "--snapshot", "before")
        c.qemu_io(owner.uri("vm1-disk0"), "write -P 0xa5 128M 1M", "flush")
        c.scribe("snapshot", "create", "vm1-disk0", "after")
        c.qemu_io(owner.uri("vm1-clone"), "read -P 0x5a 128M 1M")
        c.qemu_io(owner.uri("vm1-disk0"), "read -P 0xa5 128M 1M")
        report.append("clone 'vm1-clone' holds the snapshot's data (0x5a); the original moved on (0xa5)")
        diff = c.scribe_json("diff", "vm1-disk0", "before", "after")
        changed = sum(e["length_bytes"] for e in diff["extents"])
        report.append("diff before..after: %d extent(s), %d KiB changed" % (len(diff["extents"]), changed // 1024))
        print(c.scribe("vsd", "list").stdout)

        step("failing a disk of a non-owner node and waiting for re-mirroring")
        disks = c.scribe_json("disk", "list")["disks"]
        victim = next(d for d in disks if d["node"] != owner.id)
        c.scribe("disk", "fail", victim["id"])
        secs = c.wait_redundant()
        c.qemu_io(node2.uri("vm1-clone"), "read -P 0x5a 128M 1M")
        report.append("disk %d failed: full redundancy again after %.1f s, data still verified"
                      % (victim["id"], secs))
        print(c.scribe("disk", "list").stdout)
        scrub = c.scribe_json("scrub")
        report.append("scrub: %d chunks, %d blocks checked on every copy; %d bad, %d repaired, %d unrecoverable"
                      % (scrub["chunks_checked"], scrub["blocks_checked"], scrub["bad_copies"],
                         scrub["repaired"], scrub["unrecoverable"]))
    print("\n==== report ====")
    for line in report:
        print(" - " + line)
    print("demo finished in %.1f s; cluster stopped and files removed" % (time.time() - t0))


if __name__ == "__main__":
    main()
