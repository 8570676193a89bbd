//! Tests through `Target::execute`, table-driven.

mod commands;
mod inquiry;
mod mode;
mod passthrough;
mod robustness;
mod rw;

use super::*;
use crate::units::{BlockCount, BlockSize};

/// LUN 0: 1 GiB of 512-byte blocks, writable. LUN 5: read-only, 4096-byte
/// blocks, rotational. LUN 300: huge (more than 2^32 blocks).
const BIG: u64 = 0x1_2345_6789;

fn cfg(lun: u16) -> LunConfig {
    LunConfig {
        serial: format!("SER{lun}"),
        identity: format!("/images/disk{lun}.img"),
        max_transfer_blocks: 2048,
        optimal_transfer_blocks: 256,
        ..LunConfig::new(lun, BlockSize::B512, BlockCount(2 * 1024 * 1024))
    }
}

/// The nexus `exec` uses.
const N0: NexusId = NexusId(0);

fn target() -> Target {
    let mut ro = cfg(5);
    ro.readonly = true;
    ro.block_size = BlockSize::B4096;
    ro.num_blocks = BlockCount(1000);
    ro.rotational = true;
    let mut thin = cfg(0);
    thin.unmap = true;
    thin.lbprz = true;
    let mut big = cfg(300);
    big.num_blocks = BlockCount(BIG);
    big.max_transfer_blocks = 0;
    settled(Target::new(vec![big, thin, ro]).unwrap())
}

/// `t` after nexus N0 has seen (and cleared) its POWER ON unit attention on
/// every LUN.
fn settled(t: Target) -> Target {
    for lun in t.lun_numbers() {
        let s = check(t.execute(N0, lun, &[0; 6], &mut std::io::empty()));
        assert_eq!((s.key, s.asc, s.ascq), (SenseKey::UnitAttention, 0x29, 0));
    }
    t
}

fn exec(t: &Target, lun: u16, cdb: &[u8]) -> Outcome {
    t.execute(N0, lun, cdb, &mut std::io::empty())
}

/// `exec` with data-out and a nexus.
fn exec_data(t: &Target, nexus: u64, lun: u16, cdb: &[u8], data: &[u8]) -> Outcome {
    let mut r = data;
    t.execute(NexusId(nexus), lun, cdb, &mut r)
}

/// The data of a GOOD completion.
#[track_caller]
fn good(o: Outcome) -> Vec<u8> {
    match o {
        Outcome::Complete {
            status: Status::Good,
            sense: None,
            data,
        } => data,
        other => panic!("expected GOOD, got {other:?}"),
    }
}

/// The sense of a CHECK CONDITION (which carries no data).
#[track_caller]
fn check(o: Outcome) -> Sense {
    match o {
        Outcome::Complete {
            status: Status::CheckCondition,
            sense: Some(s),
            data,
        } if data.is_empty() => s,
        other => panic!("expected CHECK CONDITION, got {other:?}"),
    }
}

/// Asserts key/ASC/ASCQ and the encoded sense-key-specific bytes 15-17.
#[track_caller]
fn assert_sense(s: Sense, key: SenseKey, asc: u8, ascq: u8, sks: [u8; 3]) {
    assert_eq!((s.key, s.asc, s.ascq), (key, asc, ascq), "{s:?}");
    assert_eq!(s.to_fixed()[15..18], sks, "{s:?}");
}

/// INVALID FIELD IN CDB at `byte`, `bit`.
#[track_caller]
fn assert_invalid_field(o: Outcome, byte: u16, bit: Option<u8>) {
    let s = check(o);
    let b15 = 0xc0 | bit.map_or(0, |b| 0x08 | b);
    let [hi, lo] = byte.to_be_bytes();
    assert_sense(s, SenseKey::IllegalRequest, 0x24, 0, [b15, hi, lo]);
}

/// A CDB of `len` bytes starting with `head`.
fn cdb(len: usize, head: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; len];
    v[..head.len()].copy_from_slice(head);
    v
}

#[test]
fn target_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Target>();
}

#[test]
fn new_rejects_bad_configs() {
    assert!(matches!(
        Target::new(vec![cfg(1), cfg(2), cfg(1)]),
        Err(ScsiError::DuplicateLun(1))
    ));
    assert!(matches!(
        Target::new(vec![cfg(16384)]),
        Err(ScsiError::LunOutOfRange(16384))
    ));
    assert!(Target::new(vec![cfg(16383)]).is_ok());
    let mut c = cfg(0);
    c.num_blocks = BlockCount(0);
    assert!(matches!(
        Target::new(vec![c]),
        Err(ScsiError::InvalidConfig { .. })
    ));
    let mut c = cfg(0);
    c.serial = "x".repeat(253);
    assert!(Target::new(vec![c]).is_err());
    let mut c = cfg(0);
    c.serial = "x".repeat(252);
    assert!(Target::new(vec![c]).is_ok());
    let mut c = cfg(0);
    c.serial = "a\nb".into();
    assert!(Target::new(vec![c]).is_err());
    let mut c = cfg(0);
    c.num_blocks = BlockCount(u64::MAX / 256);
    assert!(Target::new(vec![c]).is_err());
    assert_eq!(target().lun_numbers(), vec![0, 5, 300]);
    assert!(Target::new(vec![]).unwrap().lun_numbers().is_empty());
}

mod mode_select;
mod pr;
mod provisioning;
mod rsoc;
mod ua;
