//! INQUIRY: standard data, VPD pages, errors, non-existent LUNs.

use super::*;

fn inq(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
    let [hi, lo] = alloc.to_be_bytes();
    vec![0x12, u8::from(evpd), page, hi, lo, 0]
}

#[test]
fn standard_data() {
    let t = target();
    let d = good(exec(&t, 0, &inq(false, 0, 255)));
    assert_eq!(d.len(), 74);
    assert_eq!(&d[..8], &[0x00, 0x00, 0x07, 0x12, 69, 0, 0, 0x02]);
    assert_eq!(&d[8..16], b"VUSCSI  ");
    assert_eq!(&d[16..32], b"vhost-user-scsi ");
    assert_eq!(&d[32..36], b"0.1.");
    assert_eq!(&d[58..64], &[0x00, 0xa0, 0x05, 0xc0, 0x06, 0x00]);
    assert!(d[36..58].iter().all(|&b| b == 0));
    assert!(d[64..].iter().all(|&b| b == 0));
}

#[test]
fn allocation_length_truncates() {
    let t = target();
    let full = good(exec(&t, 0, &inq(false, 0, 255)));
    for alloc in [0u16, 1, 5, 36, 73, 74, 75, 1000, u16::MAX] {
        let d = good(exec(&t, 0, &inq(false, 0, alloc)));
        assert_eq!(d.len(), usize::from(alloc).min(74), "alloc {alloc}");
        assert_eq!(&d[..], &full[..d.len()]);
    }
    // VPD pages too.
    let d = good(exec(&t, 0, &inq(true, 0x83, 6)));
    assert_eq!(d, vec![0x00, 0x83, 0x00, 20 + 4 + 12, 0x01, 0x03]);
    assert!(good(exec(&t, 0, &inq(true, 0xb0, 0))).is_empty());
}

#[test]
fn inquiry_errors() {
    let t = target();
    // EVPD=0 with a page code.
    assert_invalid_field(exec(&t, 0, &inq(false, 0x80, 255)), 2, None);
    // Unknown VPD page.
    assert_invalid_field(exec(&t, 0, &inq(true, 0x81, 255)), 2, None);
    assert_invalid_field(exec(&t, 0, &inq(true, 0xff, 255)), 2, None);
    // CmdDt (byte 1 bit 1).
    assert_invalid_field(exec(&t, 0, &[0x12, 0x02, 0, 0, 255, 0]), 1, Some(1));
    // NACA in the control byte.
    assert_invalid_field(exec(&t, 0, &[0x12, 0, 0, 0, 255, 0x04]), 5, Some(2));
}

#[test]
fn vpd_supported_pages() {
    let d = good(exec(&target(), 0, &inq(true, 0, 255)));
    assert_eq!(d, vec![0, 0, 0, 6, 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
}

#[test]
fn vpd_every_listed_page_answers_with_its_length() {
    let t = target();
    let list = good(exec(&t, 0, &inq(true, 0, 255)));
    for &page in &list[4..] {
        let d = good(exec(&t, 0, &inq(true, page, u16::MAX)));
        assert_eq!(d[0], 0, "page {page:#x}");
        assert_eq!(d[1], page);
        let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
        assert_eq!(d.len(), len + 4, "page {page:#x}");
    }
}

#[test]
fn vpd_unit_serial() {
    let d = good(exec(&target(), 5, &inq(true, 0x80, 255)));
    assert_eq!(d, b"\x00\x80\x00\x04SER5".to_vec());
}

#[test]
fn vpd_device_identification() {
    let t = target();
    let d = good(exec(&t, 0, &inq(true, 0x83, 255)));
    // NAA designator: binary, LU association, type 3, 16 bytes.
    assert_eq!(&d[4..8], &[0x01, 0x03, 0x00, 16]);
    let naa = &d[8..24];
    assert_eq!(naa, &naa_designator("/images/disk0.img"));
    assert_eq!(naa[0] >> 4, 6);
    // T10 vendor ID designator: ASCII, type 1, vendor + serial.
    assert_eq!(&d[24..28], &[0x02, 0x01, 0x00, 12]);
    assert_eq!(&d[28..], b"VUSCSI  SER0");
    assert_eq!(u16::from_be_bytes([d[2], d[3]]) as usize, d.len() - 4);
    // Stable across targets, distinct across identities.
    assert_eq!(d, good(exec(&target(), 0, &inq(true, 0x83, 255))));
    let other = good(exec(&t, 300, &inq(true, 0x83, 255)));
    assert_ne!(&other[8..24], naa);
}

#[test]
fn vpd_device_identification_long_serial_fits() {
    let mut c = cfg(0);
    c.serial = "S".repeat(252);
    let t = Target::new(vec![c]).unwrap();
    let d = good(exec(&t, 0, &inq(true, 0x83, u16::MAX)));
    assert_eq!(d[27], 255);
    assert_eq!(d.len(), 4 + 20 + 4 + 255);
    let d = good(exec(&t, 0, &inq(true, 0x80, u16::MAX)));
    assert_eq!(d.len(), 4 + 252);
}

#[test]
fn vpd_block_limits() {
    let t = target();
    // LUN 300: no unmap.
    let d = good(exec(&t, 300, &inq(true, 0xb0, 255)));
    assert_eq!(d.len(), 64);
    assert_eq!(&d[..4], &[0, 0xb0, 0, 0x3c]);
    assert_eq!(d[4], 1); // WSNZ
    assert_eq!(d[5], 1); // MAXIMUM COMPARE AND WRITE LENGTH
    assert_eq!(&d[6..8], &[0, 1]); // OPTIMAL TRANSFER LENGTH GRANULARITY
    assert_eq!(&d[8..12], &0u32.to_be_bytes());
    assert_eq!(&d[12..16], &256u32.to_be_bytes());
    assert!(
        d[16..].iter().all(|&b| b == 0),
        "no unmap/write same limits"
    );
    // LUN 0: unmap limits, optimal unmap granularity 1.
    let d = good(exec(&t, 0, &inq(true, 0xb0, 255)));
    assert_eq!(&d[8..12], &2048u32.to_be_bytes());
    assert_eq!(&d[20..24], &(4u32 * 1024 * 1024).to_be_bytes());
    assert_eq!(&d[24..28], &64u32.to_be_bytes());
    assert_eq!(&d[28..32], &1u32.to_be_bytes());
    assert_eq!(&d[32..36], &[0; 4]); // UGAVALID 0
    assert_eq!(&d[36..44], &[0; 8]); // MAXIMUM WRITE SAME LENGTH: none
                                     // Read-only LUN 5: no COMPARE AND WRITE.
    let d = good(exec(&t, 5, &inq(true, 0xb0, 255)));
    assert_eq!(d[5], 0);
}

#[test]
fn vpd_block_device_characteristics() {
    let t = target();
    let d = good(exec(&t, 0, &inq(true, 0xb1, 255)));
    assert_eq!(d.len(), 64);
    assert_eq!(&d[..6], &[0, 0xb1, 0, 0x3c, 0, 1]);
    assert!(d[6..].iter().all(|&b| b == 0));
    // LUN 5 is rotational: rate 0 (not reported).
    let d = good(exec(&t, 5, &inq(true, 0xb1, 255)));
    assert_eq!(&d[4..6], &[0, 0]);
}

#[test]
fn vpd_logical_block_provisioning() {
    let t = target();
    // LBPU, LBPWS, LBPWS10, LBPRZ 001b; provisioning type 2 (thin).
    let d = good(exec(&t, 0, &inq(true, 0xb2, 255)));
    assert_eq!(d, vec![0, 0xb2, 0, 4, 0, 0xe4, 2, 0]);
    let d = good(exec(&t, 300, &inq(true, 0xb2, 255)));
    assert_eq!(d, vec![0, 0xb2, 0, 4, 0, 0, 0, 0]);
}

#[test]
fn nonexistent_lun() {
    let t = target();
    let d = good(exec(&t, 7, &inq(false, 0, 255)));
    assert_eq!(d.len(), 74);
    assert_eq!(d[0], 0x7f);
    assert_eq!(&d[1..], &good(exec(&t, 0, &inq(false, 0, 255)))[1..]);
    let d = good(exec(&t, 7, &inq(true, 0, 255)));
    assert_eq!(d, vec![0x7f, 0, 0, 1, 0]);
    assert_invalid_field(exec(&t, 7, &inq(true, 0x80, 255)), 2, None);
    assert_invalid_field(exec(&t, 7, &inq(true, 0x83, 255)), 2, None);
    assert_invalid_field(exec(&t, 7, &inq(false, 1, 255)), 2, None);
}
