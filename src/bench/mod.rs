//! `vhost-user-scsi bench`: plays QEMU's part (no VM) through
//! [`crate::frontend`] against any vhost-user-scsi backend socket and drives
//! a storage workload: one thread per request queue, `qd` requests in flight
//! on each, buffers preallocated per in-flight slot (nothing allocated,
//! zeroed or copied per I/O unless `--verify`).
//!
//! Modules: [`workload`] (PRNG, I/O choice), [`verify`] (block format),
//! [`stats`] (percentiles, the JSON report), [`cpu`] (/proc accounting),
//! [`plot`] (the hidden `bench-report` step: PNG plot and markdown table).

pub mod cpu;
pub mod plot;
pub mod stats;
pub mod verify;
pub mod workload;

mod runner;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::ValueEnum;

pub use plot::ReportArgs;
pub use runner::run;
pub use stats::{Latency, Report};
pub use workload::Rw;

/// `on` / `off` switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn is_on(self) -> bool {
        self == OnOff::On
    }
}

/// Options of `bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// vhost-user socket of the backend (ours or any other vhost-user-scsi backend).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Request queues to drive (one thread each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub queues: u16,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub qd: u16,
    /// Bytes per I/O (a multiple of the logical block size).
    #[arg(long, default_value_t = 4096)]
    pub bs: u32,
    /// I/O pattern.
    #[arg(long, value_enum, default_value_t = Rw::Randread)]
    pub rw: Rw,
    /// Percentage of reads for randrw.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmix_read: u8,
    /// Measured seconds (after the ramp).
    #[arg(long, default_value_t = 10.0)]
    pub runtime: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub ramp: f64,
    /// LUN to drive.
    #[arg(long, default_value_t = 0)]
    pub lun: u16,
    /// Target to drive.
    #[arg(long, default_value_t = 0)]
    pub target: u8,
    /// READ/WRITE CDB size; default 10 when the LBAs and lengths fit.
    #[arg(long, value_parser = parse_cdb)]
    pub cdb: Option<u8>,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX (when offered).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub event_idx: OnOff,
    /// Put each request in an indirect descriptor table, as Linux guests do
    /// (when VIRTIO_RING_F_INDIRECT_DESC is offered).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub indirect: OnOff,
    /// Virtqueue size; default: enough for qd requests, at least 128 (QEMU's default).
    #[arg(long, value_parser = parse_ring_size)]
    pub ring_size: Option<u16>,
    /// Negotiate VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD (when offered) and
    /// hand the backend its inflight region, as QEMU does; off: not
    /// negotiated, the backend keeps no inflight record (what tracking
    /// costs).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub inflight: OnOff,
    /// Dirty-page logging, as while QEMU migrates the guest: logging starts
    /// before the ramp (SET_LOG_BASE, VHOST_F_LOG_ALL, VHOST_VRING_F_LOG)
    /// and another thread collects and clears the log every 100 ms, as
    /// QEMU's migration sync does. Needs LOG_SHMFD.
    #[arg(long)]
    pub dirty_log: bool,
    /// Write blocks carrying their LBA, a generation and a checksum; check
    /// every read, then read back every written block.
    #[arg(long)]
    pub verify: bool,
    /// Before sleeping on a queue's call eventfd, look at its used ring for
    /// up to this many microseconds (0: sleep at once, as a guest vCPU
    /// without halt polling does). 200 is what a KVM guest does with x86's
    /// default `halt_poll_ns`: its halted vCPU spins in the host for up to
    /// 200 µs before it sleeps, so an interrupt within that costs no
    /// wake-up (a busy vCPU never sleeps at all).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub poll_us: u32,
    /// Backend process to account CPU time and Private_Dirty to.
    #[arg(long, value_name = "PID")]
    pub backend_pid: Option<u32>,
    /// Connect and stay idle for the runtime (measures an idle guest's cost).
    #[arg(long)]
    pub idle: bool,
    /// PRNG seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    /// Defaults for `socket` (as the command line would give them).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        BenchArgs {
            socket: socket.into(),
            queues: 1,
            qd: 32,
            bs: 4096,
            rw: Rw::Randread,
            rwmix_read: 50,
            runtime: 10.0,
            ramp: 1.0,
            lun: 0,
            target: 0,
            cdb: None,
            event_idx: OnOff::On,
            indirect: OnOff::On,
            ring_size: None,
            inflight: OnOff::On,
            dirty_log: false,
            verify: false,
            poll_us: 0,
            backend_pid: None,
            idle: false,
            seed: None,
            json: false,
        }
    }
}

fn parse_cdb(s: &str) -> Result<u8, String> {
    match s {
        "10" => Ok(10),
        "16" => Ok(16),
        _ => Err(format!("'{s}' is not 10 or 16")),
    }
}

fn parse_ring_size(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n.is_power_of_two() && n <= 32768 => Ok(n),
        _ => Err(format!("'{s}' is not a power of two from 1 to 32768")),
    }
}

/// Errors of the bench.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid options: {0}")]
    Options(String),
    #[error("handshake with {socket} failed: {source}")]
    Handshake {
        socket: String,
        #[source]
        source: crate::frontend::Error,
    },
    #[error("{what}: {source}")]
    Frontend {
        what: String,
        #[source]
        source: crate::frontend::Error,
    },
    #[error("{0}")]
    Scsi(String),
    #[error("queue {queue}: backend stalled: {in_flight} requests in flight, none completed for {secs} s")]
    Stalled {
        queue: usize,
        in_flight: usize,
        secs: u64,
    },
    #[error("backend process {pid}: {source}")]
    Proc {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("a queue thread panicked")]
    Thread,
    #[error("{errors} I/O errors and {mismatches} verify mismatches")]
    Failed { errors: u64, mismatches: u64 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Report(String),
}

/// The `bench` subcommand: run, print the report (text or JSON), and fail
/// on I/O errors or verify mismatches.
pub fn main(args: &BenchArgs) -> Result<(), BenchError> {
    let progress = !args.json && std::io::stdout().is_terminal();
    let report = run(args, progress)?;
    if args.json {
        let j = serde_json::to_string_pretty(&report)
            .map_err(|e| BenchError::Report(format!("JSON: {e}")))?;
        println!("{j}");
    } else {
        print!("{}", report.text());
    }
    if report.failed() {
        return Err(BenchError::Failed {
            errors: report.errors,
            mismatches: report.mismatches,
        });
    }
    Ok(())
}
