//! Synchronous ("slow path") reads and writes on a [`Backing`], for a
//! helper thread: verify, write same, zero filling and other commands that
//! do not go through the io_uring [`Engine`](super::Engine).
//!
//! Alignment is handled like the engine does it: with an `O_DIRECT`
//! backing, a transfer whose offset and length are multiples of
//! [`Backing::dio_offset_align`] goes to the direct descriptor (straight
//! from the caller's buffer when its address is aligned to
//! [`Backing::dio_mem_align`], else through an aligned bounce buffer); any
//! other transfer goes to the buffered twin descriptor. The kernel keeps the
//! two coherent: a direct read first writes back dirty page cache in its
//! range, a direct write invalidates it.
//!
//! Short transfers are continued, `EINTR` is retried, end of file is `EIO`
//! (as in the engine) and every other error keeps its errno.

use std::alloc::Layout;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

use super::Backing;
use crate::units::ByteOffset;

/// Largest bounce buffer / fill buffer, and largest single syscall of the
/// slow path.
pub(super) const CHUNK: usize = 1 << 20;
/// Minimum alignment of the buffers allocated here.
pub(super) const BUF_ALIGN: usize = 4096;

pub(super) fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// A zero-initialised heap buffer with a chosen alignment.
pub(super) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf exclusively owns its allocation; it is plain memory.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// `len` bytes (at least 1) aligned to `align` (a power of two, at
    /// least [`BUF_ALIGN`]); `ENOMEM` on failure.
    pub(super) fn zeroed(len: usize, align: usize) -> io::Result<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(1), align.max(BUF_ALIGN))
            .map_err(|_| errno(libc::EINVAL))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        NonNull::new(ptr)
            .map(|ptr| AlignedBuf { ptr, layout })
            .ok_or_else(|| errno(libc::ENOMEM))
    }

    pub(super) fn len(&self) -> usize {
        self.layout.size()
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live, initialised (zeroed at allocation)
        // allocation of `layout.size()` bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Retry `f` while it fails with `EINTR`.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// One `pwrite`, or `pwritev2(RWF_DSYNC)` when `dsync`. Returns the bytes
/// written and whether `RWF_DSYNC` was honoured (false: the caller must
/// `fdatasync`).
fn pwrite_once(file: &File, data: &[u8], pos: u64, dsync: bool) -> io::Result<(usize, bool)> {
    if !dsync {
        return retry(|| file.write_at(data, pos)).map(|n| (n, true));
    }
    let off = libc::off_t::try_from(pos).map_err(|_| errno(libc::EINVAL))?;
    let iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    loop {
        // SAFETY: one iovec describing `data`, which is valid for reads for
        // the duration of the call (the kernel does not write through it);
        // the fd is open.
        let rc = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, off, libc::RWF_DSYNC) };
        if rc >= 0 {
            // `rc <= data.len()`, so the cast is lossless.
            return Ok((rc as usize, true));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // No pwritev2 / RWF_DSYNC: plain write, fdatasync later.
            Some(libc::ENOSYS | libc::EOPNOTSUPP) => {
                return retry(|| file.write_at(data, pos)).map(|n| (n, false))
            }
            _ => return Err(e),
        }
    }
}

impl Backing {
    /// Whether a transfer at `pos` of `len` bytes may use the direct fd.
    fn direct_ok(&self, pos: u64, len: usize) -> bool {
        let oa = self.dio_offset_align().max(1);
        self.is_direct() && pos % oa == 0 && (len as u64) % oa == 0
    }

    fn mem_aligned(&self, p: *const u8) -> bool {
        (p as usize) % self.dio_mem_align().max(1) == 0
    }

    /// Bytes of an aligned transfer of `len` bytes to bounce at once: at
    /// most [`CHUNK`], a multiple of the offset alignment.
    fn bounce_len(&self, len: usize) -> usize {
        let oa = usize::try_from(self.dio_offset_align().max(1)).unwrap_or(usize::MAX);
        if len <= CHUNK {
            len
        } else {
            (CHUNK / oa * oa).max(oa).min(len)
        }
    }

    fn bounce<'a>(
        &self,
        slot: &'a mut Option<AlignedBuf>,
        len: usize,
    ) -> io::Result<&'a mut AlignedBuf> {
        if slot.as_ref().is_some_and(|b| b.len() < len) {
            *slot = None;
        }
        match slot {
            Some(b) => Ok(b),
            None => Ok(slot.insert(AlignedBuf::zeroed(len, self.dio_mem_align())?)),
        }
    }

    /// One read syscall at `pos` into `buf`: bytes read (0 at end of file).
    fn read_once(
        &self,
        pos: u64,
        buf: &mut [u8],
        bounce: &mut Option<AlignedBuf>,
    ) -> io::Result<usize> {
        if !self.direct_ok(pos, buf.len()) {
            return retry(|| self.buffered_file().read_at(buf, pos));
        }
        if self.mem_aligned(buf.as_ptr()) {
            return retry(|| self.main_file().read_at(buf, pos));
        }
        let len = self.bounce_len(buf.len());
        let b = self.bounce(bounce, len)?;
        let tmp = b.as_mut_slice().get_mut(..len).unwrap_or_default();
        let n = retry(|| self.main_file().read_at(tmp, pos))?;
        let (src, dst) = (tmp.get(..n), buf.get_mut(..n));
        match (src, dst) {
            (Some(src), Some(dst)) => dst.copy_from_slice(src),
            _ => return Err(errno(libc::EIO)),
        }
        Ok(n)
    }

    /// One write syscall at `pos` from `data`: (bytes written, whether a
    /// requested `RWF_DSYNC` was honoured).
    fn write_once(
        &self,
        pos: u64,
        data: &[u8],
        fua: bool,
        bounce: &mut Option<AlignedBuf>,
    ) -> io::Result<(usize, bool)> {
        if !self.direct_ok(pos, data.len()) {
            return pwrite_once(self.buffered_file(), data, pos, fua);
        }
        if self.mem_aligned(data.as_ptr()) {
            return pwrite_once(self.main_file(), data, pos, fua);
        }
        let len = self.bounce_len(data.len());
        let b = self.bounce(bounce, len)?;
        let tmp = b.as_mut_slice().get_mut(..len).unwrap_or_default();
        match data.get(..len) {
            Some(src) => tmp.copy_from_slice(src),
            None => return Err(errno(libc::EINVAL)),
        }
        pwrite_once(self.main_file(), tmp, pos, fua)
    }

    /// Read exactly `buf.len()` bytes at `offset`. Reading past the end of
    /// the backing is `EIO`.
    pub fn read_exact_at(&self, offset: ByteOffset, buf: &mut [u8]) -> io::Result<()> {
        let mut bounce = None;
        let mut done = 0usize;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            let pos = offset
                .0
                .checked_add(done as u64)
                .ok_or_else(|| errno(libc::EINVAL))?;
            match self.read_once(pos, rest, &mut bounce)? {
                0 => return Err(errno(libc::EIO)),
                n => done += n,
            }
        }
        Ok(())
    }

    /// Write all of `data` at `offset`; with `fua`, the data is durable when
    /// this returns (`RWF_DSYNC`, or `fdatasync` where that is unsupported).
    /// A read-only backing fails with `EBADF`.
    pub fn write_all_at(&self, offset: ByteOffset, data: &[u8], fua: bool) -> io::Result<()> {
        if self.readonly() {
            return Err(errno(libc::EBADF));
        }
        let mut bounce = None;
        let mut done = 0usize;
        let mut need_sync = false;
        while let Some(rest) = data.get(done..).filter(|r| !r.is_empty()) {
            let pos = offset
                .0
                .checked_add(done as u64)
                .ok_or_else(|| errno(libc::EINVAL))?;
            match self.write_once(pos, rest, fua, &mut bounce)? {
                (0, _) => return Err(errno(libc::EIO)),
                (n, dsync_ok) => {
                    done += n;
                    need_sync |= fua && !dsync_ok;
                }
            }
        }
        if need_sync {
            self.sync_data()?;
        }
        Ok(())
    }

    /// `fdatasync`: make every completed write durable (both descriptors
    /// share the inode, so this covers buffered-twin writes too).
    pub fn sync_data(&self) -> io::Result<()> {
        retry(|| self.main_file().sync_data())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;

    pub(in crate::block) fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    pub(in crate::block) fn image(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new_in("/tmp").unwrap();
        f.as_file().set_len(len).unwrap();
        f
    }

    fn open(p: &Path) -> Backing {
        let b = Backing::open(p, false).unwrap();
        assert!(b.is_direct(), "/tmp is expected to support O_DIRECT");
        b
    }

    #[test]
    fn aligned_write_read_roundtrip() {
        let f = image(1 << 20);
        let b = open(f.path());
        let mut data = AlignedBuf::zeroed(16384, 4096).unwrap();
        data.as_mut_slice().copy_from_slice(&pattern(16384, 1));
        b.write_all_at(ByteOffset(8192), data.as_slice(), false)
            .unwrap();
        let mut back = AlignedBuf::zeroed(16384, 4096).unwrap();
        b.read_exact_at(ByteOffset(8192), back.as_mut_slice())
            .unwrap();
        assert_eq!(back.as_slice(), data.as_slice());
        let disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&disk[8192..8192 + 16384], data.as_slice());
        assert!(disk[..8192].iter().all(|&x| x == 0));
        assert!(disk[8192 + 16384..].iter().all(|&x| x == 0));
    }

    #[test]
    fn unaligned_offsets_and_memory_on_direct_backing() {
        let f = image(4 << 20);
        let b = open(f.path());
        // Misaligned offset and length: buffered twin.
        let data = pattern(10_000, 7);
        b.write_all_at(ByteOffset(4097), &data, false).unwrap();
        let mut back = vec![0u8; 10_000];
        b.read_exact_at(ByteOffset(4097), &mut back).unwrap();
        assert_eq!(back, data);
        // Aligned offset/length, misaligned memory, more than one bounce
        // chunk.
        let big = pattern(CHUNK * 2 + 4096, 3);
        let mut src = vec![0u8; big.len() + 1];
        src[1..].copy_from_slice(&big);
        b.write_all_at(ByteOffset(1 << 20), &src[1..], true)
            .unwrap();
        let mut dst = vec![0u8; big.len() + 3];
        b.read_exact_at(ByteOffset(1 << 20), &mut dst[3..]).unwrap();
        assert_eq!(&dst[3..], &big[..]);
        let disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&disk[4097..4097 + 10_000], &data[..]);
        assert_eq!(&disk[1 << 20..(1 << 20) + big.len()], &big[..]);
        assert!(disk[..4097].iter().all(|&x| x == 0));
        assert!(disk[4097 + 10_000..1 << 20].iter().all(|&x| x == 0));
    }

    #[test]
    fn buffered_write_then_direct_read_is_coherent() {
        let f = image(1 << 20);
        let b = open(f.path());
        // Dirty the page cache through the buffered twin only (no sync).
        let data = pattern(4096, 42);
        b.buffered_file().write_all_at(&data, 65536).unwrap();
        let mut back = AlignedBuf::zeroed(4096, 4096).unwrap();
        assert!(b.direct_ok(65536, 4096));
        let n = b.main_file().read_at(back.as_mut_slice(), 65536).unwrap();
        assert_eq!(n, 4096);
        assert_eq!(back.as_slice(), &data[..]);
        // And the other way: a direct write is seen by a buffered read of
        // a page that was cached before.
        let mut cached = vec![0u8; 4096];
        b.buffered_file().read_at(&mut cached, 131072).unwrap();
        let mut w = AlignedBuf::zeroed(4096, 4096).unwrap();
        w.as_mut_slice().copy_from_slice(&pattern(4096, 9));
        b.main_file().write_all_at(w.as_slice(), 131072).unwrap();
        b.buffered_file().read_at(&mut cached, 131072).unwrap();
        assert_eq!(&cached[..], w.as_slice());
    }

    #[test]
    fn read_past_end_is_eio() {
        let f = image(8192);
        let b = open(f.path());
        let mut buf = vec![0u8; 4096];
        let e = b.read_exact_at(ByteOffset(8192), &mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        let mut buf = vec![0u8; 8192];
        let e = b.read_exact_at(ByteOffset(4096), &mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        b.read_exact_at(ByteOffset(100), &mut buf[..8000]).unwrap();
        b.read_exact_at(ByteOffset(0), &mut []).unwrap();
    }

    #[test]
    fn fua_write_and_sync_data() {
        let f = image(65536);
        let b = open(f.path());
        b.write_all_at(ByteOffset(3), b"xyz", true).unwrap();
        b.write_all_at(ByteOffset(4096), &pattern(4096, 5), true)
            .unwrap();
        b.sync_data().unwrap();
        let disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&disk[3..6], b"xyz");
        assert_eq!(&disk[4096..8192], &pattern(4096, 5)[..]);
    }

    #[test]
    fn readonly_rejects_writes() {
        let mut f = tempfile::NamedTempFile::new_in("/tmp").unwrap();
        f.write_all(&[1u8; 8192]).unwrap();
        let b = Backing::open(f.path(), true).unwrap();
        let e = b.write_all_at(ByteOffset(0), &[0u8; 4096], false);
        assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::EBADF));
        let mut buf = [0u8; 10];
        b.read_exact_at(ByteOffset(1), &mut buf).unwrap();
        assert_eq!(buf, [1u8; 10]);
    }

    #[test]
    fn alignment_routing() {
        let f = image(65536);
        let b = open(f.path());
        assert!(!b.direct_ok(1, 4096));
        assert!(!b.direct_ok(0, 100));
        assert!(b.direct_ok(0, 4096));
        assert_eq!(b.bounce_len(100), 100);
        assert_eq!(b.bounce_len(3 * CHUNK), CHUNK);
    }
}
