//! A fault-injecting test filesystem (FUSE, with the `fuser` crate): one
//! file, `disk.img`, passed through to a real image file, whose chosen
//! byte ranges fail reads or writes with EIO or answer late. The faults can
//! be changed while the filesystem is mounted.
//!
//! Every open is FOPEN_DIRECT_IO: no page cache, so each read and write the
//! daemon makes reaches us with its exact offset and length, and a fault at
//! one sector is not widened to a page.
//!
//! Needs root (mount(2) of a FUSE filesystem without fusermount) and
//! /dev/fuse.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyWrite, Request, TimeOrNow,
};

/// The file's name in the mount.
pub const NAME: &str = "disk.img";
const ROOT: u64 = fuser::FUSE_ROOT_ID;
const INO: u64 = 2;
const TTL: Duration = Duration::from_secs(1);

/// What fails, by byte ranges of the file. A request fails when it overlaps
/// a range.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub read_eio: Vec<Range<u64>>,
    pub write_eio: Vec<Range<u64>>,
    /// Requests (read or write) overlapping the range are answered after
    /// the delay (on a thread of their own: others go on meanwhile).
    pub delay: Vec<(Range<u64>, Duration)>,
    /// As `delay`, for the first request overlapping the range only.
    pub delay_once: Vec<(Range<u64>, Duration)>,
}

/// Counters of what the filesystem saw.
#[derive(Debug, Default)]
pub struct Counters {
    pub read_errors: AtomicU64,
    pub write_errors: AtomicU64,
    pub delayed: AtomicU64,
}

fn overlaps(ranges: &[Range<u64>], r: &Range<u64>) -> bool {
    ranges.iter().any(|f| f.start < r.end && r.start < f.end)
}

struct FaultFs {
    file: Arc<File>,
    faults: Arc<Mutex<Faults>>,
    counters: Arc<Counters>,
}

impl FaultFs {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size, perm) = if ino == ROOT {
            (FileType::Directory, 0, 0o755)
        } else {
            let size = self.file.metadata().map(|m| m.len()).unwrap_or(0);
            (FileType::RegularFile, size, 0o644)
        };
        let now = SystemTime::now();
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn delay_for(&self, r: &Range<u64>) -> Option<Duration> {
        let mut f = self.faults.lock().unwrap();
        let hit = |(d, _): &(Range<u64>, Duration)| d.start < r.end && r.start < d.end;
        if let Some(i) = f.delay_once.iter().position(hit) {
            return Some(f.delay_once.remove(i).1);
        }
        f.delay.iter().find(|d| hit(d)).map(|(_, t)| *t)
    }

    /// Run `f` now, or on a thread after the delay for `r`.
    fn maybe_later(&self, r: &Range<u64>, f: impl FnOnce() + Send + 'static) {
        match self.delay_for(r) {
            Some(t) => {
                self.counters.delayed.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    std::thread::sleep(t);
                    f();
                });
            }
            None => f(),
        }
    }
}

impl Filesystem for FaultFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if parent == ROOT && name == NAME {
            reply.entry(&TTL, &self.attr(INO), 0);
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match ino {
            ROOT | INO => reply.attr(&TTL, &self.attr(ino)),
            _ => reply.error(libc::ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        if let (INO, Some(size)) = (ino, size) {
            if let Err(e) = self.file.set_len(size) {
                reply.error(e.raw_os_error().unwrap_or(libc::EIO));
                return;
            }
        }
        reply.attr(&TTL, &self.attr(ino));
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        if ino == INO {
            reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
        } else {
            reply.error(libc::EISDIR);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let off = offset as u64;
        let r = off..off + u64::from(size);
        if overlaps(&self.faults.lock().unwrap().read_eio, &r) {
            self.counters.read_errors.fetch_add(1, Ordering::Relaxed);
            reply.error(libc::EIO);
            return;
        }
        let file = self.file.clone();
        self.maybe_later(&r, move || {
            let mut buf = vec![0u8; size as usize];
            let mut done = 0;
            while done < buf.len() {
                match file.read_at(&mut buf[done..], off + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) => {
                        reply.error(e.raw_os_error().unwrap_or(libc::EIO));
                        return;
                    }
                }
            }
            reply.data(&buf[..done]);
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        let off = offset as u64;
        let r = off..off + data.len() as u64;
        if overlaps(&self.faults.lock().unwrap().write_eio, &r) {
            self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            reply.error(libc::EIO);
            return;
        }
        let file = self.file.clone();
        let data = data.to_vec();
        self.maybe_later(&r, move || match file.write_all_at(&data, off) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e.raw_os_error().unwrap_or(libc::EIO)),
        });
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        match self.file.sync_data() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
}

/// A mounted fault filesystem; unmounted (lazily) on drop.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    pub mountpoint: PathBuf,
    pub faults: Arc<Mutex<Faults>>,
    pub counters: Arc<Counters>,
}

impl Mounted {
    /// Mount a filesystem at `mountpoint` (created) whose `disk.img` is
    /// `backing` (an existing file).
    pub fn mount(backing: &Path, mountpoint: &Path) -> std::io::Result<Mounted> {
        std::fs::create_dir_all(mountpoint)?;
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(backing)?,
        );
        let faults = Arc::new(Mutex::new(Faults::default()));
        let counters = Arc::new(Counters::default());
        let fs = FaultFs {
            file,
            faults: faults.clone(),
            counters: counters.clone(),
        };
        let session = fuser::spawn_mount2(
            fs,
            mountpoint,
            &[MountOption::FSName("faultfs".into()), MountOption::RW],
        )?;
        let m = Mounted {
            session: Some(session),
            mountpoint: mountpoint.to_path_buf(),
            faults,
            counters,
        };
        // The mount is there once the file can be seen.
        let start = std::time::Instant::now();
        while !m.image().exists() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(std::io::Error::other("faultfs did not appear"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(m)
    }

    /// The faulty file's path.
    pub fn image(&self) -> PathBuf {
        self.mountpoint.join(NAME)
    }

    /// Change the faults.
    pub fn set(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.faults.lock().unwrap());
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Detach first: a daemon still holding the file must not make the
        // unmount fail and leave a dead mount behind.
        if let Ok(c) = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 with a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        drop(self.session.take());
    }
}

/// Can this process mount a FUSE filesystem (root and /dev/fuse)?
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse".into());
    }
    Ok(())
}
