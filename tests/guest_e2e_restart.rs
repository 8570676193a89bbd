//! Guest end-to-end tests of daemon restarts under guest I/O: a real Linux
//! guest (QEMU, TCG) keeps doing verified I/O while the daemon is killed and
//! restarted underneath it, following docs/operations.md as written: QEMU's
//! chardev has `reconnect-ms=1000`, the daemon comes back on the same socket
//! (and, for RPC-created controllers, from its `--state-file`).
//!
//! Needs the harness: `scripts/install-deps.sh && scripts/build-guest.sh`.
//! Without it the tests print "SKIPPED" and pass, except when `CI=true`, where
//! they fail (as in tests/guest_e2e.rs).
//!
//! The guest runs `tests/guest/restart.sh`: rounds of fio randwrite + crc32c
//! verify (libaio, O_DIRECT, iodepth 16, 2 jobs: both request queues busy,
//! a new `--randseed` each round so that a lost write fails the verify) on a
//! 64 MiB LUN for `RESTART_SECS`. It prints `RESTART-IO start` when the
//! first round starts; the host then stops and restarts the daemon on a fixed
//! schedule (about 4-5 s apart). A test passes only when:
//! * every fio round exits 0 with no error and its verify pass, and at least
//!   one round finishes after the last restart;
//! * the longest I/O latency fio saw (lat_ns max, read or write) is below
//!   5 s ([`MAX_STALL_MS`]), checked in the guest and again here;
//! * the guest's kernel log has no SCSI error, abort, reset, timeout, I/O
//!   error, "not a head" or broken virtqueue (`scsi_log_clean` in
//!   tests/guest/lib.sh; the power-on unit attention of a new daemon is the
//!   one message allowed): the used ring never got ahead of the avail ring;
//! * QEMU printed nothing about virtio, virtqueues or vrings (only its
//!   known reconnect messages, "Failed to set msg fds." and "vhost VQ N ring
//!   restore failed", while the socket is down);
//! * no daemon instance logged an ERROR, and the last one exits 0 on
//!   SIGTERM;
//! * each SIGTERM is sent while the daemon has requests in flight (its
//!   `stats`, polled until [`SIGNAL_IN_FLIGHT`]), and afterwards none were
//!   left (drained and published before the connection closed); each
//!   SIGKILL is sent while the daemon is stopped with io_uring submissions
//!   it has not reaped (`Daemon::sigkill_in_flight`), and the new daemon
//!   resubmitted requests from the INFLIGHT_SHMFD region (its log line "the
//!   previous daemon left requests in flight ... requests=N"). A kill right
//!   after a look at `stats` found every request published already in 2 of
//!   4 kills (the CI run of session 3).
//!
//! For each restart the host prints what it measured: how long the old
//! daemon took to exit (SIGTERM), when the new one listened, when QEMU
//! connected to it (its log, `RUST_LOG=debug`), when it completed its first
//! command (its `stats` over `--rpc-socket`, polled every 50 ms: the
//! host-side stall, next to the guest's own worst latency), and how many
//! requests were in flight and resubmitted.
//!
//! * `guest_e2e_restart_sigkill`: `serve --socket S --disk IMG` (plus
//!   `--rpc-socket` for the stats), SIGKILL and an immediate restart on the
//!   same socket and disk, 5 times. In-flight requests come back through
//!   INFLIGHT_SHMFD.
//! * `guest_e2e_restart_sigterm`: the same with SIGTERM (drain, then exit 0),
//!   the new daemon started as soon as the old one exited, 5 times.
//! * `guest_e2e_restart_state_file`: `serve --rpc-socket R --state-file F`
//!   only; the controller and its LUN are created with `ctl
//!   controller_create` + `lun_add`; the guest boots on it; SIGKILL and a
//!   restart with only `--rpc-socket R --state-file F`, twice: the daemon
//!   recreates the controller from the file and the running guest goes on.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod guest_harness;
use guest_harness::daemon::{ctl_stdout, Daemon};
use guest_harness::{
    daemon_binary, harness_ready, lock, logs_dir, read_console, sparse_image, spawn_run_guest,
    work_dir,
};

const MIB: u64 = 1024 * 1024;
/// The longest I/O stall the guest may see, in ms.
const MAX_STALL_MS: f64 = 5000.0;
/// run-guest.sh --timeout: boot + I/O + a hung round's report, with room.
const GUEST_TIMEOUT_SECS: u64 = 300;
/// From the start of run-guest.sh to the guest's `RESTART-IO start`.
const BOOT_SECS: u64 = 240;
/// A fio round (about 1.5 s here, 3 s with a restart in it) that takes
/// longer is killed in the guest; one stuck in the kernel is reported 10 s
/// later. (virtio_scsi never times a command out: it re-arms the timer.)
const ROUND_TIMEOUT_SECS: u64 = 30;
/// The stop is sent once the daemon has this many requests in flight (or
/// after 3 s of polling its stats).
const SIGNAL_IN_FLIGHT: u64 = 24;
/// QEMU's reconnect delay, as in docs/operations.md.
const RECONNECT_MS: u32 = 1000;
/// Seconds between the host's stops of the daemon (the first: after
/// `RESTART-IO start`), plus the wait for requests in flight (normally a
/// few ms). Varied a little so that the stops land in different phases of
/// fio's rounds.
const SCHEDULE_5: [f64; 5] = [3.0, 4.5, 4.0, 5.0, 4.3];
const SCHEDULE_2: [f64; 2] = [3.0, 4.5];
/// How long the guest keeps starting fio rounds: the schedule plus room
/// for rounds after the last restart.
const IO_SECS_5: u32 = 34;
const IO_SECS_2: u32 = 20;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Seconds since the epoch of a tracing timestamp at the start of a log
/// line ("2026-01-02T03:04:05.678901Z ...").
fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.splitn(3, ':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86400 + hh * 3600 + mm * 60) as f64 + ss)
}

// ---------------------------------------------------------------- daemon

impl Daemon {
    /// `vhost-user-scsi serve ARGS` with RUST_LOG=debug, output to `log`.
    fn spawn(args: &[OsString], log: &Path) -> Daemon {
        let logf = File::create(log).unwrap();
        let mut cmd = Command::new(daemon_binary());
        cmd.arg("serve")
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        Daemon {
            child: Some(cmd.spawn().expect("spawn vhost-user-scsi serve")),
            log: log.to_path_buf(),
        }
    }

    /// SIGKILL, at a moment when the daemon has I/O in flight, and reap.
    /// Returns the moment of the kill and how many of its io_uring
    /// requests had not been reaped then.
    ///
    /// The daemon completes a request in microseconds to milliseconds, so
    /// a kill right after a look at its `stats` often finds every request
    /// published already. Instead, until `within` has passed: while `stats`
    /// shows requests in flight, SIGSTOP it, count the submissions its
    /// io_uring instances have not reaped (`/proc/PID/fdinfo`: SqHead -
    /// CqHead), and SIGKILL it if there are some; else SIGCONT and look
    /// again. A request whose completion was not reaped was not published,
    /// so it is in the inflight region for the next daemon.
    fn sigkill_in_flight(&mut self, rpc: &Path, within: Duration) -> (Instant, u64) {
        let mut child = self.child.take().expect("daemon already stopped");
        let pid = child.id() as libc::pid_t;
        let signal = |sig| {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
            let r = unsafe { libc::kill(pid, sig) };
            assert_eq!(r, 0, "kill {sig}: {}", std::io::Error::last_os_error());
        };
        let deadline = Instant::now() + within;
        let mut pending = 0;
        while Instant::now() < deadline {
            if queued_requests(rpc).unwrap_or(0) == 0 {
                continue;
            }
            signal(libc::SIGSTOP);
            wait_stopped(pid);
            pending = uring_pending(pid);
            if pending > 0 {
                break;
            }
            signal(libc::SIGCONT);
        }
        let t = Instant::now();
        child.kill().expect("SIGKILL the daemon");
        child.wait().unwrap();
        (t, pending)
    }

    /// SIGTERM; waits up to `within` for the exit. Returns the moment of
    /// the signal and the exit status.
    fn sigterm(&mut self, within: Duration) -> (Instant, ExitStatus) {
        let mut child = self.child.take().expect("daemon already stopped");
        let t = Instant::now();
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(r, 0, "kill -TERM: {}", std::io::Error::last_os_error());
        let deadline = t + within;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return (t, st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "daemon did not exit within {} s of SIGTERM; its log {}:\n{}",
                    within.as_secs(),
                    self.log.display(),
                    self.log_text()
                );
            }
            sleep(Duration::from_millis(5));
        }
    }

    /// Waits until this daemon answers `controller_list` on `rpc`, lists
    /// `controller` (when given: its socket listens from its creation on)
    /// and every path of `sockets` exists. Stale files of a killed daemon
    /// stay in place until the new one replaces them, and a new socket may
    /// get the old inode number: only the RPC answer tells.
    fn wait_ready(
        &mut self,
        rpc: &Path,
        controller: Option<&str>,
        sockets: &[PathBuf],
        within: Duration,
    ) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            let listed = rpc_call(rpc, "controller_list").is_some_and(|l| match controller {
                None => true,
                Some(name) => l
                    .as_array()
                    .is_some_and(|a| a.iter().any(|c| c["name"] == name)),
            });
            if listed && sockets.iter().all(|s| s.exists()) {
                return Instant::now();
            }
            self.assert_running("before it was ready");
            assert!(
                Instant::now() < deadline,
                "daemon not ready within {} s (rpc {}, controller {controller:?}, \
                 sockets {sockets:?}); its log {}:\n{}",
                within.as_secs(),
                rpc.display(),
                self.log.display(),
                self.log_text()
            );
            sleep(Duration::from_millis(5));
        }
    }
}

/// One JSON-RPC call without parameters: its result, or None when the
/// daemon does not answer (yet).
fn rpc_call(rpc: &Path, method: &str) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(rpc).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"{method}\"}}\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    let v: serde_json::Value = serde_json::from_str(&line).ok()?;
    Some(v.get("result")?.clone())
}

/// Commands completed by the daemon behind `rpc` (reads + writes + other
/// of every LUN in `stats`), or None when it does not answer.
fn completed_commands(rpc: &Path) -> Option<u64> {
    let v = rpc_call(rpc, "stats")?;
    let mut n = 0;
    for c in v["controllers"].as_array()? {
        for l in c["luns"].as_array()? {
            for k in ["reads", "writes", "other"] {
                n += l[k].as_u64().unwrap_or(0);
            }
        }
    }
    Some(n)
}

/// Waits (up to 2 s) until process `pid` is stopped (state `T` in
/// `/proc/PID/stat`).
fn wait_stopped(pid: libc::pid_t) {
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        if matches!(state, Some("T" | "t")) {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    panic!("process {pid} did not stop within 2 s of SIGSTOP");
}

/// Submissions that process `pid`'s io_uring instances consumed and whose
/// completions it has not reaped: SqHead - CqHead of each, from
/// `/proc/PID/fdinfo` (the daemon's rings carry only readv, writev and
/// fsync, one completion each).
fn uring_pending(pid: libc::pid_t) -> u64 {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let mut pending = 0u64;
    for fd in fds.flatten() {
        let is_uring =
            fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains("io_uring"));
        if !is_uring {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let get = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        if let (Some(sq_head), Some(cq_head)) = (get("SqHead:"), get("CqHead:")) {
            pending += u64::from(sq_head.wrapping_sub(cq_head));
        }
    }
    pending
}

/// Requests the daemon behind `rpc` has taken from the rings and not
/// completed yet (`in_flight` of every queue in `stats`).
fn queued_requests(rpc: &Path) -> Option<u64> {
    let v = rpc_call(rpc, "stats")?;
    let mut n = 0;
    for c in v["controllers"].as_array()? {
        for q in c["queues"].as_array()? {
            n += q["in_flight"].as_u64()?;
        }
    }
    Some(n)
}

/// `vhost-user-scsi ctl --rpc-socket RPC ARGS...`: its stdout; panics on
/// failure.
fn ctl(rpc: &Path, args: &[&str]) -> String {
    let stdout = ctl_stdout(rpc, args);
    println!("ctl {}: {stdout}", args.join(" "));
    stdout
}

// ---------------------------------------------------------------- guest

/// One run-guest.sh process; its console is read line by line by a thread.
/// SIGTERM (run-guest.sh then kills its QEMU) on drop if still running.
struct Guest {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    stderr_log: PathBuf,
    rx: Receiver<Option<String>>,
    /// Console lines and when they arrived.
    lines: Vec<(Instant, String)>,
    eof: bool,
}

impl Guest {
    fn spawn(name: &str, work: &Path, env: &str, backend: &[String]) -> Guest {
        let g = spawn_run_guest(
            name,
            work,
            "tests/guest/restart.sh",
            env,
            &["--timeout".into(), GUEST_TIMEOUT_SECS.to_string()],
            backend,
        );
        let (tx, rx) = channel();
        read_console(g.stdout, None, tx, Some, None);
        Guest {
            name: name.to_string(),
            child: Some(g.child),
            log: g.log,
            stderr_log: g.stderr_log,
            rx,
            lines: Vec::new(),
            eof: false,
        }
    }

    /// Collects console lines until `deadline` or the end of the console.
    fn pump_until(&mut self, deadline: Instant) {
        while !self.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Some(line)) => {
                    if line.starts_with("RESTART-IO") {
                        println!("{}: {line}", self.name);
                    }
                    self.lines.push((Instant::now(), line));
                }
                Ok(None) | Err(RecvTimeoutError::Disconnected) => self.eof = true,
                Err(RecvTimeoutError::Timeout) => return,
            }
        }
    }

    /// Waits (up to `within`) for a console line containing `what`.
    fn wait_for(&mut self, what: &str, within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        let mut seen = 0;
        loop {
            if let Some((t, _)) = self.lines[seen..].iter().find(|(_, l)| l.contains(what)) {
                return Some(*t);
            }
            seen = self.lines.len();
            if self.eof || Instant::now() >= deadline {
                return None;
            }
            self.pump_until((Instant::now() + Duration::from_millis(200)).min(deadline));
        }
    }

    /// Waits for the guest to end (run-guest.sh exited, up to `within`).
    /// A guest that reported its exit code gets 20 s to power off (its
    /// kernel flushes the disk's cache first, which never ends if the disk
    /// hangs); then QEMU is killed. Returns the guest's exit code from its
    /// GUEST-EXIT-CODE marker, or why there is none.
    fn finish(&mut self, within: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + within;
        let mut child = self.child.take().unwrap();
        let status = loop {
            self.pump_until(Instant::now() + Duration::from_millis(200));
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            let reported = self
                .lines
                .iter()
                .find(|(_, l)| l.contains("GUEST-EXIT-CODE="))
                .map(|(t, _)| *t);
            let now = Instant::now();
            if now >= deadline || reported.is_some_and(|t| now > t + Duration::from_secs(20)) {
                println!(
                    "{}: {}, stopping QEMU",
                    self.name,
                    if reported.is_some() {
                        "the guest reported but did not power off within 20 s"
                    } else {
                        "the guest did not finish in time"
                    }
                );
                // SAFETY: kill(2) on our own child, not reaped yet.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let _ = child.wait();
                self.pump_until(Instant::now() + Duration::from_secs(2));
                break None;
            }
        };
        match (self.exit_code(), status) {
            (Some(rc), _) => Ok(rc),
            (None, Some(st)) => Err(match st.code() {
                Some(124) => "timeout (run-guest.sh exit 124)".into(),
                Some(125) => "the guest did not report (exit 125)".into(),
                _ => format!("run-guest.sh: {st}"),
            }),
            (None, None) => Err(format!(
                "the guest did not finish within {} s",
                within.as_secs()
            )),
        }
    }

    fn exit_code(&self) -> Option<i32> {
        self.lines
            .iter()
            .rev()
            .find_map(|(_, l)| l.split("GUEST-EXIT-CODE=").nth(1))
            .and_then(|c| c.trim().parse().ok())
    }

    fn console(&self) -> String {
        let mut s = String::new();
        for (_, l) in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// /test.env of tests/guest/restart.sh.
fn guest_env(io_secs: u32, seed: u32) -> String {
    format!(
        "EXPECT_DISKS=1\nRESTART_LUN=0\nRESTART_SECS={io_secs}\nRESTART_OFFSET=8M\n\
         RESTART_SIZE=8M\nRESTART_SEED={seed}\nRESTART_MAX_STALL_MS={}\n\
         RESTART_ROUND_TIMEOUT={ROUND_TIMEOUT_SECS}\n",
        MAX_STALL_MS as u64
    )
}

/// run-guest.sh arguments for a controller socket, as docs/operations.md
/// says: QEMU reconnects `RECONNECT_MS` after the daemon went away.
fn vhost_args(socket: &Path) -> Vec<String> {
    vec![
        "--vhost-socket".into(),
        format!(
            "{},num-queues=2,reconnect-ms={RECONNECT_MS}",
            socket.display()
        ),
    ]
}

// ---------------------------------------------------------------- restarts

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    Kill,
    Term,
}

/// What the host measured for one restart; times are from the signal.
struct Restart {
    signal_at: Instant,
    /// SIGTERM: the old daemon's exit.
    exited: Option<Duration>,
    /// The new daemon was spawned.
    spawned: Duration,
    /// Its sockets were there.
    listening: Duration,
    /// QEMU connected (its log's "frontend connected" line).
    connected: Option<f64>,
    /// Its first completed command (stats).
    first_completion: Option<Duration>,
    /// Requests the old daemon had in flight when it was signalled (its
    /// stats, sampled just before).
    in_flight: Option<u64>,
    /// SIGKILL: io_uring submissions the old daemon had not reaped when it
    /// was killed (stopped first, see [`Daemon::sigkill_in_flight`]).
    pending: Option<u64>,
    /// Requests the new daemon found in the inflight region and resubmitted
    /// (its log: "the previous daemon left requests in flight").
    resubmitted: u64,
}

/// How the daemon is restarted.
struct Plan<'a> {
    stop: Stop,
    /// Seconds between stops ([`SCHEDULE_5`]).
    schedule: &'a [f64],
    /// Every one must be (re)created by a new daemon before it counts as
    /// listening.
    sockets: &'a [PathBuf],
    /// Its `--rpc-socket` (readiness, stats).
    rpc: &'a Path,
    /// The controller the guest uses.
    controller: &'a str,
    /// Starts daemon instance n.
    spawn: &'a dyn Fn(usize) -> Daemon,
}

/// Stops and restarts the daemon as `plan` says while the guest runs.
fn restart_under_io(
    test: &str,
    guest: &mut Guest,
    daemon: &mut Daemon,
    plan: &Plan,
) -> Vec<Restart> {
    let Plan {
        stop,
        schedule,
        sockets,
        rpc,
        controller,
        spawn,
    } = *plan;
    let started = guest
        .wait_for("RESTART-IO start", Duration::from_secs(BOOT_SECS))
        .unwrap_or_else(|| {
            panic!(
                "{test}: no RESTART-IO start from the guest within {BOOT_SECS} s; console:\n{}\n\
                 run-guest.sh stderr:\n{}",
                guest.console(),
                guest.stderr_text()
            )
        });
    let mut restarts = Vec::new();
    // The time of the previous stop (the start of the I/O for the first).
    let mut last = started;
    for (i, gap) in schedule.iter().enumerate() {
        guest.pump_until(last + Duration::from_secs_f64(*gap));
        if guest.eof {
            println!("{test}: the guest ended before restart {}", i + 1);
            break;
        }
        daemon.assert_running(&format!("before restart {}", i + 1));
        // Signal while the daemon has a batch of requests in flight (its
        // stats, polled for up to 3 s; then whatever it has): the guest's
        // requests are mostly in the guest, so a blind signal would often
        // find the daemon idle, and a single request may complete between
        // the sample and the signal.
        let poll_end = Instant::now() + Duration::from_secs(3);
        let mut in_flight = queued_requests(rpc);
        while in_flight.unwrap_or(0) < SIGNAL_IN_FLIGHT && Instant::now() < poll_end {
            in_flight = queued_requests(rpc);
        }
        let signal_epoch = epoch_secs(SystemTime::now());
        let mut pending = None;
        let (signal_at, exited) = match stop {
            Stop::Kill => {
                let (t, n) = daemon.sigkill_in_flight(rpc, Duration::from_secs(10));
                pending = Some(n);
                (t, None)
            }
            Stop::Term => {
                let (t, st) = daemon.sigterm(Duration::from_secs(30));
                assert!(
                    st.success(),
                    "{test}: daemon exited {st} on SIGTERM (restart {}); log {}:\n{}",
                    i + 1,
                    daemon.log.display(),
                    daemon.log_text()
                );
                for s in sockets {
                    assert!(
                        !s.exists(),
                        "{test}: {} left behind after SIGTERM",
                        s.display()
                    );
                }
                (t, Some(t.elapsed()))
            }
        };
        let mut new = spawn(i + 1);
        let spawned = signal_at.elapsed();
        let listening =
            new.wait_ready(rpc, Some(controller), sockets, Duration::from_secs(20)) - signal_at;
        *daemon = new;
        // First command the new daemon completes (polled), up to the next
        // stop or 10 s.
        let poll_end = signal_at + Duration::from_secs(10);
        let mut first_completion = None;
        while Instant::now() < poll_end {
            if completed_commands(rpc).is_some_and(|n| n > 0) {
                first_completion = Some(signal_at.elapsed());
                break;
            }
            guest.pump_until(Instant::now() + Duration::from_millis(50));
            if guest.eof {
                break;
            }
        }
        let text = daemon.log_text();
        let resubmitted = text
            .lines()
            .filter(|l| l.contains("left requests in flight"))
            .filter_map(|l| field(l, "requests"))
            .sum::<f64>() as u64;
        let connected = text
            .lines()
            .find(|l| l.contains("frontend connected"))
            .and_then(log_time)
            .map(|t| t - signal_epoch);
        let r = Restart {
            signal_at,
            exited,
            spawned,
            listening,
            connected,
            first_completion,
            in_flight,
            pending,
            resubmitted,
        };
        println!("{test}: {}", describe_restart(i + 1, stop, &r));
        last = signal_at;
        restarts.push(r);
    }
    restarts
}

fn describe_restart(n: usize, stop: Stop, r: &Restart) -> String {
    let opt = |d: Option<f64>| d.map_or("n/a".to_string(), |d| format!("{d:.3} s"));
    format!(
        "restart {n} ({}): {}new daemon spawned {:.3} s, listening {:.3} s, \
         QEMU connected {}, first command completed {} after the signal; \
         {} request(s) in flight at the signal{}, {} resubmitted by the new daemon",
        match stop {
            Stop::Kill => "SIGKILL",
            Stop::Term => "SIGTERM",
        },
        r.exited
            .map(|d| format!("old daemon exited {:.3} s, ", secs(d)))
            .unwrap_or_default(),
        secs(r.spawned),
        secs(r.listening),
        opt(r.connected),
        opt(r.first_completion.map(secs)),
        r.in_flight.map_or("?".into(), |n| n.to_string()),
        r.pending
            .map(|n| format!(" ({n} io_uring submission(s) not reaped at the kill)"))
            .unwrap_or_default(),
        r.resubmitted,
    )
}

/// QEMU lines (its stderr shares the console log) that say something about
/// virtio, virtqueues or vrings: QEMU noticed a ring in a state it should
/// never be in. Its messages while the backend's socket is down are fine.
fn qemu_virtio_complaints(console: &str) -> Vec<String> {
    console
        .lines()
        .filter(|l| l.starts_with("qemu-system-x86_64:"))
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            [
                "virtio",
                "virtqueue",
                "vring",
                "guest moved",
                "index",
                "descriptor",
                "not a head",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .map(str::to_string)
        .collect()
}

/// Number of a `key=value` field in a console line.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The checks after the guest ended (module doc).
fn check_outcome(
    test: &str,
    guest: &mut Guest,
    restarts: &[Restart],
    schedule: &[f64],
    logs: &[PathBuf],
) {
    let rc = guest.finish(Duration::from_secs(GUEST_TIMEOUT_SECS));
    let console = guest.console();
    println!("----- {}: guest console -----\n{console}", guest.name);
    println!(
        "----- {}: run-guest.sh stderr -----\n{}",
        guest.name,
        guest.stderr_text()
    );
    let fails: Vec<&str> = console.lines().filter(|l| l.contains("FAIL:")).collect();
    let mut daemon_errors = Vec::new();
    for log in logs {
        let text = fs::read_to_string(log).unwrap_or_default();
        let errors: Vec<String> = text
            .lines()
            .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
            .map(|l| format!("{}: {l}", log.display()))
            .collect();
        for e in &errors {
            println!("{test}: daemon: {e}");
        }
        daemon_errors.extend(errors.into_iter().filter(|l| l.contains(" ERROR ")));
    }
    let qemu: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("qemu-system-x86_64:"))
        .collect();
    println!(
        "{test}: {} QEMU message(s): {:?}",
        qemu.len(),
        qemu.iter().collect::<std::collections::BTreeSet<_>>()
    );
    for (i, r) in restarts.iter().enumerate() {
        println!(
            "{test} {}",
            describe_restart(
                i + 1,
                if r.exited.is_some() {
                    Stop::Term
                } else {
                    Stop::Kill
                },
                r
            )
        );
    }
    let done = console.lines().find(|l| l.starts_with("RESTART-IO done"));
    let max_lat = done.and_then(|l| field(l, "max_lat_ms"));
    let rounds: Vec<f64> = console
        .lines()
        .filter(|l| l.starts_with("RESTART-IO round="))
        .filter_map(|l| Some(field(l, "write_max_ms")?.max(field(l, "read_max_ms")?)))
        .collect();
    println!(
        "{test}: guest: {} fio round(s), worst latency per round (ms) {rounds:?}, \
         longest I/O latency {} ms (limit {MAX_STALL_MS} ms)",
        rounds.len(),
        max_lat.map_or("n/a".into(), |m| format!("{m:.1}"))
    );

    let rc = rc.unwrap_or_else(|why| {
        panic!(
            "{test}: {why}; console log {}, FAIL lines: {fails:?}",
            guest.log.display()
        )
    });
    assert!(
        rc == 0 && fails.is_empty(),
        "{test}: the guest exited {rc}; FAIL lines:\n{}\n(console log {})",
        fails.join("\n"),
        guest.log.display()
    );
    assert!(
        console.contains("SUMMARY:"),
        "{test}: no SUMMARY line from the guest"
    );
    assert_eq!(
        restarts.len(),
        schedule.len(),
        "{test}: the guest's I/O ended before every restart was done"
    );
    let last = restarts.last().expect("no restart").signal_at;
    let after_last = guest
        .lines
        .iter()
        .filter(|(t, l)| *t > last && l.starts_with("RESTART-IO round="))
        .count();
    assert!(
        after_last >= 1,
        "{test}: no fio round finished after the last restart (raise RESTART_SECS)"
    );
    let max_lat = max_lat.unwrap_or_else(|| panic!("{test}: no RESTART-IO done line"));
    assert!(
        max_lat < MAX_STALL_MS,
        "{test}: the guest saw an I/O take {max_lat} ms (limit {MAX_STALL_MS} ms)"
    );
    let complaints = qemu_virtio_complaints(&console);
    assert!(
        complaints.is_empty(),
        "{test}: QEMU complained about virtio rings:\n{}",
        complaints.join("\n")
    );
    assert!(
        daemon_errors.is_empty(),
        "{test}: the daemon logged errors:\n{}",
        daemon_errors.join("\n")
    );
    if restarts.iter().all(|r| r.exited.is_some()) {
        // SIGTERM drains and publishes before closing: nothing is left in
        // the inflight region for the next daemon.
        assert!(
            restarts.iter().all(|r| r.resubmitted == 0),
            "{test}: a daemon stopped with SIGTERM left requests in flight (resubmitted: {:?})",
            restarts.iter().map(|r| r.resubmitted).collect::<Vec<_>>()
        );
    } else {
        // SIGKILL was sent while the daemon had io_uring submissions it
        // had not reaped (so not published): the next daemon must have
        // found them in the inflight region.
        let pending: Vec<u64> = restarts.iter().map(|r| r.pending.unwrap_or(0)).collect();
        assert!(
            pending.iter().any(|&n| n > 0),
            "{test}: no kill caught the daemon with io_uring submissions in flight \
             (not reaped at the kills: {pending:?})"
        );
        for (i, r) in restarts.iter().enumerate() {
            assert!(
                r.pending.unwrap_or(0) == 0 || r.resubmitted > 0,
                "{test}: restart {}: the daemon was killed with {} io_uring submission(s) \
                 not reaped, and the next daemon resubmitted nothing (log line \"the previous \
                 daemon left requests in flight\")",
                i + 1,
                r.pending.unwrap_or(0)
            );
        }
    }
    assert!(
        restarts.iter().all(|r| r.first_completion.is_some()),
        "{test}: a restarted daemon completed no command within 10 s"
    );
}

/// SIGTERM the last daemon: exit 0 and its sockets removed.
fn stop_last(test: &str, daemon: &mut Daemon, sockets: &[PathBuf]) {
    let (t, st) = daemon.sigterm(Duration::from_secs(30));
    assert!(
        st.success(),
        "{test}: the last daemon exited {st} on SIGTERM; log:\n{}",
        daemon.log_text()
    );
    println!(
        "{test}: the last daemon exited 0 {:.3} s after SIGTERM",
        secs(t.elapsed())
    );
    for s in sockets {
        assert!(!s.exists(), "{test}: {} left behind", s.display());
    }
}

/// Tests 1 and 2: `serve --socket S --disk IMG` (+ `--rpc-socket` for the
/// stats), stopped with `stop` and restarted on the same socket and disk 5
/// times under the guest's fio.
fn socket_disk_restarts(test: &str, stop: Stop, seed: u32) {
    let _guard = lock();
    if !harness_ready(test) {
        return;
    }
    let t0 = Instant::now();
    let work = work_dir("guest-e2e-restart-");
    // Short paths for the sockets (sun_path is 108 bytes).
    let sockdir = tempfile::Builder::new().prefix("vus-").tempdir().unwrap();
    let socket = sockdir.path().join("vus.sock");
    let rpc = sockdir.path().join("rpc.sock");
    let image = sparse_image(&work.path().join("disk.img"), 64 * MIB);
    let args: Vec<OsString> = vec![
        "--socket".into(),
        socket.clone().into(),
        "--disk".into(),
        format!("{},serial={test}", image.display()).into(),
        "--rpc-socket".into(),
        rpc.clone().into(),
    ];
    let log = |n: usize| logs_dir().join(format!("{test}-daemon{n}.log"));
    let spawn = |n: usize| {
        let d = Daemon::spawn(&args, &log(n));
        println!("{test}: daemon {n}: serve {args:?}");
        d
    };
    let sockets = [socket.clone(), rpc.clone()];
    let mut daemon = spawn(0);
    daemon.wait_ready(&rpc, Some("default"), &sockets, Duration::from_secs(20));
    let mut guest = Guest::spawn(
        test,
        work.path(),
        &guest_env(IO_SECS_5, seed),
        &vhost_args(&socket),
    );
    let plan = Plan {
        stop,
        schedule: &SCHEDULE_5,
        sockets: std::slice::from_ref(&socket),
        rpc: &rpc,
        controller: "default",
        spawn: &spawn,
    };
    let restarts = restart_under_io(test, &mut guest, &mut daemon, &plan);
    let logs: Vec<PathBuf> = (0..=restarts.len()).map(log).collect();
    check_outcome(test, &mut guest, &restarts, &SCHEDULE_5, &logs);
    daemon.assert_running("after the guest shut down");
    stop_last(test, &mut daemon, &sockets);
    println!("{test}: total {:.1} s", secs(t0.elapsed()));
}

#[test]
fn guest_e2e_restart_sigkill() {
    socket_disk_restarts("guest_e2e_restart_sigkill", Stop::Kill, 1000);
}

#[test]
fn guest_e2e_restart_sigterm() {
    socket_disk_restarts("guest_e2e_restart_sigterm", Stop::Term, 2000);
}

/// Test 3: a daemon with only `--rpc-socket R --state-file F`; the
/// controller and LUN come from `ctl`; SIGKILL and a restart with the same
/// two options, twice, under the guest's fio.
#[test]
fn guest_e2e_restart_state_file() {
    let test = "guest_e2e_restart_state_file";
    let _guard = lock();
    if !harness_ready(test) {
        return;
    }
    let t0 = Instant::now();
    let work = work_dir("guest-e2e-restart-");
    let sockdir = tempfile::Builder::new().prefix("vus-").tempdir().unwrap();
    let socket = sockdir.path().join("vm1.sock");
    let rpc = sockdir.path().join("rpc.sock");
    let state = work.path().join("state.json");
    let image = sparse_image(&work.path().join("vm1.img"), 64 * MIB);
    let args: Vec<OsString> = vec![
        "--rpc-socket".into(),
        rpc.clone().into(),
        "--state-file".into(),
        state.clone().into(),
    ];
    let log = |n: usize| logs_dir().join(format!("{test}-daemon{n}.log"));
    let spawn = |n: usize| {
        let d = Daemon::spawn(&args, &log(n));
        println!("{test}: daemon {n}: serve {args:?}");
        d
    };
    let mut daemon = spawn(0);
    daemon.wait_ready(&rpc, None, &[], Duration::from_secs(20));
    let sock = socket.to_str().unwrap();
    ctl(
        &rpc,
        &[
            "controller_create",
            "--name",
            "vm1",
            "--socket",
            sock,
            "--num-queues",
            "2",
        ],
    );
    ctl(
        &rpc,
        &[
            "lun_add",
            "--controller",
            "vm1",
            "--path",
            image.to_str().unwrap(),
            "--lun",
            "0",
            "--serial",
            "state-vm1",
        ],
    );
    assert!(
        state.is_file(),
        "{test}: no state file {} after controller_create + lun_add; daemon log:\n{}",
        state.display(),
        daemon.log_text()
    );
    println!(
        "{test}: state file:\n{}",
        fs::read_to_string(&state).unwrap_or_default()
    );
    let mut guest = Guest::spawn(
        test,
        work.path(),
        &guest_env(IO_SECS_2, 3000),
        &vhost_args(&socket),
    );
    let sockets = [socket.clone(), rpc.clone()];
    let plan = Plan {
        stop: Stop::Kill,
        schedule: &SCHEDULE_2,
        sockets: &sockets,
        rpc: &rpc,
        controller: "vm1",
        spawn: &spawn,
    };
    let restarts = restart_under_io(test, &mut guest, &mut daemon, &plan);
    let logs: Vec<PathBuf> = (0..=restarts.len()).map(log).collect();
    check_outcome(test, &mut guest, &restarts, &SCHEDULE_2, &logs);
    daemon.assert_running("after the guest shut down");
    // The restarted daemon serves the same controller and LUN.
    let list: serde_json::Value =
        serde_json::from_str(&ctl(&rpc, &["--json", "controller_list"])).unwrap();
    let c = list
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "vm1"))
        .unwrap_or_else(|| panic!("{test}: vm1 not in controller_list after the restarts: {list}"));
    assert_eq!(c["socket"], sock, "{test}: {c}");
    assert_eq!(c["num_queues"], 2, "{test}: {c}");
    let luns = c["luns"].as_array().expect("luns");
    assert_eq!(luns.len(), 1, "{test}: {c}");
    assert_eq!(luns[0]["lun"], 0, "{test}: {c}");
    assert_eq!(luns[0]["path"], image.to_str().unwrap(), "{test}: {c}");
    assert_eq!(luns[0]["serial"], "state-vm1", "{test}: {c}");
    stop_last(test, &mut daemon, &sockets);
    // Stopping keeps the controllers: the state to come back to.
    let kept = fs::read_to_string(&state).unwrap_or_default();
    assert!(
        kept.contains("vm1") && kept.contains("state-vm1"),
        "{test}: the state file lost vm1 at the SIGTERM: {kept}"
    );
    println!("{test}: total {:.1} s", secs(t0.elapsed()));
}

#[test]
fn log_time_parses_tracing_timestamps() {
    let t = log_time("2026-12-07T12:24:04.038644Z  INFO x: frontend connected").unwrap();
    // date -u -d 2026-12-07T12:24:04Z +%s
    assert!((t - 1_796_646_244.038_644).abs() < 1e-6, "{t}");
    assert_eq!(log_time("garbage"), None);
    assert_eq!(
        field("RESTART-IO done rounds=3 max_lat_ms=12.5", "max_lat_ms"),
        Some(12.5)
    );
}
