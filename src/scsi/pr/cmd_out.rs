//! PERSISTENT RESERVE OUT (SPC-4 6.15, service actions 5.9.7-5.9.11).

use crate::scsi::opcodes::Ctx;
use crate::scsi::param::{bad_param, ParamList};
use crate::scsi::ua::UnitAttention;
use crate::scsi::{NexusId, Outcome, Sense, SenseKey};

use super::{PrState, PrType, Registration, Reservation};

/// The basic PERSISTENT RESERVE OUT parameter list is 24 bytes (SPC-4
/// 6.15.3).
const LIST_LEN: u32 = 24;

const REGISTER: u8 = 0x00;
const RESERVE: u8 = 0x01;
const RELEASE: u8 = 0x02;
const CLEAR: u8 = 0x03;
const PREEMPT: u8 = 0x04;
const PREEMPT_AND_ABORT: u8 = 0x05;
const REGISTER_IGNORE: u8 = 0x06;

/// ILLEGAL REQUEST, 26h/04h INVALID RELEASE OF PERSISTENT RESERVATION.
const INVALID_RELEASE: Sense = Sense::new(SenseKey::IllegalRequest, 0x26, 0x04);

/// A state change refused with RESERVATION CONFLICT.
struct Conflict;

/// PERSISTENT RESERVE OUT: SERVICE ACTION byte 1 bits 4-0, SCOPE byte 2
/// bits 7-4, TYPE byte 2 bits 3-0, PARAMETER LIST LENGTH bytes 5-8. In
/// order:
/// 1. SCOPE != 0 (LU_SCOPE) or TYPE not one of the six types, for RESERVE,
///    RELEASE, PREEMPT and PREEMPT AND ABORT: INVALID FIELD IN CDB at byte 2
///    bit 7 / bit 3 (SPC-4 6.15.2);
/// 2. PARAMETER LIST LENGTH other than 24 (we have no SPEC_I_PT):
///    PARAMETER LIST LENGTH ERROR; data-out shorter than 24: the same;
/// 3. parameter list byte 20: SPEC_I_PT=1 (SIP_C=0) INVALID FIELD IN
///    PARAMETER LIST byte 20 bit 3; ALL_TG_PT=1 (ATP_C=0) bit 2; reserved
///    bits; APTPL=1 with no store (PTPL_C=0) for REGISTER: bit 0; byte 21
///    reserved;
/// 4. the service action (reservation key checks -> RESERVATION CONFLICT);
/// 5. with APTPL in effect before or after, the new state is saved before
///    it takes effect; a save failure completes with HARDWARE ERROR, 55h/04h
///    INSUFFICIENT REGISTRATION RESOURCES and changes nothing.
///
/// PREEMPT AND ABORT acts as PREEMPT: commands of a preempted nexus are not
/// aborted (the transport has already completed or will complete them).
pub fn pr_out(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    let sa = ctx.cdb.u8(1)? & 0x1f;
    let b2 = ctx.cdb.u8(2)?;
    let list_len = ctx.cdb.be32(5)?;
    let needs_type = matches!(sa, RESERVE | RELEASE | PREEMPT | PREEMPT_AND_ABORT);
    let kind = PrType::from_code(b2 & 0x0f);
    if needs_type {
        if b2 >> 4 != 0 {
            return Err(Sense::invalid_field_in_cdb(2, Some(7)));
        }
        if kind.is_none() {
            return Err(Sense::invalid_field_in_cdb(2, Some(3)));
        }
    }
    if list_len != LIST_LEN {
        return Err(Sense::param_list_length_error());
    }
    let data = ctx.read_data(24)?;
    let p = ParamList::new(&data);
    let rk = p.be64(0)?;
    let sark = p.be64(8)?;
    let b20 = p.u8(20)?;
    if b20 & 0x08 != 0 {
        return Err(bad_param(20, Some(3)));
    }
    if b20 & 0x04 != 0 {
        return Err(bad_param(20, Some(2)));
    }
    if b20 & 0xf2 != 0 {
        return Err(bad_param(
            20,
            Some(7u8.saturating_sub((b20 & 0xf2).leading_zeros() as u8)),
        ));
    }
    let aptpl = b20 & 0x01 != 0;
    let store = ctx.target.pr_store();
    let registering = matches!(sa, REGISTER | REGISTER_IGNORE);
    if aptpl && registering && store.is_none() {
        return Err(bad_param(20, Some(0)));
    }
    if p.u8(21)? != 0 {
        return Err(bad_param(21, None));
    }

    let mut st = lu.state();
    let mut pr = st.pr.clone();
    let mut uas = Vec::new();
    let nexus = ctx.nexus;
    let res = match (sa, kind) {
        (REGISTER | REGISTER_IGNORE, _) => register(
            &mut pr,
            nexus,
            rk,
            sark,
            sa == REGISTER_IGNORE,
            aptpl,
            &mut uas,
        ),
        (RESERVE, Some(k)) => reserve(&mut pr, nexus, rk, k),
        (RELEASE, Some(k)) => release(&mut pr, nexus, rk, k, &mut uas)?,
        (CLEAR, _) => clear(&mut pr, nexus, rk, &mut uas),
        (PREEMPT | PREEMPT_AND_ABORT, Some(k)) => preempt(&mut pr, nexus, rk, sark, k, &mut uas)?,
        _ => return Err(Sense::invalid_field_in_cdb(1, Some(4))),
    };
    if res.is_err() {
        return Ok(Outcome::reservation_conflict());
    }
    if pr != st.pr && (pr.aptpl || st.pr.aptpl) {
        if let Some(store) = store {
            store
                .save(&lu.cfg.identity, &pr.encode())
                .map_err(|_| Sense::insufficient_registration_resources())?;
        }
    }
    st.pr = pr;
    for (n, ua) in uas {
        st.ua.establish(n, ua);
    }
    Ok(Outcome::good())
}

/// Checks that `nexus` is registered with key `rk`.
fn check_key(pr: &PrState, nexus: NexusId, rk: u64) -> Result<(), Conflict> {
    match pr.key_of(nexus) {
        Some(k) if k == rk => Ok(()),
        _ => Err(Conflict),
    }
}

/// Removes the registration of `nexus`; releases the reservation if it
/// held it (SPC-4 5.9.11.2): for all-registrants types only when it was
/// the last registrant; a registrants-only reservation released this way
/// gives the other registrants RESERVATIONS RELEASED.
fn unregister(pr: &mut PrState, nexus: NexusId, uas: &mut Vec<(NexusId, UnitAttention)>) {
    pr.regs.retain(|r| r.nexus != nexus);
    if let Some(r) = pr.reservation {
        if r.kind.all_registrants() {
            if pr.regs.is_empty() {
                pr.reservation = None;
            }
        } else if r.holder == nexus {
            pr.reservation = None;
            if r.kind.registrants_access() {
                for reg in &pr.regs {
                    uas.push((reg.nexus, UnitAttention::ReservationsReleased));
                }
            }
        }
    }
}

/// REGISTER / REGISTER AND IGNORE EXISTING KEY (SPC-4 5.9.7).
fn register(
    pr: &mut PrState,
    nexus: NexusId,
    rk: u64,
    sark: u64,
    ignore: bool,
    aptpl: bool,
    uas: &mut Vec<(NexusId, UnitAttention)>,
) -> Result<(), Conflict> {
    match pr.key_of(nexus) {
        None => {
            if !ignore && rk != 0 {
                return Err(Conflict);
            }
            if sark == 0 {
                return Ok(());
            }
            pr.regs.push(Registration { nexus, key: sark });
        }
        Some(k) => {
            if !ignore && rk != k {
                return Err(Conflict);
            }
            if sark == 0 {
                unregister(pr, nexus, uas);
            } else if let Some(r) = pr.regs.iter_mut().find(|r| r.nexus == nexus) {
                r.key = sark;
            }
        }
    }
    pr.aptpl = aptpl;
    pr.generation = pr.generation.wrapping_add(1);
    Ok(())
}

/// RESERVE (SPC-4 5.9.9): a holder reserving again with the same type is
/// GOOD; any other existing reservation conflicts.
fn reserve(pr: &mut PrState, nexus: NexusId, rk: u64, kind: PrType) -> Result<(), Conflict> {
    check_key(pr, nexus, rk)?;
    match pr.reservation {
        Some(r) if pr.is_holder(nexus) && r.kind == kind => Ok(()),
        Some(_) => Err(Conflict),
        None => {
            pr.reservation = Some(Reservation {
                holder: nexus,
                kind,
            });
            Ok(())
        }
    }
}

/// RELEASE (SPC-4 5.9.11.2): no reservation or not the holder: GOOD, no
/// effect; the holder with another TYPE: INVALID RELEASE OF PERSISTENT
/// RESERVATION; else released, and for types other than Write Exclusive /
/// Exclusive Access the other registrants get RESERVATIONS RELEASED.
fn release(
    pr: &mut PrState,
    nexus: NexusId,
    rk: u64,
    kind: PrType,
    uas: &mut Vec<(NexusId, UnitAttention)>,
) -> Result<Result<(), Conflict>, Sense> {
    if check_key(pr, nexus, rk).is_err() {
        return Ok(Err(Conflict));
    }
    let Some(r) = pr.reservation else {
        return Ok(Ok(()));
    };
    if !pr.is_holder(nexus) {
        return Ok(Ok(()));
    }
    if r.kind != kind {
        return Err(INVALID_RELEASE);
    }
    pr.reservation = None;
    if r.kind.registrants_access() {
        for reg in pr.regs.iter().filter(|reg| reg.nexus != nexus) {
            uas.push((reg.nexus, UnitAttention::ReservationsReleased));
        }
    }
    Ok(Ok(()))
}

/// CLEAR (SPC-4 5.9.11.6): removes every registration and the
/// reservation; the other registrants get RESERVATIONS PREEMPTED.
fn clear(
    pr: &mut PrState,
    nexus: NexusId,
    rk: u64,
    uas: &mut Vec<(NexusId, UnitAttention)>,
) -> Result<(), Conflict> {
    check_key(pr, nexus, rk)?;
    for reg in pr.regs.iter().filter(|reg| reg.nexus != nexus) {
        uas.push((reg.nexus, UnitAttention::ReservationsPreempted));
    }
    pr.regs.clear();
    pr.reservation = None;
    pr.generation = pr.generation.wrapping_add(1);
    Ok(())
}

/// PREEMPT / PREEMPT AND ABORT (SPC-4 5.9.11.4):
/// - SERVICE ACTION RESERVATION KEY matching no registration: RESERVATION
///   CONFLICT (except SARK 0 under an all-registrants reservation);
/// - no reservation, or SARK not the holder's key: remove the registrations
///   with that key (SARK 0 here: INVALID FIELD IN PARAMETER LIST byte 8);
/// - all-registrants reservation with SARK 0: remove every other
///   registration and reserve with TYPE for this nexus;
/// - SARK = the holder's key: remove the registrations with that key and
///   reserve with TYPE for this nexus.
///
/// The registration of the nexus sending the command is never removed.
/// Removed nexuses get REGISTRATIONS PREEMPTED.
fn preempt(
    pr: &mut PrState,
    nexus: NexusId,
    rk: u64,
    sark: u64,
    kind: PrType,
    uas: &mut Vec<(NexusId, UnitAttention)>,
) -> Result<Result<(), Conflict>, Sense> {
    if check_key(pr, nexus, rk).is_err() {
        return Ok(Err(Conflict));
    }
    let mut remove = |pr: &mut PrState, all: bool| {
        let (gone, kept): (Vec<_>, Vec<_>) = pr
            .regs
            .iter()
            .copied()
            .partition::<Vec<Registration>, _>(|r| r.nexus != nexus && (all || r.key == sark));
        for r in gone {
            uas.push((r.nexus, UnitAttention::RegistrationsPreempted));
        }
        pr.regs = kept;
    };
    let matched = pr.regs.iter().any(|r| r.key == sark);
    match pr.reservation {
        Some(r) if r.kind.all_registrants() && sark == 0 => {
            remove(pr, true);
            pr.reservation = Some(Reservation {
                holder: nexus,
                kind,
            });
        }
        Some(r) if !r.kind.all_registrants() && pr.key_of(r.holder) == Some(sark) => {
            remove(pr, false);
            pr.reservation = Some(Reservation {
                holder: nexus,
                kind,
            });
        }
        _ => {
            if sark == 0 {
                return Err(bad_param(8, None));
            }
            if !matched {
                return Ok(Err(Conflict));
            }
            remove(pr, false);
            if let Some(r) = pr.reservation {
                if r.kind.all_registrants() && pr.regs.is_empty() {
                    pr.reservation = None;
                }
            }
        }
    }
    pr.generation = pr.generation.wrapping_add(1);
    Ok(Ok(()))
}
