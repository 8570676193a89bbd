//! Sense data: the constructors for every additional sense code this target
//! reports, fixed-format encoding (SPC-5 4.4.3) and the mapping of block I/O
//! errors to sense (`io_error_sense`).
//!
//! ASC/ASCQ values are from the SPC-5 ASC/ASCQ assignments (Annex D).

use super::{FieldPointer, IoDir, Sense, SenseKey};

/// Response code of current, fixed-format sense data (SPC-5 4.4.3).
const FIXED_CURRENT: u8 = 0x70;
/// Response code of current, descriptor-format sense data (SPC-5 4.4.2).
const DESCRIPTOR_CURRENT: u8 = 0x72;
/// Bytes of fixed-format sense data we produce (ADDITIONAL SENSE LENGTH 10).
pub const FIXED_LEN: usize = 18;

impl Sense {
    /// ILLEGAL REQUEST with `asc`/00h and a sense-key-specific field
    /// pointer (SPC-5 4.4.2.4.2) into the CDB (`in_cdb`) or the parameter
    /// list.
    const fn illegal_at(asc: u8, in_cdb: bool, byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc,
            ascq: 0x00,
            info: None,
            field_pointer: Some(FieldPointer { in_cdb, byte, bit }),
        }
    }

    /// A sense with neither INFORMATION nor a field pointer.
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            field_pointer: None,
        }
    }

    /// NO SENSE, 00h/00h NO ADDITIONAL SENSE INFORMATION.
    pub const fn no_sense() -> Sense {
        Sense::new(SenseKey::NoSense, 0x00, 0x00)
    }

    /// ILLEGAL REQUEST, 20h/00h INVALID COMMAND OPERATION CODE.
    pub const fn invalid_opcode() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x20, 0x00)
    }

    /// ILLEGAL REQUEST, 24h/00h INVALID FIELD IN CDB, with a field pointer
    /// to `byte` (and `bit`: the left-most bit of the field in error, or None
    /// when the whole byte or a multi-byte field is meant; SPC-5 4.4.2.4.2).
    pub const fn invalid_field_in_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense::illegal_at(0x24, true, byte, bit)
    }

    /// ILLEGAL REQUEST, 21h/00h LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const fn lba_out_of_range() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x21, 0x00)
    }

    /// ILLEGAL REQUEST, 25h/00h LOGICAL UNIT NOT SUPPORTED.
    pub const fn lun_not_supported() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x25, 0x00)
    }

    /// ILLEGAL REQUEST, 39h/00h SAVING PARAMETERS NOT SUPPORTED, pointing
    /// at the field that asked for saved values (e.g. MODE SENSE PC).
    pub const fn saving_params_not_supported(byte: u16, bit: Option<u8>) -> Sense {
        Sense::illegal_at(0x39, true, byte, bit)
    }

    /// DATA PROTECT, 27h/00h WRITE PROTECTED.
    pub const fn write_protected() -> Sense {
        Sense::new(SenseKey::DataProtect, 0x27, 0x00)
    }

    /// DATA PROTECT, 27h/07h SPACE ALLOCATION FAILED WRITE PROTECT.
    pub const fn space_allocation_failed() -> Sense {
        Sense::new(SenseKey::DataProtect, 0x27, 0x07)
    }

    /// MEDIUM ERROR, 11h/00h UNRECOVERED READ ERROR.
    pub const fn unrecovered_read_error() -> Sense {
        Sense::new(SenseKey::MediumError, 0x11, 0x00)
    }

    /// MEDIUM ERROR, 0Ch/00h WRITE ERROR.
    pub const fn write_error() -> Sense {
        Sense::new(SenseKey::MediumError, 0x0c, 0x00)
    }

    /// HARDWARE ERROR, 44h/00h INTERNAL TARGET FAILURE.
    pub const fn internal_target_failure() -> Sense {
        Sense::new(SenseKey::HardwareError, 0x44, 0x00)
    }

    /// ABORTED COMMAND, 55h/03h INSUFFICIENT RESOURCES: a transient
    /// shortage; initiators retry ABORTED COMMAND.
    pub const fn insufficient_resources() -> Sense {
        Sense::new(SenseKey::AbortedCommand, 0x55, 0x03)
    }

    /// ILLEGAL REQUEST, 26h/00h INVALID FIELD IN PARAMETER LIST, with a
    /// field pointer (C/D=0) to `byte` of the parameter list and `bit`.
    pub const fn invalid_field_in_param(byte: u16, bit: Option<u8>) -> Sense {
        Sense::illegal_at(0x26, false, byte, bit)
    }

    /// ILLEGAL REQUEST, 1Ah/00h PARAMETER LIST LENGTH ERROR: the parameter
    /// list (or data-out) is shorter than its header or the CDB require.
    pub const fn param_list_length_error() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x1a, 0x00)
    }

    /// UNIT ATTENTION with `asc`/`ascq` (SAM-5 5.14).
    pub const fn unit_attention(asc: u8, ascq: u8) -> Sense {
        Sense::new(SenseKey::UnitAttention, asc, ascq)
    }

    /// HARDWARE ERROR, 55h/04h INSUFFICIENT REGISTRATION RESOURCES: the
    /// persistent reservation state could not be saved (APTPL).
    pub const fn insufficient_registration_resources() -> Sense {
        Sense::new(SenseKey::HardwareError, 0x55, 0x04)
    }

    /// This sense with the INFORMATION field set (VALID bit).
    pub const fn with_info(mut self, info: u32) -> Sense {
        self.info = Some(info);
        self
    }

    /// Fixed-format sense data (SPC-5 4.4.3), 18 bytes.
    pub fn to_fixed(&self) -> [u8; 18] {
        let mut b = [0u8; FIXED_LEN];
        // Byte 0: VALID (bit 7) when INFORMATION is meaningful, RESPONSE CODE.
        b[0] = FIXED_CURRENT | if self.info.is_some() { 0x80 } else { 0 };
        // Byte 2: FILEMARK/EOM/ILI 0, SENSE KEY in bits 3-0.
        b[2] = self.key as u8;
        // Bytes 3-6: INFORMATION.
        if let Some(info) = self.info {
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        // Byte 7: ADDITIONAL SENSE LENGTH (n - 7).
        b[7] = (FIXED_LEN - 8) as u8;
        b[12] = self.asc;
        b[13] = self.ascq;
        // Bytes 15-17: SKSV + sense-key-specific field pointer
        // (SPC-5 4.4.2.4.2).
        if let Some(fp) = self.field_pointer {
            let mut b15 = 0x80; // SKSV
            if fp.in_cdb {
                b15 |= 0x40; // C/D
            }
            if let Some(bit) = fp.bit {
                b15 |= 0x08 | (bit & 0x07); // BPV + BIT POINTER
            }
            b[15] = b15;
            b[16..18].copy_from_slice(&fp.byte.to_be_bytes());
        }
        b
    }

    /// Descriptor-format sense data (SPC-5 4.4.2): the 8-byte header, plus
    /// an information descriptor and a sense key specific descriptor when those fields are present.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut b = vec![
            DESCRIPTOR_CURRENT,
            self.key as u8,
            self.asc,
            self.ascq,
            0,
            0,
            0,
            0,
        ];
        if let Some(info) = self.info {
            // Information descriptor: type 00h, length 0Ah, VALID, 8-byte field.
            b.extend_from_slice(&[0x00, 0x0a, 0x80, 0x00]);
            b.extend_from_slice(&u64::from(info).to_be_bytes());
        }
        if self.field_pointer.is_some() {
            // Sense key specific descriptor: type 02h, length 06h, the same
            // three bytes as fixed format bytes 15-17.
            let fixed = self.to_fixed();
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b.extend_from_slice(&fixed[15..18]);
            b.push(0);
        }
        // ADDITIONAL SENSE LENGTH (n - 7); at most 32 bytes here.
        b[7] = (b.len() - 8) as u8;
        b
    }
}

/// MISCOMPARE, 1Dh/00h MISCOMPARE DURING VERIFY OPERATION, with
/// INFORMATION = `offset`, the offset in bytes of the first differing byte
/// from the start of the compared range (SBC-4 5.3 COMPARE AND WRITE, 5.34
/// VERIFY). Offsets above 4 GiB (never produced: compared buffers are at
/// most the MAXIMUM TRANSFER LENGTH) saturate.
pub fn miscompare_sense(offset: u64) -> Sense {
    Sense::new(SenseKey::Miscompare, 0x1d, 0x00)
        .with_info(u32::try_from(offset).unwrap_or(u32::MAX))
}

/// Sense for a failed block I/O (errno positive or negative, as io_uring
/// reports it):
/// - ENOSPC: DATA PROTECT 27h/07h SPACE ALLOCATION FAILED WRITE PROTECT
///   (what thin-provisioned SBC-4 devices report);
/// - EROFS/EPERM/EACCES on a write: DATA PROTECT 27h/00h WRITE PROTECTED;
/// - EINVAL/EFAULT/EBADF: the request we built was wrong -- our bug, not the
///   medium's: HARDWARE ERROR 44h/00h INTERNAL TARGET FAILURE;
/// - ENOMEM/EAGAIN/EBUSY/EINTR: transient; ABORTED COMMAND 55h/03h
///   INSUFFICIENT RESOURCES, which Linux retries (scsi_check_sense);
/// - EIO and anything else: MEDIUM ERROR 11h/00h UNRECOVERED READ ERROR on a
///   read, 0Ch/00h WRITE ERROR on a write.
pub fn io_error_sense(dir: IoDir, errno: i32) -> Sense {
    let e = i32::try_from(errno.unsigned_abs()).unwrap_or(libc::EIO);
    match (e, dir) {
        (libc::ENOSPC, _) => Sense::space_allocation_failed(),
        (libc::EROFS | libc::EPERM | libc::EACCES, IoDir::Write) => Sense::write_protected(),
        (libc::EINVAL | libc::EFAULT | libc::EBADF, _) => Sense::internal_target_failure(),
        (libc::ENOMEM | libc::EAGAIN | libc::EBUSY | libc::EINTR, _) => {
            Sense::insufficient_resources()
        }
        (_, IoDir::Read) => Sense::unrecovered_read_error(),
        (_, IoDir::Write) => Sense::write_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_plain() {
        let b = Sense::lba_out_of_range().to_fixed();
        assert_eq!(
            b,
            [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn fixed_format_info_sets_valid() {
        let b = Sense::unrecovered_read_error()
            .with_info(0x1234_5678)
            .to_fixed();
        assert_eq!(b[0], 0xf0);
        assert_eq!(&b[3..7], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(b[2], 0x03);
        assert_eq!((b[12], b[13]), (0x11, 0x00));
    }

    #[test]
    fn fixed_format_field_pointer() {
        // In the CDB, byte 2, no bit.
        let b = Sense::invalid_field_in_cdb(2, None).to_fixed();
        assert_eq!(&b[15..18], &[0xc0, 0x00, 0x02]);
        // In the CDB, byte 0x102, bit 5.
        let b = Sense::invalid_field_in_cdb(0x102, Some(5)).to_fixed();
        assert_eq!(&b[15..18], &[0xcd, 0x01, 0x02]);
        // In the parameter list (C/D = 0).
        let mut s = Sense::invalid_field_in_cdb(7, Some(0));
        s.field_pointer = Some(FieldPointer {
            in_cdb: false,
            byte: 7,
            bit: Some(0),
        });
        assert_eq!(&s.to_fixed()[15..18], &[0x88, 0x00, 0x07]);
    }

    #[test]
    fn descriptor_format() {
        assert_eq!(
            Sense::no_sense().to_descriptor(),
            vec![0x72, 0, 0, 0, 0, 0, 0, 0]
        );
        let d = Sense::invalid_field_in_cdb(4, Some(1)).to_descriptor();
        assert_eq!(d.len(), 16);
        assert_eq!(&d[..8], &[0x72, 0x05, 0x24, 0, 0, 0, 0, 8]);
        assert_eq!(&d[8..], &[0x02, 0x06, 0, 0, 0xc9, 0x00, 0x04, 0]);
        let d = Sense::write_error().with_info(9).to_descriptor();
        assert_eq!(d.len(), 20);
        assert_eq!(d[7], 12);
        assert_eq!(&d[8..12], &[0x00, 0x0a, 0x80, 0]);
        assert_eq!(&d[12..20], &9u64.to_be_bytes());
    }

    #[test]
    fn io_errors_map_to_documented_sense() {
        use IoDir::{Read, Write};
        let cases: &[(IoDir, i32, SenseKey, u8, u8)] = &[
            (Read, libc::EIO, SenseKey::MediumError, 0x11, 0),
            (Read, -libc::EIO, SenseKey::MediumError, 0x11, 0),
            (Write, libc::EIO, SenseKey::MediumError, 0x0c, 0),
            (Write, -libc::EIO, SenseKey::MediumError, 0x0c, 0),
            (Read, libc::ENODEV, SenseKey::MediumError, 0x11, 0),
            (Write, 12345, SenseKey::MediumError, 0x0c, 0),
            (Read, i32::MIN, SenseKey::MediumError, 0x11, 0),
            (Write, libc::ENOSPC, SenseKey::DataProtect, 0x27, 0x07),
            (Write, -libc::ENOSPC, SenseKey::DataProtect, 0x27, 0x07),
            (Write, libc::EROFS, SenseKey::DataProtect, 0x27, 0),
            (Write, libc::EPERM, SenseKey::DataProtect, 0x27, 0),
            (Write, libc::EACCES, SenseKey::DataProtect, 0x27, 0),
            (Read, libc::EACCES, SenseKey::MediumError, 0x11, 0),
            (Read, libc::EINVAL, SenseKey::HardwareError, 0x44, 0),
            (Write, -libc::EINVAL, SenseKey::HardwareError, 0x44, 0),
            (Read, libc::ENOMEM, SenseKey::AbortedCommand, 0x55, 0x03),
            (Write, libc::EAGAIN, SenseKey::AbortedCommand, 0x55, 0x03),
        ];
        for &(dir, errno, key, asc, ascq) in cases {
            let s = io_error_sense(dir, errno);
            assert_eq!((s.key, s.asc, s.ascq), (key, asc, ascq), "{dir:?} {errno}");
            assert_eq!(s.field_pointer, None);
        }
    }
}
