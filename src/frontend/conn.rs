//! The vhost-user control connection and QEMU's handshake order
//! (vhost-user-scsi-pci): SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
//! GET_QUEUE_NUM; at start SET_FEATURES, GET_INFLIGHT_FD (first start only),
//! SET_INFLIGHT_FD, SET_FEATURES, SET_MEM_TABLE, and per ring
//! NUM/ADDR/BASE/CALL/KICK/ENABLE; at stop GET_VRING_BASE per ring. Dirty
//! logging (live migration): SET_LOG_BASE, SET_FEATURES with
//! VHOST_F_LOG_ALL, SET_VRING_ADDR with VHOST_VRING_F_LOG per ring.

use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures, VhostUserVringAddrFlags,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VringConfigData};

use super::features::*;
use super::inflight::InflightRegion;
use super::memory::GuestMem;
use super::vring::SplitQueue;
use super::{Error, FrontendConfig, Result};

/// Pause between connection attempts while waiting for a backend.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Attempts of [`Connection::open`] while the backend refuses (not yet
/// listening), as `Frontend::connect` does.
const REFUSED_RETRIES: u32 = 5;

/// A negotiated vhost-user connection.
pub struct Connection {
    fe: Frontend,
    watchdog: Watchdog,
    /// Serializes the requests sent through `&self` (one watchdog deadline
    /// at a time).
    shared: Mutex<()>,
    timeout: Duration,
    /// VHOST_F_LOG_ALL is added to every SET_FEATURES (logging on).
    log_all: AtomicBool,
    /// Feature bits the backend offered.
    pub offered_features: u64,
    /// Feature bits acked with SET_FEATURES (after [`Connection::set_features`]),
    /// without VHOST_F_LOG_ALL (sent while logging is on, see
    /// [`Connection::set_log_all`]).
    pub acked_features: u64,
    /// Protocol features the backend offered.
    pub offered_protocol: VhostUserProtocolFeatures,
    /// Protocol features acked.
    pub acked_protocol: VhostUserProtocolFeatures,
    /// GET_QUEUE_NUM answer.
    pub backend_queues: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct WatchState {
    deadline: Option<Instant>,
    fired: bool,
    stop: bool,
}

#[derive(Default)]
struct WatchShared {
    state: Mutex<WatchState>,
    cv: Condvar,
}

/// Shuts the socket down when a request is not answered in time: the vhost
/// crate waits for replies without a timeout (and retries a receive
/// timeout), so a backend that stops answering would hang the frontend.
struct Watchdog {
    shared: Arc<WatchShared>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn new(sock: UnixStream) -> Result<Self> {
        let shared = Arc::new(WatchShared::default());
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn(move || {
                let mut st = lock(&s.state);
                while !st.stop {
                    match st.deadline {
                        None => st = s.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                        Some(d) => {
                            let now = Instant::now();
                            if now >= d {
                                let _ = sock.shutdown(Shutdown::Both);
                                st.fired = true;
                                st.deadline = None;
                            } else {
                                st =
                                    s.cv.wait_timeout(st, d - now)
                                        .unwrap_or_else(|p| p.into_inner())
                                        .0;
                            }
                        }
                    }
                }
            })
            .map_err(|source| Error::Io {
                op: "spawn the vhost-user watchdog",
                source,
            })?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    fn arm(&self, timeout: Duration) {
        let mut st = lock(&self.shared.state);
        st.deadline = Some(Instant::now() + timeout);
        self.shared.cv.notify_one();
    }

    /// Returns whether it fired (the socket is shut down).
    fn disarm(&self) -> bool {
        let mut st = lock(&self.shared.state);
        st.deadline = None;
        st.fired
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Connection {
    /// Connect and negotiate protocol features and the queue count.
    pub fn open(cfg: &FrontendConfig) -> Result<Self> {
        let mut refused = 0;
        let stream = loop {
            match UnixStream::connect(&cfg.socket) {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && refused < REFUSED_RETRIES =>
                {
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(source) => {
                    return Err(Error::Io {
                        op: "connect to the backend",
                        source,
                    })
                }
            }
        };
        Self::handshake(stream, cfg)
    }

    /// As [`Connection::open`], retrying the connection itself (no socket
    /// yet, a stale socket whose backend died, a backend not yet
    /// listening) until `deadline`: how a frontend waits for a restarted
    /// backend.
    pub fn open_until(cfg: &FrontendConfig, deadline: Instant) -> Result<Self> {
        let stream = loop {
            match UnixStream::connect(&cfg.socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() + RETRY_PAUSE < deadline => {
                    tracing::trace!("connect {}: {e}; retrying", cfg.socket.display());
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(source) => {
                    return Err(Error::Io {
                        op: "connect to the backend (until the timeout)",
                        source,
                    })
                }
            }
        };
        Self::handshake(stream, cfg)
    }

    /// Run one request; a backend that does not answer within the
    /// timeout gets its connection shut down and the request fails.
    fn call<T>(
        &mut self,
        op: &'static str,
        queue: Option<usize>,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        self.watchdog.arm(self.timeout);
        let r = f(&mut self.fe);
        let fired = self.watchdog.disarm();
        r.map_err(|source| match (fired, queue) {
            (true, _) => Error::NoAnswer {
                op,
                timeout: self.timeout,
            },
            (false, Some(queue)) => Error::VhostQueue { op, queue, source },
            (false, None) => Error::Vhost { op, source },
        })
    }

    /// [`Connection::call`] through `&self`, for the requests another
    /// thread may send while the rings run (logging on and off).
    fn call_shared<T>(
        &self,
        op: &'static str,
        queue: Option<usize>,
        f: impl FnOnce(&Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        let _one_at_a_time = lock(&self.shared);
        self.watchdog.arm(self.timeout);
        let r = f(&self.fe);
        let fired = self.watchdog.disarm();
        r.map_err(|source| match (fired, queue) {
            (true, _) => Error::NoAnswer {
                op,
                timeout: self.timeout,
            },
            (false, Some(queue)) => Error::VhostQueue { op, queue, source },
            (false, None) => Error::Vhost { op, source },
        })
    }

    fn handshake(stream: UnixStream, cfg: &FrontendConfig) -> Result<Self> {
        let needed = u64::from(cfg.request_queues) + 2;
        let watchdog = Watchdog::new(stream.try_clone().map_err(super::io_err("dup"))?)?;
        let mut c = Connection {
            fe: Frontend::from_stream(stream, needed),
            watchdog,
            shared: Mutex::new(()),
            timeout: cfg.timeout,
            log_all: AtomicBool::new(false),
            offered_features: 0,
            acked_features: 0,
            offered_protocol: VhostUserProtocolFeatures::empty(),
            acked_protocol: VhostUserProtocolFeatures::empty(),
            backend_queues: 0,
        };
        c.call("SET_OWNER", None, |fe| fe.set_owner())?;
        let offered = c.call("GET_FEATURES", None, |fe| fe.get_features())?;
        c.offered_features = offered;
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(Error::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        if offered & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(Error::MissingFeature("VHOST_USER_F_PROTOCOL_FEATURES"));
        }
        let offered_protocol = c.call("GET_PROTOCOL_FEATURES", None, |fe| {
            fe.get_protocol_features()
        })?;
        c.offered_protocol = offered_protocol;
        let mut wanted = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if cfg.inflight {
            wanted |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        }
        if cfg.log_shmfd {
            wanted |= VhostUserProtocolFeatures::LOG_SHMFD;
        }
        let acked_protocol = offered_protocol & wanted;
        c.call("SET_PROTOCOL_FEATURES", None, |fe| {
            fe.set_protocol_features(acked_protocol)
        })?;
        c.acked_protocol = acked_protocol;
        if acked_protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every following request asks for an ack, so a backend's
            // refusal is reported at the request that caused it.
            c.fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if !acked_protocol.contains(VhostUserProtocolFeatures::MQ) {
            return Err(Error::MissingFeature("VHOST_USER_PROTOCOL_F_MQ"));
        }
        let backend_queues = c.call("GET_QUEUE_NUM", None, |fe| fe.get_queue_num())?;
        c.backend_queues = backend_queues;
        if backend_queues < needed {
            return Err(Error::NotEnoughQueues {
                offered: backend_queues,
                needed,
                requests: cfg.request_queues,
            });
        }
        Ok(c)
    }

    /// The feature bits [`Connection::set_features`] acks: VERSION_1 |
    /// PROTOCOL_FEATURES, plus EVENT_IDX, INDIRECT_DESC and
    /// `extra_features` when requested and offered, plus `force_features`.
    pub fn features_for(&self, cfg: &FrontendConfig) -> u64 {
        let mut want = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES | cfg.extra_features;
        if cfg.event_idx {
            want |= VIRTIO_RING_F_EVENT_IDX;
        }
        if cfg.indirect {
            want |= VIRTIO_RING_F_INDIRECT_DESC;
        }
        (want & self.offered_features) | cfg.force_features
    }

    /// SET_FEATURES with [`Connection::features_for`].
    pub fn set_features(&mut self, cfg: &FrontendConfig) -> Result<u64> {
        let acked = self.features_for(cfg);
        self.ack_features(acked)?;
        Ok(acked)
    }

    /// SET_FEATURES with exactly `bits` (plus VHOST_F_LOG_ALL while
    /// logging is on).
    pub fn ack_features(&mut self, bits: u64) -> Result<()> {
        let sent = bits | self.log_all_bit();
        self.call("SET_FEATURES", None, |fe| fe.set_features(sent))?;
        self.acked_features = bits;
        Ok(())
    }

    fn log_all_bit(&self) -> u64 {
        if self.log_all.load(Ordering::Relaxed) {
            VHOST_F_LOG_ALL
        } else {
            0
        }
    }

    /// Whether VHOST_F_LOG_ALL goes with every SET_FEATURES.
    pub fn log_all(&self) -> bool {
        self.log_all.load(Ordering::Relaxed)
    }

    /// Turn logging on or off as QEMU's `vhost_dev_set_features`: SET_FEATURES
    /// with the acked features, plus VHOST_F_LOG_ALL when `on`. Callable
    /// while the rings run.
    pub fn set_log_all(&self, on: bool) -> Result<()> {
        let bits = self.acked_features | if on { VHOST_F_LOG_ALL } else { 0 };
        self.call_shared("SET_FEATURES", None, |fe| fe.set_features(bits))?;
        self.log_all.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// Add VHOST_F_LOG_ALL to the SET_FEATURES of a start (a reconnection
    /// while logging), without sending anything.
    pub fn keep_log_all(&mut self, on: bool) {
        self.log_all.store(on, Ordering::Relaxed);
    }

    /// Whether VHOST_USER_PROTOCOL_F_LOG_SHMFD was negotiated.
    pub fn has_log_shmfd(&self) -> bool {
        self.acked_protocol
            .contains(VhostUserProtocolFeatures::LOG_SHMFD)
    }

    /// SET_LOG_BASE with a shared-memory log (LOG_SHMFD): `region.mmap_size`
    /// bytes at `region.mmap_offset` of the file `region.mmap_handle`. The
    /// backend answers once it mapped the log; a backend that refuses it
    /// closes the connection (the vhost crate sends no error reply).
    pub fn set_log_base(&self, region: VhostUserDirtyLogRegion) -> Result<()> {
        if !self.has_log_shmfd() {
            return Err(Error::MissingFeature("VHOST_USER_PROTOCOL_F_LOG_SHMFD"));
        }
        self.call_shared("SET_LOG_BASE", None, |fe| fe.set_log_base(0, Some(region)))
    }
    /// Whether VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD was negotiated.
    pub fn has_inflight(&self) -> bool {
        self.acked_protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    /// GET_INFLIGHT_FD for `num_queues` queues of `queue_size`: the
    /// backend's region, checked and mapped.
    pub fn get_inflight(&mut self, num_queues: u16, queue_size: u16) -> Result<InflightRegion> {
        let req = VhostUserInflight::new(0, 0, num_queues, queue_size);
        let (reply, file) = self.call("GET_INFLIGHT_FD", None, |fe| fe.get_inflight_fd(&req))?;
        InflightRegion::from_backend(file, &reply, num_queues, queue_size)
    }

    /// SET_INFLIGHT_FD with `region`'s fd and description.
    pub fn set_inflight(&mut self, region: &InflightRegion) -> Result<()> {
        let (msg, fd) = (region.message(), region.file().as_raw_fd());
        self.call("SET_INFLIGHT_FD", None, |fe| fe.set_inflight_fd(&msg, fd))
    }

    pub fn has_feature(&self, bit: u64) -> bool {
        self.acked_features & bit != 0
    }

    /// SET_MEM_TABLE with every region of `mem`.
    pub fn set_mem_table(&mut self, mem: &GuestMem) -> Result<()> {
        let regions = mem.region_infos()?;
        self.call("SET_MEM_TABLE", None, |fe| fe.set_mem_table(&regions))?;
        Ok(())
    }

    /// Program and enable one ring; the backend starts at avail index
    /// `base` (0 at the first start; after a backend crash, the used index
    /// found in the ring, as QEMU restores it).
    /// With `log` (logging on), SET_VRING_ADDR carries VHOST_VRING_F_LOG.
    pub fn setup_queue(
        &mut self,
        mem: &GuestMem,
        q: &SplitQueue,
        base: u16,
        log: bool,
    ) -> Result<()> {
        let i = q.index;
        self.call("SET_VRING_NUM", Some(i), |fe| fe.set_vring_num(i, q.size()))?;
        self.set_vring_addr(mem, i, q.size(), q.ring_addrs(), log)?;
        self.call("SET_VRING_BASE", Some(i), |fe| fe.set_vring_base(i, base))?;
        self.call("SET_VRING_CALL", Some(i), |fe| {
            fe.set_vring_call(i, q.call_fd())
        })?;
        self.call("SET_VRING_KICK", Some(i), |fe| {
            fe.set_vring_kick(i, q.kick_fd())
        })?;
        self.call("SET_VRING_ENABLE", Some(i), |fe| {
            fe.set_vring_enable(i, true)
        })?;
        Ok(())
    }

    /// SET_VRING_ADDR for ring `index` of `size` entries at guest-physical
    /// `(desc, avail, used)`, as QEMU's `vhost_virtqueue_set_addr`: the
    /// frontend's own virtual addresses, and with `log` the
    /// VHOST_VRING_F_LOG flag and the used ring's guest-physical address
    /// as `log_guest_addr`. Callable while the rings run (QEMU re-sends it
    /// to every started ring when logging starts and stops).
    pub fn set_vring_addr(
        &self,
        mem: &GuestMem,
        index: usize,
        size: u16,
        (desc, avail, used): (u64, u64, u64),
        log: bool,
    ) -> Result<()> {
        let config = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: if log {
                VhostUserVringAddrFlags::VHOST_VRING_F_LOG.bits()
            } else {
                0
            },
            desc_table_addr: mem.host_addr(desc)?,
            used_ring_addr: mem.host_addr(used)?,
            avail_ring_addr: mem.host_addr(avail)?,
            log_addr: log.then_some(used),
        };
        self.call_shared("SET_VRING_ADDR", Some(index), |fe| {
            fe.set_vring_addr(index, &config)
        })
    }

    /// GET_VRING_BASE (stops the ring in the backend); returns its avail
    /// index. Callable while other rings run.
    pub fn stop_queue(&self, queue: usize) -> Result<u32> {
        self.call_shared("GET_VRING_BASE", Some(queue), |fe| fe.get_vring_base(queue))
    }

    /// Wait up to `timeout` for the backend to close the connection
    /// (it never sends anything unsolicited on it: data is a protocol
    /// error). Returns whether it closed.
    pub fn wait_closed(&self, timeout: Duration) -> Result<bool> {
        let fd = self.fe.as_raw_fd();
        let deadline = Instant::now() + timeout;
        loop {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: `pfd` is a valid pollfd for the duration of the call
            // and we pass a count of 1.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Io {
                    op: "poll the vhost-user socket",
                    source: e,
                });
            }
            if r == 0 {
                return Ok(false);
            }
            if pfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
                return Ok(true);
            }
            let mut b = [0u8; 1];
            // SAFETY: `b` is a valid, writable 1-byte buffer for the
            // duration of the call; MSG_PEEK leaves the data in the socket.
            let n = unsafe {
                libc::recv(
                    fd,
                    b.as_mut_ptr().cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => return Ok(true),
                n if n > 0 => {
                    return Err(Error::Protocol(
                        "the backend sent an unsolicited message on the vhost-user socket".into(),
                    ))
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    match e.kind() {
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => {}
                        std::io::ErrorKind::ConnectionReset => return Ok(true),
                        _ => {
                            return Err(Error::Io {
                                op: "peek at the vhost-user socket",
                                source: e,
                            })
                        }
                    }
                }
            }
        }
    }

    /// The underlying vhost frontend, for requests not wrapped here (no
    /// timeout on those).
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.fe
    }
}
