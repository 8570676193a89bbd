//! Executes the SCSI target's backing-store operations (UNMAP, WRITE SAME,
//! VERIFY, WRITE AND VERIFY, COMPARE AND WRITE, GET LBA STATUS, and writes
//! diverted off the fast path) with the block layer's synchronous
//! primitives. Runs on a queue's slow lane, never on its worker.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::slow::JobResult;
use crate::block::{Backing, Extent};
use crate::scsi::{
    io_error_sense, lba_status_data, miscompare_sense, ByteRange, IoDir, LbaExtent, Outcome, Sense,
    SenseKey,
};
use crate::units::{BlockCount, BlockSize, ByteCount, ByteOffset, Lba};

/// Largest chunk read at once by VERIFY and COMPARE AND WRITE.
const CHUNK: usize = 1 << 20;
/// How long COMPARE AND WRITE waits for fast-path writes to drain.
const GATE_WAIT: Duration = Duration::from_secs(30);
/// GET LBA STATUS looks this far ahead at most (the guest asks again).
const LBA_STATUS_SPAN: u64 = 1 << 30;

/// Makes COMPARE AND WRITE atomic against every other write to its LUN,
/// from any queue, at the cost of one atomic increment per fast-path write.
///
/// A fast-path write registers in `fast_writes` and then checks
/// `caw_active`; COMPARE AND WRITE raises `caw_active` and then waits for
/// `fast_writes` to reach zero (both sides SeqCst, so one of them always
/// sees the other). While `caw_active` is raised, new writes are diverted
/// to the slow lane, where they serialise on `lock` with the COMPARE AND
/// WRITE.
#[derive(Debug, Default)]
pub struct WriteGate {
    caw_active: AtomicU32,
    fast_writes: AtomicU64,
    lock: Mutex<()>,
}

impl WriteGate {
    /// Try to start a fast-path write; false means divert it.
    pub(crate) fn enter_fast(&self) -> bool {
        self.fast_writes.fetch_add(1, Ordering::SeqCst);
        if self.caw_active.load(Ordering::SeqCst) == 0 {
            return true;
        }
        self.leave_fast();
        false
    }

    /// A fast-path write finished.
    pub(crate) fn leave_fast(&self) {
        self.fast_writes.fetch_sub(1, Ordering::SeqCst);
    }

    /// Run `f` with every other write to the LUN excluded.
    fn exclusive<T>(&self, f: impl FnOnce() -> T) -> Result<T, Sense> {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.caw_active.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        let mut drained = true;
        while self.fast_writes.load(Ordering::SeqCst) != 0 {
            if start.elapsed() > GATE_WAIT {
                drained = false;
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        let out = if drained {
            Ok(f())
        } else {
            // The writes in flight never finished: fail rather than break
            // atomicity. ABORTED COMMAND is retried by initiators.
            Err(Sense::new(SenseKey::AbortedCommand, 0x00, 0x00))
        };
        self.caw_active.fetch_sub(1, Ordering::SeqCst);
        out
    }

    /// Run a diverted write serialised with COMPARE AND WRITE.
    pub(crate) fn serialised<T>(&self, f: impl FnOnce() -> T) -> T {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        f()
    }
}

/// Work for the slow lane.
pub(crate) enum SlowOp {
    /// One of the target's backing-store outcomes.
    Scsi(Outcome),
    /// A WRITE that met a COMPARE AND WRITE in progress.
    DivertedWrite {
        offset: ByteOffset,
        data: Vec<u8>,
        fua: bool,
    },
}

fn fail(dir: IoDir, e: &std::io::Error) -> JobResult {
    JobResult::check(io_error_sense(dir, e.raw_os_error().unwrap_or(libc::EIO)))
}

/// Execute `op` against `backing` (blocking).
pub(crate) fn run(op: SlowOp, backing: &Backing, gate: &WriteGate, bs: BlockSize) -> JobResult {
    match op {
        SlowOp::DivertedWrite { offset, data, fua } => {
            match gate.serialised(|| backing.write_all_at(offset, &data, fua)) {
                Ok(()) => JobResult::good(Vec::new()),
                Err(e) => fail(IoDir::Write, &e),
            }
        }
        SlowOp::Scsi(outcome) => run_scsi(outcome, backing, gate, bs),
    }
}

fn run_scsi(outcome: Outcome, backing: &Backing, gate: &WriteGate, bs: BlockSize) -> JobResult {
    match outcome {
        Outcome::Unmap { ranges } => {
            for r in ranges {
                if let Err(e) = backing.unmap(r.offset, r.len) {
                    return fail(IoDir::Write, &e);
                }
            }
            JobResult::good(Vec::new())
        }
        Outcome::WriteSame {
            range,
            block,
            unmap,
            fua,
        } => {
            let zeros = block.iter().all(|b| *b == 0);
            let r = if zeros {
                backing.write_zeroes(range.offset, range.len, unmap && backing.unmap_zeroes())
            } else {
                backing.write_same(range.offset, range.len, &block)
            };
            let r = r.and_then(|()| if fua { backing.sync_data() } else { Ok(()) });
            match r {
                Ok(()) => JobResult::good(Vec::new()),
                Err(e) => fail(IoDir::Write, &e),
            }
        }
        Outcome::Verify { range, expected } => match compare(backing, range, expected.as_deref()) {
            Ok(None) => JobResult::good(Vec::new()),
            Ok(Some(off)) => JobResult::check(miscompare_sense(off)),
            Err(e) => fail(IoDir::Read, &e),
        },
        Outcome::WriteVerify { range, data, fua } => {
            if let Err(e) = backing.write_all_at(range.offset, &data, fua) {
                return fail(IoDir::Write, &e);
            }
            match compare(backing, range, Some(&data)) {
                Ok(None) => JobResult::good(Vec::new()),
                Ok(Some(off)) => JobResult::check(miscompare_sense(off)),
                Err(e) => fail(IoDir::Read, &e),
            }
        }
        Outcome::CompareAndWrite {
            range,
            compare: expected,
            write,
            fua,
        } => {
            let done = gate.exclusive(|| match compare(backing, range, Some(&expected)) {
                Ok(Some(off)) => JobResult::check(miscompare_sense(off)),
                Ok(None) => match backing.write_all_at(range.offset, &write, fua) {
                    Ok(()) => JobResult::good(Vec::new()),
                    Err(e) => fail(IoDir::Write, &e),
                },
                Err(e) => fail(IoDir::Read, &e),
            });
            done.unwrap_or_else(JobResult::check)
        }
        Outcome::GetLbaStatus {
            start, alloc_len, ..
        } => {
            let size = backing.size().0;
            let Some(from) = start.to_bytes(bs).filter(|o| o.0 < size) else {
                return JobResult::check(Sense::new(SenseKey::IllegalRequest, 0x21, 0x00));
            };
            let span = (size - from.0).min(LBA_STATUS_SPAN);
            match backing.allocation_map(from, ByteCount(span)) {
                Ok(map) => {
                    let extents = to_lba_extents(&map, bs);
                    JobResult::good(lba_status_data(start, &extents, alloc_len))
                }
                Err(e) => fail(IoDir::Read, &e),
            }
        }
        // The fast-path outcomes never reach the slow lane.
        Outcome::Complete { .. }
        | Outcome::Io(_)
        | Outcome::Flush
        | Outcome::Passthrough { .. } => {
            JobResult::check(Sense::new(SenseKey::HardwareError, 0x44, 0x00))
        }
    }
}

/// Read `range` (in chunks) and compare with `expected`; `Some(offset)` of
/// the first differing byte. With `expected` None, only read.
fn compare(
    backing: &Backing,
    range: ByteRange,
    expected: Option<&[u8]>,
) -> std::io::Result<Option<u64>> {
    let total = usize::try_from(range.len.0).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; total.min(CHUNK)];
    let mut done = 0usize;
    while done < total {
        let n = (total - done).min(CHUNK);
        let chunk = buf.get_mut(..n).unwrap_or_default();
        backing.read_exact_at(ByteOffset(range.offset.0 + done as u64), chunk)?;
        if let Some(exp) = expected.and_then(|e| e.get(done..done + n)) {
            if let Some(i) = chunk.iter().zip(exp).position(|(a, b)| a != b) {
                return Ok(Some((done + i) as u64));
            }
        }
        done += n;
    }
    Ok(None)
}

/// Turn a byte-granular allocation map into whole logical blocks: a block
/// partly allocated counts as mapped.
pub(crate) fn to_lba_extents(map: &[Extent], bs: BlockSize) -> Vec<LbaExtent> {
    let b = u64::from(bs.bytes());
    let mut out: Vec<LbaExtent> = Vec::new();
    for e in map {
        let end = e.offset.saturating_add(e.len);
        let (first, last) = if e.allocated {
            (e.offset / b, end.div_ceil(b))
        } else {
            (e.offset.div_ceil(b), end / b)
        };
        // Blocks already claimed by a previous (mapped) extent stay mapped.
        let first = match out.last() {
            Some(p) => first.max(p.lba.0 + p.blocks.0),
            None => first,
        };
        if last <= first {
            continue;
        }
        match out.last_mut() {
            Some(p) if p.deallocated != e.allocated && p.lba.0 + p.blocks.0 == first => {
                p.blocks.0 += last - first;
            }
            Some(p) if p.lba.0 + p.blocks.0 < first => {
                // A gap of partly allocated blocks between two holes.
                let gap = LbaExtent {
                    lba: Lba(p.lba.0 + p.blocks.0),
                    blocks: BlockCount(first - (p.lba.0 + p.blocks.0)),
                    deallocated: false,
                };
                out.push(gap);
                out.push(LbaExtent {
                    lba: Lba(first),
                    blocks: BlockCount(last - first),
                    deallocated: !e.allocated,
                });
            }
            _ => out.push(LbaExtent {
                lba: Lba(first),
                blocks: BlockCount(last - first),
                deallocated: !e.allocated,
            }),
        }
    }
    out
}

/// Shared handle to a LUN's gate.
pub(crate) type Gate = Arc<WriteGate>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_map_rounds_to_blocks_with_mapped_winning() {
        let bs = BlockSize::B4096;
        let map = [
            Extent::new(0, 4096, true),
            Extent::new(4096, 10_000, false),
            Extent::new(14_096, 6_384, true),
            Extent::new(20_480, 8192, false),
        ];
        let got = to_lba_extents(&map, bs);
        let want = [(0, 1, false), (1, 2, true), (3, 2, false), (5, 2, true)];
        let got: Vec<(u64, u64, bool)> = got
            .iter()
            .map(|e| (e.lba.0, e.blocks.0, e.deallocated))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn gate_diverts_writes_during_compare_and_write() {
        let gate = WriteGate::default();
        assert!(gate.enter_fast());
        gate.leave_fast();
        let r = gate.exclusive(|| {
            assert!(!gate.enter_fast(), "a write during CAW is diverted");
            7
        });
        assert_eq!(r, Ok(7));
        assert!(gate.enter_fast());
        gate.leave_fast();
    }
}
