#!/bin/bash
# The `scribe` CLI against admin_test_server (the admin service over a pool on three sparse
# files): every command's table and --json output checked for the values the server
# holds, error messages and exit statuses (1 for a failed command, 2 for a usage error),
# the connection failure message, SCRIBE_ADDR and --addr, and wait-redundant both
# succeeding after a disk failure and timing out when redundancy cannot come back.
set -uo pipefail

scribe="$1"
server="$2"
work="${TEST_TMPDIR:?TEST_TMPDIR is not set}/scribe_cli"
rm -rf "${work}"
mkdir -p "${work}/a" "${work}/b"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "${pid}" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  echo "--- last command: ${last_cmd:-}" >&2
  echo "--- exit status: ${rc:-}" >&2
  echo "--- stdout:" >&2
  echo "${out:-}" >&2
  echo "--- stderr:" >&2
  echo "${err:-}" >&2
  exit 1
}

# Starts a test server in directory $1 with the remaining arguments; sets `port`.
start_server() {
  local dir="$1"
  shift
  : >"${dir}/server.out"
  "${server}" --dir "${dir}" "$@" >"${dir}/server.out" 2>"${dir}/server.err" &
  pids+=($!)
  local waited=0
  port=""
  while [[ -z "${port}" ]]; do
    port="$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "${dir}/server.out")"
    [[ -n "${port}" ]] && break
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then
      cat "${dir}/server.err" >&2
      fail "the test server in ${dir} exited"
    fi
    ((waited++ < 600)) || fail "the test server in ${dir} did not start within 60 s"
    sleep 0.1
  done
}

# Runs scribe with the arguments; sets out, err, rc.
run() {
  last_cmd="scribe $*"
  out="$("${scribe}" "$@" 2>"${work}/stderr")"
  rc=$?
  err="$(cat "${work}/stderr")"
}

expect_rc() {
  [[ "${rc}" -eq "$1" ]] || fail "expected exit status $1"
}

ok() {
  run "$@"
  expect_rc 0
}

out_has() { grep -qE -- "$1" <<<"${out}" || fail "stdout lacks /$1/"; }
out_is() { [[ "${out}" == "$1" ]] || fail "stdout is not '$1'"; }
err_is() { [[ "${err}" == "$1" ]] || fail "stderr is not '$1'"; }
err_has() { grep -qF -- "$1" <<<"${err}" || fail "stderr lacks '$1'"; }

# Checks the JSON on stdout: $1 is a Python expression over `d` that must be true.
json_ok() {
  /usr/bin/python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
if not (eval(sys.argv[1])):
    sys.exit("false: %s\nfor: %s" % (sys.argv[1], json.dumps(d)))
' "$1" <<<"${out}" || fail "JSON check failed: $1"
}

# Server A runs the pool, with an 8 MiB VSD "prefilled" written in full; server B is a
# node that does not run the pool.
start_server "${work}/a" --prefill 8388608
port_a="${port}"
start_server "${work}/b" --no-pool
port_b="${port}"
export SCRIBE_ADDR="127.0.0.1:${port_a}"

# ------------------------------------------------------------ usage and help
ok help
out_has '^usage: scribe '
out_has 'wait-redundant \[--timeout S\]'
ok --help
out_has '^usage: scribe '
run
expect_rc 2
err_has 'scribe: no command given'
err_has 'usage: scribe '
run frob
expect_rc 2
err_has 'scribe: frob: unknown command '\''frob'\'''
run vsd create x 1.5G
expect_rc 2
err_has "scribe: vsd create: SIZE '1.5G' is not a size"
err_has 'usage: scribe '
run vsd create x 4K --bogus 1
expect_rc 2
err_has 'scribe: vsd create: unknown option --bogus'
run vsd create x
expect_rc 2
err_has 'scribe: vsd create: expected NAME SIZE'
run disk add "${work}/a/x.disk" 1G
expect_rc 2
err_has 'scribe: disk add: --node N is required'
run vsd create x 4K --replication 300
expect_rc 2
err_has '--replication wants a whole number up to 255'
run vsd
expect_rc 2
err_has "'vsd' needs a subcommand"

# ------------------------------------------------------------ connection
run --addr 127.0.0.1:1 vsd list
expect_rc 1
err_has 'scribe: vsd list: cannot talk to scribed at 127.0.0.1:1:'
[[ -z "${out}" ]] || fail "a failed command printed on stdout"
SCRIBE_ADDR=127.0.0.1:1 run --addr "127.0.0.1:${port_a}" vsd list
expect_rc 0
out_has '^prefilled '

# ------------------------------------------------------------ VSDs
ok vsd create vm1 64M --replication 3 --flash-priority 7
out_is 'created vsd vm1 (64 MiB, 3 copies, flash priority 7, id 2)'
run vsd create vm1 4K
expect_rc 1
err_is 'scribe: vsd create: name: a VSD named "vm1" already exists'
run vsd create bad 4097
expect_rc 1
err_is 'scribe: vsd create: sizeBytes 4097 is not a multiple of 4096 bytes'
run vsd create bad 0
expect_rc 1
err_is 'scribe: vsd create: sizeBytes must be a positive multiple of 4096 (got 0)'
run vsd create bad 4K --replication 7
expect_rc 1
err_is 'scribe: vsd create: replication must be 2 or 3 (got 7)'
run vsd create bad 4K --flash-priority 99
expect_rc 1
err_is 'scribe: vsd create: flashPriority must be 0..11 (got 99)'
ok vsd create 'we"ird\name' 1G --json
json_ok 'd["name"] == "we\"ird\\name" and d["size_bytes"] == 1 << 30 and d["replication"] == 2'

ok vsd list
out_has '^NAME +SIZE +COPIES +FLASH +ALLOCATED +UNIQUE +SNAPSHOTS +ID$'
out_has '^vm1 +64 MiB +3 +7 +0 B +0 B +0 +2$'
out_has '^prefilled +8 MiB +2 +4 +8 MiB +8 MiB +0 +1$'
ok --json vsd list
json_ok 'sorted(v["name"] for v in d["vsds"]) == ["prefilled", "vm1", "we\"ird\\name"]'
json_ok '[v for v in d["vsds"] if v["name"] == "prefilled"][0]["allocated_bytes"] == 8388608'
ok vsd list --json
json_ok '[v for v in d["vsds"] if v["name"] == "vm1"][0] == {"id": 2, "name": "vm1", "size_bytes": 67108864, "replication": 3, "flash_priority": 7, "allocated_bytes": 0, "unique_bytes": 0, "shared_bytes": 0, "snapshots": 0}'

ok vsd info vm1
out_has '^size: +64 MiB \(67108864 bytes\)$'
out_has '^copies: +3$'
ok vsd resize vm1 128M
out_is 'resized vsd vm1 to 128 MiB'
run vsd resize vm1 64M
expect_rc 1
err_has 'shrinking is not supported'
ok vsd info vm1 --json
json_ok 'd["size_bytes"] == 128 << 20'
run vsd info nosuch
expect_rc 1
err_is 'scribe: vsd info: no VSD named "nosuch"'

# ------------------------------------------------------------ snapshots, clones, diff
ok snapshot create prefilled s1
out_is 'created snapshot s1 of vsd prefilled (id 1)'
run snapshot create prefilled s1
expect_rc 1
err_is 'scribe: snapshot create: VSD "prefilled" already has a snapshot named "s1"'
ok snapshot list prefilled
out_has '^s1 +0 B +[0-9]+ +1$'
ok diff prefilled s1 --json
json_ok 'd["extents"] == [{"offset_bytes": 0, "length_bytes": 8388608}] and d["changed_bytes"] == 8388608 and d["from"] is None'
ok diff prefilled s1
out_has '^1 extent\(s\), 8 MiB written as of s1$'
ok snapshot create prefilled s2
ok diff prefilled s1 s2 --json
json_ok 'd["extents"] == [] and d["from"] == "s1" and d["to"] == "s2"'
run diff prefilled s0 s2
expect_rc 1
err_is 'scribe: diff: VSD "prefilled" has no snapshot named "s0"'

ok clone prefilled pclone --snapshot s1 --json
json_ok 'd["name"] == "pclone" and d["size_bytes"] == 8388608 and d["allocated_bytes"] == 8388608 and d["shared_bytes"] == 8388608'
ok clone vm1 vm1-live
out_is 'cloned vm1 (live) into vsd vm1-live (128 MiB, 3 copies, flash priority 7, id 5)'
run clone vm1 pclone
expect_rc 1
err_is 'scribe: clone: cloneName: a VSD named "pclone" already exists'

ok snapshot group g vm1 prefilled --json
json_ok '[(s["vsd_name"], s["name"]) for s in d["snapshots"]] == [("vm1", "g"), ("prefilled", "g")]'
json_ok 'd["snapshots"][0]["generation"] == d["snapshots"][1]["generation"]'
run snapshot group g2 vm1 vm1
expect_rc 1
err_is 'scribe: snapshot group: vsds[1]: VSD "vm1" is listed twice'
ok revert prefilled s1
out_is 'reverted vsd prefilled to snapshot s1'
run revert prefilled nosuch
expect_rc 1
err_is 'scribe: revert: VSD "prefilled" has no snapshot named "nosuch"'
ok snapshot delete prefilled g
ok snapshot list prefilled --json
json_ok '[s["name"] for s in d["snapshots"]] == ["s1", "s2"] and d["vsd"] == "prefilled"'

ok vsd export vm1
out_is "nbd+unix:///vm1?socket=${work}/a/node1.nbd"
ok vsd export vm1 --node 3 --json
json_ok 'd["node"] == 3 and d["export_name"] == "vm1" and d["uri"] == "nbd+unix:///vm1?socket=" + d["nbd_socket"] and d["nbd_socket"].endswith("/a/node3.nbd")'
run vsd export vm1 --node 9
expect_rc 1
err_is 'scribe: vsd export: node 9 is not a member of the cluster'

ok vsd delete vm1-live
out_is 'deleted vsd vm1-live'
run vsd delete vm1-live
expect_rc 1
err_is 'scribe: vsd delete: no VSD named "vm1-live"'

# ------------------------------------------------------------ cluster and pool
ok node list --json
json_ok '[n["id"] for n in d["nodes"]] == [1, 2, 3] and [n["owner"] for n in d["nodes"]] == [True, False, False]'
ok node list
out_has '^1 +\* +yes +yes +127\.0\.0\.1:7001 '
ok status
out_has '^cluster: running, owner node 1, epoch 1, 3 node\(s\)$'
out_has '^hdd +[0-9.]+ MiB +[0-9.]+ MiB +[0-9.]+ MiB$'
out_has '^fully redundant: yes$'
ok status --json
json_ok 'd["cluster"]["owner_node"] == 1 and d["pool"]["fully_redundant"] and d["pool"]["hdd"]["capacity_bytes"] > 0 and d["pool"]["chunks"] >= 8'
ok scrub --json --progress
json_ok 'd["chunks_checked"] >= 8 and d["blocks_checked"] >= 2048 and d["bad_copies"] == 0 and d["unrecoverable"] == 0'
ok scrub
out_has '^scrub: [0-9]+ chunks, [0-9]+ blocks checked; 0 bad copies, 0 repaired, 0 unrecoverable'

ok disk list --json
json_ok 'len(d["disks"]) == 3 and all(not x["failed"] and x["tier"] == "hdd" for x in d["disks"])'
disk_on() {  # the id of the (first) disk of node $1, from `disk list --json` in $out
  /usr/bin/python3 -c 'import json,sys; print([x["id"] for x in json.load(sys.stdin)["disks"] if x["node"] == int(sys.argv[1])][0])' "$1" <<<"${out}"
}
disk1="$(disk_on 1)"
disk2="$(disk_on 2)"
disk3="$(disk_on 3)"
ok disk fail "${disk1}"
out_has "^disk ${disk1} is failed"
ok wait-redundant --timeout 60 --progress
out_has '^fully redundant: [0-9]+ chunks, [0-9]+ rebuilt'
ok status --json
json_ok 'd["pool"]["chunks_rebuilt"] > 0 and d["pool"]["degraded_chunks"] == 0'
ok disk list
out_has "^${disk1} +1 +hdd .* failed$"
run disk fail 99
expect_rc 1
err_is 'scribe: disk fail: no disk 99'

ok disk add --node 1 "${work}/a/node1-ssd.disk" 64M --tier ssd
out_has '^added disk [0-9]+ on node 1: .*node1-ssd\.disk \(64 MiB, ssd\)$'
run disk add --node 7 "${work}/a/x.disk" 64M
expect_rc 1
err_is 'scribe: disk add: node 7 is not a member of the cluster'
run disk add --node 1 "${work}/a/x.disk" 64M --tier tape
expect_rc 2
ok disk list --json
json_ok 'len([x for x in d["disks"] if x["node"] == 1 and x["tier"] == "ssd" and x["capacity_bytes"] > 0]) == 1'

# Node 2's disk fails: its copies move to the new disk on node 1.
ok disk fail "${disk2}"
ok wait-redundant --timeout 60 --json
json_ok 'd["fully_redundant"] is True and d["chunks_rebuilt"] > 0'
# Node 3's disk fails too: every chunk is down to one node, redundancy cannot come back.
ok disk fail "${disk3}"
run wait-redundant --timeout 1 --progress
expect_rc 1
err_has 'scribe: wait-redundant: not fully redundant after 1 s (degraded chunks '
grep -qE '^degraded chunks [0-9]+, rebuilding [0-9]+, rebuilt [0-9]+$' <<<"${err}" ||
  fail "no --progress line on stderr"

# ------------------------------------------------------------ a node without the pool
run --addr "127.0.0.1:${port_b}" vsd list
expect_rc 1
err_is 'scribe: vsd list: this node does not run the pool (owner: node 2)'
run --addr "127.0.0.1:${port_b}" status
expect_rc 0
out_has '^cluster: running, owner node 2, epoch 1, 3 node\(s\)$'
out_has '^pool: unavailable: this node does not run the pool \(owner: node 2\)$'
run --addr "127.0.0.1:${port_b}" status --json
expect_rc 0
json_ok 'd["pool"] is None and d["pool_error"] == "this node does not run the pool (owner: node 2)"'
run --addr "127.0.0.1:${port_b}" wait-redundant --timeout 1
expect_rc 1
err_has 'not fully redundant after 1 s (waiting for the pool: this node does not run the pool (owner: node 2))'

echo "PASS"
