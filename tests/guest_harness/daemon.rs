//! The daemon process of a guest test, and `vhost-user-scsi ctl` calls on
//! its RPC socket. Each test adds what only it needs in its own
//! `impl Daemon` block.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::daemon_binary;

/// A daemon process; killed on drop if the test did not stop it.
pub struct Daemon {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    /// `vhost-user-scsi ARGS...`, logging to `log`; waits until every path
    /// of `wait_for` exists.
    pub fn start<A: AsRef<OsStr>>(args: &[A], log: &Path, wait_for: &[&Path]) -> Daemon {
        let mut cmd = Command::new(daemon_binary());
        cmd.args(args);
        let logf = File::create(log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        println!("starting daemon: {cmd:?}");
        let mut d = Daemon {
            child: Some(cmd.spawn().expect("spawn vhost-user-scsi")),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !wait_for.iter().all(|p| p.exists()) {
            d.assert_running("before creating its sockets");
            assert!(
                Instant::now() < deadline,
                "{wait_for:?} did not appear within 10 s; daemon log:\n{}",
                d.log_text()
            );
            sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_running(&mut self, when: &str) {
        let child = self.child.as_mut().expect("daemon already stopped");
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "daemon exited {when} ({st}); its log {}:\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }

    /// SIGTERM (`kill -TERM`); its exit status, or None when it did not
    /// exit within 10 s (then it is killed).
    pub fn try_terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take().expect("daemon already stopped");
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            sleep(Duration::from_millis(50));
        }
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

/// `vhost-user-scsi ctl --rpc-socket RPC ARGS...`: its stdout, or why it
/// failed (status, stdout and stderr).
pub fn ctl_output(rpc: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(daemon_binary())
        .arg("ctl")
        .arg("--rpc-socket")
        .arg(rpc)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vhost-user-scsi ctl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "ctl {args:?} failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout)
}

/// [`ctl_output`]'s stdout; panics on failure. Prints nothing.
pub fn ctl_stdout(rpc: &Path, args: &[&str]) -> String {
    ctl_output(rpc, args).unwrap_or_else(|e| panic!("{e}"))
}
