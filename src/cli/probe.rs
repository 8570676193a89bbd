//! `vhost-user-scsi probe` (hidden, for tests): one SCSI command or task
//! management function through our frontend against a backend socket, the
//! answer printed as it came. Lets a guest test compare a passthrough LUN
//! with what sg3_utils read from the device directly.
//!
//! Output: `response=R status=0xSS resid=N sense=HEX` and `data=HEX` (the
//! data-in the backend says it transferred); `--out FILE` also writes that
//! data-in, binary. A TMF prints `tmf-response=R`. Exit 0 whenever the
//! backend answered (whatever the SCSI status).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::frontend::{DataDir, FrontendConfig, ScsiFrontend, ScsiRequest};
use crate::virtio_scsi::T_TMF_LOGICAL_UNIT_RESET;

/// Options of `probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// vhost-user socket of the backend.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub lun: u16,
    /// The CDB in hex (spaces allowed).
    #[arg(long, value_name = "HEX")]
    pub cdb: Option<String>,
    /// Data-in buffer bytes.
    #[arg(long, value_name = "BYTES")]
    pub data_in: Option<u32>,
    /// Data-out bytes, in hex (with `--data-in` too: a bidirectional
    /// request).
    #[arg(long, value_name = "HEX")]
    pub data_out: Option<String>,
    /// Also write the transferred data-in to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Send LOGICAL UNIT RESET to `--lun` instead of a command.
    #[arg(long)]
    pub lun_reset: bool,
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() % 2 != 0 {
        bail!("odd number of hex digits in {s:?}");
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            digits
                .get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .with_context(|| format!("bad hex {s:?}"))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn main(args: &ProbeArgs) -> anyhow::Result<()> {
    let mut cfg = FrontendConfig::new(&args.socket);
    cfg.request_queues = 1;
    cfg.timeout = Duration::from_secs(120);
    let fe = ScsiFrontend::connect(&cfg)
        .with_context(|| format!("connect to {}", args.socket.display()))?;
    if args.lun_reset {
        let r = fe
            .tmf(args.lun, T_TMF_LOGICAL_UNIT_RESET, 0)
            .context("LOGICAL UNIT RESET")?;
        println!("tmf-response={r}");
        return Ok(());
    }
    let cdb = unhex(
        args.cdb
            .as_deref()
            .context("--cdb or --lun-reset is needed")?,
    )?;
    let out_data = args.data_out.as_deref().map(unhex).transpose()?;
    let dir = match (&out_data, args.data_in) {
        (Some(d), _) => DataDir::ToDevice(d),
        (None, Some(n)) => DataDir::FromDevice(n),
        (None, None) => DataDir::None,
    };
    let mut req = ScsiRequest::new(args.lun, &cdb, dir);
    if out_data.is_some() {
        req.data_in_len = args.data_in.unwrap_or(0);
    }
    let r = fe.execute(0, &req).context("command")?;
    println!(
        "response={} status={:#04x} resid={} sense={}",
        r.response,
        r.status,
        r.resid,
        hex(&r.sense)
    );
    println!("data={}", hex(r.data_in()));
    if let Some(path) = &args.out {
        std::fs::write(path, r.data_in()).with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}
