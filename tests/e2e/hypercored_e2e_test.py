"""End to end with the real storage: etcd + 3 scribed on loopback, one hypercored on a
node that does not own the pool (so every ScribeAdmin call and NBD stream is forwarded
to the owner), libvirt's test driver as the hypervisor, driven through hc3. Checked
with the `scribe` CLI and qemu-img against scribed itself.
"""

import json
import os
import subprocess
import time

import pytest

from cluster import Cluster, _find_binary, free_port

MiB = 1 << 20


@pytest.fixture
def stack(tmp_path):
    c = Cluster(nodes=3, disk_bytes=512 * MiB, lease_ttl_ms=2000)
    proc = None
    try:
        c.start()
        owner = c.owner()
        node = next(n for n in c.nodes.values() if n.id != owner.id)
        addr = "127.0.0.1:%d" % free_port()
        log = open(tmp_path / "hypercored.log", "w")
        proc = subprocess.Popen([
            _find_binary("HYPERCORED_BIN", "daemons/hypercored/hypercored"), "--node-id=hcnode",
            "--etcd=" + c.etcd_url, "--admin=" + addr, "--scribe-admin=" + node.admin,
            "--libvirt-uri=test:///default", "--domain-type=qemu", "--ram-mib=2048", "--cpus=2"],
            stdout=log, stderr=subprocess.STDOUT)
        hc3 = _find_binary("HC3_BIN", "daemons/cli/hc3")

        def run(*args, check=True):
            r = subprocess.run([hc3, "--addr", addr, "--json"] + list(args), capture_output=True, text=True,
                               timeout=300)
            if check:
                assert r.returncode == 0, "hc3 %s: %s\n%s" % (" ".join(args), r.stderr, open(log.name).read())
                return json.loads(r.stdout)
            return r

        deadline = time.time() + 30
        while run("node", "list", check=False).returncode != 0 and time.time() < deadline:
            time.sleep(0.2)
        yield c, node, run
    except Exception:
        print(c.logs())
        raise
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        c.cleanup()


def test_vm_disks_snapshots_clones_revert_and_media_on_real_scribed(stack, tmp_path):
    c, node, hc3 = stack
    vm = hc3("vm", "create", "web", "--ram", "256M", "--disk", "root:64M", "--disk", "data:32M:3:9")
    assert [d["vsd"] for d in vm["spec"]["disks"]] == ["web-root", "web-data"]
    vsds = {v["name"]: v for v in c.scribe_json("vsd", "list")["vsds"]}
    assert (vsds["web-data"]["size_bytes"], vsds["web-data"]["replication"], vsds["web-data"]["flash_priority"]) == (
        32 * MiB, 3, 9)

    # Data written through scribed's own NBD export, then a VM snapshot, then more data.
    uri = "nbd+unix:///web-root?socket=" + node.nbd_socket
    c.qemu_io(uri, "write -P 0xaa 0 1M")
    hc3("vm", "snapshot", "web", "s1")
    c.qemu_io(uri, "write -P 0xbb 0 1M")
    snaps = [s["name"] for s in c.scribe_json("snapshot", "list", "web-root")["snapshots"]]
    assert snaps == ["s1"]

    hc3("vm", "clone", "web", "web-s1", "--snapshot", "s1")
    hc3("vm", "clone", "web", "web-now")
    c.qemu_io("nbd+unix:///web-s1-root?socket=" + node.nbd_socket, "read -P 0xaa 0 1M")
    c.qemu_io("nbd+unix:///web-now-root?socket=" + node.nbd_socket, "read -P 0xbb 0 1M")
    hc3("vm", "revert", "web", "s1")
    c.qemu_io(uri, "read -P 0xaa 0 1M")

    # An ISO copied in through the (relayed) NBD export is byte for byte the file.
    image = tmp_path / "tiny.iso"
    image.write_bytes(os.urandom(MiB + 512))
    media = hc3("media", "add", "tiny", str(image))
    assert media["state"] == "ready"
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(image),
                        "nbd+unix:///iso-tiny?socket=" + node.nbd_socket], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

    # A disk whose VSD exists already: refused, and the disk made before it is gone again.
    c.scribe("vsd", "create", "db-root", "16M")
    r = hc3("vm", "create", "db", "--ram", "256M", "--disk", "log:16M", "--disk", "root:16M", check=False)
    assert r.returncode == 1 and 'disk root: creating VSD "db-root"' in r.stderr, r.stderr
    names = {v["name"] for v in c.scribe_json("vsd", "list")["vsds"]}
    assert "db-log" not in names and "db" not in [v["name"] for v in hc3("vm", "list")["vms"]]

    # Start: hypercored fences every disk at the VM's epoch in scribed first, then the
    # domain opens "<vsd>@<epoch>".
    hc3("vm", "start", "web")
    deadline = time.time() + 20
    while time.time() < deadline:
        vm = hc3("vm", "info", "web")
        if vm["status"] == "running":
            break
        time.sleep(0.25)
    assert vm["status"] == "running" and vm["epoch"] == 1, vm
    # scribed now holds writer epoch 1 for the VM's disks: an older writer cannot open.
    r = subprocess.run(["qemu-io", "-f", "raw", "-c", "write 0 4k",
                        c.nodes[1].uri("web-root@1")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "wrote" in r.stdout, r.stdout + r.stderr
    stale = c.scribe("vsd", "fence", "web-root", "0", check=False)
    assert stale.returncode == 2, stale.stderr  # epochs start at 1
    # hypercored fenced epoch 1; a later epoch (a restart elsewhere) shuts epoch 1 out.
    c.scribe("vsd", "fence", "web-root", "2")
    r = subprocess.run(["qemu-io", "-f", "raw", "-c", "write 0 4k",
                        c.nodes[1].uri("web-root@1")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 or "failed" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    assert c.scribe("vsd", "fence", "web-root", "1", check=False).returncode == 1

    hc3("vm", "force-off", "web", "--wait")
    for name in ("web", "web-s1", "web-now"):
        hc3("vm", "delete", name)
    hc3("media", "delete", "tiny")
    names = {v["name"] for v in c.scribe_json("vsd", "list")["vsds"]}
    assert names == {"db-root"}, names
