//! One logical unit: its configuration, derived identifiers, and the little
//! mutable state it has (atomics, so a `Target` is `Sync`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::pr::PrState;
use super::target::LunConfig;
use super::ua::UaQueues;
use super::{NexusId, Sense};
use crate::units::{BlockCount, ByteCount, ByteOffset, Lba};

/// IEEE company ID in the NAA designator (VPD 83h). ACDE48h is the CID the
/// IEEE Registration Authority reserves for private use (it is assigned to
/// no organisation), so our NAA names cannot collide with a vendor's.
pub const NAA_COMPANY_ID: u32 = 0x00AC_DE48;

/// T10 vendor identification (INQUIRY bytes 8-15, VPD 83h type 1).
pub const VENDOR: &[u8; 8] = b"VUSCSI  ";
/// Product identification (INQUIRY bytes 16-31).
pub const PRODUCT: &[u8; 16] = b"vhost-user-scsi ";

/// A configured logical unit.
#[derive(Debug)]
pub struct LogicalUnit {
    pub cfg: LunConfig,
    /// NAA IEEE Registered Extended designator (VPD 83h), 16 bytes.
    pub naa: [u8; 16],
    /// Caching mode page WCE (SBC-4 6.5.5): the backing store has a volatile
    /// cache the initiator must flush. WCE=0: every write is write-through
    /// (decoded with fua=true). Changed by MODE SELECT under `state`.
    write_cache: AtomicBool,
    /// Current number of logical blocks (`Target::capacity_changed`).
    num_blocks: AtomicU64,
    /// Unit attentions and reservations.
    state: Mutex<LuState>,
    /// Fast path: `nexus + 1` when that nexus was last seen with no unit
    /// attention pending and no reservation or registration of any kind on
    /// this LU, so that its commands need not take `state` at all; 0 when
    /// unknown. Every lock of `state` clears it (any change may end it).
    quiet: AtomicU64,
}

/// The mutable state of a logical unit that needs a lock.
#[derive(Debug, Default)]
pub struct LuState {
    pub ua: UaQueues,
    pub pr: PrState,
    /// SPC-2 RESERVE(6)/(10) holder.
    pub legacy: Option<NexusId>,
}

impl LuState {
    /// No unit attention pending for `nexus` (which has been seen), and no
    /// reservation or registration at all: no command of `nexus` can get a
    /// UNIT ATTENTION or RESERVATION CONFLICT until the state changes.
    pub fn is_quiet_for(&self, nexus: NexusId) -> bool {
        self.legacy.is_none()
            && self.pr.reservation.is_none()
            && self.pr.regs.is_empty()
            && self.ua.is_empty_for(nexus)
    }
}

impl LogicalUnit {
    pub fn new(cfg: LunConfig) -> Self {
        Self::with_pr(cfg, PrState::default())
    }

    pub fn with_pr(cfg: LunConfig, pr: PrState) -> Self {
        let naa = naa_designator(&cfg.identity);
        let num_blocks = AtomicU64::new(cfg.num_blocks.0);
        LogicalUnit {
            cfg,
            naa,
            write_cache: AtomicBool::new(true),
            num_blocks,
            state: Mutex::new(LuState {
                pr,
                ..LuState::default()
            }),
            quiet: AtomicU64::new(0),
        }
    }

    /// True when `nexus` may skip the unit-attention and reservation checks
    /// (see `quiet`).
    pub fn is_quiet(&self, nexus: NexusId) -> bool {
        let q = self.quiet.load(Ordering::Acquire);
        q != 0 && q == nexus.0.wrapping_add(1)
    }

    /// Called with `state` locked: mark `nexus` quiet if it is.
    pub fn note_quiet(&self, st: &LuState, nexus: NexusId) {
        if st.is_quiet_for(nexus) {
            self.quiet.store(nexus.0.wrapping_add(1), Ordering::Release);
        }
    }

    /// The state, also when a panicking thread poisoned the lock (the state
    /// is updated all-or-nothing, so it is consistent).
    pub fn state(&self) -> MutexGuard<'_, LuState> {
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.quiet.store(0, Ordering::Release);
        guard
    }

    pub fn write_cache_enabled(&self) -> bool {
        self.write_cache.load(Ordering::Relaxed)
    }

    pub fn set_write_cache(&self, wce: bool) {
        self.write_cache.store(wce, Ordering::Relaxed);
    }

    /// FUA for a write: asked by the CDB, or forced by WCE=0.
    pub fn write_fua(&self, cdb_fua: bool) -> bool {
        cdb_fua || !self.write_cache_enabled()
    }

    /// Number of logical blocks.
    pub fn capacity(&self) -> BlockCount {
        BlockCount(self.num_blocks.load(Ordering::Relaxed))
    }

    pub fn set_capacity(&self, blocks: BlockCount) {
        self.num_blocks.store(blocks.0, Ordering::Relaxed);
    }

    /// The last LBA (capacity - 1; capacity is never 0, `Target::new` checks).
    pub fn last_lba(&self) -> Lba {
        Lba(self.capacity().0.saturating_sub(1))
    }

    /// Checks that `blocks` starting at `lba` lie within the capacity
    /// (SBC-4: LOGICAL BLOCK ADDRESS OUT OF RANGE otherwise), without
    /// overflow.
    pub fn check_range(&self, lba: Lba, blocks: BlockCount) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end.0 <= self.capacity().0 => Ok(()),
            _ => Err(Sense::lba_out_of_range()),
        }
    }

    /// An in-range extent as a byte range (checks the range first).
    pub fn byte_range(&self, lba: Lba, blocks: BlockCount) -> Result<super::ByteRange, Sense> {
        self.check_range(lba, blocks)?;
        let (offset, len) = self.extent_bytes(lba, blocks)?;
        Ok(super::ByteRange { offset, len })
    }

    /// Bytes in `blocks` blocks, capped (for buffers read from data-out).
    pub fn block_bytes(&self, blocks: u64) -> Result<usize, Sense> {
        BlockCount(blocks)
            .to_bytes(self.cfg.block_size)
            .and_then(|b| usize::try_from(b.0).ok())
            .ok_or(Sense::lba_out_of_range())
    }

    /// Byte offset and length of an in-range extent.
    pub fn extent_bytes(
        &self,
        lba: Lba,
        blocks: BlockCount,
    ) -> Result<(ByteOffset, ByteCount), Sense> {
        let bs = self.cfg.block_size;
        match (lba.to_bytes(bs), blocks.to_bytes(bs)) {
            (Some(off), Some(len)) => Ok((off, len)),
            _ => Err(Sense::lba_out_of_range()),
        }
    }
}

/// FNV-1a, 64-bit: a fixed, documented hash (stable across builds and
/// processes, unlike std's RandomState).
pub fn fnv1a64(data: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    data.iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// NAA 6 (IEEE Registered Extended) designator, SPC-5 7.7.6 (NAA designator format): NAA (4
/// bits), IEEE COMPANY ID (24 bits), VENDOR SPECIFIC IDENTIFIER (36 bits),
/// VENDOR SPECIFIC IDENTIFIER EXTENSION (64 bits). The 100 vendor bits are
/// FNV-1a 64 of the identity (extension) and of "naa:" + identity (VSI).
pub fn naa_designator(identity: &str) -> [u8; 16] {
    let ext = fnv1a64(identity.as_bytes());
    let mut salted = b"naa:".to_vec();
    salted.extend_from_slice(identity.as_bytes());
    let vsi = fnv1a64(&salted) & 0xF_FFFF_FFFF; // 36 bits
    let hi: u64 = (0x6u64 << 60) | (u64::from(NAA_COMPANY_ID) << 36) | vsi;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&ext.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn naa_is_stable_and_well_formed() {
        let a = naa_designator("/dev/sdb");
        assert_eq!(a, naa_designator("/dev/sdb"));
        assert_ne!(a, naa_designator("/dev/sdc"));
        // NAA 6 + company ID ACDE48h.
        assert_eq!(a[0], 0x6a);
        assert_eq!(a[1], 0xcd);
        assert_eq!(a[2], 0xe4);
        assert_eq!(a[3] >> 4, 0x8);
    }
}
