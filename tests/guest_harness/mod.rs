//! The guest end-to-end tests' shared harness check (tests/guest_e2e*.rs):
//! where the repository is, and whether the test guest and QEMU are there
//! (skip loudly without them, fail when `CI=true`).

use std::path::PathBuf;
use std::process::Command;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What is missing from the harness, if anything.
pub fn harness_missing() -> Option<String> {
    let guest = repo_root().join("build/guest");
    for f in ["vmlinuz", "initramfs.cpio.gz"] {
        if !guest.join(f).is_file() {
            return Some(format!("{} missing", guest.join(f).display()));
        }
    }
    match Command::new("qemu-system-x86_64").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("qemu-system-x86_64 --version failed: {}", o.status)),
        Err(e) => Some(format!("qemu-system-x86_64 not runnable: {e}")),
    }
}

/// True when the test should run; panics in CI when the harness is missing.
pub fn harness_ready(test: &str) -> bool {
    let Some(why) = harness_missing() else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{test}: guest harness missing ({why}) and CI=true: \
             run scripts/install-deps.sh && scripts/build-guest.sh"
        );
    }
    eprintln!("\n**********************************************************************");
    eprintln!("SKIPPED {test}: guest harness missing ({why})");
    eprintln!("SKIPPED: run scripts/install-deps.sh && scripts/build-guest.sh");
    eprintln!("**********************************************************************\n");
    false
}
