//! virtio-scsi wire structures (virtio 1.2, 5.6.6). All fields little-endian.
//! Sizes assume the default config: cdb_size 32, sense_size 96 (QEMU builds
//! the config space and Linux never changes these).

use vm_memory::ByteValued;

pub const CDB_SIZE: usize = 32;
pub const SENSE_SIZE: usize = 96;

// Response codes (5.6.6.1).
pub const S_OK: u8 = 0;
/// Task management: the function completed (same value as S_OK).
pub const S_FUNCTION_COMPLETE: u8 = 0;
pub const S_OVERRUN: u8 = 1;
pub const S_ABORTED: u8 = 2;
pub const S_BAD_TARGET: u8 = 3;
pub const S_RESET: u8 = 4;
pub const S_BUSY: u8 = 5;
pub const S_TRANSPORT_FAILURE: u8 = 6;
pub const S_TARGET_FAILURE: u8 = 7;
pub const S_NEXUS_FAILURE: u8 = 8;
pub const S_FAILURE: u8 = 9;
pub const S_FUNCTION_SUCCEEDED: u8 = 10;
pub const S_FUNCTION_REJECTED: u8 = 11;
pub const S_INCORRECT_LUN: u8 = 12;

// Control queue request types (5.6.6.2).
pub const T_TMF: u32 = 0;
pub const T_AN_QUERY: u32 = 1;
pub const T_AN_SUBSCRIBE: u32 = 2;

// Task management subtypes.
pub const T_TMF_ABORT_TASK: u32 = 0;
pub const T_TMF_ABORT_TASK_SET: u32 = 1;
pub const T_TMF_CLEAR_ACA: u32 = 2;
pub const T_TMF_CLEAR_TASK_SET: u32 = 3;
pub const T_TMF_I_T_NEXUS_RESET: u32 = 4;
pub const T_TMF_LOGICAL_UNIT_RESET: u32 = 5;
pub const T_TMF_QUERY_TASK: u32 = 6;
pub const T_TMF_QUERY_TASK_SET: u32 = 7;

// Event queue (5.6.6.3).
pub const T_NO_EVENT: u32 = 0;
pub const T_TRANSPORT_RESET: u32 = 1;
pub const T_ASYNC_NOTIFY: u32 = 2;
pub const T_PARAM_CHANGE: u32 = 3;
pub const T_EVENTS_MISSED: u32 = 0x8000_0000;

// Feature bits (5.6.3).
pub const F_INOUT: u64 = 1 << 0;
pub const F_HOTPLUG: u64 = 1 << 1;
pub const F_CHANGE: u64 = 1 << 2;
pub const F_T10_PI: u64 = 1 << 3;

/// Command request header (device-readable), followed by data-out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct CmdReqHeader {
    pub lun: [u8; 8],
    pub tag: u64,
    pub task_attr: u8,
    pub prio: u8,
    pub crn: u8,
    pub cdb: [u8; CDB_SIZE],
}

/// Command response header (device-writable), followed by data-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, packed)]
pub struct CmdRespHeader {
    pub sense_len: u32,
    pub resid: u32,
    pub status_qualifier: u16,
    pub status: u8,
    pub response: u8,
    pub sense: [u8; SENSE_SIZE],
}

impl Default for CmdRespHeader {
    fn default() -> Self {
        CmdRespHeader {
            sense_len: 0,
            resid: 0,
            status_qualifier: 0,
            status: 0,
            response: 0,
            sense: [0; SENSE_SIZE],
        }
    }
}

/// Task management request (control queue, type T_TMF).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct CtrlTmfReq {
    pub type_: u32,
    pub subtype: u32,
    pub lun: [u8; 8],
    pub tag: u64,
}

/// Task management response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct CtrlTmfResp {
    pub response: u8,
}

/// Asynchronous notification query/subscribe request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct CtrlAnReq {
    pub type_: u32,
    pub lun: [u8; 8],
    pub event_requested: u32,
}

/// Asynchronous notification response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct CtrlAnResp {
    pub event_actual: u32,
    pub response: u8,
}

/// Event queue element.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct Event {
    pub event: u32,
    pub lun: [u8; 8],
    pub reason: u32,
}

// SAFETY: all of these are repr(C, packed) structs of plain integers and byte
// arrays: every bit pattern is valid and there is no padding.
unsafe impl ByteValued for CmdReqHeader {}
// SAFETY: as above.
unsafe impl ByteValued for CmdRespHeader {}
// SAFETY: as above.
unsafe impl ByteValued for CtrlTmfReq {}
// SAFETY: as above.
unsafe impl ByteValued for CtrlTmfResp {}
// SAFETY: as above.
unsafe impl ByteValued for CtrlAnReq {}
// SAFETY: as above.
unsafe impl ByteValued for CtrlAnResp {}
// SAFETY: as above.
unsafe impl ByteValued for Event {}

/// Where a virtio-scsi LUN field points (5.6.6.1: byte 0 is 1, byte 1 the
/// target, bytes 2-3 the LUN in SAM single-level flat or peripheral format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LunAddress {
    /// A well-formed address of `target`/`lun`.
    Lun { target: u8, lun: u16 },
    /// The REPORT LUNS well-known LUN (c1 01 in bytes 2-3).
    ReportLunsWellKnown { target: u8 },
    /// Anything else (byte 0 not 1, unsupported format, bytes 4-7 nonzero).
    Invalid,
}

/// Decode the 8-byte virtio-scsi LUN field.
pub fn decode_lun(lun: &[u8; 8]) -> LunAddress {
    let [b0, target, hi, lo, rest @ ..] = *lun;
    if b0 != 1 || rest != [0; 4] {
        return LunAddress::Invalid;
    }
    match hi >> 6 {
        // Peripheral device addressing (bus 0) or flat space addressing.
        0 | 1 => LunAddress::Lun {
            target,
            lun: (u16::from(hi & 0x3f) << 8) | u16::from(lo),
        },
        3 if hi == 0xc1 && lo == 0x01 => LunAddress::ReportLunsWellKnown { target },
        _ => LunAddress::Invalid,
    }
}

/// Encode target/LUN exactly as Linux's virtio_scsi does
/// (`virtio_scsi_init_hdr`): flat space addressing (0x40) for every LUN.
/// Some backends (rust-vmm's vhost-device-scsi) accept nothing else.
pub fn encode_lun(target: u8, lun: u16) -> [u8; 8] {
    let lun = lun & 0x3fff;
    [
        1,
        target,
        0x40 | (lun >> 8) as u8,
        (lun & 0xff) as u8,
        0,
        0,
        0,
        0,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_spec() {
        assert_eq!(std::mem::size_of::<CmdReqHeader>(), 51);
        assert_eq!(std::mem::size_of::<CmdRespHeader>(), 108);
        assert_eq!(std::mem::size_of::<CtrlTmfReq>(), 24);
        assert_eq!(std::mem::size_of::<CtrlTmfResp>(), 1);
        assert_eq!(std::mem::size_of::<CtrlAnReq>(), 16);
        assert_eq!(std::mem::size_of::<CtrlAnResp>(), 5);
        assert_eq!(std::mem::size_of::<Event>(), 16);
    }

    #[test]
    fn lun_addressing_round_trips() {
        for lun in [0u16, 1, 255, 256, 16383] {
            assert_eq!(
                decode_lun(&encode_lun(0, lun)),
                LunAddress::Lun { target: 0, lun }
            );
        }
        assert_eq!(decode_lun(&[0, 0, 0, 0, 0, 0, 0, 0]), LunAddress::Invalid);
        assert_eq!(decode_lun(&[1, 0, 0, 0, 0, 0, 0, 1]), LunAddress::Invalid);
        assert_eq!(
            decode_lun(&[1, 0, 0x80, 0, 0, 0, 0, 0]),
            LunAddress::Invalid
        );
        assert_eq!(encode_lun(3, 0x1234), [1, 3, 0x52, 0x34, 0, 0, 0, 0]);
        assert_eq!(encode_lun(0, 0), [1, 0, 0x40, 0, 0, 0, 0, 0]);
        // Peripheral addressing (byte 2 = 0) is accepted too.
        assert_eq!(
            decode_lun(&[1, 0, 0, 5, 0, 0, 0, 0]),
            LunAddress::Lun { target: 0, lun: 5 }
        );
        assert_eq!(
            decode_lun(&[1, 2, 0xc1, 1, 0, 0, 0, 0]),
            LunAddress::ReportLunsWellKnown { target: 2 }
        );
    }
}
