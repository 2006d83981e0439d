"""The main job (scripts/demo): a 3-node cluster on loopback doing real work.

Storage: etcd + 3 scribed with file disks; a mirrored VSD written and verified through
NBD (fio, crc32c); a snapshot and a thin clone that sees the snapshot's data and not
later writes; the diff between two snapshots; a failed disk re-mirrored while data stays
readable; the pool's owner killed while fio writes and verifies through another node,
whose NBD relay carries the client over to the next owner.

VMs (as root, with libvirt and QEMU; `--no-vm` skips it): a fresh 3-node cluster with a
hypercored and a private libvirtd per node boots a real guest (tests/guest, TCG) from a
VSD; the guest writes a stamped pattern and a log of records; a VM snapshot and a clone
that boots and continues from the snapshot's data; then the VM's node is killed
(QEMU, libvirtd, hypercored and scribed) and the VM comes back on another node with its data,
checked on the guest's own log (one writer at a time). A short report at the end.
Everything runs in temporary directories removed at the end; QEMU and the private
libvirtds are stopped.
"""

import os
import re
import signal
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, fio_verify_args  # noqa: E402

MiB = 1 << 20


def step(text):
    print("==> " + text, flush=True)


def storage_story(report, t0):
    with Cluster(nodes=3, disk_bytes=1 << 30, lease_ttl_ms=2000, etcd_members=1) as c:
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

        step("killing the pool owner (node %d, SIGKILL) while fio writes and verifies through node %d's "
             "NBD socket: its relay must carry the client to the next owner" % (owner.id, node2.id))
        fio, log = c.fio_background(node2.uri("vm1-disk0"), *fio_verify_args(loops=4))
        time.sleep(1.5)
        if fio.poll() is not None:
            raise RuntimeError("fio ended before the owner was killed: make its job longer")
        owner.kill(signal.SIGKILL)
        rc = fio.wait(timeout=600)
        log.seek(0)
        if rc != 0:
            raise RuntimeError("fio through the relay failed across the owner's death:\n" + log.read()[-3000:])
        resumed = re.findall(r"reconnected after (\d+) ms", node2.log_text())
        report.append("pool owner node %d SIGKILLed under fio: node %d's client kept its connection, I/O resumed "
                      "%.1f s later on the new owner, every verify passed"
                      % (owner.id, node2.id, int(resumed[-1]) / 1000.0 if resumed else float("nan")))


def vm_story_unavailable():
    """Why the VM story cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root (a private libvirtd needs root)"
    for tool in ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "qemu-io", "cpio"):
        if shutil.which(tool) is None:
            return "%s is not installed (scripts/setup installs it)" % tool
    return None


def vm_story(report):
    import guest  # noqa: E402
    from vmstack import VmStack  # noqa: E402

    t0 = time.time()
    with VmStack(nodes=3) as s:
        step("starting etcd, 3 scribed, 3 private libvirtds and 3 hypercored (files under %s)" % s.cluster.root)
        s.start()
        report.append("VM cluster formed in %.1f s: 3 nodes, each scribed + hypercored + libvirtd (QEMU, TCG)"
                      % (time.time() - t0))
        print(s.hc3_text("node", "list"))

        step("creating VM 'web' (256 MiB RAM, a 256 MiB disk on a mirrored VSD, direct kernel boot of the test "
             "guest) and starting it")
        s.create_loop_vm("web", "web")
        node = s.nodes[s.wait_running("web")["node"]]
        t = time.time()
        boot_1, pattern, _, _ = guest.wait_new_boot(node.console("web"), set(), 180, "web's boot", min_seq=10)
        report.append("VM web booted on %s; the guest wrote its pattern and 10 log records (%.1f s after start)"
                      % (node.name, time.time() - t))
        print(s.hc3_text("vm", "list"))

        step("VM snapshot 'before' while it runs; the guest keeps writing")
        s.hc3("vm", "snapshot", "web", "before")
        at_snapshot = guest.LoopConsole(node.console("web")).last_seq[boot_1]
        guest.wait_seq(node.console("web"), boot_1, at_snapshot + 20)

        step("cloning VM 'web' from the snapshot as 'web-clone' and booting the clone")
        s.hc3("vm", "clone", "web", "web-clone", "--snapshot", "before")
        s.hc3("vm", "start", "web-clone")
        clone_node = s.nodes[s.wait_running("web-clone")["node"]]
        _, pattern, head, _ = guest.wait_new_boot(clone_node.console("web-clone"), {boot_1}, 180, "the clone's boot")
        now = guest.LoopConsole(node.console("web")).last_seq[boot_1]
        assert pattern == "verified" and head <= at_snapshot + 20 < now, (pattern, head, at_snapshot, now)
        report.append("clone web-clone booted on %s: it verified web's pattern and continues web's log at record "
                      "%d (the snapshot), while web itself is past record %d" % (clone_node.name, head, now))
        s.hc3("vm", "force-off", "web-clone", "--wait")

        x = node
        step("killing node %s (its QEMU, libvirtd, hypercored and scribed, SIGKILL): VM web must come back elsewhere" % x.name)
        owned_pool = s.cluster.owner().id == x.scribed.id
        t_kill = s.kill_node(x)
        last_1 = guest.LoopConsole(x.console("web")).last_seq[boot_1]
        vm = s.wait_running("web", timeout_s=120, not_on=x.name)
        y = s.nodes[vm["node"]]
        boot_2, pattern, head, t_record = guest.wait_new_boot(y.console("web"), {boot_1}, 120, "web's restart")
        assert pattern == "verified" and head > last_1, (pattern, head, last_1)
        guest.wait_seq(y.console("web"), boot_2, head + 5)
        runs = guest.log_runs(guest.read_log(s.uri("web-root"), head + 100))
        assert [r[0] for r in runs] == [boot_1, boot_2], runs
        report.append("node %s killed%s: VM web running again on %s (epoch %d), its guest's first record %.1f s "
                      "after the kill; pattern verified, log continues at record %d after the last one the old "
                      "instance reported (%d); one writer at a time"
                      % (x.name, " (it also owned the storage pool)" if owned_pool else "", y.name, vm["epoch"],
                         t_record - t_kill, head, last_1))
        print(s.hc3_text("vm", "list"))
        step("stopping VMs, hypercored, libvirtd, scribed and etcd")


def main():
    report = []
    t0 = time.time()
    storage_story(report, t0)
    if "--no-vm" in sys.argv[1:]:
        report.append("VM story skipped (--no-vm)")
    else:
        why = vm_story_unavailable()
        if why:
            report.append("VM story skipped: %s" % why)
        else:
            vm_story(report)
    print("\n==== report ====")
    for line in report:
        print(" - " + line)
    print("demo finished in %.1f s; clusters stopped, QEMU and libvirtd stopped, files removed" % (time.time() - t0))


if __name__ == "__main__":
    main()
