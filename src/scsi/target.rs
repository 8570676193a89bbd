//! The target: a map of logical units and the dispatcher that runs a CDB
//! through the opcode table (SAM-5 5.1 command model).

use std::cell::RefCell;
use std::io::Read;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Cache};

use super::cdb::Cdb;
use super::lun::LogicalUnit;
use super::opcodes::{self, Ctx};
use super::pr::{self, PrState, PrStore};
use super::ua::UnitAttention;
use super::{NexusId, Outcome, Sense};
use crate::units::{BlockCount, BlockSize};

/// Largest LUN we address: 14-bit flat space addressing (SAM-5 4.7).
pub const MAX_LUN: u16 = 16383;
/// Longest unit serial number (VPD 80h; the T10 vendor ID designator of
/// VPD 83h keeps the first 247 bytes).
pub const MAX_SERIAL_LEN: usize = 252;

/// Configuration of one logical unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunConfig {
    /// LUN number (0..=16383, flat/peripheral addressing).
    pub lun: u16,
    pub block_size: BlockSize,
    pub num_blocks: BlockCount,
    pub readonly: bool,
    /// Unit serial number (VPD 80h). At most 252 printable ASCII bytes.
    pub serial: String,
    /// A stable identity of the backing store (e.g. its canonical path):
    /// the NAA designator of VPD 83h is derived from it, and persisted
    /// reservations are keyed by it.
    pub identity: String,
    /// False for files and non-rotational devices (VPD B1h rotation rate 1).
    pub rotational: bool,
    /// Largest transfer in blocks (VPD B0h MAXIMUM TRANSFER LENGTH; READ,
    /// WRITE, VERIFY and WRITE AND VERIFY longer than this are rejected).
    /// 0: no limit.
    pub max_transfer_blocks: u32,
    /// Preferred transfer size in blocks (VPD B0h OPTIMAL TRANSFER LENGTH).
    pub optimal_transfer_blocks: u32,
    /// The backing can deallocate (files: punch hole; block devices: only
    /// with discard support). Enables UNMAP, the UNMAP bit of WRITE SAME,
    /// LBPME and the thin provisioning claims of VPD B2h.
    pub unmap: bool,
    /// Deallocated blocks read back as zeros (LBPRZ).
    pub lbprz: bool,
    /// VPD B0h MAXIMUM UNMAP LBA COUNT (per UNMAP block descriptor).
    pub max_unmap_blocks: u32,
    /// VPD B0h MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    pub max_unmap_descriptors: u32,
    /// VPD B0h MAXIMUM WRITE SAME LENGTH; 0: no limit reported.
    pub max_write_same_blocks: u64,
    /// VPD B0h MAXIMUM COMPARE AND WRITE LENGTH (1..=255; 0 disables
    /// COMPARE AND WRITE).
    pub max_compare_write_blocks: u8,
    /// Every command but REPORT LUNS goes to a host SCSI device as it is
    /// ([`Outcome::Passthrough`]): no emulation, no unit attentions or
    /// reservations of ours; the device answers. The other fields are
    /// only shown.
    pub passthrough: bool,
}

impl LunConfig {
    /// A writable, non-rotational unit with the default limits: no
    /// unmap, MAXIMUM TRANSFER LENGTH 0 (none), MAXIMUM COMPARE AND WRITE
    /// LENGTH 1, unmap limits 4 Mi blocks / 64 descriptors (used when
    /// `unmap` is set), no WRITE SAME limit. Serial and identity are
    /// derived from the LUN number; callers override what they know.
    pub fn new(lun: u16, block_size: BlockSize, num_blocks: BlockCount) -> Self {
        LunConfig {
            lun,
            block_size,
            num_blocks,
            readonly: false,
            serial: format!("LUN{lun}"),
            identity: format!("lun{lun}"),
            rotational: false,
            max_transfer_blocks: 0,
            optimal_transfer_blocks: 0,
            unmap: false,
            lbprz: false,
            max_unmap_blocks: 4 * 1024 * 1024,
            max_unmap_descriptors: 64,
            max_write_same_blocks: 0,
            max_compare_write_blocks: 1,
            passthrough: false,
        }
    }
}

/// Errors building a target (configuration errors, never guest input).
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    #[error("duplicate LUN {0}")]
    DuplicateLun(u16),
    #[error("LUN {0} is out of range (0..=16383)")]
    LunOutOfRange(u16),
    #[error("LUN {lun}: {reason}")]
    InvalidConfig { lun: u16, reason: &'static str },
    #[error("LUN {lun}: cannot load persistent reservations: {source}")]
    PrLoad {
        lun: u16,
        #[source]
        source: std::io::Error,
    },
}

/// The LUN map: (LUN number, unit), sorted by number, unique. A unit may
/// be mapped by several targets (a shared disk: each target's initiator is
/// its own I_T nexus on the same unit).
type LunMap = Vec<(u16, Arc<LogicalUnit>)>;

/// A thread's cached view of a target's LUN map ([`Target::cache`]).
pub struct LunMapCache(Cache<Arc<ArcSwap<LunMap>>, Arc<LunMap>>);

impl LunMapCache {
    /// Catch up with the current map now (dropping a stale one, and the
    /// units only it still held).
    pub fn refresh(&mut self) {
        self.0.load();
    }
}

/// A SCSI target: a map of logical units that can change while commands
/// run (hot-attach and hot-detach). `Send + Sync`: shared by all queues
/// through an `Arc`; per-unit state is behind a mutex in [`LogicalUnit`].
/// Commands read the map through `ArcSwap` (no lock, no shared counter);
/// changes are serialized by `edit` and publish a new map.
pub struct Target {
    luns: Arc<ArcSwap<LunMap>>,
    edit: Mutex<()>,
    /// Where APTPL persistent reservations are saved.
    pr_store: Option<Arc<dyn PrStore>>,
}

impl Target {
    /// Builds a target. Rejects duplicate LUNs, LUNs above 16383, empty
    /// units, and serial numbers that are not at most 252 printable ASCII
    /// bytes. Persistent reservations are not persisted (APTPL=1 is
    /// rejected, PTPL_C=0).
    pub fn new(luns: Vec<LunConfig>) -> Result<Self, ScsiError> {
        Self::build(luns, None)
    }

    /// As [`Target::new`], with APTPL persistent reservations saved in and
    /// restored from `store` (keyed by `LunConfig::identity`).
    pub fn with_pr_store(luns: Vec<LunConfig>, store: Arc<dyn PrStore>) -> Result<Self, ScsiError> {
        Self::build(luns, Some(store))
    }

    /// A target with no LUNs yet (they come with [`Target::attach`]).
    pub fn empty(pr_store: Option<Arc<dyn PrStore>>) -> Self {
        Target {
            luns: Arc::new(ArcSwap::from_pointee(Vec::new())),
            edit: Mutex::new(()),
            pr_store,
        }
    }

    fn build(luns: Vec<LunConfig>, pr_store: Option<Arc<dyn PrStore>>) -> Result<Self, ScsiError> {
        let target = Self::empty(pr_store);
        let mut luns = luns;
        luns.sort_by_key(|l| l.lun);
        for w in luns.windows(2) {
            if let [a, b] = w {
                if a.lun == b.lun {
                    return Err(ScsiError::DuplicateLun(a.lun));
                }
            }
        }
        for l in &luns {
            validate(l)?;
        }
        for cfg in luns {
            let lun = cfg.lun;
            let unit = target.make_unit(cfg)?;
            target.attach(lun, unit)?;
        }
        Ok(target)
    }

    /// A logical unit for `cfg`, with its persistent reservations restored
    /// from this target's store; not mapped anywhere yet.
    pub fn make_unit(&self, cfg: LunConfig) -> Result<Arc<LogicalUnit>, ScsiError> {
        validate(&cfg)?;
        let pr = match &self.pr_store {
            Some(store) => {
                let saved = store
                    .load(&cfg.identity)
                    .map_err(|source| ScsiError::PrLoad {
                        lun: cfg.lun,
                        source,
                    })?;
                saved
                    .as_deref()
                    .and_then(PrState::decode)
                    .unwrap_or_default()
            }
            None => PrState::default(),
        };
        Ok(Arc::new(LogicalUnit::with_pr(cfg, pr)))
    }

    /// Map `unit` at `lun` (hot-attach): commands see it from now on. Its
    /// first command from each nexus reports POWER ON, RESET, OR BUS DEVICE
    /// RESET OCCURRED, as for a unit that just appeared.
    pub fn attach(&self, lun: u16, unit: Arc<LogicalUnit>) -> Result<(), ScsiError> {
        if lun > MAX_LUN {
            return Err(ScsiError::LunOutOfRange(lun));
        }
        let _edit = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.luns.load();
        let at = match current.binary_search_by_key(&lun, |(n, _)| *n) {
            Ok(_) => return Err(ScsiError::DuplicateLun(lun)),
            Err(at) => at,
        };
        let mut next: LunMap = current.as_ref().clone();
        next.insert(at, (lun, unit));
        self.luns.store(Arc::new(next));
        Ok(())
    }

    /// Unmap `lun` (hot-detach): from now on its commands get LOGICAL UNIT
    /// NOT SUPPORTED. Commands already dispatched finish; the caller drains
    /// them. Returns the unit, if it was mapped.
    pub fn detach(&self, lun: u16) -> Option<Arc<LogicalUnit>> {
        let _edit = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.luns.load();
        let at = current.binary_search_by_key(&lun, |(n, _)| *n).ok()?;
        let mut next: LunMap = current.as_ref().clone();
        let (_, unit) = next.remove(at);
        self.luns.store(Arc::new(next));
        Some(unit)
    }

    /// The unit mapped at `lun`.
    pub fn unit(&self, lun: u16) -> Option<Arc<LogicalUnit>> {
        self.logical_unit(&self.luns.load(), lun).cloned()
    }

    /// A per-thread view of the LUN map for [`Target::execute_cached`]:
    /// checking that it is current costs one relaxed load.
    pub fn cache(&self) -> LunMapCache {
        LunMapCache(Cache::new(self.luns.clone()))
    }

    /// The configured LUN numbers, ascending.
    pub fn lun_numbers(&self) -> Vec<u16> {
        self.luns.load().iter().map(|(n, _)| *n).collect()
    }

    pub(crate) fn pr_store(&self) -> Option<&Arc<dyn PrStore>> {
        self.pr_store.as_ref()
    }

    fn logical_unit<'a>(&self, map: &'a LunMap, lun: u16) -> Option<&'a Arc<LogicalUnit>> {
        map.binary_search_by_key(&lun, |(n, _)| *n)
            .ok()
            .and_then(|i| map.get(i))
            .map(|(_, u)| u)
    }

    /// LOGICAL UNIT RESET (SAM-5 7.6), called by the transport after it
    /// drained the unit's I/O: releases the RESERVE(6)/(10) reservation
    /// (persistent reservations survive), returns the mode parameters to
    /// their defaults (WCE=1) and establishes BUS DEVICE RESET FUNCTION
    /// OCCURRED (29h/03h) for every nexus. Unknown LUN: nothing.
    pub fn lun_reset(&self, lun: u16) {
        if let Some(lu) = self.unit(lun) {
            let mut st = lu.state();
            st.legacy = None;
            lu.set_write_cache(true);
            st.ua.establish_all(UnitAttention::LunReset, None);
        }
    }

    /// I_T NEXUS RESET (SAM-5 7.7), called by the transport after draining
    /// the nexus's I/O: on every unit, releases a RESERVE(6)/(10)
    /// reservation the nexus holds and establishes I_T NEXUS LOSS OCCURRED
    /// (29h/07h) for that nexus. Persistent reservations survive.
    pub fn nexus_reset(&self, nexus: NexusId) {
        for (_, lu) in self.luns.load().iter() {
            let mut st = lu.state();
            if st.legacy == Some(nexus) {
                st.legacy = None;
            }
            st.ua.establish(nexus, UnitAttention::NexusLoss);
        }
    }

    /// The backing of `lun` changed size: from now on the unit has
    /// `new_num_blocks` blocks (0 is ignored: a unit has at least one), and
    /// every nexus gets CAPACITY DATA HAS CHANGED (2Ah/09h, SBC-4 4.6).
    pub fn capacity_changed(&self, lun: u16, new_num_blocks: BlockCount) {
        if let Some(lu) = self.unit(lun) {
            if new_num_blocks.0 == 0 || new_num_blocks.to_bytes(lu.cfg.block_size).is_none() {
                return;
            }
            let mut st = lu.state();
            lu.set_capacity(new_num_blocks);
            st.ua.establish_all(UnitAttention::CapacityChanged, None);
        }
    }

    /// Current capacity of `lun` in logical blocks, if it exists.
    pub fn capacity(&self, lun: u16) -> Option<BlockCount> {
        self.unit(lun).map(|u| u.capacity())
    }

    /// The LUN inventory changed: every nexus of every unit gets REPORTED
    /// LUNS DATA HAS CHANGED (3Fh/0Eh, SPC-5 6.29).
    pub fn luns_changed(&self) {
        for (_, lu) in self.luns.load().iter() {
            lu.state()
                .ua
                .establish_all(UnitAttention::ReportedLunsChanged, None);
        }
    }

    /// The LUN inventory `nexus` sees changed (a LUN attached to or
    /// detached from this target): REPORTED LUNS DATA HAS CHANGED for that
    /// nexus on every unit still mapped (SPC-5 6.29). Other targets that
    /// share a unit see no change in their own inventory.
    pub fn luns_changed_for(&self, nexus: NexusId) {
        for (_, lu) in self.luns.load().iter() {
            lu.state()
                .ua
                .establish(nexus, UnitAttention::ReportedLunsChanged);
        }
    }

    /// Clears a pending `ua` of `nexus` on every unit.
    pub(crate) fn clear_ua(&self, nexus: NexusId, ua: UnitAttention) {
        for (_, lu) in self.luns.load().iter() {
            lu.state().ua.clear(nexus, ua);
        }
    }

    /// Execute one command from I_T nexus `nexus` addressed to `lun`.
    /// `cdb` is the CDB as sent (the transport passes its whole CDB field;
    /// trailing bytes beyond the opcode's length are ignored). `data_out`
    /// yields the initiator's data-out bytes: the target reads parameter
    /// lists and the small buffers of WRITE SAME, VERIFY, WRITE AND VERIFY
    /// and COMPARE AND WRITE from it (WRITE data moves through
    /// [`Outcome::Io`]). Never panics.
    pub fn execute(
        &self,
        nexus: NexusId,
        lun: u16,
        cdb: &[u8],
        data_out: &mut dyn Read,
    ) -> Outcome {
        let map = self.luns.load();
        match self.dispatch(&map, nexus, lun, cdb, data_out) {
            Ok(outcome) => outcome,
            Err(sense) => Outcome::check_condition(sense),
        }
    }

    /// [`Target::execute`] through `cache` (one per thread, from
    /// [`Target::cache`]): the same, without touching the shared map when it
    /// has not changed. A change of the map (attach, detach) is seen by the
    /// next command, or at once after [`LunMapCache::refresh`].
    pub fn execute_cached(
        &self,
        cache: &mut LunMapCache,
        nexus: NexusId,
        lun: u16,
        cdb: &[u8],
        data_out: &mut dyn Read,
    ) -> Outcome {
        let map = cache.0.load();
        match self.dispatch(map, nexus, lun, cdb, data_out) {
            Ok(outcome) => outcome,
            Err(sense) => Outcome::check_condition(sense),
        }
    }

    /// SAM-5 5.1: look the command up, answer for a missing LUN (SPC-5,
    /// incorrect logical unit: only INQUIRY, REPORT LUNS and REQUEST SENSE
    /// are served there; anything else is LOGICAL UNIT NOT SUPPORTED),
    /// report a pending unit attention (SAM-5 5.14), check the CDB, check
    /// reservations (SPC-4 5.9.1), run the handler.
    fn dispatch(
        &self,
        map: &LunMap,
        nexus: NexusId,
        lun: u16,
        cdb: &[u8],
        data_out: &mut dyn Read,
    ) -> Result<Outcome, Sense> {
        let found = opcodes::lookup(cdb);
        let lu = self.logical_unit(map, lun).map(|u| &**u);
        let exempt = matches!(found, Ok(cmd) if cmd.any_lun);
        let Some(unit) = lu else {
            if !exempt {
                return Err(Sense::lun_not_supported());
            }
            return self.run(found?, nexus, lun, None, cdb, data_out);
        };
        if unit.cfg.passthrough && cdb.first() != Some(&opcodes::REPORT_LUNS) {
            return passthrough_cdb_len(cdb)
                .map(|cdb_len| Outcome::Passthrough { cdb_len })
                .ok_or(Sense::invalid_opcode());
        }
        if !exempt && !unit.is_quiet(nexus) {
            let st = &mut *unit.state();
            if let Some(ua) = st.ua.take(nexus) {
                return Err(ua.sense());
            }
            unit.note_quiet(st, nexus);
        }
        self.run(found?, nexus, lun, lu, cdb, data_out)
    }

    fn run(
        &self,
        cmd: &'static opcodes::Command,
        nexus: NexusId,
        lun: u16,
        lu: Option<&LogicalUnit>,
        cdb: &[u8],
        data_out: &mut dyn Read,
    ) -> Result<Outcome, Sense> {
        if lu.is_some() && !(cmd.available)(lu) {
            return Err(Sense::invalid_opcode());
        }
        let cdb = Cdb::new(cdb.get(..cmd.cdb_len()).ok_or(Sense::invalid_opcode())?);
        opcodes::check_cdb(cmd, &cdb)?;
        if let Some(unit) = lu.filter(|u| !u.is_quiet(nexus)) {
            if pr::conflicts(&unit.state(), nexus, cmd.pr_class) {
                return Ok(Outcome::reservation_conflict());
            }
        }
        (cmd.handler)(&Ctx {
            target: self,
            nexus,
            lun,
            lu,
            cdb,
            data_out: RefCell::new(data_out),
        })
    }
}

/// Length of a CDB for a passthrough unit, from its operation code's group
/// (SPC-5 4.2.5.1): 6, 10, 12 or 16 bytes, or a variable-length CDB (7Fh,
/// 8 + ADDITIONAL CDB LENGTH bytes); `None` for the reserved and
/// vendor-specific groups and for a CDB longer than `cdb` (the transport's
/// CDB field).
pub fn passthrough_cdb_len(cdb: &[u8]) -> Option<usize> {
    let op = *cdb.first()?;
    let len = match op >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        3 if op == 0x7f => 8 + usize::from(*cdb.get(7)?),
        _ => return None,
    };
    (len <= cdb.len()).then_some(len)
}

fn validate(l: &LunConfig) -> Result<(), ScsiError> {
    let bad = |reason| ScsiError::InvalidConfig { lun: l.lun, reason };
    if l.lun > MAX_LUN {
        return Err(ScsiError::LunOutOfRange(l.lun));
    }
    if l.num_blocks.0 == 0 {
        return Err(bad("a logical unit needs at least one block"));
    }
    if l.num_blocks.to_bytes(l.block_size).is_none() {
        return Err(bad("capacity overflows 64 bits of bytes"));
    }
    if l.serial.len() > MAX_SERIAL_LEN {
        return Err(bad("serial number longer than 252 bytes"));
    }
    if !l.serial.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(bad("serial number is not printable ASCII"));
    }
    if l.unmap && (l.max_unmap_blocks == 0 || l.max_unmap_descriptors == 0) {
        return Err(bad("unmap needs nonzero unmap limits"));
    }
    Ok(())
}
