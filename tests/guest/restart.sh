#!/bin/sh
# Guest I/O across daemon restarts (tests/guest_e2e_restart.rs): rounds of
# fio randwrite + crc32c verify (2 jobs in disjoint regions, libaio, O_DIRECT,
# iodepth 16, 4k: both request queues busy) on one LUN for RESTART_SECS
# seconds, while the host kills and restarts the daemon. Passes only when
# every round exits 0 with no errors and its verify pass, the longest I/O
# latency of any round (fio's lat_ns max, submission to completion) stays
# under RESTART_MAX_STALL_MS, and the kernel log shows no SCSI error, abort,
# reset, timeout, I/O error or broken virtqueue (scsi_log_clean in lib.sh;
# the power-on unit attention of a restarted daemon is allowed).
#   RESTART_LUN=0              the LUN
#   RESTART_SECS=30            start new rounds for this long (a round in
#                              progress finishes)
#   RESTART_OFFSET=8M          first job's region; the second follows it
#   RESTART_SIZE=8M            per job
#   RESTART_SEED=1             fio --randseed of round 1 (round N: SEED+N-1,
#                              so a lost write leaves data that fails verify)
#   RESTART_MAX_STALL_MS=5000  the longest I/O latency allowed
#   RESTART_ROUND_TIMEOUT=120  a round still running after this long is
#                              killed; a round stuck in the kernel (I/O that
#                              never completes) is reported as hung 10 s
#                              later and the test ends without it
# Markers for the host: "RESTART-IO start sdX" (fio is about to start: the
# host begins restarting the daemon), "RESTART-IO round=N rc=R secs=S
# write_max_ms=W read_max_ms=R" after each round, "RESTART-IO hung ...",
# "RESTART-IO done rounds=N max_lat_ms=M" (M: the longest latency, ms).
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

# fio_max_lat_ms SECTION FILE: the largest "lat_ns" max of the SECTION
# ("read" or "write") objects of fio's JSON output, in ms (0 when absent).
fio_max_lat_ms() {
    awk -v want="$1" '
        /^ *"(read|write|trim|sync)" : \{/ { sec = $1; gsub(/"/, "", sec) }
        /^ *"lat_ns" : \{/ { inlat = 1; next }
        inlat && /"max" :/ { v = $3; sub(/,$/, "", v); if (sec == want && v + 0 > m) m = v + 0; inlat = 0 }
        END { printf "%.1f", m / 1e6 }' "$2"
}

# restart_rounds SD: the fio rounds (run in the background by test_restart).
# One line per round in /tmp/restart.rounds: "N RC SECS WRITE_MS READ_MS
# IOS_OK ERRORS"; stops after RESTART_SECS or at the first failed round.
restart_rounds() {
    _t0=$(uptime_s)
    _n=0
    while [ "$(awk -v a="$_t0" -v b="$(uptime_s)" 'BEGIN { printf "%d", b - a }')" -lt "$_secs" ]; do
        _n=$((_n + 1))
        _r0=$(uptime_s)
        # --thread: one process, so that the timeout's KILL ends all of it.
        if timeout -s KILL "$_round_timeout" $FIO --name=restart \
                --filename="/dev/$1" --ioengine=libaio --direct=1 --thread \
                --iodepth=16 --numjobs=2 --rw=randwrite --bs=4k \
                --offset="${RESTART_OFFSET:-8M}" --size="$_size" --offset_increment="$_size" \
                --randseed=$((_seed + _n - 1)) \
                --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
                --group_reporting --output-format=json >/tmp/restart.json 2>/tmp/restart.err; then
            _rc=0
        else
            _rc=$?
        fi
        _secs_n=$(awk -v a="$_r0" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }')
        _w=$(fio_max_lat_ms write /tmp/restart.json)
        _r=$(fio_max_lat_ms read /tmp/restart.json)
        _ios=$(grep -cE '"total_ios" : [1-9]' /tmp/restart.json)
        _errs=$(grep -cE '"error" : [1-9]' /tmp/restart.json)
        echo "RESTART-IO round=$_n rc=$_rc secs=$_secs_n write_max_ms=$_w read_max_ms=$_r"
        echo "$_n $_rc $_secs_n $_w $_r $_ios $_errs" >>/tmp/restart.rounds
        if [ "$_rc" -ne 0 ] || [ "$_errs" -ne 0 ] || [ "$_ios" -eq 0 ]; then
            sed 's/^/  fio| /' /tmp/restart.err | tail -n 20
            return 1
        fi
    done
}

uptime_s() { cut -d' ' -f1 /proc/uptime; }

test_restart() {
    _l=${RESTART_LUN:-0}
    _p="restart: lun $_l"
    if ! _sd=$(disk_for_lun "$_l"); then fail "$_p" "no disk"; return; fi
    _size=${RESTART_SIZE:-8M}
    _secs=${RESTART_SECS:-30}
    _limit=${RESTART_MAX_STALL_MS:-5000}
    _seed=${RESTART_SEED:-1}
    _round_timeout=${RESTART_ROUND_TIMEOUT:-120}
    : >/tmp/restart.rounds
    echo "RESTART-IO start $_sd"
    restart_rounds "$_sd" &
    _bg=$!
    # Watchdog: a round that makes no progress for the round timeout (I/O
    # that never completes keeps fio in the kernel, beyond the reach of
    # timeout's KILL) is reported here, and the test ends without it.
    _seen=0
    _quiet=0
    _hung=0
    while kill -0 "$_bg" 2>/dev/null; do
        sleep 1
        _c=$(wc -l </tmp/restart.rounds)
        if [ "$_c" != "$_seen" ]; then
            _seen=$_c
            _quiet=0
        else
            _quiet=$((_quiet + 1))
        fi
        if [ "$_quiet" -gt $((_round_timeout + 10)) ]; then
            _hung=1
            break
        fi
    done
    if [ "$_hung" -eq 1 ]; then
        echo "RESTART-IO hung after $_seen round(s)"
        fail "$_p fio round $((_seen + 1))" "no progress for $_quiet s: I/O stuck (inflight read/write: $(cat "/sys/block/$_sd/inflight" | tr -s ' '))"
        dmesg | tail -n 30 | sed 's/^/  dmesg| /'
    else
        wait "$_bg"
    fi
    _rounds=$(wc -l </tmp/restart.rounds)
    _max=$(awk '{ if ($4 > m) m = $4; if ($5 > m) m = $5 } END { printf "%.1f", m }' /tmp/restart.rounds)
    echo "RESTART-IO done rounds=$_rounds max_lat_ms=$_max"
    _failed=$(awk '$2 != 0 || $6 == 0 || $7 != 0 { print "round " $1 ": exit " $2 ", " $7 " job error(s), " $6 " job(s) with I/O" }' /tmp/restart.rounds)
    if [ -n "$_failed" ]; then
        fail "$_p fio randwrite+verify" "$_failed"
    elif [ "$_hung" -eq 0 ] && [ "$_rounds" -gt 0 ]; then
        pass "$_p $_rounds fio randwrite+verify crc32c rounds (2 jobs x $_size) over $_secs s: no errors"
    fi
    if awk -v m="$_max" -v l="$_limit" 'BEGIN { exit !(m < l) }'; then
        pass "$_p longest I/O latency $_max ms < $_limit ms"
    else
        fail "$_p longest I/O latency" "$_max ms, limit $_limit ms"
    fi
    scsi_log_clean "restart"
}

[ -n "${GUEST_ALL:-}" ] || { run_tests restart; finish; }
