#!/usr/bin/env bash
# Runs pytest for a py_pytest target (tools/pybind.bzl) inside Bazel's test runfiles.
# Usage: pytest_runner.sh [--ext <runfiles path of a .so>]... -- <test files and pytest args>
set -euo pipefail

runfiles="${TEST_SRCDIR:?must run under bazel test}/${TEST_WORKSPACE:?}"

pythonpath=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ext)
      [[ -e "$runfiles/$2" ]] || { echo "pytest_runner: missing extension $2" >&2; exit 1; }
      pythonpath="${pythonpath:+$pythonpath:}$runfiles/$(dirname "$2")"
      shift 2
      ;;
    --)
      shift
      break
      ;;
    *)
      echo "pytest_runner: unexpected argument $1" >&2
      exit 2
      ;;
  esac
done

cd "$runfiles"
export PYTHONPATH="$pythonpath${PYTHONPATH:+:$PYTHONPATH}"
# The runfiles tree is read-only input: no bytecode or pytest cache written into it.
export PYTHONDONTWRITEBYTECODE=1
junit=()
if [[ -n "${XML_OUTPUT_FILE:-}" ]]; then
  junit=(--junitxml="$XML_OUTPUT_FILE")
fi
exec /usr/bin/python3 -m pytest -q -p no:cacheprovider "${junit[@]}" "$@"
