//! The one table of supported commands, and the checks every CDB passes
//! before its handler runs. A command that is not in [`COMMANDS`] cannot be
//! dispatched.
//!
//! Each entry carries the CDB USAGE DATA of REPORT SUPPORTED OPERATION CODES
//! (SPC-5, REPORT SUPPORTED OPERATION CODES): byte 0 is the opcode, and in every other byte a set bit
//! means "this bit is a field the device server looks at". Its length is the
//! CDB length. The same mask drives the reserved-bit check: a bit set in the
//! CDB outside the mask is a reserved bit (SPC-5 clause 3, keyword "reserved") and
//! the command is terminated with INVALID FIELD IN CDB pointing at it.

use std::cell::RefCell;
use std::io::Read;

use super::cdb::{field_byte, Cdb};
use super::lun::LogicalUnit;
use super::target::Target;
use super::{
    basic, capacity, caw, inquiry, lba_status, mode, mode_select, pr, rsoc, rw, unmap, verify,
    write_same, NexusId, Outcome, Sense,
};

/// REPORT LUNS: always answered by the target, also for passthrough units.
pub(crate) const REPORT_LUNS: u8 = 0xa0;

/// Everything a handler may look at.
pub struct Ctx<'a> {
    pub target: &'a Target,
    /// The I_T nexus the command came through.
    pub nexus: NexusId,
    /// The LUN the command was addressed to (it may not exist).
    pub lun: u16,
    /// The logical unit, None when `lun` is not configured.
    pub lu: Option<&'a LogicalUnit>,
    /// The CDB, exactly as long as the entry's CDB length.
    pub cdb: Cdb<'a>,
    /// The initiator's data-out (parameter lists, WRITE SAME / VERIFY /
    /// COMPARE AND WRITE buffers).
    pub data_out: RefCell<&'a mut dyn Read>,
}

impl<'a> Ctx<'a> {
    /// The addressed logical unit, or LOGICAL UNIT NOT SUPPORTED.
    pub fn lu(&self) -> Result<&'a LogicalUnit, Sense> {
        self.lu.ok_or(Sense::lun_not_supported())
    }

    /// Reads exactly `len` bytes of data-out. Fewer available: PARAMETER
    /// LIST LENGTH ERROR (the initiator's data-out is shorter than the CDB
    /// says); a transport read error: INTERNAL TARGET FAILURE.
    pub fn read_data(&self, len: usize) -> Result<Vec<u8>, Sense> {
        let mut buf = Vec::new();
        let mut r = self.data_out.borrow_mut();
        let limit = u64::try_from(len).unwrap_or(u64::MAX);
        (&mut **r)
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|_| Sense::internal_target_failure())?;
        if buf.len() < len {
            return Err(Sense::param_list_length_error());
        }
        Ok(buf)
    }
}

/// A command handler: data, I/O or flush on success, a CHECK CONDITION
/// sense otherwise.
pub type Handler = fn(&Ctx<'_>) -> Result<Outcome, Sense>;

/// How a command behaves in the presence of reservations (SPC-4 5.9.1 table
/// "SPC commands that are allowed in the presence of various reservations",
/// SBC-4 4.17 table of block commands; SPC-2 5.5.1 for RESERVE/RELEASE).
/// For a nexus that does not hold the persistent reservation (and is not a
/// registrant under a registrants-only / all-registrants type):
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrClass {
    /// Always allowed, even under another nexus's RESERVE (INQUIRY, REPORT
    /// LUNS, REQUEST SENSE, REPORT SUPPORTED OPERATION CODES / TASK
    /// MANAGEMENT FUNCTIONS).
    Any,
    /// Allowed under every persistent reservation type; conflicts under
    /// another nexus's RESERVE (TEST UNIT READY, READ CAPACITY, START STOP).
    Allowed,
    /// Reads: allowed under Write Exclusive types, conflict under Exclusive
    /// Access types and under another nexus's RESERVE.
    Read,
    /// Writes: conflict under every persistent reservation type and under
    /// another nexus's RESERVE.
    Write,
    /// PERSISTENT RESERVE IN/OUT: allowed (OUT checks keys itself); conflict
    /// while any RESERVE(6)/(10) reservation exists (SPC-4 5.9.3).
    Persistent,
    /// RESERVE/RELEASE(6)/(10): conflict while any persistent reservation
    /// registration exists (SPC-4 5.9.3); the handler applies SPC-2.
    Legacy,
}

/// One supported command.
#[derive(Debug)]
pub struct Command {
    pub opcode: u8,
    /// SERVICE ACTION (CDB byte 1 bits 4-0) for opcodes that have one.
    pub service_action: Option<u8>,
    pub name: &'static str,
    /// CDB USAGE DATA; `usage.len()` is the CDB length.
    pub usage: &'static [u8],
    /// Also served for a LUN that does not exist (INQUIRY, REPORT LUNS,
    /// REQUEST SENSE; SPC-5, incorrect logical unit handling). These are
    /// also the commands that neither report nor clear a unit attention
    /// (SAM-5 5.14).
    pub any_lun: bool,
    /// Behaviour under reservations.
    pub pr_class: PrClass,
    /// Whether the command exists on a given logical unit (UNMAP only where
    /// the backing can deallocate). A command that is not available is an
    /// INVALID COMMAND OPERATION CODE there and is not reported by REPORT
    /// SUPPORTED OPERATION CODES.
    pub available: fn(Option<&LogicalUnit>) -> bool,
    pub handler: Handler,
}

/// `available` of commands every logical unit has.
fn always(_: Option<&LogicalUnit>) -> bool {
    true
}

impl Command {
    pub fn cdb_len(&self) -> usize {
        self.usage.len()
    }
}

/// CONTROL byte usage (SAM-5 5.2): vendor specific bits 7-6, NACA bit 2 and
/// the obsolete FLAG/LINK bits 1-0; bits 5-3 are reserved.
const CTL: u8 = 0xc7;
/// CONTROL byte NACA bit (SAM-5 5.2). We do not support ACA.
const NACA: u8 = 0x04;

macro_rules! cmd {
    ($op:expr, $sa:expr, $name:expr, $any:expr, $class:ident, $h:path, [$($u:expr),* $(,)?]) => {
        cmd!($op, $sa, $name, $any, $class, $h, [$($u),*], always)
    };
    ($op:expr, $sa:expr, $name:expr, $any:expr, $class:ident, $h:path, [$($u:expr),* $(,)?], $avail:path) => {
        Command {
            opcode: $op,
            service_action: $sa,
            name: $name,
            usage: &[$op, $($u),*],
            any_lun: $any,
            pr_class: PrClass::$class,
            available: $avail,
            handler: $h,
        }
    };
}

/// PERSISTENT RESERVE IN CDB usage (SPC-4 6.14): SERVICE ACTION, ALLOCATION
/// LENGTH bytes 7-8.
macro_rules! pr_in {
    ($sa:expr, $name:expr) => {
        cmd!(
            0x5e,
            Some($sa),
            $name,
            false,
            Persistent,
            pr::pr_in,
            [0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, CTL]
        )
    };
}

/// PERSISTENT RESERVE OUT CDB usage (SPC-4 6.15): SERVICE ACTION, SCOPE and
/// TYPE byte 2, PARAMETER LIST LENGTH bytes 5-8.
macro_rules! pr_out {
    ($sa:expr, $name:expr) => {
        cmd!(
            0x5f,
            Some($sa),
            $name,
            false,
            Persistent,
            pr::pr_out,
            [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, CTL]
        )
    };
}

/// The supported commands, in ascending opcode (then service action) order.
#[rustfmt::skip]
pub static COMMANDS: &[Command] = &[
    cmd!(0x00, None, "TEST UNIT READY", false, Allowed, basic::test_unit_ready,
        [0, 0, 0, 0, CTL]),
    cmd!(0x03, None, "REQUEST SENSE", true, Any, basic::request_sense,
        [0x01, 0, 0, 0xff, CTL]),
    cmd!(0x08, None, "READ(6)", false, Read, rw::read6,
        [0x1f, 0xff, 0xff, 0xff, CTL]),
    cmd!(0x0a, None, "WRITE(6)", false, Write, rw::write6,
        [0x1f, 0xff, 0xff, 0xff, CTL]),
    cmd!(0x12, None, "INQUIRY", true, Any, inquiry::inquiry,
        [0x01, 0xff, 0xff, 0xff, CTL]),
    cmd!(0x15, None, "MODE SELECT(6)", false, Write, mode_select::mode_select6,
        [0x11, 0, 0, 0xff, CTL]),
    cmd!(0x16, None, "RESERVE(6)", false, Legacy, pr::reserve,
        [0, 0, 0, 0, CTL]),
    cmd!(0x17, None, "RELEASE(6)", false, Legacy, pr::release,
        [0, 0, 0, 0, CTL]),
    cmd!(0x1a, None, "MODE SENSE(6)", false, Read, mode::mode_sense6,
        [0x08, 0xff, 0xff, 0xff, CTL]),
    cmd!(0x1b, None, "START STOP UNIT", false, Allowed, basic::start_stop_unit,
        [0x01, 0, 0x0f, 0xf7, CTL]),
    cmd!(0x25, None, "READ CAPACITY(10)", false, Allowed, capacity::read_capacity10,
        [0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, CTL]),
    cmd!(0x28, None, "READ(10)", false, Read, rw::read10,
        [0xfe, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, CTL]),
    cmd!(0x2a, None, "WRITE(10)", false, Write, rw::write10,
        [0xfa, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, CTL]),
    cmd!(0x2e, None, "WRITE AND VERIFY(10)", false, Write, verify::write_verify10,
        [0xf6, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, CTL]),
    cmd!(0x2f, None, "VERIFY(10)", false, Read, verify::verify10,
        [0xf6, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, CTL]),
    cmd!(0x35, None, "SYNCHRONIZE CACHE(10)", false, Write, rw::sync_cache10,
        [0x06, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, CTL]),
    cmd!(0x41, None, "WRITE SAME(10)", false, Write, write_same::write_same10,
        [0xfe, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, CTL]),
    cmd!(0x42, None, "UNMAP", false, Write, unmap::unmap,
        [0x01, 0, 0, 0, 0, 0x1f, 0xff, 0xff, CTL], unmap::available),
    cmd!(0x55, None, "MODE SELECT(10)", false, Write, mode_select::mode_select10,
        [0x11, 0, 0, 0, 0, 0, 0xff, 0xff, CTL]),
    cmd!(0x56, None, "RESERVE(10)", false, Legacy, pr::reserve,
        [0, 0, 0, 0, 0, 0, 0, 0, CTL]),
    cmd!(0x57, None, "RELEASE(10)", false, Legacy, pr::release,
        [0, 0, 0, 0, 0, 0, 0, 0, CTL]),
    cmd!(0x5a, None, "MODE SENSE(10)", false, Read, mode::mode_sense10,
        [0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, CTL]),
    pr_in!(0x00, "PERSISTENT RESERVE IN / READ KEYS"),
    pr_in!(0x01, "PERSISTENT RESERVE IN / READ RESERVATION"),
    pr_in!(0x02, "PERSISTENT RESERVE IN / REPORT CAPABILITIES"),
    pr_in!(0x03, "PERSISTENT RESERVE IN / READ FULL STATUS"),
    pr_out!(0x00, "PERSISTENT RESERVE OUT / REGISTER"),
    pr_out!(0x01, "PERSISTENT RESERVE OUT / RESERVE"),
    pr_out!(0x02, "PERSISTENT RESERVE OUT / RELEASE"),
    pr_out!(0x03, "PERSISTENT RESERVE OUT / CLEAR"),
    pr_out!(0x04, "PERSISTENT RESERVE OUT / PREEMPT"),
    pr_out!(0x05, "PERSISTENT RESERVE OUT / PREEMPT AND ABORT"),
    pr_out!(0x06, "PERSISTENT RESERVE OUT / REGISTER AND IGNORE EXISTING KEY"),
    cmd!(0x88, None, "READ(16)", false, Read, rw::read16,
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0xdf, CTL]),
    cmd!(0x89, None, "COMPARE AND WRITE", false, Write, caw::compare_and_write,
        [0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0, 0, 0, 0xff, 0x1f, CTL]),
    cmd!(0x8a, None, "WRITE(16)", false, Write, rw::write16,
        [0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0xdf, CTL]),
    cmd!(0x8e, None, "WRITE AND VERIFY(16)", false, Write, verify::write_verify16,
        [0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0x1f, CTL]),
    cmd!(0x8f, None, "VERIFY(16)", false, Read, verify::verify16,
        [0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0x1f, CTL]),
    cmd!(0x91, None, "SYNCHRONIZE CACHE(16)", false, Write, rw::sync_cache16,
        [0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0x1f, CTL]),
    cmd!(0x93, None, "WRITE SAME(16)", false, Write, write_same::write_same16,
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0x1f, CTL]),
    cmd!(0x9e, Some(0x10), "READ CAPACITY(16)", false, Allowed, capacity::read_capacity16,
        [0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0x01, CTL]),
    cmd!(0x9e, Some(0x12), "GET LBA STATUS", false, Read, lba_status::get_lba_status,
        [0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0x03, CTL]),
    cmd!(0xa0, None, "REPORT LUNS", true, Any, basic::report_luns,
        [0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, CTL]),
    cmd!(0xa3, Some(0x0c), "REPORT SUPPORTED OPERATION CODES", false, Any, rsoc::rsoc,
        [0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, CTL]),
    cmd!(0xa3, Some(0x0d), "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", false, Any,
        rsoc::rstmf,
        [0x1f, 0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, CTL]),
    cmd!(0xa8, None, "READ(12)", false, Read, rw::read12,
        [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x9f, CTL]),
    cmd!(0xaa, None, "WRITE(12)", false, Write, rw::write12,
        [0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x9f, CTL]),
];

/// Finds the table entry for a CDB:
/// - no opcode byte, or an opcode not in the table: INVALID COMMAND
///   OPERATION CODE;
/// - a CDB shorter than the opcode's CDB length: INVALID FIELD IN CDB with
///   the field pointer at the first missing byte;
/// - a service action not in the table: INVALID FIELD IN CDB, byte 1 bit 4
///   (the SERVICE ACTION field).
pub fn lookup(cdb: &[u8]) -> Result<&'static Command, Sense> {
    let opcode = *cdb.first().ok_or(Sense::invalid_opcode())?;
    let first = COMMANDS
        .iter()
        .find(|c| c.opcode == opcode)
        .ok_or(Sense::invalid_opcode())?;
    if cdb.len() < first.cdb_len() {
        return Err(Sense::invalid_field_in_cdb(field_byte(cdb.len()), None));
    }
    if first.service_action.is_none() {
        return Ok(first);
    }
    let sa = cdb.get(1).map_or(0, |b| b & 0x1f);
    COMMANDS
        .iter()
        .find(|c| c.opcode == opcode && c.service_action == Some(sa))
        .ok_or(Sense::invalid_field_in_cdb(1, Some(4)))
}

/// Checks that apply to every CDB (`cdb` is cut to the command's length):
/// NACA set in the CONTROL byte -> INVALID FIELD IN CDB at the control byte,
/// bit 2 (SAM-5 5.2: we do not support ACA, NormACA=0 in INQUIRY); then any
/// reserved bit set -> INVALID FIELD IN CDB at its byte and bit.
pub fn check_cdb(cmd: &Command, cdb: &Cdb<'_>) -> Result<(), Sense> {
    let bytes = cdb.bytes();
    let last = bytes.len().saturating_sub(1);
    if bytes.get(last).is_some_and(|c| c & NACA != 0) {
        return Err(Sense::invalid_field_in_cdb(field_byte(last), Some(2)));
    }
    // Fast path (every command): no byte past the opcode has a bit the
    // usage map does not allow. Both are at most 16 bytes: compare them as
    // two 128-bit words.
    let mut b = [0u8; 16];
    let mut u = [0xffu8; 16];
    let n = bytes.len().min(cmd.usage.len()).min(16);
    if let (Some(bd), Some(bs), Some(ud), Some(us)) = (
        b.get_mut(..n),
        bytes.get(..n),
        u.get_mut(..n),
        cmd.usage.get(..n),
    ) {
        bd.copy_from_slice(bs);
        ud.copy_from_slice(us);
    }
    // Byte 0 (the opcode) is never checked.
    b[0] = 0;
    if u128::from_ne_bytes(b) & !u128::from_ne_bytes(u) == 0 {
        return Ok(());
    }
    for (i, (b, u)) in bytes.iter().zip(cmd.usage).enumerate().skip(1) {
        let reserved = b & !u;
        if reserved != 0 {
            // Point at the most significant offending bit.
            let bit = 7 - reserved.leading_zeros() as u8;
            return Err(Sense::invalid_field_in_cdb(field_byte(i), Some(bit)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_consistent() {
        for w in COMMANDS.windows(2) {
            let a = (w[0].opcode, w[0].service_action);
            let b = (w[1].opcode, w[1].service_action);
            assert!(a < b, "{} / {}", w[0].name, w[1].name);
        }
        for c in COMMANDS {
            assert_eq!(c.usage[0], c.opcode, "{}", c.name);
            // CDB length follows the group code (SPC-5 4.2.5).
            let expect = match c.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                _ => 0,
            };
            assert_eq!(c.cdb_len(), expect, "{}", c.name);
            if let Some(sa) = c.service_action {
                assert_eq!(c.usage[1] & 0x1f, 0x1f, "{}", c.name);
                assert!(sa <= 0x1f);
            }
        }
    }

    #[test]
    fn lookup_errors() {
        let e = lookup(&[]).unwrap_err();
        assert_eq!((e.asc, e.field_pointer), (0x20, None));
        let e = lookup(&[0xff; 16]).unwrap_err();
        assert_eq!(e.asc, 0x20);
        let e = lookup(&[0x28, 0, 0]).unwrap_err();
        assert_eq!(e.asc, 0x24);
        assert_eq!(e.field_pointer.unwrap().byte, 3);
        let mut rc16 = [0u8; 16];
        rc16[0] = 0x9e;
        rc16[1] = 0x11;
        let e = lookup(&rc16).unwrap_err();
        assert_eq!(e.to_fixed()[15..18], [0xcc, 0, 1]);
        rc16[1] = 0x10;
        assert_eq!(lookup(&rc16).unwrap().name, "READ CAPACITY(16)");
    }
}
