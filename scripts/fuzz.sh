#!/usr/bin/env bash
# Coverage-guided fuzzing on the stable toolchain (issue 14): builds the
# libFuzzer binaries of fuzz/ with LLVM's SanitizerCoverage (stable rustc
# flags, no nightly, no cargo-fuzz) and runs every target for a bounded
# time, starting from the committed corpus fuzz/corpus/<target>/.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET  default 10 (seven targets: about 70 s in all)
#   TARGET              default all: chain scsi inflight rpc config state vhost_user
#
# Exit status 1 if any target crashed (a panic, an abort, a leak-free OOM or
# a timeout); the input that did it is in fuzz/artifacts/<target>/ and the
# libFuzzer log in target/fuzz/logs/<target>.log. Replay one with
#   target/fuzz/<triple>/release/<target> fuzz/artifacts/<target>/crash-...
# and add it to fuzz/regressions/<target>/ (tests/fuzz_corpus.rs replays
# those in `cargo test`). New inputs found along the way go to
# target/fuzz/corpus/<target>/ (not committed; see docs/development.md,
# "Fuzzing", for merging them into the committed corpus and for long runs).
#
# Environment: FUZZ_ARGS adds libFuzzer options (e.g. "-jobs=2 -workers=2").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

secs=${1:-10}
shift || true
targets=("$@")
(( ${#targets[@]} )) || targets=(chain scsi inflight rpc config state vhost_user)

[[ "$secs" =~ ^[0-9]+$ ]] || { echo "fuzz: SECONDS_PER_TARGET must be a number, not '$secs'" >&2; exit 2; }

triple=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR="$root/target/fuzz"
# SanitizerCoverage as libFuzzer wants it: 8-bit edge counters, the PC
# table and comparison tracing. Only the fuzzed crates get these flags
# (--target keeps them off build scripts and proc macros).
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cdebug-assertions -Coverflow-checks"

echo "fuzz: building ${targets[*]} ($triple, release, SanitizerCoverage)"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
cargo build --locked --release --manifest-path fuzz/Cargo.toml --target "$triple" "${bins[@]}"

mkdir -p "$CARGO_TARGET_DIR/logs"
failed=()
for t in "${targets[@]}"; do
    bin="$CARGO_TARGET_DIR/$triple/release/$t"
    work="$CARGO_TARGET_DIR/corpus/$t"
    artifacts="$root/fuzz/artifacts/$t"
    log="$CARGO_TARGET_DIR/logs/$t.log"
    mkdir -p "$work" "$artifacts" "fuzz/corpus/$t"
    dict=()
    [[ -f "fuzz/dicts/$t.dict" ]] && dict=(-dict="fuzz/dicts/$t.dict")
    # New inputs go to the first directory ($work); the committed seeds
    # (and regressions) are read only.
    seeds=("fuzz/corpus/$t")
    [[ -d "fuzz/regressions/$t" ]] && seeds+=("fuzz/regressions/$t")
    # shellcheck disable=SC2086
    if "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" ${FUZZ_ARGS:-} \
        "$work" "${seeds[@]}" >"$log" 2>&1; then
        stats=$(grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" | awk '{print $2}' | paste -sd/ -)
        cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n1)
        echo "fuzz: $t: ok (${secs}s, executions/new units ${stats:-?}, $cov)"
    else
        echo "fuzz: $t: FAILED; last lines of $log:" >&2
        tail -n 40 "$log" >&2
        failed+=("$t")
    fi
done

if (( ${#failed[@]} )); then
    echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${secs}s each without a crash"
