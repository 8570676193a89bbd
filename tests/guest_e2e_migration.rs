//! Guest end-to-end live migration: a source and a destination QEMU on this
//! machine (TCG), the guest's disk served by our daemon, migrated with QMP
//! `migrate` while the guest runs fio randwrite + crc32c verify
//! (tests/guest/migrate.sh).
//!
//! Needs the harness (`scripts/install-deps.sh && scripts/build-guest.sh`);
//! without it the tests print "SKIPPED" and pass, except when `CI=true`,
//! where they fail. Both QEMUs load the same initrd, built once per test by
//! `scripts/guest-initrd.sh` (the guest initramfs + /test.sh, /test.env and
//! /guest/*.sh, as `scripts/run-guest.sh` builds it). The console is QEMU's
//! `-serial stdio`: the host reads the guest's markers and, once
//! `query-migrate` said `completed`, types "migrated" on the destination's
//! console so that the guest's last checks run there.
//!
//! * `guest_e2e_migration_one_daemon`: docs/management.md's "Live
//!   migration" recipe as written, on one daemon (`serve --rpc-socket`):
//!   `ctl controller_create --name vm1 --initiator vm1-uuid` + `lun_add`
//!   for the source; the same for `vm1-in` (same image, LUN, serial,
//!   initiator) before the destination QEMU starts with `-incoming`; QMP
//!   `migrate`; `controller_delete --name vm1` afterwards. The guest takes a
//!   persistent reservation (Write Exclusive) before fio; after the
//!   migration the reservation and key are still there, the holder can still
//!   write, no new unit attention (same I_T nexus), no SCSI error in the
//!   kernel log; the host checks `query-migrate` has no `blocked-reasons`
//!   before, the migration completes, the daemon logged "dirty-page logging
//!   on", the holder's write is in the image.
//! * `guest_e2e_migration_two_daemons`: two hosts sharing storage: two
//!   daemon processes (`serve --socket --disk --initiator`), one controller
//!   each on the same image; both QEMUs run with `-only-migratable` (they
//!   start: our device does not block migration). Same fio check across the
//!   migration; no reservation check: reservations are each daemon's own
//!   state (docs/management.md), so the destination daemon starts with none
//!   and reports a power-on unit attention (tolerated).
//!
//! Logs (guest consoles, QEMU stderr, daemons) stay in
//! target/tmp/guest-e2e-logs/migration-*.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod guest_harness;
use guest_harness::daemon::{ctl_stdout, Daemon};
use guest_harness::qmp::Qmp;
use guest_harness::{
    guest_initrd, harness_ready, lock, logs_dir, pattern, qemu_command, read_console, socket_dir,
    sparse_image, tail, work_dir,
};

const MIB: u64 = 1024 * 1024;
const IMAGE_SIZE: u64 = 64 * MIB;
/// The reservation holder's write (tests/guest/pr.sh holder_write): 8
/// blocks at this LBA, clear of fio's 16..48 MiB.
const PR_LBA: u64 = 24576;
/// fio's time-based runtime in the guest: long enough for the migration to
/// complete while it runs (about 5 s here).
const FIO_RUNTIME_SECS: u64 = 30;
/// The whole guest run (boot, fio, checks).
const GUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// From `migrate` to `completed`.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------- daemon

impl Daemon {
    /// SIGTERM; panics unless it exits 0 within 10 s.
    fn terminate(&mut self) {
        match self.try_terminate() {
            Some(st) => assert!(
                st.success(),
                "daemon ({}) exited {st} after SIGTERM; log:\n{}",
                self.log.display(),
                self.log_text()
            ),
            None => panic!(
                "daemon did not exit within 10 s of SIGTERM; its log:\n{}",
                self.log_text()
            ),
        }
    }

    /// Panics unless the log has "dirty-page logging on" for the controller
    /// of `socket` (its log label).
    fn assert_dirty_logging(&self, socket: &Path) {
        let controller = socket.display();
        let log = self.log_text();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("dirty-page logging on"))
            .collect();
        println!("{}: {lines:#?}", self.log.display());
        let field = format!("controller={controller} ");
        assert!(
            lines.iter().any(|l| l.contains(&field)),
            "the daemon did not log \"dirty-page logging on\" for controller {controller} \
             during the migration; {}:\n{}",
            self.log.display(),
            tail(&self.log, 60)
        );
    }
}

/// `vhost-user-scsi ctl --rpc-socket RPC ARGS...`: its stdout; panics on
/// failure.
fn ctl(rpc: &Path, args: &[&str]) -> String {
    let stdout = ctl_stdout(rpc, args);
    println!("ctl {}:\n{stdout}", args.join(" "));
    stdout
}

fn ctl_json(rpc: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(rpc, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctl {args:?}: bad JSON ({e}): {out}"))
}

// ---------------------------------------------------------------- QEMU

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Src,
    Dst,
}

enum ConsoleMsg {
    Line(Side, String),
    Eof(Side),
}

/// One QEMU with its console on stdio: a thread copies the console to a
/// log file and sends its lines; we type on its stdin. Killed on drop.
struct Qemu {
    side: Side,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    qmp_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Qemu {
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        side: Side,
        console_log: &Path,
        stderr_log: &Path,
        initrd: &Path,
        vhost_socket: &Path,
        qmp_path: &Path,
        extra: &[String],
        tx: Sender<ConsoleMsg>,
    ) -> Qemu {
        let mut cmd = qemu_command(initrd, vhost_socket, "console=ttyS0 panic=-1 quiet");
        cmd.args(["-serial", "stdio"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(stderr_log).unwrap());
        println!("starting {side:?} QEMU: {cmd:?}");
        let mut child = cmd.spawn().expect("spawn qemu-system-x86_64");
        let stdout = child.stdout.take().unwrap();
        let log = File::create(console_log).unwrap();
        read_console(
            stdout,
            Some(log),
            tx,
            move |line| ConsoleMsg::Line(side, line),
            ConsoleMsg::Eof(side),
        );
        Qemu {
            side,
            stdin: child.stdin.take(),
            child: Some(child),
            qmp_path: qmp_path.to_path_buf(),
            status: None,
        }
    }

    /// Types a line on the guest's console.
    fn type_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{text}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("typing on the {:?} console: {e}", self.side));
    }

    /// Waits up to `timeout` for QEMU to exit; its status.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.status = Some(st);
                self.stdin = None;
                return self.status;
            }
            if Instant::now() > deadline {
                return None;
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.wait(Duration::ZERO)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            if self.status.is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------- one migration

/// What one migration run needs.
struct Setup<'a> {
    /// Log file prefix: migration-NAME-*.
    name: &'a str,
    src_socket: &'a Path,
    dst_socket: &'a Path,
    /// More QEMU arguments, for both QEMUs.
    qemu_extra: &'a [&'a str],
    /// More /test.env lines (MIG_PR, MIG_SAME_NEXUS).
    env: &'a str,
    /// Daemon logs, for failure messages.
    daemon_logs: &'a [&'a Path],
}

/// What was measured.
struct Report {
    /// QEMU start to the guest's MIGRATE-READY.
    boot: Duration,
    /// `migrate` to `completed`, measured here.
    migrate_wall: Duration,
    /// query-migrate's total-time, downtime, setup-time (ms).
    total_ms: u64,
    downtime_ms: u64,
    setup_ms: u64,
    transferred: u64,
    /// MIGRATE-READY to MIGRATE-FIO-DONE.
    fio: Duration,
    /// The whole run.
    all: Duration,
    /// The guest's output after the migration (the destination console).
    dst_console: Vec<String>,
}

struct Run<'a> {
    setup: &'a Setup<'a>,
    console_logs: [PathBuf; 2],
    stderr_logs: [PathBuf; 2],
}

impl Run<'_> {
    /// Panics with `msg` and the tails of every log.
    fn fail(&self, msg: &str) -> ! {
        let mut s = format!("{}: {msg}\n", self.setup.name);
        for (i, side) in ["source", "destination"].iter().enumerate() {
            s += &format!(
                "----- {side} guest console ({}) -----\n{}\n",
                self.console_logs[i].display(),
                tail(&self.console_logs[i], 40)
            );
            s += &format!(
                "----- {side} QEMU stderr ({}) -----\n{}\n",
                self.stderr_logs[i].display(),
                tail(&self.stderr_logs[i], 20)
            );
        }
        for log in self.setup.daemon_logs {
            s += &format!(
                "----- daemon log ({}) -----\n{}\n",
                log.display(),
                tail(log, 40)
            );
        }
        panic!("{s}");
    }
}

/// The /test.env of migrate.sh.
fn guest_env(extra: &str) -> String {
    format!(
        "EXPECT_DISKS=1\nLUNS=\"0\"\nLUN0_SIZE={IMAGE_SIZE}\nMIG_LUN=0\n\
         FIO_OFFSET=16M\nFIO_SIZE=16M\nPR_LBA={PR_LBA}\nMIG_FIO_RUNTIME={FIO_RUNTIME_SECS}\n\
         MIG_WAIT=240\n{extra}\n"
    )
}

/// Builds the initrd both QEMUs load (scripts/guest-initrd.sh).
fn build_initrd(work: &Path, env: &str) -> PathBuf {
    guest_initrd(
        "tests/guest/migrate.sh",
        env,
        &work.join("test.env"),
        work.join("initrd"),
    )
}

/// Boots the guest on a source QEMU, starts the destination QEMU
/// (`-incoming`) after `before_dst` (the destination controller), migrates
/// when the guest says MIGRATE-READY, and follows the guest to its end on
/// the destination. Panics (with every log's tail) unless the migration
/// completed, fio finished on the destination and the guest passed every
/// check. The source QEMU is told to quit once the migration completed.
fn migrate_guest(setup: &Setup, work: &Path, before_dst: &mut dyn FnMut()) -> Report {
    let t0 = Instant::now();
    let logs = logs_dir();
    let p = |what: &str| logs.join(format!("migration-{}-{what}.log", setup.name));
    let run = Run {
        setup,
        console_logs: [p("src-console"), p("dst-console")],
        stderr_logs: [p("src-qemu"), p("dst-qemu")],
    };
    let initrd = build_initrd(work, &guest_env(setup.env));
    let qmp_dir = socket_dir("vus-mig-");
    let mig_sock = qmp_dir.path().join("mig.sock");
    let extra: Vec<String> = setup.qemu_extra.iter().map(|s| s.to_string()).collect();
    let (tx, rx): (Sender<ConsoleMsg>, Receiver<ConsoleMsg>) = channel();

    let mut src = Qemu::spawn(
        Side::Src,
        &run.console_logs[0],
        &run.stderr_logs[0],
        &initrd,
        setup.src_socket,
        &qmp_dir.path().join("src-qmp.sock"),
        &extra,
        tx.clone(),
    );
    before_dst();
    let mut dst_extra = extra.clone();
    dst_extra.push("-incoming".into());
    dst_extra.push(format!("unix:{}", mig_sock.display()));
    let mut dst = Qemu::spawn(
        Side::Dst,
        &run.console_logs[1],
        &run.stderr_logs[1],
        &initrd,
        setup.dst_socket,
        &qmp_dir.path().join("dst-qmp.sock"),
        &dst_extra,
        tx,
    );
    let connect = |q: &mut Qemu| -> Qmp {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = q.exited() {
                run.fail(&format!("{:?} QEMU exited at start ({st})", q.side));
            }
            match Qmp::connect(
                &q.qmp_path,
                Instant::now() + Duration::from_secs(1),
                Duration::from_millis(100),
            ) {
                Ok(c) => return c.printing_events(),
                Err(e) if Instant::now() > deadline => run.fail(&format!("{:?} QEMU: {e}", q.side)),
                Err(_) => {}
            }
        }
    };
    let mut src_qmp = connect(&mut src);
    let mut dst_qmp = connect(&mut dst);

    // Our device must not block migration.
    let q = src_qmp
        .execute("query-migrate", json!({}))
        .unwrap_or_else(|e| run.fail(&e));
    println!("source query-migrate before migrating: {q}");
    if q.get("blocked-reasons")
        .and_then(Value::as_array)
        .is_some_and(|r| !r.is_empty())
    {
        run.fail(&format!("migration is blocked on the source: {q}"));
    }
    let st = dst_qmp
        .execute("query-status", json!({}))
        .unwrap_or_else(|e| run.fail(&e));
    println!("destination query-status before migrating: {st}");

    let deadline = t0 + GUEST_TIMEOUT;
    let mut ready_at: Option<Instant> = None;
    let mut migrate_started: Option<Instant> = None;
    let mut completed: Option<(Instant, Value)> = None;
    let mut fio_done: Option<(Side, Instant, String)> = None;
    let mut guest_waits = false;
    let mut typed = false;
    let mut src_quit = false;
    let mut dst_eof = false;
    let mut dst_console = Vec::new();
    let mut last_poll = Instant::now();
    while !dst_eof {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            run.fail(&format!(
                "still running after {} s (migration started: {}, completed: {}, \
                 fio done: {:?})",
                GUEST_TIMEOUT.as_secs(),
                migrate_started.is_some(),
                completed.is_some(),
                fio_done.as_ref().map(|f| f.0)
            ));
        }
        match rx.recv_timeout(left.min(Duration::from_millis(250))) {
            Ok(ConsoleMsg::Line(side, line)) => {
                if side == Side::Dst {
                    dst_console.push(line.clone());
                }
                if line.contains("FAIL:") {
                    println!("{side:?} console: {line}");
                }
                if line.contains("MIGRATE-READY") && side == Side::Src && ready_at.is_none() {
                    ready_at = Some(Instant::now());
                    println!(
                        "{:6.1} s  guest: MIGRATE-READY (fio running); migrating",
                        t0.elapsed().as_secs_f64()
                    );
                    if !mig_sock.exists() {
                        run.fail(&format!(
                            "the destination's -incoming socket {} does not exist",
                            mig_sock.display()
                        ));
                    }
                    src_qmp
                        .execute(
                            "migrate",
                            json!({ "uri": format!("unix:{}", mig_sock.display()) }),
                        )
                        .unwrap_or_else(|e| run.fail(&e));
                    migrate_started = Some(Instant::now());
                } else if line.contains("MIGRATE-FIO-DONE") {
                    println!(
                        "{:6.1} s  guest ({side:?} console): {line}",
                        t0.elapsed().as_secs_f64()
                    );
                    fio_done = Some((side, Instant::now(), line.clone()));
                } else if line.contains("MIGRATE-WAIT") {
                    guest_waits = true;
                } else if line.contains("MIGRATE-UA") || line.contains("GUEST-EXIT-CODE") {
                    println!(
                        "{:6.1} s  guest ({side:?} console): {line}",
                        t0.elapsed().as_secs_f64()
                    );
                }
            }
            Ok(ConsoleMsg::Eof(Side::Dst)) => dst_eof = true,
            Ok(ConsoleMsg::Eof(Side::Src)) => {
                if !src_quit {
                    run.fail(&format!(
                        "the source QEMU's console closed before the migration completed \
                         (QEMU {:?})",
                        src.wait(Duration::from_secs(5))
                    ));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => run.fail("both consoles closed"),
        }
        // Follow the migration.
        if let (Some(started), None) = (migrate_started, &completed) {
            if last_poll.elapsed() >= Duration::from_millis(250) {
                last_poll = Instant::now();
                let q = src_qmp
                    .execute("query-migrate", json!({}))
                    .unwrap_or_else(|e| run.fail(&e));
                match q["status"].as_str().unwrap_or("") {
                    "completed" => {
                        println!(
                            "{:6.1} s  migration completed after {:.1} s: {q}",
                            t0.elapsed().as_secs_f64(),
                            started.elapsed().as_secs_f64()
                        );
                        completed = Some((Instant::now(), q));
                        let st = dst_qmp
                            .execute("query-status", json!({}))
                            .unwrap_or_else(|e| run.fail(&e));
                        println!("destination query-status: {st}");
                        if st["status"] != "running" {
                            run.fail(&format!(
                                "the destination is not running after the migration: {st}"
                            ));
                        }
                        // As an orchestrator does: the source QEMU goes away.
                        let _ = src_qmp.execute("quit", json!({}));
                        src_quit = true;
                    }
                    "failed" | "cancelled" | "cancelling" => {
                        run.fail(&format!("migration {}: {q}", q["status"]))
                    }
                    s => {
                        if started.elapsed() > MIGRATE_TIMEOUT {
                            run.fail(&format!(
                                "migration not completed after {} s (status {s}): {q}",
                                MIGRATE_TIMEOUT.as_secs()
                            ));
                        }
                    }
                }
            }
        }
        if completed.is_some() && guest_waits && !typed {
            dst.type_line("migrated");
            typed = true;
        }
        if let Some(st) = dst.exited() {
            if !dst_eof && completed.is_none() {
                run.fail(&format!(
                    "the destination QEMU exited ({st}) before the migration completed"
                ));
            }
        }
    }
    let dst_status = dst.wait(Duration::from_secs(30));
    let src_status = src.wait(Duration::from_secs(30));
    println!("QEMU exit: source {src_status:?}, destination {dst_status:?}");
    let all = t0.elapsed();

    // The guest's verdict, on the destination console.
    let fails: Vec<&String> = dst_console.iter().filter(|l| l.contains("FAIL:")).collect();
    let exit = dst_console
        .iter()
        .rev()
        .find_map(|l| l.split("GUEST-EXIT-CODE=").nth(1))
        .map(|c| c.trim().to_string());
    let Some((_, q)) = &completed else {
        run.fail("the guest ended before the migration completed")
    };
    match &fio_done {
        Some((Side::Dst, _, _)) => {}
        Some((Side::Src, _, l)) => run.fail(&format!(
            "fio finished on the source, before the migration completed ({l}): \
             raise FIO_RUNTIME_SECS"
        )),
        None => run.fail("the guest never printed MIGRATE-FIO-DONE"),
    }
    if exit.as_deref() != Some("0") || !fails.is_empty() {
        run.fail(&format!(
            "the guest failed on the destination (GUEST-EXIT-CODE={}): {fails:#?}",
            exit.as_deref().unwrap_or("none")
        ));
    }
    if !dst_console.iter().any(|l| l.contains("SUMMARY:")) {
        run.fail("no SUMMARY line from the guest");
    }
    if !matches!(dst_status, Some(s) if s.success()) {
        run.fail(&format!(
            "the destination QEMU did not exit 0 after the guest powered off: {dst_status:?}"
        ));
    }
    let ms = |k: &str| q[k].as_u64().unwrap_or(0);
    let ready = ready_at.unwrap();
    let started = migrate_started.unwrap();
    Report {
        boot: ready.duration_since(t0),
        migrate_wall: completed.as_ref().unwrap().0.duration_since(started),
        total_ms: ms("total-time"),
        downtime_ms: ms("downtime"),
        setup_ms: ms("setup-time"),
        transferred: q["ram"]["transferred"].as_u64().unwrap_or(0),
        fio: fio_done.as_ref().unwrap().1.duration_since(ready),
        all,
        dst_console,
    }
}

fn print_report(test: &str, r: &Report) {
    println!(
        "{test}: boot to MIGRATE-READY {:.1} s; migration {:.1} s (QEMU: total-time {} ms, \
         downtime {} ms, setup-time {} ms, {:.1} MiB transferred); fio {:.1} s; \
         whole guest run {:.1} s",
        r.boot.as_secs_f64(),
        r.migrate_wall.as_secs_f64(),
        r.total_ms,
        r.downtime_ms,
        r.setup_ms,
        r.transferred as f64 / MIB as f64,
        r.fio.as_secs_f64(),
        r.all.as_secs_f64()
    );
}

// ---------------------------------------------------------------- the tests

/// docs/management.md "Live migration", as written, on one daemon: the
/// source and destination controllers share the image and the initiator,
/// so the guest's persistent reservation moves with it.
#[test]
fn guest_e2e_migration_one_daemon() {
    let _guard = lock();
    if !harness_ready("guest_e2e_migration_one_daemon") {
        return;
    }
    let t0 = Instant::now();
    let work = work_dir("guest-e2e-mig-");
    let sockdir = socket_dir("vus-mig-");
    let rpc = sockdir.path().join("rpc.sock");
    let src_sock = sockdir.path().join("vm1.sock");
    let dst_sock = sockdir.path().join("vm1-in.sock");
    let image = sparse_image(&work.path().join("vm1.img"), IMAGE_SIZE);
    let image_s = image.to_str().unwrap();
    let daemon_log = logs_dir().join("migration-one-daemon-daemon.log");
    let mut daemon = Daemon::start(
        &[
            "serve".into(),
            "--rpc-socket".into(),
            rpc.display().to_string(),
        ],
        &daemon_log,
        &[&rpc],
    );
    // The source controller, with the initiator identity (recipe step 1's
    // "the source controller must have been created with --initiator").
    let src_s = src_sock.to_str().unwrap();
    ctl(
        &rpc,
        &[
            "controller_create",
            "--name",
            "vm1",
            "--socket",
            src_s,
            "--num-queues",
            "2",
            "--initiator",
            "vm1-uuid",
        ],
    );
    ctl(
        &rpc,
        &[
            "lun_add",
            "--controller",
            "vm1",
            "--path",
            image_s,
            "--lun",
            "0",
            "--serial",
            "vm1-root",
        ],
    );
    let dst_s = dst_sock.to_str().unwrap();
    let report = migrate_guest(
        &Setup {
            name: "one-daemon",
            src_socket: &src_sock,
            dst_socket: &dst_sock,
            qemu_extra: &[],
            env: "MIG_PR=1\nMIG_PR_KEY=abc123\nMIG_SAME_NEXUS=1",
            daemon_logs: &[&daemon_log],
        },
        work.path(),
        &mut || {
            // Recipe step 1: the destination controller, same disk and
            // initiator; step 2 (the destination QEMU) follows.
            ctl(
                &rpc,
                &[
                    "controller_create",
                    "--name",
                    "vm1-in",
                    "--socket",
                    dst_s,
                    "--num-queues",
                    "2",
                    "--initiator",
                    "vm1-uuid",
                ],
            );
            ctl(
                &rpc,
                &[
                    "lun_add",
                    "--controller",
                    "vm1-in",
                    "--path",
                    image_s,
                    "--lun",
                    "0",
                    "--serial",
                    "vm1-root",
                ],
            );
        },
    );
    daemon.assert_running("after the migration");
    let ua = report
        .dst_console
        .iter()
        .find(|l| l.starts_with("MIGRATE-UA"))
        .cloned()
        .unwrap_or_default();
    println!("guest unit attentions: {ua}");
    daemon.assert_dirty_logging(&src_sock);

    // Recipe step 4: the source controller goes (its QEMU has quit).
    ctl(&rpc, &["controller_delete", "--name", "vm1"]);
    let list = ctl_json(&rpc, &["controller_list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["vm1-in"], "controllers after the delete: {list}");

    // The holder's last write (tests/guest/pr.sh holder_write: pattern 41 of
    // LUN 0 at offset 0, 4 KiB at PR_LBA), made on the destination, is in
    // the image.
    let mut f = File::open(&image).unwrap();
    f.seek(SeekFrom::Start(PR_LBA * 512)).unwrap();
    let mut got = vec![0u8; 4096];
    f.read_exact(&mut got).unwrap();
    assert!(
        got == pattern(41, 0, 0, 4096),
        "the reservation holder's write is not in {} at LBA {PR_LBA}",
        image.display()
    );
    daemon.terminate();
    print_report("guest_e2e_migration_one_daemon", &report);
    println!(
        "guest_e2e_migration_one_daemon: total {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Two hosts sharing storage: two daemon processes, one controller each on
/// the same image, same initiator; `-only-migratable` on both QEMUs. No
/// reservation check: reservations are each daemon's own state.
#[test]
fn guest_e2e_migration_two_daemons() {
    let _guard = lock();
    if !harness_ready("guest_e2e_migration_two_daemons") {
        return;
    }
    let t0 = Instant::now();
    let work = work_dir("guest-e2e-mig-");
    let sockdir = socket_dir("vus-mig-");
    let src_sock = sockdir.path().join("host-a.sock");
    let dst_sock = sockdir.path().join("host-b.sock");
    let image = sparse_image(&work.path().join("shared.img"), IMAGE_SIZE);
    let daemon = |sock: &Path, log: &Path| {
        Daemon::start(
            &[
                "serve".into(),
                "--socket".into(),
                sock.display().to_string(),
                "--disk".into(),
                format!("{},serial=vm1-root", image.display()),
                "--num-queues".into(),
                "2".into(),
                "--initiator".into(),
                "vm1-uuid".into(),
            ],
            log,
            &[sock],
        )
    };
    let log_a = logs_dir().join("migration-two-daemons-daemon-a.log");
    let log_b = logs_dir().join("migration-two-daemons-daemon-b.log");
    let mut host_a = daemon(&src_sock, &log_a);
    let mut host_b = daemon(&dst_sock, &log_b);
    let report = migrate_guest(
        &Setup {
            name: "two-daemons",
            src_socket: &src_sock,
            dst_socket: &dst_sock,
            qemu_extra: &["-only-migratable"],
            env: "MIG_PR=0\nMIG_SAME_NEXUS=0",
            daemon_logs: &[&log_a, &log_b],
        },
        work.path(),
        &mut || {},
    );
    host_a.assert_running("after the migration");
    host_b.assert_running("after the migration");
    host_a.assert_dirty_logging(&src_sock);
    let ua = report
        .dst_console
        .iter()
        .find(|l| l.starts_with("MIGRATE-UA"))
        .cloned()
        .unwrap_or_default();
    println!("guest unit attentions: {ua}");
    host_a.terminate();
    host_b.terminate();
    print_report("guest_e2e_migration_two_daemons", &report);
    println!(
        "guest_e2e_migration_two_daemons: total {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
