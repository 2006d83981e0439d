"""A whole HC3 cluster on one machine, with real guests: etcd + N scribed (cluster.py)
and, per node, a private libvirtd (scripts/libvirtd-local, QEMU under TCG) and a
hypercored that drives it, each node's serial consoles in a directory of its own.
Shared by tests/e2e/vm_e2e_test.py and scripts/demo (tests/e2e/demo.py). Needs root.

A node "dies" with kill_node: its QEMU processes, libvirtd, virtlogd, hypercored and
scribed are SIGKILLed at once; restart_node brings it back. freeze_hypercored
stops only the compute daemon (SIGSTOP), a node cut off from etcd whose VMs and
storage daemon keep running: the storage epoch fence is what stops its VMs' writes.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import guest
from cluster import Cluster, _find_binary, free_port

MiB = 1 << 20


class HcNode:
    """One node's compute side: libvirtd + hypercored, beside scribed node `scribed`."""

    def __init__(self, stack, scribed, ram_mib):
        self.stack = stack
        self.scribed = scribed
        self.ram_mib = ram_mib
        self.name = "node%d" % scribed.id
        self.libvirtd = guest.Libvirtd()
        self.console_dir = os.path.join(stack.cluster.root, "console-" + self.name)
        os.makedirs(self.console_dir, exist_ok=True)
        self.addr = "127.0.0.1:%d" % free_port()
        self.log_path = os.path.join(stack.cluster.root, "hypercored-%s.log" % self.name)
        self.proc = None
        self.frozen = False

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([
            self.stack.hypercored, "--node-id=" + self.name, "--etcd=" + self.stack.cluster.etcd_url,
            "--admin=" + self.addr, "--scribe-admin=" + self.scribed.admin, "--libvirt-uri=" + self.libvirtd.uri,
            "--domain-type=qemu", "--console-log-dir=" + self.console_dir, "--ram-mib=%d" % self.ram_mib, "--cpus=2",
            "--lease-ttl-ms=%d" % self.stack.lease_ttl_ms, "--shutdown-timeout-ms=10000"],
            stdout=log, stderr=subprocess.STDOUT)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None and not self.frozen

    def console(self, vm):
        return os.path.join(self.console_dir, vm + ".log")

    def qemu_pid(self, vm):
        """The pid of `vm`'s QEMU under this node's libvirtd, or None."""
        try:
            with open(os.path.join(self.libvirtd.root, "run", "qemu", vm + ".pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return pid if os.path.exists("/proc/%d" % pid) else None

    def domains(self):
        """Names of the running domains of this node's libvirtd."""
        r = self.libvirtd.virsh("list", "--name", check=False)
        return sorted(n for n in r.stdout.split() if n)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""


class VmStack:
    def __init__(self, nodes=3, disk_bytes=1 << 30, lease_ttl_ms=3000, vms_on_pool_owner=True):
        """With `vms_on_pool_owner`, the node whose scribed owns the storage pool offers
        more RAM than the others, so placement (most free RAM first) puts the first VMs
        there: killing a VM's node then also costs the pool its owner (the harder case)."""
        self.hypercored = _find_binary("HYPERCORED_BIN", "daemons/hypercored/hypercored")
        self.hc3_bin = _find_binary("HC3_BIN", "daemons/cli/hc3")
        self.lease_ttl_ms = lease_ttl_ms
        self.cluster = Cluster(nodes=nodes, disk_bytes=disk_bytes, lease_ttl_ms=2000, evict_grace_ms=600000)
        self.nodes = {}
        self.image = None
        self.vms_on_pool_owner = vms_on_pool_owner

    def start(self):
        self.cluster.start()
        self.image = guest.GuestImage(os.path.join(self.cluster.root, "guest"))
        owner = self.cluster.owner().id if self.vms_on_pool_owner else None
        for scribed in self.cluster.nodes.values():
            node = HcNode(self, scribed, 3072 if scribed.id == owner else 2048)
            self.nodes[node.name] = node
            node.libvirtd.start()
        for node in self.nodes.values():
            node.start()
        deadline = time.time() + 60
        while True:
            r = self.hc3("node", "list", check=False)
            if r.returncode == 0:
                alive = [n["name"] for n in json.loads(r.stdout)["nodes"] if n["alive"]]
                if len(alive) == len(self.nodes):
                    return self
            if time.time() > deadline:
                raise RuntimeError("hypercored nodes did not all join: %s\n%s" % (r.stdout + r.stderr, self.logs()))
            time.sleep(0.25)

    def cleanup(self):
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                if node.frozen:
                    node.proc.send_signal(signal.SIGCONT)
                node.proc.kill()
                node.proc.wait(timeout=30)
        for node in self.nodes.values():
            node.libvirtd.stop()  # destroys what QEMU is left, stops libvirtd + virtlogd
        self.cluster.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    # ------------------------------------------------------------------ hc3
    def answering(self):
        for node in self.nodes.values():
            if node.alive():
                return node
        raise RuntimeError("no hypercored is running")

    def hc3(self, *args, check=True, node=None, timeout=300):
        # Any running node answers; one just started may not listen yet: try the next.
        candidates = [node] if node else [n for n in self.nodes.values() if n.alive()]
        if not candidates:
            raise RuntimeError("no hypercored is running")
        for n in candidates:
            r = subprocess.run([self.hc3_bin, "--addr", n.addr, "--json"] + [str(a) for a in args],
                               capture_output=True, text=True, timeout=timeout)
            if "cannot talk to hypercored" not in r.stderr:
                break
        if check is True:
            if r.returncode != 0:
                raise RuntimeError("hc3 %s: %s%s" % (" ".join(map(str, args)), r.stdout, r.stderr))
            return json.loads(r.stdout)
        return r

    def hc3_text(self, *args):
        """hc3's table output (for people reading along)."""
        node = self.answering()
        r = subprocess.run([self.hc3_bin, "--addr", node.addr] + [str(a) for a in args], capture_output=True,
                           text=True, timeout=300)
        return r.stdout + r.stderr

    def vm(self, name):
        return self.hc3("vm", "info", name)

    def create_loop_vm(self, name, tag, disk="256M", start=True):
        args = ["vm", "create", name, "--ram", "256M", "--disk", "root:" + disk, "--kernel", self.image.kernel,
                "--initrd", self.image.initrd, "--cmdline", guest.loop_cmdline(tag),
                "--description", "HC3 test guest, loop mode (tests/guest/init)"]
        return self.hc3(*(args + (["--start"] if start else [])))

    def wait_running(self, name, timeout_s=120, not_on=None):
        """Waits until `name` runs (on a node other than `not_on`); returns its info."""
        deadline = time.time() + timeout_s
        while True:
            vm = self.vm(name)
            if vm["status"] == "running" and vm["node"] and vm["node"] != not_on:
                return vm
            if time.time() > deadline:
                raise AssertionError("vm %s not running (elsewhere than %s) after %d s: %s\n%s" % (
                    name, not_on, timeout_s, vm, self.logs()))
            time.sleep(0.2)

    def uri(self, vsd, node=None):
        """An NBD URI for `vsd` on a live scribed (plain export name: no writer epoch)."""
        node = node or next(n for n in self.nodes.values() if n.scribed.alive())
        return node.scribed.uri(vsd)

    # ------------------------------------------------------------------ faults
    def kill_node(self, node):
        """The node dies: its QEMU processes, libvirtd, virtlogd, hypercored and scribed
        are SIGKILLed together. Returns the monotonic time of the kill."""
        run = os.path.join(node.libvirtd.root, "run", "qemu")
        # <domain>.pid next to <domain>.xml (libvirt's status file); driver.pid is libvirtd's.
        vms = [f[:-4] for f in (os.listdir(run) if os.path.isdir(run) else [])
               if f.endswith(".pid") and os.path.exists(os.path.join(run, f[:-4] + ".xml"))]
        pids = [p for p in (node.qemu_pid(vm) for vm in vms) if p]
        for daemon in ("libvirtd", "virtlogd"):
            try:
                with open(os.path.join(node.libvirtd.root, daemon + ".pid")) as f:
                    pids.append(int(f.read().strip()))
            except (OSError, ValueError):
                pass
        t = time.monotonic()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.proc.kill()
        node.scribed.kill(signal.SIGKILL)
        node.proc.wait(timeout=30)
        return t

    def restart_node(self, node):
        """A killed node comes back: scribed (with its disks as they were), its libvirtd,
        then hypercored. Returns once hc3 shows it alive again."""
        node.scribed.start()
        self.cluster.wait_running()
        node.libvirtd.start()
        node.start()
        deadline = time.time() + 60
        while not any(n["name"] == node.name and n["alive"] for n in self.hc3("node", "list")["nodes"]):
            if time.time() > deadline:
                raise AssertionError("%s did not rejoin:\n%s" % (node.name, self.logs()))
            time.sleep(0.25)

    def freeze_hypercored(self, node, frozen=True):
        node.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)
        node.frozen = frozen
        return time.monotonic()

    def logs(self):
        """The end of every daemon's log and of every guest console, for failure reports."""
        out = [self.cluster.logs()]
        for node in self.nodes.values():
            out.append("---- hypercored %s ----\n%s" % (node.name, node.log_text()[-4000:]))
            for name in sorted(os.listdir(node.console_dir)):
                c = guest.LoopConsole(os.path.join(node.console_dir, name))
                out.append("---- console %s on %s ----\n%s" % (name, node.name, c.tail(1500)))
        return "\n".join(out)
