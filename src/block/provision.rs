//! Provisioning primitives of a [`Backing`] (synchronous, for a helper
//! thread): unmap, write zeroes, write same, the allocation map, and the
//! capability facts the SCSI layer advertises (LBPME, LBPRZ, Block Limits).
//!
//! Every method takes a byte range the SCSI layer has already checked
//! against the LUN size, never touches bytes outside it, and returns
//! `io::Error`s with the errno preserved. Methods that modify data fail with
//! `EBADF` on a read-only backing.
//!
//! * Files: unmap is `fallocate(PUNCH_HOLE | KEEP_SIZE)` (a punched range
//!   reads back as zeros, so LBPRZ holds); zeroing without unmap is
//!   `fallocate(ZERO_RANGE | KEEP_SIZE)` with a fallback to writing zeros;
//!   the allocation map comes from `lseek(SEEK_DATA / SEEK_HOLE)`.
//! * Block devices: unmap is `BLKDISCARD` over the whole discard granules
//!   inside the range (partial granules at the edges are skipped: SCSI
//!   UNMAP is advisory and we never claim that discard zeroes); zeroing is
//!   `BLKZEROOUT` over the logical-block-aligned middle, with zeros written
//!   for any unaligned edge and as a fallback; the allocation map is one
//!   allocated extent (a host block device does not tell).

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use super::sync_io::{errno, AlignedBuf, CHUNK};
use super::{Backing, BackingKind};
use crate::units::{ByteCount, ByteOffset};

/// Largest range one `fallocate`/`BLKDISCARD`/`BLKZEROOUT` call covers; a
/// longer request is split so that a huge unmap does not hold the inode (or
/// device) lock for its whole duration. Also what
/// [`Backing::max_discard_bytes`] reports for files.
pub const FILE_MAX_DISCARD_BYTES: u64 = 1 << 30;

/// Where the probe of `fallocate(PUNCH_HOLE)` may punch: past the end of
/// the file, rounded up to this, so no data can be touched.
const PROBE_ALIGN: u64 = 1 << 20;

nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);

/// Filesystems (`statfs.f_type`) known to implement `PUNCH_HOLE`, used only
/// for read-only file backings (the probe needs a writable descriptor).
const PUNCH_HOLE_FILESYSTEMS: &[u64] = &[
    0xEF53,      // ext2/3/4 (ext4 driver)
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0xF2F5_2010, // f2fs
    0x2FC1_2FC1, // zfs
    0xCA45_1A4E, // bcachefs
    0x7461_636F, // ocfs2
    0x0116_1970, // gfs2
];

/// Unmap capabilities of a backing, probed at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DiscardCaps {
    supports_unmap: bool,
    unmap_zeroes: bool,
    /// Bytes, at least 1.
    granularity: u64,
    /// Device-absolute position of byte 0 of the backing modulo
    /// `granularity` (non-zero for a misaligned partition).
    phase: u64,
    max_bytes: u64,
}

fn fallocate(file: &File, mode: libc::c_int, start: u64, len: u64) -> io::Result<()> {
    let off = libc::off_t::try_from(start).map_err(|_| errno(libc::EINVAL))?;
    let len = libc::off_t::try_from(len).map_err(|_| errno(libc::EINVAL))?;
    loop {
        // SAFETY: plain syscall on an open fd; no memory is passed.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `fallocate(mode)` over `[start, end)` in pieces of at most
/// [`FILE_MAX_DISCARD_BYTES`].
fn fallocate_range(file: &File, mode: libc::c_int, start: u64, end: u64) -> io::Result<()> {
    let mut pos = start;
    while pos < end {
        let n = (end - pos).min(FILE_MAX_DISCARD_BYTES);
        fallocate(file, mode, pos, n)?;
        pos += n;
    }
    Ok(())
}

const PUNCH: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO_RANGE: libc::c_int = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// Which of the two block-device range ioctls.
#[derive(Clone, Copy, Debug)]
enum RangeIoctl {
    Discard,
    ZeroOut,
}

/// `BLKDISCARD`/`BLKZEROOUT` over `[start, end)` in pieces of at most
/// `chunk` bytes (`chunk` keeps the alignment of `start`).
fn block_range_ioctl(
    file: &File,
    which: RangeIoctl,
    start: u64,
    end: u64,
    chunk: u64,
) -> io::Result<()> {
    let mut pos = start;
    while pos < end {
        let n = (end - pos).min(chunk.max(1));
        let range = [pos, n];
        loop {
            let fd = file.as_raw_fd();
            // SAFETY: both ioctls read one `[u64; 2]` (start, length) from
            // the pointer, which is valid for the call; the fd is open.
            let rc = unsafe {
                match which {
                    RangeIoctl::Discard => blkdiscard(fd, &range),
                    RangeIoctl::ZeroOut => blkzeroout(fd, &range),
                }
            };
            match rc {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        pos += n;
    }
    Ok(())
}

fn round_up(x: u64, g: u64) -> Option<u64> {
    x.checked_add(g - 1).map(|v| v / g * g)
}

/// `/sys/dev/block/MAJ:MIN/<rel>` as a number; `None` if absent.
fn sysfs_u64(rdev: u64, rel: &str) -> Option<u64> {
    let path = format!(
        "/sys/dev/block/{}:{}/{rel}",
        libc::major(rdev),
        libc::minor(rdev)
    );
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A queue attribute of the device or, for a partition, of its disk.
fn queue_attr(rdev: u64, name: &str) -> Option<u64> {
    sysfs_u64(rdev, &format!("queue/{name}"))
        .or_else(|| sysfs_u64(rdev, &format!("../queue/{name}")))
}

fn fs_type(file: &File) -> Option<u64> {
    // SAFETY: an all-zero `statfs` is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open and `st` is a writable statfs buffer.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    // `f_type` is signed on some targets: reinterpret the magic's bits.
    (rc == 0).then_some(st.f_type as u64 & 0xFFFF_FFFF)
}

impl DiscardCaps {
    pub(super) const NONE: DiscardCaps = DiscardCaps {
        supports_unmap: false,
        unmap_zeroes: false,
        granularity: 1,
        phase: 0,
        max_bytes: 0,
    };

    /// A regular file: on a writable backing, punch a hole past the end of
    /// the file (`KEEP_SIZE`, so neither data nor size can change); a
    /// filesystem without `PUNCH_HOLE` fails it with `EOPNOTSUPP` before
    /// looking at the range. A read-only backing cannot call `fallocate`,
    /// so the filesystem type is looked up in a list instead.
    pub(super) fn probe_file(file: &File, meta: &Metadata, readonly: bool) -> DiscardCaps {
        let supported = if readonly {
            fs_type(file).is_some_and(|t| PUNCH_HOLE_FILESYSTEMS.contains(&t))
        } else {
            match round_up(meta.len(), PROBE_ALIGN).map(|o| fallocate(file, PUNCH, o, PROBE_ALIGN))
            {
                Some(Ok(())) => true,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "fallocate(PUNCH_HOLE) probe failed");
                    false
                }
                None => false,
            }
        };
        if !supported {
            return DiscardCaps::NONE;
        }
        let blksize = meta.blksize();
        DiscardCaps {
            supports_unmap: true,
            unmap_zeroes: true,
            granularity: if blksize > 0 { blksize } else { 4096 },
            phase: 0,
            max_bytes: FILE_MAX_DISCARD_BYTES,
        }
    }

    /// A block device: discard is supported when the queue's
    /// `discard_max_bytes` is non-zero. Discard is never claimed to zero
    /// (`discard_zeroes_data` is gone from current kernels, and what a
    /// device returns after a discard is up to the device).
    pub(super) fn probe_block_device(rdev: u64, logical_block_size: u32) -> DiscardCaps {
        let max_bytes = queue_attr(rdev, "discard_max_bytes").unwrap_or(0);
        if max_bytes == 0 {
            return DiscardCaps::NONE;
        }
        let lbs = u64::from(logical_block_size).max(1);
        let granularity = queue_attr(rdev, "discard_granularity")
            .unwrap_or(0)
            .max(lbs);
        // Partitions have `start` (in 512-byte sectors); whole disks do not.
        let start = sysfs_u64(rdev, "start").unwrap_or(0);
        DiscardCaps {
            supports_unmap: true,
            unmap_zeroes: false,
            granularity,
            phase: start.wrapping_mul(512) % granularity,
            max_bytes,
        }
    }

    /// The largest sub-range of `[start, end)` made of whole granules, if
    /// not empty.
    fn inner_granules(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let g = self.granularity.max(1);
        let a = round_up(start.checked_add(self.phase)?, g)?.checked_sub(self.phase)?;
        let e = end.checked_add(self.phase)?;
        let b = (e / g * g).checked_sub(self.phase)?;
        (a < b).then_some((a, b))
    }
}

/// One run of the allocation map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in the backing.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Backed by storage (false: a hole, which reads as zeros).
    pub allocated: bool,
}

impl Extent {
    pub fn new(offset: u64, len: u64, allocated: bool) -> Self {
        Extent {
            offset,
            len,
            allocated,
        }
    }
}

/// Append `[start, end)`, merging with the previous extent of the same kind.
fn push_extent(out: &mut Vec<Extent>, start: u64, end: u64, allocated: bool) {
    if end <= start {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.allocated == allocated && last.offset + last.len == start {
            last.len += end - start;
            return;
        }
    }
    out.push(Extent {
        offset: start,
        len: end - start,
        allocated,
    });
}

/// `lseek(fd, pos, whence)`.
fn seek(file: &File, pos: u64, whence: libc::c_int) -> io::Result<u64> {
    let off = libc::off_t::try_from(pos).map_err(|_| errno(libc::EINVAL))?;
    // SAFETY: plain syscall on an open fd. Only the returned offset is
    // used; the file position it moves is not used by any other I/O (all of
    // it is positional).
    let rc = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    u64::try_from(rc).map_err(|_| io::Error::last_os_error())
}

impl Backing {
    /// Whether [`unmap`](Self::unmap) can deallocate (files: the filesystem
    /// implements `fallocate(PUNCH_HOLE)`, probed at open; block devices:
    /// `queue/discard_max_bytes > 0`). Advertise LBPME only when true.
    pub fn supports_unmap(&self) -> bool {
        self.discard_caps().supports_unmap
    }

    /// Whether unmapped blocks read back as zeros (LBPRZ): true for files
    /// with hole punching, always false for block devices.
    pub fn unmap_zeroes(&self) -> bool {
        self.discard_caps().unmap_zeroes
    }

    /// Bytes in which unmapping is effective (files: the filesystem block
    /// size; block devices: `queue/discard_granularity`, at least the
    /// logical block size). 1 when unmap is not supported.
    pub fn discard_granularity(&self) -> u64 {
        self.discard_caps().granularity
    }

    /// Largest unmap to advertise per descriptor (files:
    /// [`FILE_MAX_DISCARD_BYTES`], 1 GiB; block devices:
    /// `queue/discard_max_bytes`). 0 when unmap is not supported.
    /// [`unmap`](Self::unmap) itself accepts any length.
    pub fn max_discard_bytes(&self) -> u64 {
        self.discard_caps().max_bytes
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.readonly() {
            Err(errno(libc::EBADF))
        } else {
            Ok(())
        }
    }

    /// `[offset, offset + len)` as `(start, end)`, `EINVAL` on overflow.
    fn range(offset: ByteOffset, len: ByteCount) -> io::Result<(u64, u64)> {
        let end = offset
            .0
            .checked_add(len.0)
            .ok_or_else(|| errno(libc::EINVAL))?;
        Ok((offset.0, end))
    }

    /// Deallocate the range (SCSI UNMAP, advisory). Files: punch a hole
    /// (the range then reads as zeros). Block devices: discard the whole
    /// discard granules inside the range; partial granules at the edges are
    /// left alone. `EOPNOTSUPP` when [`supports_unmap`](Self::supports_unmap)
    /// is false.
    pub fn unmap(&self, offset: ByteOffset, len: ByteCount) -> io::Result<()> {
        self.check_writable()?;
        let (start, end) = Self::range(offset, len)?;
        if start == end {
            return Ok(());
        }
        let caps = self.discard_caps();
        if !caps.supports_unmap {
            return Err(errno(libc::EOPNOTSUPP));
        }
        match self.kind() {
            BackingKind::File => fallocate_range(self.main_file(), PUNCH, start, end),
            BackingKind::BlockDevice => match caps.inner_granules(start, end) {
                Some((a, b)) => {
                    let g = caps.granularity.max(1);
                    let chunk = (FILE_MAX_DISCARD_BYTES / g * g).max(g);
                    block_range_ioctl(self.main_file(), RangeIoctl::Discard, a, b, chunk)
                }
                None => Ok(()),
            },
            BackingKind::Passthrough => Err(errno(libc::EOPNOTSUPP)),
        }
    }

    /// Make the range read as zeros. With `allow_unmap` (WRITE SAME with
    /// UNMAP) a file range is punched when possible; otherwise files use
    /// `fallocate(ZERO_RANGE)` (falling back to writing zeros) and block
    /// devices `BLKZEROOUT` (falling back to writing zeros).
    pub fn write_zeroes(
        &self,
        offset: ByteOffset,
        len: ByteCount,
        allow_unmap: bool,
    ) -> io::Result<()> {
        self.check_writable()?;
        let (start, end) = Self::range(offset, len)?;
        if start == end {
            return Ok(());
        }
        match self.kind() {
            BackingKind::File => {
                if allow_unmap && self.supports_unmap() {
                    return fallocate_range(self.main_file(), PUNCH, start, end);
                }
                match fallocate_range(self.main_file(), ZERO_RANGE, start, end) {
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {
                        self.fill(start, end, None)
                    }
                    r => r,
                }
            }
            BackingKind::BlockDevice => {
                let lbs = u64::from(self.logical_block_size()).max(512);
                let a = round_up(start, lbs).unwrap_or(end).min(end);
                let b = (end / lbs * lbs).max(a);
                self.fill(start, a, None)?;
                if a < b {
                    let chunk = FILE_MAX_DISCARD_BYTES / lbs * lbs;
                    match block_range_ioctl(self.main_file(), RangeIoctl::ZeroOut, a, b, chunk) {
                        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                            self.fill(a, b, None)?
                        }
                        r => r?,
                    }
                }
                self.fill(b, end, None)
            }
            BackingKind::Passthrough => Err(errno(libc::EOPNOTSUPP)),
        }
    }

    /// Write `block` (one logical block) repeated over the range; `len`
    /// must be a multiple of `block.len()` (else `EINVAL`). An
    /// all-zero block becomes [`write_zeroes`](Self::write_zeroes) without
    /// unmap; any other pattern is written in chunks of up to 1 MiB.
    pub fn write_same(&self, offset: ByteOffset, len: ByteCount, block: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        if block.is_empty() || len.0 % block.len() as u64 != 0 {
            return Err(errno(libc::EINVAL));
        }
        let (start, end) = Self::range(offset, len)?;
        if start == end {
            return Ok(());
        }
        if block.iter().all(|&b| b == 0) {
            return self.write_zeroes(offset, len, false);
        }
        self.fill(start, end, Some(block))
    }

    /// Write `pattern` repeated (zeros when `None`) over `[start, end)`,
    /// whose length is a multiple of the pattern's, from one aligned buffer
    /// of at most [`CHUNK`] bytes (a multiple of the pattern length).
    fn fill(&self, start: u64, end: u64, pattern: Option<&[u8]>) -> io::Result<()> {
        if end <= start {
            return Ok(());
        }
        let plen = pattern.map_or(1, <[u8]>::len).max(1);
        let total = usize::try_from(end - start).unwrap_or(usize::MAX);
        let chunk = if total <= CHUNK {
            total
        } else {
            (CHUNK / plen * plen).max(plen)
        };
        let mut buf = AlignedBuf::zeroed(chunk, self.dio_mem_align())?;
        if let Some(p) = pattern {
            for piece in buf.as_mut_slice().chunks_mut(plen) {
                piece.copy_from_slice(p.get(..piece.len()).unwrap_or_default());
            }
        }
        let mut pos = start;
        while pos < end {
            // `chunk` is a usize, so the min fits one.
            let n = (end - pos).min(chunk as u64) as usize;
            let data = buf.as_slice().get(..n).unwrap_or_default();
            self.write_all_at(ByteOffset(pos), data, false)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Allocated and unallocated runs covering exactly
    /// `[offset, offset + len)`, in order, alternating. Files use
    /// `SEEK_DATA`/`SEEK_HOLE`; a filesystem without them, and a block
    /// device, yield one allocated extent. Empty for `len == 0`.
    pub fn allocation_map(&self, offset: ByteOffset, len: ByteCount) -> io::Result<Vec<Extent>> {
        let (start, end) = Self::range(offset, len)?;
        let mut out = Vec::new();
        if start == end {
            return Ok(out);
        }
        if self.kind() == BackingKind::BlockDevice {
            push_extent(&mut out, start, end, true);
            return Ok(out);
        }
        let file = self.main_file();
        let mut pos = start;
        while pos < end {
            let data = match seek(file, pos, libc::SEEK_DATA) {
                Ok(d) => d.clamp(pos, end),
                // No data at or after `pos`: a hole to the end.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => end,
                // No SEEK_DATA support: everything is allocated.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && pos == start => {
                    out.clear();
                    push_extent(&mut out, start, end, true);
                    return Ok(out);
                }
                Err(e) => return Err(e),
            };
            push_extent(&mut out, pos, data, false);
            pos = data;
            if pos >= end {
                break;
            }
            let hole = match seek(file, pos, libc::SEEK_HOLE) {
                Ok(h) => h.min(end),
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => end,
                Err(e) => return Err(e),
            };
            // A hole at `pos` right after SEEK_DATA said data: the file
            // changed under us. Reporting allocated is the safe answer.
            let hole = if hole <= pos { end } else { hole };
            push_extent(&mut out, pos, hole, true);
            pos = hole;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::sync_io::tests::{image, pattern};
    use std::path::Path;

    fn open(p: &Path) -> Backing {
        let b = Backing::open(p, false).unwrap();
        assert!(b.is_direct());
        b
    }

    fn st_blocks(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().blocks()
    }

    /// A file of `len` bytes full of non-zero data, on disk.
    fn full_image(len: usize) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new_in("/tmp").unwrap();
        std::fs::write(
            f.path(),
            pattern(len, 1).iter().map(|&x| x | 1).collect::<Vec<_>>(),
        )
        .unwrap();
        f.as_file().sync_all().unwrap();
        f
    }

    fn ext(offset: u64, len: u64, allocated: bool) -> Extent {
        Extent::new(offset, len, allocated)
    }

    #[test]
    fn file_caps_on_tmp() {
        let f = image(12345);
        let b = open(f.path());
        assert!(b.supports_unmap());
        assert!(b.unmap_zeroes());
        assert_eq!(b.discard_granularity(), 4096);
        assert_eq!(b.max_discard_bytes(), FILE_MAX_DISCARD_BYTES);
        // The probe changed neither size nor allocation.
        let m = std::fs::metadata(f.path()).unwrap();
        assert_eq!(m.len(), 12345);
        assert_eq!(m.blocks(), 0);
        // Read-only: from the filesystem type.
        let r = Backing::open(f.path(), true).unwrap();
        assert!(r.supports_unmap());
    }

    #[test]
    fn punch_hole_zeroes_and_deallocates() {
        let f = full_image(1 << 20);
        let b = open(f.path());
        let before = st_blocks(f.path());
        // Unaligned edges: partial blocks are zeroed, not left stale.
        b.unmap(ByteOffset(4096 + 100), ByteCount(65536)).unwrap();
        let disk = std::fs::read(f.path()).unwrap();
        assert!(disk[4196..4196 + 65536].iter().all(|&x| x == 0));
        assert!(disk[..4196].iter().all(|&x| x != 0));
        assert!(disk[4196 + 65536..].iter().all(|&x| x != 0));
        assert_eq!(disk.len(), 1 << 20);
        let after = st_blocks(f.path());
        // 15 whole 4 KiB blocks (120 sectors) freed.
        assert_eq!(before - after, 120, "{before} -> {after}");
        b.unmap(ByteOffset(0), ByteCount(0)).unwrap();
    }

    #[test]
    fn write_zeroes_both_ways() {
        let f = full_image(1 << 20);
        let b = open(f.path());
        let before = st_blocks(f.path());
        // Without unmap: zeros, still allocated.
        b.write_zeroes(ByteOffset(8192), ByteCount(8192), false)
            .unwrap();
        assert_eq!(st_blocks(f.path()), before);
        // With unmap: zeros, deallocated.
        b.write_zeroes(ByteOffset(65536), ByteCount(65536), true)
            .unwrap();
        assert_eq!(before - st_blocks(f.path()), 128);
        // Unaligned, without unmap.
        b.write_zeroes(ByteOffset(200_001), ByteCount(999), false)
            .unwrap();
        let disk = std::fs::read(f.path()).unwrap();
        let zero = |r: std::ops::Range<usize>| disk[r].iter().all(|&x| x == 0);
        let nonzero = |r: std::ops::Range<usize>| disk[r].iter().all(|&x| x != 0);
        assert!(nonzero(0..8192));
        assert!(zero(8192..16384));
        assert!(nonzero(16384..65536));
        assert!(zero(65536..131072));
        assert!(nonzero(131072..200_001));
        assert!(zero(200_001..201_000));
        assert!(nonzero(201_000..1 << 20));
        // The zero-writing fallback on its own.
        b.fill(300_000, 300_000 + 5000, None).unwrap();
        let disk = std::fs::read(f.path()).unwrap();
        assert!(disk[300_000..305_000].iter().all(|&x| x == 0));
        assert!(disk[299_999] != 0 && disk[305_000] != 0);
    }

    #[test]
    fn write_same_pattern_over_odd_range() {
        let f = image(4 << 20);
        let b = open(f.path());
        let block = pattern(512, 9);
        // 2.5 MiB + 3 blocks, starting on a block that is not 4K aligned:
        // several 1 MiB chunks and a short last one.
        let start = 512 * 3;
        let len = (5 << 19) + 3 * 512;
        b.write_same(ByteOffset(start), ByteCount(len), &block)
            .unwrap();
        let disk = std::fs::read(f.path()).unwrap();
        let (s, l) = (start as usize, len as usize);
        assert!(disk[..s].iter().all(|&x| x == 0));
        for (i, blk) in disk[s..s + l].chunks(512).enumerate() {
            assert_eq!(blk, &block[..], "block {i}");
        }
        assert!(disk[s + l..].iter().all(|&x| x == 0));
        // 4 KiB blocks, aligned.
        let block = pattern(4096, 2);
        b.write_same(ByteOffset(1 << 20), ByteCount(3 << 20), &block)
            .unwrap();
        let disk = std::fs::read(f.path()).unwrap();
        for blk in disk[1 << 20..].chunks(4096) {
            assert_eq!(blk, &block[..]);
        }
        // An all-zero block zeroes without deallocating.
        let blocks = st_blocks(f.path());
        b.write_same(ByteOffset(1 << 20), ByteCount(1 << 20), &[0u8; 4096])
            .unwrap();
        assert_eq!(st_blocks(f.path()), blocks);
        let disk = std::fs::read(f.path()).unwrap();
        assert!(disk[1 << 20..2 << 20].iter().all(|&x| x == 0));
        // Bad arguments.
        let e = b.write_same(ByteOffset(0), ByteCount(1000), &block);
        assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        let e = b.write_same(ByteOffset(0), ByteCount(0), &[]);
        assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        b.write_same(ByteOffset(0), ByteCount(0), &block).unwrap();
    }

    #[test]
    fn allocation_map_before_and_after_punch() {
        let f = full_image(1 << 20);
        let b = open(f.path());
        let m = b
            .allocation_map(ByteOffset(1000), ByteCount(50_000))
            .unwrap();
        assert_eq!(m, vec![ext(1000, 50_000, true)]);
        assert!(b
            .allocation_map(ByteOffset(5), ByteCount(0))
            .unwrap()
            .is_empty());

        b.unmap(ByteOffset(65536), ByteCount(131072)).unwrap();
        b.unmap(ByteOffset(512 << 10), ByteCount(512 << 10))
            .unwrap();
        // Starting and ending inside extents.
        let m = b
            .allocation_map(ByteOffset(4096 + 7), ByteCount(600_000))
            .unwrap();
        assert_eq!(
            m,
            vec![
                ext(4103, 65536 - 4103, true),
                ext(65536, 131072, false),
                ext(196_608, (512 << 10) - 196_608, true),
                ext(512 << 10, 600_000 + 4103 - (512 << 10), false),
            ]
        );
        // Starting inside a hole, running into the trailing hole (ENXIO).
        let m = b
            .allocation_map(ByteOffset(70_000), ByteCount(1_000_000))
            .unwrap();
        assert_eq!(
            m,
            vec![
                ext(70_000, 196_608 - 70_000, false),
                ext(196_608, (512 << 10) - 196_608, true),
                ext(512 << 10, 1_070_000 - (512 << 10), false),
            ]
        );
        // Entirely inside the trailing hole.
        let m = b
            .allocation_map(ByteOffset(600_000), ByteCount(4096))
            .unwrap();
        assert_eq!(m, vec![ext(600_000, 4096, false)]);
        // A sparse, never-written file is one hole.
        let g = image(1 << 20);
        let c = open(g.path());
        let m = c.allocation_map(ByteOffset(0), ByteCount(1 << 20)).unwrap();
        assert_eq!(m, vec![ext(0, 1 << 20, false)]);
    }

    /// tmpfs punches holes but has no `ZERO_RANGE`: write_zeroes without
    /// unmap takes the zero-writing fallback.
    #[test]
    fn tmpfs_zero_range_fallback() {
        let shm = Path::new("/dev/shm");
        if fs_type_of(shm) != Some(0x0102_1994) {
            eprintln!("/dev/shm is not tmpfs; skipped");
            return;
        }
        let f = tempfile::NamedTempFile::new_in(shm).unwrap();
        std::fs::write(f.path(), vec![0xAAu8; 1 << 20]).unwrap();
        let b = Backing::open(f.path(), false).unwrap();
        assert!(b.supports_unmap());
        let blocks = st_blocks(f.path());
        b.write_zeroes(ByteOffset(4096), ByteCount(3 << 18), false)
            .unwrap();
        assert_eq!(st_blocks(f.path()), blocks);
        b.write_zeroes(ByteOffset(800 << 10), ByteCount(64 << 10), true)
            .unwrap();
        assert_eq!(blocks - st_blocks(f.path()), 128);
        let disk = std::fs::read(f.path()).unwrap();
        assert!(disk[..4096].iter().all(|&x| x == 0xAA));
        assert!(disk[4096..4096 + (3 << 18)].iter().all(|&x| x == 0));
        assert!(disk[4096 + (3 << 18)..800 << 10].iter().all(|&x| x == 0xAA));
        assert!(disk[800 << 10..864 << 10].iter().all(|&x| x == 0));
        assert!(disk[864 << 10..].iter().all(|&x| x == 0xAA));
        let m = b.allocation_map(ByteOffset(0), ByteCount(1 << 20)).unwrap();
        assert_eq!(
            m,
            vec![
                ext(0, 800 << 10, true),
                ext(800 << 10, 64 << 10, false),
                ext(864 << 10, 160 << 10, true),
            ]
        );
    }

    fn fs_type_of(p: &Path) -> Option<u64> {
        fs_type(&File::open(p).ok()?)
    }

    #[test]
    fn refresh_size_after_growth() {
        let f = image(4096);
        let b = open(f.path());
        assert_eq!(b.size(), ByteCount(4096));
        f.as_file().set_len(1 << 20).unwrap();
        assert_eq!(b.size(), ByteCount(4096));
        assert_eq!(b.refresh_size().unwrap(), ByteCount(1 << 20));
        assert_eq!(b.size(), ByteCount(1 << 20));
    }

    #[test]
    fn readonly_rejects_provisioning() {
        let f = full_image(65536);
        let b = Backing::open(f.path(), true).unwrap();
        let ebadf =
            |r: io::Result<()>| assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EBADF));
        ebadf(b.unmap(ByteOffset(0), ByteCount(4096)));
        ebadf(b.write_zeroes(ByteOffset(0), ByteCount(4096), false));
        ebadf(b.write_zeroes(ByteOffset(0), ByteCount(4096), true));
        ebadf(b.write_same(ByteOffset(0), ByteCount(4096), &[1u8; 512]));
        assert!(std::fs::read(f.path()).unwrap().iter().all(|&x| x != 0));
        // Reading the allocation map is fine.
        let m = b.allocation_map(ByteOffset(0), ByteCount(65536)).unwrap();
        assert_eq!(m, vec![ext(0, 65536, true)]);
    }

    #[test]
    fn granule_alignment() {
        let caps = DiscardCaps {
            supports_unmap: true,
            unmap_zeroes: false,
            granularity: 4096,
            phase: 0,
            max_bytes: 1 << 30,
        };
        assert_eq!(caps.inner_granules(0, 8192), Some((0, 8192)));
        assert_eq!(caps.inner_granules(512, 8192), Some((4096, 8192)));
        assert_eq!(caps.inner_granules(512, 8191), None);
        assert_eq!(caps.inner_granules(512, 4096), None);
        assert_eq!(caps.inner_granules(4096, 4096), None);
        // A partition starting 1 KiB into a granule.
        let caps = DiscardCaps {
            phase: 1024,
            ..caps
        };
        assert_eq!(caps.inner_granules(0, 8192), Some((3072, 7168)));
        assert_eq!(caps.inner_granules(0, 1000), None);
        assert_eq!(caps.inner_granules(3072, 3072 + 4096), Some((3072, 7168)));
        // Non-power-of-two granularity (a RAID stripe).
        let caps = DiscardCaps {
            granularity: 3 * 4096,
            phase: 0,
            ..caps
        };
        assert_eq!(caps.inner_granules(1, 7 * 4096), Some((3 * 4096, 6 * 4096)));
    }

    #[test]
    fn extents_merge() {
        let mut v = Vec::new();
        push_extent(&mut v, 0, 10, true);
        push_extent(&mut v, 10, 20, true);
        push_extent(&mut v, 20, 20, false);
        push_extent(&mut v, 20, 30, false);
        assert_eq!(v, vec![ext(0, 20, true), ext(20, 10, false)]);
    }

    /// DESTROYS the first 4 MiB of the device: run with
    /// `VUS_TEST_BLOCKDEV_RW=/dev/loopN cargo test -- --ignored`.
    #[test]
    #[ignore]
    fn block_device_provisioning() {
        let Ok(dev) = std::env::var("VUS_TEST_BLOCKDEV_RW") else {
            return;
        };
        let b = Backing::open(Path::new(&dev), false).unwrap();
        eprintln!(
            "unmap {} zeroes {} granularity {} max {}",
            b.supports_unmap(),
            b.unmap_zeroes(),
            b.discard_granularity(),
            b.max_discard_bytes()
        );
        assert!(!b.unmap_zeroes());
        let lbs = u64::from(b.logical_block_size());
        let mut buf = vec![0u8; 4 << 20];
        let block = pattern(lbs as usize, 4);
        b.write_same(ByteOffset(0), ByteCount(4 << 20), &block)
            .unwrap();
        b.read_exact_at(ByteOffset(0), &mut buf).unwrap();
        assert!(buf.chunks(lbs as usize).all(|c| c == &block[..]));
        // Zeroing with unaligned edges around the BLKZEROOUT middle.
        b.write_zeroes(ByteOffset(100), ByteCount(3 * lbs), false)
            .unwrap();
        b.read_exact_at(ByteOffset(0), &mut buf).unwrap();
        assert!(buf[100..100 + 3 * lbs as usize].iter().all(|&x| x == 0));
        assert_eq!(buf[99], block[99]);
        let e = 100 + 3 * lbs as usize;
        assert_eq!(buf[e], block[e % lbs as usize]);
        if b.supports_unmap() {
            b.unmap(ByteOffset(lbs), ByteCount(2 << 20)).unwrap();
            b.read_exact_at(ByteOffset(0), &mut buf).unwrap();
            // Outside the range: untouched.
            assert!(buf[..100].iter().zip(&block).all(|(a, b)| a == b));
            let after = lbs as usize + (2 << 20);
            assert!(buf[after..].chunks(lbs as usize).all(|c| c == &block[..]));
        }
        let m = b.allocation_map(ByteOffset(0), ByteCount(4 << 20)).unwrap();
        assert_eq!(m, vec![ext(0, 4 << 20, true)]);
        assert_eq!(b.refresh_size().unwrap(), b.size());
    }
}
