//! virtio-scsi on top of the vhost-user connection: request, control and
//! event queues, blocking and asynchronous commands, and raw chains for
//! malformed-request tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::conn::Connection;
use super::dirty::{DirtyBitmap, DirtyPages};
use super::features::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use super::inflight::InflightRegion;
use super::memory::{BufferAllocator, GuestMem};
use super::vring::{Desc, RingLayout, Seg, SplitQueue, Used};
use super::{Error, FrontendConfig, Result};
use crate::virtio_scsi::defs::{
    encode_lun, CmdReqHeader, CmdRespHeader, CtrlAnReq, CtrlTmfReq, Event, CDB_SIZE, SENSE_SIZE,
    T_AN_QUERY, T_AN_SUBSCRIBE, T_TMF,
};

/// vhost-user queue index of the control queue.
pub const CONTROL_QUEUE: usize = 0;
/// vhost-user queue index of the event queue.
pub const EVENT_QUEUE: usize = 1;
/// vhost-user queue index of request queue 0.
pub const FIRST_REQUEST_QUEUE: usize = 2;

const REQ_HDR: usize = std::mem::size_of::<CmdReqHeader>();
const RESP_HDR: usize = std::mem::size_of::<CmdRespHeader>();
const DATA_ALIGN: u64 = 4096;
/// Longest sleep between checks when several threads share a queue.
const POLL_SLICE: Duration = Duration::from_millis(10);

/// Data direction of a command.
#[derive(Clone, Copy, Debug)]
pub enum DataDir<'a> {
    None,
    /// Data-in of this many bytes.
    FromDevice(u32),
    /// Data-out with these bytes.
    ToDevice(&'a [u8]),
}

/// How a request is cut into descriptors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Split {
    /// Like Linux: header, data-out, response, data-in each in its own
    /// descriptor (empty data segments omitted).
    #[default]
    Linux,
    /// Header and data-out in one descriptor, response and data-in in one.
    Merged,
    /// Like `Linux`, but every segment cut into pieces of at most this many
    /// bytes (1 = every byte its own descriptor).
    Pieces(u32),
}

/// One virtio-scsi command request.
#[derive(Clone, Debug)]
pub struct ScsiRequest {
    /// The 8-byte virtio-scsi LUN field (see `encode_lun`).
    pub lun: [u8; 8],
    /// Up to 32 CDB bytes (zero-padded).
    pub cdb: Vec<u8>,
    pub task_attr: u8,
    pub prio: u8,
    pub crn: u8,
    /// The wire tag; `None` uses the frontend's tag (returned by `submit`).
    pub tag: Option<u64>,
    pub data_out: Vec<u8>,
    pub data_in_len: u32,
    pub split: Split,
    /// Put the chain in an indirect table; `None` follows the config
    /// (and what was negotiated). `Some(true)` forces it, negotiated or not.
    pub indirect: Option<bool>,
}

impl ScsiRequest {
    /// A request to target 0, `lun`.
    pub fn new(lun: u16, cdb: &[u8], dir: DataDir<'_>) -> Self {
        let (data_out, data_in_len) = match dir {
            DataDir::None => (Vec::new(), 0),
            DataDir::FromDevice(n) => (Vec::new(), n),
            DataDir::ToDevice(d) => (d.to_vec(), 0),
        };
        ScsiRequest {
            lun: encode_lun(0, lun),
            cdb: cdb.to_vec(),
            task_attr: 0,
            prio: 0,
            crn: 0,
            tag: None,
            data_out,
            data_in_len,
            split: Split::Linux,
            indirect: None,
        }
    }
}

/// A parsed command response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScsiResponse {
    /// virtio-scsi response code (`S_OK`, ...).
    pub response: u8,
    /// SCSI status (0 GOOD, 2 CHECK CONDITION, ...).
    pub status: u8,
    pub status_qualifier: u16,
    /// `sense_len` as written by the device.
    pub sense_len: u32,
    /// The first `min(sense_len, 96)` sense bytes.
    pub sense: Vec<u8>,
    pub resid: u32,
    /// The whole data-in buffer (`data_in_len` bytes; see [`ScsiResponse::data_in`]).
    pub data: Vec<u8>,
    /// The used length the device reported for the chain.
    pub used_len: u32,
}

impl ScsiResponse {
    /// The data-in bytes the device says it transferred (`len - resid`).
    pub fn data_in(&self) -> &[u8] {
        let n = self.data.len().saturating_sub(self.resid as usize);
        &self.data[..n]
    }
    /// Sense key, ASC, ASCQ of fixed or descriptor format sense data.
    pub fn sense_key(&self) -> Option<(u8, u8, u8)> {
        let s = &self.sense;
        match s.first()? & 0x7f {
            0x70 | 0x71 if s.len() >= 14 => Some((s[2] & 0xf, s[12], s[13])),
            0x72 | 0x73 if s.len() >= 4 => Some((s[1] & 0xf, s[2], s[3])),
            _ => None,
        }
    }
}

/// One segment of a raw chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainPart {
    /// A device-readable buffer holding these bytes.
    Out(Vec<u8>),
    /// A device-writable buffer of this many bytes (read back at completion).
    In(u32),
    /// A descriptor with any address/length (may be outside guest memory);
    /// nothing is allocated or read back.
    Raw { addr: u64, len: u32, write: bool },
}

/// Completion of a raw chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawCompletion {
    pub used_len: u32,
    /// Contents of each `ChainPart::In`, in order.
    pub written: Vec<Vec<u8>>,
}

/// What completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Scsi(ScsiResponse),
    Raw(RawCompletion),
    Event(Event),
}

/// A reaped completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The frontend tag returned by `submit*`.
    pub tag: u64,
    /// vhost-user queue index.
    pub vq: usize,
    pub used_len: u32,
    pub outcome: Outcome,
}

impl Completion {
    pub fn scsi(&self) -> Option<&ScsiResponse> {
        match &self.outcome {
            Outcome::Scsi(r) => Some(r),
            _ => None,
        }
    }
}

#[derive(Debug)]
enum Kind {
    Scsi {
        resp: u64,
        data_in: u64,
        data_in_len: u32,
    },
    Raw {
        writable: Vec<(u64, u32)>,
    },
    Event {
        buf: u64,
    },
}

#[derive(Debug)]
struct Pending {
    tag: u64,
    kind: Kind,
    allocs: Vec<(u64, u64)>,
}

struct QueueState {
    vq: SplitQueue,
    pending: HashMap<u16, Pending>,
    done: Vec<Completion>,
}

/// Per-queue counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub kicks: u64,
    pub kicks_suppressed: u64,
    pub in_flight: usize,
    pub free_descriptors: usize,
}

/// Indexes of one ring, as the frontend knows them and as the device left
/// them in guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingState {
    /// avail->idx as published (visible to the device).
    pub published: u16,
    /// avail index including chains added but not yet published.
    pub avail_idx: u16,
    /// used->idx in guest memory (written by the device).
    pub used_idx: u16,
    /// Used elements the frontend took so far.
    pub last_used: u16,
    /// Chains outstanding in the frontend (added, not yet taken back).
    pub in_flight: usize,
}

/// A virtio-scsi device driven over vhost-user. All methods but
/// [`ScsiFrontend::reconnect`] take `&self` (every queue has its own
/// lock), so `Arc<ScsiFrontend>` can be shared by one thread per request
/// queue.
pub struct ScsiFrontend {
    cfg: FrontendConfig,
    conn: Connection,
    /// The inflight region (INFLIGHT_SHMFD negotiated), kept across
    /// reconnections.
    inflight: Option<InflightRegion>,
    mem: GuestMem,
    alloc: Mutex<BufferAllocator>,
    queues: Vec<Mutex<QueueState>>,
    /// Duplicates of the call eventfds, to sleep on without a queue lock.
    calls: Vec<vmm_sys_util::eventfd::EventFd>,
    next_tag: AtomicU64,
    indirect_default: bool,
    /// The dirty log, once logging started, and whether it is on.
    log: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    bitmap: Option<Arc<DirtyBitmap>>,
    on: bool,
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl ScsiFrontend {
    /// Create guest memory, connect, negotiate and start every queue, and
    /// put `event_buffers` buffers on the event queue. With
    /// `cfg.inflight` and a backend that offers INFLIGHT_SHMFD, the
    /// backend's inflight region is fetched (GET_INFLIGHT_FD) and handed
    /// back (SET_INFLIGHT_FD) before the rings start.
    pub fn connect(cfg: &FrontendConfig) -> Result<Self> {
        Self::connect_inner(cfg, None)
    }

    /// As [`ScsiFrontend::connect`], but hand the backend `region` with
    /// SET_INFLIGHT_FD instead of asking for one (tests of a backend's
    /// reaction to a region too small, beyond its file, or full of
    /// garbage). The region is kept and given again at reconnection.
    pub fn connect_with_inflight(cfg: &FrontendConfig, region: InflightRegion) -> Result<Self> {
        Self::connect_inner(cfg, Some(region))
    }

    fn connect_inner(cfg: &FrontendConfig, region: Option<InflightRegion>) -> Result<Self> {
        let mem = GuestMem::new(cfg.mem_size, cfg.mem_base, cfg.mmap_offset)?;
        let nq = usize::from(cfg.request_queues) + 2;
        let stride = align_up(RingLayout::new(cfg.queue_size).total, 4096);
        let rings = stride * nq as u64;
        if rings >= cfg.mem_size as u64 / 2 {
            return Err(Error::Config(format!(
                "{nq} rings of {} entries need {rings} bytes, too many for {} bytes of memory",
                cfg.queue_size, cfg.mem_size
            )));
        }
        let mut conn = Connection::open(cfg)?;
        let acked = conn.features_for(cfg);
        let mut inflight = region;
        Self::start_device(&mut conn, cfg, &mem, acked, &mut inflight)?;
        let event_idx = acked & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(nq);
        let mut calls = Vec::with_capacity(nq);
        for i in 0..nq {
            let mut q = SplitQueue::new(
                &mem,
                i,
                cfg.queue_size,
                cfg.mem_base + stride * i as u64,
                event_idx,
                cfg.always_kick,
            )?;
            q.new_kick(cfg.start_kicked)?;
            conn.setup_queue(&mem, &q, 0, false)?;
            calls.push(q.call_fd().try_clone().map_err(super::io_err("dup"))?);
            queues.push(Mutex::new(QueueState {
                vq: q,
                pending: HashMap::new(),
                done: Vec::new(),
            }));
        }
        let dev = ScsiFrontend {
            alloc: Mutex::new(BufferAllocator::new(
                cfg.mem_base + rings,
                cfg.mem_size as u64 - rings,
            )),
            cfg: cfg.clone(),
            conn,
            inflight,
            mem,
            queues,
            calls,
            next_tag: AtomicU64::new(1),
            indirect_default: cfg.indirect && acked & VIRTIO_RING_F_INDIRECT_DESC != 0,
            log: Mutex::new(LogState::default()),
        };
        for _ in 0..cfg.event_buffers.min(cfg.queue_size) {
            dev.post_event_buffer()?;
        }
        Ok(dev)
    }

    /// The device start before the rings, in QEMU's order
    /// (`vhost_scsi_common_start`): SET_FEATURES (`vhost_dev_prepare_inflight`,
    /// unless `inflight_before_features`), GET_INFLIGHT_FD when there is no
    /// region yet, SET_INFLIGHT_FD, then `vhost_dev_start`'s SET_FEATURES
    /// and SET_MEM_TABLE. Without INFLIGHT_SHMFD: SET_FEATURES,
    /// SET_MEM_TABLE. `region` keeps the region even on error.
    fn start_device(
        conn: &mut Connection,
        cfg: &FrontendConfig,
        mem: &GuestMem,
        acked: u64,
        region: &mut Option<InflightRegion>,
    ) -> Result<()> {
        let use_inflight = region.is_some() || (cfg.inflight && conn.has_inflight());
        if use_inflight {
            if !cfg.inflight_before_features {
                conn.ack_features(acked)?;
            }
            let r = match region.take() {
                Some(r) => r,
                None => {
                    let nq = u16::try_from(usize::from(cfg.request_queues) + 2)
                        .map_err(|_| Error::Config("too many queues".into()))?;
                    conn.get_inflight(nq, cfg.queue_size)?
                }
            };
            let set = conn.set_inflight(&r);
            *region = Some(r);
            set?;
        }
        conn.ack_features(acked)?;
        conn.set_mem_table(mem)?;
        Ok(())
    }

    /// Reconnect after the backend went away (crashed, killed, or stopped),
    /// keeping guest memory, rings and every outstanding request, as QEMU
    /// does when a vhost-user-scsi backend comes back: a new connection to
    /// the socket (retried until a backend listens, up to `cfg.timeout`),
    /// SET_OWNER, features, protocol features, [SET_FEATURES,]
    /// SET_INFLIGHT_FD with the same region, SET_FEATURES, SET_MEM_TABLE
    /// with the same memory, and per ring NUM, ADDR, BASE, CALL, KICK,
    /// ENABLE with the same call eventfds and new kick eventfds (signalled
    /// unless `start_kicked` is off: QEMU's new host notifiers start at
    /// 1). BASE is the used index found in the
    /// ring (QEMU's `virtio_queue_restore_last_avail_idx` when
    /// GET_VRING_BASE is impossible): the backend resubmits what the
    /// inflight region says was taken and not completed, and takes the
    /// rest from the avail ring. Requests outstanding here stay
    /// outstanding and complete on the new connection.
    ///
    /// Returns the bases given to each ring, in queue order. Fails if the
    /// new backend lacks a feature acked before, or INFLIGHT_SHMFD while a
    /// region is in use (the requests in flight would be lost).
    pub fn reconnect(&mut self) -> Result<Vec<u16>> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut conn = Connection::open_until(&self.cfg, deadline)?;
        let acked = self.conn.acked_features;
        let missing = acked & !self.cfg.force_features & !conn.offered_features;
        if missing != 0 {
            return Err(Error::Protocol(format!(
                "the new backend does not offer feature bits {missing:#x} acked before"
            )));
        }
        if self.inflight.is_some() && !conn.has_inflight() {
            return Err(Error::MissingFeature(
                "VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD at reconnection",
            ));
        }
        let log = self.log.get_mut().unwrap_or_else(|p| p.into_inner());
        let logging = log.on;
        if logging && !conn.has_log_shmfd() {
            return Err(Error::MissingFeature(
                "VHOST_USER_PROTOCOL_F_LOG_SHMFD at reconnection while logging",
            ));
        }
        // While logging, as QEMU's vhost_dev_start: LOG_ALL in SET_FEATURES,
        // VHOST_VRING_F_LOG in SET_VRING_ADDR, SET_LOG_BASE after the rings.
        conn.keep_log_all(logging);
        Self::start_device(&mut conn, &self.cfg, &self.mem, acked, &mut self.inflight)?;
        let mut bases = Vec::with_capacity(self.queues.len());
        for q in &mut self.queues {
            let q = q.get_mut().unwrap_or_else(|p| p.into_inner());
            let base = q.vq.device_used_idx(&self.mem)?;
            q.vq.new_kick(self.cfg.start_kicked)?;
            conn.setup_queue(&self.mem, &q.vq, base, logging)?;
            bases.push(base);
        }
        if let (true, Some(b)) = (logging, &log.bitmap) {
            conn.set_log_base(b.region())?;
        }
        self.conn = conn;
        Ok(bases)
    }

    /// [`ScsiFrontend::reconnect`] to another socket (which becomes the
    /// configured one).
    pub fn reconnect_to(&mut self, socket: impl Into<std::path::PathBuf>) -> Result<Vec<u16>> {
        self.cfg.socket = socket.into();
        self.reconnect()
    }

    /// Wait up to `timeout` for the backend to close the connection (a
    /// graceful stop, or a crash). Once it did, the frontend does what QEMU
    /// does then: GET_VRING_BASE being impossible, it reads each ring's
    /// used index (where a reconnection will restart it), returned in
    /// queue order. `None`: still connected.
    pub fn wait_backend_closed(&self, timeout: Duration) -> Result<Option<Vec<u16>>> {
        if !self.conn.wait_closed(timeout)? {
            return Ok(None);
        }
        (0..self.queues.len())
            .map(|vq| self.lock(vq)?.vq.device_used_idx(&self.mem))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// The inflight region, when INFLIGHT_SHMFD was negotiated (or a region
    /// was given to [`ScsiFrontend::connect_with_inflight`]).
    pub fn inflight(&self) -> Option<&InflightRegion> {
        self.inflight.as_ref()
    }

    /// Indexes of vhost-user queue `vq`.
    pub fn ring_state(&self, vq: usize) -> Result<RingState> {
        let q = self.lock(vq)?;
        Ok(RingState {
            published: q.vq.published_idx(),
            avail_idx: q.vq.avail_idx(),
            used_idx: q.vq.device_used_idx(&self.mem)?,
            last_used: q.vq.last_used(),
            in_flight: q.vq.in_flight(),
        })
    }

    /// The used element at index `idx` of vhost-user queue `vq`, as found
    /// in guest memory (whether or not the frontend took it).
    pub fn used_entry(&self, vq: usize, idx: u16) -> Result<Used> {
        self.lock(vq)?.vq.used_entry(&self.mem, idx)
    }

    /// Ask for an interrupt on vhost-user queue `vq` only once used->idx
    /// moves past `idx` (EVENT_IDX `used_event`), until the next reap or
    /// wait re-arms it at the next element to take.
    pub fn request_interrupt_at(&self, vq: usize, idx: u16) -> Result<()> {
        self.lock(vq)?.vq.set_used_event(&self.mem, idx)
    }

    /// Whether the call eventfd of vhost-user queue `vq` was signalled and
    /// not yet consumed (nothing is consumed).
    pub fn call_pending(&self, vq: usize) -> Result<bool> {
        let call = self.calls.get(vq).ok_or(Error::NoSuchQueue(vq))?;
        super::vring::poll_in(call, Duration::ZERO)
    }

    /// Consume the call eventfd of vhost-user queue `vq`; returns whether
    /// it was signalled.
    pub fn take_call(&self, vq: usize) -> Result<bool> {
        let call = self.calls.get(vq).ok_or(Error::NoSuchQueue(vq))?;
        match call.read() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(source) => Err(Error::Io {
                op: "call eventfd read",
                source,
            }),
        }
    }

    /// Guest memory (to inspect or to place buffers for raw descriptors).
    pub fn mem(&self) -> &GuestMem {
        &self.mem
    }

    /// The negotiated connection (features).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn config(&self) -> &FrontendConfig {
        &self.cfg
    }

    pub fn num_request_queues(&self) -> usize {
        self.queues.len() - 2
    }

    pub fn stats(&self, vq: usize) -> Result<QueueStats> {
        let q = self.lock(vq)?;
        Ok(QueueStats {
            kicks: q.vq.kicks,
            kicks_suppressed: q.vq.kicks_suppressed,
            in_flight: q.vq.in_flight(),
            free_descriptors: q.vq.free_descriptors(),
        })
    }

    /// Free bytes in the buffer allocator.
    pub fn free_memory(&self) -> u64 {
        self.alloc_lock().free_bytes()
    }

    fn lock(&self, vq: usize) -> Result<MutexGuard<'_, QueueState>> {
        let q = self.queues.get(vq).ok_or(Error::NoSuchQueue(vq))?;
        Ok(q.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn alloc_lock(&self) -> MutexGuard<'_, BufferAllocator> {
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_tag(&self) -> u64 {
        self.next_tag.fetch_add(1, Ordering::Relaxed)
    }

    fn request_vq(&self, queue: usize) -> Result<usize> {
        if queue < self.num_request_queues() {
            Ok(queue + FIRST_REQUEST_QUEUE)
        } else {
            Err(Error::NoSuchQueue(queue + FIRST_REQUEST_QUEUE))
        }
    }

    fn alloc(&self, len: usize, align: u64, allocs: &mut Vec<(u64, u64)>) -> Result<u64> {
        let a = self
            .alloc_lock()
            .alloc(len as u64, align)
            .ok_or(Error::OutOfMemory(len))?;
        allocs.push((a, len as u64));
        Ok(a)
    }

    fn free_allocs(&self, allocs: &[(u64, u64)]) {
        if allocs.is_empty() {
            return;
        }
        let mut a = self.alloc_lock();
        for &(addr, len) in allocs {
            a.free(addr, len);
        }
    }

    /// Allocate a buffer holding `data` (zeroes if `data` is None, `len` bytes).
    fn buffer(
        &self,
        data: Option<&[u8]>,
        len: usize,
        align: u64,
        allocs: &mut Vec<(u64, u64)>,
    ) -> Result<u64> {
        let a = self.alloc(len, align, allocs)?;
        match data {
            Some(d) => self.mem.write(a, d)?,
            None => self.mem.write(a, &vec![0; len])?,
        }
        Ok(a)
    }

    /// Put a chain on `vq`, publish and kick. `allocs` is freed on error.
    fn push(
        &self,
        vq: usize,
        tag: u64,
        segs: Vec<Seg>,
        indirect: bool,
        kind: Kind,
        allocs: Vec<(u64, u64)>,
    ) -> Result<u64> {
        self.push_inner(vq, tag, segs, indirect, kind, allocs, true)
    }

    /// As [`ScsiFrontend::push`], publishing (and kicking) only if `publish`.
    #[allow(clippy::too_many_arguments)]
    fn push_inner(
        &self,
        vq: usize,
        tag: u64,
        segs: Vec<Seg>,
        indirect: bool,
        kind: Kind,
        mut allocs: Vec<(u64, u64)>,
        publish: bool,
    ) -> Result<u64> {
        let r = (|| {
            let table = if indirect {
                Some(self.alloc(16 * segs.len().max(1), 16, &mut allocs)?)
            } else {
                None
            };
            let mut q = self.lock(vq)?;
            let head = match table {
                Some(t) => q.vq.add_indirect(&self.mem, t, &segs)?,
                None => q.vq.add_chain(&self.mem, &segs)?,
            };
            q.pending.insert(
                head,
                Pending {
                    tag,
                    kind,
                    allocs: std::mem::take(&mut allocs),
                },
            );
            if publish {
                q.vq.notify(&self.mem)?;
            }
            Ok(tag)
        })();
        if r.is_err() {
            self.free_allocs(&allocs);
        }
        r
    }

    /// Allocate `len` bytes of guest memory aligned to `align` (a power of
    /// two) for the caller's own chains (see [`ScsiFrontend::queue_chain`]);
    /// its contents are whatever was there. Return it with
    /// [`ScsiFrontend::free_buffer`].
    pub fn alloc_buffer(&self, len: usize, align: u64) -> Result<u64> {
        self.alloc_lock()
            .alloc(len as u64, align)
            .ok_or(Error::OutOfMemory(len))
    }

    /// Give back a buffer from [`ScsiFrontend::alloc_buffer`] (same `len`).
    pub fn free_buffer(&self, addr: u64, len: usize) {
        self.alloc_lock().free(addr, len as u64);
    }

    /// The fast path for benchmarks: put a chain of caller-owned buffers
    /// (header, data, response as the caller wrote them) on request queue
    /// `queue` without publishing it (call [`ScsiFrontend::publish`]).
    /// Nothing is allocated, copied or zeroed. Its [`Completion`] (from
    /// [`ScsiFrontend::wait_completions`]) has `tag == user` and an empty
    /// [`Outcome::Raw`]; the caller reads the response from its buffers.
    pub fn queue_chain(&self, queue: usize, segs: &[Seg], user: u64) -> Result<()> {
        let vq = self.request_vq(queue)?;
        let mut q = self.lock(vq)?;
        let head = q.vq.add_chain(&self.mem, segs)?;
        q.pending.insert(
            head,
            Pending {
                tag: user,
                kind: Kind::Raw {
                    writable: Vec::new(),
                },
                allocs: Vec::new(),
            },
        );
        Ok(())
    }

    /// As [`ScsiFrontend::queue_chain`], with the chain written into the
    /// caller's indirect table at `table` (16 bytes per segment, owned by
    /// the caller until completion): one ring descriptor per request, as a
    /// Linux guest does when VIRTIO_RING_F_INDIRECT_DESC is negotiated.
    pub fn queue_chain_indirect(
        &self,
        queue: usize,
        table: u64,
        segs: &[Seg],
        user: u64,
    ) -> Result<()> {
        let vq = self.request_vq(queue)?;
        let mut q = self.lock(vq)?;
        let head = q.vq.add_indirect(&self.mem, table, segs)?;
        q.pending.insert(
            head,
            Pending {
                tag: user,
                kind: Kind::Raw {
                    writable: Vec::new(),
                },
                allocs: Vec::new(),
            },
        );
        Ok(())
    }

    /// Kick vhost-user queue `vq` unconditionally (recovery from a backend
    /// that lost a kick while it was starting up).
    pub fn kick(&self, vq: usize) -> Result<()> {
        let q = self.lock(vq)?;
        q.vq.kick_fd()
            .write(1)
            .map_err(super::io_err("kick eventfd write"))
    }

    /// Publish the chains queued on request queue `queue` and kick the
    /// backend if it asks for it. Returns whether a kick was sent.
    pub fn publish(&self, queue: usize) -> Result<bool> {
        let vq = self.request_vq(queue)?;
        let mut q = self.lock(vq)?;
        q.vq.notify(&self.mem)
    }

    /// Submit a command on request queue `queue` (0-based) without waiting.
    /// Returns the frontend tag that identifies its [`Completion`].
    pub fn submit(&self, queue: usize, req: &ScsiRequest) -> Result<u64> {
        self.submit_inner(queue, req, true)
    }

    /// As [`ScsiFrontend::submit`], but the request is only added to the
    /// avail ring: [`ScsiFrontend::publish`] makes a whole batch visible
    /// to the backend at once, with one kick.
    pub fn submit_queued(&self, queue: usize, req: &ScsiRequest) -> Result<u64> {
        self.submit_inner(queue, req, false)
    }

    fn submit_inner(&self, queue: usize, req: &ScsiRequest, publish: bool) -> Result<u64> {
        let vq = self.request_vq(queue)?;
        if req.cdb.len() > CDB_SIZE {
            return Err(Error::Config(format!("CDB of {} bytes", req.cdb.len())));
        }
        let mut cdb = [0u8; CDB_SIZE];
        cdb[..req.cdb.len()].copy_from_slice(&req.cdb);
        let tag = self.new_tag();
        let hdr = CmdReqHeader {
            lun: req.lun,
            tag: req.tag.unwrap_or(tag),
            task_attr: req.task_attr,
            prio: req.prio,
            crn: req.crn,
            cdb,
        };
        let mut allocs = Vec::new();
        let built = self.build_scsi(&hdr, req, &mut allocs);
        let (segs, kind) = match built {
            Ok(x) => x,
            Err(e) => {
                self.free_allocs(&allocs);
                return Err(e);
            }
        };
        let indirect = req.indirect.unwrap_or(self.indirect_default);
        self.push_inner(vq, tag, segs, indirect, kind, allocs, publish)
    }

    fn build_scsi(
        &self,
        hdr: &CmdReqHeader,
        req: &ScsiRequest,
        allocs: &mut Vec<(u64, u64)>,
    ) -> Result<(Vec<Seg>, Kind)> {
        let out_len = req.data_out.len();
        let in_len = req.data_in_len as usize;
        let resp_zero = [0u8; RESP_HDR];
        match req.split {
            Split::Merged => {
                // The header ends where the 4096-aligned data begins.
                let ob = self.alloc(4096 + out_len, DATA_ALIGN, allocs)?;
                let hdr_at = ob + 4096 - REQ_HDR as u64;
                self.mem.write(hdr_at, hdr.as_slice())?;
                self.mem.write(ob + 4096, &req.data_out)?;
                let ib = self.alloc(4096 + in_len, DATA_ALIGN, allocs)?;
                let resp = ib + 4096 - RESP_HDR as u64;
                self.mem.write(resp, &resp_zero)?;
                self.mem.write(ib + 4096, &vec![0; in_len])?;
                let segs = vec![
                    Seg {
                        addr: hdr_at,
                        len: (REQ_HDR + out_len) as u32,
                        write: false,
                    },
                    Seg {
                        addr: resp,
                        len: (RESP_HDR + in_len) as u32,
                        write: true,
                    },
                ];
                Ok((
                    segs,
                    Kind::Scsi {
                        resp,
                        data_in: ib + 4096,
                        data_in_len: req.data_in_len,
                    },
                ))
            }
            Split::Linux | Split::Pieces(_) => {
                let mut segs = Vec::new();
                let h = self.buffer(Some(hdr.as_slice()), REQ_HDR, 64, allocs)?;
                segs.push((h, REQ_HDR, false));
                if out_len > 0 {
                    let d = self.buffer(Some(&req.data_out), out_len, DATA_ALIGN, allocs)?;
                    segs.push((d, out_len, false));
                }
                let resp = self.buffer(None, RESP_HDR, 64, allocs)?;
                segs.push((resp, RESP_HDR, true));
                let mut data_in = 0;
                if in_len > 0 {
                    data_in = self.buffer(None, in_len, DATA_ALIGN, allocs)?;
                    segs.push((data_in, in_len, true));
                }
                let piece = match req.split {
                    Split::Pieces(n) => n.max(1) as usize,
                    _ => usize::MAX,
                };
                let mut out = Vec::new();
                for (addr, len, write) in segs {
                    let mut off = 0;
                    while off < len {
                        let n = piece.min(len - off);
                        out.push(Seg {
                            addr: addr + off as u64,
                            len: n as u32,
                            write,
                        });
                        off += n;
                    }
                }
                Ok((
                    out,
                    Kind::Scsi {
                        resp,
                        data_in,
                        data_in_len: req.data_in_len,
                    },
                ))
            }
        }
    }

    /// Submit and wait (config timeout) for one command.
    pub fn execute(&self, queue: usize, req: &ScsiRequest) -> Result<ScsiResponse> {
        let vq = self.request_vq(queue)?;
        let tag = self.submit(queue, req)?;
        match self.wait_tag(vq, tag, self.cfg.timeout)?.outcome {
            Outcome::Scsi(r) => Ok(r),
            _ => Err(Error::BadUsedRing {
                queue: vq,
                what: "completion of another kind".into(),
            }),
        }
    }

    /// A blocking command to target 0 `lun` on request queue `queue`.
    pub fn command(
        &self,
        queue: usize,
        lun: u16,
        cdb: &[u8],
        dir: DataDir<'_>,
    ) -> Result<ScsiResponse> {
        self.execute(queue, &ScsiRequest::new(lun, cdb, dir))
    }

    /// Reap completions of request queue `queue` into `out`: waits up to
    /// `timeout` for at least one. Returns how many were added (0 on timeout).
    pub fn wait_completions(
        &self,
        queue: usize,
        out: &mut Vec<Completion>,
        timeout: Duration,
    ) -> Result<usize> {
        self.wait_vq(self.request_vq(queue)?, out, timeout)
    }

    /// Reap the completions of request queue `queue` that are in the used
    /// ring now into `out`, without waiting and without asking the backend
    /// for an interrupt (a polling driver). Returns how many were added.
    pub fn reap_completions(&self, queue: usize, out: &mut Vec<Completion>) -> Result<usize> {
        let mut q = self.lock(self.request_vq(queue)?)?;
        self.reap(&mut q)?;
        let n = q.done.len();
        out.append(&mut q.done);
        Ok(n)
    }

    /// As [`ScsiFrontend::wait_completions`] for any vhost-user queue index.
    pub fn wait_vq(
        &self,
        vq: usize,
        out: &mut Vec<Completion>,
        timeout: Duration,
    ) -> Result<usize> {
        self.wait_inner(vq, timeout, |done| {
            let n = done.len();
            out.append(done);
            n
        })
    }

    /// Wait for the completion of `tag` on vhost-user queue `vq` (others
    /// reaped meanwhile stay queued for `wait_*`).
    pub fn wait_tag(&self, vq: usize, tag: u64, timeout: Duration) -> Result<Completion> {
        let mut got = None;
        self.wait_inner(vq, timeout, |done| {
            if let Some(i) = done.iter().position(|c| c.tag == tag) {
                got = Some(done.remove(i));
                1
            } else {
                0
            }
        })?;
        got.ok_or(Error::Timeout { queue: vq, timeout })
    }

    fn wait_inner(
        &self,
        vq: usize,
        timeout: Duration,
        mut take: impl FnMut(&mut Vec<Completion>) -> usize,
    ) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut q = self.lock(vq)?;
            self.reap(&mut q)?;
            let n = take(&mut q.done);
            if n > 0 {
                return Ok(n);
            }
            if q.vq.arm(&self.mem)? {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            // Sleep without the lock so other threads can submit; in slices
            // in case another waiter consumed the eventfd.
            drop(q);
            let call = &self.calls[vq];
            if super::vring::poll_in(call, (deadline - now).min(POLL_SLICE))? {
                // Nonblocking: EAGAIN when another waiter consumed it.
                let _ = call.read();
            }
        }
    }

    fn reap(&self, q: &mut QueueState) -> Result<()> {
        while let Some(used) = q.vq.pop_used(&self.mem)? {
            let c = self.complete(q, used)?;
            q.done.push(c);
        }
        Ok(())
    }

    fn complete(&self, q: &mut QueueState, used: Used) -> Result<Completion> {
        let vq = q.vq.index;
        let p = q
            .pending
            .remove(&used.id)
            .ok_or_else(|| Error::BadUsedRing {
                queue: vq,
                what: format!("no request for head {}", used.id),
            })?;
        let outcome = (|| -> Result<Outcome> {
            Ok(match &p.kind {
                Kind::Scsi {
                    resp,
                    data_in,
                    data_in_len,
                } => {
                    let h: CmdRespHeader = self
                        .mem
                        .mem()
                        .read_obj(GuestAddress(*resp))
                        .map_err(|e| Error::Memory(format!("response header: {e}")))?;
                    let sense = h.sense;
                    let sense_len = h.sense_len;
                    let data = if *data_in_len > 0 {
                        self.mem.read_vec(*data_in, *data_in_len as usize)?
                    } else {
                        Vec::new()
                    };
                    Outcome::Scsi(ScsiResponse {
                        response: h.response,
                        status: h.status,
                        status_qualifier: h.status_qualifier,
                        sense_len,
                        sense: sense[..(sense_len as usize).min(SENSE_SIZE)].to_vec(),
                        resid: h.resid,
                        data,
                        used_len: used.len,
                    })
                }
                Kind::Raw { writable } => Outcome::Raw(RawCompletion {
                    used_len: used.len,
                    written: writable
                        .iter()
                        .map(|&(a, l)| self.mem.read_vec(a, l as usize))
                        .collect::<Result<_>>()?,
                }),
                Kind::Event { buf } => Outcome::Event(
                    self.mem
                        .mem()
                        .read_obj(GuestAddress(*buf))
                        .map_err(|e| Error::Memory(format!("event: {e}")))?,
                ),
            })
        })();
        self.free_allocs(&p.allocs);
        Ok(Completion {
            tag: p.tag,
            vq,
            used_len: used.len,
            outcome: outcome?,
        })
    }

    /// Submit a chain of arbitrary parts on vhost-user queue `vq` (0
    /// control, 1 event, 2.. requests), direct or in an indirect table.
    pub fn submit_raw(&self, vq: usize, parts: &[ChainPart], indirect: bool) -> Result<u64> {
        if vq >= self.queues.len() {
            return Err(Error::NoSuchQueue(vq));
        }
        let mut allocs = Vec::new();
        let mut segs = Vec::new();
        let mut writable = Vec::new();
        let r = (|| {
            for p in parts {
                match p {
                    ChainPart::Out(d) => {
                        let a = self.buffer(Some(d), d.len(), 16, &mut allocs)?;
                        segs.push(Seg {
                            addr: a,
                            len: d.len() as u32,
                            write: false,
                        });
                    }
                    ChainPart::In(n) => {
                        let a = self.buffer(None, *n as usize, 16, &mut allocs)?;
                        writable.push((a, *n));
                        segs.push(Seg {
                            addr: a,
                            len: *n,
                            write: true,
                        });
                    }
                    ChainPart::Raw { addr, len, write } => segs.push(Seg {
                        addr: *addr,
                        len: *len,
                        write: *write,
                    }),
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            self.free_allocs(&allocs);
            return Err(e);
        }
        self.push(
            vq,
            self.new_tag(),
            segs,
            indirect,
            Kind::Raw { writable },
            allocs,
        )
    }

    /// Submit raw parts (direct descriptors) and wait for the completion.
    pub fn raw_chain(&self, vq: usize, parts: &[ChainPart]) -> Result<RawCompletion> {
        let tag = self.submit_raw(vq, parts, false)?;
        self.wait_raw(vq, tag)
    }

    /// As [`ScsiFrontend::raw_chain`], with the chain in an indirect table.
    pub fn raw_chain_indirect(&self, vq: usize, parts: &[ChainPart]) -> Result<RawCompletion> {
        let tag = self.submit_raw(vq, parts, true)?;
        self.wait_raw(vq, tag)
    }

    /// Write arbitrary descriptors (any flags; `next` indexes into `descs`
    /// and is translated to real ids, out-of-range values are written as
    /// is) and publish `descs[0]` as a head. Nothing is read back.
    pub fn submit_descriptors(&self, vq: usize, descs: &[Desc]) -> Result<u64> {
        let mut q = self.lock(vq)?;
        let head = q.vq.add_raw(&self.mem, descs)?;
        let tag = self.new_tag();
        q.pending.insert(
            head,
            Pending {
                tag,
                kind: Kind::Raw {
                    writable: Vec::new(),
                },
                allocs: Vec::new(),
            },
        );
        q.vq.notify(&self.mem)?;
        Ok(tag)
    }

    fn wait_raw(&self, vq: usize, tag: u64) -> Result<RawCompletion> {
        match self.wait_tag(vq, tag, self.cfg.timeout)?.outcome {
            Outcome::Raw(r) => Ok(r),
            _ => Err(Error::BadUsedRing {
                queue: vq,
                what: "completion of another kind".into(),
            }),
        }
    }

    fn control(&self, req: &[u8], resp_len: u32) -> Result<Vec<u8>> {
        let r = self.raw_chain(
            CONTROL_QUEUE,
            &[ChainPart::Out(req.to_vec()), ChainPart::In(resp_len)],
        )?;
        r.written.into_iter().next().ok_or(Error::BadUsedRing {
            queue: CONTROL_QUEUE,
            what: "no response buffer".into(),
        })
    }

    /// A task management function (`T_TMF_*` subtype) for target 0 `lun`
    /// and task `tag`; returns the response code.
    pub fn tmf(&self, lun: u16, subtype: u32, tag: u64) -> Result<u8> {
        let req = CtrlTmfReq {
            type_: T_TMF,
            subtype,
            lun: encode_lun(0, lun),
            tag,
        };
        Ok(self.control(req.as_slice(), 1)?[0])
    }

    fn an(&self, type_: u32, lun: u16, events: u32) -> Result<(u32, u8)> {
        let req = CtrlAnReq {
            type_,
            lun: encode_lun(0, lun),
            event_requested: events,
        };
        let r = self.control(req.as_slice(), 5)?;
        Ok((u32::from_le_bytes([r[0], r[1], r[2], r[3]]), r[4]))
    }

    /// Asynchronous notification query: returns (event_actual, response).
    pub fn an_query(&self, lun: u16, events: u32) -> Result<(u32, u8)> {
        self.an(T_AN_QUERY, lun, events)
    }

    /// Asynchronous notification subscribe: returns (event_actual, response).
    pub fn an_subscribe(&self, lun: u16, events: u32) -> Result<(u32, u8)> {
        self.an(T_AN_SUBSCRIBE, lun, events)
    }

    fn post_event_buffer(&self) -> Result<()> {
        let mut allocs = Vec::new();
        let buf = self.buffer(None, std::mem::size_of::<Event>(), 16, &mut allocs)?;
        let seg = Seg {
            addr: buf,
            len: std::mem::size_of::<Event>() as u32,
            write: true,
        };
        self.push(
            EVENT_QUEUE,
            self.new_tag(),
            vec![seg],
            false,
            Kind::Event { buf },
            allocs,
        )?;
        Ok(())
    }

    /// Put `n` more buffers on the event queue (a guest that connected
    /// with `event_buffers = 0`, or one that refills late).
    pub fn post_event_buffers(&self, n: u16) -> Result<()> {
        for _ in 0..n {
            self.post_event_buffer()?;
        }
        Ok(())
    }

    /// Wait up to `timeout` for events; every consumed buffer is replaced.
    pub fn poll_events(&self, timeout: Duration) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        self.wait_vq(EVENT_QUEUE, &mut out, timeout)?;
        let mut events = Vec::new();
        for c in out {
            if let Outcome::Event(e) = c.outcome {
                events.push(e);
                self.post_event_buffer()?;
            }
        }
        Ok(events)
    }

    /// GET_VRING_BASE on vhost-user queue `vq` alone, while the others run
    /// (the backend finishes what it took from the ring before it answers);
    /// returns the base. The ring stays stopped until a reconnection.
    pub fn stop_queue(&self, vq: usize) -> Result<u32> {
        if vq >= self.queues.len() {
            return Err(Error::NoSuchQueue(vq));
        }
        self.conn.stop_queue(vq)
    }

    /// Guest-physical addresses of the descriptor table, avail ring and
    /// used ring of vhost-user queue `vq`.
    pub fn ring_addrs(&self, vq: usize) -> Result<(u64, u64, u64)> {
        Ok(self.lock(vq)?.vq.ring_addrs())
    }

    /// The used ring of vhost-user queue `vq`: guest-physical address and
    /// length (flags, idx, the entries and `avail_event`).
    pub fn used_ring(&self, vq: usize) -> Result<(u64, u64)> {
        let q = self.lock(vq)?;
        Ok((q.vq.ring_addrs().2, 6 + 8 * u64::from(q.vq.size())))
    }

    fn log_lock(&self) -> MutexGuard<'_, LogState> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start dirty logging as QEMU does when a migration starts
    /// (`vhost_migration_log`): create the bitmap the first time (a memfd
    /// covering guest-physical addresses up to the end of guest memory;
    /// later starts reuse it, its bits kept), SET_LOG_BASE with it,
    /// SET_FEATURES with VHOST_F_LOG_ALL, then SET_VRING_ADDR with
    /// VHOST_VRING_F_LOG (log address: the used ring) on every ring.
    /// Callable while other threads run I/O. Needs LOG_SHMFD.
    pub fn start_logging(&self) -> Result<Arc<DirtyBitmap>> {
        let mut st = self.log_lock();
        if !self.conn.has_log_shmfd() {
            return Err(Error::MissingFeature("VHOST_USER_PROTOCOL_F_LOG_SHMFD"));
        }
        let bitmap = match &st.bitmap {
            Some(b) => b.clone(),
            None => {
                let end = self.mem.base() + self.mem.size() as u64;
                let b = Arc::new(DirtyBitmap::new(end)?);
                st.bitmap = Some(b.clone());
                b
            }
        };
        self.conn.set_log_base(bitmap.region())?;
        self.set_logging(&mut st, true)?;
        Ok(bitmap)
    }

    /// Stop dirty logging (`vhost_dev_set_log(dev, false)`): SET_FEATURES
    /// without VHOST_F_LOG_ALL, SET_VRING_ADDR without VHOST_VRING_F_LOG on
    /// every ring. The bitmap stays (and stays shared with the backend).
    pub fn stop_logging(&self) -> Result<()> {
        let mut st = self.log_lock();
        self.set_logging(&mut st, false)
    }

    fn set_logging(&self, st: &mut LogState, on: bool) -> Result<()> {
        self.conn.set_log_all(on)?;
        st.on = on;
        for vq in 0..self.queues.len() {
            let (size, addrs) = {
                let q = self.lock(vq)?;
                (q.vq.size(), q.vq.ring_addrs())
            };
            self.conn.set_vring_addr(&self.mem, vq, size, addrs, on)?;
        }
        Ok(())
    }

    /// Whether logging is on.
    pub fn is_logging(&self) -> bool {
        self.log_lock().on
    }

    /// The bitmap, once [`ScsiFrontend::start_logging`] created it.
    pub fn dirty_log(&self) -> Option<Arc<DirtyBitmap>> {
        self.log_lock().bitmap.clone()
    }

    /// The pages marked in the log; with `clear`, cleared as they are read
    /// (QEMU's sync: one atomic exchange per 64-bit word). Fails before
    /// the first [`ScsiFrontend::start_logging`].
    pub fn dirty_pages(&self, clear: bool) -> Result<DirtyPages> {
        let b = self
            .dirty_log()
            .ok_or_else(|| Error::Config("no dirty log: logging never started".into()))?;
        Ok(if clear { b.take() } else { b.snapshot() })
    }

    /// Is the page of guest-physical `gpa` marked in the log right now
    /// (false without a log)?
    pub fn is_dirty(&self, gpa: u64) -> bool {
        self.dirty_log().is_some_and(|b| b.is_marked(gpa))
    }

    /// Stop every ring with GET_VRING_BASE (the backend stops processing
    /// it) and close the connection. Returns the bases (next avail index
    /// the backend would resume at) of all queues, in queue order.
    pub fn shutdown(self) -> Result<Vec<u32>> {
        let mut bases = Vec::with_capacity(self.queues.len());
        for i in 0..self.queues.len() {
            bases.push(self.conn.stop_queue(i)?);
        }
        Ok(bases)
    }

    /// Avail index published so far on vhost-user queue `vq`.
    pub fn avail_idx(&self, vq: usize) -> Result<u16> {
        Ok(self.lock(vq)?.vq.avail_idx())
    }

    /// The tag of the outstanding request whose chain starts at descriptor
    /// `head` of vhost-user queue `vq` (to name what an inflight region
    /// marks), if any.
    pub fn tag_of(&self, vq: usize, head: u16) -> Result<Option<u64>> {
        Ok(self.lock(vq)?.pending.get(&head).map(|p| p.tag))
    }
}
