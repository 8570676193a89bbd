//! READ/WRITE(6/10/12/16) and SYNCHRONIZE CACHE(10/16) decoding (SBC-4
//! clause 5, the READ, WRITE and SYNCHRONIZE CACHE commands; the 6-byte
//! forms are from SBC-3, obsolete in SBC-4 but still sent by some initiators).
//! These produce no data here: READ/WRITE become [`Outcome::Io`] for the
//! transport to run against its own buffers, SYNCHRONIZE CACHE becomes
//! [`Outcome::Flush`].

use super::cdb::{field_byte, Cdb};
use super::opcodes::Ctx;
use super::{BlockIo, IoDir, Outcome, Sense};
use crate::units::{BlockCount, Lba};

/// Where the fields of one READ/WRITE form are.
struct Layout {
    /// LOGICAL BLOCK ADDRESS: offset and width in bytes (3, 4 or 8).
    lba: (usize, usize),
    /// TRANSFER LENGTH: offset and width in bytes (1, 2 or 4).
    len: (usize, usize),
    /// The 6-byte forms: 21-bit LBA, TRANSFER LENGTH 0 means 256 blocks,
    /// no RDPROTECT/WRPROTECT/DPO/FUA byte.
    six: bool,
}

/// READ(6)/WRITE(6) (SBC-3): LBA byte 1 bits 4-0 and bytes 2-3, length byte 4.
const SIX: Layout = Layout {
    lba: (1, 3),
    len: (4, 1),
    six: true,
};
/// READ(10)/WRITE(10): LBA bytes 2-5, length bytes 7-8.
const TEN: Layout = Layout {
    lba: (2, 4),
    len: (7, 2),
    six: false,
};
/// READ(12)/WRITE(12): LBA bytes 2-5, length bytes 6-9.
const TWELVE: Layout = Layout {
    lba: (2, 4),
    len: (6, 4),
    six: false,
};
/// READ(16)/WRITE(16): LBA bytes 2-9, length bytes 10-13.
const SIXTEEN: Layout = Layout {
    lba: (2, 8),
    len: (10, 4),
    six: false,
};

/// Reads a big-endian field of `width` bytes (1..=8) at `off`.
fn field(cdb: &Cdb<'_>, off: usize, width: usize) -> Result<u64, Sense> {
    Ok(match width {
        1 => cdb.u8(off)?.into(),
        2 => cdb.be16(off)?.into(),
        3 => cdb.be24(off)?.into(),
        4 => cdb.be32(off)?.into(),
        _ => cdb.be64(off)?,
    })
}

/// Decodes and checks a READ or WRITE, in this order:
/// 1. RDPROTECT/WRPROTECT (byte 1 bits 7-5) nonzero: INVALID FIELD IN CDB,
///    byte 1 bit 7 -- we have no protection information (SBC-4, protection information model);
/// 2. TRANSFER LENGTH above the MAXIMUM TRANSFER LENGTH of VPD B0h:
///    INVALID FIELD IN CDB at the TRANSFER LENGTH field (SBC-4 6.6.4);
/// 3. WRITE to a read-only unit: DATA PROTECT, WRITE PROTECTED (SBC-4, write protection);
/// 4. LBA + TRANSFER LENGTH beyond the capacity (overflow-safe): ILLEGAL
///    REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE;
/// 5. TRANSFER LENGTH 0 (10/12/16-byte forms): GOOD, no data transferred.
///
/// FUA is byte 1 bit 3; DPO (bit 4) is a cache hint we ignore.
fn decode(ctx: &Ctx<'_>, dir: IoDir, layout: &Layout) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    let cdb = &ctx.cdb;
    let (lba, blocks, fua) = if layout.six {
        let lba = field(cdb, layout.lba.0, layout.lba.1)? & 0x1f_ffff;
        let len = match field(cdb, layout.len.0, layout.len.1)? {
            0 => 256,
            n => n,
        };
        (lba, len, false)
    } else {
        let flags = cdb.u8(1)?;
        if flags & 0xe0 != 0 {
            return Err(Sense::invalid_field_in_cdb(1, Some(7)));
        }
        let lba = field(cdb, layout.lba.0, layout.lba.1)?;
        let len = field(cdb, layout.len.0, layout.len.1)?;
        (lba, len, flags & 0x08 != 0)
    };
    // WCE=0 (MODE SELECT): every write is write-through.
    let fua = if dir == IoDir::Write {
        lu.write_fua(fua)
    } else {
        fua
    };
    let max = u64::from(lu.cfg.max_transfer_blocks);
    if max != 0 && blocks > max {
        return Err(Sense::invalid_field_in_cdb(field_byte(layout.len.0), None));
    }
    if dir == IoDir::Write && lu.cfg.readonly {
        return Err(Sense::write_protected());
    }
    let (lba, blocks) = (Lba(lba), BlockCount(blocks));
    lu.check_range(lba, blocks)?;
    if blocks.0 == 0 {
        return Ok(Outcome::good());
    }
    let (offset, len) = lu.extent_bytes(lba, blocks)?;
    Ok(Outcome::Io(BlockIo {
        dir,
        lba,
        blocks,
        offset,
        len,
        fua,
    }))
}

pub fn read6(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    decode(ctx, IoDir::Read, &SIX)
}
pub fn read10(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    decode(ctx, IoDir::Read, &TEN)
}
pub fn read12(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    decode(ctx, IoDir::Read, &TWELVE)
}
pub fn read16(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    decode(ctx, IoDir::Read, &SIXTEEN)
}
pub fn write6(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    decode(ctx, IoDir::Write, &SIX)
}
pub fn write10(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    decode(ctx, IoDir::Write, &TEN)
}
pub fn write12(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    decode(ctx, IoDir::Write, &TWELVE)
}
pub fn write16(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    decode(ctx, IoDir::Write, &SIXTEEN)
}

/// SYNCHRONIZE CACHE(10)/(16) (SBC-4): LBA + NUMBER OF LOGICAL BLOCKS (0 =
/// through the last LBA) must lie within the capacity; then the whole
/// backing store is flushed (flushing more than asked is allowed). IMMED is
/// accepted and ignored: we complete when the flush has.
fn sync_cache(ctx: &Ctx<'_>, lba: u64, blocks: u64) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    lu.check_range(Lba(lba), BlockCount(blocks))?;
    Ok(Outcome::Flush)
}

/// SYNCHRONIZE CACHE(10): LBA bytes 2-5, NUMBER OF LOGICAL BLOCKS 7-8.
pub fn sync_cache10(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    sync_cache(ctx, ctx.cdb.be32(2)?.into(), ctx.cdb.be16(7)?.into())
}

/// SYNCHRONIZE CACHE(16): LBA bytes 2-9, NUMBER OF LOGICAL BLOCKS 10-13.
pub fn sync_cache16(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    sync_cache(ctx, ctx.cdb.be64(2)?, ctx.cdb.be32(10)?.into())
}
