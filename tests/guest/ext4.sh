#!/bin/sh
# ext4: mkfs, mount, write files, sync, umount, mount again, check, umount,
# e2fsck -fn clean.
#   EXT4_LUN=N (default 1)  EXT4_SIZE=16M (file system size: the rest of the
#   disk is left alone so other tests can use it; empty = whole disk)
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

test_ext4() {
    _l=${EXT4_LUN:-1}
    if ! _sd=$(disk_for_lun "$_l"); then fail "ext4: lun $_l" "no disk"; return; fi
    _dev=/dev/$_sd
    # shellcheck disable=SC2086
    check "ext4: lun $_l mkfs.ext4" "$MKFS_EXT4" -F -q "$_dev" ${EXT4_SIZE-16M}
    mkdir -p /mnt/t
    check "ext4: mount" mount -t ext4 "$_dev" /mnt/t || return
    mkdir -p /mnt/t/dir/sub
    i=0
    while [ $i -lt 20 ]; do echo "file $i of the ext4 test" >"/mnt/t/dir/sub/f$i"; i=$((i + 1)); done
    dd if=/dev/urandom of=/mnt/t/big bs=64k count=64 2>/dev/null
    (cd /mnt/t && find . -type f | sort | xargs sha256sum) >/tmp/ext4.sums
    check "ext4: sync" sync
    check "ext4: umount" umount /mnt/t
    check "ext4: mount again" mount -t ext4 "$_dev" /mnt/t
    check "ext4: contents after remount" sh -c 'cd /mnt/t && sha256sum -c -s /tmp/ext4.sums'
    check "ext4: umount again" umount /mnt/t
    check "ext4: e2fsck -fn clean" "$E2FSCK" -fn "$_dev"
}

[ -n "${GUEST_ALL:-}" ] || { run_tests ext4; finish; }
