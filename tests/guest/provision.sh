#!/bin/sh
# shellcheck disable=SC2046 # CDB bytes from be32/be64 are split into words on purpose
# Thin provisioning (LBPU/LBPWS/LBPRZ, UNMAP, WRITE SAME, GET LBA STATUS).
# On every LUN in $LUNS: the kernel's discard limits (discard_max_bytes > 0
# and provisioning_mode "unmap" on writable LUNs; a read-only LUN may
# advertise discard too, the block layer refuses it), VPD B2h LBPU=LBPWS=
# LBPWS10=LBPRZ=1 thin, READ CAPACITY(16) LBPME=1 LBPRZ=1.
# On PROV_LUN (default 0), in PROV_BLOCKS (256) blocks from PROV_LBA
# (default 16384; block size 512 assumed for the offsets below):
#   +0..255 written with a pattern, then
#   +64..127   sg_unmap                         -> zeros, deallocated
#   +128..159  sg_write_same --10 --in=BLOCK    -> BLOCK repeated
#   +160..191  sg_write_same --16 --in=BLOCK2   -> BLOCK2 repeated
#   +192..223  sg_write_same --16 --unmap       -> zeros, deallocated
#   +224..239  sg_write_same --10 --unmap       -> zeros, deallocated
#   +240..255  sg_write_same --16 --ndob        -> zeros
#   +0..63     stays the pattern, mapped
#   +256..511  written, then blkdiscard (the kernel's own UNMAP) -> deallocated
# GET LBA STATUS (sg_get_lba_status) reports mapped / deallocated extents;
# sg_unmap / sg_write_same on the read-only LUN fail with DATA PROTECT.
# The host (tests/guest_e2e.rs) checks that the unmapped ranges are holes in
# the backing file.
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

# lba_status SG LBA: "LBA BLOCKS P_STATUS" (decimal) of the first GET LBA
# STATUS descriptor from LBA (p_status 0 mapped, 1 deallocated, 2 anchored).
lba_status() {
    sg_get_lba_status --brief --lba="$2" "$1" 2>&1 | awk '
        /^0x[0-9a-fA-F]+ +0x[0-9a-fA-F]+ +[0-9]+/ { print $1, $2, $3; exit }' |
        while read -r _a _b _c; do printf '%d %d %d\n' "$_a" "$_b" "$_c"; done
}

# expect_lba_status NAME SG LBA MIN_BLOCKS P_STATUS: the first descriptor
# starts at LBA, covers at least MIN_BLOCKS blocks and has P_STATUS.
expect_lba_status() {
    _got=$(lba_status "$2" "$3")
    # shellcheck disable=SC2086 # three words
    set -- "$1" "$2" "$3" "$4" "$5" $_got
    if [ "$#" -eq 8 ] && [ "$6" = "$3" ] && [ "$7" -ge "$4" ] && [ "$8" = "$5" ]; then
        pass "$1 (lba $6 blocks $7 status $8)"
    else
        fail "$1" "first descriptor '$6 $7 $8', expected lba $3, >= $4 blocks, status $5; $(sg_get_lba_status --lba="$3" "$2" 2>&1 | head -n 4 | tr '\n' ' ')"
    fi
}

test_provision() {
    for _l in $LUNS; do
        _p="provision: lun $_l"
        lun_devs "$_l" || continue
        _ro=$(lunvar "$_l" RO 0)
        _dmax=$(cat "/sys/block/$_sd/queue/discard_max_bytes")
        _mode=$(cat /sys/block/"$_sd"/device/scsi_disk/*/provisioning_mode 2>/dev/null)
        info "$_p $_sd: discard_max_bytes=$_dmax discard_granularity=$(cat "/sys/block/$_sd/queue/discard_granularity") write_zeroes_max_bytes=$(cat "/sys/block/$_sd/queue/write_zeroes_max_bytes") provisioning_mode=$_mode"
        if [ "$_ro" = 1 ]; then
            info "$_p read-only: Linux keeps the discard limits of a write-protected disk; opening it for writing (blkdiscard) fails"
        else
            if [ "${_dmax:-0}" -gt 0 ]; then pass "$_p discard_max_bytes > 0 ($_dmax)"; else fail "$_p discard_max_bytes" "'$_dmax'"; fi
            expect_eq "$_p provisioning_mode" "$_mode" unmap
        fi
        _out=$(sg_vpd --page=lbpv "$_sg" 2>&1)
        for _f in LBPU LBPWS LBPWS10 LBPRZ; do
            expect_eq "$_p VPD B2h $_f" "$(echo "$_out" | sed -n "s/.*($_f): *\([0-9]*\).*/\1/p")" 1
        done
        expect_eq "$_p VPD B2h provisioning type" "$(echo "$_out" | sed -n 's/.*Provisioning type: *\([0-9]*\).*/\1/p')" 2
        _out=$(sg_readcap --16 "$_sg" 2>&1)
        expect_eq "$_p READ CAPACITY(16) lbpme" "$(echo "$_out" | sed -n 's/.*lbpme=\([0-9]*\).*/\1/p')" 1
        expect_eq "$_p READ CAPACITY(16) lbprz" "$(echo "$_out" | sed -n 's/.*lbprz=\([0-9]*\).*/\1/p')" 1
        if [ "$_ro" = 1 ]; then
            expect_rc "$_p sg_unmap on a read-only LUN -> DATA PROTECT" 7 sg_unmap --force --lba=0 --num=8 "$_sg"
            expect_rc "$_p sg_write_same --unmap on a read-only LUN -> DATA PROTECT" 7 sg_write_same --16 --unmap --lba=0 --num=8 "$_sg"
        fi
    done

    _l=${PROV_LUN:-0}
    _p="provision: lun $_l"
    lun_devs "$_l" || return
    _s=${PROV_LBA:-16384}
    _bs=$(lunvar "$_l" BS 512)
    [ "$_bs" = 512 ] || { fail "$_p" "PROV_LUN must have 512-byte blocks"; return; }

    # Pattern over the whole scratch range: mapped.
    pattern 11 "$_l" $((_s * 512)) $((256 * 512)) >/tmp/prov.pat
    write_blocks "$_sd" "$_s" 512 </tmp/prov.pat
    read_blocks "$_sd" "$_s" 256 512 >/tmp/prov.got
    same_file "$_p pattern written over lba $_s+256" /tmp/prov.got /tmp/prov.pat
    expect_lba_status "$_p GET LBA STATUS of written blocks: mapped" "$_sg" "$_s" 256 0

    # UNMAP 64 blocks: zeros (LBPRZ), deallocated, the neighbours untouched.
    check "$_p sg_unmap lba $((_s + 64)) num 64" sg_unmap --force --lba=$((_s + 64)) --num=64 "$_sg"
    zeros $((64 * 512)) >/tmp/prov.z64
    read_blocks "$_sd" $((_s + 64)) 64 512 >/tmp/prov.got
    same_file "$_p unmapped blocks read back as zeros" /tmp/prov.got /tmp/prov.z64
    read_blocks "$_sd" "$_s" 64 512 >/tmp/prov.got
    $DD if=/tmp/prov.pat bs=512 count=64 2>/dev/null >/tmp/prov.want
    same_file "$_p blocks before the unmapped range unchanged" /tmp/prov.got /tmp/prov.want
    read_blocks "$_sd" $((_s + 128)) 128 512 >/tmp/prov.got
    $DD if=/tmp/prov.pat bs=512 skip=128 count=128 2>/dev/null >/tmp/prov.want
    same_file "$_p blocks after the unmapped range unchanged" /tmp/prov.got /tmp/prov.want
    expect_lba_status "$_p GET LBA STATUS of unmapped blocks: deallocated" "$_sg" $((_s + 64)) 64 1
    _st=$(lba_status "$_sg" "$_s")
    expect_eq "$_p GET LBA STATUS: the written blocks before it stay mapped, 64 blocks" "$_st" "$_s 64 0"

    # WRITE SAME(10) and (16) with a data block.
    pattern 12 "$_l" 0 512 >/tmp/prov.blk
    pattern 13 "$_l" 0 512 >/tmp/prov.blk2
    check "$_p sg_write_same --10 --in=BLOCK lba $((_s + 128)) num 32" sg_write_same --10 --in=/tmp/prov.blk --lba=$((_s + 128)) --num=32 "$_sg"
    repeat /tmp/prov.blk 32 >/tmp/prov.want
    read_blocks "$_sd" $((_s + 128)) 32 512 >/tmp/prov.got
    same_file "$_p WRITE SAME(10) wrote the block 32 times" /tmp/prov.got /tmp/prov.want
    check "$_p sg_write_same --16 --in=BLOCK2 lba $((_s + 160)) num 32" sg_write_same --16 --in=/tmp/prov.blk2 --lba=$((_s + 160)) --num=32 "$_sg"
    repeat /tmp/prov.blk2 32 >/tmp/prov.want
    read_blocks "$_sd" $((_s + 160)) 32 512 >/tmp/prov.got
    same_file "$_p WRITE SAME(16) wrote the block 32 times" /tmp/prov.got /tmp/prov.want

    # WRITE SAME with UNMAP (zeros): zeros, deallocated.
    zeros $((32 * 512)) >/tmp/prov.z32
    check "$_p sg_write_same --16 --unmap lba $((_s + 192)) num 32" sg_write_same --16 --unmap --lba=$((_s + 192)) --num=32 "$_sg"
    read_blocks "$_sd" $((_s + 192)) 32 512 >/tmp/prov.got
    same_file "$_p WRITE SAME(16) UNMAP reads back zeros" /tmp/prov.got /tmp/prov.z32
    expect_lba_status "$_p GET LBA STATUS after WRITE SAME(16) UNMAP: deallocated" "$_sg" $((_s + 192)) 32 1
    check "$_p sg_write_same --10 --unmap lba $((_s + 224)) num 16" sg_write_same --10 --unmap --lba=$((_s + 224)) --num=16 "$_sg"
    zeros $((16 * 512)) >/tmp/prov.z16
    read_blocks "$_sd" $((_s + 224)) 16 512 >/tmp/prov.got
    same_file "$_p WRITE SAME(10) UNMAP reads back zeros" /tmp/prov.got /tmp/prov.z16
    expect_lba_status "$_p GET LBA STATUS after WRITE SAME(10) UNMAP: deallocated" "$_sg" $((_s + 224)) 16 1
    # NDOB: no data-out buffer, zeros.
    check "$_p sg_write_same --16 --ndob lba $((_s + 240)) num 16" sg_write_same --16 --ndob --lba=$((_s + 240)) --num=16 "$_sg"
    read_blocks "$_sd" $((_s + 240)) 16 512 >/tmp/prov.got
    same_file "$_p WRITE SAME(16) NDOB reads back zeros" /tmp/prov.got /tmp/prov.z16
    _st=$(lba_status "$_sg" $((_s + 128)))
    expect_eq "$_p GET LBA STATUS: WRITE SAME data blocks mapped" "$_st" "$((_s + 128)) 64 0"

    # blkdiscard through the block layer (the kernel's own UNMAP).
    write_blocks "$_sd" $((_s + 256)) 512 </tmp/prov.pat
    expect_lba_status "$_p GET LBA STATUS before blkdiscard: mapped" "$_sg" $((_s + 256)) 256 0
    check "$_p blkdiscard of lba $((_s + 256))+256" /usr/sbin/blkdiscard -o $(((_s + 256) * 512)) -l $((256 * 512)) "/dev/$_sd"
    expect_lba_status "$_p GET LBA STATUS after blkdiscard: deallocated" "$_sg" $((_s + 256)) 256 1
    echo "PROV-DONE lun=$_l lba=$_s"
}

[ -n "${GUEST_ALL:-}" ] || { run_tests provision; finish; }
