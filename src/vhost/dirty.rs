//! Dirty-page logging for live migration (vhost-user LOG_SHMFD + the
//! VHOST_F_LOG_ALL feature): while QEMU migrates the guest, every byte we
//! write into guest memory must be marked in a bitmap QEMU shares with us
//! (one bit per 4 KiB guest-physical page), before the guest can see the
//! completion that makes it meaningful.
//!
//! Our writes into guest memory go through raw pointers (io_uring reads
//! into data-in buffers, inline copies) or vm-memory without a bitmap, so
//! nothing is marked for us: every write site marks the guest-physical
//! range it wrote explicitly (data-in, response headers and sense, event
//! queue events, control responses, the used ring).
//!
//! While logging is off, the cost is one load of a cached pointer per
//! batch.

use std::fs::File;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwapOption, Cache};
use vm_memory::{FileOffset, MmapRegion};

use crate::virtio_scsi::Segments;

/// Bytes of guest memory one bit of the log covers (VHOST_LOG_PAGE).
pub const LOG_PAGE: u64 = 0x1000;

/// A mapped dirty log.
#[derive(Debug)]
pub struct DirtyLog {
    map: MmapRegion<()>,
}

impl DirtyLog {
    /// Map `size` bytes of `file` at `offset` (SET_LOG_BASE).
    pub fn map(file: File, offset: u64, size: u64) -> Result<Self, String> {
        if size == 0 || size > (1 << 40) {
            return Err(format!("log of {size} bytes"));
        }
        let file_len = file.metadata().map_err(|e| e.to_string())?.len();
        if !offset.checked_add(size).is_some_and(|end| end <= file_len) {
            return Err(format!(
                "log of {size} bytes at offset {offset} in a file of {file_len}"
            ));
        }
        let map = MmapRegion::from_file(
            FileOffset::new(file, offset),
            usize::try_from(size).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        Ok(DirtyLog { map })
    }

    /// Where the bitmap is mapped.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// Bytes of the bitmap.
    pub fn size(&self) -> usize {
        self.map.size()
    }

    /// Mark `[gpa, gpa + len)` dirty. Out of line and cold: logging is the
    /// rare case, and the hot paths that call this stay as small as they
    /// were without it. Pages beyond the log are ignored (the
    /// frontend sized it for all guest memory: such an address is not in
    /// guest memory, and nothing was written there).
    #[cold]
    #[inline(never)]
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        let base = self.map.as_ptr();
        let size = self.map.size() as u64;
        for page in first..=last {
            let byte = page / 8;
            if byte >= size {
                break;
            }
            // SAFETY: `byte` is inside the mapping (checked above), which
            // lives as long as `self`; the frontend reads the bitmap
            // concurrently, so every update is an atomic OR on one byte.
            let cell = unsafe { AtomicU8::from_ptr(base.add(byte as usize)) };
            cell.fetch_or(1 << (page % 8), Ordering::Release);
        }
    }

    /// Mark the first `limit` bytes of `segs`.
    #[cold]
    #[inline(never)]
    pub fn mark_segments(&self, segs: &Segments, limit: u64) {
        let mut left = limit;
        for s in segs.segments() {
            if left == 0 {
                break;
            }
            let n = u64::from(s.len).min(left);
            self.mark(s.addr.0, n);
            left -= n;
        }
    }

    /// Is `gpa`'s page marked?
    #[cfg(test)]
    pub fn is_marked(&self, gpa: u64) -> bool {
        let page = gpa / LOG_PAGE;
        let byte = page / 8;
        if byte >= self.map.size() as u64 {
            return false;
        }
        // SAFETY: inside the mapping (checked above).
        let v = unsafe { AtomicU8::from_ptr(self.map.as_ptr().add(byte as usize)) }
            .load(Ordering::Acquire);
        v & (1 << (page % 8)) != 0
    }
}

/// The log in force (None: logging off), shared by a connection's threads.
pub type SharedLog = Arc<ArcSwapOption<DirtyLog>>;

/// A thread's cached view of the shared log: one load per use while it
/// does not change.
pub struct LogView(Cache<SharedLog, Option<Arc<DirtyLog>>>);

impl LogView {
    pub fn new(shared: &SharedLog) -> Self {
        LogView(Cache::new(shared.clone()))
    }

    /// The log, when logging is on.
    pub fn get(&mut self) -> Option<&Arc<DirtyLog>> {
        self.0.load().as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_every_page_of_a_range() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(16).unwrap();
        let log = DirtyLog::map(file, 0, 16).unwrap();
        log.mark(0x1fff, 2); // pages 1 and 2
        assert!(!log.is_marked(0));
        assert!(log.is_marked(0x1000) && log.is_marked(0x2000));
        assert!(!log.is_marked(0x3000));
        log.mark(0x10000, 0x3000); // pages 16..18
        assert!(log.is_marked(0x10000) && log.is_marked(0x12fff));
        assert!(!log.is_marked(0x13000));
        // Beyond the log: ignored.
        log.mark(1 << 40, 4096);
        log.mark(u64::MAX - 10, 100);
    }

    #[test]
    fn a_log_past_its_file_is_refused() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(16).unwrap();
        assert!(DirtyLog::map(file.try_clone().unwrap(), 0, 17).is_err());
        assert!(DirtyLog::map(file.try_clone().unwrap(), 4096, 16).is_err());
        assert!(DirtyLog::map(file, 0, 0).is_err());
    }
}
