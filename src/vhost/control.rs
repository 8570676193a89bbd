//! The control queue (task management, asynchronous notification) and the
//! event queue (virtio 1.2 5.6.6.2, 5.6.6.3). Both are served by thread 0.

use std::sync::{Arc, Mutex};

use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic};

use super::device::Device;
use super::dirty::DirtyLog;
use super::ratelimit::{warn_limited, RateLimit};
use super::worker::{avail_index_broken, log_used_ring, RequestWorker, Vring};
use crate::scsi::NexusId;
use crate::virtio_scsi::{
    decode_lun, parse_ctrl, split_chain, CtrlAnResp, CtrlRequest, CtrlTmfReq, GuestMem, LunAddress,
    S_BAD_TARGET, S_FAILURE, S_FUNCTION_COMPLETE, S_FUNCTION_REJECTED, S_FUNCTION_SUCCEEDED,
    S_INCORRECT_LUN, S_OK, T_TMF_ABORT_TASK, T_TMF_ABORT_TASK_SET, T_TMF_CLEAR_TASK_SET,
    T_TMF_I_T_NEXUS_RESET, T_TMF_LOGICAL_UNIT_RESET, T_TMF_QUERY_TASK, T_TMF_QUERY_TASK_SET,
};

const AN_RESP_LEN: u64 = std::mem::size_of::<CtrlAnResp>() as u64;

/// The control queue's state.
pub(crate) struct ControlQueue {
    device: Arc<Device>,
    nexus: NexusId,
    log: RateLimit,
}

impl ControlQueue {
    pub(crate) fn new(device: Arc<Device>, nexus: NexusId) -> Self {
        ControlQueue {
            device,
            nexus,
            log: RateLimit::new(),
        }
    }

    /// Answer every available control request. Never leaves one
    /// unanswered: a request we cannot parse gets VIRTIO_SCSI_S_FAILURE (or
    /// is returned unused when it has no room for a response).
    pub(crate) fn process(
        &mut self,
        vring: &Vring,
        event_idx: bool,
        mem: &GuestMemoryAtomic<GuestMem>,
        workers: &[Mutex<RequestWorker>],
        dlog: Option<&DirtyLog>,
    ) {
        let mem = mem.memory();
        let mut state = vring.get_mut();
        loop {
            // Not ready, or an avail index more than a ring ahead: nothing
            // to take (and virtio-queue would log an error per kick).
            if avail_index_broken(state.get_queue(), &mem) {
                if state.get_queue().ready() {
                    warn_limited!(
                        self.log,
                        "the guest's control-queue avail index is beyond the ring"
                    );
                }
                break;
            }
            if event_idx {
                let _ = state.disable_notification();
            }
            while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) {
                let head = chain.head_index();
                let used = match split_chain(chain) {
                    Err(e) => {
                        warn_limited!(self.log, error = %e, "malformed control chain");
                        0
                    }
                    Ok(split) => match parse_ctrl(&mem, split) {
                        Err(bad) => {
                            warn_limited!(self.log, error = %bad.error, "bad control request");
                            // The response's size tells its layout: 5 bytes
                            // for an AN request, else one response byte.
                            match bad.resp {
                                Some(resp) if resp.len() == AN_RESP_LEN => {
                                    let an = CtrlAnResp {
                                        event_actual: 0,
                                        response: S_FAILURE,
                                    };
                                    write(&mem, &resp, an.as_slice(), dlog)
                                }
                                Some(resp) => write(&mem, &resp, &[S_FAILURE], dlog),
                                None => 0,
                            }
                        }
                        Ok((CtrlRequest::Tmf(tmf), resp)) => {
                            let response = self.task_management(&tmf, workers);
                            write(&mem, &resp, &[response], dlog)
                        }
                        Ok((CtrlRequest::An(_), resp)) => {
                            // We report no asynchronous events: none are
                            // supported, none are subscribed.
                            let an = CtrlAnResp {
                                event_actual: 0,
                                response: S_OK,
                            };
                            write(&mem, &resp, an.as_slice(), dlog)
                        }
                    },
                };
                if let Err(e) = state.add_used(head, used) {
                    warn_limited!(self.log, error = %e, "add_used failed on the control queue");
                }
                if let Some(d) = dlog {
                    log_used_ring(d, state.get_queue());
                }
            }
            if !event_idx || !state.enable_notification().unwrap_or(false) {
                break;
            }
        }
        if state.needs_notification().unwrap_or(true) {
            if let Err(e) = state.signal_used_queue() {
                warn_limited!(self.log, error = %e, "cannot signal the control queue");
            }
        }
    }

    /// Execute a task management function (SAM-5 7). We cannot cancel a
    /// command the kernel already has, so every function that aborts waits
    /// for the affected commands to finish (they complete normally, before
    /// this response, which SAM allows), then reports FUNCTION COMPLETE.
    fn task_management(&mut self, tmf: &CtrlTmfReq, workers: &[Mutex<RequestWorker>]) -> u8 {
        let lun_field = tmf.lun;
        let lun = match decode_lun(&lun_field) {
            LunAddress::Lun { target: 0, lun } => lun,
            _ => return S_BAD_TARGET,
        };
        let subtype = tmf.subtype;
        let tag = tmf.tag;
        if subtype != T_TMF_I_T_NEXUS_RESET && self.device.backing(lun).is_none() {
            return S_INCORRECT_LUN;
        }
        tracing::debug!(lun, subtype, tag, "task management function");
        match subtype {
            T_TMF_ABORT_TASK => {
                drain_where(workers, |w| w.has_tag(lun, tag));
                S_FUNCTION_COMPLETE
            }
            T_TMF_ABORT_TASK_SET | T_TMF_CLEAR_TASK_SET => {
                drain_where(workers, |w| w.has_lun_requests(lun));
                S_FUNCTION_COMPLETE
            }
            T_TMF_LOGICAL_UNIT_RESET => {
                // A passthrough LUN: the device resets itself (its commands
                // in flight end with the device's answer, then drain).
                self.reset_device(lun);
                drain_where(workers, |w| w.has_lun_requests(lun));
                // SAM-5: reset the logical unit's state; unit attention to
                // every I_T nexus.
                self.device.target.lun_reset(lun);
                self.recheck_capacity(lun);
                S_FUNCTION_COMPLETE
            }
            T_TMF_I_T_NEXUS_RESET => {
                drain_where(workers, |_| true);
                self.device.target.nexus_reset(self.nexus);
                S_FUNCTION_COMPLETE
            }
            T_TMF_QUERY_TASK => {
                if any_worker(workers, |w| w.has_tag(lun, tag)) {
                    S_FUNCTION_SUCCEEDED
                } else {
                    S_FUNCTION_COMPLETE
                }
            }
            T_TMF_QUERY_TASK_SET => {
                if any_worker(workers, |w| w.has_lun_requests(lun)) {
                    S_FUNCTION_SUCCEEDED
                } else {
                    S_FUNCTION_COMPLETE
                }
            }
            // CLEAR ACA (we never establish an ACA) and unknown functions.
            _ => S_FUNCTION_REJECTED,
        }
    }
}

impl ControlQueue {
    /// LOGICAL UNIT RESET of a passthrough LUN: SG_SCSI_RESET
    /// (SG_SCSI_RESET_DEVICE) on its SCSI device. Blocks this thread (the
    /// control queue's; task management already waits for drains here)
    /// until the host's error handler is done.
    fn reset_device(&mut self, lun: u16) {
        let Some(backing) = self.device.backing(lun) else {
            return;
        };
        let Some(dev) = backing.scsi_device() else {
            return;
        };
        match dev.reset() {
            Ok(()) => tracing::info!(lun, sg = %dev.sg_path().display(), "passthrough LUN reset"),
            Err(e) => {
                warn_limited!(self.log, lun, sg = %dev.sg_path().display(), error = %e, "passthrough LUN reset failed")
            }
        }
    }

    /// Re-read the backing's size (a grown image file or a resized device):
    /// a new whole number of blocks becomes the LUN's capacity with a
    /// CAPACITY DATA HAS CHANGED unit attention. Shrinking below what the
    /// guest may still address is not followed (data would vanish).
    fn recheck_capacity(&self, lun: u16) {
        let (Some(lb), Some(current)) = (self.device.lun(lun), self.device.target.capacity(lun))
        else {
            return;
        };
        if lb.backing.scsi_device().is_some() {
            // The device reports its own capacity changes.
            return;
        }
        match lb.backing.refresh_size() {
            Ok(size) => {
                let blocks = size.to_blocks(lb.block_size);
                if blocks > current {
                    tracing::info!(lun, old = current.0, new = blocks.0, "capacity grew");
                    self.device.target.capacity_changed(lun, blocks);
                }
            }
            Err(e) => tracing::warn!(lun, error = %e, "cannot re-read the backing's size"),
        }
    }
}

fn drain_where(workers: &[Mutex<RequestWorker>], pred: impl Fn(&RequestWorker) -> bool) {
    for w in workers {
        let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
        if pred(&w) {
            w.drain();
        }
    }
}

fn any_worker(workers: &[Mutex<RequestWorker>], pred: impl Fn(&RequestWorker) -> bool) -> bool {
    workers
        .iter()
        .any(|w| pred(&w.lock().unwrap_or_else(|p| p.into_inner())))
}

fn write(
    mem: &GuestMem,
    resp: &crate::virtio_scsi::Segments,
    bytes: &[u8],
    dlog: Option<&DirtyLog>,
) -> u32 {
    let n = resp.write_from(mem, bytes).unwrap_or(0);
    if let Some(d) = dlog {
        d.mark_segments(resp, n as u64);
    }
    u32::try_from(n).unwrap_or(0)
}
