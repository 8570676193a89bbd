//! The inflight region (vhost-user spec, "Inflight I/O tracking", split
//! virtqueues): shared memory the frontend keeps across backend restarts,
//! in which the backend marks every request it took from the avail ring
//! until its used entry is published. A restarted backend reads it to
//! resubmit what its predecessor had in flight and to repair a used-ring
//! update that was cut in half.
//!
//! Layout (per queue, each queue's part aligned to 64 bytes):
//!
//! ```text
//! 0   u64 features        (0)
//! 8   u16 version         (0: never used; 1: initialised)
//! 10  u16 desc_num        (the queue size the region was made for)
//! 12  u16 last_batch_head (the head whose used entry is being published)
//! 14  u16 used_idx        (the used index once that publication is done)
//! 16  desc[desc_num], 16 bytes each:
//!     u8 inflight, u8 padding[5], u16 next, u64 counter
//! ```
//!
//! The spec leaves the five padding bytes to the backend. We keep a
//! completion record there: byte 0 is [`RECORD_DONE`] once the request's
//! response (and data-in) is in guest memory, bytes 1..5 its used length.
//! A restarted daemon publishes such a request as it is instead of running
//! it again: nothing the guest was told can be applied twice once its
//! answer exists (docs/development.md, "Restart and in-flight requests").

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory, VolatileSlice};

/// Size of a queue's header.
const HEADER: usize = 16;
/// Size of one descriptor's state.
const DESC: usize = 16;
/// Each queue's part starts on this boundary.
const ALIGN: usize = 64;
/// `version` of an initialised queue region.
pub const VERSION: u16 = 1;
/// Completion record: the response is in guest memory.
pub const RECORD_DONE: u8 = 1;
/// Completion record: the command took effect with GOOD status but its
/// response is not written yet (COMPARE AND WRITE).
pub const RECORD_APPLIED: u8 = 2;

const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
const OFF_LAST_BATCH_HEAD: usize = 12;
const OFF_USED_IDX: usize = 14;
const D_INFLIGHT: usize = 0;
const D_RECORD: usize = 1;
const D_RECORD_LEN: usize = 2;
const D_COUNTER: usize = 8;

/// Bytes of one queue's part for queues of `queue_size` entries.
pub fn queue_region_size(queue_size: u16) -> usize {
    let raw = HEADER + DESC * usize::from(queue_size);
    raw.div_ceil(ALIGN) * ALIGN
}

/// Bytes of a region for `num_queues` queues of `queue_size` entries.
pub fn region_size(num_queues: u16, queue_size: u16) -> usize {
    usize::from(num_queues) * queue_region_size(queue_size)
}

/// Why a region is refused.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    #[error("inflight region: {0}")]
    Invalid(String),
    #[error("inflight region: queue {queue}: {what}")]
    Queue { queue: u16, what: String },
    #[error("inflight region: cannot map it: {0}")]
    Map(String),
}

/// A mapped inflight region.
#[derive(Debug)]
pub struct InflightRegion {
    map: MmapRegion<()>,
    num_queues: u16,
    queue_size: u16,
}

impl InflightRegion {
    /// Map `size` bytes of `file` at `offset` for `num_queues` queues of
    /// `queue_size` entries, after checking that the file is big enough
    /// and that every queue's part is either unused or consistent.
    pub fn map(
        file: File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Arc<Self>, InflightError> {
        if num_queues == 0 || queue_size == 0 || queue_size > 32768 {
            return Err(InflightError::Invalid(format!(
                "{num_queues} queues of {queue_size} entries"
            )));
        }
        let need = region_size(num_queues, queue_size) as u64;
        if size < need {
            return Err(InflightError::Invalid(format!(
                "{size} bytes for {num_queues} queues of {queue_size} entries (need {need})"
            )));
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = u64::try_from(page).unwrap_or(4096).max(1);
        if offset % page != 0 {
            return Err(InflightError::Invalid(format!(
                "offset {offset} is not page aligned"
            )));
        }
        let file_len = file
            .metadata()
            .map_err(|e| InflightError::Map(e.to_string()))?
            .len();
        if !offset.checked_add(need).is_some_and(|end| end <= file_len) {
            return Err(InflightError::Invalid(format!(
                "the file holds {file_len} bytes, the region needs {need} at offset {offset}"
            )));
        }
        // Seal the file against shrinking where it allows it (our own
        // memfds do), so that it cannot be cut under our mapping.
        // SAFETY: fcntl on an fd we own; failure is harmless.
        unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK,
            );
        }
        let map = MmapRegion::from_file(FileOffset::new(file, offset), need as usize)
            .map_err(|e| InflightError::Map(e.to_string()))?;
        let region = InflightRegion {
            map,
            num_queues,
            queue_size,
        };
        for q in 0..num_queues {
            region.check_queue(q)?;
        }
        Ok(Arc::new(region))
    }

    /// A new zeroed region in a sealed memfd (GET_INFLIGHT_FD): the file
    /// and its size.
    pub fn create(num_queues: u16, queue_size: u16) -> Result<(File, u64), InflightError> {
        if num_queues == 0 || queue_size == 0 || queue_size > 32768 {
            return Err(InflightError::Invalid(format!(
                "{num_queues} queues of {queue_size} entries"
            )));
        }
        let size = region_size(num_queues, queue_size) as u64;
        let fd = nix::sys::memfd::memfd_create(
            c"vhost-user-scsi-inflight",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC
                | nix::sys::memfd::MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .map_err(|e| InflightError::Map(format!("memfd_create: {e}")))?;
        let file = File::from(fd);
        file.set_len(size)
            .map_err(|e| InflightError::Map(format!("ftruncate: {e}")))?;
        // SAFETY: fcntl on an fd we own.
        let rc = unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot seal the inflight memfd");
        }
        Ok((file, size))
    }

    fn slice(&self) -> VolatileSlice<'_> {
        self.map.as_volatile_slice()
    }

    fn base(&self, queue: u16) -> usize {
        usize::from(queue) * queue_region_size(self.queue_size)
    }

    fn load_u8(&self, off: usize) -> u8 {
        self.slice().load::<u8>(off, Ordering::Acquire).unwrap_or(0)
    }

    fn load_u16(&self, off: usize) -> u16 {
        self.slice()
            .load::<u16>(off, Ordering::Acquire)
            .map(u16::from_le)
            .unwrap_or(0)
    }

    fn load_u64(&self, off: usize) -> u64 {
        self.slice()
            .load::<u64>(off, Ordering::Acquire)
            .map(u64::from_le)
            .unwrap_or(0)
    }

    fn store_u8(&self, off: usize, v: u8) {
        let _ = self.slice().store(v, off, Ordering::Release);
    }

    fn store_u16(&self, off: usize, v: u16) {
        let _ = self.slice().store(v.to_le(), off, Ordering::Release);
    }

    fn store_u64(&self, off: usize, v: u64) {
        let _ = self.slice().store(v.to_le(), off, Ordering::Release);
    }

    fn desc_off(&self, queue: u16, head: u16) -> usize {
        self.base(queue) + HEADER + DESC * usize::from(head)
    }

    /// Refuse a queue part that is neither unused nor consistent with the
    /// queue size; initialise an unused one.
    fn check_queue(&self, queue: u16) -> Result<(), InflightError> {
        let base = self.base(queue);
        let bad = |what: String| InflightError::Queue { queue, what };
        match self.load_u16(base + OFF_VERSION) {
            0 => {
                // Never used: whatever else it holds is not ours.
                let zero = vec![0u8; queue_region_size(self.queue_size)];
                let _ = self.slice().write_slice(&zero, base);
                self.store_u16(base + OFF_DESC_NUM, self.queue_size);
                self.store_u16(base + OFF_VERSION, VERSION);
                Ok(())
            }
            VERSION => {
                let desc_num = self.load_u16(base + OFF_DESC_NUM);
                if desc_num != self.queue_size {
                    return Err(bad(format!(
                        "made for {desc_num} entries, the queues have {}",
                        self.queue_size
                    )));
                }
                let lbh = self.load_u16(base + OFF_LAST_BATCH_HEAD);
                if lbh >= desc_num {
                    return Err(bad(format!("last_batch_head {lbh} >= {desc_num}")));
                }
                for head in 0..desc_num {
                    let flag = self.load_u8(self.desc_off(queue, head) + D_INFLIGHT);
                    if flag > 1 {
                        return Err(bad(format!("descriptor {head}: inflight flag {flag}")));
                    }
                }
                Ok(())
            }
            v => Err(bad(format!("unknown version {v}"))),
        }
    }

    /// The tracking of queue `queue`, if the region covers it.
    pub fn queue(self: &Arc<Self>, queue: u16) -> Option<QueueInflight> {
        (queue < self.num_queues).then(|| QueueInflight {
            region: self.clone(),
            queue,
            counter: 1,
        })
    }
}

/// A request to resubmit after a restart, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resubmit {
    pub head: u16,
    /// Its response was already in guest memory: publish it with this used
    /// length instead of running it again.
    pub done: Option<u32>,
    /// It took effect with GOOD status (a COMPARE AND WRITE): answer GOOD
    /// instead of running it again.
    pub applied: bool,
}

/// Lets another thread (the slow lane) record that one request took
/// effect.
#[derive(Debug)]
pub struct InflightMark {
    region: Arc<InflightRegion>,
    off: usize,
}

impl InflightMark {
    /// The request took effect with GOOD status.
    pub fn applied(&self) {
        self.region.store_u8(self.off + D_RECORD, RECORD_APPLIED);
    }
}

/// What a queue's region says after a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub resubmit: Vec<Resubmit>,
    /// The avail index to continue from: the used index plus the requests
    /// in flight.
    pub next_avail: u16,
    /// A used-ring update was cut in half and has been completed.
    pub repaired: bool,
}

/// One queue's part of the region, owned by the queue's worker.
#[derive(Debug)]
pub struct QueueInflight {
    region: Arc<InflightRegion>,
    queue: u16,
    counter: u64,
}

impl QueueInflight {
    fn r(&self) -> &InflightRegion {
        &self.region
    }

    fn in_range(&self, head: u16) -> bool {
        head < self.region.queue_size
    }

    /// `head` was taken from the avail ring: mark it in flight before any of
    /// its data moves.
    pub fn begin(&mut self, head: u16) {
        if !self.in_range(head) {
            return;
        }
        let d = self.r().desc_off(self.queue, head);
        self.r().store_u8(d + D_RECORD, 0);
        self.r().store_u64(d + D_COUNTER, self.counter);
        self.counter = self.counter.wrapping_add(1);
        self.r().store_u8(d + D_INFLIGHT, 1);
    }

    /// `head`'s response is in guest memory and its used length is `len`.
    pub fn record_done(&self, head: u16, len: u32) {
        if !self.in_range(head) {
            return;
        }
        let d = self.r().desc_off(self.queue, head);
        let _ = self
            .r()
            .slice()
            .write_slice(&len.to_le_bytes(), d + D_RECORD_LEN);
        self.r().store_u8(d + D_RECORD, RECORD_DONE);
    }

    /// A handle that records, from another thread, that `head` took
    /// effect.
    pub fn mark(&self, head: u16) -> Option<InflightMark> {
        self.in_range(head).then(|| InflightMark {
            region: self.region.clone(),
            off: self.r().desc_off(self.queue, head),
        })
    }

    /// Publish `head`'s used entry: `publish` writes it and returns the new
    /// used index (or None when it failed); the region follows in the
    /// spec's order, so a crash at any point leaves it recoverable.
    pub fn publish(&mut self, head: u16, publish: impl FnOnce() -> Option<u16>) {
        if !self.in_range(head) {
            publish();
            return;
        }
        // Every store here and in `publish` (the used index) is a release
        // store: they become visible in program order, which is all a
        // crash of this process needs (the region and the rings outlive
        // it in the frontend's memory).
        let base = self.r().base(self.queue);
        self.r().store_u16(base + OFF_LAST_BATCH_HEAD, head);
        let Some(used_idx) = publish() else {
            return;
        };
        let d = self.r().desc_off(self.queue, head);
        self.r().store_u8(d + D_INFLIGHT, 0);
        self.r().store_u16(base + OFF_USED_IDX, used_idx);
    }

    /// Number of requests marked in flight.
    pub fn in_flight(&self) -> usize {
        (0..self.region.queue_size)
            .filter(|&h| {
                self.r()
                    .load_u8(self.r().desc_off(self.queue, h) + D_INFLIGHT)
                    == 1
            })
            .count()
    }

    /// After a restart: finish a torn used-ring update and list what was in
    /// flight. `used_idx` is the ring's used index in guest memory,
    /// `ring_size` the queue's size.
    pub fn recover(&mut self, used_idx: u16, ring_size: u16) -> Result<Recovery, InflightError> {
        let base = self.r().base(self.queue);
        let bad = |what: String| InflightError::Queue {
            queue: self.queue,
            what,
        };
        let mut repaired = false;
        if self.r().load_u16(base + OFF_USED_IDX) != used_idx {
            // The used index moved but the region did not follow: the
            // request being published is done.
            let lbh = self.r().load_u16(base + OFF_LAST_BATCH_HEAD);
            if self.in_range(lbh) {
                let d = self.r().desc_off(self.queue, lbh);
                if self.r().load_u8(d + D_INFLIGHT) == 1 {
                    repaired = true;
                }
                self.r().store_u8(d + D_INFLIGHT, 0);
            }
            self.r().store_u16(base + OFF_USED_IDX, used_idx);
        }
        let mut found: Vec<(u64, Resubmit)> = Vec::new();
        let mut max_counter = 0u64;
        for head in 0..self.region.queue_size {
            let d = self.r().desc_off(self.queue, head);
            if self.r().load_u8(d + D_INFLIGHT) != 1 {
                continue;
            }
            if head >= ring_size {
                return Err(bad(format!(
                    "descriptor {head} in flight beyond the ring's {ring_size} entries"
                )));
            }
            let counter = self.r().load_u64(d + D_COUNTER);
            max_counter = max_counter.max(counter);
            let record = self.r().load_u8(d + D_RECORD);
            let done = (record == RECORD_DONE).then(|| {
                let mut b = [0u8; 4];
                let _ = self.r().slice().read_slice(&mut b, d + D_RECORD_LEN);
                u32::from_le_bytes(b)
            });
            let applied = record == RECORD_APPLIED;
            found.push((
                counter,
                Resubmit {
                    head,
                    done,
                    applied,
                },
            ));
        }
        if found.len() > usize::from(ring_size) {
            return Err(bad(format!(
                "{} requests in flight on a ring of {ring_size}",
                found.len()
            )));
        }
        found.sort_by_key(|(c, r)| (*c, r.head));
        self.counter = max_counter.wrapping_add(1).max(1);
        let inuse = u16::try_from(found.len()).unwrap_or(u16::MAX);
        Ok(Recovery {
            next_avail: used_idx.wrapping_add(inuse),
            resubmit: found.into_iter().map(|(_, r)| r).collect(),
            repaired,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(queues: u16, size: u16) -> Arc<InflightRegion> {
        let (file, len) = InflightRegion::create(queues, size).unwrap();
        InflightRegion::map(file, 0, len, queues, size).unwrap()
    }

    #[test]
    fn sizes_follow_the_layout() {
        assert_eq!(queue_region_size(1), 64);
        assert_eq!(queue_region_size(128), 16 + 128 * 16 + 48);
        assert_eq!(queue_region_size(128) % 64, 0);
        assert_eq!(region_size(4, 128), 4 * queue_region_size(128));
    }

    #[test]
    fn fresh_region_is_initialised_and_empty() {
        let r = region(3, 8);
        for q in 0..3 {
            assert_eq!(r.load_u16(r.base(q) + OFF_VERSION), VERSION);
            assert_eq!(r.load_u16(r.base(q) + OFF_DESC_NUM), 8);
        }
        let mut q = r.queue(2).unwrap();
        assert!(r.queue(3).is_none());
        let rec = q.recover(0, 8).unwrap();
        assert_eq!(rec.next_avail, 0);
        assert!(rec.resubmit.is_empty());
    }

    #[test]
    fn in_flight_requests_are_resubmitted_oldest_first() {
        let r = region(1, 8);
        let mut q = r.queue(0).unwrap();
        for head in [5, 2, 7, 0] {
            q.begin(head);
        }
        // 2 completes; used index 1.
        q.publish(2, || Some(1));
        // 0's response is written but not published.
        q.record_done(0, 4242);
        // 7 (a COMPARE AND WRITE) took effect on another thread.
        q.mark(7).unwrap().applied();
        assert_eq!(q.in_flight(), 3);
        let mut after = r.queue(0).unwrap();
        let rec = after.recover(1, 8).unwrap();
        assert_eq!(rec.next_avail, 4);
        assert!(!rec.repaired);
        assert_eq!(
            rec.resubmit,
            vec![
                Resubmit {
                    head: 5,
                    done: None,
                    applied: false,
                },
                Resubmit {
                    head: 7,
                    done: None,
                    applied: true,
                },
                Resubmit {
                    head: 0,
                    done: Some(4242),
                    applied: false,
                },
            ]
        );
        // New requests are younger than the resubmitted ones.
        after.begin(3);
        let rec = r.queue(0).unwrap().recover(1, 8).unwrap();
        assert_eq!(rec.resubmit.last().map(|r| r.head), Some(3));
    }

    #[test]
    fn torn_used_update_is_repaired() {
        let r = region(1, 8);
        let mut q = r.queue(0).unwrap();
        q.begin(4);
        q.begin(6);
        // The daemon died after the used index moved to 1 for head 4 but
        // before the region followed.
        let base = r.base(0);
        r.store_u16(base + OFF_LAST_BATCH_HEAD, 4);
        let rec = r.queue(0).unwrap().recover(1, 8).unwrap();
        assert!(rec.repaired);
        assert_eq!(
            rec.resubmit,
            vec![Resubmit {
                head: 6,
                done: None,
                applied: false,
            }]
        );
        assert_eq!(rec.next_avail, 2);
        assert_eq!(r.load_u16(base + OFF_USED_IDX), 1);
    }

    #[test]
    fn wrong_sizes_and_garbage_are_refused() {
        let (file, len) = InflightRegion::create(2, 16).unwrap();
        // Too small for what it claims.
        assert!(InflightRegion::map(file.try_clone().unwrap(), 0, len, 4, 16).is_err());
        assert!(InflightRegion::map(file.try_clone().unwrap(), 0, len - 1, 2, 16).is_err());
        assert!(InflightRegion::map(file.try_clone().unwrap(), 100, len, 2, 16).is_err());
        assert!(InflightRegion::map(file.try_clone().unwrap(), 0, len, 0, 16).is_err());
        // Garbage: a version we do not know.
        {
            let r = InflightRegion::map(file.try_clone().unwrap(), 0, len, 2, 16).unwrap();
            r.store_u16(r.base(1) + OFF_VERSION, 7);
        }
        let e = InflightRegion::map(file.try_clone().unwrap(), 0, len, 2, 16).unwrap_err();
        assert!(e.to_string().contains("queue 1"), "{e}");
        // A region made for another queue size.
        {
            let r = InflightRegion::map(file.try_clone().unwrap(), 0, len, 2, 16).unwrap_or_else(
                |_| {
                    let (f, l) = InflightRegion::create(2, 16).unwrap();
                    InflightRegion::map(f, 0, l, 2, 16).unwrap()
                },
            );
            r.store_u16(r.base(0) + OFF_VERSION, VERSION);
        }
        let (file, len) = InflightRegion::create(2, 16).unwrap();
        {
            let r = InflightRegion::map(file.try_clone().unwrap(), 0, len, 2, 16).unwrap();
            r.store_u16(r.base(0) + OFF_DESC_NUM, 15);
        }
        assert!(InflightRegion::map(file.try_clone().unwrap(), 0, len, 2, 16).is_err());
        // Bad flags and heads.
        let (file, len) = InflightRegion::create(1, 16).unwrap();
        {
            let r = InflightRegion::map(file.try_clone().unwrap(), 0, len, 1, 16).unwrap();
            r.store_u8(r.desc_off(0, 3) + D_INFLIGHT, 9);
        }
        assert!(InflightRegion::map(file.try_clone().unwrap(), 0, len, 1, 16).is_err());
        let (file, len) = InflightRegion::create(1, 16).unwrap();
        {
            let r = InflightRegion::map(file.try_clone().unwrap(), 0, len, 1, 16).unwrap();
            r.store_u16(r.base(0) + OFF_LAST_BATCH_HEAD, 16);
        }
        assert!(InflightRegion::map(file, 0, len, 1, 16).is_err());
    }

    #[test]
    fn heads_beyond_the_ring_are_refused_at_recovery() {
        let r = region(1, 16);
        let mut q = r.queue(0).unwrap();
        q.begin(12);
        assert!(r.queue(0).unwrap().recover(0, 8).is_err());
        // Out-of-range heads are ignored by the bookkeeping itself.
        q.begin(16);
        q.record_done(40, 1);
        let mut published = false;
        q.publish(99, || {
            published = true;
            Some(1)
        });
        assert!(published);
    }
}
