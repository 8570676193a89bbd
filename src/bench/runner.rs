//! The run: connect, identify the LUN, one thread per request queue, CPU
//! sampling, progress, read-back, teardown.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use vm_memory::ByteValued;

use super::stats::{new_histogram, Latency, Report};
use super::verify;
use super::workload::{OpGen, Prng};
use super::{cpu, BenchArgs, BenchError};
use crate::frontend::features::VIRTIO_RING_F_INDIRECT_DESC;
use crate::frontend::vring::{RingLayout, Seg};
use crate::frontend::{cdb, FrontendConfig, ScsiFrontend, ScsiRequest, ScsiResponse};
use crate::virtio_scsi::defs::{CmdReqHeader, CDB_SIZE};

/// Size of the request header on the wire.
const REQ_HDR: u32 = std::mem::size_of::<CmdReqHeader>() as u32;
/// Size of the response header (sense included).
const RESP_HDR: u32 = 108;
/// Per-slot metadata page: request header at 0, response at 128, indirect
/// table at 512.
const META: usize = 4096;
const RESP_OFF: u64 = 128;
const TABLE_OFF: u64 = 512;
/// Sentinel written in the response byte before submission.
const NO_RESPONSE: u8 = 0xff;
/// A backend that completes nothing for this long has stalled.
const STALL: Duration = Duration::from_secs(30);
/// `--dirty-log`: how often the log is collected and cleared (QEMU's
/// migration sync runs about that often while it iterates over RAM).
const LOG_SYNC: Duration = Duration::from_millis(100);
/// How many errors / mismatches are described.
const SAMPLES: usize = 5;
/// `gens` value of a unit whose contents are unknown (a write failed).
const UNKNOWN: u32 = u32::MAX;

fn fe_err(what: impl Into<String>) -> impl FnOnce(crate::frontend::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Frontend { what, source }
}

/// What the threads share.
struct Shared {
    ramp_end: Instant,
    end: Instant,
    stop: AtomicBool,
    /// Completions so far per queue (for the progress line).
    done: Vec<AtomicU64>,
    running: AtomicUsize,
}

/// The fixed parameters of a run.
struct Params {
    lun: [u8; 8],
    cdb16: bool,
    indirect: bool,
    bs: u32,
    block_size: u32,
    blocks_per_io: u64,
    total_units: u64,
    queues: u64,
    qd: usize,
    verify: bool,
    run_id: u64,
    seed: u64,
    rw: super::Rw,
    rwmix_read: u8,
    poll: Duration,
}

#[derive(Default)]
struct QueueResult {
    hist: Option<Histogram<u64>>,
    ios: u64,
    reads: u64,
    writes: u64,
    errors: u64,
    error_samples: Vec<String>,
    verified: u64,
    mismatches: u64,
    mismatch_samples: Vec<String>,
}

impl QueueResult {
    fn error(&mut self, msg: impl FnOnce() -> String) {
        self.errors += 1;
        if self.error_samples.len() < SAMPLES {
            self.error_samples.push(msg());
        }
    }
    fn mismatch(&mut self, msg: impl FnOnce() -> String) {
        self.mismatches += 1;
        if self.mismatch_samples.len() < SAMPLES {
            self.mismatch_samples.push(msg());
        }
    }
}

/// One in-flight slot and its preallocated buffers.
struct Slot {
    meta: u64,
    data: u64,
    busy: bool,
    unit: u64,
    write: bool,
    t0: Instant,
}

fn frontend_config(args: &BenchArgs, ring: u16) -> FrontendConfig {
    let mut cfg = FrontendConfig::new(&args.socket);
    cfg.request_queues = args.queues;
    cfg.queue_size = ring;
    cfg.event_idx = args.event_idx.is_on();
    cfg.indirect = args.indirect.is_on();
    cfg.inflight = args.inflight.is_on();
    let rings = (usize::from(args.queues) + 2)
        * (RingLayout::new(ring).total as usize).next_multiple_of(4096);
    let slots = usize::from(args.queues) * usize::from(args.qd) * (META + args.bs as usize);
    let need = 2 * rings + slots + (8 << 20);
    cfg.mem_size = need.next_multiple_of(2 << 20).max(64 << 20);
    cfg
}

fn connect(args: &BenchArgs, ring: u16) -> Result<ScsiFrontend, BenchError> {
    ScsiFrontend::connect(&frontend_config(args, ring)).map_err(|source| BenchError::Handshake {
        socket: args.socket.display().to_string(),
        source,
    })
}

fn describe(r: &ScsiResponse) -> String {
    match r.sense_key() {
        Some((k, asc, ascq)) => format!(
            "response {} status {:#04x} sense {k:x}/{asc:02x}/{ascq:02x}",
            r.response, r.status
        ),
        None => format!("response {} status {:#04x}", r.response, r.status),
    }
}

/// A blocking command on request queue 0. Some backends lose the very
/// first kick when it comes right after the handshake (vhost-device-scsi
/// 0.1.0 does, about one connection in six; a guest kicks much later): if
/// nothing completes within a second, kick once more.
fn command(
    fe: &ScsiFrontend,
    p_lun: [u8; 8],
    cdb: &[u8],
    data_in: u32,
) -> Result<ScsiResponse, BenchError> {
    let what = || format!("command {:#04x}", cdb[0]);
    let mut req = ScsiRequest::new(0, cdb, crate::frontend::DataDir::FromDevice(data_in));
    req.lun = p_lun;
    let vq = crate::frontend::FIRST_REQUEST_QUEUE;
    let tag = fe.submit(0, &req).map_err(fe_err(what()))?;
    let c = match fe.wait_tag(vq, tag, Duration::from_secs(1)) {
        Err(crate::frontend::Error::Timeout { .. }) => {
            fe.kick(vq).map_err(fe_err(what()))?;
            fe.wait_tag(vq, tag, STALL)
        }
        r => r,
    }
    .map_err(fe_err(what()))?;
    match c.outcome {
        crate::frontend::Outcome::Scsi(r) => Ok(r),
        _ => Err(BenchError::Report(format!(
            "{}: completion of another kind",
            what()
        ))),
    }
}

/// TEST UNIT READY (a unit attention is retried once), then READ CAPACITY:
/// (blocks, block size).
fn identify(fe: &ScsiFrontend, lun: [u8; 8]) -> Result<(u64, u32), BenchError> {
    let mut r = command(fe, lun, &cdb::test_unit_ready(), 0)?;
    if r.response == 0 && r.status == 2 && r.sense_key().map(|s| s.0) == Some(6) {
        r = command(fe, lun, &cdb::test_unit_ready(), 0)?;
    }
    if r.response != 0 || r.status != 0 {
        return Err(BenchError::Scsi(format!(
            "TEST UNIT READY failed: {}",
            describe(&r)
        )));
    }
    let r = command(fe, lun, &cdb::read_capacity10(), 8)?;
    let d = r.data_in();
    if r.response != 0 || r.status != 0 || d.len() < 8 {
        return Err(BenchError::Scsi(format!(
            "READ CAPACITY(10) failed: {} ({} bytes)",
            describe(&r),
            d.len()
        )));
    }
    let last = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    let bs = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
    if last != u32::MAX {
        return Ok((u64::from(last) + 1, bs));
    }
    let r = command(fe, lun, &cdb::read_capacity16(32), 32)?;
    let d = r.data_in();
    if r.response != 0 || r.status != 0 || d.len() < 12 {
        return Err(BenchError::Scsi(format!(
            "READ CAPACITY(16) failed: {}",
            describe(&r)
        )));
    }
    let mut last = [0u8; 8];
    last.copy_from_slice(&d[..8]);
    Ok((
        u64::from_be_bytes(last) + 1,
        u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
    ))
}

/// Run the bench. `progress`: draw a live line on stdout.
pub fn run(args: &BenchArgs, progress: bool) -> Result<Report, BenchError> {
    if args.runtime <= 0.0 || args.ramp < 0.0 || !args.runtime.is_finite() || !args.ramp.is_finite()
    {
        return Err(BenchError::Options("runtime must be > 0, ramp >= 0".into()));
    }
    if args.bs == 0 || args.bs % 512 != 0 {
        return Err(BenchError::Options(format!(
            "bs {} is not a multiple of 512",
            args.bs
        )));
    }
    let qd = usize::from(args.qd);
    let auto_ring = |per_req: usize| (qd * per_req).next_power_of_two().clamp(128, 32768) as u16;
    let mut ring = args.ring_size.unwrap_or_else(|| auto_ring(1));
    let mut fe = connect(args, ring)?;
    let mut indirect =
        args.indirect.is_on() && fe.connection().has_feature(VIRTIO_RING_F_INDIRECT_DESC);
    if !indirect && usize::from(ring) < 3 * qd {
        if args.ring_size.is_some() {
            return Err(BenchError::Options(format!(
                "ring size {ring} cannot hold {qd} requests of 3 descriptors (indirect descriptors not in use)"
            )));
        }
        let _ = fe.shutdown();
        ring = auto_ring(3);
        fe = connect(args, ring)?;
        indirect = false;
    }
    let event_idx = fe
        .connection()
        .has_feature(crate::frontend::features::VIRTIO_RING_F_EVENT_IDX);
    if args.dirty_log && !fe.connection().has_log_shmfd() {
        let _ = fe.shutdown();
        return Err(BenchError::Options(
            "--dirty-log: the backend does not offer VHOST_USER_PROTOCOL_F_LOG_SHMFD".into(),
        ));
    }
    let lun = crate::virtio_scsi::encode_lun(args.target, args.lun);
    let result = drive(&fe, args, lun, indirect, ring, event_idx, progress);
    // Teardown: GET_VRING_BASE on every ring, also after a failed run.
    let down = fe.shutdown().map_err(fe_err("teardown (GET_VRING_BASE)"));
    let report = result?;
    down?;
    Ok(report)
}

fn drive(
    fe: &ScsiFrontend,
    args: &BenchArgs,
    lun: [u8; 8],
    indirect: bool,
    ring: u16,
    event_idx: bool,
    progress: bool,
) -> Result<Report, BenchError> {
    let (blocks, block_size) = identify(fe, lun)?;
    if block_size == 0 || args.bs % block_size != 0 {
        return Err(BenchError::Options(format!(
            "bs {} is not a multiple of the LUN's block size {block_size}",
            args.bs
        )));
    }
    if args.verify && (block_size as usize) < verify::MIN_BLOCK {
        return Err(BenchError::Options(format!(
            "block size {block_size} too small for --verify"
        )));
    }
    let blocks_per_io = u64::from(args.bs / block_size);
    let total_units = blocks / blocks_per_io;
    let fits10 = blocks <= u64::from(u32::MAX) + 1 && blocks_per_io <= u64::from(u16::MAX);
    let cdb16 = match args.cdb {
        Some(10) if !fits10 => {
            return Err(BenchError::Options(format!(
                "--cdb 10 cannot address {blocks} blocks with {blocks_per_io} blocks per I/O"
            )))
        }
        Some(n) => n == 16,
        None => !fits10,
    };
    let queues = u64::from(args.queues);
    let per_queue = total_units / queues;
    if !args.idle && per_queue < u64::from(args.qd) * 2 {
        return Err(BenchError::Options(format!(
            "the LUN ({blocks} blocks of {block_size}) is too small for {} queues x qd {} x {} bytes",
            args.queues, args.qd, args.bs
        )));
    }
    if args.verify && per_queue > 1 << 28 {
        return Err(BenchError::Options(
            "--verify tracks at most 2^28 I/O units per queue: use a larger bs or a smaller LUN"
                .into(),
        ));
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let p = Params {
        lun,
        cdb16,
        indirect,
        bs: args.bs,
        block_size,
        blocks_per_io,
        total_units,
        queues,
        qd: usize::from(args.qd),
        verify: args.verify,
        run_id: Prng::new(seed ^ 0x5eed).next_u64(),
        seed,
        rw: args.rw,
        rwmix_read: args.rwmix_read,
        poll: Duration::from_micros(u64::from(args.poll_us)),
    };

    let start = Instant::now();
    let ramp_end = start + Duration::from_secs_f64(args.ramp);
    let end = ramp_end + Duration::from_secs_f64(args.runtime);
    let shared = Shared {
        ramp_end,
        end,
        stop: AtomicBool::new(false),
        done: (0..args.queues).map(|_| AtomicU64::new(0)).collect(),
        running: AtomicUsize::new(if args.idle {
            0
        } else {
            usize::from(args.queues)
        }),
    };
    let pid = args.backend_pid;
    let backend_cpu =
        |pid: u32| cpu::process_cpu(pid).map_err(|source| BenchError::Proc { pid, source });
    let bar = progress.then(|| {
        let b =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stdout());
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b
    });

    // Migration starts: logging on before the ramp, so the whole measured
    // window runs with it.
    if args.dirty_log {
        fe.start_logging().map_err(fe_err("start dirty logging"))?;
    }
    let sync_stop = AtomicBool::new(false);
    let (results, window, synced) = std::thread::scope(|s| -> Result<_, BenchError> {
        // QEMU's migration sync: collect and clear the log periodically.
        let sync = args.dirty_log.then(|| {
            let sync_stop = &sync_stop;
            s.spawn(move || -> Result<(u64, u64), BenchError> {
                let (mut syncs, mut pages) = (0u64, 0u64);
                let mut next = Instant::now() + LOG_SYNC;
                while !sync_stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(10)));
                        continue;
                    }
                    next += LOG_SYNC;
                    let d = fe.dirty_pages(true).map_err(fe_err("dirty log sync"))?;
                    syncs += 1;
                    pages += d.count() as u64;
                }
                Ok((syncs, pages))
            })
        });
        let handles: Vec<_> = if args.idle {
            Vec::new()
        } else {
            (0..args.queues)
                .map(|q| {
                    let (p, shared) = (&p, &shared);
                    s.spawn(move || {
                        let r = queue_thread(fe, usize::from(q), p, shared);
                        if r.is_err() {
                            shared.stop.store(true, Ordering::Relaxed);
                        }
                        shared.running.fetch_sub(1, Ordering::Relaxed);
                        r
                    })
                })
                .collect()
        };
        // Sample CPU at the window's edges and draw the progress line.
        let mut at_ramp = None;
        let mut at_end = None;
        let mut last = (Instant::now(), 0u64);
        let sampled = (|| -> Result<(), BenchError> {
            loop {
                let now = Instant::now();
                if at_ramp.is_none() && now >= ramp_end {
                    at_ramp = Some((now, pid.map(backend_cpu).transpose()?, cpu::own_cpu()));
                }
                let stopped = shared.stop.load(Ordering::Relaxed)
                    || (!args.idle && shared.running.load(Ordering::Relaxed) == 0);
                if at_ramp.is_some() && (now >= end || stopped) {
                    at_end = Some((now, pid.map(backend_cpu).transpose()?, cpu::own_cpu()));
                    break;
                }
                if let Some(b) = &bar {
                    let n: u64 = shared.done.iter().map(|d| d.load(Ordering::Relaxed)).sum();
                    let dt = now.duration_since(last.0).as_secs_f64();
                    if dt >= 0.5 {
                        let iops = (n - last.1) as f64 / dt;
                        b.set_message(format!(
                            "{}  {:.0} IOPS  {:.1} MB/s",
                            if now < ramp_end { "ramp" } else { "run " },
                            iops,
                            iops * f64::from(args.bs) / 1e6
                        ));
                        b.tick();
                        last = (now, n);
                    }
                }
                let next = if at_ramp.is_none() { ramp_end } else { end };
                std::thread::sleep(
                    next.saturating_duration_since(now)
                        .min(Duration::from_millis(100)),
                );
            }
            Ok(())
        })();
        if sampled.is_err() {
            shared.stop.store(true, Ordering::Relaxed);
        }
        let mut results = Vec::new();
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(r)) => results.push(r),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(BenchError::Thread);
                }
            }
        }
        sync_stop.store(true, Ordering::Relaxed);
        let synced = match sync.map(|h| h.join()) {
            None => (0, 0),
            Some(Ok(r)) => r?,
            Some(Err(_)) => return Err(BenchError::Thread),
        };
        sampled?;
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok((results, (at_ramp, at_end), synced))
    })?;
    if args.dirty_log {
        // Migration over (or cancelled): logging off.
        fe.stop_logging().map_err(fe_err("stop dirty logging"))?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }

    let (Some((t0, b0, c0)), Some((t1, b1, c1))) = window else {
        return Err(BenchError::Report(
            "the run ended before its measurement window".into(),
        ));
    };
    let secs = t1.duration_since(t0).as_secs_f64().max(1e-9);
    let mut hist = new_histogram();
    let mut r = Report {
        socket: args.socket.display().to_string(),
        rw: if args.idle {
            "idle".into()
        } else {
            format!("{:?}", args.rw).to_lowercase()
        },
        bs: args.bs,
        queues: args.queues,
        qd: args.qd,
        cdb: if cdb16 { 16 } else { 10 },
        event_idx,
        indirect,
        ring_size: ring,
        block_size,
        capacity_blocks: blocks,
        runtime_s: secs,
        backend_pid: pid,
        inflight: fe.inflight().is_some(),
        dirty_log: args.dirty_log,
        log_syncs: synced.0,
        dirty_pages: synced.1,
        poll_us: args.poll_us,
        ..Default::default()
    };
    for q in results {
        if let Some(h) = &q.hist {
            hist.add(h)
                .map_err(|e| BenchError::Report(format!("histogram: {e}")))?;
        }
        r.ios += q.ios;
        r.reads += q.reads;
        r.writes += q.writes;
        r.errors += q.errors;
        r.verified_blocks += q.verified;
        r.mismatches += q.mismatches;
        for e in q.error_samples {
            if r.error_samples.len() < SAMPLES {
                r.error_samples.push(e);
            }
        }
        for e in q.mismatch_samples {
            if r.mismatch_samples.len() < SAMPLES {
                r.mismatch_samples.push(e);
            }
        }
    }
    r.latency = Latency::from_histogram(&hist);
    r.iops = r.ios as f64 / secs;
    r.mb_per_s = r.iops * f64::from(args.bs) / 1e6;
    let per_io = |s: f64| {
        if r.ios > 0 {
            Some(s * 1e6 / r.ios as f64)
        } else {
            None
        }
    };
    if let (Some(b0), Some(b1)) = (b0, b1) {
        let s = b1.saturating_sub(b0).as_secs_f64();
        r.backend_cpu_s = Some(s);
        r.backend_cpu_pct = Some(100.0 * s / secs);
        r.backend_cpu_us_per_io = per_io(s);
    }
    if let Some(pid) = pid {
        r.backend_private_dirty_kib =
            Some(cpu::private_dirty_kib(pid).map_err(|source| BenchError::Proc { pid, source })?);
    }
    r.bench_cpu_s = c1.saturating_sub(c0).as_secs_f64();
    r.bench_cpu_us_per_io = per_io(r.bench_cpu_s).unwrap_or(0.0);
    for q in 0..usize::from(args.queues) {
        let st = fe
            .stats(q + crate::frontend::FIRST_REQUEST_QUEUE)
            .map_err(fe_err("queue stats"))?;
        r.kicks += st.kicks;
        r.kicks_suppressed += st.kicks_suppressed;
    }
    Ok(r)
}

/// The per-queue state of a thread.
struct Queue<'a> {
    fe: &'a ScsiFrontend,
    q: usize,
    p: &'a Params,
    slots: Vec<Slot>,
    scratch: Vec<u8>,
    /// Generation of each unit of this queue's part (verify only).
    gens: Vec<u32>,
    first_unit: u64,
    res: QueueResult,
}

fn queue_thread(
    fe: &ScsiFrontend,
    q: usize,
    p: &Params,
    sh: &Shared,
) -> Result<QueueResult, BenchError> {
    let mut gen = OpGen::new(
        p.rw,
        p.rwmix_read,
        p.total_units,
        q as u64,
        p.queues,
        p.seed,
    );
    let (first_unit, units) = gen.range();
    let mut st = Queue {
        fe,
        q,
        p,
        slots: Vec::with_capacity(p.qd),
        scratch: vec![0; p.bs as usize],
        gens: if p.verify {
            vec![0; units as usize]
        } else {
            Vec::new()
        },
        first_unit,
        res: QueueResult {
            hist: Some(new_histogram()),
            ..Default::default()
        },
    };
    // Preallocate every slot's buffers; fill data buffers with noise once.
    let mut noise = Prng::new(p.seed ^ 0xda7a ^ q as u64);
    for _ in 0..p.qd {
        let meta = fe.alloc_buffer(META, 4096).map_err(fe_err("buffer"))?;
        let data = fe
            .alloc_buffer(p.bs as usize, 4096)
            .map_err(fe_err("buffer"))?;
        for c in st.scratch.chunks_exact_mut(8) {
            c.copy_from_slice(&noise.next_u64().to_le_bytes());
        }
        fe.mem()
            .write(data, &st.scratch)
            .map_err(fe_err("buffer"))?;
        st.slots.push(Slot {
            meta,
            data,
            busy: false,
            unit: 0,
            write: false,
            t0: Instant::now(),
        });
    }
    let result =
        st.main_phase(&mut gen, sh)
            .and_then(|()| if p.verify { st.read_back(sh) } else { Ok(()) });
    for s in &st.slots {
        if !s.busy {
            fe.free_buffer(s.meta, META);
            fe.free_buffer(s.data, p.bs as usize);
        }
    }
    result?;
    Ok(st.res)
}

impl Queue<'_> {
    /// Build and queue the request of slot `i` (not published).
    fn submit(&mut self, i: usize, unit: u64, write: bool) -> Result<(), BenchError> {
        let p = self.p;
        let lba = unit * p.blocks_per_io;
        if write && p.verify {
            let g = &mut self.gens[(unit - self.first_unit) as usize];
            *g = if *g >= UNKNOWN - 1 { 1 } else { *g + 1 };
            for (k, b) in self
                .scratch
                .chunks_exact_mut(p.block_size as usize)
                .enumerate()
            {
                verify::encode(b, lba + k as u64, u64::from(*g), p.run_id);
            }
            self.fe
                .mem()
                .write(self.slots[i].data, &self.scratch)
                .map_err(fe_err("write data"))?;
        }
        let mut c = [0u8; CDB_SIZE];
        match (p.cdb16, write) {
            (false, false) => {
                c[..10].copy_from_slice(&cdb::read10(lba as u32, p.blocks_per_io as u16, false))
            }
            (false, true) => {
                c[..10].copy_from_slice(&cdb::write10(lba as u32, p.blocks_per_io as u16, false))
            }
            (true, false) => {
                c[..16].copy_from_slice(&cdb::read16(lba, p.blocks_per_io as u32, false))
            }
            (true, true) => {
                c[..16].copy_from_slice(&cdb::write16(lba, p.blocks_per_io as u32, false))
            }
        }
        let s = &mut self.slots[i];
        let hdr = CmdReqHeader {
            lun: p.lun,
            tag: i as u64,
            task_attr: 0,
            prio: 0,
            crn: 0,
            cdb: c,
        };
        let mem = self.fe.mem();
        mem.write(s.meta, hdr.as_slice())
            .map_err(fe_err("write header"))?;
        // A response byte the backend must overwrite.
        mem.write(s.meta + RESP_OFF + 11, &[NO_RESPONSE])
            .map_err(fe_err("write response"))?;
        let h = Seg {
            addr: s.meta,
            len: REQ_HDR,
            write: false,
        };
        let r = Seg {
            addr: s.meta + RESP_OFF,
            len: RESP_HDR,
            write: true,
        };
        let d = Seg {
            addr: s.data,
            len: p.bs,
            write: !write,
        };
        let segs = if write { [h, d, r] } else { [h, r, d] };
        s.busy = true;
        s.unit = unit;
        s.write = write;
        s.t0 = Instant::now();
        let queued = if p.indirect {
            self.fe
                .queue_chain_indirect(self.q, s.meta + TABLE_OFF, &segs, i as u64)
        } else {
            self.fe.queue_chain(self.q, &segs, i as u64)
        };
        queued.map_err(|e| {
            s.busy = false;
            BenchError::Frontend {
                what: "submit".into(),
                source: e,
            }
        })
    }

    fn busy(&self, unit: u64) -> bool {
        self.slots.iter().any(|s| s.busy && s.unit == unit)
    }

    fn next_op(&self, gen: &mut OpGen) -> Option<(u64, bool)> {
        if self.p.verify {
            gen.next(|u| self.busy(u)).map(|o| (o.unit, o.write))
        } else {
            gen.next(|_| false).map(|o| (o.unit, o.write))
        }
    }

    /// Check slot `i`'s completion; returns the latency. `checked`: verify
    /// reads against `gens`.
    fn complete(&mut self, i: usize, now: Instant) -> Result<Duration, BenchError> {
        let p = self.p;
        let s = &mut self.slots[i];
        s.busy = false;
        let lat = now.duration_since(s.t0);
        let (unit, write, meta, data) = (s.unit, s.write, s.meta, s.data);
        let lba = unit * p.blocks_per_io;
        let mut resp = [0u8; RESP_HDR as usize];
        let mem = self.fe.mem();
        mem.read(meta + RESP_OFF, &mut resp[..12])
            .map_err(fe_err("read response"))?;
        let (response, status) = (resp[11], resp[10]);
        let resid = u32::from_le_bytes([resp[4], resp[5], resp[6], resp[7]]);
        let op = if write { "WRITE" } else { "READ" };
        let ok = response == 0 && status == 0 && resid == 0;
        if !ok {
            if response == NO_RESPONSE {
                self.res
                    .error(|| format!("{op} lba {lba}: the backend wrote no response"));
            } else {
                mem.read(meta + RESP_OFF, &mut resp)
                    .map_err(fe_err("read response"))?;
                let sense_len = u32::from_le_bytes([resp[0], resp[1], resp[2], resp[3]]);
                let r = ScsiResponse {
                    response,
                    status,
                    sense_len,
                    sense: resp[12..12 + (sense_len as usize).min(96)].to_vec(),
                    resid,
                    ..Default::default()
                };
                self.res
                    .error(|| format!("{op} lba {lba}: {} resid {resid}", describe(&r)));
            }
            if write && p.verify {
                self.gens[(unit - self.first_unit) as usize] = UNKNOWN;
            }
            return Ok(lat);
        }
        if !write && p.verify {
            let g = self.gens[(unit - self.first_unit) as usize];
            if g != 0 && g != UNKNOWN {
                self.check(data, lba, g)?;
            }
        }
        Ok(lat)
    }

    fn check(&mut self, data: u64, lba: u64, g: u32) -> Result<(), BenchError> {
        let p = self.p;
        self.fe
            .mem()
            .read(data, &mut self.scratch)
            .map_err(fe_err("read data"))?;
        for k in 0..p.blocks_per_io as usize {
            let bsz = p.block_size as usize;
            let b = &self.scratch[k * bsz..(k + 1) * bsz];
            let l = lba + k as u64;
            self.res.verified += 1;
            if let Err(m) = verify::check(b, l, u64::from(g), p.run_id) {
                self.res.mismatch(|| format!("lba {l}: {m}"));
            }
        }
        Ok(())
    }

    fn publish(&self) -> Result<(), BenchError> {
        self.fe
            .publish(self.q)
            .map(|_| ())
            .map_err(fe_err("publish"))
    }

    fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.busy).count()
    }

    /// Wait for completions; errors when the backend stalls.
    fn wait(&self, out: &mut Vec<crate::frontend::Completion>) -> Result<(), BenchError> {
        let t = Instant::now();
        if !self.p.poll.is_zero() {
            loop {
                let n = self
                    .fe
                    .reap_completions(self.q, out)
                    .map_err(fe_err("reap completions"))?;
                if n > 0 {
                    return Ok(());
                }
                if t.elapsed() >= self.p.poll {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        loop {
            let n = self
                .fe
                .wait_completions(self.q, out, Duration::from_millis(200))
                .map_err(fe_err("wait for completions"))?;
            if n > 0 {
                return Ok(());
            }
            if t.elapsed() >= STALL {
                return Err(BenchError::Stalled {
                    queue: self.q,
                    in_flight: self.in_flight(),
                    secs: STALL.as_secs(),
                });
            }
        }
    }

    fn slot_of(&self, c: &crate::frontend::Completion) -> Result<usize, BenchError> {
        let i = c.tag as usize;
        if i < self.slots.len() && self.slots[i].busy {
            Ok(i)
        } else {
            Err(BenchError::Report(format!(
                "queue {}: completion for idle slot {i}",
                self.q
            )))
        }
    }

    fn main_phase(&mut self, gen: &mut OpGen, sh: &Shared) -> Result<(), BenchError> {
        let mut hist = self.res.hist.take().unwrap_or_else(new_histogram);
        let r = self.main_loop(gen, sh, &mut hist);
        self.res.hist = Some(hist);
        r
    }

    fn main_loop(
        &mut self,
        gen: &mut OpGen,
        sh: &Shared,
        hist: &mut Histogram<u64>,
    ) -> Result<(), BenchError> {
        for i in 0..self.p.qd {
            if let Some((unit, w)) = self.next_op(gen) {
                self.submit(i, unit, w)?;
            }
        }
        self.publish()?;
        let mut out = Vec::with_capacity(self.p.qd);
        let mut inflight = self.in_flight();
        let mut done = 0u64;
        while inflight > 0 {
            self.wait(&mut out)?;
            let now = Instant::now();
            let go_on = now < sh.end && !sh.stop.load(Ordering::Relaxed);
            let in_window = now >= sh.ramp_end && now <= sh.end;
            for c in out.drain(..) {
                let i = self.slot_of(&c)?;
                let write = self.slots[i].write;
                let lat = self.complete(i, now)?;
                inflight -= 1;
                done += 1;
                if in_window {
                    self.res.ios += 1;
                    if write {
                        self.res.writes += 1;
                    } else {
                        self.res.reads += 1;
                    }
                    let _ = hist.record(lat.as_nanos().max(1) as u64);
                }
                if go_on {
                    if let Some((unit, w)) = self.next_op(gen) {
                        self.submit(i, unit, w)?;
                        inflight += 1;
                    }
                }
            }
            self.publish()?;
            sh.done[self.q].store(done, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Read back every unit written in this run and check it.
    fn read_back(&mut self, _sh: &Shared) -> Result<(), BenchError> {
        let units: Vec<u64> = (0..self.gens.len() as u64)
            .filter(|&u| self.gens[u as usize] != 0 && self.gens[u as usize] != UNKNOWN)
            .map(|u| u + self.first_unit)
            .collect();
        let mut next = units.into_iter();
        let mut out = Vec::with_capacity(self.p.qd);
        let mut inflight = 0;
        for i in 0..self.p.qd {
            if let Some(u) = next.next() {
                self.submit(i, u, false)?;
                inflight += 1;
            }
        }
        self.publish()?;
        while inflight > 0 {
            self.wait(&mut out)?;
            let now = Instant::now();
            for c in out.drain(..) {
                let i = self.slot_of(&c)?;
                self.complete(i, now)?;
                inflight -= 1;
                if let Some(u) = next.next() {
                    self.submit(i, u, false)?;
                    inflight += 1;
                }
            }
            self.publish()?;
        }
        Ok(())
    }
}
