//! REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS.

use super::*;

fn rsoc(b2: u8, op: u8, sa: u16, alloc: u32) -> Vec<u8> {
    let mut c = cdb(12, &[0xa3, 0x0c, b2, op]);
    c[4..6].copy_from_slice(&sa.to_be_bytes());
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn all_commands_lists_every_table_entry() {
    let t = target();
    for rctd in [false, true] {
        let d = good(exec(&t, 0, &rsoc(if rctd { 0x80 } else { 0 }, 0, 0, 65535)));
        let step = if rctd { 20 } else { 8 };
        assert_eq!(
            u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize,
            COMMANDS.len() * step
        );
        assert_eq!(d.len(), 4 + COMMANDS.len() * step);
        for (i, c) in COMMANDS.iter().enumerate() {
            let e = &d[4 + i * step..4 + (i + 1) * step];
            assert_eq!(e[0], c.opcode, "{}", c.name);
            let sa = u16::from(c.service_action.unwrap_or(0));
            assert_eq!(&e[2..4], &sa.to_be_bytes());
            let flags = u8::from(c.service_action.is_some()) | if rctd { 2 } else { 0 };
            assert_eq!(e[5], flags, "{}", c.name);
            assert_eq!(&e[6..8], &(c.cdb_len() as u16).to_be_bytes());
            if rctd {
                assert_eq!(&e[8..10], &[0, 0x0a]);
            }
        }
    }
    // Truncation.
    let d = good(exec(&t, 0, &rsoc(0, 0, 0, 10)));
    assert_eq!(d.len(), 10);
}

#[test]
fn one_command_options() {
    let t = target();
    for c in COMMANDS {
        let sa = u16::from(c.service_action.unwrap_or(0));
        let opts: &[u8] = if c.service_action.is_some() {
            &[2, 3]
        } else {
            &[1, 3]
        };
        for &opt in opts {
            let d = good(exec(&t, 0, &rsoc(opt, c.opcode, sa, 1000)));
            assert_eq!(d[1], 0x03, "{}", c.name); // SUPPORT 011b
            assert_eq!(&d[2..4], &(c.cdb_len() as u16).to_be_bytes());
            assert_eq!(&d[4..], c.usage, "{}", c.name);
            let d = good(exec(&t, 0, &rsoc(0x80 | opt, c.opcode, sa, 1000)));
            assert_eq!(d[1], 0x83);
            assert_eq!(d.len(), 4 + c.cdb_len() + 12);
        }
        // Option 1 on an opcode with service actions, option 2 without.
        let wrong = if c.service_action.is_some() { 1 } else { 2 };
        assert_invalid_field(exec(&t, 0, &rsoc(wrong, c.opcode, sa, 1000)), 3, None);
    }
    // Unsupported opcode / service action: SUPPORT 001b.
    assert_eq!(good(exec(&t, 0, &rsoc(1, 0x04, 0, 100))), vec![0, 1, 0, 0]);
    assert_eq!(
        good(exec(&t, 0, &rsoc(2, 0x9e, 0x11, 100))),
        vec![0, 1, 0, 0]
    );
    assert_eq!(
        good(exec(&t, 0, &rsoc(3, 0x9e, 0x110, 100))),
        vec![0, 1, 0, 0]
    );
    assert_eq!(good(exec(&t, 0, &rsoc(2, 0x04, 0, 100))), vec![0, 1, 0, 0]);
    // Option 3 on an opcode without service actions ignores the SA.
    assert_eq!(good(exec(&t, 0, &rsoc(3, 0x28, 7, 100)))[1], 3);
    // Reserved options.
    for opt in 4..8 {
        assert_invalid_field(exec(&t, 0, &rsoc(opt, 0, 0, 100)), 2, Some(2));
    }
    // Reserved bits of byte 2.
    assert_invalid_field(exec(&t, 0, &rsoc(0x40, 0, 0, 100)), 2, Some(6));
}

#[test]
fn task_management_functions() {
    let t = target();
    let c = cdb(12, &[0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 255]);
    assert_eq!(good(exec(&t, 0, &c)), vec![0xdc, 0x03, 0, 0]);
    let c = cdb(12, &[0xa3, 0x0d, 0x80, 0, 0, 0, 0, 0, 0, 255]);
    let d = good(exec(&t, 0, &c));
    assert_eq!(d.len(), 16);
    assert_eq!(&d[..4], &[0xdc, 0x03, 0, 0x0c]);
    let c = cdb(12, &[0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 2]);
    assert_eq!(good(exec(&t, 0, &c)), vec![0xdc, 0x03]);
}

/// A LUN that cannot deallocate has no UNMAP: not reported, and refused as
/// an unknown opcode. LUN 0 of `target()` is thin, LUN 300 is not.
#[test]
fn unmap_is_reported_only_where_it_exists() {
    let t = target();
    let listed = |lun: u16| {
        let d = good(exec(&t, lun, &rsoc(0, 0, 0, 65535)));
        d[4..].chunks(8).any(|e| e[0] == 0x42)
    };
    assert!(listed(0));
    assert!(!listed(300));
    let support = |lun: u16| good(exec(&t, lun, &rsoc(1, 0x42, 0, 64)))[1] & 0x07;
    assert_eq!(support(0), 0b011);
    assert_eq!(support(300), 0b001);
    let params = [0u8; 24];
    assert_sense(
        check(exec_data(
            &t,
            0,
            300,
            &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
            &params,
        )),
        SenseKey::IllegalRequest,
        0x20,
        0,
        [0; 3],
    );
}
