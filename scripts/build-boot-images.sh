#!/usr/bin/env bash
# Build the two bootable disk images of the boot-from-volume test
# (tests/guest_e2e_boot.rs, docs/boot-from-volume.md), without a VM, loop
# devices or mounts:
#
#   build/boot/bios.img  32 MiB, MBR: GRUB i386-pc boot.img in the MBR,
#                        core.img in the gap before partition 1 (sector 1..),
#                        partition 1 (ext2, label VUSBOOT, made by mke2fs -d)
#                        holding /boot/vmlinuz, /boot/initrd.gz and
#                        /boot/grub/grub.cfg.
#   build/boot/efi.img   48 MiB, GPT: partition 1 an EFI system partition
#                        (FAT, made by mformat/mcopy) holding GRUB EFI at the
#                        fallback path \EFI\BOOT\BOOTX64.EFI (no NVRAM entry
#                        needed), \EFI\BOOT\grub.cfg, \vmlinuz, \initrd.gz.
#
# The kernel is the test guest's (build/guest/vmlinuz, scripts/build-guest.sh).
# The initrd is tiny: busybox-static and an /init that prints
# "VUS-BOOT-OK <mode>" on the serial console (<mode> from vus_boot= on the
# kernel command line: "bios" or "efi") and powers off. GRUB's menu entry
# prints "VUS-BOOT-GRUB <mode>" first, so a log shows how far a boot got.
# grub.cfg: serial terminal, timeout 0, console=ttyS0 panic=-1.
#
# Needs (scripts/install-deps.sh): grub-pc-bin, grub-efi-amd64-bin (and
# grub-common's grub-mkimage), mtools, fdisk (sfdisk), e2fsprogs,
# busybox-static, cpio, gzip.
#
# Exit status: 0; 3 when a tool or file is missing (scripts/install-deps.sh,
# scripts/build-guest.sh); 1 on any other failure.
#
# Cached: nothing is done when build/boot/stamp matches the sha256 of this
# script and of build/guest/vmlinuz.
# Usage: scripts/build-boot-images.sh [--force]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GUEST_DIR=${GUEST_DIR:-$ROOT/build/guest}
OUT=$ROOT/build/boot
STAMP="$OUT/stamp"
GRUB_LIB=/usr/lib/grub

die() { echo "build-boot-images: ERROR: $*" >&2; exit 1; }
log() { echo "build-boot-images: $*"; }
# Exit status 3: a tool or file from scripts/install-deps.sh is missing (the
# test skips loudly on it outside CI); 1: any other failure.
missing() { echo "build-boot-images: MISSING: $*" >&2; exit 3; }

force=0
case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    *) die "usage: $0 [--force]" ;;
esac

VMLINUZ="$GUEST_DIR/vmlinuz"
[[ -f "$VMLINUZ" ]] || missing "$VMLINUZ missing: run scripts/install-deps.sh && scripts/build-guest.sh"
HASH=$(cat "${BASH_SOURCE[0]}" "$VMLINUZ" | sha256sum | cut -d' ' -f1)
if (( !force )) && [[ -f "$STAMP" && -f "$OUT/bios.img" && -f "$OUT/efi.img" ]] \
    && [[ "$(cat "$STAMP")" == "$HASH" ]]; then
    log "up to date ($OUT)"
    exit 0
fi

for tool in grub-mkimage sfdisk mformat mmd mcopy mke2fs busybox cpio gzip dd truncate; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x "/sbin/$tool" || -x "/usr/sbin/$tool" ]] \
        || missing "'$tool' not found: run scripts/install-deps.sh first"
done
for f in i386-pc/boot.img i386-pc/diskboot.img i386-pc/biosdisk.mod x86_64-efi/fat.mod; do
    [[ -f "$GRUB_LIB/$f" ]] || missing "$GRUB_LIB/$f missing (grub-pc-bin, grub-efi-amd64-bin): run scripts/install-deps.sh"
done
BUSYBOX=$(command -v busybox)
! ldd "$BUSYBOX" >/dev/null 2>&1 || missing "$BUSYBOX is not static: install busybox-static"
PATH=$PATH:/sbin:/usr/sbin

mkdir -p "$OUT"
rm -f "$STAMP"
work=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s.%N)

# ---------------------------------------------------------------- initrd
mkdir -p "$work/initrd"/{bin,dev,proc,sys}
cp "$BUSYBOX" "$work/initrd/bin/busybox"
cat >"$work/initrd/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec 0</dev/console 1>/dev/console 2>&1
mode=unknown
for w in $(/bin/busybox cat /proc/cmdline); do
    case "$w" in vus_boot=*) mode=${w#vus_boot=} ;; esac
done
echo "boot-test: kernel $(/bin/busybox uname -r), up $(/bin/busybox cut -d' ' -f1 /proc/uptime) s"
echo "VUS-BOOT-OK $mode"
/bin/busybox poweroff -f
INIT
chmod 755 "$work/initrd/init"
(cd "$work/initrd" && find . -print0 | LC_ALL=C sort -z | cpio --quiet -o -0 -H newc -R 0:0) \
    | gzip -9 >"$work/initrd.gz"

# grub.cfg for MODE, kernel and initrd at DIR on GRUB's root.
grub_cfg() {
    local mode=$1 dir=$2
    cat <<CFG
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
set default=0
menuentry "vhost-user-scsi boot test ($mode)" {
    echo "VUS-BOOT-GRUB $mode: loading $dir/vmlinuz"
    linux $dir/vmlinuz console=ttyS0 panic=-1 quiet vus_boot=$mode
    initrd $dir/initrd.gz
}
CFG
}

# Modules built into both GRUB images (nothing is loaded from disk).
GRUB_MODS=(normal linux boot echo serial terminal test configfile)

# ---------------------------------------------------------------- BIOS (MBR)
log "BIOS image: GRUB i386-pc, MBR, ext2"
BIOS_MIB=32
mkdir -p "$work/bios/boot/grub"
cp "$VMLINUZ" "$work/bios/boot/vmlinuz"
cp "$work/initrd.gz" "$work/bios/boot/initrd.gz"
grub_cfg bios /boot >"$work/bios/boot/grub/grub.cfg"
# core.img = diskboot.img (its blocklist: sectors 2.. of the disk, the length
# filled in by grub-mkimage) + the compressed kernel and modules. It goes to
# sector 1, where boot.img's default kernel sector points.
grub-mkimage -O i386-pc -d "$GRUB_LIB/i386-pc" -o "$work/core.img" \
    -p '(hd0,msdos1)/boot/grub' biosdisk part_msdos ext2 "${GRUB_MODS[@]}"
core_sectors=$(( ($(stat -c %s "$work/core.img") + 511) / 512 ))
(( core_sectors < 2047 )) || die "core.img is $core_sectors sectors, larger than the gap before partition 1"
truncate -s "${BIOS_MIB}M" "$work/bios.img"
echo 'label: dos
label-id: 0x56555342
start=2048, type=83, bootable' | sfdisk -q "$work/bios.img"
truncate -s "$((BIOS_MIB - 1))M" "$work/bios-part.img"
mke2fs -q -F -t ext2 -L VUSBOOT -U 56555342-0000-4000-8000-000000000001 -d "$work/bios" "$work/bios-part.img"
dd if="$work/bios-part.img" of="$work/bios.img" bs=1M seek=1 conv=notrunc,sparse status=none
# boot.img's code only (440 bytes): the partition table stays.
dd if="$GRUB_LIB/i386-pc/boot.img" of="$work/bios.img" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$work/bios.img" bs=512 seek=1 conv=notrunc status=none
log "BIOS image: core.img $core_sectors sectors"

# ---------------------------------------------------------------- UEFI (GPT)
log "UEFI image: GRUB x86_64-efi, GPT, EFI system partition (FAT)"
EFI_MIB=48
ESP_SECTORS=$(( (EFI_MIB - 2) * 2048 ))   # 1 MiB before it, backup GPT after it
grub-mkimage -O x86_64-efi -d "$GRUB_LIB/x86_64-efi" -o "$work/BOOTX64.EFI" \
    -p /EFI/BOOT part_gpt part_msdos fat "${GRUB_MODS[@]}"
grub_cfg efi "" >"$work/grub-efi.cfg"
truncate -s "${EFI_MIB}M" "$work/efi.img"
echo "label: gpt
label-id: 56555342-0000-4000-8000-000000000002
start=2048, size=$ESP_SECTORS, type=U, name=\"EFI system partition\"" | sfdisk -q "$work/efi.img"
truncate -s "$((ESP_SECTORS * 512))" "$work/esp.img"
# -h/-s: any geometry whose product divides the size; FAT16 for 46 MiB.
mformat -i "$work/esp.img" -T "$ESP_SECTORS" -h 64 -s 32 -v VUSEFI -N 56555342 ::
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$work/esp.img" "$work/grub-efi.cfg" ::/EFI/BOOT/grub.cfg
mcopy -i "$work/esp.img" "$VMLINUZ" ::/vmlinuz
mcopy -i "$work/esp.img" "$work/initrd.gz" ::/initrd.gz
dd if="$work/esp.img" of="$work/efi.img" bs=1M seek=1 conv=notrunc,sparse status=none

mv "$work/bios.img" "$OUT/bios.img"
mv "$work/efi.img" "$OUT/efi.img"
echo "$HASH" >"$STAMP"
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
log "done in ${elapsed}s: $OUT/bios.img, $OUT/efi.img (initrd $(stat -c %s "$work/initrd.gz") bytes)"
