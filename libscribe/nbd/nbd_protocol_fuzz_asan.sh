#!/usr/bin/env bash
# //libscribe/nbd:nbd_protocol_fuzz_asan (tagged manual): scripts/fuzz-nbd for a fixed
# number of executions, libFuzzer under ASan + UBSan (clang, outside Bazel's gcc
# toolchain). Fails on any finding; the log shows "executions: N" and the result.
#   bazel test //libscribe/nbd:nbd_protocol_fuzz_asan --test_output=all
#   bazel test //libscribe/nbd:nbd_protocol_fuzz_asan --test_arg=20000000   # more runs
# Crash inputs land in the test's undeclared outputs (bazel-testlogs/.../outputs).
set -euo pipefail
export FUZZ_DIR="${TEST_UNDECLARED_OUTPUTS_DIR:-$(mktemp -d)}/fuzz-nbd"
# Bazel runs a test in its runfiles tree, which mirrors the workspace.
exec scripts/fuzz-nbd --runs "${1:-5000000}"
