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
//! - a unit with `passthrough` answers only REPORT LUNS itself: every other
//!   command becomes [`Outcome::Passthrough`] for the host device.
//! - UNMAP, WRITE SAME, VERIFY, WRITE AND VERIFY, COMPARE AND WRITE and
//!   GET LBA STATUS become the matching [`Outcome`] variants, with their
//!   small data-out buffers already read and checked.
//!
//! State kept per logical unit (behind a mutex): unit attentions per I_T
//! nexus, the caching mode page WCE bit, persistent and legacy
//! reservations.
//!
//! CONTRACT (shared with the vhost layer; change only together):
//! `Target::new`, `Target::with_pr_store`, `Target::execute`,
//! `Target::lun_reset`, `Target::nexus_reset`, `Target::capacity_changed`,
//! `Target::luns_changed`, `Outcome`, `BlockIo`, `IoDir`, `Status`, `Sense`,
//! `Sense::to_fixed`, `io_error_sense`, `miscompare_sense`,
//! `lba_status_data`, `LunConfig`, `NexusId`, `ByteRange`, `LbaExtent`.

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
    /// UNMAP (SBC-4 5.31): deallocate every range (validated, in range,
    /// nonempty list), then complete with GOOD. Deallocation is advisory:
    /// a backing that cannot punch a range may leave it mapped.
    Unmap { ranges: Vec<ByteRange> },
    /// WRITE SAME(10)/(16) (SBC-4 5.48/5.50): write `block` (exactly one
    /// logical block) to every block of `range`. `unmap`: the UNMAP bit was
    /// set and the LUN supports unmap -- the transport may deallocate
    /// instead when `block` is all zeros and LBPRZ holds.
    WriteSame {
        range: ByteRange,
        block: Vec<u8>,
        unmap: bool,
        fua: bool,
    },
    /// VERIFY(10)/(16) (SBC-4 5.34/5.36): read `range`; with `expected`
    /// (same length as the range) compare, and on a difference complete
    /// with [`miscompare_sense`] (offset relative to the range start).
    Verify {
        range: ByteRange,
        expected: Option<Vec<u8>>,
    },
    /// WRITE AND VERIFY(10)/(16) (SBC-4 5.54/5.56): write `data` (length of
    /// the range), read it back and compare (miscompare as for `Verify`).
    WriteVerify {
        range: ByteRange,
        data: Vec<u8>,
        fua: bool,
    },
    /// COMPARE AND WRITE (SBC-4 5.3): atomically with respect to every other
    /// command on the LUN, read `range`, compare with `compare`; if equal,
    /// write `write`, else complete with [`miscompare_sense`] and write
    /// nothing. `compare` and `write` have the length of the range.
    CompareAndWrite {
        range: ByteRange,
        compare: Vec<u8>,
        write: Vec<u8>,
        fua: bool,
    },
    /// GET LBA STATUS (SBC-4 5.7): query the backing's allocation map from
    /// `start` and complete with GOOD and
    /// `lba_status_data(start, extents, alloc_len)` as data-in.
    GetLbaStatus {
        lun: u16,
        start: Lba,
        alloc_len: u32,
    },
    /// A command for a passthrough unit ([`LunConfig::passthrough`]): the
    /// transport sends the first `cdb_len` bytes of the CDB to the host
    /// device with the initiator's buffers and returns the device's
    /// status, sense and residual as they are.
    Passthrough { cdb_len: usize },
}

/// An I_T nexus: the transport gives one per vhost-user controller
/// connection, stable across daemon restarts for the same controller (it
/// keys persisted PR registrations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NexusId(pub u64);

/// A byte range of a LUN's backing store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: ByteOffset,
    pub len: ByteCount,
}

/// One extent of the backing's allocation map, for [`lba_status_data`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbaExtent {
    pub lba: Lba,
    pub blocks: BlockCount,
    /// true: deallocated (a hole); false: mapped.
    pub deallocated: bool,
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

    /// RESERVATION CONFLICT, no sense, no data (SPC-4 5.9.1).
    pub fn reservation_conflict() -> Outcome {
        Outcome::Complete {
            status: Status::ReservationConflict,
            sense: None,
            data: Vec::new(),
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
mod caw;
mod cdb;
mod inquiry;
mod lba_status;
mod lun;
mod mode;
mod mode_select;
mod opcodes;
mod param;
mod pr;
mod rsoc;
mod rw;
mod sense;
mod target;
#[cfg(test)]
mod tests;
mod ua;
mod unmap;
mod verify;
mod write_same;

pub use lba_status::lba_status_data;
pub use lun::{fnv1a64, naa_designator, LogicalUnit, NAA_COMPANY_ID, PRODUCT, VENDOR};
pub use opcodes::{Command, PrClass, COMMANDS};
pub use pr::{DirPrStore, PrStore};
pub use sense::{io_error_sense, miscompare_sense};
pub use target::{
    passthrough_cdb_len, LunConfig, LunMapCache, ScsiError, Target, MAX_LUN, MAX_SERIAL_LEN,
};
