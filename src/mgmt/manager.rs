//! The daemon's state: its controllers and the disks they serve, changed
//! at run time through [`Api`] (JSON-RPC, the config file at start, the
//! `--socket/--disk` shorthand).
//!
//! Every change takes one lock, so concurrent calls are serialized and each
//! sees a consistent daemon. The data path never takes it: controllers run
//! on their own threads and see LUN changes through [`Device`]'s lock-free
//! table.
//!
//! With a state file ([`StateFile`]), every change over [`Api`] is written
//! to it before the call answers; a change the file cannot record is undone
//! (additions) or not made (removals: the file is written first, since a
//! removal cannot fail once checked and cannot be undone).
//!
//! A backing store is opened once however many controllers serve it (a
//! shared disk for clustered guests): they share its logical unit, so
//! reservations see each controller's guest as its own I_T nexus, and
//! COMPARE AND WRITE is atomic across all of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::api::{
    Api, ApiError, ControllerCreate, ControllerDelete, ControllerInfo, ControllerStats, Latency,
    LunAdd, LunInfo, LunRemove, LunResize, LunSpec, LunStats, QueueStats, Stats, StatsQuery,
};
use super::disk::{identity_of, open_disk};
use super::state::{SavedController, SavedState, StateFile};
use super::validate;
use crate::block::Backing;
use crate::scsi::{fnv1a64, LogicalUnit, NexusId, PrStore, Target};
use crate::units::{BlockSize, ByteCount};
use crate::unix_socket::SocketAccess;
use crate::vhost::{
    bind, param_change, serve, sync_backing, transport_reset, Device, LunBacking, ServeError,
    ServerConfig, ServerState, ShutdownSignal, WriteGate, EVT_RESET_REMOVED, EVT_RESET_RESCAN,
};

/// A backing store served as a LUN by one or more controllers.
struct Disk {
    /// Canonical path: two LUNs with the same identity are one disk.
    identity: String,
    /// The path as given.
    path: PathBuf,
    unit: Arc<LogicalUnit>,
    backing: Arc<Backing>,
    gate: Arc<WriteGate>,
    block_size: BlockSize,
}

/// The daemon-wide group and mode of controller sockets (`serve
/// --socket-group`, `--socket-mode`, or the config file's `socket_group`
/// and `socket_mode`); a controller's own values win.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketDefaults {
    pub group: Option<String>,
    pub mode: Option<String>,
    /// The daemon-wide bound of the adaptive polling window, µs (`serve
    /// --poll-max-us`, the config file's `poll_max_us`; None: 32).
    pub poll_max_us: Option<u32>,
}

/// A controller before it listens: checked, disks open, LUNs attached.
struct Prepared {
    name: String,
    socket: PathBuf,
    num_queues: u16,
    queue_size: u16,
    initiator: Option<String>,
    /// `socket_group` and `socket_mode` as given to `controller_create`
    /// (what the state file keeps).
    socket_group: Option<String>,
    socket_mode: Option<String>,
    /// `poll_max_us` as given (what the state file keeps).
    poll_given: Option<u32>,
    /// The polling bound in effect (given, else the daemon's default).
    poll_max_us: u32,
    /// In effect: the given values, else the daemon's defaults.
    access: SocketAccess,
    /// The effective group as named, and the mode, for `controller_list`.
    shown_group: Option<String>,
    nexus: NexusId,
    device: Arc<Device>,
    luns: BTreeMap<u16, Arc<Disk>>,
}

/// Controllers checked by [`Manager::prepare_all`], not listening yet.
pub struct Batch(Vec<Prepared>);

impl Batch {
    /// Number of controllers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A running controller.
struct Controller {
    p: Prepared,
    server: Arc<ServerState>,
    shutdown: Arc<ShutdownSignal>,
    thread: Option<JoinHandle<()>>,
}

impl Controller {
    fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(controller = %self.p.name, "controller thread panicked");
            }
        }
    }
}

#[derive(Default)]
struct State {
    controllers: BTreeMap<String, Controller>,
    shutting_down: bool,
}

/// The daemon: controllers, disks and the stop request.
pub struct Manager {
    state: Mutex<State>,
    pr_store: Option<Arc<dyn PrStore>>,
    /// Where every change is recorded (`--state-file`).
    state_file: Option<StateFile>,
    /// `--socket-group`, `--socket-mode`.
    sockets: SocketDefaults,
    stop: Mutex<bool>,
    stop_cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The I_T nexus of a controller whose initiator identity is `initiator`
/// (the same on both sides of a live migration).
pub fn nexus_of_initiator(initiator: &str) -> NexusId {
    let mut bytes = b"initiator:".to_vec();
    bytes.extend_from_slice(initiator.as_bytes());
    NexusId(fnv1a64(&bytes))
}

/// The I_T nexus of the controller on `socket`: stable across restarts, so
/// persisted reservations find their initiator again.
pub fn nexus_of(socket: &Path) -> NexusId {
    let dir = socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .unwrap_or_default();
    let name = dir.join(socket.file_name().unwrap_or_default());
    NexusId(fnv1a64(name.as_os_str().as_encoded_bytes()))
}

fn invalid(what: &str, e: String) -> ApiError {
    ApiError::invalid_params(format!("{what}: {e}"))
}

impl Manager {
    /// A daemon with no controllers; persistent reservations (APTPL) are
    /// saved in `pr_store` when given.
    pub fn new(pr_store: Option<Arc<dyn PrStore>>) -> Arc<Self> {
        Self::with_options(pr_store, None, SocketDefaults::default())
    }

    /// As [`Manager::new`]; with `state_file`, every controller and LUN
    /// created or removed through [`Api`] is recorded there before the
    /// call answers. `sockets`: the group and mode of controller sockets
    /// whose `controller_create` does not say.
    pub fn with_options(
        pr_store: Option<Arc<dyn PrStore>>,
        state_file: Option<StateFile>,
        sockets: SocketDefaults,
    ) -> Arc<Self> {
        Arc::new(Manager {
            state: Mutex::new(State::default()),
            pr_store,
            state_file,
            sockets,
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
        })
    }

    /// Ask the daemon to stop (signal, `shutdown` method).
    pub fn request_stop(&self) {
        *lock(&self.stop) = true;
        self.stop_cv.notify_all();
    }

    /// Block until [`Manager::request_stop`].
    pub fn wait_for_stop(&self) {
        let mut stopped = lock(&self.stop);
        while !*stopped {
            stopped = self
                .stop_cv
                .wait(stopped)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Stop every controller: each drains its guest's I/O, flushes its
    /// disks and removes its socket. No controller can be created after.
    pub fn shutdown_all(&self) {
        let mut st = lock(&self.state);
        st.shutting_down = true;
        // Trigger all first so that they drain in parallel, then join.
        for c in st.controllers.values() {
            c.shutdown.trigger();
        }
        for (_, mut c) in std::mem::take(&mut st.controllers) {
            c.stop();
        }
    }

    /// Check controllers and open their disks, all or nothing, without
    /// listening anywhere yet (the config file and the command line at
    /// start: every error comes before any socket listens).
    pub fn prepare_all(
        &self,
        list: &[(ControllerCreate, Vec<LunSpec>)],
    ) -> Result<Batch, ApiError> {
        let st = lock(&self.state);
        let mut prepared: Vec<Prepared> = Vec::with_capacity(list.len());
        for (create, luns) in list {
            let p = self.prepare(&st, &prepared, create, luns).map_err(|e| {
                ApiError::new(e.code, format!("controller {}: {}", create.name, e.message))
            })?;
            prepared.push(p);
        }
        Ok(Batch(prepared))
    }

    /// Start serving the controllers of [`Manager::prepare_all`]; if one
    /// cannot listen, none is left running.
    pub fn start_all(&self, batch: Batch) -> Result<(), ApiError> {
        let mut st = lock(&self.state);
        let mut started = Vec::new();
        for p in batch.0 {
            let name = p.name.clone();
            let clash = st.controllers.contains_key(&name)
                || st.controllers.values().any(|c| c.p.socket == p.socket);
            let result = if clash {
                Err(ApiError::exists("created meanwhile"))
            } else {
                self.start(p)
            };
            match result {
                Ok(c) => started.push(c),
                Err(e) => {
                    for mut c in started {
                        c.stop();
                    }
                    return Err(ApiError::new(
                        e.code,
                        format!("controller {name}: {}", e.message),
                    ));
                }
            }
        }
        for c in started {
            st.controllers.insert(c.p.name.clone(), c);
        }
        Ok(())
    }

    /// Write the state file (if any) with the running controllers and those
    /// of `batch`: at start, before anything listens, so that the file
    /// exists and holds the effective values from the first start on.
    pub fn save_state(&self, batch: &Batch) -> Result<(), ApiError> {
        let st = lock(&self.state);
        self.persist(|| Self::saved(st.controllers.values().map(|c| &c.p).chain(batch.0.iter())))
    }

    /// The state file's content for `controllers`: every value as in
    /// effect (LUN numbers, block sizes, serials), paths absolute.
    fn saved<'a>(controllers: impl Iterator<Item = &'a Prepared>) -> SavedState {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        let mut controllers: Vec<SavedController> = controllers
            .map(|p| SavedController {
                name: p.name.clone(),
                socket: absolute(&p.socket),
                num_queues: Some(p.num_queues),
                queue_size: Some(p.queue_size),
                initiator: p.initiator.clone(),
                socket_group: p.socket_group.clone(),
                socket_mode: p.socket_mode.clone(),
                poll_max_us: p.poll_given,
                luns: p
                    .luns
                    .iter()
                    .map(|(&lun, d)| match d.unit.cfg.passthrough {
                        // The device answers for its block size and serial.
                        true => LunSpec {
                            lun: Some(lun),
                            path: absolute(&d.path),
                            readonly: false,
                            block_size: None,
                            serial: None,
                            passthrough: true,
                        },
                        false => LunSpec {
                            lun: Some(lun),
                            path: absolute(&d.path),
                            readonly: d.unit.cfg.readonly,
                            block_size: Some(d.block_size.bytes()),
                            serial: Some(d.unit.cfg.serial.clone()),
                            passthrough: false,
                        },
                    })
                    .collect(),
            })
            .collect();
        controllers.sort_by(|a, b| a.name.cmp(&b.name));
        SavedState {
            controllers,
            ..SavedState::default()
        }
    }

    /// The state file's content for the running controllers.
    fn saved_now(st: &State) -> SavedState {
        Self::saved(st.controllers.values().map(|c| &c.p))
    }

    /// Write `state()` to the state file, if there is one. A failure is
    /// logged and returned as a FAILED error saying nothing was changed
    /// (the caller undoes its change, or has not made it yet).
    fn persist(&self, state: impl FnOnce() -> SavedState) -> Result<(), ApiError> {
        let Some(file) = &self.state_file else {
            return Ok(());
        };
        file.save(&state()).map_err(|e| {
            tracing::error!(file = %file.path().display(), error = %e, "cannot write the state file");
            ApiError::failed(format!(
                "cannot write the state file {}: {e}; nothing was changed",
                file.path().display()
            ))
        })
    }

    /// Check a controller and open its disks (nothing listens yet).
    /// `pending`: controllers prepared in the same batch.
    fn prepare(
        &self,
        st: &State,
        pending: &[Prepared],
        create: &ControllerCreate,
        luns: &[LunSpec],
    ) -> Result<Prepared, ApiError> {
        if st.shutting_down {
            return Err(ApiError::new(
                super::api::code::SHUTTING_DOWN,
                "the daemon is shutting down",
            ));
        }
        validate::controller_name(&create.name).map_err(|e| invalid("name", e))?;
        let num_queues = create.num_queues.unwrap_or(validate::DEFAULT_NUM_QUEUES);
        validate::num_queues(num_queues).map_err(|e| invalid("num_queues", e))?;
        let queue_size = create.queue_size.unwrap_or(validate::DEFAULT_QUEUE_SIZE);
        validate::queue_size(queue_size).map_err(|e| invalid("queue_size", e))?;
        let poll_max_us = create
            .poll_max_us
            .or(self.sockets.poll_max_us)
            .unwrap_or(crate::vhost::poll::DEFAULT_POLL_MAX_US);
        validate::poll_max_us(poll_max_us).map_err(|e| invalid("poll_max_us", e))?;
        let all = || st.controllers.values().map(|c| &c.p).chain(pending.iter());
        if all().any(|p| p.name == create.name) {
            return Err(ApiError::exists(format!(
                "a controller named `{}` exists",
                create.name
            )));
        }
        if let Some(i) = &create.initiator {
            validate::initiator(i).map_err(|e| invalid("initiator", e))?;
        }
        // Controllers share a nexus only when they are told to (the two
        // ends of a live migration).
        let nexus = match &create.initiator {
            Some(i) => nexus_of_initiator(i),
            None => nexus_of(&create.socket),
        };
        let same_socket = |p: &Prepared| {
            p.socket == create.socket
                || (create.initiator.is_none() && p.initiator.is_none() && p.nexus == nexus)
        };
        if let Some(other) = all().find(|p| same_socket(p)) {
            return Err(ApiError::exists(format!(
                "socket {} is already used by controller `{}`",
                create.socket.display(),
                other.name
            )));
        }
        check_socket_free(&create.socket)?;
        let (access, shown_group) = self.socket_access(create)?;
        let device = Arc::new(Device::new(
            Target::empty(self.pr_store.clone()),
            Vec::new(),
        ));
        let mut p = Prepared {
            name: create.name.clone(),
            socket: create.socket.clone(),
            num_queues,
            queue_size,
            initiator: create.initiator.clone(),
            socket_group: create.socket_group.clone(),
            socket_mode: create.socket_mode.clone(),
            poll_given: create.poll_max_us,
            poll_max_us,
            access,
            shown_group,
            nexus,
            device,
            luns: BTreeMap::new(),
        };
        for (i, spec) in luns.iter().enumerate() {
            let lun = self.attach(st, pending, &mut p, spec).map_err(|e| {
                ApiError::new(
                    e.code,
                    format!("lun[{i}] ({}): {}", spec.path.display(), e.message),
                )
            })?;
            tracing::debug!(controller = %p.name, lun, "LUN prepared");
        }
        Ok(p)
    }

    /// The group and mode of `create`'s socket: its own, else the
    /// daemon's defaults; a group and no mode is 0660. Also the group as
    /// named, for `controller_list`.
    fn socket_access(
        &self,
        create: &ControllerCreate,
    ) -> Result<(SocketAccess, Option<String>), ApiError> {
        let (group, group_key) = match &create.socket_group {
            Some(g) => (Some(g), "socket_group"),
            None => (self.sockets.group.as_ref(), "the daemon's --socket-group"),
        };
        let gid = group
            .map(|g| validate::socket_group(g))
            .transpose()
            .map_err(|e| invalid(group_key, e))?;
        let (mode, mode_key) = match &create.socket_mode {
            Some(m) => (Some(m), "socket_mode"),
            None => (self.sockets.mode.as_ref(), "the daemon's --socket-mode"),
        };
        let mode = mode
            .map(|m| validate::socket_mode(m))
            .transpose()
            .map_err(|e| invalid(mode_key, e))?
            .or(gid.map(|_| validate::GROUP_SOCKET_MODE));
        Ok((SocketAccess { mode, gid }, group.cloned()))
    }

    /// Bind the socket and start serving.
    fn start(&self, p: Prepared) -> Result<Controller, ApiError> {
        let listener = bind(&p.socket, p.access).map_err(|e| match e {
            ServeError::SocketInUse(_) => ApiError::exists(e.to_string()),
            other => ApiError::failed(other.to_string()),
        })?;
        let server = ServerState::new(usize::from(p.num_queues));
        let shutdown =
            ShutdownSignal::new().map_err(|e| ApiError::failed(format!("eventfd: {e}")))?;
        let config = ServerConfig {
            socket: p.socket.clone(),
            nexus: p.nexus,
            request_queues: usize::from(p.num_queues),
            queue_size: usize::from(p.queue_size),
            poll_max_us: p.poll_max_us,
        };
        let thread = {
            let device = p.device.clone();
            let server = server.clone();
            let shutdown = shutdown.clone();
            let name = p.name.clone();
            std::thread::Builder::new()
                .name(format!("ctrl-{}", p.name))
                .spawn(move || {
                    if let Err(e) = serve(device, &config, listener, &shutdown, &server) {
                        tracing::error!(controller = %name, error = %e, "controller stopped");
                        server.stopped(&e.to_string());
                    }
                })
                .map_err(|e| ApiError::failed(format!("cannot start a thread: {e}")))?
        };
        tracing::info!(controller = %p.name, socket = %p.socket.display(), luns = p.luns.len(), "controller created");
        Ok(Controller {
            p,
            server,
            shutdown,
            thread: Some(thread),
        })
    }

    /// Attach `spec` to `p` (not announced: the caller does that). Returns
    /// the LUN number.
    fn attach(
        &self,
        st: &State,
        pending: &[Prepared],
        p: &mut Prepared,
        spec: &LunSpec,
    ) -> Result<u16, ApiError> {
        if let Some(l) = spec.lun {
            validate::lun(l).map_err(|e| invalid("lun", e))?;
        }
        if let Some(bs) = spec.block_size {
            validate::block_size(bs).map_err(|e| invalid("block_size", e))?;
        }
        if let Some(s) = &spec.serial {
            validate::serial(s).map_err(|e| invalid("serial", e))?;
        }
        if spec.passthrough {
            validate::passthrough(
                spec.readonly,
                spec.block_size.is_some(),
                spec.serial.is_some(),
            )
            .map_err(|e| invalid("passthrough", e))?;
        }
        let lun = match spec.lun {
            Some(l) if p.luns.contains_key(&l) => {
                return Err(ApiError::exists(format!("LUN {l} of `{}` exists", p.name)))
            }
            Some(l) => l,
            None => (0..=crate::scsi::MAX_LUN)
                .find(|l| !p.luns.contains_key(l))
                .ok_or_else(|| ApiError::failed("no free LUN number"))?,
        };
        let identity = identity_of(&spec.path);
        if let Some((l, _)) = p.luns.iter().find(|(_, d)| d.identity == identity) {
            return Err(ApiError::exists(format!(
                "{} is already LUN {l} of `{}`",
                spec.path.display(),
                p.name
            )));
        }
        let shared = st
            .controllers
            .values()
            .map(|c| &c.p)
            .chain(pending.iter())
            .flat_map(|c| c.luns.values())
            .find(|d| d.identity == identity)
            .cloned();
        let disk = match shared {
            Some(d) => {
                check_compatible(&d, spec)?;
                d
            }
            None => {
                let (cfg, backing) =
                    open_disk(spec, lun).map_err(|e| ApiError::failed(e.to_string()))?;
                let block_size = cfg.block_size;
                let unit = p
                    .device
                    .target
                    .make_unit(cfg)
                    .map_err(|e| ApiError::failed(e.to_string()))?;
                Arc::new(Disk {
                    identity,
                    path: spec.path.clone(),
                    unit,
                    backing: Arc::new(backing),
                    gate: Arc::default(),
                    block_size,
                })
            }
        };
        let lb = LunBacking::shared(
            lun,
            disk.backing.clone(),
            disk.block_size,
            disk.gate.clone(),
            usize::from(p.num_queues),
        );
        p.device
            .attach(disk.unit.clone(), lb)
            .map_err(|e| ApiError::exists(e.to_string()))?;
        p.luns.insert(lun, disk);
        Ok(lun)
    }

    fn lun_info(p: &Prepared, lun: u16, disk: &Disk) -> LunInfo {
        let num_blocks = p.device.target.capacity(lun).map_or(0, |b| b.0);
        LunInfo {
            lun,
            path: disk.path.clone(),
            readonly: disk.unit.cfg.readonly,
            block_size: disk.block_size.bytes(),
            num_blocks,
            size: num_blocks.saturating_mul(u64::from(disk.block_size.bytes())),
            serial: disk.unit.cfg.serial.clone(),
            passthrough: disk.unit.cfg.passthrough,
        }
    }

    fn info(c: &Controller) -> ControllerInfo {
        let p = &c.p;
        ControllerInfo {
            name: p.name.clone(),
            socket: p.socket.clone(),
            num_queues: p.num_queues,
            queue_size: p.queue_size,
            initiator: p.initiator.clone(),
            socket_group: p.shown_group.clone(),
            socket_mode: p.access.mode.map(|m| format!("{m:04o}")),
            poll_max_us: p.poll_max_us,
            connected: c.server.connected(),
            state: c.server.health().state.as_str().to_string(),
            last_error: c.server.health().last_error,
            luns: p
                .luns
                .iter()
                .map(|(l, d)| Self::lun_info(p, *l, d))
                .collect(),
        }
    }

    fn stats_of(c: &Controller, lun: Option<u16>) -> ControllerStats {
        let p = &c.p;
        let luns = p
            .device
            .luns()
            .iter()
            .filter(|lb| lun.map_or(true, |l| l == lb.lun))
            .map(|lb| {
                let s = lb.stats.snapshot();
                let us = |q: f64| s.percentile_ns(q) as f64 / 1000.0;
                LunStats {
                    lun: lb.lun,
                    path: p
                        .luns
                        .get(&lb.lun)
                        .map(|d| d.path.clone())
                        .unwrap_or_else(|| lb.backing.path().to_owned()),
                    reads: s.reads,
                    writes: s.writes,
                    read_bytes: s.read_bytes,
                    write_bytes: s.write_bytes,
                    other: s.other,
                    errors: s.errors,
                    in_flight: s.in_flight,
                    latency: Latency {
                        p50_us: us(0.5),
                        p90_us: us(0.9),
                        p99_us: us(0.99),
                        p999_us: us(0.999),
                        max_us: s.max_ns as f64 / 1000.0,
                    },
                }
            })
            .collect::<Vec<_>>();
        let mut luns = luns;
        luns.sort_by_key(|l| l.lun);
        let health = c.server.health();
        ControllerStats {
            name: p.name.clone(),
            connected: c.server.connected(),
            state: health.state.as_str().to_string(),
            last_error: health.last_error,
            errors: health.errors,
            connections: c.server.connections(),
            queues: c
                .server
                .queues()
                .iter()
                .enumerate()
                .map(|(i, q)| QueueStats {
                    queue: u16::try_from(i).unwrap_or(u16::MAX),
                    requests: q.requests(),
                    in_flight: q.in_flight(),
                })
                .collect(),
            luns,
        }
    }
}

/// A path another live process serves cannot be taken; a stale socket
/// file can (bind replaces it).
fn check_socket_free(path: &Path) -> Result<(), ApiError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => Err(ApiError::failed(format!(
            "{} exists and is not a socket",
            path.display()
        ))),
        Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => {
            Err(ApiError::exists(format!(
                "socket {} is already served by a live process",
                path.display()
            )))
        }
        _ => Ok(()),
    }
}

/// A disk another controller serves can be attached again only as it is.
fn check_compatible(d: &Disk, spec: &LunSpec) -> Result<(), ApiError> {
    let clash = |what: &str| {
        ApiError::exists(format!(
            "{} is already served with a different {what}; a shared disk must be attached the same way everywhere",
            spec.path.display()
        ))
    };
    if spec.passthrough != d.unit.cfg.passthrough {
        return Err(clash("passthrough setting"));
    }
    if spec.readonly != d.unit.cfg.readonly {
        return Err(clash("readonly setting"));
    }
    if spec.block_size.is_some_and(|bs| bs != d.block_size.bytes()) {
        return Err(clash("block size"));
    }
    if spec
        .serial
        .as_ref()
        .is_some_and(|s| *s != d.unit.cfg.serial)
    {
        return Err(clash("serial"));
    }
    Ok(())
}

impl Manager {
    /// Unmap `lun` of `c`: new commands fail from here; those in flight
    /// finish, then the backing is flushed. No event is raised.
    fn detach_lun(c: &mut Controller, lun: u16) {
        let lb = c.p.device.detach(lun);
        c.server.drain_lun(lun);
        if let Some(lb) = lb {
            sync_backing(&lb);
        }
        c.p.luns.remove(&lun);
    }

    fn controller<'a>(st: &'a mut State, name: &str) -> Result<&'a mut Controller, ApiError> {
        st.controllers
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(format!("no controller named `{name}`")))
    }
}

impl Api for Manager {
    fn controller_create(&self, p: ControllerCreate) -> Result<ControllerInfo, ApiError> {
        let mut st = lock(&self.state);
        let prepared = self.prepare(&st, &[], &p, &[])?;
        let c = self.start(prepared)?;
        let info = Self::info(&c);
        st.controllers.insert(p.name.clone(), c);
        if let Err(e) = self.persist(|| Self::saved_now(&st)) {
            if let Some(mut c) = st.controllers.remove(&p.name) {
                c.stop();
            }
            return Err(e);
        }
        Ok(info)
    }

    fn controller_delete(&self, p: ControllerDelete) -> Result<(), ApiError> {
        let mut st = lock(&self.state);
        let c = Self::controller(&mut st, &p.name)?;
        if c.server.connected() && !p.force {
            return Err(ApiError::busy(format!(
                "a guest is connected to `{}`; delete with force to disconnect it",
                p.name
            )));
        }
        self.persist(|| {
            let mut saved = Self::saved_now(&st);
            saved.controllers.retain(|c| c.name != p.name);
            saved
        })?;
        if let Some(mut c) = st.controllers.remove(&p.name) {
            c.stop();
            tracing::info!(controller = %p.name, "controller deleted");
        }
        Ok(())
    }

    fn controller_list(&self) -> Result<Vec<ControllerInfo>, ApiError> {
        let st = lock(&self.state);
        Ok(st.controllers.values().map(Self::info).collect())
    }

    fn lun_add(&self, p: LunAdd) -> Result<LunInfo, ApiError> {
        let mut st = lock(&self.state);
        // Take the controller out while attaching (the disk lookup reads
        // every other controller), then put it back.
        let mut c = st.controllers.remove(&p.controller).ok_or_else(|| {
            ApiError::not_found(format!("no controller named `{}`", p.controller))
        })?;
        let result = self.attach(&st, &[], &mut c.p, &p.spec());
        st.controllers.insert(p.controller.clone(), c);
        let lun = result?;
        // Recorded before the guest hears of it: undone without an event.
        let saved = self.persist(|| Self::saved_now(&st));
        let c = Self::controller(&mut st, &p.controller)?;
        if let Err(e) = saved {
            Self::detach_lun(c, lun);
            return Err(e);
        }
        let info = c.p.luns.get(&lun).map(|d| Self::lun_info(&c.p, lun, d));
        c.p.device.target.luns_changed_for(c.p.nexus);
        c.p.device
            .events
            .push(transport_reset(lun, EVT_RESET_RESCAN));
        tracing::info!(controller = %c.p.name, lun, path = %p.path.display(), "LUN added");
        info.ok_or_else(|| ApiError::new(super::api::code::INTERNAL_ERROR, "LUN vanished"))
    }

    fn lun_remove(&self, p: LunRemove) -> Result<(), ApiError> {
        let mut st = lock(&self.state);
        let c = Self::controller(&mut st, &p.controller)?;
        if !c.p.luns.contains_key(&p.lun) {
            return Err(ApiError::not_found(format!(
                "no LUN {} in `{}`",
                p.lun, p.controller
            )));
        }
        self.persist(|| {
            let mut saved = Self::saved_now(&st);
            for c in saved.controllers.iter_mut() {
                if c.name == p.controller {
                    c.luns.retain(|l| l.lun != Some(p.lun));
                }
            }
            saved
        })?;
        let c = Self::controller(&mut st, &p.controller)?;
        Self::detach_lun(c, p.lun);
        c.p.device.target.luns_changed_for(c.p.nexus);
        c.p.device
            .events
            .push(transport_reset(p.lun, EVT_RESET_REMOVED));
        tracing::info!(controller = %p.controller, lun = p.lun, "LUN removed");
        Ok(())
    }

    fn lun_resize(&self, p: LunResize) -> Result<LunInfo, ApiError> {
        let mut st = lock(&self.state);
        let c = Self::controller(&mut st, &p.controller)?;
        let disk = c.p.luns.get(&p.lun).cloned().ok_or_else(|| {
            ApiError::not_found(format!("no LUN {} in `{}`", p.lun, p.controller))
        })?;
        if disk.unit.cfg.passthrough {
            return Err(ApiError::failed(format!(
                "{} is a passthrough LUN: the device reports its own capacity",
                disk.path.display()
            )));
        }
        let bs = disk.block_size;
        let size = match p.size {
            Some(bytes) => {
                if bytes == 0 || !ByteCount(bytes).is_multiple_of(bs) {
                    return Err(ApiError::invalid_params(format!(
                        "size: {bytes} is not a positive multiple of the block size {bs}"
                    )));
                }
                disk.backing
                    .grow_to(ByteCount(bytes))
                    .map_err(|e| ApiError::failed(format!("{}: {e}", disk.path.display())))?
            }
            None => disk
                .backing
                .refresh_size()
                .map_err(|e| ApiError::failed(format!("{}: {e}", disk.path.display())))?,
        };
        let blocks = size.to_blocks(bs);
        let current = disk.unit.capacity();
        if blocks < current {
            return Err(ApiError::failed(format!(
                "{} shrank from {} to {} blocks; not followed (the guest would lose data it may still address)",
                disk.path.display(),
                current.0,
                blocks.0
            )));
        }
        if blocks > current {
            // The unit is shared by every controller serving this disk:
            // the unit attention reaches all of their nexuses; each guest
            // also gets a PARAM_CHANGE event for its own LUN number.
            c.p.device.target.capacity_changed(p.lun, blocks);
            for other in st.controllers.values() {
                for (l, d) in &other.p.luns {
                    if Arc::ptr_eq(d, &disk) {
                        other.p.device.events.push(param_change(*l, 0x2a, 0x09));
                    }
                }
            }
            tracing::info!(controller = %p.controller, lun = p.lun, old = current.0, new = blocks.0, "LUN resized");
        }
        let c = Self::controller(&mut st, &p.controller)?;
        Ok(Self::lun_info(&c.p, p.lun, &disk))
    }

    fn stats(&self, q: StatsQuery) -> Result<Stats, ApiError> {
        let st = lock(&self.state);
        if let Some(name) = &q.controller {
            let c = st
                .controllers
                .get(name)
                .ok_or_else(|| ApiError::not_found(format!("no controller named `{name}`")))?;
            if let Some(l) = q.lun {
                if !c.p.luns.contains_key(&l) {
                    return Err(ApiError::not_found(format!("no LUN {l} in `{name}`")));
                }
            }
        }
        let controllers = st
            .controllers
            .values()
            .filter(|c| q.controller.as_ref().map_or(true, |n| *n == c.p.name))
            .map(|c| Self::stats_of(c, q.lun))
            .collect();
        Ok(Stats { controllers })
    }

    fn shutdown(&self) -> Result<(), ApiError> {
        tracing::info!("shutdown requested over RPC");
        self.request_stop();
        Ok(())
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.shutdown_all();
    }
}
