//! vhost-user-scsi: the binary edge (argument parsing, logging, signals,
//! exit codes). Errors are one line on stderr and exit code 1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use tracing_subscriber::EnvFilter;

use vhost_user_scsi::cli::{Cli, Command, ServeArgs};
use vhost_user_scsi::mgmt::api::{Api, StatsQuery};
use vhost_user_scsi::mgmt::config;
use vhost_user_scsi::mgmt::metrics::{MetricsAddr, MetricsServer};
use vhost_user_scsi::mgmt::rpc_server::RpcServer;
use vhost_user_scsi::mgmt::state::StateFile;
use vhost_user_scsi::mgmt::{validate, Manager, SocketDefaults};
use vhost_user_scsi::scsi::{DirPrStore, PrStore};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version are not errors; a usage error is one
            // line (clap's first), exit code 1.
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(1);
            }
            // The first paragraph of clap's message, joined on one line.
            let rendered = e.render().to_string();
            let first: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!(
                "vhost-user-scsi: {} (see --help)",
                first.join(" ").trim_start_matches("error: ")
            );
            return ExitCode::from(1);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Serve(args) => run_serve(&args),
        Command::Bench(args) => vhost_user_scsi::bench::main(&args).map_err(Into::into),
        Command::BenchReport(args) => vhost_user_scsi::bench::plot::main(&args).map_err(Into::into),
        Command::Ctl(args) => vhost_user_scsi::cli::ctl::main(&args),
        Command::Probe(args) => vhost_user_scsi::cli::probe::main(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-user-scsi: error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// The error chain on one line, without repeating a cause that an outer
/// message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
    }
    out
}

fn run_serve(args: &ServeArgs) -> anyhow::Result<()> {
    // Block SIGINT/SIGTERM before any thread starts so that every thread
    // inherits the mask and only the signal thread receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("cannot block signals")?;

    // Everything is checked, and every disk opened, before anything
    // listens.
    let file = match &args.config {
        Some(path) => config::load(path)?,
        None => config::Config::default(),
    };
    let rpc_socket = args.rpc_socket.clone().or(file.rpc_socket.clone());
    // The config file's values were checked when it was loaded.
    if let Some(g) = &args.socket_group {
        validate::socket_group(g).map_err(|e| anyhow::anyhow!("--socket-group: {e}"))?;
    }
    if let Some(m) = &args.socket_mode {
        validate::socket_mode(m).map_err(|e| anyhow::anyhow!("--socket-mode: {e}"))?;
    }
    if let Some(n) = args.poll_max_us {
        validate::poll_max_us(n).map_err(|e| anyhow::anyhow!("--poll-max-us: {e}"))?;
    }
    let rpc_gid = match (&args.rpc_socket_group, &file.rpc_socket_group) {
        (Some(g), _) => Some(
            validate::socket_group(g).map_err(|e| anyhow::anyhow!("--rpc-socket-group: {e}"))?,
        ),
        (None, Some(g)) => {
            Some(validate::socket_group(g).map_err(|e| anyhow::anyhow!("rpc_socket_group: {e}"))?)
        }
        (None, None) => None,
    };
    let metrics_addr: Option<MetricsAddr> = args
        .metrics_addr
        .clone()
        .or(file.metrics_addr.clone())
        .map(|a| a.parse())
        .transpose()
        .context("--metrics-addr")?;
    // Name where the directory came from, so an error points at it.
    let pr_state = match (&args.pr_state, &file.pr_state, &args.config) {
        (Some(dir), _, _) => Some((dir.clone(), "--pr-state".to_string())),
        (None, Some(dir), Some(path)) => {
            Some((dir.clone(), format!("{}: pr_state", path.display())))
        }
        _ => None,
    };
    let state_path = match (&args.state_file, &file.state_file, &args.config) {
        (Some(p), _, _) => Some((p.clone(), "--state-file".to_string())),
        (None, Some(p), Some(path)) => Some((p.clone(), format!("{}: state_file", path.display()))),
        _ => None,
    };
    // With a state file, it alone holds the controllers (docs/management.md,
    // "State file"): the same command line then starts the same way
    // whatever was changed over JSON-RPC since.
    if let Some((path, origin)) = &state_path {
        let other = match (&args.config, &args.socket) {
            (Some(config), _) if !file.controllers.is_empty() => {
                Some(format!("the [[controller]] tables of {}", config.display()))
            }
            (_, Some(_)) => Some("--socket".to_string()),
            _ => None,
        };
        if let Some(other) = other {
            anyhow::bail!(
                "{origin} {} cannot be combined with {other}: the state file holds every \
                 controller (create them over JSON-RPC; see \"State file\" in docs/management.md)",
                path.display()
            );
        }
    }
    let state_file = match &state_path {
        Some((path, origin)) => {
            Some(StateFile::open(path).with_context(|| format!("{origin} {}", path.display()))?)
        }
        None => None,
    };
    // Where the controllers come from, to name it in errors.
    let source: Option<PathBuf> = match &state_file {
        Some(sf) => Some(sf.path().to_owned()),
        None => args.config.clone(),
    };
    let mut list: Vec<_> = match &state_file {
        Some(sf) => sf
            .load()?
            .unwrap_or_default()
            .controllers
            .into_iter()
            .map(|c| c.into_parts())
            .collect(),
        None => file
            .controllers
            .into_iter()
            .map(|c| (c.create, c.luns))
            .collect(),
    };
    if let Some(shorthand) = args.shorthand()? {
        if shorthand.1.is_empty() && rpc_socket.is_none() {
            anyhow::bail!("--socket needs at least one --disk (or --rpc-socket to add LUNs later)");
        }
        list.push(shorthand);
    }
    if list.is_empty() && rpc_socket.is_none() {
        if let Some(sf) = &state_file {
            anyhow::bail!(
                "nothing to serve: the state file {} holds no controller; give --rpc-socket to create some",
                sf.path().display()
            );
        }
        anyhow::bail!(
            "nothing to serve: give --socket with --disk, --config, or --rpc-socket (see --help)"
        );
    }
    let pr_store: Option<Arc<dyn PrStore>> = match &pr_state {
        Some((dir, origin)) => Some(Arc::new(
            DirPrStore::new(dir).with_context(|| format!("{origin} {}", dir.display()))?,
        )),
        None => None,
    };
    let sockets = SocketDefaults {
        group: args.socket_group.clone().or(file.socket_group.clone()),
        mode: args.socket_mode.clone().or(file.socket_mode.clone()),
        poll_max_us: args.poll_max_us.or(file.poll_max_us),
    };
    let manager = Manager::with_options(pr_store, state_file, sockets);
    let batch = manager.prepare_all(&list).map_err(|e| match &source {
        Some(path) => anyhow::anyhow!("{}: {}", path.display(), e.message),
        None => anyhow::anyhow!(e.message),
    })?;
    manager
        .save_state(&batch)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let rpc = match &rpc_socket {
        Some(path) => Some(RpcServer::bind(path, rpc_gid)?),
        None => None,
    };
    let metrics = match &metrics_addr {
        Some(addr) => {
            let source = {
                let manager = manager.clone();
                Arc::new(move || manager.stats(StatsQuery::default()).unwrap_or_default())
            };
            Some(MetricsServer::start(addr, source).context("metrics")?)
        }
        None => None,
    };
    manager
        .start_all(batch)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let rpc = match rpc {
        Some(server) => Some(
            server
                .spawn(manager.clone())
                .context("cannot start the RPC server")?,
        ),
        None => None,
    };
    {
        let manager = manager.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                // Wait until a signal really arrives (retry errors), and
                // stop before logging: a log write must never stand
                // between SIGTERM and the shutdown.
                let sig = loop {
                    if let Ok(sig) = signals.wait() {
                        break sig;
                    }
                };
                manager.request_stop();
                tracing::info!(signal = %sig, "stopping");
            })
            .context("cannot start the signal thread")?;
    }
    manager.wait_for_stop();
    // No new calls, then every controller drains and stops.
    if let Some(rpc) = rpc {
        rpc.stop();
    }
    manager.shutdown_all();
    if let Some(m) = metrics {
        m.stop();
    }
    tracing::info!("shut down");
    Ok(())
}
