//! Sends the broker has not answered yet, by token, and the resend policy: what a failed send
//! becomes (sent again, sent smaller, or fatal), decided from the failure's class.

use crate::model::RecoveryAlert;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Tokens keep their top bit free for the driver's tag (the producer's opaque pointer).
pub const TOKEN_MASK: usize = usize::MAX >> 1;

/// Wait between re-send bursts after failed deliveries (the broker is likely down).
pub const RESEND_BACKOFF: Duration = Duration::from_millis(500);

/// What a send was for, to account for it when the broker answers.
#[derive(Debug)]
pub(crate) enum Sent {
    Alert {
        /// Kept until acknowledged: an alert too large for the topic is sent again trimmed.
        alert: Box<RecoveryAlert>,
        batch: Option<u64>,
        trimmed: bool,
    },
    DeadLetter {
        batch: Option<u64>,
        /// Sent again without its payload after the full record was too large.
        stripped: bool,
    },
    Changelog {
        batch: u64,
        records: usize,
    },
}

impl Sent {
    /// The output it goes to, for logs and metric labels.
    pub(crate) fn output(&self) -> Output {
        match self {
            Sent::Alert { .. } => Output::Alerts,
            Sent::DeadLetter { .. } => Output::DeadLetters,
            Sent::Changelog { .. } => Output::Changelog,
        }
    }
}

/// The three output topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Alerts,
    DeadLetters,
    Changelog,
}

/// A send the broker has not answered yet.
#[derive(Debug)]
pub(crate) struct Outstanding {
    pub(crate) partition: i32,
    /// Generation of the partition's state the send belongs to: a partition revoked and assigned
    /// again gets a new one, and late reports from the old one must not touch the new.
    pub(crate) epoch: u64,
    /// The input record it belongs to (alerts, dead letters); a changelog record's input records
    /// are held by its batch instead.
    pub(crate) offset: Option<super::At>,
    pub(crate) sent: Sent,
}

/// How the driver classified a failed send (from the client's error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// May succeed later (broker down, timeouts): send it again.
    Transient,
    /// This record will never fit the topic (message too large).
    TooLarge,
    /// Nothing will succeed (topic missing, not authorised, fenced): the process must stop.
    Fatal,
}

/// A failed send as the driver reports it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: FailureClass,
    /// The client's error text (never a record's content).
    pub error: String,
}

/// What to do with a failed send.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resend {
    /// The same record again.
    Same,
    /// An alert with its detail trimmed, to fit the topic.
    Trimmed,
    /// A dead letter without its payload (headers and source position stay).
    WithoutPayload,
    /// Cannot be sent at all: stop the process.
    Fatal,
}

/// The resend policy: a transient failure is sent again, a record too large is sent again
/// smaller once, everything else stops the process (retrying it would never end).
pub(crate) fn resend_policy(class: FailureClass, sent: &Sent) -> Resend {
    match (class, sent) {
        (FailureClass::Transient, _) => Resend::Same,
        (FailureClass::TooLarge, Sent::Alert { trimmed: false, .. }) => Resend::Trimmed,
        (FailureClass::TooLarge, Sent::DeadLetter { stripped: false, .. }) => Resend::WithoutPayload,
        // A trimmed alert or an empty dead letter that still does not fit, or a changelog record
        // (a customer's state is bounded far below any sane limit): the topic is misconfigured.
        (FailureClass::TooLarge, _) | (FailureClass::Fatal, _) => Resend::Fatal,
    }
}

/// Outstanding sends by token, and the pacing of resends.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    sends: HashMap<usize, Outstanding, ahash::RandomState>,
    next_token: usize,
    last_resend: Option<Instant>,
}

impl Outbox {
    /// A fresh token.
    pub(crate) fn token(&mut self) -> usize {
        let token = self.next_token;
        self.next_token = token.wrapping_add(1) & TOKEN_MASK;
        token
    }

    pub(crate) fn insert(&mut self, token: usize, o: Outstanding) {
        self.sends.insert(token, o);
    }

    pub(crate) fn remove(&mut self, token: usize) -> Option<Outstanding> {
        self.sends.remove(&token)
    }

    pub(crate) fn len(&self) -> usize {
        self.sends.len()
    }

    pub(crate) fn clear(&mut self) {
        self.sends.clear();
    }

    /// Before a resend at `now`: the pause to take first, one per burst of failures rather than
    /// one per failed record.
    pub(crate) fn pace(&mut self, now: Instant) -> Option<Duration> {
        if self
            .last_resend
            .is_some_and(|t| now.duration_since(t) < RESEND_BACKOFF)
        {
            return None;
        }
        self.last_resend = Some(now + RESEND_BACKOFF);
        Some(RESEND_BACKOFF)
    }
}

/// The alert as it may still fit: no recent touchpoints, no attributes, a bounded reason, and
/// the attribute `cx.trimmed` saying so. Who, what, how bad and what to do stay; the detail is on
/// `/customers/{id}`.
pub(crate) fn trim_alert(alert: &RecoveryAlert) -> Box<RecoveryAlert> {
    let mut a = alert.clone();
    a.recent_touchpoints.clear();
    a.attributes.clear();
    a.attributes
        .insert("cx.trimmed".into(), "recent_touchpoints,attributes".into());
    a.reason = truncate(&a.reason, 1024);
    a.customer_tier = a.customer_tier.map(|t| truncate(&t, 64));
    Box::new(a)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_resent_and_permanent_ones_are_not_retried_forever() {
        let dl = |stripped| Sent::DeadLetter {
            batch: None,
            stripped,
        };
        let cl = Sent::Changelog { batch: 0, records: 1 };
        assert_eq!(resend_policy(FailureClass::Transient, &cl), Resend::Same);
        assert_eq!(
            resend_policy(FailureClass::TooLarge, &dl(false)),
            Resend::WithoutPayload
        );
        assert_eq!(resend_policy(FailureClass::TooLarge, &dl(true)), Resend::Fatal);
        assert_eq!(resend_policy(FailureClass::TooLarge, &cl), Resend::Fatal);
        assert_eq!(resend_policy(FailureClass::Fatal, &dl(false)), Resend::Fatal);
    }

    #[test]
    fn resends_pause_once_per_burst() {
        let mut o = Outbox::default();
        let t = Instant::now();
        assert_eq!(o.pace(t), Some(RESEND_BACKOFF));
        assert_eq!(o.pace(t + Duration::from_millis(10)), None);
        assert_eq!(o.pace(t + RESEND_BACKOFF * 3), Some(RESEND_BACKOFF));
    }

    #[test]
    fn truncation_never_cuts_a_character() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1023);
        assert!(t.len() <= 1023 + '…'.len_utf8());
        assert!(t.ends_with('…'));
    }
}
