#!/bin/sh
# fio random write + crc32c verify, 2 jobs x FIO_SIZE each in disjoint regions
# (offset_increment), libaio, O_DIRECT, iodepth 16. Passes only with zero errors.
#   FIO_LUN=N (default 0)  FIO_OFFSET=16M  FIO_SIZE=16M (per job)  FIO_BS=4k
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

test_fio() {
    _l=${FIO_LUN:-0}
    if ! _sd=$(disk_for_lun "$_l"); then fail "fio: lun $_l" "no disk"; return; fi
    _size=${FIO_SIZE:-16M}
    if _out=$($FIO --name=verify --filename="/dev/$_sd" --ioengine=libaio --direct=1 \
            --iodepth=16 --numjobs=2 --rw=randwrite --bs="${FIO_BS:-4k}" \
            --offset="${FIO_OFFSET:-16M}" --size="$_size" --offset_increment="$_size" \
            --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
            --group_reporting 2>&1); then
        _rc=0
    else
        _rc=$?
    fi
    echo "$_out" | grep -E 'err=|write:|read:|IOPS|verify' | sed 's/^/  fio| /'
    _errs=$(echo "$_out" | grep -o 'err= *[0-9]*' | grep -v 'err= *0$' || true)
    if [ "$_rc" -eq 0 ] && [ -z "$_errs" ] && echo "$_out" | grep -q 'err= *0'; then
        pass "fio: lun $_l randwrite+verify crc32c, 2 jobs x $_size"
    else
        fail "fio: lun $_l randwrite+verify" "fio exited $_rc; $(echo "$_out" | grep -iE 'error|bad|fail|err=' | head -n 5 | tr '\n' ' ')"
    fi
}

[ -n "${GUEST_ALL:-}" ] || { run_tests fio; finish; }
