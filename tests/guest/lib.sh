#!/bin/sh
# Shared helpers for the in-guest test scripts (busybox ash). Installed as
# /guest/lib.sh by scripts/run-guest.sh; expectations come from /test.env:
#
#   EXPECT_DISKS=N           number of sd disks
#   LUNS="0 1 2"             LUNs to check (target 0)
#   LUN<n>_SIZE=BYTES        capacity in bytes
#   LUN<n>_BS=512|4096       logical block size (default 512)
#   LUN<n>_RO=0|1            write protected (default 0)
#   LUN<n>_SERIAL=TEXT       expected unit serial number (VPD 0x80), optional
#   EXPECT_VENDOR / EXPECT_PRODUCT   INQUIRY strings, optional
#   TESTS="disks dd fio ext4 sg"     what all.sh runs
#   (test-specific variables are described in each test file)
#
# Output: one "PASS: name" or "FAIL: name: why" line per check; "INFO:" lines
# are informational. finish() prints a summary and returns non-zero if any
# check failed.

# shellcheck disable=SC2034 # used by the test files
# Non-busybox tools (busybox would otherwise run its own applet of that name).
DD=/usr/bin/dd
BLOCKDEV=/usr/sbin/blockdev
MKFS_EXT4=/usr/sbin/mkfs.ext4
E2FSCK=/usr/sbin/e2fsck
FIO=/usr/bin/fio
FSTRIM=/usr/sbin/fstrim

# shellcheck disable=SC1091
[ -f /test.env ] && . /test.env
: "${LUNS:=0}"

PASSES=0
FAILS=0

pass() { PASSES=$((PASSES + 1)); echo "PASS: $1"; }
fail() { FAILS=$((FAILS + 1)); echo "FAIL: $1: $2"; }
info() { echo "INFO: $*"; }

# check NAME CMD... : PASS when CMD succeeds, FAIL (with its output) otherwise.
check() {
    _name=$1
    shift
    if _out=$("$@" 2>&1); then
        pass "$_name"
    else
        fail "$_name" "'$*' exited $?: $(echo "$_out" | tail -n 5 | tr '\n' ' ')"
        return 1
    fi
}

# expect_eq NAME ACTUAL EXPECTED
expect_eq() {
    if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got '$2', expected '$3'"; fi
}

# lunvar N FIELD [DEFAULT]: value of LUN<N>_<FIELD>
lunvar() {
    eval "_v=\${LUN$1_$2:-}"
    if [ -n "$_v" ]; then echo "$_v"; else echo "${3:-}"; fi
}

# disk_for_lun N: the sdX whose SCSI address is H:0:0:N (first host with it).
disk_for_lun() {
    for _d in /sys/block/sd*; do
        [ -e "$_d/device" ] || continue
        _hctl=$(basename "$(readlink "$_d/device")")
        case "$_hctl" in
            *:0:0:"$1") basename "$_d"; return 0 ;;
        esac
    done
    return 1
}

# sg_for_disk sdX: the matching /dev/sgN.
sg_for_disk() {
    for _s in /sys/block/"$1"/device/scsi_generic/sg*; do
        [ -e "$_s" ] && { echo "/dev/$(basename "$_s")"; return 0; }
    done
    return 1
}

# hctl_of sdX
hctl_of() { basename "$(readlink "/sys/block/$1/device")"; }

# pattern SEED LUN OFFSET LEN: the deterministic data written by the dd test.
# 64-byte records, each "vhost-user-scsi seed=S lun=L pos=P" left-justified in
# 63 characters plus "\n", P being the record's absolute byte offset. The
# host side (tests/guest_e2e.rs) generates the same bytes.
pattern() {
    awk -v s="$1" -v l="$2" -v o="$3" -v n="$(($4 / 64))" 'BEGIN {
        for (i = 0; i < n; i++)
            printf "%-63s\n", sprintf("vhost-user-scsi seed=%.0f lun=%.0f pos=%.0f", s, l, o + 64 * i)
    }'
}

# expect_rc NAME WANT CMD...: PASS when CMD exits with status WANT (sg3_utils
# exit statuses: 5 ILLEGAL REQUEST, 7 DATA PROTECT, 14 MISCOMPARE,
# 24 RESERVATION CONFLICT; see sg3_utils(8)).
expect_rc() {
    _name=$1
    _want=$2
    shift 2
    _out=$("$@" 2>&1)
    _rc=$?
    if [ "$_rc" = "$_want" ]; then
        pass "$_name (exit $_rc)"
    else
        fail "$_name" "'$*' exited $_rc, expected $_want: $(echo "$_out" | tail -n 4 | tr '\n' ' ')"
    fi
}

# sense_of OUTPUT-OF-sg_raw-v: prints "KEY ASC ASCQ" (hex, lower case) or nothing.
sense_of() {
    echo "$1" | awk '
        /Raw sense data/ { on = 1; next }
        on && /^[ \t]+([0-9a-f][0-9a-f] ?)+/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9a-f][0-9a-f]$/) b[n++] = $i; next }
        on { on = 0 }
        END {
            if (n < 4) exit
            rc = b[0]
            if (rc == "70" || rc == "71") { if (n >= 14) print substr(b[2], 2, 1), b[12], b[13] }
            else if (rc == "72" || rc == "73") print substr(b[1], 2, 1), b[2], b[3]
        }'
}

# expect_sense NAME "KEY ASC" sg_raw-args...: sg_raw must end in CHECK
# CONDITION with that sense key and additional sense code (fixed or
# descriptor format).
expect_sense() {
    _name=$1
    _want=$2
    shift 2
    _out=$(sg_raw -v "$@" 2>&1)
    _rc=$?
    _s=$(sense_of "$_out")
    case "$_s" in
        "$_want "*) pass "$_name (sense $_s)" ;;
        *) fail "$_name" "sg_raw exited $_rc, sense key/asc/ascq '${_s:-none}', expected '$_want xx'; $(echo "$_out" | grep -iE 'status|sense' | head -n 4 | tr '\n' ' ')" ;;
    esac
}

# be16/be32/be64 N: N as space separated big-endian hex bytes (CDB fields).
be16() { printf '%02x %02x' $(($1 >> 8 & 255)) $(($1 & 255)); }
be32() { printf '%02x %02x %02x %02x' $(($1 >> 24 & 255)) $(($1 >> 16 & 255)) $(($1 >> 8 & 255)) $(($1 & 255)); }
be64() { echo "$(be32 $(($1 >> 32))) $(be32 $(($1 & 4294967295)))"; }

# read_blocks sdX LBA COUNT BS: the blocks, read with O_DIRECT, on stdout.
read_blocks() { $DD if="/dev/$1" iflag=direct bs="$4" skip="$2" count="$3" 2>/dev/null; }

# write_blocks sdX LBA BS < DATA: O_DIRECT write of stdin at LBA.
write_blocks() { $DD of="/dev/$1" oflag=direct conv=notrunc bs="$3" seek="$2" 2>/dev/null; }

# zeros BYTES: that many zero bytes on stdout.
zeros() { $DD if=/dev/zero bs="$1" count=1 2>/dev/null; }

# repeat FILE N: FILE N times on stdout.
repeat() {
    _i=0
    while [ "$_i" -lt "$2" ]; do cat "$1"; _i=$((_i + 1)); done
}

# same_file NAME GOT WANT: PASS when the two files are byte-identical.
same_file() {
    if cmp -s "$2" "$3"; then
        pass "$1"
    else
        fail "$1" "data differs: $(cmp "$2" "$3" 2>&1 | head -n 1)"
    fi
}

# lun_devs N: sets _sd and _sg for LUN N; FAIL (and non-zero) when missing.
lun_devs() {
    if ! _sd=$(disk_for_lun "$1") || ! _sg=$(sg_for_disk "$_sd"); then
        fail "lun $1" "no sd/sg device"
        return 1
    fi
}

# scsi_log_clean NAME [ALLOW-ERE]: the kernel log's SCSI, block and virtio
# lines, for the record; FAIL on any sign of a disturbed disk: SCSI errors,
# aborts, resets, timeouts, failed commands, I/O errors, a virtqueue the
# driver found corrupt ("id N is not a head!", "id N out of range", "used
# len N is larger than in buflen" make it mark the queue broken) or a hung
# task. One line is allowed: the unit attention a disk reports after a
# power-on or reset (what a LUN of a newly started daemon reports first),
# which Linux prints as "sd H:C:T:L: Power-on or device reset occurred" and
# retries. Lines matching ALLOW-ERE are allowed too. Prints "INFO: NAME:
# N power-on/reset unit attention(s)".
scsi_log_clean() {
    dmesg >/tmp/kernel.log
    grep -iE 'scsi|sd[a-z]|sd [0-9]|virtio|blk_|I/O error|not a head|out of range|larger than|broken|blocked for more|hung' \
        /tmp/kernel.log | grep -v ACPI >/tmp/scsi.log
    sed 's/^/  dmesg| /' /tmp/scsi.log
    _ua=$(grep -cE 'sd [0-9]+:[0-9]+:[0-9]+:[0-9]+: Power-on or device reset occurred$' /tmp/scsi.log)
    info "$1: $_ua power-on/reset unit attention(s)"
    _bad=$(grep -iE 'error|abort|reset|timed out|timeout|fail|not a head|out of range|larger than|broken|blocked for more|hung' /tmp/scsi.log \
        | grep -vE 'sd [0-9]+:[0-9]+:[0-9]+:[0-9]+: Power-on or device reset occurred$' \
        | grep -vE "${2:-^$}" || true)
    if [ -z "$_bad" ]; then
        pass "$1: no SCSI errors, aborts, resets, timeouts or broken virtqueues in the kernel log"
    else
        fail "$1: kernel log" "$(echo "$_bad" | head -n 5 | tr '\n' ' ')"
    fi
}

# Print the summary line and return the status.
finish() {
    echo "SUMMARY: $PASSES passed, $FAILS failed"
    [ "$FAILS" -eq 0 ]
}

# run_tests NAME...: run test_NAME for each, timing each one.
run_tests() {
    for _t in "$@"; do
        echo "=== $_t"
        _t0=$(cut -d' ' -f1 /proc/uptime)
        if command -v "test_$_t" >/dev/null 2>&1; then
            "test_$_t"
        else
            fail "$_t" "no such test"
        fi
        echo "=== $_t done in $(awk -v a="$_t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }') s"
    done
}
