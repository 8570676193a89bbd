#!/usr/bin/env bash
# One-command benchmark: builds in release mode, makes backing files on tmpfs
# (/dev/shm: exposes the backend's own cost) and on the real disk (O_DIRECT),
# and runs in one session, on the same files, with the same queue depths:
#   1. fio --ioengine=io_uring directly on the file (the physical limit),
#   2. our daemon driven by `vhost-user-scsi bench`,
#   3. optionally another backend (--peer), driven by the same bench.
# Then writes docs/benchmarks.md (table + targets) and docs/bench.png.
#
# Usage: scripts/bench.sh [--peer "CMD ... {socket} ... {image}"] [--runtime S]
#        [--ramp S] [--repeat N] [--size BYTES] [--disk-dir DIR] [--pin | --pin-same]
#        [--media "tmpfs disk"] [--out FILE.md]
# The peer is started afresh for every row (some backends exit when the
# frontend disconnects). Example peer (rust-vmm, crates.io):
#   cargo install vhost-device-scsi --root /tmp/peer
#   scripts/bench.sh --peer "/tmp/peer/bin/vhost-device-scsi --socket-path {socket} {image}"
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEER=""
RUNTIME=5
RAMP=1
REPEAT=1
SIZE=$((1 << 30))
DISK_DIR="$ROOT/target/bench"
PIN=0
MEDIA="tmpfs disk"
OUT="$ROOT/docs/benchmarks.md"
while [ $# -gt 0 ]; do
  case "$1" in
    --peer) PEER=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --ramp) RAMP=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --disk-dir) DISK_DIR=$2; shift 2 ;;
    --pin) PIN=1; shift ;;
    --pin-same) PIN=2; shift ;;
    --media) MEDIA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option $1" >&2; exit 1 ;;
  esac
done

need_pkg() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "bench.sh: installing $2" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q "$2" >/dev/null; else sudo apt-get install -y -q "$2" >/dev/null; fi
}
need_pkg fio fio
need_pkg taskset util-linux
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
if [ ! -f "$FONT" ]; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q fonts-dejavu-core >/dev/null; else sudo apt-get install -y -q fonts-dejavu-core >/dev/null; fi
fi

cd "$ROOT"
cargo build --release --quiet
BIN="$ROOT/target/release/vhost-user-scsi"

WORK=$(mktemp -d /tmp/vus-bench.XXXXXX)
mkdir -p "$DISK_DIR"
IMG_tmpfs=/dev/shm/vus-bench-$$.img
IMG_disk=$DISK_DIR/vus-bench-$$.img
RESULTS="$WORK/results.json"
: > "$RESULTS"
DAEMON_PID=""
PEER_PID=""
cleanup() {
  [ -n "$PEER_PID" ] && kill "$PEER_PID" 2>/dev/null && wait "$PEER_PID" 2>/dev/null
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
  rm -f "$IMG_tmpfs" "$IMG_disk"
  true
}
trap cleanup EXIT

if [ "$PIN" = 1 ]; then
  PIN_BACKEND="taskset -c 1"; PIN_BENCH="taskset -c 0"; PIN_FIO="taskset -c 1"
elif [ "$PIN" = 2 ]; then
  # Everything on CPU 0: hand-offs between the bench and the backend cost a
  # context switch, not the wake-up of an idle vCPU (tens of microseconds
  # on these VMs), so the backend's own cost shows.
  PIN_BACKEND="taskset -c 0"; PIN_BENCH="taskset -c 0"; PIN_FIO="taskset -c 0"
else
  PIN_BACKEND=""; PIN_BENCH=""; PIN_FIO=""
fi

wait_socket() {
  for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done
  echo "bench.sh: no socket at $1" >&2; return 1
}

record() { # engine media rw bs queues qd json-file
  printf '{"engine":"%s","media":"%s","rw":"%s","bs":%s,"queues":%s,"qd":%s,"data":' "$1" "$2" "$3" "$4" "$5" "$6" >> "$RESULTS"
  cat "$7" >> "$RESULTS"
  printf '}\n' >> "$RESULTS"
}

fill() { # image
  echo "bench.sh: writing $1 ($SIZE bytes)" >&2
  rm -f "$1"
  fio --name=fill --filename="$1" --size="$SIZE" --rw=write --bs=1M --direct=1 \
      --ioengine=io_uring --iodepth=8 --output=/dev/null
}

run_fio() { # media img rw bs queues qd
  # fio's own usr/sys CPU (RUSAGE_THREAD) leaves out its io_uring io-wq
  # workers (iou-wrk), which do the copies on tmpfs: also take bash's
  # `time` of the whole fio process tree, which includes them.
  local out="$WORK/fio.json" t
  t=$( { TIMEFORMAT='%U %S'; time $PIN_FIO fio --name=bench --filename="$2" --size="$SIZE" \
    --ioengine=io_uring --direct=1 --rw="$3" --bs="$4" --numjobs="$5" --iodepth="$6" \
    --group_reporting --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --norandommap \
    --randrepeat=0 --lat_percentiles=1 --output-format=json --output="$out" >/dev/null; } 2>&1 )
  printf '{"engine":"fio","media":"%s","rw":"%s","bs":%s,"queues":%s,"qd":%s,"cpu_s":%s,"span_s":%s,"data":' \
    "$1" "$3" "$4" "$5" "$6" "$(echo "$t" | awk '{print $1 + $2}')" "$(echo "$RAMP $RUNTIME" | awk '{print $1 + $2}')" >> "$RESULTS"
  cat "$out" >> "$RESULTS"
  printf '}\n' >> "$RESULTS"
  echo "  fio  $1 $3 bs=$4 q=$5 qd=$6: $(grep '"iops"' "$out" | head -2 | tr -d ' ,\n') cpu $t" >&2
}

run_bench() { # engine media rw bs queues qd socket pid
  local out="$WORK/bench.json"
  if $PIN_BENCH "$BIN" bench --socket "$7" --backend-pid "$8" --rw "$3" --bs "$4" \
      --queues "$5" --qd "$6" --runtime "$RUNTIME" --ramp "$RAMP" --json > "$out" 2> "$WORK/bench.err"; then
    record "$1" "$2" "$3" "$4" "$5" "$6" "$out"
    echo "  $1 $2 $3 bs=$4 q=$5 qd=$6: $(grep -m1 '"iops"' "$out" | tr -d ' ,')" >&2
  else
    echo "  $1 $2 $3 bs=$4 q=$5 qd=$6: FAILED: $(tail -1 "$WORK/bench.err")" >&2
  fi
}

start_daemon() { # img
  rm -f "$WORK/vus.sock"
  $PIN_BACKEND "$BIN" serve --socket "$WORK/vus.sock" --disk "$1" --num-queues 4 --queue-size 256 \
    2> "$WORK/daemon.log" &
  DAEMON_PID=$!
  wait_socket "$WORK/vus.sock"
}

stop_daemon() {
  kill "$DAEMON_PID" 2>/dev/null || true
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=""
}

run_peer() { # media img rw bs queues qd
  [ -z "$PEER" ] && return 0
  local sock="$WORK/peer.sock" cmd
  rm -f "$sock"
  cmd=${PEER//\{socket\}/$sock}
  cmd=${cmd//\{image\}/$2}
  # shellcheck disable=SC2086
  $PIN_BACKEND $cmd > "$WORK/peer.log" 2>&1 &
  PEER_PID=$!
  if wait_socket "$sock"; then
    run_bench peer "$1" "$3" "$4" "$5" "$6" "$sock" "$PEER_PID"
  fi
  kill "$PEER_PID" 2>/dev/null || true
  wait "$PEER_PID" 2>/dev/null || true
  PEER_PID=""
}

CASES=""
for rw in randread randwrite; do
  for q in 1 2; do
    for qd in 1 32 128; do CASES="$CASES $rw:4096:$q:$qd"; done
  done
done
CASES="$CASES read:131072:1:8 write:131072:1:8"

START=$(date +%s)
for media in $MEDIA; do
  img_var=IMG_$media
  img=${!img_var}
  fill "$img"
  start_daemon "$img"
  for rep in $(seq "$REPEAT"); do
    echo "bench.sh: $media, pass $rep of $REPEAT" >&2
    for c in $CASES; do
      IFS=: read -r rw bs q qd <<< "$c"
      run_fio "$media" "$img" "$rw" "$bs" "$q" "$qd"
      run_bench ours "$media" "$rw" "$bs" "$q" "$qd" "$WORK/vus.sock" "$DAEMON_PID"
      run_peer "$media" "$img" "$rw" "$bs" "$q" "$qd"
    done
  done
  if [ "$media" = tmpfs ]; then
    # Memory with 4 queues of 256 entries under load, then an idle guest.
    run_bench ours tmpfs randread 4096 4 64 "$WORK/vus.sock" "$DAEMON_PID"
    out="$WORK/idle.json"
    "$BIN" bench --socket "$WORK/vus.sock" --backend-pid "$DAEMON_PID" --idle --queues 4 \
      --ring-size 256 --runtime 10 --ramp 1 --json > "$out"
    record ours tmpfs idle 4096 4 0 "$out"
  fi
  stop_daemon
  rm -f "$img"
done
ELAPSED=$(( $(date +%s) - START ))

mkdir -p "$(dirname "$OUT")"
if [ -f "$OUT" ]; then
  sed -n '/^<!-- analysis: kept by scripts\/bench.sh -->$/,$p' "$OUT" > "$WORK/analysis.md"
  [ -s "$WORK/analysis.md" ] || rm -f "$WORK/analysis.md"
fi
PNG="$(dirname "$OUT")/bench.png"
cp "$RESULTS" "$DISK_DIR/bench-results.json"
"$BIN" bench-report --from "$RESULTS" --out "$PNG" --markdown "$WORK/table.md"

PEER_VERSION="none"
if [ -n "$PEER" ]; then
  PEER_VERSION="\`${PEER%% *}\`"
  if [ -n "${PEER_DESC:-}" ]; then PEER_VERSION="$PEER_VERSION ($PEER_DESC)"; fi
fi
{
  echo "# Benchmarks"
  echo
  echo "Generated by \`scripts/bench.sh\` on $(date -u +%Y-%m-%d) (matrix took ${ELAPSED} s)."
  echo "Re-run: \`scripts/bench.sh${PEER:+ --peer \"$PEER\"}\`."
  echo
  echo "## Machine and versions"
  echo
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), nproc $(nproc)"
  echo "- kernel: $(uname -r); memory $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "- disk: $(df --output=source "$DISK_DIR" | tail -1) ($(stat -f -c %T "$DISK_DIR")), tmpfs: /dev/shm"
  echo "- fio: $(fio --version); vhost-user-scsi $(git -C "$ROOT" rev-parse --short HEAD); $(rustc --version)"
  echo "- peer: $PEER_VERSION"
  case "$PIN" in
    1) echo "- pinned: yes (backend and fio on CPU 1, bench on CPU 0)" ;;
    2) echo "- pinned: yes, all on CPU 0 (bench, backend, fio: hand-offs are context switches, not wake-ups of the idle vCPU)" ;;
    *) echo "- pinned: no (taskset not used)" ;;
  esac
  echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- per row: ${RAMP} s ramp + ${RUNTIME} s measured, repeated $REPEAT time(s) (median shown); image $((SIZE >> 20)) MiB"
  echo
  echo "## How to read it"
  echo
  echo "- fio runs \`--ioengine=io_uring --direct=1\` on the image itself: the physical limit."
  echo "  Its CPU us/IO is the whole fio process tree's user+system time (bash \`time\`, ramp"
  echo "  included) per I/O: fio's own usr/sys figures use RUSAGE_THREAD and leave out the"
  echo "  io_uring io-wq workers (iou-wrk) that do the work on tmpfs (O_DIRECT is punted there)."
  echo "- ours / peer: \`vhost-user-scsi bench\` plays the guest through vhost-user (indirect"
  echo "  descriptors and EVENT_IDX when offered, like Linux). engine CPU us/IO is the backend"
  echo "  daemon's utime+stime (/proc/PID/stat) per I/O; bench CPU us/IO is the frontend's own"
  echo "  cost (a guest's share, not counted in the ratio)."
  echo "- Latency is submission to completion as seen by the frontend (fio: lat, not clat)."
  echo "- Queues: fio uses one job per queue; the bench uses one thread per request queue, each"
  echo "  on its own part of the image. 2-queue rows on a 2-CPU machine share the CPUs with the"
  echo "  bench, so they show contention as much as scaling."
  echo
  echo "## Results"
  echo
  echo "![IOPS and latency against queue depth](bench.png)"
  echo
  cat "$WORK/table.md"
  # The hand-written analysis (from the marker on) is kept across runs.
  if [ -f "$WORK/analysis.md" ]; then
    echo
    cat "$WORK/analysis.md"
  fi
} > "$WORK/out.md"
mv "$WORK/out.md" "$OUT"
echo "bench.sh: wrote $OUT and $PNG (raw results: $DISK_DIR/bench-results.json)" >&2
