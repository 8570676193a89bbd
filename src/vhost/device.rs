//! What one vhost-user-scsi controller serves: the SCSI target, the backing
//! store of each LUN, and the event queue. LUNs come and go while the
//! guest runs (hot-attach, hot-detach): the table is swapped atomically and
//! read without a lock.

use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Cache};

use super::events::EventQueue;
use super::exec::WriteGate;
use super::stats::LunStats;
use crate::block::Backing;
use crate::scsi::{LogicalUnit, ScsiError, Target};
use crate::units::BlockSize;

/// The backing store of one LUN.
#[derive(Debug)]
pub struct LunBacking {
    pub lun: u16,
    pub backing: Arc<Backing>,
    pub block_size: BlockSize,
    /// Orders COMPARE AND WRITE against other writes to this LUN (shared
    /// by every controller that serves the same backing).
    pub gate: Arc<WriteGate>,
    /// This controller's counters for this LUN.
    pub stats: LunStats,
}

impl LunBacking {
    /// A LUN of a controller with `queues` request queues.
    pub fn new(lun: u16, backing: Arc<Backing>, block_size: BlockSize, queues: usize) -> Self {
        Self::shared(lun, backing, block_size, Arc::default(), queues)
    }

    /// As [`LunBacking::new`], with the write gate of a backing that other
    /// controllers serve too.
    pub fn shared(
        lun: u16,
        backing: Arc<Backing>,
        block_size: BlockSize,
        gate: Arc<WriteGate>,
        queues: usize,
    ) -> Self {
        LunBacking {
            lun,
            backing,
            block_size,
            gate,
            stats: LunStats::new(queues),
        }
    }
}

type LunTable = Vec<Arc<LunBacking>>;

/// A thread's cached view of a device's LUN table ([`Device::lun_cache`]).
pub(crate) struct LunCache(Cache<Arc<ArcSwap<LunTable>>, Arc<LunTable>>);

impl LunCache {
    /// `lun`'s backing, if it exists.
    pub(crate) fn get(&mut self, lun: u16) -> Option<Arc<LunBacking>> {
        self.0.load().iter().find(|l| l.lun == lun).cloned()
    }

    /// Catch up with the current table now (releasing detached backings).
    pub(crate) fn refresh(&mut self) {
        self.0.load();
    }
}

/// A SCSI target plus the backing of each of its LUNs.
pub struct Device {
    pub target: Target,
    luns: Arc<ArcSwap<LunTable>>,
    edit: Mutex<()>,
    /// Hotplug and parameter-change events for the guest.
    pub events: EventQueue,
}

impl Device {
    /// A device with the LUNs `target` already maps, backed by `luns`.
    pub fn new(target: Target, luns: Vec<LunBacking>) -> Self {
        Device {
            target,
            luns: Arc::new(ArcSwap::from_pointee(
                luns.into_iter().map(Arc::new).collect(),
            )),
            edit: Mutex::new(()),
            events: EventQueue::default(),
        }
    }

    /// The backing of `lun`, if it exists.
    pub fn backing(&self, lun: u16) -> Option<Arc<Backing>> {
        self.lun(lun).map(|l| l.backing.clone())
    }

    /// `lun`'s backing, block size, write gate and counters, if it exists.
    pub fn lun(&self, lun: u16) -> Option<Arc<LunBacking>> {
        self.luns.load().iter().find(|l| l.lun == lun).cloned()
    }

    /// A per-thread view of the LUN table (one relaxed load per lookup
    /// while it does not change).
    pub(crate) fn lun_cache(&self) -> LunCache {
        LunCache(Cache::new(self.luns.clone()))
    }

    /// Every LUN, in the order they were attached.
    pub fn luns(&self) -> Arc<LunTable> {
        self.luns.load_full()
    }

    /// Hot-attach: `backing` becomes LUN `backing.lun`, served by `unit`.
    /// Commands reach it from now on.
    pub fn attach(
        &self,
        unit: Arc<LogicalUnit>,
        backing: LunBacking,
    ) -> Result<Arc<LunBacking>, ScsiError> {
        let _edit = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        let lun = backing.lun;
        let current = self.luns.load_full();
        if current.iter().any(|l| l.lun == lun) {
            return Err(ScsiError::DuplicateLun(lun));
        }
        let backing = Arc::new(backing);
        let mut next: LunTable = current.as_ref().clone();
        next.push(backing.clone());
        // The backing first, so that a command the target accepts always
        // finds it.
        self.luns.store(Arc::new(next));
        if let Err(e) = self.target.attach(lun, unit) {
            self.luns.store(current);
            return Err(e);
        }
        Ok(backing)
    }

    /// Hot-detach: new commands to `lun` get LOGICAL UNIT NOT SUPPORTED
    /// from now on. Requests already accepted keep their own reference to
    /// the backing; the caller drains them. Returns the LUN's backing.
    pub fn detach(&self, lun: u16) -> Option<Arc<LunBacking>> {
        let _edit = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        self.target.detach(lun);
        let current = self.luns.load_full();
        let found = current.iter().find(|l| l.lun == lun).cloned()?;
        let next: LunTable = current.iter().filter(|l| l.lun != lun).cloned().collect();
        self.luns.store(Arc::new(next));
        Some(found)
    }

    /// fdatasync every writable backing (shutdown path).
    pub fn sync_all(&self) {
        for l in self.luns.load().iter() {
            sync_backing(l);
        }
    }
}

/// fdatasync one LUN's backing if it is writable; errors are logged.
pub fn sync_backing(l: &LunBacking) {
    // A passthrough device is flushed by the guest's own SYNCHRONIZE CACHE.
    if l.backing.readonly() || l.backing.scsi_device().is_some() {
        return;
    }
    if let Err(e) = nix::unistd::fdatasync(std::os::fd::AsRawFd::as_raw_fd(&*l.backing)) {
        tracing::error!(
            lun = l.lun,
            path = %l.backing.path().display(),
            error = %e,
            "flush failed"
        );
    }
}
