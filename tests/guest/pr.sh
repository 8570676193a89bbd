#!/bin/sh
# Persistent reservations with sg_persist on PR_LUN (default 0). Every
# controller is one I_T nexus, so all commands come from the same
# initiator. PR_STEPS (default "basic") says what to run:
#   basic     no keys at first; REGISTER; READ KEYS; RESERVE Write Exclusive;
#             READ RESERVATION (key, type); a write by the holder works;
#             RESERVE with a wrong key -> RESERVATION CONFLICT (exit 24);
#             RELEASE with another type -> ILLEGAL REQUEST (exit 5);
#             legacy RESERVE(6) while registered -> RESERVATION CONFLICT;
#             RELEASE; REGISTER AND IGNORE EXISTING KEY replaces the key;
#             RESERVE Exclusive Access, PREEMPT our own reservation
#             (--param-sark = our key) into Write Exclusive; READ FULL
#             STATUS (the nexus's iSCSI-style TransportID); REPORT
#             CAPABILITIES (PTPL_C=1 when PR_PTPL_C=1); CLEAR -> no keys, no
#             reservation; RESERVE(6)/RELEASE(6) without registrations.
#   aptpl     REGISTER key PR_APTPL_KEY (default a1b2c3) with APTPL, RESERVE
#             Write Exclusive; left in place for the next daemon run.
#   restored  (after a daemon restart with the same --pr-state) READ KEYS
#             and READ RESERVATION show PR_APTPL_KEY and Write Exclusive,
#             PTPL_A=1; a write by the holder works; RELEASE, CLEAR ->
#             nothing left.
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

# pr_keys SG: the registered keys, one per line ("0x..."), or "none".
pr_keys() {
    _o=$(sg_persist --no-inquiry --in --read-keys "$1" 2>&1) || { echo "error: $_o"; return; }
    if echo "$_o" | grep -q 'NO registered'; then echo none; else echo "$_o" | sed -n 's/^ *\(0x[0-9a-f]*\) *$/\1/p'; fi
}

# pr_resv SG: "KEY TYPE" of the reservation, or "none".
pr_resv() {
    _o=$(sg_persist --no-inquiry --in --read-reservation "$1" 2>&1) || { echo "error: $_o"; return; }
    if echo "$_o" | grep -q 'NO reservation'; then
        echo none
    else
        echo "$(echo "$_o" | sed -n 's/^ *Key=\(0x[0-9a-f]*\).*/\1/p') $(echo "$_o" | sed -n 's/.*type: *//p')"
    fi
}

# pr_out NAME EXPECTED-EXIT sg_persist-out-args...
pr_out() {
    _n=$1
    _w=$2
    shift 2
    expect_rc "$_n" "$_w" sg_persist --no-inquiry --out "$@" "$_sg"
}

# holder_write NAME: an O_DIRECT write + read back at PR_LBA.
holder_write() {
    pattern 41 "$_l" 0 4096 >/tmp/pr.pat
    write_blocks "$_sd" "${PR_LBA:-24576}" 512 </tmp/pr.pat
    read_blocks "$_sd" "${PR_LBA:-24576}" 8 512 >/tmp/pr.got
    same_file "$1" /tmp/pr.got /tmp/pr.pat
}

pr_basic() {
    expect_eq "$_p no keys at first" "$(pr_keys "$_sg")" none
    expect_eq "$_p no reservation at first" "$(pr_resv "$_sg")" none
    pr_out "$_p REGISTER 0x123abc" 0 --register --param-sark=123abc
    expect_eq "$_p READ KEYS" "$(pr_keys "$_sg")" 0x123abc
    pr_out "$_p RESERVE Write Exclusive" 0 --reserve --param-rk=123abc --prout-type=1
    expect_eq "$_p READ RESERVATION" "$(pr_resv "$_sg")" "0x123abc Write Exclusive"
    holder_write "$_p the holder can write"
    pr_out "$_p RESERVE with a wrong key -> RESERVATION CONFLICT" 24 --reserve --param-rk=999 --prout-type=1
    pr_out "$_p RELEASE with another type -> ILLEGAL REQUEST" 5 --release --param-rk=123abc --prout-type=3
    expect_eq "$_p still reserved" "$(pr_resv "$_sg")" "0x123abc Write Exclusive"
    _out=$(sg_raw -v "$_sg" 16 00 00 00 00 00 2>&1)
    if echo "$_out" | grep -qi 'reservation conflict'; then
        pass "$_p RESERVE(6) while registered -> RESERVATION CONFLICT"
    else
        fail "$_p RESERVE(6) while registered" "$(echo "$_out" | grep -i status | tr '\n' ' ')"
    fi
    pr_out "$_p RELEASE" 0 --release --param-rk=123abc --prout-type=1
    expect_eq "$_p no reservation after RELEASE" "$(pr_resv "$_sg")" none
    expect_eq "$_p key kept after RELEASE" "$(pr_keys "$_sg")" 0x123abc
    pr_out "$_p REGISTER AND IGNORE EXISTING KEY 0x456def" 0 --register-ignore --param-sark=456def
    expect_eq "$_p READ KEYS after REGISTER AND IGNORE" "$(pr_keys "$_sg")" 0x456def
    pr_out "$_p RESERVE Exclusive Access" 0 --reserve --param-rk=456def --prout-type=3
    expect_eq "$_p READ RESERVATION Exclusive Access" "$(pr_resv "$_sg")" "0x456def Exclusive Access"
    pr_out "$_p PREEMPT own reservation into Write Exclusive" 0 --preempt --param-rk=456def --param-sark=456def --prout-type=1
    expect_eq "$_p READ RESERVATION after PREEMPT" "$(pr_resv "$_sg")" "0x456def Write Exclusive"
    expect_eq "$_p key kept after PREEMPT" "$(pr_keys "$_sg")" 0x456def
    _out=$(sg_persist --no-inquiry --in --read-full-status "$_sg" 2>&1)
    if echo "$_out" | grep -q 'vhost-user-scsi:nexus-' && echo "$_out" | grep -q 'Key=0x456def'; then
        pass "$_p READ FULL STATUS: key and TransportID ($(echo "$_out" | grep -o 'iqn[^ ]*' | head -n 1))"
    else
        fail "$_p READ FULL STATUS" "$(echo "$_out" | tr '\n' ';')"
    fi
    _out=$(sg_persist --no-inquiry --in --report-capabilities "$_sg" 2>&1)
    expect_eq "$_p REPORT CAPABILITIES PTPL_C" "$(echo "$_out" | sed -n 's/.*(PTPL_C): *//p')" "${PR_PTPL_C:-1}"
    pr_out "$_p CLEAR with a wrong key -> RESERVATION CONFLICT" 24 --clear --param-rk=123abc
    pr_out "$_p CLEAR" 0 --clear --param-rk=456def
    expect_eq "$_p no keys after CLEAR" "$(pr_keys "$_sg")" none
    expect_eq "$_p no reservation after CLEAR" "$(pr_resv "$_sg")" none
    check "$_p RESERVE(6) without registrations" sg_raw "$_sg" 16 00 00 00 00 00
    holder_write "$_p the RESERVE(6) holder can write"
    check "$_p RELEASE(6)" sg_raw "$_sg" 17 00 00 00 00 00
    check "$_p RESERVE(10)" sg_raw "$_sg" 56 00 00 00 00 00 00 00 00 00
    check "$_p RELEASE(10)" sg_raw "$_sg" 57 00 00 00 00 00 00 00 00 00
}

pr_aptpl() {
    _k=${PR_APTPL_KEY:-a1b2c3}
    pr_out "$_p REGISTER 0x$_k with APTPL" 0 --register --param-sark="$_k" --param-aptpl
    pr_out "$_p RESERVE Write Exclusive" 0 --reserve --param-rk="$_k" --prout-type=1
    expect_eq "$_p READ RESERVATION" "$(pr_resv "$_sg")" "0x$_k Write Exclusive"
    _out=$(sg_persist --no-inquiry --in --report-capabilities "$_sg" 2>&1)
    expect_eq "$_p REPORT CAPABILITIES PTPL_A" "$(echo "$_out" | sed -n 's/.*(PTPL_A): *//p')" 1
    echo "PR-APTPL lun=$_l key=0x$_k"
}

pr_restored() {
    _k=${PR_APTPL_KEY:-a1b2c3}
    expect_eq "$_p READ KEYS after the daemon restart" "$(pr_keys "$_sg")" "0x$_k"
    expect_eq "$_p READ RESERVATION after the daemon restart" "$(pr_resv "$_sg")" "0x$_k Write Exclusive"
    _out=$(sg_persist --no-inquiry --in --report-capabilities "$_sg" 2>&1)
    expect_eq "$_p REPORT CAPABILITIES PTPL_A after the restart" "$(echo "$_out" | sed -n 's/.*(PTPL_A): *//p')" 1
    holder_write "$_p the holder (same controller) can still write"
    pr_out "$_p RELEASE" 0 --release --param-rk="$_k" --prout-type=1
    pr_out "$_p CLEAR" 0 --clear --param-rk="$_k"
    expect_eq "$_p no keys after CLEAR" "$(pr_keys "$_sg")" none
    expect_eq "$_p no reservation after CLEAR" "$(pr_resv "$_sg")" none
}

test_pr() {
    _l=${PR_LUN:-0}
    lun_devs "$_l" || return
    for _step in ${PR_STEPS:-basic}; do
        _p="pr $_step: lun $_l"
        "pr_$_step"
    done
}

[ -n "${GUEST_ALL:-}" ] || { run_tests pr; finish; }
