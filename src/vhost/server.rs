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

use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::ScsiBackend;
use super::device::Device;
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
    current: Mutex<Option<ShutdownHandle>>,
}

impl ShutdownSignal {
    pub fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(ShutdownSignal {
            requested: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
            current: Mutex::new(None),
        }))
    }

    pub fn trigger(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(h) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            h.shutdown();
        }
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn set_current(&self, handle: Option<ShutdownHandle>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = handle;
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
    mut listener: SocketListener,
    shutdown: &ShutdownSignal,
    server: &ServerState,
) -> Result<(), ServeError> {
    tracing::info!(socket = %config.socket.display(), queues = config.request_queues, "listening");
    while wait_for_connection(listener.listener.as_raw_fd(), shutdown.wake.as_raw_fd())? {
        if shutdown.is_requested() {
            break;
        }
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = ScsiBackend::new(
            device.clone(),
            config.nexus,
            &server.queues,
            config.queue_size,
            mem.clone(),
        )?;
        let mut daemon =
            VhostUserDaemon::new("vhost-user-scsi".into(), backend.clone(), mem.clone())
                .map_err(|e| ServeError::Daemon(e.to_string()))?;
        let handlers = daemon.get_epoll_handlers();
        for i in 0..backend.request_queues() {
            let (Some(h), Some(ring), Some(slow)) = (
                handlers.get(1 + i),
                backend.completion_fd(i),
                backend.slow_fd(i),
            ) else {
                return Err(ServeError::Daemon(format!(
                    "no worker thread for queue {i}"
                )));
            };
            h.register_listener(ring, EventSet::IN, backend.completion_token())?;
            h.register_listener(slow, EventSet::IN, backend.slow_token())?;
        }
        // The event queue knows the guest before its handshake starts: a
        // kick on the event queue that came before `connect` would be lost.
        device.events.connect(mem.clone());
        if let Err(e) = daemon.start(&mut listener.listener) {
            device.events.disconnect();
            return Err(ServeError::Daemon(e.to_string()));
        }
        tracing::info!(socket = %config.socket.display(), "frontend connected");
        server.connections.fetch_add(1, Ordering::Relaxed);
        *server.current() = Some(backend.clone());
        shutdown.set_current(daemon.shutdown_handle());
        if shutdown.is_requested() {
            daemon.request_shutdown();
        }
        let result = daemon.wait();
        shutdown.set_current(None);
        device.events.disconnect();
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => tracing::info!("frontend disconnected"),
            Err(e) => tracing::warn!(error = %e, "connection ended with an error"),
        }
        // Finish what the guest had in flight, then let the worker threads
        // go (dropping the daemon joins them).
        backend.drain_all();
        *server.current() = None;
        drop(daemon);
        device.sync_all();
    }
    device.sync_all();
    tracing::info!("shut down");
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
