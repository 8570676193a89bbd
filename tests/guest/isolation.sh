#!/bin/sh
# Isolation between two controllers of one daemon, driven by the host
# (tests/guest_e2e_isolation.rs): one guest (B) does verified I/O on its
# controller while the host starts and kills (SIGKILL) 50 QEMUs on the other
# controller (A).
#   ISO_ROLE=a           a guest on the churned controller A: prints
#                        "ISO-A-READY sdX", starts fio randrw (libaio,
#                        O_DIRECT, iodepth 16, 2 jobs, no verify: the host
#                        kills this QEMU) and prints "ISO-A-IO" once it runs;
#                        then waits for fio, i.e. for the host's SIGKILL.
#   ISO_ROLE=b           the guest that must not notice: fio randwrite +
#                        crc32c verify rounds (libaio, O_DIRECT, iodepth 16,
#                        2 jobs x FIO_SIZE from FIO_OFFSET, time_based
#                        ISO_ROUND_SECS each, verify_backlog so that reads
#                        verify all along, then the final verify) until the
#                        host types "churn-done" on the console (at most
#                        ISO_MAX_ROUNDS rounds). Each round prints
#                        "ISO-B-ROUND N rc=RC" and its fio JSON between
#                        "ISO-FIO-JSON-BEGIN N" and "ISO-FIO-JSON-END N" (the
#                        host reads latencies from it). At the end the
#                        kernel log has no SCSI error, abort, reset or
#                        timeout (the power-on unit attention is tolerated).
# Markers for the host: "ISO-B-IO start", "ISO-B-IO stop rounds=N after S s".
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

iso_uptime() { cut -d' ' -f1 /proc/uptime; }

test_isolation_a() {
    lun_devs 0 || return
    echo "ISO-A-READY $_sd"
    $FIO --name=churn --filename="/dev/$_sd" --ioengine=libaio --direct=1 \
        --iodepth=16 --numjobs=2 --rw=randrw --bs=4k --offset="${FIO_OFFSET:-8M}" \
        --size="${FIO_SIZE:-8M}" --offset_increment="${FIO_SIZE:-8M}" \
        --time_based --runtime=600 --group_reporting >/tmp/churn.fio 2>&1 &
    _fpid=$!
    sleep 1
    if kill -0 "$_fpid" 2>/dev/null; then
        echo "ISO-A-IO"
    else
        fail "isolation a: fio" "exited at once: $(tail -n 5 /tmp/churn.fio | tr '\n' ' ')"
    fi
    wait "$_fpid"
}

test_isolation_b() {
    _p="isolation b: lun 0"
    lun_devs 0 || return
    info "$_p is $_sd / $_sg ($(hctl_of "$_sd"))"
    # The host's stop signal, read in the background so that fio runs
    # without pauses. An asynchronous command's stdin is /dev/null: read
    # the console through a copy of it.
    rm -f /tmp/iso-stop
    exec 3<&0
    (
        while read -r _line <&3; do
            case "$_line" in *churn-done*) : >/tmp/iso-stop; break ;; esac
        done
    ) &
    _rpid=$!
    _size=${FIO_SIZE:-8M}
    _rt=${ISO_ROUND_SECS:-10}
    _r=0
    _bad=0
    _t0=$(iso_uptime)
    echo "ISO-B-IO start"
    while [ ! -e /tmp/iso-stop ]; do
        if [ "$_r" -ge "${ISO_MAX_ROUNDS:-60}" ]; then
            fail "isolation b: stop signal" "no \"churn-done\" from the host after $_r rounds"
            break
        fi
        _r=$((_r + 1))
        $FIO --name=iso-b --filename="/dev/$_sd" --ioengine=libaio --direct=1 \
            --iodepth=16 --numjobs=2 --rw=randwrite --bs=4k \
            --offset="${FIO_OFFSET:-8M}" --size="$_size" --offset_increment="$_size" \
            --time_based --runtime="$_rt" --verify=crc32c --verify_backlog=64 \
            --do_verify=1 --verify_fatal=1 --verify_state_save=0 --group_reporting \
            --output-format=json --output=/tmp/round.json >/tmp/round.err 2>&1
        _rc=$?
        echo "ISO-B-ROUND $_r rc=$_rc"
        echo "ISO-FIO-JSON-BEGIN $_r"
        cat /tmp/round.json
        echo "ISO-FIO-JSON-END $_r"
        if [ "$_rc" -ne 0 ] || ! grep -q '"error" : 0' /tmp/round.json; then
            _bad=$((_bad + 1))
            fail "$_p fio round $_r" "fio exited $_rc; $(grep -iE 'error|bad|fail|verify' /tmp/round.err /tmp/round.json | head -n 5 | tr '\n' ' ')"
        fi
    done
    kill "$_rpid" 2>/dev/null
    exec 3<&-
    echo "ISO-B-IO stop rounds=$_r after $(awk -v a="$_t0" -v b="$(iso_uptime)" 'BEGIN { printf "%.1f", b - a }') s"
    if [ "$_r" -ge 1 ] && [ "$_bad" -eq 0 ]; then
        pass "$_p $_r fio randwrite + crc32c verify rounds (2 jobs x $_size, ${_rt} s each) while the other controller's QEMUs were killed"
    fi
    scsi_log_clean "$_p"
}

test_isolation() { "test_isolation_${ISO_ROLE:-b}"; }

[ -n "${GUEST_ALL:-}" ] || { run_tests isolation; finish; }
