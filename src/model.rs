//! The data contracts: touchpoints in, recovery alerts out (mirrors `schemas/*.avsc`).

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
                  Withdrawn = "WITHDRAWN" }
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
    }
}
