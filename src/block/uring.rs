//! The io_uring engine: one ring per worker thread, moving data between
//! guest memory (iovecs) and a [`Backing`].
//!
//! # Lifecycle
//!
//! 1. **Control thread**: [`Engine::new`] builds the ring with
//!    `SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG | R_DISABLED` (falling
//!    back to a plain ring on kernels that reject those flags), creates a
//!    non-blocking eventfd and registers it for completion notification.
//!    The `Engine` is then moved to its worker thread.
//! 2. **Worker thread**: [`Engine::enable`] enables the ring. A
//!    `SINGLE_ISSUER` ring belongs to the first thread that enables it, so
//!    every later `submit`/`reap`/`drain` must happen on that thread (an
//!    `enable` is also done implicitly by the first `submit`/`reap`). The
//!    worker puts [`Engine::event_fd`] in its epoll.
//! 3. **Per batch of guest requests**: [`Engine::push`] each op (cheap: it
//!    only fills SQEs, or queues them in a backlog when the ring is full),
//!    then one [`Engine::submit`] for the batch.
//! 4. **On eventfd readiness**: [`Engine::reap`] resets the eventfd, enters
//!    the kernel with `GETEVENTS` (needed with `DEFER_TASKRUN`: completions
//!    are only posted when the issuer enters the kernel), resubmits short or
//!    `EAGAIN` transfers, and returns every finished op as a [`Completion`]
//!    carrying the caller's `user_data`.
//! 5. **On queue stop / task management**: [`Engine::drain`] blocks until
//!    [`Engine::in_flight`] is zero. Dropping an `Engine` drains too (bounded
//!    wait); buffers of ops still in the kernel after that are leaked rather
//!    than freed under the kernel's feet. Drain on the worker thread before
//!    the `Engine` is dropped elsewhere: a `SINGLE_ISSUER` ring cannot be
//!    entered from another thread, so a foreign-thread drop cannot wait and
//!    the caller's memory of any op still in flight must outlive the ring.
//!
//! # Data path
//!
//! Reads and writes are `READV`/`WRITEV` straight on the caller's iovecs
//! (zero copy). With an `O_DIRECT` backing, an op whose iovecs are not
//! aligned to [`Backing::dio_mem_align`] goes through an aligned bounce
//! buffer; an op whose offset or length is not a multiple of
//! [`Backing::dio_offset_align`] (which a bounce buffer cannot fix) is sent
//! to the backing's buffered twin descriptor instead. FUA writes use
//! `RWF_DSYNC`; flush is `FSYNC` with `DATASYNC`.
//!
//! The number of SQEs owned by the kernel never exceeds the completion
//! queue's size, so the CQ cannot overflow; should it overflow anyway, the
//! kernel's `NODROP` overflow list is flushed by the next `GETEVENTS` enter.

use std::alloc::Layout;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use smallvec::SmallVec;

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

impl IoVec {
    /// An iovec of `len` bytes at `base`.
    pub fn new(base: *mut u8, len: usize) -> IoVec {
        IoVec(libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        })
    }
    pub fn base(&self) -> *mut u8 {
        self.0.iov_base.cast()
    }
    pub fn len(&self) -> usize {
        self.0.iov_len
    }
    pub fn is_empty(&self) -> bool {
        self.0.iov_len == 0
    }
}

/// The iovecs of one op: a few inline (a request's buffers are usually 1 to
/// 4 segments), more on the heap.
pub type IoVecs = SmallVec<[IoVec; 4]>;

/// One operation for the engine.
#[derive(Debug)]
pub enum EngineOp {
    Read {
        offset: ByteOffset,
        iovecs: IoVecs,
    },
    Write {
        offset: ByteOffset,
        iovecs: IoVecs,
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

/// Smallest ring we build.
const MIN_ENTRIES: u32 = 64;
/// Largest ring we build (the kernel's limit is 32768).
const MAX_ENTRIES: u32 = 4096;
/// Most iovecs one readv/writev accepts (`UIO_MAXIOV`).
const IOV_MAX: usize = libc::UIO_MAXIOV as usize;
/// `IORING_ENTER_GETEVENTS`.
const ENTER_GETEVENTS: u32 = 1;
/// Minimum alignment of bounce buffers.
const BOUNCE_ALIGN: usize = 4096;
/// Longest time `Drop` waits for in-flight ops.
const DROP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A heap buffer with a chosen alignment (the bounce buffer).
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf exclusively owns its allocation; it is plain memory.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// `None` for a zero length, an impossible layout or allocation failure.
    fn new(len: usize, align: usize) -> Option<AlignedBuf> {
        if len == 0 {
            return None;
        }
        let layout = Layout::from_size_align(len, align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        NonNull::new(ptr).map(|ptr| AlignedBuf { ptr, layout })
    }
    fn iovec(&self) -> IoVec {
        IoVec::new(self.ptr.as_ptr(), self.layout.size())
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Execute an op synchronously on a memory-backed (tmpfs) file: a readv or
/// writev is a copy to or from the page cache there, which io_uring could
/// only hand to a worker thread (tmpfs has no NOWAIT path). Loops over short
/// transfers and IOV_MAX chunks; EOF before the end is EIO.
///
/// # Safety
/// The iovecs must be valid for the op's direction.
unsafe fn copy_inline(
    fd: RawFd,
    kind: Kind,
    offset: u64,
    iovecs: &[IoVec],
    total: u64,
) -> Result<u64, i32> {
    if kind == Kind::Flush {
        // SAFETY: fdatasync on a descriptor we hold; no memory involved.
        return match unsafe { libc::fdatasync(fd) } {
            0 => Ok(0),
            _ => Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)),
        };
    }
    let mut iov: IoVecs = iovecs.iter().copied().collect();
    let mut start = 0usize;
    let mut done = 0u64;
    while done < total {
        let end = iov.len().min(start + IOV_MAX);
        let Some(rest) = iov.get(start..end) else {
            return Err(libc::EIO);
        };
        let pos = i64::try_from(offset + done).map_err(|_| libc::EINVAL)?;
        // SAFETY: `rest` is a live array of iovecs (IoVec is a transparent
        // libc::iovec) whose buffers the caller guarantees valid.
        let n = unsafe {
            match kind {
                Kind::Read => libc::preadv2(fd, rest.as_ptr().cast(), rest.len() as i32, pos, 0),
                Kind::Write { fua } => libc::pwritev2(
                    fd,
                    rest.as_ptr().cast(),
                    rest.len() as i32,
                    pos,
                    if fua { libc::RWF_DSYNC } else { 0 },
                ),
                Kind::Flush => 0,
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if e == libc::EINTR || e == libc::EAGAIN {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(libc::EIO);
        }
        let mut n = n as u64;
        done += n;
        // Skip what was transferred.
        while n > 0 {
            let Some(v) = iov.get_mut(start) else { break };
            let len = v.len() as u64;
            if n >= len {
                n -= len;
                start += 1;
            } else {
                *v = IoVec::new(v.base().wrapping_add(n as usize), v.len() - n as usize);
                n = 0;
            }
        }
    }
    Ok(done)
}

/// Copy `buf` out to the caller's iovecs (after a bounced read).
///
/// # Safety
/// The iovecs must be valid for writes and not overlap `buf`.
unsafe fn copy_to_iovecs(buf: &AlignedBuf, iovecs: &[IoVec]) {
    let mut pos = 0usize;
    for iov in iovecs {
        let n = iov.len().min(buf.layout.size() - pos);
        // SAFETY: `pos + n <= buf size`; the caller guarantees `iov` is
        // writable for its length, and the regions are distinct allocations.
        unsafe { std::ptr::copy_nonoverlapping(buf.ptr.as_ptr().add(pos), iov.base(), n) };
        pos += n;
    }
}

/// Copy the caller's iovecs into `buf` (before a bounced write).
///
/// # Safety
/// The iovecs must be valid for reads and not overlap `buf`.
unsafe fn copy_from_iovecs(buf: &AlignedBuf, iovecs: &[IoVec]) {
    let mut pos = 0usize;
    for iov in iovecs {
        let n = iov.len().min(buf.layout.size() - pos);
        // SAFETY: as in `copy_to_iovecs`, with the direction reversed.
        unsafe { std::ptr::copy_nonoverlapping(iov.base(), buf.ptr.as_ptr().add(pos), n) };
        pos += n;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write { fua: bool },
    Flush,
}

struct Bounce {
    buf: AlignedBuf,
    /// The caller's iovecs, for the copy-out of a read.
    user: IoVecs,
}

/// One op owned by the engine until its completion is reaped.
struct Slot {
    user_data: u64,
    /// Keeps the fd open while the kernel uses it.
    _backing: Arc<Backing>,
    fd: RawFd,
    kind: Kind,
    offset: u64,
    total: u64,
    done: u64,
    /// What the kernel transfers to/from; `iovecs[start..]` remains.
    iovecs: IoVecs,
    start: usize,
    bounce: Option<Bounce>,
}

impl Slot {
    fn sqe(&self, idx: usize) -> squeue::Entry {
        let fd = types::Fd(self.fd);
        let rest = self.iovecs.get(self.start..).unwrap_or(&[]);
        let ptr = rest.as_ptr().cast::<libc::iovec>();
        // Bounded by IOV_MAX (1024), so the cast cannot truncate.
        let n = rest.len().min(IOV_MAX) as u32;
        let offset = self.offset + self.done;
        let entry = match self.kind {
            Kind::Read => opcode::Readv::new(fd, ptr, n).offset(offset).build(),
            Kind::Write { fua } => opcode::Writev::new(fd, ptr, n)
                .offset(offset)
                .rw_flags(if fua { libc::RWF_DSYNC } else { 0 })
                .build(),
            Kind::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        };
        let entry = if self._backing.blocks_submitter() {
            entry.flags(squeue::Flags::ASYNC)
        } else {
            entry
        };
        entry.user_data(idx as u64)
    }

    /// Skip `n` transferred bytes of the remaining iovecs.
    fn advance(&mut self, mut n: u64) {
        while n > 0 {
            let Some(iov) = self.iovecs.get_mut(self.start) else {
                return;
            };
            let len = iov.len() as u64;
            if n >= len {
                self.start += 1;
                n -= len;
            } else {
                // `n < len <= usize::MAX`, so the cast is lossless.
                let n = n as usize;
                iov.0.iov_base = iov.base().wrapping_add(n).cast();
                iov.0.iov_len -= n;
                return;
            }
        }
        // Drop leading empty iovecs so the next SQE starts on data.
        while self.iovecs.get(self.start).is_some_and(IoVec::is_empty) {
            self.start += 1;
        }
    }
}

/// Bookkeeping, separate from the ring so CQEs can be handled while the
/// completion queue is borrowed.
struct State {
    /// Boxed so that a slot never moves while the kernel may read its
    /// iovec array (kept inline in the slot); boxes are reused, so there is
    /// no allocation per op once the engine has warmed up.
    #[allow(clippy::vec_box)] // the box is the point: a stable address
    slots: Vec<Box<Option<Slot>>>,
    free: Vec<usize>,
    /// Occupied slots.
    live: usize,
    /// Slots waiting for SQ space (new ops and resubmissions).
    backlog: VecDeque<usize>,
    /// SQEs handed to the ring whose CQE has not been seen yet.
    in_kernel: usize,
    /// Bound on `in_kernel` (the CQ size), so the CQ cannot overflow.
    kernel_cap: usize,
    /// Ops completed without reaching the kernel, returned by the next reap.
    ready: Vec<Completion>,
}

impl State {
    fn insert(&mut self, slot: Slot) -> usize {
        self.live += 1;
        match self.free.pop() {
            Some(idx) => {
                if let Some(s) = self.slots.get_mut(idx) {
                    **s = Some(slot);
                }
                idx
            }
            None => {
                self.slots.push(Box::new(Some(slot)));
                self.slots.len() - 1
            }
        }
    }

    fn finish(&mut self, idx: usize, result: Result<u64, i32>, out: &mut Vec<Completion>) {
        let Some(slot) = self.slots.get_mut(idx).and_then(|b| b.take()) else {
            return;
        };
        self.free.push(idx);
        self.live -= 1;
        if let (Ok(_), Kind::Read, Some(b)) = (result, slot.kind, slot.bounce.as_ref()) {
            // SAFETY: the kernel is done with the bounce buffer (its CQE
            // arrived) and `push`'s contract keeps the caller's iovecs valid
            // and writable until this completion is returned.
            unsafe { copy_to_iovecs(&b.buf, &b.user) };
        }
        out.push(Completion {
            user_data: slot.user_data,
            result,
        });
    }

    fn on_cqe(&mut self, idx: u64, res: i32, out: &mut Vec<Completion>) {
        self.in_kernel = self.in_kernel.saturating_sub(1);
        let idx = usize::try_from(idx).unwrap_or(usize::MAX);
        let Some(slot) = self.slots.get_mut(idx).and_then(|b| b.as_mut().as_mut()) else {
            tracing::error!(idx, res, "io_uring completion for an unknown slot");
            return;
        };
        if res < 0 {
            let errno = -res;
            if errno == libc::EAGAIN || errno == libc::EINTR {
                self.backlog.push_back(idx);
            } else {
                self.finish(idx, Err(errno), out);
            }
            return;
        }
        if slot.kind == Kind::Flush {
            self.finish(idx, Ok(0), out);
            return;
        }
        let n = u64::from(res.unsigned_abs()).min(slot.total - slot.done);
        if n == 0 {
            // EOF (read) or a write that made no progress.
            self.finish(idx, Err(libc::EIO), out);
            return;
        }
        slot.done += n;
        if slot.done >= slot.total {
            let total = slot.total;
            self.finish(idx, Ok(total), out);
        } else {
            slot.advance(n);
            self.backlog.push_back(idx);
        }
    }
}

/// One io_uring, owned by one worker thread.
pub struct Engine {
    ring: IoUring,
    event_fd: OwnedFd,
    /// Built `R_DISABLED` and not yet enabled.
    needs_enable: bool,
    /// Inline completions are in `st.ready` but the eventfd was not
    /// written yet (done once per batch, in `submit`).
    ready_unsignalled: bool,
    st: State,
}

fn ring_err(e: io::Error) -> BlockError {
    BlockError::Ring(e)
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

impl Engine {
    /// Build a ring of at least `entries` (rounded up to a power of two, at
    /// least 64, at most 4096) SQ entries; the CQ is twice that.
    pub fn new(entries: u32) -> Result<Engine, BlockError> {
        Self::build(entries, true)
    }

    /// Like [`Engine::new`], but a plain ring (no `SINGLE_ISSUER` /
    /// `DEFER_TASKRUN`) that any thread may submit to and drain, one at a
    /// time (the caller serialises access, e.g. with a mutex). The vhost
    /// layer uses this so that task management and queue stops can drain a
    /// worker's ring from another thread.
    pub fn new_shared(entries: u32) -> Result<Engine, BlockError> {
        Self::build(entries, false)
    }

    fn build(entries: u32, single_issuer: bool) -> Result<Engine, BlockError> {
        let entries = entries.clamp(MIN_ENTRIES, MAX_ENTRIES).next_power_of_two();
        let built = if single_issuer {
            IoUring::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag()
                .setup_r_disabled()
                .build(entries)
        } else {
            IoUring::new(entries)
        };
        let (ring, needs_enable) = match built {
            Ok(r) => (r, single_issuer),
            Err(e) if single_issuer && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    "io_uring SINGLE_ISSUER/DEFER_TASKRUN unsupported ({e}); using a plain ring"
                );
                (IoUring::new(entries).map_err(ring_err)?, false)
            }
            Err(e) => return Err(ring_err(e)),
        };
        // SAFETY: plain syscall; the result is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(ring_err(io::Error::last_os_error()));
        }
        // SAFETY: `efd` is a freshly created descriptor nobody else owns.
        let event_fd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter()
            .register_eventfd(event_fd.as_raw_fd())
            .map_err(ring_err)?;
        let kernel_cap = ring.params().cq_entries() as usize;
        Ok(Engine {
            ring,
            event_fd,
            needs_enable,
            ready_unsignalled: false,
            st: State {
                slots: Vec::new(),
                free: Vec::new(),
                live: 0,
                backlog: VecDeque::new(),
                in_kernel: 0,
                kernel_cap,
                ready: Vec::new(),
            },
        })
    }

    /// Enable the ring on the calling (worker) thread, which becomes its
    /// only issuer. Idempotent; a no-op for a plain ring.
    pub fn enable(&mut self) -> Result<(), BlockError> {
        if self.needs_enable {
            self.ring
                .submitter()
                .register_enable_rings()
                .map_err(ring_err)?;
            self.needs_enable = false;
        }
        Ok(())
    }

    /// The eventfd signalled when completions may be available.
    pub fn event_fd(&self) -> RawFd {
        self.event_fd.as_raw_fd()
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
        let (kind, offset, iovecs) = match op {
            EngineOp::Read { offset, iovecs } => (Kind::Read, offset.0, iovecs),
            EngineOp::Write {
                offset,
                iovecs,
                fua,
            } => (Kind::Write { fua }, offset.0, iovecs),
            EngineOp::Flush => (Kind::Flush, 0, IoVecs::new()),
        };
        let total: u64 = iovecs.iter().map(|v| v.len() as u64).sum();
        if kind != Kind::Flush && total == 0 {
            self.complete_now(user_data, Ok(0));
            return Ok(());
        }
        if backing.is_memory() {
            // SAFETY: `push`'s contract: the iovecs are valid for this op.
            let r = unsafe { copy_inline(backing.as_raw_fd(), kind, offset, &iovecs, total) };
            self.st.ready.push(Completion {
                user_data,
                result: r,
            });
            self.ready_unsignalled = true;
            return Ok(());
        }

        let mut fd = backing.as_raw_fd();
        let mut bounce = None;
        let mut iovecs = iovecs;
        if kind != Kind::Flush && backing.is_direct() {
            let oa = backing.dio_offset_align().max(1);
            let ma = backing.dio_mem_align().max(1);
            if offset % oa != 0 || total % oa != 0 {
                // No buffer can make this O_DIRECT-legal: go buffered.
                fd = backing.buffered_fd();
            } else if iovecs.len() > IOV_MAX
                || iovecs
                    .iter()
                    .any(|v| v.base() as usize % ma != 0 || v.len() % ma != 0)
            {
                let buf = usize::try_from(total)
                    .ok()
                    .and_then(|len| AlignedBuf::new(len, ma.max(BOUNCE_ALIGN)));
                let Some(buf) = buf else {
                    self.complete_now(user_data, Err(libc::ENOMEM));
                    return Ok(());
                };
                if matches!(kind, Kind::Write { .. }) {
                    // SAFETY: the caller guarantees the iovecs are valid for
                    // reads; `buf` is a fresh allocation of `total` bytes.
                    unsafe { copy_from_iovecs(&buf, &iovecs) };
                }
                let bounce_iov = smallvec::smallvec![buf.iovec()];
                bounce = Some(Bounce { buf, user: iovecs });
                iovecs = bounce_iov;
            }
        }

        let mut slot = Slot {
            user_data,
            _backing: Arc::clone(backing),
            fd,
            kind,
            offset,
            total,
            done: 0,
            iovecs,
            start: 0,
            bounce,
        };
        slot.advance(0);
        let idx = self.st.insert(slot);
        self.st.backlog.push_back(idx);
        self.fill_sq();
        Ok(())
    }

    /// Hand queued ops to the kernel (does not wait).
    pub fn submit(&mut self) -> Result<(), BlockError> {
        self.enable()?;
        if std::mem::take(&mut self.ready_unsignalled) {
            self.signal_eventfd();
        }
        loop {
            self.fill_sq();
            if self.ring.submission().is_empty() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The kernel is short of resources or has CQEs to flush:
                // the SQEs stay queued and the next reap retries.
                Err(e) if is_transient(&e) => return Ok(()),
                Err(e) => return Err(ring_err(e)),
            }
            if self.st.backlog.is_empty() || self.st.in_kernel >= self.st.kernel_cap {
                return Ok(());
            }
        }
    }

    /// Collect every finished op into `out` (appends). Call when the
    /// eventfd is readable; never blocks.
    pub fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), BlockError> {
        self.enable()?;
        self.clear_eventfd();
        self.reap_pending(out)
    }

    /// [`Engine::reap`] without resetting the eventfd (a poller that
    /// looked at [`Engine::has_completions`]; no system call on a plain
    /// ring unless resubmissions or an overflow need one). Call
    /// [`Engine::clear_event`] and look again before sleeping on the
    /// eventfd.
    pub fn reap_pending(&mut self, out: &mut Vec<Completion>) -> Result<(), BlockError> {
        self.enable()?;
        out.append(&mut self.st.ready);
        // A single-issuer ring posts completions only when its issuer enters
        // the kernel; a plain ring posts them directly, so it needs a system
        // call only to submit (resubmissions) or to flush an overflow.
        let must_enter = self.ring.params().is_setup_single_issuer();
        loop {
            self.fill_sq();
            if must_enter
                || !self.ring.submission().is_empty()
                || self.ring.submission().cq_overflow()
            {
                self.enter(0)?;
            }
            let n = self.collect(out);
            if n == 0 && !self.ring.submission().cq_overflow() {
                return Ok(());
            }
        }
    }

    /// True when [`Engine::reap`] would return something now (completions
    /// posted, or ops finished without the kernel, or completions the
    /// kernel holds back until the issuer enters it). Reads shared memory
    /// only: no system call.
    ///
    /// A `DEFER_TASKRUN` ring posts nothing to the completion queue until
    /// its issuer enters the kernel: a poller that only watched the queue
    /// would see a finished disk read only after it gave up and slept.
    /// `TASKRUN_FLAG` makes the kernel raise `IORING_SQ_TASKRUN` in the
    /// shared ring flags when such work is waiting; the reap enters the
    /// kernel with `GETEVENTS` and posts it.
    pub fn has_completions(&mut self) -> bool {
        !self.st.ready.is_empty()
            || !self.ring.completion().is_empty()
            || self.ring.submission().taskrun()
    }

    /// Reset the completion eventfd (after [`Engine::reap_pending`]).
    pub fn clear_event(&self) {
        self.clear_eventfd();
    }

    /// Ops in the submission queue, not yet handed to the kernel.
    pub fn queued(&mut self) -> usize {
        self.ring.submission().len()
    }

    /// Ops pushed but not yet returned by [`Engine::reap`].
    pub fn in_flight(&self) -> usize {
        self.st.live + self.st.ready.len()
    }

    /// Block until every queued op has completed, collecting completions.
    pub fn drain(&mut self, out: &mut Vec<Completion>) -> Result<(), BlockError> {
        loop {
            self.reap(out)?;
            if self.st.live == 0 {
                return Ok(());
            }
            self.check_progress()?;
            self.enter(1)?;
        }
    }

    fn check_progress(&self) -> Result<(), BlockError> {
        if self.st.in_kernel == 0 && self.st.backlog.is_empty() {
            return Err(ring_err(io::Error::other(
                "ops in flight but none queued or in the kernel",
            )));
        }
        Ok(())
    }

    /// Record a completion that never reaches the kernel and wake the
    /// worker through the eventfd so it reaps it.
    fn complete_now(&mut self, user_data: u64, result: Result<u64, i32>) {
        self.st.ready.push(Completion { user_data, result });
        self.signal_eventfd();
    }

    /// Make the eventfd readable (completions are waiting in `ready`).
    fn signal_eventfd(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        let rc = unsafe {
            libc::write(
                self.event_fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if rc < 0 {
            // Only EAGAIN (counter saturated) is possible: it is readable.
            tracing::debug!("eventfd write: {}", io::Error::last_os_error());
        }
    }

    fn clear_eventfd(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from our own
        // non-blocking eventfd; EAGAIN (nothing pending) is ignored.
        let _ = unsafe {
            libc::read(
                self.event_fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Move backlog entries into free SQ slots, keeping the number of ops
    /// owned by the kernel within the CQ size.
    fn fill_sq(&mut self) {
        let st = &mut self.st;
        if st.backlog.is_empty() {
            return;
        }
        let mut sq = self.ring.submission();
        while st.in_kernel < st.kernel_cap && !sq.is_full() {
            let Some(idx) = st.backlog.pop_front() else {
                break;
            };
            let Some(slot) = st.slots.get(idx).and_then(|b| b.as_ref().as_ref()) else {
                continue;
            };
            let sqe = slot.sqe(idx);
            // SAFETY: the SQE points at the slot's iovec array (heap memory
            // of a Vec that is not modified while the op is in the kernel)
            // and, through it, at the bounce buffer owned by the slot or at
            // caller memory that `push`'s contract keeps valid until the
            // completion is reaped. The fd is kept open by the slot's Arc.
            if unsafe { sq.push(&sqe) }.is_err() {
                st.backlog.push_front(idx);
                break;
            }
            st.in_kernel += 1;
        }
    }

    /// Enter the kernel: submit the SQ and run deferred task work
    /// (`GETEVENTS`), waiting for `min_complete` completions.
    fn enter(&mut self, min_complete: u32) -> Result<(), BlockError> {
        loop {
            let to_submit = self.ring.submission().len() as u32;
            // SAFETY: no extra argument is passed (`None`), so the raw
            // enter call only reads the ring's own shared memory.
            let r = unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    to_submit,
                    min_complete,
                    ENTER_GETEVENTS,
                    None,
                )
            };
            return match r {
                Ok(_) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                    if min_complete > 0 {
                        continue;
                    }
                    Ok(())
                }
                Err(e) if is_transient(&e) => Ok(()),
                Err(e) => Err(ring_err(e)),
            };
        }
    }

    /// Handle every CQE currently in the completion queue.
    fn collect(&mut self, out: &mut Vec<Completion>) -> usize {
        let mut n = 0;
        for cqe in self.ring.completion() {
            n += 1;
            self.st.on_cqe(cqe.user_data(), cqe.result(), out);
        }
        n
    }

    /// Wait up to `timeout` for one completion (used by `Drop`).
    fn wait_timeout(&mut self, timeout: Duration) -> Result<(), BlockError> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) || is_transient(&e) => Ok(()),
            Err(e) => Err(ring_err(e)),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.st.live == 0 || self.needs_enable {
            // Nothing ever reached the kernel of a ring never enabled.
            return;
        }
        let deadline = Instant::now() + DROP_DRAIN_TIMEOUT;
        let mut discarded = Vec::new();
        while self.st.live > 0 && Instant::now() < deadline {
            if self.reap(&mut discarded).is_err() || self.st.live == 0 {
                break;
            }
            if self.check_progress().is_err() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self
                .wait_timeout(left.min(Duration::from_millis(100)))
                .is_err()
            {
                break;
            }
        }
        if self.st.live > 0 {
            tracing::error!(
                in_flight = self.st.live,
                "io_uring engine dropped with ops in flight; leaking their buffers"
            );
            for slot in self.st.slots.drain(..).filter_map(|b| *b) {
                std::mem::forget(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn assert_send<T: Send>() {}

    #[test]
    fn engine_is_send() {
        assert_send::<Engine>();
        assert_send::<EngineOp>();
    }

    /// A zeroed buffer of `len` bytes starting `skew` bytes past a 4096
    /// boundary.
    struct TestBuf {
        v: Vec<u8>,
        start: usize,
        len: usize,
    }

    impl TestBuf {
        fn new(len: usize, skew: usize) -> TestBuf {
            let v = vec![0u8; len + 8192];
            let addr = v.as_ptr() as usize;
            let start = (4096 - addr % 4096) % 4096 + skew;
            TestBuf { v, start, len }
        }
        fn slice(&self) -> &[u8] {
            &self.v[self.start..self.start + self.len]
        }
        fn slice_mut(&mut self) -> &mut [u8] {
            &mut self.v[self.start..self.start + self.len]
        }
        /// iovecs splitting the buffer at `cuts` (relative positions).
        fn iovecs(&mut self, cuts: &[usize]) -> Vec<IoVec> {
            let base = self.slice_mut().as_mut_ptr();
            let mut out = Vec::new();
            let mut prev = 0;
            for &c in cuts.iter().chain(std::iter::once(&self.len)) {
                out.push(IoVec::new(base.wrapping_add(prev), c - prev));
                prev = c;
            }
            out
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn image(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new_in("/tmp").unwrap();
        f.as_file().set_len(len).unwrap();
        f
    }

    fn engine() -> Engine {
        let mut e = Engine::new(64).unwrap();
        e.enable().unwrap();
        e
    }

    /// Push one op, submit, drain; returns its completion.
    fn run(e: &mut Engine, b: &Arc<Backing>, op: EngineOp) -> Result<u64, i32> {
        // SAFETY: tests keep the buffers alive until drain returns.
        unsafe { e.push(b, op, 42) }.unwrap();
        e.submit().unwrap();
        let mut out = Vec::new();
        e.drain(&mut out).unwrap();
        assert_eq!(e.in_flight(), 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].user_data, 42);
        out[0].result
    }

    fn read(offset: u64, iovecs: Vec<IoVec>) -> EngineOp {
        EngineOp::Read {
            offset: ByteOffset(offset),
            iovecs: iovecs.into(),
        }
    }

    fn write(offset: u64, iovecs: Vec<IoVec>, fua: bool) -> EngineOp {
        EngineOp::Write {
            offset: ByteOffset(offset),
            iovecs: iovecs.into(),
            fua,
        }
    }

    #[test]
    fn ring_sizes_are_clamped() {
        let e = Engine::new(1).unwrap();
        assert_eq!(e.ring.params().sq_entries(), 64);
        assert!(e.event_fd() >= 0);
        let e = Engine::new(100).unwrap();
        assert_eq!(e.ring.params().sq_entries(), 128);
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn enable_is_idempotent() {
        let mut e = Engine::new(64).unwrap();
        // This kernel supports SINGLE_ISSUER | DEFER_TASKRUN | R_DISABLED.
        assert!(e.needs_enable);
        e.enable().unwrap();
        assert!(!e.needs_enable);
        e.enable().unwrap();
    }

    /// A poller only looks at shared memory: a read that finished in the
    /// device must show there although a `DEFER_TASKRUN` ring posts its
    /// completion only when the issuer enters the kernel (the
    /// `IORING_SQ_TASKRUN` flag). On a file system that completes the read
    /// during its submission the test passes at once.
    #[test]
    fn finished_io_shows_to_a_poller_without_a_system_call() {
        let f = image(1 << 20);
        std::fs::write(f.path(), pattern(1 << 20, 9)).unwrap();
        f.as_file().sync_all().unwrap();
        let b = Arc::new(Backing::open(f.path(), false).unwrap());
        let mut e = engine();
        let mut buf = TestBuf::new(4096, 0);
        let iov = buf.iovecs(&[]);
        // SAFETY: the buffer outlives the op (reaped or drained below).
        unsafe { e.push(&b, read(65536, iov), 7) }.unwrap();
        e.submit().unwrap();
        let t = std::time::Instant::now();
        while !e.has_completions() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(5),
                "a finished read never showed to the poller (taskrun flag: {})",
                e.ring.submission().taskrun()
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut out = Vec::new();
        e.reap_pending(&mut out).unwrap();
        e.drain(&mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].result, Ok(4096));
        assert_eq!(buf.slice(), &pattern(1 << 20, 9)[65536..65536 + 4096]);
    }

    #[test]
    fn write_then_read_aligned_iovecs() {
        let f = image(1 << 20);
        let b = Arc::new(Backing::open(f.path(), false).unwrap());
        assert!(b.is_direct());
        let mut e = engine();
        let data = pattern(12288, 3);
        let mut wbuf = TestBuf::new(12288, 0);
        wbuf.slice_mut().copy_from_slice(&data);
        let iov = wbuf.iovecs(&[4096, 8192]);
        assert_eq!(run(&mut e, &b, write(8192, iov, false)), Ok(12288));

        let mut rbuf = TestBuf::new(12288, 0);
        let iov = rbuf.iovecs(&[8192]);
        assert_eq!(run(&mut e, &b, read(8192, iov)), Ok(12288));
        assert_eq!(rbuf.slice(), &data[..]);

        let on_disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&on_disk[8192..8192 + 12288], &data[..]);
        assert!(on_disk[..8192].iter().all(|&x| x == 0));
    }

    #[test]
    fn fua_write_and_flush() {
        let f = image(65536);
        let b = Arc::new(Backing::open(f.path(), false).unwrap());
        let mut e = engine();
        let mut wbuf = TestBuf::new(4096, 0);
        wbuf.slice_mut().copy_from_slice(&pattern(4096, 9));
        let iov = wbuf.iovecs(&[]);
        assert_eq!(run(&mut e, &b, write(0, iov, true)), Ok(4096));
        assert_eq!(run(&mut e, &b, EngineOp::Flush), Ok(0));
        let on_disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&on_disk[..4096], &pattern(4096, 9)[..]);
    }

    #[test]
    fn unaligned_memory_is_bounced() {
        let f = image(65536);
        let b = Arc::new(Backing::open(f.path(), false).unwrap());
        assert!(b.is_direct());
        let mut e = engine();
        let data = pattern(8192, 77);
        let mut wbuf = TestBuf::new(8192, 1);
        wbuf.slice_mut().copy_from_slice(&data);
        let iov = wbuf.iovecs(&[1000, 5000]);
        assert_eq!(run(&mut e, &b, write(4096, iov, false)), Ok(8192));
        assert_eq!(
            &std::fs::read(f.path()).unwrap()[4096..4096 + 8192],
            &data[..]
        );

        let mut rbuf = TestBuf::new(8192, 3);
        let iov = rbuf.iovecs(&[7, 4100]);
        assert_eq!(run(&mut e, &b, read(4096, iov)), Ok(8192));
        assert_eq!(rbuf.slice(), &data[..]);
    }

    #[test]
    fn misaligned_offset_uses_buffered_fd() {
        let f = image(65536);
        let b = Arc::new(Backing::open(f.path(), false).unwrap());
        let mut e = engine();
        let mut wbuf = TestBuf::new(3, 1);
        wbuf.slice_mut().copy_from_slice(b"abc");
        let iov = wbuf.iovecs(&[]);
        assert_eq!(run(&mut e, &b, write(1, iov, true)), Ok(3));
        // A direct read of the whole block sees the buffered write.
        let mut rbuf = TestBuf::new(4096, 0);
        let iov = rbuf.iovecs(&[]);
        assert_eq!(run(&mut e, &b, read(0, iov)), Ok(4096));
        assert_eq!(&rbuf.slice()[..5], b"\0abc\0");
    }

    #[test]
    fn more_iovecs_than_iov_max_are_resubmitted() {
        // Misaligned offset -> buffered fd -> the op is split into chunks
        // of IOV_MAX iovecs, i.e. short transfers that get resubmitted.
        let f = image(65536);
        let b = Arc::new(Backing::open(f.path(), false).unwrap());
        let mut e = engine();
        let n = 2500;
        let data = pattern(3 * n, 5);
        let mut wbuf = TestBuf::new(3 * n, 0);
        wbuf.slice_mut().copy_from_slice(&data);
        let cuts: Vec<usize> = (1..n).map(|i| 3 * i).collect();
        let iov = wbuf.iovecs(&cuts);
        assert_eq!(iov.len(), n);
        assert_eq!(run(&mut e, &b, write(5, iov, false)), Ok(3 * n as u64));
        let mut rbuf = TestBuf::new(3 * n, 0);
        let iov = rbuf.iovecs(&cuts);
        assert_eq!(run(&mut e, &b, read(5, iov)), Ok(3 * n as u64));
        assert_eq!(rbuf.slice(), &data[..]);

        // Aligned offset with > IOV_MAX iovecs on O_DIRECT -> bounced.
        let mut wbuf = TestBuf::new(512 * 1100, 0);
        let data = pattern(512 * 1100, 1);
        wbuf.slice_mut().copy_from_slice(&data);
        let cuts: Vec<usize> = (1..1100).map(|i| 512 * i).collect();
        let iov = wbuf.iovecs(&cuts);
        assert_eq!(run(&mut e, &b, write(0, iov, false)), Ok(512 * 1100));
        assert_eq!(&std::fs::read(f.path()).unwrap()[..512 * 1100], &data[..]);
    }

    #[test]
    fn read_at_eof_is_eio() {
        let f = image(4096);
        let b = Arc::new(Backing::open(f.path(), false).unwrap());
        let mut e = engine();
        let mut rbuf = TestBuf::new(4096, 0);
        let iov = rbuf.iovecs(&[]);
        assert_eq!(run(&mut e, &b, read(4096, iov)), Err(libc::EIO));
        // Spanning the end: a short read of 4096, resubmitted, then EOF.
        let mut rbuf = TestBuf::new(8192, 0);
        let iov = rbuf.iovecs(&[2048]);
        assert_eq!(run(&mut e, &b, read(0, iov)), Err(libc::EIO));
    }

    #[test]
    fn short_read_resubmits_remaining_iovecs() {
        let mut slot = Slot {
            user_data: 0,
            _backing: Arc::new(Backing::open(image(4096).path(), true).unwrap()),
            fd: -1,
            kind: Kind::Read,
            offset: 100,
            total: 30,
            done: 0,
            iovecs: smallvec::smallvec![
                IoVec::new(std::ptr::null_mut::<u8>().wrapping_add(1000), 10),
                IoVec::new(std::ptr::null_mut(), 0),
                IoVec::new(std::ptr::null_mut::<u8>().wrapping_add(2000), 20),
            ],
            start: 0,
            bounce: None,
        };
        slot.done = 4;
        slot.advance(4);
        assert_eq!(slot.start, 0);
        assert_eq!(slot.iovecs[0].base() as usize, 1004);
        assert_eq!(slot.iovecs[0].len(), 6);
        slot.done += 11;
        slot.advance(11);
        assert_eq!(slot.start, 2);
        assert_eq!(slot.iovecs[2].base() as usize, 2005);
        assert_eq!(slot.iovecs[2].len(), 15);
        let sqe = format!("{:?}", slot.sqe(7));
        assert!(sqe.contains("user_data: 7"), "{sqe}");
    }

    #[test]
    fn readonly_write_fails_with_ebadf() {
        let f = image(8192);
        let b = Arc::new(Backing::open(f.path(), true).unwrap());
        let mut e = engine();
        let mut wbuf = TestBuf::new(4096, 0);
        let iov = wbuf.iovecs(&[]);
        assert_eq!(run(&mut e, &b, write(0, iov, false)), Err(libc::EBADF));
        let mut rbuf = TestBuf::new(4096, 0);
        let iov = rbuf.iovecs(&[]);
        assert_eq!(run(&mut e, &b, read(0, iov)), Ok(4096));
    }

    fn wait_readable(fd: RawFd) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(rc, 1, "eventfd not signalled within 5 s");
    }

    #[test]
    fn zero_length_completes_via_eventfd() {
        let f = image(4096);
        let b = Arc::new(Backing::open(f.path(), false).unwrap());
        let mut e = engine();
        // SAFETY: no memory is referenced.
        unsafe { e.push(&b, read(0, Vec::new()), 5) }.unwrap();
        assert_eq!(e.in_flight(), 1);
        wait_readable(e.event_fd());
        let mut out = Vec::new();
        e.reap(&mut out).unwrap();
        assert_eq!(
            out,
            vec![Completion {
                user_data: 5,
                result: Ok(0)
            }]
        );
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn many_ops_beyond_ring_size_via_eventfd() {
        const N: usize = 600;
        let f = image((N * 4096) as u64);
        let b = Arc::new(Backing::open(f.path(), false).unwrap());
        let mut e = engine();
        let mut bufs: Vec<TestBuf> = (0..N)
            .map(|i| {
                let mut t = TestBuf::new(4096, 0);
                t.slice_mut().copy_from_slice(&pattern(4096, i as u8));
                t
            })
            .collect();
        for (i, t) in bufs.iter_mut().enumerate() {
            let iov = t.iovecs(&[]);
            // SAFETY: the buffers outlive the loop below.
            unsafe { e.push(&b, write((i * 4096) as u64, iov, false), i as u64) }.unwrap();
        }
        assert_eq!(e.in_flight(), N);
        e.submit().unwrap();
        let mut out = Vec::new();
        while out.len() < N {
            wait_readable(e.event_fd());
            e.reap(&mut out).unwrap();
        }
        assert_eq!(e.in_flight(), 0);
        let mut seen: Vec<u64> = out.iter().map(|c| c.user_data).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..N as u64).collect::<Vec<_>>());
        assert!(
            out.iter().all(|c| c.result == Ok(4096)),
            "{:?}",
            out.iter().find(|c| c.result != Ok(4096))
        );

        // Read everything back (unaligned, so bounced) with drain.
        let mut rbufs: Vec<TestBuf> = (0..N).map(|_| TestBuf::new(4096, 1)).collect();
        for (i, t) in rbufs.iter_mut().enumerate() {
            let iov = t.iovecs(&[100]);
            // SAFETY: the buffers outlive the drain below.
            unsafe { e.push(&b, read((i * 4096) as u64, iov), i as u64) }.unwrap();
        }
        e.submit().unwrap();
        let mut out = Vec::new();
        e.drain(&mut out).unwrap();
        assert_eq!(out.len(), N);
        for (i, t) in rbufs.iter().enumerate() {
            assert_eq!(t.slice(), &pattern(4096, i as u8)[..], "block {i}");
        }
    }

    #[test]
    fn enable_on_another_thread() {
        let f = image(65536);
        let b = Arc::new(Backing::open(f.path(), false).unwrap());
        let e = Engine::new(64).unwrap();
        let h = std::thread::spawn(move || {
            let mut e = e;
            e.enable().unwrap();
            let mut wbuf = TestBuf::new(4096, 0);
            wbuf.slice_mut().copy_from_slice(&pattern(4096, 1));
            let iov = wbuf.iovecs(&[]);
            assert_eq!(run(&mut e, &b, write(0, iov, false)), Ok(4096));
            let mut rbuf = TestBuf::new(4096, 0);
            let iov = rbuf.iovecs(&[]);
            assert_eq!(run(&mut e, &b, read(0, iov)), Ok(4096));
            assert_eq!(rbuf.slice(), &pattern(4096, 1)[..]);
        });
        h.join().unwrap();
    }

    #[test]
    fn drop_with_ops_in_flight_drains() {
        let mut f = tempfile::NamedTempFile::new_in("/tmp").unwrap();
        f.write_all(&vec![1u8; 1 << 20]).unwrap();
        let b = Arc::new(Backing::open(f.path(), false).unwrap());
        let mut bufs: Vec<TestBuf> = (0..64).map(|_| TestBuf::new(16384, 0)).collect();
        let mut e = engine();
        for (i, t) in bufs.iter_mut().enumerate() {
            let iov = t.iovecs(&[]);
            // SAFETY: the buffers outlive the engine.
            unsafe { e.push(&b, read((i * 16384) as u64, iov), i as u64) }.unwrap();
        }
        e.submit().unwrap();
        drop(e);
        assert!(bufs.iter().all(|t| t.slice().iter().all(|&x| x == 1)));
    }

    #[test]
    fn drop_on_foreign_thread_does_not_hang() {
        let f = image(1 << 20);
        let b = Arc::new(Backing::open(f.path(), false).unwrap());
        let mut bufs: Vec<TestBuf> = (0..32).map(|_| TestBuf::new(4096, 1)).collect();
        let iovs: Vec<Vec<IoVec>> = bufs.iter_mut().map(|t| t.iovecs(&[])).collect();
        let e = std::thread::spawn(move || {
            let mut e = engine();
            for (i, iov) in iovs.into_iter().enumerate() {
                // SAFETY: the buffers outlive the engine (dropped below).
                unsafe { e.push(&b, read((i * 4096) as u64, iov), i as u64) }.unwrap();
            }
            e.submit().unwrap();
            e
        })
        .join()
        .unwrap();
        let t = Instant::now();
        drop(e);
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(bufs);
    }

    /// DESTROYS the first 64 KiB of the device: run with
    /// `VUS_TEST_BLOCKDEV_RW=/dev/loopN cargo test -- --ignored`.
    #[test]
    #[ignore]
    fn block_device_write_read() {
        let Ok(dev) = std::env::var("VUS_TEST_BLOCKDEV_RW") else {
            return;
        };
        let b = Arc::new(Backing::open(std::path::Path::new(&dev), false).unwrap());
        assert!(b.is_direct());
        let mut e = engine();
        let data = pattern(8192, 11);
        let mut wbuf = TestBuf::new(8192, 0);
        wbuf.slice_mut().copy_from_slice(&data);
        let iov = wbuf.iovecs(&[4096]);
        assert_eq!(run(&mut e, &b, write(4096, iov, true)), Ok(8192));
        assert_eq!(run(&mut e, &b, EngineOp::Flush), Ok(0));
        let mut rbuf = TestBuf::new(8192, 1);
        let iov = rbuf.iovecs(&[3]);
        assert_eq!(run(&mut e, &b, read(4096, iov)), Ok(8192));
        assert_eq!(rbuf.slice(), &data[..]);
        // Misaligned offset goes through the buffered twin.
        let mut rbuf = TestBuf::new(5, 0);
        let iov = rbuf.iovecs(&[]);
        assert_eq!(run(&mut e, &b, read(4097, iov)), Ok(5));
        assert_eq!(rbuf.slice(), &data[1..6]);
        // Reading at the end of the device.
        let mut rbuf = TestBuf::new(4096, 0);
        let iov = rbuf.iovecs(&[]);
        assert_eq!(run(&mut e, &b, read(b.size().0, iov)), Err(libc::EIO));
    }
}
