//! Who may connect to the daemon's sockets (issue 12): `--socket-group`
//! and `--socket-mode` for every controller socket (command line, config
//! file, `controller_create`, state file), `--rpc-socket-group` for the
//! RPC socket, which stays 0600 otherwise. libvirt runs QEMU as
//! `libvirt-qemu` (groups `kvm`, `libvirt-qemu`): connecting to a Unix
//! socket needs write permission on it.
//!
//! The connection checks run a client as an unprivileged user (uid 65534)
//! whose only group is the one under test: they need root (CI runs as
//! root); without it only the modes and groups are checked.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::{image, Daemon};
use serde_json::json;

/// `daemon`: a group that exists on Debian and that root is not in.
const GROUP: &str = "daemon";
const GID: u32 = 1;
/// Another group (`nogroup`).
const OTHER_GID: u32 = 65534;
const NOBODY: u32 = 65534;

fn mode_and_gid(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.permissions().mode() & 0o777, m.gid())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether uid 65534 with `gid` as its only group can connect to `socket`.
fn nobody_can_connect(socket: &Path, gid: u32) -> bool {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args([
        "-c",
        "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])",
    ])
    .arg(socket)
    .uid(NOBODY)
    .gid(gid);
    // As root, std drops the supplementary groups before setgid/setuid:
    // `gid` is the client's only group.
    cmd.output().unwrap().status.success()
}

/// Lets uid 65534 reach the sockets in the daemon's temp dir.
fn open_dir(d: &Daemon) {
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn socket_group_on_the_command_line() {
    let mut d = Daemon::start(
        |dir| vec![image(dir, "a.img", 1 << 20).display().to_string()],
        &["--socket-group", GROUP],
    );
    assert_eq!(mode_and_gid(&d.socket), (0o660, GID), "{}", d.log());
    if is_root() {
        open_dir(&d);
        assert!(
            nobody_can_connect(&d.socket, GID),
            "a member cannot connect"
        );
        assert!(
            !nobody_can_connect(&d.socket, OTHER_GID),
            "a non-member can connect"
        );
    }
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn socket_mode_without_a_group() {
    let mut d = Daemon::start(
        |dir| vec![image(dir, "a.img", 1 << 20).display().to_string()],
        &["--socket-mode", "0666"],
    );
    assert_eq!(mode_and_gid(&d.socket).0, 0o666);
    if is_root() {
        open_dir(&d);
        assert!(nobody_can_connect(&d.socket, OTHER_GID));
    }
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn controller_create_socket_group_and_mode_and_defaults() {
    let mut d = Daemon::start_rpc(&["--socket-group", GROUP, "--socket-mode", "0606"]);
    // The RPC socket keeps 0600 and the daemon's group.
    assert_eq!(mode_and_gid(&d.socket).0, 0o600);
    let mut rpc = d.rpc();
    let own = d.path("own.sock");
    let dflt = d.path("default.sock");
    rpc.call(
        "controller_create",
        Some(
            json!({"name": "own", "socket": own, "socket_group": "nogroup", "socket_mode": "0660"}),
        ),
    )
    .unwrap();
    rpc.call(
        "controller_create",
        Some(json!({"name": "dflt", "socket": dflt})),
    )
    .unwrap();
    assert_eq!(mode_and_gid(&own), (0o660, OTHER_GID));
    assert_eq!(mode_and_gid(&dflt), (0o606, GID));
    let list = rpc.call("controller_list", None).unwrap();
    let find = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(find("own")["socket_group"], "nogroup");
    assert_eq!(find("own")["socket_mode"], "0660");
    assert_eq!(find("dflt")["socket_group"], GROUP);
    assert_eq!(find("dflt")["socket_mode"], "0606");
    if is_root() {
        open_dir(&d);
        assert!(nobody_can_connect(&own, OTHER_GID));
        assert!(!nobody_can_connect(&own, GID));
    }
    // Bad values: invalid params, nothing created.
    for (params, needle) in [
        (
            json!({"name": "bad1", "socket": d.path("bad1.sock"), "socket_group": "no-such-group-here"}),
            "no group named",
        ),
        (
            json!({"name": "bad2", "socket": d.path("bad2.sock"), "socket_mode": "0999"}),
            "not an octal mode",
        ),
    ] {
        let e = rpc.call("controller_create", Some(params)).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
    assert!(!d.path("bad1.sock").exists() && !d.path("bad2.sock").exists());
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn rpc_socket_group_makes_it_0660() {
    let mut d = Daemon::start_rpc(&["--rpc-socket-group", GROUP]);
    assert_eq!(mode_and_gid(&d.socket), (0o660, GID));
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn config_file_and_state_file_keep_the_group() {
    let mut d = Daemon::start_with(
        |dir| {
            let img = image(dir, "a.img", 1 << 20);
            let cfg = dir.join("vus.toml");
            fs::write(
                &cfg,
                format!(
                    "socket_group = \"{GROUP}\"\n\
                     [[controller]]\nname = \"vm1\"\nsocket = \"{}\"\nsocket_mode = \"0640\"\n\
                     [[controller.lun]]\npath = \"{}\"\n",
                    dir.join("vm1.sock").display(),
                    img.display()
                ),
            )
            .unwrap();
            vec!["--config".into(), cfg.display().to_string()]
        },
        "vm1.sock",
    );
    assert_eq!(mode_and_gid(&d.socket), (0o640, GID), "{}", d.log());
    assert_eq!(d.stop(), Some(0));

    // The state file keeps what controller_create was given.
    let mut d = Daemon::start_rpc(&[]);
    let state = d.path("state.json");
    assert_eq!(d.stop(), Some(0));
    let args = vec![
        "--rpc-socket".to_string(),
        d.path("rpc.sock").display().to_string(),
        "--state-file".to_string(),
        state.display().to_string(),
    ];
    d.respawn(&args);
    let rpc_path = d.path("rpc.sock");
    d.wait_for_path(&rpc_path);
    let mut rpc = d.rpc();
    let s2 = d.path("s2.sock");
    rpc.call(
        "controller_create",
        Some(json!({"name": "s2", "socket": s2, "socket_group": GROUP})),
    )
    .unwrap();
    assert_eq!(mode_and_gid(&s2), (0o660, GID));
    let saved: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["controllers"][0]["socket_group"], GROUP);
    assert_eq!(d.stop(), Some(0));
    d.respawn(&args);
    d.wait_for_path(&s2);
    assert_eq!(mode_and_gid(&s2), (0o660, GID), "{}", d.log());
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn a_missing_socket_directory_is_created() {
    let mut d = Daemon::start_with(
        |dir| {
            let img = image(dir, "a.img", 1 << 20);
            vec![
                "--socket".into(),
                dir.join("run/vus/vm1.sock").display().to_string(),
                "--disk".into(),
                img.display().to_string(),
                "--socket-group".into(),
                GROUP.into(),
            ]
        },
        "run/vus/vm1.sock",
    );
    let dir = d.path("run/vus");
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(mode_and_gid(&d.socket), (0o660, GID));
    assert_eq!(d.stop(), Some(0));
}
