//! The fuzz targets (src/fuzzing, issue 14) on the committed inputs: every
//! file of `fuzz/corpus/<target>/` (the seed corpus) and of
//! `fuzz/regressions/<target>/` (each input a fuzzer crashed on, kept after
//! the fix) runs through its target, as under libFuzzer but without
//! coverage instrumentation. A target panics when an invariant breaks.
//! The fuzzing itself is scripts/fuzz.sh (docs/development.md, "Fuzzing").

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use vhost_user_scsi::fuzzing::{LimitedAlloc, TARGETS};

/// As in the fuzz binaries: an allocation over 64 MiB aborts.
#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc;

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

/// The allocation limit works: this test run again as a child that
/// allocates 128 MiB dies of SIGABRT, saying so.
#[test]
fn an_oversized_allocation_aborts() {
    if std::env::var_os("FUZZ_ALLOC_PROBE").is_some() {
        let big = vec![1u8; 128 << 20];
        std::hint::black_box(&big);
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "an_oversized_allocation_aborts", "--nocapture"])
        .env("FUZZ_ALLOC_PROBE", "1")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("an allocation of 134217728 bytes"),
        "{stderr}"
    );
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

/// `scsi`, fuzz/regressions/scsi/get-lba-status-huge-capacity: GET LBA
/// STATUS on a LUN that cannot unmap answered with one descriptor per 2^32
/// blocks up to the ALLOCATION LENGTH: for a LUN of 2^54 blocks and an
/// allocation length of 64 MiB, a 64 MiB answer (a 128 MiB buffer while it
/// grew). Now at most 1024 descriptors. Run in a child, as the fuzzers'
/// allocation limit would abort.
#[test]
fn get_lba_status_data_is_bounded() {
    use vhost_user_scsi::scsi::{LunConfig, NexusId, Outcome, Target};
    use vhost_user_scsi::units::{BlockCount, BlockSize};
    if std::env::var_os("FUZZ_LBA_STATUS_PROBE").is_some() {
        let t = Target::new(vec![LunConfig::new(
            0,
            BlockSize::B512,
            BlockCount(0x0052_5053_aa56_0000),
        )])
        .unwrap();
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x12;
        cdb[10..14].copy_from_slice(&0x0400_1200u32.to_be_bytes());
        let mut none: &[u8] = &[];
        t.execute(NexusId(0), 0, &[0; 6], &mut none); // the POWER ON UA
        match t.execute(NexusId(0), 0, &cdb, &mut none) {
            Outcome::Complete { data, .. } => assert!(data.len() <= 1 << 20, "{}", data.len()),
            other => panic!("{other:?}"),
        }
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "get_lba_status_data_is_bounded", "--nocapture"])
        .env("FUZZ_LBA_STATUS_PROBE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
