//! A daemon that dies or stops with requests in flight, and the frontend
//! that reconnects to its successor as QEMU does
//! (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): every request completes exactly
//! once, with the right data, however the daemon went away; a hostile
//! inflight region neither crashes the daemon nor corrupts anything.
//!
//! Images live under CARGO_TARGET_TMPDIR (a disk-backed filesystem: tmpfs
//! I/O completes inline and leaves no in-flight window), requests are
//! large and half of the writes FUA, so a SIGKILL right after a batch finds
//! requests taken and not completed. Each kill prints what the inflight
//! region held at that moment.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{pattern, Daemon};
use vhost::vhost_user::message::VhostUserInflight;
use vhost_user_scsi::frontend::inflight::{self, InflightRegion};
use vhost_user_scsi::frontend::{
    cdb, DataDir, FrontendConfig, ScsiFrontend, ScsiRequest, ScsiResponse, EVENT_QUEUE,
    FIRST_REQUEST_QUEUE,
};
use vhost_user_scsi::virtio_scsi::defs::{Event, F_HOTPLUG, S_OK, T_TRANSPORT_RESET};

const GOOD: u8 = 0;
const QUEUES: usize = 2;
const QUEUE_SIZE: u16 = 256;
/// Requests per request queue in a batch (3 descriptors each).
const PER_QUEUE: usize = 80;
/// Bytes of the image that belong to one request of a batch.
const SLOT: usize = 256 << 10;
const SLOTS: usize = QUEUES * PER_QUEUE;
const IMAGE: u64 = (SLOTS * SLOT) as u64 + (4 << 20);
/// Generation of the pattern the read test fills the image with.
const FILL_GEN: u8 = 200;
/// VIRTIO_SCSI_EVT_RESET_RESCAN (virtio 1.2 5.6.6.3.1).
const EVT_RESET_RESCAN: u32 = 1;
/// How long anything may take on a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// A daemon serving one regular-file image, restarted in place.
struct Rig {
    d: Daemon,
    args: Vec<String>,
    img: PathBuf,
    imgdir: tempfile::TempDir,
}

impl Rig {
    /// `serve --socket DIR/vus.sock --disk IMG --num-queues 2` plus
    /// `extra(DIR)`.
    fn start(extra: impl FnOnce(&Path) -> Vec<String>) -> Rig {
        let imgdir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let img = common::image(imgdir.path(), "disk.img", IMAGE);
        let mut args = Vec::new();
        let d = Daemon::start_with(
            |dir| {
                let mut a: Vec<String> = vec![
                    "--socket".into(),
                    dir.join("vus.sock").display().to_string(),
                    "--disk".into(),
                    img.display().to_string(),
                    "--num-queues".into(),
                    QUEUES.to_string(),
                ];
                a.extend(extra(dir));
                args = a.clone();
                a
            },
            "vus.sock",
        );
        Rig {
            d,
            args,
            img,
            imgdir,
        }
    }

    fn config(&self) -> FrontendConfig {
        let mut c = self.d.config();
        c.request_queues = QUEUES as u16;
        c.queue_size = QUEUE_SIZE;
        c.mem_size = 128 << 20;
        c
    }

    /// Connect with INFLIGHT_SHMFD, which the daemon must offer, and
    /// consume LUN 0's unit attention.
    fn connect(&self, cfg: &FrontendConfig) -> ScsiFrontend {
        let fe =
            ScsiFrontend::connect(cfg).unwrap_or_else(|e| panic!("connect: {e}\n{}", self.d.log()));
        assert!(
            fe.inflight().is_some(),
            "the daemon does not offer VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD (offered {:?})",
            fe.connection().offered_protocol
        );
        common::settle(&fe, [0]);
        fe
    }

    /// A new daemon on the same socket and disks; `fe` reconnects to it.
    /// Returns the ring bases the frontend gave.
    fn restart_and_reconnect(&mut self, fe: &mut ScsiFrontend) -> Vec<u16> {
        self.d.respawn(&self.args);
        fe.reconnect()
            .unwrap_or_else(|e| panic!("reconnect: {e}\n{}", self.d.log()))
    }

    fn file(&self) -> fs::File {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.img)
            .unwrap()
    }

    /// The daemon runs and has not panicked anywhere.
    fn assert_healthy(&mut self, what: &str) {
        assert!(self.d.alive(), "daemon died ({what}):\n{}", self.d.log());
        let log = self.d.log();
        assert!(
            !log.contains("panicked"),
            "daemon panicked ({what}):\n{log}"
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Write,
    Read,
}

/// A submitted request, by frontend tag.
#[derive(Clone, Debug)]
struct Req {
    /// Slot `s` is on request queue `s / PER_QUEUE`.
    slot: usize,
    len: usize,
    op: Op,
    /// Generation of a write's data.
    gen: u8,
}

impl Req {
    fn lba(&self) -> u64 {
        (self.slot * SLOT / 512) as u64
    }
}

/// What the image must hold: slot `s` starts with `pattern(lba(s), gen, len)`
/// (the rest of the slot is older data: only the written prefix is checked).
type Model = HashMap<usize, (u8, usize)>;

/// Submit one request per slot, queues interleaved: writes of generation
/// `gen` (64..256 KiB, every other one FUA) or reads; each queue's batch
/// is published at once, with one kick.
fn submit_batch(fe: &ScsiFrontend, op: Op, gen: u8, model: &mut Model) -> HashMap<u64, Req> {
    let mut reqs = HashMap::new();
    for i in 0..PER_QUEUE {
        for queue in 0..QUEUES {
            let slot = queue * PER_QUEUE + i;
            let len = (64 << 10) * (1 + (i + usize::from(gen)) % 4);
            let r = Req { slot, len, op, gen };
            let blocks = (len / 512) as u16;
            let lba = r.lba() as u32;
            let tag = match op {
                Op::Write => {
                    let data = pattern(r.lba(), gen, len);
                    model.insert(slot, (gen, len));
                    let c = cdb::write10(lba, blocks, i % 2 == 0);
                    fe.submit_queued(queue, &ScsiRequest::new(0, &c, DataDir::ToDevice(&data)))
                }
                Op::Read => fe.submit_queued(
                    queue,
                    &ScsiRequest::new(
                        0,
                        &cdb::read10(lba, blocks, false),
                        DataDir::FromDevice(len as u32),
                    ),
                ),
            }
            .unwrap();
            reqs.insert(tag, r);
        }
    }
    for queue in 0..QUEUES {
        fe.publish(queue).unwrap();
    }
    reqs
}

/// CHECK CONDITION, UNIT ATTENTION, POWER ON, RESET, OR BUS DEVICE RESET
/// OCCURRED (29h/xx).
fn is_power_on(resp: &ScsiResponse) -> bool {
    resp.status == 2 && matches!(resp.sense_key(), Some((6, 0x29, _)))
}

/// The tags of the requests the inflight region marks as taken and not
/// completed: what a restarted daemon must resubmit.
fn taken(fe: &ScsiFrontend) -> HashSet<u64> {
    let region = fe.inflight().expect("an inflight region");
    let mut tags = HashSet::new();
    for q in 0..QUEUES {
        let vq = FIRST_REQUEST_QUEUE + q;
        for head in region.queue(vq).unwrap().inflight_heads() {
            tags.extend(fe.tag_of(vq, head).unwrap());
        }
    }
    tags
}

/// Wait until every request of `reqs` completed: each exactly once (a
/// second completion is a used element for a head that is not
/// outstanding: the frontend reports it as an error), OK/GOOD, reads with
/// the right data. `taken`: the requests the dead daemon had started (for
/// the messages).
fn collect(
    rig: &Rig,
    fe: &ScsiFrontend,
    reqs: &mut HashMap<u64, Req>,
    taken: &HashSet<u64>,
    what: &str,
) {
    let deadline = Instant::now() + PATIENCE;
    let total = reqs.len();
    // A restarted daemon is a target that lost its volatile state (mode
    // settings, reservations without APTPL): it reports POWER ON once per
    // LUN and I_T nexus, as a real disk would, and the initiator repeats
    // that command (Linux does so and logs "Power-on or device reset
    // occurred"). Anything else must be GOOD at once.
    let mut power_on_seen = false;
    while !reqs.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {total} requests never completed\n{}",
            reqs.len(),
            rig.d.log()
        );
        for q in 0..QUEUES {
            let mut out = Vec::new();
            fe.wait_completions(q, &mut out, Duration::from_millis(20))
                .unwrap_or_else(|e| panic!("{what}: {e}\n{}", rig.d.log()));
            for c in out {
                let r = reqs
                    .remove(&c.tag)
                    .unwrap_or_else(|| panic!("{what}: tag {} completed twice", c.tag));
                let resp = c.scsi().expect("a SCSI completion");
                if is_power_on(resp) && !power_on_seen {
                    power_on_seen = true;
                    let tag = reissue(fe, &r);
                    reqs.insert(tag, r);
                    continue;
                }
                let how = if taken.contains(&c.tag) {
                    "resubmitted"
                } else {
                    "never taken by the dead daemon"
                };
                check_response(&r, resp, &format!("{what} ({how})"));
            }
        }
    }
}

/// Submit `r` again (after a unit attention); returns its new tag.
fn reissue(fe: &ScsiFrontend, r: &Req) -> u64 {
    let queue = r.slot / PER_QUEUE;
    let blocks = (r.len / 512) as u16;
    let lba = r.lba() as u32;
    match r.op {
        Op::Write => {
            let data = pattern(r.lba(), r.gen, r.len);
            let c = cdb::write10(lba, blocks, false);
            fe.submit(queue, &ScsiRequest::new(0, &c, DataDir::ToDevice(&data)))
        }
        Op::Read => fe.submit(
            queue,
            &ScsiRequest::new(
                0,
                &cdb::read10(lba, blocks, false),
                DataDir::FromDevice(r.len as u32),
            ),
        ),
    }
    .unwrap()
}

fn check_response(r: &Req, resp: &ScsiResponse, what: &str) {
    assert_eq!(
        (resp.response, resp.status),
        (S_OK, GOOD),
        "{what}: {r:?} sense {:x?}{}",
        resp.sense_key(),
        if is_power_on(resp) {
            ": a second POWER ON unit attention"
        } else {
            ""
        }
    );
    if r.op == Op::Read {
        assert_eq!(resp.resid, 0, "{what}: {r:?}");
        assert!(
            resp.data_in() == &pattern(r.lba(), FILL_GEN, SLOT)[..r.len],
            "{what}: wrong data read for {r:?}"
        );
    }
}

/// Nothing more completes: the used rings of the request queues stay at
/// the published avail index, everything taken, nothing outstanding.
fn assert_quiet(rig: &Rig, fe: &ScsiFrontend, what: &str) {
    std::thread::sleep(Duration::from_millis(200));
    for q in 0..QUEUES {
        let mut out = Vec::new();
        let n = fe
            .wait_completions(q, &mut out, Duration::ZERO)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", rig.d.log()));
        assert_eq!(n, 0, "{what}: extra completions {out:?}");
        let s = fe.ring_state(FIRST_REQUEST_QUEUE + q).unwrap();
        assert_eq!(
            (s.used_idx, s.last_used, s.in_flight),
            (s.published, s.published, 0),
            "{what}: queue {q} {s:?}"
        );
    }
    // The event queue holds only buffers, none completed wrongly.
    fe.poll_events(Duration::ZERO)
        .unwrap_or_else(|e| panic!("{what}: event queue: {e}"));
}

/// The image file holds what the model says.
fn assert_image(rig: &Rig, model: &Model, what: &str) {
    let f = rig.file();
    for (&slot, &(gen, len)) in model {
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, (slot * SLOT) as u64).unwrap();
        let lba = (slot * SLOT / 512) as u64;
        assert!(
            b == pattern(lba, gen, len),
            "{what}: slot {slot} does not hold generation {gen} ({len} bytes)"
        );
    }
}

/// Fill every slot of the image with `FILL_GEN` data and drop it from the
/// page cache, so reads go to the disk (and stay in flight a while).
fn fill_image(rig: &Rig) {
    let f = rig.file();
    for slot in 0..SLOTS {
        let lba = (slot * SLOT / 512) as u64;
        f.write_all_at(&pattern(lba, FILL_GEN, SLOT), (slot * SLOT) as u64)
            .unwrap();
    }
    f.sync_all().unwrap();
    evict(&f);
}

fn evict(f: &fs::File) {
    // SAFETY: posix_fadvise on a file descriptor we own; only a hint.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Heads marked in flight in the region, per request queue.
fn inflight_per_queue(fe: &ScsiFrontend) -> Vec<usize> {
    let region = fe.inflight().expect("an inflight region");
    (0..QUEUES)
        .map(|q| region.inflight_count(FIRST_REQUEST_QUEUE + q).unwrap())
        .collect()
}

/// Every published request of the request queues completed.
fn all_completed(fe: &ScsiFrontend) -> bool {
    (0..QUEUES).all(|q| {
        let s = fe.ring_state(FIRST_REQUEST_QUEUE + q).unwrap();
        s.used_idx == s.published
    })
}

/// What the rings and the region say after a kill, printed.
fn report_kill(fe: &ScsiFrontend, what: &str) -> usize {
    let mut in_flight = 0;
    let mut line = format!("{what}:");
    for q in 0..QUEUES {
        let vq = FIRST_REQUEST_QUEUE + q;
        let s = fe.ring_state(vq).unwrap();
        let region = fe.inflight().unwrap().queue(vq).unwrap();
        let marked = region.inflight_heads().len();
        let untaken = usize::from(s.published.wrapping_sub(s.used_idx)).saturating_sub(marked);
        in_flight += marked;
        line += &format!(
            " queue {q}: {marked} in flight, {untaken} not taken, used {} of {} \
             (region used_idx {}, version {});",
            s.used_idx, s.published, region.used_idx, region.version
        );
    }
    eprintln!("{line}");
    in_flight
}

/// `rounds` times: a batch of `op`, SIGKILL (round 0 right after the
/// batch, later rounds once more and more requests are marked in flight),
/// a new daemon, reconnect; every request completes exactly once, and the
/// data is right.
fn kill_rounds(op: Op, rounds: u8, tweak: impl FnOnce(&mut FrontendConfig)) {
    let mut rig = Rig::start(|_| Vec::new());
    let mut cfg = rig.config();
    tweak(&mut cfg);
    let mut fe = rig.connect(&cfg);
    let mut model = Model::new();
    if op == Op::Read {
        fill_image(&rig);
    }
    let mut seen_in_flight = 0;
    for round in 0..rounds {
        let what = format!("{op:?} round {round}");
        if op == Op::Read {
            evict(&rig.file());
        }
        let gen = round + 1;
        let mut reqs = submit_batch(&fe, op, gen, &mut model);
        let want = usize::from(round) * 8;
        let deadline = Instant::now() + Duration::from_secs(10);
        while want > 0
            && inflight_per_queue(&fe).iter().sum::<usize>() < want
            && !all_completed(&fe)
            && Instant::now() < deadline
        {
            std::thread::yield_now();
        }
        rig.d.kill9();
        let closed = fe
            .wait_backend_closed(Duration::from_secs(10))
            .unwrap()
            .expect("the connection closes with the killed daemon");
        seen_in_flight += report_kill(&fe, &format!("{what}: SIGKILL"));
        let taken = taken(&fe);
        let bases = rig.restart_and_reconnect(&mut fe);
        assert_eq!(bases, closed, "{what}: rings restart at their used index");
        collect(&rig, &fe, &mut reqs, &taken, &what);
        assert_quiet(&rig, &fe, &what);
        rig.assert_healthy(&what);
        if op == Op::Write {
            assert_image(&rig, &model, &what);
        }
        // The new daemon may greet new commands with a unit attention.
        common::settle(&fe, [0]);
    }
    assert!(
        seen_in_flight > 0,
        "no kill ever found a request in flight: nothing was resubmitted"
    );
    // Everything written reads back through the daemon.
    for (&slot, &(gen, len)) in &model {
        let lba = (slot * SLOT / 512) as u64;
        let r = fe
            .command(
                slot % QUEUES,
                0,
                &cdb::read10(lba as u32, (len / 512) as u16, false),
                DataDir::FromDevice(len as u32),
            )
            .unwrap();
        assert_eq!(r.status, GOOD);
        assert!(
            r.data_in() == &pattern(lba, gen, len)[..],
            "slot {slot} reads back"
        );
    }
    fe.shutdown().unwrap();
    rig.assert_healthy("end");
}

#[test]
fn kill9_with_writes_in_flight() {
    kill_rounds(Op::Write, 5, |_| {});
}

#[test]
fn kill9_with_reads_in_flight() {
    kill_rounds(Op::Read, 3, |_| {});
}

/// QEMU before 5.2 sent GET/SET_INFLIGHT_FD before the first SET_FEATURES.
#[test]
fn kill9_with_the_old_qemu_message_order() {
    kill_rounds(Op::Write, 2, |c| c.inflight_before_features = true);
}

#[test]
fn sigterm_completes_every_request_before_closing() {
    let mut rig = Rig::start(|_| Vec::new());
    let cfg = rig.config();
    let mut fe = rig.connect(&cfg);
    let mut model = Model::new();
    // Ask for an interrupt only when the last request of each queue
    // completes.
    for q in 0..QUEUES {
        let vq = FIRST_REQUEST_QUEUE + q;
        fe.take_call(vq).unwrap();
        let s = fe.ring_state(vq).unwrap();
        fe.request_interrupt_at(vq, s.last_used.wrapping_add(PER_QUEUE as u16 - 1))
            .unwrap();
    }
    let mut reqs = submit_batch(&fe, Op::Write, 1, &mut model);
    // SIGTERM once the daemon took every request (some still in flight).
    let region = fe.inflight().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let taken = (0..QUEUES).all(|q| {
            let vq = FIRST_REQUEST_QUEUE + q;
            let s = fe.ring_state(vq).unwrap();
            let marked = region.inflight_count(vq).unwrap();
            usize::from(s.used_idx.wrapping_sub(s.last_used)) + marked >= PER_QUEUE
        });
        if taken {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never took the batch:\n{}",
            rig.d.log()
        );
        std::thread::yield_now();
    }
    let marked = inflight_per_queue(&fe);
    rig.d.sigterm();
    let closed = fe
        .wait_backend_closed(PATIENCE)
        .unwrap()
        .unwrap_or_else(|| panic!("the daemon kept the connection:\n{}", rig.d.log()));
    eprintln!("SIGTERM with {marked:?} requests in flight; used indexes at close {closed:?}");
    for q in 0..QUEUES {
        let vq = FIRST_REQUEST_QUEUE + q;
        let s = fe.ring_state(vq).unwrap();
        assert_eq!(
            closed[vq], s.published,
            "queue {q}: the connection closed before every request completed"
        );
        let r = region.queue(vq).unwrap();
        assert_eq!(
            (r.inflight_heads(), r.used_idx),
            (vec![], s.published),
            "queue {q}: the region still has requests in flight"
        );
        assert!(
            fe.call_pending(vq).unwrap(),
            "queue {q}: no interrupt for the last completion"
        );
    }
    collect(&rig, &fe, &mut reqs, &HashSet::new(), "after SIGTERM");
    assert_quiet(&rig, &fe, "after SIGTERM");
    assert_eq!(rig.d.wait_exit(PATIENCE), Some(0), "{}", rig.d.log());
    assert_image(&rig, &model, "after SIGTERM");

    // A new daemon: nothing to resubmit, nothing completes again.
    let before: Vec<_> = (0..QUEUES + 2)
        .map(|vq| fe.ring_state(vq).unwrap())
        .collect();
    let bases = rig.restart_and_reconnect(&mut fe);
    assert_eq!(bases, closed);
    std::thread::sleep(Duration::from_millis(300));
    assert_quiet(&rig, &fe, "after the restart");
    for (vq, b) in before.iter().enumerate() {
        assert_eq!(fe.ring_state(vq).unwrap(), *b, "queue {vq} moved");
    }
    common::settle(&fe, [0]);
    let mut reqs = submit_batch(&fe, Op::Write, 2, &mut model);
    collect(&rig, &fe, &mut reqs, &HashSet::new(), "after the restart");
    assert_image(&rig, &model, "after the restart");
    fe.shutdown().unwrap();
    rig.assert_healthy("end");
}

/// A daemon that died between publishing a used element and clearing its
/// inflight flag: the region marks a head in flight that the used ring
/// already returned (region used_idx one behind, last_batch_head = that
/// head). The next daemon must not complete it again; the others
/// outstanding complete once.
#[test]
fn a_torn_used_update_is_not_completed_twice() {
    let mut rig = Rig::start(|_| Vec::new());
    let cfg = rig.config();
    let mut fe = rig.connect(&cfg);
    let mut model = Model::new();
    let vq = FIRST_REQUEST_QUEUE;
    let start = fe.ring_state(vq).unwrap().last_used;
    let mut reqs = submit_batch(&fe, Op::Write, 1, &mut model);
    // Kill once a few requests of queue 0 completed (not taken by the
    // frontend: their heads stay outstanding, not reused).
    let deadline = Instant::now() + Duration::from_secs(20);
    while fe.ring_state(vq).unwrap().used_idx.wrapping_sub(start) < 2 {
        assert!(
            Instant::now() < deadline,
            "nothing completes:\n{}",
            rig.d.log()
        );
        std::thread::yield_now();
    }
    rig.d.kill9();
    fe.wait_backend_closed(Duration::from_secs(10))
        .unwrap()
        .expect("closed");
    report_kill(&fe, "torn: SIGKILL");
    let region = fe.inflight().unwrap();
    let used = fe.ring_state(vq).unwrap().used_idx;
    // Finish any batch the daemon really died in (its heads are in the
    // used ring), then tear the last used element.
    let mut i = region.queue(vq).unwrap().used_idx;
    while i != used {
        let e = fe.used_entry(vq, i).unwrap();
        region.set_inflight(vq, e.id, 0).unwrap();
        i = i.wrapping_add(1);
    }
    let torn = fe.used_entry(vq, used.wrapping_sub(1)).unwrap().id;
    region.set_inflight(vq, torn, 1).unwrap();
    region.set_last_batch_head(vq, torn).unwrap();
    region.set_used_idx(vq, used.wrapping_sub(1)).unwrap();
    eprintln!(
        "torn: head {torn} marked in flight, region used_idx {} (ring {used}); \
         {} others in flight",
        used.wrapping_sub(1),
        region.inflight_count(vq).unwrap() - 1
    );
    let taken = taken(&fe);
    rig.restart_and_reconnect(&mut fe);
    collect(&rig, &fe, &mut reqs, &taken, "torn");
    assert_quiet(&rig, &fe, "torn");
    assert_image(&rig, &model, "torn");
    fe.shutdown().unwrap();
    rig.assert_healthy("torn");
}

/// Event buffers posted before a crash serve the next daemon: a LUN added
/// after the restart is announced in one of them, once.
#[test]
fn event_buffers_outlive_the_daemon() {
    let mut rig = Rig::start(|dir| {
        vec![
            "--rpc-socket".into(),
            dir.join("rpc.sock").display().to_string(),
        ]
    });
    let mut cfg = rig.config();
    cfg.extra_features = F_HOTPLUG;
    let mut fe = rig.connect(&cfg);
    let posted = fe.ring_state(EVENT_QUEUE).unwrap();
    assert_eq!(posted.in_flight, usize::from(cfg.event_buffers));
    rig.d.kill9();
    rig.restart_and_reconnect(&mut fe);
    let spare = common::image(rig.imgdir.path(), "spare.img", 8 << 20);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rpc = loop {
        match vhost_user_scsi::mgmt::rpc_client::RpcClient::connect(rig.d.path("rpc.sock")) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "rpc: {e}\n{}", rig.d.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    rpc.call(
        "lun_add",
        Some(serde_json::json!({"controller": "default", "path": spare, "lun": 1})),
    )
    .unwrap_or_else(|e| panic!("lun_add: {e}\n{}", rig.d.log()));
    let mut events: Vec<Event> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while events.is_empty() && Instant::now() < deadline {
        events.extend(fe.poll_events(Duration::from_millis(100)).unwrap());
    }
    std::thread::sleep(Duration::from_millis(200));
    events.extend(fe.poll_events(Duration::ZERO).unwrap());
    let got: Vec<(u32, [u8; 8], u32)> = events
        .iter()
        .map(|e| {
            let (event, lun, reason) = (e.event, e.lun, e.reason);
            (u32::from_le(event), lun, u32::from_le(reason))
        })
        .collect();
    assert_eq!(
        got,
        [(
            T_TRANSPORT_RESET,
            [1, 0, 0, 1, 0, 0, 0, 0],
            EVT_RESET_RESCAN
        )],
        "{}",
        rig.d.log()
    );
    fe.shutdown().unwrap();
    rig.assert_healthy("events");
}

/// Write `data` into a fresh memfd of `len` bytes.
fn memfd(len: u64, data: &[(u64, Vec<u8>)]) -> fs::File {
    let fd = nix::sys::memfd::memfd_create(
        c"hostile-inflight",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .unwrap();
    let f = fs::File::from(fd);
    f.set_len(len).unwrap();
    for (off, d) in data {
        f.write_all_at(d, *off).unwrap();
    }
    f
}

/// A split-queue region header.
fn header(version: u16, desc_num: u16, last_batch_head: u16, used_idx: u16) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[8..10].copy_from_slice(&version.to_le_bytes());
    h[10..12].copy_from_slice(&desc_num.to_le_bytes());
    h[12..14].copy_from_slice(&last_batch_head.to_le_bytes());
    h[14..16].copy_from_slice(&used_idx.to_le_bytes());
    h
}

/// A descriptor state.
fn desc_state(inflight: u8, next: u16, counter: u64) -> Vec<u8> {
    let mut d = vec![0u8; 16];
    d[0] = inflight;
    d[6..8].copy_from_slice(&next.to_le_bytes());
    d[8..16].copy_from_slice(&counter.to_le_bytes());
    d
}

/// Regions a hostile frontend may hand over, and whether the daemon must
/// refuse them (the connection does not come up) or may also use or ignore
/// them safely.
fn hostile_regions(nq: u16, qs: u16) -> Vec<(&'static str, InflightRegion, bool)> {
    let need = inflight::required_size(nq, qs);
    let msg = |size: u64, off: u64, n: u16, q: u16| VhostUserInflight::new(size, off, n, q);
    let stride = inflight::queue_stride(qs);
    let mut v = vec![
        (
            "a region one queue short",
            InflightRegion::custom(memfd(need - stride, &[]), msg(need - stride, 0, nq, qs)),
            true,
        ),
        (
            "a region 64 bytes short",
            InflightRegion::custom(memfd(need - 64, &[]), msg(need - 64, 0, nq, qs)),
            true,
        ),
        (
            "a region beyond the end of its file",
            InflightRegion::custom(memfd(4096, &[]), msg(need, 0, nq, qs)),
            true,
        ),
        (
            "an offset beyond the end of the file",
            InflightRegion::custom(memfd(need, &[]), msg(need, 1 << 30, nq, qs)),
            true,
        ),
        // The part the queues need is in the file: using only that is safe.
        (
            "a region claiming 64 TiB",
            InflightRegion::custom(memfd(need, &[]), msg(1 << 46, 0, nq, qs)),
            false,
        ),
        (
            "an offset not page aligned",
            InflightRegion::custom(memfd(need + 4096, &[]), msg(need, 100, nq, qs)),
            false,
        ),
    ];
    // Random bytes everywhere (version, desc_num, flags, counters).
    let mut x = 0x243f_6a88_85a3_08d3u64;
    let noise: Vec<u8> = (0..need)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    v.push((
        "random bytes",
        InflightRegion::custom(memfd(need, &[(0, noise)]), msg(need, 0, nq, qs)),
        false,
    ));
    // Version 1, every head of every queue in flight, counters at the top
    // of the range, links and batch head out of range, used_idx off.
    let mut all = Vec::new();
    for q in 0..usize::from(nq) {
        let base = inflight::queue_offset(q, qs);
        all.push((base, header(1, qs, 0xffff, 0x8000)));
        for j in 0..qs {
            all.push((
                inflight::desc_offset(q, qs, j),
                desc_state(1, 0xfff0 - j, u64::MAX - u64::from(j)),
            ));
        }
    }
    v.push((
        "every head in flight",
        InflightRegion::custom(memfd(need, &all), msg(need, 0, nq, qs)),
        false,
    ));
    // A plausible region naming requests that never existed (the
    // descriptor table of the new connection is empty), counters at the
    // top of the range.
    let mut ghosts = Vec::new();
    for q in 0..usize::from(nq) {
        ghosts.push((inflight::queue_offset(q, qs), header(1, qs, 0, 0)));
        for j in 0..8u16 {
            ghosts.push((
                inflight::desc_offset(q, qs, j * 5),
                desc_state(1, 0, u64::MAX - 8 + u64::from(j)),
            ));
        }
    }
    v.push((
        "requests that never existed",
        InflightRegion::custom(memfd(need, &ghosts), msg(need, 0, nq, qs)),
        false,
    ));
    // Version 1 with a desc_num that is not the queue size.
    let mut wrong_num = Vec::new();
    for q in 0..usize::from(nq) {
        wrong_num.push((inflight::queue_offset(q, qs), header(1, 0xffff, 3, 0)));
        wrong_num.push((inflight::desc_offset(q, qs, 3), desc_state(1, 0, 1)));
    }
    v.push((
        "desc_num 0xffff",
        InflightRegion::custom(memfd(need, &wrong_num), msg(need, 0, nq, qs)),
        false,
    ));
    // Unknown version and features.
    let mut unknown = Vec::new();
    for q in 0..usize::from(nq) {
        let mut h = header(0x5a5a, qs, 0, 0);
        h[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
        unknown.push((inflight::queue_offset(q, qs), h));
        unknown.push((inflight::desc_offset(q, qs, 1), desc_state(1, 0, 7)));
    }
    v.push((
        "version 0x5a5a",
        InflightRegion::custom(memfd(need, &unknown), msg(need, 0, nq, qs)),
        false,
    ));
    // The message claims queues of 2 * qs: heads beyond the real rings are
    // marked in flight.
    let big = inflight::required_size(nq, 2 * qs);
    let mut beyond = Vec::new();
    for q in 0..usize::from(nq) {
        beyond.push((inflight::queue_offset(q, 2 * qs), header(1, 2 * qs, 0, 0)));
        for j in qs..2 * qs {
            beyond.push((
                inflight::desc_offset(q, 2 * qs, j),
                desc_state(1, 0, u64::from(j)),
            ));
        }
    }
    v.push((
        "heads beyond the queue size",
        InflightRegion::custom(memfd(big, &beyond), msg(big, 0, nq, 2 * qs)),
        false,
    ));
    // A region for one queue while four rings start.
    let one = inflight::required_size(1, qs);
    v.push((
        "a region for one queue",
        InflightRegion::custom(memfd(one, &[(0, header(1, qs, 5, 9))]), msg(one, 0, 1, qs)),
        false,
    ));
    // A torn batch whose head is out of range, and a counter about to wrap.
    let mut torn = Vec::new();
    for q in 0..usize::from(nq) {
        torn.push((inflight::queue_offset(q, qs), header(1, qs, 60000, 5)));
        torn.push((
            inflight::desc_offset(q, qs, 0),
            desc_state(1, 60000, u64::MAX),
        ));
        torn.push((inflight::desc_offset(q, qs, 1), desc_state(1, 1, 0)));
    }
    v.push((
        "a torn batch out of range",
        InflightRegion::custom(memfd(need, &torn), msg(need, 0, nq, qs)),
        false,
    ));
    v
}

#[test]
fn hostile_inflight_regions_are_refused_or_survived() {
    let mut rig = Rig::start(|_| Vec::new());
    let mut cfg = rig.config();
    cfg.queue_size = 128;
    cfg.mem_size = 32 << 20;
    // A normal connection gets a region: the daemon does INFLIGHT_SHMFD.
    rig.connect(&cfg).shutdown().unwrap();
    let mut hostile_cfg = cfg.clone();
    hostile_cfg.timeout = Duration::from_secs(2);
    let nq = QUEUES as u16 + 2;
    for (round, (name, region, must_refuse)) in
        hostile_regions(nq, cfg.queue_size).into_iter().enumerate()
    {
        match ScsiFrontend::connect_with_inflight(&hostile_cfg, region) {
            Err(e) => eprintln!("{name}: refused ({e})"),
            Ok(fe) => {
                assert!(!must_refuse, "{name}: accepted\n{}", rig.d.log());
                // Whatever the daemon made of it, it answers or the
                // frontend reports what it did; nothing hangs for long.
                let r = fe.command(0, 0, &cdb::test_unit_ready(), DataDir::None);
                let s = fe.ring_state(FIRST_REQUEST_QUEUE);
                eprintln!("{name}: accepted; TEST UNIT READY: {r:?}; ring {s:?}");
                drop(fe);
            }
        }
        rig.assert_healthy(name);
        // The daemon still serves a normal connection, data intact.
        let fe = rig.connect(&cfg);
        let lba = 8 * round as u32;
        let data = pattern(u64::from(lba), 9, 4096);
        let w = fe
            .command(1, 0, &cdb::write10(lba, 8, true), DataDir::ToDevice(&data))
            .unwrap();
        assert_eq!(w.status, GOOD, "{name}");
        let r = fe
            .command(0, 0, &cdb::read10(lba, 8, false), DataDir::FromDevice(4096))
            .unwrap();
        assert!(r.data_in() == &data[..], "{name}: data");
        fe.shutdown().unwrap();
        rig.assert_healthy(name);
    }
}
