#!/bin/sh
# Entry point: runs the tests named in $TESTS (default: all of them) in one boot.
#   scripts/run-guest.sh --script tests/guest/all.sh --env TESTS="disks sg" ...
# shellcheck source=lib.sh
. /guest/lib.sh
# shellcheck disable=SC2034 # read by the sourced test files
GUEST_ALL=1
: "${TESTS:=disks dd fio ext4 sg}"
for _f in $TESTS; do
    # shellcheck disable=SC1090
    . "/guest/$_f.sh"
done
# shellcheck disable=SC2086
run_tests $TESTS
finish
