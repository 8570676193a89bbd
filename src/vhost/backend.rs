//! `VhostUserBackend` for one virtio-scsi controller.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use vhost_user_backend::VringT;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestMemoryAtomic;

use super::control::ControlQueue;
use super::device::Device;
use super::dirty::{DirtyLog, SharedLog};
use super::event_loop::{TOKEN_COMPLETION, TOKEN_EVENT_KICK, TOKEN_KICK, TOKEN_SLOW};
use super::slow::SlowLane;
use super::stats::QueueStats;
use super::worker::{RequestWorker, Vring};
use crate::block::{BlockError, Engine};
use crate::scsi::NexusId;
use crate::virtio_scsi::{GuestMem, F_CHANGE, F_HOTPLUG};

/// VHOST_USER_F_PROTOCOL_FEATURES.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// VHOST_F_LOG_ALL: log every write to guest memory.
pub(crate) const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// `spin_loop` hints between two looks at a polled queue (a look costs
/// ~100 ns; this keeps the worker's mutex free most of the time).
const POLL_SPINS: u32 = 16;

/// Control queue + event queue.
pub(crate) const FIXED_QUEUES: usize = 2;

/// A virtio-scsi controller as a vhost-user backend. Cheap to clone (the
/// library clones it into every worker thread).
#[derive(Clone)]
pub struct ScsiBackend {
    inner: Arc<Inner>,
}

struct Inner {
    device: Arc<Device>,
    queue_size: usize,
    mem: GuestMemoryAtomic<GuestMem>,
    event_idx: AtomicBool,
    control: Mutex<ControlQueue>,
    workers: Vec<Mutex<RequestWorker>>,
    /// Control, event, request queues.
    vrings: Vec<Vring>,
    /// The dirty log while logging is on (live migration).
    dirty: SharedLog,
    /// Bound of the request queues' adaptive polling window (0: off).
    poll_max_us: u32,
    /// Per request queue: requests in flight (set by its worker).
    queue_stats: Vec<Arc<QueueStats>>,
}

impl ScsiBackend {
    /// A backend with `request_queues` request queues, each with its own
    /// io_uring, over `mem` (the memory the daemon's handler updates).
    pub fn new(
        device: Arc<Device>,
        nexus: NexusId,
        queue_stats: &[Arc<QueueStats>],
        queue_size: usize,
        mem: GuestMemoryAtomic<GuestMem>,
        poll_max_us: u32,
    ) -> Result<Self, BlockError> {
        let max = u16::try_from(queue_size).unwrap_or(u16::MAX);
        let mut vrings = Vec::with_capacity(FIXED_QUEUES + queue_stats.len());
        for _ in 0..FIXED_QUEUES + queue_stats.len() {
            vrings.push(
                Vring::new(mem.clone(), max)
                    .map_err(|e| BlockError::Ring(std::io::Error::other(e.to_string())))?,
            );
        }
        let dirty = SharedLog::default();
        let mut workers = Vec::with_capacity(queue_stats.len());
        for (i, stats) in queue_stats.iter().enumerate() {
            let engine = Engine::new_shared(u32::try_from(queue_size).unwrap_or(1024))?;
            let slow = SlowLane::new(format!("slow-lane-{i}")).map_err(BlockError::Ring)?;
            let mut worker = RequestWorker::new(
                i,
                nexus,
                device.clone(),
                engine,
                slow,
                stats.clone(),
                vrings.get(FIXED_QUEUES + i).cloned(),
                &dirty,
            );
            worker.set_polling(poll_max_us > 0);
            workers.push(Mutex::new(worker));
        }
        Ok(ScsiBackend {
            inner: Arc::new(Inner {
                control: Mutex::new(ControlQueue::new(device.clone(), nexus)),
                device,
                queue_size,
                mem,
                event_idx: AtomicBool::new(false),
                workers,
                vrings,
                dirty,
                poll_max_us,
                queue_stats: queue_stats.to_vec(),
            }),
        })
    }

    /// Bound of the request queues' polling window in µs (0: no polling).
    pub(crate) fn poll_max_us(&self) -> u32 {
        self.inner.poll_max_us
    }

    /// The worker and request vring served by thread `thread` (1.., see
    /// src/vhost/event_loop.rs); None for thread 0 (control and event).
    fn request_thread(&self, thread: usize) -> Option<(&Mutex<RequestWorker>, &Vring)> {
        let i = thread.checked_sub(1)?;
        Some((
            self.inner.workers.get(i)?,
            self.inner.vrings.get(FIXED_QUEUES + i)?,
        ))
    }

    /// Poll request thread `thread`'s queue for up to `window` (adaptive
    /// polling, src/vhost/poll.rs). The worker's mutex is taken only for
    /// each look, never across the spin; polling ends early when another
    /// thread holds it (task management, a ring stop, a drain), when
    /// `stop` is set, or when the ring stops. Returns true if work was
    /// found (and done).
    pub(crate) fn poll(&self, thread: usize, window: Duration, stop: &AtomicBool) -> bool {
        let Some((worker, vring)) = self.request_thread(thread) else {
            return false;
        };
        let event_idx = self.inner.event_idx.load(Ordering::Relaxed);
        let deadline = Instant::now() + window;
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let mut w = match worker.try_lock() {
                Ok(w) => w,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return false,
            };
            if w.poll(vring, event_idx, &self.inner.mem) {
                return true;
            }
            drop(w);
            for _ in 0..POLL_SPINS {
                std::hint::spin_loop();
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Has request thread `thread` requests in flight (started, not
    /// completed)? Then what it waits for is the backing store, else the
    /// guest: the two waits get separate polling windows.
    pub(crate) fn has_in_flight(&self, thread: usize) -> bool {
        thread
            .checked_sub(1)
            .and_then(|i| self.inner.queue_stats.get(i))
            .is_some_and(|s| s.in_flight() > 0)
    }

    /// Request thread `thread` is about to sleep after polling: re-arm
    /// guest notifications and the completion eventfd. True if work
    /// turned up meanwhile (do not sleep).
    pub(crate) fn prepare_sleep(&self, thread: usize) -> bool {
        let Some((worker, vring)) = self.request_thread(thread) else {
            return false;
        };
        let event_idx = self.inner.event_idx.load(Ordering::Relaxed);
        lock(worker).prepare_sleep(vring, event_idx, &self.inner.mem)
    }

    /// Number of request queues.
    pub fn request_queues(&self) -> usize {
        self.inner.workers.len()
    }

    /// The io_uring eventfd of request queue `i`.
    pub fn completion_fd(&self, i: usize) -> Option<std::os::fd::RawFd> {
        self.inner.workers.get(i).map(|w| lock(w).engine_event_fd())
    }

    /// The slow lane's eventfd of request queue `i`.
    pub fn slow_fd(&self, i: usize) -> Option<std::os::fd::RawFd> {
        self.inner.workers.get(i).map(|w| lock(w).slow_event_fd())
    }

    /// Wait until no request for `lun` is in flight on any queue (after a
    /// hot-detach: the target accepts no new ones).
    pub fn drain_lun(&self, lun: u16) {
        for w in &self.inner.workers {
            let mut w = lock(w);
            if w.has_lun_requests(lun) {
                w.drain();
            }
            w.refresh_luns();
        }
    }

    /// Wait for and complete every in-flight request on every queue.
    pub fn drain_all(&self) {
        for w in &self.inner.workers {
            lock(w).drain();
        }
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.inner.device
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in another thread must not take the daemon down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ScsiBackend {
    /// Virtqueues of this controller: control, event, request queues.
    pub fn num_queues(&self) -> usize {
        FIXED_QUEUES + self.inner.workers.len()
    }

    pub(crate) fn max_queue_size(&self) -> usize {
        self.inner.queue_size
    }

    /// The vring of virtqueue `i`.
    pub(crate) fn vring(&self, i: usize) -> Option<&Vring> {
        self.inner.vrings.get(i)
    }

    pub(crate) fn vrings(&self) -> &[Vring] {
        &self.inner.vrings
    }

    /// The worker of virtqueue `queue`, if it is a request queue.
    pub(crate) fn worker_of(&self, queue: usize) -> Option<&Mutex<RequestWorker>> {
        queue
            .checked_sub(FIXED_QUEUES)
            .and_then(|i| self.inner.workers.get(i))
    }

    /// Virtio feature bits offered to the frontend.
    pub(crate) fn features(&self) -> u64 {
        // VHOST_F_LOG_ALL: dirty-page logging for live migration.
        // VIRTIO_SCSI_F_HOTPLUG: LUNs attached and detached at run time
        // are announced on the event queue (TRANSPORT_RESET RESCAN and
        // REMOVED). VIRTIO_SCSI_F_CHANGE: a resize is announced with
        // PARAM_CHANGE 2Ah/09h.
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VHOST_USER_F_PROTOCOL_FEATURES
            | VHOST_F_LOG_ALL
            | F_HOTPLUG
            | F_CHANGE
    }

    /// Turn dirty logging on (Some) or off (None).
    pub(crate) fn set_dirty_log(&self, log: Option<Arc<DirtyLog>>) {
        self.inner.dirty.store(log);
    }

    /// The shared handle of the dirty log (for the event queue).
    pub(crate) fn shared_log(&self) -> SharedLog {
        self.inner.dirty.clone()
    }

    /// The dirty log in force.
    pub(crate) fn dirty_log(&self) -> Option<Arc<DirtyLog>> {
        self.inner.dirty.load_full()
    }

    pub(crate) fn set_event_idx(&self, enabled: bool) {
        self.inner.event_idx.store(enabled, Ordering::Relaxed);
    }

    /// Stop virtqueue `queue` (GET_VRING_BASE, shutdown): finish every
    /// request accepted on it, publishing their used entries.
    pub(crate) fn stop_queue(&self, queue: usize) {
        if let Some(w) = self.worker_of(queue) {
            lock(w).drain();
        }
    }

    /// An event on worker thread `thread` (0: control + event queues,
    /// `1 + i`: request queue `i`) with epoll token `token`.
    pub(crate) fn handle_event(&self, thread: usize, token: u64) {
        let event_idx = self.inner.event_idx.load(Ordering::Relaxed);
        let mem = &self.inner.mem;
        if thread == 0 {
            let queue = match token {
                TOKEN_KICK => 0,
                TOKEN_EVENT_KICK => 1,
                _ => return,
            };
            let Some(vring) = self.inner.vrings.get(queue) else {
                return;
            };
            if !matches!(vring.read_kick(), Ok(true)) {
                return;
            }
            let dlog = self.inner.dirty.load_full();
            if queue == 0 {
                lock(&self.inner.control).process(
                    vring,
                    event_idx,
                    mem,
                    &self.inner.workers,
                    dlog.as_deref(),
                );
            } else {
                // The guest added event buffers: deliver what waits.
                self.inner.device.events.kicked(vring, event_idx);
            }
            return;
        }
        let Some(worker) = self.inner.workers.get(thread - 1) else {
            return;
        };
        match token {
            TOKEN_COMPLETION => lock(worker).process_completions(),
            TOKEN_SLOW => lock(worker).process_slow(),
            TOKEN_KICK => {
                let Some(vring) = self.inner.vrings.get(FIXED_QUEUES + thread - 1) else {
                    return;
                };
                if matches!(vring.read_kick(), Ok(true)) {
                    lock(worker).process_queue(vring, event_idx, mem);
                }
            }
            _ => {}
        }
    }
}
