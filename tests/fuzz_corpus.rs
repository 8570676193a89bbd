//! The fuzz targets (src/fuzzing, issue 14) on the committed inputs: every
//! file of `fuzz/corpus/<target>/` (the seed corpus) and of
//! `fuzz/regressions/<target>/` (each input a fuzzer crashed on, kept after
//! the fix) runs through its target, as under libFuzzer but without
//! coverage instrumentation. A target panics when an invariant breaks.
//! The fuzzing itself is scripts/fuzz.sh (docs/development.md, "Fuzzing").

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use vhost_user_scsi::fuzzing::TARGETS;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every input of `kind` (corpus or regressions); returns how many.
fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind);
    let mut failed = Vec::new();
    let mut count = 0;
    for (name, run) in TARGETS {
        for file in inputs(&root.join(name)) {
            let data = fs::read(&file).unwrap();
            count += 1;
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "inputs that fail: {failed:#?}");
    count
}

#[test]
fn seed_corpus_passes() {
    let n = replay("corpus");
    // Every target has a corpus.
    for (name, _) in TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(name);
        assert!(!inputs(&dir).is_empty(), "no corpus for {name}");
    }
    assert!(n > 0);
}

#[test]
fn crashes_found_by_fuzzing_stay_fixed() {
    replay("regressions");
}

/// `state`, fuzz/regressions/state/empty-file-column-0: an empty state file
/// (or one ending right after a newline inside a value) was reported at
/// column 0; positions are 1-based.
#[test]
fn state_file_errors_at_end_of_input_have_column_1() {
    use vhost_user_scsi::mgmt::config::ConfigError;
    use vhost_user_scsi::mgmt::state::parse;
    for (text, line) in [("", 1), ("{\n", 2), ("{\"version\": 1,\n", 2)] {
        match parse(text, Path::new("/s.json")) {
            Err(ConfigError::Invalid { at, .. }) => assert_eq!(at, Some((line, 1)), "{text:?}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

/// `state`, fuzz/regressions/state/newline-in-unknown-key: a key with a
/// newline (`"co\ntrollers"`) made a two-line error; errors are one line.
/// The same holds for the TOML config (quoted keys).
#[test]
fn errors_naming_a_key_with_a_newline_stay_one_line() {
    use vhost_user_scsi::mgmt::{config, state};
    let e = state::parse(
        "{\"version\": 1, \"co\\ntrollers\": []}",
        Path::new("/s.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(!e.contains('\n') && e.contains("co\\ntrollers"), "{e}");
    let e = config::parse("\"rpc\\nsocket\" = 1\n", Path::new("/c.toml"))
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n') && e.contains("rpc\\nsocket"), "{e}");
}
