#!/bin/sh
# O_DIRECT dd: write a deterministic pattern at given offsets, read it back.
#   DD_SEED=N                     pattern seed (default 1)
#   DD_WRITES="LUN:OFFSET:LEN ..." byte offsets/lengths, block aligned, LEN % 64 == 0
#   DD_MODE=write|verify          write+read back (default) or only read back
#                                 (data written by an earlier boot)
#   DD_VERIFY="LUN:OFFSET:LEN ..." regions only read back, whatever DD_MODE
#                                 (e.g. written by the host before the boot)
# Prints "DD-PATTERN lun=L off=O len=N sha256=H" for each region so the host can
# compare with its backing file. Also: O_DIRECT I/O smaller than the logical
# block size must fail (EINVAL) on a 4096-byte-block disk.
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

test_dd() {
    _seed=${DD_SEED:-1}
    for _w in ${DD_WRITES:-} ${DD_VERIFY:-}; do
        _mode=${DD_MODE:-write}
        case " ${DD_VERIFY:-} " in *" $_w "*) _mode=verify ;; esac
        _l=${_w%%:*}
        _rest=${_w#*:}
        _off=${_rest%%:*}
        _len=${_rest#*:}
        _name="dd: lun $_l off $_off len $_len"
        if ! _sd=$(disk_for_lun "$_l"); then fail "$_name" "no disk for lun $_l"; continue; fi
        _bs=$(lunvar "$_l" BS 512)
        pattern "$_seed" "$_l" "$_off" "$_len" >/tmp/pat
        _sum=$(sha256sum </tmp/pat | cut -d' ' -f1)
        echo "DD-PATTERN lun=$_l off=$_off len=$_len sha256=$_sum"
        if [ "$_mode" = write ]; then
            if ! _out=$($DD if=/tmp/pat of="/dev/$_sd" bs="$_len" count=1 seek="$_off" \
                    oflag=direct,seek_bytes conv=notrunc,fsync 2>&1); then
                fail "$_name write" "$(echo "$_out" | head -n 2 | tr '\n' ' ')"
                continue
            fi
        fi
        rm -f /tmp/rb
        if ! _out=$($DD if="/dev/$_sd" of=/tmp/rb bs="$_len" count=1 skip="$_off" \
                iflag=direct,skip_bytes 2>&1); then
            fail "$_name read" "$(echo "$_out" | head -n 2 | tr '\n' ' ')"
            continue
        fi
        if cmp -s /tmp/pat /tmp/rb; then
            pass "$_name ($_mode) read back equal"
        else
            fail "$_name ($_mode)" "read back differs: $(cmp /tmp/pat /tmp/rb 2>&1 | head -n1); got: $(head -c 64 /tmp/rb | od -An -c | head -n 2 | tr -s ' \n' ' ')"
        fi
        # Sub-block O_DIRECT must be rejected by the kernel on 4K disks.
        if [ "$_bs" -gt 512 ] && [ "$_mode" = write ]; then
            if $DD if="/dev/$_sd" of=/dev/null bs=512 count=1 skip="$_off" iflag=direct,skip_bytes >/dev/null 2>&1; then
                fail "dd: lun $_l 512-byte O_DIRECT read on a $_bs-byte disk is rejected" "it succeeded"
            else
                pass "dd: lun $_l 512-byte O_DIRECT read on a $_bs-byte disk is rejected"
            fi
        fi
    done
    [ -n "${DD_WRITES:-}${DD_VERIFY:-}" ] || info "dd: DD_WRITES and DD_VERIFY empty, nothing to do"
}

[ -n "${GUEST_ALL:-}" ] || { run_tests dd; finish; }
