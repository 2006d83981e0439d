"""A real guest on a VSD: the tiny test guest of tests/guest booted by plain QEMU or by
a real libvirtd, its disk an NBD export of scribed on a Unix socket.

The guest (tests/guest/build-guest.sh: the host's Debian kernel and busybox) runs one
disk test chosen on its kernel command line and prints one result line on its serial
console before it powers off:

    HC3-RESULT ok mode=<mode> epoch=<N> tag=<tag> blocks=16
    HC3-RESULT fail <reason>

Modes: "write" stamps BLOCK_COUNT blocks of 64 KiB (block i at i * 4 MiB) with the tag
and epoch and flushes them; "verify" reads them back with O_DIRECT and compares;
"writeverify" does both. `expected_block` is the same pattern on the host side.

Everything runs under TCG (`-accel tcg`, libvirt `<domain type='qemu'>`): KVM guests
hang on these machines. A boot to the result line takes about 10 s of wall time.
"""

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from xml.sax.saxutils import escape, quoteattr

BLOCK_COUNT = 16
BLOCK_BYTES = 64 * 1024
BLOCK_STRIDE_BYTES = 4 * 1024 * 1024
RECORD_BYTES = 64
GUEST_RAM_MIB = 256
# A boot is ~10 s; the limit covers a machine busy with other builds.
BOOT_TIMEOUT_S = 180
_TAG_RE = re.compile(r"^[A-Za-z0-9_.-]{1,24}$")
_RESULT_RE = re.compile(r"^HC3-RESULT (ok|fail)(?: (.*))?$")
_DONE_RE = re.compile(r"^hc3-guest: done, uptime ([0-9.]+) s")


def _repo_file(relative):
    """A file of this repository: from Bazel's runfiles, else from the source tree."""
    candidates = []
    if os.environ.get("TEST_SRCDIR"):
        candidates.append(os.path.join(os.environ["TEST_SRCDIR"], os.environ.get("TEST_WORKSPACE", "hc3"),
                                       relative))
    here = os.path.dirname(os.path.abspath(__file__))
    candidates.append(os.path.join(here, "..", "..", relative))
    for c in candidates:
        if os.path.exists(c):
            return os.path.abspath(c)
    raise FileNotFoundError("%s not found (looked in %s)" % (relative, candidates))


def expected_block(tag, epoch, block):
    """The 64 KiB the guest writes as block `block` (see tests/guest/init)."""
    record = ("HC3 tag=%s epoch=%d block=%02d" % (tag, epoch, block)).ljust(RECORD_BYTES - 1, ".")
    return (record[:RECORD_BYTES - 1] + "\n").encode() * (BLOCK_BYTES // RECORD_BYTES)


def block_offset(block):
    return block * BLOCK_STRIDE_BYTES


def _check_args(mode, epoch, tag):
    if mode not in ("write", "verify", "writeverify"):
        raise ValueError("mode must be write, verify or writeverify, not %r" % mode)
    if not isinstance(epoch, int) or epoch < 0:
        raise ValueError("epoch must be a non-negative int, not %r" % epoch)
    if not _TAG_RE.match(tag):
        raise ValueError("tag must match %s, not %r" % (_TAG_RE.pattern, tag))


class GuestImage:
    """The kernel and initramfs of the test guest, built once into `out_dir`."""

    def __init__(self, out_dir):
        script = _repo_file("tests/guest/build-guest.sh")
        r = subprocess.run([script, out_dir], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError("build-guest.sh failed (%d): %s%s" % (r.returncode, r.stdout, r.stderr))
        self.kernel = os.path.join(out_dir, "vmlinuz")
        self.initrd = os.path.join(out_dir, "initrd.cpio.gz")

    @staticmethod
    def cmdline(mode, epoch, tag):
        _check_args(mode, epoch, tag)
        # panic=-1: a dying /init resets at once, and QEMU (-no-reboot) or libvirt
        # (<on_reboot>destroy) ends the guest instead of waiting for the timeout.
        return "console=ttyS0 panic=-1 hc3.mode=%s hc3.epoch=%d hc3.tag=%s" % (mode, epoch, tag)


class GuestResult:
    """What one guest run printed: `ok`, the HC3-RESULT `line` (None if none was
    printed), `fields` (key=value pairs of an ok line), `reason` (of a fail line, or why
    there is no line), `seconds` from start to the guest's exit (wall time),
    `guest_seconds` (the guest's own uptime when its test ended, None if it did not get
    there) and the serial `log`."""

    def __init__(self, log_path, seconds, exit_note=None):
        self.log_path = log_path
        self.seconds = seconds
        try:
            with open(log_path, "rb") as f:
                self.log = f.read().decode(errors="replace").replace("\r", "")
        except OSError:
            self.log = ""
        self.line = None
        self.guest_seconds = None
        for line in self.log.splitlines():
            if line.startswith("HC3-RESULT "):
                self.line = line.strip()
            done = _DONE_RE.match(line)
            if done:
                self.guest_seconds = float(done.group(1))
        self.ok = False
        self.fields = {}
        self.reason = exit_note or "no HC3-RESULT line on the console"
        m = _RESULT_RE.match(self.line or "")
        if m and exit_note is None:
            self.ok = m.group(1) == "ok"
            rest = m.group(2) or ""
            if self.ok:
                self.fields = dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)
                self.reason = None
            else:
                self.reason = rest
        elif m:
            self.reason = "%s (last result line: %s)" % (exit_note, self.line)

    def describe(self):
        """For assertion messages: the result and the end of the console log."""
        return "result %r (%s) after %.1f s; console %s ends:\n%s" % (
            self.line, self.reason, self.seconds, self.log_path, self.log[-3000:])

    def timing(self):
        """'12.3 s wall (guest uptime 3.4 s)', for the test log."""
        guest_s = "%.1f s" % self.guest_seconds if self.guest_seconds is not None else "-"
        return "%.1f s wall (guest uptime %s)" % (self.seconds, guest_s)

    def __repr__(self):
        return "GuestResult(%r, %s)" % (self.line, self.timing())


def run_qemu(image, nbd_socket, export, mode, epoch, tag, log_path, timeout_s=BOOT_TIMEOUT_S):
    """Boots the guest under plain QEMU on `export` of the NBD server at `nbd_socket` and
    waits for it to power off. Returns a GuestResult; a timeout kills QEMU and fails."""
    uri = "nbd+unix:///%s?socket=%s" % (export, nbd_socket)
    if "," in uri:
        raise ValueError("a comma in %r would split QEMU's -drive option" % uri)
    args = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", str(GUEST_RAM_MIB), "-smp", "1",
        "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
        "-kernel", image.kernel, "-initrd", image.initrd,
        "-append", GuestImage.cmdline(mode, epoch, tag),
        "-drive", "file=%s,format=raw,if=virtio,cache=none" % uri,
    ]
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return GuestResult(log_path, time.monotonic() - start, "timeout: no power-off in %d s" % timeout_s)
    note = None if rc == 0 else "qemu-system-x86_64 exited with %d" % rc
    return GuestResult(log_path, time.monotonic() - start, note)


class Libvirtd:
    """A private libvirtd + virtlogd (scripts/libvirtd-local) in `root` (kept short: its
    Unix socket path must stay under 108 bytes). QEMU runs as root with no security
    driver there (see the script); `uri` is its qemu:///system connection."""

    def __init__(self, root=None):
        self.script = _repo_file("scripts/libvirtd-local")
        self.own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="lvd-", dir="/tmp")
        self.uri = None

    def start(self):
        r = subprocess.run([self.script, self.root], capture_output=True, text=True, timeout=180)
        if r.returncode != 0:
            raise RuntimeError("scripts/libvirtd-local could not start libvirtd (%d):\n%s%s\n%s" % (
                r.returncode, r.stdout, r.stderr, self.log_tail()))
        self.uri = r.stdout.strip().splitlines()[-1]
        return self

    def stop(self):
        subprocess.run([self.script, "--stop", self.root], capture_output=True, text=True, timeout=120)
        if self.own_root and not os.environ.get("KEEP_CLUSTER"):
            shutil.rmtree(self.root, ignore_errors=True)

    def virsh(self, *args, check=True, timeout=60):
        r = subprocess.run(["virsh", "-q", "-c", self.uri] + list(args), capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("virsh %s failed (%d): %s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr))
        return r

    def log_tail(self, name="libvirtd.log", chars=3000):
        try:
            with open(os.path.join(self.root, "log", name), "rb") as f:
                return f.read().decode(errors="replace")[-chars:]
        except OSError:
            return "(no %s)" % name

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def domain_xml(name, image, nbd_socket, export, mode, epoch, tag, serial_path):
    """A transient TCG domain: direct kernel boot, the VSD as a virtio disk over NBD on a
    Unix socket, the serial console to a file, and nothing else."""
    return """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{ram}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='nbd' name={export}>
        <host transport='unix' socket={socket}/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path={serial}/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
""".format(name=escape(name), ram=GUEST_RAM_MIB, kernel=escape(image.kernel), initrd=escape(image.initrd),
           cmdline=escape(GuestImage.cmdline(mode, epoch, tag)), export=quoteattr(export),
           socket=quoteattr(nbd_socket), serial=quoteattr(serial_path))


def run_libvirt(libvirtd, image, nbd_socket, export, mode, epoch, tag, log_path, timeout_s=BOOT_TIMEOUT_S):
    """Boots the guest as a transient libvirt domain (`virsh create`) and waits until it
    has powered off (a transient domain then disappears). Returns a GuestResult; on a
    timeout the domain is destroyed and the result fails."""
    name = "hc3-guest-%s" % uuid.uuid4().hex[:12]
    xml_path = log_path + ".xml"
    with open(xml_path, "w") as f:
        f.write(domain_xml(name, image, nbd_socket, export, mode, epoch, tag, log_path))
    if os.path.exists(log_path):
        os.unlink(log_path)
    start = time.monotonic()
    r = libvirtd.virsh("create", xml_path, check=False)
    if r.returncode != 0:
        raise RuntimeError("virsh create failed (%d): %s%s\nlibvirtd.log:\n%s" % (
            r.returncode, r.stdout, r.stderr, libvirtd.log_tail()))
    deadline = start + timeout_s
    while True:
        state = libvirtd.virsh("domstate", name, check=False)
        if state.returncode != 0 or state.stdout.strip() == "shut off":
            break
        if time.monotonic() > deadline:
            libvirtd.virsh("destroy", name, check=False)
            return GuestResult(log_path, time.monotonic() - start,
                               "timeout: domain %s still %r after %d s" % (name, state.stdout.strip(), timeout_s))
        time.sleep(0.2)
    return GuestResult(log_path, time.monotonic() - start)


def read_blocks(uri, blocks=range(BLOCK_COUNT)):
    """Reads the guest's pattern blocks from the host with qemu-io: {block: bytes}."""
    args = ["qemu-io", "-f", "raw"]
    for b in blocks:
        args += ["-c", "read -v %d %d" % (block_offset(b), BLOCK_BYTES)]
    r = subprocess.run(args + [uri], capture_output=True, text=True, timeout=300)
    if r.returncode != 0 or "failed" in r.stdout.lower():
        raise RuntimeError("qemu-io failed (%d): %s %s" % (r.returncode, r.stdout[-2000:], r.stderr[-2000:]))
    data = {}
    for line in r.stdout.splitlines():
        m = re.match(r"^([0-9a-f]{8}):  ((?:[0-9a-f]{2} ){1,16})", line)
        if m:
            offset = int(m.group(1), 16)
            b = offset // BLOCK_STRIDE_BYTES
            data.setdefault(b, bytearray()).extend(bytes.fromhex(m.group(2)))
    return {b: bytes(v) for b, v in data.items()}


# ------------------------------------------------------------------ loop mode (HA tests)
# tests/guest/init's hc3.mode=loop: a record log of LOG_SLOTS 4 KiB slots from byte
# LOG_BASE_BYTES, slot n holding "HC3L tag=<tag> boot=<id> seq=<n>" (dots to 63 bytes,
# '\n'), written in order by whichever instance runs; console lines
# "HC3-LOOP start boot=<id> pattern=written|verified head=<H>" and "HC3-LOOP boot=<id> seq=<n>".
LOG_BASE_BYTES = 64 * 1024 * 1024
LOG_SLOT_BYTES = 4096
LOG_SLOTS = 16384
_LOG_RECORD_RE = re.compile(rb"^HC3L tag=([A-Za-z0-9_.-]+) boot=([0-9a-f]{8}) seq=([0-9]+) \.*\n$")
_LOOP_START_RE = re.compile(r"^HC3-LOOP start boot=([0-9a-f]{8}) pattern=(written|verified) head=([0-9]+)")
_LOOP_SEQ_RE = re.compile(r"^HC3-LOOP boot=([0-9a-f]{8}) seq=([0-9]+)")


def loop_cmdline(tag):
    """The kernel command line of a loop-mode guest."""
    _check_args("write", 0, tag)
    return "console=ttyS0 panic=-1 hc3.mode=loop hc3.epoch=0 hc3.tag=%s" % tag


class LoopConsole:
    """What a loop-mode guest printed so far on its serial console (a file that grows):
    `starts` [(boot, pattern, head)], `last_seq` {boot: highest seq printed}, `failures`
    (write-failed lines) and `fail` (an HC3-RESULT fail line, or None)."""

    def __init__(self, path):
        self.path = path
        try:
            with open(path, "rb") as f:
                self.log = f.read().decode(errors="replace").replace("\r", "")
        except OSError:
            self.log = ""
        self.starts = []
        self.last_seq = {}
        self.failures = []
        self.fail = None
        for line in self.log.splitlines():
            m = _LOOP_START_RE.match(line)
            if m:
                self.starts.append((m.group(1), m.group(2), int(m.group(3))))
            m = _LOOP_SEQ_RE.match(line)
            if m:
                self.last_seq[m.group(1)] = max(self.last_seq.get(m.group(1), -1), int(m.group(2)))
            if line.startswith("HC3-LOOP write-failed"):
                self.failures.append(line)
            if line.startswith("HC3-RESULT fail"):
                self.fail = line

    def tail(self, chars=2000):
        return self.log[-chars:]


def wait_console(path, predicate, timeout_s, what, poll_s=0.1):
    """Polls the console file at `path` until predicate(LoopConsole) is true; returns the
    LoopConsole and the monotonic time it was first seen. Fails on a guest HC3-RESULT fail
    line or the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        c = LoopConsole(path)
        if predicate(c):
            return c, time.monotonic()
        if c.fail:
            raise AssertionError("guest failed while waiting for %s: %s\n%s" % (what, c.fail, c.tail()))
        if time.monotonic() > deadline:
            raise AssertionError("no %s on %s after %d s; console ends:\n%s" % (what, path, timeout_s, c.tail()))
        time.sleep(poll_s)


def wait_new_boot(console_path, known, timeout_s, what, min_seq=None):
    """Waits on a console file for an instance whose boot id is not in `known` to have
    printed its start line and its first record (or record `min_seq`). Returns
    (boot, pattern, head, monotonic time it was seen)."""
    def ready(c):
        for boot, _, head in c.starts:
            if boot not in known and c.last_seq.get(boot, -1) >= (head if min_seq is None else min_seq):
                return True
        return False

    c, t = wait_console(console_path, ready, timeout_s, what)
    boot, pattern, head = next(s for s in c.starts if s[0] not in known)
    return boot, pattern, head, t


def wait_seq(console_path, boot, seq, timeout_s=60):
    """Waits until instance `boot` has reported record `seq` (or a later one)."""
    wait_console(console_path, lambda c: c.last_seq.get(boot, -1) >= seq, timeout_s,
                 "record seq %d of boot %s" % (seq, boot))


def read_log(uri, slots):
    """The first `slots` record slots of the disk at `uri` (qemu-io, 64 bytes per slot):
    a list with, per slot, (tag, boot, seq) or None for a slot that holds no record.
    A slot holding anything else fails (the log is damaged).

    Slots are read from the last to the first, so that a log still being appended to
    reads as a prefix: a record seen in slot n was written after every slot below n,
    which are read later."""
    out = [None] * slots
    step = 512
    for first in reversed(range(0, slots, step)):
        n = min(step, slots - first)
        args = ["qemu-io", "-f", "raw"]
        for i in reversed(range(first, first + n)):
            args += ["-c", "read -v %d %d" % (LOG_BASE_BYTES + i * LOG_SLOT_BYTES, RECORD_BYTES)]
        r = subprocess.run(args + [uri], capture_output=True, text=True, timeout=300)
        if r.returncode != 0 or "failed" in r.stdout.lower():
            raise RuntimeError("qemu-io failed (%d): %s %s" % (r.returncode, r.stdout[-2000:], r.stderr[-2000:]))
        data = {}
        for line in r.stdout.splitlines():
            m = re.match(r"^([0-9a-f]{8}):  ((?:[0-9a-f]{2} ){1,16})", line)
            if m:
                offset = int(m.group(1), 16)
                slot = (offset - LOG_BASE_BYTES) // LOG_SLOT_BYTES
                data.setdefault(slot, bytearray()).extend(bytes.fromhex(m.group(2)))
        for i in range(first, first + n):
            raw = bytes(data.get(i, b""))
            if len(raw) != RECORD_BYTES:
                raise RuntimeError("qemu-io returned %d bytes for slot %d" % (len(raw), i))
            if raw == bytes(RECORD_BYTES):
                continue
            m = _LOG_RECORD_RE.match(raw)
            if not m:
                raise AssertionError("log slot %d holds %r, not a record" % (i, raw))
            out[i] = (m.group(1).decode(), m.group(2).decode(), int(m.group(3)))
    return out


def log_runs(records):
    """Checks the record log read by read_log and returns its runs: [(boot, first, last)],
    one per instance in the order they wrote. Fails unless the records fill a prefix of
    the slots, each slot n holds seq n, and each boot id forms one contiguous run (an
    instance that wrote after the next one started would appear twice: two writers)."""
    used = len(records)
    while used > 0 and records[used - 1] is None:
        used -= 1
    holes = [i for i in range(used) if records[i] is None]
    assert not holes, "empty slots %s inside the log (records up to slot %d)" % (holes[:10], used - 1)
    runs = []
    for i in range(used):
        tag, boot, seq = records[i]
        assert seq == i, "slot %d holds seq %d (boot %s): out of place" % (i, seq, boot)
        if runs and runs[-1][0] == boot:
            runs[-1][2] = i
        else:
            runs.append([boot, i, i])
    boots = [r[0] for r in runs]
    twice = sorted(b for b in set(boots) if boots.count(b) > 1)
    assert not twice, "boot(s) %s wrote again after another instance had started: runs %s" % (twice, runs)
    return [tuple(r) for r in runs]
