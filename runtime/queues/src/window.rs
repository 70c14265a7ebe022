//! A sliding window of start times, for rate limits.

use std::collections::VecDeque;

/// The start times within the last window, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Window {
    starts: VecDeque<u64>,
}

impl Window {
    /// When the next start is allowed: `None` if now, else the time the
    /// oldest start in the window leaves it.
    pub(crate) fn blocked_until(&mut self, limit: u32, period_ms: u64, now: u64) -> Option<u64> {
        while let Some(&oldest) = self.starts.front() {
            if oldest.saturating_add(period_ms) <= now {
                self.starts.pop_front();
            } else {
                break;
            }
        }
        if self.starts.len() < limit as usize {
            return None;
        }
        let oldest = self.starts.len() - limit as usize;
        Some(self.starts[oldest].saturating_add(period_ms))
    }

    /// Records a start at `now`.
    pub(crate) fn record(&mut self, now: u64) {
        self.starts.push_back(now);
    }

    /// Whether the window holds nothing (so it can be dropped).
    pub(crate) fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_limit_starts_per_period() {
        let mut w = Window::default();
        assert_eq!(w.blocked_until(2, 1000, 0), None);
        w.record(0);
        assert_eq!(w.blocked_until(2, 1000, 10), None);
        w.record(10);
        assert_eq!(w.blocked_until(2, 1000, 20), Some(1000));
        assert_eq!(w.blocked_until(2, 1000, 999), Some(1000));
        assert_eq!(w.blocked_until(2, 1000, 1000), None);
        w.record(1000);
        assert_eq!(w.blocked_until(2, 1000, 1001), Some(1010));
    }

    #[test]
    fn a_lowered_limit_waits_for_enough_starts_to_leave() {
        let mut w = Window::default();
        for t in 0..4 {
            w.record(t);
        }
        // A limit of 2 needs the 3rd-newest start (t=1) to leave first.
        assert_eq!(w.blocked_until(2, 100, 5), Some(102));
    }
}
