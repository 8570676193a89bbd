//! MODE SENSE(6)/(10) (SPC-5 6.13/6.14) with the SBC-4 mode parameters
//! (SBC-4 6.4, 6.5): the Caching and Control mode pages, and short or long
//! LBA block descriptors. MODE SELECT (mode_select.rs) can change only the
//! caching page's WCE bit.

use super::cdb::truncate;
use super::lun::LogicalUnit;
use super::opcodes::Ctx;
use super::{Outcome, Sense};

/// PAGE CONTROL field (SPC-5 6.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
}

/// Return all mode pages (SPC-5 7.5).
const ALL_PAGES: u8 = 0x3f;
/// SUBPAGE CODE FFh: all subpages of the page.
const ALL_SUBPAGES: u8 = 0xff;

/// A mode page builder: the whole page (page code, length, parameters).
type PageBuilder = fn(&LogicalUnit, PageControl) -> Vec<u8>;

/// Supported mode pages (subpage 00h), ascending.
static MODE_PAGES: &[(u8, PageBuilder)] = &[(0x08, caching_page), (0x0a, control_page)];

/// Which MODE SENSE: the 6-byte form has a 4-byte header and no LLBAA.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Six,
    Ten,
}

/// MODE SENSE(6) (SPC-5 6.13): DBD byte 1 bit 3, PC/PAGE CODE byte 2,
/// SUBPAGE CODE byte 3, ALLOCATION LENGTH byte 4.
pub fn mode_sense6(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let alloc = ctx.cdb.u8(4)?;
    let data = mode_sense(ctx, Form::Six, false)?;
    Ok(Outcome::data_in(truncate(data, alloc.into())))
}

/// MODE SENSE(10) (SPC-5 6.14): LLBAA byte 1 bit 4, DBD bit 3,
/// ALLOCATION LENGTH bytes 7-8.
pub fn mode_sense10(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let llbaa = ctx.cdb.bit(1, 4)?;
    let alloc = ctx.cdb.be16(7)?;
    let data = mode_sense(ctx, Form::Ten, llbaa)?;
    Ok(Outcome::data_in(truncate(data, alloc.into())))
}

fn mode_sense(ctx: &Ctx<'_>, form: Form, llbaa: bool) -> Result<Vec<u8>, Sense> {
    let lu = ctx.lu()?;
    let dbd = ctx.cdb.bit(1, 3)?;
    let b2 = ctx.cdb.u8(2)?;
    let subpage = ctx.cdb.u8(3)?;
    let pc = match b2 >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        // Saved values: we cannot save parameters (SPC-5 6.13).
        _ => return Err(Sense::saving_params_not_supported(2, Some(7))),
    };
    let page = b2 & 0x3f;

    let mut pages = Vec::new();
    if page == ALL_PAGES {
        if subpage != 0 && subpage != ALL_SUBPAGES {
            return Err(Sense::invalid_field_in_cdb(3, None));
        }
        for (_, build) in MODE_PAGES {
            pages.extend(build(lu, pc));
        }
    } else {
        let build = MODE_PAGES
            .iter()
            .find(|(code, _)| *code == page)
            .map(|(_, build)| *build)
            .ok_or(Sense::invalid_field_in_cdb(2, Some(5)))?;
        if subpage != 0 {
            return Err(Sense::invalid_field_in_cdb(3, None));
        }
        pages.extend(build(lu, pc));
    }

    let desc = match (dbd, llbaa) {
        (true, _) => Vec::new(),
        (false, false) => short_block_descriptor(lu).to_vec(),
        (false, true) => long_block_descriptor(lu).to_vec(),
    };
    Ok(assemble(
        form,
        device_specific(lu),
        llbaa && !dbd,
        &desc,
        &pages,
    ))
}

/// DEVICE-SPECIFIC PARAMETER for direct access devices (SBC-4 6.4): WP when read-only, DPOFUA since we honour FUA (and ignore DPO).
fn device_specific(lu: &LogicalUnit) -> u8 {
    let wp = if lu.cfg.readonly { 0x80 } else { 0 };
    wp | 0x10
}

/// The mode parameter header (SPC-5 7.5) + block
/// descriptors + pages. MODE DATA LENGTH excludes itself.
fn assemble(form: Form, dsp: u8, long_lba: bool, desc: &[u8], pages: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    match form {
        Form::Six => {
            let total = 4 + desc.len() + pages.len();
            d.push(u8::try_from(total - 1).unwrap_or(u8::MAX));
            d.push(0); // MEDIUM TYPE
            d.push(dsp);
            d.push(u8::try_from(desc.len()).unwrap_or(u8::MAX));
        }
        Form::Ten => {
            let total = 8 + desc.len() + pages.len();
            d.extend_from_slice(&u16::try_from(total - 2).unwrap_or(u16::MAX).to_be_bytes());
            d.push(0); // MEDIUM TYPE
            d.push(dsp);
            d.push(u8::from(long_lba)); // LONGLBA
            d.push(0);
            let dl = u16::try_from(desc.len()).unwrap_or(u16::MAX);
            d.extend_from_slice(&dl.to_be_bytes());
        }
    }
    d.extend_from_slice(desc);
    d.extend_from_slice(pages);
    d
}

/// Short LBA mode parameter block descriptor (SBC-4 6.4): NUMBER OF
/// LOGICAL BLOCKS (FFFFFFFFh when it does not fit), LOGICAL BLOCK LENGTH.
/// Block descriptors always carry current values, whatever PC says.
pub fn short_block_descriptor(lu: &LogicalUnit) -> [u8; 8] {
    let n = u32::try_from(lu.capacity().0).unwrap_or(u32::MAX);
    let mut d = [0u8; 8];
    d[0..4].copy_from_slice(&n.to_be_bytes());
    d[4..8].copy_from_slice(&lu.cfg.block_size.bytes().to_be_bytes());
    d[4] = 0; // reserved; LOGICAL BLOCK LENGTH is bytes 5-7
    d
}

/// Long LBA mode parameter block descriptor (SBC-4 6.4).
pub fn long_block_descriptor(lu: &LogicalUnit) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&lu.capacity().0.to_be_bytes());
    d[12..16].copy_from_slice(&lu.cfg.block_size.bytes().to_be_bytes());
    d
}

/// Caching mode page (SBC-4 6.5.5), page length 12h: WCE (byte 2 bit 2)
/// from the LU's write-cache state (default 1), RCD 0. Only WCE is
/// changeable.
pub fn caching_page(lu: &LogicalUnit, pc: PageControl) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x08; // PS 0, SPF 0, PAGE CODE 08h
    p[1] = 0x12;
    let wce = match pc {
        PageControl::Current => lu.write_cache_enabled(),
        PageControl::Default => true,
        PageControl::Changeable => true,
    };
    if wce {
        p[2] |= 0x04;
    }
    p
}

/// Control mode page (SPC-5 7.5), page length 0Ah: TST 000b, D_SENSE 0
/// (fixed format sense), QUEUE ALGORITHM MODIFIER 1 (unrestricted
/// reordering: commands from several virtqueues run concurrently), QERR 00b,
/// SWP 0, TAS 0, BUSY TIMEOUT PERIOD 0. Nothing changeable.
pub fn control_page(_: &LogicalUnit, pc: PageControl) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p[0] = 0x0a;
    p[1] = 0x0a;
    if pc != PageControl::Changeable {
        p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1
    }
    p
}
