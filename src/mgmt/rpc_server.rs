//! The management socket: JSON-RPC 2.0 over a Unix stream socket.
//!
//! Framing: a client sends JSON values back to back (our client: one per
//! line; any whitespace between values is accepted); the server answers
//! every request that wants an answer with one JSON object or array and a
//! `"\n"`, in order. One thread accepts (polling the listener and an eventfd
//! that [`RpcHandle::stop`] writes), one thread serves each connection, at
//! most [`MAX_CONNECTIONS`] at a time.
//!
//! JSON-RPC 2.0 semantics (section numbers of the specification):
//! - 4: `jsonrpc` must be `"2.0"`, `method` a string, `params` (optional)
//!   a structured value, `id` a string, number or null.
//! - 4.1: a request without `id` is a notification and gets no answer,
//!   not even an error.
//! - 5.1: a value that is not JSON is a Parse error (-32700, `id` null);
//!   the byte stream cannot be resynchronised, so the connection is closed
//!   after it. A JSON value that is not a valid request is an Invalid
//!   Request (-32600).
//! - 6: an array is a batch; the answer is the array of the answers
//!   (none at all if every member was a notification); an empty array is
//!   an Invalid Request.
//!
//! One request may be at most [`MAX_REQUEST_BYTES`] long; a longer one is
//! answered with an Invalid Request error and the connection is closed.
//! A panicking method handler answers Internal error; the daemon lives on.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::api::{code, Api, ApiError};
use super::dispatch::dispatch;
use crate::unix_socket::{listen_at, remove_if_ours, SocketAccess};

/// Where `serve` listens and `ctl` connects unless told otherwise.
pub const DEFAULT_RPC_SOCKET: &str = "/run/vhost-user-scsi/rpc.sock";
/// Environment variable overriding [`DEFAULT_RPC_SOCKET`] for `ctl`.
pub const RPC_SOCKET_ENV: &str = "VHOST_USER_SCSI_RPC";
/// Largest request (one JSON value, batch included) a client may send.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Connections served at the same time; more are refused with an error.
pub const MAX_CONNECTIONS: usize = 32;
/// Error code of the answer to a connection over [`MAX_CONNECTIONS`]
/// (JSON-RPC 2.0 section 5.1: -32000 to -32099 are for the server).
pub const TOO_MANY_CONNECTIONS: i64 = -32099;
/// A client that does not read its answers for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`RpcHandle::stop`] waits for calls in progress to finish.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why the management socket cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum RpcServerError {
    #[error("{}: is already served by a live process", .0.display())]
    InUse(PathBuf),
    #[error("{}: exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    #[error("cannot remove the stale socket {}: {source}", path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot listen on {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
}

/// A bound, not yet serving, management socket. Dropped without
/// [`RpcServer::spawn`] (the daemon failed to start), it removes its file.
#[derive(Debug)]
pub struct RpcServer {
    /// `None` once [`RpcServer::spawn`] took it.
    listener: Option<UnixListener>,
    path: PathBuf,
    /// Inode of the socket file we created: [`RpcHandle::stop`] removes
    /// the file only if it is still ours.
    ino: u64,
}

impl RpcServer {
    /// Listen on `path`, a socket file of mode 0600, or 0660 and group
    /// `gid` (its directory is created if missing). A stale socket (no
    /// process accepts on it) is replaced; a live one, or a file that is
    /// not a socket, is an error.
    pub fn bind(path: &Path, gid: Option<u32>) -> Result<RpcServer, RpcServerError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(RpcServerError::NotASocket(path.to_owned()))
            }
            Ok(_) => match UnixStream::connect(path) {
                Ok(_) => return Err(RpcServerError::InUse(path.to_owned())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing a stale rpc socket");
                    std::fs::remove_file(path).map_err(|source| RpcServerError::RemoveStale {
                        path: path.to_owned(),
                        source,
                    })?;
                }
                Err(source) => {
                    return Err(RpcServerError::Bind {
                        path: path.to_owned(),
                        source,
                    })
                }
            },
            Err(_) => {}
        }
        let bind_err = |source| RpcServerError::Bind {
            path: path.to_owned(),
            source,
        };
        // The default lives in /run/vhost-user-scsi/, which may not exist
        // yet. The socket's own mode is what keeps others out.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(bind_err)?;
        }
        // The socket has its mode and group from its creation, and appears
        // only once it listens.
        let access = match gid {
            Some(gid) => SocketAccess {
                mode: Some(0o660),
                gid: Some(gid),
            },
            None => SocketAccess::OWNER_ONLY,
        };
        let (listener, ino) = listen_at(path, access).map_err(bind_err)?;
        if let Err(e) = listener.set_nonblocking(true) {
            remove_if_ours(path, ino);
            return Err(bind_err(e));
        }
        Ok(RpcServer {
            listener: Some(listener),
            path: path.to_owned(),
            ino,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve calls to `api` until [`RpcHandle::stop`] (or drop).
    pub fn spawn(mut self, api: Arc<dyn Api>) -> io::Result<RpcHandle> {
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let shared = Arc::new(Shared {
            api,
            conns: Mutex::new(Conns::default()),
            idle: Condvar::new(),
        });
        let thread_wake = wake.try_clone()?;
        let Some(listener) = self.listener.take() else {
            return Err(io::Error::other("the rpc socket is already served"));
        };
        let (path, ino) = (self.path.clone(), self.ino);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("rpc-accept".into())
                .spawn(move || accept_loop(&listener, &thread_wake, &shared))
        };
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                remove_if_ours(&path, ino);
                return Err(e);
            }
        };
        tracing::info!(path = %path.display(), "rpc socket listening");
        Ok(RpcHandle {
            path,
            ino,
            wake,
            shared,
            thread: Some(thread),
        })
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        if self.listener.take().is_some() {
            remove_if_ours(&self.path, self.ino);
        }
    }
}

/// A serving management socket.
#[derive(Debug)]
pub struct RpcHandle {
    path: PathBuf,
    ino: u64,
    wake: EventFd,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl RpcHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting, remove the socket file and end every connection
    /// after its current call (waiting up to 10 s for calls in progress;
    /// the accept thread is joined). Dropping the handle does the same.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let _ = self.wake.write(1);
        if thread.join().is_err() {
            tracing::warn!("the rpc accept thread panicked");
        }
        remove_if_ours(&self.path, self.ino);
        // Readers see end of file; a call in progress still writes its
        // answer, then its thread finds the end and exits.
        let mut conns = self.shared.lock();
        conns.stopping = true;
        for s in conns.streams.values() {
            let _ = s.shutdown(std::net::Shutdown::Read);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while !conns.streams.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    calls = conns.streams.len(),
                    "rpc calls still running after stop; not waiting for them"
                );
                break;
            }
            conns = match self.shared.idle.wait_timeout(conns, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        tracing::info!(path = %self.path.display(), "rpc socket closed");
    }
}

impl Drop for RpcHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

struct Shared {
    api: Arc<dyn Api>,
    conns: Mutex<Conns>,
    /// Signalled when a connection ends.
    idle: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    /// A clone of each open connection, to shut it down on stop.
    streams: HashMap<u64, UnixStream>,
    stopping: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn accept_loop(listener: &UnixListener, wake: &EventFd, shared: &Arc<Shared>) {
    loop {
        match crate::vhost::wait_for_connection(listener.as_raw_fd(), wake.as_raw_fd()) {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                tracing::warn!("rpc socket poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        match listener.accept() {
            Ok((stream, _)) => start_connection(stream, shared),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and the like: do not spin.
                tracing::warn!("rpc socket accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn start_connection(stream: UnixStream, shared: &Arc<Shared>) {
    // The listener is non-blocking; the connection must not be.
    if let Err(e) = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
    {
        tracing::warn!("rpc connection setup failed: {e}");
        return;
    }
    let mut conns = shared.lock();
    if conns.stopping {
        return;
    }
    if conns.streams.len() >= MAX_CONNECTIONS {
        drop(conns);
        tracing::warn!(limit = MAX_CONNECTIONS, "rpc connection refused: too many");
        let e = ApiError::new(
            TOO_MANY_CONNECTIONS,
            format!("too many management connections (limit {MAX_CONNECTIONS})"),
        );
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = write_answer(&stream, &error_answer(&e, Value::Null));
        return;
    }
    let clone = match stream.try_clone() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("rpc connection setup failed: {e}");
            return;
        }
    };
    let id = conns.next_id;
    conns.next_id += 1;
    conns.streams.insert(id, clone);
    drop(conns);
    let for_thread = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("rpc-conn".into())
        .spawn(move || {
            serve_connection(&stream, &for_thread.api);
            for_thread.lock().streams.remove(&id);
            for_thread.idle.notify_all();
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start an rpc connection thread: {e}");
        shared.lock().streams.remove(&id);
        shared.idle.notify_all();
    }
}

/// A reader that fails once more than `budget` bytes were read since the
/// budget was last reset (before each request).
struct Limited<R> {
    inner: R,
    budget: Rc<Cell<usize>>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.budget.get();
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request too large",
            ));
        }
        let max = buf.len().min(left);
        let n = self.inner.read(buf.get_mut(..max).unwrap_or_default())?;
        self.budget.set(left - n);
        Ok(n)
    }
}

fn serve_connection(stream: &UnixStream, api: &Arc<dyn Api>) {
    let budget = Rc::new(Cell::new(MAX_REQUEST_BYTES));
    let reader = Limited {
        inner: BufReader::new(stream),
        budget: budget.clone(),
    };
    let mut values = serde_json::Deserializer::from_reader(reader).into_iter::<Value>();
    loop {
        budget.set(MAX_REQUEST_BYTES);
        let answer = match values.next() {
            None => return,
            Some(Ok(v)) => handle_value(api.as_ref(), v),
            Some(Err(e)) => {
                let answer = match e.io_error_kind() {
                    Some(io::ErrorKind::InvalidData) if budget.get() == 0 => {
                        tracing::warn!(limit = MAX_REQUEST_BYTES, "rpc request too large");
                        ApiError::new(
                            code::INVALID_REQUEST,
                            format!("request larger than {MAX_REQUEST_BYTES} bytes"),
                        )
                    }
                    // The peer went away (or stop() shut the reading side).
                    Some(_) => return,
                    None => {
                        tracing::info!("rpc parse error: {e}");
                        ApiError::new(code::PARSE_ERROR, format!("parse error: {e}"))
                    }
                };
                // Section 5.1: the id of an unparseable request is null.
                let _ = write_answer(stream, &error_answer(&answer, Value::Null));
                return;
            }
        };
        if let Some(answer) = answer {
            if let Err(e) = write_answer(stream, &answer) {
                tracing::info!("rpc answer not delivered: {e}");
                return;
            }
        }
    }
}

fn write_answer(mut stream: &UnixStream, answer: &Value) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(answer).map_err(io::Error::other)?;
    bytes.push(b'\n');
    stream.write_all(&bytes)
}

fn error_answer(e: &ApiError, id: Value) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": e.code, "message": e.message}, "id": id})
}

/// The answer to one JSON value from a client: a request, a notification
/// or a batch (section 6). `None`: nothing to send.
pub(crate) fn handle_value(api: &dyn Api, v: Value) -> Option<Value> {
    match v {
        Value::Array(items) if items.is_empty() => Some(error_answer(
            &ApiError::new(code::INVALID_REQUEST, "invalid request: empty batch"),
            Value::Null,
        )),
        Value::Array(items) => {
            let answers: Vec<Value> = items
                .into_iter()
                .filter_map(|item| handle_request(api, item))
                .collect();
            // Section 6: no answer at all to a batch of notifications.
            (!answers.is_empty()).then_some(Value::Array(answers))
        }
        other => handle_request(api, other),
    }
}

fn invalid_request(message: &str, id: Value) -> Option<Value> {
    tracing::info!("rpc invalid request: {message}");
    Some(error_answer(
        &ApiError::new(code::INVALID_REQUEST, format!("invalid request: {message}")),
        id,
    ))
}

/// One request object (section 4).
fn handle_request(api: &dyn Api, v: Value) -> Option<Value> {
    let Value::Object(mut req) = v else {
        return invalid_request("not an object", Value::Null);
    };
    // `None`: a notification (section 4.1).
    let id = match req.remove("id") {
        None => None,
        Some(id @ (Value::Null | Value::String(_) | Value::Number(_))) => Some(id),
        Some(_) => return invalid_request("`id` must be a string, a number or null", Value::Null),
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    if req.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid_request("`jsonrpc` must be \"2.0\"", reply_id);
    }
    let Some(Value::String(method)) = req.remove("method") else {
        return invalid_request("`method` must be a string", reply_id);
    };
    // Section 4.2: params, when present, is an object or an array. (null is
    // let through as "no params".)
    let params = req.remove("params");
    if matches!(
        params,
        Some(Value::Bool(_) | Value::Number(_) | Value::String(_))
    ) {
        return invalid_request("`params` must be an object or an array", reply_id);
    }
    let started = Instant::now();
    let result =
        catch_unwind(AssertUnwindSafe(|| dispatch(api, &method, params))).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::warn!(method, "rpc handler panicked: {what}");
            Err(ApiError::new(
                code::INTERNAL_ERROR,
                format!("internal error in `{method}`: {what}"),
            ))
        });
    let us = started.elapsed().as_micros();
    match &result {
        Ok(_) => tracing::debug!(method, id = %reply_id, us, "rpc call"),
        Err(e) if e.code == code::INTERNAL_ERROR => {
            tracing::warn!(method, id = %reply_id, code = e.code, "rpc call failed: {}", e.message)
        }
        Err(e) => {
            tracing::info!(method, id = %reply_id, code = e.code, "rpc call refused: {}", e.message)
        }
    }
    let id = id?;
    Some(match result {
        Ok(result) => json!({"jsonrpc": "2.0", "result": result, "id": id}),
        Err(e) => error_answer(&e, id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mgmt::api::{Stats, StatsQuery};
    use crate::mgmt::dispatch::tests::Mock;

    fn answer(v: Value) -> Option<Value> {
        handle_value(&Mock::default(), v)
    }

    fn error_code(a: &Value) -> i64 {
        a["error"]["code"].as_i64().unwrap()
    }

    #[test]
    fn call_and_result() {
        let a = answer(json!({"jsonrpc": "2.0", "method": "lun_remove",
                              "params": {"controller": "c", "lun": 1}, "id": 7}))
        .unwrap();
        assert_eq!(a, json!({"jsonrpc": "2.0", "result": true, "id": 7}));
        let a = answer(json!({"jsonrpc": "2.0", "method": "stats", "id": "x"})).unwrap();
        assert_eq!(a["id"], "x");
        assert_eq!(a["result"], json!({"controllers": []}));
    }

    #[test]
    fn notifications_get_no_answer() {
        assert_eq!(answer(json!({"jsonrpc": "2.0", "method": "version"})), None);
        // Not even an error (section 4.1).
        assert_eq!(answer(json!({"jsonrpc": "2.0", "method": "nope"})), None);
        assert_eq!(
            answer(json!([{"jsonrpc": "2.0", "method": "version"}])),
            None
        );
    }

    #[test]
    fn null_id_is_a_call() {
        let a = answer(json!({"jsonrpc": "2.0", "method": "version", "id": null})).unwrap();
        assert_eq!(a["id"], Value::Null);
        assert!(a["result"].is_object());
    }

    #[test]
    fn invalid_requests() {
        for (req, id) in [
            (json!(1), Value::Null),
            (json!({"foo": "boo"}), Value::Null),
            (
                json!({"jsonrpc": "1.0", "method": "version", "id": 1}),
                json!(1),
            ),
            (json!({"method": "version", "id": 1}), json!(1)),
            (json!({"jsonrpc": "2.0", "method": 1, "id": 2}), json!(2)),
            (
                json!({"jsonrpc": "2.0", "method": "version", "id": [1]}),
                Value::Null,
            ),
            (
                json!({"jsonrpc": "2.0", "method": "stats", "params": "bar", "id": 3}),
                json!(3),
            ),
            (json!([]), Value::Null),
        ] {
            let a = answer(req.clone()).unwrap();
            assert_eq!(error_code(&a), code::INVALID_REQUEST, "{req}");
            assert_eq!(a["id"], id, "{req}");
            assert_eq!(a["jsonrpc"], "2.0");
        }
    }

    #[test]
    fn batch() {
        let a = answer(json!([
            {"jsonrpc": "2.0", "method": "version", "id": 1},
            {"jsonrpc": "2.0", "method": "version"},
            {"jsonrpc": "2.0", "method": "nope", "id": 2},
            1,
        ]))
        .unwrap();
        let a = a.as_array().unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[0]["id"], 1);
        assert_eq!(error_code(&a[1]), code::METHOD_NOT_FOUND);
        assert_eq!(error_code(&a[2]), code::INVALID_REQUEST);
    }

    struct Panics;
    impl Api for Panics {
        fn controller_create(
            &self,
            _: crate::mgmt::api::ControllerCreate,
        ) -> Result<crate::mgmt::api::ControllerInfo, ApiError> {
            unimplemented!()
        }
        fn controller_delete(&self, _: crate::mgmt::api::ControllerDelete) -> Result<(), ApiError> {
            unimplemented!()
        }
        fn controller_list(&self) -> Result<Vec<crate::mgmt::api::ControllerInfo>, ApiError> {
            unimplemented!()
        }
        fn lun_add(
            &self,
            _: crate::mgmt::api::LunAdd,
        ) -> Result<crate::mgmt::api::LunInfo, ApiError> {
            unimplemented!()
        }
        fn lun_remove(&self, _: crate::mgmt::api::LunRemove) -> Result<(), ApiError> {
            unimplemented!()
        }
        fn lun_resize(
            &self,
            _: crate::mgmt::api::LunResize,
        ) -> Result<crate::mgmt::api::LunInfo, ApiError> {
            unimplemented!()
        }
        fn stats(&self, _: StatsQuery) -> Result<Stats, ApiError> {
            panic!("boom {}", 42)
        }
        fn shutdown(&self) -> Result<(), ApiError> {
            unimplemented!()
        }
    }

    #[test]
    fn a_panic_is_an_internal_error() {
        let a = handle_value(
            &Panics,
            json!({"jsonrpc": "2.0", "method": "stats", "id": 1}),
        )
        .unwrap();
        assert_eq!(error_code(&a), code::INTERNAL_ERROR);
        assert!(a["error"]["message"].as_str().unwrap().contains("boom 42"));
    }
}
