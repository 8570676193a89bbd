//! Descriptor chains: split a virtqueue chain into device-readable and
//! device-writable guest-memory segments, every segment validated to lie
//! inside guest memory, then into header / data-out / response / data-in,
//! across any split of descriptors, direct or indirect.
//!
//! The guest is untrusted: nothing here indexes, unwraps or does unchecked
//! arithmetic on a value that comes from a descriptor, and no guest memory is
//! touched outside the validated segments.
//!
//! Spec references are to virtio 1.2: 2.7.4 (message framing), 2.7.5 (the
//! split virtqueue descriptor table), 2.7.5.3 (indirect descriptors) and
//! 5.6.6 (virtio-scsi device operation).

use std::io::{self, Read};
use std::mem::size_of;
use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions,
};

use super::defs::{
    CmdReqHeader, CmdRespHeader, CtrlAnReq, CtrlAnResp, CtrlTmfReq, CtrlTmfResp, T_AN_QUERY,
    T_AN_SUBSCRIBE, T_TMF,
};
use crate::block::{IoVec, IoVecs};
use smallvec::SmallVec;

/// The guest memory type the daemon works with (no dirty bitmap).
pub type GuestMem = GuestMemoryMmap<()>;

/// Size of the command request header (5.6.6.1, default cdb_size).
const CMD_REQ_LEN: u64 = size_of::<CmdReqHeader>() as u64;
/// Size of the command response header (5.6.6.1, default sense_size).
const CMD_RESP_LEN: u64 = size_of::<CmdRespHeader>() as u64;
/// Size of the control-queue `type` field every control request starts with.
const CTRL_TYPE_LEN: u64 = size_of::<u32>() as u64;

/// Why a chain was rejected.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
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
    /// A control-queue request of a type this device does not know (5.6.6.2).
    #[error("unknown control request type {0}")]
    UnknownCtrlType(u32),
}

/// One contiguous guest-memory buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// An ordered list of guest-memory buffers seen as one byte stream.
///
/// Segments built by [`split_chain`] are validated against the memory the
/// chain came from. Every accessor takes the memory again and re-checks each
/// access (a segment list used with another memory map fails cleanly, it
/// never touches memory outside that map).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segments {
    segs: SmallVec<[Segment; 4]>,
    total: u64,
}

/// `Segment` with `len` bytes at offset `off` of `seg`; `off + len <= seg.len`
/// is the caller's invariant, the arithmetic is still checked.
fn sub_segment(seg: &Segment, off: u32, len: u32) -> Option<Segment> {
    let addr = seg.addr.checked_add(u64::from(off))?;
    Some(Segment { addr, len })
}

impl Segments {
    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The segments, in stream order (no zero-length ones).
    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }

    /// Append a segment. Zero-length segments are dropped. Fails (leaving
    /// `self` unchanged) if `addr + len` overflows u64 or the total would.
    pub fn push(&mut self, seg: Segment) -> Result<(), ChainError> {
        if seg.len == 0 {
            return Ok(());
        }
        seg.addr
            .checked_add(u64::from(seg.len))
            .ok_or(ChainError::OutsideMemory {
                addr: seg.addr.raw_value(),
                len: seg.len,
            })?;
        self.total = self
            .total
            .checked_add(u64::from(seg.len))
            .ok_or(ChainError::Malformed("total buffer length overflows"))?;
        self.segs.push(seg);
        Ok(())
    }

    /// Append a piece of an already accepted list: the sums cannot overflow
    /// (they are bounded by the original total), saturate to stay panic-free.
    fn push_piece(&mut self, seg: Segment) {
        if seg.len != 0 {
            self.total = self.total.saturating_add(u64::from(seg.len));
            self.segs.push(seg);
        }
    }

    /// Split into the first `n` bytes and the rest. If `n >= self.len()`
    /// the front is everything and the rest is empty. A segment straddling
    /// the boundary is cut in two.
    pub fn split_at(self, n: u64) -> (Segments, Segments) {
        let mut front = Segments::default();
        let mut back = Segments::default();
        let mut remaining = n;
        for seg in self.segs {
            let len = u64::from(seg.len);
            if remaining >= len {
                front.push_piece(seg);
                remaining -= len;
            } else if remaining == 0 {
                back.push_piece(seg);
            } else {
                // 0 < remaining < seg.len <= u32::MAX, so it fits a u32.
                let k = u32::try_from(remaining).unwrap_or(seg.len);
                remaining = 0;
                let rest = seg.len.saturating_sub(k);
                match sub_segment(&seg, k, rest) {
                    Some(tail) => {
                        front.push_piece(Segment {
                            addr: seg.addr,
                            len: k,
                        });
                        back.push_piece(tail);
                    }
                    // Only reachable for a segment whose end overflows,
                    // which `push` refuses; keep it whole in front.
                    None => front.push_piece(seg),
                }
            }
        }
        (front, back)
    }

    /// Walk the first `limit` bytes as (segment piece, offset in the stream).
    fn pieces(&self, limit: u64) -> impl Iterator<Item = (Segment, usize)> + '_ {
        let mut done: u64 = 0;
        self.segs.iter().map_while(move |seg| {
            let left = limit.checked_sub(done).filter(|&l| l > 0)?;
            let len = u32::try_from(left.min(u64::from(seg.len))).ok()?;
            let off = usize::try_from(done).ok()?;
            done = done.checked_add(u64::from(len))?;
            Some((
                Segment {
                    addr: seg.addr,
                    len,
                },
                off,
            ))
        })
    }

    /// Copy the first `buf.len()` bytes (or fewer, if shorter) into `buf`;
    /// returns the count copied.
    pub fn read_to(&self, mem: &GuestMem, buf: &mut [u8]) -> Result<usize, ChainError> {
        let limit = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        let mut copied = 0usize;
        for (piece, off) in self.pieces(limit) {
            let end = off.saturating_add(piece.len as usize);
            let dst = buf
                .get_mut(off..end)
                .ok_or(ChainError::Malformed("segment walk out of step"))?;
            mem.read_slice(dst, piece.addr)
                .map_err(|_| ChainError::OutsideMemory {
                    addr: piece.addr.raw_value(),
                    len: piece.len,
                })?;
            copied = end;
        }
        Ok(copied)
    }

    /// Copy `data` (or its first `self.len()` bytes) into the segments;
    /// returns the count written.
    pub fn write_from(&self, mem: &GuestMem, data: &[u8]) -> Result<usize, ChainError> {
        let limit = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let mut written = 0usize;
        for (piece, off) in self.pieces(limit) {
            let end = off.saturating_add(piece.len as usize);
            let src = data
                .get(off..end)
                .ok_or(ChainError::Malformed("segment walk out of step"))?;
            mem.write_slice(src, piece.addr)
                .map_err(|_| ChainError::OutsideMemory {
                    addr: piece.addr.raw_value(),
                    len: piece.len,
                })?;
            written = end;
        }
        Ok(written)
    }

    /// A `Read` over the segments' bytes (e.g. a parameter list for the
    /// SCSI target). A memory error surfaces as an `io::Error`.
    pub fn reader<'a>(&'a self, mem: &'a GuestMem) -> impl Read + 'a {
        SegmentsReader {
            segs: &self.segs,
            mem,
            idx: 0,
            off: 0,
        }
    }

    /// Append host iovecs covering the first `len` bytes (`len <=
    /// self.len()`, else an error and `out` is left unchanged). A segment
    /// that spans two guest memory regions yields two iovecs.
    ///
    /// The pointers are valid only while the caller holds the memory mapping
    /// `mem` belongs to: a memory-table update unmaps the old regions when
    /// the last reference drops, so the in-flight request must keep its
    /// `GuestMemoryLoadGuard` until the I/O using these iovecs completes.
    /// `GuestMem` has no dirty bitmap, so nothing needs marking here.
    ///
    /// One iovec per segment piece: a guest may send up to 65535 descriptors
    /// in an indirect table (virtio-queue's bound), more than `IOV_MAX`
    /// (1024) for `readv`; callers check `out.len()` before submitting.
    pub fn iovecs(&self, mem: &GuestMem, len: u64, out: &mut IoVecs) -> Result<(), ChainError> {
        if len > self.total {
            return Err(ChainError::Malformed("iovec length exceeds the buffers"));
        }
        let start = out.len();
        let res = self.push_iovecs(mem, len, out);
        if res.is_err() {
            out.truncate(start);
        }
        res
    }

    fn push_iovecs(&self, mem: &GuestMem, len: u64, out: &mut IoVecs) -> Result<(), ChainError> {
        for (piece, _) in self.pieces(len) {
            let err = ChainError::OutsideMemory {
                addr: piece.addr.raw_value(),
                len: piece.len,
            };
            let count = usize::try_from(piece.len).map_err(|_| err)?;
            let mut covered = 0usize;
            // Fully qualified: GuestMemoryBackend::get_slices has another
            // signature (platform-notes).
            for slice in GuestMemory::get_slices(mem, piece.addr, count, Permissions::ReadWrite)
                .map_err(|_| err)?
            {
                let slice = slice.map_err(|_| err)?;
                covered = covered.saturating_add(slice.len());
                out.push(IoVec(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                }));
            }
            if covered != count {
                return Err(err);
            }
        }
        Ok(())
    }
}

/// Streams the bytes of a segment list.
struct SegmentsReader<'a> {
    segs: &'a [Segment],
    mem: &'a GuestMem,
    /// Current segment.
    idx: usize,
    /// Bytes of the current segment already read.
    off: u32,
}

impl Read for SegmentsReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while let Some(seg) = self.segs.get(self.idx) {
            let avail = seg.len.saturating_sub(self.off);
            if avail == 0 {
                self.idx = self.idx.saturating_add(1);
                self.off = 0;
                continue;
            }
            let n = (avail as usize).min(buf.len());
            let addr = seg
                .addr
                .checked_add(u64::from(self.off))
                .ok_or_else(|| io::Error::other(ChainError::Malformed("address overflow")))?;
            let dst = buf
                .get_mut(..n)
                .ok_or_else(|| io::Error::other(ChainError::Malformed("short buffer")))?;
            self.mem.read_slice(dst, addr).map_err(|_| {
                io::Error::other(ChainError::OutsideMemory {
                    addr: addr.raw_value(),
                    len: n as u32,
                })
            })?;
            // n <= avail, a u32.
            self.off = self.off.saturating_add(n as u32);
            return Ok(n);
        }
        Ok(0)
    }
}

/// A chain split by direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitChain {
    pub head: u16,
    pub readable: Segments,
    pub writable: Segments,
}

/// Check that `[addr, addr + len)` is backed by guest memory, possibly
/// across several adjacent regions.
fn check_in_memory(
    mem: &GuestMem,
    addr: GuestAddress,
    len: u32,
    access: Permissions,
) -> Result<(), ChainError> {
    let err = ChainError::OutsideMemory {
        addr: addr.raw_value(),
        len,
    };
    addr.checked_add(u64::from(len)).ok_or(err)?;
    let count = usize::try_from(len).map_err(|_| err)?;
    let mut covered = 0usize;
    for slice in GuestMemory::get_slices(mem, addr, count, access).map_err(|_| err)? {
        covered = covered.saturating_add(slice.map_err(|_| err)?.len());
    }
    if covered == count {
        Ok(())
    } else {
        Err(err)
    }
}

/// Walk a descriptor chain (following an indirect table if present) and
/// split it into device-readable and device-writable segments.
///
/// virtio-queue's iterator follows an `INDIRECT` descriptor itself (2.7.5.3)
/// and bounds the walk: at most the queue size (or the indirect table size)
/// descriptors, no nested indirect table, at most 2^32 bytes in total
/// (2.7.5.2). It reports every problem (next index out of range, a loop that
/// exhausts the bound, a bad or unreadable indirect table, the byte limit)
/// by just returning `None`. A chain ends properly only with a descriptor
/// without `NEXT`, so a walk that yields nothing or whose last descriptor
/// still has `NEXT` ended prematurely: that is [`ChainError::Malformed`].
///
/// Device-readable descriptors must precede device-writable ones (2.7.4.2,
/// 5.6.6): otherwise [`ChainError::WrongDirection`]. Zero-length
/// descriptors carry no bytes and are skipped, whatever their address or
/// direction. Every other descriptor must lie inside guest memory
/// ([`ChainError::OutsideMemory`]).
///
/// The chain is consumed: callers needing the head index to return a
/// rejected chain take `chain.head_index()` first.
pub fn split_chain<M>(mut chain: DescriptorChain<M>) -> Result<SplitChain, ChainError>
where
    M: Deref<Target = GuestMem>,
{
    let mut split = SplitBuilder::new(chain.head_index());
    while let Some(desc) = chain.next() {
        split.push(chain.memory(), desc)?;
    }
    split.finish()
}

/// The same as [`split_chain`] for the chain whose head is descriptor
/// `head` of the table at `desc_table` (queue of `queue_size` entries):
/// how a restarted daemon finds the requests its predecessor had in flight
/// (the avail ring no longer says where they are). The walk follows the
/// same rules as virtio-queue's: at most `queue_size` descriptors, one
/// level of indirection, indirect tables a multiple of 16 bytes, and at
/// most 4 GiB in all.
pub fn split_chain_at(
    mem: &GuestMem,
    desc_table: GuestAddress,
    queue_size: u16,
    head: u16,
) -> Result<SplitChain, ChainError> {
    const MALFORMED: ChainError = ChainError::Malformed("bad descriptor in a resubmitted chain");
    if head >= queue_size {
        return Err(ChainError::Malformed("head index beyond the queue"));
    }
    let mut split = SplitBuilder::new(head);
    let mut table = desc_table;
    let mut size = queue_size;
    let mut next = head;
    let mut ttl = queue_size;
    let mut indirect = false;
    let mut total: u32 = 0;
    loop {
        if ttl == 0 || next >= size {
            // As virtio-queue's iterator: the walk ends here and the chain
            // is judged by its last descriptor.
            break;
        }
        let addr = table
            .checked_add(u64::from(next) * size_of::<Descriptor>() as u64)
            .ok_or(MALFORMED)?;
        let desc: Descriptor = mem.read_obj(addr).map_err(|_| MALFORMED)?;
        if desc.refers_to_indirect_table() {
            if indirect || desc.len() % 16 != 0 || desc.len() / 16 > u32::from(u16::MAX) {
                return Err(ChainError::Malformed("bad indirect table"));
            }
            indirect = true;
            table = desc.addr();
            size = u16::try_from(desc.len() / 16).unwrap_or(0);
            ttl = size;
            next = 0;
            continue;
        }
        total = total.checked_add(desc.len()).ok_or(MALFORMED)?;
        let more = desc.has_next();
        next = desc.next();
        split.push(mem, desc)?;
        if !more {
            break;
        }
        ttl -= 1;
    }
    split.finish()
}

/// Sorts a chain's descriptors into readable and writable segments.
struct SplitBuilder {
    head: u16,
    readable: Segments,
    writable: Segments,
    yielded_any: bool,
    last_has_next: bool,
}

impl SplitBuilder {
    fn new(head: u16) -> Self {
        SplitBuilder {
            head,
            readable: Segments::default(),
            writable: Segments::default(),
            yielded_any: false,
            last_has_next: false,
        }
    }

    fn push(&mut self, mem: &GuestMem, desc: Descriptor) -> Result<(), ChainError> {
        self.yielded_any = true;
        self.last_has_next = desc.has_next();
        if desc.len() == 0 {
            return Ok(());
        }
        let seg = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        if desc.is_write_only() {
            check_in_memory(mem, seg.addr, seg.len, Permissions::Write)?;
            self.writable.push(seg)
        } else {
            if !self.writable.is_empty() {
                return Err(ChainError::WrongDirection);
            }
            check_in_memory(mem, seg.addr, seg.len, Permissions::Read)?;
            self.readable.push(seg)
        }
    }

    fn finish(self) -> Result<SplitChain, ChainError> {
        if !self.yielded_any || self.last_has_next {
            return Err(ChainError::Malformed(
                "chain ended prematurely (bad next index, loop, bad indirect table or over 4 GiB)",
            ));
        }
        Ok(SplitChain {
            head: self.head,
            readable: self.readable,
            writable: self.writable,
        })
    }
}

/// A parsed command request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdRequest {
    /// Multi-byte fields (`tag`) are converted to host byte order.
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

/// The first `n` bytes of `writable`, if it has that many.
fn resp_of(writable: Segments, n: u64) -> Option<Segments> {
    (writable.len() >= n).then(|| writable.split_at(n).0)
}

/// Read a whole `T` from the front of `readable` (the caller checked the
/// length).
fn read_obj<T: ByteValued + Default>(mem: &GuestMem, readable: &Segments) -> Result<T, ChainError> {
    let mut obj = T::default();
    let n = readable.read_to(mem, obj.as_mut_slice())?;
    if n != size_of::<T>() {
        return Err(ChainError::ShortHeader(n as u64));
    }
    Ok(obj)
}

/// Split a request-queue chain into header / data-out / response / data-in
/// (5.6.6.1). The headers may straddle any number of descriptors.
///
/// - readable shorter than the request header: `ShortHeader`, with `resp`
///   the first 108 writable bytes if there are that many (answer e.g.
///   `S_FAILURE` there), else `None`;
/// - writable shorter than the response header: `ShortResponse`, `resp`
///   `None` (return the chain unused);
/// - a memory error while reading the header (only possible if `mem` is not
///   the memory the chain was split with): that error, `resp` `None`.
///
/// A request may have both data-out and data-in (bidirectional, `F_INOUT`);
/// whether that is acceptable is the caller's decision per CDB.
pub fn parse_cmd(mem: &GuestMem, chain: SplitChain) -> Result<CmdRequest, BadRequest> {
    let SplitChain {
        readable, writable, ..
    } = chain;
    if readable.len() < CMD_REQ_LEN {
        return Err(BadRequest {
            error: ChainError::ShortHeader(readable.len()),
            resp: resp_of(writable, CMD_RESP_LEN),
        });
    }
    if writable.len() < CMD_RESP_LEN {
        return Err(BadRequest {
            error: ChainError::ShortResponse(writable.len()),
            resp: None,
        });
    }
    let mut header: CmdReqHeader =
        read_obj(mem, &readable).map_err(|error| BadRequest { error, resp: None })?;
    header.tag = u64::from_le(header.tag);
    let (_, data_out) = readable.split_at(CMD_REQ_LEN);
    let (resp, data_in) = writable.split_at(CMD_RESP_LEN);
    Ok(CmdRequest {
        header,
        data_out,
        resp,
        data_in,
    })
}

/// A control-queue request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CtrlRequest {
    Tmf(CtrlTmfReq),
    /// AN query or subscribe.
    An(CtrlAnReq),
}

/// Parse a control-queue chain (5.6.6.2); the response segments are sized
/// for the request's type (1 byte for TMF, 5 for AN). Multi-byte fields of
/// the returned request are converted to host byte order.
///
/// Errors, and where to answer (`resp`):
/// - readable shorter than the 4-byte `type`: `ShortHeader`; the layout is
///   unknown, `resp` is the first writable byte if any (see below);
/// - unknown `type`: `UnknownCtrlType`; `resp` is the first writable byte,
///   if any: write one response byte (`S_FAILURE`, or the caller's choice)
///   there and complete with used length 1. Only the TMF layout puts the
///   response code first; no driver sends other types, so this is a
///   best-effort answer that never writes more than one byte;
/// - readable shorter than the known type's request: `ShortHeader`, `resp`
///   sized for that type's response (1 byte, or 5 for AN whose response
///   code is at offset 4), if the writable part is that large;
/// - writable shorter than the response: `ShortResponse`, `resp` `None`.
///
/// So `resp.len()` tells the layout: 1 = one response byte, 5 =
/// `CtrlAnResp`.
pub fn parse_ctrl(
    mem: &GuestMem,
    chain: SplitChain,
) -> Result<(CtrlRequest, Segments), BadRequest> {
    let SplitChain {
        readable, writable, ..
    } = chain;
    let one_byte = size_of::<CtrlTmfResp>() as u64;
    if readable.len() < CTRL_TYPE_LEN {
        return Err(BadRequest {
            error: ChainError::ShortHeader(readable.len()),
            resp: resp_of(writable, one_byte),
        });
    }
    let mut ty = [0u8; 4];
    let n = readable
        .read_to(mem, &mut ty)
        .map_err(|error| BadRequest { error, resp: None })?;
    if n != ty.len() {
        return Err(BadRequest {
            error: ChainError::ShortHeader(n as u64),
            resp: None,
        });
    }
    let ty = u32::from_le_bytes(ty);
    let (req_len, resp_len) = match ty {
        T_TMF => (size_of::<CtrlTmfReq>(), size_of::<CtrlTmfResp>()),
        T_AN_QUERY | T_AN_SUBSCRIBE => (size_of::<CtrlAnReq>(), size_of::<CtrlAnResp>()),
        _ => {
            return Err(BadRequest {
                error: ChainError::UnknownCtrlType(ty),
                resp: resp_of(writable, one_byte),
            })
        }
    };
    let (req_len, resp_len) = (req_len as u64, resp_len as u64);
    if readable.len() < req_len {
        return Err(BadRequest {
            error: ChainError::ShortHeader(readable.len()),
            resp: resp_of(writable, resp_len),
        });
    }
    if writable.len() < resp_len {
        return Err(BadRequest {
            error: ChainError::ShortResponse(writable.len()),
            resp: None,
        });
    }
    let bad = |error| BadRequest { error, resp: None };
    let req = if ty == T_TMF {
        let mut tmf: CtrlTmfReq = read_obj(mem, &readable).map_err(bad)?;
        tmf.type_ = u32::from_le(tmf.type_);
        tmf.subtype = u32::from_le(tmf.subtype);
        tmf.tag = u64::from_le(tmf.tag);
        CtrlRequest::Tmf(tmf)
    } else {
        let mut an: CtrlAnReq = read_obj(mem, &readable).map_err(bad)?;
        an.type_ = u32::from_le(an.type_);
        an.event_requested = u32::from_le(an.event_requested);
        CtrlRequest::An(an)
    };
    let (resp, _) = writable.split_at(resp_len);
    Ok((req, resp))
}

#[cfg(test)]
mod tests;
