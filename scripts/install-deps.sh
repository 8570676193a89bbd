#!/usr/bin/env bash
# Install everything the guest test harness needs (idempotent, fast when done).
#
#   QEMU >= 8.2 (qemu-system-x86 from bookworm-backports), busybox-static, cpio,
#   kmod, fio, sg3-utils, e2fsprogs, util-linux, coreutils, gzip, python3.
#   libvirt 9 (libvirtd, virtlogd, virsh, the QEMU driver; it runs the QEMU
#   above) and its libvirt-qemu user (tests/guest_e2e_libvirt.rs).
#
# Usage: scripts/install-deps.sh
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

die() { echo "install-deps: ERROR: $*" >&2; exit 1; }
log() { echo "install-deps: $*"; }

QEMU_MIN_MAJOR=8
QEMU_MIN_MINOR=2

# Packages from the main suite (package name -> a file that proves it is installed).
declare -A MAIN_PKGS=(
    [busybox-static]=/bin/busybox
    [cpio]=/usr/bin/cpio
    [kmod]=/usr/sbin/depmod
    [fio]=/usr/bin/fio
    [sg3-utils]=/usr/bin/sg_inq
    [e2fsprogs]=/usr/sbin/mkfs.ext4
    [util-linux]=/usr/sbin/blockdev
    [coreutils]=/usr/bin/dd
    [gzip]=/usr/bin/gzip
    [python3]=/usr/bin/python3
    [python3-pytest]=/usr/lib/python3/dist-packages/pytest/__init__.py  # python/tests (/usr/bin/python3)
)

# Boot-from-volume images (scripts/build-boot-images.sh, tests/guest_e2e_boot.rs):
# GRUB for BIOS and UEFI (grub-common's grub-mkimage comes with them), OVMF,
# mtools (FAT without mounting), fdisk (sfdisk: MBR and GPT on image files).
MAIN_PKGS+=(
    [grub-pc-bin]=/usr/lib/grub/i386-pc/boot.img
    [grub-efi-amd64-bin]=/usr/lib/grub/x86_64-efi/fat.mod
    [ovmf]=/usr/share/OVMF/OVMF_CODE_4M.fd
    [mtools]=/usr/bin/mcopy
    [fdisk]=/usr/sbin/sfdisk
)

# libvirt (README "### libvirt", docs/libvirt.md, tests/guest_e2e_libvirt.rs):
# libvirtd and virtlogd, the QEMU driver, virsh. Not libvirt-daemon-system:
# it pulls systemd in; the user it would make is made below.
MAIN_PKGS+=(
    [libvirt-daemon]=/usr/sbin/virtlogd
    [libvirt-daemon-driver-qemu]=/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so
    [libvirt-clients]=/usr/bin/virsh
)

qemu_ok() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
    local ver major minor
    ver=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    [[ -n "$ver" ]] || return 1
    read -r major minor <<<"$ver"
    (( major > QEMU_MIN_MAJOR || (major == QEMU_MIN_MAJOR && minor >= QEMU_MIN_MINOR) ))
}

# The user and groups libvirt runs QEMU with (user libvirt-qemu in group kvm
# and libvirt-qemu), as libvirt-daemon-system's postinst makes them; libvirtd
# refuses to start its QEMU driver without them.
libvirt_users_ok() {
    getent group kvm >/dev/null && getent group libvirt-qemu >/dev/null \
        && [[ " $(id -nG libvirt-qemu 2>/dev/null) " == *" kvm "* ]] \
        && [[ " $(id -nG libvirt-qemu 2>/dev/null) " == *" libvirt-qemu "* ]]
}
if ! libvirt_users_ok; then
    [[ $(id -u) -eq 0 ]] || die "user libvirt-qemu (groups kvm, libvirt-qemu) missing; run as root"
    getent group kvm >/dev/null || groupadd --system kvm
    getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
    if getent passwd libvirt-qemu >/dev/null; then
        usermod --gid kvm --append --groups libvirt-qemu libvirt-qemu
    else
        useradd --system --gid kvm --groups libvirt-qemu --home-dir /var/lib/libvirt \
            --no-create-home --shell /usr/sbin/nologin --comment "Libvirt Qemu" libvirt-qemu
    fi
    libvirt_users_ok || die "could not create user libvirt-qemu (groups kvm, libvirt-qemu)"
    log "created user libvirt-qemu ($(id libvirt-qemu))"
fi

missing=()
for pkg in "${!MAIN_PKGS[@]}"; do
    if [[ ! -e "${MAIN_PKGS[$pkg]}" ]] || ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
need_qemu=0
qemu_ok || need_qemu=1

if (( ${#missing[@]} == 0 && need_qemu == 0 )); then
    log "all dependencies present ($(qemu-system-x86_64 --version | head -n1))"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "missing packages (${missing[*]:-} ${need_qemu:+qemu}); run as root"

BACKPORTS=/etc/apt/sources.list.d/bookworm-backports.sources
if (( need_qemu )) && [[ ! -e "$BACKPORTS" ]] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # Reuse the mirror URI of the existing main Debian entry.
    uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [[ -n "$uri" ]] || uri=http://deb.debian.org/debian
    log "adding bookworm-backports ($uri) as $BACKPORTS"
    cat >"$BACKPORTS" <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

log "apt-get update"
apt-get update -q || die "apt-get update failed"

if (( ${#missing[@]} )); then
    log "installing: ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}" || die "apt-get install ${missing[*]} failed"
fi
if (( need_qemu )); then
    log "installing qemu-system-x86 from bookworm-backports"
    apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86 \
        || die "apt-get install -t bookworm-backports qemu-system-x86 failed"
fi

qemu_ok || die "qemu-system-x86_64 >= ${QEMU_MIN_MAJOR}.${QEMU_MIN_MINOR} not available after install (got: $(qemu-system-x86_64 --version 2>&1 | head -n1))"
for pkg in "${!MAIN_PKGS[@]}"; do
    [[ -e "${MAIN_PKGS[$pkg]}" ]] || die "$pkg installed but ${MAIN_PKGS[$pkg]} is missing"
done
log "done ($(qemu-system-x86_64 --version | head -n1))"
