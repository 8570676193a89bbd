//! SCSI passthrough to a host SCSI device (a LUN with `passthrough`): which
//! paths qualify (found through sysfs), and one command run with `SG_IO`
//! (the sg v3 `sg_io_hdr`, iovec form: the data moves between the device
//! and the caller's buffers, guest memory in the daemon).
//!
//! A device qualifies when it is a SCSI generic node (`/dev/sgN`, char
//! major 21) or a whole SCSI disk (`/dev/sdX`) whose sysfs entry has a SCSI
//! generic node (`/sys/dev/block/MAJ:MIN/device/scsi_generic/sgN`). Regular
//! files, partitions, loop, NVMe, virtio-blk and device-mapper devices have
//! none and are refused.
//!
//! Commands go to the path given: SG_IO on `/dev/sdX` is the block layer's
//! (QEMU's `scsi-block`), which maps aligned user buffers straight into the
//! request (`blk_rq_map_user_iov`: no copy); SG_IO on `/dev/sgN` is the sg
//! driver's, which copies iovec transfers through its own buffers. Resets
//! (`SG_SCSI_RESET`) always go to the sg node.
//!
//! `SG_IO` blocks until the device answers (or the timeout): it is run on a
//! helper thread, never on a worker.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{BlockError, IoVec};

/// Char major of the sg driver (`SCSI_GENERIC_MAJOR`).
pub const SCSI_GENERIC_MAJOR: u32 = 21;
/// Longest CDB we pass (the virtio-scsi CDB field is 32 bytes).
pub const MAX_CDB_LEN: usize = 32;
/// Largest data transfer of one passthrough command (bytes).
pub const MAX_TRANSFER: u64 = 16 << 20;
/// Most iovecs in one command (`UIO_MAXIOV`).
pub const MAX_IOVECS: usize = 1024;
/// Sense bytes we ask the device for (SPC: 252 at most; virtio-scsi
/// carries 96).
pub const SENSE_LEN: usize = 96;
/// How long one command may take before the host aborts it (ms).
pub const TIMEOUT_MS: u32 = 30_000;

const SG_IO: libc::c_ulong = 0x2285;
const SG_SCSI_RESET: libc::c_ulong = 0x2284;
const SG_SCSI_RESET_DEVICE: libc::c_int = 1;
const SG_GET_VERSION_NUM: libc::c_ulong = 0x2282;

const SG_DXFER_NONE: libc::c_int = -1;
const SG_DXFER_TO_DEV: libc::c_int = -2;
const SG_DXFER_FROM_DEV: libc::c_int = -3;

/// The sg v3 header (`struct sg_io_hdr`, <scsi/sg.h>).
#[repr(C)]
#[derive(Debug)]
pub struct SgIoHdr {
    pub interface_id: libc::c_int,
    pub dxfer_direction: libc::c_int,
    pub cmd_len: u8,
    pub mx_sb_len: u8,
    pub iovec_count: u16,
    pub dxfer_len: u32,
    pub dxferp: *mut libc::c_void,
    pub cmdp: *const u8,
    pub sbp: *mut u8,
    pub timeout: u32,
    pub flags: u32,
    pub pack_id: libc::c_int,
    pub usr_ptr: *mut libc::c_void,
    pub status: u8,
    pub masked_status: u8,
    pub msg_status: u8,
    pub sb_len_wr: u8,
    pub host_status: u16,
    pub driver_status: u16,
    pub resid: libc::c_int,
    pub duration: u32,
    pub info: u32,
}

/// Direction of a passthrough command's data, from the initiator's
/// buffers (virtio-scsi: data-out or data-in descriptors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgDir {
    None,
    /// Data-out: initiator to device.
    ToDevice,
    /// Data-in: device to initiator.
    FromDevice,
}

/// Why a command cannot be built.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SgBuildError {
    #[error("CDB of {0} bytes (6 to {MAX_CDB_LEN})")]
    CdbLength(usize),
    #[error("data transfer of {0} bytes (at most {MAX_TRANSFER})")]
    TooLong(u64),
    #[error("{0} data buffers (at most {MAX_IOVECS})")]
    TooManyBuffers(usize),
}

/// A command ready for `SG_IO`: the CDB, the data buffers and a sense
/// buffer, owned together so that the header's pointers stay valid.
pub struct SgCommand {
    cdb: [u8; MAX_CDB_LEN],
    cdb_len: u8,
    dir: SgDir,
    iovecs: Vec<IoVec>,
    len: u32,
    sense: [u8; SENSE_LEN],
    timeout_ms: u32,
}

/// What the device (or the host on its way) answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgAnswer {
    /// SCSI status byte as the device sent it.
    pub status: u8,
    /// Host adapter status (`DID_*`; 0 = OK).
    pub host_status: u16,
    /// Driver status (`DRIVER_*`; `DRIVER_SENSE` only says sense is valid).
    pub driver_status: u16,
    /// The sense bytes the device returned (`sb_len_wr` of them).
    pub sense: Vec<u8>,
    /// Bytes of the transfer that did not move.
    pub resid: u32,
}

impl SgCommand {
    /// A command of `cdb` moving the bytes of `iovecs` in `dir` (the
    /// buffers' total is the transfer length; `dir` None with buffers, or
    /// buffers of no bytes, moves nothing).
    pub fn new(cdb: &[u8], dir: SgDir, iovecs: &[IoVec]) -> Result<SgCommand, SgBuildError> {
        if cdb.len() < 6 || cdb.len() > MAX_CDB_LEN {
            return Err(SgBuildError::CdbLength(cdb.len()));
        }
        let total: u64 = iovecs.iter().map(|v| v.0.iov_len as u64).sum();
        if total > MAX_TRANSFER {
            return Err(SgBuildError::TooLong(total));
        }
        let (dir, iovecs) = if dir == SgDir::None || total == 0 {
            (SgDir::None, Vec::new())
        } else {
            if iovecs.len() > MAX_IOVECS {
                return Err(SgBuildError::TooManyBuffers(iovecs.len()));
            }
            let v: Vec<IoVec> = iovecs.iter().copied().filter(|v| v.0.iov_len > 0).collect();
            (dir, v)
        };
        let mut c = [0u8; MAX_CDB_LEN];
        if let Some(dst) = c.get_mut(..cdb.len()) {
            dst.copy_from_slice(cdb);
        }
        Ok(SgCommand {
            cdb: c,
            cdb_len: cdb.len() as u8,
            dir,
            iovecs,
            len: if dir == SgDir::None { 0 } else { total as u32 },
            sense: [0; SENSE_LEN],
            timeout_ms: TIMEOUT_MS,
        })
    }

    /// The CDB.
    pub fn cdb(&self) -> &[u8] {
        self.cdb
            .get(..usize::from(self.cdb_len))
            .unwrap_or_default()
    }

    /// Transfer length in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// No data moves.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dir(&self) -> SgDir {
        self.dir
    }

    /// The sg v3 header for this command; its pointers point into `self`
    /// (valid while `self` is neither moved nor dropped).
    pub fn header(&mut self) -> SgIoHdr {
        let (dxfer_direction, iovec_count, dxferp) = match self.dir {
            SgDir::None => (SG_DXFER_NONE, 0u16, std::ptr::null_mut()),
            d => (
                if d == SgDir::ToDevice {
                    SG_DXFER_TO_DEV
                } else {
                    SG_DXFER_FROM_DEV
                },
                self.iovecs.len() as u16,
                self.iovecs.as_mut_ptr().cast::<libc::c_void>(),
            ),
        };
        SgIoHdr {
            interface_id: libc::c_int::from(b'S'),
            dxfer_direction,
            cmd_len: self.cdb_len,
            mx_sb_len: SENSE_LEN as u8,
            iovec_count,
            dxfer_len: self.len,
            dxferp,
            cmdp: self.cdb.as_ptr(),
            sbp: self.sense.as_mut_ptr(),
            timeout: self.timeout_ms,
            flags: 0,
            pack_id: 0,
            usr_ptr: std::ptr::null_mut(),
            status: 0,
            masked_status: 0,
            msg_status: 0,
            sb_len_wr: 0,
            host_status: 0,
            driver_status: 0,
            resid: 0,
            duration: 0,
            info: 0,
        }
    }

    /// What `hdr` (this command's header, after `SG_IO`) says.
    pub fn answer(&self, hdr: &SgIoHdr) -> SgAnswer {
        let n = usize::from(hdr.sb_len_wr).min(SENSE_LEN);
        let resid = u32::try_from(hdr.resid.max(0)).unwrap_or(0).min(self.len);
        SgAnswer {
            status: hdr.status,
            host_status: hdr.host_status,
            driver_status: hdr.driver_status,
            sense: self.sense.get(..n).unwrap_or_default().to_vec(),
            resid,
        }
    }
}

/// A host SCSI device opened for passthrough.
#[derive(Debug)]
pub struct ScsiDevice {
    /// Where commands go: the path given (`/dev/sdX` or `/dev/sgN`).
    io: File,
    /// The sg node (for resets); the same file as `io` for `/dev/sgN`.
    sg: Option<File>,
    sg_path: PathBuf,
    /// `/dev/sdX` given: its size and logical block size.
    disk: Option<(u64, u32)>,
    /// Largest transfer the host takes in one command, in the device's
    /// logical blocks (the request queue's `max_sectors`, at most
    /// [`MAX_TRANSFER`]).
    max_transfer_blocks: u32,
}

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);
/// `BLKSECTGET` (`_IO(0x12, 103)`); on an sg node it answers the request
/// queue's `max_sectors` in bytes.
const BLKSECTGET: libc::c_ulong = 0x1267;

/// The logical block size of the disk behind the sg node `sg` (sysfs), if
/// it has one.
fn sg_block_size(sg: &Path) -> Option<u32> {
    let name = sg.file_name()?.to_str()?;
    let dir = std::fs::read_dir(format!("/sys/class/scsi_generic/{name}/device/block")).ok()?;
    let disk = dir.flatten().next()?.path();
    std::fs::read_to_string(disk.join("queue/logical_block_size"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn invalid(path: &Path, msg: impl Into<String>) -> BlockError {
    BlockError::Invalid {
        path: path.to_owned(),
        msg: msg.into(),
    }
}

fn open_err(path: &Path, source: io::Error) -> BlockError {
    BlockError::Open {
        path: path.to_owned(),
        source,
    }
}

/// The SCSI generic node of a whole SCSI disk `rdev`, from sysfs.
fn sg_node_of_block(path: &Path, rdev: u64) -> Result<PathBuf, BlockError> {
    let sys = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(rdev),
        libc::minor(rdev)
    ));
    let name = std::fs::canonicalize(&sys)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| path.display().to_string());
    if sys.join("partition").exists() {
        return Err(invalid(
            path,
            format!("{name} is a partition; passthrough needs the whole SCSI disk"),
        ));
    }
    let entries = std::fs::read_dir(sys.join("device/scsi_generic")).map_err(|_| {
        invalid(
            path,
            format!(
                "{name} is not a SCSI device (no SCSI generic node in sysfs; loop, NVMe, virtio-blk and device-mapper devices cannot be passed through; for a SCSI disk, load the sg module)"
            ),
        )
    })?;
    let sg = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("sg"))
        .ok_or_else(|| invalid(path, format!("{name} has no SCSI generic node in sysfs")))?;
    Ok(PathBuf::from("/dev").join(sg))
}

/// Open read-write. An sg node is opened `O_NONBLOCK`: its open then fails
/// with EBUSY instead of waiting while another process holds it
/// exclusively; SG_IO blocks all the same (it ignores the flag).
fn open_rw(path: &Path, sg_node: bool) -> io::Result<File> {
    let nonblock = if sg_node { libc::O_NONBLOCK } else { 0 };
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | nonblock)
        .open(path)
}

impl ScsiDevice {
    /// Open `path` for passthrough: a SCSI generic node or a whole SCSI
    /// disk; anything else is refused with the reason.
    pub fn open(path: &Path) -> Result<ScsiDevice, BlockError> {
        let meta = std::fs::metadata(path).map_err(|e| open_err(path, e))?;
        let ft = meta.file_type();
        let need = "passthrough needs a SCSI device (/dev/sdX or /dev/sgN)";
        if ft.is_file() {
            return Err(invalid(path, format!("a regular file; {need}")));
        }
        let (sg_path, block) = if ft.is_char_device() {
            if libc::major(meta.rdev()) != SCSI_GENERIC_MAJOR {
                return Err(invalid(
                    path,
                    format!("a character device that is not a SCSI generic node; {need}"),
                ));
            }
            (path.to_owned(), false)
        } else if ft.is_block_device() {
            (sg_node_of_block(path, meta.rdev())?, true)
        } else {
            return Err(invalid(path, format!("not a device; {need}")));
        };
        let io = open_rw(path, !block).map_err(|e| open_err(path, e))?;
        let fmeta = io.metadata().map_err(|e| open_err(path, e))?;
        if fmeta.rdev() != meta.rdev() || fmeta.ino() != meta.ino() {
            return Err(invalid(path, "changed while being opened"));
        }
        let (sg, disk) = if block {
            let sg = open_rw(&sg_path, true).map_err(|e| open_err(&sg_path, e))?;
            let mut bytes: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 into `bytes`, valid for
            // writes; the fd is open.
            unsafe { blkgetsize64(io.as_raw_fd(), &mut bytes) }
                .map_err(|e| open_err(path, e.into()))?;
            let mut lbs: libc::c_int = 0;
            // SAFETY: BLKSSZGET writes one int into `lbs`, valid for writes;
            // the fd is open.
            unsafe { blksszget(io.as_raw_fd(), &mut lbs) }.map_err(|e| open_err(path, e.into()))?;
            (Some(sg), Some((bytes, u32::try_from(lbs).unwrap_or(512))))
        } else {
            (None, None)
        };
        let mut dev = ScsiDevice {
            io,
            sg,
            sg_path,
            disk,
            max_transfer_blocks: 0,
        };
        let mut version: libc::c_int = 0;
        // SAFETY: SG_GET_VERSION_NUM writes one int into `version`, valid
        // for writes; the fd is open.
        let rc =
            unsafe { libc::ioctl(dev.sg_file().as_raw_fd(), SG_GET_VERSION_NUM, &mut version) };
        if rc != 0 || version < 30000 {
            return Err(invalid(
                &dev.sg_path,
                "does not answer as a SCSI generic (sg v3) device",
            ));
        }
        let mut max_bytes: libc::c_int = 0;
        // SAFETY: BLKSECTGET on an sg fd writes one int into `max_bytes`,
        // valid for writes; the fd is open.
        let rc = unsafe { libc::ioctl(dev.sg_file().as_raw_fd(), BLKSECTGET, &mut max_bytes) };
        let max_bytes = match u64::try_from(max_bytes) {
            Ok(b) if rc == 0 && b >= 512 => b.min(MAX_TRANSFER),
            _ => MAX_TRANSFER,
        };
        let lbs = dev
            .disk
            .map(|(_, l)| l)
            .or_else(|| sg_block_size(&dev.sg_path))
            .filter(|l| *l >= 512)
            .unwrap_or(512);
        dev.max_transfer_blocks = u32::try_from(max_bytes / u64::from(lbs)).unwrap_or(u32::MAX);
        Ok(dev)
    }

    fn sg_file(&self) -> &File {
        self.sg.as_ref().unwrap_or(&self.io)
    }

    /// The SCSI generic node (`/dev/sgN`).
    pub fn sg_path(&self) -> &Path {
        &self.sg_path
    }

    /// For `/dev/sdX`: size in bytes and logical block size.
    pub fn disk_geometry(&self) -> Option<(u64, u32)> {
        self.disk
    }

    /// Largest transfer the host takes, in logical blocks: what the
    /// guest is told in VPD page B0h.
    pub fn max_transfer_blocks(&self) -> u32 {
        self.max_transfer_blocks
    }

    /// The descriptor commands go to.
    pub fn file(&self) -> &File {
        &self.io
    }

    /// Run `cmd` (blocking until the device answers or the host gives
    /// up). An error is the host's (the ioctl failed: device gone, no
    /// memory, bad request); the device's own answer is `Ok`.
    pub fn execute(&self, cmd: &mut SgCommand) -> io::Result<SgAnswer> {
        let mut hdr = cmd.header();
        loop {
            // SAFETY: `hdr` is a valid sg v3 header whose CDB, sense and
            // iovec-array pointers point into `cmd`, which outlives the
            // call; the iovecs point to memory the caller keeps mapped and
            // does not otherwise touch until this returns (guest buffers of
            // an in-flight request, which holds the memory guard).
            let rc = unsafe { libc::ioctl(self.io.as_raw_fd(), SG_IO, &mut hdr) };
            if rc == 0 {
                return Ok(cmd.answer(&hdr));
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }

    /// LOGICAL UNIT RESET: `SG_SCSI_RESET` with `SG_SCSI_RESET_DEVICE`
    /// (blocks until the host's error handler is done).
    pub fn reset(&self) -> io::Result<()> {
        let mut what: libc::c_int = SG_SCSI_RESET_DEVICE;
        // SAFETY: SG_SCSI_RESET reads one int from `what`; the fd is open.
        let rc = unsafe { libc::ioctl(self.sg_file().as_raw_fd(), SG_SCSI_RESET, &mut what) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(buf: &mut [u8]) -> IoVec {
        IoVec::new(buf.as_mut_ptr(), buf.len())
    }

    #[test]
    fn data_in_command_uses_the_iovec_form() {
        let mut a = vec![0u8; 512];
        let mut b = vec![0u8; 3584];
        let cdb = [0x28u8, 0, 0, 0, 0, 8, 0, 0, 8, 0];
        let mut cmd = SgCommand::new(&cdb, SgDir::FromDevice, &[iov(&mut a), iov(&mut b)]).unwrap();
        assert_eq!(cmd.len(), 4096);
        let h = cmd.header();
        assert_eq!(h.interface_id, i32::from(b'S'));
        assert_eq!(h.dxfer_direction, SG_DXFER_FROM_DEV);
        assert_eq!(h.iovec_count, 2);
        assert_eq!(h.dxfer_len, 4096);
        assert_eq!(h.cmd_len, 10);
        assert_eq!(h.mx_sb_len as usize, SENSE_LEN);
        assert_eq!(h.timeout, TIMEOUT_MS);
        // The iovec array is the guest's buffers themselves: no bounce.
        // SAFETY: dxferp points to the command's two iovecs.
        let v = unsafe { std::slice::from_raw_parts(h.dxferp.cast::<IoVec>(), 2) };
        assert_eq!(v[0].base(), a.as_mut_ptr());
        assert_eq!(v[1].base(), b.as_mut_ptr());
        // SAFETY: cmdp points to the command's CDB array.
        let c = unsafe { std::slice::from_raw_parts(h.cmdp, 10) };
        assert_eq!(c, &cdb);
    }

    #[test]
    fn data_out_and_no_data() {
        let mut a = vec![1u8; 512];
        let mut cmd = SgCommand::new(&[0x2a; 16], SgDir::ToDevice, &[iov(&mut a)]).unwrap();
        let h = cmd.header();
        assert_eq!(h.dxfer_direction, SG_DXFER_TO_DEV);
        assert_eq!((h.dxfer_len, h.iovec_count, h.cmd_len), (512, 1, 16));
        // TEST UNIT READY: nothing moves.
        let mut cmd = SgCommand::new(&[0u8; 6], SgDir::None, &[]).unwrap();
        let h = cmd.header();
        assert_eq!(h.dxfer_direction, SG_DXFER_NONE);
        assert_eq!((h.dxfer_len, h.iovec_count), (0, 0));
        assert!(h.dxferp.is_null());
        // Buffers of no bytes: no transfer either.
        let mut empty: [u8; 0] = [];
        let mut cmd = SgCommand::new(&[0u8; 6], SgDir::FromDevice, &[iov(&mut empty)]).unwrap();
        assert_eq!(cmd.dir(), SgDir::None);
        assert_eq!(cmd.header().dxfer_direction, SG_DXFER_NONE);
    }

    #[test]
    fn bad_commands_are_refused() {
        assert_eq!(
            SgCommand::new(&[0u8; 5], SgDir::None, &[]).err(),
            Some(SgBuildError::CdbLength(5))
        );
        assert_eq!(
            SgCommand::new(&[0u8; 33], SgDir::None, &[]).err(),
            Some(SgBuildError::CdbLength(33))
        );
        let mut big = vec![0u8; MAX_TRANSFER as usize + 1];
        assert_eq!(
            SgCommand::new(&[0x28; 10], SgDir::FromDevice, &[iov(&mut big)]).err(),
            Some(SgBuildError::TooLong(MAX_TRANSFER + 1))
        );
        let mut one = [0u8; 1];
        let many = vec![iov(&mut one); MAX_IOVECS + 1];
        assert_eq!(
            SgCommand::new(&[0x28; 10], SgDir::FromDevice, &many).err(),
            Some(SgBuildError::TooManyBuffers(MAX_IOVECS + 1))
        );
    }

    #[test]
    fn answer_carries_status_sense_and_residual_as_given() {
        let mut a = vec![0u8; 4096];
        let mut cmd =
            SgCommand::new(&[0x12, 0, 0, 0x10, 0, 0], SgDir::FromDevice, &[iov(&mut a)]).unwrap();
        let mut h = cmd.header();
        let sense = [
            0x70u8, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0,
        ];
        // The device wrote its sense through sbp.
        // SAFETY: sbp points to the command's SENSE_LEN-byte sense buffer.
        unsafe { std::ptr::copy_nonoverlapping(sense.as_ptr(), h.sbp, sense.len()) };
        h.status = 0x02;
        h.sb_len_wr = sense.len() as u8;
        h.resid = 4000;
        h.driver_status = 0x08;
        let ans = cmd.answer(&h);
        assert_eq!(ans.status, 0x02);
        assert_eq!(ans.sense, sense);
        assert_eq!(ans.resid, 4000);
        assert_eq!((ans.host_status, ans.driver_status), (0, 0x08));
        // A residual beyond the transfer or negative is clamped.
        h.resid = 1 << 20;
        assert_eq!(cmd.answer(&h).resid, 4096);
        h.resid = -5;
        assert_eq!(cmd.answer(&h).resid, 0);
        // sb_len_wr beyond the buffer is clamped.
        h.sb_len_wr = 200;
        assert_eq!(cmd.answer(&h).sense.len(), SENSE_LEN);
    }

    #[test]
    fn non_scsi_paths_are_refused() {
        let dir = std::env::temp_dir().join(format!("vus-sg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("disk.img");
        std::fs::write(&f, vec![0u8; 4096]).unwrap();
        let e = ScsiDevice::open(&f).unwrap_err().to_string();
        assert!(
            e.contains("a regular file; passthrough needs a SCSI device"),
            "{e}"
        );
        let e = ScsiDevice::open(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a SCSI generic node"), "{e}");
        let e = ScsiDevice::open(&dir).unwrap_err().to_string();
        assert!(e.contains("not a device"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
