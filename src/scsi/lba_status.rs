//! GET LBA STATUS (SERVICE ACTION IN(16) 9Eh/12h, SBC-4 5.7) and its
//! parameter data.

use super::cdb::truncate;
use super::opcodes::Ctx;
use super::{LbaExtent, Outcome, Sense};
use crate::units::{BlockCount, Lba};

/// LBA status parameter data header: PARAMETER DATA LENGTH (4) + reserved (4).
const HEADER: usize = 8;
/// LBA status descriptor (SBC-4 5.7.3): LBA 0-7, NUMBER OF LOGICAL BLOCKS
/// 8-11, PROVISIONING STATUS byte 12 bits 3-0, reserved 13-15.
const DESCRIPTOR: usize = 16;
/// Most LBA status descriptors one answer carries (16 KiB). SBC-4 5.7.2
/// lets the device server return fewer than the ALLOCATION LENGTH holds:
/// the application client asks again from the next LBA. Without a cap, a
/// LUN of 2^54 blocks that cannot deallocate answered with one descriptor
/// per 2^32 blocks, up to a 256 MiB buffer for one command (found by
/// fuzzing, tests/fuzz_corpus.rs).
const MAX_DESCRIPTORS: usize = 1024;

/// GET LBA STATUS: STARTING LOGICAL BLOCK ADDRESS bytes 2-9, ALLOCATION
/// LENGTH bytes 10-13, REPORT TYPE byte 14 bits 1-0. STARTING LBA beyond
/// the last LBA: LOGICAL BLOCK ADDRESS OUT OF RANGE; REPORT TYPE other than
/// 00b (all LBAs): INVALID FIELD IN CDB byte 14 bit 1; ALLOCATION LENGTH 0:
/// GOOD, no data. A LUN that cannot deallocate answers itself (everything
/// mapped); otherwise the transport queries the backing
/// ([`Outcome::GetLbaStatus`]).
pub fn get_lba_status(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    let start = Lba(ctx.cdb.be64(2)?);
    let alloc = ctx.cdb.be32(10)?;
    if ctx.cdb.u8(14)? & 0x03 != 0 {
        return Err(Sense::invalid_field_in_cdb(14, Some(1)));
    }
    if start > lu.last_lba() {
        return Err(Sense::lba_out_of_range());
    }
    if alloc == 0 {
        return Ok(Outcome::good());
    }
    if !lu.cfg.unmap {
        let extent = LbaExtent {
            lba: start,
            blocks: BlockCount(lu.capacity().0 - start.0),
            deallocated: false,
        };
        return Ok(Outcome::data_in(lba_status_data(start, &[extent], alloc)));
    }
    Ok(Outcome::GetLbaStatus {
        lun: ctx.lun,
        start,
        alloc_len: alloc,
    })
}

/// The GET LBA STATUS parameter data (SBC-4 5.7.2) for the backing's
/// allocation map `extents` (ascending, as the transport found them from
/// `start`): extents ending at or before `start` are skipped, the first one
/// is clipped to begin at `start`, adjacent extents of the same status are
/// merged, and extents longer than FFFFFFFFh blocks are split. Only the
/// descriptors that fit in `alloc_len` are returned (at least the header
/// when `alloc_len` allows), and PARAMETER DATA LENGTH counts those
/// (SBC-4 5.7.2: the device server may return fewer descriptors).
/// PROVISIONING STATUS: 0h mapped, 1h deallocated.
pub fn lba_status_data(start: Lba, extents: &[LbaExtent], alloc_len: u32) -> Vec<u8> {
    let room = usize::try_from(alloc_len).unwrap_or(usize::MAX);
    let max_desc = (room.saturating_sub(HEADER) / DESCRIPTOR).min(MAX_DESCRIPTORS);
    let mut merged: Vec<(u64, u64, bool)> = Vec::new();
    for e in extents {
        let end = e.lba.0.saturating_add(e.blocks.0);
        if end <= start.0 || e.blocks.0 == 0 {
            continue;
        }
        let from = e.lba.0.max(start.0);
        match merged.last_mut() {
            Some((lba, n, d)) if *d == e.deallocated && lba.saturating_add(*n) == from => {
                *n = n.saturating_add(end - from);
            }
            _ => merged.push((from, end - from, e.deallocated)),
        }
    }
    let mut d = vec![0u8; HEADER];
    let mut count = 0usize;
    'outer: for (mut lba, mut n, dealloc) in merged {
        while n > 0 {
            if count >= max_desc {
                break 'outer;
            }
            let chunk = n.min(u64::from(u32::MAX));
            d.extend_from_slice(&lba.to_be_bytes());
            d.extend_from_slice(&u32::try_from(chunk).unwrap_or(u32::MAX).to_be_bytes());
            d.extend_from_slice(&[u8::from(dealloc), 0, 0, 0]);
            count += 1;
            lba = lba.saturating_add(chunk);
            n -= chunk;
        }
    }
    let len = u32::try_from(d.len() - 4).unwrap_or(u32::MAX);
    d[0..4].copy_from_slice(&len.to_be_bytes());
    truncate(d, alloc_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(lba: u64, blocks: u64, deallocated: bool) -> LbaExtent {
        LbaExtent {
            lba: Lba(lba),
            blocks: BlockCount(blocks),
            deallocated,
        }
    }

    #[test]
    fn clips_merges_and_splits() {
        let e = [
            ext(0, 10, false),
            ext(10, 5, false),
            ext(15, 5, true),
            ext(20, 0x1_0000_0005, false),
        ];
        let d = lba_status_data(Lba(3), &e, 1000);
        assert_eq!(&d[0..4], &(4u32 + 4 * 16).to_be_bytes());
        assert_eq!(&d[8..16], &3u64.to_be_bytes());
        assert_eq!(&d[16..20], &12u32.to_be_bytes());
        assert_eq!(d[20], 0);
        assert_eq!(&d[24..32], &15u64.to_be_bytes());
        assert_eq!(d[36], 1);
        assert_eq!(&d[48..52], &u32::MAX.to_be_bytes());
        assert_eq!(&d[56..64], &(20u64 + 0xffff_ffff).to_be_bytes());
        assert_eq!(&d[64..68], &6u32.to_be_bytes());
    }

    #[test]
    fn only_what_fits() {
        let e = [ext(0, 1, false), ext(1, 1, true), ext(2, 1, false)];
        let d = lba_status_data(Lba(0), &e, 8 + 16 + 15);
        assert_eq!(d.len(), 8 + 16);
        assert_eq!(&d[0..4], &20u32.to_be_bytes());
        assert_eq!(lba_status_data(Lba(0), &e, 4), vec![0, 0, 0, 4]);
        assert_eq!(
            lba_status_data(Lba(5), &e, 100),
            vec![0, 0, 0, 4, 0, 0, 0, 0]
        );
    }
}
