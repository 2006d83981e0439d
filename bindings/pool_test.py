"""scribe.Pool from Python: VSDs, snapshots, clones, diff, accounting and errors."""
import pytest

import scribe

MIB = 1 << 20


def pattern(seed, n):
    return bytes((seed + i * 7 + (i >> 9)) & 0xFF for i in range(n))


@pytest.fixture
def pool():
    return scribe.Pool.simulated(nodes=3, disks_per_node=2, disk_bytes=64 * MIB, seed=7)


def test_write_read_snapshot_clone_diff(pool):
    v = pool.create_vsd("vm-disk", 16 * MIB)
    pool.write(v, 512, pattern(1, 8192))
    assert pool.read(v, 512, 8192) == pattern(1, 8192)
    assert pool.read(v, 0, 512) == bytes(512)
    s1 = pool.snapshot(v, "before")
    pool.write(v, 4 * MIB, pattern(2, 4096), fua=True)
    s2 = pool.snapshot(v, "after")
    assert pool.diff(s1, s2) == [(4 * MIB, 4096)]
    assert pool.read_snapshot(s1, 4 * MIB, 4096) == bytes(4096)
    c = pool.clone_snapshot(s1, "clone")
    pool.delete_vsd(v)
    assert pool.read(c, 512, 8192) == pattern(1, 8192)
    info = pool.vsd_info(c)
    assert info["allocated_bytes"] == 3 * 4096
    assert pool.fsck() == []


def test_accounting_and_scrub(pool):
    v = pool.create_vsd("a", 8 * MIB, replication=3)
    pool.write(v, 0, pattern(3, 2 * MIB))
    pool.snapshot(v, "s")
    pool.write(v, 0, pattern(4, 4096))
    info = pool.vsd_info(v)
    assert info["allocated_bytes"] == 2 * MIB
    assert info["unique_bytes"] == 4096
    assert info["shared_bytes"] == 2 * MIB - 4096
    report = pool.scrub()
    assert report["bad_copies"] == 0 and report["blocks_checked"] > 0
    assert pool.stats()["fully_redundant"]


def test_errors_map_to_exceptions(pool):
    v = pool.create_vsd("x", MIB)
    with pytest.raises(scribe.AlreadyExistsError):
        pool.create_vsd("x", MIB)
    with pytest.raises(scribe.OutOfRangeError):
        pool.read(v, MIB, 512)
    with pytest.raises(scribe.InvalidArgumentError):
        pool.write(v, 3, b"abc")
    with pytest.raises(scribe.NotFoundError):
        pool.find_vsd("missing")
    with pytest.raises(scribe.InvalidArgumentError):
        pool.create_vsd("y", MIB, replication=4)


def test_real_files_survive_reopen(tmp_path):
    files = [[str(tmp_path / f"n{n}.img")] for n in range(3)]
    p = scribe.Pool.files(files, disk_bytes=32 * MIB, metadata_bytes=4 * MIB)
    v = p.create_vsd("persist", 4 * MIB)
    p.write(v, 0, pattern(9, MIB))
    p.flush()
    del p
    q = scribe.Pool.files(files, create=False, metadata_bytes=4 * MIB)
    assert q.read(q.find_vsd("persist"), 0, MIB) == pattern(9, MIB)
