//! The `--config FILE` loader: a TOML file with the daemon's sockets and
//! the controllers (and their LUNs) to create at start-up.
//!
//! The schema is that of the JSON-RPC parameters: a `[[controller]]` holds
//! the fields of `controller_create`, each `[[controller.lun]]` the fields
//! of `lun_add` without `controller`:
//!
//! ```toml
//! rpc_socket = "/run/vhost-user-scsi/rpc.sock"
//! metrics_addr = "127.0.0.1:9184"     # or "unix:/run/vhost-user-scsi/metrics.sock"
//! pr_state = "/var/lib/vhost-user-scsi/pr"
//! # state_file = "/var/lib/vhost-user-scsi/state.json"  (then no [[controller]])
//!
//! [[controller]]
//! name = "vm1"
//! socket = "/run/vhost-user-scsi/vm1.sock"
//! num_queues = 2
//!
//! [[controller.lun]]
//! lun = 0
//! path = "/var/lib/images/vm1.img"
//! ```
//!
//! Unknown keys are errors. Every error is one line naming the file, the
//! position and the key, e.g.
//! `/etc/vus.toml:3:14: controller[0].num_queues: 0 is out of range 1..=64`.
//! Besides the per-field checks of [`super::validate`], the loader refuses
//! duplicate controller names, duplicate sockets and duplicate explicit LUN
//! numbers within a controller, and checks `metrics_addr`.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::api::{ControllerCreate, LunSpec};
use super::metrics::MetricsAddr;
use super::validate;

/// A loaded and checked configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Where the JSON-RPC server listens.
    pub rpc_socket: Option<PathBuf>,
    /// Where the Prometheus endpoint listens (parses as a [`MetricsAddr`]).
    pub metrics_addr: Option<String>,
    /// Directory for persistent-reservation state.
    pub pr_state: Option<PathBuf>,
    /// The state file (`--state-file`, [`super::state`]).
    pub state_file: Option<PathBuf>,
    /// Group of every controller socket (`--socket-group`).
    pub socket_group: Option<String>,
    /// Mode of every controller socket (`--socket-mode`).
    pub socket_mode: Option<String>,
    /// Bound of every controller's adaptive polling window, µs
    /// (`--poll-max-us`).
    pub poll_max_us: Option<u32>,
    /// Group of the RPC socket, then mode 0660 (`--rpc-socket-group`).
    pub rpc_socket_group: Option<String>,
    /// The `[[controller]]` tables, in file order.
    pub controllers: Vec<ControllerConfig>,
}

/// One `[[controller]]`: what `controller_create` and then `lun_add` for
/// each LUN would be given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    pub create: ControllerCreate,
    /// The `[[controller.lun]]` tables, in file order.
    pub luns: Vec<LunSpec>,
}

/// Why a configuration file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {reason}", path.display())]
    Read {
        path: PathBuf,
        /// The OS error's description.
        reason: String,
        kind: std::io::ErrorKind,
    },
    /// The file is not valid TOML, does not fit the schema or fails a check.
    #[error("{}", Located { file, at: *at, key, message })]
    Invalid {
        file: PathBuf,
        /// 1-based line and column (in characters) of the offending text.
        at: Option<(usize, usize)>,
        /// Key path, e.g. `controller[0].lun[1].path`; empty for syntax
        /// errors and for errors at the top level.
        key: String,
        message: String,
    },
}

/// Display of [`ConfigError::Invalid`]: `file:line:col: key: message`.
struct Located<'a> {
    file: &'a Path,
    at: Option<(usize, usize)>,
    key: &'a str,
    message: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.at {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", OneLine(self.key))?;
        }
        write!(f, ": {}", OneLine(self.message))
    }
}

/// Text with its control characters escaped (`\n`, `\u{1b}`), so that an
/// error stays one line whatever key or value the file quotes (a TOML or
/// JSON key may hold a newline; found by fuzzing).
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Reads and checks the configuration file `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_owned(),
        reason: io_reason(&e),
        kind: e.kind(),
    })?;
    parse(&text, path)
}

/// The description of an I/O error without Rust's "(os error N)" suffix.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    }
}

/// Parses and checks configuration text; `file` only names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let err = |span: Option<Range<usize>>, key: String, message: String| ConfigError::Invalid {
        file: file.to_owned(),
        at: span.map(|s| line_col(text, s.start)),
        key,
        message,
    };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| err(e.span(), String::new(), e.message().to_owned()))?;
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = key_path(e.path());
        let inner = e.into_inner();
        let message = hint(&key, inner.message());
        err(inner.span(), key, message)
    })?;
    raw.check()
        .map_err(|c| err(Some(c.span), c.key, c.message))?;
    Ok(raw.into_config())
}

/// `serde_path_to_error`'s path as we print it: `controller[0].lun[1]`,
/// empty at the top level, without the inner fields of [`Spanned`].
pub(crate) fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut s = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => s.push_str(&format!("[{index}]")),
            Segment::Map { key } if key.starts_with("$__serde_spanned") => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(key);
            }
            Segment::Unknown => s.push_str(".?"),
        }
    }
    s
}

/// A hint for the common mistake of `[controller]` for `[[controller]]`.
fn hint(key: &str, message: &str) -> String {
    let table = if key == "controller" {
        "[[controller]]"
    } else if key.starts_with("controller[") && key.ends_with("].lun") && !key.contains("].lun[") {
        "[[controller.lun]]"
    } else {
        return message.to_owned();
    };
    if message.contains("expected a sequence") {
        format!("{message} (write {table} tables)")
    } else {
        message.to_owned()
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

// The file as written, with the position of every value for the checks.
// serde's `flatten` does not work with `deny_unknown_fields`, hence these
// separate structs converted into the API types.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    rpc_socket: Option<Spanned<PathBuf>>,
    #[serde(default)]
    metrics_addr: Option<Spanned<String>>,
    #[serde(default)]
    pr_state: Option<Spanned<PathBuf>>,
    #[serde(default)]
    state_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    socket_group: Option<Spanned<String>>,
    #[serde(default)]
    socket_mode: Option<Spanned<String>>,
    #[serde(default)]
    poll_max_us: Option<Spanned<u32>>,
    #[serde(default)]
    rpc_socket_group: Option<Spanned<String>>,
    #[serde(default)]
    controller: Vec<RawController>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawController {
    name: Spanned<String>,
    socket: Spanned<PathBuf>,
    #[serde(default)]
    num_queues: Option<Spanned<u16>>,
    #[serde(default)]
    queue_size: Option<Spanned<u16>>,
    #[serde(default)]
    initiator: Option<Spanned<String>>,
    #[serde(default)]
    socket_group: Option<Spanned<String>>,
    #[serde(default)]
    socket_mode: Option<Spanned<String>>,
    #[serde(default)]
    poll_max_us: Option<Spanned<u32>>,
    #[serde(default)]
    lun: Vec<RawLun>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLun {
    #[serde(default)]
    lun: Option<Spanned<u16>>,
    path: Spanned<PathBuf>,
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    block_size: Option<Spanned<u32>>,
    #[serde(default)]
    serial: Option<Spanned<String>>,
    #[serde(default)]
    passthrough: Option<Spanned<bool>>,
}

/// A failed check: where, which key, why.
struct Check {
    span: Range<usize>,
    key: String,
    message: String,
}

/// Runs `f` on the value; a failure is reported at the value.
fn field<T>(
    v: &Spanned<T>,
    key: impl FnOnce() -> String,
    f: impl FnOnce(&T) -> Result<(), String>,
) -> Result<(), Check> {
    f(v.get_ref()).map_err(|message| Check {
        span: v.span(),
        key: key(),
        message,
    })
}

impl RawConfig {
    fn check(&self) -> Result<(), Check> {
        if let Some(p) = &self.rpc_socket {
            field(p, || "rpc_socket".into(), |p| validate::path(p))?;
        }
        if let Some(a) = &self.metrics_addr {
            field(
                a,
                || "metrics_addr".into(),
                |a| {
                    a.parse::<MetricsAddr>()
                        .map(drop)
                        .map_err(|e| e.to_string())
                },
            )?;
        }
        if let Some(p) = &self.pr_state {
            field(p, || "pr_state".into(), |p| validate::path(p))?;
        }
        if let Some(p) = &self.state_file {
            field(p, || "state_file".into(), |p| validate::path(p))?;
        }
        for (g, key) in [
            (&self.socket_group, "socket_group"),
            (&self.rpc_socket_group, "rpc_socket_group"),
        ] {
            if let Some(g) = g {
                field(g, || key.into(), |g| validate::socket_group(g).map(drop))?;
            }
        }
        if let Some(m) = &self.socket_mode {
            field(
                m,
                || "socket_mode".into(),
                |m| validate::socket_mode(m).map(drop),
            )?;
        }
        if let Some(n) = &self.poll_max_us {
            field(n, || "poll_max_us".into(), |&n| validate::poll_max_us(n))?;
        }
        // Name -> index of the controller using it; socket -> key using it.
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut sockets: HashMap<PathBuf, String> = HashMap::new();
        if let Some(p) = &self.rpc_socket {
            sockets.insert(p.get_ref().clone(), "rpc_socket".into());
        }
        if let Some(a) = &self.metrics_addr {
            if let Ok(MetricsAddr::Unix(p)) = a.get_ref().parse::<MetricsAddr>() {
                if let Some(other) = sockets.get(&p) {
                    return Err(Check {
                        span: a.span(),
                        key: "metrics_addr".into(),
                        message: format!("socket {} is already used by {other}", p.display()),
                    });
                }
                sockets.insert(p, "metrics_addr".into());
            }
        }
        for (i, c) in self.controller.iter().enumerate() {
            let key = |k: &str| format!("controller[{i}].{k}");
            field(&c.name, || key("name"), |n| validate::controller_name(n))?;
            if let Some(&first) = names.get(c.name.get_ref().as_str()) {
                return Err(Check {
                    span: c.name.span(),
                    key: key("name"),
                    message: format!(
                        "controller name {:?} is already used by controller[{first}]",
                        c.name.get_ref()
                    ),
                });
            }
            names.insert(c.name.get_ref(), i);
            field(&c.socket, || key("socket"), |p| validate::path(p))?;
            if let Some(other) = sockets.get(c.socket.get_ref()) {
                return Err(Check {
                    span: c.socket.span(),
                    key: key("socket"),
                    message: format!(
                        "socket {} is already used by {other}",
                        c.socket.get_ref().display()
                    ),
                });
            }
            sockets.insert(c.socket.get_ref().clone(), key("socket"));
            if let Some(n) = &c.num_queues {
                field(n, || key("num_queues"), |&n| validate::num_queues(n))?;
            }
            if let Some(i) = &c.initiator {
                field(i, || key("initiator"), |i| validate::initiator(i))?;
            }
            if let Some(g) = &c.socket_group {
                field(
                    g,
                    || key("socket_group"),
                    |g| validate::socket_group(g).map(drop),
                )?;
            }
            if let Some(m) = &c.socket_mode {
                field(
                    m,
                    || key("socket_mode"),
                    |m| validate::socket_mode(m).map(drop),
                )?;
            }
            if let Some(n) = &c.queue_size {
                field(n, || key("queue_size"), |&n| validate::queue_size(n))?;
            }
            if let Some(n) = &c.poll_max_us {
                field(n, || key("poll_max_us"), |&n| validate::poll_max_us(n))?;
            }
            let mut luns: HashMap<u16, usize> = HashMap::new();
            for (j, l) in c.lun.iter().enumerate() {
                let key = |k: &str| format!("controller[{i}].lun[{j}].{k}");
                if let Some(n) = &l.lun {
                    field(n, || key("lun"), |&n| validate::lun(n))?;
                    if let Some(first) = luns.insert(*n.get_ref(), j) {
                        return Err(Check {
                            span: n.span(),
                            key: key("lun"),
                            message: format!(
                                "LUN {} is already used by controller[{i}].lun[{first}]",
                                n.get_ref()
                            ),
                        });
                    }
                }
                field(&l.path, || key("path"), |p| validate::path(p))?;
                if let Some(b) = &l.block_size {
                    field(b, || key("block_size"), |&b| validate::block_size(b))?;
                }
                if let Some(s) = &l.serial {
                    field(s, || key("serial"), |s| validate::serial(s))?;
                }
                if let Some(p) = &l.passthrough {
                    field(
                        p,
                        || key("passthrough"),
                        |&on| {
                            if on {
                                validate::passthrough(
                                    l.readonly,
                                    l.block_size.is_some(),
                                    l.serial.is_some(),
                                )
                            } else {
                                Ok(())
                            }
                        },
                    )?;
                }
            }
        }
        Ok(())
    }

    fn into_config(self) -> Config {
        Config {
            rpc_socket: self.rpc_socket.map(Spanned::into_inner),
            metrics_addr: self.metrics_addr.map(Spanned::into_inner),
            pr_state: self.pr_state.map(Spanned::into_inner),
            state_file: self.state_file.map(Spanned::into_inner),
            socket_group: self.socket_group.map(Spanned::into_inner),
            socket_mode: self.socket_mode.map(Spanned::into_inner),
            poll_max_us: self.poll_max_us.map(Spanned::into_inner),
            rpc_socket_group: self.rpc_socket_group.map(Spanned::into_inner),
            controllers: self
                .controller
                .into_iter()
                .map(|c| ControllerConfig {
                    create: ControllerCreate {
                        name: c.name.into_inner(),
                        socket: c.socket.into_inner(),
                        num_queues: c.num_queues.map(Spanned::into_inner),
                        queue_size: c.queue_size.map(Spanned::into_inner),
                        initiator: c.initiator.map(Spanned::into_inner),
                        socket_group: c.socket_group.map(Spanned::into_inner),
                        socket_mode: c.socket_mode.map(Spanned::into_inner),
                        poll_max_us: c.poll_max_us.map(Spanned::into_inner),
                    },
                    luns: c
                        .lun
                        .into_iter()
                        .map(|l| LunSpec {
                            lun: l.lun.map(Spanned::into_inner),
                            path: l.path.into_inner(),
                            readonly: l.readonly,
                            block_size: l.block_size.map(Spanned::into_inner),
                            serial: l.serial.map(Spanned::into_inner),
                            passthrough: l.passthrough.is_some_and(|p| p.into_inner()),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/vus.toml";

    fn error(text: &str) -> String {
        parse(text, Path::new(FILE)).unwrap_err().to_string()
    }

    /// A controller header and its two required keys (lines 1-3).
    const CTL: &str = "[[controller]]\nname = \"vm1\"\nsocket = \"/run/vm1.sock\"\n";

    #[test]
    fn full_file() {
        let text = r#"
rpc_socket = "/run/vus/rpc.sock"
metrics_addr = "unix:/run/vus/metrics.sock"
pr_state = "/var/lib/vus/pr"

[[controller]]
name = "vm1"
socket = "/run/vus/vm1.sock"
num_queues = 2
queue_size = 128

[[controller.lun]]
lun = 3
path = "/img/vm1.img"
readonly = true
block_size = 4096
serial = "vm1-root"

[[controller.lun]]
path = "/dev/sdb"

[[controller]]
name = "vm2"
socket = "/run/vus/vm2.sock"
"#;
        let c = parse(text, Path::new(FILE)).unwrap();
        assert_eq!(
            c,
            Config {
                rpc_socket: Some("/run/vus/rpc.sock".into()),
                metrics_addr: Some("unix:/run/vus/metrics.sock".into()),
                pr_state: Some("/var/lib/vus/pr".into()),
                state_file: None,
                socket_group: None,
                socket_mode: None,
                poll_max_us: None,
                rpc_socket_group: None,
                controllers: vec![
                    ControllerConfig {
                        create: ControllerCreate {
                            name: "vm1".into(),
                            socket: "/run/vus/vm1.sock".into(),
                            num_queues: Some(2),
                            queue_size: Some(128),
                            initiator: None,
                            socket_group: None,
                            socket_mode: None,
                            poll_max_us: None,
                        },
                        luns: vec![
                            LunSpec {
                                lun: Some(3),
                                path: "/img/vm1.img".into(),
                                readonly: true,
                                block_size: Some(4096),
                                serial: Some("vm1-root".into()),
                                passthrough: false,
                            },
                            LunSpec {
                                lun: None,
                                path: "/dev/sdb".into(),
                                readonly: false,
                                block_size: None,
                                serial: None,
                                passthrough: false,
                            },
                        ],
                    },
                    ControllerConfig {
                        create: ControllerCreate {
                            name: "vm2".into(),
                            socket: "/run/vus/vm2.sock".into(),
                            num_queues: None,
                            queue_size: None,
                            initiator: None,
                            socket_group: None,
                            socket_mode: None,
                            poll_max_us: None,
                        },
                        luns: vec![],
                    },
                ],
            }
        );
    }

    #[test]
    fn empty_file() {
        assert_eq!(parse("", Path::new(FILE)).unwrap(), Config::default());
        assert_eq!(
            parse("# nothing\n\n", Path::new(FILE)).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn example_in_contrib() {
        let c = parse(
            include_str!("../../contrib/config.toml"),
            Path::new("contrib/config.toml"),
        )
        .unwrap();
        assert_eq!(c.rpc_socket, Some("/run/vhost-user-scsi/rpc.sock".into()));
        assert_eq!(
            c.metrics_addr.unwrap().parse::<MetricsAddr>().unwrap(),
            MetricsAddr::Tcp("127.0.0.1:9184".parse().unwrap())
        );
        assert_eq!(c.controllers.len(), 2);
        assert!(c.controllers.iter().all(|c| !c.luns.is_empty()));
    }

    #[test]
    fn syntax_error() {
        assert_eq!(
            error("rpc_socket = \"/a\"\nx = [\n"),
            "/etc/vus.toml:2:6: unclosed array, expected `]`"
        );
        // A newline in a basic string: one line all the same.
        assert_eq!(
            error("rpc_socket = \"/a\nb\"\n"),
            "/etc/vus.toml:2:3: key with no value, expected `=`"
        );
    }

    #[test]
    fn socket_groups_and_modes() {
        let c = parse(
            &format!("socket_group = \"0\"\nsocket_mode = \"0666\"\n{CTL}socket_group = \"root\"\nsocket_mode = \"600\"\n"),
            Path::new(FILE),
        )
        .unwrap();
        assert_eq!(c.socket_group.as_deref(), Some("0"));
        assert_eq!(c.socket_mode.as_deref(), Some("0666"));
        assert_eq!(
            c.controllers[0].create.socket_group.as_deref(),
            Some("root")
        );
        assert_eq!(c.controllers[0].create.socket_mode.as_deref(), Some("600"));
        assert_eq!(
            error("socket_group = \"no-such-group-here\"\n"),
            "/etc/vus.toml:1:16: socket_group: no group named \"no-such-group-here\" on this host"
        );
        assert!(error(&format!("{CTL}socket_mode = \"0999\"\n"))
            .contains("controller[0].socket_mode: socket mode \"0999\" is not an octal mode"));
    }

    #[test]
    fn poll_bounds() {
        let c = parse(
            &format!("poll_max_us = 50\n{CTL}poll_max_us = 0\n"),
            Path::new(FILE),
        )
        .unwrap();
        assert_eq!(c.poll_max_us, Some(50));
        assert_eq!(c.controllers[0].create.poll_max_us, Some(0));
        assert!(error("poll_max_us = 2000000\n").contains("poll_max_us: 2000000 is more than"));
        assert!(error(&format!("{CTL}poll_max_us = 1000001\n"))
            .contains("controller[0].poll_max_us: 1000001 is more than"));
    }

    #[test]
    fn unknown_keys() {
        assert_eq!(
            error("\nfoo = 1\n"),
            "/etc/vus.toml:2:1: foo: unknown field `foo`, expected one of \
             `rpc_socket`, `metrics_addr`, `pr_state`, `state_file`, `socket_group`, \
             `socket_mode`, `poll_max_us`, `rpc_socket_group`, `controller`"
        );
        assert_eq!(
            error(&format!("{CTL}bogus = 1\n")),
            "/etc/vus.toml:4:1: controller[0].bogus: unknown field `bogus`, expected one of \
             `name`, `socket`, `num_queues`, `queue_size`, `initiator`, `socket_group`, \
             `socket_mode`, `poll_max_us`, `lun`"
        );
        let e = error(&format!(
            "{CTL}[[controller.lun]]\npath = \"/a\"\nread_only = true\n"
        ));
        assert!(
            e.starts_with("/etc/vus.toml:6:1: controller[0].lun[0].read_only: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn missing_fields() {
        assert_eq!(
            error("[[controller]]\nname = \"a\"\n"),
            "/etc/vus.toml:1:1: controller[0]: missing field `socket`"
        );
        assert_eq!(
            error(&format!(
                "{CTL}[[controller.lun]]\npath = \"/a\"\n\n[[controller.lun]]\nlun = 1\n"
            )),
            "/etc/vus.toml:7:1: controller[0].lun[1]: missing field `path`"
        );
    }

    #[test]
    fn wrong_types() {
        assert_eq!(
            error("\n\nrpc_socket = 5\n"),
            "/etc/vus.toml:3:14: rpc_socket: invalid type: integer `5`, expected path string"
        );
        assert_eq!(
            error(&format!("{CTL}num_queues = 70000\n")),
            "/etc/vus.toml:4:14: controller[0].num_queues: invalid value: integer `70000`, \
             expected u16"
        );
        assert_eq!(
            error(&format!(
                "{CTL}[[controller.lun]]\npath = \"/a\"\nreadonly = \"yes\"\n"
            )),
            "/etc/vus.toml:6:12: controller[0].lun[0].readonly: invalid type: string \"yes\", \
             expected a boolean"
        );
        assert_eq!(
            error("[controller]\nname = \"a\"\nsocket = \"/s\"\n"),
            "/etc/vus.toml:1:1: controller: invalid type: map, expected a sequence \
             (write [[controller]] tables)"
        );
        assert_eq!(
            error(&format!("{CTL}[controller.lun]\npath = \"/a\"\n")),
            "/etc/vus.toml:4:1: controller[0].lun: invalid type: map, expected a sequence \
             (write [[controller.lun]] tables)"
        );
    }

    #[test]
    fn out_of_range_values() {
        assert_eq!(
            error(&format!("{CTL}num_queues = 0\n")),
            "/etc/vus.toml:4:14: controller[0].num_queues: 0 is out of range 1..=64"
        );
        assert_eq!(
            error(&format!("{CTL}queue_size = 100\n")),
            "/etc/vus.toml:4:14: controller[0].queue_size: 100 is not a power of two from 1 to 1024"
        );
        let lun = |body: &str| error(&format!("{CTL}[[controller.lun]]\npath = \"/a\"\n{body}\n"));
        assert_eq!(
            lun("lun = 16384"),
            "/etc/vus.toml:6:7: controller[0].lun[0].lun: 16384 is out of range 0..=16383"
        );
        assert_eq!(
            lun("block_size = 1024"),
            "/etc/vus.toml:6:14: controller[0].lun[0].block_size: 1024 is not a supported block \
             size (512 or 4096)"
        );
        assert!(lun("serial = \"tab\\there\"")
            .starts_with("/etc/vus.toml:6:10: controller[0].lun[0].serial: serial"));
        assert_eq!(
            error("[[controller]]\nname = \"-vm\"\nsocket = \"/s\"\n"),
            "/etc/vus.toml:2:8: controller[0].name: controller name \"-vm\" must not start \
             with '.' or '-'"
        );
        assert_eq!(
            error("[[controller]]\nname = \"vm\"\nsocket = \"\"\n"),
            "/etc/vus.toml:3:10: controller[0].socket: path is empty"
        );
        assert_eq!(
            error(&format!("{CTL}[[controller.lun]]\npath = \"\"\n")),
            "/etc/vus.toml:5:8: controller[0].lun[0].path: path is empty"
        );
    }

    #[test]
    fn duplicates() {
        assert_eq!(
            error(&format!(
                "{CTL}\n[[controller]]\nname = \"vm1\"\nsocket = \"/run/other.sock\"\n"
            )),
            "/etc/vus.toml:6:8: controller[1].name: controller name \"vm1\" is already used \
             by controller[0]"
        );
        assert_eq!(
            error(&format!(
                "{CTL}\n[[controller]]\nname = \"vm2\"\nsocket = \"/run/vm1.sock\"\n"
            )),
            "/etc/vus.toml:7:10: controller[1].socket: socket /run/vm1.sock is already used \
             by controller[0].socket"
        );
        assert_eq!(
            error(&format!("rpc_socket = \"/run/vm1.sock\"\n{CTL}")),
            "/etc/vus.toml:4:10: controller[0].socket: socket /run/vm1.sock is already used \
             by rpc_socket"
        );
        assert_eq!(
            error("rpc_socket = \"/run/x\"\nmetrics_addr = \"unix:/run/x\"\n"),
            "/etc/vus.toml:2:16: metrics_addr: socket /run/x is already used by rpc_socket"
        );
        assert_eq!(
            error(&format!(
                "{CTL}[[controller.lun]]\nlun = 2\npath = \"/a\"\n\
                 [[controller.lun]]\npath = \"/b\"\n[[controller.lun]]\nlun = 2\npath = \"/c\"\n"
            )),
            "/etc/vus.toml:10:7: controller[0].lun[2].lun: LUN 2 is already used by \
             controller[0].lun[0]"
        );
        // The same LUN number on two controllers is fine.
        let text = "[[controller]]\nname = \"a\"\nsocket = \"/a\"\n\
                    [[controller.lun]]\nlun = 0\npath = \"/x\"\n\
                    [[controller]]\nname = \"b\"\nsocket = \"/b\"\n\
                    [[controller.lun]]\nlun = 0\npath = \"/y\"\n";
        assert!(parse(text, Path::new(FILE)).is_ok());
    }

    #[test]
    fn metrics_addr() {
        assert_eq!(
            error("# metrics\nmetrics_addr = \"0.0.0.0:9184\"\n"),
            "/etc/vus.toml:2:16: metrics_addr: invalid metrics address \"0.0.0.0:9184\": \
             metrics are served on loopback or a Unix socket only"
        );
        assert!(error("metrics_addr = \"example.com:80\"\n")
            .starts_with("/etc/vus.toml:1:16: metrics_addr: invalid metrics address"));
        for good in ["127.0.0.1:9184", "[::1]:1", "localhost:9184", "/run/m.sock"] {
            let text = format!("metrics_addr = \"{good}\"\n");
            assert!(parse(&text, Path::new(FILE)).is_ok(), "{good}");
        }
    }

    #[test]
    fn columns_count_characters() {
        // "é" is two bytes but one column.
        assert_eq!(
            error("[[controller]]\nname = \"é\"\nsocket = \"/s\"\n"),
            "/etc/vus.toml:2:8: controller[0].name: controller name \"é\" contains 'é' \
             (allowed: A-Z a-z 0-9 . _ -)"
        );
        assert_eq!(line_col("ab\ncé\nd", 7), (3, 1));
        assert_eq!(line_col("ab\ncé\nd", 5), (2, 2)); // inside 'é': its start
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn load_reads_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let e = load(&missing).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read {}: No such file or directory",
                missing.display()
            )
        );
        assert!(matches!(
            e,
            ConfigError::Read {
                kind: std::io::ErrorKind::NotFound,
                ..
            }
        ));
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "pr_state = \"/var/lib/pr\"\n").unwrap();
        assert_eq!(load(&file).unwrap().pr_state, Some("/var/lib/pr".into()));
        std::fs::write(&file, "state_file = \"/var/lib/s.json\"\n").unwrap();
        assert_eq!(
            load(&file).unwrap().state_file,
            Some("/var/lib/s.json".into())
        );
        std::fs::write(&file, "state_file = \"\"\n").unwrap();
        assert_eq!(
            load(&file).unwrap_err().to_string(),
            format!("{}:1:14: state_file: path is empty", file.display())
        );
        std::fs::write(&file, "pr_state = 1\n").unwrap();
        assert!(load(&file)
            .unwrap_err()
            .to_string()
            .starts_with(&format!("{}:1:12: pr_state:", file.display())));
    }
}
