"""End to end with a real guest: 3 scribed + etcd on loopback, and the tiny test guest
(tests/guest: Debian's kernel, busybox) booting under QEMU (TCG) from a VSD exported
over NBD, writing a stamped pattern to its /dev/vda and reading it back; the same
through a real libvirtd (scripts/libvirtd-local).

Each guest run prints its boot-to-result wall time (kept in Bazel's test.log).
"""

import os

import pytest

import guest
from cluster import Cluster

MiB = 1 << 20


@pytest.fixture(scope="module")
def image():
    out = os.path.join(os.environ.get("TEST_TMPDIR", "/tmp"), "guest")
    return guest.GuestImage(out)


@pytest.fixture(scope="module")
def cluster():
    with Cluster.started(nodes=3, disk_bytes=512 * MiB, lease_ttl_ms=2000, evict_grace_ms=60000) as c:
        yield c


@pytest.fixture(scope="module")
def libvirtd():
    d = guest.Libvirtd()
    try:
        d.start()
    except Exception as e:
        d.stop()
        # Never a skip: a machine that cannot run libvirtd fails this test, loudly.
        pytest.fail("a private libvirtd could not be started on this machine: %s" % e, pytrace=False)
    try:
        yield d
    finally:
        d.stop()


def owner_and_other(c):
    owner = c.owner()
    return owner, next(n for n in c.nodes.values() if n.id != owner.id)


def log_path(c, name):
    return os.path.join(c.root, name + ".console.log")


def boot(c, image, node, vsd, mode, epoch, tag, name):
    r = guest.run_qemu(image, node.nbd_socket, vsd, mode, epoch, tag, log_path(c, name))
    print("guest boot-to-result (plain QEMU, TCG, node %d, %s tag=%s epoch=%d): %s -> %s"
          % (node.id, mode, tag, epoch, r.timing(), r.line))
    return r


def assert_ok(r, mode, epoch, tag):
    assert r.ok, r.describe()
    assert r.fields == {"mode": mode, "epoch": str(epoch), "tag": tag, "blocks": str(guest.BLOCK_COUNT)}, \
        r.describe()


def assert_pattern_on_host(uri, tag, epoch):
    """Reads every pattern block from the host side and compares it byte for byte."""
    blocks = guest.read_blocks(uri)
    assert sorted(blocks) == list(range(guest.BLOCK_COUNT))
    for b, data in blocks.items():
        want = guest.expected_block(tag, epoch, b)
        assert data == want, "block %d at %d: first record %r, want %r" % (
            b, guest.block_offset(b), data[:64], want[:64])


def test_qemu_guest_boots_from_a_vsd_and_writes(cluster, image):
    cluster.scribe("vsd", "create", "guest1", "256M")
    owner, other = owner_and_other(cluster)
    # The guest's disk is on a node that relays to the owner.
    r = boot(cluster, image, other, "guest1", "writeverify", 7, "first", "guest1-writeverify")
    assert_ok(r, "writeverify", 7, "first")
    assert_pattern_on_host(owner.uri("guest1"), "first", 7)
    # Outside the pattern nothing was written: the VSD stays thin there.
    outside = guest.read_blocks(owner.uri("guest1"), blocks=[guest.BLOCK_COUNT])
    assert outside[guest.BLOCK_COUNT] == bytes(guest.BLOCK_BYTES)


def test_snapshot_clone_seen_by_a_second_guest(cluster, image):
    cluster.scribe("vsd", "create", "guest2", "256M")
    owner, other = owner_and_other(cluster)
    r = boot(cluster, image, other, "guest2", "write", 1, "A", "guest2-write-A")
    assert_ok(r, "write", 1, "A")
    cluster.scribe("snapshot", "create", "guest2", "s1")
    cluster.scribe("clone", "guest2", "guest2-clone", "--snapshot", "s1")
    r = boot(cluster, image, owner, "guest2", "write", 2, "B", "guest2-write-B")
    assert_ok(r, "write", 2, "B")
    assert_pattern_on_host(owner.uri("guest2"), "B", 2)

    # A second guest on the clone sees the snapshot's data, not the later writes.
    r = boot(cluster, image, other, "guest2-clone", "verify", 1, "A", "clone-verify-A")
    assert_ok(r, "verify", 1, "A")
    r = boot(cluster, image, other, "guest2-clone", "verify", 2, "B", "clone-verify-B")
    assert not r.ok, r.describe()
    assert r.reason == 'mismatch block=0 found="HC3 tag=A epoch=1 block=00%s"' % ("." * 37), r.describe()


def test_libvirt_guest_boots_from_a_vsd(cluster, image, libvirtd):
    cluster.scribe("vsd", "create", "guest3", "256M")
    owner, other = owner_and_other(cluster)
    r = guest.run_libvirt(libvirtd, image, other.nbd_socket, "guest3", "writeverify", 3, "virt",
                          log_path(cluster, "guest3-libvirt-writeverify"))
    print("guest boot-to-result (libvirt, TCG, node %d, writeverify tag=virt epoch=3): %s -> %s"
          % (other.id, r.timing(), r.line))
    assert_ok(r, "writeverify", 3, "virt")
    assert_pattern_on_host(owner.uri("guest3"), "virt", 3)
    # A second domain, on the owner's socket this time, reads what the first wrote.
    r = guest.run_libvirt(libvirtd, image, owner.nbd_socket, "guest3", "verify", 3, "virt",
                          log_path(cluster, "guest3-libvirt-verify"))
    print("guest boot-to-result (libvirt, TCG, node %d, verify tag=virt epoch=3): %s -> %s"
          % (owner.id, r.timing(), r.line))
    assert_ok(r, "verify", 3, "virt")
    assert libvirtd.virsh("list", "--all", "--name").stdout.strip() == "", "a domain was left behind"
