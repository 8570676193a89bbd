//! Unit attention lifecycle.

use super::*;

const TUR: [u8; 6] = [0; 6];

#[track_caller]
fn ua(o: Outcome, asc: u8, ascq: u8) {
    assert_sense(check(o), SenseKey::UnitAttention, asc, ascq, [0; 3]);
}

#[test]
fn power_on_per_nexus_and_exempt_commands() {
    let t = Target::new(vec![cfg(0), cfg(1)]).unwrap();
    let e = |n, lun, c: &[u8]| exec_data(&t, n, lun, c, &[]);
    // INQUIRY and REPORT LUNS neither report nor clear.
    good(e(1, 0, &[0x12, 0, 0, 0, 36, 0]));
    good(e(1, 0, &cdb(12, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16])));
    ua(e(1, 0, &TUR), 0x29, 0);
    assert_eq!(e(1, 0, &TUR), Outcome::good());
    // Per LUN and per nexus.
    ua(e(1, 1, &TUR), 0x29, 0);
    // Even an invalid opcode reports it first.
    ua(e(2, 0, &[0xff; 16]), 0x29, 0);
    // REQUEST SENSE returns and clears it.
    let d = good(e(3, 0, &[0x03, 0, 0, 0, 252, 0]));
    assert_eq!((d[2], d[12], d[13]), (0x06, 0x29, 0));
    assert_eq!(e(3, 0, &TUR), Outcome::good());
    let d = good(e(3, 0, &[0x03, 0, 0, 0, 252, 0]));
    assert_eq!((d[2], d[12]), (0, 0));
    // Missing LUN: no UA.
    assert_sense(
        check(e(4, 9, &TUR)),
        SenseKey::IllegalRequest,
        0x25,
        0,
        [0; 3],
    );
}

#[test]
fn resets_capacity_and_luns_changed() {
    let t = target();
    let n1 = |c: &[u8]| exec_data(&t, 1, 0, c, &[]);
    check(n1(&TUR));
    // LUN reset: everyone, 29h/03h.
    t.lun_reset(0);
    ua(exec(&t, 0, &TUR), 0x29, 0x03);
    ua(n1(&TUR), 0x29, 0x03);
    assert_eq!(exec(&t, 300, &TUR), Outcome::good());
    // I_T nexus reset: only that nexus, every LUN.
    t.nexus_reset(NexusId(1));
    assert_eq!(exec(&t, 0, &TUR), Outcome::good());
    ua(n1(&TUR), 0x29, 0x07);
    // Capacity change: new capacity, UA to all.
    t.capacity_changed(0, BlockCount(100));
    t.luns_changed();
    ua(exec(&t, 0, &TUR), 0x2a, 0x09);
    assert_eq!(
        check(exec(&t, 0, &cdb(10, &[0x28, 0, 0, 0, 0, 100, 0, 0, 1]))).asc,
        0x3f
    );
    assert_eq!(
        check(exec(&t, 0, &cdb(10, &[0x28, 0, 0, 0, 0, 100, 0, 0, 1]))).asc,
        0x21
    );
    let d = good(exec(&t, 0, &cdb(10, &[0x25])));
    assert_eq!(&d[..4], &99u32.to_be_bytes());
    // REPORT LUNS clears REPORTED LUNS DATA HAS CHANGED on every unit.
    ua(n1(&TUR), 0x2a, 0x09);
    good(n1(&cdb(12, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16])));
    assert_eq!(n1(&TUR), Outcome::good());
    // Precedence: reset class before others.
    t.capacity_changed(0, BlockCount(200));
    t.lun_reset(0);
    ua(n1(&TUR), 0x29, 0x03);
    ua(n1(&TUR), 0x2a, 0x09);
    assert_eq!(n1(&TUR), Outcome::good());
    // Ignored: capacity 0, unknown LUNs.
    t.capacity_changed(0, BlockCount(0));
    t.capacity_changed(77, BlockCount(5));
    t.lun_reset(77);
    assert_eq!(n1(&TUR), Outcome::good());
}

/// The lock-free fast path (a nexus with nothing pending skips the unit
/// attention and reservation checks) never hides a new condition.
#[test]
fn quiet_fast_path_sees_every_change() {
    let t = Target::new(vec![cfg(0)]).unwrap();
    let e = |n, c: &[u8], d: &[u8]| exec_data(&t, n, 0, c, d);
    let write10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let block = [0u8; 512];
    ua(e(1, &TUR, &[]), 0x29, 0);
    ua(e(2, &TUR, &[]), 0x29, 0);
    // Both quiet now (each command re-checks the other's state).
    assert_eq!(e(1, &TUR, &[]), Outcome::good());
    assert_eq!(e(1, &TUR, &[]), Outcome::good());
    // A LUN reset establishes a unit attention for a quiet nexus.
    t.lun_reset(0);
    ua(e(1, &TUR, &[]), 0x29, 0x03);
    assert_eq!(e(1, &TUR, &[]), Outcome::good());
    ua(e(2, &TUR, &[]), 0x29, 0x03);
    assert_eq!(e(2, &TUR, &[]), Outcome::good());
    // Nexus 2 registers and reserves WRITE EXCLUSIVE: quiet nexus 1's
    // writes now conflict.
    assert!(matches!(e(1, &write10, &block), Outcome::Io(_)));
    let mut p = [0u8; 24];
    p[8..16].copy_from_slice(&7u64.to_be_bytes());
    let out = |sa: u8, ty: u8| [0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
    assert_eq!(e(2, &out(0, 0), &p), Outcome::good());
    let mut p2 = [0u8; 24];
    p2[0..8].copy_from_slice(&7u64.to_be_bytes());
    assert_eq!(e(2, &out(1, 1), &p2), Outcome::good());
    assert_eq!(e(1, &write10, &block), Outcome::reservation_conflict());
    assert!(matches!(e(2, &write10, &block), Outcome::Io(_)));
    // A capacity change reaches a nexus that was quiet.
    assert_eq!(e(2, &TUR, &[]), Outcome::good());
    t.capacity_changed(0, BlockCount(4096));
    ua(e(2, &TUR, &[]), 0x2a, 0x09);
}

#[test]
fn hot_attach_and_detach() {
    let t = target();
    // A new unit: POWER ON at first contact, then served; listed by
    // REPORT LUNS; the existing units get REPORTED LUNS DATA HAS CHANGED
    // for the nexus told about it.
    let unit = t.make_unit(cfg(7)).unwrap();
    t.attach(7, unit.clone()).unwrap();
    t.luns_changed_for(N0);
    assert!(matches!(
        t.attach(7, unit.clone()),
        Err(ScsiError::DuplicateLun(7))
    ));
    assert!(matches!(
        t.attach(16384, unit.clone()),
        Err(ScsiError::LunOutOfRange(16384))
    ));
    ua(exec(&t, 7, &TUR), 0x29, 0x00);
    assert_eq!(exec(&t, 7, &TUR), Outcome::good());
    ua(exec(&t, 0, &TUR), 0x3f, 0x0e);
    assert_eq!(t.lun_numbers(), vec![0, 5, 7, 300]);
    // Shared: the same unit at another LUN number of another target is
    // one logical unit (its reservations and capacity are shared).
    let other = Target::empty(None);
    other.attach(2, unit.clone()).unwrap();
    t.capacity_changed(7, BlockCount(4096));
    assert_eq!(other.capacity(2), Some(BlockCount(4096)));
    // Detach: LOGICAL UNIT NOT SUPPORTED from then on.
    assert!(t.detach(7).is_some());
    assert!(t.detach(7).is_none());
    assert_sense(
        check(exec(&t, 7, &TUR)),
        SenseKey::IllegalRequest,
        0x25,
        0,
        [0; 3],
    );
    assert_eq!(t.lun_numbers(), vec![0, 5, 300]);
}
