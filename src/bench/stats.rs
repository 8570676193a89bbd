//! Results: latency percentiles, the report (JSON via serde) and its text form.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency summary in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub max_us: f64,
}

/// A latency histogram in nanoseconds (1 ns .. 1 h, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p99_9_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Everything one bench run measured (the `--json` output).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub socket: String,
    pub rw: String,
    pub bs: u32,
    pub queues: u16,
    pub qd: u16,
    pub cdb: u8,
    pub event_idx: bool,
    pub indirect: bool,
    pub ring_size: u16,
    pub block_size: u32,
    pub capacity_blocks: u64,
    /// Measured window (after the ramp), seconds.
    pub runtime_s: f64,
    pub ios: u64,
    pub reads: u64,
    pub writes: u64,
    pub iops: f64,
    /// Megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
    pub latency: Latency,
    pub errors: u64,
    /// The first few errors, described.
    pub error_samples: Vec<String>,
    /// Blocks checked by `--verify` (during the run and in the read-back pass).
    pub verified_blocks: u64,
    pub mismatches: u64,
    pub mismatch_samples: Vec<String>,
    pub backend_pid: Option<u32>,
    pub backend_cpu_s: Option<f64>,
    pub backend_cpu_us_per_io: Option<f64>,
    /// Backend CPU as a percentage of one core over the window.
    pub backend_cpu_pct: Option<f64>,
    pub backend_private_dirty_kib: Option<u64>,
    pub bench_cpu_s: f64,
    pub bench_cpu_us_per_io: f64,
    /// Kicks sent / suppressed by EVENT_IDX over the whole run.
    pub kicks: u64,
    pub kicks_suppressed: u64,
    /// VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD negotiated.
    #[serde(default)]
    pub inflight: bool,
    /// Dirty logging on during the run (`--dirty-log`).
    #[serde(default)]
    pub dirty_log: bool,
    /// Log syncs (collect and clear) over the whole run.
    #[serde(default)]
    pub log_syncs: u64,
    /// Dirty pages the syncs collected over the whole run.
    #[serde(default)]
    pub dirty_pages: u64,
    /// The load generator polled its used rings for up to this many µs
    /// before sleeping (`--poll-us`; 0: it slept at once).
    #[serde(default)]
    pub poll_us: u32,
}

impl Report {
    /// A run that must make the command fail (I/O errors or verify mismatches).
    pub fn failed(&self) -> bool {
        self.errors > 0 || self.mismatches > 0
    }

    /// The human-readable summary.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} bs={} queues={} qd={} cdb={} event_idx={} indirect={} inflight={} dirty_log={} poll_us={} ring={} ({} blocks of {} bytes)",
            self.rw,
            self.bs,
            self.queues,
            self.qd,
            self.cdb,
            on_off(self.event_idx),
            on_off(self.indirect),
            on_off(self.inflight),
            on_off(self.dirty_log),
            self.poll_us,
            self.ring_size,
            self.capacity_blocks,
            self.block_size
        );
        let _ = writeln!(
            s,
            "  {:.0} IOPS, {:.1} MB/s over {:.2} s ({} reads, {} writes)",
            self.iops, self.mb_per_s, self.runtime_s, self.reads, self.writes
        );
        let l = &self.latency;
        let _ = writeln!(
            s,
            "  latency us: mean {:.1} p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
            l.mean_us, l.p50_us, l.p90_us, l.p99_us, l.p99_9_us, l.max_us
        );
        if let (Some(pid), Some(cpu)) = (self.backend_pid, self.backend_cpu_s) {
            let _ = write!(s, "  backend pid {pid}: {cpu:.2} CPU s");
            if let Some(p) = self.backend_cpu_pct {
                let _ = write!(s, " ({p:.1}% of a core)");
            }
            if let Some(u) = self.backend_cpu_us_per_io {
                let _ = write!(s, ", {u:.2} CPU us/IO");
            }
            if let Some(k) = self.backend_private_dirty_kib {
                let _ = write!(s, ", Private_Dirty {k} KiB");
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "  bench: {:.2} CPU s, {:.2} CPU us/IO; kicks {} (suppressed {})",
            self.bench_cpu_s, self.bench_cpu_us_per_io, self.kicks, self.kicks_suppressed
        );
        if self.dirty_log {
            let _ = writeln!(
                s,
                "  dirty log: {} syncs, {} dirty pages collected",
                self.log_syncs, self.dirty_pages
            );
        }
        if self.verified_blocks > 0 || self.mismatches > 0 {
            let _ = writeln!(
                s,
                "  verify: {} blocks checked, {} mismatches",
                self.verified_blocks, self.mismatches
            );
            for m in &self.mismatch_samples {
                let _ = writeln!(s, "    {m}");
            }
        }
        let _ = writeln!(s, "  errors: {}", self.errors);
        for e in &self.error_samples {
            let _ = writeln!(s, "    {e}");
        }
        s
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            h.record(i * 1000).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p90_us - 900.0).abs() < 1.0);
        assert!((l.p99_us - 990.0).abs() < 1.0);
        assert!((l.p99_9_us - 999.0).abs() < 1.0);
        assert!((l.max_us - 1000.0).abs() < 1.0);
        assert!((l.mean_us - 500.5).abs() < 1.0);
        assert_eq!(
            Latency::from_histogram(&new_histogram()),
            Latency::default()
        );
    }

    #[test]
    fn json_round_trip_and_text() {
        let r = Report {
            rw: "randread".into(),
            ios: 10,
            iops: 5.0,
            backend_pid: Some(1),
            backend_cpu_s: Some(0.5),
            errors: 1,
            error_samples: vec!["READ lba 8: CHECK CONDITION 3/11/00".into()],
            ..Default::default()
        };
        let j = serde_json::to_string(&r).unwrap();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["iops"], 5.0);
        assert_eq!(v["latency"]["p99_us"], 0.0);
        assert_eq!(serde_json::from_str::<Report>(&j).unwrap(), r);
        assert!(r.failed());
        let t = r.text();
        assert!(t.contains("5 IOPS"), "{t}");
        assert!(t.contains("3/11/00"));
        assert!(t.contains("backend pid 1"));
        assert!(t.contains("inflight=off dirty_log=off"), "{t}");
        assert!(!t.contains("dirty log:"));
        let logged = Report {
            dirty_log: true,
            log_syncs: 3,
            dirty_pages: 70,
            ..r
        };
        assert!(logged.text().contains("dirty log: 3 syncs, 70 dirty pages"));
        // Reports written before these fields still parse.
        let mut old: serde_json::Value = serde_json::from_str(&j).unwrap();
        for k in ["inflight", "dirty_log", "log_syncs", "dirty_pages"] {
            old.as_object_mut().unwrap().remove(k);
        }
        assert!(serde_json::from_value::<Report>(old).is_ok());
    }
}
