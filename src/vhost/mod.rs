//! The vhost-user side: the `VhostUserBackend` implementation, per-queue
//! workers and the accept loop. This is the only module that knows about
//! vhost-user-backend, so that the protocol handling can later move onto
//! the `vhost` crate's request handler directly (for INFLIGHT_SHMFD).
//!
//! Queue layout (virtio 1.2 5.6.2): 0 control, 1 event, 2.. request queues.
//! Thread 0 serves the control and event queues; thread `1 + i` serves
//! request queue `i` with its own io_uring.

mod backend;
mod control;
mod device;
mod dirty;
mod event_loop;
mod events;
mod exec;
pub(crate) mod inflight;
mod media_error;
mod passthrough;
pub mod poll;
mod protocol;
mod ratelimit;
mod server;
mod sigbus;
mod slow;
mod stats;
mod worker;

pub use backend::ScsiBackend;
pub use device::{sync_backing, Device, LunBacking};
pub use events::{param_change, transport_reset, EventQueue, EVT_RESET_REMOVED, EVT_RESET_RESCAN};
pub use exec::WriteGate;
pub use server::{
    bind, serve, wait_for_connection, ControllerState, Health, ServeError, ServerConfig,
    ServerState, ShutdownSignal,
};
pub use stats::{LunSnapshot, LunStats, QueueStats};
