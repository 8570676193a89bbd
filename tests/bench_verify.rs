//! Host integration tests of `vhost-user-scsi bench` against our daemon
//! (no VM). They assert correctness only (no errors, no verify mismatch),
//! never a speed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhost_user_scsi::bench::{self, BenchArgs, OnOff, Report, Rw};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-scsi");

struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(size: u64) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let socket = dir.path().join("vus.sock");
        let child = Command::new(BIN)
            .args(["serve", "--num-queues", "2", "--socket"])
            .arg(&socket)
            .arg("--disk")
            .arg(&img)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&socket);
        Daemon {
            child,
            socket,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "daemon did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn verify_two_queues_in_process() {
    let d = Daemon::start(64 << 20);
    for (rw, bs) in [(Rw::Randrw, 4096), (Rw::Write, 65536)] {
        let mut a = BenchArgs::new(&d.socket);
        a.queues = 2;
        a.qd = 8;
        a.bs = bs;
        a.rw = rw;
        a.rwmix_read = 40;
        a.runtime = 1.0;
        a.ramp = 0.2;
        a.verify = true;
        a.seed = Some(42);
        a.backend_pid = Some(d.pid());
        let r = bench::run(&a, false).expect("bench run");
        assert_eq!(r.errors, 0, "{}", r.text());
        assert_eq!(r.mismatches, 0, "{}", r.text());
        assert!(r.writes > 0 && r.verified_blocks > 0, "{}", r.text());
        assert!(r.backend_cpu_s.is_some() && r.backend_private_dirty_kib.is_some());
    }
}

#[test]
fn dirty_log_and_inflight_switches() {
    let d = Daemon::start(32 << 20);
    for (dirty_log, inflight) in [(true, OnOff::On), (true, OnOff::Off), (false, OnOff::Off)] {
        let mut a = BenchArgs::new(&d.socket);
        a.queues = 2;
        a.qd = 8;
        a.rw = Rw::Randrw;
        a.runtime = 0.6;
        a.ramp = 0.1;
        a.verify = true;
        a.seed = Some(7);
        a.dirty_log = dirty_log;
        a.inflight = inflight;
        let r = bench::run(&a, false).expect("bench run");
        let t = r.text();
        assert_eq!((r.errors, r.mismatches), (0, 0), "{t}");
        assert_eq!(r.inflight, inflight.is_on(), "{t}");
        assert_eq!(r.dirty_log, dirty_log, "{t}");
        if dirty_log {
            // Every 100 ms over at least 0.7 s, and the I/O dirtied pages.
            assert!(r.log_syncs >= 4 && r.dirty_pages > 0, "{t}");
            assert!(t.contains("dirty log:"), "{t}");
        } else {
            assert_eq!((r.log_syncs, r.dirty_pages), (0, 0));
        }
    }
}

/// `--poll-us`: the load generator polls its used rings before sleeping
/// (a halt-polling guest); verified I/O on two queues, and it says so.
#[test]
fn polling_load_generator_verifies() {
    let d = Daemon::start(32 << 20);
    let mut a = BenchArgs::new(&d.socket);
    a.queues = 2;
    a.qd = 4;
    a.rw = Rw::Randrw;
    a.runtime = 0.6;
    a.ramp = 0.1;
    a.verify = true;
    a.seed = Some(11);
    a.poll_us = 200;
    let r = bench::run(&a, false).expect("bench run");
    let t = r.text();
    assert_eq!((r.errors, r.mismatches), (0, 0), "{t}");
    assert!(r.writes > 0 && r.verified_blocks > 0, "{t}");
    assert_eq!(r.poll_us, 200);
    assert!(t.contains("poll_us=200"), "{t}");
}

#[test]
fn json_from_the_binary() {
    let d = Daemon::start(32 << 20);
    let out = Command::new(BIN)
        .args([
            "bench",
            "--json",
            "--runtime",
            "1",
            "--ramp",
            "0.2",
            "--qd",
            "4",
        ])
        .args([
            "--rw",
            "randread",
            "--cdb",
            "16",
            "--inflight",
            "off",
            "--dirty-log",
        ])
        .arg("--socket")
        .arg(&d.socket)
        .arg("--backend-pid")
        .arg(d.pid().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Report = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(r.errors, 0);
    assert_eq!(r.cdb, 16);
    assert_eq!(r.capacity_blocks, (32 << 20) / 512);
    assert!(r.ios > 0 && r.reads == r.ios);
    assert!(r.latency.p50_us > 0.0 && r.latency.p99_us >= r.latency.p50_us);
    assert!(r.backend_cpu_us_per_io.is_some());
    assert!(!r.inflight && r.dirty_log && r.log_syncs > 0);
}

#[test]
fn handshake_failure_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["bench", "--runtime", "1", "--socket"])
        .arg(dir.path().join("nobody.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("handshake with"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn too_many_queues_is_refused() {
    let d = Daemon::start(16 << 20);
    let mut a = BenchArgs::new(&d.socket);
    a.queues = 3;
    a.runtime = 0.5;
    let e = bench::run(&a, false).unwrap_err();
    assert!(e.to_string().contains("need 5"), "{e}");
}
