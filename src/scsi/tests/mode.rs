//! MODE SENSE(6)/(10): headers, block descriptors, pages, PC values.

use super::*;

const CACHING_WCE: [u8; 20] = {
    let mut p = [0u8; 20];
    p[0] = 0x08;
    p[1] = 0x12;
    p[2] = 0x04;
    p
};
const CONTROL: [u8; 12] = [0x0a, 0x0a, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];

fn ms6(b1: u8, b2: u8, sub: u8, alloc: u8) -> Vec<u8> {
    vec![0x1a, b1, b2, sub, alloc, 0]
}

fn ms10(b1: u8, b2: u8, sub: u8, alloc: u16) -> Vec<u8> {
    let [hi, lo] = alloc.to_be_bytes();
    vec![0x5a, b1, b2, sub, 0, 0, 0, hi, lo, 0]
}

#[test]
fn mode_sense6_caching_with_block_descriptor() {
    let d = good(exec(&target(), 0, &ms6(0, 0x08, 0, 255)));
    assert_eq!(d.len(), 4 + 8 + 20);
    assert_eq!(&d[..4], &[31, 0, 0x10, 8]);
    assert_eq!(&d[4..12], &[0x00, 0x20, 0x00, 0x00, 0, 0x00, 0x02, 0x00]);
    assert_eq!(&d[12..], &CACHING_WCE);
}

#[test]
fn mode_sense6_dbd_and_readonly() {
    let d = good(exec(&target(), 5, &ms6(0x08, 0x0a, 0, 255)));
    assert_eq!(d.len(), 4 + 12);
    // WP | DPOFUA, no block descriptor.
    assert_eq!(&d[..4], &[15, 0, 0x90, 0]);
    assert_eq!(&d[4..], &CONTROL);
}

#[test]
fn mode_sense_short_descriptor_caps_block_count() {
    let d = good(exec(&target(), 300, &ms6(0, 0x08, 0, 255)));
    assert_eq!(&d[4..12], &[0xff, 0xff, 0xff, 0xff, 0, 0, 0x02, 0]);
    let d = good(exec(&target(), 5, &ms10(0, 0x08, 0, 255)));
    // 4096-byte blocks, 1000 of them.
    assert_eq!(&d[8..16], &[0, 0, 0x03, 0xe8, 0, 0, 0x10, 0]);
}

#[test]
fn mode_sense10_all_pages_long_descriptor() {
    let d = good(exec(&target(), 300, &ms10(0x10, 0x3f, 0, 1000)));
    let total = 8 + 16 + 20 + 12;
    assert_eq!(d.len(), total);
    assert_eq!(&d[..8], &[0, (total - 2) as u8, 0, 0x10, 0x01, 0, 0, 16]);
    assert_eq!(&d[8..16], &BIG.to_be_bytes());
    assert_eq!(&d[16..24], &[0, 0, 0, 0, 0, 0, 0x02, 0x00]);
    assert_eq!(&d[24..44], &CACHING_WCE);
    assert_eq!(&d[44..], &CONTROL);
}

#[test]
fn mode_sense10_variants() {
    let t = target();
    // Short descriptor without LLBAA.
    let d = good(exec(&t, 0, &ms10(0, 0x3f, 0, 1000)));
    assert_eq!(&d[..8], &[0, 46, 0, 0x10, 0, 0, 0, 8]);
    // DBD with LLBAA: no descriptor, LONGLBA 0.
    let d = good(exec(&t, 0, &ms10(0x18, 0x3f, 0xff, 1000)));
    assert_eq!(&d[..8], &[0, 38, 0, 0x10, 0, 0, 0, 0]);
    assert_eq!(d.len(), 40);
    // MODE SENSE(6) with 3Fh/FFh.
    let d = good(exec(&t, 0, &ms6(0x08, 0x3f, 0xff, 255)));
    assert_eq!(d.len(), 36);
    assert_eq!(d[0], 35);
}

#[test]
fn page_control_values() {
    let t = target();
    // Current and default: WCE=1.
    for pc in [0u8, 2] {
        let d = good(exec(&t, 0, &ms6(0x08, (pc << 6) | 0x3f, 0, 255)));
        assert_eq!(&d[4..24], &CACHING_WCE, "pc {pc}");
        assert_eq!(&d[24..], &CONTROL, "pc {pc}");
    }
    // Changeable: only WCE.
    let d = good(exec(&t, 0, &ms6(0x08, 0x40 | 0x3f, 0, 255)));
    assert_eq!(&d[4..7], &[0x08, 0x12, 0x04]);
    assert!(d[7..24].iter().all(|&b| b == 0));
    assert_eq!(&d[24..26], &[0x0a, 0x0a]);
    assert!(d[26..].iter().all(|&b| b == 0));
    // Saved: SAVING PARAMETERS NOT SUPPORTED, pointing at PC.
    for c in [ms6(0, 0xc8, 0, 255), ms10(0, 0xc8, 0, 255)] {
        let s = check(exec(&t, 0, &c));
        assert_sense(s, SenseKey::IllegalRequest, 0x39, 0, [0xcf, 0, 2]);
    }
}

#[test]
fn mode_sense_errors() {
    let t = target();
    // Unknown page.
    assert_invalid_field(exec(&t, 0, &ms6(0, 0x01, 0, 255)), 2, Some(5));
    assert_invalid_field(exec(&t, 0, &ms10(0, 0x1c, 0, 255)), 2, Some(5));
    // Subpages.
    assert_invalid_field(exec(&t, 0, &ms6(0, 0x08, 0x01, 255)), 3, None);
    assert_invalid_field(exec(&t, 0, &ms6(0, 0x08, 0xff, 255)), 3, None);
    assert_invalid_field(exec(&t, 0, &ms10(0, 0x3f, 0x01, 255)), 3, None);
    // Reserved bits: MODE SENSE(6) byte 1 bit 4 (LLBAA exists only in (10)).
    assert_invalid_field(exec(&t, 0, &ms6(0x10, 0x08, 0, 255)), 1, Some(4));
    assert_invalid_field(exec(&t, 0, &ms10(0x01, 0x08, 0, 255)), 1, Some(0));
    // Non-existent LUN.
    let s = check(exec(&t, 9, &ms6(0, 0x08, 0, 255)));
    assert_sense(s, SenseKey::IllegalRequest, 0x25, 0, [0; 3]);
}

#[test]
fn mode_sense_truncation() {
    let t = target();
    let full = good(exec(&t, 0, &ms10(0, 0x3f, 0, 1000)));
    for alloc in [0u16, 1, 2, 8, 9, 30, 55, 56, 57] {
        let d = good(exec(&t, 0, &ms10(0, 0x3f, 0, alloc)));
        assert_eq!(&d[..], &full[..usize::from(alloc).min(full.len())]);
    }
    let d = good(exec(&t, 0, &ms6(0, 0x08, 0, 4)));
    assert_eq!(d, vec![31, 0, 0x10, 8]);
    assert!(good(exec(&t, 0, &ms6(0, 0x08, 0, 0))).is_empty());
}
