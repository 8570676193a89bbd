//! Reservations: persistent reservations (SPC-4 5.9, PERSISTENT RESERVE
//! IN/OUT 6.14/6.15) and the SPC-2 RESERVE/RELEASE (SPC-2 7.21/7.23, and
//! their coexistence rules of SPC-4 5.9.3).
//!
//! One state per logical unit, under its mutex. Registrations are per I_T
//! nexus ([`NexusId`]); we have one target port, so ALL_TG_PT and SPEC_I_PT
//! are not supported. With APTPL=1 the state is saved through a
//! [`PrStore`] after every change, before the command completes.

mod cmd_in;
mod cmd_out;
mod store;

pub use cmd_in::pr_in;
pub use cmd_out::pr_out;
pub use store::{DirPrStore, PrStore};

use super::lun::LuState;
use super::opcodes::{Ctx, PrClass};
use super::{NexusId, Outcome, Sense};

/// Persistent reservation TYPE (SPC-4 6.15.3, table 179).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    pub fn from_code(code: u8) -> Option<PrType> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// Every registrant is a reservation holder.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registered nexuses have access (registrants only / all registrants).
    pub fn registrants_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Reads by nexuses without access conflict too.
    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration {
    pub nexus: NexusId,
    pub key: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The holder (for all-registrants types: the nexus that reserved; every
    /// registrant holds it).
    pub holder: NexusId,
    pub kind: PrType,
}

/// The persistent reservation state of a logical unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrState {
    /// PRGENERATION (SPC-4 6.14.2): incremented by REGISTER, REGISTER AND
    /// IGNORE EXISTING KEY, CLEAR, PREEMPT and PREEMPT AND ABORT.
    pub generation: u32,
    /// In registration order.
    pub regs: Vec<Registration>,
    pub reservation: Option<Reservation>,
    /// Persist through power loss (the last REGISTER's APTPL).
    pub aptpl: bool,
}

/// Magic of the saved state, version 1.
const MAGIC: &[u8; 8] = b"VUSPR\x00\x00\x01";

impl PrState {
    pub fn key_of(&self, nexus: NexusId) -> Option<u64> {
        self.regs.iter().find(|r| r.nexus == nexus).map(|r| r.key)
    }

    /// `nexus` holds the reservation (SPC-4 5.9.10: every registrant for
    /// the all-registrants types).
    pub fn is_holder(&self, nexus: NexusId) -> bool {
        match self.reservation {
            Some(r) if r.kind.all_registrants() => self.key_of(nexus).is_some(),
            Some(r) => r.holder == nexus,
            None => false,
        }
    }

    /// The saved form: MAGIC, generation (4), aptpl (1), reservation
    /// present (1) + holder (8) + type (1), count (4), (nexus, key) x count;
    /// big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut d = MAGIC.to_vec();
        d.extend_from_slice(&self.generation.to_be_bytes());
        d.push(u8::from(self.aptpl));
        match self.reservation {
            Some(r) => {
                d.push(1);
                d.extend_from_slice(&r.holder.0.to_be_bytes());
                d.push(r.kind as u8);
            }
            None => d.extend_from_slice(&[0; 10]),
        }
        let n = u32::try_from(self.regs.len()).unwrap_or(u32::MAX);
        d.extend_from_slice(&n.to_be_bytes());
        for r in &self.regs {
            d.extend_from_slice(&r.nexus.0.to_be_bytes());
            d.extend_from_slice(&r.key.to_be_bytes());
        }
        d
    }

    /// Parses `encode`'s output; None when malformed. A state saved with
    /// APTPL=0 restores as empty.
    pub fn decode(b: &[u8]) -> Option<PrState> {
        let rest = b.strip_prefix(MAGIC.as_slice())?;
        let u64_at = |b: &[u8], o: usize| -> Option<u64> {
            Some(u64::from_be_bytes(b.get(o..o + 8)?.try_into().ok()?))
        };
        let generation = u32::from_be_bytes(rest.get(0..4)?.try_into().ok()?);
        let aptpl = *rest.get(4)? != 0;
        let reservation = match rest.get(5)? {
            0 => None,
            _ => Some(Reservation {
                holder: NexusId(u64_at(rest, 6)?),
                kind: PrType::from_code(*rest.get(14)?)?,
            }),
        };
        let n = u32::from_be_bytes(rest.get(15..19)?.try_into().ok()?);
        let n = usize::try_from(n).ok()?;
        let body = rest.get(19..)?;
        if body.len() != n.checked_mul(16)? {
            return None;
        }
        let regs = body
            .chunks_exact(16)
            .map(|c| {
                Some(Registration {
                    nexus: NexusId(u64_at(c, 0)?),
                    key: u64_at(c, 8)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        if !aptpl {
            return Some(PrState::default());
        }
        Some(PrState {
            generation,
            regs,
            reservation,
            aptpl,
        })
    }
}

/// Whether a command of `class` from `nexus` conflicts with the unit's
/// reservations (SPC-4 5.9.1 tables; SPC-2 5.5.1; SPC-4 5.9.3):
/// - a RESERVE(6)/(10) held by another nexus: everything but class Any and
///   RESERVE/RELEASE (whose handlers apply SPC-2) conflicts; PERSISTENT
///   RESERVE IN/OUT conflict even from the holder;
/// - RESERVE/RELEASE while any persistent registration exists: conflict;
/// - a persistent reservation the nexus neither holds nor (for registrants
///   only / all registrants types, as a registrant) has access under:
///   writes conflict, reads conflict under Exclusive Access types.
pub fn conflicts(st: &LuState, nexus: NexusId, class: PrClass) -> bool {
    if let Some(holder) = st.legacy {
        return match class {
            PrClass::Persistent => true,
            PrClass::Any | PrClass::Legacy => false,
            _ => holder != nexus,
        };
    }
    if class == PrClass::Legacy {
        return !st.pr.regs.is_empty();
    }
    let Some(res) = st.pr.reservation else {
        return false;
    };
    if st.pr.is_holder(nexus) || (res.kind.registrants_access() && st.pr.key_of(nexus).is_some()) {
        return false;
    }
    match class {
        PrClass::Write => true,
        PrClass::Read => res.kind.exclusive_access(),
        PrClass::Any | PrClass::Allowed | PrClass::Persistent | PrClass::Legacy => false,
    }
}

/// RESERVE(6) / RESERVE(10) (SPC-2 7.21/7.22): the whole unit, no third
/// party, no extents (those bits are reserved in our CDB usage data). Held
/// by another nexus: RESERVATION CONFLICT; by this one: GOOD again.
pub fn reserve(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    let mut st = lu.state();
    match st.legacy {
        Some(h) if h != ctx.nexus => Ok(Outcome::reservation_conflict()),
        _ => {
            st.legacy = Some(ctx.nexus);
            Ok(Outcome::good())
        }
    }
}

/// RELEASE(6) / RELEASE(10) (SPC-2 7.23/7.24): releases this nexus's
/// reservation; anything else (none, or another nexus's) is GOOD with no
/// effect.
pub fn release(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let lu = ctx.lu()?;
    let mut st = lu.state();
    if st.legacy == Some(ctx.nexus) {
        st.legacy = None;
    }
    Ok(Outcome::good())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let s = PrState {
            generation: 7,
            regs: vec![
                Registration {
                    nexus: NexusId(1),
                    key: 0xaa,
                },
                Registration {
                    nexus: NexusId(u64::MAX),
                    key: 0xbb,
                },
            ],
            reservation: Some(Reservation {
                holder: NexusId(1),
                kind: PrType::ExclusiveAccessRegistrantsOnly,
            }),
            aptpl: true,
        };
        assert_eq!(PrState::decode(&s.encode()), Some(s.clone()));
        let e = s.encode();
        for len in 0..e.len() {
            assert_eq!(PrState::decode(&e[..len]), None, "{len}");
        }
        let off = PrState { aptpl: false, ..s };
        assert_eq!(PrState::decode(&off.encode()), Some(PrState::default()));
    }
}
