"""scripts/bench: one run, same device, three targets — a raw file through libaio, qemu-nbd
serving a qcow2 file, and our NBD export of an RF-2 VSD on a 3-node loopback cluster —
each with fio 4 KiB random write and read at QD32 and 1 MiB sequential write. Prints a
table and the ratios docs/BENCHMARKS.md records.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster  # noqa: E402

SIZE = os.environ.get("BENCH_SIZE", "1g")
RUNTIME = os.environ.get("BENCH_RUNTIME", "15")
DISK_BYTES = 4 << 30  # per node: room for the RF-2 copies of the VSD and the writes' churn

JOBS = [
    ("4k randwrite QD32", ["--rw=randwrite", "--bs=4k", "--iodepth=32"], "write", "iops"),
    ("4k randread QD32", ["--rw=randread", "--bs=4k", "--iodepth=32"], "read", "iops"),
    ("1M seq write QD8", ["--rw=write", "--bs=1m", "--iodepth=8"], "write", "bw"),
]


def fio(target_args, job_args):
    args = ["fio", "--name=bench", "--output-format=json", "--size=" + SIZE, "--time_based",
            "--runtime=" + RUNTIME, "--ramp_time=2", "--randrepeat=0", "--norandommap"] + target_args + job_args
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError("fio %s failed: %s %s" % (args, r.stdout[-2000:], r.stderr[-2000:]))
    return json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]


def cpu_seconds(pid):
    """User + system CPU time of process `pid` so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name, target_args, prefill, servers=()):
    """Runs the jobs; `servers` are (label, pid) whose CPU time per I/O is reported too
    (CPU over the whole fio run, ramp included, divided by IOPS x wall time: a cost
    figure that a busy machine disturbs far less than the IOPS themselves)."""
    if prefill:
        fio(target_args, ["--rw=write", "--bs=1m", "--iodepth=8", "--time_based=0", "--runtime=0"])
    out = {}
    for label, job, side, metric in JOBS:
        before = {who: cpu_seconds(pid) for who, pid in servers}
        t0 = time.time()
        run = fio(target_args, job)
        wall = time.time() - t0
        j = run[side]
        out[label] = j["iops"] if metric == "iops" else j["bw_bytes"] / (1 << 20)
        cost = {"fio": (run["usr_cpu"] + run["sys_cpu"]) / 100.0 / j["iops"] * 1e6}
        for who, pid in servers:
            cost[who] = (cpu_seconds(pid) - before[who]) / (j["iops"] * wall) * 1e6
        out[label + " cpu_us_per_io"] = cost
        print("  %-8s %-18s %10.0f %s   CPU us/IO: %s" % (
            name, label, out[label], "IOPS" if metric == "iops" else "MiB/s",
            " ".join("%s %.1f" % (k, v) for k, v in cost.items())), flush=True)
    return out


def main():
    root = tempfile.mkdtemp(prefix="scribe-bench-", dir=os.environ.get("BENCH_DIR"))
    try:
        run(root)
    finally:
        # The cluster's disks hold gigabytes of written data: never leave them behind.
        shutil.rmtree(root, ignore_errors=True)


def run(root):
    results = {}
    # Raw: a file on the same file system, O_DIRECT through libaio.
    raw = os.path.join(root, "raw.img")
    subprocess.run(["truncate", "-s", SIZE, raw], check=True)
    results["raw"] = measure("raw", ["--ioengine=libaio", "--direct=1", "--filename=" + raw], True)
    os.unlink(raw)
    # qemu-nbd serving qcow2 (one copy), cache=none aio=native as a VM host would.
    qcow = os.path.join(root, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", qcow, SIZE], check=True)
    sock = os.path.join(root, "qemu-nbd.sock")
    qn = subprocess.Popen(["qemu-nbd", "-f", "qcow2", "--cache=none", "--aio=native", "--shared=4", "--persistent",
                           "-k", sock, qcow])
    for _ in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.1)
    try:
        results["qemu-nbd"] = measure("qemu-nbd", ["--ioengine=nbd", "--uri=nbd+unix:///?socket=" + sock], True,
                                      [("qemu-nbd", qn.pid)])
    finally:
        qn.terminate()
        qn.wait()
    os.unlink(qcow)
    # Ours: RF-2 VSD on 3 scribed, through the owner's NBD socket.
    with Cluster(nodes=3, disk_bytes=DISK_BYTES, root=os.path.join(root, "cluster"), metadata_mib=64,
                 etcd_members=1) as c:
        # Every block of the disk files written once first, as on a real disk (and as the
        # raw file and the qcow2 are prefilled): a sparse file would charge our writes for
        # the file system's block allocation and our reads for its fragmented extents.
        for n in c.nodes.values():
            for path, size in n.disks:
                subprocess.run(["dd", "if=/dev/zero", "of=" + path, "bs=4M", "count=%d" % (size >> 22),
                                "oflag=direct", "status=none"], check=True)
        c.start()
        c.scribe("vsd", "create", "bench", SIZE.upper())
        owner = c.owner()
        servers = [("owner" if n is owner else "peer%d" % n.id, n.proc.pid) for n in c.nodes.values()]
        results["scribe"] = measure("scribe", ["--ioengine=nbd", "--uri=" + owner.uri("bench")], True, servers)
    print()
    s, q, r = results["scribe"], results["qemu-nbd"], results["raw"]
    for label, _, _, _ in JOBS:
        print("%-18s scribe/qemu-nbd %.2fx   scribe/raw %.2fx" % (label, s[label] / q[label], s[label] / r[label]))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
