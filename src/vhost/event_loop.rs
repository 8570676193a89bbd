//! Worker threads of one connection: thread 0 serves the control and event
//! queues, thread `1 + i` request queue `i`. Each thread sleeps in its own
//! epoll on its queues' kick eventfds (added and removed by the protocol
//! handler as rings start and stop), its io_uring and slow-lane eventfds,
//! and an exit eventfd.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{ScsiBackend, FIXED_QUEUES};
use super::poll::PollWindow;

/// Token of a queue's kick in its thread (thread 0: control 0, event 1).
pub(crate) const TOKEN_KICK: u64 = 0;
/// Token of the event queue's kick in thread 0.
pub(crate) const TOKEN_EVENT_KICK: u64 = 1;
/// Token of a request thread's io_uring completion eventfd.
pub(crate) const TOKEN_COMPLETION: u64 = 10;
/// Token of a request thread's slow-lane eventfd.
pub(crate) const TOKEN_SLOW: u64 = 11;
const TOKEN_EXIT: u64 = 99;

struct Loop {
    epoll: Epoll,
    exit: EventFd,
    /// Set before `exit` is written: a polling worker sees it without
    /// going through epoll.
    stopping: AtomicBool,
}

/// The worker threads of one connection; stopped and joined on drop.
pub(crate) struct EventLoops {
    loops: Vec<Arc<Loop>>,
    handles: Vec<JoinHandle<()>>,
}

/// Thread and token that serve virtqueue `queue`.
fn place(queue: usize) -> (usize, u64) {
    match queue {
        0 => (0, TOKEN_KICK),
        1 => (0, TOKEN_EVENT_KICK),
        q => (q - FIXED_QUEUES + 1, TOKEN_KICK),
    }
}

impl EventLoops {
    /// Start the threads for `backend`'s queues.
    pub(crate) fn start(backend: &ScsiBackend, label: &str) -> io::Result<Self> {
        let mut me = EventLoops {
            loops: Vec::new(),
            handles: Vec::new(),
        };
        for thread in 0..=backend.request_queues() {
            let l = Arc::new(Loop {
                epoll: Epoll::new()?,
                exit: EventFd::new(EFD_NONBLOCK)?,
                stopping: AtomicBool::new(false),
            });
            add(&l.epoll, l.exit.as_raw_fd(), TOKEN_EXIT)?;
            if thread > 0 {
                let i = thread - 1;
                if let (Some(ring), Some(slow)) = (backend.completion_fd(i), backend.slow_fd(i)) {
                    add(&l.epoll, ring, TOKEN_COMPLETION)?;
                    add(&l.epoll, slow, TOKEN_SLOW)?;
                }
            }
            let name = if thread == 0 {
                "vus-ctrl".to_string()
            } else {
                format!("vus-rq{}", thread - 1)
            };
            let lp = l.clone();
            let b = backend.clone();
            let span = tracing::info_span!("worker", controller = %label, thread);
            let handle = std::thread::Builder::new().name(name).spawn(move || {
                let _span = span.enter();
                run(&lp, &b, thread);
            })?;
            me.loops.push(l);
            me.handles.push(handle);
        }
        Ok(me)
    }

    /// Watch `fd` as the kick of virtqueue `queue`.
    pub(crate) fn watch_kick(&self, queue: usize, fd: RawFd) -> io::Result<()> {
        let (thread, token) = place(queue);
        let l = self
            .loops
            .get(thread)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        match add(&l.epoll, fd, token) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Stop watching `fd` (a kick that was replaced or whose ring stopped).
    pub(crate) fn unwatch_kick(&self, queue: usize, fd: RawFd) {
        let (thread, _) = place(queue);
        if let Some(l) = self.loops.get(thread) {
            let _ = l.epoll.ctl(
                ControlOperation::Delete,
                fd,
                EpollEvent::new(EventSet::IN, 0),
            );
        }
    }

    fn stop(&mut self) {
        for l in &self.loops {
            l.stopping.store(true, Ordering::Relaxed);
            let _ = l.exit.write(1);
        }
        for h in self.handles.drain(..) {
            if h.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

impl Drop for EventLoops {
    fn drop(&mut self) {
        self.stop();
    }
}

fn add(epoll: &Epoll, fd: RawFd, token: u64) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(EventSet::IN, token),
    )
}

fn run(l: &Loop, backend: &ScsiBackend, thread: usize) {
    let mut events = vec![EpollEvent::default(); 8];
    // Request threads poll adaptively (src/vhost/poll.rs); the control
    // thread only sleeps. Waiting for the guest's next request and waiting
    // for the backing store are adapted apart: a disk whose completions
    // take longer than the bound closes its window (no CPU burnt after
    // each submission) while the guest's next request, which follows a
    // completion within microseconds, is still caught by polling.
    let max = if thread > 0 { backend.poll_max_us() } else { 0 };
    let mut windows = [PollWindow::new(max); 2];
    loop {
        let class = usize::from(max > 0 && backend.has_in_flight(thread));
        let Some(window) = windows.get_mut(class) else {
            return;
        };
        let since = window.enabled().then(Instant::now);
        if let Some(since) = since {
            if window.window_ns() > 0 && backend.poll(thread, window.window(), &l.stopping) {
                window.waited(elapsed_ns(since));
                continue;
            }
            if l.stopping.load(Ordering::Relaxed) {
                return;
            }
            // Notifications back on before sleeping; work that came
            // meanwhile is done first.
            if backend.prepare_sleep(thread) {
                window.waited(elapsed_ns(since));
                continue;
            }
        }
        let n = match l.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "epoll_wait failed; worker thread stops");
                return;
            }
        };
        if let Some(since) = since {
            window.waited(elapsed_ns(since));
        }
        for ev in events.iter().take(n) {
            if ev.data() == TOKEN_EXIT {
                return;
            }
            backend.handle_event(thread, ev.data());
        }
    }
}

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
