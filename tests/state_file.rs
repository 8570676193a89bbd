//! `serve --state-file`: controllers and LUNs made over JSON-RPC survive a
//! `kill -9` of the daemon (same sockets, LUN numbers, serials, device
//! identifiers, capacity, data), a damaged state file is one line and exit
//! 1 before anything listens, the state file does not mix with other
//! sources of controllers, and a change the file cannot record is undone.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{image, pattern, run, Daemon};
use vhost_user_scsi::frontend::{cdb, DataDir, ScsiFrontend};
use vhost_user_scsi::mgmt::api::{code, ApiError};
use vhost_user_scsi::mgmt::rpc_client::{ClientError, RpcClient};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The paths one test uses, all under its own temp dir (the daemon's own
/// temp dir only keeps its log, so a restarted daemon finds everything).
struct Paths {
    root: tempfile::TempDir,
}

impl Paths {
    fn new() -> Paths {
        Paths {
            root: tempfile::tempdir().unwrap(),
        }
    }
    fn at(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }
    fn rpc(&self) -> PathBuf {
        self.at("rpc.sock")
    }
    fn state(&self) -> PathBuf {
        self.at("state/state.json")
    }
}

/// `serve --rpc-socket R --state-file S`, nothing else.
fn start(p: &Paths) -> Daemon {
    let args = vec![
        "--rpc-socket".to_string(),
        p.rpc().display().to_string(),
        "--state-file".to_string(),
        p.state().display().to_string(),
    ];
    // An absolute `wait_for` is the RPC socket itself.
    Daemon::start_with(|_| args, s(&p.rpc()))
}

/// A client on the RPC socket, retried while it is refused (a daemon
/// killed with SIGKILL leaves its socket file behind until the next one
/// replaces it).
fn connect(d: &Daemon, path: &Path) -> RpcClient {
    let start = Instant::now();
    loop {
        match RpcClient::connect(path) {
            Ok(c) => return c,
            Err(ClientError::NotRunning { .. }) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("rpc connect {}: {e}\n{}", path.display(), d.log()),
        }
    }
}

fn call(rpc: &mut RpcClient, d: &Daemon, method: &str, params: Value) -> Value {
    rpc.call(method, Some(params.clone()))
        .unwrap_or_else(|e| panic!("{method} {params}: {e}\n{}", d.log()))
}

fn refused(rpc: &mut RpcClient, method: &str, params: Value) -> ApiError {
    match rpc.call(method, Some(params.clone())) {
        Err(ClientError::Rpc(e)) => e,
        other => panic!("{method} {params}: expected an error answer, got {other:?}"),
    }
}

fn list(rpc: &mut RpcClient, d: &Daemon) -> Value {
    let mut v = rpc
        .call("controller_list", None)
        .unwrap_or_else(|e| panic!("controller_list: {e}\n{}", d.log()));
    // Whether a frontend is connected (and how the accept loop fares) is
    // not state.
    for c in v.as_array_mut().unwrap() {
        let c = c.as_object_mut().unwrap();
        for k in ["connected", "state", "last_error"] {
            c.remove(k);
        }
    }
    v
}

fn saved(p: &Paths) -> Value {
    serde_json::from_str(&fs::read_to_string(p.state()).unwrap()).unwrap()
}

/// (controller, LUN numbers) as the state file lists them.
fn saved_luns(p: &Paths) -> Vec<(String, Vec<u64>)> {
    saved(p)["controllers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let luns = c["luns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["lun"].as_u64().unwrap())
                .collect();
            (c["name"].as_str().unwrap().to_string(), luns)
        })
        .collect()
}

/// Run a command, retrying while it reports a unit attention.
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

fn good(fe: &ScsiFrontend, lun: u16, cdb: &[u8], dir: DataDir<'_>) -> Vec<u8> {
    let (st, data) = command(fe, lun, cdb, dir);
    assert_eq!(st, 0, "LUN {lun} CDB {cdb:02x?}: status {st:#x}");
    data
}

fn report_luns(fe: &ScsiFrontend) -> Vec<u16> {
    let d = good(fe, 0, &cdb::report_luns(0, 4096), DataDir::FromDevice(4096));
    let n = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize / 8;
    (0..n)
        .map(|i| u16::from_be_bytes([d[8 + 8 * i], d[9 + 8 * i]]) & 0x3fff)
        .collect()
}

/// What a guest sees of a LUN.
#[derive(Debug, PartialEq, Eq)]
struct View {
    /// VPD 80h (unit serial number), whole page.
    serial: Vec<u8>,
    /// VPD 83h (device identification), whole page.
    ids: Vec<u8>,
    /// READ CAPACITY(16): blocks, block length.
    capacity: (u64, u32),
    /// MODE SENSE: the WP bit.
    write_protected: bool,
}

fn view(fe: &ScsiFrontend, lun: u16) -> View {
    let serial = good(
        fe,
        lun,
        &cdb::inquiry(true, 0x80, 255),
        DataDir::FromDevice(255),
    );
    let ids = good(
        fe,
        lun,
        &cdb::inquiry(true, 0x83, 255),
        DataDir::FromDevice(255),
    );
    let c = good(fe, lun, &cdb::read_capacity16(32), DataDir::FromDevice(32));
    let m = good(
        fe,
        lun,
        &cdb::mode_sense6(true, 0, 0x3f, 0, 255),
        DataDir::FromDevice(255),
    );
    View {
        serial,
        ids,
        capacity: (
            u64::from_be_bytes(c[0..8].try_into().unwrap()) + 1,
            u32::from_be_bytes(c[8..12].try_into().unwrap()),
        ),
        write_protected: m[2] & 0x80 != 0,
    }
}

/// The unit serial number in a VPD 80h page.
fn serial_of(v: &View) -> String {
    String::from_utf8(v.serial[4..].to_vec()).unwrap()
}

fn write(fe: &ScsiFrontend, lun: u16, bs: usize, lba: u32, gen: u8) {
    let data = pattern(u64::from(lba), gen, 4096);
    good(
        fe,
        lun,
        &cdb::write10(lba, (4096 / bs) as u16, false),
        DataDir::ToDevice(&data),
    );
}

fn read_back(fe: &ScsiFrontend, lun: u16, bs: usize, lba: u32, gen: u8) {
    let got = good(
        fe,
        lun,
        &cdb::read10(lba, (4096 / bs) as u16, false),
        DataDir::FromDevice(4096),
    );
    assert!(
        got == pattern(u64::from(lba), gen, 4096),
        "LUN {lun} block {lba}: data differs"
    );
}

fn kill_9(d: &mut Daemon) {
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn endpoints_survive_kill_9() {
    let p = Paths::new();
    let a = image(p.root.path(), "a.img", 8 * MIB);
    let b = image(p.root.path(), "b.img", 8 * MIB);
    let c = image(p.root.path(), "c.img", 4 * MIB);
    let d_img = image(p.root.path(), "d.img", 4 * MIB);
    let e = image(p.root.path(), "e.img", 4 * MIB);
    let (vm1, vm2) = (p.at("vm1.sock"), p.at("vm2.sock"));

    let mut d = start(&p);
    // The file exists from the first start, directory included.
    assert_eq!(saved(&p), json!({"version": 1, "controllers": []}));
    let mut rpc = connect(&d, &p.rpc());
    call(
        &mut rpc,
        &d,
        "controller_create",
        json!({"name": "vm1", "socket": vm1, "num_queues": 2, "queue_size": 128}),
    );
    call(
        &mut rpc,
        &d,
        "controller_create",
        json!({"name": "vm2", "socket": vm2}),
    );
    assert_eq!(
        saved_luns(&p),
        [("vm1".to_string(), vec![]), ("vm2".to_string(), vec![])]
    );
    // Defaults (LUN number, serial, block size), explicit values, readonly.
    let lun0 = call(
        &mut rpc,
        &d,
        "lun_add",
        json!({"controller": "vm1", "path": a}),
    );
    assert_eq!(lun0["lun"], 0);
    call(
        &mut rpc,
        &d,
        "lun_add",
        json!({"controller": "vm1", "path": b, "lun": 5, "block_size": 4096, "serial": "vm1 data~"}),
    );
    call(
        &mut rpc,
        &d,
        "lun_add",
        json!({"controller": "vm1", "path": c, "lun": 2, "readonly": true}),
    );
    call(
        &mut rpc,
        &d,
        "lun_add",
        json!({"controller": "vm1", "path": e, "lun": 3}),
    );
    call(
        &mut rpc,
        &d,
        "lun_add",
        json!({"controller": "vm2", "path": d_img, "serial": "vm2-root"}),
    );
    // A disk shared by both controllers.
    call(
        &mut rpc,
        &d,
        "lun_add",
        json!({"controller": "vm2", "path": a, "lun": 1}),
    );
    assert_eq!(
        saved_luns(&p),
        [
            ("vm1".to_string(), vec![0, 2, 3, 5]),
            ("vm2".to_string(), vec![0, 1])
        ]
    );
    call(
        &mut rpc,
        &d,
        "lun_remove",
        json!({"controller": "vm1", "lun": 3}),
    );
    assert_eq!(
        saved_luns(&p),
        [
            ("vm1".to_string(), vec![0, 2, 5]),
            ("vm2".to_string(), vec![0, 1])
        ]
    );
    // A resize grows the image: nothing to record, the image keeps it.
    let before_resize = fs::read_to_string(p.state()).unwrap();
    call(
        &mut rpc,
        &d,
        "lun_resize",
        json!({"controller": "vm1", "lun": 0, "size": 12 * MIB}),
    );
    assert_eq!(fs::read_to_string(p.state()).unwrap(), before_resize);

    // The effective values are what the file holds.
    let state = saved(&p);
    let l0 = &state["controllers"][0]["luns"][0];
    assert_eq!(l0["serial"], lun0["serial"]);
    assert_eq!(l0["block_size"], 512);
    assert_eq!(l0["readonly"], false);
    assert_eq!(l0["path"], json!(a));
    assert_eq!(state["controllers"][1]["num_queues"], 4);
    assert_eq!(state["controllers"][1]["queue_size"], 256);

    // What the guests see, and data written through them.
    let fe1 = d.connect_to(s(&vm1), 2);
    let fe2 = d.connect_to(s(&vm2), 1);
    assert_eq!(report_luns(&fe1), [0, 2, 5]);
    assert_eq!(report_luns(&fe2), [0, 1]);
    let views1: Vec<View> = [0, 2, 5].iter().map(|&l| view(&fe1, l)).collect();
    let views2: Vec<View> = [0, 1].iter().map(|&l| view(&fe2, l)).collect();
    assert_eq!(views1[0].capacity, (12 * MIB / 512, 512));
    assert_eq!(views1[2].capacity, (8 * MIB / 4096, 4096));
    assert_eq!(serial_of(&views1[2]), "vm1 data~");
    assert!(views1[1].write_protected && !views1[0].write_protected);
    assert_eq!(views2[1], views1[0], "the shared disk differs");
    write(&fe1, 0, 512, 100, 1);
    write(&fe1, 5, 4096, 7, 2);
    write(&fe2, 0, 512, 9, 3);
    // The LUN added on top of the resize's new blocks too.
    write(&fe1, 0, 512, (10 * MIB / 512) as u32, 4);
    let listed = list(&mut rpc, &d);
    let file = fs::read_to_string(p.state()).unwrap();

    // SIGKILL with the guests connected: no clean-up at all.
    kill_9(&mut d);
    drop((fe1, fe2, rpc));
    assert!(vm1.exists() && p.rpc().exists(), "stale sockets expected");

    let d = start(&p);
    let mut rpc = connect(&d, &p.rpc());
    // controller_list answers once every controller listens.
    assert_eq!(list(&mut rpc, &d), listed);
    let fe1 = d.connect_to(s(&vm1), 2);
    let fe2 = d.connect_to(s(&vm2), 1);
    assert_eq!(report_luns(&fe1), [0, 2, 5]);
    assert_eq!(report_luns(&fe2), [0, 1]);
    let again1: Vec<View> = [0, 2, 5].iter().map(|&l| view(&fe1, l)).collect();
    let again2: Vec<View> = [0, 1].iter().map(|&l| view(&fe2, l)).collect();
    assert_eq!(again1, views1);
    assert_eq!(again2, views2);
    read_back(&fe1, 0, 512, 100, 1);
    read_back(&fe1, 5, 4096, 7, 2);
    read_back(&fe2, 0, 512, 9, 3);
    read_back(&fe1, 0, 512, (10 * MIB / 512) as u32, 4);
    read_back(&fe2, 1, 512, 100, 1);
    // Rewritten at start with the same content.
    assert_eq!(fs::read_to_string(p.state()).unwrap(), file);
    // And it keeps following changes.
    call(
        &mut rpc,
        &d,
        "lun_remove",
        json!({"controller": "vm2", "lun": 1}),
    );
    call(
        &mut rpc,
        &d,
        "controller_delete",
        json!({"name": "vm2", "force": true}),
    );
    assert_eq!(saved_luns(&p), [("vm1".to_string(), vec![0, 2, 5])]);
}

/// Exit code 1, exactly one line on stderr containing every needle.
fn assert_one_line_failure(out: &Output, what: &str, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
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
}

#[test]
fn damaged_state_file_is_one_line_and_exit_1() {
    let p = Paths::new();
    let img = image(p.root.path(), "a.img", 4 * MIB);
    let ctrl = p.at("c.sock");
    let controller = |luns: &str| {
        format!(
            r#"{{"version": 1, "controllers": [{{"name": "vm1", "socket": "{}", "luns": [{luns}]}}]}}"#,
            ctrl.display()
        )
    };
    let lun = |n: u16, path: &Path| format!(r#"{{"lun": {n}, "path": "{}"}}"#, path.display());
    let missing = p.at("missing.img");
    // (what, content, needles besides the file name)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "bad JSON",
            "{\"version\": 1,\n  \"controllers\": [\n".into(),
            vec![":3:", "EOF"],
        ),
        ("empty", String::new(), vec![":1:1:", "EOF"]),
        (
            "unknown version",
            r#"{"version": 2, "controllers": []}"#.into(),
            vec!["version: unsupported version 2"],
        ),
        (
            "bad field",
            controller(&format!(
                r#"{{"path": "{}", "block_size": "4k"}}"#,
                img.display()
            )),
            vec!["controllers[0].luns[0].block_size: invalid type"],
        ),
        (
            "out of range",
            controller(&format!(
                r#"{{"path": "{}", "block_size": 1024}}"#,
                img.display()
            )),
            vec!["controllers[0].luns[0].block_size: 1024 is not a supported block size"],
        ),
        (
            "duplicate names",
            format!(
                r#"{{"version": 1, "controllers": [{{"name": "a", "socket": "{0}/x.sock"}}, {{"name": "a", "socket": "{0}/y.sock"}}]}}"#,
                p.root.path().display()
            ),
            vec!["controllers[1].name", "already used by controllers[0]"],
        ),
        (
            "duplicate LUNs",
            controller(&format!("{}, {}", lun(1, &img), lun(1, &p.at("b.img")))),
            vec!["controllers[0].luns[1].lun: LUN 1 is already used"],
        ),
        (
            "missing disk",
            controller(&lun(0, &missing)),
            vec!["controller vm1", "missing.img", "No such file"],
        ),
    ];
    for (what, text, needles) in cases {
        fs::create_dir_all(p.state().parent().unwrap()).unwrap();
        fs::write(p.state(), &text).unwrap();
        let out = run(&[
            "serve",
            "--rpc-socket",
            s(&p.rpc()),
            "--state-file",
            s(&p.state()),
        ]);
        let state = p.state();
        let mut all = vec![s(&state)];
        all.extend(needles);
        assert_one_line_failure(&out, what, &all);
        assert!(!p.rpc().exists(), "{what}: the RPC socket appeared");
        assert!(!ctrl.exists(), "{what}: the controller socket appeared");
        assert_eq!(
            fs::read_to_string(p.state()).unwrap(),
            text,
            "{what}: the file was changed"
        );
    }
    // A directory where the file should be.
    fs::remove_file(p.state()).unwrap();
    fs::create_dir(p.state()).unwrap();
    let out = run(&[
        "serve",
        "--rpc-socket",
        s(&p.rpc()),
        "--state-file",
        s(&p.state()),
    ]);
    assert_one_line_failure(&out, "directory", &[s(&p.state()), "Is a directory"]);
    assert!(!p.rpc().exists());
}

#[test]
fn state_file_holds_every_controller_alone() {
    let p = Paths::new();
    let img = image(p.root.path(), "a.img", 4 * MIB);
    let ctrl = p.at("c.sock");
    let config = p.at("config.toml");
    let with_controller = format!(
        "[[controller]]\nname = \"vm1\"\nsocket = \"{}\"\n[[controller.lun]]\npath = \"{}\"\n",
        ctrl.display(),
        img.display()
    );

    // --state-file with --socket, or with [[controller]] tables: refused,
    // whether the state file exists or not, before anything is created.
    fs::write(&config, &with_controller).unwrap();
    for exists in [false, true] {
        if exists {
            fs::create_dir_all(p.state().parent().unwrap()).unwrap();
            fs::write(p.state(), r#"{"version": 1, "controllers": []}"#).unwrap();
        }
        let out = run(&[
            "serve",
            "--rpc-socket",
            s(&p.rpc()),
            "--state-file",
            s(&p.state()),
            "--socket",
            s(&ctrl),
            "--disk",
            s(&img),
        ]);
        assert_one_line_failure(
            &out,
            "--socket",
            &[
                "--state-file",
                s(&p.state()),
                "cannot be combined with --socket",
            ],
        );
        let out = run(&[
            "serve",
            "--config",
            s(&config),
            "--rpc-socket",
            s(&p.rpc()),
            "--state-file",
            s(&p.state()),
        ]);
        assert_one_line_failure(
            &out,
            "--config",
            &[
                s(&p.state()),
                &format!("the [[controller]] tables of {}", config.display()),
            ],
        );
        assert!(!p.rpc().exists() && !ctrl.exists());
        assert_eq!(p.state().exists(), exists, "state file created or removed");
    }
    fs::remove_dir_all(p.state().parent().unwrap()).unwrap();

    // state_file in the config file: the same rule, named as the file's key.
    fs::write(
        &config,
        format!(
            "state_file = \"{}\"\n{with_controller}",
            p.state().display()
        ),
    )
    .unwrap();
    let out = run(&["serve", "--config", s(&config)]);
    assert_one_line_failure(
        &out,
        "state_file key",
        &[
            &format!("{}: state_file", config.display()),
            "cannot be combined",
        ],
    );
    // Without controllers, the config file gives the daemon options and
    // the state file; a state file holding nothing needs an RPC socket.
    fs::write(
        &config,
        format!("state_file = \"{}\"\n", p.state().display()),
    )
    .unwrap();
    let out = run(&["serve", "--config", s(&config)]);
    assert_one_line_failure(
        &out,
        "nothing to serve",
        &["nothing to serve", s(&p.state()), "--rpc-socket"],
    );
    fs::write(
        &config,
        format!(
            "rpc_socket = \"{}\"\nstate_file = \"{}\"\n",
            p.rpc().display(),
            p.state().display()
        ),
    )
    .unwrap();
    let cfg = config.clone();
    let mut d = Daemon::start_with(
        |_| vec!["--config".into(), cfg.display().to_string()],
        s(&p.rpc()),
    );
    let mut rpc = connect(&d, &p.rpc());
    call(
        &mut rpc,
        &d,
        "controller_create",
        json!({"name": "vm1", "socket": ctrl}),
    );
    assert_eq!(saved_luns(&p), [("vm1".to_string(), vec![])]);
    // A second daemon on the same state file is refused.
    let out = run(&[
        "serve",
        "--rpc-socket",
        s(&p.at("rpc2.sock")),
        "--state-file",
        s(&p.state()),
    ]);
    assert_one_line_failure(
        &out,
        "second daemon",
        &[s(&p.state()), "in use by another vhost-user-scsi"],
    );
    assert!(!p.at("rpc2.sock").exists());
    // A clean stop keeps the controllers in the file.
    drop(rpc);
    assert_eq!(d.stop(), Some(0));
    assert!(!ctrl.exists());
    assert_eq!(saved_luns(&p), [("vm1".to_string(), vec![])]);
    // Without a state file, the same config file starts with nothing.
    fs::write(&config, format!("rpc_socket = \"{}\"\n", p.rpc().display())).unwrap();
    let mut d = Daemon::start_with(
        |_| vec!["--config".into(), cfg.display().to_string()],
        s(&p.rpc()),
    );
    let mut rpc = connect(&d, &p.rpc());
    assert_eq!(list(&mut rpc, &d), json!([]));
    drop(rpc);
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn a_change_the_file_cannot_record_is_undone() {
    let p = Paths::new();
    let a = image(p.root.path(), "a.img", 4 * MIB);
    let b = image(p.root.path(), "b.img", 4 * MIB);
    let (vm1, vm2) = (p.at("vm1.sock"), p.at("vm2.sock"));
    let mut d = start(&p);
    let mut rpc = connect(&d, &p.rpc());
    call(
        &mut rpc,
        &d,
        "controller_create",
        json!({"name": "vm1", "socket": vm1, "num_queues": 1}),
    );
    call(
        &mut rpc,
        &d,
        "lun_add",
        json!({"controller": "vm1", "path": a}),
    );
    let fe = d.connect_to(s(&vm1), 1);
    write(&fe, 0, 512, 3, 1);
    let file = fs::read_to_string(p.state()).unwrap();
    let listed = list(&mut rpc, &d);

    // A directory where the daemon writes its temporary file: every write
    // fails (even for root).
    let pid = d.child.as_ref().unwrap().id();
    let blocker = p.at(&format!("state/state.json.tmp.{pid}"));
    fs::create_dir(&blocker).unwrap();
    let failed = |e: ApiError, what: &str| {
        assert_eq!(e.code, code::FAILED, "{what}: {e:?}");
        assert!(
            e.message.contains("cannot write the state file")
                && e.message.contains(s(&p.state()))
                && e.message.contains("nothing was changed"),
            "{what}: {e:?}"
        );
    };
    failed(
        refused(
            &mut rpc,
            "controller_create",
            json!({"name": "vm2", "socket": vm2}),
        ),
        "controller_create",
    );
    assert!(!vm2.exists(), "the controller's socket stayed");
    failed(
        refused(
            &mut rpc,
            "lun_add",
            json!({"controller": "vm1", "path": b, "lun": 1}),
        ),
        "lun_add",
    );
    assert_eq!(report_luns(&fe), [0]);
    failed(
        refused(
            &mut rpc,
            "lun_remove",
            json!({"controller": "vm1", "lun": 0}),
        ),
        "lun_remove",
    );
    read_back(&fe, 0, 512, 3, 1);
    failed(
        refused(
            &mut rpc,
            "controller_delete",
            json!({"name": "vm1", "force": true}),
        ),
        "controller_delete",
    );
    read_back(&fe, 0, 512, 3, 1);
    assert_eq!(list(&mut rpc, &d), listed);
    assert_eq!(fs::read_to_string(p.state()).unwrap(), file);
    assert!(
        d.log().contains("cannot write the state file"),
        "not logged:\n{}",
        d.log()
    );

    // Once the file can be written again, the same calls work.
    fs::remove_dir(&blocker).unwrap();
    call(
        &mut rpc,
        &d,
        "lun_add",
        json!({"controller": "vm1", "path": b, "lun": 1}),
    );
    assert_eq!(report_luns(&fe), [0, 1]);
    call(
        &mut rpc,
        &d,
        "controller_create",
        json!({"name": "vm2", "socket": vm2}),
    );
    assert_eq!(
        saved_luns(&p),
        [("vm1".to_string(), vec![0, 1]), ("vm2".to_string(), vec![])]
    );
    drop((fe, rpc));
    assert_eq!(d.stop(), Some(0));
}
