"""End to end: 3 scribed + etcd on loopback, fio with crc32c verification through NBD
while nodes are killed, disks fail and nodes are partitioned; fencing of a deposed owner.

Each fault test prints the time to full redundancy (kept in Bazel's test.log).
"""

import os
import signal
import subprocess
import time

import pytest

from cluster import Cluster, fio_verify_args

MiB = 1 << 20


@pytest.fixture
def cluster():
    with Cluster.started(nodes=3, disk_bytes=512 * MiB, lease_ttl_ms=2000, evict_grace_ms=60000) as c:
        yield c


def non_owner(c):
    owner = c.owner()
    return owner, next(n for n in c.nodes.values() if n.id != owner.id)


def wait_for_log(node, text, timeout=60):
    """The node's log shows `text` within `timeout` seconds (asserted)."""
    deadline = time.time() + timeout
    while text not in node.log_text() and time.time() < deadline:
        time.sleep(0.25)
    assert text in node.log_text(), node.log_text()[-4000:]


def run_fio_with_fault(c, uri, fault, settle):
    """Starts fio, injects `fault` after a moment, waits for fio; returns its log."""
    proc, log = c.fio_background(uri, *fio_verify_args())
    time.sleep(1.5)
    assert proc.poll() is None, "fio finished before the fault: make it longer"
    fault()
    settle()
    rc = proc.wait(timeout=600)
    log.seek(0)
    text = log.read()
    assert rc == 0, "fio failed (%d):\n%s\n%s" % (rc, text[-4000:], c.logs())
    assert "verify" not in text.lower() or "bad" not in text.lower(), text
    return text


def test_cluster_forms_and_serves_every_node(cluster):
    st = cluster.status()
    assert len(st["cluster"]["nodes"]) == 3
    assert all(n["alive"] for n in st["cluster"]["nodes"])
    cluster.scribe("vsd", "create", "vol", "64M")
    # The owner serves NBD itself; the other nodes relay to it.
    for n in cluster.nodes.values():
        pattern = 0x10 + n.id
        cluster.qemu_io(n.uri("vol"), "write -P %d %d 64k" % (pattern, n.id * MiB), "flush")
    for n in cluster.nodes.values():
        for m in cluster.nodes.values():
            cluster.qemu_io(n.uri("vol"), "read -P %d %d 64k" % (0x10 + m.id, m.id * MiB))
    r = subprocess.run(["nbdinfo", "--list", "nbd+unix:///?socket=" + cluster.nodes[2].nbd_socket],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and 'export="vol"' in r.stdout, r.stdout + r.stderr


def test_fio_verifies_while_a_non_local_node_is_killed_and_restarted(cluster):
    cluster.scribe("vsd", "create", "vol", "64M")
    owner, victim = non_owner(cluster)
    start = {}

    def fault():
        victim.kill(signal.SIGKILL)
        start["t"] = time.time()

    def settle():
        time.sleep(4)  # lease expiry and more I/O while it is down
        # Written while the node is away: its copies of these chunks go stale.
        cluster.qemu_io(owner.uri("vol"), "write -P 0x77 40M 8M", "flush")
        victim.start()

    run_fio_with_fault(cluster, owner.uri("vol"), fault, settle)
    seconds = cluster.wait_redundant()
    print("node %d SIGKILLed and restarted: full redundancy %.1f s after the kill"
          % (victim.id, time.time() - start["t"]))
    st = cluster.status()
    assert st["pool"]["degraded_chunks"] == 0
    assert st["pool"]["fully_redundant"]
    # Writes land in newly allocated blocks on the nodes that are up, so the pool can be
    # fully redundant before the restarted node is back (no copy of it went stale): wait.
    wait_for_log(owner, "node %d is back" % victim.id)
    cluster.wait_redundant()
    # Every copy of every used block, the caught-up ones included, matches its checksum:
    # a copy that missed writes while its node was down and was not caught up would be
    # a bad copy here.
    scrub = cluster.scribe_json("scrub")
    assert scrub["bad_copies"] == 0 and scrub["unrecoverable"] == 0, scrub
    # fio covered its 24 MiB and the 8 MiB written while the node was down (every copy
    # of each block is read; a block counts once).
    assert scrub["blocks_checked"] >= (32 * MiB // 4096) * 9 // 10, scrub
    # The restarted node's copies were caught up: with the third node's disk failed,
    # reads of every chunk it shared with the restarted node come from the latter
    # (checksums are verified on every read) and the pattern is intact.
    third = next(n for n in cluster.nodes.values() if n.id not in (owner.id, victim.id))
    disk = next(d for d in cluster.scribe_json("disk", "list")["disks"] if d["node"] == third.id)
    cluster.scribe("disk", "fail", disk["id"])
    cluster.qemu_io(owner.uri("vol"), "read -P 0x77 40M 8M", "read 0 24M")
    assert seconds < 300


def test_fio_through_a_relay_rides_out_the_owner_being_killed(cluster):
    """A client of a non-owner node (a VM there) keeps its NBD connection when the pool
    owner dies: the relay reconnects to the next owner and sends again what was not
    answered and what was acknowledged but not yet flushed."""
    cluster.scribe("vsd", "create", "vol", "64M")
    owner, relay = non_owner(cluster)
    start = {}

    def fault():
        owner.kill(signal.SIGKILL)
        start["t"] = time.time()

    def settle():
        wait_for_log(relay, "reconnected after")
        start["back"] = time.time()
        owner.start()

    run_fio_with_fault(cluster, relay.uri("vol"), fault, settle)
    print("owner node %d SIGKILLed under fio through node %d's relay: I/O resumed %.1f s later"
          % (owner.id, relay.id, start["back"] - start["t"]))
    assert "lost its server" in relay.log_text()
    cluster.wait_redundant()
    assert cluster.status()["pool"]["fully_redundant"]


def test_fio_verifies_while_a_disk_fails_and_is_remirrored(cluster):
    cluster.scribe("vsd", "create", "vol", "64M")
    owner, victim = non_owner(cluster)
    disks = cluster.scribe_json("disk", "list")["disks"]
    disk = next(d for d in disks if d["node"] == victim.id)
    start = {}

    def fault():
        cluster.scribe("disk", "fail", disk["id"])
        start["t"] = time.time()

    run_fio_with_fault(cluster, owner.uri("vol"), fault, lambda: None)
    cluster.wait_redundant()
    print("disk %d failed: full redundancy %.1f s after the failure" % (disk["id"], time.time() - start["t"]))
    disks = {d["id"]: d for d in cluster.scribe_json("disk", "list")["disks"]}
    assert disks[disk["id"]]["failed"]
    # Emptied: every copy it held (data, and metadata pages) lives elsewhere now.
    assert disks[disk["id"]]["chunks"] == 0 and disks[disk["id"]]["used_bytes"] == 0, disks[disk["id"]]
    assert cluster.status()["pool"]["fully_redundant"]


def test_fio_verifies_while_a_node_is_partitioned_and_rejoins(cluster):
    cluster.scribe("vsd", "create", "vol", "64M")
    owner, victim = non_owner(cluster)
    start = {}

    def fault():
        victim.isolate(True)
        start["t"] = time.time()

    def settle():
        time.sleep(5)  # well past the 2 s lease: the node is down in etcd
        victim.isolate(False)

    run_fio_with_fault(cluster, owner.uri("vol"), fault, settle)
    cluster.wait_redundant()
    print("node %d partitioned for 5 s: full redundancy %.1f s after the partition began"
          % (victim.id, time.time() - start["t"]))
    wait_for_log(owner, "node %d is back" % victim.id)
    cluster.wait_redundant()
    # Every copy of every used block, the caught-up ones included, matches its checksum:
    # a copy that missed writes while its node was down and was not caught up would be
    # a bad copy here.
    scrub = cluster.scribe_json("scrub")
    assert scrub["bad_copies"] == 0 and scrub["unrecoverable"] == 0, scrub
    # fio covered its 24 MiB (every copy of each block is read; a block counts once).
    assert scrub["blocks_checked"] >= (24 * MiB // 4096) * 9 // 10, scrub
    assert cluster.status()["pool"]["fully_redundant"]


def test_fio_verifies_while_the_etcd_leader_dies_and_returns():
    """etcd runs 3 members; its leader is SIGKILLed under I/O: the nodes move to the other
    members (keeping their leases), no node is declared down, and the member rejoins.
    Leases of 6 s: a node must renew within 3/4 of its TTL or fence itself, and etcd
    needs ~1-2 s (its default 1 s election timeout) to elect a new leader."""
    with Cluster(nodes=3, disk_bytes=512 * MiB, lease_ttl_ms=6000) as c:
        c.start()
        check_etcd_leader_loss(c)


def check_etcd_leader_loss(cluster):
    assert len(cluster.etcd_members) == 3
    cluster.scribe("vsd", "create", "vol", "64M")
    owner = cluster.owner()
    leader = cluster.etcd_leader()
    start = {}

    def fault():
        cluster.kill_etcd_member(leader)
        start["t"] = time.time()

    def settle():
        time.sleep(8)  # past the 6 s node leases: they were kept alive elsewhere
        st = cluster.status()
        assert all(n["alive"] for n in st["cluster"]["nodes"]), st
        cluster.start_etcd_member(leader)
        assert cluster.wait_etcd_healthy(60), "the killed etcd member did not rejoin"
        start["back"] = time.time()

    run_fio_with_fault(cluster, owner.uri("vol"), fault, settle)
    print("etcd leader (member %d of 3) killed: rejoined %.1f s later; no node down"
          % (leader, start["back"] - start["t"]))
    for n in cluster.nodes.values():
        log = n.log_text()
        assert "lease expired" not in log, log[-3000:]
        assert "unreachable: offline in the pool" not in log, log[-3000:]
    assert cluster.owner().id == owner.id
    st = cluster.status()
    assert st["pool"]["fully_redundant"] and st["pool"]["degraded_chunks"] == 0, st
    # The cluster's state is still written through etcd: a new VSD is seen by every node.
    cluster.scribe("vsd", "create", "after", "8M")
    for n in cluster.nodes.values():
        names = [v["name"] for v in cluster.scribe_json("vsd", "list", node=n)["vsds"]]
        assert "after" in names, names


def test_partitioned_node_past_the_grace_is_evicted_and_its_stale_copies_freed():
    with Cluster(nodes=4, disk_bytes=512 * MiB, lease_ttl_ms=2000, evict_grace_ms=3000) as c:
        c.start()
        c.scribe("vsd", "create", "vol", "64M")
        owner = c.owner()
        victim = next(n for n in c.nodes.values() if n.id != owner.id)
        c.fio(owner.uri("vol"), "--rw=write", "--bs=1m", "--size=32m")
        victim.isolate(True)
        start = time.time()
        c.fio(owner.uri("vol"), *fio_verify_args(size="16m", loops=1))
        deadline = time.time() + 60
        while "node %d away" % victim.id not in owner.log_text() and time.time() < deadline:
            time.sleep(0.5)
        assert "node %d away" % victim.id in owner.log_text(), c.logs()
        c.wait_redundant()
        print("node %d evicted: full redundancy %.1f s after the partition began" % (victim.id, time.time() - start))
        victim.isolate(False)
        deadline = time.time() + 60
        while "node %d is back" % victim.id not in owner.log_text() and time.time() < deadline:
            time.sleep(0.5)
        assert "evicted copies are freed" in owner.log_text(), c.logs()
        c.wait_redundant()
        c.fio(owner.uri("vol"), "--rw=read", "--bs=64k", "--size=32m")
        disks = c.scribe_json("disk", "list")["disks"]
        assert not any(d["failed"] for d in disks), disks
        # The returned node's disk is used again: new chunks go to the emptiest disks.
        c.scribe("vsd", "create", "after", "64M")
        c.fio(owner.uri("after"), "--rw=write", "--bs=1m", "--size=48m")
        c.wait_redundant()
        disks = c.scribe_json("disk", "list")["disks"]
        back = [d for d in disks if d["node"] == victim.id]
        assert back and all(d["chunks"] > 0 for d in back), disks


def test_a_partitioned_old_owner_cannot_change_data_after_takeover():
    with Cluster(nodes=3, disk_bytes=512 * MiB, lease_ttl_ms=2000) as c:
        for n in c.nodes.values():
            n.extra_args = ["--no-self-fence"]
        c.start()
        c.scribe("vsd", "create", "vol", "16M")
        old = c.owner()
        c.qemu_io(old.uri("vol"), "write -P 0xaa 0 1M", "flush")
        old.isolate(True)  # cut off: its lease lapses, but it keeps its pool (no self-fence)
        deadline = time.time() + 60
        new = None
        while time.time() < deadline:
            for n in c.nodes.values():
                if n.id == old.id:
                    continue
                try:
                    st = c.status(node=n)
                except (RuntimeError, ValueError):
                    continue
                if st["cluster"]["owner_node"] not in (0, old.id) and st["cluster"]["state"].startswith("running") \
                        and "opening" not in st["cluster"]["state"]:
                    new = c.nodes[st["cluster"]["owner_node"]]
            if new:
                break
            time.sleep(0.25)
        assert new is not None, c.logs()
        # The old owner still serves its socket, but the disks refuse its epoch.
        r = c.qemu_io(old.uri("vol"), "write -P 0xbb 0 1M", "flush", check=False)
        assert r.returncode != 0 or "error" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
        c.qemu_io(new.uri("vol"), "read -P 0xaa 0 1M")
        deadline = time.time() + 10
        while "fenced by a newer owner" not in old.log_text() and time.time() < deadline:
            time.sleep(0.25)
        assert "fenced by a newer owner" in old.log_text(), old.log_text()[-3000:]


def test_owner_killed_another_node_takes_over_with_the_data(cluster):
    cluster.scribe("vsd", "create", "vol", "64M")
    old = cluster.owner()
    other = next(n for n in cluster.nodes.values() if n.id != old.id)
    cluster.fio(other.uri("vol"), "--rw=write", "--bs=64k", "--size=16m", "--verify=crc32c",
                "--do_verify=0", "--verify_state_save=0")
    cluster.qemu_io(other.uri("vol"), "write -P 0x3c 32M 4M", "flush")
    old.kill(signal.SIGKILL)
    start = time.time()
    deadline = start + 60
    new_owner = None
    while time.time() < deadline and new_owner is None:
        try:
            st = cluster.status(node=other)
            if st["cluster"]["owner_node"] not in (0, old.id) and st["cluster"]["state"] == "running":
                new_owner = st["cluster"]["owner_node"]
        except (RuntimeError, ValueError):
            pass
        time.sleep(0.1)
    assert new_owner, cluster.logs()
    print("owner node %d SIGKILLed: node %d serves the pool %.1f s later" % (old.id, new_owner, time.time() - start))
    # Through a relay and directly: the flushed data is all there.
    for n in cluster.nodes.values():
        if n.alive():
            cluster.qemu_io(n.uri("vol"), "read -P 0x3c 32M 4M")
    cluster.fio(other.uri("vol"), "--rw=read", "--bs=64k", "--size=16m", "--verify=crc32c",
                "--verify_only", "--verify_state_save=0")
    old.start()
    cluster.wait_redundant()
    assert cluster.status()["pool"]["fully_redundant"]


def test_bad_input_gets_clear_errors_and_the_daemon_keeps_serving(cluster):
    import socket as so
    cluster.scribe("vsd", "create", "vol", "8M")
    owner, other = non_owner(cluster)
    # Unknown names and bad sizes: exit 1 with a message naming the problem.
    r = cluster.scribe("vsd", "info", "nope", check=False)
    assert r.returncode == 1 and "nope" in r.stderr, r.stderr
    r = cluster.scribe("vsd", "create", "vol", "8M", check=False)
    assert r.returncode == 1 and "already" in r.stderr, r.stderr
    r = cluster.scribe("vsd", "create", "odd", "4097", check=False)
    assert r.returncode == 1 and "4096" in r.stderr, r.stderr
    # A full pool: RESOURCE_EXHAUSTED for the writes that do not fit, earlier data intact.
    cluster.scribe("vsd", "create", "huge", "4G")
    cluster.qemu_io(owner.uri("vol"), "write -P 0x42 0 1M", "flush")
    r = subprocess.run(["fio", "--name=fill", "--ioengine=nbd", "--uri=" + owner.uri("huge"), "--rw=write",
                        "--bs=1m", "--size=2g", "--iodepth=4"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0, "filling past the pool's capacity must fail"
    assert "No space left" in r.stdout + r.stderr or "error" in (r.stdout + r.stderr).lower()
    cluster.qemu_io(owner.uri("vol"), "read -P 0x42 0 1M")
    cluster.scribe("vsd", "delete", "huge")
    # An unknown export and out-of-range I/O through NBD (a relay and the owner).
    for n in (owner, other):
        r = cluster.qemu_io(n.uri("missing"), "read 0 4k", check=False)
        assert r.returncode != 0
        r = cluster.qemu_io(n.uri("vol"), "read 8M 4k", check=False)
        assert r.returncode != 0 or "error" in (r.stdout + r.stderr).lower()
    # Garbage on the admin, backplane and NBD endpoints: those connections close, the
    # daemons carry on.
    junk = bytes(range(256)) * 64
    for n in (owner, other):
        for addr in (n.admin, n.backplane):
            host, port = addr.rsplit(":", 1)
            with so.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(junk)
                try:
                    s.recv(4096)
                except OSError:
                    pass
        with so.socket(so.AF_UNIX) as s:
            s.connect(n.nbd_socket)
            s.sendall(junk)
            try:
                s.recv(4096)
            except OSError:
                pass
    assert all(n.alive() for n in cluster.nodes.values())
    cluster.qemu_io(other.uri("vol"), "read -P 0x42 0 1M")
    assert cluster.status()["cluster"]["state"] == "running"


def test_vsd_writer_epoch_fences_an_old_vm_instance_even_after_owner_failover(cluster):
    cluster.scribe("vsd", "create", "vm1-disk0", "16M")
    owner, other = non_owner(cluster)
    cluster.scribe("vsd", "fence", "vm1-disk0", "1")
    old_vm = other.uri("vm1-disk0@1")
    cluster.qemu_io(old_vm, "write -P 0x01 0 64k", "flush")
    # The VM is restarted elsewhere with epoch 2: epoch 1 can no longer write or reopen.
    cluster.scribe("vsd", "fence", "vm1-disk0", "2")
    r = cluster.qemu_io(old_vm, "write -P 0x66 0 64k", check=False)
    assert r.returncode != 0 or "failed" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    cluster.qemu_io(owner.uri("vm1-disk0@2"), "write -P 0x02 64k 64k", "flush")
    r = cluster.scribe("vsd", "fence", "vm1-disk0", "1", check=False)
    assert r.returncode == 1 and "writer epoch 2" in r.stderr, r.stderr
    # The epoch lives in etcd: a new pool owner keeps enforcing it.
    owner.kill(signal.SIGKILL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            st = cluster.status(node=other)
            if st["cluster"]["owner_node"] not in (0, owner.id) and st["cluster"]["state"] == "running":
                break
        except (RuntimeError, ValueError):
            pass
        time.sleep(0.2)
    r = cluster.qemu_io(old_vm, "write -P 0x66 0 64k", check=False)
    assert r.returncode != 0 or "failed" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    cluster.qemu_io(other.uri("vm1-disk0"), "read -P 0x01 0 64k", "read -P 0x02 64k 64k")
