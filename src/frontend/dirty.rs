//! The dirty log of live migration, frontend side (what QEMU's
//! `vhost_log_alloc` / `vhost_log_sync` do with VHOST_USER_PROTOCOL_F_LOG_SHMFD):
//! a memfd bitmap, one bit per 4 KiB guest-physical page (bit `p % 8` of
//! byte `p / 8` for page `p = gpa / 4096`), shared with the backend by
//! SET_LOG_BASE. While VHOST_F_LOG_ALL is acked the backend sets the bit
//! of every page it writes; the frontend reads the bits and clears them
//! with one atomic exchange per 64-bit word, as QEMU's migration sync does.
//!
//! [`DirtyBitmap`] is the live, shared bitmap; [`DirtyPages`] a snapshot
//! of it (what one sync collected).

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use vhost::VhostUserDirtyLogRegion;
use vm_memory::{FileOffset, MmapRegion};

use super::{Error, Result};

/// Bytes of guest memory one bit covers (VHOST_LOG_PAGE).
pub const LOG_PAGE: u64 = 0x1000;

/// Bytes of a bitmap covering guest-physical addresses below `end`:
/// `(end / 4096 + 7) / 8`, rounded up to a page.
pub fn bitmap_size(end: u64) -> u64 {
    (end.div_ceil(LOG_PAGE))
        .div_ceil(8)
        .next_multiple_of(4096)
        .max(4096)
}

/// The pages `[gpa, gpa + len)` touches (page numbers, empty when `len` is 0).
fn page_range(gpa: u64, len: u64) -> std::ops::RangeInclusive<u64> {
    if len == 0 {
        #[allow(clippy::reversed_empty_ranges)]
        return 1..=0;
    }
    gpa / LOG_PAGE..=gpa.saturating_add(len - 1) / LOG_PAGE
}

fn word_bit(page: u64) -> (usize, u64) {
    ((page / 64) as usize, 1 << (page % 64))
}

/// A snapshot of the log: which pages were marked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyPages {
    /// Bit `p % 64` of word `p / 64` for page `p` (the log's layout on a
    /// little-endian machine).
    words: Vec<u64>,
}

impl DirtyPages {
    /// Is the page holding `gpa` marked?
    pub fn is_marked(&self, gpa: u64) -> bool {
        let (w, bit) = word_bit(gpa / LOG_PAGE);
        self.words.get(w).is_some_and(|v| v & bit != 0)
    }

    /// Is every page of `[gpa, gpa + len)` marked?
    pub fn all_marked(&self, gpa: u64, len: u64) -> bool {
        page_range(gpa, len).all(|p| self.is_marked(p * LOG_PAGE))
    }

    /// Is any page of `[gpa, gpa + len)` marked?
    pub fn any_marked(&self, gpa: u64, len: u64) -> bool {
        page_range(gpa, len).any(|p| self.is_marked(p * LOG_PAGE))
    }

    /// The pages of `[gpa, gpa + len)` that are not marked (their
    /// guest-physical addresses).
    pub fn unmarked(&self, gpa: u64, len: u64) -> Vec<u64> {
        page_range(gpa, len)
            .map(|p| p * LOG_PAGE)
            .filter(|&a| !self.is_marked(a))
            .collect()
    }

    /// Every marked page (guest-physical address of its first byte), in
    /// increasing order.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &v)| {
            let mut v = v;
            std::iter::from_fn(move || {
                if v == 0 {
                    return None;
                }
                let bit = u64::from(v.trailing_zeros());
                v &= v - 1;
                Some((w as u64 * 64 + bit) * LOG_PAGE)
            })
        })
    }

    /// Number of marked pages.
    pub fn count(&self) -> usize {
        self.words.iter().map(|v| v.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&v| v == 0)
    }

    /// Add the pages of `other` (several syncs together).
    pub fn merge(&mut self, other: &DirtyPages) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }
}

/// The shared bitmap: a sealed memfd (it can neither grow nor shrink, as
/// QEMU's `vhost-log`), mapped here and handed to the backend with
/// SET_LOG_BASE.
pub struct DirtyBitmap {
    file: File,
    map: MmapRegion<()>,
}

impl std::fmt::Debug for DirtyBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyBitmap")
            .field("size", &self.size())
            .finish()
    }
}

impl DirtyBitmap {
    /// A zeroed bitmap covering guest-physical addresses below `end`
    /// ([`bitmap_size`] bytes).
    pub fn new(end: u64) -> Result<Self> {
        let size = bitmap_size(end);
        let bad = |what: &str, e: nix::Error| Error::Memory(format!("dirty log: {what}: {e}"));
        let fd = memfd_create(
            c"vhost-log",
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .map_err(|e| bad("memfd_create", e))?;
        let file = File::from(fd);
        file.set_len(size)
            .map_err(|e| Error::Memory(format!("dirty log: ftruncate: {e}")))?;
        fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(|e| bad("seal", e))?;
        let dup = file
            .try_clone()
            .map_err(|e| Error::Memory(format!("dirty log: dup: {e}")))?;
        let map = MmapRegion::<()>::from_file(FileOffset::new(dup, 0), size as usize)
            .map_err(|e| Error::Memory(format!("dirty log: mmap: {e}")))?;
        Ok(DirtyBitmap { file, map })
    }

    /// The memfd.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Bytes of the bitmap.
    pub fn size(&self) -> u64 {
        self.map.size() as u64
    }

    /// Guest-physical addresses the bitmap covers: `[0, end)`.
    pub fn covers(&self) -> u64 {
        self.size() * 8 * LOG_PAGE
    }

    /// What SET_LOG_BASE carries: the whole file from offset 0.
    pub fn region(&self) -> VhostUserDirtyLogRegion {
        VhostUserDirtyLogRegion {
            mmap_size: self.size(),
            mmap_offset: 0,
            mmap_handle: std::os::fd::AsRawFd::as_raw_fd(&self.file),
        }
    }

    fn word(&self, i: usize) -> Option<&AtomicU64> {
        if i >= self.map.size() / 8 {
            return None;
        }
        // SAFETY: the mapping is page aligned, `i` is inside it (checked
        // above) and it lives as long as `self`; the backend updates it
        // concurrently (atomic byte ORs), so every access is atomic.
        Some(unsafe { AtomicU64::from_ptr(self.map.as_ptr().cast::<u64>().add(i)) })
    }

    fn words(&self) -> impl Iterator<Item = &AtomicU64> {
        (0..self.map.size() / 8).filter_map(|i| self.word(i))
    }

    /// Is the page holding `gpa` marked right now?
    pub fn is_marked(&self, gpa: u64) -> bool {
        let (w, bit) = word_bit(gpa / LOG_PAGE);
        self.word(w)
            .is_some_and(|v| v.load(Ordering::Acquire) & bit != 0)
    }

    /// The marked pages, left marked.
    pub fn snapshot(&self) -> DirtyPages {
        DirtyPages {
            words: self.words().map(|v| v.load(Ordering::Acquire)).collect(),
        }
    }

    /// The marked pages, cleared as they are read: one atomic exchange per
    /// word (QEMU's `vhost_dev_sync_region`), so a page the backend marks
    /// meanwhile is either in this snapshot or still marked.
    pub fn take(&self) -> DirtyPages {
        DirtyPages {
            words: self
                .words()
                .map(|v| {
                    if v.load(Ordering::Relaxed) == 0 {
                        0
                    } else {
                        v.swap(0, Ordering::AcqRel)
                    }
                })
                .collect(),
        }
    }

    /// Clear every bit.
    pub fn clear(&self) {
        let _ = self.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_covers_the_end() {
        assert_eq!(bitmap_size(1), 4096);
        // 4 GiB + 64 MiB: 0x104000 pages, 0x20800 bytes, 33 pages.
        assert_eq!(bitmap_size((1 << 32) + (64 << 20)), 33 * 4096);
        let b = DirtyBitmap::new((1 << 32) + (64 << 20)).unwrap();
        assert!(b.covers() >= (1 << 32) + (64 << 20));
        assert_eq!(b.file().metadata().unwrap().len(), b.size());
        // Sealed: the file cannot shrink under the backend.
        assert!(b.file().set_len(4096).is_err());
    }

    #[test]
    fn marks_read_and_clear_like_the_backend_writes_them() {
        let b = DirtyBitmap::new(1 << 30).unwrap();
        // Mark as the backend does: bit p % 8 of byte p / 8.
        let base = b.map.as_ptr();
        for page in [0u64, 9, 63, 64, 1000] {
            // SAFETY: inside the mapping.
            unsafe { *base.add((page / 8) as usize) |= 1 << (page % 8) };
        }
        assert!(b.is_marked(0) && b.is_marked(9 * 4096 + 17) && b.is_marked(64 * 4096));
        assert!(!b.is_marked(8 * 4096) && !b.is_marked(1 << 40));
        let s = b.snapshot();
        assert_eq!(
            s.pages().collect::<Vec<_>>(),
            [0, 9, 63, 64, 1000].map(|p| p * 4096)
        );
        assert!(s.all_marked(63 * 4096 + 100, 4096)); // pages 63 and 64
        assert!(!s.all_marked(62 * 4096, 4097));
        assert_eq!(s.unmarked(62 * 4096, 3 * 4096), vec![62 * 4096]);
        assert!(s.any_marked(990 * 4096, 20 * 4096));
        assert!(!s.any_marked(990 * 4096, 0));
        assert_eq!(s.count(), 5);
        let t = b.take();
        assert_eq!(t, s);
        assert!(b.snapshot().is_empty());
        let mut m = DirtyPages::default();
        m.merge(&t);
        assert_eq!(m.count(), 5);
    }
}
