//! The management plane against the daemon binary (issue 5): controllers
//! and LUNs created, changed and removed over JSON-RPC while a frontend
//! (playing the guest) runs I/O.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{image, pattern, Daemon};
use serde_json::{json, Value};
use vhost_user_scsi::frontend::{
    cdb, DataDir, FrontendConfig, Outcome, ScsiFrontend, ScsiResponse, EVENT_QUEUE,
};
use vhost_user_scsi::mgmt::rpc_client::{ClientError, RpcClient};
use vhost_user_scsi::vhost::{EVT_RESET_REMOVED, EVT_RESET_RESCAN};
use vhost_user_scsi::virtio_scsi::{
    Event, F_CHANGE, F_HOTPLUG, S_OK, T_EVENTS_MISSED, T_PARAM_CHANGE, T_TRANSPORT_RESET,
};

#[test]
fn controller_created_over_rpc_serves_io() {
    let mut d = Daemon::start_rpc(&[]);
    let img = common::image(d.dir.path(), "a.img", 8 << 20);
    let mut rpc = d.rpc();
    let sock = d.path("a.sock");
    rpc.call(
        "controller_create",
        Some(json!({"name": "a", "socket": sock, "num_queues": 2})),
    )
    .unwrap();
    rpc.call("lun_add", Some(json!({"controller": "a", "path": img})))
        .unwrap();
    let fe = d.connect_to("a.sock", 2);
    let data = common::pattern(3, 1, 4096);
    let w = fe
        .command(
            0,
            0,
            &vhost_user_scsi::frontend::cdb::write10(3, 8, false),
            vhost_user_scsi::frontend::DataDir::ToDevice(&data),
        )
        .unwrap();
    assert_eq!(w.status, 0);
    drop(fe);
    assert_eq!(d.stop(), Some(0));
    assert!(!sock.exists());
}

const MIB: u64 = 1 << 20;
const BS: usize = 512;
const GOOD: u8 = 0;
const CHECK: u8 = 2;
const CONFLICT: u8 = 0x18;
const UNIT_ATTENTION: u8 = 6;
/// Events the daemon keeps for a guest that has no event buffer
/// (docs/management.md "Events"; `MAX_PENDING` in src/vhost/events.rs).
const MAX_PENDING: usize = 64;
/// How long anything the daemon promises may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);

/// The socket of controller `name` in the daemon's temp dir.
fn sock(d: &Daemon, name: &str) -> PathBuf {
    d.path(&format!("{name}.sock"))
}

fn create(rpc: &mut RpcClient, d: &Daemon, name: &str, queues: u16) -> Value {
    rpc.call(
        "controller_create",
        Some(json!({"name": name, "socket": sock(d, name), "num_queues": queues})),
    )
    .unwrap_or_else(|e| panic!("controller_create {name}: {e}\n{}", d.log()))
}

fn add_lun(rpc: &mut RpcClient, d: &Daemon, ctrl: &str, path: &Path, lun: u16) -> Value {
    rpc.call(
        "lun_add",
        Some(json!({"controller": ctrl, "path": path, "lun": lun})),
    )
    .unwrap_or_else(|e| panic!("lun_add {ctrl} {lun}: {e}\n{}", d.log()))
}

fn call(rpc: &mut RpcClient, d: &Daemon, method: &str, params: Value) -> Value {
    rpc.call(method, Some(params.clone()))
        .unwrap_or_else(|e| panic!("{method} {params}: {e}\n{}", d.log()))
}

/// The JSON-RPC error code of a call that must fail.
fn rpc_code(r: Result<Value, ClientError>) -> i64 {
    match r {
        Err(ClientError::Rpc(e)) => e.code,
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

/// Connect a frontend to controller `ctrl` (acking HOTPLUG and CHANGE, as
/// Linux does), touching no LUN; `tweak` adjusts the configuration.
fn guest(
    d: &Daemon,
    ctrl: &str,
    queues: u16,
    tweak: impl FnOnce(&mut FrontendConfig),
) -> ScsiFrontend {
    let mut cfg = common::config_at(&sock(d, ctrl));
    cfg.request_queues = queues;
    cfg.extra_features = F_HOTPLUG | F_CHANGE;
    tweak(&mut cfg);
    ScsiFrontend::connect(&cfg).unwrap_or_else(|e| panic!("connect {ctrl}: {e}\n{}", d.log()))
}

/// A daemon with controller `c` (one queue) serving `a.img` as LUN 0, and
/// `b.img` made for a hot-attach.
fn one_lun_and_a_spare() -> (Daemon, RpcClient, PathBuf) {
    let d = Daemon::start_rpc(&[]);
    let mut rpc = d.rpc();
    let a = image(d.dir.path(), "a.img", 8 * MIB);
    let b = image(d.dir.path(), "b.img", 8 * MIB);
    create(&mut rpc, &d, "c", 1);
    add_lun(&mut rpc, &d, "c", &a, 0);
    (d, rpc, b)
}

/// A guest on `ctrl` whose LUN 0 unit attentions are consumed.
fn settled_guest(d: &Daemon, ctrl: &str, queues: u16) -> ScsiFrontend {
    let fe = guest(d, ctrl, queues, |_| {});
    common::settle(&fe, [0]);
    fe
}

/// Poll `controller_list` until controller `name` reports `connected`.
fn wait_connected(rpc: &mut RpcClient, d: &Daemon, name: &str, connected: bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let list = call(rpc, d, "controller_list", json!({}));
        let c = list
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no controller {name} in {list}"));
        if c["connected"] == connected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became connected={connected}: {list}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn write(fe: &ScsiFrontend, queue: usize, lun: u16, lba: u32, data: &[u8]) -> ScsiResponse {
    let blocks = (data.len() / BS) as u16;
    fe.command(
        queue,
        lun,
        &cdb::write10(lba, blocks, false),
        DataDir::ToDevice(data),
    )
    .unwrap()
}

fn read(fe: &ScsiFrontend, queue: usize, lun: u16, lba: u32, blocks: u16) -> ScsiResponse {
    fe.command(
        queue,
        lun,
        &cdb::read10(lba, blocks, false),
        DataDir::FromDevice(u32::from(blocks) * BS as u32),
    )
    .unwrap()
}

fn is_ua(r: &ScsiResponse) -> bool {
    r.response == S_OK && r.status == CHECK && r.sense_key().map(|s| s.0) == Some(UNIT_ATTENTION)
}

/// Run `f` again while it ends in a unit attention (as a guest retries).
fn retry_ua(mut f: impl FnMut() -> ScsiResponse) -> ScsiResponse {
    for _ in 0..16 {
        let r = f();
        if !is_ua(&r) {
            return r;
        }
    }
    panic!("unit attentions do not stop");
}

fn assert_good(r: &ScsiResponse, what: &str) {
    assert_eq!(
        (r.response, r.status),
        (S_OK, GOOD),
        "{what}: {:?}",
        r.sense_key()
    );
}

/// Write `data` at `lba` of `lun` and read it back (retrying unit
/// attentions); `Err` describes what went wrong.
fn write_verify(
    fe: &ScsiFrontend,
    queue: usize,
    lun: u16,
    lba: u32,
    data: &[u8],
) -> Result<(), String> {
    let w = retry_ua(|| write(fe, queue, lun, lba, data));
    if (w.response, w.status) != (S_OK, GOOD) {
        return Err(format!(
            "write lba {lba}: response {} status {} {:?}",
            w.response,
            w.status,
            w.sense_key()
        ));
    }
    let r = retry_ua(|| read(fe, queue, lun, lba, (data.len() / BS) as u16));
    if (r.response, r.status) != (S_OK, GOOD) {
        return Err(format!(
            "read lba {lba}: response {} status {} {:?}",
            r.response,
            r.status,
            r.sense_key()
        ));
    }
    if r.data_in() != data {
        return Err(format!("lba {lba}: read back other data"));
    }
    Ok(())
}

/// The (ASC, ASCQ) of every unit attention TEST UNIT READY reports on
/// `lun`, until it answers GOOD.
fn unit_attentions(fe: &ScsiFrontend, lun: u16) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    for _ in 0..16 {
        let r = fe
            .command(0, lun, &cdb::test_unit_ready(), DataDir::None)
            .unwrap();
        if !is_ua(&r) {
            assert_good(&r, &format!("TEST UNIT READY lun {lun}"));
            return out;
        }
        let (_, asc, ascq) = r.sense_key().unwrap();
        out.push((asc, ascq));
    }
    panic!("lun {lun}: unit attentions do not stop: {out:x?}");
}

/// READ CAPACITY(16): (number of blocks, block length).
fn capacity(fe: &ScsiFrontend, lun: u16) -> (u64, u32) {
    let r = fe
        .command(0, lun, &cdb::read_capacity16(32), DataDir::FromDevice(32))
        .unwrap();
    assert_good(&r, "READ CAPACITY(16)");
    let d = r.data_in();
    (
        u64::from_be_bytes(d[0..8].try_into().unwrap()) + 1,
        u32::from_be_bytes(d[8..12].try_into().unwrap()),
    )
}

/// The LUN numbers REPORT LUNS lists.
fn report_luns(fe: &ScsiFrontend, lun: u16) -> Vec<u16> {
    let r = fe
        .command(
            0,
            lun,
            &cdb::report_luns(0, 4096),
            DataDir::FromDevice(4096),
        )
        .unwrap();
    assert_good(&r, "REPORT LUNS");
    let d = r.data_in();
    let n = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize / 8;
    (0..n)
        .map(|i| u16::from_be_bytes([d[8 + 8 * i], d[9 + 8 * i]]) & 0x3fff)
        .collect()
}

/// An event as (event, lun field, reason), host order.
fn ev(e: &Event) -> (u32, [u8; 8], u32) {
    let (event, lun, reason) = (e.event, e.lun, e.reason);
    (u32::from_le(event), lun, u32::from_le(reason))
}

/// The event LUN field of target 0 `lun` (< 256: peripheral addressing).
fn ev_lun(lun: u8) -> [u8; 8] {
    [1, 0, 0, lun, 0, 0, 0, 0]
}

/// Wait (up to `timeout`) until `n` events completed on the event queue;
/// buffers are NOT replaced (see [`events`] for a guest that refills).
fn take_events(fe: &ScsiFrontend, n: usize, timeout: Duration) -> Vec<(u32, [u8; 8], u32)> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let mut done = Vec::new();
        fe.wait_vq(EVENT_QUEUE, &mut done, deadline - now).unwrap();
        for c in done {
            match c.outcome {
                Outcome::Event(e) => out.push(ev(&e)),
                other => panic!("not an event: {other:?}"),
            }
        }
    }
    out
}

/// Wait until `n` events arrived, each buffer replaced as a guest does.
fn events(fe: &ScsiFrontend, n: usize) -> Vec<(u32, [u8; 8], u32)> {
    let deadline = Instant::now() + PATIENCE;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        out.extend(
            fe.poll_events(deadline.saturating_duration_since(Instant::now()))
                .unwrap()
                .iter()
                .map(ev),
        );
    }
    assert_eq!(out.len(), n, "events: {out:x?}");
    out
}

#[test]
fn three_controllers_keep_their_own_data() {
    const CHUNK: u16 = 32;
    const CHUNKS_PER_QUEUE: u32 = 8;
    let d = Daemon::start_rpc(&[]);
    let mut rpc = d.rpc();
    let names = ["c0", "c1", "c2"];
    let mut imgs = Vec::new();
    for n in names {
        let img = image(d.dir.path(), &format!("{n}.img"), 8 * MIB);
        create(&mut rpc, &d, n, 2);
        add_lun(&mut rpc, &d, n, &img, 0);
        imgs.push(img);
    }
    let fes: Vec<ScsiFrontend> = names.iter().map(|n| settled_guest(&d, n, 2)).collect();
    // Controller i, queue q: chunks at q * 1 MiB, generation i + 1; all
    // six writers (then readers) at once.
    let lba = |q: usize, k: u32| (q as u32) * 2048 + k * u32::from(CHUNK);
    let data = |i: usize, q: usize, k: u32| {
        pattern(u64::from(lba(q, k)), i as u8 + 1, usize::from(CHUNK) * BS)
    };
    std::thread::scope(|s| {
        for (i, fe) in fes.iter().enumerate() {
            for q in 0..2 {
                s.spawn(move || {
                    for k in 0..CHUNKS_PER_QUEUE {
                        let w = write(fe, q, 0, lba(q, k), &data(i, q, k));
                        assert_good(&w, &format!("write c{i} q{q} chunk {k}"));
                    }
                });
            }
        }
    });
    std::thread::scope(|s| {
        for (i, fe) in fes.iter().enumerate() {
            for q in 0..2 {
                s.spawn(move || {
                    for k in 0..CHUNKS_PER_QUEUE {
                        let r = read(fe, q, 0, lba(q, k), CHUNK);
                        assert_good(&r, &format!("read c{i} q{q} chunk {k}"));
                        assert!(r.data_in() == data(i, q, k), "c{i} q{q} chunk {k}");
                    }
                });
            }
        }
    });
    // Each image holds its own controller's data, and nothing beyond it.
    for (i, img) in imgs.iter().enumerate() {
        let f = std::fs::File::open(img).unwrap();
        for q in 0..2 {
            for k in 0..CHUNKS_PER_QUEUE {
                let mut buf = vec![0u8; usize::from(CHUNK) * BS];
                f.read_exact_at(&mut buf, u64::from(lba(q, k)) * BS as u64)
                    .unwrap();
                assert!(buf == data(i, q, k), "{}: q{q} chunk {k}", img.display());
            }
            let mut after = vec![0u8; usize::from(CHUNK) * BS];
            f.read_exact_at(&mut after, u64::from(lba(q, CHUNKS_PER_QUEUE)) * BS as u64)
                .unwrap();
            assert!(after.iter().all(|b| *b == 0), "{}", img.display());
        }
    }
    for n in names {
        wait_connected(&mut rpc, &d, n, true);
    }
    let list = call(&mut rpc, &d, "controller_list", json!({}));
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    for ((c, n), img) in list.iter().zip(names).zip(&imgs) {
        assert_eq!(c["name"], n);
        assert_eq!(c["connected"], true);
        assert_eq!(c["num_queues"], 2);
        assert_eq!(c["socket"], json!(sock(&d, n)));
        assert_eq!(c["luns"].as_array().unwrap().len(), 1);
        assert_eq!(c["luns"][0]["path"], json!(img));
        assert_eq!(c["luns"][0]["num_blocks"], 16384);
    }
    drop(fes);
    let mut d = d;
    assert_eq!(d.stop(), Some(0));
    for n in names {
        assert!(!sock(&d, n).exists());
    }
}

#[test]
fn hotplug_add_resize_remove_seen_by_the_guest() {
    let (d, mut rpc, b) = one_lun_and_a_spare();
    let fe = settled_guest(&d, "c", 1);
    assert_eq!(report_luns(&fe, 0), [0]);

    // lun_add: TRANSPORT_RESET/RESCAN for LUN 1; LUN 1 answers after its
    // POWER ON; LUN 0 reports REPORTED LUNS DATA HAS CHANGED.
    let info = add_lun(&mut rpc, &d, "c", &b, 1);
    assert_eq!(info["lun"], 1);
    assert_eq!(info["num_blocks"], 16384);
    assert_eq!(
        events(&fe, 1),
        [(T_TRANSPORT_RESET, ev_lun(1), EVT_RESET_RESCAN)]
    );
    assert_eq!(unit_attentions(&fe, 1), [(0x29, 0x00)], "LUN 1");
    assert_eq!(unit_attentions(&fe, 0), [(0x3f, 0x0e)], "LUN 0");
    assert_eq!(report_luns(&fe, 0), [0, 1]);
    assert_eq!(capacity(&fe, 1), (16384, 512));
    write_verify(&fe, 0, 1, 7, &pattern(7, 1, 4096)).unwrap();

    // lun_resize to 12 MiB: PARAM_CHANGE 2Ah/09h, CAPACITY DATA HAS
    // CHANGED, the new capacity, the new blocks addressable.
    let info = call(
        &mut rpc,
        &d,
        "lun_resize",
        json!({"controller": "c", "lun": 1, "size": 12 * MIB}),
    );
    assert_eq!(info["num_blocks"], 24576);
    assert_eq!(info["size"], 12 * MIB);
    assert_eq!(std::fs::metadata(&b).unwrap().len(), 12 * MIB);
    assert_eq!(
        events(&fe, 1),
        [(T_PARAM_CHANGE, ev_lun(1), 0x2a | (0x09 << 8))]
    );
    assert_eq!(unit_attentions(&fe, 1), [(0x2a, 0x09)], "LUN 1");
    assert!(unit_attentions(&fe, 0).is_empty(), "LUN 0 did not change");
    assert_eq!(capacity(&fe, 1), (24576, 512));
    write_verify(&fe, 0, 1, 24576 - 8, &pattern(24568, 2, 4096)).unwrap();

    // lun_remove: TRANSPORT_RESET/REMOVED; LOGICAL UNIT NOT SUPPORTED for
    // new commands to LUN 1; LUN 0 keeps working after its unit attention.
    assert_eq!(
        call(
            &mut rpc,
            &d,
            "lun_remove",
            json!({"controller": "c", "lun": 1})
        ),
        json!(true)
    );
    assert_eq!(
        events(&fe, 1),
        [(T_TRANSPORT_RESET, ev_lun(1), EVT_RESET_REMOVED)]
    );
    for r in [
        read(&fe, 0, 1, 7, 8),
        write(&fe, 0, 1, 7, &pattern(7, 3, 4096)),
    ] {
        assert_eq!((r.response, r.status), (S_OK, CHECK));
        assert_eq!(r.sense_key(), Some((0x05, 0x25, 0x00)));
    }
    assert_eq!(unit_attentions(&fe, 0), [(0x3f, 0x0e)], "LUN 0");
    assert_eq!(report_luns(&fe, 0), [0]);
    write_verify(&fe, 0, 0, 100, &pattern(100, 4, 4096)).unwrap();
    // The data written to LUN 1 is in its image, flushed.
    let mut buf = vec![0u8; 4096];
    std::fs::File::open(&b)
        .unwrap()
        .read_exact_at(&mut buf, 7 * BS as u64)
        .unwrap();
    assert!(buf == pattern(7, 1, 4096));
    let again = rpc.call("lun_remove", Some(json!({"controller": "c", "lun": 1})));
    assert_eq!(rpc_code(again), -32001);
    let list = call(&mut rpc, &d, "controller_list", json!({}));
    assert_eq!(list[0]["luns"].as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn events_wait_for_buffers_and_overflow_is_flagged() {
    let (d, mut rpc, b) = one_lun_and_a_spare();
    let fe = guest(&d, "c", 1, |cfg| cfg.event_buffers = 0);
    common::settle(&fe, [0]);

    // No buffer: the event waits in the daemon, and comes with the first.
    add_lun(&mut rpc, &d, "c", &b, 1);
    assert!(take_events(&fe, 1, Duration::from_millis(200)).is_empty());
    fe.post_event_buffers(1).unwrap();
    assert_eq!(
        take_events(&fe, 1, PATIENCE),
        [(T_TRANSPORT_RESET, ev_lun(1), EVT_RESET_RESCAN)]
    );

    // No buffer again: 6 RESCANs, then MAX_PENDING PARAM_CHANGEs. The 6
    // oldest are dropped; the first delivered carries EVENTS_MISSED.
    for lun in 2..8u16 {
        let img = image(d.dir.path(), &format!("l{lun}.img"), 8 * MIB);
        add_lun(&mut rpc, &d, "c", &img, lun);
    }
    for k in 1..=MAX_PENDING as u64 {
        call(
            &mut rpc,
            &d,
            "lun_resize",
            json!({"controller": "c", "lun": 1, "size": 8 * MIB + k * BS as u64}),
        );
    }
    fe.post_event_buffers(MAX_PENDING as u16 + 8).unwrap();
    let got = take_events(&fe, MAX_PENDING, PATIENCE);
    let change = (T_PARAM_CHANGE, ev_lun(1), 0x2a | (0x09 << 8));
    assert_eq!(got.len(), MAX_PENDING, "{got:x?}");
    assert_eq!(
        got[0],
        (T_PARAM_CHANGE | T_EVENTS_MISSED, change.1, change.2)
    );
    assert!(got[1..].iter().all(|e| *e == change), "{got:x?}");
    assert!(take_events(&fe, 1, Duration::from_millis(200)).is_empty());
    // The next event finds a buffer at once, and nothing was missed.
    call(
        &mut rpc,
        &d,
        "lun_remove",
        json!({"controller": "c", "lun": 2}),
    );
    assert_eq!(
        take_events(&fe, 1, PATIENCE),
        [(T_TRANSPORT_RESET, ev_lun(2), EVT_RESET_REMOVED)]
    );
}

#[test]
fn controllers_come_and_go_while_another_runs_io() {
    const CHUNK: usize = 16 * BS;
    const SLOTS: u32 = 16;
    const ROUNDS: usize = 6;
    let d = Daemon::start_rpc(&[]);
    let mut rpc = d.rpc();
    let a = image(d.dir.path(), "a.img", 16 * MIB);
    let x = image(d.dir.path(), "x.img", 8 * MIB);
    create(&mut rpc, &d, "a", 2);
    add_lun(&mut rpc, &d, "a", &a, 0);
    let fe = settled_guest(&d, "a", 2);
    let stop = AtomicBool::new(false);
    let errors = AtomicU64::new(0);
    let slot_lba = |q: usize, slot: u32| (q as u32) * 4096 + slot * (CHUNK / BS) as u32;
    let last = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|q| {
                let (fe, stop, errors) = (&fe, &stop, &errors);
                s.spawn(move || {
                    // The generation last written to each slot.
                    let mut gens = vec![0u8; SLOTS as usize];
                    let mut ops = 0u64;
                    while !stop.load(Ordering::Relaxed) || ops < 4 {
                        let slot = (ops % u64::from(SLOTS)) as u32;
                        let gen = (ops / u64::from(SLOTS) % 250) as u8 + 1;
                        let lba = slot_lba(q, slot);
                        let data = pattern(u64::from(lba), gen, CHUNK);
                        if let Err(e) = write_verify(fe, q, 0, lba, &data) {
                            eprintln!("queue {q}: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        gens[slot as usize] = gen;
                        ops += 1;
                    }
                    gens
                })
            })
            .collect();
        let mut rpc = d.rpc();
        for i in 0..ROUNDS {
            let name = format!("b{i}");
            let img = image(d.dir.path(), &format!("{name}.img"), 8 * MIB);
            create(&mut rpc, &d, &name, 1);
            add_lun(&mut rpc, &d, &name, &img, 0);
            let fb = settled_guest(&d, &name, 1);
            write_verify(&fb, 0, 0, 8, &pattern(8, i as u8, CHUNK)).unwrap();
            add_lun(&mut rpc, &d, "a", &x, 1);
            wait_connected(&mut rpc, &d, &name, true);
            if i % 2 == 0 {
                // Deleted with its guest connected.
                call(
                    &mut rpc,
                    &d,
                    "controller_delete",
                    json!({"name": name, "force": true}),
                );
                drop(fb);
            } else {
                // The guest goes first.
                drop(fb);
                wait_connected(&mut rpc, &d, &name, false);
                call(&mut rpc, &d, "controller_delete", json!({"name": name}));
            }
            assert!(!sock(&d, &name).exists(), "{name}");
            call(
                &mut rpc,
                &d,
                "lun_remove",
                json!({"controller": "a", "lun": 1}),
            );
        }
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(errors.load(Ordering::Relaxed), 0, "{}", d.log());
    // The last generation of every slot is what A's disk holds.
    for (q, gens) in last.iter().enumerate() {
        for (slot, &gen) in gens.iter().enumerate() {
            if gen == 0 {
                continue;
            }
            let lba = slot_lba(q, slot as u32);
            let r = retry_ua(|| read(&fe, q, 0, lba, (CHUNK / BS) as u16));
            assert_good(&r, "final read");
            assert!(
                r.data_in() == pattern(u64::from(lba), gen, CHUNK),
                "q{q} slot {slot}"
            );
        }
    }
    // A's guest saw LUN 1 come and go, in order, nothing missed.
    let want: Vec<_> = (0..ROUNDS)
        .flat_map(|_| {
            [
                (T_TRANSPORT_RESET, ev_lun(1), EVT_RESET_RESCAN),
                (T_TRANSPORT_RESET, ev_lun(1), EVT_RESET_REMOVED),
            ]
        })
        .collect();
    assert_eq!(events(&fe, 2 * ROUNDS), want);
    let list = call(&mut rpc, &d, "controller_list", json!({}));
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "a");
    assert_eq!(list[0]["luns"].as_array().unwrap().len(), 1);
}

#[test]
fn delete_of_a_connected_controller_needs_force() {
    let d = Daemon::start_rpc(&[]);
    let mut rpc = d.rpc();
    for n in ["a", "b"] {
        let img = image(d.dir.path(), &format!("{n}.img"), 8 * MIB);
        create(&mut rpc, &d, n, 1);
        add_lun(&mut rpc, &d, n, &img, 0);
    }
    let fa = guest(&d, "a", 1, |cfg| cfg.timeout = Duration::from_secs(2));
    common::settle(&fa, [0]);
    let fb = settled_guest(&d, "b", 1);
    wait_connected(&mut rpc, &d, "a", true);

    for params in [json!({"name": "a"}), json!({"name": "a", "force": false})] {
        assert_eq!(
            rpc_code(rpc.call("controller_delete", Some(params))),
            -32003
        );
    }
    // Refused: nothing changed for the guest.
    write_verify(&fa, 0, 0, 16, &pattern(16, 1, 4096)).unwrap();
    wait_connected(&mut rpc, &d, "a", true);

    assert_eq!(
        call(
            &mut rpc,
            &d,
            "controller_delete",
            json!({"name": "a", "force": true})
        ),
        json!(true)
    );
    assert!(!sock(&d, "a").exists());
    // Its guest is gone: the next command fails (no one serves the queue).
    assert!(fa
        .command(0, 0, &cdb::test_unit_ready(), DataDir::None)
        .is_err());
    drop(fa);
    // The other controller's guest goes on.
    write_verify(&fb, 0, 0, 16, &pattern(16, 2, 4096)).unwrap();
    let list = call(&mut rpc, &d, "controller_list", json!({}));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["name"], "b");
    assert_eq!(
        rpc_code(rpc.call(
            "controller_delete",
            Some(json!({"name": "a", "force": true}))
        )),
        -32001
    );
    // The socket and the disk can be served again, the write flushed.
    create(&mut rpc, &d, "a", 1);
    add_lun(&mut rpc, &d, "a", &d.path("a.img"), 0);
    let fa = settled_guest(&d, "a", 1);
    let r = read(&fa, 0, 0, 16, 8);
    assert_good(&r, "read after re-create");
    assert!(r.data_in() == pattern(16, 1, 4096));
}

#[test]
fn shared_disk_data_and_reservations_across_controllers() {
    const WRITE_EXCLUSIVE: u8 = 1;
    let d = Daemon::start_rpc(&[]);
    let mut rpc = d.rpc();
    let img = image(d.dir.path(), "shared.img", 8 * MIB);
    create(&mut rpc, &d, "a", 1);
    create(&mut rpc, &d, "b", 1);
    let la = add_lun(&mut rpc, &d, "a", &img, 0);
    let lb = add_lun(&mut rpc, &d, "b", &img, 0);
    assert_eq!(la, lb, "one disk, attached the same way");
    let fa = settled_guest(&d, "a", 1);
    let fb = settled_guest(&d, "b", 1);

    // Data written through one controller is read through the other.
    let one = pattern(100, 1, 4096);
    assert_good(&write(&fa, 0, 0, 100, &one), "write a");
    let r = read(&fb, 0, 0, 100, 8);
    assert_good(&r, "read b");
    assert!(r.data_in() == one);
    let two = pattern(200, 2, 4096);
    assert_good(&write(&fb, 0, 0, 200, &two), "write b");
    let r = read(&fa, 0, 0, 200, 8);
    assert_good(&r, "read a");
    assert!(r.data_in() == two);

    // A registers and reserves Write Exclusive: B's writes conflict, its
    // reads pass; A still writes.
    let pr_out = |fe: &ScsiFrontend, sa: u8, prtype: u8, key: u64, sa_key: u64| {
        let (c, p) = common::pr_out_cdb(sa, prtype, key, sa_key, false);
        fe.command(0, 0, &c, DataDir::ToDevice(&p)).unwrap()
    };
    assert_good(&pr_out(&fa, 0x00, 0, 0, 0xa), "REGISTER");
    assert_good(&pr_out(&fa, 0x01, WRITE_EXCLUSIVE, 0xa, 0), "RESERVE");
    let three = pattern(300, 3, 4096);
    let w = write(&fb, 0, 0, 300, &three);
    assert_eq!((w.response, w.status), (S_OK, CONFLICT), "write through b");
    let r = read(&fb, 0, 0, 100, 8);
    assert_good(&r, "read b under the reservation");
    assert!(r.data_in() == one);
    assert_good(&write(&fa, 0, 0, 300, &three), "write by the holder");
    let r = read(&fb, 0, 0, 300, 8);
    assert_good(&r, "read b");
    assert!(r.data_in() == three);
    // B sees A's reservation.
    let r = fb
        .command(0, 0, &common::pr_in_cdb(0x01, 64), DataDir::FromDevice(64))
        .unwrap();
    assert_good(&r, "READ RESERVATION");
    let resv = r.data_in();
    assert_eq!(u32::from_be_bytes(resv[4..8].try_into().unwrap()), 16);
    assert_eq!(u64::from_be_bytes(resv[8..16].try_into().unwrap()), 0xa);
    assert_eq!(resv[21] & 0x0f, WRITE_EXCLUSIVE);

    // Released: B writes again.
    assert_good(&pr_out(&fa, 0x02, WRITE_EXCLUSIVE, 0xa, 0), "RELEASE");
    let w = retry_ua(|| write(&fb, 0, 0, 300, &two));
    assert_good(&w, "write b after the release");
}
