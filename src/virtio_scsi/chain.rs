//! STUB: the virtio_scsi helper replaces the bodies; signatures are the
//! contract with the vhost layer.
//!
//! Descriptor chains are split into device-readable and device-writable
//! guest-memory segments (every segment validated to lie inside guest
//! memory), then into header / data-out / response / data-in, across any
//! split of descriptors, direct or indirect.

use std::io::Read;

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::defs::{CmdReqHeader, CtrlAnReq, CtrlTmfReq};
use crate::block::IoVec;

/// The guest memory type the daemon works with (no dirty bitmap).
pub type GuestMem = GuestMemoryMmap<()>;

/// Why a chain was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor chain is malformed: {0}")]
    Malformed(&'static str),
    #[error("device-readable descriptor after a device-writable one")]
    WrongDirection,
    #[error("descriptor at {addr:#x} (+{len}) is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("request header is short: {0} bytes")]
    ShortHeader(u64),
    #[error("response buffer is short: {0} bytes")]
    ShortResponse(u64),
}

/// One contiguous guest-memory buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// An ordered list of guest-memory buffers seen as one byte stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segments {
    segs: Vec<Segment>,
    total: u64,
}

impl Segments {
    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Copy the first `buf.len()` bytes (or fewer, if shorter) into `buf`;
    /// returns the count copied.
    pub fn read_to(&self, mem: &GuestMem, buf: &mut [u8]) -> Result<usize, ChainError> {
        let _ = (mem, buf);
        Ok(0)
    }

    /// Copy `data` (or its first `self.len()` bytes) into the segments;
    /// returns the count written.
    pub fn write_from(&self, mem: &GuestMem, data: &[u8]) -> Result<usize, ChainError> {
        let _ = (mem, data);
        Ok(0)
    }

    /// A `Read` over the segments' bytes.
    pub fn reader<'a>(&'a self, mem: &'a GuestMem) -> impl Read + 'a {
        let _ = mem;
        std::io::empty()
    }

    /// Host iovecs covering the first `len` bytes (`len <= self.len()`).
    /// The pointers stay valid while the caller holds the memory mapping.
    pub fn iovecs(&self, mem: &GuestMem, len: u64, out: &mut Vec<IoVec>) -> Result<(), ChainError> {
        let _ = (mem, len, out);
        Ok(())
    }
}

/// A chain split by direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitChain {
    pub head: u16,
    pub readable: Segments,
    pub writable: Segments,
}

/// Walk a descriptor chain (following an indirect table if present).
pub fn split_chain<M>(chain: DescriptorChain<M>) -> Result<SplitChain, ChainError>
where
    M: std::ops::Deref<Target = GuestMem>,
{
    let head = chain.head_index();
    let _ = chain;
    Ok(SplitChain {
        head,
        readable: Segments::default(),
        writable: Segments::default(),
    })
}

/// A parsed command request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdRequest {
    pub header: CmdReqHeader,
    pub data_out: Segments,
    /// Exactly `size_of::<CmdRespHeader>()` bytes.
    pub resp: Segments,
    pub data_in: Segments,
}

/// A request the device cannot execute. `resp` is where a failure response
/// can be written, when the writable part is large enough for one; when it
/// is `None` the chain is returned unused (used length 0).
#[derive(Debug, PartialEq, Eq)]
pub struct BadRequest {
    pub error: ChainError,
    pub resp: Option<Segments>,
}

/// Split a request-queue chain into header / data-out / response / data-in.
pub fn parse_cmd(mem: &GuestMem, chain: SplitChain) -> Result<CmdRequest, BadRequest> {
    let _ = (mem, chain);
    Err(BadRequest {
        error: ChainError::Malformed("stub"),
        resp: None,
    })
}

/// A control-queue request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CtrlRequest {
    Tmf(CtrlTmfReq),
    /// AN query or subscribe.
    An(CtrlAnReq),
}

/// Parse a control-queue chain; the response segments are sized for the
/// request's type (1 byte for TMF, 5 for AN).
pub fn parse_ctrl(
    mem: &GuestMem,
    chain: SplitChain,
) -> Result<(CtrlRequest, Segments), BadRequest> {
    let _ = (mem, chain);
    Err(BadRequest {
        error: ChainError::Malformed("stub"),
        resp: None,
    })
}
