#!/usr/bin/env bash
# A/B benchmark of two daemon builds in one session, alternating runs on the
# same backing files, for claims of the form "this change made X faster".
#
# Usage: scripts/bench-ab.sh BEFORE_BIN AFTER_BIN [--runtime S] [--repeat N] [--pin]
#            [--before-args "ARGS"] [--after-args "ARGS"] [--fio]
#   BEFORE_BIN / AFTER_BIN: vhost-user-scsi binaries (e.g. a release build of
#   the previous commit in a git worktree, and target/release/vhost-user-scsi).
#   The same binary twice with different daemon arguments compares two
#   settings of one build (e.g. --before-args "--poll-max-us 0").
#   --fio: also run fio (io_uring, O_DIRECT) on the same files at QD32
#   randread, alternating with the two daemons.
# Rows: 4k randread/randwrite at QD1 and QD32 on one request queue, on tmpfs
# (/dev/shm) and on the real disk (O_DIRECT file under target/). Prints a
# markdown table: IOPS, p50 latency and daemon CPU us per I/O, median of N.
# --pin: daemon and bench both on CPU 0 (taskset): on a 2-vCPU VM, waking a
# thread on the other, idle CPU costs tens of microseconds per hand-off.
set -euo pipefail
BEFORE=${1:?before binary}
AFTER=${2:?after binary}
shift 2
RUNTIME=3
REPEAT=3
PIN=()
BEFORE_ARGS=""
AFTER_ARGS=""
FIO=0
while (( $# )); do
    case "$1" in
        --runtime) RUNTIME=$2; shift 2 ;;
        --repeat) REPEAT=$2; shift 2 ;;
        --pin) PIN=(taskset -c 0); shift ;;
        --before-args) BEFORE_ARGS=$2; shift 2 ;;
        --after-args) AFTER_ARGS=$2; shift 2 ;;
        --fio) FIO=1; shift ;;
        *) echo "bench-ab: unknown option $1" >&2; exit 2 ;;
    esac
done
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d)
TMPFS_IMG=/dev/shm/vus-ab-$$.img
DISK_IMG=$ROOT/target/vus-ab-$$.img
trap 'rm -rf "$WORK" "$TMPFS_IMG" "$DISK_IMG"' EXIT
truncate -s 1G "$TMPFS_IMG"
# A real file on the disk, fully allocated (holes read without I/O).
dd if=/dev/zero of="$DISK_IMG" bs=1M count=1024 status=none
sync

run() { # bin "daemon args" image rw qd -> "iops p50 cpu_us"
    local bin=$1 args=$2 img=$3 rw=$4 qd=$5 sock=$WORK/s.sock
    # shellcheck disable=SC2086 # the extra daemon arguments split on spaces
    "${PIN[@]}" "$bin" serve --socket "$sock" --disk "$img" --num-queues 1 $args 2>/dev/null &
    local pid=$!
    for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.02; done
    "${PIN[@]}" "$AFTER" bench --socket "$sock" --queues 1 --qd "$qd" --bs 4096 --rw "$rw" \
        --runtime "$RUNTIME" --ramp 1 --backend-pid "$pid" --json >"$WORK/out.json"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%.0f %.1f %.2f" % (j["iops"], j["latency"]["p50_us"], j["backend_cpu_us_per_io"]))' "$WORK/out.json"
}

run_fio() { # image rw qd -> "iops p50 cpu_us" (CPU: the whole fio tree, bash time)
    local img=$1 rw=$2 qd=$3 t
    t=$( { TIMEFORMAT='%U %S'; time "${PIN[@]}" fio --name=ab --filename="$img" --size=1G \
        --ioengine=io_uring --direct=1 --rw="$rw" --bs=4k --iodepth="$qd" --time_based \
        --runtime="$RUNTIME" --ramp_time=1 --norandommap --randrepeat=0 --lat_percentiles=1 \
        --output-format=json --output="$WORK/fio.json" >/dev/null; } 2>&1 )
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]["read" if "read" in sys.argv[3] else "write"]; cpu=sum(map(float,sys.argv[2].split())); n=j["iops"]*(float(sys.argv[4])+1); print("%.0f %.1f %.2f" % (j["iops"], j["lat_ns"]["percentile"]["50.000000"]/1000 if "percentile" in j["lat_ns"] else j["clat_ns"]["percentile"]["50.000000"]/1000, cpu*1e6/n))' "$WORK/fio.json" "$t" "$rw" "$RUNTIME"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "pinned: ${PIN[*]:-no}; runtime ${RUNTIME}s + 1s ramp, median of $REPEAT"
echo "before: $BEFORE $BEFORE_ARGS; after: $AFTER $AFTER_ARGS"
echo
echo "| media | workload | build | IOPS | p50 us | daemon CPU us/IO |"
echo "|---|---|---|---:|---:|---:|"
for media in tmpfs disk; do
    img=$TMPFS_IMG; [[ $media == disk ]] && img=$DISK_IMG
    for rw in randread randwrite; do
        for qd in 1 32; do
            declare -A res=()
            sides=(before after)
            (( FIO )) && [[ $rw == randread && $qd == 32 ]] && sides+=(fio)
            for _ in $(seq "$REPEAT"); do
                for which in "${sides[@]}"; do
                    case $which in
                        before) res[$which]+="$(run "$BEFORE" "$BEFORE_ARGS" "$img" "$rw" "$qd")"$'\n' ;;
                        after) res[$which]+="$(run "$AFTER" "$AFTER_ARGS" "$img" "$rw" "$qd")"$'\n' ;;
                        fio) res[$which]+="$(run_fio "$img" "$rw" "$qd")"$'\n' ;;
                    esac
                done
            done
            for which in "${sides[@]}"; do
                rows=${res[$which]}
                iops=$(echo -n "$rows" | awk '{print $1}' | median)
                p50=$(echo -n "$rows" | awk '{print $2}' | median)
                cpu=$(echo -n "$rows" | awk '{print $3}' | median)
                echo "| $media | $rw 4k QD$qd | $which | $iops | $p50 | $cpu |"
            done
            unset res
        done
    done
done
