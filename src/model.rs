//! The data contracts: touchpoints and case actions in, recovery alerts out (mirrors
//! `schemas/*.avsc`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Milliseconds since the Unix epoch (Avro `timestamp-millis`).
pub type Millis = i64;

macro_rules! avro_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every symbol, in schema order (the Avro enum index).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The schema symbol.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Position in the Avro enum.
            pub fn index(self) -> usize {
                self as usize
            }

            /// The symbol at an Avro enum index.
            pub fn from_index(i: usize) -> Option<Self> {
                Self::ALL.get(i).copied()
            }

            /// Parses a schema symbol (case-sensitive, as Avro is).
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

avro_enum!(
    /// Where a touchpoint happened.
    Channel { Web = "WEB", MobileApp = "MOBILE_APP", Email = "EMAIL", Sms = "SMS", Voice = "VOICE",
              Chat = "CHAT", Store = "STORE", Social = "SOCIAL", Other = "OTHER" }
);
avro_enum!(
    /// Two-way exchange or one-way action.
    TouchpointKind { Interaction = "INTERACTION", Engagement = "ENGAGEMENT" }
);
avro_enum!(
    /// Who started it.
    Direction { Inbound = "INBOUND", Outbound = "OUTBOUND" }
);
avro_enum!(
    /// How the touchpoint ended.
    Outcome { Success = "SUCCESS", Failure = "FAILURE", Abandoned = "ABANDONED", Escalated = "ESCALATED",
              Pending = "PENDING", Unknown = "UNKNOWN" }
);
avro_enum!(
    /// How urgently a human must step in.
    Severity { Low = "LOW", Medium = "MEDIUM", High = "HIGH", Critical = "CRITICAL" }
);
avro_enum!(
    /// Where a recovery case stands.
    AlertStatus { Open = "OPEN", Escalated = "ESCALATED", Recovered = "RECOVERED", Expired = "EXPIRED",
                  Withdrawn = "WITHDRAWN", Acknowledged = "ACKNOWLEDGED", Resolved = "RESOLVED",
                  Reopened = "REOPENED" }
);
avro_enum!(
    /// What an agent did to a case (`cx.sentinel.v1.ActionKind`).
    ActionKind { Acknowledge = "ACKNOWLEDGE", Resolve = "RESOLVE", Reopen = "REOPEN" }
);

impl Severity {
    /// One step more urgent, saturating at CRITICAL.
    pub fn step_up(self) -> Self {
        Severity::from_index(self.index() + 1).unwrap_or(Severity::Critical)
    }
}

/// One decoded, validated customer touchpoint (`cx.sentinel.v1.Touchpoint`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Touchpoint {
    pub event_id: String,
    pub customer_id: String,
    pub occurred_at: Millis,
    pub channel: Channel,
    pub kind: TouchpointKind,
    pub direction: Direction,
    pub journey: String,
    pub touchpoint: String,
    pub outcome: Outcome,
    pub sentiment: Option<f64>,
    pub customer_tier: Option<String>,
    pub agent_id: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// One entry of an alert's recent history (`cx.sentinel.v1.RecentTouchpoint`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentTouchpoint {
    pub event_id: String,
    pub occurred_at: Millis,
    pub channel: Channel,
    pub touchpoint: String,
    pub outcome: Outcome,
    pub sentiment: Option<f64>,
}

/// A recovery-needed alert (`cx.sentinel.v1.RecoveryAlert`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryAlert {
    pub alert_id: String,
    pub case_id: String,
    pub status: AlertStatus,
    pub customer_id: String,
    pub journey: String,
    pub rule: String,
    pub severity: Severity,
    pub priority: f64,
    pub reason: String,
    pub recommended_channel: Channel,
    pub trigger_event_id: String,
    pub event_time: Millis,
    pub detected_at: Millis,
    pub experience_score: f64,
    pub customer_tier: Option<String>,
    pub recent_touchpoints: Vec<RecentTouchpoint>,
    pub time_to_recover_ms: Option<i64>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Who has the case (an agent or team id), once acknowledged.
    #[serde(default)]
    pub actor: Option<String>,
    /// From the case's (re)opening to its acknowledgement, once acknowledged.
    #[serde(default)]
    pub time_to_acknowledge_ms: Option<i64>,
    /// From the case's (re)opening to its resolution by an agent; set on RESOLVED.
    #[serde(default)]
    pub time_to_resolve_ms: Option<i64>,
    /// The agent's resolution code (e.g. `refunded`); set on RESOLVED and on the REOPENED that
    /// follows it (the fix that did not hold).
    #[serde(default)]
    pub resolution: Option<String>,
    /// The team that gets the case (`rules.routing`), `"default"` when no route matched.
    #[serde(default = "default_queue")]
    pub queue: String,
}

/// The queue of a case no `rules.routing` entry matched.
pub const DEFAULT_QUEUE: &str = "default";

fn default_queue() -> String {
    DEFAULT_QUEUE.to_string()
}

/// What an agent did to a case (`cx.sentinel.v1.CaseAction`). Kafka key: customer_id.
///
/// `Debug` leaves `note` out: it is free text an agent typed and may hold anything; it is stored
/// nowhere and never logged.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseAction {
    /// Idempotency key: a repeated action changes nothing.
    pub action_id: String,
    pub case_id: String,
    pub customer_id: String,
    pub action: ActionKind,
    /// Agent or team id.
    pub actor: String,
    pub occurred_at: Millis,
    /// Resolution code, e.g. `refunded`, `called-back` (RESOLVE).
    pub resolution: Option<String>,
    /// How the customer was reached.
    pub channel: Option<Channel>,
    /// Free text: stored nowhere, never logged.
    pub note: Option<String>,
}

impl std::fmt::Debug for CaseAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaseAction")
            .field("action_id", &self.action_id)
            .field("case_id", &self.case_id)
            .field("customer_id", &self.customer_id)
            .field("action", &self.action)
            .field("actor", &self.actor)
            .field("occurred_at", &self.occurred_at)
            .field("resolution", &self.resolution)
            .field("channel", &self.channel)
            .field("note", &self.note.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_indices_follow_schema_order() {
        assert_eq!(Channel::from_index(4), Some(Channel::Voice));
        assert_eq!(Outcome::parse("ABANDONED"), Some(Outcome::Abandoned));
        assert_eq!(Outcome::parse("abandoned"), None);
        assert_eq!(Severity::Medium.step_up(), Severity::High);
        assert_eq!(Severity::Critical.step_up(), Severity::Critical);
        // Appended after WITHDRAWN: the indices of older symbols never move.
        assert_eq!(AlertStatus::Withdrawn.index(), 4);
        assert_eq!(AlertStatus::from_index(5), Some(AlertStatus::Acknowledged));
        assert_eq!(AlertStatus::from_index(7), Some(AlertStatus::Reopened));
    }

    #[test]
    fn debug_of_an_action_never_shows_its_note() {
        let a = CaseAction {
            action_id: "a1".into(),
            case_id: "c1".into(),
            customer_id: "cust".into(),
            action: ActionKind::Resolve,
            actor: "agent-7".into(),
            occurred_at: 1,
            resolution: Some("refunded".into()),
            channel: Some(Channel::Voice),
            note: Some("called him at 555-0100".into()),
        };
        let text = format!("{a:?}");
        assert!(!text.contains("555-0100"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
