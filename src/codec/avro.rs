//! Avro forms of both contracts (`schemas/*.avsc`), Confluent framing, and object container files.
//!
//! Touchpoints are read on the hot path by a hand-written decoder ([`read_touchpoint_datum`])
//! whenever the writer schema is ours; [`WriterSchema`] decides that once per schema. Any other
//! writer (an older or newer version) goes through apache-avro `Value`s and schema resolution.

use super::{DecodeError, validate};
use crate::model::{
    ActionKind, AlertStatus, CaseAction, Channel, Direction, Outcome, RecentTouchpoint, RecoveryAlert,
    Severity, Touchpoint, TouchpointKind,
};
use apache_avro::Schema;
use apache_avro::types::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

pub const TOUCHPOINT_SCHEMA_TEXT: &str = include_str!("../../schemas/touchpoint.avsc");
pub const ALERT_SCHEMA_TEXT: &str = include_str!("../../schemas/recovery_alert.avsc");
pub const ACTION_SCHEMA_TEXT: &str = include_str!("../../schemas/case_action.avsc");

static TOUCHPOINT_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(TOUCHPOINT_SCHEMA_TEXT).expect("schemas/touchpoint.avsc is valid"));
static ALERT_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(ALERT_SCHEMA_TEXT).expect("schemas/recovery_alert.avsc is valid"));

/// The `Touchpoint` schema this build reads with.
pub fn touchpoint_schema() -> &'static Schema {
    &TOUCHPOINT_SCHEMA
}

static ACTION_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(ACTION_SCHEMA_TEXT).expect("schemas/case_action.avsc is valid"));

/// The `CaseAction` schema this build reads with.
pub fn action_schema() -> &'static Schema {
    &ACTION_SCHEMA
}

/// Decodes and validates one bare `CaseAction` datum written with our schema (Confluent framing
/// is the caller's: [`confluent_unframe`]). Size-checked first; errors name fields, never values.
pub fn decode_action(datum: &[u8]) -> Result<CaseAction, DecodeError> {
    super::check_record_size(datum)?;
    limit_allocations();
    let mut reader = datum;
    let value =
        apache_avro::from_avro_datum(action_schema(), &mut reader, None).map_err(|e| generic_error(&e))?;
    if !reader.is_empty() {
        return Err(avro_err("trailing bytes after the datum"));
    }
    super::validate_action(action_from_value(value)?)
}

/// A decoded `CaseAction` record to the model. Errors name the field and the type, not the value.
fn action_from_value(value: Value) -> Result<CaseAction, DecodeError> {
    let mut f = fields(value, "CaseAction")?;
    let string = |f: &mut HashMap<String, Value>, name: &str| match f.remove(name) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(avro_err(format!("field {name}: expected string"))),
    };
    let opt_string = |f: &mut HashMap<String, Value>, name: &str| match f.remove(name).map(|v| match v {
        Value::Union(_, b) => *b,
        v => v,
    }) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(avro_err(format!("field {name}: expected string or null"))),
    };
    let action = match f.remove("action") {
        Some(Value::Enum(i, _)) => ActionKind::from_index(i as usize),
        _ => None,
    }
    .ok_or_else(|| avro_err("field action: expected an ActionKind symbol"))?;
    let channel = match f.remove("channel").map(|v| match v {
        Value::Union(_, b) => *b,
        v => v,
    }) {
        None | Some(Value::Null) => None,
        Some(Value::Enum(i, _)) => {
            Some(Channel::from_index(i as usize).ok_or_else(|| avro_err("field channel: unknown symbol"))?)
        }
        Some(_) => return Err(avro_err("field channel: expected a Channel symbol or null")),
    };
    let occurred_at = match f.remove("occurred_at") {
        Some(Value::TimestampMillis(t) | Value::Long(t)) => t,
        _ => return Err(avro_err("field occurred_at: expected timestamp-millis")),
    };
    Ok(CaseAction {
        action_id: string(&mut f, "action_id")?,
        case_id: string(&mut f, "case_id")?,
        customer_id: string(&mut f, "customer_id")?,
        action,
        actor: string(&mut f, "actor")?,
        occurred_at,
        resolution: opt_string(&mut f, "resolution")?,
        channel,
        note: opt_string(&mut f, "note")?,
    })
}

/// The model to a `CaseAction` record value (tests, tools, the demo).
pub fn action_to_value(a: &CaseAction) -> Value {
    let channel = match a.channel {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(c) => Value::Union(1, Box::new(enum_value(c.index(), c.as_str()))),
    };
    Value::Record(vec![
        ("action_id".into(), Value::String(a.action_id.clone())),
        ("case_id".into(), Value::String(a.case_id.clone())),
        ("customer_id".into(), Value::String(a.customer_id.clone())),
        ("action".into(), enum_value(a.action.index(), a.action.as_str())),
        ("actor".into(), Value::String(a.actor.clone())),
        ("occurred_at".into(), Value::TimestampMillis(a.occurred_at)),
        ("resolution".into(), opt_string(&a.resolution)),
        ("channel".into(), channel),
        ("note".into(), opt_string(&a.note)),
    ])
}

/// A case action as a bare Avro datum.
pub fn encode_action(a: &CaseAction) -> Vec<u8> {
    apache_avro::to_avro_datum(action_schema(), action_to_value(a))
        .expect("an action always matches its schema")
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
///
/// Decides per call how to read `writer`'s datums: free when `writer` is [`touchpoint_schema`]
/// itself, a deep schema comparison otherwise. Hot paths hold a [`WriterSchema`] instead.
pub fn decode_touchpoint(
    datum: &[u8],
    writer: &Schema,
    is_sensitive: &dyn Fn(&str) -> bool,
) -> Result<Touchpoint, DecodeError> {
    if std::ptr::eq(writer, touchpoint_schema()) {
        return WriterSchema::ours().decode(datum, is_sensitive);
    }
    let resolve = writer != touchpoint_schema();
    validate(read_touchpoint_value(datum, writer, resolve)?, is_sensitive)
}

/// A writer schema with the decision, taken once, of how its datums become touchpoints: the
/// hand-written [`read_touchpoint_datum`] when it writes exactly what we read, the generic
/// apache-avro path (resolving to our schema) otherwise.
#[derive(Debug, Clone)]
pub struct WriterSchema {
    schema: Schema,
    path: ReadPath,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadPath {
    /// Same parsing canonical form and logical types as ours: [`read_touchpoint_datum`].
    Fast,
    /// apache-avro `Value`s; `resolve` when the library's schema equality says the writer differs.
    Generic { resolve: bool },
}

static OUR_WRITER: LazyLock<WriterSchema> = LazyLock::new(|| WriterSchema::new(touchpoint_schema().clone()));

impl WriterSchema {
    /// Compares `schema` with ours (canonical form and logical types) once.
    pub fn new(schema: Schema) -> Self {
        let ours = touchpoint_schema();
        let path = if *FAST_DECODER_FITS
            && schema.canonical_form() == FAST_DECODER_PCF
            && same_logical_types(&schema, ours)
        {
            ReadPath::Fast
        } else {
            ReadPath::Generic {
                resolve: schema != *ours,
            }
        };
        Self { schema, path }
    }

    /// Our own schema, for bare `avro` input and Confluent ids accepted without a registry.
    pub fn ours() -> &'static WriterSchema {
        &OUR_WRITER
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Whether datums are read by the hand-written decoder.
    pub fn is_fast(&self) -> bool {
        self.path == ReadPath::Fast
    }

    /// One datum to a touchpoint, without validation.
    pub fn read(&self, datum: &[u8]) -> Result<Touchpoint, DecodeError> {
        match self.path {
            ReadPath::Fast => read_touchpoint_datum(datum),
            ReadPath::Generic { resolve } => read_touchpoint_value(datum, &self.schema, resolve),
        }
    }

    /// One datum to a validated touchpoint.
    pub fn decode(
        &self,
        datum: &[u8],
        is_sensitive: &dyn Fn(&str) -> bool,
    ) -> Result<Touchpoint, DecodeError> {
        validate(self.read(datum)?, is_sensitive)
    }
}

/// Largest single allocation apache-avro may make for one string, byte array or collection
/// while decoding: a crafted length prefix must become an error, not a 512 MiB allocation
/// (apache-avro's default). No touchpoint or alert comes near it.
pub const MAX_AVRO_ALLOCATION: usize = 16 << 20;

/// Caps apache-avro's allocations at [`MAX_AVRO_ALLOCATION`] (process-wide, first call wins).
pub fn limit_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
}

/// The generic path: apache-avro decodes `datum` with `writer` into a `Value` (resolved to our
/// schema when `resolve`), which becomes a touchpoint. No validation.
pub fn read_touchpoint_value(
    datum: &[u8],
    writer: &Schema,
    resolve: bool,
) -> Result<Touchpoint, DecodeError> {
    limit_allocations();
    let mut reader = datum;
    let value = apache_avro::from_avro_datum(writer, &mut reader, resolve.then(touchpoint_schema))
        .map_err(|e| generic_error(&e))?;
    if !reader.is_empty() {
        return Err(DecodeError::Avro(format!(
            "{} trailing bytes after the datum",
            reader.len()
        )));
    }
    touchpoint_from_value(value)
}

/// Parsing canonical form of the schema [`read_touchpoint_datum`] is written for. Should
/// `schemas/touchpoint.avsc` change shape, no writer matches it any more (every datum takes the
/// generic path) and the unit test `fast_decoder_fits_bundled_schema` fails until the decoder
/// is brought up to date.
const FAST_DECODER_PCF: &str = concat!(
    r#"{"name":"cx.sentinel.v1.Touchpoint","type":"record","fields":[{"name":"event_id","type":"string"},"#,
    r#"{"name":"customer_id","type":"string"},"#,
    r#"{"name":"occurred_at","type":{"type":"long"}},"#,
    r#"{"name":"channel","type":{"name":"cx.sentinel.v1.Channel","type":"enum","symbols":["WEB","MOBILE_APP","EMAIL","SMS","VOICE","CHAT","STORE","SOCIAL","OTHER"]}},"#,
    r#"{"name":"kind","type":{"name":"cx.sentinel.v1.TouchpointKind","type":"enum","symbols":["INTERACTION","ENGAGEMENT"]}},"#,
    r#"{"name":"direction","type":{"name":"cx.sentinel.v1.Direction","type":"enum","symbols":["INBOUND","OUTBOUND"]}},"#,
    r#"{"name":"journey","type":"string"},"#,
    r#"{"name":"touchpoint","type":"string"},"#,
    r#"{"name":"outcome","type":{"name":"cx.sentinel.v1.Outcome","type":"enum","symbols":["SUCCESS","FAILURE","ABANDONED","ESCALATED","PENDING","UNKNOWN"]}},"#,
    r#"{"name":"sentiment","type":["null","double"]},"#,
    r#"{"name":"customer_tier","type":["null","string"]},"#,
    r#"{"name":"agent_id","type":["null","string"]},"#,
    r#"{"name":"attributes","type":{"type":"map","values":"string"}}]}"#,
);

/// Our schema is the one the decoder is written for, and the model's enums list its symbols in
/// its order (the decoder maps enum indexes through `ALL`). Checked once.
static FAST_DECODER_FITS: LazyLock<bool> = LazyLock::new(|| {
    let ours = touchpoint_schema();
    ours.canonical_form() == FAST_DECODER_PCF
        && enum_symbols(ours, "channel") == Some(symbols(Channel::ALL, |s| s.as_str()))
        && enum_symbols(ours, "kind") == Some(symbols(TouchpointKind::ALL, |s| s.as_str()))
        && enum_symbols(ours, "direction") == Some(symbols(Direction::ALL, |s| s.as_str()))
        && enum_symbols(ours, "outcome") == Some(symbols(Outcome::ALL, |s| s.as_str()))
});

fn enum_symbols(record: &Schema, field: &str) -> Option<Vec<String>> {
    let Schema::Record(r) = record else { return None };
    match &r.fields.get(*r.lookup.get(field)?)?.schema {
        Schema::Enum(e) => Some(e.symbols.clone()),
        _ => None,
    }
}

fn symbols<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Vec<String> {
    all.iter().map(|&s| name(s).to_string()).collect()
}

/// Whether two schemata of the same canonical form also agree on logical types, which that form
/// strips: `timestamp-micros` is written like `timestamp-millis` but does not mean the same.
fn same_logical_types(a: &Schema, b: &Schema) -> bool {
    use apache_avro::schema::SchemaKind;
    if SchemaKind::from(a) != SchemaKind::from(b) {
        return false;
    }
    match (a, b) {
        (Schema::Record(a), Schema::Record(b)) => {
            a.fields.len() == b.fields.len()
                && a.fields
                    .iter()
                    .zip(&b.fields)
                    .all(|(f, g)| same_logical_types(&f.schema, &g.schema))
        }
        (Schema::Union(a), Schema::Union(b)) => {
            a.variants().len() == b.variants().len()
                && a.variants()
                    .iter()
                    .zip(b.variants())
                    .all(|(x, y)| same_logical_types(x, y))
        }
        (Schema::Map(a), Schema::Map(b)) => same_logical_types(&a.types, &b.types),
        (Schema::Array(a), Schema::Array(b)) => same_logical_types(&a.items, &b.items),
        _ => true,
    }
}

/// Reads one `Touchpoint` datum written with exactly our schema (see [`WriterSchema`]), straight
/// into the model: one allocation per string, no `Value`s. No validation.
///
/// Accepts and rejects the same datums as the generic path, with one difference in wording:
/// errors name the field and the byte offset. Every length is checked against the bytes left
/// before anything is allocated.
pub fn read_touchpoint_datum(datum: &[u8]) -> Result<Touchpoint, DecodeError> {
    let mut r = DatumReader {
        rest: datum,
        len: datum.len(),
    };
    // Fields are evaluated in the order written, which is the schema's.
    let tp = Touchpoint {
        event_id: r.string("event_id")?,
        customer_id: r.string("customer_id")?,
        occurred_at: r.long("occurred_at")?,
        channel: r.symbol("channel", Channel::ALL)?,
        kind: r.symbol("kind", TouchpointKind::ALL)?,
        direction: r.symbol("direction", Direction::ALL)?,
        journey: r.string("journey")?,
        touchpoint: r.string("touchpoint")?,
        outcome: r.symbol("outcome", Outcome::ALL)?,
        sentiment: match r.nullable("sentiment")? {
            true => Some(r.double("sentiment")?),
            false => None,
        },
        customer_tier: r.opt_string("customer_tier")?,
        agent_id: r.opt_string("agent_id")?,
        attributes: r.string_map("attributes")?,
    };
    if !r.rest.is_empty() {
        return Err(avro_err(format!(
            "{} trailing bytes after the datum",
            r.rest.len()
        )));
    }
    Ok(tp)
}

/// Longest varint a 64-bit long takes.
const MAX_VARINT_BYTES: usize = 10;

/// A cursor over one datum; `rest` only ever shrinks.
struct DatumReader<'a> {
    rest: &'a [u8],
    len: usize,
}

impl<'a> DatumReader<'a> {
    /// Where the cursor is in the datum.
    fn offset(&self) -> usize {
        self.len - self.rest.len()
    }

    /// A malformed value of `field` that starts at byte `at`.
    #[cold]
    #[inline(never)]
    fn error(field: &str, at: usize, problem: std::fmt::Arguments<'_>) -> DecodeError {
        DecodeError::Avro(format!("field `{field}` at byte {at}: {problem}"))
    }

    /// A zig-zag varint long. Like apache-avro (and the Java reader), bits beyond 64 in a tenth
    /// byte are dropped; an eleventh byte is an error.
    #[inline]
    fn long(&mut self, field: &str) -> Result<i64, DecodeError> {
        let mut n = 0u64;
        for (i, &byte) in self.rest.iter().take(MAX_VARINT_BYTES).enumerate() {
            n |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return Ok(((n >> 1) as i64) ^ -((n & 1) as i64));
            }
        }
        let at = self.offset();
        Err(if self.rest.len() < MAX_VARINT_BYTES {
            Self::error(
                field,
                at,
                format_args!("truncated: the datum ends inside a varint"),
            )
        } else {
            Self::error(
                field,
                at,
                format_args!("bad varint: longer than {MAX_VARINT_BYTES} bytes"),
            )
        })
    }

    /// A length-prefixed UTF-8 string, borrowed from the datum.
    #[inline]
    fn str(&mut self, field: &str) -> Result<&'a str, DecodeError> {
        let at = self.offset();
        let len = self.long(field)?;
        let Some(bytes) = usize::try_from(len).ok().and_then(|n| self.rest.get(..n)) else {
            return Err(if len < 0 {
                Self::error(field, at, format_args!("negative string length {len}"))
            } else {
                Self::error(
                    field,
                    at,
                    format_args!(
                        "string length {len} exceeds the {} bytes left (truncated or corrupt)",
                        self.rest.len()
                    ),
                )
            });
        };
        let s = std::str::from_utf8(bytes)
            .map_err(|e| Self::error(field, at, format_args!("invalid UTF-8 in string: {e}")))?;
        self.rest = &self.rest[bytes.len()..];
        Ok(s)
    }

    #[inline]
    fn string(&mut self, field: &str) -> Result<String, DecodeError> {
        self.str(field).map(str::to_owned)
    }

    /// An enum index into `symbols` (in schema order).
    #[inline]
    fn symbol<T: Copy>(&mut self, field: &str, symbols: &[T]) -> Result<T, DecodeError> {
        let at = self.offset();
        let index = self.long(field)?;
        match usize::try_from(index).ok().and_then(|i| symbols.get(i)) {
            Some(s) => Ok(*s),
            None => Err(Self::error(
                field,
                at,
                format_args!("bad enum index {index}: the enum has {} symbols", symbols.len()),
            )),
        }
    }

    /// The branch of a `["null", T]` union: `false` for null, `true` for `T`.
    #[inline]
    fn nullable(&mut self, field: &str) -> Result<bool, DecodeError> {
        let at = self.offset();
        match self.long(field)? {
            0 => Ok(false),
            1 => Ok(true),
            i => Err(Self::error(
                field,
                at,
                format_args!("bad union index {i}: the union has 2 branches"),
            )),
        }
    }

    #[inline]
    fn opt_string(&mut self, field: &str) -> Result<Option<String>, DecodeError> {
        Ok(match self.nullable(field)? {
            true => Some(self.string(field)?),
            false => None,
        })
    }

    /// A little-endian IEEE 754 double.
    #[inline]
    fn double(&mut self, field: &str) -> Result<f64, DecodeError> {
        let at = self.offset();
        match self.rest.split_first_chunk::<8>() {
            Some((bytes, rest)) => {
                self.rest = rest;
                Ok(f64::from_le_bytes(*bytes))
            }
            None => Err(Self::error(
                field,
                at,
                format_args!("truncated: a double takes 8 bytes, {} left", self.rest.len()),
            )),
        }
    }

    /// A map of strings: blocks of `count` entries up to a block of 0. A negative count is
    /// followed by the block's size in bytes, which (like apache-avro) we read and do not need.
    fn string_map(&mut self, field: &str) -> Result<BTreeMap<String, String>, DecodeError> {
        let mut map = BTreeMap::new();
        loop {
            let at = self.offset();
            let count = match self.long(field)? {
                0 => return Ok(map),
                n if n < 0 => {
                    self.long(field)?;
                    n.unsigned_abs()
                }
                n => n.unsigned_abs(),
            };
            // An entry is two strings, each at least its one-byte length.
            if count > (self.rest.len() / 2) as u64 {
                return Err(Self::error(
                    field,
                    at,
                    format_args!(
                        "map block of {count} entries cannot fit in the {} bytes left (truncated or corrupt)",
                        self.rest.len()
                    ),
                ));
            }
            for _ in 0..count {
                let key = self.string(field)?;
                let value = self.string(field)?;
                map.insert(key, value);
            }
        }
    }
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
        ("actor".into(), opt_string(&a.actor)),
        (
            "time_to_acknowledge_ms".into(),
            opt_long(a.time_to_acknowledge_ms),
        ),
        ("time_to_resolve_ms".into(), opt_long(a.time_to_resolve_ms)),
        ("resolution".into(), opt_string(&a.resolution)),
        ("queue".into(), Value::String(a.queue.clone())),
    ])
}

fn opt_long(v: Option<i64>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(n) => Value::Union(1, Box::new(Value::Long(n))),
    }
}

/// An alert as a bare Avro datum, appended to `out`.
pub fn encode_alert(a: &RecoveryAlert, out: &mut Vec<u8>) {
    let bytes = apache_avro::to_avro_datum(alert_schema(), alert_to_value(a))
        .expect("an alert always matches its schema");
    out.extend_from_slice(&bytes);
}

/// Reads an alert datum back (tests, tools, the demo's consumer).
pub fn decode_alert(datum: &[u8]) -> Result<RecoveryAlert, DecodeError> {
    limit_allocations();
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
        time_to_recover_ms: take_opt(&mut f, "time_to_recover_ms", long)?,
        attributes: take_map(&mut f, "attributes")?,
        actor: take_opt_string(&mut f, "actor")?,
        time_to_acknowledge_ms: take_opt(&mut f, "time_to_acknowledge_ms", long)?,
        time_to_resolve_ms: take_opt(&mut f, "time_to_resolve_ms", long)?,
        resolution: take_opt_string(&mut f, "resolution")?,
        queue: take_string(&mut f, "queue")?,
    })
}

fn long(v: Value) -> Option<i64> {
    match v {
        Value::Long(l) => Some(l),
        _ => None,
    }
}

/// Reads touchpoints from an Avro object container file, resolving its writer schema to ours.
/// Yields one result per record; a record that fails decoding or validation does not stop the rest.
pub fn read_container<R: std::io::Read>(
    input: R,
) -> Result<impl Iterator<Item = Result<Touchpoint, DecodeError>>, DecodeError> {
    limit_allocations();
    let reader =
        apache_avro::Reader::with_schema(touchpoint_schema(), input).map_err(|e| avro_err(e.to_string()))?;
    Ok(reader.map(|r| r.map_err(|e| generic_error(&e)).and_then(touchpoint_from_value)))
}

/// apache-avro's error as its kind alone: its messages print the `Value`s involved, which can be
/// a customer's (an attribute's text, an id).
fn generic_error(e: &apache_avro::Error) -> DecodeError {
    match e.details() {
        // Sizes, not data: worth keeping.
        apache_avro::error::Details::MemoryAllocation { desired, maximum } => DecodeError::Avro(format!(
            "a length of {desired} bytes is over the {maximum}-byte allocation cap"
        )),
        details => {
            let debug = format!("{details:?}");
            let kind: String = debug.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            DecodeError::Avro(format!(
                "the datum does not decode with its writer schema ({kind})"
            ))
        }
    }
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
            actor: Some("agent-7".into()),
            time_to_acknowledge_ms: Some(60_000),
            time_to_resolve_ms: None,
            resolution: None,
            queue: "payments-support".into(),
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

    /// Hand-built datums for the malformed cases.
    #[derive(Default)]
    struct Bytes(Vec<u8>);

    impl Bytes {
        fn long(mut self, n: i64) -> Self {
            let mut z = ((n << 1) ^ (n >> 63)) as u64;
            while z >= 0x80 {
                self.0.push((z as u8) | 0x80);
                z >>= 7;
            }
            self.0.push(z as u8);
            self
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn str(self, s: &str) -> Self {
            self.long(s.len() as i64).raw(s.as_bytes())
        }
        /// A valid datum of `sample()` up to, not including, `field`.
        fn valid_until(field: &str) -> Self {
            let mut b = Bytes::default();
            for (name, write) in [
                ("event_id", (|b: Bytes| b.str("e-1")) as fn(Bytes) -> Bytes),
                ("customer_id", |b| b.str("c-1")),
                ("occurred_at", |b| b.long(1_772_359_200_000)),
                ("channel", |b| b.long(1)),
                ("kind", |b| b.long(0)),
                ("direction", |b| b.long(0)),
                ("journey", |b| b.str("billing")),
                ("touchpoint", |b| b.str("payment.transfer")),
                ("outcome", |b| b.long(1)),
                ("sentiment", |b| b.long(1).raw(&(-0.75f64).to_le_bytes())),
                ("customer_tier", |b| b.long(1).str("vip")),
                ("agent_id", |b| b.long(0)),
                ("attributes", |b| b.long(1).str("order").str("42").long(0)),
            ] {
                if name == field {
                    return b;
                }
                b = write(b);
            }
            b
        }
    }

    /// Both paths reject `datum`; returns the fast path's message.
    fn both_reject(datum: &[u8]) -> String {
        let generic = read_touchpoint_value(datum, touchpoint_schema(), false);
        assert!(
            generic.is_err(),
            "the generic path accepts {datum:?}: {generic:?}"
        );
        match read_touchpoint_datum(datum) {
            Err(DecodeError::Avro(m)) => m,
            other => panic!("fast path on {datum:?}: expected an Avro error, got {other:?}"),
        }
    }

    fn assert_rejects(datum: &[u8], expected: &[&str]) {
        let message = both_reject(datum);
        for e in expected {
            assert!(message.contains(e), "{message:?} does not mention {e:?}");
        }
    }

    #[test]
    fn generic_path_refuses_huge_length_prefixes_before_allocating() {
        // event_id claims 100 MiB: an error naming the cap, not a 100 MiB allocation.
        let datum = Bytes::default().long(100 << 20).raw(b"abc").0;
        match read_touchpoint_value(&datum, touchpoint_schema(), false) {
            Err(DecodeError::Avro(m)) => assert!(m.contains(&MAX_AVRO_ALLOCATION.to_string()), "{m}"),
            other => panic!("expected an allocation error, got {other:?}"),
        }
    }

    #[test]
    fn fast_decoder_fits_bundled_schema() {
        assert_eq!(touchpoint_schema().canonical_form(), FAST_DECODER_PCF);
        assert!(
            *FAST_DECODER_FITS,
            "the model's enums list the schema's symbols in order"
        );
        assert!(WriterSchema::ours().is_fast());
        let whole = Bytes::valid_until("end").0;
        assert_eq!(
            whole,
            encode_touchpoint(&sample()),
            "the test builder writes what apache-avro writes"
        );
        assert_eq!(read_touchpoint_datum(&whole).unwrap(), sample());
    }

    #[test]
    fn fast_path_is_chosen_once_per_writer_schema() {
        // Same canonical form (docs, defaults and layout differ): fast.
        let mut json: serde_json::Value = serde_json::from_str(TOUCHPOINT_SCHEMA_TEXT).unwrap();
        json["doc"] = "reworded".into();
        json["fields"][9]["doc"] = "no doc".into();
        json["fields"][3]["type"]["default"] = "WEB".into();
        let reworded = WriterSchema::new(Schema::parse_str(&json.to_string()).unwrap());
        assert!(reworded.is_fast());
        assert_eq!(
            reworded
                .decode(&encode_touchpoint(&sample()), &|_| false)
                .unwrap(),
            sample()
        );

        // Same canonical form, other logical type: generic (which rejects it, as before).
        let mut micros = json.clone();
        micros["fields"][2]["type"]["logicalType"] = "timestamp-micros".into();
        let micros = WriterSchema::new(Schema::parse_str(&micros.to_string()).unwrap());
        assert_eq!(micros.schema().canonical_form(), FAST_DECODER_PCF);
        assert!(!micros.is_fast());
        assert!(micros.read(&encode_touchpoint(&sample())).is_err());

        // A renamed field, an appended enum symbol: generic.
        let mut renamed = json.clone();
        renamed["fields"][7]["name"] = "touch_point".into();
        assert!(!WriterSchema::new(Schema::parse_str(&renamed.to_string()).unwrap()).is_fast());
        let mut appended = json.clone();
        appended["fields"][3]["type"]["symbols"]
            .as_array_mut()
            .unwrap()
            .push("FAX".into());
        let appended = WriterSchema::new(Schema::parse_str(&appended.to_string()).unwrap());
        assert!(!appended.is_fast());
        assert_eq!(
            appended
                .decode(&encode_touchpoint(&sample()), &|_| false)
                .unwrap(),
            sample()
        );
    }

    #[test]
    fn every_truncation_is_rejected() {
        let whole = encode_touchpoint(&sample());
        for end in 0..whole.len() {
            let message = both_reject(&whole[..end]);
            assert!(message.contains("truncated"), "prefix of {end}: {message:?}");
        }
        assert_eq!(
            both_reject(&whole[..10]),
            "field `occurred_at` at byte 8: truncated: the datum ends inside a varint"
        );
    }

    #[test]
    fn malformed_datums_are_rejected_with_a_reason() {
        let b = Bytes::valid_until;
        assert_rejects(
            &b("occurred_at").raw(&[0xff; 11]).0,
            &["field `occurred_at`", "bad varint"],
        );
        assert_rejects(
            &b("sentiment").long(2).0,
            &["field `sentiment`", "bad union index 2"],
        );
        assert_rejects(
            &b("agent_id").long(-1).0,
            &["field `agent_id`", "bad union index -1"],
        );
        assert_rejects(
            &b("channel").long(9).0,
            &["field `channel`", "bad enum index 9", "9 symbols"],
        );
        assert_rejects(&b("kind").long(-1).0, &["field `kind`", "bad enum index -1"]);
        assert_rejects(
            &b("outcome").long(1 << 40).0,
            &["field `outcome`", "bad enum index"],
        );
        assert_rejects(
            &b("event_id").long(2).raw(&[0xc3, 0x28]).0,
            &["field `event_id`", "invalid UTF-8"],
        );
        assert_rejects(
            &b("attributes").long(1).long(1).raw(&[0xff]).str("v").long(0).0,
            &["field `attributes`", "invalid UTF-8"],
        );
        assert_rejects(
            &b("journey").long(-1).0,
            &["field `journey`", "negative string length -1"],
        );
        assert_rejects(
            &b("journey").long(i64::MAX).raw(&[b'x'; 64]).0,
            &[
                "field `journey`",
                "string length 9223372036854775807 exceeds the 64 bytes left",
            ],
        );
        assert_rejects(
            &b("attributes").long(1 << 40).str("k").str("v").long(0).0,
            &["cannot fit"],
        );
        assert_rejects(
            &b("attributes").long(i64::MIN).long(4).str("k").str("v").long(0).0,
            &["cannot fit"],
        );
        assert_rejects(
            &b("sentiment").long(1).raw(&[0; 7]).0,
            &["a double takes 8 bytes, 7 left"],
        );
        let mut trailing = encode_touchpoint(&sample());
        trailing.push(0);
        assert_eq!(both_reject(&trailing), "1 trailing bytes after the datum");
        assert_eq!(
            both_reject(&b("channel").long(9).0),
            "field `channel` at byte 14: bad enum index 9: the enum has 9 symbols"
        );
    }

    #[test]
    fn map_blocks_negative_counts_and_duplicates_read_like_apache_avro() {
        let attributes = |b: Bytes| {
            b.long(-2)
                .long(7)
                .str("b")
                .str("1")
                .str("a")
                .str("1")
                .long(1)
                .str("b")
                .str("2")
                .long(0)
        };
        let datum = attributes(Bytes::valid_until("attributes")).0;
        let fast = read_touchpoint_datum(&datum).unwrap();
        assert_eq!(
            fast.attributes,
            BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])
        );
        assert_eq!(
            fast,
            read_touchpoint_value(&datum, touchpoint_schema(), false).unwrap()
        );
        // The optional fields' null branches too.
        let datum = Bytes::valid_until("sentiment").long(0).long(0).long(0).long(0).0;
        let fast = read_touchpoint_datum(&datum).unwrap();
        assert_eq!(
            (fast.sentiment, &fast.customer_tier, &fast.agent_id),
            (None, &None, &None)
        );
        assert_eq!(
            fast,
            read_touchpoint_value(&datum, touchpoint_schema(), false).unwrap()
        );
    }
}
