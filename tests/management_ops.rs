//! Management-plane operations against the daemon binary: every bad input
//! a JSON-RPC error with its documented code (and nothing changes),
//! concurrent clients, the RPC socket itself, config files (the shipped
//! example started for real), Prometheus metrics, SIGTERM with I/O in
//! flight, and `ctl` against a real daemon.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{bin, image, pattern, run, Daemon};
use vhost_user_scsi::frontend::{cdb, DataDir, ScsiFrontend, ScsiRequest};
use vhost_user_scsi::mgmt::api::{code, ApiError};
use vhost_user_scsi::mgmt::rpc_client::{ClientError, RpcClient};

const IMG: u64 = 8 << 20;

/// Exit code 1, exactly one line on stderr containing every needle.
fn assert_one_line_failure(out: &Output, what: &str, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{what}: not one line: {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{what}: {stderr:?} lacks {n:?}");
    }
    stderr
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The error of a refused call.
fn refused(r: Result<Value, ClientError>, what: &str) -> ApiError {
    match r {
        Err(ClientError::Rpc(e)) => e,
        other => panic!("{what}: expected an error answer, got {other:?}"),
    }
}

/// Call and expect error `code` with a message containing every needle.
fn expect_err(rpc: &mut RpcClient, method: &str, params: Value, code: i64, needles: &[&str]) {
    let what = format!("{method} {params}");
    let e = refused(rpc.call(method, Some(params)), &what);
    assert_eq!(e.code, code, "{what}: {e:?}");
    for n in needles {
        assert!(e.message.contains(n), "{what}: {:?} lacks {n:?}", e.message);
    }
}

/// Run a command, retrying while it reports a unit attention (LUN
/// inventory changes are announced that way).
fn command(fe: &ScsiFrontend, lun: u16, cdb: &[u8], dir: DataDir<'_>) -> (u8, Vec<u8>) {
    for _ in 0..8 {
        let r = fe.command(0, lun, cdb, dir).unwrap();
        if r.status == 2 && r.sense_key().map(|k| k.0) == Some(6) {
            continue;
        }
        assert_eq!(r.response, 0, "virtio response");
        return (r.status, r.data_in().to_vec());
    }
    panic!("LUN {lun}: unit attentions do not stop");
}

/// Write 4 KiB at block `lba` of a LUN with `bs`-byte blocks and read it
/// back.
fn write_read(fe: &ScsiFrontend, lun: u16, bs: usize, lba: u32, gen: u8) {
    let data = pattern(u64::from(lba), gen, 4096);
    let blocks = (4096 / bs) as u16;
    let (st, _) = command(
        fe,
        lun,
        &cdb::write10(lba, blocks, false),
        DataDir::ToDevice(&data),
    );
    assert_eq!(st, 0, "WRITE status, LUN {lun}");
    let (st, got) = command(
        fe,
        lun,
        &cdb::read10(lba, blocks, false),
        DataDir::FromDevice(4096),
    );
    assert_eq!(st, 0, "READ status, LUN {lun}");
    assert!(got == data, "LUN {lun} block {lba}: read back differs");
}

/// Poll `f` until it is true (10 s at most).
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "timeout: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// A client on the socket `path`, which has just appeared: a listener's
/// file exists a moment before it listens (bind, then listen), so a
/// refused connection is retried for a while.
fn connect(path: &Path) -> RpcClient {
    let start = Instant::now();
    loop {
        match RpcClient::connect(path) {
            Ok(c) => return c,
            Err(ClientError::NotRunning { .. }) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("rpc connect {}: {e}", path.display()),
        }
    }
}

/// A client on the daemon's `rpc.sock`.
fn rpc_of(d: &Daemon) -> RpcClient {
    connect(&d.path("rpc.sock"))
}

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let d = Daemon::start_rpc(&[]);
    let a = image(d.dir.path(), "a.img", IMG);
    let b = image(d.dir.path(), "b.img", IMG);
    let empty = image(d.dir.path(), "empty.img", 0);
    let odd = image(d.dir.path(), "odd.img", 1000);
    let vm1 = d.path("vm1.sock");
    let mut rpc = rpc_of(&d);
    rpc.call(
        "controller_create",
        Some(json!({"name": "vm1", "socket": vm1, "num_queues": 2})),
    )
    .unwrap();
    rpc.call("lun_add", Some(json!({"controller": "vm1", "path": a})))
        .unwrap();
    let fe = d.connect_to("vm1.sock", 2);
    write_read(&fe, 0, 512, 0, 1);
    let before = rpc.call("controller_list", None).unwrap();
    assert_eq!(before[0]["connected"], true, "{before}");
    let other = d.path("other.sock");
    let missing = d.path("missing.img");
    let foreign = d.path("foreign.sock");
    let listener = UnixListener::bind(&foreign).unwrap();
    let dir = d.dir.path();

    // (method, params, code, what the message must contain)
    let cases: Vec<(&str, Value, i64, Vec<&str>)> = vec![
        // Unknown method.
        (
            "controller_frobnicate",
            json!({}),
            code::METHOD_NOT_FOUND,
            vec!["unknown method `controller_frobnicate`"],
        ),
        // Missing, mistyped and unknown fields.
        (
            "controller_create",
            json!({"name": "x"}),
            code::INVALID_PARAMS,
            vec!["missing field `socket`"],
        ),
        (
            "lun_add",
            json!({"path": b}),
            code::INVALID_PARAMS,
            vec!["missing field `controller`"],
        ),
        (
            "lun_remove",
            json!({"controller": "vm1"}),
            code::INVALID_PARAMS,
            vec!["missing field `lun`"],
        ),
        (
            "controller_create",
            json!({"name": "x", "socket": other, "num_queues": "four"}),
            code::INVALID_PARAMS,
            vec!["field `num_queues`", "invalid type"],
        ),
        (
            "lun_remove",
            json!({"controller": "vm1", "lun": "zero"}),
            code::INVALID_PARAMS,
            vec!["field `lun`", "invalid type"],
        ),
        (
            "lun_add",
            json!({"controller": "vm1", "path": b, "readonly": "yes"}),
            code::INVALID_PARAMS,
            vec!["field `readonly`"],
        ),
        (
            "lun_add",
            json!({"controller": "vm1", "path": b, "read_only": true}),
            code::INVALID_PARAMS,
            vec!["unknown field `read_only`"],
        ),
        (
            "controller_create",
            json!({"name": "x", "socket": other, "queues": 2}),
            code::INVALID_PARAMS,
            vec!["unknown field `queues`"],
        ),
        (
            "controller_create",
            json!(["x", other]),
            code::INVALID_PARAMS,
            vec!["by name"],
        ),
        (
            "controller_list",
            json!({"name": "vm1"}),
            code::INVALID_PARAMS,
            vec!["takes no parameters"],
        ),
        // Out-of-range values.
        (
            "controller_create",
            json!({"name": "x", "socket": other, "num_queues": 0}),
            code::INVALID_PARAMS,
            vec!["num_queues", "out of range"],
        ),
        (
            "controller_create",
            json!({"name": "x", "socket": other, "queue_size": 100}),
            code::INVALID_PARAMS,
            vec!["queue_size"],
        ),
        (
            "controller_create",
            json!({"name": "bad name", "socket": other}),
            code::INVALID_PARAMS,
            vec!["name"],
        ),
        (
            "lun_add",
            json!({"controller": "vm1", "path": b, "lun": 16384}),
            code::INVALID_PARAMS,
            vec!["lun", "16384"],
        ),
        (
            "lun_add",
            json!({"controller": "vm1", "path": b, "block_size": 1024}),
            code::INVALID_PARAMS,
            vec!["block_size", "1024"],
        ),
        // Backing stores that cannot be used.
        (
            "lun_add",
            json!({"controller": "vm1", "path": missing}),
            code::FAILED,
            vec![s(&missing), "No such file"],
        ),
        (
            "lun_add",
            json!({"controller": "vm1", "path": dir}),
            code::FAILED,
            vec![s(dir), "not a regular file"],
        ),
        (
            "lun_add",
            json!({"controller": "vm1", "path": empty}),
            code::FAILED,
            vec![s(&empty), "size is zero"],
        ),
        (
            "lun_add",
            json!({"controller": "vm1", "path": odd}),
            code::FAILED,
            vec![s(&odd), "not a multiple"],
        ),
        // A socket path in use: by a controller, by a foreign listener.
        (
            "controller_create",
            json!({"name": "x", "socket": vm1}),
            code::EXISTS,
            vec![s(&vm1), "vm1"],
        ),
        (
            "controller_create",
            json!({"name": "x", "socket": foreign}),
            code::EXISTS,
            vec![s(&foreign), "live process"],
        ),
        // A socket path that is a regular file.
        (
            "controller_create",
            json!({"name": "x", "socket": b}),
            code::FAILED,
            vec![s(&b), "not a socket"],
        ),
        // Duplicates: name, LUN number, the same disk twice.
        (
            "controller_create",
            json!({"name": "vm1", "socket": other}),
            code::EXISTS,
            vec!["`vm1` exists"],
        ),
        (
            "lun_add",
            json!({"controller": "vm1", "path": b, "lun": 0}),
            code::EXISTS,
            vec!["LUN 0", "vm1"],
        ),
        (
            "lun_add",
            json!({"controller": "vm1", "path": a}),
            code::EXISTS,
            vec![s(&a), "already LUN 0"],
        ),
        // Unknown controller or LUN.
        (
            "controller_delete",
            json!({"name": "nope"}),
            code::NOT_FOUND,
            vec!["`nope`"],
        ),
        (
            "lun_add",
            json!({"controller": "nope", "path": b}),
            code::NOT_FOUND,
            vec!["`nope`"],
        ),
        (
            "lun_remove",
            json!({"controller": "vm1", "lun": 5}),
            code::NOT_FOUND,
            vec!["LUN 5", "vm1"],
        ),
        (
            "lun_resize",
            json!({"controller": "vm1", "lun": 5}),
            code::NOT_FOUND,
            vec!["LUN 5", "vm1"],
        ),
        (
            "stats",
            json!({"controller": "vm1", "lun": 7}),
            code::NOT_FOUND,
            vec!["LUN 7"],
        ),
        // Busy: delete while the guest is connected.
        (
            "controller_delete",
            json!({"name": "vm1"}),
            code::BUSY,
            vec!["connected", "force"],
        ),
    ];
    for (method, params, code, needles) in &cases {
        expect_err(&mut rpc, method, params.clone(), *code, needles);
    }
    // The foreign listener was left alone; no refused create listened.
    let _c = UnixStream::connect(&foreign).unwrap();
    listener.accept().unwrap();
    assert!(!other.exists(), "a refused create left a socket");
    assert!(b.is_file(), "a refused create replaced a regular file");
    // No guest notices a failed call: no event, no unit attention.
    let events = fe.poll_events(Duration::from_millis(200)).unwrap();
    assert!(events.is_empty(), "{events:?}");
    let r = fe
        .command(0, 0, &cdb::test_unit_ready(), DataDir::None)
        .unwrap();
    assert_eq!((r.status, r.sense_key()), (0, None));
    assert_eq!(rpc.call("controller_list", None).unwrap(), before);

    // Removing a LUN twice.
    rpc.call(
        "lun_add",
        Some(json!({"controller": "vm1", "path": b, "lun": 1})),
    )
    .unwrap();
    assert_eq!(
        rpc.call("lun_remove", Some(json!({"controller": "vm1", "lun": 1})))
            .unwrap(),
        true
    );
    expect_err(
        &mut rpc,
        "lun_remove",
        json!({"controller": "vm1", "lun": 1}),
        code::NOT_FOUND,
        &["LUN 1", "vm1"],
    );

    // The guest's I/O still works, and the daemon is as before.
    for lba in [8, 100, 16000] {
        write_read(&fe, 0, 512, lba, 2);
    }
    assert_eq!(rpc.call("controller_list", None).unwrap(), before);
}

#[test]
fn concurrent_clients() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 4;
    let mut d = Daemon::start_rpc(&[]);
    for t in 0..THREADS {
        image(d.dir.path(), &format!("t{t}.img"), IMG);
    }
    let barrier = Barrier::new(THREADS);
    let wins: Vec<Result<Value, ClientError>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let d = &d;
                let barrier = &barrier;
                sc.spawn(move || {
                    let mut rpc = rpc_of(d);
                    let img = d.path(&format!("t{t}.img"));
                    for i in 0..ROUNDS {
                        let name = format!("t{t}-{i}");
                        let sock = d.path(&format!("{name}.sock"));
                        let c = rpc
                            .call(
                                "controller_create",
                                Some(json!({"name": name, "socket": sock, "num_queues": 1})),
                            )
                            .unwrap();
                        assert_eq!(c["name"], name.as_str());
                        assert!(sock.exists());
                        let l = rpc
                            .call("lun_add", Some(json!({"controller": name, "path": img})))
                            .unwrap();
                        assert_eq!(l["lun"], 0);
                        let list = rpc.call("controller_list", None).unwrap();
                        let mine: Vec<&Value> = list
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|c| c["name"] == name.as_str())
                            .collect();
                        assert_eq!(mine.len(), 1, "{list}");
                        assert_eq!(mine[0]["luns"].as_array().unwrap().len(), 1);
                        let st = rpc
                            .call("stats", Some(json!({"controller": name})))
                            .unwrap();
                        assert_eq!(st["controllers"][0]["name"], name.as_str());
                        rpc.call("stats", None).unwrap();
                        rpc.call("lun_remove", Some(json!({"controller": name, "lun": 0})))
                            .unwrap();
                        rpc.call("controller_delete", Some(json!({"name": name})))
                            .unwrap();
                        assert!(!sock.exists(), "{} left behind", sock.display());
                    }
                    // Everyone at once for one name.
                    let sock = d.path(&format!("same-{t}.sock"));
                    barrier.wait();
                    let r = rpc.call(
                        "controller_create",
                        Some(json!({"name": "same", "socket": sock})),
                    );
                    if r.is_err() {
                        assert!(!sock.exists(), "a refused create left {}", sock.display());
                    }
                    r
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = wins.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{wins:?}");
    for r in wins.into_iter().filter(|r| r.is_err()) {
        let e = refused(r, "racing create");
        assert_eq!(e.code, code::EXISTS, "{e:?}");
        assert!(e.message.contains("same"), "{e:?}");
    }
    assert!(d.alive(), "{}", d.log());
    let list = rpc_of(&d).call("controller_list", None).unwrap();
    assert_eq!(names(&list), ["same"], "{list}");
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn rpc_socket_is_private_and_exclusive() {
    let mut d = Daemon::start_rpc(&[]);
    let rpc_path = d.path("rpc.sock");
    let mode = fs::metadata(&rpc_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "rpc socket mode {mode:o}");
    // Serving (not only bound) before the second daemon looks at it.
    rpc_of(&d).call("version", None).unwrap();

    // A second daemon on the same RPC socket fails before listening
    // anywhere.
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "x.img", IMG);
    let ctrl = dir.path().join("c.sock");
    let out = run(&[
        "serve",
        "--rpc-socket",
        s(&rpc_path),
        "--socket",
        s(&ctrl),
        "--disk",
        s(&img),
    ]);
    assert_one_line_failure(&out, "second daemon", &[s(&rpc_path), "live process"]);
    assert!(!ctrl.exists(), "the second daemon listened on its --socket");

    // The first one is untouched.
    assert!(d.alive());
    let v = rpc_of(&d).call("version", None).unwrap();
    assert_eq!(v["name"], "vhost-user-scsi");

    // A file that is not a socket is refused and left alone.
    let plain = dir.path().join("plain");
    fs::write(&plain, b"x").unwrap();
    let out = run(&["serve", "--rpc-socket", s(&plain)]);
    assert_one_line_failure(&out, "plain file", &[s(&plain), "not a socket"]);
    assert_eq!(fs::read(&plain).unwrap(), b"x");

    // The socket of a killed daemon is stale: the next one replaces it.
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(rpc_path.exists());
    let mut d2 = Daemon::start_with(
        |_| vec!["--rpc-socket".into(), rpc_path.display().to_string()],
        s(&rpc_path),
    );
    let mut answered = false;
    wait_until("the new daemon answers on the old path", || {
        answered = RpcClient::connect(&rpc_path)
            .and_then(|mut c| c.call("version", None))
            .is_ok();
        answered || !d2.alive()
    });
    assert!(answered, "{}", d2.log());
    assert_eq!(d2.stop(), Some(0));
    assert!(!rpc_path.exists());
}

/// `contrib/config.toml` with its absolute paths moved under `root`.
fn example_config(root: &Path) -> String {
    let text =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/config.toml")).unwrap();
    let r = s(root);
    let text = text
        .replace(
            "/dev/disk/by-id/nvme-EXAMPLE-part1",
            &format!("{r}/dev/data.img"),
        )
        .replace("/run/vhost-user-scsi", &format!("{r}/run"))
        .replace("/var/lib/", &format!("{r}/var/lib/"))
        .replace("127.0.0.1:9184", "127.0.0.1:0");
    // Nothing of the host's is left in the settings.
    for line in text.lines() {
        let setting = line.split('#').next().unwrap();
        if let Some(i) = setting.find("\"/") {
            assert!(setting[i + 1..].starts_with(r), "not rewritten: {line}");
        }
    }
    text
}

#[test]
fn example_config_starts() {
    let d = Daemon::start_with(
        |dir| {
            let text = example_config(dir);
            let file = dir.join("config.toml");
            fs::write(&file, &text).unwrap();
            // Create every image it names.
            let cfg = vhost_user_scsi::mgmt::config::parse(&text, &file).unwrap();
            for c in &cfg.controllers {
                for l in &c.luns {
                    assert!(l.path.starts_with(dir), "{}", l.path.display());
                    fs::create_dir_all(l.path.parent().unwrap()).unwrap();
                    fs::File::create(&l.path).unwrap().set_len(IMG).unwrap();
                }
            }
            vec!["--config".into(), file.display().to_string()]
        },
        "run/rpc.sock",
    );
    let list = connect(&d.path("run/rpc.sock"))
        .call("controller_list", None)
        .unwrap();
    assert_eq!(names(&list), ["vm1", "vm2"], "{list}");
    let by_name = |n: &str| -> Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .unwrap()
            .clone()
    };
    let vm1 = by_name("vm1");
    assert_eq!(vm1["num_queues"], 2);
    assert_eq!(vm1["queue_size"], 256);
    assert_eq!(vm1["socket"], s(&d.path("run/vm1.sock")));
    let luns = vm1["luns"].as_array().unwrap();
    assert_eq!(luns.len(), 2, "{vm1}");
    assert_eq!(luns[0]["lun"], 0);
    assert_eq!(luns[0]["serial"], "vm1-root");
    assert_eq!(luns[0]["readonly"], false);
    assert_eq!(luns[1]["lun"], 1);
    assert_eq!(luns[1]["block_size"], 4096);
    assert_eq!(luns[1]["serial"], "vm1-data");
    let vm2 = by_name("vm2");
    assert_eq!(vm2["num_queues"], 4);
    let luns = vm2["luns"].as_array().unwrap();
    assert_eq!(luns.len(), 1, "{vm2}");
    assert_eq!(luns[0]["lun"], 0);
    assert_eq!(luns[0]["readonly"], true);
    assert!(d.path("var/lib/vhost-user-scsi/pr").is_dir());

    let fe = d.connect_to("run/vm1.sock", 2);
    write_read(&fe, 0, 512, 5, 3);
    write_read(&fe, 1, 4096, 5, 4);
    // The data is in the files.
    let root = fs::read(d.path("var/lib/images/vm1.img")).unwrap();
    assert!(root[5 * 512..5 * 512 + 4096] == pattern(5, 3, 4096)[..]);
    let data = fs::read(d.path("dev/data.img")).unwrap();
    assert!(data[5 * 4096..6 * 4096] == pattern(5, 4, 4096)[..]);
}

#[test]
fn bad_config_files_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a.img", IMG);
    let rpc = dir.path().join("rpc.sock");
    let sock = dir.path().join("c.sock");
    let head = format!(
        "rpc_socket = \"{}\"\n\n[[controller]]\nname = \"vm1\"\nsocket = \"{}\"\n",
        rpc.display(),
        sock.display()
    );
    // (name, text, what stderr must contain besides the file name)
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "syntax",
            format!(
                "{head}num_queues = 2\n[[controller.lun]\npath = \"{}\"\n",
                img.display()
            ),
            vec![":7:".into(), "expected `]`".into()],
        ),
        (
            "unknown-key",
            format!("{head}num_queue = 2\n"),
            vec![
                ":6:1:".into(),
                "controller[0].num_queue: unknown field".into(),
            ],
        ),
        (
            "wrong-type",
            format!("{head}num_queues = \"two\"\n"),
            vec![
                ":6:14:".into(),
                "controller[0].num_queues: invalid type".into(),
            ],
        ),
        (
            "top-level-key",
            format!("bogus = 1\n{head}"),
            vec![":1:1:".into(), "bogus: unknown field".into()],
        ),
        (
            "out-of-range",
            format!("{head}num_queues = 0\n"),
            vec![":6:".into(), "controller[0].num_queues".into()],
        ),
        (
            "missing-image",
            format!(
                "{head}\n[[controller.lun]]\npath = \"{}/missing.img\"\n",
                dir.path().display()
            ),
            vec!["vm1".into(), "missing.img".into()],
        ),
    ];
    for (name, text, needles) in cases {
        let file = dir.path().join(format!("{name}.toml"));
        fs::write(&file, &text).unwrap();
        let out = run(&["serve", "--config", s(&file)]);
        let mut all: Vec<&str> = vec![s(&file)];
        all.extend(needles.iter().map(String::as_str));
        assert_one_line_failure(&out, name, &all);
        assert!(!rpc.exists(), "{name}: the RPC socket appeared");
        assert!(!sock.exists(), "{name}: the controller socket appeared");
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics` over `stream`: the body of a 200 answer.
fn scrape(mut stream: impl Read + Write) -> String {
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1."), "{head}");
    assert!(head.lines().next().unwrap().contains(" 200"), "{head}");
    body.to_string()
}

/// The value of the sample `metric` with label `controller="c"` and
/// `lun="0"`.
fn sample(body: &str, metric: &str, controller: &str) -> Option<f64> {
    let c = format!("controller=\"{controller}\"");
    body.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| l.contains(&c) && l.contains("lun=\"0\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Create controller `m` with one LUN, do I/O through it, and check that
/// `scrape` reports it.
fn metrics_follow_io(d: &Daemon, scrape: impl Fn() -> String) {
    let img = image(d.dir.path(), "m.img", IMG);
    let mut rpc = rpc_of(d);
    rpc.call(
        "controller_create",
        Some(json!({"name": "m", "socket": d.path("m.sock"), "num_queues": 1})),
    )
    .unwrap();
    rpc.call("lun_add", Some(json!({"controller": "m", "path": img})))
        .unwrap();
    let fe = d.connect_to("m.sock", 1);
    for lba in 0..4 {
        write_read(&fe, 0, 512, lba * 8, 5);
    }
    let mut body = String::new();
    wait_until("metrics show the I/O", || {
        body = scrape();
        let pos = |m| sample(&body, m, "m").is_some_and(|v| v > 0.0);
        pos("vhost_user_scsi_lun_reads_total")
            && pos("vhost_user_scsi_lun_writes_total")
            && pos("vhost_user_scsi_lun_read_bytes_total")
            && pos("vhost_user_scsi_lun_write_bytes_total")
    });
    assert!(
        sample(&body, "vhost_user_scsi_lun_write_bytes_total", "m").unwrap() >= 4.0 * 4096.0,
        "{body}"
    );
    assert!(
        body.contains("vhost_user_scsi_controller_connected{controller=\"m\"} 1"),
        "{body}"
    );
    assert!(body.contains("# TYPE vhost_user_scsi_lun_reads"), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
}

#[test]
fn metrics_over_tcp() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut d = Daemon::start_rpc(&["--metrics-addr", &addr]);
    metrics_follow_io(&d, || scrape(TcpStream::connect(&addr).unwrap()));
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn metrics_over_a_unix_socket() {
    let mut d = Daemon::start_with(
        |dir| {
            vec![
                "--rpc-socket".into(),
                dir.join("rpc.sock").display().to_string(),
                "--metrics-addr".into(),
                format!("unix:{}", dir.join("metrics.sock").display()),
            ]
        },
        "rpc.sock",
    );
    let path = d.path("metrics.sock");
    d.wait_for_path(&path);
    metrics_follow_io(&d, || scrape(UnixStream::connect(&path).unwrap()));
    // (Checked once it served: the daemon sets the mode just after bind.)
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "metrics socket mode {mode:o}");
    assert_eq!(d.stop(), Some(0));
    assert!(!path.exists(), "the metrics socket is left behind");
}

#[test]
fn bad_metrics_addresses_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = dir.path().join("rpc.sock");
    for addr in ["8.8.8.8:1", "garbage", "127.0.0.1", "unix:"] {
        let out = run(&["serve", "--rpc-socket", s(&rpc), "--metrics-addr", addr]);
        assert_one_line_failure(&out, addr, &["metrics", addr]);
        assert!(!rpc.exists(), "{addr}: the RPC socket appeared");
    }
}

/// Keeps up to 16 4-KiB writes in flight, each to its own 4-KiB slot, until
/// `stop`; returns the slots whose write was acknowledged GOOD.
fn writer(fe: ScsiFrontend, gen: u8, acked: &AtomicUsize, stop: &AtomicBool) -> Vec<u32> {
    let mut pending: HashMap<u64, u32> = HashMap::new();
    let mut done = Vec::new();
    let mut next = 0u32;
    let slots = (IMG / 4096) as u32;
    let mut ok = true;
    while !stop.load(Ordering::SeqCst) {
        while ok && pending.len() < 16 && next < slots {
            let data = pattern(u64::from(next), gen, 4096);
            let req = ScsiRequest::new(
                0,
                &cdb::write10(next * 8, 8, false),
                DataDir::ToDevice(&data),
            );
            match fe.submit((next % 2) as usize, &req) {
                Ok(tag) => {
                    pending.insert(tag, next);
                    next += 1;
                }
                Err(_) => ok = false,
            }
        }
        for q in 0..2 {
            let mut out = Vec::new();
            if fe
                .wait_completions(q, &mut out, Duration::from_millis(5))
                .is_err()
            {
                ok = false;
            }
            for c in out {
                if let Some(slot) = pending.remove(&c.tag) {
                    if c.scsi().is_some_and(|r| r.response == 0 && r.status == 0) {
                        done.push(slot);
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
    }
    // What the daemon completed before it went away.
    for q in 0..2 {
        let mut out = Vec::new();
        let _ = fe.wait_completions(q, &mut out, Duration::from_millis(50));
        for c in out {
            if let Some(slot) = pending.remove(&c.tag) {
                if c.scsi().is_some_and(|r| r.response == 0 && r.status == 0) {
                    done.push(slot);
                }
            }
        }
    }
    done
}

#[test]
fn sigterm_drains_and_cleans_up() {
    let mut d = Daemon::start_rpc(&[]);
    let mut rpc = rpc_of(&d);
    let mut imgs = Vec::new();
    let mut socks = Vec::new();
    for c in ["c1", "c2"] {
        let img = image(d.dir.path(), &format!("{c}.img"), IMG);
        let sock = d.path(&format!("{c}.sock"));
        rpc.call(
            "controller_create",
            Some(json!({"name": c, "socket": sock, "num_queues": 2})),
        )
        .unwrap();
        rpc.call("lun_add", Some(json!({"controller": c, "path": img})))
            .unwrap();
        imgs.push(img);
        socks.push(sock);
    }
    drop(rpc);
    let fes = [d.connect_to("c1.sock", 2), d.connect_to("c2.sock", 2)];
    let acked: Arc<[AtomicUsize; 2]> = Arc::new(Default::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = fes
        .into_iter()
        .enumerate()
        .map(|(i, fe)| {
            let acked = acked.clone();
            let stop = stop.clone();
            std::thread::spawn(move || writer(fe, 10 + i as u8, &acked[i], &stop))
        })
        .collect();
    wait_until("writes acknowledged on both controllers", || {
        acked.iter().all(|a| a.load(Ordering::SeqCst) >= 32)
    });
    let before: Vec<usize> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let code = d.stop();
    stop.store(true, Ordering::SeqCst);
    let done: Vec<Vec<u32>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(code, Some(0), "{}", d.log());
    assert!(
        !d.path("rpc.sock").exists(),
        "the RPC socket is left behind"
    );
    for sock in &socks {
        assert!(!sock.exists(), "{} is left behind", sock.display());
    }
    eprintln!(
        "acknowledged before SIGTERM: {before:?}, in the end: {:?}",
        done.iter().map(Vec::len).collect::<Vec<_>>()
    );
    for (i, (img, slots)) in imgs.iter().zip(&done).enumerate() {
        assert!(slots.len() >= 32, "controller {i}: {} acked", slots.len());
        let bytes = fs::read(img).unwrap();
        for &slot in slots {
            let at = slot as usize * 4096;
            assert!(
                bytes[at..at + 4096] == pattern(u64::from(slot), 10 + i as u8, 4096)[..],
                "{}: acknowledged slot {slot} is not in the file",
                img.display()
            );
        }
    }
}

fn ctl(rpc: &Path, args: &[&str]) -> Output {
    bin()
        .arg("ctl")
        .arg("--rpc-socket")
        .arg(rpc)
        .args(args)
        .env_remove("VHOST_USER_SCSI_RPC")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Stdout of a successful `ctl`.
fn ctl_ok(rpc: &Path, args: &[&str]) -> String {
    let o = ctl(rpc, args);
    assert!(
        o.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn ctl_against_the_daemon() {
    let mut d = Daemon::start_rpc(&[]);
    let rpc = d.path("rpc.sock");
    let img: PathBuf = image(d.dir.path(), "c.img", IMG);
    let sock = d.path("c1.sock");
    let out = ctl_ok(
        &rpc,
        &[
            "controller_create",
            "--name",
            "c1",
            "--socket",
            s(&sock),
            "--num-queues",
            "2",
        ],
    );
    assert!(out.contains("controller c1 created"), "{out}");
    assert!(sock.exists());
    let out = ctl_ok(&rpc, &["lun_add", "--controller", "c1", "--path", s(&img)]);
    assert!(out.contains("lun 0 added to c1"), "{out}");
    assert!(out.contains("8.0 MiB"), "{out}");

    let out = ctl_ok(&rpc, &["controller_list"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{out}");
    assert!(
        lines[1].starts_with("c1 ") && lines[1].contains(s(&img)),
        "{out}"
    );
    let v: Value = serde_json::from_str(&ctl_ok(&rpc, &["--json", "controller_list"])).unwrap();
    assert_eq!(v[0]["name"], "c1");
    assert_eq!(v[0]["num_queues"], 2);
    assert_eq!(v[0]["luns"][0]["path"], s(&img));

    // The controller ctl made serves I/O; stats count it.
    let fe = d.connect_to("c1.sock", 2);
    write_read(&fe, 0, 512, 0, 6);
    let out = ctl_ok(&rpc, &["stats", "--controller", "c1"]);
    assert!(out.contains("READS") && out.contains("c1"), "{out}");
    let v: Value = serde_json::from_str(&ctl_ok(&rpc, &["--json", "stats"])).unwrap();
    assert!(
        v["controllers"][0]["luns"][0]["writes"].as_u64().unwrap() >= 1,
        "{v}"
    );
    drop(fe);

    // A refused call: one line, non-zero.
    let o = ctl(
        &rpc,
        &[
            "controller_create",
            "--name",
            "c1",
            "--socket",
            s(&d.path("x.sock")),
        ],
    );
    assert_one_line_failure(&o, "duplicate", &["c1", "-32002"]);
    assert!(!d.path("x.sock").exists());

    // No daemon at all.
    let none = d.path("none.sock");
    let o = ctl(&none, &["controller_list"]);
    assert_one_line_failure(&o, "no daemon", &["no daemon is listening", s(&none)]);

    let out = ctl_ok(&rpc, &["controller_delete", "--name", "c1", "--force"]);
    assert!(out.contains("controller c1 deleted"), "{out}");
    assert!(!sock.exists());

    // `ctl shutdown` stops the daemon as SIGTERM does.
    let out = ctl_ok(&rpc, &["shutdown"]);
    assert!(out.contains("shutting down"), "{out}");
    let mut status = None;
    wait_until("the daemon exits after shutdown", || {
        status = d.child.as_mut().unwrap().try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0), "{}", d.log());
    assert!(!rpc.exists(), "the RPC socket is left behind");
}

#[test]
fn failed_start_leaves_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a.img", IMG);
    let rpc = dir.path().join("rpc.sock");
    let metrics = dir.path().join("metrics.sock");
    // The metrics port is taken: fails after the RPC socket is bound.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["serve", "--rpc-socket", s(&rpc), "--metrics-addr", &addr]);
    assert_one_line_failure(&out, "metrics port taken", &["metrics", &addr]);
    assert!(!rpc.exists(), "metrics port taken: the RPC socket is left");
    // A controller socket that cannot be bound (its directory cannot be
    // made: a regular file is in the way): fails after the RPC and metrics
    // sockets are bound.
    std::fs::write(dir.path().join("notadir"), b"x").unwrap();
    let ctrl = dir.path().join("notadir/c.sock");
    let out = run(&[
        "serve",
        "--rpc-socket",
        s(&rpc),
        "--metrics-addr",
        &format!("unix:{}", metrics.display()),
        "--socket",
        s(&ctrl),
        "--disk",
        s(&img),
    ]);
    // (The metrics server was already up and said so: only the error line
    // is checked here.)
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vhost-user-scsi: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(s(&ctrl)), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!rpc.exists(), "controller bind: the RPC socket is left");
    assert!(
        !metrics.exists(),
        "controller bind: the metrics socket is left"
    );
    // A command-line --rpc-socket wins over the file's.
    let file_rpc = dir.path().join("file-rpc.sock");
    let cfg = dir.path().join("c.toml");
    fs::write(&cfg, format!("rpc_socket = \"{}\"\n", file_rpc.display())).unwrap();
    let mut d = Daemon::start_with(
        |d| {
            vec![
                "--config".into(),
                cfg.display().to_string(),
                "--rpc-socket".into(),
                d.join("rpc.sock").display().to_string(),
            ]
        },
        "rpc.sock",
    );
    assert!(!file_rpc.exists(), "the file's rpc_socket was used");
    assert_eq!(d.stop(), Some(0));
}
