//! READ/WRITE/SYNCHRONIZE CACHE decoding, table-driven.

use super::*;
use crate::units::{ByteCount, ByteOffset, Lba};

enum Want {
    /// dir, lba, blocks, fua (offset/len derived from the LUN's block size).
    Io(IoDir, u64, u64, bool),
    /// GOOD, no data (zero-length transfer).
    Good,
    Flush,
    /// key, asc, ascq, sense-key-specific bytes 15-17.
    Sense(SenseKey, u8, u8, [u8; 3]),
}
use IoDir::{Read as R, Write as W};
use Want::*;

const OOR: Want = Sense(SenseKey::IllegalRequest, 0x21, 0, [0; 3]);
const WP: Want = Sense(SenseKey::DataProtect, 0x27, 0, [0; 3]);
const fn inv(byte: u8, bit: Option<u8>) -> Want {
    let b15 = match bit {
        Some(b) => 0xc8 | b,
        None => 0xc0,
    };
    Sense(SenseKey::IllegalRequest, 0x24, 0, [b15, 0, byte])
}

fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

fn cdb10(op: u8, b1: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = cdb(10, &[op, b1]);
    c[2..6].copy_from_slice(&be32(lba));
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb12(op: u8, b1: u8, lba: u32, len: u32) -> Vec<u8> {
    let mut c = cdb(12, &[op, b1]);
    c[2..6].copy_from_slice(&be32(lba));
    c[6..10].copy_from_slice(&be32(len));
    c
}

fn cdb16(op: u8, b1: u8, lba: u64, len: u32) -> Vec<u8> {
    let mut c = cdb(16, &[op, b1]);
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&be32(len));
    c
}

/// Capacity of LUN 0 in blocks.
const CAP0: u32 = 2 * 1024 * 1024;

#[test]
fn read_write_sync_table() {
    let t = target();
    #[rustfmt::skip]
    let cases: Vec<(&str, u16, Vec<u8>, Want)> = vec![
        // READ(6)/WRITE(6): 21-bit LBA, length 0 = 256, no FUA.
        ("read6", 0, vec![0x08, 0x00, 0x01, 0x00, 8, 0], Io(R, 0x100, 8, false)),
        ("read6 len0=256", 0, vec![0x08, 0, 0x01, 0x00, 0, 0], Io(R, 0x100, 256, false)),
        ("read6 last lba", 0, vec![0x08, 0x1f, 0xff, 0xff, 1, 0], Io(R, 0x1f_ffff, 1, false)),
        ("read6 256 to end", 0, vec![0x08, 0x1f, 0xff, 0x00, 0, 0], Io(R, 0x1f_ff00, 256, false)),
        ("read6 256 past end", 0, vec![0x08, 0x1f, 0xff, 0x01, 0, 0], OOR),
        ("read6 old LUN bits", 0, vec![0x08, 0x20, 0, 0, 1, 0], inv(1, Some(5))),
        ("write6", 0, vec![0x0a, 0x01, 0x02, 0x03, 4, 0], Io(W, 0x10203, 4, false)),
        ("write6 ro", 5, vec![0x0a, 0, 0, 0, 1, 0], WP),
        ("read6 4k lun", 5, vec![0x08, 0, 0, 10, 2, 0], Io(R, 10, 2, false)),
        ("read6 4k lun oor", 5, vec![0x08, 0, 0x03, 0xe7, 2, 0], OOR),
        // READ(10)/WRITE(10).
        ("read10", 0, cdb10(0x28, 0, 0x1000, 8), Io(R, 0x1000, 8, false)),
        ("read10 fua", 0, cdb10(0x28, 0x08, 0x1000, 8), Io(R, 0x1000, 8, true)),
        ("read10 dpo", 0, cdb10(0x28, 0x10, 7, 1), Io(R, 7, 1, false)),
        ("read10 rdprotect", 0, cdb10(0x28, 0x20, 0, 1), inv(1, Some(7))),
        ("read10 len 0", 0, cdb10(0x28, 0, 5, 0), Good),
        ("read10 len 0 at cap", 0, cdb10(0x28, 0, CAP0, 0), Good),
        ("read10 len 0 past cap", 0, cdb10(0x28, 0, CAP0 + 1, 0), OOR),
        ("read10 last block", 0, cdb10(0x28, 0, CAP0 - 1, 1), Io(R, u64::from(CAP0) - 1, 1, false)),
        ("read10 past end", 0, cdb10(0x28, 0, CAP0 - 1, 2), OOR),
        ("read10 max lba", 0, cdb10(0x28, 0, u32::MAX, 1), OOR),
        ("read10 max xfer", 0, cdb10(0x28, 0, 0, 2048), Io(R, 0, 2048, false)),
        ("read10 > max xfer", 0, cdb10(0x28, 0, 0, 2049), inv(7, None)),
        ("read10 reserved bit", 0, cdb10(0x28, 0x01, 0, 1), inv(1, Some(0))),
        ("read10 group", 0, { let mut c = cdb10(0x28, 0, 0, 1); c[6] = 0x1f; c }, Io(R, 0, 1, false)),
        ("read10 byte6 reserved", 0, { let mut c = cdb10(0x28, 0, 0, 1); c[6] = 0x20; c }, inv(6, Some(5))),
        ("write10", 0, cdb10(0x2a, 0, 0x20, 16), Io(W, 0x20, 16, false)),
        ("write10 fua", 0, cdb10(0x2a, 0x08, 0x20, 16), Io(W, 0x20, 16, true)),
        ("write10 wrprotect", 0, cdb10(0x2a, 0x40, 0, 1), inv(1, Some(7))),
        ("write10 wrprotect ro", 5, cdb10(0x2a, 0xe0, 0, 1), inv(1, Some(7))),
        ("write10 ro", 5, cdb10(0x2a, 0, 0, 1), WP),
        ("write10 ro len 0", 5, cdb10(0x2a, 0, 0, 0), WP),
        // Order: write protection is checked before the LBA range.
        ("write10 ro oor", 5, cdb10(0x2a, 0, 5000, 1), WP),
        // ... and after the transfer length limit.
        ("write10 ro too long", 5, cdb10(0x2a, 0, 0, 4000), inv(7, None)),
        ("read10 ro ok", 5, cdb10(0x28, 0x08, 999, 1), Io(R, 999, 1, true)),
        ("write10 reserved bit 2", 0, cdb10(0x2a, 0x04, 0, 1), inv(1, Some(2))),
        // READ(12)/WRITE(12).
        ("read12", 0, cdb12(0xa8, 0, 0xabcd, 100), Io(R, 0xabcd, 100, false)),
        ("read12 fua", 0, cdb12(0xa8, 0x08, 1, 1), Io(R, 1, 1, true)),
        ("read12 len0", 0, cdb12(0xa8, 0, 1, 0), Good),
        ("read12 too long", 0, cdb12(0xa8, 0, 0, 0x1_0000), inv(6, None)),
        ("read12 oor", 0, cdb12(0xa8, 0, CAP0, 1), OOR),
        ("write12", 0, cdb12(0xaa, 0x08, 9, 3), Io(W, 9, 3, true)),
        ("write12 too long", 0, cdb12(0xaa, 0, 0, 2049), inv(6, None)),
        ("write12 ro", 5, cdb12(0xaa, 0, 0, 1), WP),
        ("write12 wrprotect", 0, cdb12(0xaa, 0x80, 0, 1), inv(1, Some(7))),
        // READ(16)/WRITE(16): 64-bit LBAs.
        ("read16", 0, cdb16(0x88, 0, 0x12345, 7), Io(R, 0x12345, 7, false)),
        ("read16 big lba", 300, cdb16(0x88, 0, BIG - 1, 1), Io(R, BIG - 1, 1, false)),
        ("read16 big lba oor", 300, cdb16(0x88, 0, BIG, 1), OOR),
        ("read16 above 2^32", 300, cdb16(0x88, 0x08, 0x1_0000_0000, 8), Io(R, 0x1_0000_0000, 8, true)),
        ("read16 overflow", 300, cdb16(0x88, 0, u64::MAX, 2), OOR),
        ("read16 overflow max", 300, cdb16(0x88, 0, u64::MAX, u32::MAX), OOR),
        ("read16 no limit", 300, cdb16(0x88, 0, 0, 0x10_0000), Io(R, 0, 0x10_0000, false)),
        ("read16 too long", 0, cdb16(0x88, 0, 0, 2049), inv(10, None)),
        ("read16 len0", 0, cdb16(0x88, 0, 0, 0), Good),
        ("read16 rdprotect", 0, cdb16(0x88, 0xe0, 0, 1), inv(1, Some(7))),
        ("write16", 300, cdb16(0x8a, 0x08, BIG - 8, 8), Io(W, BIG - 8, 8, true)),
        ("write16 oor", 300, cdb16(0x8a, 0, BIG - 7, 8), OOR),
        ("write16 ro", 5, cdb16(0x8a, 0, 0, 1), WP),
        ("write16 too long", 0, cdb16(0x8a, 0, 0, 2049), inv(10, None)),
        ("write16 reserved", 0, cdb16(0x8a, 0x04, 0, 1), inv(1, Some(2))),
        // SYNCHRONIZE CACHE(10)/(16).
        ("sync10 all", 0, cdb(10, &[0x35]), Flush),
        ("sync10 immed", 0, cdb(10, &[0x35, 0x02]), Flush),
        ("sync10 range", 0, cdb10(0x35, 0, CAP0 - 8, 8), Flush),
        ("sync10 oor", 0, cdb10(0x35, 0, CAP0 - 8, 9), OOR),
        ("sync10 lba past end", 0, cdb10(0x35, 0, CAP0 + 1, 0), OOR),
        ("sync10 ro", 5, cdb(10, &[0x35]), Flush),
        ("sync10 reserved", 0, cdb(10, &[0x35, 0x01]), inv(1, Some(0))),
        ("sync16 all", 300, cdb(16, &[0x91]), Flush),
        ("sync16 range", 300, cdb16(0x91, 0, BIG - 1, 1), Flush),
        ("sync16 oor", 300, cdb16(0x91, 0, BIG, 1), OOR),
        ("sync16 overflow", 300, cdb16(0x91, 0, u64::MAX, 1), OOR),
    ];
    for (name, lun, c, want) in cases {
        let o = exec(&t, lun, &c);
        match want {
            Io(dir, lba, blocks, fua) => {
                let bs = if lun == 5 { 4096 } else { 512 };
                assert_eq!(
                    o,
                    Outcome::Io(BlockIo {
                        dir,
                        lba: Lba(lba),
                        blocks: BlockCount(blocks),
                        offset: ByteOffset(lba * bs),
                        len: ByteCount(blocks * bs),
                        fua,
                    }),
                    "{name}"
                );
            }
            Good => assert_eq!(o, Outcome::good(), "{name}"),
            Flush => assert_eq!(o, Outcome::Flush, "{name}"),
            Sense(key, asc, ascq, sks) => {
                let s = check(o);
                assert_eq!((s.key, s.asc, s.ascq), (key, asc, ascq), "{name}: {s:?}");
                assert_eq!(s.to_fixed()[15..18], sks, "{name}: {s:?}");
            }
        }
    }
}
