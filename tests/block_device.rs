//! Block devices as LUNs: a loop device (512- and 4096-byte sectors) is
//! sized with BLKGETSIZE64, gets its logical block size from BLKSSZGET, is
//! opened O_DIRECT and serves I/O. Needs root and loop devices; where the
//! machine has none, the test says so loudly and does nothing.

mod common;

use std::process::Command;

use common::{image, pattern, Daemon};
use vhost_user_scsi::frontend::{cdb, DataDir};

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &std::path::Path, sector: u32) -> Option<Loop> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on", "--sector-size"])
            .arg(sector.to_string())
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED block-device test: losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Loop(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn loop_devices_are_sized_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let f512 = image(dir.path(), "l512.img", 8 << 20);
    let f4k = image(dir.path(), "l4k.img", 4 << 20);
    let (Some(l512), Some(l4k)) = (Loop::attach(&f512, 512), Loop::attach(&f4k, 4096)) else {
        return;
    };
    let specs = vec![l512.0.clone(), l4k.0.clone()];
    let d = Daemon::start(move |_| specs, &["--num-queues", "1"]);
    let fe = d.connect(1);
    for (lun, size, bs) in [(0u16, 8u64 << 20, 512u32), (1, 4 << 20, 4096)] {
        let r = fe
            .command(0, lun, &cdb::read_capacity16(32), DataDir::FromDevice(32))
            .unwrap();
        let data = r.data_in();
        assert_eq!(
            u64::from_be_bytes(data[0..8].try_into().unwrap()),
            size / u64::from(bs) - 1
        );
        assert_eq!(
            u32::from_be_bytes(data[8..12].try_into().unwrap()),
            bs,
            "lun {lun}"
        );
        let payload = pattern(lun.into(), 4, 8192);
        let blocks = (8192 / bs) as u16;
        let r = fe
            .command(
                0,
                lun,
                &cdb::write10(2, blocks, true),
                DataDir::ToDevice(&payload),
            )
            .unwrap();
        assert_eq!(r.status, 0, "{:?}", r.sense_key());
        let r = fe
            .command(
                0,
                lun,
                &cdb::read10(2, blocks, false),
                DataDir::FromDevice(8192),
            )
            .unwrap();
        assert_eq!(r.data_in(), &payload[..]);
    }
    fe.shutdown().unwrap();
    drop(d);
    // The bytes went through to the files behind the loop devices.
    let on_disk = std::fs::read(&f4k).unwrap();
    assert_eq!(&on_disk[2 * 4096..4 * 4096], &pattern(1, 4, 8192)[..]);

    // A 512-byte block size on a 4096-byte device is refused at start.
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .args(["serve", "--socket"])
        .arg(dir.path().join("x.sock"))
        .arg("--disk")
        .arg(format!("{},block-size=512", l4k.0))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("logical block size"));
}
