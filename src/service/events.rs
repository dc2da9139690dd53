//! Internal events that log and count in one place, rate-limited (vector's internal-event
//! pattern): a flood of bad records or failed sends is one line per reason per window with a
//! count, not a line per record.

use crate::metrics::Metrics;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often each reason is logged in full at most.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// What an event's `emit` did with the log line.
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

/// One full line per key per window; the rest are counted and summarised when the window closes.
#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    by_key: HashMap<&'static str, Window>,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(LOG_WINDOW)
    }
}

impl Throttle {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            by_key: HashMap::new(),
        }
    }

    /// Whether the line of `key` at `now` is logged in full; `summary` writes the line for what
    /// a closed window suppressed (key, count, window).
    pub fn admit(
        &mut self,
        key: &'static str,
        now: Instant,
        summary: fn(&'static str, u64, Duration),
    ) -> Logged {
        let window = self.window;
        let w = self.by_key.entry(key).or_insert(Window {
            started: now,
            logged: false,
            suppressed: 0,
        });
        if now.duration_since(w.started) >= window {
            if w.suppressed > 0 {
                summary(key, w.suppressed, window);
            }
            *w = Window {
                started: now,
                logged: false,
                suppressed: 0,
            };
        }
        if w.logged {
            w.suppressed += 1;
            return Logged::Suppressed;
        }
        w.logged = true;
        Logged::Full
    }

    /// Summarises windows that have closed (called on a timer, so a flood that stops is still
    /// reported); returns (key, count) for each summary line written.
    pub fn flush(
        &mut self,
        now: Instant,
        summary: fn(&'static str, u64, Duration),
    ) -> Vec<(&'static str, u64)> {
        let window = self.window;
        let mut written = Vec::new();
        for (key, w) in &mut self.by_key {
            if now.duration_since(w.started) >= window && w.suppressed > 0 {
                written.push((*key, w.suppressed));
                summary(key, w.suppressed, window);
                w.suppressed = 0;
            }
        }
        written
    }
}

/// Records sent to the dead-letter topic: counted in `cx_sentinel_dead_letters_total{reason}` and
/// logged, each reason at most once per [`LOG_WINDOW`] in full plus one summary line.
#[derive(Debug, Default)]
pub struct DeadLetters {
    throttle: Throttle,
}

fn dead_letter_summary(reason: &'static str, records: u64, window: Duration) {
    tracing::warn!(
        reason,
        records,
        window_seconds = window.as_secs(),
        "more records dead-lettered in the last window (each counted in cx_sentinel_dead_letters_total)"
    );
}

impl DeadLetters {
    pub fn new(window: Duration) -> Self {
        Self {
            throttle: Throttle::new(window),
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
        let logged = self.throttle.admit(reason, now, dead_letter_summary);
        if logged == Logged::Full {
            tracing::warn!(partition, offset, reason, error, "record dead-lettered");
        }
        logged
    }

    pub fn flush(&mut self, now: Instant) -> Vec<(&'static str, u64)> {
        self.throttle.flush(now, dead_letter_summary)
    }
}

/// Sends the broker did not acknowledge: counted in `cx_sentinel_produce_errors_total{topic}`
/// and logged once per outcome per window (a broker outage fails every send in flight).
#[derive(Debug, Default)]
pub struct SendFailures {
    throttle: Throttle,
}

fn send_failure_summary(outcome: &'static str, sends: u64, window: Duration) {
    tracing::warn!(
        outcome,
        sends,
        window_seconds = window.as_secs(),
        "more sends failed in the last window (each counted in cx_sentinel_produce_errors_total)"
    );
}

impl SendFailures {
    /// One failed send to `topic`; `outcome` says what happens to it (`resent`, `trimmed`,
    /// `stripped`, `aborted`). `error` is the client's error text.
    pub fn emit(
        &mut self,
        metrics: &Metrics,
        now: Instant,
        topic: &str,
        outcome: &'static str,
        error: &str,
    ) -> Logged {
        metrics.produce_errors.with_label_values(&[topic]).inc();
        let logged = self.throttle.admit(outcome, now, send_failure_summary);
        if logged == Logged::Full {
            tracing::warn!(topic, outcome, error, "delivery failed");
        }
        logged
    }

    pub fn flush(&mut self, now: Instant) -> Vec<(&'static str, u64)> {
        self.throttle.flush(now, send_failure_summary)
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
        // Another kind of event has windows of its own.
        let mut f = SendFailures::default();
        assert_eq!(f.emit(&m, t0, "alerts", "resent", "timed out"), Logged::Full);
        assert_eq!(
            f.emit(&m, t0, "alerts", "resent", "timed out"),
            Logged::Suppressed
        );
        assert_eq!(m.produce_errors.with_label_values(&["alerts"]).get(), 2);
        // The next record after the window is logged in full again.
        assert_eq!(
            d.emit(&m, t0 + Duration::from_secs(31), 0, 101, "json", "invalid JSON"),
            Logged::Full
        );
    }
}
