//! The target: a map of logical units and the dispatcher that runs a CDB
//! through the opcode table (SAM-5 5.1 command model).

use std::io::Read;

use super::cdb::Cdb;
use super::lun::LogicalUnit;
use super::opcodes::{self, Ctx};
use super::{Outcome, Sense};
use crate::units::{BlockCount, BlockSize};

/// Largest LUN we address: 14-bit flat space addressing (SAM-5 4.7).
pub const MAX_LUN: u16 = 16383;
/// Longest unit serial number (VPD 80h; the T10 vendor ID designator of
/// VPD 83h keeps the first 247 bytes).
pub const MAX_SERIAL_LEN: usize = 252;

/// Configuration of one logical unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunConfig {
    /// LUN number (0..=16383, flat/peripheral addressing).
    pub lun: u16,
    pub block_size: BlockSize,
    pub num_blocks: BlockCount,
    pub readonly: bool,
    /// Unit serial number (VPD 80h). At most 252 printable ASCII bytes.
    pub serial: String,
    /// A stable identity of the backing store (e.g. its canonical path):
    /// the NAA designator of VPD 83h is derived from it.
    pub identity: String,
    /// False for files and non-rotational devices (VPD B1h rotation rate 1).
    pub rotational: bool,
    /// Largest transfer in blocks (VPD B0h MAXIMUM TRANSFER LENGTH; READ and
    /// WRITE longer than this are rejected). 0: no limit.
    pub max_transfer_blocks: u32,
    /// Preferred transfer size in blocks (VPD B0h OPTIMAL TRANSFER LENGTH).
    pub optimal_transfer_blocks: u32,
}

/// Errors building a target (configuration errors, never guest input).
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    #[error("duplicate LUN {0}")]
    DuplicateLun(u16),
    #[error("LUN {0} is out of range (0..=16383)")]
    LunOutOfRange(u16),
    #[error("LUN {lun}: {reason}")]
    InvalidConfig { lun: u16, reason: &'static str },
}

/// A SCSI target: a map of logical units. `Send + Sync`: shared by all
/// queues through an `Arc`; the only mutable state is atomics in
/// [`LogicalUnit`].
pub struct Target {
    /// Sorted by LUN number, unique.
    luns: Vec<LogicalUnit>,
}

impl Target {
    /// Builds a target. Rejects duplicate LUNs, LUNs above 16383, empty
    /// units, and serial numbers that are not at most 252 printable ASCII
    /// bytes.
    pub fn new(luns: Vec<LunConfig>) -> Result<Self, ScsiError> {
        let mut luns = luns;
        luns.sort_by_key(|l| l.lun);
        for w in luns.windows(2) {
            if let [a, b] = w {
                if a.lun == b.lun {
                    return Err(ScsiError::DuplicateLun(a.lun));
                }
            }
        }
        for l in &luns {
            validate(l)?;
        }
        Ok(Target {
            luns: luns.into_iter().map(LogicalUnit::new).collect(),
        })
    }

    /// The configured LUN numbers, ascending.
    pub fn lun_numbers(&self) -> Vec<u16> {
        self.luns.iter().map(|l| l.cfg.lun).collect()
    }

    fn logical_unit(&self, lun: u16) -> Option<&LogicalUnit> {
        self.luns
            .binary_search_by_key(&lun, |l| l.cfg.lun)
            .ok()
            .and_then(|i| self.luns.get(i))
    }

    /// Execute one command addressed to `lun`. `cdb` is the CDB as sent
    /// (the transport passes its whole CDB field; trailing bytes beyond the
    /// opcode's length are ignored). `data_out` yields the initiator's
    /// data-out bytes for commands with a parameter list (none yet: WRITE
    /// data moves through [`Outcome::Io`]). Never panics.
    pub fn execute(&self, lun: u16, cdb: &[u8], data_out: &mut dyn Read) -> Outcome {
        let _ = data_out;
        match self.dispatch(lun, cdb) {
            Ok(outcome) => outcome,
            Err(sense) => Outcome::check_condition(sense),
        }
    }

    /// SAM-5 5.1: look the command up, answer for a missing LUN (SPC-5,
    /// incorrect logical unit: only INQUIRY, REPORT LUNS and REQUEST SENSE are served there;
    /// anything else is LOGICAL UNIT NOT SUPPORTED), check the CDB, run the
    /// handler.
    fn dispatch(&self, lun: u16, cdb: &[u8]) -> Result<Outcome, Sense> {
        let found = opcodes::lookup(cdb);
        let lu = self.logical_unit(lun);
        if lu.is_none() && !matches!(found, Ok(cmd) if cmd.any_lun) {
            return Err(Sense::lun_not_supported());
        }
        let cmd = found?;
        let cdb = Cdb::new(cdb.get(..cmd.cdb_len()).ok_or(Sense::invalid_opcode())?);
        opcodes::check_cdb(cmd, &cdb)?;
        (cmd.handler)(&Ctx {
            target: self,
            lun,
            lu,
            cdb,
        })
    }
}

fn validate(l: &LunConfig) -> Result<(), ScsiError> {
    let bad = |reason| ScsiError::InvalidConfig { lun: l.lun, reason };
    if l.lun > MAX_LUN {
        return Err(ScsiError::LunOutOfRange(l.lun));
    }
    if l.num_blocks.0 == 0 {
        return Err(bad("a logical unit needs at least one block"));
    }
    if l.num_blocks.to_bytes(l.block_size).is_none() {
        return Err(bad("capacity overflows 64 bits of bytes"));
    }
    if l.serial.len() > MAX_SERIAL_LEN {
        return Err(bad("serial number longer than 252 bytes"));
    }
    if !l.serial.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(bad("serial number is not printable ASCII"));
    }
    Ok(())
}
