//! `VhostUserBackend` for one virtio-scsi controller.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::control::ControlQueue;
use super::device::Device;
use super::slow::SlowLane;
use super::stats::QueueStats;
use super::worker::{RequestWorker, Vring};
use crate::block::{BlockError, Engine};
use crate::scsi::NexusId;
use crate::virtio_scsi::{GuestMem, F_CHANGE, F_HOTPLUG};

/// VHOST_USER_F_PROTOCOL_FEATURES.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

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
    ) -> Result<Self, BlockError> {
        let mut workers = Vec::with_capacity(queue_stats.len());
        for (i, stats) in queue_stats.iter().enumerate() {
            let engine = Engine::new_shared(u32::try_from(queue_size).unwrap_or(1024))?;
            let slow = SlowLane::new(format!("slow-lane-{i}")).map_err(BlockError::Ring)?;
            workers.push(Mutex::new(RequestWorker::new(
                i,
                nexus,
                device.clone(),
                engine,
                slow,
                stats.clone(),
            )));
        }
        Ok(ScsiBackend {
            inner: Arc::new(Inner {
                control: Mutex::new(ControlQueue::new(device.clone(), nexus)),
                device,
                queue_size,
                mem,
                event_idx: AtomicBool::new(false),
                workers,
            }),
        })
    }

    /// Number of request queues.
    pub fn request_queues(&self) -> usize {
        self.inner.workers.len()
    }

    /// The token under which worker thread `1 + i` registers its io_uring
    /// eventfd (tokens up to num_queues are the library's).
    pub fn completion_token(&self) -> u64 {
        (self.num_queues() + 1) as u64
    }

    /// The token under which worker thread `1 + i` registers its slow
    /// lane's eventfd.
    pub fn slow_token(&self) -> u64 {
        (self.num_queues() + 2) as u64
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in another thread must not take the daemon down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VhostUserBackend for ScsiBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        FIXED_QUEUES + self.inner.workers.len()
    }

    fn max_queue_size(&self) -> usize {
        self.inner.queue_size
    }

    fn features(&self) -> u64 {
        // VIRTIO_SCSI_F_HOTPLUG: LUNs attached and detached at run time
        // are announced on the event queue (TRANSPORT_RESET RESCAN and
        // REMOVED). VIRTIO_SCSI_F_CHANGE: a resize is announced with
        // PARAM_CHANGE 2Ah/09h.
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VHOST_USER_F_PROTOCOL_FEATURES
            | F_HOTPLUG
            | F_CHANGE
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.inner.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMem>) -> io::Result<()> {
        // The handler updates the GuestMemoryAtomic we share with it; each
        // request takes its own reference to the current mapping.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        let mut v = vec![0b11u64];
        v.extend((0..self.inner.workers.len()).map(|i| 1u64 << (FIXED_QUEUES + i)));
        v
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::error!(error = %e, "cannot create a worker exit eventfd");
                None
            }
        }
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: finish every request accepted on this queue.
        if let Some(w) = (queue_index as usize)
            .checked_sub(FIXED_QUEUES)
            .and_then(|i| self.inner.workers.get(i))
        {
            lock(w).drain();
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        let event_idx = self.inner.event_idx.load(Ordering::Relaxed);
        let mem = &self.inner.mem;
        if thread_id == 0 {
            // Thread 0: vrings[0] is the control queue, vrings[1] the event
            // queue (the guest added event buffers: deliver what waits).
            match device_event {
                0 => {
                    if let Some(vring) = vrings.first() {
                        lock(&self.inner.control).process(
                            vring,
                            event_idx,
                            mem,
                            &self.inner.workers,
                        );
                    }
                }
                1 => {
                    if let Some(vring) = vrings.get(1) {
                        self.inner.device.events.kicked(vring, event_idx);
                    }
                }
                _ => {}
            }
            return Ok(());
        }
        let Some(worker) = self.inner.workers.get(thread_id - 1) else {
            return Ok(());
        };
        let mut worker = lock(worker);
        if u64::from(device_event) == self.completion_token() {
            worker.process_completions();
        } else if u64::from(device_event) == self.slow_token() {
            worker.process_slow();
        } else if let Some(vring) = vrings.first() {
            worker.process_queue(vring, event_idx, mem);
        }
        Ok(())
    }
}
