#!/usr/bin/env bash
# Build the test guest: build/guest/vmlinuz + build/guest/initramfs.cpio.gz.
#
# Kernel: Debian's linux-image-amd64 (real image package taken from its Depends),
# unpacked with dpkg -x. Initramfs: busybox-static, the virtio/scsi/sd/sg/ext4
# modules (plus their modules.dep dependencies), fio, sg3-utils, e2fsprogs and a
# few util-linux/coreutils tools, each with the shared libraries ldd lists.
#
# The /init script mounts proc/sys/dev/tmp, loads the modules, waits for
# $EXPECT_DISKS (from /test.env, default 1) sd disks, runs /test.sh, prints
# "GUEST-EXIT-CODE=<rc>" and powers off. /test.sh and /test.env are added per
# run by scripts/run-guest.sh (an extra cpio archive appended to the initrd).
#
# Cached: nothing is done when build/guest/stamp holds the sha256 of this script.
# Usage: scripts/build-guest.sh [--force]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/build/guest"
STAMP="$OUT/stamp"
SELF_HASH=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)

die() { echo "build-guest: ERROR: $*" >&2; exit 1; }
log() { echo "build-guest: $*"; }

force=0
case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    *) die "usage: $0 [--force]" ;;
esac

if (( !force )) && [[ -f "$STAMP" && -f "$OUT/vmlinuz" && -f "$OUT/initramfs.cpio.gz" ]] \
    && [[ "$(cat "$STAMP")" == "$SELF_HASH" ]]; then
    log "up to date ($OUT)"
    exit 0
fi

for tool in busybox cpio gzip depmod dpkg-deb apt-get fio sg_inq mke2fs blockdev; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x "/sbin/$tool" || -x "/usr/sbin/$tool" ]] \
        || die "'$tool' not found: run scripts/install-deps.sh first"
done
BUSYBOX=$(command -v busybox)
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
file_is_static "$BUSYBOX" || die "$BUSYBOX is not static: install busybox-static"

mkdir -p "$OUT/cache"
rm -f "$STAMP"

# ---------------------------------------------------------------- kernel
log "downloading kernel packages"
KDL="$OUT/cache/kernel"
rm -rf "$KDL"
mkdir -p "$KDL"
(
    cd "$KDL"
    # apt's sandbox user cannot write here; the warning about that is harmless.
    apt-get download -q linux-image-amd64 2>&1 | grep -v 'unsandboxed' || true
    debs=(linux-image-amd64_*.deb)
    meta=${debs[0]}
    [[ -f "$meta" ]] || die "apt-get download linux-image-amd64 failed (run apt-get update?)"
    real=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1)
    [[ -n "$real" ]] || die "cannot find the real image package in Depends of $meta"
    log "kernel package: $real"
    apt-get download -q "$real" 2>&1 | grep -v 'unsandboxed' || true
    debs=("${real}"_*.deb)
    deb=${debs[0]}
    [[ -f "$deb" ]] || die "apt-get download $real failed"
    dpkg -x "$deb" unpacked
) || exit 1
kdirs=("$KDL"/unpacked/lib/modules/*)
[[ -d "${kdirs[0]}" ]] || die "no lib/modules/<version> in the kernel package"
KVER=$(basename "${kdirs[0]}")
VMLINUZ="$KDL/unpacked/boot/vmlinuz-$KVER"
[[ -f "$VMLINUZ" ]] || die "no boot/vmlinuz-$KVER in the kernel package"
log "kernel version $KVER"
depmod -b "$KDL/unpacked" "$KVER"
KMOD="$KDL/unpacked/lib/modules/$KVER"

# ---------------------------------------------------------------- staging
STAGE="$OUT/cache/rootfs"
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,lib64,lib/x86_64-linux-gnu,usr/lib/x86_64-linux-gnu,etc,proc,sys,dev,tmp,mnt,root,run}
cp "$BUSYBOX" "$STAGE/bin/busybox"

# copy_bin SRC [DEST_DIR]: copy an executable and the libraries ldd lists.
declare -A COPIED_LIBS=()
copy_bin() {
    local src=$1 dest=${2:-} lib
    src=$(readlink -f "$src")
    [[ -n "$dest" ]] || dest=$(dirname "$1")
    mkdir -p "$STAGE$dest"
    cp -L "$src" "$STAGE$dest/$(basename "$1")"
    while read -r lib; do
        [[ -n "$lib" && -z "${COPIED_LIBS[$lib]:-}" ]] || continue
        COPIED_LIBS[$lib]=1
        mkdir -p "$STAGE$(dirname "$lib")"
        cp -L "$lib" "$STAGE$lib"
    done < <(ldd "$src" 2>/dev/null | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }')
}
cp -L /lib64/ld-linux-x86-64.so.2 "$STAGE/lib64/ld-linux-x86-64.so.2"

# Userland (real clients).
n_sg=0
for f in /usr/bin/sg_*; do
    if ldd "$f" >/dev/null 2>&1; then copy_bin "$f" /usr/bin; n_sg=$((n_sg + 1)); fi
done
log "sg3-utils: $n_sg binaries"
for f in /usr/bin/fio /usr/sbin/mke2fs /usr/sbin/mkfs.ext4 /usr/sbin/e2fsck /usr/sbin/fsck.ext4 \
         /usr/sbin/tune2fs /usr/sbin/dumpe2fs /usr/sbin/debugfs \
         /usr/sbin/blockdev /usr/sbin/fstrim /usr/sbin/blkdiscard /usr/bin/lsblk /usr/sbin/blkid; do
    if [[ -e "$f" ]]; then copy_bin "$f"; else log "optional $f missing, skipped"; fi
done
# coreutils dd: well-known O_DIRECT behaviour (aligned buffers); shadows busybox dd via PATH.
copy_bin /usr/bin/dd /usr/bin
[[ -e /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$STAGE/etc/"
ln -s /proc/mounts "$STAGE/etc/mtab"
echo "root:x:0:0:root:/root:/bin/sh" >"$STAGE/etc/passwd"
echo "root:x:0:" >"$STAGE/etc/group"

# ---------------------------------------------------------------- modules
# Wanted modules in a load order that works with busybox insmod; dependencies
# from modules.dep are inserted before each module. Built-in or missing ones
# are skipped.
WANTED=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
        scsi_common scsi_mod crct10dif_common crc-t10dif crc64 crc64-rocksoft t10-pi
        sd_mod virtio_scsi sg
        crc16 mbcache jbd2 crc32c_generic libcrc32c ext4)
norm() { local n=${1##*/}; n=${n%%.ko*}; echo "${n//-/_}"; }
declare -A MODPATH=() MODDEPS=() BUILTIN=() ADDED=()
while IFS= read -r line; do
    path=${line%%:*}
    MODPATH[$(norm "$path")]=$path
    MODDEPS[$(norm "$path")]=${line#*:}
done <"$KMOD/modules.dep"
while IFS= read -r path; do BUILTIN[$(norm "$path")]=1; done <"$KMOD/modules.builtin"
ORDER=()
add_module() {
    local name deps
    name=$(norm "$1")
    [[ -z "${ADDED[$name]:-}" ]] || return 0
    if [[ -n "${BUILTIN[$name]:-}" ]]; then log "module $name is built in"; ADDED[$name]=1; return 0; fi
    if [[ -z "${MODPATH[$name]:-}" ]]; then log "module $name not found, skipped"; ADDED[$name]=1; return 0; fi
    ADDED[$name]=1
    # modules.dep lists dependencies so that the last one must be loaded first.
    read -r -a deps <<<"${MODDEPS[$name]}"
    local i
    for (( i=${#deps[@]}-1; i>=0; i-- )); do add_module "${deps[$i]}"; done
    ORDER+=("${MODPATH[$name]}")
}
for m in "${WANTED[@]}"; do add_module "$m"; done
MDIR="$STAGE/lib/modules/$KVER"
mkdir -p "$MDIR"
: >"$STAGE/etc/modules.load"
for p in "${ORDER[@]}"; do
    mkdir -p "$MDIR/$(dirname "$p")"
    cp "$KMOD/$p" "$MDIR/$p"
    echo "/lib/modules/$KVER/$p" >>"$STAGE/etc/modules.load"
done
cp "$KMOD/modules.builtin" "$KMOD/modules.builtin.modinfo" "$KMOD/modules.order" "$MDIR/"
depmod -b "$STAGE" "$KVER"
log "modules (${#ORDER[@]}): $(for p in "${ORDER[@]}"; do norm "$p"; done | tr '\n' ' ')"

# ---------------------------------------------------------------- /init
cat >"$STAGE/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /dev/shm
exec 0</dev/console 1>/dev/console 2>&1

EXPECT_DISKS=1
WAIT_DISKS_SECONDS=20
# shellcheck disable=SC1091
[ -f /test.env ] && . /test.env

echo "guest: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpu(s), $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
while read -r mod; do
    out=$(insmod "$mod" 2>&1) || case "$out" in
        *"File exists"*) ;;
        *) echo "guest: insmod $mod: $out" ;;
    esac
done </etc/modules.load

i=0
count_disks() { n=0; for d in /sys/block/sd*; do [ -e "$d" ] && n=$((n + 1)); done; echo "$n"; }
while [ "$(count_disks)" -lt "$EXPECT_DISKS" ] && [ "$i" -lt $((WAIT_DISKS_SECONDS * 10)) ]; do
    sleep 0.1
    i=$((i + 1))
done
echo "guest: $(count_disks) sd disk(s) after $((i / 10)).$((i % 10)) s (expected $EXPECT_DISKS): $(cd /sys/block && echo sd*)"

if [ -f /test.sh ]; then
    cd /tmp || true
    sh /test.sh
    rc=$?
else
    echo "guest: /test.sh missing"
    rc=127
fi
sync
echo "GUEST-EXIT-CODE=$rc"
poweroff -f
INIT
chmod 755 "$STAGE/init"

# ---------------------------------------------------------------- pack
log "packing initramfs"
cp "$VMLINUZ" "$OUT/vmlinuz.tmp"
(cd "$STAGE" && find . -print0 | LC_ALL=C sort -z | cpio --quiet -o -0 -H newc -R 0:0) | gzip -1 >"$OUT/initramfs.cpio.gz.tmp"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
echo "$KVER" >"$OUT/kernel-version"
echo "$SELF_HASH" >"$STAMP"
log "done: $OUT/vmlinuz ($KVER), $OUT/initramfs.cpio.gz ($(du -h "$OUT/initramfs.cpio.gz" | cut -f1), $(du -sh "$STAGE" | cut -f1) unpacked)"
