//! MODE SELECT(6)/(10): WCE changes, everything else must match.

use super::*;

fn msel6(b1: u8, len: u8) -> Vec<u8> {
    vec![0x15, b1, 0, 0, len, 0]
}

fn msel10(b1: u8, len: u16) -> Vec<u8> {
    let [hi, lo] = len.to_be_bytes();
    vec![0x55, b1, 0, 0, 0, 0, 0, hi, lo, 0]
}

fn caching(wce: bool) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x08;
    p[1] = 0x12;
    if wce {
        p[2] = 0x04;
    }
    p
}

/// MODE SELECT(6) list: header, optional short descriptor, pages.
fn list6(desc: Option<[u8; 8]>, pages: &[Vec<u8>]) -> Vec<u8> {
    let mut d = vec![0, 0, 0, if desc.is_some() { 8 } else { 0 }];
    if let Some(b) = desc {
        d.extend_from_slice(&b);
    }
    for p in pages {
        d.extend_from_slice(p);
    }
    d
}

fn wce_of(t: &Target, nexus: u64) -> bool {
    let d = good(exec_data(t, nexus, 0, &[0x1a, 0x08, 0x08, 0, 255, 0], &[]));
    d[6] & 0x04 != 0
}

fn write10(fua: bool) -> Vec<u8> {
    cdb(10, &[0x2a, if fua { 0x08 } else { 0 }, 0, 0, 0, 0, 0, 0, 1])
}

#[test]
fn wce_round_trip_makes_writes_fua() {
    let t = target();
    // Another nexus, settled.
    check(exec_data(&t, 9, 0, &[0; 6], &[]));
    let l = list6(None, &[caching(false)]);
    assert_eq!(
        exec_data(&t, 0, 0, &msel6(0x10, l.len() as u8), &l),
        Outcome::good()
    );
    assert!(!wce_of(&t, 0));
    match exec(&t, 0, &write10(false)) {
        Outcome::Io(io) => assert!(io.fua),
        o => panic!("{o:?}"),
    }
    // The other nexus: MODE PARAMETERS CHANGED once; not the sender.
    let s = check(exec_data(&t, 9, 0, &[0; 6], &[]));
    assert_sense(s, SenseKey::UnitAttention, 0x2a, 0x01, [0; 3]);
    assert_eq!(exec_data(&t, 9, 0, &[0; 6], &[]), Outcome::good());
    // Reads are unaffected; WRITE SAME and CAW get fua too.
    match exec(&t, 0, &cdb(10, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1])) {
        Outcome::Io(io) => assert!(!io.fua),
        o => panic!("{o:?}"),
    }
    match exec_data(
        &t,
        0,
        0,
        &cdb(16, &[0x93, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        &[],
    ) {
        Outcome::WriteSame { fua, .. } => assert!(fua),
        o => panic!("{o:?}"),
    }
    // Back to WCE=1 with MODE SELECT(10) and a matching long descriptor.
    let mut l = vec![0, 0, 0, 0, 0x01, 0, 0, 16];
    l.extend_from_slice(&(2u64 * 1024 * 1024).to_be_bytes());
    l.extend_from_slice(&[0, 0, 0, 0, 0, 0, 2, 0]);
    l.extend(caching(true));
    assert_eq!(
        exec_data(&t, 0, 0, &msel10(0x10, l.len() as u16), &l),
        Outcome::good()
    );
    assert!(wce_of(&t, 0));
    match exec(&t, 0, &write10(false)) {
        Outcome::Io(io) => assert!(!io.fua),
        o => panic!("{o:?}"),
    }
    // The change back is a change too; then unchanged parameters: no UA.
    check(exec_data(&t, 9, 0, &[0; 6], &[]));
    assert_eq!(exec_data(&t, 9, 0, &[0; 6], &[]), Outcome::good());
    let l = list6(None, &[caching(true)]);
    assert_eq!(
        exec_data(&t, 0, 0, &msel6(0x10, l.len() as u8), &l),
        Outcome::good()
    );
    assert_eq!(exec_data(&t, 9, 0, &[0; 6], &[]), Outcome::good());
    // Default stays WCE=1; LUN reset restores it.
    let l = list6(None, &[caching(false)]);
    exec_data(&t, 0, 0, &msel6(0x10, l.len() as u8), &l);
    t.lun_reset(0);
    check(exec(&t, 0, &[0; 6]));
    assert!(wce_of(&t, 0));
}

#[test]
fn mode_select_errors() {
    let t = target();
    let ok = list6(Some([0, 0x20, 0, 0, 0, 0, 2, 0]), &[caching(false)]);
    let n = ok.len() as u8;
    // PF=0, SP=1.
    assert_invalid_field(exec_data(&t, 0, 0, &msel6(0, n), &ok), 1, Some(4));
    assert_invalid_field(exec_data(&t, 0, 0, &msel6(0x11, n), &ok), 1, Some(0));
    // Length 0: no-op.
    assert_eq!(exec_data(&t, 0, 0, &msel6(0x10, 0), &[]), Outcome::good());
    let len_err = |o| assert_sense(check(o), SenseKey::IllegalRequest, 0x1a, 0, [0; 3]);
    // Shorter than the header, data-out shorter than the length, cut page.
    len_err(exec_data(&t, 0, 0, &msel6(0x10, 3), &ok));
    len_err(exec_data(&t, 0, 0, &msel6(0x10, n), &ok[..10]));
    len_err(exec_data(&t, 0, 0, &msel6(0x10, n - 1), &ok));
    len_err(exec_data(&t, 0, 0, &msel6(0x10, 8), &ok));
    // Bad fields: (list, byte, bit).
    let param = |l: Vec<u8>, byte: u16, bit: Option<u8>| {
        let s = check(exec_data(&t, 0, 0, &msel6(0x10, l.len() as u8), &l));
        let b15 = 0x80 | bit.map_or(0, |b| 0x08 | b);
        assert_sense(s, SenseKey::IllegalRequest, 0x26, 0, [b15, 0, byte as u8]);
    };
    let with = |i: usize, v: u8| {
        let mut l = ok.clone();
        l[i] = v;
        l
    };
    param(with(0, 1), 0, None); // MODE DATA LENGTH
    param(with(1, 1), 1, None); // MEDIUM TYPE
    param(with(2, 0x01), 2, Some(0)); // device-specific reserved bit
    param(with(3, 16), 3, None); // block descriptor length
    param(with(4, 0x11), 4, None); // block count != current
    param(with(8, 1), 8, None); // reserved
    param(with(10, 0x10), 9, None); // block length 4096 != 512
    param(with(12, 0x88), 12, Some(7)); // PS
    param(with(12, 0x48), 12, Some(6)); // SPF
    param(with(12, 0x01), 12, Some(5)); // unknown page
    param(with(13, 0x11), 13, None); // page length
    param(with(14, 0x05), 14, Some(0)); // RCD not changeable
    param(with(20, 0xff), 20, Some(7)); // other caching bytes
                                        // Control page: must match.
    let mut ctl = vec![0x0a, 0x0a, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
    let l = list6(None, &[ctl.clone()]);
    assert_eq!(
        exec_data(&t, 0, 0, &msel6(0x10, l.len() as u8), &l),
        Outcome::good()
    );
    ctl[2] = 0x04; // D_SENSE
    param(list6(None, &[ctl]), 6, Some(2));
    // Nothing changed by any failure above.
    assert!(wce_of(&t, 0));
    // Zero block count and length are accepted.
    let l = list6(Some([0; 8]), &[caching(true)]);
    assert_eq!(
        exec_data(&t, 0, 0, &msel6(0x10, l.len() as u8), &l),
        Outcome::good()
    );
    // MODE SELECT(10) header checks.
    let mut l = vec![0, 0, 0, 0, 0x02, 0, 0, 0];
    l.extend(caching(true));
    let s = check(exec_data(&t, 0, 0, &msel10(0x10, l.len() as u16), &l));
    assert_sense(s, SenseKey::IllegalRequest, 0x26, 0, [0x89, 0, 4]);
}
