//! STUB: the scsi helper replaces this file (and adds siblings).
//! The public signatures below are the contract with the vhost layer.

use std::io::Read;

use super::{IoDir, Outcome, Sense, SenseKey, Status};
use crate::units::{BlockCount, BlockSize};

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
    /// Largest transfer in blocks (VPD B0h MAXIMUM TRANSFER LENGTH).
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
}

/// A SCSI target: a map of logical units. `Sync`: shared by all queues.
pub struct Target {
    luns: Vec<LunConfig>,
}

impl Target {
    pub fn new(luns: Vec<LunConfig>) -> Result<Self, ScsiError> {
        Ok(Target { luns })
    }

    /// The configured LUN numbers, ascending.
    pub fn lun_numbers(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.luns.iter().map(|l| l.lun).collect();
        v.sort_unstable();
        v
    }

    /// Execute one command addressed to `lun`. `cdb` is the CDB as sent
    /// (the transport passes its whole CDB field; trailing bytes beyond the
    /// opcode's length are ignored). `data_out` yields the initiator's
    /// data-out bytes (for commands with a parameter list). Never panics.
    pub fn execute(&self, lun: u16, cdb: &[u8], data_out: &mut dyn Read) -> Outcome {
        let _ = (lun, cdb, data_out);
        Outcome::Complete {
            status: Status::CheckCondition,
            sense: Some(Sense {
                key: SenseKey::IllegalRequest,
                asc: 0x20,
                ascq: 0,
                info: None,
                field_pointer: None,
            }),
            data: Vec::new(),
        }
    }
}

/// Sense for a failed block I/O: EIO on read MEDIUM ERROR 11h/00h, on write
/// MEDIUM ERROR 0Ch/00h; ENOSPC DATA PROTECT 27h/07h; others HARDWARE ERROR.
pub fn io_error_sense(dir: IoDir, errno: i32) -> Sense {
    let _ = (dir, errno);
    Sense {
        key: SenseKey::MediumError,
        asc: 0x11,
        ascq: 0,
        info: None,
        field_pointer: None,
    }
}

impl Sense {
    /// Fixed-format sense data (SPC-5 4.4.3), 18 bytes.
    pub fn to_fixed(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        b[2] = self.key as u8;
        b[7] = 10;
        b[12] = self.asc;
        b[13] = self.ascq;
        b
    }
}
