#!/usr/bin/env bash
# The project's test command: dependencies, test guest, format, lints, tests
# (unit, host integration and the guest end-to-end test in tests/guest_e2e.rs).
#
# Usage: scripts/test.sh
# Extra: cargo test --test guest_e2e -- --ignored   (harness reference run on
#        QEMU's built-in virtio-scsi)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n==== %s ====\n' "$*"; }

section "install dependencies"
scripts/install-deps.sh

section "build test guest"
scripts/build-guest.sh

section "cargo fmt --check"
cargo fmt --check

section "cargo clippy"
cargo clippy --all-targets -- -D warnings

section "cargo test"
cargo test --all-targets

section "python tests (python/tests against the daemon binary)"
cargo build --bin vhost-user-scsi
# Debian's python3 (python3-pytest from install-deps.sh), not a pyenv one on PATH.
VUS_BINARY="${CARGO_TARGET_DIR:-target}/debug/vhost-user-scsi" /usr/bin/python3 -m pytest -q python/tests

section "fuzz (scripts/fuzz.sh: every target for 10 s)"
scripts/fuzz.sh

section "all tests passed"
