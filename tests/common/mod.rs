//! Shared helpers for host integration tests: start the daemon on temp
//! images and connect the frontend.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhost_user_scsi::frontend::{cdb, DataDir, FrontendConfig, ScsiFrontend};

/// A running daemon; killed (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

/// Create a file of `len` bytes in `dir`.
pub fn image(dir: &Path, name: &str, len: u64) -> PathBuf {
    let p = dir.join(name);
    let f = fs::File::create(&p).unwrap();
    f.set_len(len).unwrap();
    p
}

impl Daemon {
    /// Start `serve` with `disks` (specs, relative names resolved in the
    /// temp dir after `setup` created them) and extra args.
    pub fn start(setup: impl FnOnce(&Path) -> Vec<String>, extra: &[&str]) -> Daemon {
        Daemon::start_with(
            |dir| {
                let mut a = vec![
                    "--socket".to_string(),
                    dir.join("vus.sock").display().to_string(),
                ];
                for d in setup(dir) {
                    a.push("--disk".to_string());
                    a.push(d);
                }
                a.extend(extra.iter().map(|s| s.to_string()));
                a
            },
            "vus.sock",
        )
    }

    /// Start `serve` with exactly `args` (paths in them may use the temp
    /// dir given to `setup`) and wait until `wait_for` (a path in the temp
    /// dir: the RPC or a controller socket) exists. `socket` is set to
    /// `wait_for`.
    pub fn start_with(setup: impl FnOnce(&Path) -> Vec<String>, wait_for: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let args = setup(dir.path());
        let socket = dir.path().join(wait_for);
        let mut cmd = bin();
        cmd.arg("serve").args(&args);
        let log = fs::File::create(dir.path().join("daemon.log")).unwrap();
        cmd.stderr(Stdio::from(log)).env("RUST_LOG", "debug");
        let child = cmd.spawn().unwrap();
        let mut d = Daemon {
            child: Some(child),
            socket,
            dir,
        };
        d.wait_for_path(&d.socket.clone());
        d
    }

    /// Start `serve --rpc-socket DIR/rpc.sock` plus `extra`, with no
    /// controller yet; `socket` is the RPC socket.
    pub fn start_rpc(extra: &[&str]) -> Daemon {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Daemon::start_with(
            |dir| {
                let mut a = vec![
                    "--rpc-socket".to_string(),
                    dir.join("rpc.sock").display().to_string(),
                ];
                a.extend(extra);
                a
            },
            "rpc.sock",
        )
    }

    /// Wait (10 s at most) until `path` exists; panics with the log if the
    /// daemon exits first.
    pub fn wait_for_path(&mut self, path: &Path) {
        let start = Instant::now();
        while !path.exists() {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("daemon exited early ({st}): {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {}:\n{}",
                path.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A JSON-RPC client on `DIR/rpc.sock`.
    pub fn rpc(&self) -> vhost_user_scsi::mgmt::rpc_client::RpcClient {
        vhost_user_scsi::mgmt::rpc_client::RpcClient::connect(self.path("rpc.sock"))
            .unwrap_or_else(|e| panic!("rpc connect: {e}\n{}", self.log()))
    }

    /// Connect a frontend to the controller socket `name` in the temp dir
    /// (LUN unit attentions consumed, as `connect`).
    pub fn connect_to(&self, name: &str, request_queues: u16) -> ScsiFrontend {
        let fe = self.frontend_at(&self.path(name), request_queues);
        settle(&fe, 0..=8);
        fe
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// Connect and consume the unit attentions of LUNs 0..=8 (a new I_T
    /// nexus sees POWER ON OCCURRED first, as from a real disk).
    pub fn connect(&self, request_queues: u16) -> ScsiFrontend {
        let fe = self.connect_raw(request_queues);
        settle(&fe, 0..=8);
        fe
    }

    /// Connect without touching any LUN.
    pub fn connect_raw(&self, request_queues: u16) -> ScsiFrontend {
        self.frontend_at(&self.socket, request_queues)
    }

    /// Connect to `socket` without touching any LUN.
    fn frontend_at(&self, socket: &Path, request_queues: u16) -> ScsiFrontend {
        let mut cfg = config_at(socket);
        cfg.request_queues = request_queues;
        ScsiFrontend::connect(&cfg)
            .unwrap_or_else(|e| panic!("connect {}: {e}\n{}", socket.display(), self.log()))
    }

    pub fn config(&self) -> FrontendConfig {
        config_at(&self.socket)
    }

    /// True while the daemon process runs.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .map(|c| c.try_wait().unwrap().is_none())
            .unwrap_or(false)
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not exit on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Restarting a daemon in place (same temp dir, socket and disks), for the
/// reconnection tests.
impl Daemon {
    /// SIGKILL the daemon and reap it: no shutdown path at all (its socket
    /// file stays behind).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Send SIGTERM without waiting (see [`Daemon::wait_exit`]).
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }

    /// Wait up to `timeout` for the daemon to exit; its exit code (None:
    /// killed by a signal). Panics with the log if it does not exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not exit:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Start `serve ARGS` again in this daemon's temp dir once the previous
    /// process is gone (the log goes on in daemon.log). Does not wait for
    /// the socket: a killed daemon left a stale one, so connect with
    /// retries (`ScsiFrontend::reconnect`).
    pub fn respawn(&mut self, args: &[String]) {
        assert!(self.child.is_none(), "the previous daemon still runs");
        let log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.path("daemon.log"))
            .unwrap();
        let child = bin()
            .arg("serve")
            .args(args)
            .stderr(Stdio::from(log))
            .env("RUST_LOG", "debug")
            .spawn()
            .unwrap();
        self.child = Some(child);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A frontend configuration for `socket` with the tests' 20 s timeout.
pub fn config_at(socket: &Path) -> FrontendConfig {
    let mut cfg = FrontendConfig::new(socket);
    cfg.timeout = Duration::from_secs(20);
    cfg
}

/// TEST UNIT READY each LUN until it reports no unit attention.
pub fn settle(fe: &ScsiFrontend, luns: impl IntoIterator<Item = u16>) {
    for lun in luns {
        for _ in 0..8 {
            let r = fe
                .command(0, lun, &cdb::test_unit_ready(), DataDir::None)
                .unwrap();
            if r.sense_key().map(|s| s.0) != Some(6) {
                break;
            }
        }
    }
}

/// A deterministic pattern for block `lba` of generation `gen`.
pub fn pattern(lba: u64, gen: u8, len: usize) -> Vec<u8> {
    let mut x = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(gen);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// PERSISTENT RESERVE OUT (SPC-5 6.17) with its 24-byte parameter list:
/// service action `sa` (0 REGISTER, 1 RESERVE, 2 RELEASE, 3 CLEAR...),
/// type `prtype` (1 Write Exclusive...), reservation key `key`, service
/// action key `sa_key`, APTPL. Returns the CDB and the parameter list.
pub fn pr_out_cdb(sa: u8, prtype: u8, key: u64, sa_key: u64, aptpl: bool) -> ([u8; 10], Vec<u8>) {
    let mut c = [0u8; 10];
    c[0] = 0x5f;
    c[1] = sa;
    c[2] = prtype;
    c[8] = 24;
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = u8::from(aptpl);
    (c, p)
}

/// PERSISTENT RESERVE IN (SPC-5 6.16) service action `sa` (0 READ KEYS,
/// 1 READ RESERVATION) with an allocation length of `alloc` bytes.
pub fn pr_in_cdb(sa: u8, alloc: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x5e;
    c[1] = sa;
    c[7..9].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// The daemon binary, as a command to run.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
}

/// Run the binary to completion (killed after 20 s: a daemon that serves
/// instead of failing fails the test). No RUST_LOG, so stderr carries only
/// what a user sees.
pub fn run(args: &[&str]) -> std::process::Output {
    let mut child = bin()
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("VHOST_USER_SCSI_RPC")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the binary");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Exit code 1, exactly one line on stderr containing every needle, no
/// panic, and no socket left at `socket`.
pub fn assert_rejected(args: &[&str], needles: &[&str], socket: &Path) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: {stderr:?} lacks {n:?}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!socket.exists(), "{args:?} left a socket");
}
