//! Guest end-to-end tests: a real Linux guest (QEMU, TCG) uses our daemon's
//! disks through the kernel's virtio-scsi driver and real clients (dd with
//! O_DIRECT, fio, ext4, sg3_utils).
//!
//! Needs the harness: `scripts/install-deps.sh && scripts/build-guest.sh`.
//! Without it the tests print "SKIPPED" and pass, except when `CI=true`, where
//! they fail. The in-guest checks are the scripts in `tests/guest/`; see
//! `tests/guest/lib.sh` for the expectations passed through `/test.env`.
//!
//! * `guest_e2e_daemon`: starts `vhost-user-scsi serve` with three disks
//!   (64 MiB/512, 32 MiB/4096, 16 MiB read-only) and `--pr-state`, then:
//!   - boot 1: disks, dd, fio, ext4, sg3_utils basics, thin provisioning
//!     (UNMAP, WRITE SAME, GET LBA STATUS, blkdiscard), VERIFY / WRITE AND
//!     VERIFY / COMPARE AND WRITE, REPORT SUPPORTED OPERATION CODES / TMFs,
//!     MODE SELECT of WCE, malformed CDBs; the host checks that the backing
//!     files hold what the guest wrote and that the unmapped ranges are
//!     holes;
//!   - boot 2 (same daemon): the data of boot 1 reads back; fstrim of the
//!     ext4 file system after deleting a file (the host checks that the
//!     backing file's allocation shrank); persistent reservations, ending
//!     with an APTPL registration + reservation; a LOGICAL UNIT RESET while
//!     fio runs;
//!   - SIGTERM (exit 0, socket removed), a new daemon on the same socket and
//!     `--pr-state`; boot 3: the data and the APTPL reservation are still
//!     there (then cleared); SIGTERM again.
//! * `guest_e2e_hotplug`: one daemon with `--rpc-socket` and a `--config`
//!   of two controllers (vm-a: LUN 0 64 MiB, 2 queues; vm-b: LUN 0 32 MiB);
//!   guests A and B boot at the same time (tests/guest/hotplug.sh). The
//!   host follows guest A's console and answers its `HOTPLUG-WAIT` markers
//!   with `ctl`: lun_add of a 48 MiB LUN 1 (it appears in the guest by
//!   itself, through the event queue; dd + fio on it), lun_resize to 96 MiB
//!   (the new capacity shows up by itself), lun_remove (the disk goes
//!   away; LUN 0 keeps working). Guest B does dd + fio rounds on its LUN 0
//!   all along, until the host adds a LUN to vm-b as its stop signal.
//!   Meanwhile controller_list (both connected) and stats (I/O on vm-a LUN
//!   1); afterwards the backing files hold the guests' dd data and SIGTERM
//!   ends the daemon (exit 0, every socket removed).
//! * `guest_e2e_builtin_reference` (`--ignored`): the same guest checks
//!   against QEMU's own virtio-scsi + scsi-hd, to tell harness bugs from
//!   daemon bugs.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

mod guest_harness;
use guest_harness::daemon::{ctl_stdout, Daemon};
use guest_harness::{
    harness_ready, lock, logs_dir, pattern, read_console, repo_root, run_guest_script,
    sparse_image, spawn_run_guest, work_dir,
};

const MIB: u64 = 1024 * 1024;
const SEED: u64 = 20240601;
const GUEST_TIMEOUT_SECS: u32 = 300;

struct Disk {
    lun: u32,
    size: u64,
    block_size: u32,
    readonly: bool,
    serial: &'static str,
}

const DISKS: [Disk; 3] = [
    Disk {
        lun: 0,
        size: 64 * MIB,
        block_size: 512,
        readonly: false,
        serial: "vus-lun0",
    },
    Disk {
        lun: 1,
        size: 32 * MIB,
        block_size: 4096,
        readonly: false,
        serial: "vus-lun1",
    },
    Disk {
        lun: 2,
        size: 16 * MIB,
        block_size: 512,
        readonly: true,
        serial: "vus-lun2",
    },
];

/// (lun, byte offset, length) written by the guest with O_DIRECT dd: start,
/// an odd block in the middle, the last block. LUN 0: fio uses 16..48 MiB.
/// LUN 1: ext4 uses the first 16 MiB.
const DD_WRITES: [(u32, u64, u64); 6] = [
    (0, 0, 65536),
    (0, 12345 * 512, 65536),
    (0, 64 * MIB - 512, 512),
    (1, 16 * MIB, 65536),
    (1, 16 * MIB + 1513 * 4096, 8192),
    (1, 32 * MIB - 4096, 4096),
];

/// (lun, byte offset, length) written by the host into the read-only image
/// before the boot and read back by the guest.
const DD_HOST_WRITTEN: [(u32, u64, u64); 2] = [(2, 4096, 65536), (2, 16 * MIB - 512, 512)];

fn regions(list: &[(u32, u64, u64)]) -> String {
    list.iter()
        .map(|(l, o, n)| format!("{l}:{o}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// LUN 0 scratch areas (512-byte LBAs) of the provision, verify, wce,
/// badcdb and pr guest tests and the reset test's fio region: clear of
/// DD_WRITES and of the fio test (16..48 MiB).
const PROV_LBA: u64 = 16384;
const GUEST_LBAS: &str = "PROV_LUN=0\nVERIFY_LUN=0\nVERIFY_LBA=20480\n\
    WCE_LUN=0\nWCE_LBA=22528\nBADCDB_LUN=0\nBADCDB_LBA=23552\nPR_LUN=0\nPR_LBA=24576\n\
    RESET_LUN=0\nRESET_OFFSET=48M\nRESET_SIZE=8M\nRESET_RUNTIME=4";

/// /test.env for the guest scripts; `extra` lines are appended.
fn guest_env(tests: &str, dd_mode: &str, extra: &str) -> String {
    let mut env = String::new();
    writeln!(env, "EXPECT_DISKS={}", DISKS.len()).unwrap();
    let luns: Vec<String> = DISKS.iter().map(|d| d.lun.to_string()).collect();
    writeln!(env, "LUNS=\"{}\"", luns.join(" ")).unwrap();
    for d in &DISKS {
        writeln!(env, "LUN{}_SIZE={}", d.lun, d.size).unwrap();
        writeln!(env, "LUN{}_BS={}", d.lun, d.block_size).unwrap();
        writeln!(env, "LUN{}_RO={}", d.lun, u8::from(d.readonly)).unwrap();
        writeln!(env, "LUN{}_SERIAL={}", d.lun, d.serial).unwrap();
    }
    writeln!(env, "TESTS=\"{tests}\"").unwrap();
    writeln!(env, "DD_SEED={SEED}").unwrap();
    writeln!(env, "DD_MODE={dd_mode}").unwrap();
    writeln!(env, "DD_WRITES=\"{}\"", regions(&DD_WRITES)).unwrap();
    writeln!(env, "DD_VERIFY=\"{}\"", regions(&DD_HOST_WRITTEN)).unwrap();
    writeln!(env, "FIO_LUN=0\nFIO_OFFSET=16M\nFIO_SIZE=16M").unwrap();
    writeln!(env, "EXT4_LUN=1\nEXT4_SIZE=16M").unwrap();
    writeln!(env, "{GUEST_LBAS}\nPROV_LBA={PROV_LBA}").unwrap();
    writeln!(env, "{extra}").unwrap();
    env
}

/// Backing images in `dir`: sparse, the read-only one with host-written data.
fn create_images(dir: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for d in &DISKS {
        let path = dir.join(format!("lun{}.img", d.lun));
        let f = File::create(&path).expect("create image");
        f.set_len(d.size).expect("size image");
        for &(lun, off, len) in &DD_HOST_WRITTEN {
            if lun == d.lun {
                let mut f = OpenOptions::new().write(true).open(&path).unwrap();
                f.seek(SeekFrom::Start(off)).unwrap();
                f.write_all(&pattern(SEED, lun, off, len)).unwrap();
                f.sync_all().unwrap();
            }
        }
        paths.push(path);
    }
    paths
}

/// Host-side check: the backing files hold the guest's dd pattern.
fn check_backing_files(images: &[PathBuf]) {
    for &(lun, off, len) in &DD_WRITES {
        let mut f = File::open(&images[lun as usize]).expect("open image");
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut got = vec![0u8; len as usize];
        f.read_exact(&mut got).expect("read image");
        let want = pattern(SEED, lun, off, len);
        if got != want {
            let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!(
                "backing file of lun {lun} differs from the guest's dd pattern at \
                 byte {} (region off {off} len {len}): got {:?}..., want {:?}...",
                off + first as u64,
                String::from_utf8_lossy(&got[first..(first + 64).min(got.len())]),
                String::from_utf8_lossy(&want[first..(first + 64).min(want.len())]),
            );
        }
    }
}

/// Boots one guest running tests/guest/all.sh; panics unless it exits 0.
/// Returns the guest console output.
fn run_guest(what: &str, work: &Path, env: &str, backend_args: &[String]) -> String {
    let root = repo_root();
    let env_file = work.join(format!("{what}.env"));
    fs::write(&env_file, env).unwrap();
    let log = logs_dir().join(format!("{what}.log"));
    let out = run_guest_script(
        what,
        Command::new(root.join("scripts/run-guest.sh"))
            .current_dir(&root)
            .arg("--script")
            .arg(root.join("tests/guest/all.sh"))
            .arg("--env-file")
            .arg(&env_file)
            .arg("--timeout")
            .arg(GUEST_TIMEOUT_SECS.to_string())
            .arg("--log")
            .arg(&log)
            .args(backend_args),
    );
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    let fails = &out.fails;
    assert!(
        out.status.success(),
        "{what}: guest run failed ({}), log {}:\n{}\n{}",
        describe(out.status),
        log.display(),
        fails.join("\n"),
        stderr
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert!(
        stdout.contains("SUMMARY:"),
        "{what}: no SUMMARY line from the guest"
    );
    assert!(
        fails.is_empty(),
        "{what}: exit 0 but FAIL lines:\n{}",
        fails.join("\n")
    );
    out.stdout
}

/// Bytes allocated to a file (st_blocks * 512).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

/// True when `[start, end)` of the file holds no data (SEEK_DATA).
fn is_hole(path: &Path, start: u64, end: u64) -> bool {
    use std::os::fd::AsRawFd;
    let f = File::open(path).unwrap();
    // SAFETY: lseek on a file descriptor we own; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), start as libc::off_t, libc::SEEK_DATA) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "SEEK_DATA: {e}");
        return true;
    }
    r as u64 >= end
}

/// Host side of tests/guest/provision.sh (LUN 0, 512-byte blocks from
/// PROV_LBA): the UNMAP, WRITE SAME UNMAP and blkdiscard ranges are holes
/// in the backing file; the kept pattern and the WRITE SAME(10) blocks are
/// there.
fn check_provisioned(image: &Path, console: &str) {
    assert!(
        console.contains(&format!("PROV-DONE lun=0 lba={PROV_LBA}")),
        "the guest's provision test did not finish"
    );
    let b = |lba: u64| (PROV_LBA + lba) * 512;
    for (from, to, what) in [
        (64, 128, "UNMAP"),
        (192, 240, "WRITE SAME(16)/(10) with UNMAP"),
        (256, 512, "blkdiscard"),
    ] {
        assert!(
            is_hole(image, b(from), b(to)),
            "{what}: bytes {}..{} of {} are not a hole",
            b(from),
            b(to),
            image.display()
        );
    }
    let mut f = File::open(image).unwrap();
    let mut got = vec![0u8; 64 * 512];
    f.seek(SeekFrom::Start(b(0))).unwrap();
    f.read_exact(&mut got).unwrap();
    assert!(
        got == pattern(11, 0, b(0), 64 * 512),
        "the pattern before the unmapped range is not in the backing file"
    );
    let block = pattern(12, 0, 0, 512);
    let mut got = vec![0u8; 32 * 512];
    f.seek(SeekFrom::Start(b(128))).unwrap();
    f.read_exact(&mut got).unwrap();
    assert!(
        got.chunks(512).all(|c| c == &block[..]),
        "the WRITE SAME(10) block is not in the backing file"
    );
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(124) => "timeout, exit 124".into(),
        Some(125) => "guest did not report, exit 125".into(),
        Some(c) => format!("exit {c}"),
        None => format!("{status}"),
    }
}

impl Daemon {
    /// SIGTERM, wait up to 10 s.
    fn terminate(&mut self) -> ExitStatus {
        self.try_terminate().unwrap_or_else(|| {
            panic!(
                "daemon did not exit within 10 s of SIGTERM; its log:\n{}",
                self.log_text()
            )
        })
    }
}

fn start_daemon(images: &[PathBuf], socket: &Path, log: &Path, pr_state: Option<&Path>) -> Daemon {
    let mut args: Vec<OsString> = vec!["serve".into(), "--socket".into(), socket.into()];
    if let Some(dir) = pr_state {
        args.extend(["--pr-state".into(), dir.into()]);
    }
    for (d, img) in DISKS.iter().zip(images) {
        let mut spec = img.display().to_string();
        if d.block_size != 512 {
            write!(spec, ",block-size={}", d.block_size).unwrap();
        }
        if d.readonly {
            spec.push_str(",readonly");
        }
        write!(spec, ",serial={}", d.serial).unwrap();
        args.extend(["--disk".into(), spec.into()]);
    }
    args.extend(["--num-queues".into(), "2".into()]);
    Daemon::start(&args, log, &[socket])
}

#[test]
fn guest_e2e_daemon() {
    let _guard = lock();
    if !harness_ready("guest_e2e_daemon") {
        return;
    }
    let work = work_dir("guest-e2e-");
    // Short path for the socket (sun_path is 108 bytes).
    let sockdir = tempfile::Builder::new().prefix("vus-").tempdir().unwrap();
    let socket = sockdir.path().join("vus.sock");
    let images = create_images(work.path());
    let pr_state = work.path().join("pr-state");
    fs::create_dir(&pr_state).unwrap();
    let mut daemon = start_daemon(
        &images,
        &socket,
        &logs_dir().join("daemon.log"),
        Some(&pr_state),
    );
    let backend = vec![
        "--vhost-socket".to_string(),
        format!("{},num-queues=2", socket.display()),
    ];
    let mut times = Vec::new();

    // Boot 1: every check that writes new data.
    let t = Instant::now();
    let console = run_guest(
        "daemon-boot1",
        work.path(),
        &guest_env(
            "disks dd fio ext4 sg provision verify opcodes wce badcdb",
            "write",
            "",
        ),
        &backend,
    );
    times.push(("boot1", t.elapsed()));
    daemon.assert_running("after the first guest shut down");
    check_backing_files(&images);
    check_provisioned(&images[0], &console);
    // LUN 1 holds the ext4 file system with the 4 MiB file "big".
    let before_trim = allocated(&images[1]);

    // Boot 2 (guest restart, same daemon): the data of boot 1 reads back;
    // fstrim; persistent reservations (leaving an APTPL one); LUN reset.
    let t = Instant::now();
    let console = run_guest(
        "daemon-boot2",
        work.path(),
        &guest_env(
            "disks dd sg trim pr reset",
            "verify",
            "PR_STEPS=\"basic aptpl\"",
        ),
        &backend,
    );
    times.push(("boot2", t.elapsed()));
    daemon.assert_running("after the second guest shut down");
    check_backing_files(&images);
    assert!(
        console.contains("TRIM-DONE lun=1"),
        "the guest's trim test did not finish"
    );
    let after_trim = allocated(&images[1]);
    println!(
        "lun 1 backing file allocation: {before_trim} bytes before fstrim, {after_trim} after"
    );
    assert!(
        after_trim + 3 * MIB <= before_trim,
        "fstrim in the guest did not shrink the backing file: {before_trim} -> {after_trim} bytes allocated"
    );
    assert!(
        console.contains("PR-APTPL lun=0 key=0xa1b2c3"),
        "the guest's APTPL reservation step did not finish"
    );
    let saved = fs::read_dir(&pr_state).unwrap().count();
    assert!(saved > 0, "no PR state saved in {}", pr_state.display());

    // SIGTERM: clean exit, socket removed.
    let st = daemon.terminate();
    let log = daemon.log_text();
    assert!(
        st.success(),
        "daemon exited {st} after SIGTERM; log:\n{log}"
    );
    assert!(
        !socket.exists(),
        "daemon did not remove its socket {} on SIGTERM",
        socket.display()
    );

    // Boot 3 on a new daemon (same socket, same --pr-state): the data and
    // the APTPL reservation are still there; then it is cleared.
    let mut daemon = start_daemon(
        &images,
        &socket,
        &logs_dir().join("daemon-restarted.log"),
        Some(&pr_state),
    );
    let t = Instant::now();
    run_guest(
        "daemon-boot3",
        work.path(),
        &guest_env("disks dd pr", "verify", "PR_STEPS=restored"),
        &backend,
    );
    times.push(("boot3", t.elapsed()));
    daemon.assert_running("after the third guest shut down");
    check_backing_files(&images);
    let st = daemon.terminate();
    let log = daemon.log_text();
    assert!(
        st.success(),
        "restarted daemon exited {st} after SIGTERM; log:\n{log}"
    );
    assert!(
        !socket.exists(),
        "socket left behind by the restarted daemon"
    );
    for (what, d) in &times {
        println!("guest_e2e_daemon {what}: {:.1} s", d.as_secs_f64());
    }
}

/// Reference run of the same guest checks on QEMU's built-in virtio-scsi
/// (scsi-hd on one virtio-scsi-pci controller, target 0, LUNs 0..2): proves the
/// harness, not our daemon. `cargo test --test guest_e2e -- --ignored`.
#[test]
#[ignore = "harness reference on QEMU's built-in virtio-scsi; run with --ignored"]
fn guest_e2e_builtin_reference() {
    let _guard = lock();
    if !harness_ready("guest_e2e_builtin_reference") {
        return;
    }
    let work = work_dir("guest-e2e-");
    let images = create_images(work.path());
    let mut backend = vec!["--num-queues".to_string(), "2".to_string()];
    for (d, img) in DISKS.iter().zip(&images) {
        let mut spec = format!("{},bs={},serial={}", img.display(), d.block_size, d.serial);
        if d.readonly {
            spec.push_str(",readonly");
        }
        backend.push("--builtin-disk".into());
        backend.push(spec);
    }
    run_guest(
        "builtin-boot1",
        work.path(),
        &guest_env("disks dd fio ext4 sg", "write", ""),
        &backend,
    );
    check_backing_files(&images);
    run_guest(
        "builtin-boot2",
        work.path(),
        &guest_env("disks dd sg", "verify", ""),
        &backend,
    );
    check_backing_files(&images);
}

#[test]
fn pattern_matches_guest_format() {
    // Same bytes as tests/guest/lib.sh `pattern 42 0 0 128`.
    let p = pattern(42, 0, 0, 128);
    let want = format!(
        "{:<63}\n{:<63}\n",
        "vhost-user-scsi seed=42 lun=0 pos=0", "vhost-user-scsi seed=42 lun=0 pos=64"
    );
    assert_eq!(p, want.as_bytes());
}

// ---------------------------------------------------------------- hotplug

const HP_SEED_A: u64 = 31;
const HP_SEED_B: u64 = 32;
/// Guest A's LUN 1 (hot-added): size when added and after lun_resize.
const HP_NEW_SIZE: u64 = 48 * MIB;
const HP_RESIZED: u64 = 96 * MIB;
/// dd regions (lun, offset, len) of guest A: LUN 1 after the add, LUN 1
/// after the resize (the grown part), LUN 0 after the removal. fio uses
/// 8..16 MiB of LUN 1.
const HP_DD_NEW: [(u32, u64, u64); 3] = [
    (1, 0, 65536),
    (1, 20 * MIB + 3 * 4096, 8192),
    (1, HP_NEW_SIZE - 4096, 4096),
];
const HP_DD_GROWN: [(u32, u64, u64); 2] = [(1, HP_NEW_SIZE, 65536), (1, HP_RESIZED - 4096, 4096)];
const HP_DD_BASE_A: [(u32, u64, u64); 2] = [(0, 0, 65536), (0, 12345 * 512, 65536)];
/// Guest B's dd regions on its LUN 0; its fio rounds use 8..16 MiB.
const HP_DD_BASE_B: [(u32, u64, u64); 2] = [(0, 0, 65536), (0, 32 * MIB - 4096, 4096)];

/// Which guest a console line came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    A,
    B,
}

enum ConsoleMsg {
    Line(Who, String),
    Eof(Who),
}

/// A run-guest.sh process whose console is read line by line by a thread;
/// SIGTERM (run-guest.sh then kills its QEMU) on drop if still running.
struct GuestProc {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    stderr_log: PathBuf,
}

impl GuestProc {
    fn spawn(
        who: Who,
        name: &'static str,
        work: &Path,
        env: &str,
        backend: &[String],
        tx: std::sync::mpsc::Sender<ConsoleMsg>,
    ) -> GuestProc {
        let g = spawn_run_guest(
            name,
            work,
            "tests/guest/hotplug.sh",
            env,
            &[
                "--mem".into(),
                "384M".into(),
                "--timeout".into(),
                GUEST_TIMEOUT_SECS.to_string(),
            ],
            backend,
        );
        read_console(
            g.stdout,
            None,
            tx,
            move |line| ConsoleMsg::Line(who, line),
            ConsoleMsg::Eof(who),
        );
        GuestProc {
            name,
            child: Some(g.child),
            log: g.log,
            stderr_log: g.stderr_log,
        }
    }

    fn wait(&mut self) -> ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }

    fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for GuestProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
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

/// `vhost-user-scsi ctl --rpc-socket RPC ARGS...`: its stdout; panics on
/// failure.
fn ctl(rpc: &Path, args: &[&str]) -> String {
    let t = Instant::now();
    let stdout = ctl_stdout(rpc, args);
    if !args.contains(&"--json") {
        print!("ctl {}: {stdout}", args.join(" "));
    }
    println!(
        "ctl {} took {:.3} s",
        args.first().unwrap_or(&""),
        t.elapsed().as_secs_f64()
    );
    stdout
}

fn ctl_json(rpc: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(rpc, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctl {args:?}: bad JSON ({e}): {out}"))
}

/// The entry of `list` whose `key` equals `value`.
fn find_by<'a>(
    list: &'a serde_json::Value,
    key: &str,
    value: serde_json::Value,
) -> &'a serde_json::Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .find(|e| e[key] == value)
        .unwrap_or_else(|| panic!("no entry with {key} = {value} in {list}"))
}

/// The LUN numbers of controller `name` in `controller_list --json`.
fn listed_luns(list: &serde_json::Value, name: &str) -> Vec<u64> {
    let c = find_by(list, "name", name.into());
    c["luns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lun"].as_u64().unwrap())
        .collect()
}

/// The config file of guest_e2e_hotplug: two controllers, LUN 0 each.
fn hotplug_config(sock_a: &Path, sock_b: &Path, img_a0: &Path, img_b0: &Path) -> String {
    format!(
        "[[controller]]\nname = \"vm-a\"\nsocket = \"{}\"\nnum_queues = 2\nqueue_size = 128\n\
         [[controller.lun]]\nlun = 0\npath = \"{}\"\nserial = \"hp-a0\"\n\n\
         [[controller]]\nname = \"vm-b\"\nsocket = \"{}\"\nnum_queues = 1\nqueue_size = 128\n\
         [[controller.lun]]\nlun = 0\npath = \"{}\"\nserial = \"hp-b0\"\n",
        sock_a.display(),
        img_a0.display(),
        sock_b.display(),
        img_b0.display()
    )
}

/// Host-side check: `image` holds guest dd pattern `seed` in `regions`.
fn check_pattern(image: &Path, seed: u64, regions: &[(u32, u64, u64)]) {
    let mut f = File::open(image).expect("open image");
    for &(lun, off, len) in regions {
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut got = vec![0u8; len as usize];
        f.read_exact(&mut got).expect("read image");
        let want = pattern(seed, lun, off, len);
        if got != want {
            let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!(
                "{} differs from the guest's dd pattern at byte {} (region off {off} len {len}): \
                 got {:?}..., want {:?}...",
                image.display(),
                off + first as u64,
                String::from_utf8_lossy(&got[first..(first + 64).min(got.len())]),
                String::from_utf8_lossy(&want[first..(first + 64).min(want.len())]),
            );
        }
    }
}

/// Two guests at once on two controllers of one daemon started with
/// `--config` and `--rpc-socket`. Guest A (vm-a, 2 queues): `ctl lun_add`
/// of LUN 1 appears by itself (event queue, no rescan in the guest), dd +
/// fio on it; `ctl lun_resize` to 96 MiB shows up by itself; `ctl
/// lun_remove` makes it disappear while LUN 0 keeps working. Guest B
/// (vm-b) does dd + fio rounds on its LUN 0 all along, until the host adds
/// a LUN to vm-b as the stop signal. Meanwhile: controller_list (both
/// connected) and stats (I/O on vm-a LUN 1). Then SIGTERM: exit 0, all
/// sockets removed.
#[test]
fn guest_e2e_hotplug() {
    let _guard = lock();
    if !harness_ready("guest_e2e_hotplug") {
        return;
    }
    let t0 = Instant::now();
    let work = work_dir("guest-e2e-");
    let sockdir = tempfile::Builder::new().prefix("vus-").tempdir().unwrap();
    let sock_a = sockdir.path().join("a.sock");
    let sock_b = sockdir.path().join("b.sock");
    let rpc = sockdir.path().join("rpc.sock");
    let img_a0 = sparse_image(&work.path().join("a0.img"), 64 * MIB);
    let img_a1 = sparse_image(&work.path().join("a1.img"), HP_NEW_SIZE);
    let img_b0 = sparse_image(&work.path().join("b0.img"), 32 * MIB);
    let img_b1 = sparse_image(&work.path().join("b1.img"), 16 * MIB);
    let config = work.path().join("config.toml");
    fs::write(&config, hotplug_config(&sock_a, &sock_b, &img_a0, &img_b0)).unwrap();

    let log = logs_dir().join("daemon-hotplug.log");
    let args: [OsString; 5] = [
        "serve".into(),
        "--rpc-socket".into(),
        (&rpc).into(),
        "--config".into(),
        (&config).into(),
    ];
    let mut daemon = Daemon::start(&args, &log, &[&sock_a, &sock_b, &rpc]);
    let list = ctl_json(&rpc, &["controller_list"]);
    assert_eq!(listed_luns(&list, "vm-a"), [0]);
    assert_eq!(listed_luns(&list, "vm-b"), [0]);

    let common = "EXPECT_DISKS=1\nHP_WAIT=60\nFIO_OFFSET=8M\nFIO_SIZE=4M\n";
    let env_a = format!(
        "{common}HP_ROLE=a\nDD_SEED={HP_SEED_A}\nHP_BASE_SERIAL=hp-a0\nHP_NEW_SERIAL=hp-a1\n\
         HP_NEW_LUN=1\nHP_NEW_SIZE={HP_NEW_SIZE}\nHP_RESIZED={HP_RESIZED}\n\
         HP_DD_NEW=\"{}\"\nHP_DD_GROWN=\"{}\"\nHP_DD_BASE=\"{}\"\n",
        regions(&HP_DD_NEW),
        regions(&HP_DD_GROWN),
        regions(&HP_DD_BASE_A)
    );
    let env_b = format!(
        "{common}HP_ROLE=b\nDD_SEED={HP_SEED_B}\nHP_BASE_SERIAL=hp-b0\nHP_NEW_SERIAL=hp-b1\n\
         HP_NEW_LUN=1\nHP_NEW_SIZE={}\nHP_DD_BASE=\"{}\"\nHP_MAX_ROUNDS=100\n",
        16 * MIB,
        regions(&HP_DD_BASE_B)
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let boot = Instant::now();
    let mut guest_a = GuestProc::spawn(
        Who::A,
        "hotplug-a",
        work.path(),
        &env_a,
        &[
            "--vhost-socket".into(),
            format!("{},num-queues=2", sock_a.display()),
        ],
        tx.clone(),
    );
    let mut guest_b = GuestProc::spawn(
        Who::B,
        "hotplug-b",
        work.path(),
        &env_b,
        &[
            "--vhost-socket".into(),
            format!("{},num-queues=1", sock_b.display()),
        ],
        tx,
    );

    // Host side of the hotplug steps, driven by the guests' console markers.
    let mut console_a = Vec::new();
    let mut console_b = Vec::new();
    let mut eof = (false, false);
    let mut a_waits_add = false;
    let mut b_io_started = false;
    let mut added = false;
    let mut stopped_b = false;
    let mut a_done = false;
    let mut acted: Vec<(&str, Instant)> = Vec::new();
    let mut timings: Vec<String> = Vec::new();
    let mut stats_checked = false;
    let mut list_checked = false;
    let guest_deadline = Instant::now() + Duration::from_secs(u64::from(GUEST_TIMEOUT_SECS) + 30);
    let stamp = |what: &str| {
        let s = format!("{:6.1} s  {what}", boot.elapsed().as_secs_f64());
        println!("hotplug: {s}");
        s
    };
    while !(eof.0 && eof.1) {
        let left = guest_deadline.saturating_duration_since(Instant::now());
        let msg = rx.recv_timeout(left).unwrap_or_else(|e| {
            panic!("guests still running after {GUEST_TIMEOUT_SECS} s + 30 s: {e}")
        });
        match msg {
            ConsoleMsg::Line(Who::A, line) => {
                if line.contains("HOTPLUG-WAIT add") {
                    timings.push(stamp("guest A waits for the add"));
                    a_waits_add = true;
                } else if line.contains("HOTPLUG-WAIT resize") {
                    timings.push(stamp("guest A waits for the resize"));
                    // Both guests are running: both controllers connected.
                    let list = ctl_json(&rpc, &["controller_list"]);
                    for name in ["vm-a", "vm-b"] {
                        let c = find_by(&list, "name", name.into());
                        assert_eq!(
                            c["connected"],
                            serde_json::Value::Bool(true),
                            "{name} not connected while its guest runs: {c}"
                        );
                    }
                    assert_eq!(listed_luns(&list, "vm-a"), [0, 1]);
                    assert_eq!(listed_luns(&list, "vm-b"), [0]);
                    list_checked = true;
                    // Guest A's dd and fio on LUN 1 went through the daemon.
                    let stats = ctl_json(&rpc, &["stats"]);
                    let c = find_by(&stats["controllers"], "name", "vm-a".into());
                    let l = find_by(&c["luns"], "lun", 1.into());
                    println!("stats of vm-a lun 1 before the resize: {l}");
                    for k in ["reads", "writes", "read_bytes", "write_bytes"] {
                        assert!(
                            l[k].as_u64().unwrap_or(0) > 0,
                            "stats: vm-a lun 1 {k} is not > 0 after the guest's dd and fio: {l}"
                        );
                    }
                    // One CHECK CONDITION is expected: the new LUN's
                    // power-on unit attention, taken by the kernel's scan.
                    assert!(
                        l["errors"].as_u64().is_some_and(|e| e <= 1),
                        "stats: vm-a lun 1 errors (> 1: more than the power-on unit attention): {l}"
                    );
                    stats_checked = true;
                    ctl(
                        &rpc,
                        &[
                            "lun_resize",
                            "--controller",
                            "vm-a",
                            "--lun",
                            "1",
                            "--size",
                            "96M",
                        ],
                    );
                    acted.push(("resize", Instant::now()));
                    timings.push(stamp("ctl lun_resize vm-a 1 96M done"));
                } else if line.contains("HOTPLUG-WAIT remove") {
                    timings.push(stamp("guest A waits for the removal"));
                    ctl(&rpc, &["lun_remove", "--controller", "vm-a", "--lun", "1"]);
                    acted.push(("remove", Instant::now()));
                    timings.push(stamp("ctl lun_remove vm-a 1 done"));
                } else if line.contains("HOTPLUG-SEEN") {
                    let step = line.split_whitespace().nth(1).unwrap_or("?").to_string();
                    let since = acted
                        .iter()
                        .rev()
                        .find(|(s, _)| *s == step)
                        .map(|(_, t)| {
                            format!(", {:.1} s after the ctl command", t.elapsed().as_secs_f64())
                        })
                        .unwrap_or_default();
                    timings.push(stamp(&format!("guest A: {}{since}", line.trim())));
                } else if line.contains("HOTPLUG-DONE") {
                    timings.push(stamp("guest A done"));
                    a_done = true;
                    let list = ctl_json(&rpc, &["controller_list"]);
                    assert_eq!(listed_luns(&list, "vm-a"), [0]);
                }
                console_a.push(line);
            }
            ConsoleMsg::Line(Who::B, line) => {
                if line.contains("HOTPLUG-B-IO") {
                    timings.push(stamp(&format!("guest B: {}", line.trim())));
                    b_io_started = true;
                }
                console_b.push(line);
            }
            ConsoleMsg::Eof(who) => {
                timings.push(stamp(&format!("guest {who:?}: console closed")));
                match who {
                    Who::A => eof.0 = true,
                    Who::B => {
                        eof.1 = true;
                        b_io_started = true;
                    }
                }
            }
        }
        // Add only once guest B does I/O, so that it runs all along.
        if a_waits_add && b_io_started && !added {
            ctl(
                &rpc,
                &[
                    "lun_add",
                    "--controller",
                    "vm-a",
                    "--path",
                    img_a1.to_str().unwrap(),
                    "--lun",
                    "1",
                    "--serial",
                    "hp-a1",
                ],
            );
            acted.push(("add", Instant::now()));
            timings.push(stamp("ctl lun_add vm-a 1 done"));
            added = true;
        }
        // Guest A finished (or failed): stop guest B's I/O rounds.
        if !stopped_b && !eof.1 && (a_done || eof.0) {
            ctl(
                &rpc,
                &[
                    "lun_add",
                    "--controller",
                    "vm-b",
                    "--path",
                    img_b1.to_str().unwrap(),
                    "--lun",
                    "1",
                    "--serial",
                    "hp-b1",
                ],
            );
            timings.push(stamp("ctl lun_add vm-b 1 (guest B's stop signal) done"));
            stopped_b = true;
        }
    }
    let st_a = guest_a.wait();
    let st_b = guest_b.wait();
    let both = boot.elapsed();
    for (g, console, st) in [(&guest_a, &console_a, st_a), (&guest_b, &console_b, st_b)] {
        println!(
            "----- {}: guest console -----\n{}",
            g.name,
            console.join("\n")
        );
        println!(
            "----- {}: run-guest.sh stderr -----\n{}",
            g.name,
            g.stderr_text()
        );
        println!("----- {}: {st}", g.name);
    }
    println!("----- daemon log -----\n{}", daemon.log_text());
    for (g, console, st) in [(&guest_a, &console_a, st_a), (&guest_b, &console_b, st_b)] {
        let fails: Vec<&String> = console.iter().filter(|l| l.contains("FAIL:")).collect();
        assert!(
            st.success(),
            "{}: guest run failed ({}), log {}: {fails:?}",
            g.name,
            describe(st),
            g.log.display()
        );
        assert!(
            console.iter().any(|l| l.contains("SUMMARY:")),
            "{}: no SUMMARY line",
            g.name
        );
        assert!(
            fails.is_empty(),
            "{}: exit 0 but FAIL lines: {fails:?}",
            g.name
        );
    }
    assert!(
        added && list_checked && stats_checked,
        "not every hotplug step ran"
    );
    assert!(a_done, "guest A did not finish its hotplug steps");
    daemon.assert_running("after the guests shut down");

    // The backing files hold what the guests wrote; LUN 1 grew to 96 MiB.
    check_pattern(&img_a1, HP_SEED_A, &HP_DD_NEW);
    check_pattern(&img_a1, HP_SEED_A, &HP_DD_GROWN);
    check_pattern(&img_a0, HP_SEED_A, &HP_DD_BASE_A);
    check_pattern(&img_b0, HP_SEED_B, &HP_DD_BASE_B);
    assert_eq!(fs::metadata(&img_a1).unwrap().len(), HP_RESIZED);

    let st = daemon.terminate();
    assert!(
        st.success(),
        "daemon exited {st} after SIGTERM; log:\n{}",
        daemon.log_text()
    );
    for s in [&sock_a, &sock_b, &rpc] {
        assert!(
            !s.exists(),
            "daemon left {} behind after SIGTERM",
            s.display()
        );
    }
    for t in &timings {
        println!("guest_e2e_hotplug {t}");
    }
    println!(
        "guest_e2e_hotplug: both guests {:.1} s, total {:.1} s",
        both.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
