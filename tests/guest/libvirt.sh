#!/bin/sh
# The guest of tests/guest_e2e_libvirt.rs (a libvirt domain from README.md's
# recipe): our disk is there with our INQUIRY strings and size, an O_DIRECT
# random pattern written to it reads back equal, the kernel log is clean.
#   LV_LUN=N            LUN to use (default 0)
#   LUN<n>_SIZE=BYTES   expected capacity
#   EXPECT_VENDOR / EXPECT_PRODUCT   INQUIRY vendor / product (sysfs, trimmed)
#   LV_OFFSET=BYTES     where the pattern goes (default 1M)
#   LV_LEN=BYTES        pattern length (default 4M)
# Prints "LIBVIRT-PATTERN sha256=H off=O len=N" so the host can check its
# backing file.
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

test_libvirt() {
    _l=${LV_LUN:-0}
    _off=${LV_OFFSET:-1048576}
    _len=${LV_LEN:-4194304}
    if ! _sd=$(disk_for_lun "$_l"); then
        fail "libvirt: lun $_l" "no sd disk at H:0:0:$_l: $(ls /sys/block)"
        return
    fi
    pass "libvirt: lun $_l is /dev/$_sd ($(hctl_of "$_sd"))"
    _vendor=$(sed 's/ *$//' "/sys/block/$_sd/device/vendor")
    _model=$(sed 's/ *$//' "/sys/block/$_sd/device/model")
    [ -z "${EXPECT_VENDOR:-}" ] || expect_eq "libvirt: vendor" "$_vendor" "$EXPECT_VENDOR"
    [ -z "${EXPECT_PRODUCT:-}" ] || expect_eq "libvirt: model" "$_model" "$EXPECT_PRODUCT"
    _want=$(lunvar "$_l" SIZE)
    [ -z "$_want" ] || expect_eq "libvirt: size in bytes" "$($BLOCKDEV --getsize64 "/dev/$_sd")" "$_want"
    info "libvirt: SCSI host(s): $(cat /sys/class/scsi_host/host*/proc_name 2>/dev/null | tr '\n' ' ')"

    $DD if=/dev/urandom of=/tmp/rand bs="$_len" count=1 iflag=fullblock 2>/dev/null
    echo "LIBVIRT-PATTERN sha256=$(sha256sum </tmp/rand | cut -d' ' -f1) off=$_off len=$_len"
    if _out=$($DD if=/tmp/rand of="/dev/$_sd" bs=1M seek="$_off" oflag=direct,seek_bytes conv=notrunc,fsync 2>&1); then
        pass "libvirt: O_DIRECT write of $_len random bytes at $_off"
    else
        fail "libvirt: write" "$(echo "$_out" | head -n 2 | tr '\n' ' ')"
        return
    fi
    # Drop the page cache so the read goes to the device (O_DIRECT anyway).
    echo 3 >/proc/sys/vm/drop_caches
    rm -f /tmp/rb
    if ! _out=$($DD if="/dev/$_sd" of=/tmp/rb bs=1M count=$((_len / 1048576)) skip="$_off" iflag=direct,skip_bytes 2>&1); then
        fail "libvirt: read" "$(echo "$_out" | head -n 2 | tr '\n' ' ')"
        return
    fi
    same_file "libvirt: read back equals the written pattern" /tmp/rb /tmp/rand
    scsi_log_clean "libvirt"
}

[ -n "${GUEST_ALL:-}" ] || { run_tests libvirt; finish; }
