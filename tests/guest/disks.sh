#!/bin/sh
# Disks appear: count, size, logical block size, read-only flag; a write to a
# read-only LUN fails. Uses EXPECT_DISKS, LUNS, LUN<n>_SIZE/_BS/_RO.
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

test_disks() {
    _n=0
    for _d in /sys/block/sd*; do [ -e "$_d" ] && _n=$((_n + 1)); done
    expect_eq "disks: sd disk count" "$_n" "${EXPECT_DISKS:-1}"
    for _d in /sys/block/sd*; do
        [ -e "$_d" ] && info "$(basename "$_d") $(hctl_of "$(basename "$_d")") $(cat "$_d/size") sectors, bs $(cat "$_d/queue/logical_block_size"), ro $(cat "$_d/ro"), $(cat "$_d/device/vendor" "$_d/device/model" 2>/dev/null | tr '\n' ' ')"
    done

    for _l in $LUNS; do
        if ! _sd=$(disk_for_lun "$_l"); then
            fail "disks: lun $_l" "no sd disk with SCSI address *:0:0:$_l"
            continue
        fi
        pass "disks: lun $_l is $_sd"
        _size=$(lunvar "$_l" SIZE)
        _bs=$(lunvar "$_l" BS 512)
        _ro=$(lunvar "$_l" RO 0)
        [ -n "$_size" ] && expect_eq "disks: lun $_l size (getsize64)" "$($BLOCKDEV --getsize64 "/dev/$_sd")" "$_size"
        [ -n "$_size" ] && expect_eq "disks: lun $_l size (sysfs)" "$(($(cat "/sys/block/$_sd/size") * 512))" "$_size"
        expect_eq "disks: lun $_l block size (getss)" "$($BLOCKDEV --getss "/dev/$_sd")" "$_bs"
        expect_eq "disks: lun $_l block size (sysfs)" "$(cat "/sys/block/$_sd/queue/logical_block_size")" "$_bs"
        expect_eq "disks: lun $_l ro flag" "$(cat "/sys/block/$_sd/ro")" "$_ro"
        if [ "$_ro" = 1 ]; then
            dd if=/dev/zero of=/tmp/zero bs="$_bs" count=1 2>/dev/null
            if _out=$($DD if=/tmp/zero of="/dev/$_sd" bs="$_bs" count=1 oflag=direct 2>&1); then
                fail "disks: lun $_l write to read-only disk fails" "the write succeeded"
            else
                pass "disks: lun $_l write to read-only disk fails ($(echo "$_out" | head -n1))"
            fi
        fi
    done
}

[ -n "${GUEST_ALL:-}" ] || { run_tests disks; finish; }
