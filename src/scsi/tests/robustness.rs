//! Every table entry dispatches; no CDB makes the target panic or break the
//! Outcome invariants.

use super::*;

/// A minimal valid CDB for a table entry: opcode, service action, and an
/// allocation length where one is needed.
fn minimal_cdb(cmd: &Command) -> Vec<u8> {
    let mut c = vec![0u8; cmd.cdb_len()];
    c[0] = cmd.opcode;
    if let Some(sa) = cmd.service_action {
        c[1] = sa;
    }
    if cmd.opcode == 0xa0 {
        c[9] = 16; // REPORT LUNS allocation length >= 16
    }
    if cmd.opcode == 0x1a || cmd.opcode == 0x5a {
        c[2] = 0x3f; // MODE SENSE: all pages (page 00h is vendor specific)
    }
    match cmd.opcode {
        0x15 | 0x55 => c[1] = 0x10, // MODE SELECT: PF=1
        0x41 => c[8] = 1,           // WRITE SAME(10): one block
        0x93 => c[13] = 1,          // WRITE SAME(16): one block
        0x5f => {
            c[2] = 0x01; // PR OUT: TYPE Write Exclusive
            c[8] = 24; // PARAMETER LIST LENGTH
        }
        _ => {}
    }
    c
}

/// Data-out for the minimal CDBs: zeros, enough for any of them.
const ZEROS: [u8; 8192] = [0; 8192];

#[test]
fn every_table_entry_dispatches() {
    let t = target();
    for cmd in COMMANDS {
        let c = minimal_cdb(cmd);
        let exec = |t: &Target, lun, c: &[u8]| exec_data(t, 0, lun, c, &ZEROS);
        match exec(&t, 0, &c) {
            Outcome::Complete {
                status: Status::Good,
                ..
            }
            | Outcome::Flush
            | Outcome::WriteSame { .. } => {}
            // PR OUT RESERVE/RELEASE/PREEMPT from an unregistered nexus.
            Outcome::Complete {
                status: Status::ReservationConflict,
                ..
            } if cmd.opcode == 0x5f => {}
            // READ/WRITE(6): length 0 means 256 blocks.
            Outcome::Io(io) => assert_eq!(io.blocks.0, 256, "{}", cmd.name),
            other => panic!("{}: {other:?}", cmd.name),
        }
        // The transport's 32-byte CDB field: trailing bytes are ignored.
        let mut long = c.clone();
        long.resize(32, 0xff);
        let o = exec(&t, 0, &long);
        if let Outcome::Complete { sense: Some(s), .. } = o {
            assert_ne!(s.asc, 0x20, "{}", cmd.name);
        }
        // Every shorter slice: INVALID FIELD IN CDB at the first missing byte.
        for len in 1..c.len() {
            assert_invalid_field(exec(&t, 0, &c[..len]), len as u16, None);
        }
        // NACA: INVALID FIELD IN CDB at the control byte, bit 2.
        let mut naca = c.clone();
        let last = naca.len() - 1;
        naca[last] |= 0x04;
        assert_invalid_field(exec(&t, 0, &naca), last as u16, Some(2));
        // Control byte reserved bits 5-3.
        let mut rsv = c.clone();
        rsv[last] |= 0x20;
        assert_invalid_field(exec(&t, 0, &rsv), last as u16, Some(5));
        // Vendor-specific control bits are not reserved.
        let mut vs = c.clone();
        vs[last] |= 0xc0;
        assert_eq!(exec(&t, 0, &vs), exec(&t, 0, &c), "{}", cmd.name);
    }
}

#[test]
fn opcodes_outside_the_table_are_invalid() {
    let t = target();
    for op in 0..=255u8 {
        if COMMANDS.iter().any(|c| c.opcode == op) {
            continue;
        }
        let s = check(exec(&t, 0, &[op; 32]));
        assert_sense(s, SenseKey::IllegalRequest, 0x20, 0, [0; 3]);
    }
}

/// xorshift64*: a fixed-seed generator, so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn geometry(lun: u16, c: &[u8]) -> (u64, u64) {
    match lun {
        0 => (512, 2 * 1024 * 1024),
        5 => (4096, 1000),
        300 => (512, BIG),
        _ => panic!("backing work on missing LUN {lun}: {c:02x?}"),
    }
}

#[track_caller]
fn check_range(lun: u16, r: &ByteRange, c: &[u8]) {
    let (bs, cap) = geometry(lun, c);
    assert!(r.len.0 > 0, "{c:02x?}");
    assert_eq!(r.offset.0 % bs, 0);
    assert_eq!(r.len.0 % bs, 0);
    assert!(r.offset.0 + r.len.0 <= cap * bs, "{c:02x?}");
}

#[track_caller]
fn check_invariants(t: &Target, lun: u16, c: &[u8], data: &[u8]) {
    let o = exec_data(t, 0, lun, c, data);
    let writes = matches!(
        o,
        Outcome::Unmap { .. }
            | Outcome::WriteSame { .. }
            | Outcome::WriteVerify { .. }
            | Outcome::CompareAndWrite { .. }
    );
    assert!(!(writes && lun == 5), "write on read-only LUN: {c:02x?}");
    match o {
        Outcome::Complete {
            status: Status::Good,
            sense,
            ..
        } => assert_eq!(sense, None, "{c:02x?}"),
        Outcome::Complete {
            status: Status::CheckCondition,
            sense,
            data,
        } => {
            assert!(sense.is_some() && data.is_empty(), "{c:02x?}");
        }
        Outcome::Complete {
            status: Status::ReservationConflict,
            sense,
            data,
        } => assert!(sense.is_none() && data.is_empty()),
        Outcome::Complete { status, .. } => panic!("status {status:?} for {c:02x?}"),
        Outcome::Io(io) => {
            let (bs, cap) = geometry(lun, c);
            assert!(io.blocks.0 > 0);
            assert!(io.lba.0 + io.blocks.0 <= cap, "{c:02x?}");
            assert_eq!(io.offset.0, io.lba.0 * bs);
            assert_eq!(io.len.0, io.blocks.0 * bs);
            assert!(!(lun == 5 && io.dir == IoDir::Write));
        }
        Outcome::Flush => assert!([0, 5, 300].contains(&lun)),
        Outcome::Unmap { ranges } => {
            assert!(!ranges.is_empty());
            for r in &ranges {
                check_range(lun, r, c);
            }
        }
        Outcome::WriteSame { range, block, .. } => {
            check_range(lun, &range, c);
            assert_eq!(block.len() as u64, geometry(lun, c).0);
        }
        Outcome::Verify { range, expected } => {
            check_range(lun, &range, c);
            if let Some(e) = expected {
                assert_eq!(e.len() as u64, range.len.0);
            }
        }
        Outcome::WriteVerify { range, data, .. } => {
            check_range(lun, &range, c);
            assert_eq!(data.len() as u64, range.len.0);
        }
        Outcome::CompareAndWrite {
            range,
            compare,
            write,
            ..
        } => {
            check_range(lun, &range, c);
            assert_eq!(compare.len() as u64, range.len.0);
            assert_eq!(write.len() as u64, range.len.0);
        }
        Outcome::GetLbaStatus { lun: l, start, .. } => {
            assert_eq!(l, lun);
            assert!(start.0 < geometry(lun, c).1);
        }
        Outcome::Passthrough { .. } => panic!("no passthrough unit here: {c:02x?}"),
    }
}

#[test]
fn fuzz_never_panics() {
    let t = target();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for op in 0..=255u8 {
        for pattern in 0..8 {
            let mut buf = [0u8; 32];
            for (i, b) in buf.iter_mut().enumerate() {
                *b = match pattern {
                    0 => 0,
                    1 => 0xff,
                    2 => i as u8,
                    3 => 0x80 >> (i % 8),
                    _ => rng.next() as u8,
                };
            }
            buf[0] = op;
            // Random CDBs rarely pass the reserved-bit check: also try with
            // the bits cleared that the table marks reserved.
            let mut masked = buf;
            if let Some(cmd) = COMMANDS.iter().find(|c| c.opcode == op) {
                for (b, u) in masked.iter_mut().zip(cmd.usage).skip(1) {
                    *b &= u & !0x04;
                }
                if let Some(sa) = cmd.service_action {
                    masked[1] = (masked[1] & !0x1f) | sa;
                }
            }
            // Small lengths and LBAs, so that more commands pass the checks.
            let mut small = masked;
            for b in small.iter_mut().skip(2).take(8) {
                *b &= 0x01;
            }
            // Random data-out: parameter lists and buffers.
            let dlen = (rng.next() % 600) as usize;
            let mut data: Vec<u8> = (0..dlen).map(|_| rng.next() as u8).collect();
            if pattern == 5 {
                // A plausible header: lengths that fit.
                for (i, b) in data.iter_mut().enumerate().take(8) {
                    *b = if i % 2 == 1 {
                        (dlen as u8).wrapping_sub(8)
                    } else {
                        0
                    };
                }
            }
            for lun in [0u16, 5, 300, 7, 16383] {
                for len in (0..=16).chain([32]) {
                    check_invariants(&t, lun, &buf[..len], &data);
                    check_invariants(&t, lun, &masked[..len], &data);
                    check_invariants(&t, lun, &small[..len], &data);
                }
            }
        }
    }
}
