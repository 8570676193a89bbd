#!/bin/sh
# shellcheck disable=SC2046 # CDB bytes from be32/be64 are split into words on purpose
# Malformed CDBs and parameter lists through sg_raw on BADCDB_LUN (default
# 0), checked on the sense data (sense key, ASC):
#   UNMAP with PARAMETER LIST LENGTH 4 (< the 8-byte header) -> 5/1Ah
#   WRITE SAME(10) and (16) with a reserved CDB bit set      -> 5/24h
#   COMPARE AND WRITE with NUMBER OF LOGICAL BLOCKS 2        -> 5/24h
#   PERSISTENT RESERVE OUT service action 1Fh (unknown) and 07h (REGISTER
#   AND MOVE, not supported)                                 -> 5/24h
#   READ(16) whose LBA + length overflows 64 bits            -> 5/21h
#   VERIFY(10) BYTCHK=10b                                    -> 5/24h
#   GET LBA STATUS with REPORT TYPE 1                        -> 5/24h
#   PERSISTENT RESERVE OUT REGISTER with a 16-byte list      -> 5/1Ah
# and that the LUN still answers TEST UNIT READY afterwards.
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

test_badcdb() {
    _l=${BADCDB_LUN:-0}
    _p="badcdb: lun $_l"
    lun_devs "$_l" || return
    _lba=${BADCDB_LBA:-23552}
    zeros 4096 >/tmp/bad.z
    expect_sense "$_p UNMAP parameter list length 4 -> 1Ah" "5 1a" -s 4 -i /tmp/bad.z "$_sg" 42 00 00 00 00 00 00 00 04 00
    expect_sense "$_p WRITE SAME(10) reserved bit (byte 6 bit 7) -> 24h" "5 24" -s 512 -i /tmp/bad.z "$_sg" 41 00 $(be32 "$_lba") 80 00 01 00
    expect_sense "$_p WRITE SAME(16) reserved bit (byte 14 bit 7) -> 24h" "5 24" -s 512 -i /tmp/bad.z "$_sg" 93 00 $(be64 "$_lba") 00 00 00 01 80 00
    expect_sense "$_p COMPARE AND WRITE of 2 blocks -> 24h" "5 24" -s 2048 -i /tmp/bad.z "$_sg" 89 00 $(be64 "$_lba") 00 00 00 02 00 00
    expect_sense "$_p PERSISTENT RESERVE OUT service action 1Fh -> 24h" "5 24" -s 24 -i /tmp/bad.z "$_sg" 5f 1f 00 00 00 00 00 00 18 00
    expect_sense "$_p PERSISTENT RESERVE OUT REGISTER AND MOVE -> 24h" "5 24" -s 24 -i /tmp/bad.z "$_sg" 5f 07 00 00 00 00 00 00 18 00
    expect_sense "$_p PERSISTENT RESERVE OUT REGISTER, 16-byte list -> 1Ah" "5 1a" -s 16 -i /tmp/bad.z "$_sg" 5f 00 00 00 00 00 00 00 10 00
    expect_sense "$_p READ(16) LBA+length overflows -> 21h" "5 21" -r 1024 "$_sg" 88 00 ff ff ff ff ff ff ff ff 00 00 00 02 00 00
    expect_sense "$_p VERIFY(10) BYTCHK=10b -> 24h" "5 24" "$_sg" 2f 04 $(be32 "$_lba") 00 00 01 00
    expect_sense "$_p GET LBA STATUS REPORT TYPE 1 -> 24h" "5 24" -r 32 "$_sg" 9e 12 $(be64 "$_lba") 00 00 00 20 01 00
    check "$_p TEST UNIT READY afterwards" sg_turs "$_sg"
}

[ -n "${GUEST_ALL:-}" ] || { run_tests badcdb; finish; }
