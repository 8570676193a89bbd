//! UNMAP (SBC-4 5.31).

use super::lun::LogicalUnit;
use super::opcodes::Ctx;
use super::param::{bad_param, ParamList};
use super::{ByteRange, Outcome, Sense};
use crate::units::{BlockCount, Lba};

/// Parameter list header (SBC-4 5.31.2): UNMAP DATA LENGTH bytes 0-1,
/// UNMAP BLOCK DESCRIPTOR DATA LENGTH bytes 2-3, reserved bytes 4-7.
const HEADER: usize = 8;
/// UNMAP block descriptor (SBC-4 5.31.3): LBA 0-7, NUMBER OF LOGICAL
/// BLOCKS 8-11, reserved 12-15.
const DESCRIPTOR: usize = 16;

/// UNMAP: ANCHOR byte 1 bit 0, PARAMETER LIST LENGTH bytes 7-8. In order:
/// 1. a LUN whose backing cannot deallocate (LBPU=0): INVALID COMMAND
///    OPERATION CODE (SBC-4 5.31.1);
/// 2. ANCHOR=1 (ANC_SUP=0): INVALID FIELD IN CDB byte 1 bit 0;
/// 3. read-only LUN: DATA PROTECT, WRITE PROTECTED;
/// 4. PARAMETER LIST LENGTH 0: GOOD, nothing unmapped; 1..=7: PARAMETER
///    LIST LENGTH ERROR; data-out shorter than it: the same;
/// 5. UNMAP DATA LENGTH or UNMAP BLOCK DESCRIPTOR DATA LENGTH beyond the
///    list: PARAMETER LIST LENGTH ERROR; reserved header bytes nonzero:
///    INVALID FIELD IN PARAMETER LIST; a trailing partial descriptor is
///    ignored (SBC-4 5.31.2);
/// 6. more descriptors than MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT: INVALID
///    FIELD IN PARAMETER LIST at byte 2;
/// 7. per descriptor: reserved bytes nonzero or NUMBER OF LOGICAL BLOCKS
///    above MAXIMUM UNMAP LBA COUNT: INVALID FIELD IN PARAMETER LIST at
///    it; LBA + count beyond the capacity: LOGICAL BLOCK ADDRESS OUT OF
///    RANGE. Descriptors with 0 blocks are skipped.
///
/// Nothing is unmapped unless every descriptor passes; no descriptor left
/// completes GOOD at once.
/// UNMAP exists only on logical units that can deallocate (SBC-4: with
/// LBPU=0 the device server terminates UNMAP with INVALID COMMAND OPERATION
/// CODE, and so it is not reported as supported either).
pub fn available(lu: Option<&LogicalUnit>) -> bool {
    lu.is_some_and(|u| u.cfg.unmap)
}

pub fn unmap(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    if ctx.cdb.bit(1, 0)? {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    if lu.cfg.readonly {
        return Err(Sense::write_protected());
    }
    let list_len = usize::from(ctx.cdb.be16(7)?);
    if list_len == 0 {
        return Ok(Outcome::good());
    }
    if list_len < HEADER {
        return Err(Sense::param_list_length_error());
    }
    let data = ctx.read_data(list_len)?;
    let p = ParamList::new(&data);
    let data_len = usize::from(p.be16(0)?);
    let bd_len = usize::from(p.be16(2)?);
    if data_len + 2 > list_len || bd_len + HEADER > list_len {
        return Err(Sense::param_list_length_error());
    }
    if let Some(i) = (4..8).find(|&i| p.u8(i).is_ok_and(|b| b != 0)) {
        return Err(bad_param(i, None));
    }
    let count = bd_len / DESCRIPTOR;
    if count > usize::try_from(lu.cfg.max_unmap_descriptors).unwrap_or(usize::MAX) {
        return Err(bad_param(2, None));
    }
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let off = HEADER + i * DESCRIPTOR;
        let lba = Lba(p.be64(off)?);
        let blocks = p.be32(off + 8)?;
        if let Some(j) = (12..16).find(|&j| p.u8(off + j).is_ok_and(|b| b != 0)) {
            return Err(bad_param(off + j, None));
        }
        if blocks > lu.cfg.max_unmap_blocks {
            return Err(bad_param(off + 8, None));
        }
        let blocks = BlockCount(blocks.into());
        let range: ByteRange = lu.byte_range(lba, blocks)?;
        if blocks.0 != 0 {
            ranges.push(range);
        }
    }
    if ranges.is_empty() {
        return Ok(Outcome::good());
    }
    Ok(Outcome::Unmap { ranges })
}
