# Shared helpers for scripts/*; source it, do not run it.

# The repository root (scripts/..).
HC3_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Overridable so setup can be exercised against another list.
HC3_PACKAGES_FILE="${HC3_PACKAGES_FILE:-$HC3_ROOT/scripts/packages.txt}"

# Prints the package list, one name a line (comments and blank lines dropped).
hc3_packages() {
  sed -e 's/#.*//' -e 's/[[:space:]]//g' "$HC3_PACKAGES_FILE" | grep -v '^$'
}

# Prints the packages of the list that are not installed, one a line.
hc3_missing_packages() {
  local package status
  while read -r package; do
    status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null || true)"
    # "ii " is installed; anything else (absent, rc = config only, half-installed) is not.
    if [[ "$status" != ii* ]]; then
      echo "$package"
    fi
  done < <(hc3_packages)
}

hc3_log() {
  echo "$(basename "$0"): $*" >&2
}

hc3_die() {
  hc3_log "error: $*"
  exit 1
}
