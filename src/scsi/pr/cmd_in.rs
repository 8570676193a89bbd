//! PERSISTENT RESERVE IN (SPC-4 6.14).

use crate::scsi::cdb::truncate;
use crate::scsi::opcodes::Ctx;
use crate::scsi::{NexusId, Outcome, Sense};

use super::PrState;

/// PERSISTENT RESERVE IN: SERVICE ACTION byte 1 bits 4-0 (00h READ KEYS,
/// 01h READ RESERVATION, 02h REPORT CAPABILITIES, 03h READ FULL STATUS;
/// others never reach here: the opcode table has no entry for them),
/// ALLOCATION LENGTH bytes 7-8.
pub fn pr_in(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    let sa = ctx.cdb.u8(1)? & 0x1f;
    let alloc = ctx.cdb.be16(7)?;
    let st = lu.state();
    let pr = &st.pr;
    let data = match sa {
        0x00 => read_keys(pr),
        0x01 => read_reservation(pr),
        0x02 => report_capabilities(ctx.target.pr_store().is_some(), pr.aptpl),
        0x03 => read_full_status(pr),
        _ => return Err(Sense::invalid_field_in_cdb(1, Some(4))),
    };
    Ok(Outcome::data_in(truncate(data, alloc.into())))
}

/// PRGENERATION + ADDITIONAL LENGTH header followed by `body`.
fn with_header(pr: &PrState, body: Vec<u8>) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + body.len());
    d.extend_from_slice(&pr.generation.to_be_bytes());
    d.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    d.extend(body);
    d
}

/// READ KEYS parameter data (SPC-4 6.14.2): every registered key.
fn read_keys(pr: &PrState) -> Vec<u8> {
    let body = pr.regs.iter().flat_map(|r| r.key.to_be_bytes()).collect();
    with_header(pr, body)
}

/// SCOPE (LU_SCOPE 0h) and TYPE byte.
fn scope_type(pr: &PrState) -> u8 {
    pr.reservation.map_or(0, |r| r.kind as u8)
}

/// READ RESERVATION parameter data (SPC-4 6.14.3): when reserved, the
/// holder's key (0 for all-registrants types), SCOPE 0h and TYPE.
fn read_reservation(pr: &PrState) -> Vec<u8> {
    let Some(r) = pr.reservation else {
        return with_header(pr, Vec::new());
    };
    let key = if r.kind.all_registrants() {
        0
    } else {
        pr.key_of(r.holder).unwrap_or(0)
    };
    let mut body = vec![0u8; 16];
    body[0..8].copy_from_slice(&key.to_be_bytes());
    body[13] = scope_type(pr);
    with_header(pr, body)
}

/// REPORT CAPABILITIES parameter data (SPC-4 6.14.4), 8 bytes: CRH 1 (we
/// apply the SPC-4 5.9.3 RESERVE/RELEASE exceptions), SIP_C 0, ATP_C 0,
/// PTPL_C when a store is configured; TMV 0; PTPL_A the current APTPL;
/// PERSISTENT RESERVATION TYPE MASK: all six types.
fn report_capabilities(ptpl_c: bool, ptpl_a: bool) -> Vec<u8> {
    vec![
        0,
        8,
        0x10 | u8::from(ptpl_c),
        u8::from(ptpl_a),
        // WR_EX_AR 7, EX_AC_RO 6, WR_EX_RO 5, EX_AC 3, WR_EX 1.
        0x80 | 0x40 | 0x20 | 0x08 | 0x02,
        // EX_AC_AR 0.
        0x01,
        0,
        0,
    ]
}

/// The iSCSI name we report for a nexus in TransportIDs (there is no real
/// initiator port name on vhost-user): `iqn.2026-11.io.vhost-user-scsi:
/// nexus-<id in hex>`.
pub fn nexus_name(nexus: NexusId) -> String {
    format!("iqn.2026-11.io.vhost-user-scsi:nexus-{:x}", nexus.0)
}

/// iSCSI TransportID, FORMAT CODE 00b (SPC-4 7.6.4.6): PROTOCOL IDENTIFIER
/// 5h, ADDITIONAL LENGTH, the null-terminated name padded to a multiple of
/// 4 bytes (at least 20).
pub fn transport_id(nexus: NexusId) -> Vec<u8> {
    let mut name = nexus_name(nexus).into_bytes();
    name.push(0);
    while name.len() % 4 != 0 || name.len() < 20 {
        name.push(0);
    }
    let mut d = vec![0x05, 0];
    d.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_be_bytes());
    d.extend(name);
    d
}

/// READ FULL STATUS parameter data (SPC-4 6.14.5): one full status
/// descriptor per registration: key, ALL_TG_PT 0, R_HOLDER, SCOPE/TYPE (for
/// the holder), RELATIVE TARGET PORT IDENTIFIER 1, the TransportID.
fn read_full_status(pr: &PrState) -> Vec<u8> {
    let mut body = Vec::new();
    for r in &pr.regs {
        let tid = transport_id(r.nexus);
        let holder = pr.is_holder(r.nexus);
        let mut d = vec![0u8; 24];
        d[0..8].copy_from_slice(&r.key.to_be_bytes());
        if holder {
            d[12] = 0x01;
            d[13] = scope_type(pr);
        }
        d[18..20].copy_from_slice(&1u16.to_be_bytes());
        d[20..24].copy_from_slice(&u32::try_from(tid.len()).unwrap_or(0).to_be_bytes());
        body.extend(d);
        body.extend(tid);
    }
    with_header(pr, body)
}
