//! Checks of management input shared by the `--config` loader and the
//! JSON-RPC methods: one function a field, each returning a message without
//! a prefix (the caller adds the file position or the RPC error code).
//!
//! The limits are those of the command line ([`crate::cli`]) and the SCSI
//! target ([`crate::scsi::MAX_LUN`]).

use std::path::Path;

use crate::cli::{MAX_NUM_QUEUES, MAX_QUEUE_SIZE};
use crate::scsi::MAX_LUN;

/// Request queues offered when `num_queues` is absent.
pub const DEFAULT_NUM_QUEUES: u16 = 4;
/// Virtqueue size offered when `queue_size` is absent.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Longest controller name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest unit serial number (what fits in VPD page 80h).
pub const MAX_SERIAL_LEN: usize = 252;

/// A controller name: 1..=64 characters of `A-Za-z0-9._-`, not starting
/// with `.` or `-`.
pub fn controller_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("controller name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "controller name is {} characters long, more than {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "controller name {name:?} contains {c:?} (allowed: A-Z a-z 0-9 . _ -)"
        ));
    }
    if name.starts_with(['.', '-']) {
        return Err(format!(
            "controller name {name:?} must not start with '.' or '-'"
        ));
    }
    Ok(())
}

/// Number of request queues: 1..=64.
pub fn num_queues(n: u16) -> Result<(), String> {
    if n == 0 || n > MAX_NUM_QUEUES {
        return Err(format!("{n} is out of range 1..={MAX_NUM_QUEUES}"));
    }
    Ok(())
}

/// Virtqueue size: a power of two from 1 to 1024.
pub fn queue_size(n: u16) -> Result<(), String> {
    if n == 0 || n > MAX_QUEUE_SIZE || !n.is_power_of_two() {
        return Err(format!(
            "{n} is not a power of two from 1 to {MAX_QUEUE_SIZE}"
        ));
    }
    Ok(())
}

/// LUN number: 0..=16383.
pub fn lun(n: u16) -> Result<(), String> {
    if n > MAX_LUN {
        return Err(format!("{n} is out of range 0..={MAX_LUN}"));
    }
    Ok(())
}

/// Logical block size: 512 or 4096.
pub fn block_size(n: u32) -> Result<(), String> {
    if n != 512 && n != 4096 {
        return Err(format!("{n} is not a supported block size (512 or 4096)"));
    }
    Ok(())
}

/// An initiator identity: 1..=223 bytes of printable ASCII (an iSCSI name
/// fits: SPC-4 7.6.4.6 allows 223 bytes).
pub fn initiator(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 223 {
        return Err(format!("must be 1 to 223 bytes long, not {}", s.len()));
    }
    if let Some(c) = s.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!("{c:?} is not printable ASCII"));
    }
    Ok(())
}

/// `passthrough` with options it cannot have: the device answers for its
/// own block size, serial number and write protection.
pub fn passthrough(readonly: bool, block_size: bool, serial: bool) -> Result<(), String> {
    let clash = [
        (readonly, "readonly"),
        (block_size, "block-size"),
        (serial, "serial"),
    ];
    match clash.iter().find(|(set, _)| *set) {
        Some((_, what)) => Err(format!(
            "passthrough cannot be combined with {what} (the SCSI device answers for itself)"
        )),
        None => Ok(()),
    }
}

/// A path given in a file (socket, image, directory): not empty.
pub fn path(p: &Path) -> Result<(), String> {
    if p.as_os_str().is_empty() {
        Err("path is empty".into())
    } else {
        Ok(())
    }
}

/// Unit serial number: at most 252 bytes of printable ASCII (0x20..=0x7e).
pub fn serial(s: &str) -> Result<(), String> {
    if s.len() > MAX_SERIAL_LEN {
        return Err(format!(
            "serial is {} bytes long, more than {MAX_SERIAL_LEN}",
            s.len()
        ));
    }
    if let Some(c) = s.chars().find(|c| !matches!(c, ' '..='~')) {
        return Err(format!(
            "serial {s:?} contains {c:?} (only printable ASCII is allowed)"
        ));
    }
    Ok(())
}

/// A socket's group: a group name or a numeric gid. Returns the gid.
pub fn socket_group(group: &str) -> Result<u32, String> {
    if group.is_empty() {
        return Err("group name is empty".into());
    }
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group named {group:?} on this host")),
        Err(e) => Err(format!("cannot look up group {group:?}: {e}")),
    }
}

/// Bound of the adaptive polling window, µs: 0 (off) to 1 s.
pub fn poll_max_us(us: u32) -> Result<(), String> {
    let max = crate::vhost::poll::MAX_POLL_MAX_US;
    if us > max {
        return Err(format!("{us} is more than {max} µs"));
    }
    Ok(())
}

/// A socket's mode: octal digits such as `0660`, at most `0777`.
pub fn socket_mode(mode: &str) -> Result<u32, String> {
    let digits = mode.strip_prefix("0o").unwrap_or(mode);
    let bad =
        || format!("socket mode {mode:?} is not an octal mode from 0000 to 0777 (e.g. \"0660\")");
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(bad());
    }
    let m = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if m > 0o777 {
        return Err(bad());
    }
    Ok(m)
}

/// Mode of a controller socket that has a group and no explicit mode:
/// owner and group may connect.
pub const GROUP_SOCKET_MODE: u32 = 0o660;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "vm1", "VM_1.disk-2", "0", "a.", "a-", &"x".repeat(64)] {
            assert_eq!(controller_name(good), Ok(()), "{good}");
        }
        for bad in ["", ".a", "-a", "a b", "a/b", "é", "a:b", &"x".repeat(65)] {
            assert!(controller_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            controller_name("a/b").unwrap_err(),
            "controller name \"a/b\" contains '/' (allowed: A-Z a-z 0-9 . _ -)"
        );
        assert_eq!(
            controller_name(".a").unwrap_err(),
            "controller name \".a\" must not start with '.' or '-'"
        );
    }

    #[test]
    fn queues() {
        assert!(num_queues(0).is_err());
        assert_eq!(num_queues(1), Ok(()));
        assert_eq!(num_queues(64), Ok(()));
        assert_eq!(num_queues(65).unwrap_err(), "65 is out of range 1..=64");
        assert_eq!(num_queues(DEFAULT_NUM_QUEUES), Ok(()));
    }

    #[test]
    fn queue_sizes() {
        for good in [1, 2, 4, 128, 256, 1024] {
            assert_eq!(queue_size(good), Ok(()), "{good}");
        }
        for bad in [0, 3, 100, 2048, u16::MAX] {
            assert!(queue_size(bad).is_err(), "{bad}");
        }
        assert_eq!(
            queue_size(100).unwrap_err(),
            "100 is not a power of two from 1 to 1024"
        );
        assert_eq!(queue_size(DEFAULT_QUEUE_SIZE), Ok(()));
    }

    #[test]
    fn luns() {
        assert_eq!(lun(0), Ok(()));
        assert_eq!(lun(16383), Ok(()));
        assert_eq!(lun(16384).unwrap_err(), "16384 is out of range 0..=16383");
    }

    #[test]
    fn block_sizes() {
        assert_eq!(block_size(512), Ok(()));
        assert_eq!(block_size(4096), Ok(()));
        for bad in [0, 1024, 520, 8192] {
            assert!(block_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(path(Path::new("/a")), Ok(()));
        assert_eq!(path(Path::new("")).unwrap_err(), "path is empty");
    }

    #[test]
    fn serials() {
        assert_eq!(serial(""), Ok(()));
        assert_eq!(serial("vm1 root~!"), Ok(()));
        assert_eq!(serial(&"s".repeat(252)), Ok(()));
        assert!(serial(&"s".repeat(253)).is_err());
        assert!(serial("tab\there").is_err());
        assert!(serial("del\x7f").is_err());
        assert!(serial("é").is_err());
    }

    #[test]
    fn socket_groups_and_modes() {
        assert_eq!(socket_group("0"), Ok(0));
        assert_eq!(socket_group("root"), Ok(0));
        assert!(socket_group("no-such-group-here")
            .unwrap_err()
            .contains("no group named"));
        assert!(socket_group("").is_err());
        assert_eq!(socket_mode("0660"), Ok(0o660));
        assert_eq!(socket_mode("660"), Ok(0o660));
        assert_eq!(socket_mode("0o600"), Ok(0o600));
        for bad in ["", "0668", "1777", "rw", "07777", "-1"] {
            assert!(socket_mode(bad).is_err(), "{bad}");
        }
    }
}
