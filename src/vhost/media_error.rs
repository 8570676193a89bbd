//! A READ or WRITE that the backing store failed with a medium error (EIO,
//! or any errno not mapped to another sense; see `io_error_sense`): find
//! the first failing block, so the guest's sense data names it.
//!
//! The io_uring op covered the whole transfer, so its error does not say
//! which block failed. The worker hands the request to its queue's slow
//! lane (it never blocks itself), where [`find_failing_block`] redoes the
//! transfer one logical block at a time with the block layer's synchronous
//! primitives and stops at the first block that fails:
//! - a READ returns the blocks before it as data-in (the worker copies them
//!   into the guest's buffer) and MEDIUM ERROR 11h/00h UNRECOVERED READ
//!   ERROR with INFORMATION = that LBA (VALID set);
//! - a WRITE (its data copied from the guest first; rewriting the blocks
//!   that did land is harmless) returns MEDIUM ERROR 0Ch/00h WRITE ERROR with
//!   INFORMATION = that LBA;
//! - if every block succeeds the second time (a transient error), the
//!   command completes GOOD with all its data.
//!
//! Linux's sd then completes the sectors before the failing one
//! (`sd_completed_bytes`), and fails and logs only that one. An LBA beyond
//! the 32-bit INFORMATION field of fixed-format sense (the format this
//! daemon reports) is left out (VALID 0): the guest then fails the whole
//! command, as before. The failure is logged from the slow lane, rate
//! limited (at most a few lines per 10 s for the whole process).

use std::sync::{Arc, Mutex, OnceLock};

use super::exec::{Gate, WriteGate};
use super::ratelimit::{warn_limited, RateLimit};
use super::slow::{Job, JobResult};
use crate::block::Backing;
use crate::scsi::{io_error_sense, BlockIo, IoDir, SenseKey, Status};
use crate::units::ByteOffset;
use crate::virtio_scsi::{GuestMem, Segments};

/// What a ring READ/WRITE needs to be redone on the slow lane.
#[derive(Clone, Debug)]
pub(crate) struct RingIo {
    pub io: BlockIo,
    /// The guest's data-out buffers (a WRITE's data).
    pub data_out: Segments,
}

/// Does `errno` on a transfer in `dir` become a medium error (the errors
/// whose failing block the guest is told)?
pub(crate) fn is_medium_error(dir: IoDir, errno: i32) -> bool {
    io_error_sense(dir, errno).key == SenseKey::MediumError
}

/// The slow-lane job that finds the failing block of `rio`, which failed
/// with `errno` on the ring; None when the error is not a medium error or
/// the write's data cannot be read from the guest (the caller then answers
/// with the plain sense).
pub(crate) fn retry_job(
    rio: &RingIo,
    errno: i32,
    backing: &Arc<Backing>,
    gate: &Gate,
    lun: u16,
    mem: &GuestMem,
) -> Option<Job> {
    let io = rio.io;
    if !is_medium_error(io.dir, errno) {
        return None;
    }
    let len = usize::try_from(io.len.0).ok()?;
    let data = match io.dir {
        IoDir::Read => Vec::new(),
        IoDir::Write => {
            let mut data = vec![0u8; len];
            if rio.data_out.read_to(mem, &mut data).ok()? != len {
                return None;
            }
            data
        }
    };
    let backing = backing.clone();
    let gate = gate.clone();
    Some(Box::new(move || {
        let r = find_failing_block(&backing, &gate, io, data);
        if let Some((lba, e)) = r.failed {
            let mut limit = log_limit().lock().unwrap_or_else(|p| p.into_inner());
            warn_limited!(
                limit,
                lun,
                lba,
                dir = ?io.dir,
                first_lba = io.lba.0,
                blocks = io.blocks.0,
                error = %e,
                "backing store medium error"
            );
        }
        r.result
    }))
}

/// The outcome of a block-by-block retry: the SCSI result and, when a
/// block failed, its LBA and error.
#[derive(Debug)]
pub(crate) struct Retried {
    pub result: JobResult,
    pub failed: Option<(u64, std::io::Error)>,
}

/// Redo `io` one logical block at a time (blocking; slow lane only). For a
/// WRITE, `data` is its data-out. See the module documentation for the
/// result.
pub(crate) fn find_failing_block(
    backing: &Backing,
    gate: &WriteGate,
    io: BlockIo,
    data: Vec<u8>,
) -> Retried {
    let bs = (io.len.0 / io.blocks.0.max(1)).max(1);
    let bsz = usize::try_from(bs).unwrap_or(usize::MAX);
    let total = usize::try_from(io.len.0).unwrap_or(0);
    let mut buf = match io.dir {
        IoDir::Read => vec![0u8; total],
        IoDir::Write => data,
    };
    for (i, block) in buf.chunks_mut(bsz).enumerate() {
        let i = i as u64;
        let at = ByteOffset(io.offset.0 + i * bs);
        let r = match io.dir {
            IoDir::Read => backing.read_exact_at(at, block),
            IoDir::Write => gate.serialised(|| backing.write_all_at(at, block, io.fua)),
        };
        if let Err(e) = r {
            let lba = io.lba.0 + i;
            let mut sense = io_error_sense(io.dir, e.raw_os_error().unwrap_or(libc::EIO));
            if let Ok(info) = u32::try_from(lba) {
                sense = sense.with_info(info);
            }
            let good = match io.dir {
                IoDir::Read => usize::try_from(i * bs).unwrap_or(0),
                IoDir::Write => 0,
            };
            buf.truncate(good);
            return Retried {
                result: JobResult {
                    status: Status::CheckCondition,
                    sense: Some(sense),
                    data: buf,
                    pass: None,
                },
                failed: Some((lba, e)),
            };
        }
    }
    let data = match io.dir {
        IoDir::Read => buf,
        IoDir::Write => Vec::new(),
    };
    Retried {
        result: JobResult::good(data),
        failed: None,
    }
}

/// The process-wide limit of "medium error" log lines.
fn log_limit() -> &'static Mutex<RateLimit> {
    static LIMIT: OnceLock<Mutex<RateLimit>> = OnceLock::new();
    LIMIT.get_or_init(|| Mutex::new(RateLimit::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{BlockCount, ByteCount, Lba};

    fn io(dir: IoDir, lba: u64, blocks: u64, bs: u64) -> BlockIo {
        BlockIo {
            dir,
            lba: Lba(lba),
            blocks: BlockCount(blocks),
            offset: ByteOffset(lba * bs),
            len: ByteCount(blocks * bs),
            fua: false,
        }
    }

    #[test]
    fn only_medium_errors_are_retried() {
        assert!(is_medium_error(IoDir::Read, -libc::EIO));
        assert!(is_medium_error(IoDir::Write, libc::EIO));
        assert!(is_medium_error(IoDir::Read, libc::ENODEV));
        assert!(!is_medium_error(IoDir::Write, -libc::ENOSPC));
        assert!(!is_medium_error(IoDir::Read, libc::EAGAIN));
        assert!(!is_medium_error(IoDir::Write, libc::EROFS));
    }

    #[test]
    fn a_transfer_that_works_the_second_time_is_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, (0..8192u32).map(|i| i as u8).collect::<Vec<_>>()).unwrap();
        let b = Backing::open(&path, false).unwrap();
        let gate = WriteGate::default();
        let r = find_failing_block(&b, &gate, io(IoDir::Read, 2, 4, 512), Vec::new());
        assert!(r.failed.is_none());
        assert_eq!(r.result.status, Status::Good);
        assert_eq!(r.result.data.len(), 2048);
        assert_eq!(r.result.data[0], 0);
        assert_eq!(r.result.data[1], 1);
        let w = find_failing_block(&b, &gate, io(IoDir::Write, 1, 2, 512), vec![7u8; 1024]);
        assert_eq!(w.result.status, Status::Good);
        assert!(w.result.data.is_empty());
        let back = std::fs::read(&path).unwrap();
        assert!(back[512..1536].iter().all(|&x| x == 7));
        assert_eq!(back[1536], (1536u32 % 256) as u8);
    }

    #[test]
    fn the_first_failing_block_is_named_and_the_good_prefix_kept() {
        // Reading past the end of the file fails (EIO from read_exact_at):
        // blocks 14 and 15 exist, 16 does not.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, vec![5u8; 16 * 512]).unwrap();
        let b = Backing::open(&path, true).unwrap();
        let gate = WriteGate::default();
        let r = find_failing_block(&b, &gate, io(IoDir::Read, 14, 4, 512), Vec::new());
        assert_eq!(r.failed.as_ref().map(|f| f.0), Some(16));
        assert_eq!(r.result.status, Status::CheckCondition);
        let s = r.result.sense.unwrap();
        assert_eq!((s.key, s.asc, s.ascq), (SenseKey::MediumError, 0x11, 0));
        assert_eq!(s.info, Some(16));
        assert_eq!(r.result.data, vec![5u8; 1024]);
    }
}
