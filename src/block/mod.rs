//! Backing devices (raw image files and block devices) and the io_uring
//! engine that moves data between them and guest memory.
//!
//! CONTRACT (shared with the vhost layer): `Backing` and its accessors,
//! `Engine`, `EngineOp`, `Completion`, `IoVec`, `BlockError`, `Extent`.
//!
//! Besides the io_uring fast path, `Backing` has synchronous "slow path"
//! methods for a helper thread (never a worker): `read_exact_at`,
//! `write_all_at`, `sync_data` (`sync_io.rs`) and the provisioning
//! primitives `unmap`, `write_zeroes`, `write_same`, `allocation_map`
//! (`provision.rs`).

mod backing;
mod provision;
pub mod sg;
mod sync_io;
mod uring;

pub use backing::{Backing, BackingKind};
pub use provision::{Extent, FILE_MAX_DISCARD_BYTES};
pub use sg::{ScsiDevice, SgAnswer, SgCommand, SgDir};
pub use uring::{Completion, Engine, EngineOp, IoVec, IoVecs};

use std::path::PathBuf;

/// Errors of the block layer.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("io_uring: {0}")]
    Ring(std::io::Error),
}
