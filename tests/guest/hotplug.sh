#!/bin/sh
# LUN hotplug driven by the host: the guest announces each step with a
# console marker and waits (polling sysfs, no rescan typed here) for the
# disk to change by itself through the virtio-scsi event queue.
#   HP_ROLE=a|b           which guest this is (tests/guest_e2e.rs guest_e2e_hotplug)
#   HP_WAIT=60            seconds to wait for each change
#   HP_BASE_SERIAL=TEXT   serial of LUN 0 (present from boot)
#   HP_NEW_SERIAL=TEXT    serial of the LUN the host adds
#   HP_NEW_LUN=N          its LUN number
#   HP_NEW_SIZE=BYTES     its size when added
# Role a (lun_add, I/O on the new LUN, lun_resize, lun_remove):
#   HP_RESIZED=BYTES      its size after the host's lun_resize
#   HP_DD_NEW / HP_DD_GROWN / HP_DD_BASE  DD_WRITES (see dd.sh) for the new
#                         LUN after the add, after the resize, and for LUN 0
#                         after the removal
#   FIO_OFFSET / FIO_SIZE fio on the new LUN (see fio.sh)
# Role b (I/O on its own LUN until the host adds a LUN as the stop signal):
#   HP_DD_BASE            DD_WRITES on LUN 0, written first, re-read at the end
#   FIO_OFFSET / FIO_SIZE fio rounds on LUN 0
#   HP_MAX_ROUNDS=200     fio rounds at most
# Markers for the host: "HOTPLUG-WAIT <step>" (the host acts on it),
# "HOTPLUG-SEEN <step> sdX after S s", "HOTPLUG-B-IO start|stop rounds=N".
# Uses test_dd and test_fio: with all.sh, put "dd fio" before "hotplug" in TESTS.
if [ -z "${GUEST_ALL:-}" ]; then
    HP_STANDALONE=1
    # shellcheck source=lib.sh
    . /guest/lib.sh
    GUEST_ALL=1
    # shellcheck source=dd.sh
    . /guest/dd.sh
    # shellcheck source=fio.sh
    . /guest/fio.sh
fi

# serial_of sdX: the unit serial number (VPD page 80h) the kernel read.
serial_of() {
    [ -r "/sys/block/$1/device/vpd_pg80" ] || return 1
    tail -c +5 "/sys/block/$1/device/vpd_pg80" | tr -d '\000 '
}

# disk_by_serial TEXT: the sdX with that serial.
disk_by_serial() {
    for _bd in /sys/block/sd*; do
        [ -e "$_bd/device" ] || continue
        _bn=$(basename "$_bd")
        if [ "$(serial_of "$_bn" 2>/dev/null)" = "$1" ]; then
            echo "$_bn"
            return 0
        fi
    done
    return 1
}

uptime_s() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }'; }

# wait_for STEP CMD...: poll CMD every 0.1 s for HP_WAIT seconds; prints
# "HOTPLUG-SEEN STEP <CMD output> after S s" and returns 0 when it succeeds.
wait_for() {
    _step=$1
    shift
    _w0=$(uptime_s)
    _n=0
    _max=$((${HP_WAIT:-60} * 10))
    while [ "$_n" -lt "$_max" ]; do
        if _seen=$("$@" 2>/dev/null); then
            echo "HOTPLUG-SEEN $_step $_seen after $(since "$_w0") s"
            return 0
        fi
        sleep 0.1
        _n=$((_n + 1))
    done
    return 1
}

# Conditions for wait_for.
new_disk_ready() {
    _d=$(disk_by_serial "$HP_NEW_SERIAL") || return 1
    [ "$(cat "/sys/block/$_d/size")" -gt 0 ] && [ -b "/dev/$_d" ] || return 1
    echo "$_d"
}
size_is() { [ "$(($(cat "/sys/block/$1/size") * 512))" = "$2" ] && echo "$1"; }
gone() { [ ! -e "/sys/block/$1" ] && echo "$1"; }

disk_count() {
    _c=0
    for _bd in /sys/block/sd*; do [ -e "$_bd" ] && _c=$((_c + 1)); done
    echo "$_c"
}

# check_new_disk sdX SIZE: address, size seen by the block layer and sysfs.
check_new_disk() {
    _hctl=$(hctl_of "$1")
    case "$_hctl" in
        *:0:0:"$HP_NEW_LUN") pass "hotplug: $1 is lun $HP_NEW_LUN ($_hctl)" ;;
        *) fail "hotplug: $1 address" "$_hctl, expected *:0:0:$HP_NEW_LUN" ;;
    esac
    expect_eq "hotplug: $1 size (getsize64)" "$($BLOCKDEV --getsize64 "/dev/$1")" "$2"
    expect_eq "hotplug: $1 size (sysfs)" "$(($(cat "/sys/block/$1/size") * 512))" "$2"
}

# kernel_log_clean [REGEX]: the SCSI lines of the kernel log, for the
# record; FAIL on signs of a disturbed disk (errors, aborts, resets,
# timeouts, failed commands), except the new LUN's power-on unit attention
# and lines matching REGEX.
kernel_log_clean() {
    dmesg | grep -E 'scsi|sd[a-z]|virtio' | grep -v ACPI >/tmp/scsi.log
    sed 's/^/  dmesg| /' /tmp/scsi.log
    _bad=$(grep -iE 'error|abort|reset|timed out|timeout|fail' /tmp/scsi.log \
        | grep -v ":0:0:$HP_NEW_LUN: Power-on or device reset occurred" \
        | grep -vE "${1:-^$}" || true)
    if [ -z "$_bad" ]; then
        pass "hotplug: no SCSI errors, aborts, resets or timeouts in the kernel log"
    else
        fail "hotplug: kernel log" "$(echo "$_bad" | head -n 5 | tr '\n' ' ')"
    fi
}

test_hotplug_a() {
    if ! _base=$(disk_by_serial "$HP_BASE_SERIAL"); then
        fail "hotplug: lun 0" "no disk with serial $HP_BASE_SERIAL"
        return
    fi
    pass "hotplug: lun 0 is $_base (serial $HP_BASE_SERIAL)"
    expect_eq "hotplug: disks before the add" "$(disk_count)" 1

    # 1. lun_add: the disk appears by itself.
    echo "HOTPLUG-WAIT add"
    if ! _out=$(wait_for add new_disk_ready); then
        fail "hotplug: add" "no disk with serial $HP_NEW_SERIAL after ${HP_WAIT:-60} s; disks: $(cd /sys/block && echo sd*)"
        dmesg | tail -n 20
        return
    fi
    echo "$_out"
    _new=$(echo "$_out" | cut -d' ' -f3)
    pass "hotplug: lun $HP_NEW_LUN appeared as $_new without a rescan"
    check_new_disk "$_new" "$HP_NEW_SIZE"
    expect_eq "hotplug: disks after the add" "$(disk_count)" 2
    DD_WRITES=$HP_DD_NEW
    DD_VERIFY=
    test_dd
    FIO_LUN=$HP_NEW_LUN
    test_fio

    # 2. lun_resize: the new capacity shows up by itself.
    echo "HOTPLUG-WAIT resize"
    if ! _out=$(wait_for resize size_is "$_new" "$HP_RESIZED"); then
        fail "hotplug: resize" "/sys/block/$_new/size is $(cat "/sys/block/$_new/size") sectors after ${HP_WAIT:-60} s, expected $((HP_RESIZED / 512))"
        dmesg | tail -n 20
        return
    fi
    echo "$_out"
    pass "hotplug: lun $HP_NEW_LUN grew to $HP_RESIZED bytes without a rescan"
    check_new_disk "$_new" "$HP_RESIZED"
    DD_WRITES=$HP_DD_GROWN
    test_dd
    # The data written before the resize is still there.
    DD_WRITES=$HP_DD_NEW
    DD_MODE=verify
    test_dd
    DD_MODE="write"

    # 3. lun_remove: the disk goes away by itself; LUN 0 keeps working.
    echo "HOTPLUG-WAIT remove"
    if ! _out=$(wait_for remove gone "$_new"); then
        fail "hotplug: remove" "/sys/block/$_new still there after ${HP_WAIT:-60} s"
        dmesg | tail -n 20
        return
    fi
    echo "$_out"
    pass "hotplug: $_new went away without a rescan"
    expect_eq "hotplug: disks after the remove" "$(disk_count)" 1
    expect_eq "hotplug: lun 0 still $_base" "$(disk_by_serial "$HP_BASE_SERIAL")" "$_base"
    DD_WRITES=$HP_DD_BASE
    test_dd
    echo "HOTPLUG-DONE"
    # Removal is a surprise removal (as with QEMU's own devices): the LUN
    # is gone when the kernel's SYNCHRONIZE CACHE reaches it (the daemon
    # synced the backing file before announcing the removal).
    kernel_log_clean "\\[$_new\\] Synchronize Cache\\(10\\) failed"
}

test_hotplug_b() {
    if ! _base=$(disk_by_serial "$HP_BASE_SERIAL"); then
        fail "hotplug: lun 0" "no disk with serial $HP_BASE_SERIAL"
        return
    fi
    pass "hotplug: lun 0 is $_base (serial $HP_BASE_SERIAL)"
    DD_WRITES=$HP_DD_BASE
    DD_VERIFY=
    echo "HOTPLUG-B-IO start"
    test_dd
    FIO_LUN=0
    _r=0
    _t0=$(uptime_s)
    # fio rounds until the host's stop signal: a LUN added to this controller.
    while ! _new=$(new_disk_ready); do
        if [ "$_r" -ge "${HP_MAX_ROUNDS:-200}" ]; then
            fail "hotplug: b stop signal" "no disk with serial $HP_NEW_SERIAL after $_r fio rounds"
            return
        fi
        test_fio
        _r=$((_r + 1))
    done
    echo "HOTPLUG-B-IO stop rounds=$_r after $(since "$_t0") s"
    if [ "$_r" -ge 1 ]; then
        pass "hotplug: $_r fio rounds on lun 0 while the host changed the other controller's LUNs"
    else
        fail "hotplug: b fio rounds" "the stop signal came before the first fio round"
    fi
    DD_MODE=verify
    test_dd
    expect_eq "hotplug: lun 0 still $_base" "$(disk_by_serial "$HP_BASE_SERIAL")" "$_base"
    check_new_disk "$_new" "$HP_NEW_SIZE"
    expect_eq "hotplug: disks at the end" "$(disk_count)" 2
    kernel_log_clean
}

test_hotplug() { "test_hotplug_${HP_ROLE:-a}"; }

[ -z "${HP_STANDALONE:-}" ] || { run_tests hotplug; finish; }
