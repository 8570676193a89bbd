//! Passthrough units: every command but REPORT LUNS goes to the device.

use super::*;

fn pt_target() -> Target {
    let mut pt = cfg(2);
    pt.passthrough = true;
    Target::new(vec![cfg(0), pt]).unwrap()
}

#[test]
fn passthrough_unit_hands_every_command_to_the_device() {
    let t = pt_target();
    // No POWER ON of ours: the device reports its own unit attentions.
    for (cdb, len) in [
        (&[0x00u8, 0, 0, 0, 0, 0][..], 6),            // TEST UNIT READY
        (&[0x12, 1, 0x83, 0, 0xff, 0][..], 6),        // INQUIRY VPD 83h
        (&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0][..], 10), // READ CAPACITY(10)
        (
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0][..],
            16,
        ),
        (&[0xa8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0][..], 12), // READ(12)
        (&[0x5f, 1, 0, 0, 0, 0, 0, 0, 0x18, 0][..], 10),    // PERSISTENT RESERVE OUT
    ] {
        let mut full = [0u8; 32];
        full[..cdb.len()].copy_from_slice(cdb);
        assert_eq!(
            exec(&t, 2, &full),
            Outcome::Passthrough { cdb_len: len },
            "{cdb:02x?}"
        );
    }
    // Variable-length CDB: 8 + ADDITIONAL CDB LENGTH.
    let mut var = [0u8; 32];
    var[0] = 0x7f;
    var[7] = 24;
    assert_eq!(exec(&t, 2, &var), Outcome::Passthrough { cdb_len: 32 });
    var[7] = 25;
    assert_eq!(check(exec(&t, 2, &var)), Sense::invalid_opcode());
}

#[test]
fn report_luns_and_missing_luns_stay_ours() {
    let t = pt_target();
    match exec(&t, 2, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]) {
        Outcome::Complete { data, .. } => assert_eq!(data.get(3), Some(&16)),
        o => panic!("REPORT LUNS not answered here: {o:?}"),
    }
    assert_eq!(check(exec(&t, 7, &[0; 6])), Sense::lun_not_supported());
    // The emulated neighbour is unchanged.
    let s = check(exec(&t, 0, &[0; 6]));
    assert_eq!((s.key, s.asc), (SenseKey::UnitAttention, 0x29));
}

#[test]
fn reserved_opcode_groups_are_refused() {
    let t = pt_target();
    // Group 3 (but 7Fh) is reserved.
    assert_eq!(check(exec(&t, 2, &[0x60; 32])), Sense::invalid_opcode());
    assert_eq!(
        passthrough_cdb_len(&[0x28; 6]),
        None,
        "10 bytes in a 6-byte field"
    );
    assert_eq!(passthrough_cdb_len(&[]), None);
    assert_eq!(
        passthrough_cdb_len(&[0xe0; 16]),
        None,
        "group 7 is vendor specific"
    );
}
