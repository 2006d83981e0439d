"""End to end, the P0 reproduction: a pool whose metadata is far larger than the per-disk
journal region survives SIGKILL of the node running the engine, twice.

Format 1 kept the whole metadata as one checkpoint that had to fit 3/8 of the region;
with --metadata-mib=2 that wall was at about 150 MiB of mapped data. Here, by default,
1 GiB is written sequentially in 1 MiB blocks and 128 MiB as scattered 4 KiB blocks,
with snapshots in between (HC3_E2E_SEQ_MIB / HC3_E2E_RAND_MIB raise it to the issue's
8 GiB + 1 GiB). fio's crc32c verify checks every block after each takeover.
"""

import os
import signal
import time

import pytest

from cluster import Cluster

MiB = 1 << 20
SEQ_MIB = int(os.environ.get("HC3_E2E_SEQ_MIB", "1024"))
RAND_MIB = int(os.environ.get("HC3_E2E_RAND_MIB", "128"))


@pytest.fixture
def cluster():
    disk = max(4096, (SEQ_MIB + RAND_MIB) * 2) * MiB  # sparse files; RF 2 over 3 nodes
    with Cluster.started(nodes=3, disk_bytes=disk, lease_ttl_ms=2000, evict_grace_ms=600000, metadata_mib=2) as c:
        yield c


def seq_args(verify_only=False):
    a = ["--rw=write", "--bs=1m", "--iodepth=8", "--size=%dm" % SEQ_MIB, "--verify=crc32c",
         "--verify_state_save=0"]
    return a + (["--verify_only"] if verify_only else ["--do_verify=0"])


def rand_args(verify_only=False):
    a = ["--rw=randwrite", "--bs=4k", "--iodepth=16", "--offset=%dm" % SEQ_MIB,
         "--size=%dm" % RAND_MIB, "--verify=crc32c", "--verify_state_save=0"]
    return a + (["--verify_only"] if verify_only else ["--do_verify=0"])


def wait_new_owner(c, dead, via, timeout=60):
    start = time.time()
    while time.time() < start + timeout:
        try:
            st = c.status(node=via)
            if st["cluster"]["owner_node"] not in (0, dead.id) and st["cluster"]["state"] == "running":
                return st["cluster"]["owner_node"], time.time() - start
        except (RuntimeError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError("no node serves the pool %d s after the kill:\n%s" % (timeout, c.logs()))


def verify_all(c, node):
    c.fio(node.uri("vol"), *seq_args(verify_only=True), timeout=1800)
    c.fio(node.uri("vol"), *rand_args(verify_only=True), timeout=1800)


def test_a_pool_with_more_metadata_than_its_journal_region_survives_owner_kills(cluster):
    c = cluster
    c.scribe("vsd", "create", "vol", "%dM" % (SEQ_MIB + RAND_MIB + 64))
    owner = c.owner()
    via = next(n for n in c.nodes.values() if n.id != owner.id)
    t = time.time()
    c.fio(via.uri("vol"), *seq_args(), timeout=1800)
    c.scribe("snapshot", "create", "vol", "after-fill")
    c.fio(via.uri("vol"), *rand_args(), timeout=1800)
    c.scribe("snapshot", "create", "vol", "after-random")
    print("wrote %d MiB sequential + %d MiB random 4 KiB in %.0f s" % (SEQ_MIB, RAND_MIB, time.time() - t))

    for round in range(2):
        owner = c.owner()
        via = next(n for n in c.nodes.values() if n.id != owner.id and n.alive())
        owner.kill(signal.SIGKILL)
        new_owner, took = wait_new_owner(c, owner, via)
        print("round %d: owner node %d SIGKILLed, node %d serves the pool %.1f s later" %
              (round, owner.id, new_owner, took))
        assert took < 30, took
        t = time.time()
        verify_all(c, via)
        print("round %d: every block verified in %.0f s" % (round, time.time() - t))
        snaps = c.scribe("snapshot", "list", "vol").stdout
        assert "after-fill" in snaps and "after-random" in snaps, snaps
        pool = c.status(node=via)["pool"]
        print("round %d: %d metadata chunks, last checkpoint %d pages, root %d bytes" %
              (round, pool["metadata_chunks"], pool["last_checkpoint_pages"],
               pool["last_checkpoint_root_bytes"]))
        assert pool["metadata_chunks"] > 0 and pool["checkpoints"] > 0, pool
        assert pool["last_checkpoint_root_bytes"] < 768 << 10, pool  # what a 2 MiB region holds
        owner.start()
        c.wait_running()
