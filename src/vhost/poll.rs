//! Adaptive polling of a request queue (issue 15).
//!
//! While a queue is busy its worker, instead of going back to sleep in
//! epoll after a batch, watches the avail ring and its io_uring completion
//! queue for a short window (guest notifications stay off meanwhile). The
//! window adapts the way QEMU's `aio_poll` adapts `poll-max-ns`: after each
//! wake-up the worker knows how long it waited (polling included) for the
//! event that woke it.
//!
//! - waited no longer than the window: polling found the work, or would
//!   have; keep the window;
//! - waited longer than the bound: polling would not have found it; halve
//!   the window (below [`POLL_INITIAL_NS`] it drops to zero);
//! - waited longer than the window but within the bound: a longer window
//!   would have found it; double the window (from zero: start at
//!   [`POLL_INITIAL_NS`]), up to the bound.
//!
//! An idle guest never wakes the worker, so a window costs at most one
//! window of CPU after the last request; with a bound of 0 polling is off.
//!
//! A worker keeps two windows (src/vhost/event_loop.rs): one for waits
//! with no request in flight (for the guest's next request) and one for
//! waits with requests in flight (for the backing store, or the guest).
//! At QD1 on a disk whose completions take longer than the bound, the
//! second closes, so the worker does not spin after each submission,
//! while the first still catches the guest's next request, which follows
//! a completion within microseconds.

use std::time::Duration;

/// The window a queue starts polling with once waits are short.
pub const POLL_INITIAL_NS: u64 = 4_000;

/// Default bound of the window in microseconds (QEMU's `poll-max-ns`
/// default is 32 µs as well): longer than the gap between requests of a
/// busy queue (a few µs at QD32, docs/benchmarks.md), shorter than the
/// cost of one sleep-and-wake cycle times a few.
pub const DEFAULT_POLL_MAX_US: u32 = 32;

/// Largest accepted bound (1 s): a longer one would only burn CPU.
pub const MAX_POLL_MAX_US: u32 = 1_000_000;

/// The current polling window of one queue and its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollWindow {
    max_ns: u64,
    ns: u64,
}

impl PollWindow {
    /// A window bounded by `max_us` microseconds (0: never poll); it
    /// starts closed.
    pub fn new(max_us: u32) -> Self {
        PollWindow {
            max_ns: u64::from(max_us.min(MAX_POLL_MAX_US)) * 1_000,
            ns: 0,
        }
    }

    /// Is polling configured at all?
    pub fn enabled(&self) -> bool {
        self.max_ns > 0
    }

    /// The window to poll for now (zero: sleep at once).
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.ns)
    }

    pub fn window_ns(&self) -> u64 {
        self.ns
    }

    /// The worker waited `waited_ns` (polling plus sleeping) for its last
    /// event: adapt the window.
    pub fn waited(&mut self, waited_ns: u64) {
        if self.max_ns == 0 {
            self.ns = 0;
        } else if waited_ns <= self.ns {
            // The sweet spot: polling finds the work.
        } else if waited_ns > self.max_ns {
            // Even the longest window would have missed it.
            self.ns /= 2;
            if self.ns < POLL_INITIAL_NS {
                self.ns = 0;
            }
        } else {
            // A longer window would have found it.
            self.ns = if self.ns == 0 {
                POLL_INITIAL_NS
            } else {
                self.ns.saturating_mul(2)
            }
            .min(self.max_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_bound_never_polls() {
        let mut w = PollWindow::new(0);
        assert!(!w.enabled());
        for waited in [0, 1_000, 10_000, 1_000_000] {
            w.waited(waited);
            assert_eq!(w.window_ns(), 0);
        }
    }

    #[test]
    fn grows_while_waits_are_short() {
        let mut w = PollWindow::new(32);
        assert_eq!(w.window_ns(), 0);
        w.waited(10_000);
        assert_eq!(w.window_ns(), 4_000);
        w.waited(10_000);
        assert_eq!(w.window_ns(), 8_000);
        w.waited(10_000);
        assert_eq!(w.window_ns(), 16_000);
        // Found within the window: stays.
        w.waited(10_000);
        assert_eq!(w.window_ns(), 16_000);
        w.waited(20_000);
        assert_eq!(w.window_ns(), 32_000);
        // Never beyond the bound.
        w.waited(31_000);
        w.waited(32_000);
        assert_eq!(w.window_ns(), 32_000);
    }

    #[test]
    fn shrinks_to_zero_when_idle() {
        let mut w = PollWindow::new(32);
        for _ in 0..10 {
            w.waited(20_000);
        }
        assert_eq!(w.window_ns(), 32_000);
        let mut steps = 0;
        while w.window_ns() > 0 {
            w.waited(5_000_000);
            steps += 1;
            assert!(steps <= 4, "window does not close: {w:?}");
        }
        assert_eq!(w.window(), Duration::ZERO);
        // A long wait with a closed window keeps it closed.
        w.waited(1_000_000_000);
        assert_eq!(w.window_ns(), 0);
    }

    #[test]
    fn bound_is_clamped() {
        let mut w = PollWindow::new(u32::MAX);
        for _ in 0..64 {
            w.waited(999_000_000);
        }
        assert_eq!(w.window_ns(), u64::from(MAX_POLL_MAX_US) * 1_000);
    }

    #[test]
    fn small_bound_starts_at_the_bound() {
        let mut w = PollWindow::new(2);
        w.waited(1_500);
        assert_eq!(w.window_ns(), 2_000);
        w.waited(3_000);
        assert_eq!(w.window_ns(), 0);
    }
}
