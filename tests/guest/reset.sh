#!/bin/sh
# LOGICAL UNIT RESET with I/O in flight on RESET_LUN (default 0): fio
# randrw (libaio, O_DIRECT, iodepth 16, 4k, crc32c verify, also every 64
# writes during the run) for RESET_RUNTIME seconds (default 4) over
# RESET_SIZE (8M) from RESET_OFFSET (48M) runs in the background; after 1.5 s `sg_reset --device --no-esc` sends the TMF
# (virtio-scsi LOGICAL UNIT RESET). The reset must succeed, fio must finish
# with no errors and its verify pass, and the LUN answers TEST UNIT READY
# afterwards (the reset's unit attention is consumed by whoever comes first).
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

test_reset() {
    _l=${RESET_LUN:-0}
    _p="reset: lun $_l"
    lun_devs "$_l" || return
    $FIO --name=reset --filename="/dev/$_sd" --ioengine=libaio --direct=1 \
        --iodepth=16 --rw=randrw --bs=4k --offset="${RESET_OFFSET:-48M}" \
        --size="${RESET_SIZE:-8M}" --time_based --runtime="${RESET_RUNTIME:-4}" \
        --verify=crc32c --verify_backlog=64 --do_verify=1 --verify_fatal=1 \
        --verify_state_save=0 \
        >/tmp/reset.fio 2>&1 &
    _fpid=$!
    sleep 1.5
    if kill -0 "$_fpid" 2>/dev/null; then
        pass "$_p fio running when the reset is sent"
    else
        fail "$_p fio running when the reset is sent" "fio already exited: $(tail -n 5 /tmp/reset.fio | tr '\n' ' ')"
    fi
    _r0=$(cut -d' ' -f1 /proc/uptime)
    check "$_p sg_reset --device --no-esc $_sg (LOGICAL UNIT RESET)" sg_reset --device --no-esc "$_sg"
    info "$_p reset took $(awk -v a="$_r0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.2f", b - a }') s"
    if wait "$_fpid"; then _rc=0; else _rc=$?; fi
    _out=$(cat /tmp/reset.fio)
    echo "$_out" | grep -E 'err=|write:|read:|verify' | sed 's/^/  fio| /'
    _errs=$(echo "$_out" | grep -o 'err= *[0-9]*' | grep -v 'err= *0$' || true)
    if [ "$_rc" -eq 0 ] && [ -z "$_errs" ] && echo "$_out" | grep -q 'err= *0'; then
        pass "$_p fio randrw+verify across the reset: no errors"
    else
        fail "$_p fio randrw+verify across the reset" "fio exited $_rc; $(echo "$_out" | grep -iE 'error|bad|fail|err=' | head -n 5 | tr '\n' ' ')"
    fi
    dmesg | grep -iE 'reset|abort' | tail -n 5 | sed 's/^/  dmesg| /'
    _out=$(sg_turs "$_sg" 2>&1) || info "$_p first TEST UNIT READY after the reset: $(echo "$_out" | tr '\n' ' ')"
    check "$_p TEST UNIT READY after the reset" sg_turs "$_sg"
}

[ -n "${GUEST_ALL:-}" ] || { run_tests reset; finish; }
