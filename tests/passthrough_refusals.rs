//! `passthrough` LUNs are refused for anything that is not a SCSI device
//! (a regular file, a loop device, a character device that is not an sg
//! node) and with the options that make no sense with them (readonly,
//! block-size, serial): on the command line and in a config file one line
//! and exit 1 before anything listens; over JSON-RPC an error, and the
//! controller serves on. (This host has no SCSI device: the accepted case
//! runs in a guest, tests/guest_e2e_passthrough.rs.)

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::json;
use vhost_user_scsi::mgmt::api::code;
use vhost_user_scsi::mgmt::rpc_client::ClientError;

use common::{image, Daemon};

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Option<Loop> {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "loop device part SKIPPED: losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Loop(String::from_utf8_lossy(&out.stdout).trim().into()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn non_scsi_devices_and_bad_options_are_refused_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let s = sock.to_str().unwrap();
    let img = image(dir.path(), "disk.img", 1 << 20);
    let img = img.to_str().unwrap();
    let serve = |disk: &str| -> Vec<String> {
        ["serve", "--socket", s, "--disk", disk]
            .iter()
            .map(|a| a.to_string())
            .collect()
    };
    let mut cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            serve(&format!("{img},passthrough")),
            vec![
                img.into(),
                "a regular file; passthrough needs a SCSI device".into(),
            ],
        ),
        (
            serve("/dev/null,passthrough"),
            vec!["/dev/null".into(), "not a SCSI generic node".into()],
        ),
        (
            serve(&format!("{},passthrough", dir.path().display())),
            vec!["not a device".into()],
        ),
        (
            serve("/dev/sg7,passthrough,readonly"),
            vec!["passthrough cannot be combined with readonly".into()],
        ),
        (
            serve("/dev/sg7,block-size=4096,passthrough"),
            vec!["passthrough cannot be combined with block-size".into()],
        ),
        (
            serve("/dev/sg7,passthrough,serial=X1"),
            vec!["passthrough cannot be combined with serial".into()],
        ),
    ];
    let lo = Loop::attach(Path::new(img));
    if let Some(l) = &lo {
        cases.push((
            serve(&format!("{},passthrough", l.0)),
            vec![
                l.0.clone(),
                "is not a SCSI device".into(),
                "loop, NVMe".into(),
            ],
        ));
    }
    for (args, needles) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        common::assert_rejected(&args, &needles, &sock);
    }

    // A config file: the same checks, with the file position.
    let cfg = dir.path().join("vus.toml");
    let body = format!(
        "[[controller]]\nname = \"vm1\"\nsocket = \"{s}\"\n\n[[controller.lun]]\npath = \"{img}\"\npassthrough = true\nserial = \"X\"\n"
    );
    std::fs::write(&cfg, body).unwrap();
    let c = cfg.to_str().unwrap();
    common::assert_rejected(
        &["serve", "--config", c],
        &["vus.toml:", "passthrough cannot be combined with serial"],
        &sock,
    );
    let body = format!(
        "[[controller]]\nname = \"vm1\"\nsocket = \"{s}\"\n\n[[controller.lun]]\npath = \"{img}\"\npassthrough = true\n"
    );
    std::fs::write(&cfg, body).unwrap();
    common::assert_rejected(
        &["serve", "--config", c],
        &[img, "a regular file; passthrough needs a SCSI device"],
        &sock,
    );
}

#[test]
fn non_scsi_devices_and_bad_options_are_refused_over_rpc() {
    let d = Daemon::start_rpc(&[]);
    let img = image(d.dir.path(), "disk.img", 1 << 20);
    let mut rpc = d.rpc();
    rpc.call(
        "controller_create",
        Some(json!({"name": "vm1", "socket": d.path("vm1.sock"), "num_queues": 1})),
    )
    .unwrap();
    let lo = Loop::attach(&img);
    let mut cases = vec![
        (
            json!({"controller": "vm1", "path": img, "passthrough": true}),
            code::FAILED,
            "a regular file; passthrough needs a SCSI device".to_string(),
        ),
        (
            json!({"controller": "vm1", "path": "/dev/null", "passthrough": true}),
            code::FAILED,
            "not a SCSI generic node".into(),
        ),
        (
            json!({"controller": "vm1", "path": "/dev/sg0", "passthrough": true, "readonly": true}),
            code::INVALID_PARAMS,
            "passthrough cannot be combined with readonly".into(),
        ),
        (
            json!({"controller": "vm1", "path": "/dev/sg0", "passthrough": true, "block_size": 512}),
            code::INVALID_PARAMS,
            "passthrough cannot be combined with block-size".into(),
        ),
        (
            json!({"controller": "vm1", "path": "/dev/sg0", "passthrough": true, "serial": "A"}),
            code::INVALID_PARAMS,
            "passthrough cannot be combined with serial".into(),
        ),
    ];
    if let Some(l) = &lo {
        cases.push((
            json!({"controller": "vm1", "path": l.0, "passthrough": true}),
            code::FAILED,
            "is not a SCSI device".into(),
        ));
    }
    for (params, want, needle) in cases {
        match rpc.call("lun_add", Some(params.clone())) {
            Err(ClientError::Rpc(e)) => {
                assert_eq!(e.code, want, "{params}: {e:?}");
                assert!(e.message.contains(&needle), "{params}: {:?}", e.message);
            }
            other => panic!("{params}: expected an error, got {other:?}"),
        }
    }
    // Nothing was attached; the same file still works as a plain LUN.
    let list = rpc.call("controller_list", None).unwrap();
    assert_eq!(list[0]["luns"], json!([]), "{list}");
    rpc.call("lun_add", Some(json!({"controller": "vm1", "path": img})))
        .unwrap();
}
