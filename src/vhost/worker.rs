//! A request-queue worker: pops descriptor chains, runs them through the
//! SCSI target, and executes block I/O on its own io_uring straight into
//! guest memory. Commands the block layer executes synchronously (UNMAP,
//! WRITE SAME, VERIFY, COMPARE AND WRITE, ...) go to the queue's slow lane
//! so the worker never blocks. Requests complete out of order.
//!
//! Every in-flight request owns a reference to the guest memory mapping
//! (`GuestMemoryLoadGuard`) until its completion is reaped, so a memory
//! table update cannot unmap buffers the kernel is still writing.

use std::sync::Arc;
use std::time::Instant;

use vhost_user_backend::{VringRwLock, VringState, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{
    ByteValued, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard,
};

use super::device::{Device, LunBacking, LunCache};
use super::dirty::{DirtyLog, LogView, SharedLog};
use super::exec::{self, Gate, SlowOp};
use super::inflight::{InflightMark, QueueInflight, Resubmit};
use super::media_error::{self, RingIo};
use super::passthrough::{self, PassReply};
use super::ratelimit::{warn_limited, RateLimit};
use super::slow::{JobResult, SlowLane};
use super::stats::{CmdKind, QueueStats};
use crate::block::{Completion, Engine, EngineOp, IoVecs, SgCommand, SgDir};
use crate::scsi::{io_error_sense, BlockIo, IoDir, LunMapCache, NexusId, Outcome, Sense, Status};
use crate::virtio_scsi::{
    decode_lun, parse_cmd, split_chain, split_chain_at, ChainError, CmdRequest, CmdRespHeader,
    GuestMem, LunAddress, Segments, SplitChain, SENSE_SIZE, S_BAD_TARGET, S_FAILURE, S_OK,
    S_OVERRUN,
};

/// The vring type the daemon uses.
pub(crate) type Vring = VringRwLock<GuestMemoryAtomic<GuestMem>>;
type MemGuard = GuestMemoryLoadGuard<GuestMem>;
type State = VringState<GuestMemoryAtomic<GuestMem>>;

/// Largest number of requests handed to the kernel in one system call
/// while a burst is being started.
const MAX_SUBMIT_CHUNK: usize = 16;

/// Size of the response header in the writable part of a request.
const RESP_LEN: u32 = std::mem::size_of::<CmdRespHeader>() as u32;
/// LUN number handed to the target for the REPORT LUNS well-known LUN: it
/// is not a configured LUN, so only REPORT LUNS, INQUIRY and REQUEST SENSE
/// answer there.
const WELL_KNOWN_LUN: u16 = u16::MAX;

/// A request waiting for its io_uring or slow-lane completion.
struct InFlight {
    head: u16,
    tag: u64,
    lun: u16,
    /// Direction, for the sense of a failed I/O.
    dir: IoDir,
    /// Bytes a successful ring read puts in data-in.
    read_len: u64,
    /// Residual to report on success.
    resid: u32,
    resp: Segments,
    /// Where a slow-lane result's data goes.
    data_in: Segments,
    /// Set for a fast-path write registered in its LUN's write gate.
    gate: Option<Gate>,
    mem: MemGuard,
    /// The LUN's backing (kept alive until completion, even across a
    /// hot-detach) and counters.
    lb: Arc<LunBacking>,
    kind: CmdKind,
    start: Instant,
    /// A ring READ/WRITE, for finding the failing block of a medium error.
    ring_io: Option<RingIo>,
}

/// State of one request queue, owned by its worker thread (behind a mutex
/// that only task management, `stop_vring` and the accept loop contend
/// for).
pub(crate) struct RequestWorker {
    index: usize,
    nexus: NexusId,
    device: Arc<Device>,
    /// This queue's views of the target's LUN map and the LUN backings.
    units: LunMapCache,
    backings: LunCache,
    engine: Engine,
    engine_enabled: bool,
    slow: SlowLane,
    /// The queue's vring, learnt on its first event (needed to complete
    /// requests from the control thread or `stop_vring`).
    vring: Option<Vring>,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    completions: Vec<Completion>,
    slow_done: Vec<(u64, JobResult)>,
    log: RateLimit,
    stats: Arc<QueueStats>,
    /// When the current batch of requests was taken from the ring.
    batch_start: Instant,
    /// This queue's part of the inflight region (INFLIGHT_SHMFD).
    inflight: Option<QueueInflight>,
    /// Requests a dead predecessor had in flight, run before new ones.
    resubmit: Vec<Resubmit>,
    /// The dirty log (live migration) and its value for the current event.
    dirty: LogView,
    dlog: Option<Arc<DirtyLog>>,
    /// Adaptive polling is configured (src/vhost/poll.rs): a batch leaves
    /// guest notifications off, and [`RequestWorker::prepare_sleep`] turns
    /// them back on before the worker sleeps.
    polling: bool,
    /// Notifications (EVENT_IDX's avail_event) are re-armed: false from a
    /// batch taken while polling until `prepare_sleep`.
    armed: bool,
    /// Completions were reaped without resetting the io_uring eventfd.
    cq_event_stale: bool,
}

impl RequestWorker {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        nexus: NexusId,
        device: Arc<Device>,
        engine: Engine,
        slow: SlowLane,
        stats: Arc<QueueStats>,
        vring: Option<Vring>,
        dirty: &SharedLog,
    ) -> Self {
        RequestWorker {
            index,
            nexus,
            units: device.target.cache(),
            backings: device.lun_cache(),
            device,
            engine,
            engine_enabled: false,
            slow,
            vring,
            slots: Vec::new(),
            free: Vec::new(),
            completions: Vec::new(),
            slow_done: Vec::new(),
            log: RateLimit::new(),
            stats,
            batch_start: Instant::now(),
            inflight: None,
            resubmit: Vec::new(),
            dirty: LogView::new(dirty),
            dlog: None,
            polling: false,
            armed: true,
            cq_event_stale: false,
        }
    }

    /// Poll this queue (adaptive polling on): see [`RequestWorker::poll`].
    pub(crate) fn set_polling(&mut self, on: bool) {
        self.polling = on;
    }

    /// Put `head` in the used ring with `len` bytes written (see
    /// [`publish_used`]). Returns true (the used ring changed).
    fn publish(&mut self, state: &mut State, head: u16, len: u32) -> bool {
        publish_used(
            &mut self.inflight,
            state,
            head,
            len,
            &mut self.log,
            self.dlog.as_deref(),
        )
    }

    /// Take the dirty log in force now (one cached load while it does not
    /// change).
    fn refresh_log(&mut self) {
        self.dlog = self.dirty.get().cloned();
    }

    /// Track this queue's requests in `inflight` from now on; `resubmit`
    /// are the requests a dead predecessor left in flight (oldest first):
    /// they run at the next kick, before any new request.
    pub(crate) fn attach_inflight(&mut self, inflight: QueueInflight, resubmit: Vec<Resubmit>) {
        self.inflight = Some(inflight);
        self.resubmit = resubmit;
    }

    pub(crate) fn engine_event_fd(&self) -> std::os::fd::RawFd {
        self.engine.event_fd()
    }

    pub(crate) fn slow_event_fd(&self) -> std::os::fd::RawFd {
        self.slow.event_fd()
    }

    /// Is the command `tag` for `lun` in flight here?
    pub(crate) fn has_tag(&self, lun: u16, tag: u64) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|r| r.lun == lun && r.tag == tag)
    }

    /// Drop cached LUN maps that a hot-detach made stale.
    pub(crate) fn refresh_luns(&mut self) {
        self.units.refresh();
        self.backings.refresh();
    }

    /// Is any command for `lun` in flight here?
    pub(crate) fn has_lun_requests(&self, lun: u16) -> bool {
        self.slots.iter().flatten().any(|r| r.lun == lun)
    }

    fn ensure_engine(&mut self) -> bool {
        if !self.engine_enabled {
            match self.engine.enable() {
                Ok(()) => self.engine_enabled = true,
                Err(e) => {
                    tracing::error!(queue = self.index, error = %e, "cannot enable io_uring");
                    return false;
                }
            }
        }
        true
    }

    /// The queue was kicked: start every available request. While polling
    /// (and with EVENT_IDX) guest notifications stay off afterwards, until
    /// [`RequestWorker::prepare_sleep`]. Returns the number of requests
    /// taken from the ring.
    pub(crate) fn process_queue(
        &mut self,
        vring: &Vring,
        event_idx: bool,
        mem: &GuestMemoryAtomic<GuestMem>,
    ) -> usize {
        let rearm = !self.polling;
        self.take_requests(vring, event_idx, mem, rearm)
    }

    /// Start every available request; with EVENT_IDX, `rearm` turns guest
    /// notifications back on at the end (and takes what came meanwhile).
    fn take_requests(
        &mut self,
        vring: &Vring,
        event_idx: bool,
        mem: &GuestMemoryAtomic<GuestMem>,
        rearm: bool,
    ) -> usize {
        if self.vring.is_none() {
            self.vring = Some(vring.clone());
        }
        if !self.ensure_engine() {
            return 0;
        }
        self.refresh_log();
        let mem = mem.memory();
        let mut completed = false;
        let mut popped = 0usize;
        // A burst of requests goes to the kernel in growing chunks (1, 2,
        // 4, ...): the device starts on the first one at once instead of
        // after the whole burst was parsed, and a burst still costs a few
        // system calls, not one per request (docs/benchmarks.md).
        let mut chunk = 1;
        self.batch_start = Instant::now();
        {
            let mut state = vring.get_mut();
            if !self.resubmit.is_empty() {
                completed |= self.run_resubmits(&mem, &mut state);
            }
            loop {
                // Nothing can be taken from a ring that is not ready (a kick
                // before SET_VRING_ENABLE, or after a stop) or whose avail
                // index is more than a ring ahead: virtio-queue would log an
                // error for every such kick, and a guest or frontend can
                // send them at will.
                if avail_index_broken(state.get_queue(), &mem) {
                    if state.get_queue().ready() {
                        warn_limited!(self.log, queue = self.index, "the guest's avail index is beyond the ring: ignoring the queue until its next kick");
                        if event_idx && rearm {
                            // As after any batch: the guest kicks again
                            // once it adds a request.
                            self.armed = true;
                            let _ = state.enable_notification();
                        }
                    }
                    break;
                }
                if event_idx {
                    if let Err(e) = state.disable_notification() {
                        warn_limited!(self.log, queue = self.index, error = %e, "disable_notification failed");
                    }
                }
                while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) {
                    self.stats.popped(1);
                    popped += 1;
                    if let Some(i) = &mut self.inflight {
                        i.begin(chain.head_index());
                    }
                    completed |= self.start_request(chain, mem.clone(), &mut state);
                    if self.engine.queued() >= chunk {
                        self.submit();
                        chunk = (chunk * 2).min(MAX_SUBMIT_CHUNK);
                    }
                }
                if !event_idx {
                    break;
                }
                if !rearm {
                    // Polling: the guest is not asked to kick; the worker
                    // looks at the ring itself until it goes to sleep.
                    self.armed = false;
                    break;
                }
                self.armed = true;
                match state.enable_notification() {
                    // More came meanwhile; a broken avail index is caught at
                    // the top of the loop.
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        warn_limited!(self.log, queue = self.index, error = %e, "enable_notification failed");
                        break;
                    }
                }
            }
            if let Some(d) = &self.dlog {
                log_used_ring(d, state.get_queue());
            }
            if completed {
                signal(&mut state, &mut self.log, self.index);
            }
        }
        self.submit();
        // Page-cache hits complete during the submission itself: answer them
        // now instead of sleeping until the completion eventfd wakes us.
        if self.engine.has_completions() {
            if self.polling {
                self.complete_ring(false);
            } else {
                self.process_completions();
            }
        }
        self.publish_in_flight();
        popped
    }

    /// One look at the queue while polling: complete what the io_uring
    /// and the slow lane finished, start what the guest made available.
    /// No system call unless there is work (the submission). Returns true
    /// if anything was done.
    pub(crate) fn poll(
        &mut self,
        vring: &Vring,
        event_idx: bool,
        mem: &GuestMemoryAtomic<GuestMem>,
    ) -> bool {
        if !self.engine_enabled {
            return false;
        }
        let mut progress = false;
        if self.engine.has_completions() {
            progress |= self.complete_ring(false) > 0;
        }
        if self.slow.pending() > 0 {
            let mut done = std::mem::take(&mut self.slow_done);
            done.clear();
            self.slow.reap_polled(&mut done);
            if !done.is_empty() {
                progress = true;
                self.refresh_log();
                self.finish_slow(&mut done);
                self.publish_in_flight();
            }
            self.slow_done = done;
        }
        let available = {
            let state = vring.get_ref();
            let q = state.get_queue();
            state.is_enabled()
                && q.ready()
                && q.avail_idx(&*mem.memory(), std::sync::atomic::Ordering::Acquire)
                    .is_ok_and(|a| a.0 != q.next_avail())
        };
        if available {
            progress |= self.take_requests(vring, event_idx, mem, false) > 0;
        }
        progress
    }

    /// The worker is about to sleep in epoll: turn guest notifications
    /// back on (and take what arrived before they were), reset the
    /// io_uring eventfd if completions were reaped by polling (and
    /// complete what was posted before it was reset). Returns true if
    /// anything was done: then the worker must not sleep yet.
    pub(crate) fn prepare_sleep(
        &mut self,
        vring: &Vring,
        event_idx: bool,
        mem: &GuestMemoryAtomic<GuestMem>,
    ) -> bool {
        let mut progress = false;
        if !self.armed {
            let ready = {
                let state = vring.get_ref();
                state.is_enabled() && state.get_queue().ready()
            };
            if ready {
                progress |= self.take_requests(vring, event_idx, mem, true) > 0;
            }
            // A ring that stopped or was disabled meanwhile is kicked by
            // the protocol handler when it starts again.
            self.armed = true;
        }
        if std::mem::take(&mut self.cq_event_stale) {
            // Reset first, look after: a completion posted in between
            // makes the eventfd readable again. What is reaped here leaves
            // the eventfd stale, and the caller polls once more.
            self.engine.clear_event();
            if self.engine.has_completions() {
                progress |= self.complete_ring(false) > 0;
            }
        }
        progress
    }

    fn submit(&mut self) {
        if let Err(e) = self.engine.submit() {
            tracing::error!(queue = self.index, error = %e, "io_uring submit failed");
        }
    }

    fn publish_in_flight(&self) {
        self.stats
            .set_in_flight((self.slots.len() - self.free.len()) as u64);
    }

    /// Count a completed request in its LUN's counters.
    fn account(&self, req: &InFlight, ok: bool, now: Instant) {
        let ns =
            u64::try_from(now.saturating_duration_since(req.start).as_nanos()).unwrap_or(u64::MAX);
        req.lb.stats.completed(self.index, req.kind, ok, ns);
    }

    /// The io_uring eventfd fired: complete what finished.
    pub(crate) fn process_completions(&mut self) {
        self.complete_ring(true);
    }

    /// Complete what the io_uring finished; `clear_event` resets its
    /// eventfd (a system call) first, else the reset is left to
    /// [`RequestWorker::prepare_sleep`]. Returns the number of completions.
    fn complete_ring(&mut self, clear_event: bool) -> usize {
        self.refresh_log();
        let mut comps = std::mem::take(&mut self.completions);
        comps.clear();
        let reaped = if clear_event {
            self.engine.reap(&mut comps)
        } else {
            self.cq_event_stale = true;
            self.engine.reap_pending(&mut comps)
        };
        if let Err(e) = reaped {
            tracing::error!(queue = self.index, error = %e, "io_uring reap failed");
        }
        let n = comps.len();
        self.finish_ring(&comps);
        self.completions = comps;
        self.publish_in_flight();
        n
    }

    /// The slow lane's eventfd fired: complete what finished.
    pub(crate) fn process_slow(&mut self) {
        self.refresh_log();
        let mut done = std::mem::take(&mut self.slow_done);
        done.clear();
        self.slow.reap(&mut done);
        self.finish_slow(&mut done);
        self.slow_done = done;
        self.publish_in_flight();
    }

    /// Wait for every in-flight request and complete it (stop_vring, task
    /// management, disconnect, shutdown). The ring first: a COMPARE AND
    /// WRITE on the slow lane may be waiting for ring writes to finish.
    pub(crate) fn drain(&mut self) {
        self.refresh_log();
        if self.engine.in_flight() > 0 {
            let mut comps = std::mem::take(&mut self.completions);
            comps.clear();
            if let Err(e) = self.engine.drain(&mut comps) {
                tracing::error!(queue = self.index, error = %e, "io_uring drain failed");
            }
            self.finish_ring(&comps);
            self.completions = comps;
        }
        if self.slow.pending() > 0 {
            let mut done = std::mem::take(&mut self.slow_done);
            done.clear();
            self.slow.drain(&mut done);
            self.finish_slow(&mut done);
            self.slow_done = done;
        }
    }

    fn take_slot(&mut self, user_data: u64) -> Option<InFlight> {
        let i = usize::try_from(user_data).ok()?;
        let req = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        Some(req)
    }

    fn finish_ring(&mut self, comps: &[Completion]) {
        if comps.is_empty() {
            return;
        }
        let Some(vring) = self.vring.clone() else {
            return;
        };
        let now = Instant::now();
        let mut state = vring.get_mut();
        for c in comps {
            let Some(req) = self.take_slot(c.user_data) else {
                tracing::error!(
                    queue = self.index,
                    user_data = c.user_data,
                    "completion for unknown request"
                );
                continue;
            };
            if let Some(g) = &req.gate {
                g.leave_fast();
            }
            if let (Some(d), IoDir::Read) = (&self.dlog, req.dir) {
                // The kernel wrote (some of) the data-in: log it before the
                // guest can see the completion.
                d.mark_segments(&req.data_in, req.read_len);
            }
            let Some(req) = self.retry_medium_error(&mut state, req, c.result) else {
                continue;
            };
            self.account(&req, c.result.is_ok(), now);
            let used = match c.result {
                Ok(_) => {
                    let used = write_response(
                        &req.mem,
                        &req.resp,
                        S_OK,
                        Status::Good,
                        None,
                        req.resid,
                        self.dlog.as_deref(),
                    );
                    used.saturating_add(clamp_u32(req.read_len))
                }
                Err(errno) => {
                    warn_limited!(
                        self.log,
                        queue = self.index,
                        lun = req.lun,
                        error = %std::io::Error::from_raw_os_error(errno),
                        "backing I/O failed"
                    );
                    let sense = io_error_sense(req.dir, errno);
                    let resid = req.resid.saturating_add(clamp_u32(req.read_len));
                    write_response(
                        &req.mem,
                        &req.resp,
                        S_OK,
                        Status::CheckCondition,
                        Some(&sense),
                        resid,
                        self.dlog.as_deref(),
                    )
                }
            };
            self.publish(&mut state, req.head, used);
        }
        signal(&mut state, &mut self.log, self.index);
    }

    /// A ring READ/WRITE failed with a medium error: redo it block by block
    /// on the slow lane to find the failing LBA (src/vhost/media_error.rs).
    /// Returns the request when it is to be completed now.
    fn retry_medium_error(
        &mut self,
        state: &mut State,
        mut req: InFlight,
        result: Result<u64, i32>,
    ) -> Option<InFlight> {
        let (Err(errno), Some(rio)) = (result, req.ring_io.take()) else {
            return Some(req);
        };
        let Some(job) = media_error::retry_job(
            &rio,
            errno,
            &req.lb.backing,
            &req.lb.gate,
            req.lun,
            &req.mem,
        ) else {
            return Some(req);
        };
        // The fast-path gate was left already.
        req.gate = None;
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Some(req);
        }
        self.push_slow(state, slot, job);
        None
    }

    fn finish_slow(&mut self, done: &mut Vec<(u64, JobResult)>) {
        if done.is_empty() {
            return;
        }
        let Some(vring) = self.vring.clone() else {
            return;
        };
        let now = Instant::now();
        let mut state = vring.get_mut();
        for (user, result) in done.drain(..) {
            let Some(req) = self.take_slot(user) else {
                tracing::error!(
                    queue = self.index,
                    user,
                    "slow completion for unknown request"
                );
                continue;
            };
            self.account(&req, result.status == Status::Good, now);
            if let Some(reply) = &result.pass {
                let used = self.finish_passthrough(&req, reply);
                self.publish(&mut state, req.head, used);
                continue;
            }
            let used = complete_with(
                &req.mem,
                &req.resp,
                &req.data_in,
                result.status,
                result.sense.as_ref(),
                &result.data,
                &mut self.log,
                self.dlog.as_deref(),
            );
            self.publish(&mut state, req.head, used);
        }
        signal(&mut state, &mut self.log, self.index);
    }

    /// Write a passthrough command's answer: the device's data-in is already
    /// in the guest's buffers (logged here), then status, sense and
    /// residual as the device gave them. Returns the used length.
    fn finish_passthrough(&mut self, req: &InFlight, reply: &PassReply) -> u32 {
        if let Some(why) = &reply.failure {
            warn_limited!(self.log, queue = self.index, lun = req.lun, error = %why, "passthrough command failed on the host");
        }
        let data_in = reply.data_in_len();
        if let Some(max) = reply.block_limits {
            // VPD B0h: the host's transfer limit (QEMU's scsi-block does
            // the same).
            let mut head = [0u8; 16];
            let n = usize::try_from(data_in).unwrap_or(0).min(head.len());
            if let Some(h) = head.get_mut(..n) {
                if req.data_in.read_to(&req.mem, h).ok() == Some(n)
                    && passthrough::clamp_block_limits(h, max)
                {
                    let _ = req.data_in.write_from(&req.mem, h);
                }
            }
        }
        if let Some(d) = &self.dlog {
            d.mark_segments(&req.data_in, u64::from(data_in));
        }
        // The guest's residual counts its whole data-in (or data-out)
        // buffer; the transfer was exactly that buffer.
        let used = write_response_raw(
            &req.mem,
            &req.resp,
            S_OK,
            reply.status,
            &reply.sense,
            reply.resid,
            self.dlog.as_deref(),
        );
        used.saturating_add(data_in)
    }

    /// Start one request. Returns true if it completed at once (the used
    /// ring changed).
    fn start_request(
        &mut self,
        chain: DescriptorChain<MemGuard>,
        mem: MemGuard,
        state: &mut State,
    ) -> bool {
        let head = chain.head_index();
        let split = split_chain(chain);
        self.start_split(head, split, mem, state)
    }

    /// Run what a dead predecessor left in flight, oldest first: a request
    /// whose response was already in guest memory is published as it is,
    /// the others run again. Returns true if the used ring changed.
    fn run_resubmits(&mut self, mem: &MemGuard, state: &mut State) -> bool {
        let list = std::mem::take(&mut self.resubmit);
        let (table, size) = {
            let q = state.get_queue();
            (GuestAddress(q.desc_table()), q.size())
        };
        let mut completed = false;
        let n = list.len();
        for r in list {
            self.stats.popped(1);
            match r.done {
                Some(len) => {
                    completed |= self.publish(state, r.head, len);
                }
                None if r.applied => {
                    // Applied before the restart (COMPARE AND WRITE): the
                    // guest only misses its GOOD answer.
                    let used = split_chain_at(mem, table, size, r.head)
                        .ok()
                        .and_then(|split| parse_cmd(mem, split).ok())
                        .map_or(0, |req| {
                            write_response(
                                mem,
                                &req.resp,
                                S_OK,
                                Status::Good,
                                None,
                                0,
                                self.dlog.as_deref(),
                            )
                        });
                    completed |= self.publish(state, r.head, used);
                }
                None => {
                    let split = split_chain_at(mem, table, size, r.head);
                    completed |= self.start_split(r.head, split, mem.clone(), state);
                }
            }
        }
        tracing::info!(
            queue = self.index,
            requests = n,
            "resubmitted requests left in flight"
        );
        completed
    }

    /// Start a request whose chain was split (or failed to).
    fn start_split(
        &mut self,
        head: u16,
        split: Result<SplitChain, ChainError>,
        mem: MemGuard,
        state: &mut State,
    ) -> bool {
        let split = match split {
            Ok(s) => s,
            Err(e) => {
                warn_limited!(self.log, queue = self.index, error = %e, "malformed descriptor chain");
                return self.publish(state, head, 0);
            }
        };
        let req = match parse_cmd(&mem, split) {
            Ok(r) => r,
            Err(bad) => {
                warn_limited!(self.log, queue = self.index, error = %bad.error, "bad request");
                let used = match &bad.resp {
                    Some(resp) => write_response(
                        &mem,
                        resp,
                        S_FAILURE,
                        Status::Good,
                        None,
                        0,
                        self.dlog.as_deref(),
                    ),
                    None => 0,
                };
                return self.publish(state, head, used);
            }
        };
        let lun = match decode_lun(&req.header.lun) {
            LunAddress::Lun { target: 0, lun } => lun,
            LunAddress::ReportLunsWellKnown { target: 0 } => WELL_KNOWN_LUN,
            _ => return self.respond(state, head, &mem, &req.resp, S_BAD_TARGET),
        };
        let cdb = req.header.cdb;
        let outcome = {
            let mut data_out = req.data_out.reader(&mem);
            self.device
                .target
                .execute_cached(&mut self.units, self.nexus, lun, &cdb, &mut data_out)
        };
        let lb = self.backings.get(lun);
        if let Some(lb) = &lb {
            lb.stats.started(self.index);
        }
        match outcome {
            Outcome::Complete {
                status,
                sense,
                data,
            } => {
                if let Some(lb) = &lb {
                    let ns = u64::try_from(self.batch_start.elapsed().as_nanos()).unwrap_or(0);
                    lb.stats
                        .completed(self.index, CmdKind::Other, status == Status::Good, ns);
                }
                let used = complete_with(
                    &mem,
                    &req.resp,
                    &req.data_in,
                    status,
                    sense.as_ref(),
                    &data,
                    &mut self.log,
                    self.dlog.as_deref(),
                );
                self.publish(state, head, used)
            }
            other => {
                // The target accepted a command for a LUN being detached
                // right now: it is gone.
                let Some(lb) = lb else {
                    return self.respond(state, head, &mem, &req.resp, S_FAILURE);
                };
                if let Outcome::Passthrough { cdb_len } = other {
                    let cdb = cdb.get(..cdb_len).unwrap_or(&cdb);
                    return self.start_passthrough(state, head, lb, cdb, req, mem);
                }
                self.start_backed(state, head, lb, other, req, mem)
            }
        }
    }

    /// A command that needs the LUN's backing store.
    fn start_backed(
        &mut self,
        state: &mut State,
        head: u16,
        lb: Arc<LunBacking>,
        outcome: Outcome,
        req: CmdRequest,
        mem: MemGuard,
    ) -> bool {
        match outcome {
            Outcome::Io(io) => self.start_io(state, head, lb, io, req, mem),
            Outcome::Flush => {
                let backing = lb.backing.clone();
                let resid = clamp_u32(req.data_in.len());
                let slot = self.park(
                    head,
                    lb,
                    CmdKind::Other,
                    IoDir::Write,
                    0,
                    resid,
                    req,
                    None,
                    mem,
                );
                self.push_ring(state, slot, &backing, EngineOp::Flush)
            }
            slow => {
                // A COMPARE AND WRITE is not idempotent: once it applied,
                // the inflight region says so, and a restarted daemon
                // answers it instead of comparing again.
                let mark = match slow {
                    Outcome::CompareAndWrite { .. } => {
                        self.inflight.as_ref().and_then(|i| i.mark(head))
                    }
                    _ => None,
                };
                let job = slow_job(&lb, SlowOp::Scsi(slow), mark);
                let slot = self.park(head, lb, CmdKind::Other, IoDir::Write, 0, 0, req, None, mem);
                self.push_slow(state, slot, job)
            }
        }
    }

    /// A command for a passthrough LUN: SG_IO on the host device, with the
    /// guest's buffers as its iovecs (direction from the descriptors), on
    /// the queue's passthrough pool. The request keeps the guest memory
    /// mapped (`mem` in its slot) until the device answered.
    fn start_passthrough(
        &mut self,
        state: &mut State,
        head: u16,
        lb: Arc<LunBacking>,
        cdb: &[u8],
        req: CmdRequest,
        mem: MemGuard,
    ) -> bool {
        let (dir, buf) = match (req.data_out.is_empty(), req.data_in.is_empty()) {
            (true, true) => (SgDir::None, None),
            (false, true) => (SgDir::ToDevice, Some(&req.data_out)),
            (true, false) => (SgDir::FromDevice, Some(&req.data_in)),
            (false, false) => {
                warn_limited!(self.log, queue = self.index, lun = lb.lun, opcode = cdb.first().copied().unwrap_or(0), "bidirectional passthrough command refused (data-out and data-in buffers): not supported");
                return self.refuse(state, head, &lb, &req, &mem);
            }
        };
        let mut iovecs = IoVecs::new();
        if let Some(buf) = buf {
            if let Err(e) = buf.iovecs(&mem, buf.len(), &mut iovecs) {
                warn_limited!(self.log, queue = self.index, error = %e, "bad data buffers");
                lb.stats.completed(self.index, CmdKind::Other, false, 0);
                return self.respond(state, head, &mem, &req.resp, S_FAILURE);
            }
        }
        let cmd = match SgCommand::new(cdb, dir, &iovecs) {
            Ok(c) => c,
            Err(e) => {
                warn_limited!(self.log, queue = self.index, lun = lb.lun, error = %e, "passthrough command refused");
                return self.refuse(state, head, &lb, &req, &mem);
            }
        };
        let kind = pass_kind(cdb, dir, u64::from(cmd.len()));
        let io_dir = match dir {
            SgDir::FromDevice => IoDir::Read,
            _ => IoDir::Write,
        };
        let job = passthrough::job(lb.backing.clone(), cmd);
        let slot = self.park(head, lb, kind, io_dir, 0, 0, req, None, mem);
        if self.slow.submit_pass(slot as u64, job) {
            return false;
        }
        tracing::error!(queue = self.index, "no passthrough thread");
        self.fail_parked(state, slot)
    }

    /// CHECK CONDITION, INVALID FIELD IN CDB: a command we cannot pass.
    fn refuse(
        &mut self,
        state: &mut State,
        head: u16,
        lb: &LunBacking,
        req: &CmdRequest,
        mem: &GuestMem,
    ) -> bool {
        lb.stats.completed(self.index, CmdKind::Other, false, 0);
        let sense = Sense::invalid_field_in_cdb(0, None);
        let resid = clamp_u32(req.data_in.len());
        let used = write_response(
            mem,
            &req.resp,
            S_OK,
            Status::CheckCondition,
            Some(&sense),
            resid,
            self.dlog.as_deref(),
        );
        self.publish(state, head, used)
    }

    /// READ/WRITE: zero copy through the ring, or (a write that meets a
    /// COMPARE AND WRITE) copied to the slow lane.
    fn start_io(
        &mut self,
        state: &mut State,
        head: u16,
        lb: Arc<LunBacking>,
        io: BlockIo,
        req: CmdRequest,
        mem: MemGuard,
    ) -> bool {
        let (buf, other) = match io.dir {
            IoDir::Read => (&req.data_in, &req.data_out),
            IoDir::Write => (&req.data_out, &req.data_in),
        };
        let len = io.len.0;
        // virtio-scsi: a transfer that does not fit the buffers of its
        // direction is an overrun (QEMU does the same).
        if buf.len() < len || !other.is_empty() {
            lb.stats.completed(self.index, CmdKind::Other, false, 0);
            return self.respond(state, head, &mem, &req.resp, S_OVERRUN);
        }
        let kind = match io.dir {
            IoDir::Read => CmdKind::Read(len),
            IoDir::Write => CmdKind::Write(len),
        };
        let resid = clamp_u32(buf.len() - len);
        let gate = match io.dir {
            IoDir::Read => None,
            IoDir::Write if lb.gate.enter_fast() => Some(lb.gate.clone()),
            IoDir::Write => {
                // A COMPARE AND WRITE holds the LUN: copy the data and
                // queue the write behind it.
                let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
                if buf.read_to(&mem, &mut data).ok() != Some(data.len()) {
                    lb.stats.completed(self.index, kind, false, 0);
                    return self.respond(state, head, &mem, &req.resp, S_FAILURE);
                }
                let job = slow_job(
                    &lb,
                    SlowOp::DivertedWrite {
                        offset: io.offset,
                        data,
                        fua: io.fua,
                    },
                    None,
                );
                let slot = self.park(head, lb, kind, IoDir::Write, 0, resid, req, None, mem);
                return self.push_slow(state, slot, job);
            }
        };
        let mut iovecs = IoVecs::new();
        if let Err(e) = buf.iovecs(&mem, len, &mut iovecs) {
            if let Some(g) = &gate {
                g.leave_fast();
            }
            warn_limited!(self.log, queue = self.index, error = %e, "bad data buffers");
            lb.stats.completed(self.index, kind, false, 0);
            return self.respond(state, head, &mem, &req.resp, S_FAILURE);
        }
        let (op, read_len) = match io.dir {
            IoDir::Read => (
                EngineOp::Read {
                    offset: io.offset,
                    iovecs,
                },
                len,
            ),
            IoDir::Write => (
                EngineOp::Write {
                    offset: io.offset,
                    iovecs,
                    fua: io.fua,
                },
                0,
            ),
        };
        let backing = lb.backing.clone();
        let mut req = req;
        // Moved, not copied: the request keeps only data-in and the response.
        let data_out = std::mem::take(&mut req.data_out);
        let slot = self.park(head, lb, kind, io.dir, read_len, resid, req, gate, mem);
        if let Some(Some(r)) = self.slots.get_mut(slot) {
            r.ring_io = Some(RingIo { io, data_out });
        }
        self.push_ring(state, slot, &backing, op)
    }

    /// Record a request as in flight; returns its slot.
    #[allow(clippy::too_many_arguments)]
    fn park(
        &mut self,
        head: u16,
        lb: Arc<LunBacking>,
        kind: CmdKind,
        dir: IoDir,
        read_len: u64,
        resid: u32,
        req: CmdRequest,
        gate: Option<Gate>,
        mem: MemGuard,
    ) -> usize {
        let entry = InFlight {
            head,
            tag: req.header.tag,
            lun: lb.lun,
            dir,
            read_len,
            resid,
            resp: req.resp,
            data_in: req.data_in,
            gate,
            mem,
            lb,
            kind,
            start: self.batch_start,
            ring_io: None,
        };
        match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i) {
                    *s = Some(entry);
                }
                i
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        }
    }

    fn push_ring(
        &mut self,
        state: &mut State,
        slot: usize,
        backing: &Arc<crate::block::Backing>,
        op: EngineOp,
    ) -> bool {
        // SAFETY: the iovecs point into guest memory validated by
        // `Segments::iovecs`; the request keeps `mem` (the mapping) alive in
        // `self.slots[slot]` until the engine returns this op's completion,
        // and the guest does not own these buffers until we put the chain
        // in the used ring after that completion.
        let pushed = unsafe { self.engine.push(backing, op, slot as u64) };
        match pushed {
            Ok(()) => false,
            Err(e) => {
                tracing::error!(queue = self.index, error = %e, "io_uring push failed");
                self.fail_parked(state, slot)
            }
        }
    }

    fn push_slow(&mut self, state: &mut State, slot: usize, job: super::slow::Job) -> bool {
        if self.slow.submit(slot as u64, job) {
            return false;
        }
        tracing::error!(queue = self.index, "slow lane is gone");
        self.fail_parked(state, slot)
    }

    /// Complete a parked request that could not be started.
    fn fail_parked(&mut self, state: &mut State, slot: usize) -> bool {
        let Some(req) = self.take_slot(slot as u64) else {
            return false;
        };
        if let Some(g) = &req.gate {
            g.leave_fast();
        }
        self.account(&req, false, Instant::now());
        let sense = io_error_sense(req.dir, libc::EIO);
        let used = write_response(
            &req.mem,
            &req.resp,
            S_OK,
            Status::CheckCondition,
            Some(&sense),
            req.resid,
            self.dlog.as_deref(),
        );
        self.publish(state, req.head, used)
    }

    /// Complete at once with a virtio-scsi response code and no SCSI status.
    fn respond(
        &mut self,
        state: &mut State,
        head: u16,
        mem: &GuestMem,
        resp: &Segments,
        response: u8,
    ) -> bool {
        let used = write_response(
            mem,
            resp,
            response,
            Status::Good,
            None,
            0,
            self.dlog.as_deref(),
        );
        self.publish(state, head, used)
    }
}

impl Drop for RequestWorker {
    fn drop(&mut self) {
        // Complete (or at least wait for) I/O still in flight so the kernel
        // never writes into memory we are about to release.
        self.drain();
    }
}

/// A slow-lane job for `op` on a LUN.
fn slow_job(lb: &LunBacking, op: SlowOp, applied: Option<InflightMark>) -> super::slow::Job {
    let backing = lb.backing.clone();
    let gate = lb.gate.clone();
    let bs = lb.block_size;
    Box::new(move || {
        let result = exec::run(op, &backing, &gate, bs);
        if let (Some(mark), Status::Good) = (&applied, result.status) {
            mark.applied();
        }
        result
    })
}

/// Per-LUN counters for a passthrough command: READ and WRITE opcodes
/// count as reads and writes of their transfer, the rest as other.
fn pass_kind(cdb: &[u8], dir: SgDir, bytes: u64) -> CmdKind {
    match (cdb.first(), dir) {
        (Some(0x08 | 0x28 | 0xa8 | 0x88), SgDir::FromDevice) => CmdKind::Read(bytes),
        (Some(0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e), SgDir::ToDevice) => {
            CmdKind::Write(bytes)
        }
        _ => CmdKind::Other,
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Is the ring's avail index more than a ring ahead of where we are (a guest
/// error, or a state no request can be taken from)? Then "more requests
/// available" must not make a worker spin.
pub(crate) fn avail_index_broken(q: &virtio_queue::Queue, mem: &GuestMem) -> bool {
    // A ring that stopped (GET_VRING_BASE) gives nothing either.
    if !q.ready() {
        return true;
    }
    match q.avail_idx(mem, std::sync::atomic::Ordering::Acquire) {
        Ok(avail) => avail.0.wrapping_sub(q.next_avail()) > q.size(),
        Err(_) => true,
    }
}

/// Mark the used ring's header and the entry just added.
#[cold]
#[inline(never)]
fn log_used(d: &DirtyLog, q: &virtio_queue::Queue) {
    let used = q.used_ring();
    d.mark(used, 4);
    let slot = u64::from(q.next_used().wrapping_sub(1) % q.size().max(1));
    d.mark(used + 4 + 8 * slot, 8);
}

/// Mark the whole used ring (the avail_event field is written when
/// notifications are switched on and off).
#[cold]
#[inline(never)]
pub(crate) fn log_used_ring(d: &DirtyLog, q: &virtio_queue::Queue) {
    d.mark(q.used_ring(), 6 + 8 * u64::from(q.size()));
}

/// Put `head` in the used ring with `len` bytes written. With an inflight
/// region, the request's completion is recorded first and the region
/// follows the used ring in the spec's order, so a crash at any point
/// leaves a state the next daemon can finish. Returns true (the used ring
/// changed).
fn publish_used(
    inflight: &mut Option<QueueInflight>,
    state: &mut State,
    head: u16,
    len: u32,
    log: &mut RateLimit,
    dlog: Option<&DirtyLog>,
) -> bool {
    let mut add = || match state.add_used(head, len) {
        Ok(()) => {
            let q = state.get_queue();
            if let Some(d) = dlog {
                log_used(d, q);
            }
            Some(q.next_used())
        }
        Err(e) => {
            warn_limited!(log, error = %e, "add_used failed");
            None
        }
    };
    match inflight {
        Some(i) => {
            i.record_done(head, len);
            i.publish(head, add);
        }
        None => {
            add();
        }
    }
    true
}

/// Write `data` to data-in and the response; returns the used length.
#[allow(clippy::too_many_arguments)]
fn complete_with(
    mem: &GuestMem,
    resp: &Segments,
    data_in: &Segments,
    status: Status,
    sense: Option<&Sense>,
    data: &[u8],
    log: &mut RateLimit,
    dlog: Option<&DirtyLog>,
) -> u32 {
    let written = match data_in.write_from(mem, data) {
        Ok(n) => n as u64,
        Err(e) => {
            warn_limited!(log, error = %e, "cannot write data-in");
            0
        }
    };
    if let Some(d) = dlog {
        d.mark_segments(data_in, written as u64);
    }
    let resid = clamp_u32(data_in.len().saturating_sub(written as u64));
    write_response(mem, resp, S_OK, status, sense, resid, dlog)
        .saturating_add(clamp_u32(written as u64))
}

/// Write a command response header; returns its length (the used length
/// contribution) or 0 if it could not be written.
fn write_response(
    mem: &GuestMem,
    resp: &Segments,
    response: u8,
    status: Status,
    sense: Option<&Sense>,
    resid: u32,
    dlog: Option<&DirtyLog>,
) -> u32 {
    let fixed = sense.map(Sense::to_fixed);
    write_response_raw(
        mem,
        resp,
        response,
        status as u8,
        fixed.as_ref().map_or(&[][..], |f| &f[..]),
        resid,
        dlog,
    )
}

/// [`write_response`] with a raw status byte and sense bytes (cut to the
/// response's 96 bytes).
fn write_response_raw(
    mem: &GuestMem,
    resp: &Segments,
    response: u8,
    status: u8,
    sense: &[u8],
    resid: u32,
    dlog: Option<&DirtyLog>,
) -> u32 {
    if let Some(d) = dlog {
        d.mark_segments(resp, u64::from(RESP_LEN));
    }
    let mut hdr = CmdRespHeader {
        resid: resid.to_le(),
        status,
        response,
        ..CmdRespHeader::default()
    };
    let n = sense.len().min(SENSE_SIZE);
    if let (Some(dst), Some(src)) = (hdr.sense.get_mut(..n), sense.get(..n)) {
        dst.copy_from_slice(src);
        hdr.sense_len = (n as u32).to_le();
    }
    match resp.write_from(mem, hdr.as_slice()) {
        Ok(n) if n as u32 == RESP_LEN => RESP_LEN,
        _ => 0,
    }
}

fn signal(state: &mut State, log: &mut RateLimit, index: usize) {
    match state.needs_notification() {
        Ok(true) => {
            if let Err(e) = state.signal_used_queue() {
                warn_limited!(log, queue = index, error = %e, "cannot signal the guest");
            }
        }
        Ok(false) => {}
        Err(e) => warn_limited!(log, queue = index, error = %e, "needs_notification failed"),
    }
}
