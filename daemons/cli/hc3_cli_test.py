"""The hc3 CLI against a running hypercored: real processes, real etcd.

One etcd, one fake_scribed (scribed's real admin service over a pool on files, exporting
VSDs over NBD, recording every ScribeAdmin call to a file and answering fenceVsd) and one
hypercored on libvirt's test driver (test:///default). Every test drives hc3 and asserts
on data: its JSON output, its exit status and messages, and the scribed calls recorded.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

HC3 = os.path.abspath("daemons/cli/hc3")
HYPERCORED = os.path.abspath("daemons/hypercored/hypercored")
FAKE_SCRIBED = os.path.abspath("daemons/hypercored/fake_scribed")
MIB = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """etcd + fake_scribed + hypercored, all on loopback ports of their own."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="hc3-cli-", dir=os.environ.get("TEST_TMPDIR"))
        self.socket_dir = tempfile.mkdtemp(prefix="hc3-", dir="/tmp")
        self.procs = []
        self.calls_path = os.path.join(self.root, "scribed-calls.txt")

    def spawn(self, name, args):
        log = open(os.path.join(self.root, name + ".log"), "ab")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def wait_log(self, name, text, proc, timeout=60):
        path = os.path.join(self.root, name + ".log")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("%s exited: %s" % (name, open(path).read()))
            if os.path.exists(path) and text in open(path).read():
                return
            time.sleep(0.1)
        raise RuntimeError("%s did not log %r: %s" % (name, text, open(path).read()))

    def start(self):
        client, peer = free_port(), free_port()
        self.etcd_url = "http://127.0.0.1:%d" % client
        etcd = self.spawn("etcd", [
            "etcd", "--name", "hc3", "--data-dir", os.path.join(self.root, "etcd"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", "http://127.0.0.1:%d" % peer,
            "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peer,
            "--initial-cluster", "hc3=http://127.0.0.1:%d" % peer])
        deadline = time.time() + 30
        while True:
            # Our own etcd must be the one answering (not another test's on a reused port).
            if etcd.poll() is not None:
                raise RuntimeError("etcd exited: " + open(os.path.join(self.root, "etcd.log")).read())
            r = subprocess.run(["etcdctl", "--endpoints", self.etcd_url, "endpoint", "health"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                break
            if time.time() > deadline:
                raise RuntimeError("etcd did not come up")
            time.sleep(0.2)
        pool = os.path.join(self.root, "pool")
        os.makedirs(pool)
        self.scribe_addr = "127.0.0.1:%d" % free_port()
        self.nbd_socket = os.path.join(self.socket_dir, "nbd.sock")
        fake = self.spawn("fake_scribed", [
            FAKE_SCRIBED, "--dir", pool, "--nbd-socket", self.nbd_socket, "--listen", self.scribe_addr,
            "--vsd-bytes-max", str(1 << 30), "--calls", self.calls_path])
        self.wait_log("fake_scribed", "listening on", fake)
        self.addr, _ = self.add_hypercored("node1", 2048, "became coordinator")
        return self

    def add_hypercored(self, node, ram_mib, ready="joined"):
        """Another hypercored (its own libvirt test driver: a host of its own) on the
        same etcd and scribed. Returns its API address and process."""
        addr = "127.0.0.1:%d" % free_port()
        proc = self.spawn("hypercored-" + node, [
            HYPERCORED, "--node-id=" + node, "--etcd=" + self.etcd_url, "--admin=" + addr,
            "--scribe-admin=" + self.scribe_addr, "--scribe-node-id=1", "--libvirt-uri=test:///default",
            "--domain-type=qemu", "--ram-mib=%d" % ram_mib, "--cpus=2", "--shutdown-timeout-ms=2000"])
        self.wait_log("hypercored-" + node, ready, proc)
        return addr, proc

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    # ------------------------------------------------------------------ hc3
    def hc3(self, *args, env_addr=True):
        env = dict(os.environ)
        if env_addr:
            env["HC3_ADDR"] = self.addr
        return subprocess.run([HC3] + list(args), capture_output=True, text=True, env=env, timeout=180)

    def json_at(self, addr, *args):
        r = subprocess.run([HC3, "--addr", addr, "--json"] + list(args), capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, "hc3 --addr %s %s: exit %d\n%s" % (addr, " ".join(args), r.returncode, r.stderr)
        return json.loads(r.stdout)

    def ok(self, *args):
        r = self.hc3(*args)
        assert r.returncode == 0, "hc3 %s: exit %d\n%s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr)
        return r.stdout

    def json(self, *args):
        return json.loads(self.ok("--json", *args))

    def fails(self, code, *args):
        r = self.hc3(*args)
        assert r.returncode == code, "hc3 %s: exit %d, wanted %d\n%s%s" % (
            " ".join(args), r.returncode, code, r.stdout, r.stderr)
        return r.stderr

    def calls(self):
        if not os.path.exists(self.calls_path):
            return []
        return [l for l in open(self.calls_path).read().splitlines() if l]

    def calls_since(self, mark, method=None):
        out = self.calls()[mark:]
        return [c for c in out if method is None or c.split(" ")[0] == method]

    def vm(self, name):
        return self.json("vm", "info", name)

    def wait_status(self, name, status, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.vm(name)["status"] == status:
                return
            time.sleep(0.2)
        raise AssertionError("vm %s not %s: %s" % (name, status, self.vm(name)))


@pytest.fixture(scope="module")
def stack():
    s = Stack().start()
    yield s
    s.stop()


def test_vm_lifecycle_on_the_test_driver(stack):
    mark = len(stack.calls())
    out = stack.ok("vm", "create", "web", "--ram", "512M", "--vcpus", "2", "--disk", "root:64M",
                   "--disk", "data:32M:3:7", "--nic", "--nic", "vlan=42", "--tag", "prod", "--tag", "web",
                   "--description", "front end")
    assert out == "created vm web: stopped\n"
    assert stack.calls_since(mark, "createVsd") == [
        "createVsd web-root 67108864 2 4", "createVsd web-data 33554432 3 7"]
    vm = stack.vm("web")
    assert vm["status"] == "stopped" and vm["node"] == "" and vm["epoch"] == 0
    assert vm["spec"]["ram_bytes"] == 512 * MIB and vm["spec"]["vcpus"] == 2
    assert [d["vsd"] for d in vm["spec"]["disks"]] == ["web-root", "web-data"]
    assert [n["vlan"] for n in vm["spec"]["nics"]] == [None, 42]
    assert all(n["mac"].startswith("52:54:00:") for n in vm["spec"]["nics"])
    assert vm["spec"]["tags"] == ["prod", "web"] and vm["spec"]["description"] == "front end"
    assert vm["spec"]["boot"] is None
    assert "web" in [v["name"] for v in stack.json("vm", "list")["vms"]]
    table = stack.ok("vm", "list")
    assert table.splitlines()[0].split() == ["NAME", "STATUS", "NODE", "VCPUS", "RAM", "DISKS", "TAGS", "CONDITION"]

    # Start: scribed fences both VSDs at epoch 1 before the domain runs.
    mark = len(stack.calls())
    assert stack.ok("vm", "start", "web", "--wait") == "started vm web: running on node1\n"
    vm = stack.vm("web")
    assert vm["status"] == "running" and vm["node"] == "node1" and vm["epoch"] == 1
    assert stack.calls_since(mark, "fenceVsd") == ["fenceVsd web-root 1", "fenceVsd web-data 1"]
    assert stack.json("vm", "list", "--tag", "web")["vms"][0]["status"] == "running"

    # Stop (ACPI), start again: a new epoch, fenced again.
    stack.ok("vm", "stop", "web", "--wait")
    assert stack.vm("web")["status"] == "stopped"
    mark = len(stack.calls())
    stack.ok("vm", "start", "web", "--wait")
    assert stack.vm("web")["epoch"] == 2
    assert stack.calls_since(mark, "fenceVsd") == ["fenceVsd web-root 2", "fenceVsd web-data 2"]

    # Direct kernel boot: carried through the API, the record and the domain. The files
    # must be there (on the node asked): a missing one is refused, naming the field.
    kernel, initrd = os.path.join(stack.root, "vmlinuz"), os.path.join(stack.root, "initrd.gz")
    err = stack.fails(1, "vm", "create", "kern", "--ram", "128M", "--disk", "root:16M", "--kernel", kernel,
                      "--initrd", initrd, "--cmdline", "console=ttyS0")
    assert err.startswith("hc3: vm create: boot.kernel_path: %s is not a readable file on this node" % kernel), err
    for path in (kernel, initrd):
        with open(path, "wb") as f:
            f.write(b"x")
    stack.ok("vm", "create", "kern", "--ram", "128M", "--disk", "root:16M", "--kernel", kernel,
             "--initrd", initrd, "--cmdline", "console=ttyS0 hc3.mode=loop")
    assert stack.vm("kern")["spec"]["boot"] == {
        "kernel_path": kernel, "initrd_path": initrd, "cmdline": "console=ttyS0 hc3.mode=loop"}
    info = stack.ok("vm", "info", "kern")
    assert ("kernel:      %s\n" % kernel) in info and "cmdline:     console=ttyS0 hc3.mode=loop\n" in info, info
    stack.ok("vm", "start", "kern", "--wait")
    stack.ok("vm", "force-off", "kern", "--wait")
    stack.ok("vm", "delete", "kern")

    # A running VM is not deleted; force-off, then delete takes its VSDs along.
    err = stack.fails(1, "vm", "delete", "web")
    assert err.startswith("hc3: vm delete: vm web is meant to run; stop it first")
    assert stack.ok("vm", "force-off", "web", "--wait") == "forced off vm web\n"
    mark = len(stack.calls())
    stack.ok("vm", "delete", "web")
    assert stack.calls_since(mark, "deleteVsd") == ["deleteVsd web-root", "deleteVsd web-data"]
    assert stack.fails(1, "vm", "info", "web") == "hc3: vm info: vm web not found\n"


def test_snapshot_clone_and_revert_call_the_right_scribed_methods(stack):
    stack.ok("vm", "create", "app", "--ram", "256M", "--disk", "root:16M", "--disk", "data:16M", "--nic", "vlan=7")
    mark = len(stack.calls())
    snap = stack.json("vm", "snapshot", "app", "s1")
    assert [d["vsd"] for d in snap["disks"]] == ["app-root", "app-data"]
    assert stack.calls_since(mark) == ["createGroupSnapshot app-root,app-data s1"]
    assert [s["name"] for s in stack.json("vm", "snapshots", "app")["snapshots"]] == ["s1"]
    assert "already has a snapshot" in stack.fails(1, "vm", "snapshot", "app", "s1")

    mark = len(stack.calls())
    clone = stack.json("vm", "clone", "app", "app-now")
    assert clone["status"] == "stopped" and clone["name"] == "app-now"
    assert stack.calls_since(mark, "cloneVsd") == ["cloneVsd app-root app-now-root", "cloneVsd app-data app-now-data"]
    mark = len(stack.calls())
    stack.ok("vm", "clone", "app", "app-s1", "--snapshot", "s1")
    assert stack.calls_since(mark, "cloneFromSnapshot") == [
        "cloneFromSnapshot app-root s1 app-s1-root", "cloneFromSnapshot app-data s1 app-s1-data"]
    source, copy = stack.vm("app"), stack.vm("app-s1")
    assert copy["uuid"] != source["uuid"]
    assert copy["spec"]["nics"][0]["vlan"] == 7
    assert copy["spec"]["nics"][0]["mac"] != source["spec"]["nics"][0]["mac"]

    # Revert wants a stopped VM; then each disk goes back and the configuration too.
    stack.ok("vm", "start", "app", "--wait")
    assert "stop it first" in stack.fails(1, "vm", "revert", "app", "s1")
    stack.ok("vm", "force-off", "app", "--wait")
    mark = len(stack.calls())
    assert stack.ok("vm", "revert", "app", "s1") == "reverted vm app: stopped\n"
    assert stack.calls_since(mark, "revertToSnapshot") == ["revertToSnapshot app-root s1", "revertToSnapshot app-data s1"]
    assert stack.vm("app")["epoch"] == 1, "the storage epoch never goes back"

    mark = len(stack.calls())
    stack.ok("vm", "snapshot-delete", "app", "s1")
    assert stack.calls_since(mark, "deleteSnapshot") == ["deleteSnapshot app-root s1", "deleteSnapshot app-data s1"]
    assert stack.json("vm", "snapshots", "app")["snapshots"] == []
    for name in ("app", "app-now", "app-s1"):
        stack.ok("vm", "delete", name)


def test_media_library_and_cdrom(stack, tmp_path):
    image = tmp_path / "tiny.iso"
    image.write_bytes(os.urandom(300 * 1024 + 17))
    mark = len(stack.calls())
    added = stack.json("media", "add", "tiny", str(image))
    assert added["state"] == "ready" and added["vsd"] == "iso-tiny" and added["size_bytes"] == 300 * 1024 + 17
    assert stack.calls_since(mark, "createVsd") == ["createVsd iso-tiny 311296 2 0"]
    assert "already exists" in stack.fails(1, "media", "add", "tiny", str(image))
    assert stack.fails(1, "media", "add", "gone", str(tmp_path / "missing.iso")).startswith("hc3: media add: path ")

    stack.ok("vm", "create", "inst", "--ram", "256M", "--disk", "root:16M", "--cdrom", "tiny")
    assert stack.vm("inst")["spec"]["cdrom"] == "tiny"
    media = stack.json("media", "list")["media"]
    assert [(m["name"], m["vms"]) for m in media] == [("tiny", ["inst"])]
    assert "is the CD-ROM of vm inst" in stack.fails(1, "media", "delete", "tiny")
    stack.ok("vm", "cdrom", "inst", "--eject")
    assert stack.vm("inst")["spec"]["cdrom"] is None
    mark = len(stack.calls())
    stack.ok("media", "delete", "tiny")
    assert stack.calls_since(mark, "deleteVsd") == ["deleteVsd iso-tiny"]
    assert stack.json("media", "list")["media"] == []
    stack.ok("vm", "delete", "inst")


def test_bad_input_gets_clear_errors_and_changes_nothing(stack):
    stack.ok("vm", "create", "a", "--ram", "128M", "--disk", "b-c:16M")
    before = stack.json("vm", "list")
    mark = len(stack.calls())

    assert stack.fails(1, "vm", "info", "nope") == "hc3: vm info: vm nope not found\n"
    for cmd in (["vm", "start", "nope"], ["vm", "stop", "nope"], ["vm", "delete", "nope"],
                ["vm", "snapshot", "nope", "s"], ["vm", "clone", "nope", "x"], ["vm", "revert", "nope", "s"]):
        assert "vm nope not found" in stack.fails(1, *cmd), cmd
    assert stack.fails(1, "vm", "create", "big", "--ram", "64G", "--disk", "r:16M") == (
        "hc3: vm create: vm big needs 65536 MiB of RAM, more than any node offers (largest: 2048 MiB on node1)\n")
    assert stack.fails(1, "vm", "create", "inst", "--ram", "128M", "--cdrom", "nosuch") == (
        "hc3: vm create: cdrom: no medium named \"nosuch\" in the media library (see `hc3 media list`)\n")
    assert "vm a already exists" in stack.fails(1, "vm", "create", "a", "--ram", "128M")
    assert "vcpus" in stack.fails(1, "vm", "create", "v", "--ram", "128M", "--vcpus", "0")
    assert stack.fails(1, "vm", "create", "bad!name", "--ram", "128M") == (
        'hc3: vm create: name: "bad!name" may only contain [A-Za-z0-9._-]\n')
    assert stack.fails(1, "vm", "create", "k", "--ram", "128M", "--kernel", "vmlinuz") == (
        'hc3: vm create: boot.kernel_path: must be an absolute path, got "vmlinuz"\n')
    assert "boot.cmdline: must be printable ASCII" in stack.fails(
        1, "vm", "create", "k", "--ram", "128M", "--kernel", "/k", "--cmdline", "a\tb")
    assert "boot.initrd_path" in stack.fails(
        1, "vm", "create", "k", "--ram", "128M", "--kernel", "/k", "--initrd", "/boot/../x")
    assert stack.calls_since(mark, "createVsd") == [], "refused before storage was touched"

    # VM "a-b"'s disk "c" would be VSD "a-b-c", which VM "a"'s disk "b-c" owns: the disk
    # made first is deleted again.
    err = stack.fails(1, "vm", "create", "a-b", "--ram", "128M", "--disk", "x:16M", "--disk", "c:16M")
    assert 'disk c: creating VSD "a-b-c": name: a VSD named "a-b-c" already exists' in err, err
    assert stack.calls_since(mark, "deleteVsd") == ["deleteVsd a-b-x"]
    # scribed's pool is full (the fake holds 1 GiB of VSDs).
    err = stack.fails(1, "vm", "create", "huge", "--ram", "128M", "--disk", "r:16M", "--disk", "d:2G")
    assert 'disk d: creating VSD "huge-d": the pool is full' in err, err
    assert stack.calls_since(mark, "deleteVsd") == ["deleteVsd a-b-x", "deleteVsd huge-r"]

    # Malformed command lines: usage errors, exit 2, nothing sent.
    calls = len(stack.calls())
    assert stack.fails(2, "vm", "create", "x").startswith("hc3: vm create: --ram SIZE is required")
    assert stack.fails(2, "vm", "create", "x", "--ram", "lots").startswith("hc3: vm create: --ram 'lots' is not a size")
    assert stack.fails(2, "vm", "create", "x", "--ram", "1G", "--disk", "root").startswith(
        "hc3: vm create: --disk 'root' is not NAME:SIZE")
    assert stack.fails(2, "vm", "create", "x", "--ram", "1G", "--nic", "vlan=5,speed=fast").startswith(
        "hc3: vm create: --nic takes vlan=N and mac=MAC")
    assert stack.fails(2, "vm", "create", "x", "--ram", "1G", "--cmdline", "quiet").startswith(
        "hc3: vm create: --initrd and --cmdline need --kernel PATH")
    assert stack.fails(2, "vm", "frobnicate").startswith("hc3: vm frobnicate: unknown command 'vm frobnicate'")
    assert stack.fails(2, "vm", "start").startswith("hc3: vm start: expected NAME")
    assert stack.fails(2, "vm", "list", "--colour", "red").startswith("hc3: vm list: unknown option --colour")
    assert len(stack.calls()) == calls
    # A bad VLAN reaches the server and is refused there.
    assert "vlan" in stack.fails(1, "vm", "create", "x", "--ram", "128M", "--nic", "vlan=5000")

    assert stack.json("vm", "list") == before
    stack.ok("vm", "delete", "a")


def test_nodes_and_conditions(stack):
    nodes = stack.json("node", "list")["nodes"]
    assert [(n["name"], n["alive"], n["ram_bytes"], n["cpus"]) for n in nodes] == [("node1", True, 2048 * MIB, 2)]
    assert nodes[0]["admin_address"] == stack.addr
    assert stack.ok("conditions").startswith("no conditions")
    stack.ok("vm", "create", "solo", "--ram", "256M", "--start")
    stack.wait_status("solo", "running")
    node = stack.json("node", "list")["nodes"][0]
    assert (node["ram_used_bytes"], node["vms"]) == (256 * MIB, 1)
    # One node: losing it strands its VM.
    cond = stack.json("conditions")
    assert [(f["node"], f["vms"]) for f in cond["failover"]] == [("node1", ["solo"])]
    assert stack.ok("conditions").startswith("N-1: if node1 failed")
    stack.ok("vm", "force-off", "solo", "--wait")
    stack.ok("vm", "delete", "solo")


def test_unreachable_hypercored_is_a_clear_error(stack):
    r = subprocess.run([HC3, "--addr", "127.0.0.1:%d" % free_port(), "vm", "list"], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("hc3: vm list: cannot talk to hypercored at 127.0.0.1:")


def test_any_node_answers_and_a_dead_nodes_vm_restarts_fenced_at_a_new_epoch(tmp_path):
    s = Stack().start()
    try:
        # node2 offers more RAM: new VMs go there.
        addr2, proc2 = s.add_hypercored("node2", 4096)
        deadline = time.time() + 20
        while len(s.json("node", "list")["nodes"]) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert [n["name"] for n in s.json("node", "list")["nodes"]] == ["node1", "node2"]

        s.ok("vm", "create", "ha", "--ram", "512M", "--disk", "root:16M", "--start")
        s.wait_status("ha", "running")
        assert s.vm("ha")["node"] == "node2"
        # node1 answers for a VM node2 runs; node2 sees it run on its own hypervisor.
        assert s.json_at(addr2, "vm", "info", "ha")["status"] == "running"
        assert s.calls_since(0, "fenceVsd") == ["fenceVsd ha-root 1"]

        # node2 dies (its libvirt test driver, i.e. its VMs, with it): after its lease
        # expires the VM restarts on node1, fenced at epoch 2 first.
        proc2.kill()
        proc2.wait()
        deadline = time.time() + 30
        while time.time() < deadline:
            vm = s.vm("ha")
            if vm["node"] == "node1" and vm["status"] == "running":
                break
            time.sleep(0.2)
        vm = s.vm("ha")
        assert (vm["node"], vm["status"], vm["epoch"]) == ("node1", "running", 2), vm
        assert s.calls_since(0, "fenceVsd") == ["fenceVsd ha-root 1", "fenceVsd ha-root 2"]
        nodes = {n["name"]: n["alive"] for n in s.json("node", "list")["nodes"]}
        assert nodes == {"node1": True, "node2": False}
        # The lone survivor cannot lose a node: N-1 says so.
        assert [f["node"] for f in s.json("conditions")["failover"]] == ["node1"]
    finally:
        s.stop()
