//! vhost-user-scsi: the binary edge (argument parsing, logging, signals,
//! exit codes). Errors are one line on stderr and exit code 1.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use tracing_subscriber::EnvFilter;

use vhost_user_scsi::cli::{build_device, Cli, Command, ServeArgs};
use vhost_user_scsi::scsi::{fnv1a64, NexusId};
use vhost_user_scsi::vhost::{bind, serve, ServerConfig, ShutdownSignal};

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

/// The I_T nexus of the controller on `socket`: stable across restarts, so
/// persisted reservations find their initiator again.
fn nexus_of(socket: &std::path::Path) -> NexusId {
    let dir = socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .unwrap_or_default();
    let name = dir.join(socket.file_name().unwrap_or_default());
    NexusId(fnv1a64(name.as_os_str().as_encoded_bytes()))
}

fn run_serve(args: &ServeArgs) -> anyhow::Result<()> {
    // Block SIGINT/SIGTERM before any thread starts so that every thread
    // inherits the mask and only the signal thread receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("cannot block signals")?;

    let device = Arc::new(build_device(args)?);
    let listener = bind(&args.socket)?;
    let shutdown = ShutdownSignal::new().context("cannot create the shutdown eventfd")?;
    {
        let shutdown = shutdown.clone();
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
                shutdown.trigger();
                tracing::info!(signal = %sig, "stopping");
            })
            .context("cannot start the signal thread")?;
    }
    let config = ServerConfig {
        socket: args.socket.clone(),
        nexus: nexus_of(&args.socket),
        request_queues: usize::from(args.num_queues),
        queue_size: usize::from(args.queue_size),
    };
    serve(device, &config, listener, &shutdown)?;
    Ok(())
}
