//! Guest end-to-end isolation: one VM cannot take the others down
//! (docs/architecture.md). One daemon (`serve --config --rpc-socket`) with
//! two controllers, vm-a and vm-b, each with its own 64 MiB image and 2
//! request queues. Guest B boots on vm-b (`reconnect-ms=1000`) and runs fio
//! randwrite + crc32c verify rounds (tests/guest/isolation.sh, role b:
//! libaio, O_DIRECT, iodepth 16, 2 jobs, 10 s time-based rounds, JSON
//! output). Its first [`CONTROL_ROUNDS`] rounds run alone (the control);
//! then the host starts a QEMU on vm-a (`reconnect-ms=1000` too) and kills
//! it with SIGKILL, [`CHURN`] times, at varying points:
//!
//! * `Connected`: as soon as the daemon logs "frontend connected" for vm-a
//!   (in the middle of QEMU's vhost-user handshake);
//! * `Realized`: once QEMU answers QMP `query-status` (its device is
//!   realized: the handshake QEMU does at start is over) and `ctl
//!   controller_list` shows both controllers `connected`, plus 0..1.2 s
//!   (the guest is in the firmware or loading its kernel);
//! * `Disk`: the guest (same kernel, initrd with role a) booted far enough
//!   to see /dev/sda: its driver set up the rings, the kernel scanned the
//!   LUN;
//! * `Io`: the guest runs fio randrw at iodepth 16 on vm-a's disk
//!   ("ISO-A-IO"), killed 0.5..1.5 s later with requests in flight.
//!
//! After each kill the host waits until the daemon ended that connection
//! (`ctl stats`: vm-a `listening`, one more connection). Before the churn
//! (guest B connected and doing I/O) and after it (vm-a's last QEMU gone)
//! the host counts the daemon's file descriptors (`/proc/PID/fd`) and
//! threads (`/proc/PID/task`, without the kernel's transient `iou-wrk-*`
//! io_uring workers, printed separately; sampled once the daemon's thread
//! for the test's last `ctl` call is gone): each within [`FD_BOUND`] /
//! [`THREAD_BOUND`]; its mappings (`/proc/PID/maps`, after each
//! disconnect) stay within [`MAPS_BOUND`] of the count after the first
//! one, and no guest memory (memfd) stays mapped. Then it types
//! "churn-done" on guest B's console; B finishes its round. Every round's
//! fio passed with verify, B's kernel log has no SCSI error, abort, reset
//! or timeout, and B saw no I/O stall: fio's completion latency maximum
//! (clat max of writes and verify reads, from its JSON) and the daemon's
//! own latency maximum for vm-b (`ctl stats`) are below [`STALL_LIMIT`].
//! vm-b had one connection all along, vm-a exactly [`CHURN`]; the daemon
//! logged no warning or error about vm-b; `controller_list` shows both
//! controllers listening or connected, no `last_error` on vm-b; SIGTERM
//! exits 0 and removes the sockets.
//!
//! The latency limit is not relaxed for this machine (2 shared cores, TCG):
//! instead, whenever vm-b's latency maximum grows past 100 ms, the test
//! prints what vm-a was doing and what the host did in that second (load,
//! how long the daemon's threads waited for a CPU, the image disk's
//! average I/O time), so that a failure says whether the daemon stalled or
//! the machine did. The control rounds' maxima are printed too.
//!
//! Needs the harness (`scripts/install-deps.sh && scripts/build-guest.sh`);
//! without it the test prints "SKIPPED" and passes, except when `CI=true`,
//! where it fails. Logs stay in target/tmp/guest-e2e-logs/isolation-*
//! (A's QEMUs: isolation-a/NN-console.log, NN-qemu.log; the daemon's maps
//! before and after the churn).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod guest_harness;
use guest_harness::daemon::{ctl_output, Daemon};
use guest_harness::qmp::Qmp;
use guest_harness::{
    guest_initrd, harness_ready, lock, logs_dir, qemu_command, read_console, socket_dir,
    sparse_image, tail, work_dir,
};

const MIB: u64 = 1024 * 1024;
const IMAGE_SIZE: u64 = 64 * MIB;
/// QEMUs started on vm-a and killed with SIGKILL.
const CHURN: usize = 50;
/// Guest B's fio rounds (time-based seconds each).
const ROUND_SECS: u64 = 10;
/// Daemon file descriptors / threads after the churn vs before.
const FD_BOUND: usize = 2;
const THREAD_BOUND: usize = 2;
/// Daemon mappings after the last disconnect vs after the first.
const MAPS_BOUND: usize = 4;
/// Guest B's longest allowed I/O (fio clat max, the daemon's latency max).
/// The daemon's own bound is 1 s (tests/isolation.rs asserts it without
/// guests); here two TCG guests share two cores with the churn's QEMU
/// boots, and B's vCPUs alone were seen stalling 0.4-1.4 s with no daemon
/// involved (QEMUs booting without connecting to it), so the bound that
/// cannot flake in CI is wider. The numbers are printed every run.
const STALL_LIMIT: Duration = Duration::from_secs(3);
/// Guest B's rounds alone before the churn (the control).
const CONTROL_ROUNDS: u64 = 2;
/// Guest B's boot to its first fio round.
const B_BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// One QEMU on vm-a: start to the point where it is killed.
const A_TIMEOUT: Duration = Duration::from_secs(120);
/// A kill to the daemon's "frontend disconnected".
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// "churn-done" to guest B's power-off.
const B_END_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- daemon

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon stopped").id()
    }

    /// Log lines with `what` about the controller on `socket`.
    fn count(&self, what: &str, socket: &Path) -> usize {
        let field = format!("socket={}", socket.display());
        self.log_text()
            .lines()
            .filter(|l| l.contains(what) && l.contains(&field))
            .count()
    }

    /// "exited STATUS" when the daemon is gone.
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        child.try_wait().unwrap().map(|st| format!("exited ({st})"))
    }

    /// SIGTERM; its exit status (killed after 10 s).
    fn terminate(&mut self) -> Result<ExitStatus, String> {
        self.try_terminate()
            .ok_or_else(|| "the daemon did not exit within 10 s of SIGTERM".into())
    }
}

/// `vhost-user-scsi ctl --json --rpc-socket RPC ARGS...`.
fn ctl_json(rpc: &Path, args: &[&str]) -> Result<Value, String> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let stdout = ctl_output(rpc, &all)?;
    serde_json::from_str(&stdout).map_err(|e| format!("ctl {args:?}: bad JSON ({e}): {stdout}"))
}

/// The entry of a JSON array whose "name" is `name`.
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

/// What /proc says about the daemon.
#[derive(Debug)]
struct ProcStat {
    fds: usize,
    /// Threads without the kernel's io_uring workers (iou-wrk-*).
    threads: usize,
    /// io_uring workers: the kernel starts and ends them as it likes.
    iou_workers: usize,
    maps: usize,
    rss_kib: u64,
    names: String,
}

fn proc_stat(pid: u32) -> ProcStat {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let fds = fs::read_dir(dir.join("fd")).expect("/proc/PID/fd").count();
    let mut names: Vec<String> = fs::read_dir(dir.join("task"))
        .expect("/proc/PID/task")
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    let iou_workers = names.iter().filter(|n| n.starts_with("iou-wrk")).count();
    let maps = fs::read_to_string(dir.join("maps"))
        .map(|m| m.lines().count())
        .unwrap_or(0);
    let rss_kib = fs::read_to_string(dir.join("status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let mut grouped: Vec<(String, usize)> = Vec::new();
    for n in &names {
        let key = n.trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
        match grouped.iter_mut().find(|(k, _)| *k == key) {
            Some(e) => e.1 += 1,
            None => grouped.push((key, 1)),
        }
    }
    ProcStat {
        fds,
        threads: names.len() - iou_workers,
        iou_workers,
        maps,
        rss_kib,
        names: grouped
            .iter()
            .map(|(k, n)| format!("{k}x{n}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// [`proc_stat`] once the daemon's thread for our last `ctl` call (an RPC
/// connection: `rpc-conn`, its socket, its stack) is gone, or after 5 s.
fn settled_proc_stat(pid: u32) -> ProcStat {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = proc_stat(pid);
        if !s.names.contains("rpc-conn") || Instant::now() > deadline {
            return s;
        }
        sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- QEMU

/// The guests' kernel command line. no_timer_check: on a starved host the
/// kernel's check of the IO-APIC timer can fail under TCG ("IO-APIC +
/// timer doesn't work!", a panic at boot); seen here with a load of 10 on
/// 2 cores.
const APPEND: &str = "console=ttyS0 panic=-1 quiet no_timer_check";

enum ConsoleMsg {
    Line(String),
    Eof,
}

/// Guest B: console on stdio (copied to a log file by a thread that sends
/// its lines), typed on through stdin. Killed on drop.
struct GuestB {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    rx: Receiver<ConsoleMsg>,
    console: Vec<String>,
    eof: bool,
}

impl GuestB {
    fn spawn(initrd: &Path, socket: &Path, console_log: &Path, stderr_log: &Path) -> GuestB {
        let mut cmd = qemu_command(initrd, socket, APPEND);
        cmd.args(["-serial", "stdio"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(stderr_log).unwrap());
        println!("starting guest B: {cmd:?}");
        let mut child = cmd.spawn().expect("spawn qemu-system-x86_64");
        let stdout = child.stdout.take().unwrap();
        let log = File::create(console_log).unwrap();
        let (tx, rx) = channel();
        read_console(stdout, Some(log), tx, ConsoleMsg::Line, ConsoleMsg::Eof);
        GuestB {
            stdin: child.stdin.take(),
            child: Some(child),
            rx,
            console: Vec::new(),
            eof: false,
        }
    }

    /// Takes what the console printed, waiting up to `wait` for the first
    /// line; returns the new lines.
    fn poll(&mut self, wait: Duration) -> Vec<String> {
        let mut new = Vec::new();
        let mut timeout = wait;
        while !self.eof {
            match self.rx.recv_timeout(timeout) {
                Ok(ConsoleMsg::Line(l)) => {
                    if l.contains("FAIL:") || l.starts_with("ISO-B-") {
                        println!("guest B: {l}");
                    }
                    self.console.push(l.clone());
                    new.push(l);
                }
                Ok(ConsoleMsg::Eof) | Err(RecvTimeoutError::Disconnected) => self.eof = true,
                Err(RecvTimeoutError::Timeout) => break,
            }
            timeout = Duration::ZERO;
        }
        new
    }

    fn type_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{text}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("typing on guest B's console: {e}"));
    }

    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.stdin = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for GuestB {
    fn drop(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One QEMU on vm-a (console to a file); SIGKILLed on drop.
struct QemuA {
    child: Child,
    console: PathBuf,
    stderr: PathBuf,
    qmp: PathBuf,
    killed: bool,
}

impl QemuA {
    fn spawn(n: usize, initrd: &Path, socket: &Path, dir: &Path, qmp: PathBuf) -> QemuA {
        let console = dir.join(format!("{n:02}-console.log"));
        let stderr = dir.join(format!("{n:02}-qemu.log"));
        let _ = fs::remove_file(&qmp);
        let mut cmd = qemu_command(initrd, socket, APPEND);
        cmd.arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap());
        QemuA {
            child: cmd.spawn().expect("spawn qemu-system-x86_64"),
            console,
            stderr,
            qmp,
            killed: false,
        }
    }

    fn console_has(&self, what: &str) -> bool {
        fs::read_to_string(&self.console).is_ok_and(|c| c.contains(what))
    }

    /// SIGKILL and reap.
    fn kill(&mut self) -> ExitStatus {
        self.killed = true;
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }
}

impl Drop for QemuA {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- the test

/// Where a QEMU on vm-a is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kill {
    /// At the daemon's "frontend connected" (mid-handshake).
    Connected,
    /// QMP answers and controller_list says connected, then this many ms.
    Realized(u64),
    /// The guest's init saw /dev/sda.
    Disk,
    /// The guest's fio has run for this many ms.
    Io(u64),
}

/// The kill point of QEMU number `n`: every 12th boots a guest (disk and
/// io alternately), the others alternate connected / realized.
fn plan(n: usize) -> Kill {
    let n64 = n as u64;
    match n % 12 {
        11 if (n / 12) % 2 == 0 => Kill::Disk,
        11 => Kill::Io(500 + (n64 * 97) % 1000),
        k if k % 2 == 0 => Kill::Connected,
        _ => Kill::Realized((n64 * 173) % 1200),
    }
}

/// The config file: two controllers, LUN 0 each, 2 request queues.
fn config(sock_a: &Path, img_a: &Path, sock_b: &Path, img_b: &Path) -> String {
    let ctrl = |name: &str, sock: &Path, img: &Path| {
        format!(
            "[[controller]]\nname = \"{name}\"\nsocket = \"{}\"\nnum_queues = 2\n\
             queue_size = 128\n[[controller.lun]]\nlun = 0\npath = \"{}\"\n\
             serial = \"{name}-0\"\n\n",
            sock.display(),
            img.display()
        )
    };
    ctrl("vm-a", sock_a, img_a) + &ctrl("vm-b", sock_b, img_b)
}

/// The initrd of `role` (scripts/guest-initrd.sh with tests/guest/isolation.sh).
fn build_initrd(work: &Path, role: &str) -> PathBuf {
    guest_initrd(
        "tests/guest/isolation.sh",
        &format!(
            "EXPECT_DISKS=1\nLUNS=\"0\"\nISO_ROLE={role}\nFIO_OFFSET=8M\nFIO_SIZE=8M\n\
             ISO_ROUND_SECS={ROUND_SECS}\nISO_MAX_ROUNDS=60\n"
        ),
        &work.join(format!("{role}.env")),
        work.join(format!("initrd-{role}")),
    )
}

/// Failure messages with the tails of every log.
struct Logs {
    daemon: PathBuf,
    b_console: PathBuf,
    b_stderr: PathBuf,
    /// The last QEMU on vm-a: console, stderr.
    a_last: Mutex<Option<(PathBuf, PathBuf)>>,
}

impl Logs {
    fn fail(&self, msg: &str) -> ! {
        let mut s = format!("guest_e2e_isolation: {msg}\n");
        let mut add = |what: &str, p: &Path, n: usize| {
            s += &format!("----- {what} ({}) -----\n{}\n", p.display(), tail(p, n));
        };
        add("guest B console", &self.b_console, 40);
        add("guest B QEMU stderr", &self.b_stderr, 20);
        if let Some((c, e)) = self.a_last.lock().unwrap().clone() {
            add("last vm-a QEMU console", &c, 20);
            add("last vm-a QEMU stderr", &e, 20);
        }
        add("daemon log", &self.daemon, 60);
        panic!("{s}");
    }
}

/// vm-b's longest command so far as the daemon measures it (`ctl stats`:
/// command received to response), sampled about once a second and around
/// each kill: when it grows past 100 ms, what vm-a was doing then and what
/// the host was doing since the previous sample (load, the daemon's threads'
/// run-queue wait from /proc/PID/task/*/schedstat, the average I/O time of
/// the disk under the images from /proc/diskstats), to tell a daemon stall
/// from a starved machine.
struct LatencyWatch {
    rpc: PathBuf,
    pid: u32,
    /// "MAJOR MINOR" of the disk under the images.
    disk: String,
    t0: Instant,
    last: Instant,
    max_ms: f64,
    /// Per daemon thread: tid, name, run_delay (ns) at the last sample.
    run_delay: Vec<(String, String, u64)>,
    /// The threads that were there before the churn (vm-b's and the
    /// daemon's own; vm-a's connections bring threads of the same names).
    base_tids: Vec<String>,
    /// Completed I/Os and ms spent on them (reads + writes) on `disk`.
    disk_io: (u64, u64),
    jumps: Vec<String>,
}

impl LatencyWatch {
    fn new(rpc: &Path, pid: u32, images: &Path, t0: Instant) -> LatencyWatch {
        use std::os::unix::fs::MetadataExt;
        let dev = fs::metadata(images).map(|m| m.dev()).unwrap_or(0);
        let mut w = LatencyWatch {
            rpc: rpc.to_path_buf(),
            pid,
            disk: format!("{}:{}", libc::major(dev), libc::minor(dev)),
            t0,
            last: Instant::now(),
            max_ms: 0.0,
            run_delay: Vec::new(),
            base_tids: Vec::new(),
            disk_io: (0, 0),
            jumps: Vec::new(),
        };
        w.host();
        w.base_tids = w.run_delay.iter().map(|t| t.0.clone()).collect();
        w
    }

    /// What the host did since the last call (one line).
    fn host(&mut self) -> String {
        let mut delays = Vec::new();
        if let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.pid)) {
            for t in tasks.flatten() {
                let tid = t.file_name().to_string_lossy().into_owned();
                let name = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                let delay = fs::read_to_string(t.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
                    .unwrap_or(0u64);
                delays.push((tid, name.trim().to_string(), delay));
            }
        }
        let mut worst = (String::new(), 0u64);
        for (tid, name, d) in &delays {
            if !self.base_tids.is_empty() && !self.base_tids.contains(tid) {
                continue;
            }
            let old = self
                .run_delay
                .iter()
                .find(|(t, _, _)| t == tid)
                .map_or(0, |o| o.2);
            if d.saturating_sub(old) > worst.1 {
                worst = (name.clone(), d - old);
            }
        }
        self.run_delay = delays;
        let io = fs::read_to_string("/proc/diskstats")
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<&str>>())
            .find(|f| f.len() > 10 && format!("{}:{}", f[0], f[1]) == self.disk)
            .map(|f| {
                let n = |i: usize| f[i].parse::<u64>().unwrap_or(0);
                (n(3) + n(7), n(6) + n(10))
            })
            .unwrap_or((0, 0));
        let (ios, ms) = (
            io.0.saturating_sub(self.disk_io.0),
            io.1.saturating_sub(self.disk_io.1),
        );
        self.disk_io = io;
        let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        format!(
            "host: load {}; the daemon's most delayed thread (of vm-b's and its own) {} \
             waited {:.0} ms for a CPU; \
             disk {}: {ios} I/Os, {:.1} ms each on average",
            load.split_whitespace().next().unwrap_or("?"),
            worst.0,
            worst.1 as f64 / 1e6,
            self.disk,
            if ios > 0 { ms as f64 / ios as f64 } else { 0.0 }
        )
    }

    fn sample(&mut self, context: &str, force: bool) {
        if !force && self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        let since = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        let host = self.host();
        let Ok(v) = ctl_json(&self.rpc, &["stats", "--controller", "vm-b"]) else {
            return;
        };
        let us = named(&v["controllers"], "vm-b")["luns"][0]["latency"]["max_us"].as_f64();
        let ms = us.unwrap_or(0.0) / 1000.0;
        if ms > self.max_ms {
            if ms >= 100.0 {
                let j = format!(
                    "{:6.1} s  vm-b's longest command {:.1} -> {:.1} ms; vm-a: {context}; \
                     in the last {since:.1} s {host}",
                    self.t0.elapsed().as_secs_f64(),
                    self.max_ms,
                    ms
                );
                println!("{j}");
                self.jumps.push(j);
            }
            self.max_ms = ms;
        }
    }
}

/// The mappings of `after` that `before` does not have, one line each
/// ("start-end perms size path").
fn new_mappings(before: &str, after: &str) -> String {
    let key = |l: &str| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (range, perms, path) = (f[0], f[1], f.get(5).copied().unwrap_or(""));
        let size = range
            .split_once('-')
            .map(|(a, b)| {
                u64::from_str_radix(b, 16).unwrap_or(0) - u64::from_str_radix(a, 16).unwrap_or(0)
            })
            .unwrap_or(0);
        format!("{range} {perms} {} KiB {path}", size / 1024)
    };
    let old: Vec<String> = before.lines().map(key).collect();
    after
        .lines()
        .map(key)
        .filter(|k| !old.contains(k))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The fio JSON of each of guest B's rounds: (round, JSON).
fn fio_rounds(console: &[String]) -> Vec<(u32, Result<Value, String>)> {
    let mut out = Vec::new();
    let mut cur: Option<(u32, String)> = None;
    for l in console {
        if let Some(n) = l.strip_prefix("ISO-FIO-JSON-BEGIN ") {
            cur = Some((n.trim().parse().unwrap_or(0), String::new()));
        } else if l.starts_with("ISO-FIO-JSON-END") {
            if let Some((n, text)) = cur.take() {
                // fio may print warnings before its JSON.
                let json = match text.find('{') {
                    Some(i) => serde_json::from_str(&text[i..]).map_err(|e| format!("{e}")),
                    None => Err("no JSON".into()),
                };
                out.push((n, json.map_err(|e| format!("round {n}: {e}: {text}"))));
            }
        } else if let Some((_, text)) = cur.as_mut() {
            text.push_str(l);
            text.push('\n');
        }
    }
    out
}

#[test]
fn guest_e2e_isolation() {
    let _guard = lock();
    if !harness_ready("guest_e2e_isolation") {
        return;
    }
    let t0 = Instant::now();
    let work = work_dir("guest-e2e-iso-");
    let sockdir = socket_dir("vus-iso-");
    let rpc = sockdir.path().join("rpc.sock");
    let sock_a = sockdir.path().join("a.sock");
    let sock_b = sockdir.path().join("b.sock");
    let img_a = sparse_image(&work.path().join("a.img"), IMAGE_SIZE);
    let img_b = sparse_image(&work.path().join("b.img"), IMAGE_SIZE);
    let cfg = work.path().join("config.toml");
    fs::write(&cfg, config(&sock_a, &img_a, &sock_b, &img_b)).unwrap();
    let logs_root = logs_dir();
    let a_dir = logs_root.join("isolation-a");
    let _ = fs::remove_dir_all(&a_dir);
    fs::create_dir_all(&a_dir).unwrap();
    let logs = Logs {
        daemon: logs_root.join("isolation-daemon.log"),
        b_console: logs_root.join("isolation-b-console.log"),
        b_stderr: logs_root.join("isolation-b-qemu.log"),
        a_last: Mutex::new(None),
    };
    let mut daemon = Daemon::start(
        &[
            "serve".into(),
            "--config".into(),
            cfg.display().to_string(),
            "--rpc-socket".into(),
            rpc.display().to_string(),
        ],
        &logs.daemon,
        &[&rpc, &sock_a, &sock_b],
    );
    let pid = daemon.pid();
    let initrd_a = build_initrd(work.path(), "a");
    let initrd_b = build_initrd(work.path(), "b");

    // Guest B boots and starts its fio rounds.
    let mut b = GuestB::spawn(&initrd_b, &sock_b, &logs.b_console, &logs.b_stderr);
    let boot = Instant::now();
    loop {
        if boot.elapsed() > B_BOOT_TIMEOUT {
            logs.fail(&format!(
                "guest B did not start its I/O within {} s",
                B_BOOT_TIMEOUT.as_secs()
            ));
        }
        if b.poll(Duration::from_millis(250))
            .iter()
            .any(|l| l.contains("ISO-B-IO start"))
        {
            break;
        }
        if b.eof {
            logs.fail("guest B's console closed before its I/O started");
        }
    }
    println!(
        "{:6.1} s  guest B does I/O ({:.1} s after its start)",
        t0.elapsed().as_secs_f64(),
        boot.elapsed().as_secs_f64()
    );
    // The control: guest B alone for CONTROL_ROUNDS rounds.
    let mut lat = LatencyWatch::new(&rpc, pid, work.path(), t0);
    let control_end = format!("ISO-B-ROUND {CONTROL_ROUNDS} ");
    while !b.console.iter().any(|l| l.starts_with(&control_end)) {
        if boot.elapsed() > B_BOOT_TIMEOUT + Duration::from_secs(CONTROL_ROUNDS * ROUND_SECS * 3) {
            logs.fail("guest B's control rounds did not end in time");
        }
        b.poll(Duration::from_millis(250));
        if b.eof {
            logs.fail("guest B's console closed during its control rounds");
        }
        lat.sample("nothing (control rounds, before the churn)", false);
    }
    lat.sample("nothing (control rounds, before the churn)", true);
    let control_max_ms = lat.max_ms;
    // The baseline: vm-b connected, vm-a listening.
    let list = ctl_json(&rpc, &["controller_list"]).unwrap_or_else(|e| logs.fail(&e));
    if named(&list, "vm-b")["state"] != "connected" || named(&list, "vm-a")["state"] != "listening"
    {
        logs.fail(&format!(
            "before the churn: expected vm-b connected, vm-a listening: {list}"
        ));
    }
    let before = settled_proc_stat(pid);
    println!("daemon before the churn: {before:?}");
    let maps_before = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();

    // The churn.
    let churn_t0 = Instant::now();
    let mut connect_s: Vec<f64> = Vec::new();
    let mut disconnect_ms: Vec<(usize, Kill, f64)> = Vec::new();
    let mut maps_series: Vec<usize> = Vec::new();
    let mut counts = [0usize; 4];
    for n in 0..CHURN {
        let kill = plan(n);
        let started = Instant::now();
        let mut q = QemuA::spawn(
            n,
            &initrd_a,
            &sock_a,
            &a_dir,
            sockdir.path().join(format!("qmp-a{n}.sock")),
        );
        *logs.a_last.lock().unwrap() = Some((q.console.clone(), q.stderr.clone()));
        // Everything that must hold while we wait.
        let watch = |q: &mut QemuA,
                     b: &mut GuestB,
                     daemon: &mut Daemon,
                     lat: &mut LatencyWatch,
                     what: &str| {
            if let Some(e) = daemon.exited() {
                logs.fail(&format!("the daemon {e} during QEMU {n} on vm-a ({what})"));
            }
            b.poll(Duration::ZERO);
            if b.eof {
                logs.fail(&format!(
                    "guest B's console closed during QEMU {n} on vm-a ({what})"
                ));
            }
            if let Some(st) = q.child.try_wait().unwrap().filter(|_| !q.killed) {
                logs.fail(&format!(
                    "QEMU {n} on vm-a exited ({st}) before it was killed ({what})"
                ));
            }
            if started.elapsed() > A_TIMEOUT {
                logs.fail(&format!(
                    "QEMU {n} on vm-a: {what} not seen within {} s",
                    A_TIMEOUT.as_secs()
                ));
            }
            lat.sample(&format!("QEMU {n} ({kill:?}) waiting for {what}"), false);
            sleep(Duration::from_millis(20));
        };
        while daemon.count("frontend connected", &sock_a) <= n {
            watch(&mut q, &mut b, &mut daemon, &mut lat, "frontend connected");
        }
        connect_s.push(started.elapsed().as_secs_f64());
        match kill {
            Kill::Connected => {}
            Kill::Realized(ms) => {
                let mut qmp = Qmp::connect(
                    &q.qmp,
                    Instant::now() + A_TIMEOUT,
                    Duration::from_millis(50),
                )
                .unwrap_or_else(|e| logs.fail(&format!("QEMU {n}: {e}")));
                let st = qmp
                    .execute("query-status", json!({}))
                    .unwrap_or_else(|e| logs.fail(&format!("QEMU {n}: {e}")));
                let list = ctl_json(&rpc, &["controller_list"]).unwrap_or_else(|e| logs.fail(&e));
                if named(&list, "vm-a")["state"] != "connected"
                    || named(&list, "vm-b")["state"] != "connected"
                {
                    logs.fail(&format!(
                        "QEMU {n} ({st}): controller_list does not show both connected: {list}"
                    ));
                }
                sleep(Duration::from_millis(ms));
            }
            Kill::Disk => {
                while !q.console_has(" sd disk(s) after ") {
                    watch(&mut q, &mut b, &mut daemon, &mut lat, "the guest's disk");
                }
                if !q.console_has("guest: 1 sd disk(s)") {
                    logs.fail(&format!(
                        "QEMU {n}: the guest on vm-a did not find its disk"
                    ));
                }
            }
            Kill::Io(ms) => {
                while !q.console_has("ISO-A-IO") {
                    watch(&mut q, &mut b, &mut daemon, &mut lat, "ISO-A-IO");
                }
                sleep(Duration::from_millis(ms));
            }
        }
        lat.sample(&format!("QEMU {n} ({kill:?}) before its SIGKILL"), true);
        let killed = Instant::now();
        let st = q.kill();
        // The daemon ended the connection ("frontend disconnected", or a
        // failed request when the kill cut a message): vm-a listens again.
        loop {
            let a = ctl_json(&rpc, &["stats", "--controller", "vm-a"])
                .map(|v| named(&v["controllers"], "vm-a").clone())
                .unwrap_or_else(|e| logs.fail(&e));
            if a["state"] == "listening" && a["connections"] == n + 1 {
                break;
            }
            if a["state"] != "connected" || killed.elapsed() > DISCONNECT_TIMEOUT {
                logs.fail(&format!(
                    "QEMU {n} on vm-a killed ({st}, at {kill:?}): vm-a is not listening again \
                     with {} connections after {:.1} s: {a}",
                    n + 1,
                    killed.elapsed().as_secs_f64()
                ));
            }
            watch(&mut q, &mut b, &mut daemon, &mut lat, "the disconnect");
        }
        let ms = killed.elapsed().as_secs_f64() * 1000.0;
        lat.sample(&format!("QEMU {n} ({kill:?}) SIGKILL to disconnect"), true);
        maps_series.push(settled_proc_stat(pid).maps);
        counts[match kill {
            Kill::Connected => 0,
            Kill::Realized(_) => 1,
            Kill::Disk => 2,
            Kill::Io(_) => 3,
        }] += 1;
        println!(
            "{:6.1} s  vm-a QEMU {n:2}: killed at {kill:?} {:.1} s after its start; \
             disconnect seen after {ms:.0} ms",
            t0.elapsed().as_secs_f64(),
            killed.duration_since(started).as_secs_f64()
        );
        disconnect_ms.push((n, kill, ms));
    }
    let churn = churn_t0.elapsed();

    // vm-a's last QEMU is gone and the daemon knows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let list = ctl_json(&rpc, &["controller_list"]).unwrap_or_else(|e| logs.fail(&e));
        if named(&list, "vm-a")["state"] == "listening" {
            break list;
        }
        if Instant::now() > deadline {
            logs.fail(&format!("vm-a not listening after the churn: {list}"));
        }
        sleep(Duration::from_millis(100));
    };
    let after = settled_proc_stat(pid);
    println!("daemon after the churn:  {after:?}");
    let maps_after = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    fs::write(logs_root.join("isolation-maps-before.txt"), &maps_before).unwrap();
    fs::write(logs_root.join("isolation-maps-after.txt"), &maps_after).unwrap();
    let new_maps = new_mappings(&maps_before, &maps_after);
    println!(
        "daemon mappings after each disconnect: {maps_series:?}; new ones at the end \
         (address range, perms, size, path):\n{new_maps}"
    );
    println!("controller_list after the churn: {list}");
    let b_ctl = named(&list, "vm-b").clone();
    if b_ctl["state"] != "connected" || b_ctl.get("last_error").is_some() {
        logs.fail(&format!(
            "vm-b after the churn: expected connected without last_error: {b_ctl}"
        ));
    }
    let stats = ctl_json(&rpc, &["stats"]).unwrap_or_else(|e| logs.fail(&e));
    let a_stats = named(&stats["controllers"], "vm-a").clone();
    let b_stats = named(&stats["controllers"], "vm-b").clone();
    println!("stats vm-a after the churn: {a_stats}");
    println!("stats vm-b after the churn: {b_stats}");

    // Guest B: the stop signal, typed between two rounds' JSON output.
    let mut typed = false;
    let b_end = Instant::now();
    while !b.eof {
        if b_end.elapsed() > B_END_TIMEOUT {
            logs.fail(&format!(
                "guest B did not finish within {} s of the churn's end",
                B_END_TIMEOUT.as_secs()
            ));
        }
        let new = b.poll(Duration::from_millis(250));
        lat.sample("nothing (churn over)", false);
        if !typed && new.iter().any(|l| l.starts_with("ISO-FIO-JSON-END")) {
            b.type_line("churn-done");
            typed = true;
            println!(
                "{:6.1} s  typed churn-done on guest B's console",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let b_status = b.wait(Duration::from_secs(30));
    let b_all = boot.elapsed();
    // vm-b's connection ended with the guest's power-off.
    let deadline = Instant::now() + Duration::from_secs(10);
    let end_list = loop {
        let list = ctl_json(&rpc, &["controller_list"]).unwrap_or_else(|e| logs.fail(&e));
        if named(&list, "vm-b")["state"] == "listening" || Instant::now() > deadline {
            break list;
        }
        sleep(Duration::from_millis(100));
    };
    println!("controller_list at the end: {end_list}");

    // Guest B's fio rounds.
    let rounds = fio_rounds(&b.console);
    let mut clat_max_ns = 0u64;
    let mut control_clat_ns = 0u64;
    let mut lat_max_ns = 0u64;
    let mut per_round = Vec::new();
    let mut round_errors = Vec::new();
    for (n, r) in &rounds {
        let j = match r {
            Ok(v) => &v["jobs"][0],
            Err(e) => {
                round_errors.push(e.clone());
                continue;
            }
        };
        let ns = |dir: &str, k: &str| j[dir][k]["max"].as_u64().unwrap_or(0);
        let c = ns("write", "clat_ns").max(ns("read", "clat_ns"));
        let l = ns("write", "lat_ns").max(ns("read", "lat_ns"));
        clat_max_ns = clat_max_ns.max(c);
        if u64::from(*n) <= CONTROL_ROUNDS {
            control_clat_ns = control_clat_ns.max(c);
        }
        lat_max_ns = lat_max_ns.max(l);
        let (wb, rb) = (
            j["write"]["io_bytes"].as_u64().unwrap_or(0),
            j["read"]["io_bytes"].as_u64().unwrap_or(0),
        );
        per_round.push(format!(
            "{n}{}: {:.1}/{:.1} MiB written/verified, clat max {:.1} ms",
            if u64::from(*n) <= CONTROL_ROUNDS {
                " (control)"
            } else {
                ""
            },
            wb as f64 / MIB as f64,
            rb as f64 / MIB as f64,
            c as f64 / 1e6
        ));
        if j["error"] != 0 || wb == 0 || rb == 0 {
            round_errors.push(format!(
                "round {n}: error {}, {wb} bytes written, {rb} verified",
                j["error"]
            ));
        }
    }
    println!("guest B's fio rounds: {per_round:#?}");
    let b_lun_max_us = b_stats["luns"][0]["latency"]["max_us"]
        .as_f64()
        .unwrap_or(f64::NAN);

    let daemon_log = daemon.log_text();
    let b_field = format!("socket={}", sock_b.display());
    let b_warnings: Vec<&str> = daemon_log
        .lines()
        .filter(|l| {
            (l.contains(" WARN ") || l.contains(" ERROR "))
                && (l.contains(&b_field) || l.contains("vm-b"))
        })
        .collect();
    let a_warnings = daemon_log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count()
        - b_warnings.len();
    let term = daemon.terminate();
    let sockets_left: Vec<&PathBuf> = [&rpc, &sock_a, &sock_b]
        .into_iter()
        .filter(|s| s.exists())
        .collect();

    // The report, then the verdicts.
    let ds: Vec<f64> = disconnect_ms.iter().map(|d| d.2).collect();
    let max_of = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "guest_e2e_isolation: {CHURN} QEMUs on vm-a killed ({} connected, {} realized, {} disk, \
         {} io) in {:.1} s; connect {:.1}..{:.1} s after the start; disconnect seen \
         {:.0}..{:.0} ms after SIGKILL",
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        churn.as_secs_f64(),
        connect_s.iter().cloned().fold(f64::INFINITY, f64::min),
        max_of(&connect_s),
        ds.iter().cloned().fold(f64::INFINITY, f64::min),
        max_of(&ds)
    );
    println!(
        "guest_e2e_isolation: daemon fds {} -> {}, threads {} -> {} (+ io_uring workers \
         {} -> {}), maps {} -> {}, RSS {} -> {} KiB",
        before.fds,
        after.fds,
        before.threads,
        after.threads,
        before.iou_workers,
        after.iou_workers,
        before.maps,
        after.maps,
        before.rss_kib,
        after.rss_kib
    );
    println!(
        "guest_e2e_isolation: guest B {} fio rounds, clat max {:.1} ms (control rounds \
         alone: {:.1} ms), lat max {:.1} ms; the daemon's latency max for vm-b {:.1} ms \
         (control: {control_max_ms:.1} ms, whole run {:.1} ms); vm-a connections {}, vm-b \
         connections {}; warnings/errors in the daemon log: {a_warnings} about vm-a, {} about \
         vm-b",
        rounds.len(),
        clat_max_ns as f64 / 1e6,
        control_clat_ns as f64 / 1e6,
        lat_max_ns as f64 / 1e6,
        b_lun_max_us / 1000.0,
        lat.max_ms,
        a_stats["connections"],
        b_stats["connections"],
        b_warnings.len()
    );
    println!(
        "guest_e2e_isolation: guest B {:.1} s, total {:.1} s",
        b_all.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    let fails: Vec<&String> = b.console.iter().filter(|l| l.contains("FAIL:")).collect();
    let exit = b
        .console
        .iter()
        .rev()
        .find_map(|l| l.split("GUEST-EXIT-CODE=").nth(1))
        .map(|c| c.trim().to_string());
    if exit.as_deref() != Some("0") || !fails.is_empty() {
        logs.fail(&format!(
            "guest B failed (GUEST-EXIT-CODE={}): {fails:#?}",
            exit.as_deref().unwrap_or("none")
        ));
    }
    if !b.console.iter().any(|l| l.contains("SUMMARY:")) {
        logs.fail("no SUMMARY line from guest B");
    }
    if !b_status.is_some_and(|s| s.success()) {
        logs.fail(&format!(
            "guest B's QEMU did not exit 0 after the power-off: {b_status:?}"
        ));
    }
    if rounds.len() < 2 || !round_errors.is_empty() {
        logs.fail(&format!(
            "guest B's fio rounds ({}): {round_errors:#?}",
            rounds.len()
        ));
    }
    assert!(
        after.fds.abs_diff(before.fds) <= FD_BOUND,
        "the daemon's fd count moved from {} to {} over {CHURN} killed QEMUs (bound {FD_BOUND})",
        before.fds,
        after.fds
    );
    assert!(
        after.threads.abs_diff(before.threads) <= THREAD_BOUND,
        "the daemon's thread count (without io_uring workers) moved from {} ({}) to {} ({}) \
         over {CHURN} killed QEMUs (bound {THREAD_BOUND})",
        before.threads,
        before.names,
        after.threads,
        after.names
    );
    // The first connection leaves malloc arenas and cached thread stacks
    // behind (once); guest memory must not stay mapped.
    assert!(
        maps_series.last() <= maps_series.first().map(|m| m + MAPS_BOUND).as_ref()
            && !new_maps.contains("memfd"),
        "the daemon's mappings grew over the churn (after each disconnect: {maps_series:?}); \
         new ones:\n{new_maps}"
    );
    assert!(
        b_warnings.is_empty(),
        "the daemon logged warnings or errors about vm-b: {b_warnings:#?}"
    );
    assert_eq!(
        b_stats["connections"], 1,
        "vm-b's QEMU connected more than once: {b_stats}"
    );
    assert_eq!(
        a_stats["connections"], CHURN,
        "vm-a's connections: {a_stats}"
    );
    let stalls = format!(
        "guest B's fio clat max {:.1} ms ({:.1} ms in the control rounds, before the churn); \
         the daemon's longest vm-b command {:.1} ms by the churn's end ({control_max_ms:.1} ms \
         in the control); when it grew: {:#?}",
        clat_max_ns as f64 / 1e6,
        control_clat_ns as f64 / 1e6,
        b_lun_max_us / 1000.0,
        lat.jumps
    );
    assert!(
        b_lun_max_us < STALL_LIMIT.as_secs_f64() * 1e6,
        "vm-b stalled: the daemon took over {} ms for a command: {stalls}",
        STALL_LIMIT.as_millis()
    );
    assert!(
        Duration::from_nanos(clat_max_ns) < STALL_LIMIT,
        "vm-b stalled: guest B's fio waited over {} ms for an I/O: {stalls}",
        STALL_LIMIT.as_millis()
    );
    for name in ["vm-a", "vm-b"] {
        let c = named(&end_list, name);
        assert!(
            c["state"] == "listening" || c["state"] == "connected",
            "{name} at the end: {c}"
        );
    }
    assert!(
        named(&end_list, "vm-b").get("last_error").is_none(),
        "vm-b has a last_error at the end: {end_list}"
    );
    match term {
        Ok(st) if st.success() => {}
        Ok(st) => panic!(
            "the daemon exited {st} after SIGTERM; log:\n{}",
            tail(&logs.daemon, 60)
        ),
        Err(e) => panic!("{e}; log:\n{}", tail(&logs.daemon, 60)),
    }
    assert!(
        sockets_left.is_empty(),
        "the daemon left {sockets_left:?} behind after SIGTERM"
    );
}
