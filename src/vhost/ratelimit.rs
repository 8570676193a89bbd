//! Rate-limited warnings for guest-caused errors: a misbehaving guest must
//! not flood the log.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(10);
const PER_WINDOW: u32 = 5;

/// Allows `PER_WINDOW` messages per 10 s window and counts the rest.
#[derive(Debug)]
pub(crate) struct RateLimit {
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

impl RateLimit {
    pub(crate) fn new() -> Self {
        RateLimit {
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }

    /// `Some(suppressed_since_last)` when a message may be logged now.
    pub(crate) fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.in_window = 0;
        }
        if self.in_window < PER_WINDOW {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Log a warning through a [`RateLimit`].
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limit.check() {
            if suppressed > 0 {
                tracing::warn!(suppressed, $($arg)+);
            } else {
                tracing::warn!($($arg)+);
            }
        }
    };
}
pub(crate) use warn_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_few_then_counts() {
        let mut r = RateLimit::new();
        for _ in 0..PER_WINDOW {
            assert_eq!(r.check(), Some(0));
        }
        assert_eq!(r.check(), None);
        assert_eq!(r.check(), None);
        r.window_start -= WINDOW;
        assert_eq!(r.check(), Some(2));
    }
}
