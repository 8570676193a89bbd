//! TEST UNIT READY, REQUEST SENSE, START STOP UNIT, REPORT LUNS, READ
//! CAPACITY, unknown opcodes, non-existent LUNs.

use super::*;

fn report_luns(select: u8, alloc: u32) -> Vec<u8> {
    let mut c = cdb(12, &[0xa0, 0, select]);
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

fn rc16(lba: u64, alloc: u32, pmi: bool) -> Vec<u8> {
    let mut c = cdb(16, &[0x9e, 0x10]);
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c[14] = u8::from(pmi);
    c
}

#[test]
fn test_unit_ready_and_start_stop() {
    let t = target();
    assert_eq!(exec(&t, 0, &[0, 0, 0, 0, 0, 0]), Outcome::good());
    assert_eq!(exec(&t, 5, &[0; 32]), Outcome::good());
    assert_invalid_field(exec(&t, 0, &[0, 0, 0, 1, 0, 0]), 3, Some(0));
    // START STOP UNIT: START, LOEJ, power conditions, IMMED: all GOOD.
    for (b1, b3, b4) in [
        (0, 0, 0x01),
        (1, 0, 0x00),
        (0, 0, 0x02),
        (0, 0, 0x03),
        (0, 0x0f, 0x50),
        (0, 0, 0x04),
    ] {
        assert_eq!(exec(&t, 0, &[0x1b, b1, 0, b3, b4, 0]), Outcome::good());
    }
    assert_invalid_field(exec(&t, 0, &[0x1b, 0x02, 0, 0, 1, 0]), 1, Some(1));
    assert_invalid_field(exec(&t, 0, &[0x1b, 0, 0, 0, 0x08, 0]), 4, Some(3));
}

#[test]
fn request_sense() {
    let t = target();
    let d = good(exec(&t, 0, &[0x03, 0, 0, 0, 252, 0]));
    assert_eq!(d, Sense::no_sense().to_fixed().to_vec());
    assert_eq!(d[0], 0x70);
    assert_eq!(d[7], 10);
    // Truncation.
    assert_eq!(good(exec(&t, 0, &[0x03, 0, 0, 0, 8, 0])), d[..8].to_vec());
    assert!(good(exec(&t, 0, &[0x03, 0, 0, 0, 0, 0])).is_empty());
    // DESC=1: descriptor format.
    let d = good(exec(&t, 0, &[0x03, 1, 0, 0, 252, 0]));
    assert_eq!(d, vec![0x72, 0, 0, 0, 0, 0, 0, 0]);
    // Non-existent LUN: GOOD, LOGICAL UNIT NOT SUPPORTED in the data.
    let d = good(exec(&t, 42, &[0x03, 0, 0, 0, 252, 0]));
    assert_eq!(d.len(), 18);
    assert_eq!((d[2], d[12], d[13]), (0x05, 0x25, 0x00));
    let d = good(exec(&t, 42, &[0x03, 1, 0, 0, 252, 0]));
    assert_eq!(d, vec![0x72, 0x05, 0x25, 0, 0, 0, 0, 0]);
}

#[test]
fn report_luns_lists_peripheral_and_flat() {
    let t = target();
    let want: Vec<u8> = [
        &[0, 0, 0, 24, 0, 0, 0, 0][..],
        &[0, 0, 0, 0, 0, 0, 0, 0],
        &[0, 5, 0, 0, 0, 0, 0, 0],
        &[0x41, 0x2c, 0, 0, 0, 0, 0, 0],
    ]
    .concat();
    for lun in [0, 5, 300, 1234] {
        for select in [0, 2] {
            assert_eq!(good(exec(&t, lun, &report_luns(select, 4096))), want);
        }
    }
    // Well-known LUNs only: none.
    assert_eq!(good(exec(&t, 0, &report_luns(1, 16))), vec![0; 8]);
    // Truncation: the list length still says 24.
    assert_eq!(good(exec(&t, 0, &report_luns(0, 16))), want[..16].to_vec());
    assert_eq!(good(exec(&t, 0, &report_luns(0, 31))), want[..31].to_vec());
    // Errors.
    assert_invalid_field(exec(&t, 0, &report_luns(0, 15)), 6, None);
    assert_invalid_field(exec(&t, 0, &report_luns(0, 0)), 6, None);
    assert_invalid_field(exec(&t, 0, &report_luns(3, 4096)), 2, None);
    assert_invalid_field(exec(&t, 0, &report_luns(0x10, 4096)), 2, None);
    // An empty target answers with an empty list.
    let empty = Target::new(vec![]).unwrap();
    assert_eq!(good(exec(&empty, 0, &report_luns(0, 16))), vec![0; 8]);
}

#[test]
fn read_capacity10() {
    let t = target();
    let d = good(exec(&t, 0, &cdb(10, &[0x25])));
    assert_eq!(d, vec![0x00, 0x1f, 0xff, 0xff, 0, 0, 0x02, 0x00]);
    let d = good(exec(&t, 5, &cdb(10, &[0x25])));
    assert_eq!(d, vec![0, 0, 0x03, 0xe7, 0, 0, 0x10, 0x00]);
    // More than 2^32 blocks: FFFFFFFFh.
    let d = good(exec(&t, 300, &cdb(10, &[0x25])));
    assert_eq!(d, vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0x02, 0x00]);
    // Exactly 2^32 blocks: last LBA FFFFFFFFh too; 2^32 - 1 blocks fits.
    for (n, last) in [(1u64 << 32, u32::MAX), ((1u64 << 32) - 1, u32::MAX - 1)] {
        let mut c = cfg(0);
        c.num_blocks = BlockCount(n);
        let t = settled(Target::new(vec![c]).unwrap());
        let d = good(exec(&t, 0, &cdb(10, &[0x25])));
        assert_eq!(d[..4], last.to_be_bytes());
    }
    // PMI=1 with an LBA: allowed. PMI=0 with an LBA: INVALID FIELD.
    assert_eq!(
        good(exec(&t, 0, &cdb(10, &[0x25, 0, 0, 0, 0, 9, 0, 0, 1]))).len(),
        8
    );
    assert_invalid_field(exec(&t, 0, &cdb(10, &[0x25, 0, 0, 0, 0, 9])), 2, None);
    assert_invalid_field(exec(&t, 0, &cdb(10, &[0x25, 0x01])), 1, Some(0));
}

#[test]
fn read_capacity16() {
    let t = target();
    let d = good(exec(&t, 300, &rc16(0, 32, false)));
    assert_eq!(d.len(), 32);
    assert_eq!(&d[..8], &(BIG - 1).to_be_bytes());
    assert_eq!(&d[8..12], &512u32.to_be_bytes());
    assert_eq!(d[12], 0x10); // RC BASIS 01b, no protection
    assert_eq!(d[13], 0); // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT
    assert_eq!(&d[14..16], &[0, 0]); // LBPME 0, LOWEST ALIGNED LBA 0
    assert!(d[16..].iter().all(|&b| b == 0));
    let d = good(exec(&t, 5, &rc16(0, 4096, false)));
    assert_eq!(&d[..12], &[0, 0, 0, 0, 0, 0, 0x03, 0xe7, 0, 0, 0x10, 0]);
    // Truncation.
    assert_eq!(
        good(exec(&t, 300, &rc16(0, 12, false))),
        good(exec(&t, 300, &rc16(0, 32, false)))[..12].to_vec()
    );
    assert!(good(exec(&t, 0, &rc16(0, 0, false))).is_empty());
    // LBA rules.
    assert_eq!(good(exec(&t, 0, &rc16(5, 32, true))).len(), 32);
    assert_invalid_field(exec(&t, 0, &rc16(5, 32, false)), 2, None);
    // Other SERVICE ACTION IN(16) actions: INVALID FIELD at the SA field.
    // LBPME/LBPRZ on the thin-provisioned LUN 0.
    let d = good(exec(&t, 0, &rc16(0, 32, false)));
    assert_eq!(&d[14..16], &[0xc0, 0]);
    let mut c = rc16(0, 32, false);
    c[1] = 0x13;
    assert_invalid_field(exec(&t, 0, &c), 1, Some(4));
}

#[test]
fn unknown_opcodes_and_missing_luns() {
    let t = target();
    let invalid_op = |o| assert_sense(check(o), SenseKey::IllegalRequest, 0x20, 0, [0; 3]);
    let no_lun = |o| assert_sense(check(o), SenseKey::IllegalRequest, 0x25, 0, [0; 3]);
    invalid_op(exec(&t, 0, &[0x04, 0, 0, 0, 0, 0])); // FORMAT UNIT
    invalid_op(exec(&t, 0, &cdb(10, &[0x34]))); // PRE-FETCH(10)
    invalid_op(exec(&t, 0, &cdb(12, &[0xa4, 0x0c]))); // MAINTENANCE OUT
    invalid_op(exec(&t, 0, &cdb(6, &[0x1e]))); // PREVENT ALLOW MEDIUM REMOVAL
    invalid_op(exec(&t, 300, &cdb(10, &[0x42]))); // UNMAP without LBPU
    invalid_op(exec(&t, 0, &[]));
    // Non-existent LUN: everything but INQUIRY, REPORT LUNS, REQUEST SENSE.
    for c in [
        cdb(6, &[0x00]),
        cdb(10, &[0x25]),
        cdb(10, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1]),
        cdb(16, &[0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        cdb(10, &[0x35]),
        cdb(16, &[0x9e, 0x10]),
        cdb(6, &[0x1b, 0, 0, 0, 1]),
        cdb(6, &[0x04]),
        vec![],
        vec![0x28],
    ] {
        no_lun(exec(&t, 16383, &c));
        no_lun(exec(&t, 1, &c));
    }
}
