#!/bin/sh
# MODE SELECT of the caching page on WCE_LUN (default 0): WCE=1 at first;
# sg_wr_mode (MODE SELECT(10), mask on byte 2 bit 2) turns it off: sg_modes
# shows WCE=0, the changeable-values page shows only WCE changeable, and
# after a rescan the kernel's cache_type is "write through"; sg_wr_mode -6
# (MODE SELECT(6)) turns it back on ("write back" after a rescan). Then the
# kernel's own MODE SELECT: writing "write through" / "write back" to
# cache_type changes WCE as sg_modes sees it.
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

# wce_of SG: WCE bit of the current caching page (empty on error).
wce_of() {
    _b2=$(sg_modes --page=0x08 "$1" 2>/dev/null | awk '/>> Caching/ { on = 1; next } on && /^ 00 / { print $4; exit }')
    [ -n "$_b2" ] && echo $(((0x$_b2 >> 2) & 1))
}

test_wce() {
    _l=${WCE_LUN:-0}
    _p="wce: lun $_l"
    lun_devs "$_l" || return
    _ct=/sys/class/scsi_disk/$(hctl_of "$_sd")/cache_type
    expect_eq "$_p sg_modes caching page WCE at start" "$(wce_of "$_sg")" 1
    _chg=$(sg_modes --control=1 --page=0x08 "$_sg" 2>&1 | awk '/>> Caching/ { on = 1; next } on && /^ 00 / { print $3, $4, $5, $6; exit }')
    expect_eq "$_p changeable caching page: only WCE (byte 2 = 04)" "$_chg" "12 04 00 00"

    check "$_p sg_wr_mode WCE=0 (MODE SELECT(10))" sg_wr_mode --page=8 --contents=08,12,00 --mask=0,0,4 "$_sg"
    expect_eq "$_p sg_modes WCE after MODE SELECT" "$(wce_of "$_sg")" 0
    echo 1 >"/sys/block/$_sd/device/rescan"
    expect_eq "$_p kernel cache_type after rescan" "$(cat "$_ct")" "write through"
    # O_DIRECT I/O still works with the write cache off (writes are FUA).
    pattern 31 "$_l" 0 4096 >/tmp/wce.pat
    write_blocks "$_sd" $((${WCE_LBA:-22528})) 512 </tmp/wce.pat
    read_blocks "$_sd" $((${WCE_LBA:-22528})) 8 512 >/tmp/wce.got
    same_file "$_p write and read back with WCE=0" /tmp/wce.got /tmp/wce.pat

    check "$_p sg_wr_mode -6 WCE=1 (MODE SELECT(6))" sg_wr_mode --six --page=8 --contents=08,12,04 --mask=0,0,4 "$_sg"
    expect_eq "$_p sg_modes WCE after MODE SELECT(6)" "$(wce_of "$_sg")" 1
    echo 1 >"/sys/block/$_sd/device/rescan"
    expect_eq "$_p kernel cache_type after rescan" "$(cat "$_ct")" "write back"

    # The kernel's own MODE SELECT through sysfs.
    if echo "write through" >"$_ct" 2>/tmp/wce.err; then
        pass "$_p echo 'write through' > cache_type"
    else
        fail "$_p echo 'write through' > cache_type" "$(cat /tmp/wce.err)"
    fi
    expect_eq "$_p sg_modes WCE after the kernel's MODE SELECT" "$(wce_of "$_sg")" 0
    if echo "write back" >"$_ct" 2>/tmp/wce.err; then
        pass "$_p echo 'write back' > cache_type"
    else
        fail "$_p echo 'write back' > cache_type" "$(cat /tmp/wce.err)"
    fi
    expect_eq "$_p sg_modes WCE restored" "$(wce_of "$_sg")" 1
    expect_eq "$_p kernel cache_type restored" "$(cat "$_ct")" "write back"
}

[ -n "${GUEST_ALL:-}" ] || { run_tests wce; finish; }
