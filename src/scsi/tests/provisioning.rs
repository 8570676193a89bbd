//! UNMAP, WRITE SAME, VERIFY, WRITE AND VERIFY, COMPARE AND WRITE, GET LBA
//! STATUS.

use super::*;
use crate::units::{ByteCount, ByteOffset};

fn range(off_blocks: u64, blocks: u64, bs: u64) -> ByteRange {
    ByteRange {
        offset: ByteOffset(off_blocks * bs),
        len: ByteCount(blocks * bs),
    }
}

fn unmap_cdb(b1: u8, len: u16) -> Vec<u8> {
    let [hi, lo] = len.to_be_bytes();
    vec![0x42, b1, 0, 0, 0, 0, 0, hi, lo, 0]
}

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let bd = (descs.len() * 16) as u16;
    let mut d = Vec::new();
    d.extend_from_slice(&(bd + 6).to_be_bytes());
    d.extend_from_slice(&bd.to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for (lba, n) in descs {
        d.extend_from_slice(&lba.to_be_bytes());
        d.extend_from_slice(&n.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
    }
    d
}

#[track_caller]
fn param_err(o: Outcome, byte: u16) {
    let [hi, lo] = byte.to_be_bytes();
    assert_sense(check(o), SenseKey::IllegalRequest, 0x26, 0, [0x80, hi, lo]);
}

#[track_caller]
fn len_err(o: Outcome) {
    assert_sense(check(o), SenseKey::IllegalRequest, 0x1a, 0, [0; 3]);
}

#[track_caller]
fn sense_is(o: Outcome, key: SenseKey, asc: u8) {
    let s = check(o);
    assert_eq!((s.key, s.asc, s.ascq), (key, asc, 0), "{s:?}");
}

#[test]
fn unmap() {
    let t = target();
    let u = |c: &[u8], d: &[u8]| exec_data(&t, 0, 0, c, d);
    let l = unmap_list(&[(0, 8), (100, 0), (2 * 1024 * 1024 - 1, 1)]);
    assert_eq!(
        u(&unmap_cdb(0, l.len() as u16), &l),
        Outcome::Unmap {
            ranges: vec![range(0, 8, 512), range(2 * 1024 * 1024 - 1, 1, 512)]
        }
    );
    // Length 0, only empty descriptors, a trailing partial descriptor.
    assert_eq!(u(&unmap_cdb(0, 0), &[]), Outcome::good());
    let l = unmap_list(&[(5, 0)]);
    assert_eq!(u(&unmap_cdb(0, l.len() as u16), &l), Outcome::good());
    let mut l = unmap_list(&[(5, 1)]);
    l.extend_from_slice(&[0; 10]);
    l[3] += 10;
    l[1] += 10;
    assert!(
        matches!(u(&unmap_cdb(0, l.len() as u16), &l), Outcome::Unmap { ranges } if ranges.len() == 1)
    );
    // Errors.
    let l = unmap_list(&[(0, 8)]);
    let n = l.len() as u16;
    assert_invalid_field(u(&unmap_cdb(1, n), &l), 1, Some(0)); // ANCHOR
    len_err(u(&unmap_cdb(0, 7), &l));
    len_err(u(&unmap_cdb(0, n), &l[..20])); // short data-out
    len_err(u(&unmap_cdb(0, n - 1), &l[..23])); // descriptors beyond the list
    let mut bad = l.clone();
    bad[5] = 1;
    param_err(u(&unmap_cdb(0, n), &bad), 5);
    let mut bad = l.clone();
    bad[20] = 1;
    param_err(u(&unmap_cdb(0, n), &bad), 20);
    let big = unmap_list(&[(0, 4 * 1024 * 1024 + 1)]);
    param_err(u(&unmap_cdb(0, n), &big), 16);
    let many = unmap_list(&[(0, 1); 65]);
    param_err(u(&unmap_cdb(0, many.len() as u16), &many), 2);
    let out = unmap_list(&[(0, 1), (2 * 1024 * 1024, 1)]);
    sense_is(
        u(&unmap_cdb(0, out.len() as u16), &out),
        SenseKey::IllegalRequest,
        0x21,
    );
    let ovf = unmap_list(&[(u64::MAX, 2)]);
    sense_is(u(&unmap_cdb(0, n), &ovf), SenseKey::IllegalRequest, 0x21);
    // No unmap support: INVALID COMMAND OPERATION CODE; read-only: 27h.
    sense_is(
        exec_data(&t, 0, 300, &unmap_cdb(0, n), &l),
        SenseKey::IllegalRequest,
        0x20,
    );
    let mut ro = cfg(1);
    ro.unmap = true;
    ro.readonly = true;
    let t2 = settled(Target::new(vec![ro]).unwrap());
    sense_is(
        exec_data(&t2, 0, 1, &unmap_cdb(0, n), &l),
        SenseKey::DataProtect,
        0x27,
    );
}

fn ws10(b1: u8, lba: u32, n: u16) -> Vec<u8> {
    let mut c = cdb(10, &[0x41, b1]);
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&n.to_be_bytes());
    c
}

fn ws16(b1: u8, lba: u64, n: u32) -> Vec<u8> {
    let mut c = cdb(16, &[0x93, b1]);
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&n.to_be_bytes());
    c
}

#[test]
fn write_same() {
    let t = target();
    let block: Vec<u8> = (0..512).map(|i| i as u8).collect();
    assert_eq!(
        exec_data(&t, 0, 0, &ws10(0x08, 10, 4), &block),
        Outcome::WriteSame {
            range: range(10, 4, 512),
            block: block.clone(),
            unmap: true,
            fua: false
        }
    );
    // NDOB: zeros, nothing read. UNMAP ignored where unmap is unsupported.
    assert_eq!(
        exec_data(&t, 0, 300, &ws16(0x09, BIG - 1, 1), &[]),
        Outcome::WriteSame {
            range: range(BIG - 1, 1, 512),
            block: vec![0; 512],
            unmap: false,
            fua: false
        }
    );
    let e = |c: &[u8]| exec_data(&t, 0, 0, c, &block);
    assert_invalid_field(e(&ws10(0x20, 0, 1)), 1, Some(7));
    assert_invalid_field(e(&ws10(0x10, 0, 1)), 1, Some(4));
    assert_invalid_field(e(&ws10(0x04, 0, 1)), 1, Some(2));
    assert_invalid_field(e(&ws10(0x02, 0, 1)), 1, Some(1));
    assert_invalid_field(e(&ws16(0x02, 0, 1)), 1, Some(1));
    assert_invalid_field(e(&ws10(0, 0, 0)), 7, None);
    assert_invalid_field(e(&ws16(0, 0, 0)), 10, None);
    sense_is(
        e(&ws16(0, 2 * 1024 * 1024, 1)),
        SenseKey::IllegalRequest,
        0x21,
    );
    sense_is(e(&ws16(0, u64::MAX, 2)), SenseKey::IllegalRequest, 0x21);
    len_err(exec_data(&t, 0, 0, &ws10(0, 0, 1), &block[..511]));
    sense_is(
        exec_data(&t, 0, 5, &ws16(1, 0, 1), &[]),
        SenseKey::DataProtect,
        0x27,
    );
    // A WRITE SAME limit.
    let mut c = cfg(0);
    c.max_write_same_blocks = 8;
    let t2 = settled(Target::new(vec![c]).unwrap());
    assert!(matches!(
        exec_data(&t2, 0, 0, &ws16(1, 0, 8), &[]),
        Outcome::WriteSame { .. }
    ));
    assert_invalid_field(exec_data(&t2, 0, 0, &ws16(1, 0, 9), &[]), 10, None);
}

fn v10(op: u8, b1: u8, lba: u32, n: u16) -> Vec<u8> {
    let mut c = cdb(10, &[op, b1]);
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&n.to_be_bytes());
    c
}

fn v16(op: u8, b1: u8, lba: u64, n: u32) -> Vec<u8> {
    let mut c = cdb(16, &[op, b1]);
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&n.to_be_bytes());
    c
}

#[test]
fn verify_and_write_verify() {
    let t = target();
    let data: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();
    let e = |lun, c: &[u8], d: &[u8]| exec_data(&t, 0, lun, c, d);
    assert_eq!(
        e(0, &v10(0x2f, 0, 3, 2), &[]),
        Outcome::Verify {
            range: range(3, 2, 512),
            expected: None
        }
    );
    assert_eq!(
        e(0, &v16(0x8f, 0x02, 3, 2), &data),
        Outcome::Verify {
            range: range(3, 2, 512),
            expected: Some(data.clone())
        }
    );
    // BYTCHK 11b: one block, expanded.
    assert_eq!(
        e(0, &v10(0x2f, 0x06, 3, 2), &data),
        Outcome::Verify {
            range: range(3, 2, 512),
            expected: Some(data[..512].repeat(2))
        }
    );
    assert_eq!(e(0, &v10(0x2f, 0x02, 3, 0), &[]), Outcome::good());
    assert_invalid_field(e(0, &v10(0x2f, 0x04, 3, 1), &data), 1, Some(2));
    assert_invalid_field(e(0, &v10(0x2f, 0x20, 3, 1), &data), 1, Some(7));
    assert_invalid_field(e(0, &v16(0x8f, 0, 0, 2049), &[]), 10, None);
    sense_is(
        e(0, &v16(0x8f, 0, u64::MAX, 1), &[]),
        SenseKey::IllegalRequest,
        0x21,
    );
    len_err(e(0, &v10(0x2f, 0x02, 3, 2), &data[..1000]));
    // Verify works on a read-only LUN.
    assert!(matches!(
        e(5, &v10(0x2f, 0, 0, 1), &[]),
        Outcome::Verify { .. }
    ));
    // WRITE AND VERIFY.
    assert_eq!(
        e(0, &v16(0x8e, 0x02, 3, 2), &data),
        Outcome::WriteVerify {
            range: range(3, 2, 512),
            data: data.clone(),
            fua: false
        }
    );
    assert!(matches!(
        e(0, &v10(0x2e, 0, 3, 2), &data),
        Outcome::WriteVerify { .. }
    ));
    assert_eq!(e(0, &v10(0x2e, 0, 3, 0), &[]), Outcome::good());
    assert_invalid_field(e(0, &v10(0x2e, 0x04, 3, 1), &data), 1, Some(2));
    assert_invalid_field(e(0, &v10(0x2e, 0x06, 3, 1), &data), 1, Some(2));
    assert_invalid_field(e(0, &v10(0x2e, 0x40, 3, 1), &data), 1, Some(7));
    assert_invalid_field(e(0, &v10(0x2e, 0, 3, 2049), &data), 7, None);
    sense_is(
        e(5, &v10(0x2e, 0, 0, 1), &data),
        SenseKey::DataProtect,
        0x27,
    );
    len_err(e(0, &v10(0x2e, 0, 3, 2), &data[..1023]));
}

fn caw(b1: u8, lba: u64, n: u8) -> Vec<u8> {
    let mut c = cdb(16, &[0x89, b1]);
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = n;
    c
}

#[test]
fn compare_and_write() {
    let t = target();
    let data: Vec<u8> = (0..1024).map(|i| (i * 3) as u8).collect();
    let e = |lun, c: &[u8], d: &[u8]| exec_data(&t, 0, lun, c, d);
    assert_eq!(
        e(0, &caw(0x08, 7, 1), &data),
        Outcome::CompareAndWrite {
            range: range(7, 1, 512),
            compare: data[..512].to_vec(),
            write: data[512..].to_vec(),
            fua: true
        }
    );
    assert_eq!(e(0, &caw(0, 7, 0), &[]), Outcome::good());
    assert_invalid_field(e(0, &caw(0, 7, 2), &data), 13, None);
    assert_invalid_field(e(0, &caw(0x20, 7, 1), &data), 1, Some(7));
    assert_invalid_field(e(0, &caw(0x04, 7, 1), &data), 1, Some(2));
    sense_is(
        e(0, &caw(0, 2 * 1024 * 1024, 1), &data),
        SenseKey::IllegalRequest,
        0x21,
    );
    sense_is(e(5, &caw(0, 0, 1), &data), SenseKey::DataProtect, 0x27);
    len_err(e(0, &caw(0, 7, 1), &data[..1000]));
    let m = miscompare_sense(37);
    assert_eq!(m.to_fixed()[..8], [0xf0, 0, 0x0e, 0, 0, 0, 37, 10]);
    assert_eq!((m.asc, m.ascq), (0x1d, 0));
}

fn gls(lba: u64, alloc: u32, b14: u8) -> Vec<u8> {
    let mut c = cdb(16, &[0x9e, 0x12]);
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c[14] = b14;
    c
}

#[test]
fn get_lba_status() {
    let t = target();
    assert_eq!(
        exec(&t, 0, &gls(5, 100, 0)),
        Outcome::GetLbaStatus {
            lun: 0,
            start: Lba(5),
            alloc_len: 100
        }
    );
    assert_eq!(exec(&t, 0, &gls(5, 0, 0)), Outcome::good());
    sense_is(
        exec(&t, 0, &gls(2 * 1024 * 1024, 100, 0)),
        SenseKey::IllegalRequest,
        0x21,
    );
    assert_invalid_field(exec(&t, 0, &gls(0, 100, 1)), 14, Some(1));
    // No unmap: answered directly, all mapped.
    let d = good(exec(&t, 5, &gls(10, 100, 0)));
    assert_eq!(d.len(), 24);
    assert_eq!(&d[..4], &20u32.to_be_bytes());
    assert_eq!(&d[8..16], &10u64.to_be_bytes());
    assert_eq!(&d[16..20], &990u32.to_be_bytes());
    assert_eq!(d[20], 0);
}
