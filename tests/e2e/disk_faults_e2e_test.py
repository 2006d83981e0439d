"""End to end: disk faults below the daemon. 3 scribed + etcd on loopback; node 3's disk
file is served by faultfs (tools/faultfs, a FUSE filesystem), which makes the real
O_DIRECT libaio I/O of scribed fail with EIO, stop answering, answer late or return
corrupted data, while fio writes and verifies every block through NBD.

Each test prints what it measured (kept in Bazel's test.log).
"""

import os
import subprocess
import time

import pytest

from cluster import Cluster, fio_verify_args, _find_binary

MiB = 1 << 20
FAULT_NODE = 3


class FaultDisk:
    """faultfs mounted in node 3's directory; its disk file lives on the mount."""

    def __init__(self, node):
        self.binary = _find_binary("FAULTFS_BIN", "tools/faultfs/faultfs")
        self.backing = os.path.join(node.dir, "backing")
        self.mount = os.path.join(node.dir, "faultfs")
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mount, exist_ok=True)
        subprocess.run([self.binary, self.backing, self.mount], check=True, timeout=30)
        deadline = time.time() + 10
        while not os.path.exists(self.control) and time.time() < deadline:
            time.sleep(0.05)
        assert os.path.exists(self.control), "faultfs did not mount"
        node.disks = [(os.path.join(self.mount, "disk0.img"), size) for _, size in node.disks]

    @property
    def control(self):
        return os.path.join(self.mount, ".faults")

    def set(self, mode):
        with open(self.control, "w") as f:
            f.write(mode + "\n")

    def counters(self):
        with open(self.control) as f:
            fields = dict(kv.split("=", 1) for kv in f.read().split())
        return {k: (v if k == "mode" else int(v)) for k, v in fields.items()}

    def unmount(self):
        try:
            self.set("ok")  # release operations that hang
        except OSError:
            pass
        subprocess.run(["fusermount3", "-u", "-z", self.mount], timeout=30)


def _teardown(c, disk):
    try:
        disk.set("ok")  # operations that hang would keep scribed from exiting
    except OSError:
        pass
    c.stop()
    disk.unmount()
    c.cleanup()


@pytest.fixture
def cluster():
    # The faulty disk belongs to a node other than the pool owner: a hung disk under the
    # owner blocks the owner's own loop in io_submit (the owner is then replaced, and a
    # relayed NBD session breaks; see RELIABILITY.md). While node 3 wins the pool, start
    # a fresh cluster (the owner is whoever takes the key first).
    for _ in range(8):
        c = Cluster(nodes=3, disk_bytes=512 * MiB, lease_ttl_ms=2000, evict_grace_ms=60000,
                    io_timeout_ms=3000)
        disk = FaultDisk(c.nodes[FAULT_NODE])
        try:
            c.start()
            if c.owner().id != FAULT_NODE:
                break
        except Exception:
            print(c.logs())
            _teardown(c, disk)
            raise
        _teardown(c, disk)
    else:
        pytest.fail("node %d won the pool 8 times in a row" % FAULT_NODE)
    try:
        c.fault_disk = disk
        yield c
    except Exception:
        print(c.logs())
        raise
    finally:
        _teardown(c, disk)


def fault_disk_info(c):
    return next(d for d in c.scribe_json("disk", "list")["disks"] if d["node"] == FAULT_NODE)


def fio_with_fault(c, uri, fault, loops=8, size="48m"):
    """fio writes and verifies every block while `fault` runs; returns fio's output."""
    proc, log = c.fio_background(uri, *fio_verify_args(size=size, loops=loops))
    time.sleep(1.5)
    assert proc.poll() is None, "fio finished before the fault: make it longer"
    fault()
    rc = proc.wait(timeout=900)
    log.seek(0)
    text = log.read()
    assert rc == 0, "fio failed (%d):\n%s\n%s" % (rc, text[-4000:], c.logs())
    assert "verify:" not in text.lower() or "bad" not in text.lower(), text
    return text


def scrub_clean(c):
    scrub = c.scribe_json("scrub")
    assert scrub["bad_copies"] == 0 and scrub["unrecoverable"] == 0, scrub
    assert scrub["blocks_checked"] >= (48 * MiB // 4096) * 9 // 10, scrub
    return scrub


def test_eio_on_every_io_fails_the_disk_and_nothing_is_lost(cluster):
    c = cluster
    c.scribe("vsd", "create", "vol", "64M")
    uri = c.nodes[1].uri("vol")
    state = {}

    def fault():
        c.fault_disk.set("eio")
        state["t"] = time.time()
        deadline = time.time() + 60
        while not fault_disk_info(c)["failed"] and time.time() < deadline:
            time.sleep(0.2)
        state["failed_after"] = time.time() - state["t"]

    fio_with_fault(c, uri, fault)
    assert fault_disk_info(c)["failed"], "I/O errors (3 within a minute) fail the disk"
    assert c.fault_disk.counters()["faults"] >= 1
    assert c.status()["cluster"]["state"].startswith("running")
    took = c.wait_redundant()
    disk = fault_disk_info(c)
    assert disk["chunks"] == 0, disk  # every copy re-mirrored elsewhere
    print("EIO on every I/O: disk failed %.1f s after the fault, fully redundant %.1f s later"
          % (state["failed_after"], took))
    c.fault_disk.set("ok")
    scrub_clean(c)


def test_a_transient_read_error_is_served_from_another_copy(cluster):
    c = cluster
    c.scribe("vsd", "create", "vol", "64M")
    uri = c.nodes[2].uri("vol")
    fio_with_fault(c, uri, lambda: c.fault_disk.set("eio 1 reads"))
    counters = c.fault_disk.counters()
    assert counters["faults"] == 1 and counters["mode"] == "ok", counters
    assert not fault_disk_info(c)["failed"], "one read error does not fail the disk"
    assert c.status()["pool"]["fully_redundant"]
    print("1 failed read: served from another copy, the disk kept")
    scrub_clean(c)  # reads every copy


# A disk that stops answering (faultfs `hang`) is not tested here yet: scribed's aio
# submission can block in io_submit on a hung FUSE file, freezing that node's loop (its
# lease lapses; an owner is replaced and relayed sessions break), and a run of this test
# hung in CI. See RELIABILITY.md and issue 16.


def test_corrupted_reads_are_caught_by_checksums_and_served_from_another_copy(cluster):
    c = cluster
    c.scribe("vsd", "create", "vol", "64M")
    uri = c.nodes[1].uri("vol")
    fio_with_fault(c, uri, lambda: c.fault_disk.set("corrupt"))
    # Every read of the disk is corrupted in transit: scrub finds its copies bad and
    # repairs them from the good ones (the rewrite lands; the next read is corrupted
    # again), and no block is unrecoverable.
    scrub = c.scribe_json("scrub")
    assert scrub["bad_copies"] > 0 and scrub["unrecoverable"] == 0, scrub
    assert c.fault_disk.counters()["faults"] > 0
    assert not fault_disk_info(c)["failed"], "a checksum failure does not fail a disk"
    c.fault_disk.set("ok")
    clean = scrub_clean(c)
    print("corrupted reads: scrub found %d bad copies (repaired %d), then %d blocks clean"
          % (scrub["bad_copies"], scrub["repaired"], clean["blocks_checked"]))


def test_a_slow_disk_slows_writes_but_loses_nothing(cluster):
    c = cluster
    c.scribe("vsd", "create", "vol", "64M")
    uri = c.nodes[1].uri("vol")
    c.fault_disk.set("delay 20")
    start = time.time()
    c.fio(uri, *fio_verify_args(size="8m", loops=1))  # raises unless every block verifies
    elapsed = time.time() - start
    assert c.fault_disk.counters()["writes"] > 0
    assert not fault_disk_info(c)["failed"], "20 ms per I/O is well inside the io timeout"
    c.fault_disk.set("ok")
    took = c.wait_redundant()
    print("20 ms per I/O on one disk: fio (8 MiB, verify) took %.1f s; redundant %.1f s after"
          % (elapsed, took))
    scrub = c.scribe_json("scrub")
    assert scrub["bad_copies"] == 0 and scrub["unrecoverable"] == 0, scrub
