//! Bounded retries: exponential backoff between tries, and a deadline after which a retry loop
//! gives up (so a permanent failure ends the process instead of spinning behind a green probe).

use std::time::{Duration, Instant};

/// Exponential backoff: 100 ms doubling to a 30 s cap by default. Pure: the caller sleeps (and
/// watches for shutdown while it does).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration) -> Self {
        Self {
            initial,
            cap,
            next: initial.min(cap),
        }
    }

    /// The wait before the next try; each call doubles the one after, up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.cap);
        wait
    }

    /// After a success: the next failure waits the initial delay again.
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.cap);
    }
}

/// Backoff until a deadline: [`RetryPolicy::next`] says how long to wait before trying again,
/// or `None` once the deadline has passed (or would pass during the wait).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    deadline: Instant,
    backoff: Backoff,
}

impl RetryPolicy {
    pub fn new(started: Instant, timeout: Duration) -> Self {
        Self {
            deadline: started + timeout,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
        }
    }

    /// After a failed try at `now`: the wait before the next, or `None` to give up.
    pub fn next(&mut self, now: Instant) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(now)?;
        if left.is_zero() {
            return None;
        }
        Some(self.backoff.next_wait().min(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u64> = (0..5).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(100));
        let mut d = Backoff::default();
        let waits: Vec<u64> = (0..11).map(|_| d.next_wait().as_millis() as u64).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        let mut tiny = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(tiny.next_wait(), Duration::from_secs(1));
    }

    #[test]
    fn a_retry_loop_gives_up_at_its_deadline() {
        let t0 = Instant::now();
        let mut r = RetryPolicy::new(t0, Duration::from_secs(10));
        assert_eq!(r.next(t0), Some(Duration::from_secs(1)));
        assert_eq!(r.next(t0 + Duration::from_secs(1)), Some(Duration::from_secs(2)));
        // The last wait is cut to the deadline, then it gives up.
        assert_eq!(r.next(t0 + Duration::from_secs(9)), Some(Duration::from_secs(1)));
        assert_eq!(r.next(t0 + Duration::from_secs(10)), None);
        assert_eq!(r.next(t0 + Duration::from_secs(60)), None);
    }
}
