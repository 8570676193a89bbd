//! A vhost-user-scsi *frontend* (QEMU's side, without a VM) for the host
//! integration tests and the benchmark.
//!
//! It owns a memfd "guest memory", builds split virtqueues by hand in it,
//! performs the vhost-user handshake the way QEMU's `vhost-user-scsi-pci`
//! does and offers a virtio-scsi request API on top:
//!
//! ```no_run
//! use vhost_user_scsi::frontend::{cdb, DataDir, FrontendConfig, ScsiFrontend};
//! # fn main() -> Result<(), vhost_user_scsi::frontend::Error> {
//! let dev = ScsiFrontend::connect(&FrontendConfig::new("/tmp/vus.sock"))?;
//! let r = dev.command(0, 0, &cdb::inquiry(false, 0, 96), DataDir::FromDevice(96))?;
//! assert_eq!(r.response, 0);
//! dev.shutdown()?;
//! # Ok(()) }
//! ```
//!
//! Modules: [`memory`] (memfd guest memory and a buffer allocator),
//! [`vring`] (split virtqueue driver side), [`conn`] (handshake/teardown),
//! [`inflight`] (the inflight I/O tracking region), [`dirty`] (the dirty
//! log of live migration), [`scsi`] (virtio-scsi requests), [`cdb`] (CDB
//! builders).
//!
//! With VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD the frontend survives its
//! backend: [`ScsiFrontend::reconnect`] replays the setup on a new
//! connection (same memory, rings and inflight region) as QEMU does after a
//! backend crash, and the requests that were outstanding complete there.
//!
//! With VHOST_USER_PROTOCOL_F_LOG_SHMFD it logs dirty pages as QEMU does
//! while it migrates a guest: [`ScsiFrontend::start_logging`] (SET_LOG_BASE,
//! SET_FEATURES with VHOST_F_LOG_ALL, SET_VRING_ADDR with
//! VHOST_VRING_F_LOG), [`ScsiFrontend::dirty_pages`] (the sync),
//! [`ScsiFrontend::stop_logging`].

pub mod cdb;
pub mod conn;
pub mod dirty;
pub mod inflight;
pub mod memory;
pub mod scsi;
pub mod vring;

use std::path::PathBuf;
use std::time::Duration;

pub use conn::Connection;
pub use dirty::{DirtyBitmap, DirtyPages};
pub use inflight::InflightRegion;
pub use memory::{BufferAllocator, GuestMem};
pub use scsi::{
    ChainPart, Completion, DataDir, Outcome, QueueStats, RawCompletion, RingState, ScsiFrontend,
    ScsiRequest, ScsiResponse, Split, CONTROL_QUEUE, EVENT_QUEUE, FIRST_REQUEST_QUEUE,
};
pub use vring::{vring_need_event, SplitQueue};

/// Errors of the frontend. Every failure of the backend (protocol error,
/// malformed used ring, timeout) is reported here, never as a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vhost-user {op} failed: {source}")]
    Vhost {
        op: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user {op} for queue {queue} failed: {source}")]
    VhostQueue {
        op: &'static str,
        queue: usize,
        #[source]
        source: vhost::Error,
    },
    #[error("backend does not offer required feature {0}")]
    MissingFeature(&'static str),
    #[error("backend offers {offered} queues, need {needed} (control + event + {requests} request queues)")]
    NotEnoughQueues {
        offered: u64,
        needed: u64,
        requests: u16,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("guest memory exhausted: cannot allocate {0} bytes")]
    OutOfMemory(usize),
    #[error("queue {queue} is full: {needed} descriptors needed, {free} free")]
    QueueFull {
        queue: usize,
        needed: usize,
        free: usize,
    },
    #[error("no such queue {0}")]
    NoSuchQueue(usize),
    #[error("backend broke the used ring of queue {queue}: {what}")]
    BadUsedRing { queue: usize, what: String },
    #[error("the backend did not answer {op} within {timeout:?}: connection shut down")]
    NoAnswer { op: &'static str, timeout: Duration },
    #[error("inflight region: {0}")]
    Inflight(String),
    #[error("vhost-user protocol: {0}")]
    Protocol(String),
    #[error("timed out after {timeout:?} waiting on queue {queue}")]
    Timeout { queue: usize, timeout: Duration },
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { op, source }
}

/// How to connect and what to negotiate.
#[derive(Clone, Debug)]
pub struct FrontendConfig {
    /// The backend's listening socket.
    pub socket: PathBuf,
    /// Number of request queues (virtqueues 2..2+n).
    pub request_queues: u16,
    /// Size of every virtqueue (power of two, <= 32768).
    pub queue_size: u16,
    /// Size of the guest memory (memfd) in bytes.
    pub mem_size: usize,
    /// Guest-physical address where the memory starts.
    pub mem_base: u64,
    /// Offset of the region inside the memfd (page aligned): tests that a
    /// backend honours `mmap_offset`.
    pub mmap_offset: u64,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX if offered.
    pub event_idx: bool,
    /// Negotiate VIRTIO_RING_F_INDIRECT_DESC if offered and put every
    /// request's chain in an indirect table.
    pub indirect: bool,
    /// Extra virtio feature bits to ack when offered (e.g. VIRTIO_SCSI_F_CHANGE).
    pub extra_features: u64,
    /// Feature bits acked even when NOT offered (QEMU 10 acks
    /// VIRTIO_SCSI_F_CHANGE unconditionally; use this to test a backend's
    /// reaction).
    pub force_features: u64,
    /// Kick after every publish, ignoring the backend's suppression hints.
    pub always_kick: bool,
    /// Hand every ring's kick eventfd to the backend already signalled, at
    /// the first start and at every reconnection, as QEMU does (its host
    /// notifiers are created with a count of 1).
    pub start_kicked: bool,
    /// Number of 16-byte buffers kept on the event queue.
    pub event_buffers: u16,
    /// Timeout of the blocking calls (`command`, `tmf`, `an_query`,
    /// `raw_chain`), of every vhost-user request's answer, and of
    /// [`ScsiFrontend::reconnect`]'s wait for a backend.
    pub timeout: Duration,
    /// Negotiate VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD if offered: get the
    /// backend's inflight region at the first start and give it back at
    /// every reconnection.
    pub inflight: bool,
    /// Send GET/SET_INFLIGHT_FD before the first SET_FEATURES (QEMU before
    /// 5.2). Off: SET_FEATURES first, then GET/SET_INFLIGHT_FD, then
    /// SET_FEATURES again with the rest of the start (QEMU's
    /// `vhost_dev_prepare_inflight` since 5.2).
    pub inflight_before_features: bool,
    /// Negotiate VHOST_USER_PROTOCOL_F_LOG_SHMFD if offered (QEMU does):
    /// needed by [`ScsiFrontend::start_logging`].
    pub log_shmfd: bool,
}

impl FrontendConfig {
    /// Defaults: 2 request queues of 128 entries, 64 MiB at guest-physical
    /// 4 GiB, EVENT_IDX on, indirect off, 8 event buffers, 30 s timeout,
    /// INFLIGHT_SHMFD on (QEMU's current order), LOG_SHMFD on, kick
    /// eventfds handed over signalled (as QEMU).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        FrontendConfig {
            socket: socket.into(),
            request_queues: 2,
            queue_size: 128,
            mem_size: 64 << 20,
            mem_base: 1 << 32,
            mmap_offset: 0,
            event_idx: true,
            indirect: false,
            extra_features: 0,
            force_features: 0,
            always_kick: false,
            start_kicked: true,
            event_buffers: 8,
            timeout: Duration::from_secs(30),
            inflight: true,
            inflight_before_features: false,
            log_shmfd: true,
        }
    }
}

/// Feature bits used by the frontend.
pub mod features {
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
    pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
    pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
    /// Log every write into guest memory (live migration; acked only
    /// while logging).
    pub const VHOST_F_LOG_ALL: u64 = 1 << 26;
}
