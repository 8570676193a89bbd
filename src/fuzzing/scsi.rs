//! Target `scsi`: the SCSI target with arbitrary CDBs and data-out, its
//! outcomes carried out on a real (tmpfs) backing file.
//!
//! The input configures one logical unit (block size, capacity, read-only,
//! unmap, transfer limits) and then runs up to [`MAX_OPS`] operations:
//! commands from one of three I_T nexuses to the LUN or to an unmapped one,
//! LUN and nexus resets, capacity changes, hot detach/attach and restarts
//! that restore persistent reservations (saved ones, or bytes from the
//! input as a damaged saved state). Every
//! outcome is checked against what the target promises the transport
//! (ranges inside the capacity, buffer lengths that match the range, sense
//! data exactly with CHECK CONDITION), and the block operations are done
//! on a 1 MiB backing file through the block layer's synchronous path when
//! they fit in it: written data reads back, allocation maps cover exactly
//! what was asked.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use super::Input;
use crate::block::Backing;
use crate::scsi::{
    lba_status_data, BlockIo, ByteRange, IoDir, LbaExtent, LunConfig, NexusId, Outcome, PrStore,
    Status, Target,
};
use crate::units::{BlockCount, BlockSize, ByteCount, ByteOffset, Lba};

/// Operations per input.
pub const MAX_OPS: usize = 64;
/// Size of the backing file.
const DISK: u64 = 1 << 20;
/// The LUN the input configures.
const LUN: u16 = 0;

/// The backing file (unlinked once open) and a second handle to reset it.
struct Disk {
    backing: Backing,
    file: File,
}

fn disk() -> &'static Mutex<Disk> {
    static DISK_FILE: OnceLock<Mutex<Disk>> = OnceLock::new();
    DISK_FILE.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("vhost-user-scsi-fuzz-{}.img", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create the fuzz backing file");
        file.set_len(DISK).expect("size the fuzz backing file");
        let backing = Backing::open(&path, false).expect("open the fuzz backing file");
        let _ = std::fs::remove_file(&path);
        Mutex::new(Disk { backing, file })
    })
}

fn config(inp: &mut Input<'_>) -> LunConfig {
    let block_size = if inp.bool() {
        BlockSize::B4096
    } else {
        BlockSize::B512
    };
    let num_blocks = match inp.u8() % 4 {
        0 => 1 + u64::from(inp.u8()),
        1 => 1 + u64::from(inp.u16()),
        2 => DISK / u64::from(block_size.bytes()),
        _ => inp.u64(),
    };
    let mut cfg = LunConfig::new(LUN, block_size, BlockCount(num_blocks));
    let flags = inp.u8();
    cfg.readonly = flags & 1 != 0;
    cfg.unmap = flags & 2 != 0;
    cfg.lbprz = flags & 4 != 0;
    cfg.rotational = flags & 8 != 0;
    cfg.max_transfer_blocks = u32::from(inp.u8());
    cfg.optimal_transfer_blocks = u32::from(inp.u8());
    cfg.max_unmap_blocks = 1 + u32::from(inp.u16());
    cfg.max_unmap_descriptors = 1 + u32::from(inp.u8() % 64);
    cfg.max_write_same_blocks = u64::from(inp.u16());
    cfg.max_compare_write_blocks = inp.u8();
    cfg
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let cfg = config(&mut inp);
    let block_size = cfg.block_size;
    let store = Arc::new(MemPrStore::default());
    let Ok(mut target) = Target::with_pr_store(vec![cfg.clone()], store.clone()) else {
        return;
    };
    let disk = disk().lock().unwrap_or_else(|p| p.into_inner());
    // A fresh, all-hole disk for every input.
    disk.file.set_len(0).expect("reset the fuzz disk");
    disk.file.set_len(DISK).expect("reset the fuzz disk");
    let mut cache = target.cache();
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8();
        let nexus = NexusId(u64::from(inp.u8() % 3));
        let lun = if op & 0x80 != 0 { inp.u16() } else { LUN };
        match op & 0x7f {
            0x70 => target.lun_reset(lun),
            0x71 => target.nexus_reset(nexus),
            0x72 => target.capacity_changed(lun, BlockCount(u64::from(inp.u16()))),
            0x73 => target.luns_changed(),
            0x74 => {
                if target.detach(LUN).is_none() {
                    let unit = target.make_unit(cfg.clone()).expect("valid config");
                    target.attach(LUN, unit).expect("LUN was free");
                }
            }
            // A daemon restart: the unit comes back with the persistent
            // reservations it saved (APTPL), or (0x76) with bytes from the
            // input as its saved state.
            0x75 | 0x76 => {
                if op & 0x7f == 0x76 {
                    let n = usize::from(inp.u8());
                    store.put(&cfg.identity, inp.bytes(n));
                }
                target = Target::with_pr_store(vec![cfg.clone()], store.clone())
                    .expect("a saved state never stops a restart");
                cache = target.cache();
            }
            code => {
                let cdb_len = usize::from(inp.u8() % 33);
                let cdb = inp.bytes(cdb_len);
                let out_len = usize::from(inp.u16() % 8192);
                let mut data_out = inp.bytes(out_len);
                let outcome = if code & 1 == 0 {
                    target.execute(nexus, lun, cdb, &mut data_out)
                } else {
                    target.execute_cached(&mut cache, nexus, lun, cdb, &mut data_out)
                };
                let capacity = target.capacity(lun);
                check(&cfg, capacity, &outcome, cdb);
                if let Some(blocks) = capacity {
                    carry_out(&disk.backing, block_size, blocks, outcome);
                }
            }
        }
    }
}

/// Persistent reservations kept in memory across the restarts of one
/// input.
#[derive(Default)]
struct MemPrStore(Mutex<HashMap<String, Vec<u8>>>);

impl MemPrStore {
    fn put(&self, id: &str, state: &[u8]) {
        let mut saved = self.0.lock().unwrap_or_else(|p| p.into_inner());
        saved.insert(id.to_owned(), state.to_vec());
    }
}

impl PrStore for MemPrStore {
    fn load(&self, id: &str) -> io::Result<Option<Vec<u8>>> {
        let saved = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Ok(saved.get(id).cloned())
    }

    fn save(&self, id: &str, state: &[u8]) -> io::Result<()> {
        self.put(id, state);
        Ok(())
    }
}

/// The byte capacity of a unit of `blocks` blocks.
fn bytes(bs: BlockSize, blocks: BlockCount) -> u64 {
    blocks.to_bytes(bs).expect("validated capacity").0
}

#[track_caller]
fn in_capacity(range: &ByteRange, cap: u64, bs: BlockSize) {
    let end = range.offset.0.checked_add(range.len.0).expect("range end");
    assert!(end <= cap, "{range:?} beyond the capacity {cap}");
    let bs = u64::from(bs.bytes());
    assert!(
        range.offset.0 % bs == 0 && range.len.0 % bs == 0,
        "{range:?}"
    );
}

/// The target's promises to the transport.
fn check(cfg: &LunConfig, capacity: Option<BlockCount>, outcome: &Outcome, cdb: &[u8]) {
    let bs = cfg.block_size;
    if let Outcome::Complete {
        status,
        sense,
        data,
    } = outcome
    {
        if let Some(n) = alloc_len(cdb) {
            assert!(
                data.len() <= n,
                "{} bytes for {n} allocated: {cdb:02x?}",
                data.len()
            );
        }
        match status {
            Status::CheckCondition => {
                let s = sense.expect("CHECK CONDITION without sense");
                let fixed = s.to_fixed();
                assert_eq!(fixed[0] & 0x7f, 0x70);
                let desc = s.to_descriptor();
                assert_eq!(desc[0] & 0x7f, 0x72);
            }
            _ => assert!(sense.is_none(), "{status:?} with sense"),
        }
        return;
    }
    let cap_blocks = capacity.unwrap_or_else(|| panic!("{outcome:?} for an unmapped LUN"));
    let cap = bytes(bs, cap_blocks);
    let range_of = |lba: Lba, blocks: BlockCount| ByteRange {
        offset: lba.to_bytes(bs).expect("offset"),
        len: blocks.to_bytes(bs).expect("length"),
    };
    match outcome {
        Outcome::Complete { .. } => unreachable!(),
        Outcome::Io(io) => {
            assert_eq!(range_of(io.lba, io.blocks), io_range(io), "{cdb:02x?}");
            in_capacity(&io_range(io), cap, bs);
            if io.dir == IoDir::Write {
                assert!(!cfg.readonly, "write to a read-only LUN: {cdb:02x?}");
            }
            if cfg.max_transfer_blocks != 0 {
                assert!(io.blocks.0 <= u64::from(cfg.max_transfer_blocks));
            }
        }
        Outcome::Flush => {}
        Outcome::Passthrough { cdb_len } => {
            assert!(cfg.passthrough, "passthrough outcome on an emulated LUN");
            assert!(*cdb_len <= cdb.len(), "{cdb:02x?}");
        }
        Outcome::Unmap { ranges } => {
            assert!(cfg.unmap && !cfg.readonly, "UNMAP allowed: {cdb:02x?}");
            assert!(ranges.len() <= cfg.max_unmap_descriptors as usize);
            for r in ranges {
                in_capacity(r, cap, bs);
            }
        }
        Outcome::WriteSame {
            range,
            block,
            unmap,
            ..
        } => {
            assert!(!cfg.readonly);
            assert_eq!(block.len(), bs.bytes() as usize);
            assert!(!unmap || cfg.unmap);
            in_capacity(range, cap, bs);
        }
        Outcome::Verify { range, expected } => {
            in_capacity(range, cap, bs);
            if let Some(e) = expected {
                assert_eq!(e.len() as u64, range.len.0);
            }
        }
        Outcome::WriteVerify { range, data, .. } => {
            assert!(!cfg.readonly);
            in_capacity(range, cap, bs);
            assert_eq!(data.len() as u64, range.len.0);
        }
        Outcome::CompareAndWrite {
            range,
            compare,
            write,
            ..
        } => {
            assert!(!cfg.readonly);
            in_capacity(range, cap, bs);
            assert_eq!(compare.len() as u64, range.len.0);
            assert_eq!(write.len() as u64, range.len.0);
            let blocks = range.len.0 / u64::from(bs.bytes());
            assert!(blocks <= u64::from(cfg.max_compare_write_blocks));
        }
        Outcome::GetLbaStatus { lun, start, .. } => {
            assert_eq!(*lun, LUN);
            assert!(start.0 < cap_blocks.0, "{start:?} beyond {cap_blocks:?}");
        }
    }
}

/// The ALLOCATION LENGTH of the data-in commands that have one.
fn alloc_len(cdb: &[u8]) -> Option<usize> {
    let be = |at: std::ops::Range<usize>| {
        cdb.get(at)
            .map(|b| b.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x)))
    };
    match *cdb.first()? {
        // INQUIRY
        0x12 => be(3..5),
        // REQUEST SENSE, MODE SENSE(6)
        0x03 | 0x1a => be(4..5),
        // MODE SENSE(10), PERSISTENT RESERVE IN, LOG SENSE
        0x5a | 0x5e | 0x4d => be(7..9),
        // REPORT LUNS, MAINTENANCE IN (REPORT SUPPORTED OPERATION CODES)
        0xa0 | 0xa3 => be(6..10),
        // SERVICE ACTION IN(16): READ CAPACITY(16), GET LBA STATUS
        0x9e => be(10..14),
        _ => None,
    }
}

fn io_range(io: &BlockIo) -> ByteRange {
    ByteRange {
        offset: io.offset,
        len: io.len,
    }
}

/// `range` if it lies inside the backing file.
fn on_disk(range: &ByteRange) -> Option<(ByteOffset, usize)> {
    let end = range.offset.0.checked_add(range.len.0)?;
    (end <= DISK).then_some((range.offset, range.len.0 as usize))
}

fn read(b: &Backing, offset: ByteOffset, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    b.read_exact_at(offset, &mut buf)?;
    Ok(buf)
}

/// Do what the transport would with `outcome`, where it fits on the disk.
/// Errors are fine (the transport turns them into sense data); wrong data
/// is not.
fn carry_out(b: &Backing, bs: BlockSize, blocks: BlockCount, outcome: Outcome) {
    match outcome {
        Outcome::Complete { .. } | Outcome::Passthrough { .. } => {}
        Outcome::Io(io) => {
            let Some((offset, len)) = on_disk(&io_range(&io)) else {
                return;
            };
            match io.dir {
                IoDir::Read => {
                    let _ = read(b, offset, len);
                }
                IoDir::Write => {
                    let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ (offset.0 as u8)).collect();
                    if b.write_all_at(offset, &data, io.fua).is_ok() {
                        if let Ok(back) = read(b, offset, len) {
                            assert!(back == data, "write at {offset:?} did not read back");
                        }
                    }
                }
            }
        }
        Outcome::Flush => {
            let _ = b.sync_data();
        }
        Outcome::Unmap { ranges } => {
            for r in ranges {
                if on_disk(&r).is_some() {
                    let _ = b.unmap(r.offset, r.len);
                }
            }
        }
        Outcome::WriteSame { range, block, .. } => {
            if let Some((offset, len)) = on_disk(&range) {
                if b.write_same(range.offset, range.len, &block).is_ok() {
                    if let Ok(back) = read(b, offset, len) {
                        for chunk in back.chunks(block.len()) {
                            assert!(chunk == &block[..], "WRITE SAME at {offset:?}");
                        }
                    }
                }
            }
        }
        Outcome::Verify { range, .. } => {
            if let Some((offset, len)) = on_disk(&range) {
                let _ = read(b, offset, len);
            }
        }
        Outcome::WriteVerify { range, data, fua }
        | Outcome::CompareAndWrite {
            range,
            write: data,
            fua,
            ..
        } => {
            if let Some((offset, len)) = on_disk(&range) {
                if b.write_all_at(offset, &data, fua).is_ok() {
                    if let Ok(back) = read(b, offset, len) {
                        assert!(back == data, "write at {offset:?} did not read back");
                    }
                }
            }
        }
        Outcome::GetLbaStatus {
            start, alloc_len, ..
        } => {
            let Some(offset) = start.to_bytes(bs) else {
                return;
            };
            let end = bytes(bs, blocks).min(DISK);
            let Some(len) = end.checked_sub(offset.0) else {
                return;
            };
            let Ok(map) = b.allocation_map(offset, ByteCount(len)) else {
                return;
            };
            let mut at = offset.0;
            for e in &map {
                assert_eq!(e.offset, at, "allocation map has a gap: {map:?}");
                at += e.len;
            }
            assert!(map.is_empty() || at == offset.0 + len, "{map:?}");
            let extents: Vec<LbaExtent> = map
                .iter()
                .map(|e| LbaExtent {
                    lba: Lba(e.offset / u64::from(bs.bytes())),
                    blocks: ByteCount(e.len).to_blocks(bs),
                    deallocated: !e.allocated,
                })
                .collect();
            let data = lba_status_data(start, &extents, alloc_len);
            assert!(data.len() <= alloc_len as usize);
        }
    }
}
