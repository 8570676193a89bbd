//! WRITE SAME(10) (SBC-4 5.48) and WRITE SAME(16) (SBC-4 5.50).

use super::cdb::field_byte;
use super::opcodes::Ctx;
use super::{Outcome, Sense};
use crate::units::{BlockCount, Lba};

/// WRITE SAME(10): byte 1 WRPROTECT 7-5, ANCHOR 4, UNMAP 3, PBDATA 2,
/// LBDATA 1; LBA bytes 2-5; NUMBER OF LOGICAL BLOCKS bytes 7-8.
pub fn write_same10(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let lba = ctx.cdb.be32(2)?.into();
    let blocks = ctx.cdb.be16(7)?.into();
    write_same(ctx, lba, blocks, 7, false)
}

/// WRITE SAME(16): byte 1 WRPROTECT 7-5, ANCHOR 4, UNMAP 3, obsolete 2-1
/// (formerly PBDATA/LBDATA), NDOB 0; LBA bytes 2-9; NUMBER OF LOGICAL
/// BLOCKS bytes 10-13.
pub fn write_same16(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let lba = ctx.cdb.be64(2)?;
    let blocks = ctx.cdb.be32(10)?.into();
    let ndob = ctx.cdb.bit(1, 0)?;
    write_same(ctx, lba, blocks, 10, ndob)
}

/// Checks, in order:
/// 1. WRPROTECT != 0 (no protection information): INVALID FIELD IN CDB
///    byte 1 bit 7; ANCHOR=1 (ANC_SUP=0): byte 1 bit 4; PBDATA/LBDATA
///    (obsolete in SBC-4): byte 1 bit 2 / bit 1;
/// 2. NUMBER OF LOGICAL BLOCKS 0: we report WSNZ=1 in VPD B0h, so INVALID
///    FIELD IN CDB at the field (SBC-4 5.48: 0 with WSNZ=1 is an error);
///    above a nonzero MAXIMUM WRITE SAME LENGTH: the same;
/// 3. read-only LUN: DATA PROTECT, WRITE PROTECTED;
/// 4. LBA + count beyond the capacity: LOGICAL BLOCK ADDRESS OUT OF RANGE;
/// 5. data-out shorter than one logical block (NDOB=0): PARAMETER LIST
///    LENGTH ERROR (a transport-level overrun; documented choice).
///
/// NDOB=1: the block is zeros and nothing is read. UNMAP is passed on only
/// if the LUN can deallocate (LBPWS/LBPWS10); otherwise the blocks are
/// written (SBC-4 4.7.3.4). FUA follows WCE (no FUA bit in WRITE SAME).
fn write_same(
    ctx: &Ctx<'_>,
    lba: u64,
    blocks: u64,
    len_off: usize,
    ndob: bool,
) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    let b1 = ctx.cdb.u8(1)?;
    if b1 & 0xe0 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(7)));
    }
    if b1 & 0x10 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    if b1 & 0x04 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(2)));
    }
    if b1 & 0x02 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(1)));
    }
    let max = lu.cfg.max_write_same_blocks;
    if blocks == 0 || (max != 0 && blocks > max) {
        return Err(Sense::invalid_field_in_cdb(field_byte(len_off), None));
    }
    if lu.cfg.readonly {
        return Err(Sense::write_protected());
    }
    let range = lu.byte_range(Lba(lba), BlockCount(blocks))?;
    let bs = lu.block_bytes(1)?;
    let block = if ndob {
        vec![0u8; bs]
    } else {
        ctx.read_data(bs)?
    };
    Ok(Outcome::WriteSame {
        range,
        block,
        unmap: b1 & 0x08 != 0 && lu.cfg.unmap,
        fua: lu.write_fua(false),
    })
}
