//! Backing devices (raw image files and block devices) and the io_uring
//! engine that moves data between them and guest memory.
//!
//! CONTRACT (shared with the vhost layer): `Backing` and its accessors,
//! `Engine`, `EngineOp`, `Completion`, `IoVec`, `BlockError`.

mod backing;
mod uring;

pub use backing::{Backing, BackingKind};
pub use uring::{Completion, Engine, EngineOp, IoVec};

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
