//! One logical unit: its configuration, derived identifiers, and the little
//! mutable state it has (atomics, so a `Target` is `Sync`).

use std::sync::atomic::{AtomicBool, Ordering};

use super::target::LunConfig;
use super::Sense;
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
    /// cache the initiator must flush. Changeable once MODE SELECT exists.
    write_cache: AtomicBool,
}

impl LogicalUnit {
    pub fn new(cfg: LunConfig) -> Self {
        let naa = naa_designator(&cfg.identity);
        LogicalUnit {
            cfg,
            naa,
            write_cache: AtomicBool::new(true),
        }
    }

    pub fn write_cache_enabled(&self) -> bool {
        self.write_cache.load(Ordering::Relaxed)
    }

    /// Number of logical blocks.
    pub fn capacity(&self) -> BlockCount {
        self.cfg.num_blocks
    }

    /// The last LBA (capacity - 1; capacity is never 0, `Target::new` checks).
    pub fn last_lba(&self) -> Lba {
        Lba(self.cfg.num_blocks.0.saturating_sub(1))
    }

    /// Checks that `blocks` starting at `lba` lie within the capacity
    /// (SBC-4: LOGICAL BLOCK ADDRESS OUT OF RANGE otherwise), without
    /// overflow.
    pub fn check_range(&self, lba: Lba, blocks: BlockCount) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end.0 <= self.cfg.num_blocks.0 => Ok(()),
            _ => Err(Sense::lba_out_of_range()),
        }
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
