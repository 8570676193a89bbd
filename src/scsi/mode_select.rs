//! MODE SELECT(6)/(10) (SPC-5 6.11/6.12) for the pages of mode.rs: only
//! the caching page's WCE bit is changeable; every other field must hold
//! its current value. The whole list is checked before anything changes.

use super::mode::{caching_page, control_page, PageControl};
use super::opcodes::Ctx;
use super::param::{bad_param, ParamList};
use super::ua::UnitAttention;
use super::{Outcome, Sense};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Six,
    Ten,
}

/// MODE SELECT(6): PF byte 1 bit 4, SP byte 1 bit 0, PARAMETER LIST
/// LENGTH byte 4.
pub fn mode_select6(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let len = ctx.cdb.u8(4)?;
    mode_select(ctx, Form::Six, len.into())
}

/// MODE SELECT(10): PF, SP as (6); PARAMETER LIST LENGTH bytes 7-8.
pub fn mode_select10(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let len = ctx.cdb.be16(7)?;
    mode_select(ctx, Form::Ten, len.into())
}

/// Bit number of the most significant set bit of `b` (nonzero).
fn msb(b: u8) -> u8 {
    7u8.saturating_sub(b.leading_zeros() as u8)
}

/// Checks, in order (SPC-5 6.11):
/// 1. PF=0 (vendor-specific page format, which we do not have): INVALID
///    FIELD IN CDB byte 1 bit 4; SP=1 (we cannot save pages): INVALID
///    FIELD IN CDB byte 1 bit 0.
/// 2. PARAMETER LIST LENGTH 0: GOOD, nothing changes.
/// 3. Data-out shorter than PARAMETER LIST LENGTH, a list shorter than the
///    mode parameter header, or a block descriptor or page cut by the end
///    of the list: PARAMETER LIST LENGTH ERROR.
/// 4. Header (SPC-5 7.5.5): MODE DATA LENGTH (reserved for MODE SELECT) and
///    MEDIUM TYPE must be 0; DEVICE-SPECIFIC PARAMETER bits other than WP
///    and DPOFUA (ignored, SBC-4 6.4.2) must be 0; (10): LONGLBA only in byte
///    4, byte 5 reserved; BLOCK DESCRIPTOR LENGTH 0 or 8 (16 with
///    LONGLBA). Each violation: INVALID FIELD IN PARAMETER LIST at it.
/// 5. Block descriptor: NUMBER OF LOGICAL BLOCKS 0 or the current value
///    (the short descriptor's capped value), LOGICAL BLOCK LENGTH 0 or the
///    current block size, reserved bytes 0.
/// 6. Pages: PS (reserved) and SPF (no subpages) 0; page code 08h or 0Ah;
///    PAGE LENGTH equal to ours; every bit equal to its current value
///    except caching WCE.
///
/// A change of WCE establishes MODE PARAMETERS CHANGED for every other
/// nexus (SPC-5 6.11).
fn mode_select(ctx: &Ctx<'_>, form: Form, list_len: usize) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    if !ctx.cdb.bit(1, 4)? {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    if ctx.cdb.bit(1, 0)? {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    if list_len == 0 {
        return Ok(Outcome::good());
    }
    let data = ctx.read_data(list_len)?;
    let p = ParamList::new(&data);
    let (hdr_len, bdl_off, long) = match form {
        Form::Six => {
            if p.u8(0)? != 0 {
                return Err(bad_param(0, None));
            }
            (4usize, 3usize, false)
        }
        Form::Ten => {
            if p.be16(0)? != 0 {
                return Err(bad_param(0, None));
            }
            let b4 = p.u8(4)?;
            if b4 & !0x01 != 0 {
                return Err(bad_param(4, Some(msb(b4 & !0x01))));
            }
            if p.u8(5)? != 0 {
                return Err(bad_param(5, None));
            }
            (8, 6, b4 & 0x01 != 0)
        }
    };
    let medium_off = if form == Form::Six { 1 } else { 2 };
    if p.u8(medium_off)? != 0 {
        return Err(bad_param(medium_off, None));
    }
    let dsp = p.u8(medium_off + 1)? & !(0x80 | 0x10);
    if dsp != 0 {
        return Err(bad_param(medium_off + 1, Some(msb(dsp))));
    }
    let bdl = match form {
        Form::Six => usize::from(p.u8(bdl_off)?),
        Form::Ten => usize::from(p.be16(bdl_off)?),
    };
    let desc_len = if long { 16 } else { 8 };
    if bdl != 0 && bdl != desc_len {
        return Err(bad_param(bdl_off, None));
    }
    if bdl != 0 {
        check_descriptor(lu, &p, hdr_len, long)?;
    }

    let mut wce = lu.write_cache_enabled();
    let mut off = hdr_len + bdl;
    while off < p.len() {
        let b0 = p.u8(off)?;
        if b0 & 0xc0 != 0 {
            return Err(bad_param(off, Some(msb(b0 & 0xc0))));
        }
        let (current, mask): (Vec<u8>, &[(usize, u8)]) = match b0 & 0x3f {
            0x08 => (caching_page(lu, PageControl::Current), &[(2, 0x04)]),
            0x0a => (control_page(lu, PageControl::Current), &[]),
            _ => return Err(bad_param(off, Some(5))),
        };
        let plen = usize::from(p.u8(off + 1)?);
        let page = p.slice(off, plen + 2)?;
        if page.len() != current.len() {
            return Err(bad_param(off + 1, None));
        }
        for (i, (got, cur)) in page.iter().zip(&current).enumerate().skip(2) {
            let changeable = mask.iter().find(|(b, _)| *b == i).map_or(0, |(_, m)| *m);
            let diff = (got ^ cur) & !changeable;
            if diff != 0 {
                return Err(bad_param(off + i, Some(msb(diff))));
            }
        }
        if b0 & 0x3f == 0x08 {
            wce = page.get(2).is_some_and(|b| b & 0x04 != 0);
        }
        off += plen + 2;
    }

    let mut st = lu.state();
    if wce != lu.write_cache_enabled() {
        lu.set_write_cache(wce);
        st.ua
            .establish_all(UnitAttention::ModeParametersChanged, Some(ctx.nexus));
    }
    Ok(Outcome::good())
}

/// The mode parameter block descriptor at `off` (SBC-4 6.4.4.2/6.4.4.3).
fn check_descriptor(
    lu: &super::lun::LogicalUnit,
    p: &ParamList<'_>,
    off: usize,
    long: bool,
) -> Result<(), Sense> {
    let bs = u64::from(lu.cfg.block_size.bytes());
    let cap = lu.capacity().0;
    let (blocks, cur_blocks, len_off, len, reserved) = if long {
        let reserved: Vec<(usize, u8)> = (8..12)
            .map(|i| Ok((off + i, p.u8(off + i)?)))
            .collect::<Result<_, Sense>>()?;
        (
            p.be64(off)?,
            cap,
            off + 12,
            u64::from(p.be32(off + 12)?),
            reserved,
        )
    } else {
        let len = u64::from(p.be32(off + 4)? & 0x00ff_ffff);
        let capped = cap.min(u64::from(u32::MAX));
        (
            u64::from(p.be32(off)?),
            capped,
            off + 5,
            len,
            vec![(off + 4, p.u8(off + 4)?)],
        )
    };
    if blocks != 0 && blocks != cur_blocks {
        return Err(bad_param(off, None));
    }
    if let Some((i, _)) = reserved.iter().find(|(_, b)| *b != 0) {
        return Err(bad_param(*i, None));
    }
    if len != 0 && len != bs {
        return Err(bad_param(len_off, None));
    }
    Ok(())
}
