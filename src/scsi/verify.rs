//! VERIFY(10)/(16) (SBC-4 5.34/5.36) and WRITE AND VERIFY(10)/(16)
//! (SBC-4 5.54/5.56).

use super::cdb::field_byte;
use super::opcodes::Ctx;
use super::{Outcome, Sense};
use crate::units::{BlockCount, Lba};

/// Largest buffer read from data-out and held in memory for a VERIFY or
/// WRITE AND VERIFY when the LUN reports no MAXIMUM TRANSFER LENGTH.
pub const MAX_BUFFERED_BYTES: u64 = 32 * 1024 * 1024;

pub fn verify10(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    verify(ctx, ctx.cdb.be32(2)?.into(), ctx.cdb.be16(7)?.into(), 7)
}

pub fn verify16(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    verify(ctx, ctx.cdb.be64(2)?, ctx.cdb.be32(10)?.into(), 10)
}

pub fn write_verify10(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    write_verify(ctx, ctx.cdb.be32(2)?.into(), ctx.cdb.be16(7)?.into(), 7)
}

pub fn write_verify16(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    write_verify(ctx, ctx.cdb.be64(2)?, ctx.cdb.be32(10)?.into(), 10)
}

/// The length limit of a command that moves `blocks` through memory: the
/// MAXIMUM TRANSFER LENGTH, or [`MAX_BUFFERED_BYTES`] when none is
/// reported. Above it: INVALID FIELD IN CDB at the length field.
fn check_length(ctx: &Ctx<'_>, blocks: u64, len_off: usize, buffered: bool) -> Result<(), Sense> {
    let lu = ctx.lu()?;
    let max = u64::from(lu.cfg.max_transfer_blocks);
    let too_long = if max != 0 {
        blocks > max
    } else if buffered {
        blocks > MAX_BUFFERED_BYTES >> lu.cfg.block_size.shift()
    } else {
        false
    };
    if too_long {
        return Err(Sense::invalid_field_in_cdb(field_byte(len_off), None));
    }
    Ok(())
}

/// VERIFY: byte 1 VRPROTECT 7-5, DPO 4 (ignored), BYTCHK 2-1. In order:
/// VRPROTECT != 0: INVALID FIELD IN CDB byte 1 bit 7; BYTCHK 10b
/// (reserved): byte 1 bit 2; VERIFICATION LENGTH above the limit: at the
/// field; LBA + length beyond the capacity: LOGICAL BLOCK ADDRESS OUT OF
/// RANGE; length 0: GOOD, nothing verified or transferred. Then
/// BYTCHK 00b: medium verification only (`expected` None); 01b: the
/// data-out holds the whole range; 11b: one block, compared with every
/// block (expanded here to the whole range). Short data-out: PARAMETER
/// LIST LENGTH ERROR.
fn verify(ctx: &Ctx<'_>, lba: u64, blocks: u64, len_off: usize) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    let b1 = ctx.cdb.u8(1)?;
    if b1 & 0xe0 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(7)));
    }
    let bytchk = (b1 >> 1) & 0x03;
    if bytchk == 0b10 {
        return Err(Sense::invalid_field_in_cdb(1, Some(2)));
    }
    check_length(ctx, blocks, len_off, bytchk != 0)?;
    let range = lu.byte_range(Lba(lba), BlockCount(blocks))?;
    if blocks == 0 {
        return Ok(Outcome::good());
    }
    let expected = match bytchk {
        0b00 => None,
        0b01 => Some(ctx.read_data(lu.block_bytes(blocks)?)?),
        _ => {
            let one = ctx.read_data(lu.block_bytes(1)?)?;
            let n = usize::try_from(blocks).map_err(|_| Sense::lba_out_of_range())?;
            Some(one.repeat(n))
        }
    };
    Ok(Outcome::Verify { range, expected })
}

/// WRITE AND VERIFY: byte 1 WRPROTECT 7-5, DPO 4 (ignored), BYTCHK 2-1.
/// In order: WRPROTECT != 0: INVALID FIELD IN CDB byte 1 bit 7; BYTCHK 1xb
/// (reserved for WRITE AND VERIFY): byte 1 bit 2; TRANSFER LENGTH above the
/// limit: at the field; read-only LUN: DATA PROTECT, WRITE PROTECTED;
/// range: LOGICAL BLOCK ADDRESS OUT OF RANGE; length 0: GOOD. The data-out
/// (the whole range) is read; both BYTCHK values become a write followed
/// by a read-back compare. FUA follows WCE.
fn write_verify(ctx: &Ctx<'_>, lba: u64, blocks: u64, len_off: usize) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    let b1 = ctx.cdb.u8(1)?;
    if b1 & 0xe0 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(7)));
    }
    if b1 & 0x04 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(2)));
    }
    check_length(ctx, blocks, len_off, true)?;
    if lu.cfg.readonly {
        return Err(Sense::write_protected());
    }
    let range = lu.byte_range(Lba(lba), BlockCount(blocks))?;
    if blocks == 0 {
        return Ok(Outcome::good());
    }
    let data = ctx.read_data(lu.block_bytes(blocks)?)?;
    Ok(Outcome::WriteVerify {
        range,
        data,
        fua: lu.write_fua(false),
    })
}
