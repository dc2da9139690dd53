//! Avro forms of both contracts (`schemas/*.avsc`), Confluent framing, and object container files.

use super::{DecodeError, validate};
use crate::model::{
    AlertStatus, Channel, Direction, Outcome, RecentTouchpoint, RecoveryAlert, Severity, Touchpoint,
    TouchpointKind,
};
use apache_avro::Schema;
use apache_avro::types::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

pub const TOUCHPOINT_SCHEMA_TEXT: &str = include_str!("../../schemas/touchpoint.avsc");
pub const ALERT_SCHEMA_TEXT: &str = include_str!("../../schemas/recovery_alert.avsc");

static TOUCHPOINT_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(TOUCHPOINT_SCHEMA_TEXT).expect("schemas/touchpoint.avsc is valid"));
static ALERT_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(ALERT_SCHEMA_TEXT).expect("schemas/recovery_alert.avsc is valid"));

/// The `Touchpoint` schema this build reads with.
pub fn touchpoint_schema() -> &'static Schema {
    &TOUCHPOINT_SCHEMA
}

/// The `RecoveryAlert` schema this build writes.
pub fn alert_schema() -> &'static Schema {
    &ALERT_SCHEMA
}

/// Magic byte of the Confluent wire format.
pub const CONFLUENT_MAGIC: u8 = 0;

/// Prefixes an Avro datum with the Confluent header.
pub fn confluent_frame(schema_id: u32, datum: &[u8], out: &mut Vec<u8>) {
    out.reserve(5 + datum.len());
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
}

/// Splits a Confluent-framed record into its schema id and Avro datum.
pub fn confluent_unframe(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    match bytes {
        [CONFLUENT_MAGIC, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [m, ..] if *m != CONFLUENT_MAGIC => {
            Err(DecodeError::Framing(format!("magic byte is {m}, expected 0")))
        }
        _ => Err(DecodeError::Framing(format!(
            "{} bytes is shorter than the 5-byte header",
            bytes.len()
        ))),
    }
}

/// Decodes a bare datum written with `writer` (resolved to our schema if it differs) and validates it.
pub fn decode_touchpoint(
    datum: &[u8],
    writer: &Schema,
    is_sensitive: &dyn Fn(&str) -> bool,
) -> Result<Touchpoint, DecodeError> {
    let mut reader = datum;
    let reader_schema = touchpoint_schema();
    let resolve = (writer != reader_schema).then_some(reader_schema);
    let value = apache_avro::from_avro_datum(writer, &mut reader, resolve)
        .map_err(|e| DecodeError::Avro(e.to_string()))?;
    if !reader.is_empty() {
        return Err(DecodeError::Avro(format!(
            "{} trailing bytes after the datum",
            reader.len()
        )));
    }
    validate(touchpoint_from_value(value)?, is_sensitive)
}

fn avro_err(msg: impl Into<String>) -> DecodeError {
    DecodeError::Avro(msg.into())
}

fn fields(value: Value, what: &str) -> Result<HashMap<String, Value>, DecodeError> {
    match value {
        Value::Record(f) => Ok(f.into_iter().collect()),
        other => Err(avro_err(format!("expected a {what} record, got {other:?}"))),
    }
}

fn take_string(f: &mut HashMap<String, Value>, name: &str) -> Result<String, DecodeError> {
    match f.remove(name) {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Union(_, b)) => match *b {
            Value::String(s) => Ok(s),
            other => Err(avro_err(format!("field {name}: expected string, got {other:?}"))),
        },
        other => Err(avro_err(format!("field {name}: expected string, got {other:?}"))),
    }
}

fn take_opt_string(f: &mut HashMap<String, Value>, name: &str) -> Result<Option<String>, DecodeError> {
    match f.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Union(_, b)) if *b == Value::Null => Ok(None),
        Some(Value::Union(_, b)) => match *b {
            Value::String(s) => Ok(Some(s)),
            other => Err(avro_err(format!("field {name}: expected string, got {other:?}"))),
        },
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(avro_err(format!("field {name}: expected string, got {other:?}"))),
    }
}

fn take_millis(f: &mut HashMap<String, Value>, name: &str) -> Result<i64, DecodeError> {
    match f.remove(name) {
        Some(Value::TimestampMillis(t) | Value::Long(t)) => Ok(t),
        other => Err(avro_err(format!(
            "field {name}: expected timestamp-millis, got {other:?}"
        ))),
    }
}

fn take_opt<T>(
    f: &mut HashMap<String, Value>,
    name: &str,
    conv: impl Fn(Value) -> Option<T>,
) -> Result<Option<T>, DecodeError> {
    let v = match f.remove(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Union(_, b)) => *b,
        Some(v) => v,
    };
    if v == Value::Null {
        return Ok(None);
    }
    conv(v)
        .map(Some)
        .ok_or_else(|| avro_err(format!("field {name}: unexpected type")))
}

fn take_enum<T>(
    f: &mut HashMap<String, Value>,
    name: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, DecodeError> {
    match f.remove(name) {
        Some(Value::Enum(_, s) | Value::String(s)) => {
            parse(&s).ok_or_else(|| avro_err(format!("field {name}: unknown symbol {s}")))
        }
        other => Err(avro_err(format!("field {name}: expected enum, got {other:?}"))),
    }
}

fn take_map(f: &mut HashMap<String, Value>, name: &str) -> Result<BTreeMap<String, String>, DecodeError> {
    match f.remove(name) {
        None => Ok(BTreeMap::new()),
        Some(Value::Map(m)) => m
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => Err(avro_err(format!(
                    "field {name}.{k}: expected string, got {other:?}"
                ))),
            })
            .collect(),
        Some(other) => Err(avro_err(format!("field {name}: expected map, got {other:?}"))),
    }
}

fn double(v: Value) -> Option<f64> {
    match v {
        Value::Double(d) => Some(d),
        Value::Float(f) => Some(f64::from(f)),
        _ => None,
    }
}

/// A decoded `Touchpoint` record to the model (no validation).
pub fn touchpoint_from_value(value: Value) -> Result<Touchpoint, DecodeError> {
    let mut f = fields(value, "Touchpoint")?;
    Ok(Touchpoint {
        event_id: take_string(&mut f, "event_id")?,
        customer_id: take_string(&mut f, "customer_id")?,
        occurred_at: take_millis(&mut f, "occurred_at")?,
        channel: take_enum(&mut f, "channel", Channel::parse)?,
        kind: take_enum(&mut f, "kind", TouchpointKind::parse)?,
        direction: take_enum(&mut f, "direction", Direction::parse)?,
        journey: take_string(&mut f, "journey")?,
        touchpoint: take_string(&mut f, "touchpoint")?,
        outcome: take_enum(&mut f, "outcome", Outcome::parse)?,
        sentiment: take_opt(&mut f, "sentiment", double)?,
        customer_tier: take_opt_string(&mut f, "customer_tier")?,
        agent_id: take_opt_string(&mut f, "agent_id")?,
        attributes: take_map(&mut f, "attributes")?,
    })
}

fn enum_value(index: usize, symbol: &str) -> Value {
    Value::Enum(index as u32, symbol.to_string())
}

fn opt_string(v: &Option<String>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
    }
}

fn opt_double(v: Option<f64>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(d) => Value::Union(1, Box::new(Value::Double(d))),
    }
}

fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::Map(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// The model to a `Touchpoint` record value.
pub fn touchpoint_to_value(t: &Touchpoint) -> Value {
    Value::Record(vec![
        ("event_id".into(), Value::String(t.event_id.clone())),
        ("customer_id".into(), Value::String(t.customer_id.clone())),
        ("occurred_at".into(), Value::TimestampMillis(t.occurred_at)),
        (
            "channel".into(),
            enum_value(t.channel.index(), t.channel.as_str()),
        ),
        ("kind".into(), enum_value(t.kind.index(), t.kind.as_str())),
        (
            "direction".into(),
            enum_value(t.direction.index(), t.direction.as_str()),
        ),
        ("journey".into(), Value::String(t.journey.clone())),
        ("touchpoint".into(), Value::String(t.touchpoint.clone())),
        (
            "outcome".into(),
            enum_value(t.outcome.index(), t.outcome.as_str()),
        ),
        ("sentiment".into(), opt_double(t.sentiment)),
        ("customer_tier".into(), opt_string(&t.customer_tier)),
        ("agent_id".into(), opt_string(&t.agent_id)),
        ("attributes".into(), string_map(&t.attributes)),
    ])
}

/// A touchpoint as a bare Avro datum.
pub fn encode_touchpoint(t: &Touchpoint) -> Vec<u8> {
    apache_avro::to_avro_datum(touchpoint_schema(), touchpoint_to_value(t))
        .expect("a touchpoint always matches its schema")
}

/// The model to a `RecoveryAlert` record value.
pub fn alert_to_value(a: &RecoveryAlert) -> Value {
    let recent = a
        .recent_touchpoints
        .iter()
        .map(|r| {
            Value::Record(vec![
                ("event_id".into(), Value::String(r.event_id.clone())),
                ("occurred_at".into(), Value::TimestampMillis(r.occurred_at)),
                (
                    "channel".into(),
                    enum_value(r.channel.index(), r.channel.as_str()),
                ),
                ("touchpoint".into(), Value::String(r.touchpoint.clone())),
                (
                    "outcome".into(),
                    enum_value(r.outcome.index(), r.outcome.as_str()),
                ),
                ("sentiment".into(), opt_double(r.sentiment)),
            ])
        })
        .collect();
    Value::Record(vec![
        ("alert_id".into(), Value::String(a.alert_id.clone())),
        ("case_id".into(), Value::String(a.case_id.clone())),
        ("status".into(), enum_value(a.status.index(), a.status.as_str())),
        ("customer_id".into(), Value::String(a.customer_id.clone())),
        ("journey".into(), Value::String(a.journey.clone())),
        ("rule".into(), Value::String(a.rule.clone())),
        (
            "severity".into(),
            enum_value(a.severity.index(), a.severity.as_str()),
        ),
        ("priority".into(), Value::Double(a.priority)),
        ("reason".into(), Value::String(a.reason.clone())),
        (
            "recommended_channel".into(),
            enum_value(a.recommended_channel.index(), a.recommended_channel.as_str()),
        ),
        (
            "trigger_event_id".into(),
            Value::String(a.trigger_event_id.clone()),
        ),
        ("event_time".into(), Value::TimestampMillis(a.event_time)),
        ("detected_at".into(), Value::TimestampMillis(a.detected_at)),
        ("experience_score".into(), Value::Double(a.experience_score)),
        ("customer_tier".into(), opt_string(&a.customer_tier)),
        ("recent_touchpoints".into(), Value::Array(recent)),
        (
            "time_to_recover_ms".into(),
            match a.time_to_recover_ms {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(ms) => Value::Union(1, Box::new(Value::Long(ms))),
            },
        ),
        ("attributes".into(), string_map(&a.attributes)),
    ])
}

/// An alert as a bare Avro datum, appended to `out`.
pub fn encode_alert(a: &RecoveryAlert, out: &mut Vec<u8>) {
    let bytes = apache_avro::to_avro_datum(alert_schema(), alert_to_value(a))
        .expect("an alert always matches its schema");
    out.extend_from_slice(&bytes);
}

/// Reads an alert datum back (tests, tools, the demo's consumer).
pub fn decode_alert(datum: &[u8]) -> Result<RecoveryAlert, DecodeError> {
    let mut reader = datum;
    let value = apache_avro::from_avro_datum(alert_schema(), &mut reader, None)
        .map_err(|e| avro_err(e.to_string()))?;
    alert_from_value(value)
}

/// A decoded `RecoveryAlert` record to the model.
pub fn alert_from_value(value: Value) -> Result<RecoveryAlert, DecodeError> {
    let mut f = fields(value, "RecoveryAlert")?;
    let recent = match f.remove("recent_touchpoints") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| {
                let mut r = fields(v, "RecentTouchpoint")?;
                Ok(RecentTouchpoint {
                    event_id: take_string(&mut r, "event_id")?,
                    occurred_at: take_millis(&mut r, "occurred_at")?,
                    channel: take_enum(&mut r, "channel", Channel::parse)?,
                    touchpoint: take_string(&mut r, "touchpoint")?,
                    outcome: take_enum(&mut r, "outcome", Outcome::parse)?,
                    sentiment: take_opt(&mut r, "sentiment", double)?,
                })
            })
            .collect::<Result<Vec<_>, DecodeError>>()?,
        other => {
            return Err(avro_err(format!(
                "field recent_touchpoints: expected array, got {other:?}"
            )));
        }
    };
    let num = |f: &mut HashMap<String, Value>, name: &str| match f.remove(name) {
        Some(Value::Double(d)) => Ok(d),
        other => Err(avro_err(format!("field {name}: expected double, got {other:?}"))),
    };
    Ok(RecoveryAlert {
        alert_id: take_string(&mut f, "alert_id")?,
        case_id: take_string(&mut f, "case_id")?,
        status: take_enum(&mut f, "status", AlertStatus::parse)?,
        customer_id: take_string(&mut f, "customer_id")?,
        journey: take_string(&mut f, "journey")?,
        rule: take_string(&mut f, "rule")?,
        severity: take_enum(&mut f, "severity", Severity::parse)?,
        priority: num(&mut f, "priority")?,
        reason: take_string(&mut f, "reason")?,
        recommended_channel: take_enum(&mut f, "recommended_channel", Channel::parse)?,
        trigger_event_id: take_string(&mut f, "trigger_event_id")?,
        event_time: take_millis(&mut f, "event_time")?,
        detected_at: take_millis(&mut f, "detected_at")?,
        experience_score: num(&mut f, "experience_score")?,
        customer_tier: take_opt_string(&mut f, "customer_tier")?,
        recent_touchpoints: recent,
        time_to_recover_ms: take_opt(&mut f, "time_to_recover_ms", |v| match v {
            Value::Long(l) => Some(l),
            _ => None,
        })?,
        attributes: take_map(&mut f, "attributes")?,
    })
}

/// Reads touchpoints from an Avro object container file, resolving its writer schema to ours.
/// Yields one result per record; a record that fails decoding or validation does not stop the rest.
pub fn read_container<R: std::io::Read>(
    input: R,
) -> Result<impl Iterator<Item = Result<Touchpoint, DecodeError>>, DecodeError> {
    let reader =
        apache_avro::Reader::with_schema(touchpoint_schema(), input).map_err(|e| avro_err(e.to_string()))?;
    Ok(reader.map(|r| {
        r.map_err(|e| avro_err(e.to_string()))
            .and_then(touchpoint_from_value)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Touchpoint {
        Touchpoint {
            event_id: "e-1".into(),
            customer_id: "c-1".into(),
            occurred_at: 1_772_359_200_000,
            channel: Channel::MobileApp,
            kind: TouchpointKind::Interaction,
            direction: Direction::Inbound,
            journey: "billing".into(),
            touchpoint: "payment.transfer".into(),
            outcome: Outcome::Failure,
            sentiment: Some(-0.75),
            customer_tier: Some("vip".into()),
            agent_id: None,
            attributes: BTreeMap::from([("order".into(), "42".into())]),
        }
    }

    #[test]
    fn touchpoint_round_trip() {
        let t = sample();
        let bytes = encode_touchpoint(&t);
        let back = decode_touchpoint(&bytes, touchpoint_schema(), &|_| false).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn alert_round_trip() {
        let a = RecoveryAlert {
            alert_id: "x-open".into(),
            case_id: "x".into(),
            status: AlertStatus::Open,
            customer_id: "c".into(),
            journey: "billing".into(),
            rule: "critical_negative".into(),
            severity: Severity::Critical,
            priority: 46.5,
            reason: "r".into(),
            recommended_channel: Channel::Voice,
            trigger_event_id: "e".into(),
            event_time: 1,
            detected_at: 2,
            experience_score: -6.0,
            customer_tier: None,
            recent_touchpoints: vec![RecentTouchpoint {
                event_id: "e".into(),
                occurred_at: 1,
                channel: Channel::Chat,
                touchpoint: "payment.transfer".into(),
                outcome: Outcome::Failure,
                sentiment: None,
            }],
            time_to_recover_ms: Some(5),
            attributes: BTreeMap::new(),
        };
        let mut bytes = Vec::new();
        encode_alert(&a, &mut bytes);
        assert_eq!(decode_alert(&bytes).unwrap(), a);
    }

    #[test]
    fn older_writer_schema_resolves_with_defaults() {
        // A writer that predates `attributes` and `agent_id`: the reader fills the defaults.
        let mut json: serde_json::Value = serde_json::from_str(TOUCHPOINT_SCHEMA_TEXT).unwrap();
        json["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "agent_id" && f["name"] != "attributes");
        let old = Schema::parse_str(&json.to_string()).unwrap();
        assert_ne!(
            &old,
            touchpoint_schema(),
            "the test must really use an older schema"
        );
        let mut t = sample();
        let Value::Record(mut f) = touchpoint_to_value(&t) else {
            unreachable!()
        };
        f.retain(|(n, _)| n != "agent_id" && n != "attributes");
        let bytes = apache_avro::to_avro_datum(&old, Value::Record(f)).unwrap();
        let back = decode_touchpoint(&bytes, &old, &|_| false).unwrap();
        t.attributes.clear();
        assert_eq!(back, t);
    }

    #[test]
    fn framing_errors_are_data_errors() {
        let mut framed = Vec::new();
        confluent_frame(7, b"abc", &mut framed);
        assert_eq!(confluent_unframe(&framed).unwrap(), (7, &b"abc"[..]));
        assert_eq!(confluent_unframe(b"\x01abcd").unwrap_err().class(), "framing");
        assert_eq!(confluent_unframe(b"\x00ab").unwrap_err().class(), "framing");
        let e = decode_touchpoint(b"\x02\xff", touchpoint_schema(), &|_| false).unwrap_err();
        assert_eq!(e.class(), "avro");
    }
}
