#!/bin/sh
# LUN passthrough, one level down (tests/guest_e2e_passthrough.rs): this
# guest has a QEMU-emulated SCSI disk (virtio-scsi-pci + scsi-hd: /dev/sdX
# and its /dev/sgN). Our daemon (/usr/bin/vhost-user-scsi, added to the
# initrd by the host) runs here and serves the sg node as passthrough LUN 0;
# LUN 1 (the sd node) is hot-added over JSON-RPC (`ctl lun_add
# --passthrough`). Our own frontend (`vhost-user-scsi probe` for single
# commands, `bench --verify` for I/O) drives them through the daemon's
# socket, and the answers are compared with sg3_utils on the device itself:
#   - INQUIRY, every VPD page the device lists, READ CAPACITY(10)/(16):
#     byte for byte equal to sg_inq/sg_vpd/sg_readcap --raw on the device
#     (Block Limits: with the host's transfer limit, as scsi-block does);
#   - REPORT LUNS is ours (LUN 0, then LUNs 0 and 1);
#   - a command the device rejects (READ beyond the end, an unknown VPD
#     page) returns the device's own sense, the same sg_raw shows directly;
#   - bench --verify (randrw, verified reads, every written block read
#     back) on both LUNs;
#   - LOGICAL UNIT RESET: FUNCTION COMPLETE, the daemon logs the device
#     reset, commands work afterwards;
#   - stats and metrics count the passthrough LUNs' reads and writes; lun_resize is
#     refused, lun_remove unplugs LUN 1;
#   - the state file keeps a passthrough LUN across kill -9;
#   - the daemon refuses the disk's partition-less sibling paths that are
#     not SCSI (/dev/null, a regular file) with one line.
# shellcheck source=lib.sh
. /guest/lib.sh

VUS=/usr/bin/vhost-user-scsi
SOCK=/tmp/pt.sock
RPC=/tmp/rpc.sock
LOG=/tmp/vus.log

hexof() { od -An -v -tx1 "$1" | tr -d ' \n'; }

# probe_to FILE ARGS...: run probe, output in FILE; fails on a probe error.
probe_to() {
    _f=$1
    shift
    $VUS probe --socket "$SOCK" "$@" >"$_f" 2>&1
}
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" "$2" | head -n 1; }

# same_bytes NAME DEVICE_FILE PROBE_FILE
same_bytes() {
    _a=$(hexof "$2")
    _b=$(hexof "$3")
    if [ -n "$_a" ] && [ "$_a" = "$_b" ]; then
        pass "$1 ($(wc -c <"$2") bytes)"
    else
        fail "$1" "device '$_a' vs passthrough '$_b'"
    fi
}

sd=$(disk_for_lun 0) || { fail "setup" "no SCSI disk"; finish; exit 1; }
sg=$(sg_for_disk "$sd") || { fail "setup" "no sg node for $sd"; finish; exit 1; }
info "device: /dev/$sd $sg, $($BLOCKDEV --getsize64 "/dev/$sd") bytes"
[ -x "$VUS" ] || { fail "setup" "$VUS missing"; finish; exit 1; }
for t in sg_inq sg_vpd sg_readcap sg_raw; do
    command -v "$t" >/dev/null || fail "setup" "$t missing"
done

# Refusals in the guest too (a real sysfs with SCSI devices around).
truncate -s 1M /tmp/file.img
for bad in /tmp/file.img /dev/null; do
    if out=$($VUS serve --socket /tmp/bad.sock --disk "$bad,passthrough" 2>&1); then
        fail "refuse $bad" "served"
    elif [ "$(echo "$out" | wc -l)" -eq 1 ] && echo "$out" | grep -q "SCSI"; then
        pass "refuse $bad: $out"
    else
        fail "refuse $bad" "$out"
    fi
done

ifconfig lo 127.0.0.1 up 2>/dev/null || ip link set lo up 2>/dev/null || true
RUST_LOG=info $VUS serve --socket "$SOCK" --rpc-socket "$RPC" --num-queues 2 \
    --metrics-addr 127.0.0.1:9187 --disk "$sg,passthrough" >"$LOG" 2>&1 &
vpid=$!
i=0
while [ ! -S "$SOCK" ] && [ "$i" -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
if [ -S "$SOCK" ]; then pass "daemon serves $sg as passthrough LUN 0"; else
    fail "daemon start" "$(tail -n 5 "$LOG" | tr '\n' ' ')"; finish; exit 1
fi

# REPORT LUNS is ours.
probe_to /tmp/rl --cdb "a0 00 00 00 00 00 00 00 01 00 00 00" --data-in 256
expect_eq "REPORT LUNS (ours): LUN 0" "$(field data /tmp/rl)" "00000008000000000000000000000000"

check "ctl lun_add --passthrough $sd as LUN 1 (hotplug)" \
    $VUS ctl --rpc-socket "$RPC" lun_add --controller default --path "/dev/$sd" --lun 1 --passthrough
probe_to /tmp/rl --cdb "a0 00 00 00 00 00 00 00 01 00 00 00" --data-in 256
expect_eq "REPORT LUNS (ours): LUNs 0 and 1" "$(field data /tmp/rl)" \
    "000000100000000000000000000000000001000000000000"
n=$($VUS ctl --rpc-socket "$RPC" --json controller_list | tr -d ' \n' | grep -o '"passthrough":true' | wc -l)
expect_eq "controller_list shows both LUNs as passthrough" "$n" "2"
if $VUS ctl --rpc-socket "$RPC" lun_add --controller default --path /tmp/file.img --passthrough >/tmp/ctl.err 2>&1; then
    fail "lun_add --passthrough of a regular file refused" "accepted"
else
    pass "lun_add --passthrough of a regular file refused: $(cat /tmp/ctl.err)"
fi

for lun in 0 1; do
    p="lun $lun"
    # Whatever unit attention the device has pending goes first.
    probe_to /tmp/tur --lun "$lun" --cdb "00 00 00 00 00 00"
    probe_to /tmp/tur --lun "$lun" --cdb "00 00 00 00 00 00"
    expect_eq "$p TEST UNIT READY" "$(field status /tmp/tur)" "0x00"

    sg_inq --raw "$sg" >/tmp/inq.dev 2>/dev/null
    n=$(wc -c </tmp/inq.dev)
    probe_to /tmp/inq --lun "$lun" --cdb "12 00 00 00 $(printf %02x "$n") 00" --data-in "$n" --out /tmp/inq.pt
    same_bytes "$p INQUIRY = sg_inq --raw" /tmp/inq.dev /tmp/inq.pt

    sg_vpd --page=0 --raw "$sg" >/tmp/vpd0.dev 2>/dev/null
    pages=$(od -An -v -tx1 -j4 /tmp/vpd0.dev)
    info "$p VPD pages of the device: $pages"
    [ -n "$pages" ] || fail "$p VPD page list" "empty"
    for pg in $pages; do
        sg_vpd --page="0x$pg" --raw "$sg" >/tmp/vpd.dev 2>/dev/null
        n=$(wc -c </tmp/vpd.dev)
        probe_to /tmp/vpd --lun "$lun" --cdb "12 01 $pg $(printf '%02x %02x' $((n >> 8)) $((n & 255))) 00" \
            --data-in "$n" --out /tmp/vpd.pt
        if [ "$pg" = b0 ]; then
            # Block Limits: MAXIMUM and OPTIMAL TRANSFER LENGTH become at
            # most what the host's request queue takes (max_sectors_kb of
            # the disk, in its logical blocks), as QEMU's scsi-block does.
            lim=$(($(cat "/sys/block/$sd/queue/max_sectors_kb") * 1024))
            [ "$lim" -gt 16777216 ] && lim=16777216
            lim=$((lim / $(cat "/sys/block/$sd/queue/logical_block_size")))
            d=$(hexof /tmp/vpd.dev)
            dmax=$((0x$(echo "$d" | cut -c17-24)))
            dopt=$((0x$(echo "$d" | cut -c25-32)))
            [ "$dmax" -eq 0 ] || [ "$dmax" -gt "$lim" ] && dmax=$lim
            [ "$dopt" -eq 0 ] || [ "$dopt" -gt "$lim" ] && dopt=$lim
            want=$(echo "$d" | cut -c1-16)$(printf '%08x%08x' "$dmax" "$dopt")$(echo "$d" | cut -c33-)
            expect_eq "$p VPD page 0xb0 = sg_vpd --raw with the host's transfer limit ($lim blocks)" \
                "$(hexof /tmp/vpd.pt)" "$want"
        else
            same_bytes "$p VPD page 0x$pg = sg_vpd --raw" /tmp/vpd.dev /tmp/vpd.pt
        fi
    done
    # The residual is the device's: QEMU's scsi-hd pads emulated data-in to
    # the allocation length (residual 0), as sg_raw on the device shows.
    probe_to /tmp/vpd --lun "$lun" --cdb "12 01 00 04 00 00" --data-in 1024
    got=$((1024 - $(field resid /tmp/vpd)))
    dev=$(sg_raw -r 1024 "$sg" 12 01 00 04 00 00 2>&1 | sed -n 's/.*Received \([0-9]*\) bytes.*/\1/p' | head -n 1)
    expect_eq "$p data-in length of VPD 00h with 1024 bytes allocated = sg_raw's" "$got" "$dev"

    sg_readcap --raw "$sg" >/tmp/rc.dev 2>/dev/null
    probe_to /tmp/rc --lun "$lun" --cdb "25 00 00 00 00 00 00 00 00 00" --data-in 8 --out /tmp/rc.pt
    same_bytes "$p READ CAPACITY(10) = sg_readcap --raw" /tmp/rc.dev /tmp/rc.pt
    sg_readcap --16 --raw "$sg" >/tmp/rc16.dev 2>/dev/null
    n=$(wc -c </tmp/rc16.dev)
    probe_to /tmp/rc16 --lun "$lun" --cdb "9e 10 00 00 00 00 00 00 00 00 00 00 00 $(printf %02x "$n") 00 00" \
        --data-in "$n" --out /tmp/rc16.pt
    same_bytes "$p READ CAPACITY(16) = sg_readcap --16 --raw" /tmp/rc16.dev /tmp/rc16.pt

    # Commands the device rejects: its own sense, as sg_raw sees it.
    probe_to /tmp/bad --lun "$lun" --cdb "28 00 ff ff ff f0 00 00 01 00" --data-in 512
    sense=$(field sense /tmp/bad)
    sg_raw -r 512 "$sg" 28 00 ff ff ff f0 00 00 01 00 >/tmp/bad.dev 2>&1
    info "$p READ beyond the end: $(tr '\n' ' ' </tmp/bad), sg_raw: $(tr '\n' ' ' </tmp/bad.dev)"
    expect_eq "$p READ beyond the end: CHECK CONDITION" "$(field status /tmp/bad)" "0x02"
    expect_eq "$p READ beyond the end: the device's sense (ILLEGAL REQUEST, 21h/00h)" \
        "$(echo "$sense" | cut -c1-2,5-6,25-28)" "700521""00"
    if grep -qi "Logical block address out of range" /tmp/bad.dev; then
        pass "$p sg_raw on the device reports the same sense"
    else
        fail "$p sg_raw on the device reports the same sense" "$(tr '\n' ' ' </tmp/bad.dev)"
    fi
    probe_to /tmp/badvpd --lun "$lun" --cdb "12 01 ee 00 ff 00" --data-in 255
    sg_raw -r 255 "$sg" 12 01 ee 00 ff 00 >/tmp/badvpd.dev 2>&1
    s=$(field sense /tmp/badvpd)
    info "$p unknown VPD page: $(tr '\n' ' ' </tmp/badvpd)"
    # Ours would carry a field pointer (SKSV, bytes 15-17); QEMU's has none.
    expect_eq "$p unknown VPD page: the device's own sense (24h/00h, no field pointer)" \
        "$(echo "$s" | cut -c1-2,5-6,25-28,31-36)" "700524""00""000000"
    if grep -qi "Invalid field in cdb" /tmp/badvpd.dev; then
        pass "$p sg_raw on the device: Invalid field in cdb too"
    else
        fail "$p sg_raw on the device: Invalid field in cdb too" "$(tr '\n' ' ' </tmp/badvpd.dev)"
    fi

    # Verified writes and reads (data-out and data-in through SG_IO).
    if $VUS bench --socket "$SOCK" --lun "$lun" --queues 2 --qd 4 --bs 4096 --rw randrw \
        --runtime "${PT_BENCH_SECS:-3}" --ramp 0 --verify >/tmp/bench.out 2>&1; then
        pass "$p bench --verify randrw: $(grep -iE 'iops|verif' /tmp/bench.out | head -n 3 | tr '\n' ' ')"
    else
        fail "$p bench --verify randrw" "$(tail -n 8 /tmp/bench.out | tr '\n' ' ')"
    fi
done

# A bidirectional request (data-out and data-in buffers: XDWRITEREAD(10))
# is refused: CHECK CONDITION, INVALID FIELD IN CDB, and a log line.
probe_to /tmp/bidi --lun 0 --cdb "53 00 00 00 00 00 00 00 01 00" --data-out "$(printf '%01024d' 0)" --data-in 512
info "bidirectional: $(tr '\n' ' ' </tmp/bidi | cut -c1-200)"
expect_eq "bidirectional request refused (ILLEGAL REQUEST 24h)" \
    "$(field status /tmp/bidi) $(field sense /tmp/bidi | cut -c5-6,25-26)" "0x02 0524"
if grep -q "bidirectional passthrough command refused" "$LOG"; then
    pass "bidirectional request: the daemon says why"
else
    fail "bidirectional request: the daemon says why" "$(tail -n 3 "$LOG" | tr '\n' ' ')"
fi

# LOGICAL UNIT RESET: SG_SCSI_RESET on the device.
probe_to /tmp/reset --lun 0 --lun-reset
expect_eq "LOGICAL UNIT RESET: FUNCTION COMPLETE" "$(field tmf-response /tmp/reset)" "0"
if grep -q "passthrough LUN reset" "$LOG"; then
    pass "the daemon reset the device ($(grep "passthrough LUN reset" "$LOG" | tail -n 1 | sed 's/.*INFO//'))"
else
    fail "the daemon reset the device" "$(tail -n 5 "$LOG" | tr '\n' ' ')"
fi
ok=0
for _ in 1 2 3 4; do
    probe_to /tmp/tur --lun 0 --cdb "00 00 00 00 00 00"
    if [ "$(field status /tmp/tur)" = "0x00" ]; then ok=1; break; fi
    info "after the reset: $(cat /tmp/tur | tr '\n' ' ')"
done
expect_eq "TEST UNIT READY after the reset" "$ok" "1"
probe_to /tmp/inq --lun 0 --cdb "12 00 00 00 24 00" --data-in 36
expect_eq "INQUIRY after the reset" "$(field status /tmp/inq)" "0x00"

# Stats: the passthrough LUNs' reads and writes are counted.
$VUS ctl --rpc-socket "$RPC" --json stats >/tmp/stats.json 2>&1
info "stats: $(tr -d ' \n' </tmp/stats.json | cut -c1-600)"
reads=$(tr -d ' \n' </tmp/stats.json | grep -o '"reads":[0-9]*' | cut -d: -f2 | tr '\n' ' ')
writes=$(tr -d ' \n' </tmp/stats.json | grep -o '"writes":[0-9]*' | cut -d: -f2 | tr '\n' ' ')
case "$reads$writes" in
    *" 0 "*|"") fail "stats count passthrough reads and writes" "reads $reads writes $writes" ;;
    *) pass "stats count passthrough reads ($reads) and writes ($writes)" ;;
esac

# Metrics: the same counters over HTTP.
if wget -q -O /tmp/metrics http://127.0.0.1:9187/metrics 2>/tmp/wget.err; then
    m=$(grep '^vhost_user_scsi_lun_reads_total{.*lun="0"' /tmp/metrics | awk '{print $2}')
    info "metrics: $(grep 'lun_reads_total\|lun_writes_total' /tmp/metrics | tr '\n' ' ')"
    if [ -n "$m" ] && [ "$m" -gt 0 ]; then pass "metrics count passthrough reads (lun 0: $m)"; else
        fail "metrics count passthrough reads" "$(grep lun_reads /tmp/metrics | tr '\n' ' ')"; fi
else
    fail "metrics endpoint" "$(cat /tmp/wget.err)"
fi

# lun_resize is the device's business; lun_remove unplugs LUN 1.
if $VUS ctl --rpc-socket "$RPC" lun_resize --controller default --lun 0 >/tmp/ctl.err 2>&1; then
    fail "lun_resize of a passthrough LUN refused" "accepted"
else
    pass "lun_resize of a passthrough LUN refused: $(cat /tmp/ctl.err)"
fi
check "ctl lun_remove LUN 1 (hot-unplug)" $VUS ctl --rpc-socket "$RPC" lun_remove --controller default --lun 1
probe_to /tmp/rl --cdb "a0 00 00 00 00 00 00 00 01 00 00 00" --data-in 256
expect_eq "REPORT LUNS after lun_remove: LUN 0" "$(field data /tmp/rl)" "00000008000000000000000000000000"
probe_to /tmp/gone --lun 1 --cdb "00 00 00 00 00 00"
expect_eq "LUN 1 gone: LOGICAL UNIT NOT SUPPORTED" "$(field sense /tmp/gone | cut -c5-6,25-26)" "0525"

kill "$vpid"
if wait "$vpid"; then pass "daemon exits 0 on SIGTERM"; else fail "daemon exit" "$?"; fi
if grep -qiE "panicked|ERROR" "$LOG"; then
    fail "daemon log clean" "$(grep -iE "panicked|ERROR" "$LOG" | head -n 3 | tr '\n' ' ')"
else
    pass "daemon log has no error"
fi

# The state file keeps a passthrough LUN: made over JSON-RPC, the daemon
# killed (-9), a new daemon on the same file serves it again.
STATE=/tmp/state.json
SOCK2=/tmp/pt2.sock
start_state_daemon() {
    RUST_LOG=info $VUS serve --rpc-socket "$RPC" --state-file "$STATE" >>/tmp/vus2.log 2>&1 &
    spid=$!
    i=0
    while [ ! -S "$RPC" ] && [ "$i" -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
}
rm -f "$RPC"
start_state_daemon
check "state file: controller_create" $VUS ctl --rpc-socket "$RPC" controller_create --name vm2 --socket "$SOCK2" --num-queues 1
check "state file: lun_add --passthrough $sg" \
    $VUS ctl --rpc-socket "$RPC" lun_add --controller vm2 --path "$sg" --passthrough
if grep -q '"passthrough": *true' "$STATE"; then pass "state file records passthrough"; else
    fail "state file records passthrough" "$(tr -d '\n' <"$STATE")"; fi
kill -9 "$spid"; wait "$spid" 2>/dev/null
rm -f "$RPC" "$SOCK2"
start_state_daemon
i=0
while [ ! -S "$SOCK2" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
$VUS probe --socket "$SOCK2" --cdb "12 00 00 00 24 00" --data-in 36 --out /tmp/inq2.pt >/tmp/inq2 2>&1
sg_inq --raw "$sg" >/tmp/inq2.dev 2>/dev/null
same_bytes "after kill -9 and restart from the state file: INQUIRY of the passthrough LUN" /tmp/inq2.dev /tmp/inq2.pt
kill "$spid"
if wait "$spid"; then pass "state-file daemon exits 0 on SIGTERM"; else fail "state-file daemon exit" "$?"; fi
finish
