#!/bin/bash
# Runs the pool tour example on real files in the test's scratch directory and checks
# that it succeeds and that the diff of its two snapshots is exactly the one 4 KiB block
# it overwrote.
set -euo pipefail

binary="$1"
work_dir="${TEST_TMPDIR:?TEST_TMPDIR is not set}/pool_tour"
mkdir -p "${work_dir}"

status=0
output="$("${binary}" "${work_dir}" 2>&1)" || status=$?
echo "${output}"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

[[ "${status}" -eq 0 ]] || fail "pool_tour exited with status ${status}"
grep -qx "pool tour: OK" <<<"${output}" || fail "missing 'pool tour: OK'"
grep -qx "diff s1..s2: 1 extent(s)" <<<"${output}" || fail "diff is not exactly one extent"
[[ "$(grep -c '^  extent ' <<<"${output}")" -eq 1 ]] || fail "expected one extent line"
grep -qx "  extent offset=0 length=4096" <<<"${output}" || fail "the extent is not 4096 bytes at 0"
if compgen -G "${work_dir}/*.disk" >/dev/null; then
  fail "pool_tour left its disk files behind"
fi
echo "PASS"
