//! A transport-independent SCSI target (SAM-5/SPC-5/SBC-4 subset).
//!
//! It knows nothing of virtio: the transport hands it a LUN number, a CDB and
//! the sizes of the initiator's buffers, and gets back an [`Outcome`]:
//! - emulated commands (INQUIRY, MODE SENSE, ...) complete at once with a
//!   status, optional sense data and the data-in bytes;
//! - READ/WRITE are decoded into a [`BlockIo`] that the transport executes
//!   against its own (guest-memory) buffers through the block layer, then
//!   reports back through [`io_error_sense`] on failure;
//! - SYNCHRONIZE CACHE becomes [`Outcome::Flush`].
//!
//! CONTRACT (shared with the vhost layer; change only together):
//! `Target::new`, `Target::execute`, `Outcome`, `BlockIo`, `IoDir`, `Status`,
//! `Sense`, `Sense::to_fixed`, `io_error_sense`, `LunConfig`.

use crate::units::{BlockCount, ByteCount, ByteOffset, Lba};

/// SAM status codes (SAM-5 5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Good = 0x00,
    CheckCondition = 0x02,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
}

/// Sense keys (SPC-5 4.4.8, table 52).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    AbortedCommand = 0xb,
    Miscompare = 0xe,
}

/// Sense data: key, additional sense code and qualifier, plus the optional
/// INFORMATION field and sense-key-specific field pointer (SPC-5 4.4.2.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION field (VALID bit set when present).
    pub info: Option<u32>,
    /// Sense-key-specific field pointer for ILLEGAL REQUEST:
    /// (in_cdb: C/D bit, byte index, bit index or None).
    pub field_pointer: Option<FieldPointer>,
}

/// Sense-key-specific field pointer (SPC-5 4.4.2.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// true: the error is in the CDB (C/D=1); false: in the parameter list.
    pub in_cdb: bool,
    pub byte: u16,
    /// Bit within the byte (BPV set when Some).
    pub bit: Option<u8>,
}

/// Direction of a block I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDir {
    /// Device to initiator (data-in).
    Read,
    /// Initiator to device (data-out).
    Write,
}

/// A decoded READ or WRITE: the transport moves `len` bytes between its
/// buffers and the backing device at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockIo {
    pub dir: IoDir,
    pub lba: Lba,
    pub blocks: BlockCount,
    /// `lba` in bytes.
    pub offset: ByteOffset,
    /// `blocks` in bytes.
    pub len: ByteCount,
    /// Force unit access: the write (or the read's cache) must be durable
    /// when the command completes.
    pub fua: bool,
}

/// What the transport must do with a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Finished. `data` is the data-in, already cut to the CDB's allocation
    /// length; the transport cuts it again to its buffer and reports the
    /// residual.
    Complete {
        status: Status,
        sense: Option<Sense>,
        data: Vec<u8>,
    },
    /// Execute a block read or write, then complete with GOOD (or with the
    /// sense of [`io_error_sense`] if it failed).
    Io(BlockIo),
    /// Flush the backing device's volatile cache, then complete with GOOD.
    Flush,
}

impl Outcome {
    /// GOOD, no data.
    pub fn good() -> Outcome {
        Outcome::data_in(Vec::new())
    }

    /// GOOD with data-in (already cut to the allocation length).
    pub fn data_in(data: Vec<u8>) -> Outcome {
        Outcome::Complete {
            status: Status::Good,
            sense: None,
            data,
        }
    }

    /// CHECK CONDITION with `sense` (autosense), no data.
    pub fn check_condition(sense: Sense) -> Outcome {
        Outcome::Complete {
            status: Status::CheckCondition,
            sense: Some(sense),
            data: Vec::new(),
        }
    }
}

mod basic;
mod capacity;
mod cdb;
mod inquiry;
mod lun;
mod mode;
mod opcodes;
mod rw;
mod sense;
mod target;
#[cfg(test)]
mod tests;

pub use lun::{fnv1a64, naa_designator, NAA_COMPANY_ID, PRODUCT, VENDOR};
pub use opcodes::{Command, COMMANDS};
pub use sense::io_error_sense;
pub use target::{LunConfig, ScsiError, Target, MAX_LUN, MAX_SERIAL_LEN};
