//! The vhost-user protocol, backend side: the one place that knows its
//! messages and state (features, memory table, vring setup and lifecycle,
//! the inflight region). It implements the `vhost` crate's backend request
//! handler; the worker threads and the SCSI side only see started rings.
//!
//! Ring lifecycle (vhost-user spec, "Ring states"): a ring *starts* when its
//! kick fd arrives and *stops* on GET_VRING_BASE; it is processed while it is
//! started and enabled. At start, with an inflight region, the region is
//! read to resubmit what a dead predecessor had in flight and to continue
//! from the right avail index. At stop, every request taken from the ring
//! is finished and published before the answer.
//!
//! Every completion is signalled on the call fd the frontend set last: a
//! SET_VRING_CALL on a started ring signals the new fd once, so completions
//! published while an older fd was in place are never lost (QEMU replaces
//! the call fd while it replays its setup after a reconnect;
//! docs/development.md, "The reconnect hang").

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Backend, Error as VuError, GpuBackend, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;
use vhost_user_backend::VringT;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryRegion, GuestRegionMmap,
};

use super::backend::{lock, ScsiBackend, VHOST_F_LOG_ALL};
use super::dirty::DirtyLog;
use super::event_loop::EventLoops;
use super::inflight::InflightRegion;
use super::sigbus::{self, FaultCell, Registration};
use crate::virtio_scsi::GuestMem;

type VuResult<T> = Result<T, VuError>;

/// Memory slots offered with CONFIGURE_MEM_SLOTS.
const MAX_MEM_SLOTS: u64 = 32;

fn internal(msg: impl Into<String>) -> VuError {
    VuError::ReqHandlerError(io::Error::other(msg.into()))
}

/// A frontend address range and where it lies in guest-physical space.
#[derive(Debug)]
struct Mapping {
    vmm_addr: u64,
    size: u64,
    gpa: u64,
}

/// Protocol state of one connection.
pub(crate) struct Handler {
    label: Arc<str>,
    backend: ScsiBackend,
    /// Dropped first: the worker threads stop before anything else goes.
    loops: EventLoops,
    /// Every guest memory region mapped on this connection, registered for
    /// SIGBUS containment until nothing uses it any more.
    regions: Vec<(Arc<GuestRegionMmap>, Registration)>,
    fault: Arc<FaultCell>,
    mem: GuestMemoryAtomic<GuestMem>,
    owned: bool,
    acked_features: u64,
    acked_protocol: VhostUserProtocolFeatures,
    mappings: Vec<Mapping>,
    inflight: Option<Arc<InflightRegion>>,
    /// The log SET_LOG_BASE gave, in force while VHOST_F_LOG_ALL is acked.
    log: Option<Arc<DirtyLog>>,
    /// Its SIGBUS registration.
    log_reg: Option<Registration>,
    /// Per ring: started (kick fd received, not stopped since).
    started: Vec<bool>,
}

impl Handler {
    pub(crate) fn new(
        label: Arc<str>,
        backend: ScsiBackend,
        loops: EventLoops,
        mem: GuestMemoryAtomic<GuestMem>,
        fault: Arc<FaultCell>,
    ) -> Self {
        let n = backend.num_queues();
        Handler {
            label,
            backend,
            loops,
            regions: Vec::new(),
            fault,
            mem,
            owned: false,
            acked_features: 0,
            acked_protocol: VhostUserProtocolFeatures::empty(),
            mappings: Vec::new(),
            inflight: None,
            log: None,
            log_reg: None,
            started: vec![false; n],
        }
    }

    /// Protocol features we offer.
    pub(crate) fn protocol_features() -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    /// Log writes to guest memory while LOG_ALL is acked and a log is set.
    fn update_logging(&self) {
        let on = self.acked_features & VHOST_F_LOG_ALL != 0;
        let log = if on { self.log.clone() } else { None };
        let was = self.backend.dirty_log().is_some();
        let now = log.is_some();
        if on && log.is_none() {
            tracing::warn!(controller = %self.label, "LOG_ALL acked without a log (SET_LOG_BASE): nothing is logged yet");
        }
        self.backend.set_dirty_log(log);
        if was != now {
            tracing::info!(controller = %self.label, logging = now, "dirty-page logging {}", if now { "on" } else { "off" });
        }
    }

    fn vring(&self, index: u32) -> VuResult<&super::worker::Vring> {
        self.backend
            .vring(index as usize)
            .ok_or(VuError::InvalidParam)
    }

    fn vmm_to_gpa(&self, addr: u64) -> VuResult<u64> {
        self.mappings
            .iter()
            .find(|m| addr >= m.vmm_addr && addr - m.vmm_addr < m.size)
            .map(|m| addr - m.vmm_addr + m.gpa)
            .ok_or_else(|| internal(format!("ring address {addr:#x} is in no memory region")))
    }

    /// Is ring `index` being processed (started and enabled)?
    fn active(&self, index: usize) -> bool {
        let Some(vring) = self.backend.vring(index) else {
            return false;
        };
        self.started.get(index).copied().unwrap_or(false) && vring.get_ref().is_enabled()
    }

    /// Add or remove ring `index`'s kick from its worker's epoll to match
    /// its state.
    fn update_watch(&self, index: usize) -> VuResult<()> {
        let Some(vring) = self.backend.vring(index) else {
            return Err(VuError::InvalidParam);
        };
        let fd = kick_fd(vring);
        if let Some(fd) = fd {
            if self.active(index) {
                self.loops
                    .watch_kick(index, fd)
                    .map_err(VuError::ReqHandlerError)?;
            } else {
                self.loops.unwatch_kick(index, fd);
            }
        }
        Ok(())
    }

    /// Ring `index` starts: recover it from the inflight region, then let
    /// its worker see its kicks.
    fn start_ring(&mut self, index: usize) -> VuResult<()> {
        let vring = self.vring(index as u32)?.clone();
        vring.set_queue_ready(true);
        if let Some(slot) = self.started.get_mut(index) {
            *slot = true;
        }
        let mut wake = false;
        if let Some(region) = self.inflight.clone() {
            let q = u16::try_from(index).ok().and_then(|q| region.queue(q));
            if let Some(mut q) = q {
                let used = vring
                    .queue_used_idx()
                    .map_err(|e| internal(format!("cannot read the used index: {e}")))?;
                let size = vring.get_ref().get_queue().size();
                let tracked = self.backend.worker_of(index).is_some();
                let mut rec = q.recover(used, size).map_err(|e| {
                    tracing::error!(controller = %self.label, queue = index, error = %e, "inflight region refused");
                    internal(e.to_string())
                })?;
                if !tracked {
                    // The control and event queues never mark requests: such
                    // entries are not our region's content. They continue
                    // from the used index (they complete in order).
                    if !rec.resubmit.is_empty() {
                        tracing::warn!(controller = %self.label, queue = index, entries = rec.resubmit.len(), "inflight entries on a queue we never track; ignored");
                    }
                    rec.resubmit.clear();
                    rec.next_avail = used;
                } else {
                    // Requests in flight were taken from the avail ring: there
                    // cannot be more of them than the guest made available.
                    let avail = vring
                        .get_ref()
                        .get_queue()
                        .avail_idx(&*self.mem.memory(), std::sync::atomic::Ordering::Acquire)
                        .map_err(|e| internal(format!("cannot read the avail index: {e}")))?
                        .0;
                    let offered = avail.wrapping_sub(used);
                    if rec.resubmit.len() > usize::from(offered) {
                        let e = format!(
                            "queue {index}: {} requests in flight but only {offered} made available (avail {avail}, used {used})",
                            rec.resubmit.len()
                        );
                        tracing::error!(controller = %self.label, error = %e, "inflight region refused");
                        return Err(internal(format!("inflight region: {e}")));
                    }
                }
                vring.set_queue_next_avail(rec.next_avail);
                vring.set_queue_next_used(used);
                if rec.repaired {
                    tracing::info!(controller = %self.label, queue = index, used, "finished a used-ring update cut short by the previous daemon");
                }
                tracing::debug!(
                    controller = %self.label,
                    queue = index,
                    used,
                    next_avail = rec.next_avail,
                    in_flight = rec.resubmit.len(),
                    "ring recovered from the inflight region"
                );
                if let Some(w) = self.backend.worker_of(index) {
                    wake = !rec.resubmit.is_empty();
                    lock(w).attach_inflight(q, rec.resubmit);
                }
            }
        }
        let state = vring.get_ref();
        let q = state.get_queue();
        tracing::debug!(
            controller = %self.label,
            queue = index,
            size = q.size(),
            next_avail = q.next_avail(),
            next_used = q.next_used(),
            enabled = state.is_enabled(),
            "vring started"
        );
        drop(state);
        self.update_watch(index)?;
        // The worker resubmits at its next kick: give it one. A polling
        // worker may also have left the guest's avail_event behind when
        // the ring stopped (notifications are re-armed only before it
        // sleeps): a kick makes it look at the ring and re-arm them.
        let polled = self.backend.poll_max_us() > 0 && self.backend.worker_of(index).is_some();
        if wake || polled {
            kick(&vring);
        }
        Ok(())
    }

    /// Stop taking requests on every ring and finish those in flight,
    /// publishing and signalling their completions (graceful shutdown: the
    /// frontend must see final ring indexes before the connection closes).
    pub(crate) fn quiesce(&mut self) {
        for index in 0..self.started.len() {
            if let Some(vring) = self.backend.vring(index) {
                vring.set_enabled(false);
            }
            let _ = self.update_watch(index);
        }
        for index in 0..self.started.len() {
            self.backend.stop_queue(index);
        }
        tracing::debug!(controller = %self.label, "rings quiesced");
    }

    fn signal_if_started(&self, index: usize) {
        if !self.started.get(index).copied().unwrap_or(false) {
            return;
        }
        if let Some(vring) = self.backend.vring(index) {
            if let Err(e) = vring.signal_used_queue() {
                tracing::debug!(controller = %self.label, queue = index, error = %e, "cannot signal the new call fd");
            }
        }
    }

    /// Map one region of guest memory: it must lie inside its file (a
    /// region past the end would fault on first touch), and it is
    /// registered for SIGBUS containment (the file may still shrink later
    /// unless it is sealed).
    fn map_region(
        &mut self,
        region: &VhostUserMemoryRegion,
        file: File,
    ) -> VuResult<Arc<GuestRegionMmap>> {
        let (gpa, size, offset) = (
            region.guest_phys_addr,
            region.memory_size,
            region.mmap_offset,
        );
        let file_len = file.metadata().map_err(VuError::ReqHandlerError)?.len();
        if !offset
            .checked_add(size)
            .is_some_and(|end| end <= file_len && size > 0)
        {
            tracing::warn!(controller = %self.label, gpa = format_args!("{gpa:#x}"), size, offset, file_len, "memory region refused: it is not inside its file");
            return Err(VuError::InvalidParam);
        }
        // SAFETY: F_GET_SEALS on an fd we own; no memory is involved.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        let sealed = seals >= 0 && seals & libc::F_SEAL_SHRINK != 0;
        let r = GuestRegionMmap::new(region.mmap_region(file)?, GuestAddress(gpa))
            .ok_or_else(|| internal("memory region overflows the address space"))?;
        let r = Arc::new(r);
        let reg = sigbus::register(r.as_ptr() as usize, r.len() as usize, &self.fault)
            .map_err(VuError::ReqHandlerError)?;
        tracing::debug!(controller = %self.label, gpa = format_args!("{gpa:#x}"), size, sealed, "memory region mapped");
        self.regions.push((r.clone(), reg));
        Ok(r)
    }

    fn replace_memory(&mut self, mem: GuestMem) {
        self.mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(mem);
        // Forget regions nothing maps any more (in-flight requests keep
        // theirs alive until they complete).
        self.regions.retain(|(r, _)| Arc::strong_count(r) > 1);
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        // Stop watching kicks before the vrings' fds go away.
        for index in 0..self.started.len() {
            if let Some(fd) = self.backend.vring(index).and_then(kick_fd) {
                self.loops.unwatch_kick(index, fd);
            }
        }
    }
}

/// The kick eventfd of `vring`, if it has one.
fn kick_fd(vring: &super::worker::Vring) -> Option<std::os::fd::RawFd> {
    vring.get_ref().get_kick().as_ref().map(|k| k.as_raw_fd())
}

/// Make `vring`'s worker look at it, as a guest kick would.
fn kick(vring: &super::worker::Vring) {
    if let Some(fd) = kick_fd(vring) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd the vring
        // owns (it stays open while we hold the vring).
        unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
    }
}

fn unsupported<T>(what: &'static str) -> VuResult<T> {
    Err(VuError::InvalidOperation(what))
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> VuResult<()> {
        if self.owned {
            return Err(VuError::InvalidOperation("already owned"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.owned = false;
        self.acked_features = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        unsupported("RESET_DEVICE is not offered")
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(self.backend.features())
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        let offered = self.backend.features();
        if features & !offered != 0 {
            tracing::warn!(controller = %self.label, features = format_args!("{features:#x}"), offered = format_args!("{offered:#x}"), "frontend acked features we did not offer");
            return Err(VuError::InvalidParam);
        }
        self.acked_features = features;
        // Without PROTOCOL_FEATURES every ring is enabled at once.
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for index in 0..self.started.len() {
                if let Some(v) = self.backend.vring(index) {
                    v.set_enabled(true);
                }
                self.update_watch(index)?;
            }
        }
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for v in self.backend.vrings() {
            v.set_queue_event_idx(event_idx);
        }
        self.backend.set_event_idx(event_idx);
        self.update_logging();
        tracing::debug!(controller = %self.label, features = format_args!("{features:#x}"), event_idx, "features acked");
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let mut regions = Vec::with_capacity(ctx.len());
        let mut mappings = Vec::with_capacity(ctx.len());
        if ctx.len() != files.len() {
            return Err(VuError::InvalidParam);
        }
        for (region, file) in ctx.iter().zip(files) {
            regions.push(self.map_region(region, file)?);
            mappings.push(Mapping {
                vmm_addr: region.user_addr,
                size: region.memory_size,
                gpa: region.guest_phys_addr,
            });
        }
        let mem = GuestMem::from_arc_regions(regions).map_err(|e| internal(e.to_string()))?;
        self.replace_memory(mem);
        tracing::debug!(
            controller = %self.label,
            regions = mappings.len(),
            bytes = mappings.iter().map(|m| m.size).sum::<u64>(),
            "memory table set"
        );
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        let vring = self.vring(index)?;
        if num == 0 || num as usize > self.backend.max_queue_size() {
            tracing::warn!(controller = %self.label, queue = index, num, "bad vring size");
            return Err(VuError::InvalidParam);
        }
        vring.set_queue_size(num as u16);
        tracing::debug!(controller = %self.label, queue = index, num, "vring size");
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let vring = self.vring(index)?.clone();
        let desc = self.vmm_to_gpa(descriptor)?;
        let avail = self.vmm_to_gpa(available)?;
        let used_gpa = self.vmm_to_gpa(used)?;
        vring
            .set_queue_info(desc, avail, used_gpa)
            .map_err(|_| VuError::InvalidParam)?;
        let started = self.started.get(index as usize).copied().unwrap_or(false);
        if started {
            // QEMU sends the addresses of a running ring again when it turns
            // dirty logging on or off (only VHOST_VRING_F_LOG changes). The
            // worker owns the used index then: reading it back from guest
            // memory here would race with a completion being published, and
            // the next one would overwrite it (a request the guest never
            // sees completed).
            tracing::debug!(controller = %self.label, queue = index, desc = format_args!("{desc:#x}"), avail = format_args!("{avail:#x}"), used = format_args!("{used_gpa:#x}"), "vring addresses of a running ring");
            return Ok(());
        }
        // The used index lives in guest memory; the next used entry goes
        // after it.
        let idx = vring
            .queue_used_idx()
            .map_err(|e| internal(format!("cannot read the used index: {e}")))?;
        vring.set_queue_next_used(idx);
        tracing::debug!(controller = %self.label, queue = index, desc = format_args!("{desc:#x}"), avail = format_args!("{avail:#x}"), used = format_args!("{used_gpa:#x}"), used_idx = idx, "vring addresses");
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let vring = self.vring(index)?;
        vring.set_queue_next_avail(base as u16);
        tracing::debug!(controller = %self.label, queue = index, base, "vring base");
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        let i = index as usize;
        let vring = self.vring(index)?.clone();
        vring.set_queue_ready(false);
        if let Some(s) = self.started.get_mut(i) {
            *s = false;
        }
        self.update_watch(i)?;
        // Finish every request taken from this ring before answering.
        self.backend.stop_queue(i);
        let next_avail = vring.queue_next_avail();
        let next_used = vring.get_ref().get_queue().next_used();
        vring.set_kick(None);
        vring.set_call(None);
        tracing::debug!(controller = %self.label, queue = index, next_avail, next_used, "vring stopped");
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let i = usize::from(index);
        let vring = self.vring(u32::from(index))?.clone();
        // The old kick leaves the worker's epoll before it is closed.
        if let Some(old) = kick_fd(&vring) {
            self.loops.unwatch_kick(i, old);
        }
        let has_fd = fd.is_some();
        vring.set_kick(fd);
        tracing::debug!(controller = %self.label, queue = index, fd = has_fd, "kick fd set");
        if has_fd && !self.started.get(i).copied().unwrap_or(false) {
            self.start_ring(i)?;
        } else {
            self.update_watch(i)?;
        }
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let i = usize::from(index);
        let vring = self.vring(u32::from(index))?;
        let has_fd = fd.is_some();
        vring.set_call(fd);
        tracing::debug!(controller = %self.label, queue = index, fd = has_fd, "call fd set");
        // Completions published while the previous fd was in place may
        // have been signalled where nobody listens any more.
        self.signal_if_started(i);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.vring(u32::from(index))?.set_err(fd);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(Self::protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        let f = VhostUserProtocolFeatures::from_bits_truncate(features);
        self.acked_protocol = f & Self::protocol_features();
        tracing::debug!(controller = %self.label, protocol_features = format_args!("{features:#x}"), "protocol features acked");
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.backend.num_queues() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        if self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(VuError::InactiveFeature(
                VhostUserVirtioFeatures::PROTOCOL_FEATURES,
            ));
        }
        self.vring(index)?.set_enabled(enable);
        self.update_watch(index as usize)?;
        tracing::debug!(controller = %self.label, queue = index, enable, "vring enable");
        if enable && self.active(index as usize) {
            // Requests may have arrived while the ring was disabled.
            kick(self.vring(index)?);
        }
        Ok(())
    }

    fn get_config(&mut self, _: u32, _: u32, _: VhostUserConfigFlags) -> VuResult<Vec<u8>> {
        unsupported("CONFIG is not offered")
    }

    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> VuResult<()> {
        unsupported("CONFIG is not offered")
    }

    fn set_backend_req_fd(&mut self, _backend: Backend) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        unsupported("not a GPU")
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        unsupported("SHARED_OBJECT is not offered")
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        let (num_queues, queue_size) = (inflight.num_queues, inflight.queue_size);
        if usize::from(num_queues) > self.backend.num_queues()
            || usize::from(queue_size) > self.backend.max_queue_size()
        {
            tracing::warn!(controller = %self.label, num_queues, queue_size, "GET_INFLIGHT_FD for more queues or entries than we have");
            return Err(VuError::InvalidParam);
        }
        let (file, size) = InflightRegion::create(num_queues, queue_size).map_err(|e| {
            tracing::error!(controller = %self.label, error = %e, "cannot create an inflight region");
            internal(e.to_string())
        })?;
        tracing::debug!(controller = %self.label, num_queues, queue_size, size, "inflight region created");
        Ok((
            VhostUserInflight {
                mmap_size: size,
                mmap_offset: 0,
                num_queues,
                queue_size,
            },
            file,
        ))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VuResult<()> {
        let (num_queues, queue_size) = (inflight.num_queues, inflight.queue_size);
        if usize::from(num_queues) > self.backend.num_queues() {
            tracing::warn!(controller = %self.label, num_queues, "inflight region for more queues than we have");
            return Err(VuError::InvalidParam);
        }
        let region = InflightRegion::map(
            file,
            inflight.mmap_offset,
            inflight.mmap_size,
            num_queues,
            queue_size,
        )
        .map_err(|e| {
            tracing::error!(controller = %self.label, error = %e, "inflight region refused");
            internal(e.to_string())
        })?;
        let in_flight: usize = (0..num_queues)
            .filter_map(|q| region.queue(q))
            .map(|q| q.in_flight())
            .sum();
        tracing::debug!(controller = %self.label, num_queues, queue_size, size = inflight.mmap_size, in_flight, "inflight region set");
        if in_flight > 0 {
            tracing::info!(controller = %self.label, requests = in_flight, "the previous daemon left requests in flight; they will be resubmitted");
        }
        self.inflight = Some(region);
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        file: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        if self.mappings.len() as u64 >= MAX_MEM_SLOTS {
            return Err(VuError::InvalidParam);
        }
        let r = self.map_region(region, file)?;
        let mem = self
            .mem
            .memory()
            .insert_region(r)
            .map_err(|e| internal(e.to_string()))?;
        self.replace_memory(mem);
        self.mappings.push(Mapping {
            vmm_addr: region.user_addr,
            size: region.memory_size,
            gpa: region.guest_phys_addr,
        });
        let (gpa, size) = (region.guest_phys_addr, region.memory_size);
        tracing::debug!(controller = %self.label, gpa = format_args!("{gpa:#x}"), size, "memory region added");
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        let (mem, _) = self
            .mem
            .memory()
            .remove_region(GuestAddress(region.guest_phys_addr), region.memory_size)
            .map_err(|e| internal(e.to_string()))?;
        self.replace_memory(mem);
        self.mappings.retain(|m| m.gpa != region.guest_phys_addr);
        let gpa = region.guest_phys_addr;
        tracing::debug!(controller = %self.label, gpa = format_args!("{gpa:#x}"), "memory region removed");
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _file: File,
    ) -> VuResult<Option<File>> {
        unsupported("DEVICE_STATE is not offered")
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        unsupported("DEVICE_STATE is not offered")
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        unsupported("SHMEM is not offered")
    }

    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> VuResult<()> {
        let (size, offset) = (log.mmap_size, log.mmap_offset);
        let map = DirtyLog::map(file, offset, size).map_err(|e| {
            tracing::warn!(controller = %self.label, error = %e, "dirty log refused");
            internal(e)
        })?;
        let map = Arc::new(map);
        let reg = sigbus::register(map.as_ptr() as usize, map.size(), &self.fault)
            .map_err(VuError::ReqHandlerError)?;
        tracing::debug!(controller = %self.label, size, offset, "dirty log set");
        // The old log goes once no worker holds it any more.
        self.log = Some(map);
        self.log_reg = Some(reg);
        self.update_logging();
        Ok(())
    }
}
