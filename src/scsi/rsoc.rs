//! REPORT SUPPORTED OPERATION CODES (MAINTENANCE IN A3h/0Ch, SPC-5 6.35)
//! and REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (A3h/0Dh, SPC-5 6.37).
//! Everything comes from the [`COMMANDS`] table.

use super::cdb::truncate;
use super::opcodes::{Command, Ctx, COMMANDS};
use super::{Outcome, Sense};

/// Command timeouts descriptor (SPC-5 6.35.4): DESCRIPTOR LENGTH 0Ah, no
/// command specific data, NOMINAL and RECOMMENDED timeouts 0 (not
/// reported).
const TIMEOUTS: [u8; 12] = [0x00, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// SUPPORT field values (SPC-5 6.35.3).
const NOT_SUPPORTED: u8 = 0b001;
const SUPPORTED: u8 = 0b011;

/// REPORT SUPPORTED OPERATION CODES: RCTD byte 2 bit 7, REPORTING OPTIONS
/// byte 2 bits 2-0, REQUESTED OPERATION CODE byte 3, REQUESTED SERVICE
/// ACTION bytes 4-5, ALLOCATION LENGTH bytes 6-9.
/// - 000b: all_commands parameter data, one descriptor per table entry;
/// - 001b: one_command data for an opcode without service actions (an
///   opcode with service actions: INVALID FIELD IN CDB at byte 3);
/// - 010b: opcode + service action (an opcode without service actions:
///   INVALID FIELD IN CDB at byte 3);
/// - 011b: opcode with service action if it has them, else the opcode
///   alone (the REQUESTED SERVICE ACTION is then ignored);
/// - 1xxb: reserved, INVALID FIELD IN CDB at byte 2 bit 2.
///
/// An opcode or service action we do not have: SUPPORT 001b, no usage
/// data. A service action above 1Fh can name no command: SUPPORT 001b.
pub fn rsoc(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let b2 = ctx.cdb.u8(2)?;
    let rctd = b2 & 0x80 != 0;
    let option = b2 & 0x07;
    let op = ctx.cdb.u8(3)?;
    let sa = ctx.cdb.be16(4)?;
    let alloc = ctx.cdb.be32(6)?;
    // The commands this logical unit has.
    let here = || COMMANDS.iter().filter(|c| (c.available)(ctx.lu));
    let has_sa = here().any(|c| c.opcode == op && c.service_action.is_some());
    let exists = here().any(|c| c.opcode == op);
    let find_sa = || here().find(|c| c.opcode == op && c.service_action.map(u16::from) == Some(sa));
    let data = match option {
        0b000 => all_commands(here(), rctd),
        0b001 => {
            if has_sa {
                return Err(Sense::invalid_field_in_cdb(3, None));
            }
            one_command(here().find(|c| c.opcode == op), rctd)
        }
        0b010 => {
            if exists && !has_sa {
                return Err(Sense::invalid_field_in_cdb(3, None));
            }
            one_command(find_sa(), rctd)
        }
        0b011 => {
            if has_sa {
                one_command(find_sa(), rctd)
            } else {
                one_command(here().find(|c| c.opcode == op), rctd)
            }
        }
        _ => return Err(Sense::invalid_field_in_cdb(2, Some(2))),
    };
    Ok(Outcome::data_in(truncate(data, alloc)))
}

/// all_commands parameter data (SPC-5 6.35.2): COMMAND DATA LENGTH, then a
/// command descriptor per entry (with a command timeouts descriptor when
/// RCTD is set).
fn all_commands<'a>(commands: impl Iterator<Item = &'a Command>, rctd: bool) -> Vec<u8> {
    let mut d = vec![0u8; 4];
    for c in commands {
        let [sa_hi, sa_lo] = u16::from(c.service_action.unwrap_or(0)).to_be_bytes();
        let mut flags = 0;
        if c.service_action.is_some() {
            flags |= 0x01; // SERVACTV
        }
        if rctd {
            flags |= 0x02; // CTDP
        }
        let [len_hi, len_lo] = u16::try_from(c.cdb_len()).unwrap_or(0).to_be_bytes();
        d.extend_from_slice(&[c.opcode, 0, sa_hi, sa_lo, 0, flags, len_hi, len_lo]);
        if rctd {
            d.extend_from_slice(&TIMEOUTS);
        }
    }
    let len = u32::try_from(d.len() - 4).unwrap_or(u32::MAX);
    d[0..4].copy_from_slice(&len.to_be_bytes());
    d
}

/// one_command parameter data (SPC-5 6.35.3): CTDP and SUPPORT, CDB SIZE,
/// CDB USAGE DATA (the table's mask), optional timeouts descriptor.
fn one_command(cmd: Option<&Command>, rctd: bool) -> Vec<u8> {
    let Some(c) = cmd else {
        return vec![0, NOT_SUPPORTED, 0, 0];
    };
    let ctdp = if rctd { 0x80 } else { 0 };
    let [hi, lo] = u16::try_from(c.cdb_len()).unwrap_or(0).to_be_bytes();
    let mut d = vec![0, ctdp | SUPPORTED, hi, lo];
    d.extend_from_slice(c.usage);
    if rctd {
        d.extend_from_slice(&TIMEOUTS);
    }
    d
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-5 6.37): REPCD byte 2
/// bit 7, ALLOCATION LENGTH bytes 6-9. The transport implements ABORT TASK,
/// ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, QUERY TASK, QUERY
/// TASK SET and I_T NEXUS RESET: ATS, ATSS, CTSS, LURS, QTS (byte 0),
/// QTSS, ITNRS (byte 1); not CLEAR ACA, TARGET RESET, WAKEUP, QUERY
/// ASYNCHRONOUS EVENT. REPCD=1 returns the 16-byte extended format with
/// no timeouts (TMFTMOV 0).
pub fn rstmf(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let repcd = ctx.cdb.bit(2, 7)?;
    let alloc = ctx.cdb.be32(6)?;
    // Byte 0: ATS 7, ATSS 6, CACAS 5, CTSS 4, LURS 3, QTS 2, TRS 1, WAKES 0.
    // Byte 1: QAES 2, QTSS 1, ITNRS 0.
    let head = [0xc0 | 0x10 | 0x08 | 0x04, 0x02 | 0x01];
    let mut d = vec![head[0], head[1], 0, 0];
    if repcd {
        d[3] = 0x0c; // ADDITIONAL DATA LENGTH
        d.resize(16, 0);
    }
    Ok(Outcome::data_in(truncate(d, alloc)))
}
