//! The hidden `bench-report` step of `scripts/bench.sh`: reads the results
//! of a matrix run (a sequence of JSON values, one per row:
//! `{"engine","media","rw","bs","queues","qd","data"}` where `data` is a
//! bench [`Report`] or fio's `--output-format=json` output) and writes the
//! markdown table and a PNG plot of IOPS and latency against queue depth.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use super::stats::Report;
use super::BenchError;

/// Options of the hidden `bench-report` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct ReportArgs {
    /// Results of a matrix run (JSON values, one per row).
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// PNG plot to write.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Markdown table to write (default: stdout).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// TrueType font for the plot's text.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    pub font: PathBuf,
}

#[derive(Debug, Deserialize)]
struct RawRow {
    engine: String,
    media: String,
    rw: String,
    bs: u32,
    queues: u16,
    qd: u16,
    /// fio rows: CPU seconds of the whole fio process tree (all threads,
    /// io-wq workers included) over `span_s` seconds of load.
    #[serde(default)]
    cpu_s: Option<f64>,
    #[serde(default)]
    span_s: Option<f64>,
    data: Value,
}

/// One normalised row of the matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub engine: String,
    pub media: String,
    pub rw: String,
    pub bs: u32,
    pub queues: u16,
    pub qd: u16,
    pub iops: f64,
    pub mb_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU of the I/O engine (fio itself, or the backend daemon) per I/O.
    pub cpu_us_per_io: Option<f64>,
    /// CPU of the bench (the frontend playing the guest) per I/O.
    pub bench_cpu_us_per_io: Option<f64>,
    pub errors: u64,
    /// Backend CPU as % of a core (bench rows with --backend-pid).
    pub backend_cpu_pct: Option<f64>,
    pub private_dirty_kib: Option<u64>,
    /// Repeats of this case merged into this row, and the IOPS spread
    /// (max - min) / median over them.
    pub runs: u32,
    pub spread: Option<f64>,
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// Extract a row from fio's JSON (one group-reported job).
fn from_fio(raw: &RawRow) -> Result<Row, String> {
    let job = raw.data["jobs"].get(0).ok_or("fio output without jobs")?;
    let dir = if raw.rw.contains("write") {
        "write"
    } else {
        "read"
    };
    let d = &job[dir];
    let pct = |p: &str| {
        let lat = &d["lat_ns"]["percentile"][p];
        let v = if lat.is_null() {
            &d["clat_ns"]["percentile"][p]
        } else {
            lat
        };
        num(v) / 1000.0
    };
    let ios = num(&d["total_ios"]);
    let iops = num(&d["iops"]);
    let cpu_us_per_io = match (raw.cpu_s, raw.span_s) {
        // Whole-process CPU over ramp + runtime, per I/O at the measured rate.
        (Some(c), Some(span)) if iops > 0.0 && span > 0.0 => Some(c * 1e6 / (iops * span)),
        _ => {
            // fio's own figures (RUSAGE_THREAD: io-wq workers not included).
            let cpu_s = (num(&job["usr_cpu"]) + num(&job["sys_cpu"])) / 100.0
                * num(&job["job_runtime"])
                / 1000.0;
            (ios > 0.0).then(|| cpu_s * 1e6 / ios)
        }
    };
    Ok(Row {
        engine: raw.engine.clone(),
        media: raw.media.clone(),
        rw: raw.rw.clone(),
        bs: raw.bs,
        queues: raw.queues,
        qd: raw.qd,
        iops: num(&d["iops"]),
        mb_per_s: num(&d["bw_bytes"]) / 1e6,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        cpu_us_per_io,
        bench_cpu_us_per_io: None,
        errors: job["error"].as_u64().unwrap_or(0),
        backend_cpu_pct: None,
        private_dirty_kib: None,
        runs: 1,
        spread: None,
    })
}

fn from_bench(raw: &RawRow) -> Result<Row, String> {
    let r: Report = serde_json::from_value(raw.data.clone()).map_err(|e| e.to_string())?;
    Ok(Row {
        engine: raw.engine.clone(),
        media: raw.media.clone(),
        rw: raw.rw.clone(),
        bs: raw.bs,
        queues: raw.queues,
        qd: raw.qd,
        iops: r.iops,
        mb_per_s: r.mb_per_s,
        p50_us: r.latency.p50_us,
        p99_us: r.latency.p99_us,
        cpu_us_per_io: r.backend_cpu_us_per_io,
        bench_cpu_us_per_io: Some(r.bench_cpu_us_per_io),
        errors: r.errors + r.mismatches,
        backend_cpu_pct: r.backend_cpu_pct,
        private_dirty_kib: r.backend_private_dirty_kib,
        runs: 1,
        spread: None,
    })
}

/// Parse a results file's text into rows (in file order).
pub fn parse_rows(text: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for v in serde_json::Deserializer::from_str(text).into_iter::<RawRow>() {
        let raw = v.map_err(|e| format!("results: {e}"))?;
        let row = if raw.engine == "fio" {
            from_fio(&raw)
        } else {
            from_bench(&raw)
        };
        rows.push(
            row.map_err(|e| format!("{} {} {} qd {}: {e}", raw.engine, raw.media, raw.rw, raw.qd))?,
        );
    }
    Ok(rows)
}

/// Merge repeats of the same engine and case: keep the run with the
/// median IOPS, note how many runs there were and their IOPS spread.
pub fn merge_repeats(rows: Vec<Row>) -> Vec<Row> {
    let mut groups: Vec<Vec<Row>> = Vec::new();
    for r in rows {
        match groups
            .iter_mut()
            .find(|g| g[0].engine == r.engine && same_case(&g[0], &r))
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .map(|mut g| {
            g.sort_by(|a, b| a.iops.total_cmp(&b.iops));
            let n = g.len();
            let (lo, hi) = (g[0].iops, g[n - 1].iops);
            let mut m = g.swap_remove(n / 2);
            m.runs = n as u32;
            m.spread = (n > 1 && m.iops > 0.0).then(|| (hi - lo) / m.iops);
            m
        })
        .collect()
}

fn same_case(a: &Row, b: &Row) -> bool {
    a.media == b.media && a.rw == b.rw && a.bs == b.bs && a.queues == b.queues && a.qd == b.qd
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

/// The markdown table: one line per row, with ratios to fio's row of the
/// same case.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| media | workload | queues x QD | engine | IOPS | MB/s | p50 us | p99 us | engine CPU us/IO | bench CPU us/IO | IOPS / fio | CPU / fio | runs (IOPS spread) |\n\
         |---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows.iter().filter(|r| r.rw != "idle") {
        let fio = rows.iter().find(|f| f.engine == "fio" && same_case(f, r));
        let (iops_ratio, cpu_ratio) = match fio {
            Some(f) if r.engine != "fio" => (
                (f.iops > 0.0).then(|| r.iops / f.iops),
                match (r.cpu_us_per_io, f.cpu_us_per_io) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                },
            ),
            _ => (None, None),
        };
        s.push_str(&format!(
            "| {} | {} {}k | {} x {} | {}{} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {}{} |\n",
            r.media,
            r.rw,
            r.bs / 1024,
            r.queues,
            r.qd,
            r.engine,
            if r.errors > 0 { " (ERRORS)" } else { "" },
            r.iops,
            r.mb_per_s,
            r.p50_us,
            r.p99_us,
            opt(r.cpu_us_per_io, 2),
            opt(r.bench_cpu_us_per_io, 2),
            opt(iops_ratio, 2),
            opt(cpu_ratio, 2),
            r.runs,
            r.spread
                .map_or_else(String::new, |x| format!(" ({:.0}%)", 100.0 * x)),
        ));
    }
    s
}

fn find<'a>(
    rows: &'a [Row],
    engine: &str,
    media: &str,
    rw: &str,
    bs: u32,
    queues: u16,
    qd: u16,
) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.engine == engine
            && r.media == media
            && r.rw == rw
            && r.bs == bs
            && r.queues == queues
            && r.qd == qd
    })
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**MISSED**",
        None => "not measured",
    }
}

/// The speed targets, evaluated on the (merged) rows.
pub fn targets(rows: &[Row]) -> String {
    let mut s = String::from("| target | measured | result |\n|---|---|---|\n");
    // One table line: what was measured and whether it meets the target,
    // or "-" when the rows it needs are missing.
    let mut line = |t: &str, m: Option<(String, bool)>| {
        let (measured, ok) = match m {
            Some((text, ok)) => (text, Some(ok)),
            None => ("-".to_string(), None),
        };
        s.push_str(&format!("| {t} | {measured} | {} |\n", verdict(ok)));
    };
    let rr = |e: &str, media: &str, q: u16, qd: u16| find(rows, e, media, "randread", 4096, q, qd);
    // 1. CPU per I/O on tmpfs, randread 4k QD32 1 queue.
    let cpu = |e: &str| rr(e, "tmpfs", 1, 32).and_then(|r| r.cpu_us_per_io);
    for (other, name, limit) in [("fio", "fio's", 1.2), ("peer", "vhost-device-scsi's", 0.7)] {
        line(
            &format!("tmpfs 4k randread QD32 1q: our CPU/IO <= {limit}x {name}"),
            cpu("ours").zip(cpu(other)).map(|(a, b)| {
                (
                    format!("{a:.2} vs {b:.2} us/IO = {:.2}x", a / b),
                    a <= limit * b,
                )
            }),
        );
    }
    // 2. Real disk.
    line(
        "disk 4k randread QD32: IOPS >= 0.9x fio",
        rr("ours", "disk", 1, 32)
            .zip(rr("fio", "disk", 1, 32))
            .map(|(a, b)| {
                (
                    format!("{:.0} vs {:.0} = {:.2}x", a.iops, b.iops, a.iops / b.iops),
                    a.iops >= 0.9 * b.iops,
                )
            }),
    );
    line(
        "disk 4k randread QD1: p50 <= fio p50 + 10 us",
        rr("ours", "disk", 1, 1)
            .zip(rr("fio", "disk", 1, 1))
            .map(|(a, b)| {
                (
                    format!(
                        "{:.1} vs {:.1} us (+{:.1})",
                        a.p50_us,
                        b.p50_us,
                        a.p50_us - b.p50_us
                    ),
                    a.p50_us <= b.p50_us + 10.0,
                )
            }),
    );
    for rw in ["read", "write"] {
        let seq = |e: &str| find(rows, e, "disk", rw, 131072, 1, 8);
        line(
            &format!("disk 128k seq {rw} QD8: MB/s >= 0.9x fio"),
            seq("ours").zip(seq("fio")).map(|(a, b)| {
                (
                    format!(
                        "{:.0} vs {:.0} MB/s = {:.2}x",
                        a.mb_per_s,
                        b.mb_per_s,
                        a.mb_per_s / b.mb_per_s
                    ),
                    a.mb_per_s >= 0.9 * b.mb_per_s,
                )
            }),
        );
    }
    // 3. Scaling.
    for media in ["tmpfs", "disk"] {
        for rw in ["randread", "randwrite"] {
            let q = |n: u16| find(rows, "ours", media, rw, 4096, n, 32);
            line(
                &format!("{media} 4k {rw}: 2 queues > 1 queue at QD32 per queue"),
                q(1).zip(q(2)).map(|(a, b)| {
                    (
                        format!(
                            "{:.0} -> {:.0} IOPS ({:.2}x)",
                            a.iops,
                            b.iops,
                            b.iops / a.iops
                        ),
                        b.iops > a.iops,
                    )
                }),
            );
        }
    }
    // 4. Idle cost and memory.
    let idle = rows.iter().find(|r| r.engine == "ours" && r.rw == "idle");
    line(
        "idle connected guest (4 queues): < 1% of a core",
        idle.and_then(|r| r.backend_cpu_pct)
            .map(|p| (format!("{p:.3}% of a core"), p < 1.0)),
    );
    let dirty = rows
        .iter()
        .filter(|r| r.engine == "ours" && r.queues == 4)
        .filter_map(|r| r.private_dirty_kib)
        .max();
    line(
        "daemon Private_Dirty with 4 queues of 256 entries: < 64 MiB",
        dirty.map(|k| {
            (
                format!("{:.1} MiB (max over the 4-queue runs)", k as f64 / 1024.0),
                k < 64 * 1024,
            )
        }),
    );
    s
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn load_font(path: &Path) -> Result<(), BenchError> {
    let bytes = std::fs::read(path).map_err(|source| BenchError::Io {
        what: format!(
            "font {} (install fonts-dejavu-core or pass --font)",
            path.display()
        ),
        source,
    })?;
    // The font lives as long as the process (plotters wants 'static).
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| BenchError::Report(format!("{} is not a usable font", path.display())))
}

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Plot IOPS (top) and p50 latency (bottom) against QD for each media and
/// 4k random workload, one line per engine and queue count.
pub fn plot(rows: &[Row], out: &Path) -> DrawResult<()> {
    let mut panels: Vec<(String, String)> = Vec::new();
    for r in rows.iter().filter(|r| r.rw.starts_with("rand")) {
        let k = (r.media.clone(), r.rw.clone());
        if !panels.contains(&k) {
            panels.push(k);
        }
    }
    let mut series: Vec<(String, u16)> = Vec::new();
    for r in rows.iter().filter(|r| r.rw.starts_with("rand")) {
        let k = (r.engine.clone(), r.queues);
        if !series.contains(&k) {
            series.push(k);
        }
    }
    let cols = panels.len().max(1);
    let root = BitMapBackend::new(out, (420 * cols as u32, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let cells = root.split_evenly((2, cols));
    for (c, (media, rw)) in panels.iter().enumerate() {
        let pts = |eng: &str, q: u16, f: &dyn Fn(&Row) -> f64| -> Vec<(f64, f64)> {
            let mut v: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| &r.media == media && &r.rw == rw && r.engine == eng && r.queues == q)
                .map(|r| (f64::from(r.qd), f(r)))
                .collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v
        };
        let max_qd = rows.iter().map(|r| f64::from(r.qd)).fold(1.0, f64::max) * 1.5;
        for (row, metric) in [(0usize, "kIOPS"), (1, "p50 latency (us)")] {
            let get: &dyn Fn(&Row) -> f64 = if row == 0 {
                &|r: &Row| r.iops / 1000.0
            } else {
                &|r: &Row| r.p50_us
            };
            let ymax = rows
                .iter()
                .filter(|r| &r.media == media && &r.rw == rw)
                .map(get)
                .fold(1.0, f64::max)
                * 1.15;
            let area = &cells[row * cols + c];
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{media} {rw} 4k: {metric}"), ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d((0.8f64..max_qd).log_scale(), 0f64..ymax)?;
            chart
                .configure_mesh()
                .x_desc("queue depth per queue")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .label_style(("sans-serif", 12))
                .draw()?;
            for (k, (eng, q)) in series.iter().enumerate() {
                let p = pts(eng, *q, get);
                if p.is_empty() {
                    continue;
                }
                let color = COLORS[k % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(p.clone(), color.stroke_width(2)))?
                    .label(format!("{eng} {q}q"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
                chart.draw_series(p.into_iter().map(|xy| Circle::new(xy, 3, color.filled())))?;
            }
            if row == 0 && c == 0 {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 12))
                    .position(SeriesLabelPosition::UpperLeft)
                    .draw()?;
            }
        }
    }
    root.present()?;
    Ok(())
}

/// The `bench-report` subcommand.
pub fn main(args: &ReportArgs) -> Result<(), BenchError> {
    let text = std::fs::read_to_string(&args.from).map_err(|source| BenchError::Io {
        what: format!("read {}", args.from.display()),
        source,
    })?;
    let rows = merge_repeats(parse_rows(&text).map_err(BenchError::Report)?);
    let md = format!("{}\n### Targets\n\n{}", markdown(&rows), targets(&rows));
    match &args.markdown {
        Some(p) => std::fs::write(p, md).map_err(|source| BenchError::Io {
            what: format!("write {}", p.display()),
            source,
        })?,
        None => print!("{md}"),
    }
    if let Some(out) = &args.out {
        load_font(&args.font)?;
        plot(&rows, out).map_err(|e| BenchError::Report(format!("plot {}: {e}", out.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIO: &str = r#"{"engine":"fio","media":"tmpfs","rw":"randread","bs":4096,"queues":1,"qd":32,
      "data":{"fio version":"fio-3.33","jobs":[{"error":0,"job_runtime":2000,"usr_cpu":10.0,"sys_cpu":40.0,
      "read":{"iops":100000.0,"bw_bytes":409600000,"total_ios":200000,
      "lat_ns":{"percentile":{"50.000000":20000,"99.000000":50000}},"clat_ns":{}}}]}}"#;

    #[test]
    fn rows_table_and_plot() {
        let ours = Report {
            iops: 90000.0,
            mb_per_s: 368.6,
            backend_cpu_us_per_io: Some(6.0),
            bench_cpu_us_per_io: 4.0,
            latency: crate::bench::Latency {
                p50_us: 30.0,
                p99_us: 70.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let text = format!(
            "{FIO}\n{}",
            serde_json::json!({"engine":"ours","media":"tmpfs","rw":"randread","bs":4096,"queues":1,"qd":32,"data":ours})
        );
        let rows = parse_rows(&text).unwrap();
        assert_eq!(rows.len(), 2);
        let t = targets(&rows);
        assert!(t.contains("| 6.00 vs 5.00 us/IO = 1.20x | met |"), "{t}");
        let mut rep = rows.clone();
        rep.push(Row {
            iops: 80000.0,
            ..rows[1].clone()
        });
        rep.push(Row {
            iops: 100000.0,
            ..rows[1].clone()
        });
        let m = merge_repeats(rep);
        assert_eq!(m.len(), 2);
        assert_eq!((m[1].iops, m[1].runs), (90000.0, 3));
        assert!((m[1].spread.unwrap() - 20000.0 / 90000.0).abs() < 1e-9);
        let f = &rows[0];
        assert_eq!(f.iops, 100000.0);
        assert_eq!(f.p50_us, 20.0);
        // 50% of 2 s = 1 s over 200000 I/Os.
        assert!((f.cpu_us_per_io.unwrap() - 5.0).abs() < 1e-9);
        let md = markdown(&rows);
        assert!(
            md.contains("| tmpfs | randread 4k | 1 x 32 | ours | 90000 |"),
            "{md}"
        );
        assert!(md.contains("| 0.90 | 1.20 | 1 |"), "{md}");
        let font = Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
        if font.exists() {
            load_font(font).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let png = dir.path().join("p.png");
            plot(&rows, &png).unwrap();
            assert!(std::fs::metadata(&png).unwrap().len() > 1000);
        }
        assert!(parse_rows("{\"engine\":").is_err());
        // With the process tree's CPU: 3 s over 2 s at 100000 IOPS = 15 us/IO.
        let with_time = FIO.replace("\"qd\":32,", "\"qd\":32,\"cpu_s\":3.0,\"span_s\":2.0,");
        let r = parse_rows(&with_time).unwrap();
        assert!((r[0].cpu_us_per_io.unwrap() - 15.0).abs() < 1e-9);
    }
}
