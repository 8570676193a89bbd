//! Unit attention conditions, queued per I_T nexus per logical unit
//! (SAM-5 5.14, SPC-5 4.5.5 / 5.14 unit attention conditions).
//!
//! A nexus the logical unit has never seen gets POWER ON, RESET, OR BUS
//! DEVICE RESET OCCURRED at its first command (the daemon started, or the
//! unit appeared). Reset-class conditions (29h/xxh) take precedence over
//! every other condition; the others are reported in the order they were
//! established. Each command (other than INQUIRY, REPORT LUNS and REQUEST
//! SENSE) reports and clears one condition.

use std::collections::HashMap;

use super::{NexusId, Sense};

/// The unit attention conditions this target establishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitAttention {
    /// 29h/00h POWER ON, RESET, OR BUS DEVICE RESET OCCURRED: first
    /// contact of a nexus with the logical unit after start.
    PowerOn,
    /// 29h/03h BUS DEVICE RESET FUNCTION OCCURRED: LOGICAL UNIT RESET
    /// (SAM-5 7.6, logical unit reset).
    LunReset,
    /// 29h/07h I_T NEXUS LOSS OCCURRED: I_T NEXUS RESET (SAM-5 7.7).
    NexusLoss,
    /// 2Ah/01h MODE PARAMETERS CHANGED (SPC-5 6.11: another nexus changed
    /// mode parameters).
    ModeParametersChanged,
    /// 2Ah/03h RESERVATIONS PREEMPTED (SPC-4 5.9.11, CLEAR).
    ReservationsPreempted,
    /// 2Ah/04h RESERVATIONS RELEASED (SPC-4 5.9.10.2).
    ReservationsReleased,
    /// 2Ah/05h REGISTRATIONS PREEMPTED (SPC-4 5.9.10.4).
    RegistrationsPreempted,
    /// 2Ah/09h CAPACITY DATA HAS CHANGED (SBC-4 4.6).
    CapacityChanged,
    /// 3Fh/0Eh REPORTED LUNS DATA HAS CHANGED (SPC-5 6.29).
    ReportedLunsChanged,
}

impl UnitAttention {
    pub fn sense(self) -> Sense {
        let (asc, ascq) = match self {
            UnitAttention::PowerOn => (0x29, 0x00),
            UnitAttention::LunReset => (0x29, 0x03),
            UnitAttention::NexusLoss => (0x29, 0x07),
            UnitAttention::ModeParametersChanged => (0x2a, 0x01),
            UnitAttention::ReservationsPreempted => (0x2a, 0x03),
            UnitAttention::ReservationsReleased => (0x2a, 0x04),
            UnitAttention::RegistrationsPreempted => (0x2a, 0x05),
            UnitAttention::CapacityChanged => (0x2a, 0x09),
            UnitAttention::ReportedLunsChanged => (0x3f, 0x0e),
        };
        Sense::unit_attention(asc, ascq)
    }

    /// Lower is reported first: the reset class, then everything else in
    /// arrival order (SAM-5 5.14: a device server reports the highest
    /// precedence condition first; 29h conditions have the highest).
    fn precedence(self) -> u8 {
        match self {
            UnitAttention::PowerOn => 0,
            UnitAttention::LunReset => 1,
            UnitAttention::NexusLoss => 2,
            _ => 3,
        }
    }
}

/// The pending unit attentions of every nexus that has been seen.
#[derive(Debug, Default)]
pub struct UaQueues {
    queues: HashMap<NexusId, Vec<UnitAttention>>,
}

impl UaQueues {
    /// `nexus` has been seen and has nothing pending.
    pub fn is_empty_for(&self, nexus: NexusId) -> bool {
        self.queues.get(&nexus).is_some_and(Vec::is_empty)
    }

    /// Registers `nexus` (POWER ON at first contact) and takes its highest
    /// precedence condition off the queue.
    pub fn take(&mut self, nexus: NexusId) -> Option<UnitAttention> {
        let q = self
            .queues
            .entry(nexus)
            .or_insert_with(|| vec![UnitAttention::PowerOn]);
        let (i, _) = q
            .iter()
            .enumerate()
            .min_by_key(|(i, ua)| (ua.precedence(), *i))?;
        Some(q.remove(i))
    }

    /// The condition `take` would return, without clearing it.
    pub fn peek(&mut self, nexus: NexusId) -> Option<UnitAttention> {
        let q = self
            .queues
            .entry(nexus)
            .or_insert_with(|| vec![UnitAttention::PowerOn]);
        q.iter()
            .enumerate()
            .min_by_key(|(i, ua)| (ua.precedence(), *i))
            .map(|(_, ua)| *ua)
    }

    /// Removes a pending `ua` of `nexus` (REPORT LUNS clears REPORTED LUNS
    /// DATA HAS CHANGED, SPC-5 6.29).
    pub fn clear(&mut self, nexus: NexusId, ua: UnitAttention) {
        if let Some(q) = self.queues.get_mut(&nexus) {
            q.retain(|u| *u != ua);
        }
    }

    /// Establishes `ua` for `nexus`. A nexus not seen yet will get POWER ON
    /// at first contact, which covers everything before it: nothing to do.
    pub fn establish(&mut self, nexus: NexusId, ua: UnitAttention) {
        if let Some(q) = self.queues.get_mut(&nexus) {
            if !q.contains(&ua) {
                q.push(ua);
            }
        }
    }

    /// Establishes `ua` for every seen nexus except `except`.
    pub fn establish_all(&mut self, ua: UnitAttention, except: Option<NexusId>) {
        for (n, q) in &mut self.queues {
            if Some(*n) != except && !q.contains(&ua) {
                q.push(ua);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_contact_precedence_and_clear() {
        let mut q = UaQueues::default();
        let a = NexusId(1);
        q.establish(a, UnitAttention::CapacityChanged); // unseen: no-op
        assert_eq!(q.take(a), Some(UnitAttention::PowerOn));
        assert_eq!(q.take(a), None);
        q.establish(a, UnitAttention::CapacityChanged);
        q.establish(a, UnitAttention::ModeParametersChanged);
        q.establish(a, UnitAttention::CapacityChanged);
        q.establish(a, UnitAttention::NexusLoss);
        assert_eq!(q.peek(a), Some(UnitAttention::NexusLoss));
        assert_eq!(q.take(a), Some(UnitAttention::NexusLoss));
        assert_eq!(q.take(a), Some(UnitAttention::CapacityChanged));
        q.clear(a, UnitAttention::ModeParametersChanged);
        assert_eq!(q.take(a), None);
        let b = NexusId(2);
        q.take(b);
        q.establish_all(UnitAttention::ReportedLunsChanged, Some(a));
        assert_eq!(q.take(a), None);
        assert_eq!(q.take(b), Some(UnitAttention::ReportedLunsChanged));
    }
}
