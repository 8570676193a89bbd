#!/bin/sh
# shellcheck disable=SC2086 # "set -- $_c" splits a table row into words on purpose
# REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS (sg_opcodes)
# on OPCODES_LUN (default 0): the full list names every command of
# docs/scsi.md that the checks below pick (READ(16), WRITE(16), UNMAP, WRITE
# SAME(10)/(16), VERIFY, WRITE AND VERIFY, COMPARE AND WRITE, GET LBA
# STATUS, MODE SELECT, PERSISTENT RESERVE IN/OUT with their service
# actions, ...); --tmf lists the seven TMFs; single-command queries (-o):
# supported with a CDB usage map of the right length and opcode for 0x89,
# 0x93, 0x42, 0x9e/0x12, 0x5f/0x06; "not supported" for opcode 0xc0 and PR
# OUT REGISTER AND MOVE (0x5f/0x07).
# shellcheck source=lib.sh
[ -n "${GUEST_ALL:-}" ] || . /guest/lib.sh

test_opcodes() {
    _l=${OPCODES_LUN:-0}
    _p="opcodes: lun $_l"
    lun_devs "$_l" || return
    if ! _all=$(sg_opcodes "$_sg" 2>&1); then
        fail "$_p sg_opcodes" "$(echo "$_all" | head -n 3 | tr '\n' ' ')"
        return
    fi
    info "$_p sg_opcodes lists $(echo "$_all" | grep -cE '^ [0-9a-f]{2} ') commands"
    # "OP SA CDB-SIZE" as printed: opcode, service action (or -), CDB size.
    for _c in "00 - 6" "03 - 6" "12 - 6" "15 - 6" "16 - 6" "17 - 6" "1a - 6" \
        "25 - 10" "28 - 10" "2a - 10" "2e - 10" "2f - 10" "35 - 10" "41 - 10" \
        "42 - 10" "55 - 10" "56 - 10" "57 - 10" "5a - 10" \
        "5e 0 10" "5e 1 10" "5e 2 10" "5e 3 10" \
        "5f 0 10" "5f 1 10" "5f 2 10" "5f 3 10" "5f 4 10" "5f 5 10" "5f 6 10" \
        "88 - 16" "89 - 16" "8a - 16" "8e - 16" "8f - 16" "91 - 16" "93 - 16" \
        "9e 10 16" "9e 12 16" "a0 - 12" "a3 c 12" "a3 d 12"; do
        set -- $_c
        if [ "$2" = - ]; then
            _re="^ $1 +$3 "
        else
            _re="^ $1 +$2 +$3 "
        fi
        _line=$(echo "$_all" | grep -E "$_re" | head -n 1)
        if [ -n "$_line" ]; then
            pass "$_p lists $(echo "$_line" | sed 's/.*[0-9],[0-9] *//')"
        else
            fail "$_p lists opcode $1 sa $2" "no line matching '$_re'"
        fi
    done
    if echo "$_all" | grep -qE '^ 5f +7 '; then
        fail "$_p REGISTER AND MOVE not listed" "listed"
    else
        pass "$_p REGISTER AND MOVE (5f/7) not listed"
    fi

    _out=$(sg_opcodes --tmf "$_sg" 2>&1)
    for _tmf in "Abort task" "Abort task set" "Clear task set" "Logical unit reset" \
        "Query task" "Query task set" "I_T nexus reset"; do
        if echo "$_out" | grep -qx " *$_tmf"; then
            pass "$_p sg_opcodes --tmf lists $_tmf"
        else
            fail "$_p sg_opcodes --tmf lists $_tmf" "$(echo "$_out" | tr '\n' ';')"
        fi
    done

    # Single-command queries: supported, usage data = CDB length, opcode first.
    for _q in "0x89 - 16" "0x93 - 16" "0x42 - 10" "0x9e 0x12 16" "0x5f 0x06 10" "0x2f - 10"; do
        set -- $_q
        if [ "$2" = - ]; then
            _out=$(sg_opcodes --opcode="$1" "$_sg" 2>&1)
        else
            _out=$(sg_opcodes --opcode="$1" --sa="$2" "$_sg" 2>&1)
        fi
        _usage=$(echo "$_out" | sed -n 's/.*Usage data: *//p')
        _n=$(echo "$_usage" | wc -w)
        _first=$(echo "$_usage" | cut -d' ' -f1)
        if echo "$_out" | grep -q 'Command is supported' && [ "$_n" = "$3" ] && [ "0x$_first" = "$1" ]; then
            pass "$_p sg_opcodes -o $1${2#-} supported, usage data '$_usage'"
        else
            fail "$_p sg_opcodes -o $1 $2" "$(echo "$_out" | tr '\n' ';')"
        fi
    done
    for _q in "0xc0 -" "0x5f 0x07"; do
        set -- $_q
        if [ "$2" = - ]; then
            _out=$(sg_opcodes --opcode="$1" "$_sg" 2>&1)
        else
            _out=$(sg_opcodes --opcode="$1" --sa="$2" "$_sg" 2>&1)
        fi
        if echo "$_out" | grep -qi 'not supported'; then
            pass "$_p sg_opcodes -o $1 ${2#-}: not supported"
        else
            fail "$_p sg_opcodes -o $1 ${2#-}" "$(echo "$_out" | tr '\n' ';')"
        fi
    done
}

[ -n "${GUEST_ALL:-}" ] || { run_tests opcodes; finish; }
