//! COMPARE AND WRITE (SBC-4 5.3).

use super::opcodes::Ctx;
use super::{Outcome, Sense};
use crate::units::{BlockCount, Lba};

/// COMPARE AND WRITE: byte 1 WRPROTECT 7-5, DPO 4 (ignored), FUA 3; LBA
/// bytes 2-9; NUMBER OF LOGICAL BLOCKS byte 13. In order:
/// 1. WRPROTECT != 0: INVALID FIELD IN CDB byte 1 bit 7;
/// 2. NUMBER OF LOGICAL BLOCKS above MAXIMUM COMPARE AND WRITE LENGTH:
///    INVALID FIELD IN CDB byte 13;
/// 3. read-only LUN: DATA PROTECT, WRITE PROTECTED;
/// 4. LBA + count beyond the capacity: LOGICAL BLOCK ADDRESS OUT OF RANGE;
/// 5. count 0: GOOD, nothing compared or written (SBC-4 5.3);
/// 6. data-out shorter than 2 x count blocks: PARAMETER LIST LENGTH ERROR.
///
/// The first count blocks of data-out are the verify data, the next count
/// the write data. FUA: the CDB bit, or forced by WCE=0.
pub fn compare_and_write(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    let b1 = ctx.cdb.u8(1)?;
    if b1 & 0xe0 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(7)));
    }
    let lba = Lba(ctx.cdb.be64(2)?);
    let n = ctx.cdb.u8(13)?;
    if n > lu.cfg.max_compare_write_blocks {
        return Err(Sense::invalid_field_in_cdb(13, None));
    }
    if lu.cfg.readonly {
        return Err(Sense::write_protected());
    }
    let range = lu.byte_range(lba, BlockCount(n.into()))?;
    if n == 0 {
        return Ok(Outcome::good());
    }
    let len = lu.block_bytes(n.into())?;
    let compare = ctx.read_data(len)?;
    let write = ctx.read_data(len)?;
    Ok(Outcome::CompareAndWrite {
        range,
        compare,
        write,
        fua: lu.write_fua(b1 & 0x08 != 0),
    })
}
