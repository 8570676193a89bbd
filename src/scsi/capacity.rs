//! READ CAPACITY(10) (SBC-4 5.20) and READ CAPACITY(16) (SBC-4 5.21).

use super::cdb::truncate;
use super::opcodes::Ctx;
use super::{Outcome, Sense};

/// Length of the READ CAPACITY(16) parameter data (SBC-4 5.21.2).
const RC16_LEN: usize = 32;

/// READ CAPACITY(10) (SBC-4 5.20): RETURNED LOGICAL BLOCK ADDRESS (the last
/// LBA, or FFFFFFFFh when it does not fit: the initiator must then use
/// READ CAPACITY(16)) and LOGICAL BLOCK LENGTH. The LBA field (bytes 2-5)
/// and PMI (byte 8 bit 0) are obsolete in SBC-4; as in SBC-3 (and QEMU) a
/// nonzero LBA with PMI 0 is INVALID FIELD IN CDB, and PMI 1 returns the
/// last LBA (the whole medium has no delay boundaries).
pub fn read_capacity10(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    let lba = ctx.cdb.be32(2)?;
    let pmi = ctx.cdb.bit(8, 0)?;
    if !pmi && lba != 0 {
        return Err(Sense::invalid_field_in_cdb(2, None));
    }
    let last = u32::try_from(lu.last_lba().0).unwrap_or(u32::MAX);
    let mut d = Vec::with_capacity(8);
    d.extend_from_slice(&last.to_be_bytes());
    d.extend_from_slice(&lu.cfg.block_size.bytes().to_be_bytes());
    Ok(Outcome::data_in(d))
}

/// READ CAPACITY(16) (SERVICE ACTION IN(16) 9Eh/10h, SBC-4 5.21): LBA
/// bytes 2-9 (obsolete, same rule as READ CAPACITY(10)), ALLOCATION LENGTH
/// bytes 10-13, PMI byte 14 bit 0. Returns the last LBA, LOGICAL BLOCK
/// LENGTH, RC BASIS 01b (the returned LBA is the last LBA of the unit),
/// P_TYPE/PROT_EN 0, LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0,
/// LBPME (byte 14 bit 7) = unmap, LBPRZ (bit 6) = lbprz, LOWEST ALIGNED
/// LBA 0.
pub fn read_capacity16(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    let lba = ctx.cdb.be64(2)?;
    let alloc = ctx.cdb.be32(10)?;
    let pmi = ctx.cdb.bit(14, 0)?;
    if !pmi && lba != 0 {
        return Err(Sense::invalid_field_in_cdb(2, None));
    }
    let mut d = vec![0u8; RC16_LEN];
    d[0..8].copy_from_slice(&lu.last_lba().0.to_be_bytes());
    d[8..12].copy_from_slice(&lu.cfg.block_size.bytes().to_be_bytes());
    d[12] = 0x10; // RC BASIS 01b, P_TYPE 0, PROT_EN 0
    if lu.cfg.unmap {
        d[14] |= 0x80;
    }
    if lu.cfg.lbprz {
        d[14] |= 0x40;
    }
    Ok(Outcome::data_in(truncate(d, alloc)))
}
