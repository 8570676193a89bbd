//! The accept loop: one vhost-user connection at a time on one socket; a
//! fresh backend (queues, workers, io_urings) for each connection, so a
//! guest restart or a QEMU restart finds the daemon ready again.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::{BackendReqHandler, Listener};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{lock, ScsiBackend};
use super::device::Device;
use super::event_loop::EventLoops;
use super::protocol::Handler;
use super::stats::QueueStats;
use crate::block::BlockError;
use crate::scsi::NexusId;
use crate::unix_socket::{listen_at, remove_if_ours};

/// What `serve` needs besides the device.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub socket: PathBuf,
    /// The I_T nexus of this controller's initiator: stable across daemon
    /// restarts (persisted reservations are keyed by it).
    pub nexus: NexusId,
    pub request_queues: usize,
    pub queue_size: usize,
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
}

impl ServerState {
    pub fn new(request_queues: usize) -> Arc<Self> {
        Arc::new(ServerState {
            queues: (0..request_queues).map(|_| Arc::default()).collect(),
            current: Mutex::new(None),
            connections: AtomicU64::new(0),
        })
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
/// socket listens, so a frontend that waits for it is never refused.
pub fn bind(path: &Path) -> Result<SocketListener, ServeError> {
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
        Err(_) => {}
    }
    let (listener, ino) = listen_at(path, None).map_err(listen_err)?;
    Ok(SocketListener {
        listener: Listener::from(listener),
        path: path.to_owned(),
        ino,
    })
}

/// Serve connections on `listener` until `shutdown` is triggered. Returns
/// after the last connection's I/O is drained and the disks are flushed.
pub fn serve(
    device: Arc<Device>,
    config: &ServerConfig,
    listener: SocketListener,
    shutdown: &ShutdownSignal,
    server: &ServerState,
) -> Result<(), ServeError> {
    tracing::info!(socket = %config.socket.display(), queues = config.request_queues, "listening");
    let label: Arc<str> = config.socket.display().to_string().into();
    while wait_for_connection(listener.listener.as_raw_fd(), shutdown.wake.as_raw_fd())? {
        if shutdown.is_requested() {
            break;
        }
        let stream = match listener.listener.accept() {
            Ok(Some(stream)) => stream,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(socket = %config.socket.display(), error = %e, "accept failed");
                continue;
            }
        };
        serve_connection(&device, config, &label, stream, shutdown, server)?;
        device.sync_all();
    }
    device.sync_all();
    tracing::info!("shut down");
    Ok(())
}

/// Serve one frontend until it disconnects or `shutdown` is triggered.
fn serve_connection(
    device: &Arc<Device>,
    config: &ServerConfig,
    label: &Arc<str>,
    stream: UnixStream,
    shutdown: &ShutdownSignal,
    server: &ServerState,
) -> Result<(), ServeError> {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = ScsiBackend::new(
        device.clone(),
        config.nexus,
        &server.queues,
        config.queue_size,
        mem.clone(),
    )?;
    let loops = EventLoops::start(&backend, label)?;
    // The event queue knows the guest before its handshake starts: a kick
    // on the event queue that came before `connect` would be lost.
    device.events.connect(mem.clone());
    let handler = Arc::new(Mutex::new(Handler::new(
        label.clone(),
        backend.clone(),
        loops,
        mem,
    )));
    let sock_fd = stream.as_raw_fd();
    let closer = stream.try_clone()?;
    let mut requests = BackendReqHandler::from_stream(stream, handler.clone());
    tracing::info!(socket = %config.socket.display(), "frontend connected");
    server.connections.fetch_add(1, Ordering::Relaxed);
    *server.current() = Some(backend.clone());
    loop {
        match wait_for_connection(sock_fd, shutdown.wake.as_raw_fd()) {
            Ok(true) => {}
            Ok(false) => {
                // Finish and publish what the guest has in flight while the
                // frontend still listens, then close: it reads final ring
                // indexes and nothing is ever completed twice.
                lock(&handler).quiesce();
                tracing::info!(socket = %config.socket.display(), "frontend disconnected for shutdown");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "poll on the vhost-user socket failed");
                break;
            }
        }
        match requests.handle_request() {
            Ok(()) => {}
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
    let _ = closer.shutdown(std::net::Shutdown::Both);
    drop(requests);
    device.events.disconnect();
    // Finish what the guest had in flight, then let the worker threads go
    // (dropping the handler joins them).
    backend.drain_all();
    *server.current() = None;
    match Arc::try_unwrap(handler) {
        Ok(h) => drop(h.into_inner().unwrap_or_else(|p| p.into_inner())),
        Err(_) => tracing::error!("protocol handler still referenced at disconnect"),
    }
    Ok(())
}

/// Block until the listener has a connection (true) or `wake_fd` becomes
/// readable (false): the accept loops of the controllers and of the RPC
/// socket.
pub fn wait_for_connection(listen_fd: RawFd, wake_fd: RawFd) -> io::Result<bool> {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listen_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of
        // the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(false);
        }
        if fds[0].revents != 0 {
            return Ok(true);
        }
    }
}
