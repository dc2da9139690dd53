//! What the fuzz targets share: the service's sensitive-attribute rule, an older writer schema
//! for the resolving path, and the checks that an error message quotes nothing from the input.

use apache_avro::Schema;
use cx_sentinel::codec::avro::{self, WriterSchema};
use cx_sentinel::config::Config;
use cx_sentinel::engine::rules::Rules;
use cx_sentinel::model::Touchpoint;
use std::sync::LazyLock;

static RULES: LazyLock<Rules> = LazyLock::new(|| Rules::new(Config::default()));

/// The shipped default (`health.*`, `ssn`, `card_number`), matched as the service matches it.
pub fn is_sensitive(key: &str) -> bool {
    RULES.is_sensitive(key)
}

static OLDER_WRITER: LazyLock<WriterSchema> = LazyLock::new(|| {
    let mut json: serde_json::Value =
        serde_json::from_str(avro::TOUCHPOINT_SCHEMA_TEXT).expect("the bundled schema is JSON");
    json["fields"]
        .as_array_mut()
        .expect("a record has fields")
        .retain(|f| f["name"] != "agent_id" && f["name"] != "attributes");
    let schema = Schema::parse_str(&json.to_string()).expect("two fields less still parses");
    WriterSchema::new(schema)
});

/// Our schema before `agent_id` and `attributes` (as `examples/fuzz_seeds.rs` writes it): its
/// datums take the resolving path, and read back without those two fields.
pub fn older_writer() -> &'static WriterSchema {
    let w = &*OLDER_WRITER;
    assert!(!w.is_fast(), "an older writer must take the resolving path");
    w
}

/// `t` with every id, tier, agent id and attribute value's text replaced by `x`s of the same
/// byte length, whitespace kept: what validation checks (lengths, emptiness) is unchanged, so an
/// error that names no value reads exactly the same for both.
pub fn masked(t: &Touchpoint) -> Touchpoint {
    let mask = |s: &String| -> String {
        s.chars()
            .flat_map(|c| {
                let (keep, n) = (c.is_whitespace(), c.len_utf8());
                std::iter::repeat_n(if keep { c } else { 'x' }, if keep { 1 } else { n })
            })
            .collect()
    };
    Touchpoint {
        event_id: mask(&t.event_id),
        customer_id: mask(&t.customer_id),
        journey: mask(&t.journey),
        touchpoint: mask(&t.touchpoint),
        customer_tier: t.customer_tier.as_ref().map(mask),
        agent_id: t.agent_id.as_ref().map(mask),
        attributes: t.attributes.iter().map(|(k, v)| (k.clone(), mask(v))).collect(),
        ..t.clone()
    }
}

/// What is left of a JSON decode error once the quotes `without_values` leaves are taken out
/// (`"…"`, `` `…` ``, a field name in backticks): it must hold no quote character, or a quote
/// was mis-parsed and text after it got out.
pub fn unquoted_rest(message: &str) -> String {
    let mut rest = message.replace("\"…\"", "").replace("`…`", "");
    for field in FIELD_NAMES {
        rest = rest.replace(&format!("`{field}`"), "");
    }
    rest
}

/// The touchpoint's and the case action's JSON field names: an error may name these (`missing
/// field \`journey\``).
const FIELD_NAMES: [&str; 19] = [
    "event_id",
    "customer_id",
    "occurred_at",
    "channel",
    "kind",
    "direction",
    "journey",
    "touchpoint",
    "outcome",
    "sentiment",
    "customer_tier",
    "agent_id",
    "attributes",
    "action_id",
    "case_id",
    "action",
    "actor",
    "resolution",
    "note",
];

/// Whether two decoded touchpoints are the same, a NaN sentiment equal to itself (unvalidated
/// datums can carry one). Compared as values: the encoder writes a map's entries in no fixed
/// order, so equal touchpoints need not encode to equal bytes.
pub fn same_touchpoint(a: &Touchpoint, b: &Touchpoint) -> bool {
    let bits = |t: &Touchpoint| t.sentiment.map(f64::to_bits);
    let without = |t: &Touchpoint| Touchpoint {
        sentiment: None,
        ..t.clone()
    };
    bits(a) == bits(b) && without(a) == without(b)
}
