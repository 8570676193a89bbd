//! `vhost-user-scsi ctl`: one management call to a running daemon over its
//! JSON-RPC socket, printed as a short confirmation or an aligned table
//! (`--json`: the raw result). A refused call is an error (exit 1) whose
//! message carries the JSON-RPC error code.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::mgmt::api::{
    ControllerCreate, ControllerDelete, ControllerInfo, LunAdd, LunInfo, LunRemove, LunResize,
    Stats, StatsQuery, Version,
};
use crate::mgmt::rpc_client::RpcClient;
use crate::mgmt::rpc_server::{DEFAULT_RPC_SOCKET, RPC_SOCKET_ENV};

/// Options of `ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The daemon's management socket.
    #[arg(long, value_name = "PATH", env = RPC_SOCKET_ENV, default_value = DEFAULT_RPC_SOCKET, global = true)]
    pub rpc_socket: PathBuf,

    /// Print the raw result as JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: CtlCommand,
}

/// One subcommand per JSON-RPC method, with the method's name.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Create a controller: a vhost-user socket for one VM.
    #[command(name = "controller_create", alias = "controller-create")]
    ControllerCreate {
        /// Unique name (A-Za-z0-9._-, up to 64 characters).
        #[arg(long)]
        name: String,
        /// vhost-user socket to listen on (made absolute here).
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Request queues (1..=64; daemon default 4).
        #[arg(long, value_name = "N")]
        num_queues: Option<u16>,
        /// Maximum virtqueue size (power of two up to 1024; default 256).
        #[arg(long, value_name = "N")]
        queue_size: Option<u16>,
        /// Initiator identity of the guest (default: derived from the
        /// socket path); the same on both controllers of a live migration.
        #[arg(long, value_name = "ID")]
        initiator: Option<String>,
        /// Group of the socket file (default: the daemon's --socket-group).
        #[arg(long, value_name = "GROUP")]
        socket_group: Option<String>,
        /// Mode of the socket file, octal (default: the daemon's
        /// --socket-mode, else 0660 with a group).
        #[arg(long, value_name = "MODE")]
        socket_mode: Option<String>,
        /// Bound of the adaptive polling window in µs, 0 for none
        /// (default: the daemon's --poll-max-us, else 32).
        #[arg(long, value_name = "US")]
        poll_max_us: Option<u32>,
    },
    /// Delete a controller and its LUNs.
    #[command(name = "controller_delete", alias = "controller-delete")]
    ControllerDelete {
        /// The controller's name.
        #[arg(long)]
        name: String,
        /// Disconnect a connected guest instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// List controllers and their LUNs.
    #[command(name = "controller_list", alias = "controller-list")]
    ControllerList,
    /// Attach an image file or block device as a LUN.
    #[command(name = "lun_add", alias = "lun-add")]
    LunAdd {
        /// The controller's name.
        #[arg(long, value_name = "NAME")]
        controller: String,
        /// Image file or block device (made absolute here).
        #[arg(long)]
        path: PathBuf,
        /// LUN number (default: the lowest free one).
        #[arg(long, value_name = "N")]
        lun: Option<u16>,
        /// Refuse writes.
        #[arg(long)]
        readonly: bool,
        /// Logical block size (default: the device's own, 512 for files).
        #[arg(long, value_name = "BYTES", value_parser = ["512", "4096"])]
        block_size: Option<String>,
        /// Unit serial number (default: derived from the path).
        #[arg(long)]
        serial: Option<String>,
        /// SCSI passthrough of a host SCSI device (/dev/sdX, /dev/sgN).
        #[arg(long)]
        passthrough: bool,
    },
    /// Detach a LUN (waits for its in-flight I/O).
    #[command(name = "lun_remove", alias = "lun-remove")]
    LunRemove {
        /// The controller's name.
        #[arg(long, value_name = "NAME")]
        controller: String,
        /// LUN number.
        #[arg(long, value_name = "N")]
        lun: u16,
    },
    /// Grow an image file, or pick up a size changed by someone else.
    #[command(name = "lun_resize", alias = "lun-resize")]
    LunResize {
        /// The controller's name.
        #[arg(long, value_name = "NAME")]
        controller: String,
        /// LUN number.
        #[arg(long, value_name = "N")]
        lun: u16,
        /// New size: bytes, or with a K, M, G or T suffix (powers of 1024).
        /// Absent: re-read the backing's size.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
    },
    /// I/O counters and latencies per LUN and queue.
    Stats {
        /// Only this controller.
        #[arg(long, value_name = "NAME")]
        controller: Option<String>,
        /// Only this LUN.
        #[arg(long, value_name = "N")]
        lun: Option<u16>,
    },
    /// The daemon's name and version.
    Version,
    /// Ask the daemon to stop (as SIGTERM).
    Shutdown,
    /// Any method, with parameters as JSON; prints the result as JSON.
    Call {
        /// Method name, e.g. controller_list.
        method: String,
        /// Parameters, a JSON object.
        #[arg(value_name = "PARAMS_JSON", value_parser = parse_json)]
        params: Option<Value>,
    },
}

/// A size: plain bytes, or a number with a K, M, G or T suffix (binary
/// multiples; `KiB`, `KB`, `k` are the same).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (bytes, or a number with K, M, G or T)"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

fn parse_json(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

/// `path` made absolute against our working directory: the daemon's is
/// another one.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("{}: bad path", path.display()))
}

/// The method and `params` a subcommand calls.
pub fn request(cmd: &CtlCommand) -> anyhow::Result<(String, Option<Value>)> {
    let params = match cmd {
        CtlCommand::ControllerCreate {
            name,
            socket,
            num_queues,
            queue_size,
            initiator,
            socket_group,
            socket_mode,
            poll_max_us,
        } => Some(serde_json::to_value(ControllerCreate {
            name: name.clone(),
            socket: absolute(socket)?,
            num_queues: *num_queues,
            queue_size: *queue_size,
            initiator: initiator.clone(),
            socket_group: socket_group.clone(),
            socket_mode: socket_mode.clone(),
            poll_max_us: *poll_max_us,
        })?),
        CtlCommand::ControllerDelete { name, force } => {
            Some(serde_json::to_value(ControllerDelete {
                name: name.clone(),
                force: *force,
            })?)
        }
        CtlCommand::LunAdd {
            controller,
            path,
            lun,
            readonly,
            block_size,
            serial,
            passthrough,
        } => Some(serde_json::to_value(LunAdd {
            controller: controller.clone(),
            lun: *lun,
            path: absolute(path)?,
            readonly: *readonly,
            block_size: block_size.as_deref().map(str::parse).transpose()?,
            serial: serial.clone(),
            passthrough: *passthrough,
        })?),
        CtlCommand::LunRemove { controller, lun } => Some(serde_json::to_value(LunRemove {
            controller: controller.clone(),
            lun: *lun,
        })?),
        CtlCommand::LunResize {
            controller,
            lun,
            size,
        } => Some(serde_json::to_value(LunResize {
            controller: controller.clone(),
            lun: *lun,
            size: *size,
        })?),
        CtlCommand::Stats { controller, lun } => Some(serde_json::to_value(StatsQuery {
            controller: controller.clone(),
            lun: *lun,
        })?),
        CtlCommand::ControllerList | CtlCommand::Version | CtlCommand::Shutdown => None,
        CtlCommand::Call { params, .. } => params.clone(),
    };
    Ok((method_name(cmd).to_owned(), params))
}

fn method_name(cmd: &CtlCommand) -> &str {
    match cmd {
        CtlCommand::ControllerCreate { .. } => "controller_create",
        CtlCommand::ControllerDelete { .. } => "controller_delete",
        CtlCommand::ControllerList => "controller_list",
        CtlCommand::LunAdd { .. } => "lun_add",
        CtlCommand::LunRemove { .. } => "lun_remove",
        CtlCommand::LunResize { .. } => "lun_resize",
        CtlCommand::Stats { .. } => "stats",
        CtlCommand::Version => "version",
        CtlCommand::Shutdown => "shutdown",
        CtlCommand::Call { method, .. } => method,
    }
}

/// Run `ctl`: connect, call, print.
pub fn main(args: &CtlArgs) -> anyhow::Result<()> {
    let (method, params) = request(&args.command)?;
    let mut client = RpcClient::connect(&args.rpc_socket)?;
    let result = client.call(&method, params)?;
    let text = if args.json || matches!(args.command, CtlCommand::Call { .. }) {
        let mut s = serde_json::to_string_pretty(&result)?;
        s.push('\n');
        s
    } else {
        render(&args.command, result)?
    };
    print!("{text}");
    Ok(())
}

fn decode<T: DeserializeOwned>(method: &str, v: Value) -> anyhow::Result<T> {
    serde_json::from_value(v)
        .with_context(|| format!("unexpected answer from the daemon to `{method}`"))
}

/// The text printed for the `result` of `cmd`.
pub fn render(cmd: &CtlCommand, result: Value) -> anyhow::Result<String> {
    let m = method_name(cmd);
    Ok(match cmd {
        CtlCommand::ControllerCreate { .. } => {
            let c: ControllerInfo = decode(m, result)?;
            format!(
                "controller {} created: {} ({} queues of {})\n",
                c.name,
                c.socket.display(),
                c.num_queues,
                c.queue_size
            )
        }
        CtlCommand::ControllerDelete { name, .. } => format!("controller {name} deleted\n"),
        CtlCommand::ControllerList => controller_table(&decode::<Vec<ControllerInfo>>(m, result)?),
        CtlCommand::LunAdd { controller, .. } => {
            let l: LunInfo = decode(m, result)?;
            format!(
                "lun {} added to {controller}: {} ({}, {}-byte blocks{})\n",
                l.lun,
                l.path.display(),
                human_size(l.size),
                l.block_size,
                if l.readonly {
                    ", read-only"
                } else if l.passthrough {
                    ", passthrough"
                } else {
                    ""
                }
            )
        }
        CtlCommand::LunRemove { controller, lun } => {
            format!("lun {lun} removed from {controller}\n")
        }
        CtlCommand::LunResize { controller, .. } => {
            let l: LunInfo = decode(m, result)?;
            format!(
                "lun {} of {controller}: {} ({} blocks of {} bytes)\n",
                l.lun,
                human_size(l.size),
                l.num_blocks,
                l.block_size
            )
        }
        CtlCommand::Stats { .. } => stats_tables(&decode::<Stats>(m, result)?),
        CtlCommand::Version => {
            let v: Version = decode(m, result)?;
            format!("{} {}\n", v.name, v.version)
        }
        CtlCommand::Shutdown => "daemon shutting down\n".into(),
        CtlCommand::Call { .. } => format!("{}\n", serde_json::to_string_pretty(&result)?),
    })
}

/// `bytes` in binary units with one decimal: "512 B", "64.0 MiB".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// Columns aligned on the widest cell; numbers (`right[i]`) right-aligned,
/// the last column not padded.
pub fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if right.get(i).copied().unwrap_or(false) {
                line.extend(std::iter::repeat(' ').take(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat(' ').take(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// `controller_list`: one row per LUN (a controller without LUNs: one row
/// with dashes).
pub fn controller_table(list: &[ControllerInfo]) -> String {
    if list.is_empty() {
        return "no controllers\n".into();
    }
    let mut rows = Vec::new();
    for c in list {
        let head = [
            c.name.clone(),
            c.socket.display().to_string(),
            format!("{}x{}", c.num_queues, c.queue_size),
            if c.state.is_empty() {
                yes_no(c.connected)
            } else {
                c.state.clone()
            },
        ];
        if c.luns.is_empty() {
            let mut row = head.to_vec();
            row.extend(["-", "-", "-", "-", "-"].map(String::from));
            rows.push(row);
        }
        for l in &c.luns {
            let mut row = head.to_vec();
            row.extend([
                l.lun.to_string(),
                l.path.display().to_string(),
                human_size(l.size),
                l.block_size.to_string(),
                yes_no(l.readonly),
            ]);
            rows.push(row);
        }
    }
    table(
        &[
            "NAME", "SOCKET", "QUEUES", "STATE", "LUN", "PATH", "SIZE", "BS", "RO",
        ],
        &[false, false, true, false, true, false, true, true, false],
        &rows,
    ) + &last_errors(list)
}

/// One line per controller that has a last error.
fn last_errors(list: &[ControllerInfo]) -> String {
    list.iter()
        .filter_map(|c| {
            c.last_error
                .as_ref()
                .map(|e| format!("{}: last error: {e}\n", c.name))
        })
        .collect()
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1u32 << 20))
}

/// `stats`: a controller table, a LUN table (latencies in µs) and a queue
/// table, separated by blank lines.
pub fn stats_tables(stats: &Stats) -> String {
    if stats.controllers.is_empty() {
        return "no controllers\n".into();
    }
    let mut ctrl = Vec::new();
    let mut luns = Vec::new();
    let mut queues = Vec::new();
    for c in &stats.controllers {
        ctrl.push(vec![
            c.name.clone(),
            yes_no(c.connected),
            c.connections.to_string(),
        ]);
        for l in &c.luns {
            luns.push(vec![
                c.name.clone(),
                l.lun.to_string(),
                l.reads.to_string(),
                l.writes.to_string(),
                mib(l.read_bytes),
                mib(l.write_bytes),
                l.other.to_string(),
                l.errors.to_string(),
                l.in_flight.to_string(),
                format!("{:.0}", l.latency.p50_us),
                format!("{:.0}", l.latency.p99_us),
                l.path.display().to_string(),
            ]);
        }
        for q in &c.queues {
            queues.push(vec![
                c.name.clone(),
                q.queue.to_string(),
                q.requests.to_string(),
                q.in_flight.to_string(),
            ]);
        }
    }
    let mut out = table(
        &["CONTROLLER", "CONNECTED", "CONNECTIONS"],
        &[false, false, true],
        &ctrl,
    );
    if !luns.is_empty() {
        let _ = write!(
            out,
            "\n{}",
            table(
                &[
                    "CONTROLLER",
                    "LUN",
                    "READS",
                    "WRITES",
                    "READ-MiB",
                    "WRITE-MiB",
                    "OTHER",
                    "ERRORS",
                    "INFLIGHT",
                    "P50-µs",
                    "P99-µs",
                    "PATH",
                ],
                &[false, true, true, true, true, true, true, true, true, true, true, false,],
                &luns,
            )
        );
    }
    if !queues.is_empty() {
        let _ = write!(
            out,
            "\n{}",
            table(
                &["CONTROLLER", "QUEUE", "REQUESTS", "INFLIGHT"],
                &[false, true, true, true],
                &queues,
            )
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::mgmt::api::{ControllerStats, Latency, LunStats, QueueStats};
    use clap::Parser;
    use serde_json::json;

    fn parse(args: &[&str]) -> Result<CtlArgs, clap::Error> {
        let cli = Cli::try_parse_from(
            ["vhost-user-scsi", "ctl"]
                .into_iter()
                .chain(args.iter().copied()),
        )?;
        match cli.command {
            Command::Ctl(c) => Ok(c),
            other => panic!("not ctl: {other:?}"),
        }
    }

    fn req(args: &[&str]) -> (String, Option<Value>) {
        request(&parse(args).unwrap().command).unwrap()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("3k"), Ok(3072));
        for bad in ["", "M", "1.5G", "-1", "12Q", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn socket_option() {
        // The env default is covered by tests/rpc.rs (env vars are process-wide).
        let a = parse(&["--rpc-socket", "/tmp/x.sock", "version"]).unwrap();
        assert_eq!(a.rpc_socket, PathBuf::from("/tmp/x.sock"));
        assert!(!a.json);
        let a = parse(&["version", "--json", "--rpc-socket", "/y"]).unwrap();
        assert!(a.json);
        assert_eq!(a.rpc_socket, PathBuf::from("/y"));
    }

    #[test]
    fn subcommands_become_requests() {
        assert_eq!(req(&["version"]), ("version".into(), None));
        assert_eq!(req(&["controller-list"]), ("controller_list".into(), None));
        assert_eq!(
            req(&[
                "controller_create",
                "--name",
                "vm1",
                "--socket",
                "/run/vm1.sock",
                "--num-queues",
                "2"
            ]),
            (
                "controller_create".into(),
                Some(json!({"name": "vm1", "socket": "/run/vm1.sock", "num_queues": 2}))
            )
        );
        assert_eq!(
            req(&["controller_delete", "--name", "vm1", "--force"]).1,
            Some(json!({"name": "vm1", "force": true}))
        );
        assert_eq!(
            req(&[
                "lun_add",
                "--controller",
                "vm1",
                "--path",
                "/a.img",
                "--readonly",
                "--block-size",
                "4096",
                "--serial",
                "S1"
            ])
            .1,
            Some(
                json!({"controller": "vm1", "path": "/a.img", "readonly": true,
                        "block_size": 4096, "serial": "S1"})
            )
        );
        assert_eq!(
            req(&["lun_remove", "--controller", "vm1", "--lun", "2"]).1,
            Some(json!({"controller": "vm1", "lun": 2}))
        );
        assert_eq!(
            req(&[
                "lun_resize",
                "--controller",
                "vm1",
                "--lun",
                "2",
                "--size",
                "1G"
            ])
            .1,
            Some(json!({"controller": "vm1", "lun": 2, "size": 1u64 << 30}))
        );
        assert_eq!(
            req(&["lun_resize", "--controller", "vm1", "--lun", "2"]).1,
            Some(json!({"controller": "vm1", "lun": 2}))
        );
        assert_eq!(req(&["stats"]).1, Some(json!({})));
        assert_eq!(
            req(&["stats", "--controller", "vm1", "--lun", "0"]).1,
            Some(json!({"controller": "vm1", "lun": 0}))
        );
        assert_eq!(
            req(&["call", "foo", r#"{"a": [1]}"#]),
            ("foo".into(), Some(json!({"a": [1]})))
        );
        assert_eq!(req(&["call", "version"]), ("version".into(), None));
    }

    #[test]
    fn relative_paths_are_made_absolute() {
        let (_, p) = req(&["lun_add", "--controller", "c", "--path", "a.img"]);
        let path = p.unwrap()["path"].as_str().unwrap().to_owned();
        assert!(Path::new(&path).is_absolute(), "{path}");
        assert!(path.ends_with("/a.img"), "{path}");
    }

    #[test]
    fn bad_arguments() {
        for args in [
            &["lun_add", "--controller", "c"][..],
            &[
                "lun_add",
                "--controller",
                "c",
                "--path",
                "a",
                "--block-size",
                "1024",
            ],
            &["lun_remove", "--controller", "c", "--lun", "x"],
            &[
                "lun_resize",
                "--controller",
                "c",
                "--lun",
                "1",
                "--size",
                "1X",
            ],
            &["call", "foo", "{nope"],
            &["frobnicate"],
            &[],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(64 << 20), "64.0 MiB");
        assert_eq!(human_size(1536 << 20), "1.5 GiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn table_alignment() {
        let t = table(
            &["A", "NUM", "Z"],
            &[false, true, false],
            &[
                vec!["xyz".into(), "1".into(), "last".into()],
                vec!["µ".into(), "1234".into(), "".into()],
            ],
        );
        assert_eq!(t, "A     NUM  Z\nxyz     1  last\nµ    1234\n");
    }

    fn lun(n: u16, path: &str) -> LunInfo {
        LunInfo {
            lun: n,
            path: path.into(),
            readonly: n == 1,
            block_size: 512,
            num_blocks: 131072,
            size: 64 << 20,
            serial: "s".into(),
            passthrough: false,
        }
    }

    #[test]
    fn controller_list_table() {
        let list = vec![
            ControllerInfo {
                name: "vm1".into(),
                socket: "/run/vm1.sock".into(),
                num_queues: 4,
                queue_size: 256,
                initiator: None,
                socket_group: None,
                socket_mode: None,
                poll_max_us: 32,
                connected: true,
                state: "connected".into(),
                last_error: None,
                luns: vec![lun(0, "/img/a.img"), lun(1, "/dev/sdb")],
            },
            ControllerInfo {
                name: "vm22".into(),
                socket: "/s".into(),
                num_queues: 1,
                queue_size: 128,
                initiator: None,
                socket_group: None,
                socket_mode: None,
                poll_max_us: 32,
                connected: false,
                state: "retrying".into(),
                last_error: Some("cannot create the backend: Too many open files".into()),
                luns: vec![],
            },
        ];
        let expected = "\
NAME  SOCKET         QUEUES  STATE      LUN  PATH            SIZE   BS  RO
vm1   /run/vm1.sock   4x256  connected    0  /img/a.img  64.0 MiB  512  no
vm1   /run/vm1.sock   4x256  connected    1  /dev/sdb    64.0 MiB  512  yes
vm22  /s              1x128  retrying     -  -                  -    -  -
vm22: last error: cannot create the backend: Too many open files
";
        assert_eq!(controller_table(&list), expected);
        assert_eq!(controller_table(&[]), "no controllers\n");
    }

    #[test]
    fn stats_table() {
        let stats = Stats {
            controllers: vec![ControllerStats {
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
                        requests: 5,
                        in_flight: 0,
                    },
                ],
                luns: vec![LunStats {
                    lun: 0,
                    path: "/img/a.img".into(),
                    reads: 10,
                    writes: 20,
                    read_bytes: 3 << 20,
                    write_bytes: 1 << 19,
                    other: 4,
                    errors: 1,
                    in_flight: 2,
                    latency: Latency {
                        p50_us: 12.4,
                        p99_us: 250.6,
                        ..Latency::default()
                    },
                }],
            }],
        };
        let expected = "\
CONTROLLER  CONNECTED  CONNECTIONS
vm1         yes                  3

CONTROLLER  LUN  READS  WRITES  READ-MiB  WRITE-MiB  OTHER  ERRORS  INFLIGHT  P50-µs  P99-µs  PATH
vm1           0     10      20       3.0        0.5      4       1         2      12     251  /img/a.img

CONTROLLER  QUEUE  REQUESTS  INFLIGHT
vm1             0       100         2
vm1             1         5         0
";
        assert_eq!(stats_tables(&stats), expected);
        assert_eq!(stats_tables(&Stats::default()), "no controllers\n");
    }

    #[test]
    fn confirmations() {
        let cmd = parse(&["lun_add", "--controller", "vm1", "--path", "/dev/sdb"])
            .unwrap()
            .command;
        let out = render(&cmd, serde_json::to_value(lun(1, "/dev/sdb")).unwrap()).unwrap();
        assert_eq!(
            out,
            "lun 1 added to vm1: /dev/sdb (64.0 MiB, 512-byte blocks, read-only)\n"
        );
        let cmd = parse(&["lun_remove", "--controller", "vm1", "--lun", "1"])
            .unwrap()
            .command;
        assert_eq!(
            render(&cmd, json!(true)).unwrap(),
            "lun 1 removed from vm1\n"
        );
        let cmd = parse(&["version"]).unwrap().command;
        assert_eq!(
            render(&cmd, json!({"name": "vhost-user-scsi", "version": "1.2.3"})).unwrap(),
            "vhost-user-scsi 1.2.3\n"
        );
        // A result of the wrong shape is an error, not a panic.
        assert!(render(&cmd, json!(true)).is_err());
    }
}
