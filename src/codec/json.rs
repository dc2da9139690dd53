//! JSON forms: touchpoints in (event time as RFC 3339 or epoch ms), alerts out.

use super::{DecodeError, invalid, validate, validate_action};
use crate::model::{
    ActionKind, CaseAction, Channel, Direction, Outcome, RecoveryAlert, Touchpoint, TouchpointKind,
};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(untagged)]
enum EventTime {
    Millis(i64),
    Text(String),
}

/// The JSON shape; unknown fields are ignored so producers can add fields first.
#[derive(Deserialize)]
struct JsonTouchpoint {
    event_id: String,
    customer_id: String,
    occurred_at: EventTime,
    channel: Channel,
    kind: TouchpointKind,
    direction: Direction,
    journey: String,
    touchpoint: String,
    outcome: Outcome,
    #[serde(default)]
    sentiment: Option<f64>,
    #[serde(default)]
    customer_tier: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

/// Parses an RFC 3339 timestamp to epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Result<i64, DecodeError> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| invalid("occurred_at", format!("not RFC 3339: {e}")))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| invalid("occurred_at", "out of range"))
}

/// Decodes and validates one JSON touchpoint.
pub fn decode_touchpoint(
    bytes: &[u8],
    is_sensitive: &dyn Fn(&str) -> bool,
) -> Result<Touchpoint, DecodeError> {
    let j: JsonTouchpoint = serde_json::from_slice(bytes)
        .map_err(|e| DecodeError::Json(super::without_values(&e.to_string())))?;
    let occurred_at = match j.occurred_at {
        EventTime::Millis(ms) => ms,
        EventTime::Text(s) => parse_rfc3339(&s)?,
    };
    validate(
        Touchpoint {
            event_id: j.event_id,
            customer_id: j.customer_id,
            occurred_at,
            channel: j.channel,
            kind: j.kind,
            direction: j.direction,
            journey: j.journey,
            touchpoint: j.touchpoint,
            outcome: j.outcome,
            sentiment: j.sentiment,
            customer_tier: j.customer_tier,
            agent_id: j.agent_id,
            attributes: j.attributes,
        },
        is_sensitive,
    )
}

/// The JSON shape of a case action; unknown fields are ignored, as for touchpoints.
#[derive(Deserialize)]
struct JsonCaseAction {
    action_id: String,
    case_id: String,
    customer_id: String,
    action: ActionKind,
    actor: String,
    occurred_at: EventTime,
    #[serde(default)]
    resolution: Option<String>,
    #[serde(default)]
    channel: Option<Channel>,
    #[serde(default)]
    note: Option<String>,
}

/// Decodes and validates one JSON case action (event time as RFC 3339 or epoch ms). The caller
/// checks the record size first ([`super::check_record_size`]), as for touchpoints.
pub fn decode_action(bytes: &[u8]) -> Result<CaseAction, DecodeError> {
    let j: JsonCaseAction = serde_json::from_slice(bytes)
        .map_err(|e| DecodeError::Json(super::without_values(&e.to_string())))?;
    let occurred_at = match j.occurred_at {
        EventTime::Millis(ms) => ms,
        EventTime::Text(s) => parse_rfc3339(&s)?,
    };
    validate_action(CaseAction {
        action_id: j.action_id,
        case_id: j.case_id,
        customer_id: j.customer_id,
        action: j.action,
        actor: j.actor,
        occurred_at,
        resolution: j.resolution,
        channel: j.channel,
        note: j.note,
    })
}

/// One alert as a JSON object (no trailing newline).
pub fn encode_alert(alert: &RecoveryAlert, out: &mut Vec<u8>) {
    serde_json::to_writer(out, alert).expect("an alert always serializes");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_actions_decode_drop_the_note_and_never_quote_a_value() {
        let ok = br#"{"action_id":"a1","case_id":"0123456789abcdef","customer_id":"c","action":"RESOLVE","actor":"agent-7","occurred_at":"2026-03-02T09:40:00Z","resolution":"refunded","channel":"VOICE","note":"call 555-0100"}"#;
        let a = decode_action(ok).unwrap();
        assert_eq!(a.action, ActionKind::Resolve);
        assert_eq!(a.resolution.as_deref(), Some("refunded"));
        assert_eq!(a.note, None, "the note is stored nowhere");
        for (bad, field) in [
            (
                r#"{"action_id":"a1","case_id":"x","customer_id":"c","action":"CLOSE","actor":"z","occurred_at":1}"#,
                "action",
            ),
            (
                r#"{"action_id":" ","case_id":"x","customer_id":"c","action":"RESOLVE","actor":"z","occurred_at":1}"#,
                "action_id",
            ),
            (
                r#"{"action_id":"a","case_id":"x","customer_id":"c","action":"RESOLVE","actor":"z","occurred_at":-5}"#,
                "occurred_at",
            ),
        ] {
            let e = decode_action(bad.as_bytes()).unwrap_err();
            // serde names no field for an unknown enum symbol; ours name theirs.
            assert!(e.class() == "json" || e.to_string().contains(field), "{e}");
            assert!(!e.to_string().contains("CLOSE"), "{e}");
        }
        let note = "n".repeat(super::super::MAX_NOTE_BYTES + 1);
        let long = format!(
            r#"{{"action_id":"a","case_id":"x","customer_id":"c","action":"ACKNOWLEDGE","actor":"z","occurred_at":1,"note":"{note}"}}"#
        );
        let e = decode_action(long.as_bytes()).unwrap_err();
        assert_eq!(e.class(), "too_large");
        assert!(!e.to_string().contains("nnnn"), "{e}");
    }

    #[test]
    fn case_actions_round_trip_through_avro() {
        let a = decode_action(br#"{"action_id":"a1","case_id":"0123456789abcdef","customer_id":"c","action":"ACKNOWLEDGE","actor":"team-payments","occurred_at":5,"channel":"CHAT"}"#).unwrap();
        let bytes = crate::codec::avro::encode_action(&a);
        assert_eq!(crate::codec::avro::decode_action(&bytes).unwrap(), a);
        let e = crate::codec::avro::decode_action(&bytes[..bytes.len() / 2]).unwrap_err();
        assert_eq!(e.class(), "avro");
    }

    fn none(_: &str) -> bool {
        false
    }

    const LINE: &str = r#"{"event_id":"e1","customer_id":"c1","occurred_at":"2026-03-01T10:00:00Z","channel":"CHAT","kind":"INTERACTION","direction":"INBOUND","journey":"billing","touchpoint":"payment.transfer","outcome":"FAILURE","sentiment":-0.8,"attributes":{"ssn":"123","order":"9"},"future_field":1}"#;

    #[test]
    fn decodes_rfc3339_and_drops_sensitive() {
        let tp = decode_touchpoint(LINE.as_bytes(), &|k| k == "ssn").unwrap();
        assert_eq!(tp.occurred_at, 1_772_359_200_000);
        assert_eq!(tp.channel, Channel::Chat);
        assert_eq!(tp.sentiment, Some(-0.8));
        assert_eq!(tp.attributes.len(), 1);
        assert!(tp.attributes.contains_key("order"));
    }

    #[test]
    fn epoch_millis_accepted() {
        let line = LINE.replace("\"2026-03-01T10:00:00Z\"", "1772359200000");
        assert_eq!(
            decode_touchpoint(line.as_bytes(), &none).unwrap().occurred_at,
            1_772_359_200_000
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let e = decode_touchpoint(LINE.replace("CHAT", "FAX").as_bytes(), &none).unwrap_err();
        assert!(
            matches!(e, DecodeError::Json(ref m) if m.contains("unknown variant") && !m.contains("FAX")),
            "{e}"
        );
        let e = decode_touchpoint(LINE.replace("-0.8", "-1.5").as_bytes(), &none).unwrap_err();
        assert_eq!(e.to_string(), "field `sentiment`: -1.5 is outside [-1, 1]");
        let e = decode_touchpoint(LINE.replace("\"c1\"", "\"\"").as_bytes(), &none).unwrap_err();
        assert_eq!(e.to_string(), "field `customer_id`: must not be empty");
        let e = decode_touchpoint(
            LINE.replace("2026-03-01T10:00:00Z", "yesterday").as_bytes(),
            &none,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("field `occurred_at`"), "{e}");
        // A sensitive attribute sent as a number: the error says what is wrong, not the value.
        let line = LINE.replacen('{', "{\"attributes\":{\"ssn\":123456789},", 1);
        let e = decode_touchpoint(line.as_bytes(), &none).unwrap_err();
        assert!(
            e.to_string().contains("invalid type") && !e.to_string().contains("123456789"),
            "{e}"
        );
        // Found by fuzzing: a string where an object or a number belongs was quoted back.
        for line in [
            r#""4111111111111111""#.to_string(),
            LINE.replace("-0.8", r#""4111111111111111""#),
            LINE.replace("\"CHAT\"", r#""CH`AT`4111111111111111""#),
        ] {
            let e = decode_touchpoint(line.as_bytes(), &none).unwrap_err();
            assert_eq!(e.class(), "json");
            assert!(!e.to_string().contains("4111"), "{e}");
        }
        let e = decode_touchpoint(b"{not json", &none).unwrap_err();
        assert_eq!(e.class(), "json");
        let e = decode_touchpoint(LINE.replace("\"customer_id\":\"c1\",", "").as_bytes(), &none).unwrap_err();
        assert!(e.to_string().contains("customer_id"), "{e}");
    }
}
