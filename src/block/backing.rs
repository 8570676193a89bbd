//! Backing stores: a raw image file or a host block device.
//!
//! A backing is opened once (with `O_DIRECT` whenever the filesystem or
//! device supports it) and then shared (`Arc<Backing>`) by every worker's
//! io_uring [`Engine`](super::Engine).

use std::ffi::CStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::provision::DiscardCaps;
use super::sg::ScsiDevice;
use super::BlockError;
use crate::units::ByteCount;

/// What a backing store is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackingKind {
    File,
    BlockDevice,
    /// A host SCSI device served with `passthrough` (every CDB goes to it
    /// through SG_IO, [`ScsiDevice`]).
    Passthrough,
}

/// An open backing store.
#[derive(Debug)]
pub struct Backing {
    file: File,
    /// A second descriptor on the same inode without `O_DIRECT`, present only
    /// when `file` is `O_DIRECT`. The engine uses it for requests whose
    /// offset or length is not a multiple of [`Backing::dio_offset_align`]
    /// (the kernel keeps buffered and direct I/O on one inode coherent).
    buffered: Option<File>,
    path: PathBuf,
    kind: BackingKind,
    /// Bytes; atomic so [`Backing::refresh_size`] works through `&self`.
    size: AtomicU64,
    logical_block_size: u32,
    direct: bool,
    /// On tmpfs: page-cache memory with no NOWAIT read/write path.
    memory: bool,
    /// On FUSE: io_uring submission may block (see [`Backing::blocks_submitter`]).
    fuse: bool,
    rotational: bool,
    readonly: bool,
    dio_mem_align: usize,
    dio_offset_align: u64,
    /// Unmap (discard / punch hole) capabilities, probed at open.
    discard: DiscardCaps,
    /// The SCSI device of a [`BackingKind::Passthrough`] backing.
    scsi: Option<ScsiDevice>,
}

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);

fn open_err(path: &Path, source: io::Error) -> BlockError {
    BlockError::Open {
        path: path.to_owned(),
        source,
    }
}

fn invalid(path: &Path, msg: impl Into<String>) -> BlockError {
    BlockError::Invalid {
        path: path.to_owned(),
        msg: msg.into(),
    }
}

/// True when `path` is on tmpfs.
fn is_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false)
}

/// A FUSE file: reads and writes submitted to io_uring may block the
/// submitting thread (seen on Linux 6.18: a FUSE read waits for its answer
/// inside io_uring_enter), so the engine sends them to io_uring's worker
/// threads instead (IOSQE_ASYNC).
fn is_fuse(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC)
        .unwrap_or(false)
}

fn open_with(path: &Path, readonly: bool, direct: bool) -> io::Result<File> {
    let mut flags = libc::O_CLOEXEC;
    if direct {
        flags |= libc::O_DIRECT;
    }
    OpenOptions::new()
        .read(true)
        .write(!readonly)
        .custom_flags(flags)
        .open(path)
}

/// `STATX_DIOALIGN` of an open file: (memory alignment, offset alignment),
/// `None` when the kernel or filesystem does not report it.
fn statx_dio_align(file: &File) -> Option<(u32, u32)> {
    const EMPTY: &CStr = c"";
    // SAFETY: an all-zero `statx` is a valid value of this plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the duration of the call, the path is a
    // valid NUL-terminated empty string (AT_EMPTY_PATH) and `stx` is a
    // writable statx buffer.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            EMPTY.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    if stx.stx_dio_mem_align == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

/// `/sys/dev/block/MAJ:MIN/queue/rotational`; partitions have no `queue`
/// directory of their own, so the parent disk's is tried next.
fn read_rotational(rdev: u64) -> bool {
    let base = format!("/sys/dev/block/{}:{}", libc::major(rdev), libc::minor(rdev));
    for candidate in ["queue/rotational", "../queue/rotational"] {
        if let Ok(s) = std::fs::read_to_string(format!("{base}/{candidate}")) {
            return s.trim() == "1";
        }
    }
    false
}

fn same_inode(a: &Metadata, b: &Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

impl Backing {
    /// Open a regular file or block device, O_DIRECT when possible.
    ///
    /// Regular files fall back to buffered I/O (with a warning) when the
    /// filesystem rejects `O_DIRECT`; block devices are always `O_DIRECT`.
    pub fn open(path: &Path, readonly: bool) -> Result<Backing, BlockError> {
        // Check the type before opening: opening a FIFO would block.
        let meta = std::fs::metadata(path).map_err(|e| open_err(path, e))?;
        let ft = meta.file_type();
        let kind = if ft.is_file() {
            BackingKind::File
        } else if ft.is_block_device() {
            BackingKind::BlockDevice
        } else {
            return Err(invalid(path, "not a regular file or block device"));
        };

        let (file, direct) = match kind {
            BackingKind::BlockDevice | BackingKind::Passthrough => (
                open_with(path, readonly, true).map_err(|e| open_err(path, e))?,
                true,
            ),
            // tmpfs is memory: O_DIRECT there is emulated, cannot be done
            // without blocking, and sends every io_uring request through a
            // kernel worker thread (two extra wake-ups per I/O). Buffered
            // I/O on tmpfs completes inline and is just as durable (not).
            BackingKind::File if is_tmpfs(path) => {
                tracing::info!(path = %path.display(), "tmpfs: buffered I/O");
                (
                    open_with(path, readonly, false).map_err(|e| open_err(path, e))?,
                    false,
                )
            }
            BackingKind::File => match open_with(path, readonly, true) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(
                        path = %path.display(),
                        "filesystem does not support O_DIRECT; using buffered I/O"
                    );
                    (
                        open_with(path, readonly, false).map_err(|e| open_err(path, e))?,
                        false,
                    )
                }
                Err(e) => return Err(open_err(path, e)),
            },
        };

        // Re-check on the open descriptor (the path may have been swapped).
        let fmeta = file.metadata().map_err(|e| open_err(path, e))?;
        let fkind_ok = match kind {
            BackingKind::File => fmeta.file_type().is_file(),
            BackingKind::BlockDevice | BackingKind::Passthrough => {
                fmeta.file_type().is_block_device()
            }
        };
        if !fkind_ok || !same_inode(&meta, &fmeta) {
            return Err(invalid(path, "changed while being opened"));
        }

        let (size, logical_block_size, rotational) = match kind {
            BackingKind::File => (fmeta.len(), 512u32, false),
            BackingKind::BlockDevice | BackingKind::Passthrough => {
                let mut bytes: u64 = 0;
                // SAFETY: BLKGETSIZE64 writes one u64 into `bytes`, which is
                // valid for writes; the fd is open.
                unsafe { blkgetsize64(file.as_raw_fd(), &mut bytes) }
                    .map_err(|e| open_err(path, e.into()))?;
                let mut lbs: libc::c_int = 0;
                // SAFETY: BLKSSZGET writes one int into `lbs`, which is valid
                // for writes; the fd is open.
                unsafe { blksszget(file.as_raw_fd(), &mut lbs) }
                    .map_err(|e| open_err(path, e.into()))?;
                let lbs = u32::try_from(lbs)
                    .ok()
                    .filter(|v| v.is_power_of_two() && *v >= 512)
                    .ok_or_else(|| invalid(path, format!("bad logical block size {lbs}")))?;
                (bytes, lbs, read_rotational(fmeta.rdev()))
            }
        };

        let (dio_mem_align, dio_offset_align) = match statx_dio_align(&file) {
            Some((m, o)) => (m as usize, u64::from(o)),
            None => (logical_block_size as usize, u64::from(logical_block_size)),
        };

        let discard = match kind {
            BackingKind::File => DiscardCaps::probe_file(&file, &fmeta, readonly),
            BackingKind::BlockDevice | BackingKind::Passthrough => {
                DiscardCaps::probe_block_device(fmeta.rdev(), logical_block_size)
            }
        };

        let buffered = if direct {
            let b = open_with(path, readonly, false).map_err(|e| open_err(path, e))?;
            let bmeta = b.metadata().map_err(|e| open_err(path, e))?;
            if !same_inode(&fmeta, &bmeta) {
                return Err(invalid(path, "changed while being opened"));
            }
            Some(b)
        } else {
            None
        };

        tracing::debug!(
            path = %path.display(),
            ?kind,
            size,
            logical_block_size,
            direct,
            rotational,
            readonly,
            dio_mem_align,
            dio_offset_align,
            ?discard,
            "opened backing"
        );

        Ok(Backing {
            file,
            buffered,
            path: path.to_owned(),
            kind,
            size: AtomicU64::new(size),
            logical_block_size,
            direct,
            memory: kind == BackingKind::File && is_tmpfs(path),
            fuse: kind == BackingKind::File && is_fuse(path),
            rotational,
            readonly,
            dio_mem_align,
            dio_offset_align,
            discard,
            scsi: None,
        })
    }

    /// Open a host SCSI device for passthrough (`/dev/sgN`, or a whole
    /// SCSI disk `/dev/sdX`); anything else is refused with the reason
    /// ([`ScsiDevice::open`]). Size and block size are the disk's (an sg
    /// node of a device without a block node: 0 and 512); they are shown,
    /// not used: the device answers READ CAPACITY itself.
    pub fn open_passthrough(path: &Path) -> Result<Backing, BlockError> {
        let dev = ScsiDevice::open(path)?;
        let file = dev.file().try_clone().map_err(|e| open_err(path, e))?;
        let (size, lbs) = dev.disk_geometry().unwrap_or((0, 512));
        tracing::debug!(path = %path.display(), sg = %dev.sg_path().display(), size, "opened SCSI device for passthrough");
        Ok(Backing {
            file,
            buffered: None,
            path: path.to_owned(),
            kind: BackingKind::Passthrough,
            size: AtomicU64::new(size),
            logical_block_size: lbs,
            direct: false,
            memory: false,
            rotational: false,
            readonly: false,
            dio_mem_align: 1,
            dio_offset_align: 1,
            discard: DiscardCaps::NONE,
            fuse: false,
            scsi: Some(dev),
        })
    }

    /// The SCSI device of a passthrough backing.
    pub fn scsi_device(&self) -> Option<&ScsiDevice> {
        self.scsi.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn kind(&self) -> BackingKind {
        self.kind
    }
    /// Size in bytes (file length or BLKGETSIZE64).
    pub fn size(&self) -> ByteCount {
        ByteCount(self.size.load(Ordering::Relaxed))
    }
    /// Re-read the size (file length or BLKGETSIZE64), store it for
    /// [`size`](Self::size) and return it. For resize support: the caller
    /// decides what a changed size means for the LUN.
    pub fn refresh_size(&self) -> io::Result<ByteCount> {
        let bytes = match self.kind {
            BackingKind::File => self.file.metadata()?.len(),
            BackingKind::Passthrough if self.size.load(Ordering::Relaxed) == 0 => 0,
            BackingKind::BlockDevice | BackingKind::Passthrough => {
                let mut bytes: u64 = 0;
                // SAFETY: BLKGETSIZE64 writes one u64 into `bytes`, which is
                // valid for writes; the fd is open.
                unsafe { blkgetsize64(self.file.as_raw_fd(), &mut bytes) }?;
                bytes
            }
        };
        self.size.store(bytes, Ordering::Relaxed);
        Ok(ByteCount(bytes))
    }
    /// Grow a regular file to `size` bytes (the new blocks read as zeros)
    /// and return the new size. Never shrinks: a smaller `size`, a block
    /// device or a read-only backing is an error.
    pub fn grow_to(&self, size: ByteCount) -> io::Result<ByteCount> {
        if self.kind != BackingKind::File {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a block device cannot be resized here; resize it and re-read its size",
            ));
        }
        if self.readonly {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the backing is read-only",
            ));
        }
        let current = self.refresh_size()?;
        if size.0 < current.0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes is smaller than the current {} bytes; shrinking would discard data",
                    size.0, current.0
                ),
            ));
        }
        self.file.set_len(size.0)?;
        self.refresh_size()
    }
    /// BLKSSZGET for devices, 512 for files.
    pub fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }
    /// A tmpfs file: its data is memory, and the kernel offers no NOWAIT
    /// path for it, so io_uring would hand every request to a worker thread
    /// that does the same copy. The engine copies inline instead.
    pub fn is_memory(&self) -> bool {
        self.memory
    }
    /// A FUSE file: an io_uring read or write of it can block the thread
    /// that submits it until the filesystem answers (a slow or hung FUSE
    /// server would stall the queue's worker), so the engine forces it onto
    /// io_uring's worker threads (IOSQE_ASYNC).
    pub fn blocks_submitter(&self) -> bool {
        self.fuse
    }
    /// Opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct
    }
    /// False for files and non-rotational devices.
    pub fn is_rotational(&self) -> bool {
        self.rotational
    }
    /// Opened read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }
    /// Required alignment of buffer addresses and lengths for `O_DIRECT`
    /// (`STATX_DIOALIGN`, else the logical block size). Only meaningful
    /// when [`is_direct`](Self::is_direct).
    pub fn dio_mem_align(&self) -> usize {
        self.dio_mem_align
    }
    /// Required alignment of file offsets and transfer lengths for
    /// `O_DIRECT`. Only meaningful when [`is_direct`](Self::is_direct).
    pub fn dio_offset_align(&self) -> u64 {
        self.dio_offset_align
    }
    /// The descriptor to use for I/O that cannot be done with `O_DIRECT`
    /// (misaligned offset/length): the buffered twin, or the main fd when
    /// the backing is not direct.
    pub(crate) fn buffered_fd(&self) -> RawFd {
        self.buffered
            .as_ref()
            .map_or(self.file.as_raw_fd(), |f| f.as_raw_fd())
    }
    /// The main descriptor (`O_DIRECT` when [`is_direct`](Self::is_direct)).
    pub(super) fn main_file(&self) -> &File {
        &self.file
    }
    /// The buffered twin, or the main descriptor when not direct.
    pub(super) fn buffered_file(&self) -> &File {
        self.buffered.as_ref().unwrap_or(&self.file)
    }
    /// Unmap capabilities probed at open.
    pub(super) fn discard_caps(&self) -> &DiscardCaps {
        &self.discard
    }
}

impl AsRawFd for Backing {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn backing_is_send_sync() {
        assert_send_sync::<Backing>();
    }

    #[test]
    fn missing_file_is_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Backing::open(&dir.path().join("nope"), false).unwrap_err();
        match err {
            BlockError::Open { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn tmpfs_files_are_buffered() {
        let dir = std::path::Path::new("/dev/shm");
        if !is_tmpfs(dir) {
            eprintln!("no tmpfs at /dev/shm; skipped");
            return;
        }
        let f = tempfile::NamedTempFile::new_in(dir).unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let b = Backing::open(f.path(), false).unwrap();
        assert!(!b.is_direct());
        assert!(!is_tmpfs(std::path::Path::new("/proc/self")));
    }

    #[test]
    fn directory_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let err = Backing::open(dir.path(), true).unwrap_err();
        match &err {
            BlockError::Invalid { msg, .. } => {
                assert!(msg.contains("not a regular file or block device"))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("not a regular file"));
    }

    #[test]
    fn char_device_is_invalid() {
        let err = Backing::open(Path::new("/dev/null"), true).unwrap_err();
        assert!(matches!(err, BlockError::Invalid { .. }), "{err:?}");
    }

    #[test]
    fn regular_file_properties() {
        let mut f = tempfile::NamedTempFile::new_in("/tmp").unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        f.flush().unwrap();
        let b = Backing::open(f.path(), false).unwrap();
        assert_eq!(b.kind(), BackingKind::File);
        assert_eq!(b.size(), ByteCount(1 << 20));
        assert_eq!(b.logical_block_size(), 512);
        assert!(!b.is_rotational());
        assert!(!b.readonly());
        assert_eq!(b.path(), f.path());
        assert!(b.as_raw_fd() >= 0);
        // /tmp is ext4 on a real disk here: O_DIRECT must work.
        assert!(b.is_direct());
        assert!(b.dio_mem_align().is_power_of_two());
        assert!(b.dio_offset_align().is_power_of_two());
        assert!(b.dio_offset_align() <= 4096);
        assert_ne!(b.buffered_fd(), b.as_raw_fd());
        // SAFETY: querying the status flags of an fd we own.
        let fl = unsafe { libc::fcntl(b.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(fl & libc::O_DIRECT, 0);
        // SAFETY: as above.
        let fl = unsafe { libc::fcntl(b.buffered_fd(), libc::F_GETFL) };
        assert_eq!(fl & libc::O_DIRECT, 0);
        assert_eq!(fl & libc::O_ACCMODE, libc::O_RDWR);
    }

    #[test]
    fn readonly_open() {
        let f = tempfile::NamedTempFile::new_in("/tmp").unwrap();
        f.as_file().set_len(4096).unwrap();
        let b = Backing::open(f.path(), true).unwrap();
        assert!(b.readonly());
        assert_eq!(b.size(), ByteCount(4096));
        // SAFETY: querying the status flags of an fd we own.
        let fl = unsafe { libc::fcntl(b.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(fl & libc::O_ACCMODE, libc::O_RDONLY);
    }

    /// Run with `VUS_TEST_BLOCKDEV=/dev/xyz cargo test -- --ignored` (opens
    /// the device read-only).
    #[test]
    #[ignore]
    fn block_device_properties() {
        let Ok(dev) = std::env::var("VUS_TEST_BLOCKDEV") else {
            return;
        };
        let b = Backing::open(Path::new(&dev), true).unwrap();
        eprintln!("{b:?}");
        assert_eq!(b.kind(), BackingKind::BlockDevice);
        assert!(b.is_direct());
        assert!(b.size().0 > 0);
        assert!(b.logical_block_size() >= 512);
        assert!(b.dio_offset_align() >= 1);
    }
}
