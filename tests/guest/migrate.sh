#!/bin/sh
# Live migration, guest side (tests/guest_e2e_migration.rs starts a source
# and a destination QEMU and migrates this guest while fio runs):
#   1. (MIG_PR=1) sg_persist REGISTER key MIG_PR_KEY (default abc123) and
#      RESERVE Write Exclusive on MIG_LUN; READ KEYS / READ RESERVATION show
#      them; a write by the holder works (at PR_LBA, default 24576).
#   2. fio randwrite + crc32c verify (libaio, O_DIRECT, iodepth 16, 2 jobs x
#      FIO_SIZE from FIO_OFFSET, time_based MIG_FIO_RUNTIME seconds, default
#      30, with verify_backlog so that reads verify all along, then the final
#      verify) starts in the background; after 2 s the guest prints
#      "MIGRATE-READY" and the host migrates it.
#   3. fio finishes (on the destination): no errors, verify passed;
#      "MIGRATE-FIO-DONE" tells the host on which console it finished.
#   4. The guest waits (up to MIG_WAIT seconds, default 240) for the host to
#      type "migrated" on its console: the checks below run on the
#      destination.
#   5. (MIG_PR=1) the key and the Write Exclusive reservation are still
#      there, a write by the holder still works (the destination controller
#      is the same I_T nexus), then RELEASE and CLEAR leave nothing.
#   6. Power-on/reset unit attentions counted before fio and now
#      ("MIGRATE-UA before=N after=M"); MIG_SAME_NEXUS=1 expects no new one
#      (same logical unit, same initiator: the unit attention was consumed
#      on the source). The kernel log has no SCSI error, abort, reset or
#      timeout (the power-on/reset unit attention is tolerated).
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh
# pr.sh's helpers (pr_keys, pr_resv, pr_out, holder_write), without running it.
_mig_all=${GUEST_ALL:-}
GUEST_ALL=1
# shellcheck source=pr.sh
. /guest/pr.sh
GUEST_ALL=$_mig_all

# ua_count: power-on/reset unit attentions the kernel logged so far.
ua_count() { dmesg | grep -c 'Power-on or device reset occurred'; }

test_migrate() {
    _l=${MIG_LUN:-0}
    _p="migrate: lun $_l"
    _k=${MIG_PR_KEY:-abc123}
    lun_devs "$_l" || return
    info "$_p is $_sd / $_sg ($(hctl_of "$_sd"))"
    if [ "${MIG_PR:-1}" = 1 ]; then
        pr_out "$_p REGISTER 0x$_k" 0 --register --param-sark="$_k"
        pr_out "$_p RESERVE Write Exclusive" 0 --reserve --param-rk="$_k" --prout-type=1
        expect_eq "$_p READ KEYS before the migration" "$(pr_keys "$_sg")" "0x$_k"
        expect_eq "$_p READ RESERVATION before the migration" "$(pr_resv "$_sg")" "0x$_k Write Exclusive"
        holder_write "$_p the holder can write before the migration"
    fi
    _ua0=$(ua_count)

    _size=${FIO_SIZE:-16M}
    _rt=${MIG_FIO_RUNTIME:-30}
    $FIO --name=migrate --filename="/dev/$_sd" --ioengine=libaio --direct=1 \
        --iodepth=16 --numjobs=2 --rw=randwrite --bs="${FIO_BS:-4k}" \
        --offset="${FIO_OFFSET:-16M}" --size="$_size" --offset_increment="$_size" \
        --time_based --runtime="$_rt" --verify=crc32c --verify_backlog=64 \
        --do_verify=1 --verify_fatal=1 --verify_state_save=0 --group_reporting \
        >/tmp/migrate.fio 2>&1 &
    _fpid=$!
    sleep 2
    if kill -0 "$_fpid" 2>/dev/null; then
        pass "$_p fio running before the migration"
    else
        fail "$_p fio running before the migration" "fio already exited: $(tail -n 5 /tmp/migrate.fio | tr '\n' ' ')"
    fi
    _t0=$(cut -d' ' -f1 /proc/uptime)
    echo "MIGRATE-READY"
    if wait "$_fpid"; then _rc=0; else _rc=$?; fi
    echo "MIGRATE-FIO-DONE $(awk -v a="$_t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }') s after MIGRATE-READY"
    _out=$(cat /tmp/migrate.fio)
    echo "$_out" | grep -E 'err=|write:|read:|verify' | sed 's/^/  fio| /'
    _errs=$(echo "$_out" | grep -o 'err= *[0-9]*' | grep -v 'err= *0$' || true)
    if [ "$_rc" -eq 0 ] && [ -z "$_errs" ] && echo "$_out" | grep -q 'err= *0' \
            && echo "$_out" | grep -q ' read:'; then
        pass "$_p fio randwrite + crc32c verify across the migration (2 jobs x $_size, ${_rt} s)"
    else
        fail "$_p fio randwrite + verify across the migration" "fio exited $_rc; $(echo "$_out" | grep -iE 'error|bad|fail|err=|verify' | head -n 5 | tr '\n' ' ')"
    fi

    # The host types "migrated" once query-migrate said completed.
    echo "MIGRATE-WAIT"
    _got=""
    while read -r -t "${MIG_WAIT:-240}" _line; do
        case "$_line" in *migrated*) _got=1; break ;; esac
    done
    if [ -n "$_got" ]; then
        pass "$_p the host says the migration completed"
    else
        fail "$_p the host's \"migrated\"" "nothing typed within ${MIG_WAIT:-240} s"
    fi

    if [ "${MIG_PR:-1}" = 1 ]; then
        expect_eq "$_p READ KEYS after the migration" "$(pr_keys "$_sg")" "0x$_k"
        expect_eq "$_p READ RESERVATION after the migration" "$(pr_resv "$_sg")" "0x$_k Write Exclusive"
        holder_write "$_p the holder can still write after the migration (same I_T nexus)"
        pr_out "$_p RELEASE" 0 --release --param-rk="$_k" --prout-type=1
        pr_out "$_p CLEAR" 0 --clear --param-rk="$_k"
        expect_eq "$_p no keys after CLEAR" "$(pr_keys "$_sg")" none
        expect_eq "$_p no reservation after CLEAR" "$(pr_resv "$_sg")" none
    fi
    _ua1=$(ua_count)
    echo "MIGRATE-UA before=$_ua0 after=$_ua1"
    if [ "${MIG_SAME_NEXUS:-0}" = 1 ]; then
        expect_eq "$_p no new unit attention on the destination (same I_T nexus)" "$_ua1" "$_ua0"
    fi
    scsi_log_clean "$_p"
}

[ -n "${GUEST_ALL:-}" ] || { run_tests migrate; finish; }
