//! The management socket end to end on the host: `RpcServer` serving a mock
//! `Api` in a temp dir, spoken to by `RpcClient`, by raw bytes, and by the
//! `ctl` command of the built binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use vhost_user_scsi::mgmt::api::*;
use vhost_user_scsi::mgmt::rpc_client::{ClientError, RpcClient};
use vhost_user_scsi::mgmt::rpc_server::{RpcHandle, RpcServer, RpcServerError};

/// Keeps one controller `vm1` with LUNs; counts calls.
#[derive(Default)]
struct MockApi {
    luns: Mutex<Vec<LunInfo>>,
    calls: AtomicU64,
    shutdowns: AtomicU64,
}

impl MockApi {
    fn info(&self) -> ControllerInfo {
        ControllerInfo {
            name: "vm1".into(),
            socket: "/run/vm1.sock".into(),
            num_queues: 4,
            queue_size: 256,
            initiator: None,
            socket_group: None,
            socket_mode: None,
            poll_max_us: 32,
            connected: true,
            state: "connected".into(),
            last_error: None,
            luns: self.luns.lock().unwrap().clone(),
        }
    }
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

impl Api for MockApi {
    fn controller_create(&self, p: ControllerCreate) -> Result<ControllerInfo, ApiError> {
        self.count();
        if p.name == "vm1" {
            return Err(ApiError::exists("controller `vm1` exists"));
        }
        Ok(ControllerInfo {
            name: p.name,
            socket: p.socket,
            num_queues: p.num_queues.unwrap_or(4),
            queue_size: p.queue_size.unwrap_or(256),
            initiator: None,
            socket_group: None,
            socket_mode: None,
            poll_max_us: 32,
            connected: false,
            state: "listening".into(),
            last_error: None,
            luns: vec![],
        })
    }
    fn controller_delete(&self, p: ControllerDelete) -> Result<(), ApiError> {
        self.count();
        if p.name == "slow" {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        Ok(())
    }
    fn controller_list(&self) -> Result<Vec<ControllerInfo>, ApiError> {
        self.count();
        Ok(vec![self.info()])
    }
    fn lun_add(&self, p: LunAdd) -> Result<LunInfo, ApiError> {
        self.count();
        if p.controller != "vm1" {
            return Err(ApiError::not_found(format!(
                "no controller `{}`",
                p.controller
            )));
        }
        let bs = p.block_size.unwrap_or(512);
        let info = LunInfo {
            lun: p.lun.unwrap_or(0),
            path: p.path,
            readonly: p.readonly,
            block_size: bs,
            num_blocks: (64 << 20) / u64::from(bs),
            size: 64 << 20,
            serial: p.serial.unwrap_or_else(|| "serial".into()),
            passthrough: p.passthrough,
        };
        self.luns.lock().unwrap().push(info.clone());
        Ok(info)
    }
    fn lun_remove(&self, p: LunRemove) -> Result<(), ApiError> {
        self.count();
        let mut luns = self.luns.lock().unwrap();
        let before = luns.len();
        luns.retain(|l| l.lun != p.lun);
        if luns.len() == before {
            return Err(ApiError::not_found(format!("no lun {}", p.lun)));
        }
        Ok(())
    }
    fn lun_resize(&self, p: LunResize) -> Result<LunInfo, ApiError> {
        self.count();
        // Echo the request in the answer so the caller can check it.
        Ok(LunInfo {
            lun: p.lun,
            path: "/img".into(),
            readonly: false,
            block_size: 512,
            num_blocks: p.size.unwrap_or(0) / 512,
            size: p.size.unwrap_or(0),
            serial: p.controller,
            passthrough: false,
        })
    }
    fn stats(&self, p: StatsQuery) -> Result<Stats, ApiError> {
        self.count();
        Ok(Stats {
            controllers: vec![ControllerStats {
                name: p.controller.unwrap_or_else(|| "vm1".into()),
                connected: true,
                state: "connected".into(),
                last_error: None,
                errors: 0,
                connections: 2,
                queues: vec![QueueStats {
                    queue: 0,
                    requests: 1000,
                    in_flight: 1,
                }],
                luns: vec![LunStats {
                    lun: p.lun.unwrap_or(0),
                    path: "/img/a.img".into(),
                    reads: 10,
                    writes: 5,
                    read_bytes: 3 << 20,
                    write_bytes: 1 << 20,
                    latency: Latency {
                        p50_us: 12.5,
                        p99_us: 200.0,
                        ..Latency::default()
                    },
                    ..LunStats::default()
                }],
            }],
        })
    }
    fn shutdown(&self) -> Result<(), ApiError> {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    api: Arc<MockApi>,
    handle: Option<RpcHandle>,
}

fn serve() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rpc.sock");
    let api = Arc::new(MockApi::default());
    let handle = RpcServer::bind(&path, None)
        .unwrap()
        .spawn(api.clone())
        .unwrap();
    Fixture {
        _dir: dir,
        path,
        api,
        handle: Some(handle),
    }
}

/// Send raw bytes, read the answer lines until the server closes or
/// `lines` lines arrived.
fn raw(path: &Path, bytes: &[u8], lines: usize) -> Vec<Value> {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(bytes).unwrap();
    let mut r = BufReader::new(s);
    let mut out = vec![];
    for _ in 0..lines {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        assert!(line.ends_with('\n'), "{line}");
        out.push(serde_json::from_str(&line).unwrap());
    }
    out
}

/// Whether the server closed `s`.
fn closed(mut s: UnixStream) -> bool {
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    // A socket closed with unread data resets its peer (Linux AF_UNIX).
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn good_calls_through_the_client() {
    let f = serve();
    let mut c = RpcClient::connect(&f.path).unwrap();
    let v = c.call("version", None).unwrap();
    assert_eq!(v["name"], "vhost-user-scsi");
    let info = c
        .call(
            "lun_add",
            Some(json!({"controller": "vm1", "path": "/img/a.img", "lun": 1})),
        )
        .unwrap();
    assert_eq!(info["lun"], 1);
    let list: Vec<ControllerInfo> =
        serde_json::from_value(c.call("controller_list", Some(json!({}))).unwrap()).unwrap();
    assert_eq!(list[0].luns.len(), 1);
    assert_eq!(
        c.call("lun_remove", Some(json!({"controller": "vm1", "lun": 1})))
            .unwrap(),
        json!(true)
    );
    match c.call("lun_remove", Some(json!({"controller": "vm1", "lun": 1}))) {
        Err(ClientError::Rpc(e)) => assert_eq!(e.code, code::NOT_FOUND),
        other => panic!("{other:?}"),
    }
    match c.call("lun_remove", Some(json!({"controller": "vm1"}))) {
        Err(ClientError::Rpc(e)) => {
            assert_eq!(e.code, code::INVALID_PARAMS);
            assert!(e.message.contains("missing field `lun`"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    match c.call("frobnicate", None) {
        Err(ClientError::Rpc(e)) => assert_eq!(e.code, code::METHOD_NOT_FOUND),
        other => panic!("{other:?}"),
    }
    // The connection is still usable after errors.
    c.call("shutdown", None).unwrap();
    assert_eq!(f.api.shutdowns.load(Ordering::SeqCst), 1);
}

#[test]
fn notification_gets_no_answer() {
    let f = serve();
    // A notification, then a call on the same line stream: the only answer
    // is the call's.
    let answers = raw(
        &f.path,
        b"{\"jsonrpc\":\"2.0\",\"method\":\"shutdown\"}\n{\"jsonrpc\":\"2.0\",\"method\":\"version\",\"id\":9}\n",
        1,
    );
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["id"], 9);
    assert_eq!(f.api.shutdowns.load(Ordering::SeqCst), 1);
}

#[test]
fn values_back_to_back_without_newlines() {
    let f = serve();
    let answers = raw(
        &f.path,
        b"{\"jsonrpc\":\"2.0\",\"method\":\"version\",\"id\":1}  {\"jsonrpc\":\"2.0\",\"method\":\"version\",\"id\":\"two\"}",
        2,
    );
    assert_eq!(answers[0]["id"], 1);
    assert_eq!(answers[1]["id"], "two");
}

#[test]
fn batch() {
    let f = serve();
    let req = json!([
        {"jsonrpc": "2.0", "method": "version", "id": 1},
        {"jsonrpc": "2.0", "method": "shutdown"},
        {"jsonrpc": "2.0", "method": "lun_remove", "params": {"controller": "vm1"}, "id": 2},
        {"foo": "boo"},
    ]);
    let answers = raw(&f.path, format!("{req}\n").as_bytes(), 1);
    let a = answers[0].as_array().unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(a[0]["id"], 1);
    assert_eq!(a[1]["error"]["code"], code::INVALID_PARAMS);
    assert_eq!(a[2]["error"]["code"], code::INVALID_REQUEST);
    assert_eq!(a[2]["id"], Value::Null);
    let answers = raw(&f.path, b"[]\n", 1);
    assert_eq!(answers[0]["error"]["code"], code::INVALID_REQUEST);
}

#[test]
fn parse_error_closes_the_connection() {
    let f = serve();
    let mut s = UnixStream::connect(&f.path).unwrap();
    s.write_all(
        b"{\"jsonrpc\":\"2.0\",\"method\":\"version\",\"id\":1}\n{\"jsonrpc\": \"2.0\", \"method\n",
    )
    .unwrap();
    s.write_all(b"\": oops}\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let first: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(first["id"], 1);
    line.clear();
    r.read_line(&mut line).unwrap();
    let err: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(err["error"]["code"], code::PARSE_ERROR);
    assert_eq!(err["id"], Value::Null);
    line.clear();
    assert_eq!(r.read_line(&mut line).unwrap(), 0, "not closed: {line}");
}

#[test]
fn invalid_request() {
    let f = serve();
    let answers = raw(
        &f.path,
        b"{\"jsonrpc\":\"1.0\",\"method\":\"version\",\"id\":4}\n\"hello\"\n",
        2,
    );
    assert_eq!(answers[0]["error"]["code"], code::INVALID_REQUEST);
    assert_eq!(answers[0]["id"], 4);
    assert_eq!(answers[1]["error"]["code"], code::INVALID_REQUEST);
}

#[test]
fn oversized_request_is_refused() {
    let f = serve();
    let mut s = UnixStream::connect(&f.path).unwrap();
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"version\",\"params\":{{\"x\":\"{}\"}},\"id\":1}}\n",
        "a".repeat(2 << 20)
    );
    let writer = {
        let mut s = s.try_clone().unwrap();
        // The server stops reading, so this write may fail: that is fine.
        std::thread::spawn(move || {
            let _ = s.write_all(big.as_bytes());
        })
    };
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line).unwrap();
    let a: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(a["error"]["code"], code::INVALID_REQUEST);
    assert!(
        a["error"]["message"].as_str().unwrap().contains("larger"),
        "{a}"
    );
    assert!(closed(s));
    writer.join().unwrap();
    // The server is fine.
    RpcClient::connect(&f.path)
        .unwrap()
        .call("version", None)
        .unwrap();
}

#[test]
fn socket_mode_is_0600() {
    let f = serve();
    let meta = std::fs::metadata(&f.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn second_bind_on_a_live_socket_is_refused() {
    let f = serve();
    let e = RpcServer::bind(&f.path, None).unwrap_err();
    assert!(matches!(e, RpcServerError::InUse(_)), "{e:?}");
    assert!(e
        .to_string()
        .contains("is already served by a live process"));
    // The first server still works.
    RpcClient::connect(&f.path)
        .unwrap()
        .call("version", None)
        .unwrap();
}

#[test]
fn stale_socket_is_replaced_and_other_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rpc.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let handle = RpcServer::bind(&path, None)
        .unwrap()
        .spawn(Arc::new(MockApi::default()))
        .unwrap();
    RpcClient::connect(&path)
        .unwrap()
        .call("version", None)
        .unwrap();
    handle.stop();

    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let e = RpcServer::bind(&file, None).unwrap_err();
    assert!(matches!(e, RpcServerError::NotASocket(_)), "{e:?}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn stop_removes_the_file_and_ends_connections() {
    let mut f = serve();
    let idle = UnixStream::connect(&f.path).unwrap();
    let mut c = RpcClient::connect(&f.path).unwrap();
    c.call("version", None).unwrap();
    f.handle.take().unwrap().stop();
    assert!(!f.path.exists());
    assert!(closed(idle));
    assert!(matches!(
        c.call("version", None),
        Err(ClientError::Protocol(_))
    ));
    assert!(matches!(
        RpcClient::connect(&f.path),
        Err(ClientError::NotRunning { .. })
    ));
}

#[test]
fn stop_lets_a_call_in_progress_finish() {
    let mut f = serve();
    let path = f.path.clone();
    let call = std::thread::spawn(move || {
        let mut c = RpcClient::connect(&path).unwrap();
        c.call("controller_delete", Some(json!({"name": "slow"})))
    });
    // Let the call start.
    while f.api.calls.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    f.handle.take().unwrap().stop();
    assert_eq!(call.join().unwrap().unwrap(), json!(true));
}

#[test]
fn connections_over_the_limit_are_refused() {
    use vhost_user_scsi::mgmt::rpc_server::{MAX_CONNECTIONS, TOO_MANY_CONNECTIONS};
    let f = serve();
    let mut clients: Vec<RpcClient> = (0..MAX_CONNECTIONS)
        .map(|_| RpcClient::connect(&f.path).unwrap())
        .collect();
    // Every one is being served once it has had an answer.
    for c in &mut clients {
        c.call("version", None).unwrap();
    }
    let mut extra = RpcClient::connect(&f.path).unwrap();
    match extra.call("version", None) {
        Err(ClientError::Rpc(e)) => assert_eq!(e.code, TOO_MANY_CONNECTIONS),
        other => panic!("{other:?}"),
    }
    drop(clients.pop());
    // The freed slot is usable (its thread may take a moment to end).
    let start = std::time::Instant::now();
    loop {
        match RpcClient::connect(&f.path).unwrap().call("version", None) {
            Ok(_) => break,
            Err(e) if start.elapsed() < std::time::Duration::from_secs(5) => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn bind_creates_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/vhost-user-scsi/rpc.sock");
    let handle = RpcServer::bind(&path, None)
        .unwrap()
        .spawn(Arc::new(MockApi::default()))
        .unwrap();
    assert!(path.exists());
    handle.stop();
}

#[test]
fn drop_stops_too() {
    let f = serve();
    let path = f.path.clone();
    drop(f.handle);
    assert!(!path.exists());
}

#[test]
fn many_concurrent_clients() {
    let f = serve();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let path = f.path.clone();
            std::thread::spawn(move || {
                let mut c = RpcClient::connect(&path).unwrap();
                for i in 0..50u64 {
                    let size = (t * 1000 + i) * 512;
                    let v = c
                        .call(
                            "lun_resize",
                            Some(json!({"controller": format!("c{t}"), "lun": i, "size": size})),
                        )
                        .unwrap();
                    assert_eq!(v["size"], size);
                    assert_eq!(v["lun"], i);
                    assert_eq!(v["serial"], format!("c{t}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(f.api.calls.load(Ordering::SeqCst), 400);
}

// ---- the ctl command of the built binary ----

fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .arg("ctl")
        .arg("--rpc-socket")
        .arg(socket)
        .args(args)
        .env_remove("VHOST_USER_SCSI_RPC")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn ctl_without_daemon_fails_in_one_line() {
    let o = ctl(Path::new("/nonexistent"), &["version"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.contains("no daemon is listening on /nonexistent"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn ctl_talks_to_the_daemon() {
    let f = serve();
    let out = stdout(&ctl(
        &f.path,
        &[
            "lun_add",
            "--controller",
            "vm1",
            "--path",
            "/img/a.img",
            "--lun",
            "1",
        ],
    ));
    assert_eq!(
        out.trim(),
        "lun 1 added to vm1: /img/a.img (64.0 MiB, 512-byte blocks)"
    );
    let out = stdout(&ctl(&f.path, &["controller_list"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{out}");
    assert!(lines[1].contains("/img/a.img"), "{out}");
    // The socket from the environment.
    let o = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .args(["ctl", "version"])
        .env("VHOST_USER_SCSI_RPC", &f.path)
        .output()
        .unwrap();
    assert!(stdout(&o).starts_with("vhost-user-scsi "));
    let out = stdout(&ctl(&f.path, &["--json", "version"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "vhost-user-scsi");
    let out = stdout(&ctl(&f.path, &["stats"]));
    assert!(out.contains("READS"), "{out}");
    let out = stdout(&ctl(
        &f.path,
        &[
            "lun_resize",
            "--controller",
            "vm1",
            "--lun",
            "1",
            "--size",
            "1G",
        ],
    ));
    assert!(out.contains("1.0 GiB"), "{out}");
    let out = stdout(&ctl(
        &f.path,
        &["call", "lun_remove", r#"{"controller":"vm1","lun":1}"#],
    ));
    assert_eq!(out.trim(), "true");

    // A refusal: one line with the code, exit 1.
    let o = ctl(
        &f.path,
        &["controller_create", "--name", "vm1", "--socket", "/s"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(
        err.trim(),
        format!(
            "vhost-user-scsi: error: controller `vm1` exists (code {})",
            code::EXISTS
        )
    );
}
