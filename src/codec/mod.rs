//! Wire formats: touchpoints in (JSON, raw Avro datum, Confluent-framed Avro), alerts out, and
//! the validation every decoded touchpoint passes before the engine sees it.

pub mod avro;
pub mod json;

use crate::model::Touchpoint;
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
        }
    }
}

/// An outside parser's message with every value it quotes taken out: serde_json puts the
/// offending value in backticks (`invalid type: integer \`123456789\``), which could be a
/// customer's. Errors name the field and the problem, never a value (they reach logs and the
/// dead letter's `cx.error` header).
/// Field names it quotes (`missing field \`customer_id\``) stay: they are ours, not the sender's.
pub(crate) fn without_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(open) = rest.find('`') {
        let (before, after) = rest.split_at(open);
        out.push_str(before);
        let Some(close) = after[1..].find('`') else {
            out.push_str("`…");
            return out;
        };
        let quoted = &after[..close + 2];
        if before.ends_with("field ") {
            out.push_str(quoted);
        } else {
            out.push_str("`…`");
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

/// Longest id or name we accept; longer ones are far more likely garbage than data.
pub const MAX_ID_BYTES: usize = 512;
/// 9999-12-31T23:59:59.999Z: later event times are not plausible.
const MAX_EVENT_TIME: i64 = 253_402_300_799_999;

fn invalid(field: &'static str, problem: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        field,
        problem: problem.into(),
    }
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
            return Err(invalid(field, format!("longer than {MAX_ID_BYTES} bytes")));
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
}
