//! LUN passthrough end to end, one level down: this host has no SCSI
//! device, so a TCG guest (scripts/run-guest.sh) gets a QEMU-emulated SCSI
//! disk (`--builtin-disk`: virtio-scsi-pci + scsi-hd, /dev/sda and
//! /dev/sg0 in the guest), and our daemon and frontend run *inside* it: the
//! daemon binary (stripped) and the libraries `ldd` lists go into the
//! initrd (`--add-file`), sg3_utils are in the test guest already.
//! tests/guest/passthrough.sh serves /dev/sg0 (LUN 0) and, hot-added over
//! JSON-RPC, /dev/sda (LUN 1) as passthrough LUNs and drives them with
//! `vhost-user-scsi probe` and `bench --verify`: INQUIRY, every VPD page
//! and READ CAPACITY(10)/(16) byte for byte equal to sg_inq/sg_vpd/
//! sg_readcap on the device, REPORT LUNS ours, the device's own sense for
//! commands it rejects, verified random writes and reads, a LOGICAL UNIT
//! RESET (SG_SCSI_RESET), stats and metrics, hotplug (lun_add/lun_remove),
//! the state file across kill -9, refusals of non-SCSI paths.
//!
//! Needs the harness (`scripts/install-deps.sh && scripts/build-guest.sh`);
//! without it the test prints SKIPPED, except with `CI=true`, where it
//! fails. Missing tools inside the guest are failures of the guest script.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

mod guest_harness;
use guest_harness::{
    daemon_binary, harness_ready, lock, logs_dir, repo_root, run_guest_script, sparse_image,
    work_dir,
};

const DISK_SIZE: u64 = 64 << 20;

/// `SRC:DEST` for the binary at `/usr/bin/vhost-user-scsi` and each
/// library the dynamic loader needs for it (same paths in the guest).
fn guest_files(work: &Path) -> Vec<String> {
    let bin = daemon_binary();
    let stripped = work.join("vhost-user-scsi");
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&bin)
        .status()
        .is_ok_and(|s| s.success());
    let src: PathBuf = if ok { stripped } else { bin.clone() };
    let mut files = vec![format!("{}:/usr/bin/vhost-user-scsi", src.display())];
    let out = Command::new("ldd").arg(&bin).output().expect("run ldd");
    assert!(out.status.success(), "ldd {}: {out:?}", bin.display());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)".
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(format!("{p}:{p}"));
        }
    }
    files
}

#[test]
fn guest_e2e_passthrough() {
    if !harness_ready("guest_e2e_passthrough") {
        return;
    }
    let _serial = lock();
    let root = repo_root();
    let work = work_dir("pt-");
    let img = sparse_image(&work.path().join("scsi-hd.img"), DISK_SIZE);
    let log = logs_dir().join("passthrough.log");
    let mut cmd = Command::new(root.join("scripts/run-guest.sh"));
    cmd.current_dir(&root)
        .arg("--script")
        .arg(root.join("tests/guest/passthrough.sh"))
        .arg("--builtin-disk")
        .arg(format!("{},serial=PT-DISK-1", img.display()))
        .args(["--env", "EXPECT_DISKS=1", "--timeout", "600", "--log"])
        .arg(&log);
    for f in guest_files(work.path()) {
        cmd.arg("--add-file").arg(f);
    }
    let out = run_guest_script("passthrough guest", &mut cmd);
    let (stdout, fails) = (&out.stdout, &out.fails);
    assert!(
        out.status.success() && fails.is_empty(),
        "guest run failed ({}), log {}:\n{}",
        out.status,
        log.display(),
        fails.join("\n")
    );
    let passes = stdout.lines().filter(|l| l.starts_with("PASS:")).count();
    assert!(passes >= 30, "only {passes} checks passed");
    // bench --verify wrote through the passthrough LUNs to the disk the
    // guest's QEMU emulated: its image holds data now.
    let data = fs::read(&img).unwrap();
    assert!(
        data.iter().any(|b| *b != 0),
        "the guest's writes did not reach the disk image"
    );
}
