//! The slow lane: commands the block layer executes synchronously (UNMAP,
//! WRITE SAME, VERIFY, WRITE AND VERIFY, COMPARE AND WRITE, GET LBA STATUS)
//! run on a helper thread of their request queue, so the queue's worker
//! never blocks on them. Results come back through a channel and an eventfd
//! that sits in the worker's epoll next to the io_uring's.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::scsi::{Sense, Status};

/// What a slow job produced: the SCSI status, sense, and data-in bytes.
#[derive(Debug)]
pub(crate) struct JobResult {
    pub status: Status,
    pub sense: Option<Sense>,
    pub data: Vec<u8>,
}

impl JobResult {
    pub(crate) fn good(data: Vec<u8>) -> Self {
        JobResult {
            status: Status::Good,
            sense: None,
            data,
        }
    }

    pub(crate) fn check(sense: Sense) -> Self {
        JobResult {
            status: Status::CheckCondition,
            sense: Some(sense),
            data: Vec::new(),
        }
    }
}

/// A unit of slow work.
pub(crate) type Job = Box<dyn FnOnce() -> JobResult + Send>;

/// One helper thread and its channels.
pub(crate) struct SlowLane {
    tx: Option<mpsc::Sender<(u64, Job)>>,
    rx: mpsc::Receiver<(u64, JobResult)>,
    event: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    pending: usize,
}

impl SlowLane {
    pub(crate) fn new(name: String) -> io::Result<Self> {
        let (tx, jobs) = mpsc::channel::<(u64, Job)>();
        let (done, rx) = mpsc::channel();
        let event = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let ev = event.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            while let Ok((user, job)) = jobs.recv() {
                let result = job();
                if done.send((user, result)).is_err() {
                    break;
                }
                let _ = ev.write(1);
            }
        })?;
        Ok(SlowLane {
            tx: Some(tx),
            rx,
            event,
            thread: Some(thread),
            pending: 0,
        })
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
}
