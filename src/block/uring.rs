//! STUB: the block helper replaces this file.

use std::os::fd::RawFd;
use std::sync::Arc;

use super::{Backing, BlockError};
use crate::units::ByteOffset;

/// A host iovec into guest memory. `libc::iovec` is `!Send`; the owner of
/// the memory (the worker's in-flight request) keeps it valid.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub struct IoVec(pub libc::iovec);

// SAFETY: an IoVec is a plain pointer + length; the memory it points to is
// kept alive by the in-flight request that owns it, on whatever thread.
unsafe impl Send for IoVec {}

/// One operation for the engine.
#[derive(Debug)]
pub enum EngineOp {
    Read {
        offset: ByteOffset,
        iovecs: Vec<IoVec>,
    },
    Write {
        offset: ByteOffset,
        iovecs: Vec<IoVec>,
        fua: bool,
    },
    Flush,
}

/// A finished operation: bytes transferred (always the full length on
/// success) or a positive errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub user_data: u64,
    pub result: Result<u64, i32>,
}

/// One io_uring, owned by one worker thread.
pub struct Engine {
    _priv: (),
}

impl Engine {
    pub fn new(entries: u32) -> Result<Engine, BlockError> {
        let _ = entries;
        Ok(Engine { _priv: () })
    }
    pub fn enable(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
    pub fn event_fd(&self) -> RawFd {
        -1
    }
    /// Queue `op` against `backing`.
    ///
    /// # Safety
    /// Every iovec must point to memory that stays valid and unaliased by
    /// Rust references until this op's completion has been returned by
    /// [`Engine::reap`].
    pub unsafe fn push(
        &mut self,
        backing: &Arc<Backing>,
        op: EngineOp,
        user_data: u64,
    ) -> Result<(), BlockError> {
        let _ = (backing, op, user_data);
        Ok(())
    }
    pub fn submit(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
    pub fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), BlockError> {
        let _ = out;
        Ok(())
    }
    pub fn in_flight(&self) -> usize {
        0
    }
    /// Block until every queued op has completed, collecting completions.
    pub fn drain(&mut self, out: &mut Vec<Completion>) -> Result<(), BlockError> {
        let _ = out;
        Ok(())
    }
}
