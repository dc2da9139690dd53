//! Internal events that log and count in one place, rate-limited (vector's internal-event
//! pattern): a flood of bad records is one line per reason per window with a count, not a line
//! per record.

use crate::metrics::Metrics;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often each reason is logged in full at most.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// What [`DeadLetters::emit`] did with the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// Logged in full (the first of its reason in this window).
    Full,
    /// Counted; summarised when the window closes.
    Suppressed,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    /// A line was logged in full in this window.
    logged: bool,
    suppressed: u64,
}

/// Records sent to the dead-letter topic: counted in `cx_sentinel_dead_letters_total{reason}` and
/// logged, each reason at most once per [`LOG_WINDOW`] in full plus one summary line.
#[derive(Debug)]
pub struct DeadLetters {
    window: Duration,
    by_reason: HashMap<&'static str, Window>,
}

impl Default for DeadLetters {
    fn default() -> Self {
        Self::new(LOG_WINDOW)
    }
}

impl DeadLetters {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            by_reason: HashMap::new(),
        }
    }

    /// One record dead-lettered at `now`. `error` names the field and the problem, never a value.
    pub fn emit(
        &mut self,
        metrics: &Metrics,
        now: Instant,
        partition: i32,
        offset: i64,
        reason: &'static str,
        error: &str,
    ) -> Logged {
        metrics.dead_letters.with_label_values(&[reason]).inc();
        let window = self.window;
        let w = self.by_reason.entry(reason).or_insert(Window {
            started: now,
            logged: false,
            suppressed: 0,
        });
        if now.duration_since(w.started) >= window {
            Self::summarise(reason, w, window);
            w.started = now;
            w.logged = false;
        }
        if w.logged {
            w.suppressed += 1;
            return Logged::Suppressed;
        }
        w.logged = true;
        tracing::warn!(partition, offset, reason, error, "record dead-lettered");
        Logged::Full
    }

    /// Summarises windows that have closed (called on a timer, so a flood that stops is still
    /// reported); returns (reason, records) for each summary line written.
    pub fn flush(&mut self, now: Instant) -> Vec<(&'static str, u64)> {
        let window = self.window;
        let mut written = Vec::new();
        for (reason, w) in &mut self.by_reason {
            if now.duration_since(w.started) >= window && w.suppressed > 0 {
                written.push((*reason, w.suppressed));
                Self::summarise(reason, w, window);
            }
        }
        written
    }

    fn summarise(reason: &'static str, w: &mut Window, window: Duration) {
        if w.suppressed > 0 {
            tracing::warn!(
                reason,
                records = w.suppressed,
                window_seconds = window.as_secs(),
                "more records dead-lettered in the last window (each counted in cx_sentinel_dead_letters_total)"
            );
            w.suppressed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Metrics, reason: &str) -> u64 {
        m.dead_letters.with_label_values(&[reason]).get()
    }

    #[test]
    fn a_flood_is_one_line_per_reason_per_window_and_every_record_is_counted() {
        let m = Metrics::new();
        let mut d = DeadLetters::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut logged = Vec::new();
        for i in 0..100 {
            let at = t0 + Duration::from_millis(i * 10);
            logged.push(d.emit(&m, at, 0, i as i64, "json", "invalid JSON"));
        }
        assert_eq!(logged.iter().filter(|l| **l == Logged::Full).count(), 1);
        assert_eq!(logged[0], Logged::Full);
        // Another reason has a window of its own.
        assert_eq!(d.emit(&m, t0, 0, 100, "late", "late"), Logged::Full);
        assert_eq!(count(&m, "json"), 100);
        assert_eq!(count(&m, "late"), 1);
        // Nothing closes before the window ends; then the 99 suppressed lines become one summary.
        assert!(d.flush(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(d.flush(t0 + Duration::from_secs(10)), [("json", 99)]);
        assert!(d.flush(t0 + Duration::from_secs(30)).is_empty());
        // The next record after the window is logged in full again.
        assert_eq!(
            d.emit(&m, t0 + Duration::from_secs(31), 0, 101, "json", "invalid JSON"),
            Logged::Full
        );
    }
}
