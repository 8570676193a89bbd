//! The accept loop: one vhost-user connection at a time on one socket; a
//! fresh backend (queues, workers, io_urings) for each connection, so a
//! guest restart or a QEMU restart finds the daemon ready again.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::{BackendReqHandler, Listener};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{lock, ScsiBackend};
use super::device::Device;
use super::event_loop::EventLoops;
use super::protocol::Handler;
use super::ratelimit::{warn_limited, RateLimit};
use super::sigbus::FaultCell;
use super::stats::QueueStats;
use crate::block::BlockError;
use crate::scsi::NexusId;
use crate::unix_socket::{listen_at, remove_if_ours, SocketAccess};

/// What `serve` needs besides the device.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub socket: PathBuf,
    /// The I_T nexus of this controller's initiator: stable across daemon
    /// restarts (persisted reservations are keyed by it).
    pub nexus: NexusId,
    pub request_queues: usize,
    pub queue_size: usize,
    /// Bound of the request queues' adaptive polling window in µs (0:
    /// no polling; src/vhost/poll.rs).
    pub poll_max_us: u32,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {0} is already served by a live process")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: vhost::vhost_user::Error,
    },
    #[error("cannot create the backend: {0}")]
    Backend(#[from] BlockError),
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Asks a running [`serve`] to stop: it stops accepting, disconnects the
/// current frontend, drains in-flight I/O and returns.
pub struct ShutdownSignal {
    requested: AtomicBool,
    wake: EventFd,
}

impl ShutdownSignal {
    pub fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(ShutdownSignal {
            requested: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    pub fn trigger(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// What the management plane sees of a running [`serve`]: the connected
/// frontend's backend, connection count and per-queue counters.
pub struct ServerState {
    queues: Vec<Arc<QueueStats>>,
    current: Mutex<Option<ScsiBackend>>,
    connections: AtomicU64,
    health: Mutex<Health>,
}

/// What a controller's accept loop is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControllerState {
    /// Waiting for a frontend.
    Listening,
    /// Serving a frontend.
    Connected,
    /// An error stopped the last connection or accept; retrying.
    Retrying,
    /// The accept loop ended (shutdown, or an error it cannot retry).
    Stopped,
}

impl ControllerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ControllerState::Listening => "listening",
            ControllerState::Connected => "connected",
            ControllerState::Retrying => "retrying",
            ControllerState::Stopped => "stopped",
        }
    }
}

/// A controller's state, last error and error count.
#[derive(Clone, Debug)]
pub struct Health {
    pub state: ControllerState,
    pub last_error: Option<String>,
    pub errors: u64,
}

impl ServerState {
    pub fn new(request_queues: usize) -> Arc<Self> {
        Arc::new(ServerState {
            queues: (0..request_queues).map(|_| Arc::default()).collect(),
            current: Mutex::new(None),
            connections: AtomicU64::new(0),
            health: Mutex::new(Health {
                state: ControllerState::Listening,
                last_error: None,
                errors: 0,
            }),
        })
    }

    /// State, last error and error count.
    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_state(&self, state: ControllerState) {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).state = state;
    }

    /// An error the accept loop retries after: logged at error level,
    /// counted, kept as the last error.
    fn failed(&self, label: &str, error: &str) {
        tracing::error!(controller = %label, error, "controller cannot serve; retrying");
        self.record_error(ControllerState::Retrying, error);
    }

    /// The accept loop ended with `error`.
    pub fn stopped(&self, error: &str) {
        self.record_error(ControllerState::Stopped, error);
    }

    fn record_error(&self, state: ControllerState, error: &str) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        h.state = state;
        h.last_error = Some(error.to_string());
        h.errors += 1;
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<ScsiBackend>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A frontend is connected.
    pub fn connected(&self) -> bool {
        self.current().is_some()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Per request queue counters.
    pub fn queues(&self) -> &[Arc<QueueStats>] {
        &self.queues
    }

    /// Wait until the connected guest has no request for `lun` in flight
    /// (hot-detach, after the target stopped accepting new ones).
    pub fn drain_lun(&self, lun: u16) {
        let backend = self.current().clone();
        if let Some(b) = backend {
            b.drain_lun(lun);
        }
    }
}

/// A controller's listening vhost-user socket; its file is removed on drop
/// (if it is still ours).
pub struct SocketListener {
    listener: Listener,
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketListener {
    fn drop(&mut self) {
        remove_if_ours(&self.path, self.ino);
    }
}

/// Bind the vhost-user socket, refusing a path that a live process serves
/// (a stale socket file is replaced). The file appears only once the
/// socket listens, so a frontend that waits for it is never refused; it
/// has the group and mode of `access` from then on.
pub fn bind(path: &Path, access: SocketAccess) -> Result<SocketListener, ServeError> {
    let listen_err = |e: io::Error| ServeError::Listen {
        path: path.to_owned(),
        source: vhost::vhost_user::Error::SocketError(e),
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServeError::NotASocket(path.to_owned()))
        }
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
                return Err(ServeError::SocketInUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(listen_err)?;
        }
        Err(_) => {
            // /run/vhost-user-scsi/ may not exist yet (no systemd
            // RuntimeDirectory): create it as the RPC socket's is. The
            // socket's own mode and group decide who may connect.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.exists() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(dir)
                        .map_err(listen_err)?;
                }
            }
        }
    }
    let (listener, ino) = listen_at(path, access).map_err(listen_err)?;
    Ok(SocketListener {
        listener: Listener::from(listener),
        path: path.to_owned(),
        ino,
    })
}

/// How long a new connection may stay silent before its first message.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the rest of a vhost-user message (or the frontend's reading of
/// our reply) may take once it started.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new connection waits for the one being served to end before
/// it is refused.
const REPLACE_GRACE: Duration = Duration::from_secs(1);
/// Longest pause between retries after an error (fds exhausted...).
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Serve connections on `listener` until `shutdown` is triggered. Returns
/// after the last connection's I/O is drained and the disks are flushed.
/// An error that stops one connection (or an accept) is logged, recorded
/// in `server` (state `retrying`, last error) and retried with a growing
/// pause; the controller keeps its socket.
pub fn serve(
    device: Arc<Device>,
    config: &ServerConfig,
    listener: SocketListener,
    shutdown: &ShutdownSignal,
    server: &ServerState,
) -> Result<(), ServeError> {
    // A frontend that shrinks its guest memory under us must not kill the
    // daemon (src/vhost/sigbus.rs).
    super::sigbus::install()?;
    tracing::info!(socket = %config.socket.display(), queues = config.request_queues, "listening");
    let label: Arc<str> = config.socket.display().to_string().into();
    let listen_fd = listener.listener.as_raw_fd();
    let mut backoff = Duration::ZERO;
    let mut next: Option<UnixStream> = None;
    server.set_state(ControllerState::Listening);
    let result = loop {
        if !backoff.is_zero() {
            // Pause before retrying, but not past a shutdown.
            if poll_timeout(&[shutdown.wake.as_raw_fd()], Some(backoff))?.is_some() {
                break Ok(());
            }
        }
        let stream = match next.take() {
            Some(s) => s,
            None => {
                if !wait_for_connection(listen_fd, shutdown.wake.as_raw_fd())? {
                    break Ok(());
                }
                match listener.listener.accept() {
                    Ok(Some(stream)) => stream,
                    Ok(None) => continue,
                    Err(e) => {
                        server.failed(&label, &format!("accept failed: {e}"));
                        backoff = grow(backoff);
                        continue;
                    }
                }
            }
        };
        if shutdown.is_requested() {
            break Ok(());
        }
        let outcome =
            serve_connection(&device, config, &label, stream, shutdown, server, listen_fd);
        device.sync_all();
        match outcome {
            Ok(replacement) => {
                next = replacement;
                backoff = Duration::ZERO;
                server.set_state(ControllerState::Listening);
            }
            Err(e) => {
                server.failed(&label, &e.to_string());
                backoff = grow(backoff);
            }
        }
    };
    device.sync_all();
    server.set_state(ControllerState::Stopped);
    tracing::info!(socket = %config.socket.display(), "shut down");
    result
}

fn grow(backoff: Duration) -> Duration {
    (backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF)
}

/// Serve one frontend until it disconnects or `shutdown` is triggered.
/// Returns a connection that replaced this one (see [`HANDSHAKE_TIMEOUT`]).
fn serve_connection(
    device: &Arc<Device>,
    config: &ServerConfig,
    label: &Arc<str>,
    stream: UnixStream,
    shutdown: &ShutdownSignal,
    server: &ServerState,
    listen_fd: RawFd,
) -> Result<Option<UnixStream>, ServeError> {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = ScsiBackend::new(
        device.clone(),
        config.nexus,
        &server.queues,
        config.queue_size,
        mem.clone(),
        config.poll_max_us,
    )?;
    let loops = EventLoops::start(&backend, label)?;
    let fault_wake = EventFd::new(EFD_NONBLOCK)?;
    let fault = FaultCell::new(fault_wake.as_raw_fd());
    // The event queue knows the guest before its handshake starts: a kick
    // on the event queue that came before `connect` would be lost.
    device.events.connect(mem.clone(), backend.shared_log());
    let handler = Arc::new(Mutex::new(Handler::new(
        label.clone(),
        backend.clone(),
        loops,
        mem,
        fault.clone(),
    )));
    let sock_fd = stream.as_raw_fd();
    // A message is read once its first byte arrived (poll below): the rest
    // follows at once from any real frontend. One that sends half a message
    // (or never reads our replies) must not hold this thread, and with it
    // the controller's deletion and the daemon's shutdown.
    stream.set_read_timeout(Some(MESSAGE_TIMEOUT))?;
    stream.set_write_timeout(Some(MESSAGE_TIMEOUT))?;
    let closer = stream.try_clone()?;
    let mut requests = BackendReqHandler::from_stream(stream, handler.clone());
    let watchdog = ReplyWatchdog::start(closer.try_clone()?, label.clone())?;
    tracing::info!(socket = %config.socket.display(), "frontend connected");
    server.connections.fetch_add(1, Ordering::Relaxed);
    *server.current() = Some(backend.clone());
    server.set_state(ControllerState::Connected);
    let accepted = Instant::now();
    let mut heard = false;
    let mut replacement = None;
    // A new connection while this one is served waits up to REPLACE_GRACE
    // for this one to end (a frontend that reconnects may close its old
    // socket a moment after it opens the new one), then it is refused.
    let mut waiting: Option<(UnixStream, Instant)> = None;
    let mut refused = RateLimit::new();
    loop {
        let fds = [
            sock_fd,
            shutdown.wake.as_raw_fd(),
            fault_wake.as_raw_fd(),
            listen_fd,
        ];
        let handshake = (!heard).then(|| HANDSHAKE_TIMEOUT.saturating_sub(accepted.elapsed()));
        let grace = waiting
            .as_ref()
            .map(|(_, since)| REPLACE_GRACE.saturating_sub(since.elapsed()));
        let timeout = match (handshake, grace) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match poll_timeout(&fds, timeout) {
            Ok(Some(0)) => {}
            Ok(Some(1)) => {
                // Finish and publish what the guest has in flight while the
                // frontend still listens, then close: it reads final ring
                // indexes and nothing is ever completed twice.
                lock(&handler).quiesce();
                tracing::info!(socket = %config.socket.display(), "frontend disconnected for shutdown");
                break;
            }
            Ok(Some(2)) => {
                let (faults, addr) = fault.faults();
                tracing::error!(
                    socket = %config.socket.display(),
                    faults,
                    address = format_args!("{addr:#x}"),
                    "the frontend's guest memory became inaccessible (its file shrank or lost pages: SIGBUS); disconnecting it"
                );
                break;
            }
            Ok(Some(_)) => {
                // Another frontend knocks while this one is served.
                let Ok(Some(other)) = listener_accept(listen_fd) else {
                    continue;
                };
                if !heard {
                    tracing::warn!(socket = %config.socket.display(), "a connection that never spoke is replaced by a new one");
                    replacement = Some(other);
                    break;
                }
                if waiting.is_some() {
                    warn_limited!(refused, socket = %config.socket.display(), "a second frontend was refused: this controller already serves one");
                    drop(other);
                } else {
                    waiting = Some((other, Instant::now()));
                }
                continue;
            }
            Ok(None) => {
                if waiting
                    .as_ref()
                    .is_some_and(|(_, since)| since.elapsed() >= REPLACE_GRACE)
                {
                    warn_limited!(refused, socket = %config.socket.display(), "a second frontend was refused: this controller already serves one");
                    waiting = None;
                }
                if !heard && accepted.elapsed() >= HANDSHAKE_TIMEOUT {
                    tracing::warn!(socket = %config.socket.display(), timeout = ?HANDSHAKE_TIMEOUT, "the frontend sent nothing; closing the connection");
                    break;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "poll on the vhost-user socket failed");
                break;
            }
        }
        watchdog.busy(true);
        let handled = requests.handle_request();
        watchdog.busy(false);
        match handled {
            Ok(()) => heard = true,
            Err(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            ) => {
                tracing::info!(socket = %config.socket.display(), "frontend disconnected");
                break;
            }
            Err(e) => {
                tracing::warn!(socket = %config.socket.display(), error = %e, "vhost-user request failed; closing the connection");
                break;
            }
        }
    }
    if replacement.is_none() {
        replacement = waiting.map(|(w, _)| w);
    }
    let _ = closer.shutdown(std::net::Shutdown::Both);
    drop(watchdog);
    drop(requests);
    device.events.disconnect();
    // Finish what the guest had in flight, then let the worker threads go
    // (dropping the handler joins them).
    backend.drain_all();
    *server.current() = None;
    // `connected` and `state` change together (controller_list shows both).
    server.set_state(ControllerState::Listening);
    match Arc::try_unwrap(handler) {
        Ok(h) => drop(h.into_inner().unwrap_or_else(|p| p.into_inner())),
        Err(_) => tracing::error!("protocol handler still referenced at disconnect"),
    }
    Ok(replacement)
}

/// Ends a connection whose frontend does not read our replies. The vhost
/// crate retries a send that would block for as long as it takes, so a
/// frontend that stops reading (its receive buffer full) would hold the
/// message thread, and with it the controller's deletion and the daemon's
/// shutdown. A request may legitimately take long (GET_VRING_BASE waits
/// for the ring's I/O), so the watchdog acts only when a request has run
/// for [`STUCK_REPLY`] *and* our send queue still holds unread bytes: then
/// it shuts the socket down and the send fails.
struct ReplyWatchdog {
    shared: Arc<(Mutex<WatchState>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct WatchState {
    busy_since: Option<Instant>,
    stop: bool,
}

/// How long a request may run with its reply unread before the connection
/// is shut down.
const STUCK_REPLY: Duration = Duration::from_secs(3);

impl ReplyWatchdog {
    fn start(sock: UnixStream, label: Arc<str>) -> io::Result<Self> {
        let shared = Arc::new((Mutex::new(WatchState::default()), std::sync::Condvar::new()));
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vus-watchdog".into())
            .spawn(move || watch(&s, &sock, &label))?;
        Ok(ReplyWatchdog {
            shared,
            thread: Some(thread),
        })
    }

    fn busy(&self, busy: bool) {
        let (m, cv) = &*self.shared;
        let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
        st.busy_since = busy.then(Instant::now);
        cv.notify_one();
    }
}

impl Drop for ReplyWatchdog {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.shared;
            m.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
            cv.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(shared: &(Mutex<WatchState>, std::sync::Condvar), sock: &UnixStream, label: &str) {
    let (m, cv) = shared;
    let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if st.stop {
            return;
        }
        let wait = match st.busy_since {
            None => None,
            Some(since) if since.elapsed() < STUCK_REPLY => Some(STUCK_REPLY - since.elapsed()),
            Some(_) => {
                if unsent_bytes(sock) > 0 {
                    tracing::warn!(controller = %label, "the frontend does not read our replies; closing the connection");
                    let _ = sock.shutdown(std::net::Shutdown::Both);
                    return;
                }
                Some(Duration::from_millis(500))
            }
        };
        st = match wait {
            None => cv.wait(st).unwrap_or_else(|p| p.into_inner()),
            Some(d) => cv.wait_timeout(st, d).unwrap_or_else(|p| p.into_inner()).0,
        };
    }
}

/// Bytes written to `sock` that the peer has not read yet (SIOCOUTQ).
fn unsent_bytes(sock: &UnixStream) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int to the pointer we pass.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc < 0 {
        0
    } else {
        n
    }
}

/// accept(2) on a listening socket without blocking.
fn listener_accept(fd: RawFd) -> io::Result<Option<UnixStream>> {
    // SAFETY: accept4 on a listening socket fd we own; null address.
    let rc = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: accept4 returned a new fd that nothing else owns.
    Ok(Some(unsafe { UnixStream::from_raw_fd(rc) }))
}

/// Block until the listener has a connection (true) or `wake_fd` becomes
/// readable (false): the accept loops of the controllers and of the RPC
/// socket.
pub fn wait_for_connection(listen_fd: RawFd, wake_fd: RawFd) -> io::Result<bool> {
    // The wake fd wins when both are ready.
    Ok(poll_timeout(&[wake_fd, listen_fd], None)? != Some(0))
}

/// Block until one of `fds` is readable (or hung up) and return the index
/// of the first such fd, or `Ok(None)` once `timeout` passed (None: never).
fn poll_timeout(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Option<usize>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                i32::try_from(left.as_millis()).unwrap_or(i32::MAX)
            }
        };
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd for the
        // duration of the call.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if let Some(i) = pfds.iter().position(|p| p.revents != 0) {
            return Ok(Some(i));
        }
        if rc == 0 {
            return Ok(None);
        }
    }
}
