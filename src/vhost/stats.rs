//! Per-LUN and per-queue counters, kept on the data path at almost no cost
//! and read by the management plane (`stats`, Prometheus metrics).
//!
//! Each LUN has one shard of counters per request queue, written only by
//! that queue's worker (which runs under its own mutex, so there is one
//! writer at a time): an update is a relaxed load and store on a cache line
//! no other queue writes. Readers sum the shards. Latency goes into a
//! log-linear histogram (8 buckets per power of two of nanoseconds: at most
//! 12.5% error), from which percentiles are read.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two (2^3).
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Powers of two covered exactly: up to 2^40 ns (about 18 minutes); longer
/// latencies land in the last bucket.
const MAX_EXP: u32 = 40;
const BUCKETS: usize = (MAX_EXP as usize - 1) * SUB;

/// What a completed command was, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdKind {
    /// A READ that moved this many bytes (when successful).
    Read(u64),
    /// A WRITE of this many bytes.
    Write(u64),
    /// Any other command.
    Other,
}

#[repr(align(128))]
struct Shard {
    reads: AtomicU64,
    writes: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
    started: AtomicU64,
    completed: AtomicU64,
    max_ns: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Shard {
    fn new() -> Self {
        Shard {
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            other: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Add `n` to a counter that only one thread at a time writes.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// The histogram bucket of a latency.
fn bucket(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros(); // >= SUB_BITS
    let sub = ((ns >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    let i = (exp - SUB_BITS + 1) as usize * SUB + sub;
    i.min(BUCKETS - 1)
}

/// The middle of bucket `i`, in nanoseconds.
fn bucket_mid(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let exp = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = (i % SUB) as u64;
    let low = (SUB as u64 + sub) << (exp - SUB_BITS);
    low + (1u64 << (exp - SUB_BITS)) / 2
}

/// The counters of one LUN of one controller.
pub struct LunStats {
    shards: Box<[Shard]>,
}

impl std::fmt::Debug for LunStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LunStats")
            .field("shards", &self.shards.len())
            .finish()
    }
}

/// A consistent-enough copy of a LUN's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LunSnapshot {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub other: u64,
    pub errors: u64,
    pub in_flight: u64,
    pub max_ns: u64,
    buckets: Vec<u64>,
}

impl LunSnapshot {
    /// Commands counted in the latency histogram.
    pub fn completed(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The latency below which a fraction `q` (0..=1) of the commands
    /// completed, in nanoseconds (0 when none completed).
    pub fn percentile_ns(&self, q: f64) -> u64 {
        let total = self.completed();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_mid(i).min(self.max_ns.max(1));
            }
        }
        self.max_ns
    }
}

impl LunStats {
    /// Counters for a controller with `queues` request queues.
    pub fn new(queues: usize) -> Self {
        LunStats {
            shards: (0..queues.max(1)).map(|_| Shard::new()).collect(),
        }
    }

    fn shard(&self, queue: usize) -> Option<&Shard> {
        self.shards.get(queue)
    }

    /// Queue `queue` accepted a command for this LUN.
    pub(crate) fn started(&self, queue: usize) {
        if let Some(s) = self.shard(queue) {
            bump(&s.started, 1);
        }
    }

    /// Queue `queue` completed a command for this LUN.
    pub(crate) fn completed(&self, queue: usize, kind: CmdKind, ok: bool, latency_ns: u64) {
        let Some(s) = self.shard(queue) else {
            return;
        };
        match kind {
            CmdKind::Read(bytes) => {
                bump(&s.reads, 1);
                if ok {
                    bump(&s.read_bytes, bytes);
                }
            }
            CmdKind::Write(bytes) => {
                bump(&s.writes, 1);
                if ok {
                    bump(&s.write_bytes, bytes);
                }
            }
            CmdKind::Other => bump(&s.other, 1),
        }
        if !ok {
            bump(&s.errors, 1);
        }
        bump(&s.completed, 1);
        if let Some(b) = s.buckets.get(bucket(latency_ns)) {
            bump(b, 1);
        }
        if latency_ns > s.max_ns.load(Ordering::Relaxed) {
            s.max_ns.store(latency_ns, Ordering::Relaxed);
        }
    }

    /// Sum of every queue's counters.
    pub fn snapshot(&self) -> LunSnapshot {
        let mut out = LunSnapshot {
            buckets: vec![0; BUCKETS],
            ..LunSnapshot::default()
        };
        let (mut started, mut completed) = (0u64, 0u64);
        for s in self.shards.iter() {
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            out.reads += get(&s.reads);
            out.writes += get(&s.writes);
            out.read_bytes += get(&s.read_bytes);
            out.write_bytes += get(&s.write_bytes);
            out.other += get(&s.other);
            out.errors += get(&s.errors);
            out.max_ns = out.max_ns.max(get(&s.max_ns));
            started += get(&s.started);
            completed += get(&s.completed);
            for (sum, b) in out.buckets.iter_mut().zip(s.buckets.iter()) {
                *sum += get(b);
            }
        }
        out.in_flight = started.saturating_sub(completed);
        out
    }
}

/// The counters of one request queue (across connections).
#[derive(Debug, Default)]
pub struct QueueStats {
    requests: AtomicU64,
    in_flight: AtomicU64,
}

impl QueueStats {
    pub(crate) fn popped(&self, n: u64) {
        bump(&self.requests, n);
    }

    pub(crate) fn set_in_flight(&self, n: u64) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    /// Requests taken from the ring so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests in flight at the last look.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for ns in (0..100_000u64).chain([1 << 20, 123_456_789, 1 << 39]) {
            let b = bucket(ns);
            assert!(b >= last || ns >= 100_000, "{ns}");
            last = b;
            let mid = bucket_mid(b);
            let err = (mid as f64 - ns as f64).abs() / (ns.max(1) as f64);
            assert!(err <= 0.125, "{ns} -> {mid}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn counts_and_percentiles() {
        let s = LunStats::new(2);
        for i in 0..100u64 {
            s.started((i % 2) as usize);
            s.completed((i % 2) as usize, CmdKind::Read(4096), true, (i + 1) * 1000);
        }
        s.started(1);
        s.completed(1, CmdKind::Write(512), false, 5);
        s.started(0);
        let snap = s.snapshot();
        assert_eq!(snap.reads, 100);
        assert_eq!(snap.read_bytes, 409_600);
        assert_eq!(snap.writes, 1);
        assert_eq!(snap.write_bytes, 0);
        assert_eq!(snap.errors, 1);
        assert_eq!(snap.in_flight, 1);
        assert_eq!(snap.max_ns, 100_000);
        let p50 = snap.percentile_ns(0.5) as f64;
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.13, "{p50}");
        assert_eq!(snap.percentile_ns(1.0), 100_000);
        // Out-of-range queue indexes are ignored, never a panic.
        s.started(7);
        s.completed(7, CmdKind::Other, true, 1);
    }
}
