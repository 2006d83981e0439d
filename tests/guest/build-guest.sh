#!/usr/bin/env bash
# Builds the HC3 test guest from this machine's Debian kernel and busybox-static, offline:
#   OUTDIR/vmlinuz          the host's /boot/vmlinuz-<ver>
#   OUTDIR/initrd.cpio.gz   busybox, the virtio block modules of <ver>, and ./init
# The guest's /init (tests/guest/init, next to this script) runs a disk test on /dev/vda
# chosen by the kernel command line (hc3.mode=write|verify|writeverify hc3.epoch=N
# hc3.tag=STRING), prints one "HC3-RESULT ..." line on the console and powers off.
#
#   tests/guest/build-guest.sh OUTDIR
#
# Idempotent: OUTDIR/stamp records the inputs (kernel version, busybox, init, this
# script); when they have not changed nothing is rebuilt. The kernel version is the
# newest <ver> that has both /boot/vmlinuz-<ver> and /lib/modules/<ver>, or
# $HC3_GUEST_KERNEL_VERSION. Needs linux-image-amd64, busybox-static, cpio and gzip.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
init_src="$here/init"
# Dependency order: each module needs only those before it ("unknown symbol" otherwise).
readonly MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk)

die() {
  echo "build-guest.sh: error: $*" >&2
  exit 1
}

[[ $# -eq 1 && "$1" != -* ]] || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
out="$1"

kver="${HC3_GUEST_KERNEL_VERSION:-}"
if [[ -z "$kver" ]]; then
  for k in $(ls /boot | sed -n 's/^vmlinuz-//p' | sort -V); do
    [[ -d "/lib/modules/$k" ]] && kver="$k"
  done
fi
[[ -n "$kver" ]] || die "no /boot/vmlinuz-<ver> with a matching /lib/modules/<ver> (install linux-image-amd64)"
kernel="/boot/vmlinuz-$kver"
[[ -r "$kernel" ]] || die "$kernel is missing or unreadable"
busybox=/bin/busybox
[[ -x "$busybox" ]] || die "$busybox is missing (install busybox-static)"
# The guest has no shared libraries: Debian's plain busybox package (dynamic) will not do.
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked (install busybox-static)"
fi
[[ -r "$init_src" ]] || die "$init_src is missing"
command -v cpio >/dev/null || die "cpio not found"

stamp="kernel=$kver $(stat -c '%s %Y' "$kernel")
busybox=$(sha256sum < "$busybox" | cut -c1-64)
init=$(sha256sum < "$init_src" | cut -c1-64)
script=$(sha256sum < "${BASH_SOURCE[0]}" | cut -c1-64)"

mkdir -p "$out"
out="$(cd "$out" && pwd)"
exec 9>"$out/.lock"
flock 9
if [[ -f "$out/stamp" && -f "$out/vmlinuz" && -f "$out/initrd.cpio.gz" ]] \
    && [[ "$(cat "$out/stamp")" == "$stamp" ]]; then
  echo "build-guest.sh: $out is up to date (kernel $kver)" >&2
  exit 0
fi

work="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [[ "$applet" == busybox ]] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 "$init_src" "$root/init"

# Module files may be compressed depending on the kernel's packaging; the guest's
# insmod gets plain .ko files.
for m in "${MODULES[@]}"; do
  src="$(find "/lib/modules/$kver/kernel" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \
           -o -name "$m.ko.gz" | head -n 1)"
  [[ -n "$src" ]] || die "module $m not found under /lib/modules/$kver (built in? then drop it from MODULES)"
  case "$src" in
    *.ko) cp "$src" "$root/lib/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$src" > "$root/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$src" > "$root/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$src" > "$root/lib/modules/$m.ko" ;;
  esac
done

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) \
  | gzip -9n > "$work/initrd.cpio.gz"
cp "$kernel" "$work/vmlinuz"
mv -f "$work/vmlinuz" "$out/vmlinuz"
mv -f "$work/initrd.cpio.gz" "$out/initrd.cpio.gz"
chmod 0644 "$out/vmlinuz" "$out/initrd.cpio.gz"
echo "$stamp" > "$out/stamp"
echo "build-guest.sh: built $out/vmlinuz and $out/initrd.cpio.gz (kernel $kver," \
  "$(stat -c %s "$out/initrd.cpio.gz") byte initramfs)" >&2
