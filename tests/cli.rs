//! The binary's command line: every bad input is one line on stderr and
//! exit code 1 before anything listens; SIGTERM is a clean exit.

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{bin, image, run};

#[test]
fn bad_input_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let s = sock.to_str().unwrap();
    let good = image(dir.path(), "good.img", 1 << 20);
    let good = good.to_str().unwrap();
    let empty = image(dir.path(), "empty.img", 0);
    let odd = image(dir.path(), "odd.img", 1000);
    let not4k = image(dir.path(), "not4k.img", 6144);
    let missing = dir.path().join("missing.img");
    let d = dir.path().to_str().unwrap();

    // `serve --socket S` plus these arguments, and what stderr must name.
    let with_socket = |extra: &[&str]| -> Vec<String> {
        ["serve", "--socket", s]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect()
    };
    let missing = missing.display().to_string();
    let empty = empty.display().to_string();
    let odd = odd.display().to_string();
    let not4k = format!("{},block-size=4096", not4k.display());
    let pr_under_file = format!("{good}/pr");
    let state_file = dir.path().join("state.json").display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with_socket(&["--disk", &missing]), "missing.img"),
        (
            with_socket(&["--disk", d]),
            "not a regular file or block device",
        ),
        (with_socket(&["--disk", &empty]), "size is zero"),
        (with_socket(&["--disk", &odd]), "not a multiple"),
        (with_socket(&["--disk", &not4k]), "not a multiple"),
        (
            with_socket(&[
                "--disk",
                &format!("{good},lun=1"),
                "--disk",
                &format!("{good},lun=1"),
            ]),
            "LUN 1",
        ),
        (
            with_socket(&["--disk", &format!("{good},bogus")]),
            "unknown disk option",
        ),
        (
            with_socket(&["--disk", &format!("{good},block-size=1024")]),
            "block-size",
        ),
        (
            with_socket(&["--disk", &format!("{good},lun=99999")]),
            "lun",
        ),
        (
            with_socket(&["--disk", good, "--num-queues", "0"]),
            "num-queues",
        ),
        (
            with_socket(&["--disk", good, "--num-queues", "65"]),
            "num-queues",
        ),
        (
            with_socket(&["--disk", good, "--queue-size", "2048"]),
            "queue-size",
        ),
        (
            // A --pr-state directory that cannot exist (below a regular file).
            with_socket(&["--disk", good, "--pr-state", &pr_under_file]),
            "pr-state",
        ),
        (with_socket(&[]), "--disk"),
        (
            with_socket(&["--disk", good, "--socket-group", "no-such-group-here"]),
            "--socket-group: no group named \"no-such-group-here\"",
        ),
        (
            with_socket(&["--disk", good, "--socket-mode", "0888"]),
            "--socket-mode: socket mode \"0888\" is not an octal mode",
        ),
        (
            vec![
                "serve".into(),
                "--rpc-socket".into(),
                s.into(),
                "--rpc-socket-group".into(),
                "no-such-group-here".into(),
            ],
            "--rpc-socket-group: no group named",
        ),
        (
            // The state file holds every controller: not with --socket.
            with_socket(&["--disk", good, "--state-file", &state_file]),
            "cannot be combined with --socket",
        ),
        (
            // A state file whose directory cannot exist.
            vec![
                "serve".into(),
                "--rpc-socket".into(),
                s.into(),
                "--state-file".into(),
                format!("{good}/state.json"),
            ],
            "--state-file",
        ),
        (
            vec!["serve".into(), "--disk".into(), good.into()],
            "--socket",
        ),
        (vec!["frobnicate".into()], "frobnicate"),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::assert_rejected(&args, &[needle], &sock);
    }
}

#[test]
fn help_and_version_exit_0() {
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = run(&["serve", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--socket",
        "--disk",
        "--num-queues",
        "--queue-size",
        "--state-file",
    ] {
        assert!(help.contains(opt), "help lacks {opt}");
    }
}

fn wait_for(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while !path.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("daemon exited early: {st}");
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(sock: &Path, disk: &Path) -> Child {
    bin()
        .args(["serve", "--socket"])
        .arg(sock)
        .arg("--disk")
        .arg(disk)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn sigterm(child: &Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

#[test]
fn socket_served_by_a_live_process_is_refused_and_stale_one_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let disk = image(dir.path(), "d.img", 1 << 20);

    // A live listener owns the path: refused, and its socket left alone.
    let live = UnixListener::bind(&sock).unwrap();
    let out = bin()
        .args(["serve", "--socket"])
        .arg(&sock)
        .arg("--disk")
        .arg(&disk)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already served"));
    assert!(sock.exists());
    drop(live);
    // A child spawned meanwhile by a parallel test may hold the listener's
    // fd between its fork and exec: wait until the socket is really dead.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::os::unix::net::UnixStream::connect(&sock).is_ok()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }

    // The listener is gone but the file stays: a stale socket, replaced.
    assert!(sock.exists());
    let mut child = spawn(&sock, &disk);
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "daemon should run");
    // While it runs, a second daemon on the same path is refused.
    let out = bin()
        .args(["serve", "--socket"])
        .arg(&sock)
        .arg("--disk")
        .arg(&disk)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    sigterm(&child);
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0));
    assert!(!sock.exists(), "socket not removed at exit");

    // A path that exists and is not a socket is never deleted.
    fs::write(&sock, b"precious").unwrap();
    let out = bin()
        .args(["serve", "--socket"])
        .arg(&sock)
        .arg("--disk")
        .arg(&disk)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(fs::read(&sock).unwrap(), b"precious");
}

#[test]
fn sigterm_and_sigint_exit_0_and_remove_the_socket() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let disk = image(dir.path(), "d.img", 1 << 20);
        let mut child = spawn(&sock, &disk);
        wait_for(&sock, &mut child);
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let st = child.wait().unwrap();
        assert_eq!(st.code(), Some(0), "signal {sig}");
        assert!(!sock.exists());
    }
}
