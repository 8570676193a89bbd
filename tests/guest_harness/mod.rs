//! What the guest end-to-end tests (tests/guest_e2e*.rs) share: where the
//! repository, the daemon and the logs are, whether the test guest and QEMU
//! are there (skip loudly without them, fail when `CI=true`), one lock so a
//! test binary's guests do not overlap (2 cores, TCG), scratch directories;
//! the daemon process and `ctl` calls ([`daemon`]), a QMP client ([`qmp`]),
//! the QEMU command line, initrds and console readers of the tests that
//! start QEMU themselves.

#![allow(dead_code)]

pub mod daemon;
pub mod qmp;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::Sender;
use std::sync::Mutex;

/// Guest boots of one test binary must not overlap.
static SERIAL: Mutex<()> = Mutex::new(());

/// Hold while a test boots guests.
pub fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Console, QEMU and daemon logs, kept after the test.
pub fn logs_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-e2e-logs");
    fs::create_dir_all(&d).unwrap();
    d
}

/// The daemon binary: $VUS_E2E_DAEMON if set, else this package's binary.
pub fn daemon_binary() -> PathBuf {
    std::env::var_os("VUS_E2E_DAEMON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vhost-user-scsi")))
}

/// Work dir on a real file system (O_DIRECT does not work on tmpfs).
pub fn work_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
}

/// Short directory for sockets (sun_path is 108 bytes).
pub fn socket_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("socket dir")
}

/// A sparse image of `size` bytes at `path`.
pub fn sparse_image(path: &Path, size: u64) -> PathBuf {
    File::create(path)
        .expect("create image")
        .set_len(size)
        .expect("size image");
    path.to_path_buf()
}

/// The last `n` lines of a file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What is missing from the harness, if anything.
pub fn harness_missing() -> Option<String> {
    let guest = repo_root().join("build/guest");
    for f in ["vmlinuz", "initramfs.cpio.gz"] {
        if !guest.join(f).is_file() {
            return Some(format!("{} missing", guest.join(f).display()));
        }
    }
    match Command::new("qemu-system-x86_64").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("qemu-system-x86_64 --version failed: {}", o.status)),
        Err(e) => Some(format!("qemu-system-x86_64 not runnable: {e}")),
    }
}

/// True when the test should run; panics in CI when the harness is missing.
pub fn harness_ready(test: &str) -> bool {
    let Some(why) = harness_missing() else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{test}: guest harness missing ({why}) and CI=true: \
             run scripts/install-deps.sh && scripts/build-guest.sh"
        );
    }
    eprintln!("\n**********************************************************************");
    eprintln!("SKIPPED {test}: guest harness missing ({why})");
    eprintln!("SKIPPED: run scripts/install-deps.sh && scripts/build-guest.sh");
    eprintln!("**********************************************************************\n");
    false
}

/// The bytes tests/guest/lib.sh `pattern SEED LUN OFFSET LEN` generates:
/// 64-byte records "vhost-user-scsi seed=S lun=L pos=P", left-justified in
/// 63 characters plus a newline, P being the record's absolute byte offset.
pub fn pattern(seed: u64, lun: u32, offset: u64, len: u64) -> Vec<u8> {
    use std::fmt::Write as _;
    assert_eq!(len % 64, 0, "pattern length must be a multiple of 64");
    let mut out = String::with_capacity(len as usize);
    for i in 0..len / 64 {
        let rec = format!(
            "vhost-user-scsi seed={seed} lun={lun} pos={}",
            offset + 64 * i
        );
        writeln!(out, "{rec:<63}").unwrap();
    }
    assert_eq!(out.len() as u64, len);
    out.into_bytes()
}

/// What one `scripts/run-guest.sh` run printed.
pub struct GuestRun {
    pub status: std::process::ExitStatus,
    /// The guest console (carriage returns removed).
    pub stdout: String,
    pub stderr: String,
    /// The console's `FAIL:` lines.
    pub fails: Vec<String>,
}

/// Runs `cmd` (a `scripts/run-guest.sh` command line) to its end with no
/// stdin and prints the console, run-guest.sh's stderr and the exit
/// status with the time taken, each headed by `what`.
pub fn run_guest_script(what: &str, cmd: &mut Command) -> GuestRun {
    let start = std::time::Instant::now();
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run scripts/run-guest.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("----- {what}: guest console -----\n{stdout}");
    println!("----- {what}: run-guest.sh stderr -----\n{stderr}");
    println!(
        "----- {what}: {} after {:.1} s",
        out.status,
        start.elapsed().as_secs_f64()
    );
    let fails = stdout
        .lines()
        .filter(|l| l.contains("FAIL:"))
        .map(str::to_owned)
        .collect();
    GuestRun {
        status: out.status,
        stdout,
        stderr,
        fails,
    }
}

/// A `scripts/run-guest.sh` run in the background, its console piped.
pub struct GuestSpawn {
    pub child: Child,
    /// The guest console.
    pub stdout: ChildStdout,
    /// run-guest.sh's --log.
    pub log: PathBuf,
    /// run-guest.sh's stderr.
    pub stderr_log: PathBuf,
}

/// Starts `scripts/run-guest.sh --script SCRIPT --env-file WORK/NAME.env
/// ARGS... --log LOGS/NAME.log BACKEND...` (`script` relative to the
/// repository, `env` written to the env file) with no stdin, its stderr in
/// LOGS/NAME.stderr.log.
pub fn spawn_run_guest(
    name: &str,
    work: &Path,
    script: &str,
    env: &str,
    args: &[String],
    backend: &[String],
) -> GuestSpawn {
    let root = repo_root();
    let env_file = work.join(format!("{name}.env"));
    fs::write(&env_file, env).unwrap();
    let log = logs_dir().join(format!("{name}.log"));
    let stderr_log = logs_dir().join(format!("{name}.stderr.log"));
    let mut child = Command::new(root.join("scripts/run-guest.sh"))
        .current_dir(&root)
        .arg("--script")
        .arg(root.join(script))
        .arg("--env-file")
        .arg(&env_file)
        .args(args)
        .arg("--log")
        .arg(&log)
        .args(backend)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_log).unwrap())
        .spawn()
        .expect("run scripts/run-guest.sh");
    let stdout = child.stdout.take().unwrap();
    GuestSpawn {
        child,
        stdout,
        log,
        stderr_log,
    }
}

/// A QEMU command line: TCG, 2 vCPUs, 512 MiB shared memory, the test
/// guest's kernel with command line `append` and `initrd`,
/// vhost-user-scsi (2 request queues) on `socket` with
/// `reconnect-ms=1000`. The console, QMP and stdio are the caller's.
pub fn qemu_command(initrd: &Path, socket: &Path, append: &str) -> Command {
    let guest = repo_root().join("build/guest");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-smp", "2", "-m", "512M"])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
        .args(["-machine", "pc,memory-backend=mem"])
        .args(["-display", "none", "-no-reboot", "-nodefaults"])
        .arg("-kernel")
        .arg(guest.join("vmlinuz"))
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", append])
        .arg("-chardev")
        .arg(format!(
            "socket,id=vus0,path={},reconnect-ms=1000",
            socket.display()
        ))
        .args([
            "-device",
            "vhost-user-scsi-pci,id=vscsi0,chardev=vus0,num_queues=2",
        ]);
    cmd
}

/// Writes `env` to `env_file` and builds `initrd` with
/// scripts/guest-initrd.sh: the guest initramfs with `script` (relative to
/// the repository) as /test.sh and `env_file` as /test.env.
pub fn guest_initrd(script: &str, env: &str, env_file: &Path, initrd: PathBuf) -> PathBuf {
    let root = repo_root();
    fs::write(env_file, env).unwrap();
    let out = Command::new(root.join("scripts/guest-initrd.sh"))
        .arg("--script")
        .arg(root.join(script))
        .arg("--env-file")
        .arg(env_file)
        .arg("--out")
        .arg(&initrd)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/guest-initrd.sh");
    assert!(
        out.status.success() && initrd.is_file(),
        "scripts/guest-initrd.sh failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    initrd
}

/// Reads a guest console (`out`) line by line on a thread: copies it to
/// `log` if given and sends each line (carriage returns and the newline
/// removed) as `line(text)` to `tx`, then `eof` at its end. Stops when the
/// receiver is gone.
pub fn read_console<M: Send + 'static>(
    out: impl Read + Send + 'static,
    mut log: Option<File>,
    tx: Sender<M>,
    line: impl Fn(String) -> M + Send + 'static,
    eof: M,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some(log) = log.as_mut() {
                        let _ = log.write_all(&buf);
                    }
                    let text = String::from_utf8_lossy(&buf)
                        .replace('\r', "")
                        .trim_end_matches('\n')
                        .to_string();
                    if tx.send(line(text)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(eof);
    });
}
