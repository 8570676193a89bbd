//! One VM cannot take the others down (docs/architecture.md): a hostile
//! frontend on controller `a` of a daemon, while controller `b` of the
//! same daemon runs verified I/O on both its queues for the whole test.
//! Every test ends by checking that `b` saw no error and no request slower
//! than [`MAX_STALL`], and that the daemon still runs.
//!
//! - guest memory shrunk under I/O, or to one page with the rings (SIGBUS
//!   contained to its connection), sealed memory that cannot shrink,
//!   memory regions outside their file, an avail index beyond the ring;
//! - 1000 connect/close cycles and 200 sessions leave no fd, thread or
//!   mapping behind;
//! - no file descriptor left: the controller that cannot accept shows
//!   `retrying` and recovers once descriptors are free;
//! - a silent connection is closed after 5 s or replaced by a real
//!   frontend; a second frontend on a busy controller is refused within
//!   the 1 s it may wait for the first one to leave (a reconnecting
//!   frontend's new connection is served); half a message does not hold a
//!   controller, its deletion or shutdown.
//!
//! The tests run one at a time ([`serial`]): each asserts latencies, and
//! the machines this runs on have two cores. The daemon bugs this file
//! found and fixed since have their tests at the end.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{image, pattern, Daemon};
use serde_json::{json, Value};
use vhost::VhostBackend;
use vhost_user_scsi::frontend::vring::{RingLayout, Seg};
use vhost_user_scsi::frontend::{
    cdb, Connection, DataDir, FrontendConfig, GuestMem, ScsiFrontend, FIRST_REQUEST_QUEUE,
};
use vhost_user_scsi::mgmt::rpc_client::RpcClient;
use vhost_user_scsi::virtio_scsi::{encode_lun, CmdReqHeader, CmdRespHeader, CDB_SIZE, S_OK};
use vm_memory::ByteValued;

const MIB: u64 = 1 << 20;
/// Blocks (of 512 bytes) per verified request.
const BLOCKS: u16 = 16;
/// The longest a request of the bystander controller may take.
const MAX_STALL: Duration = Duration::from_secs(1);
/// How long anything else the daemon promises may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(15);
/// The daemon's handshake timeout (src/vhost/server.rs).
const SILENCE: Duration = Duration::from_secs(5);
/// How long a new connection waits for the served one to end before it is
/// refused (src/vhost/server.rs).
const GRACE: Duration = Duration::from_secs(1);

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time (a failed test poisons the lock; the next one runs).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A daemon with controllers `a` (1 request queue) and `b` (2), LUN 0 each,
/// from `--config`, and `--rpc-socket DIR/rpc.sock` (plus a metrics socket
/// `DIR/metrics.sock` with `metrics`).
fn start(metrics: bool) -> Daemon {
    let mut d = Daemon::start_with(
        |dir| {
            let a = image(dir, "a.img", 16 * MIB);
            let b = image(dir, "b.img", 16 * MIB);
            let config = dir.join("isolation.toml");
            fs::write(
                &config,
                format!(
                    "[[controller]]\nname = \"a\"\nsocket = \"{}\"\nnum_queues = 1\nqueue_size = 128\n\
                     [[controller.lun]]\npath = \"{}\"\n\n\
                     [[controller]]\nname = \"b\"\nsocket = \"{}\"\nnum_queues = 2\nqueue_size = 128\n\
                     [[controller.lun]]\npath = \"{}\"\n",
                    dir.join("a.sock").display(),
                    a.display(),
                    dir.join("b.sock").display(),
                    b.display()
                ),
            )
            .unwrap();
            let mut args = vec![
                "--config".to_string(),
                config.display().to_string(),
                "--rpc-socket".to_string(),
                dir.join("rpc.sock").display().to_string(),
            ];
            if metrics {
                args.push("--metrics-addr".into());
                args.push(format!("unix:{}", dir.join("metrics.sock").display()));
            }
            args
        },
        "rpc.sock",
    );
    for name in ["a.sock", "b.sock"] {
        let p = d.path(name);
        d.wait_for_path(&p);
    }
    d
}

fn pid(d: &Daemon) -> u32 {
    d.child.as_ref().expect("the daemon runs").id()
}

/// The last lines of the daemon's log, for failure messages.
fn tail(d: &Daemon) -> String {
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// A frontend configuration for controller `ctrl` with `queues` request
/// queues and 4 MiB of guest memory.
fn frontend_config(d: &Daemon, ctrl: &str, queues: u16) -> FrontendConfig {
    let mut cfg = common::config_at(&d.path(&format!("{ctrl}.sock")));
    cfg.request_queues = queues;
    cfg.mem_size = 4 << 20;
    cfg
}

/// A frontend on controller `ctrl`, LUN 0's unit attentions consumed.
fn frontend(d: &Daemon, ctrl: &str, queues: u16) -> ScsiFrontend {
    let fe = ScsiFrontend::connect(&frontend_config(d, ctrl, queues))
        .unwrap_or_else(|e| panic!("connect {ctrl}: {e}\n{}", tail(d)));
    common::settle(&fe, [0]);
    fe
}

/// Write `BLOCKS` blocks of generation `gen` at `lba` on request queue
/// `queue` and read them back; the longest of the two requests is kept in
/// `slowest`.
fn write_read(
    fe: &ScsiFrontend,
    queue: usize,
    lba: u32,
    gen: u8,
    slowest: &mut Duration,
) -> Result<(), String> {
    let len = usize::from(BLOCKS) * 512;
    let data = pattern(u64::from(lba), gen, len);
    let t = Instant::now();
    let w = fe.command(
        queue,
        0,
        &cdb::write10(lba, BLOCKS, false),
        DataDir::ToDevice(&data),
    );
    *slowest = (*slowest).max(t.elapsed());
    let w = w.map_err(|e| format!("q{queue} write lba {lba}: {e}"))?;
    if (w.response, w.status) != (S_OK, 0) {
        return Err(format!(
            "q{queue} write lba {lba}: response {} status {} sense {:?}",
            w.response,
            w.status,
            w.sense_key()
        ));
    }
    let t = Instant::now();
    let r = fe.command(
        queue,
        0,
        &cdb::read10(lba, BLOCKS, false),
        DataDir::FromDevice(len as u32),
    );
    *slowest = (*slowest).max(t.elapsed());
    let r = r.map_err(|e| format!("q{queue} read lba {lba}: {e}"))?;
    if (r.response, r.status) != (S_OK, 0) {
        return Err(format!(
            "q{queue} read lba {lba}: response {} status {} sense {:?}",
            r.response,
            r.status,
            r.sense_key()
        ));
    }
    if r.data_in() != &data[..] {
        return Err(format!("q{queue} lba {lba}: read back other data"));
    }
    Ok(())
}

/// `write_read` that must succeed.
fn verified(d: &Daemon, fe: &ScsiFrontend, queue: usize, lba: u32, gen: u8) {
    let mut slowest = Duration::ZERO;
    if let Err(e) = write_read(fe, queue, lba, gen, &mut slowest) {
        panic!("{e}\n{}", tail(d));
    }
}

/// What one traffic thread saw.
#[derive(Debug, Default)]
struct QueueReport {
    requests: u64,
    errors: Vec<String>,
    slowest: Duration,
}

/// Verified I/O on every request queue of a frontend (one thread per
/// queue, each in its own 1 MiB of LUN 0), until [`Traffic::finish`].
struct Traffic {
    label: String,
    fe: Arc<ScsiFrontend>,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    threads: Vec<JoinHandle<QueueReport>>,
}

impl Traffic {
    fn start(label: &str, fe: ScsiFrontend) -> Traffic {
        let fe = Arc::new(fe);
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let threads = (0..fe.num_request_queues())
            .map(|q| {
                let (fe, stop, rounds) = (fe.clone(), stop.clone(), rounds.clone());
                std::thread::spawn(move || {
                    let mut rep = QueueReport::default();
                    let mut gen = 1u8;
                    while !stop.load(Ordering::Relaxed) {
                        for k in 0..8u32 {
                            let lba = q as u32 * 2048 + k * u32::from(BLOCKS);
                            let r = write_read(&fe, q, lba, gen, &mut rep.slowest);
                            rep.requests += 2;
                            if let Err(e) = r {
                                rep.errors.push(e);
                                if rep.errors.len() >= 8 {
                                    return rep;
                                }
                            }
                        }
                        gen = gen.wrapping_add(1).max(1);
                        rounds.fetch_add(1, Ordering::Relaxed);
                        // Leave the two cores some room for the test itself.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    rep
                })
            })
            .collect();
        Traffic {
            label: label.to_string(),
            fe,
            stop,
            rounds,
            threads,
        }
    }

    /// Rounds (8 writes and reads) done so far, all queues together.
    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Wait until `n` more rounds were done than `since`.
    fn wait_progress(&self, d: &Daemon, since: u64, n: u64) {
        let deadline = Instant::now() + PATIENCE;
        while self.rounds() < since + n {
            assert!(
                Instant::now() < deadline,
                "{}: no progress ({} rounds)\n{}",
                self.label,
                self.rounds(),
                tail(d)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop, shut the frontend down and check: no error, every request
    /// faster than [`MAX_STALL`], I/O on every queue.
    fn finish(self, d: &Daemon) {
        let label = self.label.clone();
        let fe = self.stop(d);
        if let Err(e) = fe.shutdown() {
            panic!("{label}: shutdown: {e}\n{}", tail(d));
        }
    }

    /// As [`Traffic::finish`], but the frontend is returned, still
    /// connected.
    fn stop(self, d: &Daemon) -> ScsiFrontend {
        self.stop.store(true, Ordering::Relaxed);
        let reports: Vec<QueueReport> = self
            .threads
            .into_iter()
            .map(|t| t.join().expect("a traffic thread panicked"))
            .collect();
        let fe = Arc::try_unwrap(self.fe)
            .ok()
            .expect("the traffic threads hold the frontend");
        eprintln!("{}: {reports:?}", self.label);
        for (q, r) in reports.iter().enumerate() {
            assert!(
                r.errors.is_empty(),
                "{} queue {q}: {:?}\n{}",
                self.label,
                r.errors,
                tail(d)
            );
            assert!(
                r.slowest < MAX_STALL,
                "{} queue {q}: a request took {:?}\n{}",
                self.label,
                r.slowest,
                tail(d)
            );
            assert!(r.requests >= 16, "{} queue {q}: {r:?}", self.label);
        }
        fe
    }
}

/// Controller `name` as `controller_list` shows it.
fn controller(rpc: &mut RpcClient, d: &Daemon, name: &str) -> Value {
    let list = rpc
        .call("controller_list", None)
        .unwrap_or_else(|e| panic!("controller_list: {e}\n{}", tail(d)));
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no controller {name} in {list}"))
}

/// Wait up to `timeout` until controller `name` is in `state`; returns
/// its last entry and whether it got there.
fn reaches_state(
    rpc: &mut RpcClient,
    d: &Daemon,
    name: &str,
    state: &str,
    timeout: Duration,
) -> (Value, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let c = controller(rpc, d, name);
        if c["state"] == state {
            return (c, true);
        }
        if Instant::now() >= deadline {
            return (c, false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until controller `name` is in `state`; returns its entry.
fn wait_state(rpc: &mut RpcClient, d: &Daemon, name: &str, state: &str) -> Value {
    let (c, ok) = reaches_state(rpc, d, name, state, PATIENCE);
    assert!(ok, "{name} never became {state}: {c}\n{}", tail(d));
    c
}

/// Wait up to `timeout` for the peer to close the stream socket `fd` (end
/// of file or reset): how long it took, `None` if it is still open. The
/// daemon never sends unsolicited data, so data to read is a failure.
fn closed_within(fd: RawFd, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
            continue;
        }
        if rc == 0 {
            if start.elapsed() >= timeout {
                return None;
            }
            continue;
        }
        let mut b = [0u8; 1];
        // SAFETY: recv of at most one byte into a live buffer, not blocking.
        let n = unsafe {
            libc::recv(
                fd,
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return Some(start.elapsed());
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::ConnectionReset => return Some(start.elapsed()),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => continue,
                _ => panic!("recv: {e}"),
            }
        }
        panic!("the daemon sent unsolicited data");
    }
}

/// Bytes of a virtio-scsi request header.
const REQ_HDR: usize = std::mem::size_of::<CmdReqHeader>();
/// Bytes of a virtio-scsi response header.
const RESP_HDR: usize = std::mem::size_of::<CmdRespHeader>();

/// Bytes at the start of a frontend's guest memory that hold its rings.
fn ring_bytes(cfg: &FrontendConfig) -> u64 {
    let stride = RingLayout::new(cfg.queue_size).total.div_ceil(4096) * 4096;
    stride * (u64::from(cfg.request_queues) + 2)
}

/// The log line of a contained SIGBUS (src/vhost/server.rs).
const SIGBUS_LINE: &str = "the frontend's guest memory became inaccessible";

#[test]
fn guest_memory_shrunk_under_io_disconnects_only_its_frontend() {
    let _serial = serial();
    let mut d = start(false);
    let mut rpc = d.rpc();
    let b = Traffic::start("b", frontend(&d, "b", 2));
    let fe = frontend(&d, "a", 1);
    for k in 0..8 {
        verified(&d, &fe, 0, k * u32::from(BLOCKS), 3);
    }
    // The memfd shrinks to its rings: the request buffers, allocated after
    // them, are lost. Everything the daemon is to read from them is written
    // before: 8 reads of 64 KiB published at once, a ninth published only
    // after the shrink (its header is then a lost page for certain).
    let cfg = fe.config().clone();
    let keep = ring_bytes(&cfg);
    let mut chains = Vec::new();
    for i in 0..9u32 {
        let hdr = fe.alloc_buffer(REQ_HDR, 64).unwrap();
        let resp = fe.alloc_buffer(RESP_HDR, 64).unwrap();
        let data = fe.alloc_buffer(64 << 10, 4096).unwrap();
        assert!(hdr.min(resp).min(data) >= cfg.mem_base + keep);
        let mut h = CmdReqHeader {
            lun: encode_lun(0, 0),
            tag: 1000 + u64::from(i),
            ..Default::default()
        };
        let c = cdb::read10(i * 128, 128, false);
        h.cdb[..c.len()].copy_from_slice(&c);
        assert!(c.len() <= CDB_SIZE);
        fe.mem().write(hdr, h.as_slice()).unwrap();
        fe.mem().write(resp, &[0; RESP_HDR]).unwrap();
        chains.push([
            Seg {
                addr: hdr,
                len: REQ_HDR as u32,
                write: false,
            },
            Seg {
                addr: resp,
                len: RESP_HDR as u32,
                write: true,
            },
            Seg {
                addr: data,
                len: 64 << 10,
                write: true,
            },
        ]);
    }
    for (i, segs) in chains[..8].iter().enumerate() {
        fe.queue_chain(0, segs, i as u64).unwrap();
    }
    fe.publish(0).unwrap();
    fe.queue_chain(0, &chains[8], 8).unwrap();
    let rounds = b.rounds();
    let file = fe.mem().file().expect("the guest memory's memfd");
    file.set_len(keep).unwrap();
    // From here on this process does not touch A's buffers either (it
    // would die of SIGBUS): only the ring pages, which are kept.
    fe.publish(0).unwrap();
    fe.kick(FIRST_REQUEST_QUEUE).unwrap();

    let closed = fe.connection().wait_closed(PATIENCE).unwrap();
    assert!(closed, "the daemon kept A's connection\n{}", tail(&d));
    assert!(d.alive(), "the daemon died:\n{}", tail(&d));
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains(SIGBUS_LINE))
        .unwrap_or_else(|| panic!("no SIGBUS line in the log:\n{}", tail(&d)));
    assert!(line.contains("ERROR") && line.contains("SIGBUS"), "{line}");
    assert!(line.contains("a.sock"), "{line}");
    wait_state(&mut rpc, &d, "a", "listening");
    b.wait_progress(&d, rounds, 3);
    // Unmapping is all dropping it does.
    drop(fe);

    // Controller a serves a healthy frontend again.
    let fe = frontend(&d, "a", 1);
    for k in 0..16 {
        verified(&d, &fe, 0, k * u32::from(BLOCKS), 4);
    }
    assert_eq!(controller(&mut rpc, &d, "a")["state"], "connected");
    fe.shutdown().unwrap();
    b.finish(&d);
    assert!(d.alive(), "the daemon died:\n{}", tail(&d));
    assert!(!d.log().contains("panicked"), "{}", tail(&d));
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn sealed_guest_memory_cannot_shrink_and_its_io_goes_on() {
    let _serial = serial();
    let mut d = start(false);
    let mut rpc = d.rpc();
    let b = Traffic::start("b", frontend(&d, "b", 2));
    let fe = frontend(&d, "a", 1);
    verified(&d, &fe, 0, 0, 5);
    let file = fe.mem().file().expect("the guest memory's memfd");
    let len = file.metadata().unwrap().len();
    // SAFETY: fcntl on our own memfd (created with MFD_ALLOW_SEALING).
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    assert_eq!(rc, 0, "F_ADD_SEALS: {}", std::io::Error::last_os_error());
    let e = file
        .set_len(ring_bytes(fe.config()))
        .expect_err("a sealed memfd shrank");
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    assert_eq!(file.metadata().unwrap().len(), len);
    let rounds = b.rounds();
    fe.kick(FIRST_REQUEST_QUEUE).unwrap();
    for k in 0..64 {
        verified(&d, &fe, 0, (k % 32) * u32::from(BLOCKS), k as u8);
    }
    assert!(!d.log().contains(SIGBUS_LINE), "{}", tail(&d));
    assert_eq!(controller(&mut rpc, &d, "a")["state"], "connected");
    b.wait_progress(&d, rounds, 3);
    fe.shutdown().unwrap();
    b.finish(&d);
    assert!(d.alive(), "the daemon died:\n{}", tail(&d));
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn memory_regions_outside_their_file_are_refused() {
    let _serial = serial();
    let mut d = start(false);
    let b = Traffic::start("b", frontend(&d, "b", 2));
    // (what, memory_size, mmap_offset) of a region of a 1 MiB memfd.
    let cases = [
        ("larger than its file", 2 * MIB, 0),
        ("past the end of its file", MIB, MIB),
        ("ending past 2^64", MIB, !4095u64),
        ("empty", 0, 0),
    ];
    let rounds = b.rounds();
    for (what, size, offset) in cases {
        let mem = GuestMem::new(MIB as usize, 1 << 32, 0).unwrap();
        let cfg = frontend_config(&d, "a", 1);
        let mut conn = Connection::open(&cfg).unwrap_or_else(|e| panic!("{what}: {e}"));
        conn.set_features(&cfg)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut region = mem.region_infos().unwrap()[0];
        region.memory_size = size;
        region.mmap_offset = offset;
        let r = conn.frontend().set_mem_table(&[region]);
        assert!(r.is_err(), "{what}: SET_MEM_TABLE accepted");
        assert!(d.alive(), "{what}: the daemon died:\n{}", tail(&d));
        drop(conn);
        // The same controller serves an honest frontend next.
        let fe = frontend(&d, "a", 1);
        verified(&d, &fe, 0, 0, 6);
        fe.shutdown().unwrap();
    }
    assert!(d.log().contains("memory region refused"), "{}", tail(&d));
    b.wait_progress(&d, rounds, 3);
    b.finish(&d);
    assert!(d.alive(), "the daemon died:\n{}", tail(&d));
    assert_eq!(d.stop(), Some(0));
}

/// Run `f` in a thread: `None` if it succeeds within `timeout`, else what
/// went wrong (a hang is left behind in its thread).
fn in_thread(
    what: &str,
    timeout: Duration,
    f: Box<dyn FnOnce() -> Result<(), String> + Send>,
) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{what}: {e}")),
        Err(_) => Some(format!("{what}: no answer within {timeout:?}")),
    }
}

/// A frontend on controller `ctrl` that does verified I/O, in a thread:
/// `None` if that works within `timeout`.
fn serves_within(d: &Daemon, ctrl: &str, timeout: Duration) -> Option<String> {
    let cfg = frontend_config(d, ctrl, 1);
    in_thread(
        &format!("a new frontend on {ctrl}"),
        timeout,
        Box::new(move || {
            let fe = ScsiFrontend::connect(&cfg).map_err(|e| e.to_string())?;
            common::settle(&fe, [0]);
            let mut slowest = Duration::ZERO;
            write_read(&fe, 0, 0, 11, &mut slowest)?;
            fe.shutdown().map(|_| ()).map_err(|e| e.to_string())
        }),
    )
}

/// SIGTERM the daemon and wait up to `timeout` for exit code 0 (it is
/// killed when `d` is dropped otherwise).
fn sigterm_exit(d: &mut Daemon, timeout: Duration) -> Result<(), String> {
    let child = d.child.as_mut().expect("the daemon runs");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(st) = child.try_wait().unwrap() {
            return match st.code() {
                Some(0) => Ok(()),
                _ => Err(format!("SIGTERM: the daemon ended with {st}")),
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("SIGTERM: the daemon still runs after {timeout:?}"))
}

/// Put the avail index of request queue 0 of `fe` `ahead` entries past
/// what was published, in its guest memory (as a guest can), and kick.
fn bogus_avail_index(fe: &ScsiFrontend, ahead: u16) {
    let cfg = fe.config();
    let layout = RingLayout::new(cfg.queue_size);
    let stride = layout.total.div_ceil(4096) * 4096;
    let at = cfg.mem_base + stride * FIRST_REQUEST_QUEUE as u64 + layout.avail + 2;
    let now = fe.avail_idx(FIRST_REQUEST_QUEUE).unwrap();
    fe.mem()
        .write(at, &now.wrapping_add(ahead).to_le_bytes())
        .unwrap();
    fe.kick(FIRST_REQUEST_QUEUE).unwrap();
}

/// What is wrong with controller `a` after its frontend was closed: it
/// must return to `listening` and serve the next frontend, and the log
/// must not grow by more than `max_lines` in 2 s meanwhile.
fn recovery_failures(d: &mut Daemon, rpc: &mut RpcClient, max_lines: usize) -> Vec<String> {
    let mut broken = Vec::new();
    let lines = d.log().lines().count();
    std::thread::sleep(Duration::from_secs(2));
    let more = d.log().lines().count() - lines;
    if more > max_lines {
        broken.push(format!("{more} log lines in 2 s"));
    }
    let (c, ok) = reaches_state(rpc, d, "a", "listening", Duration::from_secs(5));
    if !ok {
        broken.push(format!("a stays {} after its frontend left", c["state"]));
    }
    broken.extend(serves_within(d, "a", Duration::from_secs(5)));
    broken
}

/// A guest that writes an avail index more than a queue size ahead of the
/// device (its own memory: no QEMU needed). This made the queue's worker
/// spin for good before (`pop_descriptor_chain` found nothing,
/// `enable_notification` said more was there: ~45000 error lines a second,
/// one core busy, the connection never torn down, SIGTERM ignored); now
/// the queue is ignored until its next kick, with a rate-limited warning.
#[test]
fn an_avail_index_too_far_ahead_does_not_spin_its_worker() {
    let _serial = serial();
    let mut d = start(false);
    let mut rpc = d.rpc();
    let b = Traffic::start("b", frontend(&d, "b", 2));
    let fe = frontend(&d, "a", 1);
    verified(&d, &fe, 0, 0, 12);
    let rounds = b.rounds();
    bogus_avail_index(&fe, 1000);
    let lines = d.log().lines().count();
    std::thread::sleep(Duration::from_secs(2));
    let more = d.log().lines().count() - lines;
    assert!(more < 20, "{more} log lines in 2 s\n{}", tail(&d));
    // The worker looks before it pops: virtio-queue's own error line (one
    // per kick, unlimited) never comes.
    assert!(
        !d.log().contains("Iterator error"),
        "virtio-queue logged the bad index\n{}",
        tail(&d)
    );
    // Once the guest puts its index right, the queue serves again.
    bogus_avail_index(&fe, 0);
    for k in 0..8 {
        verified(&d, &fe, 0, k * u32::from(BLOCKS), 13);
    }
    b.wait_progress(&d, rounds, 3);
    // And a guest that leaves it broken can still be disconnected.
    bogus_avail_index(&fe, 1000);
    drop(fe);
    let mut broken = recovery_failures(&mut d, &mut rpc, 200);
    b.finish(&d);
    if let Err(e) = sigterm_exit(&mut d, Duration::from_secs(20)) {
        broken.push(e);
    }
    assert!(broken.is_empty(), "{broken:#?}\n{}", tail(&d));
}

/// The guest memory shrinks to one page, so the request queue's ring is
/// gone too: at the kick the daemon reads the avail index from the zero
/// page its SIGBUS handler mapped (0, while the ring was further on). The
/// fault is contained and the controller serves the next frontend (before
/// the fix for `an_avail_index_too_far_ahead_does_not_spin_its_worker`,
/// the worker spun and the controller never served again).
#[test]
fn guest_memory_shrunk_to_one_page_disconnects_only_its_frontend() {
    let _serial = serial();
    let mut d = start(false);
    let mut rpc = d.rpc();
    let b = Traffic::start("b", frontend(&d, "b", 2));
    let fe = frontend(&d, "a", 1);
    for k in 0..16 {
        verified(&d, &fe, 0, k * u32::from(BLOCKS), 13);
    }
    let file = fe.mem().file().expect("the guest memory's memfd");
    file.set_len(4096).unwrap();
    // An eventfd write: this process touches none of the lost pages.
    let rounds = b.rounds();
    fe.kick(FIRST_REQUEST_QUEUE).unwrap();
    let mut broken = Vec::new();
    if !fe.connection().wait_closed(PATIENCE).unwrap() {
        broken.push("a's connection is not closed".to_string());
    }
    if !d.log().contains(SIGBUS_LINE) {
        broken.push("no SIGBUS line in the log".to_string());
    }
    drop(fe);
    broken.extend(recovery_failures(&mut d, &mut rpc, 200));
    b.wait_progress(&d, rounds, 3);
    b.finish(&d);
    if let Err(e) = sigterm_exit(&mut d, Duration::from_secs(20)) {
        broken.push(e);
    }
    assert!(broken.is_empty(), "{broken:#?}\n{}", tail(&d));
}

/// What a process holds that a connection could leak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    fds: usize,
    /// Threads, io_uring's kernel workers (`iou-*`) not counted: they come
    /// and go with the bystander's I/O.
    threads: usize,
    /// Mappings of a frontend's guest memory.
    guest_maps: usize,
}

fn held(pid: u32) -> Held {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let threads = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| !c.starts_with("iou-")))
        .count();
    let guest_maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("vhost-user-scsi-frontend"))
        .count();
    Held {
        fds,
        threads,
        guest_maps,
    }
}

/// A vhost-user request header: request `code`, version 1, `size` bytes
/// of body.
fn vu_header(code: u32, size: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0..4].copy_from_slice(&code.to_le_bytes());
    h[4..8].copy_from_slice(&1u32.to_le_bytes());
    h[8..12].copy_from_slice(&size.to_le_bytes());
    h
}

#[test]
fn connections_leave_no_fd_thread_or_mapping_behind() {
    const GET_FEATURES: u32 = 1;
    let _serial = serial();
    let mut d = start(false);
    let mut rpc = d.rpc();
    let b = Traffic::start("b", frontend(&d, "b", 2));
    let pid = pid(&d);
    b.wait_progress(&d, 0, 4);
    let before = held(pid);
    eprintln!("before: {before:?}");

    let sock = d.path("a.sock");
    let t = Instant::now();
    for i in 0..1000 {
        let mut s = UnixStream::connect(&sock)
            .unwrap_or_else(|e| panic!("cycle {i}: connect: {e}\n{}", tail(&d)));
        // Whether the daemon answers depends on whether it is still busy
        // with the previous connection: nothing is asserted per cycle.
        match i % 4 {
            0 => {}
            1 => {
                let _ = s.write_all(&vu_header(GET_FEATURES, 0)[..5]);
            }
            2 => {
                let _ = s.write_all(&vu_header(0xffff, 0));
            }
            _ => {
                s.set_read_timeout(Some(PATIENCE)).unwrap();
                if s.write_all(&vu_header(GET_FEATURES, 0)).is_ok() {
                    let mut reply = [0u8; 20];
                    let _ = s.read_exact(&mut reply);
                }
            }
        }
    }
    eprintln!("1000 cycles in {:?}", t.elapsed());
    let t = Instant::now();
    for i in 0..200u32 {
        let fe = frontend(&d, "a", 1);
        verified(&d, &fe, 0, (i % 64) * u32::from(BLOCKS), i as u8);
        if i == 0 {
            // What the counts see: a session holds descriptors, threads
            // and its guest memory.
            let during = held(pid);
            assert!(
                during.fds > before.fds + 8
                    && during.threads > before.threads
                    && during.guest_maps > before.guest_maps,
                "before {before:?}, during a session {during:?}"
            );
        }
        if i % 10 == 9 {
            // Gone without GET_VRING_BASE, as a killed QEMU.
            drop(fe);
        } else {
            fe.shutdown()
                .unwrap_or_else(|e| panic!("session {i}: {e}\n{}", tail(&d)));
        }
    }
    eprintln!("200 sessions in {:?}", t.elapsed());
    assert!(
        controller(&mut rpc, &d, "a")["state"] != "retrying",
        "{}",
        tail(&d)
    );

    // Cleanup is asynchronous: poll.
    let deadline = Instant::now() + PATIENCE;
    let ok = |h: Held| {
        h.fds <= before.fds + 2 && h.threads <= before.threads && h.guest_maps <= before.guest_maps
    };
    let mut now = held(pid);
    while !ok(now) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        now = held(pid);
    }
    eprintln!("after: {now:?}");
    assert!(ok(now), "before {before:?}, after {now:?}\n{}", tail(&d));
    let stats = rpc.call("stats", Some(json!({"controller": "a"}))).unwrap();
    assert!(
        stats["controllers"][0]["connections"].as_u64().unwrap() >= 200,
        "{stats}"
    );
    b.finish(&d);
    assert!(d.alive(), "the daemon died:\n{}", tail(&d));
    assert!(!d.log().contains("panicked"), "{}", tail(&d));
    assert_eq!(d.stop(), Some(0));
}

/// The descriptor numbers process `pid` has open.
fn open_fds(pid: u32) -> BTreeSet<i32> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// What became of a connection to the daemon's RPC socket.
enum Knock {
    /// Accepted and answered: the daemon holds two descriptors for it.
    Answered(UnixStream),
    /// Accepted and closed at once: its second descriptor could not be
    /// made (the first one is free again).
    Closed,
    /// Not accepted within `wait` (no descriptor for accept(2)).
    Waiting(UnixStream),
}

/// Connect to the RPC socket and ask for the version.
fn knock_rpc(d: &Daemon, wait: Duration) -> Knock {
    let mut s = UnixStream::connect(d.path("rpc.sock")).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"version\",\"id\":1}\n")
        .unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\n") {
        match s.read(&mut byte) {
            Ok(1) => answer.push(byte[0]),
            Ok(_) => return Knock::Closed,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Knock::Closed,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && answer.is_empty() =>
            {
                return Knock::Waiting(s)
            }
            Err(e) => panic!("rpc: {e}\n{}", tail(d)),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("\"result\""), "{answer}");
    Knock::Answered(s)
}

/// Set the soft RLIMIT_NOFILE of process `pid`; returns the previous
/// limits.
fn set_nofile(pid: u32, soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading the limits of our own child into a live struct.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: setting the limits of our own child from a live struct.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old
}

/// Restore limits saved by [`set_nofile`].
fn restore_nofile(pid: u32, old: &libc::rlimit) {
    // SAFETY: setting the limits of our own child from a live struct.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            old,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// `GET /metrics` on the daemon's Unix metrics socket: the body of the
/// answer, `None` without one within `timeout`.
fn scrape_within(d: &Daemon, timeout: Duration) -> Option<String> {
    let mut s = UnixStream::connect(d.path("metrics.sock")).ok()?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.contains(" 200").then(|| body.to_string())
}

/// `GET /metrics`, which must be answered.
fn scrape(d: &Daemon) -> String {
    scrape_within(d, PATIENCE)
        .unwrap_or_else(|| panic!("no answer on the metrics socket\n{}", tail(d)))
}

/// The value of `metric{controller="name"}`.
fn metric(body: &str, metric: &str, name: &str) -> Option<f64> {
    let prefix = format!("{metric}{{controller=\"{name}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

#[test]
fn no_fd_left_stops_only_the_controller_that_needs_one_until_fds_are_free() {
    let _serial = serial();
    let mut d = start(true);
    let metrics = d.path("metrics.sock");
    d.wait_for_path(&metrics);
    // The RPC connection is made now: no new one could be accepted later.
    let mut rpc = d.rpc();
    let b = Traffic::start("b", frontend(&d, "b", 2));
    // Controller c's guest holds many descriptors (8 queues) and gives
    // them back later.
    let c_img = image(d.dir.path(), "c.img", 16 * MIB);
    rpc.call(
        "controller_create",
        Some(json!({"name": "c", "socket": d.path("c.sock"), "num_queues": 8, "queue_size": 128})),
    )
    .unwrap();
    rpc.call("lun_add", Some(json!({"controller": "c", "path": c_img})))
        .unwrap();
    let pid = pid(&d);
    let before_hog = open_fds(pid);
    let hog = frontend(&d, "c", 8);
    verified(&d, &hog, 7, 0, 1);
    let hog_fds: BTreeSet<i32> = open_fds(pid).difference(&before_hog).copied().collect();

    // The soft limit goes just above c's descriptors (so that they count
    // once c's guest leaves). The free numbers below it are taken by RPC
    // connections (two descriptors each) until the daemon cannot accept
    // one more: then it cannot open a single descriptor. (A thread blocked
    // in accept(2), like the metrics server's, holds a number /proc does
    // not show: hence the probing instead of counting.)
    let mut limit = hog_fds.iter().max().unwrap() + 1;
    let old = set_nofile(pid, limit as u64);
    let mut fillers = Vec::new();
    let waiting = loop {
        assert!(
            fillers.len() < vhost_user_scsi::mgmt::rpc_server::MAX_CONNECTIONS - 1,
            "too many free descriptor numbers below {limit}: {:?}",
            open_fds(pid)
        );
        match knock_rpc(&d, Duration::from_secs(3)) {
            Knock::Answered(s) => fillers.push(s),
            // One number left: one more makes two.
            Knock::Closed => {
                limit += 1;
                set_nofile(pid, limit as u64);
            }
            Knock::Waiting(s) => break s,
        }
    };
    eprintln!(
        "{} fds open ({} of them c's, {} RPC fillers), limit {limit} (was {})",
        open_fds(pid).len(),
        hog_fds.len(),
        2 * fillers.len(),
        old.rlim_cur
    );
    let rounds = b.rounds();

    // A frontend for a: it waits in the listen backlog until the daemon
    // can accept it.
    let cfg = frontend_config(&d, "a", 1);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(ScsiFrontend::connect(&cfg).map_err(|e| e.to_string()));
    });
    let a = wait_state(&mut rpc, &d, "a", "retrying");
    let last = a["last_error"].as_str().unwrap_or_default().to_string();
    assert!(last.contains("Too many open files"), "{a}\n{}", tail(&d));
    let stats = rpc.call("stats", Some(json!({"controller": "a"}))).unwrap();
    let s = &stats["controllers"][0];
    assert_eq!(s["state"], "retrying", "{stats}");
    assert!(s["errors"].as_u64().unwrap() >= 1, "{stats}");
    // It keeps retrying, and logs each failure at error level.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = rpc.call("stats", Some(json!({"controller": "a"}))).unwrap();
        if stats["controllers"][0]["errors"].as_u64().unwrap() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no retries: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("Too many open files")),
        "{}",
        tail(&d)
    );
    // The others serve on: b's I/O and c's.
    b.wait_progress(&d, rounds, 20);
    verified(&d, &hog, 0, 64, 2);
    assert_eq!(controller(&mut rpc, &d, "b")["state"], "connected");
    assert!(
        rx.try_recv().is_err(),
        "a was served with no descriptor left"
    );

    // c's guest leaves: its descriptors are free again (the limit stays).
    hog.shutdown().unwrap();
    drop(waiting);
    let fe = match rx.recv_timeout(PATIENCE) {
        Ok(Ok(fe)) => fe,
        Ok(Err(e)) => panic!("a: {e}\n{}", tail(&d)),
        Err(_) => panic!("a was not served once descriptors were free\n{}", tail(&d)),
    };
    common::settle(&fe, [0]);
    for k in 0..16 {
        verified(&d, &fe, 0, k * u32::from(BLOCKS), 7);
    }
    let a = controller(&mut rpc, &d, "a");
    assert_eq!(a["state"], "connected", "{a}");
    restore_nofile(pid, &old);
    drop(fillers);

    let body = scrape(&d);
    let up = metric(&body, "vhost_user_scsi_controller_up", "a");
    assert_eq!(up, Some(1.0), "{body}");
    let errors = metric(&body, "vhost_user_scsi_controller_errors_total", "a");
    assert!(errors.is_some_and(|e| e >= 3.0), "{body}");
    assert_eq!(
        metric(&body, "vhost_user_scsi_controller_errors_total", "b"),
        Some(0.0),
        "{body}"
    );

    fe.shutdown().unwrap();
    b.finish(&d);
    assert!(d.alive(), "the daemon died:\n{}", tail(&d));
    assert!(!d.log().contains("panicked"), "{}", tail(&d));
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn silent_connections_time_out_or_give_way_and_a_second_frontend_is_refused() {
    let _serial = serial();
    let mut d = start(false);
    let mut rpc = d.rpc();
    let b = Traffic::start("b", frontend(&d, "b", 2));
    let sock = d.path("a.sock");

    // A connection that never speaks is closed after 5 s.
    let silent = UnixStream::connect(&sock).unwrap();
    let took = closed_within(silent.as_raw_fd(), SILENCE * 4)
        .unwrap_or_else(|| panic!("a silent connection stays open\n{}", tail(&d)));
    assert!(
        took >= SILENCE - Duration::from_millis(500) && took < SILENCE + Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert!(
        d.log().contains("the frontend sent nothing"),
        "{}",
        tail(&d)
    );
    drop(silent);
    wait_state(&mut rpc, &d, "a", "listening");

    // A real frontend does not wait for a silent one: it replaces it.
    let silent = UnixStream::connect(&sock).unwrap();
    wait_state(&mut rpc, &d, "a", "connected");
    let t = Instant::now();
    let first = frontend(&d, "a", 1);
    verified(&d, &first, 0, 0, 8);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(2), "served after {took:?}");
    assert!(
        closed_within(silent.as_raw_fd(), Duration::from_secs(2)).is_some(),
        "the silent connection was not closed\n{}",
        tail(&d)
    );
    assert!(d.log().contains("replaced by a new one"), "{}", tail(&d));

    // On the busy controller, a second connection waits at most GRACE for
    // the first one to leave and is refused then; a third one meanwhile is
    // refused at once.
    let a = Traffic::start("a", first);
    let rounds = a.rounds();
    for i in 0..6 {
        let t = Instant::now();
        let mut second = UnixStream::connect(&sock).unwrap();
        if i % 2 == 1 {
            let _ = second.write_all(&vu_header(1, 0));
        }
        let third = UnixStream::connect(&sock).unwrap();
        // At once: before the second one's grace is over.
        let took = closed_within(third.as_raw_fd(), Duration::from_secs(5));
        let second_open = closed_within(second.as_raw_fd(), Duration::ZERO).is_none();
        assert!(
            took.is_some_and(|t| t < GRACE) && second_open,
            "third connection {i}: closed after {took:?}, second open: {second_open}\n{}",
            tail(&d)
        );
        let closed = closed_within(second.as_raw_fd(), GRACE + Duration::from_secs(5));
        let took = t.elapsed();
        assert!(
            // The grace plus scheduling slack on a loaded 2-core machine.
            closed.is_some() && took < GRACE + Duration::from_secs(2),
            "second connection {i}: closed {closed:?}, after {took:?}\n{}",
            tail(&d)
        );
    }
    // The project's frontend gets an error, not a hang.
    let cfg = frontend_config(&d, "a", 1);
    let (tx, rx) = mpsc::channel();
    let t = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(
            ScsiFrontend::connect(&cfg)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(Err(e)) => eprintln!("second frontend: {e}"),
        Ok(Ok(())) => panic!("a second frontend was served\n{}", tail(&d)),
        Err(_) => panic!("a second frontend hangs\n{}", tail(&d)),
    }
    let took = t.elapsed();
    assert!(
        took < GRACE + Duration::from_secs(1),
        "refused after {took:?}"
    );
    assert!(
        d.log().contains("a second frontend was refused"),
        "{}",
        tail(&d)
    );
    // The first one kept working throughout.
    a.wait_progress(&d, rounds, 5);
    let first = a.stop(&d);

    // A frontend that reconnects opens its new connection before it closes
    // the old one: the new one is served.
    let cfg = frontend_config(&d, "a", 1);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(ScsiFrontend::connect(&cfg).map_err(|e| e.to_string()));
    });
    std::thread::sleep(GRACE / 5);
    drop(first);
    let fe = match rx.recv_timeout(PATIENCE) {
        Ok(Ok(fe)) => fe,
        other => panic!(
            "the reconnecting frontend: {:?}\n{}",
            other.map(|r| r.err()),
            tail(&d)
        ),
    };
    common::settle(&fe, [0]);
    verified(&d, &fe, 0, 0, 9);
    fe.shutdown().unwrap();

    // Once it left, the controller serves the next one.
    wait_state(&mut rpc, &d, "a", "listening");
    let fe = frontend(&d, "a", 1);
    verified(&d, &fe, 0, 0, 10);
    fe.shutdown().unwrap();
    b.finish(&d);
    assert!(d.alive(), "the daemon died:\n{}", tail(&d));
    assert_eq!(d.stop(), Some(0));
}

/// A connection that sends a vhost-user header announcing a body and then
/// nothing. Before the 2 s message timeout (src/vhost/server.rs),
/// `handle_request` blocked in recvmsg(2) for good: the controller never
/// served again, `controller_delete --force` of it never returned and took
/// the whole management plane with it (the manager's lock), SIGTERM did
/// not stop the daemon.
#[test]
fn half_a_message_does_not_hold_a_controller_its_deletion_or_shutdown() {
    const SET_FEATURES: u32 = 2;
    let _serial = serial();
    let mut d = start(false);
    let mut rpc = d.rpc();
    let b = Traffic::start("b", frontend(&d, "b", 2));
    let sock = d.path("a.sock");
    let mut broken = Vec::new();

    // A header announcing an 8-byte body that never comes.
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(&vu_header(SET_FEATURES, 8)).unwrap();
    if closed_within(half.as_raw_fd(), SILENCE + Duration::from_secs(3)).is_none() {
        broken.push("half a message: the connection is not closed".to_string());
    }
    broken.extend(serves_within(&d, "a", Duration::from_secs(5)));
    // Again, and the controller deleted meanwhile (as soon as the daemon
    // took the connection: its state may be `connected` for too short a
    // time to be seen on a loaded machine, its connection count is not).
    let taken = connections(&mut rpc, &d, "a");
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(&vu_header(SET_FEATURES, 8)).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while connections(&mut rpc, &d, "a") == taken {
        assert!(Instant::now() < deadline, "not accepted\n{}", tail(&d));
        std::thread::sleep(Duration::from_millis(10));
    }
    broken.extend(management_answers(&d, "during half a message"));
    drop(half);
    b.finish(&d);
    assert!(d.alive(), "the daemon died:\n{}", tail(&d));
    if let Err(e) = sigterm_exit(&mut d, Duration::from_secs(20)) {
        broken.push(e);
    }
    assert!(broken.is_empty(), "{broken:#?}\n{}", tail(&d));
}

/// Connections controller `name` accepted so far (`stats`).
fn connections(rpc: &mut RpcClient, d: &Daemon, name: &str) -> u64 {
    let stats = rpc
        .call("stats", Some(json!({ "controller": name })))
        .unwrap_or_else(|e| panic!("stats: {e}\n{}", tail(d)));
    stats["controllers"][0]["connections"]
        .as_u64()
        .unwrap_or_else(|| panic!("no connection count: {stats}"))
}

/// `controller_delete --force` of controller `a`, then `controller_list`,
/// each on a new RPC connection in a thread with a deadline: what did not
/// answer.
fn management_answers(d: &Daemon, when: &str) -> Vec<String> {
    let rpc_sock = d.path("rpc.sock");
    let mut broken = Vec::new();
    broken.extend(in_thread(
        &format!("controller_delete a (force) {when}"),
        PATIENCE,
        Box::new(move || {
            RpcClient::connect(&rpc_sock)
                .map_err(|e| e.to_string())?
                .call(
                    "controller_delete",
                    Some(json!({"name": "a", "force": true})),
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
    ));
    let rpc_sock = d.path("rpc.sock");
    broken.extend(in_thread(
        "controller_list afterwards",
        Duration::from_secs(5),
        Box::new(move || {
            RpcClient::connect(&rpc_sock)
                .map_err(|e| e.to_string())?
                .call("controller_list", None)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
    ));
    broken
}

// Daemon bugs this file found, fixed since (each test's comment says what
// the bug was).

/// FIXED DAEMON BUG (src/mgmt/metrics.rs with tiny_http 0.12, now our own
/// small HTTP responder that retries a failed accept): once the daemon ran out of
/// descriptors, the metrics endpoint is dead for good, even after
/// descriptors are free again. tiny_http's accept thread sits in a blocking
/// accept(2), which holds a descriptor number from the start; at the next
/// connection accept returns it, and `Stream::clone`
/// (tiny_http/src/util/refined_tcp_stream.rs:18, `try_clone().unwrap()`)
/// panics with EMFILE: the thread dies without queueing an error, so
/// `serve`'s `server.recv()` blocks forever and the rebuild never runs. A
/// scraper's connection is queued and never answered (it hangs). The
/// other path, accept(2) itself failing, has a second hole: the rebuild
/// 50 ms later needs a descriptor for `try_clone` of the listener; when it
/// fails ("cannot restart the metrics endpoint") the loop goes back to
/// `recv()` on the dead server, which blocks forever too. The controllers
/// recover from the same condition (`no_fd_left_stops_only_the_...`).
#[test]
fn metrics_survive_running_out_of_fds() {
    let _serial = serial();
    let mut d = start(true);
    let metrics = d.path("metrics.sock");
    d.wait_for_path(&metrics);
    let b = Traffic::start("b", frontend(&d, "b", 2));
    assert!(scrape(&d).contains("vhost_user_scsi_controller_up"));
    // No descriptor left: every number below the lowest free one is taken
    // and the soft limit goes there.
    let pid = pid(&d);
    let open = open_fds(pid);
    let lowest_free = (0..).find(|n| !open.contains(n)).unwrap();
    let old = set_nofile(pid, lowest_free as u64);
    // A scrape meanwhile may or may not be answered.
    let meanwhile = scrape_within(&d, Duration::from_secs(2)).is_some();
    std::thread::sleep(Duration::from_millis(500));
    restore_nofile(pid, &old);
    // Descriptors are back: so must the metrics be.
    let body = scrape_within(&d, Duration::from_secs(5));
    assert!(
        body.is_some(),
        "the metrics endpoint no longer answers (answered while out of fds: {meanwhile})\n{}",
        tail(&d)
    );
    b.finish(&d);
    assert!(d.alive(), "the daemon died:\n{}", tail(&d));
    assert_eq!(d.stop(), Some(0));
}

/// FIXED DAEMON BUG (src/vhost/server.rs with the vhost crate 0.18, now
/// a watchdog shuts down a connection whose replies stay unread): a frontend
/// that sends requests and never reads the replies holds its controller's
/// thread for good. The write timeout (SO_SNDTIMEO) makes sendmsg(2) fail
/// with EAGAIN after 2 s, but vhost's `Endpoint::send_iovec_all`
/// (vhost_user/connection.rs:176) takes EAGAIN for `SocketRetry` and
/// sends again, forever. So the controller stays `connected` and serves
/// no one, `controller_delete --force` of it never returns and blocks
/// every later management call (the manager's lock), and SIGTERM does
/// not stop the daemon.
#[test]
fn replies_never_read_do_not_hold_a_controller_its_deletion_or_shutdown() {
    const GET_FEATURES: u32 = 1;
    let _serial = serial();
    let mut d = start(false);
    let mut rpc = d.rpc();
    let b = Traffic::start("b", frontend(&d, "b", 2));
    let mut broken = Vec::new();
    // Requests whose replies are never read, until the daemon stops
    // reading them (it is stuck sending replies, or gave up).
    let mut deaf = UnixStream::connect(d.path("a.sock")).unwrap();
    wait_state(&mut rpc, &d, "a", "connected");
    deaf.set_nonblocking(true).unwrap();
    let mut sent = 0u64;
    let mut blocked_since: Option<Instant> = None;
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match deaf.write(&vu_header(GET_FEATURES, 0)) {
            Ok(12) => {
                sent += 1;
                blocked_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => break,
        }
    }
    eprintln!("{sent} requests sent");
    // The daemon gives up on its replies within its 2 s message timeout.
    let (c, ok) = reaches_state(&mut rpc, &d, "a", "listening", Duration::from_secs(8));
    if !ok {
        broken.push(format!(
            "{sent} requests whose replies are never read leave a {}",
            c["state"]
        ));
    }
    broken.extend(serves_within(&d, "a", Duration::from_secs(5)));
    broken.extend(management_answers(&d, "with replies unread"));
    b.finish(&d);
    if let Err(e) = sigterm_exit(&mut d, Duration::from_secs(20)) {
        broken.push(e);
    }
    drop(deaf);
    assert!(broken.is_empty(), "{broken:#?}\n{}", tail(&d));
}
