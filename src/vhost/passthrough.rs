//! Passthrough LUNs in the data path: a command becomes an SG_IO on the
//! host device, run on the queue's passthrough pool (`slow.rs`), and the
//! device's answer goes back to the guest as it is: status byte, sense
//! bytes, residual. A failure of the host (the ioctl failed, the adapter
//! or the driver reported an error, a timeout) becomes a SCSI error that
//! says so, and a rate-limited log line in the worker.

use std::io;
use std::sync::Arc;

use super::slow::{Job, JobResult};
use crate::block::{Backing, SgAnswer, SgCommand, SgDir};
use crate::scsi::{Sense, SenseKey, Status};

/// What the guest gets for a passthrough command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PassReply {
    /// SCSI status byte.
    pub status: u8,
    /// Sense bytes (the device's, or ours for a host failure).
    pub sense: Vec<u8>,
    /// Bytes of the transfer that did not move.
    pub resid: u32,
    /// The transfer length and direction.
    pub len: u32,
    pub dir: SgDir,
    /// A host-side failure, for the log.
    pub failure: Option<String>,
    /// GOOD answer to INQUIRY VPD page B0h (Block Limits): the host's
    /// transfer limit in blocks, to be applied with [`clamp_block_limits`]
    /// before the guest sees the page.
    pub block_limits: Option<u32>,
}

impl PassReply {
    /// Data-in bytes the device wrote into the guest's buffers.
    pub(crate) fn data_in_len(&self) -> u32 {
        match self.dir {
            SgDir::FromDevice => self.len.saturating_sub(self.resid),
            _ => 0,
        }
    }

    pub(crate) fn good(&self) -> bool {
        self.status == Status::Good as u8 && self.failure.is_none()
    }
}

// Linux host bytes (`DID_*`, include/scsi/scsi_status.h).
const DID_NO_CONNECT: u16 = 0x01;
const DID_BUS_BUSY: u16 = 0x02;
const DID_TIME_OUT: u16 = 0x03;
const DID_BAD_TARGET: u16 = 0x04;
const DID_ABORT: u16 = 0x05;
const DID_RESET: u16 = 0x08;
const DID_SOFT_ERROR: u16 = 0x0b;
const DID_IMM_RETRY: u16 = 0x0c;
const DID_REQUEUE: u16 = 0x0d;
const DID_TRANSPORT_DISRUPTED: u16 = 0x0e;
const DID_TRANSPORT_FAILFAST: u16 = 0x0f;
const DID_TARGET_FAILURE: u16 = 0x10;
const DID_NEXUS_FAILURE: u16 = 0x11;
// Driver byte (`DRIVER_*`, the low nibble of sg's driver_status).
const DRIVER_TIMEOUT: u16 = 0x06;

/// LOGICAL UNIT DOES NOT RESPOND TO SELECTION (device gone).
const NOT_RESPONDING: Sense = Sense::new(SenseKey::NotReady, 0x05, 0x00);
/// COMMAND TIMEOUT DURING PROCESSING.
const TIMED_OUT: Sense = Sense::new(SenseKey::AbortedCommand, 0x2e, 0x02);
/// I/O PROCESS TERMINATED (any other host error).
const HOST_ERROR: Sense = Sense::new(SenseKey::AbortedCommand, 0x00, 0x06);

/// Our answer for a host failure: `None` sense means a status alone.
fn failed(len: u32, dir: SgDir, status: Status, sense: Option<Sense>, why: String) -> PassReply {
    PassReply {
        status: status as u8,
        sense: sense.map(|s| s.to_fixed().to_vec()).unwrap_or_default(),
        resid: len,
        len,
        dir,
        failure: Some(why),
        block_limits: None,
    }
}

/// The guest's answer for a command of `len` bytes in `dir` that ran (or
/// failed to run) with `result`.
pub(crate) fn reply(result: io::Result<SgAnswer>, len: u32, dir: SgDir) -> PassReply {
    let check = Status::CheckCondition;
    let ans = match result {
        Ok(a) => a,
        Err(e) => {
            let why = format!("SG_IO failed: {e}");
            return match e.raw_os_error().unwrap_or(libc::EIO) {
                libc::EBUSY | libc::EAGAIN | libc::ENOMEM | libc::EDOM => {
                    failed(len, dir, Status::Busy, None, why)
                }
                libc::ENODEV | libc::ENXIO => failed(len, dir, check, Some(NOT_RESPONDING), why),
                libc::ETIMEDOUT => failed(len, dir, check, Some(TIMED_OUT), why),
                // The host cannot do this request (e.g. longer than the
                // adapter's limit).
                libc::EINVAL => failed(
                    len,
                    dir,
                    check,
                    Some(Sense::invalid_field_in_cdb(0, None)),
                    why,
                ),
                _ => failed(len, dir, check, Some(HOST_ERROR), why),
            };
        }
    };
    if ans.host_status != 0 {
        let why = format!("host status {:#04x}", ans.host_status);
        let (status, sense) = match ans.host_status {
            DID_NO_CONNECT | DID_BAD_TARGET => (check, Some(NOT_RESPONDING)),
            DID_BUS_BUSY | DID_SOFT_ERROR | DID_IMM_RETRY | DID_REQUEUE => (Status::Busy, None),
            DID_TIME_OUT => (check, Some(TIMED_OUT)),
            DID_ABORT => (check, Some(Sense::new(SenseKey::AbortedCommand, 0, 0))),
            DID_RESET => (check, Some(Sense::unit_attention(0x29, 0x00))),
            DID_TRANSPORT_DISRUPTED | DID_TRANSPORT_FAILFAST => {
                (check, Some(Sense::unit_attention(0x29, 0x07)))
            }
            DID_TARGET_FAILURE => (check, Some(Sense::internal_target_failure())),
            DID_NEXUS_FAILURE => (Status::ReservationConflict, None),
            _ => (check, Some(HOST_ERROR)),
        };
        return failed(len, dir, status, sense, why);
    }
    if ans.driver_status & 0x0f == DRIVER_TIMEOUT {
        return failed(len, dir, check, Some(TIMED_OUT), "driver timeout".into());
    }
    PassReply {
        status: ans.status,
        sense: ans.sense,
        resid: ans.resid.min(len),
        len,
        dir,
        failure: None,
        block_limits: None,
    }
}

/// INQUIRY with EVPD for page B0h (Block Limits)?
fn is_block_limits(cdb: &[u8]) -> bool {
    matches!(cdb, [0x12, evpd, 0xb0, ..] if evpd & 1 == 1)
}

/// What QEMU's `scsi-block` does with the device's Block Limits page: the
/// guest must not send a transfer the host cannot take (SG_IO fails with
/// EINVAL beyond the request queue's limit), so MAXIMUM TRANSFER LENGTH
/// (bytes 8-11) and OPTIMAL TRANSFER LENGTH (12-15) become at most
/// `host_max` blocks (0 from the device, "no limit", becomes `host_max`).
/// `page` is the data-in as the device sent it; false when it is too short
/// to hold the fields (left alone).
pub(crate) fn clamp_block_limits(page: &mut [u8], host_max: u32) -> bool {
    let field = |p: &[u8], at: usize| {
        p.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
    };
    let (Some(max), Some(opt)) = (field(page, 8), field(page, 12)) else {
        return false;
    };
    let min_non_zero = |v: u32| if v == 0 { host_max } else { v.min(host_max) };
    let (max, opt) = (min_non_zero(max), min_non_zero(opt));
    if let Some(b) = page.get_mut(8..12) {
        b.copy_from_slice(&max.to_be_bytes());
    }
    if let Some(b) = page.get_mut(12..16) {
        b.copy_from_slice(&opt.to_be_bytes());
    }
    true
}

/// The pool job for `cmd` on `backing`'s SCSI device.
pub(crate) fn job(backing: Arc<Backing>, mut cmd: SgCommand) -> Job {
    Box::new(move || {
        let (len, dir) = (cmd.len(), cmd.dir());
        let Some(dev) = backing.scsi_device() else {
            let gone = Err(io::Error::from_raw_os_error(libc::ENODEV));
            return JobResult::passthrough(reply(gone, len, dir));
        };
        let mut r = reply(dev.execute(&mut cmd), len, dir);
        if r.good() && is_block_limits(cmd.cdb()) {
            r.block_limits = Some(dev.max_transfer_blocks());
        }
        JobResult::passthrough(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u8, sense: &[u8], resid: u32) -> SgAnswer {
        SgAnswer {
            status,
            host_status: 0,
            driver_status: if sense.is_empty() { 0 } else { 0x08 },
            sense: sense.to_vec(),
            resid,
        }
    }

    #[test]
    fn device_answers_pass_unchanged() {
        // GOOD with a short read: residual as the device said.
        let r = reply(Ok(answer(0, &[], 4000)), 4096, SgDir::FromDevice);
        assert_eq!((r.status, r.resid, r.data_in_len()), (0, 4000, 96));
        assert!(r.good() && r.sense.is_empty());
        // CHECK CONDITION with the device's own (descriptor-format) sense.
        let sense = [0x72u8, 0x05, 0x24, 0x00, 0, 0, 0, 0];
        let r = reply(Ok(answer(2, &sense, 512)), 512, SgDir::FromDevice);
        assert_eq!((r.status, r.sense.as_slice()), (2, &sense[..]));
        assert_eq!((r.resid, r.data_in_len()), (512, 0));
        assert!(!r.good() && r.failure.is_none());
        // RESERVATION CONFLICT, BUSY, TASK SET FULL: status only.
        for st in [0x18u8, 0x08, 0x28] {
            let r = reply(Ok(answer(st, &[], 0)), 0, SgDir::None);
            assert_eq!((r.status, r.sense.len()), (st, 0));
        }
        // A residual the device reports beyond the transfer is clamped.
        let r = reply(Ok(answer(0, &[], 9999)), 512, SgDir::ToDevice);
        assert_eq!((r.resid, r.data_in_len()), (512, 0));
    }

    fn key_asc(r: &PassReply) -> (u8, u8, u8) {
        (
            r.sense.get(2).copied().unwrap_or(0xff) & 0x0f,
            r.sense.get(12).copied().unwrap_or(0xff),
            r.sense.get(13).copied().unwrap_or(0xff),
        )
    }

    #[test]
    fn block_limits_are_cut_to_the_hosts_transfer_limit() {
        assert!(is_block_limits(&[0x12, 1, 0xb0, 0, 64, 0]));
        assert!(!is_block_limits(&[0x12, 0, 0xb0, 0, 64, 0]));
        assert!(!is_block_limits(&[0x12, 1, 0x83, 0, 64, 0]));
        let mut page = [0u8; 64];
        page[1] = 0xb0;
        page[8..12].copy_from_slice(&0x3f_ffffu32.to_be_bytes());
        assert!(clamp_block_limits(&mut page, 2560));
        assert_eq!(page[8..12], 2560u32.to_be_bytes());
        assert_eq!(page[12..16], 2560u32.to_be_bytes(), "0 (none) -> the limit");
        page[8..12].copy_from_slice(&128u32.to_be_bytes());
        page[12..16].copy_from_slice(&64u32.to_be_bytes());
        assert!(clamp_block_limits(&mut page, 2560));
        assert_eq!(
            page[8..16],
            [0, 0, 0, 128, 0, 0, 0, 64],
            "smaller values stay"
        );
        let mut short = [0u8; 12];
        assert!(!clamp_block_limits(&mut short, 2560));
        assert_eq!(short, [0u8; 12]);
    }

    #[test]
    fn host_failures_become_clear_scsi_errors() {
        let io = |errno| {
            reply(
                Err(io::Error::from_raw_os_error(errno)),
                4096,
                SgDir::FromDevice,
            )
        };
        let r = io(libc::ENODEV);
        assert_eq!((r.status, key_asc(&r)), (2, (0x2, 0x05, 0x00)));
        assert_eq!((r.resid, r.data_in_len()), (4096, 0));
        assert!(r.failure.as_deref().unwrap().contains("SG_IO failed"));
        assert_eq!(key_asc(&io(libc::EIO)), (0xb, 0x00, 0x06));
        assert_eq!(key_asc(&io(libc::EINVAL)), (0x5, 0x24, 0x00));
        assert_eq!(key_asc(&io(libc::ETIMEDOUT)), (0xb, 0x2e, 0x02));
        let busy = io(libc::ENOMEM);
        assert_eq!((busy.status, busy.sense.len()), (0x08, 0));

        let host = |hs: u16, ds: u16| {
            let mut a = answer(0, &[], 0);
            a.host_status = hs;
            a.driver_status = ds;
            reply(Ok(a), 512, SgDir::ToDevice)
        };
        assert_eq!(key_asc(&host(DID_NO_CONNECT, 0)), (0x2, 0x05, 0x00));
        assert_eq!(key_asc(&host(DID_TIME_OUT, 0)), (0xb, 0x2e, 0x02));
        assert_eq!(key_asc(&host(DID_RESET, 0)), (0x6, 0x29, 0x00));
        assert_eq!(
            key_asc(&host(DID_TRANSPORT_DISRUPTED, 0)),
            (0x6, 0x29, 0x07)
        );
        assert_eq!(key_asc(&host(DID_TARGET_FAILURE, 0)), (0x4, 0x44, 0x00));
        assert_eq!(key_asc(&host(0x07, 0)), (0xb, 0x00, 0x06));
        assert_eq!(host(DID_BUS_BUSY, 0).status, 0x08);
        assert_eq!(host(DID_NEXUS_FAILURE, 0).status, 0x18);
        let t = host(0, DRIVER_TIMEOUT);
        assert_eq!((t.status, key_asc(&t)), (2, (0xb, 0x2e, 0x02)));
        assert!(t.failure.is_some() && !t.good());
        // DRIVER_SENSE alone is not a failure.
        assert!(host(0, 0x08).good());
    }
}
