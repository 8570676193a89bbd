//! `--disk PATH[,readonly][,block-size=512|4096][,serial=TEXT][,lun=N]`,
//! or `--disk PATH,passthrough[,lun=N]` for a host SCSI device.

use std::path::PathBuf;
use std::str::FromStr;

use crate::units::BlockSize;

pub use crate::scsi::MAX_LUN;
/// Longest serial number accepted (VPD 80h has room for more; keep it sane).
pub const MAX_SERIAL_LEN: usize = 64;

/// One `--disk` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub readonly: bool,
    pub block_size: Option<BlockSize>,
    pub serial: Option<String>,
    pub lun: Option<u16>,
    /// SCSI passthrough (not with readonly, block-size or serial).
    pub passthrough: bool,
}

/// What is wrong with a disk spec or the set of disks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("empty path in disk spec")]
    EmptyPath,
    #[error(
        "unknown disk option '{0}' (expected readonly, block-size=, serial=, lun=, passthrough)"
    )]
    UnknownOption(String),
    #[error("option '{0}' given twice")]
    Repeated(&'static str),
    #[error("block-size must be 512 or 4096, not '{0}'")]
    BadBlockSize(String),
    #[error("lun must be a number from 0 to {MAX_LUN}, not '{0}'")]
    BadLun(String),
    #[error("serial must be 1 to {MAX_SERIAL_LEN} printable ASCII characters without spaces")]
    BadSerial,
    #[error("LUN {0} is given to two disks")]
    DuplicateLun(u16),
    #[error("LUN {0} is out of range (0 to {MAX_LUN})")]
    LunOutOfRange(u16),
    #[error("too many LUNs")]
    TooManyLuns,
    #[error("{0}")]
    Passthrough(String),
}

impl FromStr for DiskSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(SpecError::EmptyPath);
        }
        let mut spec = DiskSpec {
            path: PathBuf::from(path),
            readonly: false,
            block_size: None,
            serial: None,
            lun: None,
            passthrough: false,
        };
        for opt in parts {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            match (key, value) {
                ("readonly" | "ro", None) => {
                    if spec.readonly {
                        return Err(SpecError::Repeated("readonly"));
                    }
                    spec.readonly = true;
                }
                ("block-size", Some(v)) => {
                    if spec.block_size.is_some() {
                        return Err(SpecError::Repeated("block-size"));
                    }
                    let bs = v
                        .parse::<u32>()
                        .ok()
                        .and_then(BlockSize::new)
                        .ok_or_else(|| SpecError::BadBlockSize(v.to_owned()))?;
                    spec.block_size = Some(bs);
                }
                ("serial", Some(v)) => {
                    if spec.serial.is_some() {
                        return Err(SpecError::Repeated("serial"));
                    }
                    if v.is_empty()
                        || v.len() > MAX_SERIAL_LEN
                        || !v.bytes().all(|b| b.is_ascii_graphic())
                    {
                        return Err(SpecError::BadSerial);
                    }
                    spec.serial = Some(v.to_owned());
                }
                ("lun", Some(v)) => {
                    if spec.lun.is_some() {
                        return Err(SpecError::Repeated("lun"));
                    }
                    let lun = v
                        .parse::<u16>()
                        .ok()
                        .filter(|l| *l <= MAX_LUN)
                        .ok_or_else(|| SpecError::BadLun(v.to_owned()))?;
                    spec.lun = Some(lun);
                }
                ("passthrough", None) => {
                    if spec.passthrough {
                        return Err(SpecError::Repeated("passthrough"));
                    }
                    spec.passthrough = true;
                }
                _ => return Err(SpecError::UnknownOption(opt.to_owned())),
            }
        }
        if spec.passthrough {
            crate::mgmt::validate::passthrough(
                spec.readonly,
                spec.block_size.is_some(),
                spec.serial.is_some(),
            )
            .map_err(SpecError::Passthrough)?;
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_spec_parses() {
        let d: DiskSpec = "/dev/sdb,readonly,block-size=4096,serial=ABC-1,lun=7"
            .parse()
            .unwrap();
        assert_eq!(d.path, PathBuf::from("/dev/sdb"));
        assert!(d.readonly);
        assert_eq!(d.block_size, Some(BlockSize::B4096));
        assert_eq!(d.serial.as_deref(), Some("ABC-1"));
        assert_eq!(d.lun, Some(7));
        assert!(!d.passthrough);
        let d: DiskSpec = "/dev/sg1,passthrough,lun=2".parse().unwrap();
        assert!(d.passthrough && d.lun == Some(2));
    }

    #[test]
    fn bad_specs_are_rejected_with_the_reason() {
        let cases: &[(&str, SpecError)] = &[
            ("", SpecError::EmptyPath),
            (",readonly", SpecError::EmptyPath),
            ("a,rw", SpecError::UnknownOption("rw".into())),
            (
                "a,readonly=1",
                SpecError::UnknownOption("readonly=1".into()),
            ),
            ("a,block-size=1024", SpecError::BadBlockSize("1024".into())),
            ("a,block-size=", SpecError::BadBlockSize("".into())),
            ("a,lun=16384", SpecError::BadLun("16384".into())),
            ("a,lun=-1", SpecError::BadLun("-1".into())),
            ("a,serial=", SpecError::BadSerial),
            ("a,serial=has space", SpecError::BadSerial),
            ("a,lun=1,lun=2", SpecError::Repeated("lun")),
            ("a,readonly,readonly", SpecError::Repeated("readonly")),
            ("a,", SpecError::UnknownOption("".into())),
            (
                "/dev/sdb,passthrough,readonly",
                SpecError::Passthrough(
                    "passthrough cannot be combined with readonly (the SCSI device answers for itself)".into(),
                ),
            ),
            (
                "/dev/sg0,block-size=512,passthrough",
                SpecError::Passthrough(
                    "passthrough cannot be combined with block-size (the SCSI device answers for itself)".into(),
                ),
            ),
            (
                "/dev/sg0,passthrough,serial=X",
                SpecError::Passthrough(
                    "passthrough cannot be combined with serial (the SCSI device answers for itself)".into(),
                ),
            ),
            ("a,passthrough,passthrough", SpecError::Repeated("passthrough")),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<DiskSpec>().unwrap_err(), *want, "{s}");
        }
    }
}
