//! Persistent reservations and RESERVE/RELEASE.

use std::sync::Arc;

use super::*;

fn out(sa: u8, kind: u8, rk: u64, sark: u64, b20: u8) -> (Vec<u8>, Vec<u8>) {
    let c = vec![0x5f, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut d = vec![0u8; 24];
    d[0..8].copy_from_slice(&rk.to_be_bytes());
    d[8..16].copy_from_slice(&sark.to_be_bytes());
    d[20] = b20;
    (c, d)
}

fn pr_out(t: &Target, n: u64, sa: u8, kind: u8, rk: u64, sark: u64) -> Outcome {
    let (c, d) = out(sa, kind, rk, sark, 0);
    exec_data(t, n, 0, &c, &d)
}

fn pr_in(t: &Target, n: u64, sa: u8) -> Vec<u8> {
    good(exec_data(
        t,
        n,
        0,
        &[0x5e, sa, 0, 0, 0, 0, 0, 0x10, 0, 0],
        &[],
    ))
}

fn conflict(o: Outcome) {
    assert_eq!(o, Outcome::reservation_conflict());
}

const READ: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const WRITE: [u8; 10] = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const TUR: [u8; 6] = [0; 6];

/// A target whose nexuses 1, 2 and 3 are settled on LUN 0.
fn pr_target() -> Target {
    let t = target();
    for n in 1..=3 {
        check(exec_data(&t, n, 0, &TUR, &[]));
    }
    t
}

#[test]
fn register_reserve_conflict_release() {
    let t = pr_target();
    let g = Outcome::good();
    assert_eq!(pr_out(&t, 1, 0, 0, 0, 0xa1), g);
    assert_eq!(pr_out(&t, 2, 0, 0, 0, 0xb2), g);
    // Wrong key: conflict; unregistered RESERVE: conflict.
    conflict(pr_out(&t, 1, 0, 0, 0x99, 0xa1));
    conflict(pr_out(&t, 3, 1, 1, 0, 0));
    let d = pr_in(&t, 3, 0);
    assert_eq!(&d[..8], &[0, 0, 0, 2, 0, 0, 0, 16]);
    assert_eq!(&d[8..16], &0xa1u64.to_be_bytes());
    // Write Exclusive by nexus 1.
    assert_eq!(pr_out(&t, 1, 1, 1, 0xa1, 0), g);
    assert_eq!(pr_out(&t, 1, 1, 1, 0xa1, 0), g); // again, same type
    conflict(pr_out(&t, 1, 1, 3, 0xa1, 0)); // other type
    conflict(pr_out(&t, 2, 1, 1, 0xb2, 0));
    let d = pr_in(&t, 2, 1);
    assert_eq!(&d[4..8], &16u32.to_be_bytes());
    assert_eq!(&d[8..16], &0xa1u64.to_be_bytes());
    assert_eq!(d[21], 0x01);
    // Nexus 2 (registered, WE): reads yes, writes no; holder both.
    assert!(matches!(exec_data(&t, 2, 0, &READ, &[]), Outcome::Io(_)));
    conflict(exec_data(&t, 2, 0, &WRITE, &[]));
    conflict(exec_data(&t, 3, 0, &cdb(10, &[0x35]), &[]));
    assert!(matches!(exec_data(&t, 1, 0, &WRITE, &[]), Outcome::Io(_)));
    // Always allowed: TUR, INQUIRY, PR IN; other LUNs unaffected.
    assert_eq!(exec_data(&t, 3, 0, &TUR, &[]), g);
    assert!(matches!(exec_data(&t, 0, 300, &WRITE, &[]), Outcome::Io(_)));
    // RESERVE(6) while registered: conflict.
    conflict(exec_data(&t, 1, 0, &[0x16, 0, 0, 0, 0, 0], &[]));
    // RELEASE with the wrong type: 26h/04h; by a non-holder: no effect.
    let s = check(pr_out(&t, 1, 2, 3, 0xa1, 0));
    assert_eq!(
        (s.key, s.asc, s.ascq),
        (SenseKey::IllegalRequest, 0x26, 0x04)
    );
    assert_eq!(pr_out(&t, 2, 2, 1, 0xb2, 0), g);
    conflict(exec_data(&t, 2, 0, &WRITE, &[]));
    assert_eq!(pr_out(&t, 1, 2, 1, 0xa1, 0), g);
    assert!(matches!(exec_data(&t, 2, 0, &WRITE, &[]), Outcome::Io(_)));
    // Generation: 2 registrations.
    assert_eq!(&pr_in(&t, 1, 1)[..8], &[0, 0, 0, 2, 0, 0, 0, 0]);
}

#[test]
fn exclusive_access_and_registrants_only() {
    let t = pr_target();
    pr_out(&t, 1, 0, 0, 0, 1);
    pr_out(&t, 2, 0, 0, 0, 2);
    // Exclusive Access, Registrants Only: registrants have access.
    assert_eq!(pr_out(&t, 1, 1, 6, 1, 0), Outcome::good());
    assert!(matches!(exec_data(&t, 2, 0, &WRITE, &[]), Outcome::Io(_)));
    conflict(exec_data(&t, 3, 0, &READ, &[]));
    conflict(exec_data(&t, 3, 0, &[0x1a, 0, 0x3f, 0, 255, 0], &[]));
    assert_eq!(exec_data(&t, 3, 0, &TUR, &[]), Outcome::good());
    good(exec_data(&t, 3, 0, &[0x12, 0, 0, 0, 36, 0], &[]));
    // The holder unregisters: released, nexus 2 gets RESERVATIONS RELEASED.
    assert_eq!(pr_out(&t, 1, 0, 0, 1, 0), Outcome::good());
    assert_sense(
        check(exec_data(&t, 2, 0, &TUR, &[])),
        SenseKey::UnitAttention,
        0x2a,
        0x04,
        [0; 3],
    );
    assert_eq!(pr_in(&t, 2, 1)[4..8], [0, 0, 0, 0]);
    // All registrants: every registrant holds it; READ FULL STATUS.
    pr_out(&t, 3, 6, 0, 0, 3); // REGISTER AND IGNORE EXISTING KEY
    assert_eq!(pr_out(&t, 3, 1, 8, 3, 0), Outcome::good());
    assert!(matches!(exec_data(&t, 2, 0, &WRITE, &[]), Outcome::Io(_)));
    conflict(exec_data(&t, 1, 0, &READ, &[]));
    let d = pr_in(&t, 1, 3);
    let n_desc = 2;
    let tid_len = u32::from_be_bytes(d[28..32].try_into().unwrap()) as usize;
    assert_eq!(
        u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize,
        n_desc * (24 + tid_len)
    );
    assert_eq!(&d[8..16], &2u64.to_be_bytes());
    assert_eq!((d[20], d[21]), (1, 0x08));
    assert_eq!(d[32], 0x05); // iSCSI TransportID
    assert_eq!(tid_len % 4, 0);
    assert!(d[36..].starts_with(b"iqn.2026-11.io.vhost-user-scsi:nexus-2\0"));
    // REPORT CAPABILITIES: no store, so PTPL_C 0.
    assert_eq!(pr_in(&t, 1, 2), vec![0, 8, 0x10, 0, 0xea, 0x01, 0, 0]);
}

#[test]
fn preempt_and_clear() {
    let t = pr_target();
    pr_out(&t, 1, 0, 0, 0, 1);
    pr_out(&t, 2, 0, 0, 0, 2);
    pr_out(&t, 3, 0, 0, 0, 3);
    pr_out(&t, 1, 1, 3, 1, 0); // EA by 1
                               // Preempting a key nobody has: conflict; SARK 0 without AR: 26h.
    conflict(pr_out(&t, 2, 4, 1, 2, 9));
    let s = check(pr_out(&t, 2, 4, 1, 2, 0));
    assert_eq!(
        (s.asc, s.to_fixed()[15..18].to_vec()),
        (0x26, vec![0x80, 0, 8])
    );
    // Nexus 2 preempts the holder: reservation WE for 2, 1 removed.
    assert_eq!(pr_out(&t, 2, 5, 1, 2, 1), Outcome::good());
    assert_sense(
        check(exec_data(&t, 1, 0, &TUR, &[])),
        SenseKey::UnitAttention,
        0x2a,
        0x05,
        [0; 3],
    );
    let d = pr_in(&t, 3, 1);
    assert_eq!((&d[8..16], d[21]), (&2u64.to_be_bytes()[..], 0x01));
    assert_eq!(pr_in(&t, 3, 0)[4..8], [0, 0, 0, 16]);
    // Preempt a non-holder: registration removed, reservation kept.
    assert_eq!(pr_out(&t, 2, 4, 1, 2, 3), Outcome::good());
    assert_eq!(pr_in(&t, 2, 0)[4..8], [0, 0, 0, 8]);
    // CLEAR: everything gone, the others get RESERVATIONS PREEMPTED.
    pr_out(&t, 1, 0, 0, 0, 1);
    assert_eq!(pr_out(&t, 2, 3, 0, 2, 0), Outcome::good());
    assert_sense(
        check(exec_data(&t, 1, 0, &TUR, &[])),
        SenseKey::UnitAttention,
        0x2a,
        0x03,
        [0; 3],
    );
    let d = pr_in(&t, 1, 0);
    assert_eq!(&d[4..8], &[0, 0, 0, 0]);
    assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 7);
}

#[test]
fn pr_out_field_checks() {
    let t = pr_target();
    let e = |c: &[u8], d: &[u8]| exec_data(&t, 1, 0, c, d);
    let (c, d) = out(1, 0x11, 0, 0, 0);
    assert_invalid_field(e(&c, &d), 2, Some(7)); // SCOPE
    let (c, d) = out(1, 2, 0, 0, 0);
    assert_invalid_field(e(&c, &d), 2, Some(3)); // TYPE
    let (mut c, d) = out(0, 0, 0, 1, 0);
    c[8] = 25;
    assert_sense(check(e(&c, &d)), SenseKey::IllegalRequest, 0x1a, 0, [0; 3]);
    let (c, d) = out(0, 0, 0, 1, 0);
    assert_sense(
        check(e(&c, &d[..20])),
        SenseKey::IllegalRequest,
        0x1a,
        0,
        [0; 3],
    );
    for (b20, bit) in [(0x08, 3), (0x04, 2), (0x01, 0), (0x02, 1)] {
        let (c, d) = out(0, 0, 0, 1, b20);
        assert_sense(
            check(e(&c, &d)),
            SenseKey::IllegalRequest,
            0x26,
            0,
            [0x88 | bit, 0, 20],
        );
    }
    // REGISTER AND MOVE and other service actions: not in the table.
    let (c, d) = out(7, 1, 0, 0, 0);
    assert_invalid_field(e(&c, &d), 1, Some(4));
    assert_invalid_field(e(&[0x5e, 4, 0, 0, 0, 0, 0, 0, 16, 0], &[]), 1, Some(4));
    // Nothing registered by any of these.
    assert_eq!(pr_in(&t, 1, 0)[..8], [0; 8]);
}

#[test]
fn legacy_reserve_release() {
    let t = pr_target();
    let e = |n, c: &[u8]| exec_data(&t, n, 0, c, &[]);
    assert_eq!(e(1, &[0x16, 0, 0, 0, 0, 0]), Outcome::good());
    assert_eq!(e(1, &cdb(10, &[0x56])), Outcome::good());
    conflict(e(2, &[0x16, 0, 0, 0, 0, 0]));
    conflict(e(2, &READ));
    conflict(e(2, &TUR));
    good(e(2, &[0x12, 0, 0, 0, 36, 0]));
    // PR IN/OUT conflict for everyone, even the holder.
    conflict(pr_out(&t, 1, 0, 0, 0, 5));
    conflict(exec_data(
        &t,
        1,
        0,
        &[0x5e, 0, 0, 0, 0, 0, 0, 0, 16, 0],
        &[],
    ));
    assert!(matches!(e(1, &WRITE), Outcome::Io(_)));
    // RELEASE by another nexus: no effect.
    assert_eq!(e(2, &[0x17, 0, 0, 0, 0, 0]), Outcome::good());
    conflict(e(2, &READ));
    // I_T nexus reset of the holder releases it.
    t.nexus_reset(NexusId(1));
    assert!(matches!(e(2, &READ), Outcome::Io(_)));
    check(e(1, &TUR));
    assert_eq!(e(2, &cdb(10, &[0x56])), Outcome::good());
    assert_eq!(e(2, &cdb(10, &[0x57])), Outcome::good());
    assert!(matches!(e(1, &READ), Outcome::Io(_)));
    // LUN reset releases too.
    e(2, &[0x16, 0, 0, 0, 0, 0]);
    t.lun_reset(0);
    check(e(1, &TUR));
    assert!(matches!(e(1, &READ), Outcome::Io(_)));
}

#[test]
fn aptpl_persists_through_dir_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn PrStore> = Arc::new(DirPrStore::new(dir.path().join("pr")).unwrap());
    let make = || settled(Target::with_pr_store(vec![cfg(0)], store.clone()).unwrap());
    let t = make();
    check(exec_data(&t, 7, 0, &TUR, &[]));
    let (c, d) = out(0, 0, 0, 0x77, 0x01);
    assert_eq!(exec_data(&t, 7, 0, &c, &d), Outcome::good());
    assert_eq!(pr_out(&t, 7, 1, 1, 0x77, 0), Outcome::good());
    assert_eq!(pr_in(&t, 7, 2)[2..4], [0x11, 0x01]); // PTPL_C, PTPL_A
    drop(t);
    assert_eq!(std::fs::read_dir(dir.path().join("pr")).unwrap().count(), 1);
    // A new target restores registrations and the reservation.
    let t = make();
    check(exec_data(&t, 7, 0, &TUR, &[]));
    let d = pr_in(&t, 7, 1);
    assert_eq!(&d[8..16], &0x77u64.to_be_bytes());
    conflict(exec(&t, 0, &WRITE));
    assert!(matches!(exec_data(&t, 7, 0, &WRITE, &[]), Outcome::Io(_)));
    // APTPL=0 registration: the saved state is dropped.
    let (c, d) = out(0, 0, 0x77, 0x78, 0);
    assert_eq!(exec_data(&t, 7, 0, &c, &d), Outcome::good());
    drop(t);
    let t = make();
    assert_eq!(pr_in(&t, 0, 0)[4..8], [0, 0, 0, 0]);
}

/// A store that always fails.
struct Broken;
impl PrStore for Broken {
    fn load(&self, _: &str) -> std::io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn save(&self, _: &str, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("disk full"))
    }
}

#[test]
fn save_failure_changes_nothing() {
    let t = settled(Target::with_pr_store(vec![cfg(0)], Arc::new(Broken)).unwrap());
    let (c, d) = out(0, 0, 0, 0x77, 0x01);
    let s = check(exec_data(&t, 0, 0, &c, &d));
    assert_eq!(
        (s.key, s.asc, s.ascq),
        (SenseKey::HardwareError, 0x55, 0x04)
    );
    assert_eq!(pr_in(&t, 0, 0)[..8], [0; 8]);
    // Without APTPL nothing is saved, so it works.
    assert_eq!(pr_out(&t, 0, 0, 0, 0, 0x77), Outcome::good());
}
