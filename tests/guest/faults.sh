#!/bin/sh
# Backing-store faults as the guest sees them (tests/guest_e2e_faults.rs sets
# them up on the host):
#
#   FAULT_LUN (0)     a file on a fault-injecting FUSE filesystem:
#     READ_BAD        its reads fail with EIO (the host filled READ_BAD-10 ..
#                     READ_BAD+10 with `pattern FAULT_SEED FAULT_LUN OFFSET`)
#     WRITE_BAD       its writes fail with EIO
#     SLOW_LATE       the first request touching it is answered SLOW_DELAY_1
#                     seconds late (more than GUEST_TIMEOUT)
#     SLOW_RESET      the same with SLOW_DELAY_2
#   NOSPC_LUN (1)     a sparse image larger than the tmpfs it lives on
#   OTHER_LUN (2)     a plain image
#
# Checks: one 8 KiB dd (O_DIRECT) over READ_BAD fails with the kernel logging a medium error
# (unrecovered read error) for sector READ_BAD and no other; the sectors
# around it read back the host's data; a dd over WRITE_BAD fails with a
# medium error (write error; one 8 KiB write from WRITE_BAD-4) for sector
# WRITE_BAD only, and the sectors
# before it were written; the other LUN works; writing 1 MiB chunks to
# NOSPC_LUN ends in a write error with the thin-provisioning sense (space
# allocation failed), the chunks written before read back intact, and after
# blkdiscard of the first chunk (the daemon punches a hole: space freed) the
# failed chunk writes and reads back; with the SCSI timeout lowered to
# GUEST_TIMEOUT s, a read of SLOW_LATE waits for its late answer and
# succeeds, other reads of the disk go on meanwhile, the kernel logs no
# error (Linux's virtio-scsi never times out a command: its eh_timed_out
# re-arms the timer, so the guest never sends ABORT TASK; the host test
# tests/faults.rs covers ABORT TASK); a LOGICAL UNIT RESET (sg_reset, through
# the SCSI error handler) while a read of SLOW_RESET is stuck is answered
# once that read is done, the read succeeds, TEST UNIT READY works.
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

# sectors_logged sdX: the sectors of the kernel's "... error, dev sdX,
# sector N" lines since the last `dmesg -c` ("critical medium error" for a
# read, "I/O error" for a write), one per line.
sectors_logged() {
    dmesg | sed -n "s/.* error, dev $1, sector \([0-9]*\).*/\1/p" | sort -u
}

# medium_error_logged PREFIX DISK SECTOR SENSE SHOW: after a failed
# transfer, the kernel logged a medium error for SECTOR of DISK only, with
# the sense text SENSE (the dmesg lines matching the regex SHOW are shown).
medium_error_logged() {
    dmesg | grep -iE "$5" | sed 's/^/  dmesg| /'
    expect_eq "$1 kernel logs a medium error for sector $3 only" \
        "$(sectors_logged "$2" | tr '\n' ' ')" "$3 "
    if dmesg | grep -qi "$4"; then
        pass "$1 sense: $4"
    else
        fail "$1 sense: $4" "not in the kernel log"
    fi
}

test_faults_medium() {
    _l=${FAULT_LUN:-0}
    _p="faults: lun $_l"
    lun_devs "$_l" || return
    _r=$READ_BAD
    _w=$WRITE_BAD
    dmesg -c >/dev/null
    # One 16-sector read across the bad sector fails...
    if $DD if="/dev/$_sd" of=/tmp/bad.bin iflag=direct,skip_bytes bs=8192 count=1 \
        skip=$(((_r - 10) * 512)) 2>/dev/null; then
        fail "$_p read over sector $_r" "dd succeeded"
    else
        pass "$_p read over sector $_r fails (EIO)"
    fi
    medium_error_logged "$_p" "$_sd" "$_r" 'Unrecovered read error' 'medium|unrecovered|sector'
    # ...the sectors on both sides read fine, with the host's data.
    read_blocks "$_sd" $((_r - 10)) 10 512 >/tmp/before.bin
    pattern "$FAULT_SEED" "$_l" $(((_r - 10) * 512)) 5120 >/tmp/want.bin
    same_file "$_p the 10 sectors before $_r read back" /tmp/before.bin /tmp/want.bin
    read_blocks "$_sd" $((_r + 1)) 10 512 >/tmp/after.bin
    pattern "$FAULT_SEED" "$_l" $(((_r + 1) * 512)) 5120 >/tmp/want.bin
    same_file "$_p the 10 sectors after $_r read back" /tmp/after.bin /tmp/want.bin

    dmesg -c >/dev/null
    pattern 7 "$_l" $(((_w - 4) * 512)) 8192 >/tmp/w.bin
    if $DD if=/tmp/w.bin of="/dev/$_sd" oflag=direct,seek_bytes conv=notrunc bs=8192 \
        count=1 seek=$(((_w - 4) * 512)) 2>/dev/null; then
        fail "$_p write over sector $_w" "dd succeeded"
    else
        pass "$_p write over sector $_w fails (EIO)"
    fi
    medium_error_logged "$_p" "$_sd" "$_w" 'Write error' 'medium|write error|sector'
    read_blocks "$_sd" $((_w - 4)) 4 512 >/tmp/got.bin
    head -c 2048 /tmp/w.bin >/tmp/want.bin
    same_file "$_p the 4 sectors before $_w were written" /tmp/got.bin /tmp/want.bin
    check "$_p sector $_w still reads" read_blocks "$_sd" "$_w" 1 512

    _o=${OTHER_LUN:-2}
    if _osd=$(disk_for_lun "$_o"); then
        pattern 8 "$_o" 0 65536 >/tmp/o.bin
        write_blocks "$_osd" 0 512 </tmp/o.bin
        read_blocks "$_osd" 0 128 512 >/tmp/got.bin
        same_file "$_p other lun $_o: write + read back" /tmp/got.bin /tmp/o.bin
    else
        fail "$_p other lun $_o" "no disk"
    fi
}

test_faults_nospc() {
    _l=${NOSPC_LUN:-1}
    _p="faults: lun $_l (full tmpfs)"
    lun_devs "$_l" || return
    dmesg -c >/dev/null
    $DD if=/dev/urandom of=/tmp/chunk bs=1M count=1 2>/dev/null
    _n=$(($($BLOCKDEV --getsize64 "/dev/$_sd") / 1048576))
    _i=0
    _failed=""
    while [ "$_i" -lt "$_n" ]; do
        if ! $DD if=/tmp/chunk of="/dev/$_sd" oflag=direct bs=1M seek="$_i" count=1 conv=notrunc 2>/tmp/dd.err; then
            _failed=$_i
            info "$_p chunk $_i: $(tr '\n' ' ' </tmp/dd.err)"
            break
        fi
        _i=$((_i + 1))
    done
    if [ -n "$_failed" ] && [ "$_failed" -ge 1 ]; then
        pass "$_p the disk fills up: chunk $_failed (MiB) fails after $_failed written"
    else
        fail "$_p the disk fills up" "failed chunk '${_failed}' of $_n"
        return
    fi
    dmesg | grep -iE 'space|protect|sector' | sed 's/^/  dmesg| /'
    if dmesg | grep -qi 'critical space allocation error'; then
        pass "$_p the kernel sees a space allocation error"
    else
        fail "$_p the kernel sees a space allocation error" "no 'critical space allocation error' line"
    fi
    if dmesg | grep -qi 'Space allocation failed write protect'; then
        pass "$_p sense: Space allocation failed write protect"
    else
        fail "$_p sense: Space allocation failed write protect" "not in the kernel log"
    fi
    _j=0
    _bad=""
    while [ "$_j" -lt "$_failed" ]; do
        $DD if="/dev/$_sd" iflag=direct bs=1M skip="$_j" count=1 of=/tmp/got.bin 2>/dev/null
        cmp -s /tmp/got.bin /tmp/chunk || _bad="$_bad $_j"
        _j=$((_j + 1))
    done
    expect_eq "$_p the $_failed chunks written before are intact" "${_bad:-none}" "none"
    check "$_p blkdiscard of chunk 0 frees space" /usr/sbin/blkdiscard -o 0 -l 1048576 "/dev/$_sd"
    check "$_p the failed chunk writes after that" \
        $DD if=/tmp/chunk of="/dev/$_sd" oflag=direct bs=1M seek="$_failed" count=1 conv=notrunc
    $DD if="/dev/$_sd" iflag=direct bs=1M skip="$_failed" count=1 of=/tmp/got.bin 2>/dev/null
    same_file "$_p ... and reads back" /tmp/got.bin /tmp/chunk
}

# elapsed T0: seconds since T0 (from /proc/uptime).
elapsed() { awk -v a="$1" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }'; }

test_faults_slow() {
    _l=${FAULT_LUN:-0}
    _p="faults: lun $_l (slow store)"
    lun_devs "$_l" || return
    _tmo=/sys/block/$_sd/device/timeout
    _old=$(cat "$_tmo")
    echo "${GUEST_TIMEOUT:-3}" >"$_tmo"
    info "$_p SCSI timeout $(cat "$_tmo") s (was $_old)"
    dmesg -c >/dev/null
    _t0=$(cut -d' ' -f1 /proc/uptime)
    read_blocks "$_sd" "$SLOW_LATE" 1 512 >/tmp/got.bin &
    _dpid=$!
    sleep 1
    # Other I/O to the same disk is not held up by the late one.
    _t1=$(cut -d' ' -f1 /proc/uptime)
    check "$_p other sectors read while sector $SLOW_LATE is late" read_blocks "$_sd" 100 64 512
    _e=$(elapsed "$_t1")
    if awk -v e="$_e" -v t="${GUEST_TIMEOUT:-3}" 'BEGIN { exit !(e < t) }'; then
        pass "$_p ... in $_e s"
    else
        fail "$_p other I/O while one read is late" "took $_e s"
    fi
    if wait "$_dpid"; then
        pass "$_p read of sector $SLOW_LATE (answered late) succeeds after $(elapsed "$_t0") s"
    else
        fail "$_p read of sector $SLOW_LATE" "dd failed after $(elapsed "$_t0") s"
    fi
    # Linux's virtio-scsi driver never times a command out (its
    # eh_timed_out re-arms the timer): a late answer is only late.
    dmesg | grep -iE 'abort|reset|timing|timed|error|sd[a-z]' | sed 's/^/  dmesg| /'
    if dmesg | grep -qiE 'abort|reset|timed out|error'; then
        fail "$_p late answer: no error in the kernel log" "$(dmesg | grep -iE 'abort|reset|timed out|error' | head -n 3 | tr '\n' ' ')"
    else
        pass "$_p late answer: no error in the kernel log"
    fi

    dmesg -c >/dev/null
    _t0=$(cut -d' ' -f1 /proc/uptime)
    read_blocks "$_sd" "$SLOW_RESET" 1 512 >/tmp/got.bin &
    _dpid=$!
    sleep 1
    check "$_p LOGICAL UNIT RESET while a read is stuck (sg_reset --device)" \
        sg_reset --device --no-esc "$_sg"
    info "$_p reset answered after $(elapsed "$_t0") s"
    if wait "$_dpid"; then
        pass "$_p the stuck read completes after $(elapsed "$_t0") s"
    else
        fail "$_p the stuck read" "dd failed after $(elapsed "$_t0") s"
    fi
    dmesg | grep -iE 'abort|reset|timing|timed|sd[a-z]' | sed 's/^/  dmesg| /'
    if dmesg | grep -qi 'device reset'; then
        pass "$_p the kernel logged the device reset"
    else
        fail "$_p the kernel logged the device reset" "no 'device reset' in the kernel log"
    fi
    echo "$_old" >"$_tmo"
    _out=$(sg_turs "$_sg" 2>&1) || info "$_p first TEST UNIT READY after the reset: $(echo "$_out" | tr '\n' ' ')"
    check "$_p TEST UNIT READY after the reset" sg_turs "$_sg"
    _t0=$(cut -d' ' -f1 /proc/uptime)
    check "$_p 1 MiB reads fine afterwards" read_blocks "$_sd" 0 2048 512
    info "$_p (took $(elapsed "$_t0") s)"
}

[ -n "${GUEST_ALL:-}" ] || { run_tests faults_medium faults_nospc faults_slow; finish; }
