//! Commands with no data or with little data: TEST UNIT READY, REQUEST
//! SENSE, START STOP UNIT, REPORT LUNS.

use super::cdb::truncate;
use super::opcodes::Ctx;
use super::ua::UnitAttention;
use super::{Outcome, Sense};

/// TEST UNIT READY (SPC-5 6.47): always ready (unit attentions are
/// reported by the dispatcher before this runs).
pub fn test_unit_ready(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    ctx.lu()?;
    Ok(Outcome::good())
}

/// REQUEST SENSE (SPC-5 6.39). Sense data is returned with the status
/// (autosense), so only a unit attention can be pending: it is returned
/// and cleared (SPC-5 6.39: REQUEST SENSE reports a pending UA); otherwise
/// NO SENSE. For a LUN that does
/// not exist: GOOD with ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED in the
/// data (SPC-5 6.39). DESC=1 selects descriptor format (SPC-5 4.4.2),
/// which we support; DESC=0 fixed format (18 bytes).
pub fn request_sense(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let desc = ctx.cdb.bit(1, 0)?;
    let alloc = ctx.cdb.u8(4)?;
    let sense = match ctx.lu {
        Some(lu) => lu
            .state()
            .ua
            .take(ctx.nexus)
            .map_or(Sense::no_sense(), |ua| ua.sense()),
        None => Sense::lun_not_supported(),
    };
    let data = if desc {
        sense.to_descriptor()
    } else {
        sense.to_fixed().to_vec()
    };
    Ok(Outcome::data_in(truncate(data, alloc.into())))
}

/// START STOP UNIT (SBC-4 5.25): a virtual disk has no spindle and no
/// medium to eject; every power condition, START and LOEJ value completes
/// with GOOD and changes nothing.
pub fn start_stop_unit(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    ctx.lu()?;
    Ok(Outcome::good())
}

/// The 8-byte LUN of SAM-5 4.7 (LUN addressing): peripheral device addressing (00b) for
/// LUN < 256, flat space addressing (01b) for 256..=16383.
pub fn encode_lun(lun: u16) -> [u8; 8] {
    let [hi, lo] = lun.to_be_bytes();
    let first = if lun < 256 { 0 } else { 0x40 | (hi & 0x3f) };
    [first, lo, 0, 0, 0, 0, 0, 0]
}

/// REPORT LUNS (SPC-5 6.29). SELECT REPORT 00h/02h: all configured logical
/// units; 01h: the well-known logical units, of which we have none. Other
/// values, and an ALLOCATION LENGTH below 16, are INVALID FIELD IN CDB.
/// Works whichever LUN it is addressed to. Clears a pending REPORTED LUNS
/// DATA HAS CHANGED of this nexus on every unit (SPC-5 6.29: the LUN
/// inventory is a property of the target, not of one unit).
pub fn report_luns(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let select = ctx.cdb.u8(2)?;
    let alloc = ctx.cdb.be32(6)?;
    if select > 2 {
        return Err(Sense::invalid_field_in_cdb(2, None));
    }
    if alloc < 16 {
        return Err(Sense::invalid_field_in_cdb(6, None));
    }
    ctx.target
        .clear_ua(ctx.nexus, UnitAttention::ReportedLunsChanged);
    let luns = if select == 1 {
        Vec::new()
    } else {
        ctx.target.lun_numbers()
    };
    let list_len = u32::try_from(luns.len() * 8).unwrap_or(u32::MAX);
    let mut data = Vec::with_capacity(8 + luns.len() * 8);
    data.extend_from_slice(&list_len.to_be_bytes());
    data.extend_from_slice(&[0; 4]);
    for lun in luns {
        data.extend_from_slice(&encode_lun(lun));
    }
    Ok(Outcome::data_in(truncate(data, alloc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding() {
        assert_eq!(encode_lun(0), [0; 8]);
        assert_eq!(encode_lun(5), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(255), [0, 255, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(300), [0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(16383), [0x7f, 0xff, 0, 0, 0, 0, 0, 0]);
    }
}
