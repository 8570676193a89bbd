#!/bin/sh
# shellcheck disable=SC2046 # CDB bytes from be32/be64 are split into words on purpose
# sg3_utils checks on every LUN in $LUNS (through its /dev/sgN):
#   INQUIRY (peripheral type disk, vendor/product, optional EXPECT_VENDOR /
#   EXPECT_PRODUCT), VPD pages 0x00 0x80 0x83 0xb0 0xb1 0xb2 (0x80 equal to
#   LUN<n>_SERIAL when given), READ CAPACITY(10)/(16) against LUN<n>_SIZE/_BS,
#   REPORT LUNS lists every LUN in $LUNS, MODE SENSE caching page (WCE agrees
#   with the kernel's cache_type), TEST UNIT READY, SYNCHRONIZE CACHE,
#   REQUEST SENSE (no sense), READ(10) of the last block; error cases checked
#   on the raw sense data (fixed or descriptor format both accepted):
#   unknown opcode 0xc0 -> ILLEGAL REQUEST / 20h, READ(10) and READ(16) at
#   LBA == capacity -> ILLEGAL REQUEST / 21h, WRITE(10) to a read-only LUN ->
#   DATA PROTECT / 27h.
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

# sense_of, expect_sense, be32 and be64 come from lib.sh.

test_sg() {
    for _l in $LUNS; do
        _p="sg: lun $_l"
        if ! _sd=$(disk_for_lun "$_l") || ! _sg=$(sg_for_disk "$_sd"); then
            fail "$_p" "no sd/sg device"
            continue
        fi
        info "$_p is $_sd $_sg"
        _size=$(lunvar "$_l" SIZE)
        _bs=$(lunvar "$_l" BS 512)
        _ro=$(lunvar "$_l" RO 0)
        _serial=$(lunvar "$_l" SERIAL)

        # INQUIRY
        if _out=$(sg_inq "$_sg" 2>&1); then
            _vendor=$(echo "$_out" | sed -n 's/^ *Vendor identification: *//p' | sed 's/ *$//')
            _product=$(echo "$_out" | sed -n 's/^ *Product identification: *//p' | sed 's/ *$//')
            info "$_p inquiry: vendor '$_vendor' product '$_product'"
            if echo "$_out" | grep -q 'Peripheral device type: disk' && [ -n "$_vendor" ] && [ -n "$_product" ]; then
                pass "$_p sg_inq (disk, vendor and product set)"
            else
                fail "$_p sg_inq" "not a disk or empty vendor/product: $(echo "$_out" | tr '\n' ' ')"
            fi
            [ -n "${EXPECT_VENDOR:-}" ] && expect_eq "$_p sg_inq vendor" "$_vendor" "$EXPECT_VENDOR"
            [ -n "${EXPECT_PRODUCT:-}" ] && expect_eq "$_p sg_inq product" "$_product" "$EXPECT_PRODUCT"
        else
            fail "$_p sg_inq" "exited $?: $(echo "$_out" | head -n 3 | tr '\n' ' ')"
        fi

        # VPD pages
        if _out=$(sg_vpd --page=0x00 --hex "$_sg" 2>&1); then
            # hex dump of the page: bytes 4.. are the page codes
            _pages=$(echo "$_out" | awk '/^ *[0-9a-f]+ +[0-9a-f][0-9a-f] / { for (i = 2; i <= NF && i <= 17; i++) if ($i ~ /^[0-9a-f][0-9a-f]$/) printf "%s ", $i }' | cut -d' ' -f5-)
            info "$_p supported VPD pages: $_pages"
            for _pg in 00 80 83 b0 b1 b2; do
                case " $_pages " in
                    *" $_pg "*) check "$_p VPD 0x$_pg listed and readable" sg_vpd --page=0x$_pg "$_sg" ;;
                    *) fail "$_p VPD 0x$_pg" "not in the supported pages list ($_pages)" ;;
                esac
            done
        else
            fail "$_p sg_vpd 0x00" "exited $?: $(echo "$_out" | head -n 3 | tr '\n' ' ')"
        fi
        if [ -n "$_serial" ]; then
            expect_eq "$_p VPD 0x80 serial" "$(sg_vpd --page=0x80 "$_sg" 2>&1 | sed -n 's/^ *Unit serial number: *//p' | sed 's/ *$//')" "$_serial"
        fi
        _out=$(sg_vpd --page=0x83 "$_sg" 2>&1)
        if echo "$_out" | grep -q 'designator type'; then
            pass "$_p VPD 0x83 has a designator"
        else
            fail "$_p VPD 0x83" "no designator: $(echo "$_out" | tr '\n' ' ')"
        fi
        _out=$(sg_vpd --page=0xb0 "$_sg" 2>&1)
        info "$_p block limits: $(echo "$_out" | grep -E 'Maximum transfer length|Optimal transfer length:|Maximum unmap LBA count|Maximum write same' | sed 's/^ *//' | tr '\n' ';')"

        # READ CAPACITY (10) and (16)
        for _rc16 in "" --16; do
            _n="$_p sg_readcap${_rc16:+ $_rc16}"
            if _out=$(sg_readcap $_rc16 "$_sg" 2>&1); then
                _blocks=$(echo "$_out" | sed -n 's/.*Number of logical blocks=\([0-9]*\).*/\1/p')
                _len=$(echo "$_out" | sed -n 's/.*Logical block length=\([0-9]*\) bytes.*/\1/p')
                _last=$(echo "$_out" | sed -n 's/.*Last LBA=\([0-9]*\).*/\1/p')
                expect_eq "$_n block length" "$_len" "$_bs"
                expect_eq "$_n last LBA" "$_last" "$((_blocks - 1))"
                [ -n "$_size" ] && expect_eq "$_n capacity" "$((_blocks * _len))" "$_size"
            else
                fail "$_n" "exited $?: $(echo "$_out" | head -n 3 | tr '\n' ' ')"
            fi
        done
        _blocks=$(($(/usr/sbin/blockdev --getsize64 "/dev/$_sd") / _bs))

        # REPORT LUNS: SPC requires it on LUN 0; other LUNs may answer
        # ILLEGAL REQUEST (QEMU's scsi-hd does) but if they answer, the list
        # must be complete.
        _out=$(sg_luns "$_sg" 2>&1)
        _rc=$?
        if [ "$_rc" -ne 0 ] && [ "$_l" != 0 ] && echo "$_out" | grep -qi 'illegal request'; then
            info "$_p sg_luns: REPORT LUNS rejected on a LUN other than 0 (allowed by SPC): $(echo "$_out" | head -n 1)"
        elif [ "$_rc" -ne 0 ]; then
            fail "$_p sg_luns" "exited $_rc: $(echo "$_out" | head -n 3 | tr '\n' ' ')"
        else
            for _x in $LUNS; do
                _hex=$(printf '00%02x000000000000' "$_x")
                if echo "$_out" | grep -qi "^ *$_hex\$"; then
                    pass "$_p sg_luns lists lun $_x"
                else
                    fail "$_p sg_luns lists lun $_x" "$_hex missing: $(echo "$_out" | tr '\n' ' ')"
                fi
            done
        fi

        # MODE SENSE: header WP bit matches the read-only setting; caching
        # page WCE agrees with the kernel's cache_type (the kernel reports
        # "write through" for write-protected disks whatever WCE says).
        if _out=$(sg_modes --page=0x08 "$_sg" 2>&1) && echo "$_out" | grep -q '>> Caching'; then
            _wp=$(echo "$_out" | sed -n 's/.*WP=\([01]\).*/\1/p' | head -n 1)
            expect_eq "$_p sg_modes header WP bit" "$_wp" "$_ro"
            _b2=$(echo "$_out" | awk '/>> Caching/ { on = 1; next } on && /^ 00 / { print $4; exit }')
            _wce=$(( (0x${_b2:-0} >> 2) & 1 ))
            _ct=$(cat "/sys/class/scsi_disk/$(hctl_of "$_sd")/cache_type" 2>/dev/null)
            info "$_p caching page byte 2 = 0x$_b2 (WCE=$_wce), kernel cache_type '$_ct'"
            case "$_ro:$_wce:$_ct" in
                0:1:"write back"|0:0:"write through"|1:?:"write through")
                    pass "$_p sg_modes caching page, WCE=$_wce agrees with the kernel" ;;
                *) fail "$_p sg_modes caching page" "WCE=$_wce (ro=$_ro) but kernel cache_type '$_ct'" ;;
            esac
        else
            fail "$_p sg_modes caching page" "$(echo "$_out" | head -n 5 | tr '\n' ' ')"
        fi
        check "$_p sg_modes all pages" sg_modes --all "$_sg"

        check "$_p sg_turs" sg_turs "$_sg"
        if [ "$_ro" = 1 ]; then
            info "$_p sg_sync on a read-only LUN: $(sg_sync "$_sg" 2>&1 | tr '\n' ' ') (not checked)"
        else
            check "$_p sg_sync" sg_sync "$_sg"
        fi
        if _out=$(sg_requests "$_sg" 2>&1) && echo "$_out" | grep -q 'No Sense'; then
            pass "$_p sg_requests (no sense)"
        else
            fail "$_p sg_requests" "$(echo "$_out" | tr '\n' ' ')"
        fi

        # Reads at the capacity boundary (CDB bytes are split on purpose).
        check "$_p READ(10) of the last block" sg_raw -r "$_bs" "$_sg" 28 00 $(be32 $((_blocks - 1))) 00 00 01 00
        check "$_p READ(16) of the last block" sg_raw -r "$_bs" "$_sg" 88 00 $(be64 $((_blocks - 1))) 00 00 00 01 00 00

        # Error cases (checked on the raw sense data).
        expect_sense "$_p unknown opcode 0xc0 -> ILLEGAL REQUEST/20h" "5 20" "$_sg" c0 00 00 00 00 00
        expect_sense "$_p READ(10) at LBA=capacity -> ILLEGAL REQUEST/21h" "5 21" -r "$_bs" "$_sg" 28 00 $(be32 "$_blocks") 00 00 01 00
        expect_sense "$_p READ(16) at LBA=capacity -> ILLEGAL REQUEST/21h" "5 21" -r "$_bs" "$_sg" 88 00 $(be64 "$_blocks") 00 00 00 01 00 00
        if [ "$_ro" = 1 ]; then
            dd if=/dev/zero of=/tmp/zero bs="$_bs" count=1 2>/dev/null
            expect_sense "$_p WRITE(10) to a read-only LUN -> DATA PROTECT/27h" "7 27" -s "$_bs" -i /tmp/zero "$_sg" 2a 00 00 00 00 00 00 00 01 00
        fi
    done
}

[ -n "${GUEST_ALL:-}" ] || { run_tests sg; finish; }
