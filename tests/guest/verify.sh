#!/bin/sh
# VERIFY, WRITE AND VERIFY, COMPARE AND WRITE on VERIFY_LUN (default 0,
# 512-byte blocks) in 64 blocks from VERIFY_LBA (default 20480):
#   +0..7    pattern; sg_verify (10)/(16) BYTCHK=0; --ndo/--in (BYTCHK=1)
#            equal -> 0, one byte changed -> MISCOMPARE (exit 14)
#   +8..39   sg_write_same of one block, sg_verify --ebytchk=3 (one block
#            expanded over the range): equal -> 0, another block -> 14
#   +40..43  sg_write_verify (10), +44..47 sg_write_verify --16 --bytchk=1:
#            read back equal
#   +48      sg_compare_and_write: compare = current contents -> 0 and the
#            new block is there; the same again (stale compare buffer) ->
#            MISCOMPARE (exit 14) and the block is unchanged
# and VERIFY beyond the capacity fails (ILLEGAL REQUEST: sg_verify exits 22,
# "LBA out of range", or 5/17).
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

test_verify() {
    _l=${VERIFY_LUN:-0}
    _p="verify: lun $_l"
    lun_devs "$_l" || return
    _s=${VERIFY_LBA:-20480}
    [ "$(lunvar "$_l" BS 512)" = 512 ] || { fail "$_p" "VERIFY_LUN must have 512-byte blocks"; return; }

    # VERIFY of 8 pattern blocks.
    pattern 21 "$_l" $((_s * 512)) 4096 >/tmp/v.pat
    write_blocks "$_sd" "$_s" 512 </tmp/v.pat
    check "$_p sg_verify BYTCHK=0 (medium check)" sg_verify --lba="$_s" --count=8 "$_sg"
    check "$_p sg_verify --16 BYTCHK=0" sg_verify --16 --lba="$_s" --count=8 "$_sg"
    check "$_p sg_verify BYTCHK=1 equal" sg_verify --lba="$_s" --count=8 --ndo=4096 --in=/tmp/v.pat "$_sg"
    check "$_p sg_verify --16 BYTCHK=1 equal" sg_verify --16 --lba="$_s" --count=8 --ndo=4096 --in=/tmp/v.pat "$_sg"
    # One byte changed at offset 3000 (block 5).
    {
        $DD if=/tmp/v.pat bs=1 count=3000 2>/dev/null
        printf 'X'
        $DD if=/tmp/v.pat bs=1 skip=3001 2>/dev/null
    } >/tmp/v.bad
    expect_rc "$_p sg_verify BYTCHK=1 one byte differs -> MISCOMPARE" 14 sg_verify --lba="$_s" --count=8 --ndo=4096 --in=/tmp/v.bad "$_sg"
    expect_rc "$_p sg_verify --16 BYTCHK=1 one byte differs -> MISCOMPARE" 14 sg_verify --16 --lba="$_s" --count=8 --ndo=4096 --in=/tmp/v.bad "$_sg"
    _cap=$(($($BLOCKDEV --getsize64 "/dev/$_sd") / 512))
    _out=$(sg_verify --lba=$((_cap - 4)) --count=8 "$_sg" 2>&1)
    _rc=$?
    case $_rc in
        5 | 17 | 22) pass "$_p sg_verify beyond the capacity -> ILLEGAL REQUEST (exit $_rc)" ;;
        *) fail "$_p sg_verify beyond the capacity" "exit $_rc: $(echo "$_out" | tail -n 3 | tr '\n' ' ')" ;;
    esac

    # BYTCHK=11b: one block compared with every block of the range.
    pattern 22 "$_l" 0 512 >/tmp/v.blk
    check "$_p sg_write_same of one block over 32" sg_write_same --16 --in=/tmp/v.blk --lba=$((_s + 8)) --num=32 "$_sg"
    check "$_p sg_verify BYTCHK=3 equal" sg_verify --ebytchk=3 --ndo=512 --in=/tmp/v.blk --lba=$((_s + 8)) --count=32 "$_sg"
    expect_rc "$_p sg_verify BYTCHK=3 another block -> MISCOMPARE" 14 sg_verify --ebytchk=3 --ndo=512 --in=/tmp/v.pat --lba=$((_s + 8)) --count=32 "$_sg"

    # WRITE AND VERIFY (10) and (16).
    pattern 23 "$_l" $(((_s + 40) * 512)) 2048 >/tmp/v.wv
    check "$_p sg_write_verify (10) 4 blocks" sg_write_verify --lba=$((_s + 40)) --num=4 --in=/tmp/v.wv "$_sg"
    read_blocks "$_sd" $((_s + 40)) 4 512 >/tmp/v.got
    same_file "$_p WRITE AND VERIFY(10) data on the disk" /tmp/v.got /tmp/v.wv
    pattern 24 "$_l" $(((_s + 44) * 512)) 2048 >/tmp/v.wv
    check "$_p sg_write_verify --16 --bytchk=1 4 blocks" sg_write_verify --16 --bytchk=1 --lba=$((_s + 44)) --num=4 --in=/tmp/v.wv "$_sg"
    read_blocks "$_sd" $((_s + 44)) 4 512 >/tmp/v.got
    same_file "$_p WRITE AND VERIFY(16) data on the disk" /tmp/v.got /tmp/v.wv

    # COMPARE AND WRITE: success, then a miscompare that writes nothing.
    _c=$((_s + 48))
    pattern 25 "$_l" $((_c * 512)) 512 >/tmp/v.old
    pattern 26 "$_l" $((_c * 512)) 512 >/tmp/v.new
    write_blocks "$_sd" "$_c" 512 </tmp/v.old
    check "$_p sg_compare_and_write compare=current -> written" sg_compare_and_write --lba="$_c" --num=1 --in=/tmp/v.old --inw=/tmp/v.new "$_sg"
    read_blocks "$_sd" "$_c" 1 512 >/tmp/v.got
    same_file "$_p COMPARE AND WRITE wrote the new block" /tmp/v.got /tmp/v.new
    pattern 27 "$_l" $((_c * 512)) 512 >/tmp/v.other
    expect_rc "$_p sg_compare_and_write stale compare -> MISCOMPARE" 14 sg_compare_and_write --lba="$_c" --num=1 --in=/tmp/v.old --inw=/tmp/v.other "$_sg"
    read_blocks "$_sd" "$_c" 1 512 >/tmp/v.got
    same_file "$_p block unchanged after the miscompare" /tmp/v.got /tmp/v.new
    cat /tmp/v.new /tmp/v.other >/tmp/v.both
    check "$_p sg_compare_and_write one 1024-byte buffer (--in only)" sg_compare_and_write --lba="$_c" --num=1 --in=/tmp/v.both "$_sg"
    read_blocks "$_sd" "$_c" 1 512 >/tmp/v.got
    same_file "$_p COMPARE AND WRITE (--in only) wrote the second half" /tmp/v.got /tmp/v.other
}

[ -n "${GUEST_ALL:-}" ] || { run_tests verify; finish; }
