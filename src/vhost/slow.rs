//! The slow lane: commands the block layer executes synchronously (UNMAP,
//! WRITE SAME, VERIFY, WRITE AND VERIFY, COMPARE AND WRITE, GET LBA STATUS)
//! run on a helper thread of their request queue, so the queue's worker
//! never blocks on them. Results come back through a channel and an eventfd
//! that sits in the worker's epoll next to the io_uring's.
//!
//! Passthrough commands (SG_IO, blocking until the device answers) run on
//! the lane's *pool*: up to [`PASS_THREADS`] more helper threads, started
//! on the first passthrough command and when all are busy, sharing one job
//! channel; their results come back through the same channel and eventfd.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::passthrough::PassReply;
use crate::scsi::{Sense, Status};

/// Most passthrough helper threads per request queue: the commands a queue
/// keeps at the device at once (more wait in the pool's channel).
pub(crate) const PASS_THREADS: usize = 8;

/// What a slow job produced: the SCSI status, sense, and data-in bytes.
#[derive(Debug)]
pub(crate) struct JobResult {
    pub status: Status,
    pub sense: Option<Sense>,
    pub data: Vec<u8>,
    /// A passthrough command's answer (status, sense and residual as the
    /// device gave them); the fields above are unused then.
    pub pass: Option<PassReply>,
}

impl JobResult {
    pub(crate) fn good(data: Vec<u8>) -> Self {
        JobResult {
            status: Status::Good,
            sense: None,
            data,
            pass: None,
        }
    }

    pub(crate) fn passthrough(reply: PassReply) -> Self {
        JobResult {
            status: if reply.good() {
                Status::Good
            } else {
                Status::CheckCondition
            },
            sense: None,
            data: Vec::new(),
            pass: Some(reply),
        }
    }

    pub(crate) fn check(sense: Sense) -> Self {
        JobResult {
            status: Status::CheckCondition,
            sense: Some(sense),
            data: Vec::new(),
            pass: None,
        }
    }
}

/// A unit of slow work.
pub(crate) type Job = Box<dyn FnOnce() -> JobResult + Send>;

/// One helper thread and its channels, plus the passthrough pool.
pub(crate) struct SlowLane {
    name: String,
    tx: Option<mpsc::Sender<(u64, Job)>>,
    rx: mpsc::Receiver<(u64, JobResult)>,
    done: mpsc::Sender<(u64, JobResult)>,
    event: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    pending: usize,
    pool: Option<Pool>,
}

/// The passthrough threads: one job channel they take turns on.
struct Pool {
    tx: Option<mpsc::Sender<(u64, Job)>>,
    jobs: Arc<Mutex<mpsc::Receiver<(u64, Job)>>>,
    threads: Vec<JoinHandle<()>>,
    /// Threads waiting for a job.
    idle: Arc<AtomicUsize>,
    /// Jobs queued and not yet taken.
    queued: Arc<AtomicUsize>,
}

impl SlowLane {
    pub(crate) fn new(name: String) -> io::Result<Self> {
        let (tx, jobs) = mpsc::channel::<(u64, Job)>();
        let (done, rx) = mpsc::channel();
        let event = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let ev = event.clone();
        let done_tx = done.clone();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                while let Ok((user, job)) = jobs.recv() {
                    let result = job();
                    if done.send((user, result)).is_err() {
                        break;
                    }
                    let _ = ev.write(1);
                }
            })?;
        Ok(SlowLane {
            name,
            tx: Some(tx),
            rx,
            done: done_tx,
            event,
            thread: Some(thread),
            pending: 0,
            pool: None,
        })
    }

    /// Queue a passthrough job on the pool (started now if need be, one
    /// more thread while every thread is busy, up to [`PASS_THREADS`]).
    /// `false` if no thread could run it.
    pub(crate) fn submit_pass(&mut self, user: u64, job: Job) -> bool {
        let pool = self.pool.get_or_insert_with(|| {
            let (tx, jobs) = mpsc::channel::<(u64, Job)>();
            Pool {
                tx: Some(tx),
                jobs: Arc::new(Mutex::new(jobs)),
                threads: Vec::new(),
                idle: Arc::default(),
                queued: Arc::default(),
            }
        });
        let waiting = pool.queued.load(Ordering::SeqCst);
        if pool.idle.load(Ordering::SeqCst) <= waiting && pool.threads.len() < PASS_THREADS {
            let jobs = pool.jobs.clone();
            let (idle, queued) = (pool.idle.clone(), pool.queued.clone());
            let done = self.done.clone();
            let ev = self.event.clone();
            let name = format!("{}-pt{}", self.name, pool.threads.len());
            let spawned = std::thread::Builder::new().name(name).spawn(move || loop {
                idle.fetch_add(1, Ordering::SeqCst);
                let next = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
                idle.fetch_sub(1, Ordering::SeqCst);
                let Ok((user, job)) = next else { break };
                queued.fetch_sub(1, Ordering::SeqCst);
                let result = job();
                if done.send((user, result)).is_err() {
                    break;
                }
                let _ = ev.write(1);
            });
            match spawned {
                Ok(t) => pool.threads.push(t),
                Err(e) => tracing::warn!(error = %e, "cannot start a passthrough thread"),
            }
        }
        if pool.threads.is_empty() {
            return false;
        }
        pool.queued.fetch_add(1, Ordering::SeqCst);
        match pool.tx.as_ref().map(|tx| tx.send((user, job))) {
            Some(Ok(())) => {
                self.pending += 1;
                true
            }
            _ => {
                pool.queued.fetch_sub(1, Ordering::SeqCst);
                false
            }
        }
    }

    pub(crate) fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// Queue a job; `user` comes back with its result. `false` if the lane
    /// is gone (its thread died), in which case the job was not run.
    pub(crate) fn submit(&mut self, user: u64, job: Job) -> bool {
        match self.tx.as_ref().map(|tx| tx.send((user, job))) {
            Some(Ok(())) => {
                self.pending += 1;
                true
            }
            _ => false,
        }
    }

    /// Collect finished jobs without blocking.
    pub(crate) fn reap(&mut self, out: &mut Vec<(u64, JobResult)>) {
        let _ = self.event.read();
        self.reap_polled(out);
    }

    /// [`SlowLane::reap`] without resetting the eventfd (a polling worker:
    /// the eventfd wakes its epoll once more, and that reap finds nothing).
    pub(crate) fn reap_polled(&mut self, out: &mut Vec<(u64, JobResult)>) {
        while let Ok(r) = self.rx.try_recv() {
            self.pending = self.pending.saturating_sub(1);
            out.push(r);
        }
    }

    /// Wait until every queued job has finished, collecting results.
    pub(crate) fn drain(&mut self, out: &mut Vec<(u64, JobResult)>) {
        while self.pending > 0 {
            match self.rx.recv() {
                Ok(r) => {
                    self.pending -= 1;
                    out.push(r);
                }
                Err(_) => {
                    self.pending = 0;
                }
            }
        }
        let _ = self.event.read();
    }
}

impl Drop for SlowLane {
    fn drop(&mut self) {
        // Closing the job channel ends the thread after its current job.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(mut pool) = self.pool.take() {
            pool.tx = None;
            for t in pool.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_off_thread_and_come_back() {
        let mut lane = SlowLane::new("test-slow".into()).unwrap();
        let me = std::thread::current().id();
        for i in 0..10u64 {
            assert!(lane.submit(
                i,
                Box::new(move || {
                    assert_ne!(std::thread::current().id(), me);
                    JobResult::good(vec![i as u8])
                })
            ));
        }
        let mut out = Vec::new();
        lane.drain(&mut out);
        assert_eq!(lane.pending(), 0);
        let mut users: Vec<u64> = out.iter().map(|(u, _)| *u).collect();
        users.sort_unstable();
        assert_eq!(users, (0..10).collect::<Vec<_>>());
        for (u, r) in &out {
            assert_eq!(r.data, vec![*u as u8]);
        }
    }

    /// What the pool adds to a passthrough command (docs/scsi.md,
    /// "Passthrough"): the hand-off to a pool thread and back through the
    /// eventfd, with a job that does nothing, at QD1 (wake-up latency) and
    /// QD32 (throughput). `cargo test --release --lib pool_overhead --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn pool_overhead() {
        use std::time::Instant;
        let mut lane = SlowLane::new("bench-pool".into()).unwrap();
        let fd = lane.event_fd();
        let wait = |fd: RawFd| {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut p, 1, 1000) };
        };
        let mut out = Vec::new();
        for (qd, rounds) in [(1usize, 20_000usize), (32, 2_000)] {
            let start = Instant::now();
            let mut done = 0usize;
            for r in 0..rounds {
                for i in 0..qd {
                    lane.submit_pass(
                        (r * qd + i) as u64,
                        Box::new(|| JobResult::good(Vec::new())),
                    );
                }
                let mut got = 0;
                while got < qd {
                    wait(fd);
                    out.clear();
                    lane.reap(&mut out);
                    got += out.len();
                }
                done += got;
            }
            let ns = start.elapsed().as_nanos() as f64 / done as f64;
            println!(
                "pool QD{qd}: {done} jobs, {:.1} us per job, {:.0} jobs/s",
                ns / 1000.0,
                1e9 / ns
            );
        }
    }

    #[test]
    fn passthrough_pool_runs_jobs_concurrently_up_to_its_bound() {
        use std::sync::Barrier;
        let mut lane = SlowLane::new("test-pool".into()).unwrap();
        // PASS_THREADS jobs that all wait for each other: they finish only
        // if each runs on its own thread (the worker is not one of them).
        let barrier = Arc::new(Barrier::new(PASS_THREADS));
        for i in 0..PASS_THREADS as u64 {
            let b = barrier.clone();
            assert!(lane.submit_pass(
                i,
                Box::new(move || {
                    b.wait();
                    JobResult::good(vec![i as u8])
                })
            ));
        }
        // More jobs than threads queue behind them.
        for i in 0..20u64 {
            assert!(lane.submit_pass(100 + i, Box::new(|| JobResult::good(Vec::new()))));
        }
        let mut out = Vec::new();
        lane.drain(&mut out);
        assert_eq!(out.len(), PASS_THREADS + 20);
        assert_eq!(
            lane.pool.as_ref().map(|p| p.threads.len()),
            Some(PASS_THREADS)
        );
    }
}
