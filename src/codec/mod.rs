//! Wire formats: touchpoints and agents' case actions in (JSON, raw Avro datum, Confluent-framed
//! Avro), alerts out, and the validation every decoded record passes before the engine sees it.

pub mod avro;
pub mod json;

use crate::model::{CaseAction, Touchpoint};
use serde::{Deserialize, Serialize};

/// How records on a topic (or lines in a file) are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One JSON object per record.
    #[default]
    Json,
    /// A bare Avro datum written with the configured schema.
    Avro,
    /// Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro datum.
    ConfluentAvro,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Json => "json",
            Format::Avro => "avro",
            Format::ConfluentAvro => "confluent-avro",
        })
    }
}

/// Why a record could not become a touchpoint. All of these are data errors: the record is
/// dead-lettered (or, in replay, reported) and processing moves on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid Avro: {0}")]
    Avro(String),
    #[error("not Confluent wire format: {0}")]
    Framing(String),
    #[error("unknown schema id {0}")]
    UnknownSchema(u32),
    #[error("field `{field}`: {problem}")]
    Invalid { field: &'static str, problem: String },
    /// Over a size bound (a string, the attribute map, or the whole record).
    #[error("{what}: {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
}

impl DecodeError {
    /// Short, low-cardinality class for metrics labels and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::Json(_) => "json",
            DecodeError::Avro(_) => "avro",
            DecodeError::Framing(_) => "framing",
            DecodeError::UnknownSchema(_) => "unknown_schema",
            DecodeError::Invalid { .. } => "validation",
            DecodeError::TooLarge { .. } => "too_large",
        }
    }
}

/// An outside parser's message with every value it quotes taken out: serde_json puts the
/// offending value in backticks (`invalid type: integer \`123456789\``) or, for a string it
/// read, in double quotes (`invalid type: string "4111…"`), and either could be a customer's.
/// Errors name the field and the problem, never a value (they reach logs and the dead letter's
/// `cx.error` header).
/// Field names it quotes (`missing field \`customer_id\``) stay: they are ours, not the sender's.
pub(crate) fn without_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(open) = rest.find(['`', '"']) {
        let (before, after) = rest.split_at(open);
        out.push_str(before);
        let inner = &after[1..];
        if after.starts_with('"') {
            let Some(close) = closing_quote(inner) else {
                out.push_str("\"…");
                return out;
            };
            out.push_str("\"…\"");
            rest = &inner[close + 1..];
            continue;
        }
        // serde writes an unknown variant or field as sent, backticks and all; what follows it
        // (`, expected one of ...`) lists our own names, so the last such separator ends it.
        let close = if before.ends_with("unknown variant ") || before.ends_with("unknown field ") {
            inner
                .rfind("`, expected")
                .or_else(|| inner.rfind("`, there are no"))
        } else {
            inner.find('`')
        };
        let Some(close) = close else {
            out.push_str("`…");
            return out;
        };
        let quoted = &inner[..close];
        if before.ends_with("field ") && quoted.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            out.push('`');
            out.push_str(quoted);
            out.push('`');
        } else {
            out.push_str("`…`");
        }
        rest = &inner[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Where the string serde printed with `{:?}` ends in `s` (just after its opening quote): at the
/// first quote not escaped, since `{:?}` escapes every quote and backslash inside.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// Longest id or name we accept; longer ones are far more likely garbage than data.
pub const MAX_ID_BYTES: usize = 512;
/// Longest tier name; tiers are a handful of short labels.
pub const MAX_TIER_BYTES: usize = 64;
/// Longest attribute key and value.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 128;
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1_024;
/// Most attributes on one touchpoint.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest resolution code (`refunded`, `called-back`): a short label, not prose.
pub const MAX_RESOLUTION_BYTES: usize = 64;
/// Longest action note accepted (it is then dropped: stored nowhere, never logged).
pub const MAX_NOTE_BYTES: usize = 8 * 1024;
/// Largest encoded record accepted (checked before decoding).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// A record over [`MAX_RECORD_BYTES`] is refused before it is decoded.
pub fn check_record_size(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(DecodeError::TooLarge {
            what: "record",
            size: bytes.len(),
            limit: MAX_RECORD_BYTES,
        });
    }
    Ok(())
}
/// 9999-12-31T23:59:59.999Z: later event times are not plausible.
const MAX_EVENT_TIME: i64 = 253_402_300_799_999;

fn too_large(what: &'static str, size: usize, limit: usize) -> DecodeError {
    DecodeError::TooLarge { what, size, limit }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// Checks what the schema cannot express in an agent's action. Errors name the field, never its
/// value (the note least of all). The note is dropped here: the engine has no use for it, and
/// what is not held cannot leak.
pub fn validate_action(mut a: CaseAction) -> Result<CaseAction, DecodeError> {
    for (field, value) in [
        ("action_id", &a.action_id),
        ("case_id", &a.case_id),
        ("customer_id", &a.customer_id),
        ("actor", &a.actor),
    ] {
        if value.trim().is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if value.len() > MAX_ID_BYTES {
            return Err(too_large(field, value.len(), MAX_ID_BYTES));
        }
    }
    if let Some(r) = &a.resolution {
        if r.len() > MAX_RESOLUTION_BYTES {
            return Err(too_large("resolution", r.len(), MAX_RESOLUTION_BYTES));
        }
        if r.trim().is_empty() || r.chars().any(char::is_control) {
            return Err(invalid("resolution", "must be printable text, not empty"));
        }
    }
    if let Some(n) = &a.note
        && n.len() > MAX_NOTE_BYTES
    {
        return Err(too_large("note", n.len(), MAX_NOTE_BYTES));
    }
    if !(0..=MAX_EVENT_TIME).contains(&a.occurred_at) {
        return Err(invalid("occurred_at", "must be between 1970 and 9999"));
    }
    a.note = None;
    Ok(a)
}

/// Checks what the schema cannot express, and drops sensitive attributes so the engine never
/// holds them.
pub fn validate(mut tp: Touchpoint, is_sensitive: &dyn Fn(&str) -> bool) -> Result<Touchpoint, DecodeError> {
    for (field, value) in [
        ("event_id", &tp.event_id),
        ("customer_id", &tp.customer_id),
        ("journey", &tp.journey),
        ("touchpoint", &tp.touchpoint),
    ] {
        if value.trim().is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if value.len() > MAX_ID_BYTES {
            return Err(too_large(field, value.len(), MAX_ID_BYTES));
        }
    }
    for (field, value, limit) in [
        ("customer_tier", &tp.customer_tier, MAX_TIER_BYTES),
        ("agent_id", &tp.agent_id, MAX_ID_BYTES),
    ] {
        if let Some(v) = value
            && v.len() > limit
        {
            return Err(too_large(field, v.len(), limit));
        }
    }
    if tp.attributes.len() > MAX_ATTRIBUTES {
        return Err(DecodeError::TooLarge {
            what: "attributes (entries)",
            size: tp.attributes.len(),
            limit: MAX_ATTRIBUTES,
        });
    }
    for (k, v) in &tp.attributes {
        if k.len() > MAX_ATTRIBUTE_KEY_BYTES {
            return Err(too_large("attributes (a key)", k.len(), MAX_ATTRIBUTE_KEY_BYTES));
        }
        if v.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(too_large(
                "attributes (a value)",
                v.len(),
                MAX_ATTRIBUTE_VALUE_BYTES,
            ));
        }
    }
    if !(0..=MAX_EVENT_TIME).contains(&tp.occurred_at) {
        return Err(invalid(
            "occurred_at",
            format!("{} ms is outside 1970..9999", tp.occurred_at),
        ));
    }
    if let Some(s) = tp.sentiment
        && !(s.is_finite() && (-1.0..=1.0).contains(&s))
    {
        return Err(invalid("sentiment", format!("{s} is outside [-1, 1]")));
    }
    tp.attributes.retain(|k, _| !is_sensitive(k));
    Ok(tp)
}

#[cfg(test)]
mod tests {
    use super::without_values;

    #[test]
    fn every_string_and_the_record_are_bounded() {
        use super::*;
        use crate::model::{Channel, Direction, Outcome, TouchpointKind};
        let tp = || Touchpoint {
            event_id: "e".into(),
            customer_id: "c".into(),
            occurred_at: 0,
            channel: Channel::Web,
            kind: TouchpointKind::Interaction,
            direction: Direction::Inbound,
            journey: "j".into(),
            touchpoint: "t".into(),
            outcome: Outcome::Success,
            sentiment: None,
            customer_tier: None,
            agent_id: None,
            attributes: Default::default(),
        };
        let none = |_: &str| false;
        assert!(validate(tp(), &none).is_ok());
        // A 210 KB tier of three-byte characters (the issue's record) is refused, not stored.
        let mut t = tp();
        t.customer_tier = Some("€".repeat(70_000));
        let e = validate(t, &none).unwrap_err();
        assert_eq!(e.class(), "too_large");
        assert_eq!(
            e.to_string(),
            "customer_tier: 210000 bytes is over the 64-byte limit"
        );
        let mut t = tp();
        t.agent_id = Some("a".repeat(513));
        assert_eq!(validate(t, &none).unwrap_err().class(), "too_large");
        let mut t = tp();
        t.attributes.insert("k".repeat(129), "v".into());
        assert_eq!(validate(t, &none).unwrap_err().class(), "too_large");
        let mut t = tp();
        t.attributes.insert("k".into(), "v".repeat(1_025));
        assert_eq!(validate(t, &none).unwrap_err().class(), "too_large");
        let mut t = tp();
        t.attributes = (0..65).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert_eq!(validate(t, &none).unwrap_err().class(), "too_large");
        let mut t = tp();
        t.event_id = "e".repeat(513);
        assert_eq!(validate(t, &none).unwrap_err().class(), "too_large");
        assert!(check_record_size(&vec![b' '; MAX_RECORD_BYTES]).is_ok());
        assert_eq!(
            check_record_size(&vec![b' '; MAX_RECORD_BYTES + 1])
                .unwrap_err()
                .class(),
            "too_large"
        );
    }

    #[test]
    fn quoted_values_go_and_field_names_stay() {
        assert_eq!(
            without_values("invalid type: integer `123456789`, expected a string at line 1 column 9"),
            "invalid type: integer `…`, expected a string at line 1 column 9"
        );
        assert_eq!(
            without_values("missing field `customer_id`"),
            "missing field `customer_id`"
        );
        assert_eq!(
            without_values("unknown variant `FAX`, expected one of `WEB`"),
            "unknown variant `…`, expected one of `…`"
        );
        assert_eq!(without_values("dangling `4111"), "dangling `…");
    }

    /// Found by fuzzing (json_touchpoint): a string where another type belongs came back in
    /// double quotes, which only backticks were taken out of.
    #[test]
    fn double_quoted_strings_go_too() {
        assert_eq!(
            without_values(r#"invalid type: string "4111 1111", expected f64 at line 1 column 40"#),
            r#"invalid type: string "…", expected f64 at line 1 column 40"#
        );
        // `{:?}` escapes quotes inside: the string ends at the first quote not escaped.
        assert_eq!(
            without_values(r#"invalid type: string "a\"4111\\", expected f64"#),
            r#"invalid type: string "…", expected f64"#
        );
        assert_eq!(without_values(r#"string "4111"#), r#"string "…"#);
    }

    /// An unknown variant is quoted as sent: backticks inside it must not end the quote early
    /// and let the rest out.
    #[test]
    fn backticks_inside_an_unknown_variant_let_nothing_out() {
        assert_eq!(
            without_values("unknown variant `A`4111`, expected one of `WEB`, `SMS` at line 1 column 9"),
            "unknown variant `…`, expected one of `…`, `…` at line 1 column 9"
        );
        assert_eq!(
            without_values("unknown field `x`4111`, there are no fields"),
            "unknown field `…`, there are no fields"
        );
        assert_eq!(without_values("unknown variant `A`4111"), "unknown variant `…");
    }
}
