//! The command line: `vhost-user-scsi serve --socket PATH --disk SPEC ...`.
//!
//! Parsing only; opening disks and serving live in [`crate::vhost`]. Every
//! error here is a one-line message for the user (the binary exits 1).

pub mod ctl;
mod disk_spec;
pub mod probe;

pub use disk_spec::{DiskSpec, SpecError};

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::mgmt::api::{ControllerCreate, LunSpec};

/// Largest number of request queues offered.
pub const MAX_NUM_QUEUES: u16 = 64;
/// Largest virtqueue size offered.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// vhost-user-scsi: serve host disks to QEMU guests as virtio-scsi LUNs.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-scsi", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve disks on a vhost-user socket until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Drive a vhost-user-scsi backend (ours or another) with a storage workload, no VM.
    Bench(crate::bench::BenchArgs),
    /// Turn matrix results into a markdown table and a PNG (scripts/bench.sh).
    #[command(hide = true)]
    BenchReport(crate::bench::ReportArgs),
    /// Manage a running daemon over its JSON-RPC socket.
    Ctl(ctl::CtlArgs),
    /// One SCSI command or LUN reset through the frontend (tests).
    #[command(hide = true)]
    Probe(probe::ProbeArgs),
}

/// Options of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// vhost-user socket of a controller named `default` (QEMU: -chardev
    /// socket,path=PATH), serving the --disk LUNs. Shorthand for a
    /// one-controller config.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// A LUN of the --socket controller: PATH[,readonly][,block-size=512|4096][,serial=TEXT][,lun=N].
    /// Repeat for more LUNs; numbered in order unless lun= says otherwise.
    #[arg(long = "disk", value_name = "SPEC", requires = "socket")]
    pub disks: Vec<DiskSpec>,

    /// Controllers and LUNs to serve at start (TOML; see docs/management.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Serve the JSON-RPC management API on this Unix socket (created 0600).
    #[arg(long, value_name = "PATH")]
    pub rpc_socket: Option<PathBuf>,

    /// Serve Prometheus metrics (GET /metrics) on a loopback address
    /// (127.0.0.1:9184) or a Unix socket (unix:/path).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,

    /// Number of request queues of the --socket controller (1..=64).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_NUM_QUEUES)))]
    pub num_queues: u16,

    /// Directory for persistent-reservation state (APTPL): one file per
    /// LUN, so reservations survive a restart. Without it, APTPL is refused.
    #[arg(long, value_name = "DIR")]
    pub pr_state: Option<PathBuf>,

    /// Maximum virtqueue size of the --socket controller (1..=1024, a power of two).
    #[arg(long, default_value_t = 256, value_parser = parse_queue_size)]
    pub queue_size: u16,

    /// Initiator identity of the --socket controller's guest (its I_T
    /// nexus for reservations; default: derived from the socket path).
    /// Give both ends of a live migration the same value.
    #[arg(long, value_name = "ID")]
    pub initiator: Option<String>,

    /// Group of every controller socket (a name or a gid), so that QEMU
    /// running as a member may connect (libvirt's QEMU: `kvm`); the sockets
    /// get mode 0660 unless --socket-mode says otherwise. A controller's
    /// own `socket_group` wins.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// Mode of every controller socket, octal (e.g. 0660). A controller's
    /// own `socket_mode` wins.
    #[arg(long, value_name = "MODE")]
    pub socket_mode: Option<String>,

    /// Bound of every request queue's adaptive polling window in
    /// microseconds (0 turns polling off; default 32, like QEMU's
    /// poll-max-ns): a busy queue's worker watches its rings this long
    /// before it sleeps. A controller's own `poll_max_us` wins.
    #[arg(long, value_name = "US")]
    pub poll_max_us: Option<u32>,

    /// Group of the JSON-RPC socket, which then has mode 0660 (else 0600).
    #[arg(long, value_name = "GROUP", requires = "rpc_socket")]
    pub rpc_socket_group: Option<String>,

    /// Keep every controller and LUN in this JSON file: rewritten
    /// (atomically) after each change over JSON-RPC, loaded at start. Not
    /// with --socket or [[controller]] tables in --config.
    #[arg(long, value_name = "PATH")]
    pub state_file: Option<PathBuf>,
}

/// Name of the controller `--socket` creates.
pub const SHORTHAND_CONTROLLER: &str = "default";

fn parse_queue_size(s: &str) -> Result<u16, String> {
    let n: u16 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number from 1 to {MAX_QUEUE_SIZE}"))?;
    if n == 0 || n > MAX_QUEUE_SIZE || !n.is_power_of_two() {
        return Err(format!(
            "{n} is not a power of two from 1 to {MAX_QUEUE_SIZE}"
        ));
    }
    Ok(n)
}

impl ServeArgs {
    /// The LUN number of each disk, in order: explicit `lun=` values, the
    /// others numbered in order, skipping numbers already taken. Errors on a
    /// duplicate.
    pub fn lun_numbers(&self) -> Result<Vec<u16>, SpecError> {
        let mut taken = std::collections::BTreeSet::new();
        for d in &self.disks {
            if let Some(l) = d.lun {
                if !taken.insert(l) {
                    return Err(SpecError::DuplicateLun(l));
                }
            }
        }
        let mut next = 0u16;
        let mut out = Vec::with_capacity(self.disks.len());
        for d in &self.disks {
            let lun = match d.lun {
                Some(l) => l,
                None => {
                    while taken.contains(&next) {
                        next = next.checked_add(1).ok_or(SpecError::TooManyLuns)?;
                    }
                    taken.insert(next);
                    next
                }
            };
            if lun > disk_spec::MAX_LUN {
                return Err(SpecError::LunOutOfRange(lun));
            }
            out.push(lun);
        }
        Ok(out)
    }

    /// The controller `--socket`/`--disk` describe, if any.
    pub fn shorthand(&self) -> Result<Option<(ControllerCreate, Vec<LunSpec>)>, SpecError> {
        let Some(socket) = &self.socket else {
            return Ok(None);
        };
        let luns = self
            .disks
            .iter()
            .zip(self.lun_numbers()?)
            .map(|(d, lun)| LunSpec {
                lun: Some(lun),
                path: d.path.clone(),
                readonly: d.readonly,
                block_size: d.block_size.map(|b| b.bytes()),
                serial: d.serial.clone(),
                passthrough: d.passthrough,
            })
            .collect();
        let create = ControllerCreate {
            name: SHORTHAND_CONTROLLER.into(),
            socket: socket.clone(),
            num_queues: Some(self.num_queues),
            queue_size: Some(self.queue_size),
            initiator: self.initiator.clone(),
            socket_group: None,
            socket_mode: None,
            poll_max_us: None,
        };
        Ok(Some((create, luns)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vhost-user-scsi").chain(args.iter().copied()))
    }

    fn serve(args: &[&str]) -> ServeArgs {
        match parse(args).unwrap().command {
            Command::Serve(s) => s,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let s = serve(&["serve", "--socket", "/tmp/s", "--disk", "/a.img"]);
        assert_eq!(s.num_queues, 4);
        assert_eq!(s.queue_size, 256);
        assert_eq!(s.lun_numbers().unwrap(), vec![0]);
    }

    #[test]
    fn bad_numbers_are_rejected() {
        for args in [
            &["serve", "--socket", "s", "--disk", "a", "--num-queues", "0"][..],
            &[
                "serve",
                "--socket",
                "s",
                "--disk",
                "a",
                "--num-queues",
                "65",
            ],
            &[
                "serve",
                "--socket",
                "s",
                "--disk",
                "a",
                "--queue-size",
                "1025",
            ],
            &[
                "serve",
                "--socket",
                "s",
                "--disk",
                "a",
                "--queue-size",
                "100",
            ],
            &["serve", "--disk", "a"],
            &["serve", "--socket", "s", "--disk", "a,block-size=1024"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn lun_numbering_follows_order_and_explicit_numbers() {
        let s = serve(&[
            "serve", "--socket", "s", "--disk", "a", "--disk", "b,lun=0", "--disk", "c",
        ]);
        assert_eq!(s.lun_numbers().unwrap(), vec![1, 0, 2]);
        let s = serve(&[
            "serve", "--socket", "s", "--disk", "a,lun=3", "--disk", "b,lun=3",
        ]);
        assert!(matches!(s.lun_numbers(), Err(SpecError::DuplicateLun(3))));
    }
}
