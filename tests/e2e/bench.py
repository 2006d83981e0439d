"""scripts/bench: one run, same device, five targets — a raw file through libaio, qemu-nbd
serving a qcow2 file and a raw file, and our NBD export of an RF-2 VSD on a 3-node
loopback cluster through the pool owner's socket and through another node's socket (the
relay) — each with fio 4 KiB random write and read at QD32 and QD1 (p50 latency) and 1 MiB
sequential write. BENCH_QD_SWEEP="1,4,16,32" adds a queue-depth sweep of 4 KiB random
reads and writes on the raw file and on the owner's socket. Prints a table and the
ratios docs/BENCHMARKS.md records, then everything as JSON.
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
    ("4k randwrite QD1 p50", ["--rw=randwrite", "--bs=4k", "--iodepth=1"], "write", "p50"),
    ("4k randread QD1 p50", ["--rw=randread", "--bs=4k", "--iodepth=1"], "read", "p50"),
]
SWEEP = [int(q) for q in os.environ.get("BENCH_QD_SWEEP", "").split(",") if q.strip()]


def sweep_jobs():
    jobs = []
    for qd in SWEEP:
        jobs.append(("4k randread QD%d" % qd, ["--rw=randread", "--bs=4k", "--iodepth=%d" % qd], "read", "iops"))
        jobs.append(("4k randwrite QD%d" % qd, ["--rw=randwrite", "--bs=4k", "--iodepth=%d" % qd], "write", "iops"))
    return jobs


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


def measure(name, target_args, prefill, servers=(), jobs=JOBS):
    """Runs the jobs; `servers` are (label, pid) whose CPU time per I/O is reported too
    (CPU over the whole fio run, ramp included, divided by IOPS x wall time: a cost
    figure that a busy machine disturbs far less than the IOPS themselves)."""
    if prefill:
        fio(target_args, ["--rw=write", "--bs=1m", "--iodepth=8", "--time_based=0", "--runtime=0"])
    out = {}
    for label, job, side, metric in jobs:
        before = {who: cpu_seconds(pid) for who, pid in servers}
        t0 = time.time()
        run = fio(target_args, job)
        wall = time.time() - t0
        j = run[side]
        if metric == "p50":
            out[label] = j["clat_ns"]["percentile"]["50.000000"] / 1000.0
        else:
            out[label] = j["iops"] if metric == "iops" else j["bw_bytes"] / (1 << 20)
        cost = {"fio": (run["usr_cpu"] + run["sys_cpu"]) / 100.0 / j["iops"] * 1e6}
        for who, pid in servers:
            cost[who] = (cpu_seconds(pid) - before[who]) / (j["iops"] * wall) * 1e6
        out[label + " cpu_us_per_io"] = cost
        unit = {"iops": "IOPS", "bw": "MiB/s", "p50": "us p50"}[metric]
        print("  %-12s %-20s %10.0f %s   CPU us/IO: %s" % (
            name, label, out[label], unit,
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
    raw_args = ["--ioengine=libaio", "--direct=1", "--filename=" + raw]
    results["raw"] = measure("raw", raw_args, True)
    if SWEEP:
        results["raw sweep"] = measure("raw", raw_args, False, jobs=sweep_jobs())
    # qemu-nbd serving that raw file: the floor one NBD hop sets, nothing to look up.
    results["qemu-nbd raw"] = serve_qemu_nbd(root, raw, "raw")
    os.unlink(raw)
    # qemu-nbd serving qcow2 (one copy), cache=none aio=native as a VM host would.
    qcow = os.path.join(root, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", qcow, SIZE], check=True)
    results["qemu-nbd"] = serve_qemu_nbd(root, qcow, "qcow2")
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
        # A client of another node (a VM there): its socket relays to the owner.
        other = next(n for n in c.nodes.values() if n is not owner)
        results["scribe relay"] = measure("scribe relay", ["--ioengine=nbd", "--uri=" + other.uri("bench")], False,
                                          servers)
        if SWEEP:
            results["scribe sweep"] = measure("scribe", ["--ioengine=nbd", "--uri=" + owner.uri("bench")], False,
                                              servers, jobs=sweep_jobs())
    print()
    s, q, r = results["scribe"], results["qemu-nbd"], results["raw"]
    qr, rl = results["qemu-nbd raw"], results["scribe relay"]
    for label, _, _, metric in JOBS:
        if metric == "p50":  # latency: lower is better, ratios of times
            print("%-22s raw %.0f  qemu-nbd raw %.0f  qcow2 %.0f  scribe %.0f  relay %.0f us (scribe/raw %.2fx)" % (
                label, r[label], qr[label], q[label], s[label], rl[label], s[label] / r[label]))
        else:
            print("%-22s scribe/qemu-nbd %.2fx   scribe/raw %.2fx   qemu-nbd-raw/raw %.2fx   relay/owner %.2fx" % (
                label, s[label] / q[label], s[label] / r[label], qr[label] / r[label], rl[label] / s[label]))
    if SWEEP:
        for label, _, _, _ in sweep_jobs():
            print("%-22s raw %8.0f   scribe %8.0f IOPS   scribe/raw %.2fx" % (
                label, results["raw sweep"][label], results["scribe sweep"][label],
                results["scribe sweep"][label] / results["raw sweep"][label]))
    print(json.dumps(results))


def serve_qemu_nbd(root, path, fmt):
    """Measures qemu-nbd serving `path` (cache=none aio=native, as a VM host would)."""
    sock = os.path.join(root, "qemu-nbd-%s.sock" % fmt)
    qn = subprocess.Popen(["qemu-nbd", "-f", fmt, "--cache=none", "--aio=native", "--shared=4", "--persistent",
                           "-k", sock, path])
    for _ in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.1)
    try:
        return measure("qemu-nbd " + fmt, ["--ioengine=nbd", "--uri=nbd+unix:///?socket=" + sock], fmt == "qcow2",
                       [("qemu-nbd", qn.pid)])
    finally:
        qn.terminate()
        qn.wait()


if __name__ == "__main__":
    main()
