"""A real scribed cluster on loopback: one etcd and N scribed processes with file disks.

Used by the end-to-end tests (tests/e2e/scribed_e2e_test.py), scripts/demo and
scripts/bench. Binaries come from $SCRIBED_BIN / $SCRIBE_CLI_BIN, else from Bazel's
runfiles or bazel-bin.
"""

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time


def _find_binary(env, relative):
    if os.environ.get(env):
        return os.environ[env]
    candidates = []
    if os.environ.get("TEST_SRCDIR"):
        candidates.append(os.path.join(os.environ["TEST_SRCDIR"], os.environ.get("TEST_WORKSPACE", "hc3"), relative))
    here = os.path.dirname(os.path.abspath(__file__))
    candidates.append(os.path.join(here, "..", "..", "bazel-bin", relative))
    for c in candidates:
        if os.path.exists(c):
            return os.path.abspath(c)
    raise FileNotFoundError("%s not found (build it, or set %s)" % (relative, env))


def fio_verify_args(size="24m", loops=6):
    """fio arguments for 4 KiB random writes at queue depth 16, each block checked with
    crc32c soon after it is written (verify_backlog) and again at the end."""
    return ["--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=" + size, "--loops=%d" % loops,
            "--verify=crc32c", "--verify_backlog=512", "--do_verify=1", "--verify_fatal=1",
            "--verify_state_save=0"]


_handed_out = set()


def free_port():
    """A loopback TCP port nobody listens on, below the kernel's ephemeral range
    (32768-60999 by default). A daemon keeps its port across restarts, and a port taken
    from the ephemeral range can meanwhile become the local end of some outgoing
    connection (seen: "Address already in use" on a node's admin port)."""
    low = 20000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            high = min(int(f.read().split()[0]), 65536) - 1
    except (OSError, ValueError, IndexError):
        high = 32767
    rng = random.Random()
    for _ in range(1000):
        port = rng.randint(low, max(low, high))
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port in %d-%d" % (low, high))


class Node:
    def __init__(self, cluster, node_id, disks):
        self.cluster = cluster
        self.id = node_id
        self.dir = os.path.join(cluster.root, "node%d" % node_id)
        os.makedirs(self.dir, exist_ok=True)
        self.admin = "127.0.0.1:%d" % free_port()
        self.backplane = "127.0.0.1:%d" % free_port()
        # Unix socket paths must stay under 108 bytes: a short directory of their own.
        self.nbd_socket = os.path.join(cluster.socket_dir, "nbd%d.sock" % node_id)
        self.isolate_file = os.path.join(self.dir, "isolate")
        self.disks = [(os.path.join(self.dir, "disk%d.img" % i), size) for i, size in enumerate(disks)]
        self.log_path = os.path.join(self.dir, "scribed.log")
        self.proc = None
        self.extra_args = []

    def start(self):
        args = [
            self.cluster.scribed,
            "--node-id=%d" % self.id,
            "--etcd=%s" % self.cluster.etcd_url,
            "--admin=%s" % self.admin,
            "--backplane=%s" % self.backplane,
            "--nbd-socket=%s" % self.nbd_socket,
            "--cluster-min-nodes=%d" % self.cluster.min_nodes,
            "--lease-ttl-ms=%d" % self.cluster.lease_ttl_ms,
            "--evict-grace-ms=%d" % self.cluster.evict_grace_ms,
            "--metadata-mib=%d" % self.cluster.metadata_mib,
            "--io-timeout-ms=%d" % self.cluster.io_timeout_ms,
            "--isolate-file=%s" % self.isolate_file,
        ] + ["--disk=%s:%d" % (path, size) for path, size in self.disks] + self.extra_args
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def isolate(self, on=True):
        if on:
            open(self.isolate_file, "w").close()
        elif os.path.exists(self.isolate_file):
            os.unlink(self.isolate_file)

    def uri(self, vsd):
        return "nbd+unix:///%s?socket=%s" % (vsd, self.nbd_socket)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""


class Cluster:
    def __init__(self, nodes=3, disks_per_node=1, disk_bytes=1 << 30, root=None, min_nodes=3,
                 lease_ttl_ms=2000, evict_grace_ms=30000, metadata_mib=16, io_timeout_ms=10000,
                 etcd_members=3):
        self.scribed = _find_binary("SCRIBED_BIN", "daemons/scribed/scribed")
        self.cli = _find_binary("SCRIBE_CLI_BIN", "daemons/cli/scribe")
        self.own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="scribe-e2e-", dir=os.environ.get("TEST_TMPDIR"))
        self.min_nodes = min_nodes
        self.lease_ttl_ms = lease_ttl_ms
        self.evict_grace_ms = evict_grace_ms
        self.metadata_mib = metadata_mib
        self.io_timeout_ms = io_timeout_ms
        self.etcd_count = etcd_members
        self.etcd_members = []  # dicts: name, client and peer URLs, data dir, log, proc
        self.socket_dir = tempfile.mkdtemp(prefix="scb-", dir="/tmp")
        self.nodes = {i: Node(self, i, [disk_bytes] * disks_per_node) for i in range(1, nodes + 1)}

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout=60):
        self.start_etcd()
        for n in self.nodes.values():
            n.start()
        self.wait_running(timeout)
        return self

    def start_etcd(self, attempts=3):
        """Starts etcd on free loopback ports: one member, or a cluster of `etcd_members`
        (the multi-node tests' default: 3). Retried: a port may be taken between choosing
        it and etcd binding it. `etcd_url` lists every member's client URL."""
        last = ""
        for attempt in range(attempts):
            members = [{"name": "e%d" % i,
                        "client": "http://127.0.0.1:%d" % free_port(),
                        "peer": "http://127.0.0.1:%d" % free_port(),
                        "data": os.path.join(self.root, "etcd%d-%d" % (attempt, i)),
                        "log": os.path.join(self.root, "etcd%d-%d.log" % (attempt, i)),
                        "proc": None} for i in range(self.etcd_count)]
            initial = ",".join("%s=%s" % (m["name"], m["peer"]) for m in members)
            for m in members:
                m["initial"] = initial
            self.etcd_members = members
            self.etcd_url = ",".join(m["client"] for m in members)
            for i in range(len(members)):
                self.start_etcd_member(i)
            if self.wait_etcd_healthy(60):
                return
            for i in range(len(members)):
                self.kill_etcd_member(i)
            last = "\n".join(open(m["log"], "rb").read().decode(errors="replace")[-1500:] for m in members)
        raise RuntimeError("etcd did not come up after %d attempts; last logs:\n%s" % (attempts, last))

    def start_etcd_member(self, i):
        """Starts member `i` (again: on its data, it rejoins the cluster)."""
        m = self.etcd_members[i]
        with open(m["log"], "ab") as log:
            m["proc"] = subprocess.Popen(
                ["etcd", "--name", m["name"], "--data-dir", m["data"],
                 "--listen-client-urls", m["client"], "--advertise-client-urls", m["client"],
                 "--listen-peer-urls", m["peer"], "--initial-advertise-peer-urls", m["peer"],
                 "--initial-cluster", m["initial"], "--initial-cluster-token", "e2e",
                 "--initial-cluster-state", "new"],
                stdout=log, stderr=subprocess.STDOUT)

    def kill_etcd_member(self, i, sig=signal.SIGKILL):
        m = self.etcd_members[i]
        if m["proc"] and m["proc"].poll() is None:
            m["proc"].send_signal(sig)
            m["proc"].wait(timeout=30)
        m["proc"] = None

    def wait_etcd_healthy(self, timeout):
        """Every running member answers its health check within `timeout` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            started = [m for m in self.etcd_members if m["proc"]]
            if any(m["proc"].poll() is not None for m in started):
                return False  # one exited
            r = subprocess.run(["etcdctl", "--endpoints", ",".join(m["client"] for m in started),
                                "endpoint", "health"], capture_output=True, text=True)
            if r.returncode == 0:
                return True
            time.sleep(0.2)
        return False

    def etcd_leader(self):
        """Index of the member that is the raft leader now."""
        for i, m in enumerate(self.etcd_members):
            if not m["proc"]:
                continue
            r = subprocess.run(["etcdctl", "--endpoints", m["client"], "endpoint", "status", "-w", "json"],
                               capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                continue
            st = json.loads(r.stdout)[0]["Status"]
            if st["leader"] == st["header"]["member_id"]:
                return i
        raise RuntimeError("no etcd member is the leader")

    def stop(self):
        for n in self.nodes.values():
            n.kill(signal.SIGTERM)
        for i in range(len(self.etcd_members)):
            self.kill_etcd_member(i, signal.SIGTERM)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        if self.own_root and not os.environ.get("KEEP_CLUSTER"):
            shutil.rmtree(self.root, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def started(cls, **kwargs):
        """A started cluster, stopped and removed afterwards (its logs printed when starting
        it fails): the test fixtures' body."""
        c = cls(**kwargs)
        try:
            c.start()
            yield c
        except Exception:
            print(c.logs())
            raise
        finally:
            c.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    # ------------------------------------------------------------------ CLI
    def scribe(self, *args, node=None, check=True, timeout=120):
        node = node or self.any_node()
        r = subprocess.run([self.cli, "--addr", node.admin] + [str(a) for a in args],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("scribe %s failed (%d): %s%s" % (" ".join(map(str, args)), r.returncode,
                                                              r.stdout, r.stderr))
        return r

    def scribe_json(self, *args, node=None):
        return json.loads(self.scribe(*args, "--json", node=node).stdout)

    def any_node(self):
        for n in self.nodes.values():
            if n.alive() and not os.path.exists(n.isolate_file):
                return n
        raise RuntimeError("no scribed is running")

    def status(self, node=None):
        return self.scribe_json("status", node=node)

    def owner(self):
        return self.nodes[self.status()["cluster"]["owner_node"]]

    def wait_running(self, timeout=60):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            dead = [n.id for n in self.nodes.values() if n.proc is not None and n.proc.poll() is not None]
            if dead:
                raise RuntimeError("scribed of node(s) %s exited:\n%s" % (dead, self.logs()))
            try:
                st = self.status()
                last = st
                if st["cluster"]["owner_node"] and st["cluster"]["state"].startswith("running") \
                        and "opening" not in st["cluster"]["state"]:
                    # The pool answers.
                    self.scribe("vsd", "list")
                    return st
            except (RuntimeError, ValueError, KeyError) as e:
                last = str(e)
            time.sleep(0.25)
        raise RuntimeError("cluster not running after %ds: %s\n%s" % (timeout, last, self.logs()))

    def wait_redundant(self, timeout=300):
        """Seconds until the pool is fully redundant again."""
        start = time.time()
        self.scribe("wait-redundant", "--timeout", str(timeout), timeout=timeout + 30)
        return time.time() - start

    def logs(self):
        out = []
        for n in self.nodes.values():
            out.append("---- node %d ----\n%s" % (n.id, n.log_text()[-4000:]))
        return "\n".join(out)

    # ------------------------------------------------------------------ I/O clients
    def fio(self, uri, *extra, check=True, timeout=600):
        args = ["fio", "--name=job", "--ioengine=nbd", "--uri=" + uri, "--output-format=json"] + list(extra)
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("fio failed (%d): %s %s" % (r.returncode, r.stdout[-3000:], r.stderr[-3000:]))
        return r

    def fio_background(self, uri, *extra):
        args = ["fio", "--name=job", "--ioengine=nbd", "--uri=" + uri] + list(extra)
        log = open(os.path.join(self.root, "fio-%d.log" % int(time.time() * 1000)), "w+")
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT), log

    def qemu_io(self, uri, *commands, check=True):
        args = ["qemu-io", "-f", "raw"]
        for c in commands:
            args += ["-c", c]
        r = subprocess.run(args + [uri], capture_output=True, text=True, timeout=300)
        if check and (r.returncode != 0 or "failed" in r.stdout.lower() or "error" in r.stderr.lower()):
            raise RuntimeError("qemu-io %s failed (%d): %s %s" % (commands, r.returncode, r.stdout, r.stderr))
        return r
