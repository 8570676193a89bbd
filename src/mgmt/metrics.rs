//! The Prometheus endpoint: [`render`] turns a [`Stats`] snapshot into the
//! text exposition format, [`MetricsServer`] serves it on `GET /metrics`
//! over HTTP on a loopback address or a Unix socket ([`MetricsAddr`]).
//!
//! Every scrape takes a fresh snapshot from the daemon and builds a
//! registry from it, so nothing here keeps counters of its own. The output
//! is the OpenMetrics text format of the `prometheus-client` crate (which
//! Prometheus reads natively): counters are named `..._total`, the
//! exposition ends with `# EOF`.
//!
//! Metrics, all prefixed `vhost_user_scsi_`:
//! - per controller (label `controller`): `controller_connected`,
//!   `controller_connections_total`;
//! - per request queue (labels `controller`, `queue`):
//!   `queue_requests_total`, `queue_in_flight`;
//! - per LUN (labels `controller`, `lun`, `path`): `lun_reads_total`,
//!   `lun_writes_total`, `lun_read_bytes_total`, `lun_write_bytes_total`,
//!   `lun_other_commands_total`, `lun_errors_total`, `lun_in_flight`,
//!   `lun_latency_seconds` (label `quantile`: 0.5, 0.9, 0.99, 0.999) and
//!   `lun_latency_max_seconds`.
//! - per controller also `controller_up` (0 while it retries after an
//!   error or stopped) and `controller_errors_total`.

use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::api::Stats;
use crate::unix_socket::{listen_at, SocketAccess};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Content type of the OpenMetrics text format that [`render`] produces.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    controller: String,
    queue: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LunLabels {
    controller: String,
    lun: u16,
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuantileLabels {
    controller: String,
    lun: u16,
    path: String,
    quantile: &'static str,
}

type IntGauge = Gauge<i64>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The Prometheus (OpenMetrics) text exposition of `stats`.
pub fn render(stats: &Stats) -> String {
    let connected = Family::<ControllerLabels, IntGauge>::default();
    let connections = Family::<ControllerLabels, Counter>::default();
    let up = Family::<ControllerLabels, IntGauge>::default();
    let ctrl_errors = Family::<ControllerLabels, Counter>::default();
    let requests = Family::<QueueLabels, Counter>::default();
    let queue_in_flight = Family::<QueueLabels, IntGauge>::default();
    let reads = Family::<LunLabels, Counter>::default();
    let writes = Family::<LunLabels, Counter>::default();
    let read_bytes = Family::<LunLabels, Counter>::default();
    let write_bytes = Family::<LunLabels, Counter>::default();
    let other = Family::<LunLabels, Counter>::default();
    let errors = Family::<LunLabels, Counter>::default();
    let lun_in_flight = Family::<LunLabels, IntGauge>::default();
    let latency = Family::<QuantileLabels, FloatGauge>::default();
    let latency_max = Family::<LunLabels, FloatGauge>::default();

    for c in &stats.controllers {
        let cl = ControllerLabels {
            controller: c.name.clone(),
        };
        connected.get_or_create(&cl).set(i64::from(c.connected));
        connections.get_or_create(&cl).inc_by(c.connections);
        up.get_or_create(&cl)
            .set(i64::from(c.state != "retrying" && c.state != "stopped"));
        ctrl_errors.get_or_create(&cl).inc_by(c.errors);
        for q in &c.queues {
            let ql = QueueLabels {
                controller: c.name.clone(),
                queue: q.queue,
            };
            requests.get_or_create(&ql).inc_by(q.requests);
            queue_in_flight
                .get_or_create(&ql)
                .set(gauge_value(q.in_flight));
        }
        for l in &c.luns {
            let ll = LunLabels {
                controller: c.name.clone(),
                lun: l.lun,
                path: l.path.to_string_lossy().into_owned(),
            };
            reads.get_or_create(&ll).inc_by(l.reads);
            writes.get_or_create(&ll).inc_by(l.writes);
            read_bytes.get_or_create(&ll).inc_by(l.read_bytes);
            write_bytes.get_or_create(&ll).inc_by(l.write_bytes);
            other.get_or_create(&ll).inc_by(l.other);
            errors.get_or_create(&ll).inc_by(l.errors);
            lun_in_flight
                .get_or_create(&ll)
                .set(gauge_value(l.in_flight));
            let lat = &l.latency;
            for (quantile, us) in [
                ("0.5", lat.p50_us),
                ("0.9", lat.p90_us),
                ("0.99", lat.p99_us),
                ("0.999", lat.p999_us),
            ] {
                let labels = QuantileLabels {
                    controller: ll.controller.clone(),
                    lun: ll.lun,
                    path: ll.path.clone(),
                    quantile,
                };
                latency.get_or_create(&labels).set(us / 1e6);
            }
            latency_max.get_or_create(&ll).set(lat.max_us / 1e6);
        }
    }

    let mut reg = Registry::with_prefix("vhost_user_scsi");
    reg.register(
        "controller_connected",
        "Whether a frontend (QEMU) is connected to the controller (1) or not (0)",
        connected,
    );
    reg.register(
        "controller_connections",
        "Frontend connections accepted since the controller was created",
        connections,
    );
    reg.register(
        "controller_up",
        "Whether the controller can serve (1) or is retrying after an error or stopped (0)",
        up,
    );
    reg.register(
        "controller_errors",
        "Errors that stopped a connection or an accept of the controller",
        ctrl_errors,
    );
    reg.register(
        "queue_requests",
        "Requests taken from the request queue",
        requests,
    );
    reg.register(
        "queue_in_flight",
        "Requests of the request queue in flight now",
        queue_in_flight,
    );
    reg.register("lun_reads", "READ commands completed (any status)", reads);
    reg.register(
        "lun_writes",
        "WRITE commands completed (any status)",
        writes,
    );
    reg.register("lun_read_bytes", "Bytes read by READ commands", read_bytes);
    reg.register(
        "lun_write_bytes",
        "Bytes written by WRITE commands",
        write_bytes,
    );
    reg.register(
        "lun_other_commands",
        "Commands other than READ and WRITE completed",
        other,
    );
    reg.register(
        "lun_errors",
        "Commands that ended in CHECK CONDITION, RESERVATION CONFLICT or a virtio failure",
        errors,
    );
    reg.register("lun_in_flight", "Commands in flight now", lun_in_flight);
    reg.register(
        "lun_latency_seconds",
        "Command latency percentiles (received to response) since the LUN was added",
        latency,
    );
    reg.register(
        "lun_latency_max_seconds",
        "Longest command latency since the LUN was added",
        latency_max,
    );

    let mut out = String::new();
    // Writing to a String cannot fail, nor can our label sets.
    if let Err(e) = encode(&mut out, &reg) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    out
}

/// Where the metrics endpoint listens: a loopback TCP address or a Unix
/// socket.
///
/// Parsed from `127.0.0.1:9184`, `[::1]:9184`, `localhost:9184` (as
/// 127.0.0.1), `unix:PATH` or an absolute path. Other addresses are refused:
/// metrics are not served to the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for MetricsAddr {
    type Err = MetricsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| MetricsError::Addr(format!("{s:?}: {why}"));
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("the Unix socket path is empty"));
            }
            return Ok(MetricsAddr::Unix(path.into()));
        }
        if s.starts_with('/') {
            return Ok(MetricsAddr::Unix(s.into()));
        }
        let addr = match s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => match s.strip_prefix("localhost:").map(str::parse::<u16>) {
                Some(Ok(port)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                _ => {
                    return Err(bad(
                        "expected IP:PORT, localhost:PORT, unix:PATH or an absolute path",
                    ))
                }
            },
        };
        if !addr.ip().is_loopback() {
            return Err(bad("metrics are served on loopback or a Unix socket only"));
        }
        Ok(MetricsAddr::Tcp(addr))
    }
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddr::Tcp(a) => write!(f, "{a}"),
            MetricsAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Why the metrics endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A [`MetricsAddr`] that does not parse or is not allowed.
    #[error("invalid metrics address {0}")]
    Addr(String),
    #[error("metrics socket {} is in use by a running process", .0.display())]
    SocketInUse(PathBuf),
    #[error("{} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the metrics thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A snapshot source: called on every scrape.
pub type StatsSource = Arc<dyn Fn() -> Stats + Send + Sync>;

/// The HTTP endpoint serving [`render`] of a [`StatsSource`] on its own
/// thread until [`MetricsServer::stop`] (or drop).
///
/// A deliberately small HTTP/1.1 responder (one request per connection,
/// `Connection: close`): a scrape is one GET. It is ours rather than a
/// library's so that running out of file descriptors costs a few failed
/// scrapes, never the endpoint: an accept(2) that fails is retried after a
/// pause (tiny_http, used before, ended or panicked its accept thread).
pub struct MetricsServer {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    local_addr: Option<SocketAddr>,
    /// The socket file to remove on stop.
    unix_path: Option<PathBuf>,
}

impl MetricsServer {
    /// Listens on `addr` and serves `GET /metrics` from `source`.
    ///
    /// A stale Unix socket file (nobody listening) is replaced; a live one
    /// is refused. The socket is made mode 0600.
    pub fn start(addr: &MetricsAddr, source: StatsSource) -> Result<MetricsServer, MetricsError> {
        let listen_err = |source| MetricsError::Listen {
            addr: addr.to_string(),
            source,
        };
        let (listener, unix_path, local_addr) = match addr {
            MetricsAddr::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(listen_err)?;
                l.set_nonblocking(true).map_err(listen_err)?;
                let local = l.local_addr().ok();
                (Listening::Tcp(l), None, local)
            }
            MetricsAddr::Unix(p) => {
                remove_stale_socket(p)?;
                // Mode 0600 from its creation; the file appears once it
                // listens.
                let (l, _ino) = listen_at(p, SocketAccess::OWNER_ONLY).map_err(listen_err)?;
                if let Err(e) = l.set_nonblocking(true) {
                    let _ = std::fs::remove_file(p);
                    return Err(listen_err(e));
                }
                (Listening::Unix(l), Some(p.clone()), None)
            }
        };
        let cleanup = |unix_path: &Option<PathBuf>| {
            if let Some(p) = unix_path {
                let _ = std::fs::remove_file(p);
            }
        };
        let stop = match EventFd::new(EFD_NONBLOCK) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                cleanup(&unix_path);
                return Err(MetricsError::Thread(e));
            }
        };
        let wake = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&listener, &wake, &*source));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                cleanup(&unix_path);
                return Err(MetricsError::Thread(e));
            }
        };
        tracing::info!(%addr, "serving metrics");
        Ok(MetricsServer {
            stop,
            thread: Some(thread),
            local_addr,
            unix_path,
        })
    }

    /// The TCP address listened on (the real port when bound to port 0);
    /// `None` on a Unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Stops serving, waits for the request thread (which closes the
    /// listener) and removes the Unix socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::warn!("the metrics thread panicked");
            }
        }
        if let Some(p) = self.unix_path.take() {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove the metrics socket");
                }
            }
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Removes `path` if it is a socket nobody listens on; refuses a live
/// socket or another kind of file.
fn remove_stale_socket(path: &Path) -> Result<(), MetricsError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => Err(MetricsError::NotASocket(path.to_owned())),
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
                return Err(MetricsError::SocketInUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(|source| MetricsError::Listen {
                addr: MetricsAddr::Unix(path.to_owned()).to_string(),
                source,
            })
        }
        Err(_) => Ok(()),
    }
}

/// The listening socket.
enum Listening {
    Tcp(TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// An accepted connection.
enum Conn {
    Tcp(std::net::TcpStream),
    Unix(UnixStream),
}

impl Listening {
    fn fd(&self) -> RawFd {
        match self {
            Listening::Tcp(l) => l.as_raw_fd(),
            Listening::Unix(l) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> std::io::Result<Conn> {
        match self {
            Listening::Tcp(l) => l.accept().map(|(c, _)| Conn::Tcp(c)),
            Listening::Unix(l) => l.accept().map(|(c, _)| Conn::Unix(c)),
        }
    }
}

/// Longest a scraper may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head we read.
const MAX_HEAD: usize = 8192;

/// The accept loop: until `stop` is written.
fn serve(listener: &Listening, stop: &EventFd, source: &(dyn Fn() -> Stats + Send + Sync)) {
    let mut pause = Duration::from_millis(50);
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd during the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                continue;
            }
            std::thread::sleep(pause);
            continue;
        }
        if fds[1].revents != 0 {
            return;
        }
        match listener.accept() {
            Ok(conn) => {
                pause = Duration::from_millis(50);
                let result = match conn {
                    Conn::Tcp(c) => answer(c, source),
                    Conn::Unix(c) => answer(c, source),
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "metrics request not answered");
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => {
                // EMFILE and friends: the connection waits in the backlog;
                // try again once descriptors may be back.
                tracing::warn!(error = %e, "metrics: accept failed; retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Something [`answer`] can talk HTTP over.
trait Stream: std::io::Read + std::io::Write {
    fn timeouts(&self, t: Duration) -> std::io::Result<()>;
}

impl Stream for std::net::TcpStream {
    fn timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl Stream for UnixStream {
    fn timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

/// Read one request head and answer it.
fn answer(mut c: impl Stream, source: &(dyn Fn() -> Stats + Send + Sync)) -> std::io::Result<()> {
    c.timeouts(IO_TIMEOUT)?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if head.len() > MAX_HEAD {
            return respond(&mut c, 431, "request head too large\n", "text/plain", false);
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = render(&source());
            respond(&mut c, 200, &body, CONTENT_TYPE, head_only)
        }
        (_, "/metrics") => respond(&mut c, 405, "method not allowed\n", "text/plain", head_only),
        _ => respond(
            &mut c,
            404,
            "not found; try /metrics\n",
            "text/plain",
            head_only,
        ),
    }
}

fn respond(
    c: &mut impl std::io::Write,
    status: u16,
    body: &str,
    content_type: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    c.write_all(out.as_bytes())?;
    c.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mgmt::api::{ControllerStats, Latency, LunStats, QueueStats};
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;

    fn sample() -> Stats {
        Stats {
            controllers: vec![
                ControllerStats {
                    name: "vm1".into(),
                    connected: true,
                    state: "connected".into(),
                    last_error: None,
                    errors: 0,
                    connections: 3,
                    queues: vec![
                        QueueStats {
                            queue: 0,
                            requests: 100,
                            in_flight: 2,
                        },
                        QueueStats {
                            queue: 1,
                            requests: 50,
                            in_flight: 0,
                        },
                    ],
                    luns: vec![LunStats {
                        lun: 0,
                        path: "/img/a \"b\".img".into(),
                        reads: 10,
                        writes: 20,
                        read_bytes: 40960,
                        write_bytes: 81920,
                        other: 5,
                        errors: 1,
                        in_flight: 2,
                        latency: Latency {
                            p50_us: 50.0,
                            p90_us: 120.0,
                            p99_us: 800.0,
                            p999_us: 2500.0,
                            max_us: 10000.0,
                        },
                    }],
                },
                ControllerStats {
                    name: "vm2".into(),
                    ..Default::default()
                },
            ],
        }
    }

    const L: &str = r#"controller="vm1",lun="0",path="/img/a \"b\".img""#;

    #[test]
    fn render_sample() {
        let out = render(&sample());
        let expected = [
            "vhost_user_scsi_controller_connected{controller=\"vm1\"} 1".to_string(),
            "vhost_user_scsi_controller_connected{controller=\"vm2\"} 0".into(),
            "vhost_user_scsi_controller_connections_total{controller=\"vm1\"} 3".into(),
            "vhost_user_scsi_controller_connections_total{controller=\"vm2\"} 0".into(),
            "vhost_user_scsi_queue_requests_total{controller=\"vm1\",queue=\"0\"} 100".into(),
            "vhost_user_scsi_queue_requests_total{controller=\"vm1\",queue=\"1\"} 50".into(),
            "vhost_user_scsi_queue_in_flight{controller=\"vm1\",queue=\"0\"} 2".into(),
            format!("vhost_user_scsi_lun_reads_total{{{L}}} 10"),
            format!("vhost_user_scsi_lun_writes_total{{{L}}} 20"),
            format!("vhost_user_scsi_lun_read_bytes_total{{{L}}} 40960"),
            format!("vhost_user_scsi_lun_write_bytes_total{{{L}}} 81920"),
            format!("vhost_user_scsi_lun_other_commands_total{{{L}}} 5"),
            format!("vhost_user_scsi_lun_errors_total{{{L}}} 1"),
            format!("vhost_user_scsi_lun_in_flight{{{L}}} 2"),
            format!("vhost_user_scsi_lun_latency_seconds{{{L},quantile=\"0.5\"}} 0.00005"),
            format!("vhost_user_scsi_lun_latency_seconds{{{L},quantile=\"0.9\"}} 0.00012"),
            format!("vhost_user_scsi_lun_latency_seconds{{{L},quantile=\"0.99\"}} 0.0008"),
            format!("vhost_user_scsi_lun_latency_seconds{{{L},quantile=\"0.999\"}} 0.0025"),
            format!("vhost_user_scsi_lun_latency_max_seconds{{{L}}} 0.01"),
        ];
        let lines: Vec<&str> = out.lines().collect();
        for e in &expected {
            assert!(lines.contains(&e.as_str()), "missing {e:?} in\n{out}");
        }
        for (name, ty) in [
            ("controller_connected", "gauge"),
            ("controller_connections", "counter"),
            ("queue_requests", "counter"),
            ("queue_in_flight", "gauge"),
            ("lun_reads", "counter"),
            ("lun_writes", "counter"),
            ("lun_read_bytes", "counter"),
            ("lun_write_bytes", "counter"),
            ("lun_other_commands", "counter"),
            ("lun_errors", "counter"),
            ("lun_in_flight", "gauge"),
            ("lun_latency_seconds", "gauge"),
            ("lun_latency_max_seconds", "gauge"),
        ] {
            let help = format!("# HELP vhost_user_scsi_{name} ");
            assert!(lines.iter().any(|l| l.starts_with(&help)), "{help}");
            let type_line = format!("# TYPE vhost_user_scsi_{name} {ty}");
            assert!(lines.contains(&type_line.as_str()), "{type_line}");
        }
        assert_valid_exposition(&out);
    }

    /// Every line is a comment (HELP, TYPE, EOF) or `name{labels} value`
    /// of a family announced by the TYPE line before it.
    fn assert_valid_exposition(out: &str) {
        assert!(out.ends_with("# EOF\n"), "{out}");
        let mut family = String::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_string();
                continue;
            }
            if line.starts_with("# HELP ") || line == "# EOF" {
                continue;
            }
            assert!(!line.starts_with('#'), "{line}");
            assert!(line.starts_with(&family), "{line} outside {family}");
            let (series, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            if name_end < series.len() {
                assert!(series.ends_with('}'), "{line}");
            }
        }
    }

    #[test]
    fn render_empty() {
        // Empty families are left out altogether.
        assert_eq!(render(&Stats::default()), "# EOF\n");
    }

    #[test]
    fn addresses() {
        let tcp = |s: &str| MetricsAddr::Tcp(s.parse().unwrap());
        assert_eq!(
            "127.0.0.1:9184".parse::<MetricsAddr>().unwrap(),
            tcp("127.0.0.1:9184")
        );
        assert_eq!(
            "127.1.2.3:1".parse::<MetricsAddr>().unwrap(),
            tcp("127.1.2.3:1")
        );
        assert_eq!(
            "[::1]:9184".parse::<MetricsAddr>().unwrap(),
            tcp("[::1]:9184")
        );
        assert_eq!(
            "localhost:80".parse::<MetricsAddr>().unwrap(),
            tcp("127.0.0.1:80")
        );
        assert_eq!(
            "unix:/run/m.sock".parse::<MetricsAddr>().unwrap(),
            MetricsAddr::Unix("/run/m.sock".into())
        );
        assert_eq!(
            "unix:rel.sock".parse::<MetricsAddr>().unwrap(),
            MetricsAddr::Unix("rel.sock".into())
        );
        assert_eq!(
            "/run/m.sock".parse::<MetricsAddr>().unwrap(),
            MetricsAddr::Unix("/run/m.sock".into())
        );
        for bad in [
            "0.0.0.0:9184",
            "192.168.1.2:9184",
            "[::]:1",
            "[2001:db8::1]:1",
        ] {
            let e = bad.parse::<MetricsAddr>().unwrap_err().to_string();
            assert!(
                e.ends_with("metrics are served on loopback or a Unix socket only"),
                "{bad}: {e}"
            );
        }
        for bad in [
            "",
            "unix:",
            "9184",
            "localhost",
            "localhost:x",
            "example.com:80",
            "rel.sock",
        ] {
            assert!(bad.parse::<MetricsAddr>().is_err(), "{bad}");
        }
        assert_eq!(tcp("127.0.0.1:1").to_string(), "127.0.0.1:1");
        assert_eq!(MetricsAddr::Unix("/a".into()).to_string(), "unix:/a");
    }

    fn source() -> StatsSource {
        Arc::new(sample)
    }

    fn get(mut stream: impl Read + Write, path: &str) -> String {
        write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    }

    fn status(response: &str) -> u16 {
        response.split(' ').nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn serve_tcp() {
        let addr = "127.0.0.1:0".parse().unwrap();
        let server = MetricsServer::start(&addr, source()).unwrap();
        let at = server.local_addr().unwrap();
        assert_ne!(at.port(), 0);
        let r = get(std::net::TcpStream::connect(at).unwrap(), "/metrics");
        assert_eq!(status(&r), 200, "{r}");
        assert!(
            r.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{r}"
        );
        assert!(
            r.contains(&format!("\nvhost_user_scsi_lun_reads_total{{{L}}} 10\n")),
            "{r}"
        );
        let r = get(std::net::TcpStream::connect(at).unwrap(), "/metrics?x=1");
        assert_eq!(status(&r), 200, "{r}");
        let r = get(std::net::TcpStream::connect(at).unwrap(), "/");
        assert_eq!(status(&r), 404, "{r}");
        let mut s = std::net::TcpStream::connect(at).unwrap();
        write!(s, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        assert_eq!(status(&r), 405, "{r}");
        server.stop();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::net::TcpStream::connect(at).is_ok() {
            assert!(std::time::Instant::now() < deadline, "still listening");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn serve_unix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.sock");
        let addr = MetricsAddr::Unix(path.clone());
        // A stale socket file (nobody listening) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        let server = MetricsServer::start(&addr, source()).unwrap();
        assert_eq!(server.local_addr(), None);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let r = get(UnixStream::connect(&path).unwrap(), "/metrics");
        assert_eq!(status(&r), 200, "{r}");
        assert!(
            r.contains("\nvhost_user_scsi_controller_connected{controller=\"vm1\"} 1\n"),
            "{r}"
        );
        // A live one is refused.
        let e = MetricsServer::start(&addr, source()).err().unwrap();
        assert!(matches!(e, MetricsError::SocketInUse(_)), "{e}");
        drop(server); // Drop stops it too.
        assert!(!path.exists());
        // Another kind of file is left alone.
        std::fs::write(&path, "").unwrap();
        let e = MetricsServer::start(&addr, source()).err().unwrap();
        assert!(matches!(e, MetricsError::NotASocket(_)), "{e}");
        // A missing directory is an error naming the address.
        let missing = MetricsAddr::Unix(dir.path().join("no/such/dir.sock"));
        let e = MetricsServer::start(&missing, source()).err().unwrap();
        assert!(e.to_string().starts_with("cannot listen on unix:"), "{e}");
    }
}
