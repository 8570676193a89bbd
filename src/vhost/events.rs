//! The event queue (virtio 1.2 5.6.6.3): hotplug and parameter-change
//! events for the guest's driver.
//!
//! The driver keeps buffers on the event queue; each event takes one. An
//! event raised while the guest has no buffer left waits here (up to
//! [`MAX_PENDING`]) and goes out when buffers arrive; when older events had
//! to be dropped, the next one delivered carries VIRTIO_SCSI_T_EVENTS_MISSED
//! (the driver then rescans the whole bus). Events raised with no guest
//! connected are dropped: a guest that connects later scans the bus anyway.

use std::collections::VecDeque;
use std::sync::Mutex;

use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic};

use super::dirty::SharedLog;
use super::worker::{avail_index_broken, log_used_ring, Vring};
use crate::virtio_scsi::{
    split_chain, Event, GuestMem, T_EVENTS_MISSED, T_PARAM_CHANGE, T_TRANSPORT_RESET,
};

/// Events kept while the guest has no event buffer.
pub const MAX_PENDING: usize = 64;

/// VIRTIO_SCSI_EVT_RESET_RESCAN: a LUN appeared (5.6.6.3.1).
pub const EVT_RESET_RESCAN: u32 = 1;
/// VIRTIO_SCSI_EVT_RESET_REMOVED: a LUN went away.
pub const EVT_RESET_REMOVED: u32 = 2;

/// The LUN field of an event for `lun` of target 0, in the form REPORT
/// LUNS uses (SAM-5 4.7: peripheral device addressing below 256, flat
/// space above), which is how the Linux driver numbers its devices (QEMU
/// encodes its events the same way).
fn event_lun(lun: u16) -> [u8; 8] {
    let lun = lun & 0x3fff;
    let hi = (lun >> 8) as u8;
    let hi = if lun >= 256 { hi | 0x40 } else { hi };
    [1, 0, hi, (lun & 0xff) as u8, 0, 0, 0, 0]
}

/// A transport reset event for `lun` of target 0.
pub fn transport_reset(lun: u16, reason: u32) -> Event {
    Event {
        event: T_TRANSPORT_RESET.to_le(),
        lun: event_lun(lun),
        reason: reason.to_le(),
    }
}

/// A parameter change event for `lun`: the sense code of the unit
/// attention the LUN also reports (reason = ASC | ASCQ << 8).
pub fn param_change(lun: u16, asc: u8, ascq: u8) -> Event {
    Event {
        event: T_PARAM_CHANGE.to_le(),
        lun: event_lun(lun),
        reason: (u32::from(asc) | (u32::from(ascq) << 8)).to_le(),
    }
}

#[derive(Default)]
struct Inner {
    pending: VecDeque<Event>,
    missed: bool,
    /// The guest memory of the connected frontend; None: no guest.
    mem: Option<GuestMemoryAtomic<GuestMem>>,
    /// The event vring, learnt at the guest's first kick on it.
    vring: Option<Vring>,
    event_idx: bool,
    delivered: u64,
    /// The connection's dirty log (live migration).
    dirty: Option<SharedLog>,
}

/// The event queue of one controller (across connections).
#[derive(Default)]
pub struct EventQueue {
    inner: Mutex<Inner>,
}

impl EventQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A frontend connected with guest memory `mem`.
    pub(crate) fn connect(&self, mem: GuestMemoryAtomic<GuestMem>, dirty: SharedLog) {
        let mut inner = self.lock();
        *inner = Inner {
            mem: Some(mem),
            dirty: Some(dirty),
            delivered: inner.delivered,
            ..Inner::default()
        };
    }

    /// The frontend went away: forget its rings and what it did not take.
    pub(crate) fn disconnect(&self) {
        let mut inner = self.lock();
        *inner = Inner {
            delivered: inner.delivered,
            ..Inner::default()
        };
    }

    /// The guest kicked the event queue (it added buffers).
    pub(crate) fn kicked(&self, vring: &Vring, event_idx: bool) {
        let mut inner = self.lock();
        if inner.mem.is_none() {
            return;
        }
        if inner.vring.is_none() {
            inner.vring = Some(vring.clone());
        }
        inner.event_idx = event_idx;
        flush(&mut inner);
    }

    /// Raise `event` for the connected guest (dropped when none is).
    pub fn push(&self, event: Event) {
        let mut inner = self.lock();
        if inner.mem.is_none() {
            return;
        }
        if inner.pending.len() >= MAX_PENDING {
            inner.pending.pop_front();
            inner.missed = true;
        }
        inner.pending.push_back(event);
        flush(&mut inner);
    }

    /// Events waiting for a buffer.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Events delivered so far (all connections).
    pub fn delivered(&self) -> u64 {
        self.lock().delivered
    }
}

/// Put pending events into the guest's buffers.
fn flush(inner: &mut Inner) {
    let (Some(vring), Some(mem)) = (inner.vring.clone(), inner.mem.as_ref()) else {
        return;
    };
    if inner.pending.is_empty() {
        return;
    }
    let mem = mem.memory();
    let dlog = inner.dirty.as_ref().and_then(|d| d.load_full());
    let mut state = vring.get_mut();
    let mut used_any = false;
    loop {
        // Not ready, or an avail index more than a ring ahead: nothing to
        // take (and virtio-queue would log an error per attempt).
        if avail_index_broken(state.get_queue(), &mem) {
            break;
        }
        while !inner.pending.is_empty() {
            let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) else {
                break;
            };
            let head = chain.head_index();
            let written = match split_chain(chain) {
                Ok(split) => {
                    let Some(mut ev) = inner.pending.front().copied() else {
                        break;
                    };
                    if inner.missed {
                        ev.event = (u32::from_le(ev.event) | T_EVENTS_MISSED).to_le();
                    }
                    match split.writable.write_from(&mem, ev.as_slice()) {
                        Ok(n) if n == std::mem::size_of::<Event>() => {
                            if let Some(d) = &dlog {
                                d.mark_segments(&split.writable, n as u64);
                            }
                            inner.pending.pop_front();
                            inner.missed = false;
                            inner.delivered += 1;
                            n as u32
                        }
                        // A buffer too small for an event: give it back
                        // empty and try the next one.
                        _ => 0,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "malformed event-queue buffer");
                    0
                }
            };
            if let Err(e) = state.add_used(head, written) {
                tracing::warn!(error = %e, "add_used failed on the event queue");
            }
            used_any = true;
            if let Some(d) = &dlog {
                log_used_ring(d, state.get_queue());
            }
        }
        // With EVENT_IDX, ask to be kicked when the guest adds buffers;
        // true means some arrived meanwhile: go on.
        if !inner.event_idx || inner.pending.is_empty() {
            break;
        }
        match state.enable_notification() {
            Ok(true) => continue,
            _ => break,
        }
    }
    if used_any && state.needs_notification().unwrap_or(true) {
        if let Err(e) = state.signal_used_queue() {
            tracing::warn!(error = %e, "cannot signal the event queue");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_encoding() {
        let e = transport_reset(5, EVT_RESET_RESCAN);
        assert_eq!(
            e.as_slice(),
            &[1, 0, 0, 0, 1, 0, 0, 5, 0, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(event_lun(300), [1, 0, 0x41, 0x2c, 0, 0, 0, 0]);
        let p = param_change(1, 0x2a, 0x09);
        assert_eq!(u32::from_le(p.reason), 0x092a);
        assert_eq!(u32::from_le(p.event), T_PARAM_CHANGE);
    }

    #[test]
    fn no_guest_drops_and_overflow_marks_missed() {
        let q = EventQueue::default();
        q.push(transport_reset(0, EVT_RESET_RESCAN));
        assert_eq!(q.pending(), 0);
        q.connect(
            GuestMemoryAtomic::new(GuestMem::new()),
            SharedLog::default(),
        );
        for i in 0..(MAX_PENDING as u16 + 3) {
            q.push(transport_reset(i, EVT_RESET_RESCAN));
        }
        assert_eq!(q.pending(), MAX_PENDING);
        assert!(q.lock().missed);
        q.disconnect();
        assert_eq!(q.pending(), 0);
    }
}
