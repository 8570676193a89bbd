#!/bin/sh
# fstrim on the ext4 file system the ext4 test left on EXT4_LUN (default 1):
# mount, delete its 4 MiB file "big", sync, `fstrim -v`: it succeeds and
# reports trimmed bytes (> 4 MiB: the first fstrim after a mount trims all
# free space); umount, e2fsck -fn clean. Prints "TRIM-DONE lun=N bytes=B" so
# the host (tests/guest_e2e.rs) can check that the backing file's allocation
# shrank. With TRIM_MKFS=1 it makes the file system (and "big") first.
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

test_trim() {
    _l=${EXT4_LUN:-1}
    _p="trim: lun $_l"
    if ! _sd=$(disk_for_lun "$_l"); then fail "$_p" "no disk"; return; fi
    mkdir -p /mnt/t
    if [ "${TRIM_MKFS:-0}" = 1 ]; then
        # shellcheck disable=SC2086
        check "$_p mkfs.ext4" "$MKFS_EXT4" -F -q "/dev/$_sd" ${EXT4_SIZE-16M}
        mount -t ext4 "/dev/$_sd" /mnt/t && dd if=/dev/urandom of=/mnt/t/big bs=64k count=64 2>/dev/null && umount /mnt/t
    fi
    check "$_p mount" mount -t ext4 "/dev/$_sd" /mnt/t || return
    if [ -f /mnt/t/big ]; then
        pass "$_p the 4 MiB file is there"
    else
        fail "$_p the 4 MiB file is there" "$(find /mnt/t -maxdepth 1 | tr '\n' ' ')"
    fi
    check "$_p delete it" rm -f /mnt/t/big
    sync
    if _out=$($FSTRIM -v /mnt/t 2>&1); then
        _bytes=$(echo "$_out" | sed -n 's/.*(\([0-9]*\) bytes) trimmed.*/\1/p')
        info "$_p fstrim: $_out"
        if [ "${_bytes:-0}" -ge 4194304 ]; then
            pass "$_p fstrim -v trimmed $_bytes bytes"
        else
            fail "$_p fstrim -v" "trimmed '${_bytes}' bytes, expected >= 4194304: $_out"
        fi
    else
        fail "$_p fstrim -v" "$_out"
        _bytes=0
    fi
    check "$_p umount" umount /mnt/t
    check "$_p e2fsck -fn clean" "$E2FSCK" -fn "/dev/$_sd"
    echo "TRIM-DONE lun=$_l bytes=$_bytes"
}

[ -n "${GUEST_ALL:-}" ] || { run_tests trim; finish; }
