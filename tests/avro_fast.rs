//! The hand-written touchpoint decoder ([`avro::read_touchpoint_datum`]) against apache-avro's
//! generic `Value` path, which it replaces whenever the writer schema is ours:
//!
//! - whatever apache-avro encodes, both read back the same touchpoint, then validate the same;
//! - map blocks split any way (negative counts with byte sizes included) read the same;
//! - mutated datums never panic, and the fast path rejects exactly what the generic path rejects
//!   (reading the same touchpoint when both accept);
//! - every truncation is rejected by both.
//!
//! Doubles are compared by bits, so NaN sentiments compare too.

use apache_avro::Schema;
use apache_avro::types::Value;
use cx_sentinel::codec::avro::{self, WriterSchema};
use cx_sentinel::codec::{DecodeError, validate};
use cx_sentinel::model::{Channel, Direction, Outcome, Touchpoint, TouchpointKind};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// The generic path as it runs for our own schema (no resolution).
fn generic(datum: &[u8]) -> Result<Touchpoint, DecodeError> {
    // apache-avro reserves a map's claimed entry count before reading it; keep mutated counts
    // from asking for gigabytes. Only lengths no datum here can hold are affected.
    apache_avro::util::max_allocation_bytes(1 << 16);
    avro::read_touchpoint_value(datum, avro::touchpoint_schema(), false)
}

fn fast(datum: &[u8]) -> Result<Touchpoint, DecodeError> {
    avro::read_touchpoint_datum(datum)
}

/// Equality with the sentiment compared by bits.
fn same(a: &Touchpoint, b: &Touchpoint) -> bool {
    let bits = |t: &Touchpoint| t.sentiment.map(f64::to_bits);
    bits(a) == bits(b)
        && Touchpoint {
            sentiment: None,
            ..a.clone()
        } == Touchpoint {
            sentiment: None,
            ..b.clone()
        }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9._-]{0,12}",
        1 => any::<String>(),
        1 => prop::collection::vec(any::<char>(), 100..300).prop_map(|c| c.into_iter().collect()),
    ]
}

fn touchpoint() -> impl Strategy<Value = Touchpoint> {
    touchpoint_of(text().boxed())
}

/// Short strings, so structure (lengths, indexes, block counts) is most of the bytes.
fn small_touchpoint() -> impl Strategy<Value = Touchpoint> {
    touchpoint_of("[a-z]{0,3}".boxed())
}

fn touchpoint_of(text: BoxedStrategy<String>) -> impl Strategy<Value = Touchpoint> {
    let opt = || prop::option::of(text.clone());
    (
        (text.clone(), text.clone(), any::<i64>()),
        (
            prop::sample::select(Channel::ALL),
            prop::sample::select(TouchpointKind::ALL),
            prop::sample::select(Direction::ALL),
            prop::sample::select(Outcome::ALL),
        ),
        (text.clone(), text.clone()),
        prop::option::of(prop_oneof![any::<f64>(), -1.0..=1.0f64]),
        (opt(), opt()),
        prop::collection::btree_map(text.clone(), text, 0..6),
    )
        .prop_map(
            |(
                (event_id, customer_id, occurred_at),
                (channel, kind, direction, outcome),
                (journey, touchpoint),
                sentiment,
                (customer_tier, agent_id),
                attributes,
            )| Touchpoint {
                event_id,
                customer_id,
                occurred_at,
                channel,
                kind,
                direction,
                journey,
                touchpoint,
                outcome,
                sentiment,
                customer_tier,
                agent_id,
                attributes,
            },
        )
}

/// An encoder written apart from apache-avro's, to put map entries in blocks of any size and
/// sign (`blocks[i] < 0`: a block of `-blocks[i]` entries preceded by its size in bytes).
struct Encoder(Vec<u8>);

impl Encoder {
    fn long(&mut self, n: i64) {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        while z >= 0x80 {
            self.0.push(z as u8 | 0x80);
            z >>= 7;
        }
        self.0.push(z as u8);
    }

    fn str(&mut self, s: &str) {
        self.long(s.len() as i64);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn opt_str(&mut self, s: &Option<String>) {
        match s {
            None => self.long(0),
            Some(s) => {
                self.long(1);
                self.str(s);
            }
        }
    }

    fn touchpoint(t: &Touchpoint, blocks: &[i64]) -> Vec<u8> {
        let mut e = Encoder(Vec::new());
        e.str(&t.event_id);
        e.str(&t.customer_id);
        e.long(t.occurred_at);
        e.long(t.channel.index() as i64);
        e.long(t.kind.index() as i64);
        e.long(t.direction.index() as i64);
        e.str(&t.journey);
        e.str(&t.touchpoint);
        e.long(t.outcome.index() as i64);
        match t.sentiment {
            None => e.long(0),
            Some(s) => {
                e.long(1);
                e.0.extend_from_slice(&s.to_le_bytes());
            }
        }
        e.opt_str(&t.customer_tier);
        e.opt_str(&t.agent_id);
        let mut entries = t.attributes.iter().peekable();
        let mut blocks = blocks.iter().cycle();
        while entries.peek().is_some() {
            let want = *blocks.next().expect("blocks is not empty");
            let block: Vec<_> = entries.by_ref().take(want.unsigned_abs() as usize).collect();
            let mut body = Encoder(Vec::new());
            for (k, v) in &block {
                body.str(k);
                body.str(v);
            }
            if want < 0 {
                e.long(-(block.len() as i64));
                e.long(body.0.len() as i64);
            } else {
                e.long(block.len() as i64);
            }
            e.0.extend_from_slice(&body.0);
        }
        e.long(0);
        e.0
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), prop_oneof![any::<u8>(), 0..8u8, 0x7c..0x84u8])
            .prop_map(|(i, b)| Mutation::Set(i, b)),
        3 => (any::<usize>(), 0..8u8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(datum: &mut Vec<u8>, m: &Mutation) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    let len = datum.len();
    match *m {
        Mutation::Set(i, b) if len > 0 => datum[at(i, len)] = b,
        Mutation::Flip(i, bit) if len > 0 => datum[at(i, len)] ^= 1 << bit,
        Mutation::Insert(i, b) => datum.insert(at(i, len + 1), b),
        Mutation::Remove(i) if len > 0 => {
            datum.remove(at(i, len));
        }
        Mutation::Truncate(i) => datum.truncate(at(i, len + 1)),
        _ => {}
    }
}

fn sensitive(k: &str) -> bool {
    k.starts_with('s')
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// What apache-avro writes, both paths read back as written; validation then agrees too.
    #[test]
    fn fast_path_reads_what_apache_avro_writes(t in touchpoint()) {
        let datum = avro::encode_touchpoint(&t);
        let f = fast(&datum).expect("the fast path reads a valid datum");
        let g = generic(&datum).expect("the generic path reads a valid datum");
        prop_assert!(same(&f, &t), "fast {f:?} != written {t:?}");
        prop_assert!(same(&g, &t), "generic {g:?} != written {t:?}");
        // The service's entry point, with validation, against the old per-record path.
        let old = validate(g, &sensitive);
        let new = WriterSchema::ours().decode(&datum, &sensitive);
        prop_assert_eq!(&new, &old);
        prop_assert_eq!(avro::decode_touchpoint(&datum, avro::touchpoint_schema(), &sensitive), old);
    }

    /// Map entries in blocks of any size and sign read the same through both paths.
    #[test]
    fn map_blocks_of_any_size_and_sign(
        t in touchpoint(),
        blocks in prop::collection::vec(prop_oneof![1i64..4, -3i64..0], 1..6),
    ) {
        let datum = Encoder::touchpoint(&t, &blocks);
        // apache-avro writes entries in hash order, so bytes compare only up to one entry.
        if t.attributes.len() <= 1 && blocks[0] > 0 {
            prop_assert_eq!(&datum, &avro::encode_touchpoint(&t), "the test encoder writes what apache-avro writes");
        }
        let f = fast(&datum).expect("the fast path reads it");
        let g = generic(&datum).expect("the generic path reads it");
        prop_assert!(same(&f, &t), "fast {f:?} != written {t:?}");
        prop_assert!(same(&g, &t), "generic {g:?} != written {t:?}");
    }

    /// Corrupted datums never panic the fast path, which rejects exactly what the generic path
    /// rejects and otherwise reads what it reads.
    #[test]
    fn mutated_datums_are_rejected_like_the_generic_path(
        t in prop_oneof![3 => small_touchpoint(), 1 => touchpoint()],
        blocks in prop::collection::vec(prop_oneof![1i64..4, -3i64..0], 1..4),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut datum = Encoder::touchpoint(&t, &blocks);
        for m in &mutations {
            mutate(&mut datum, m);
        }
        let f = fast(&datum);
        let g = generic(&datum);
        match (&f, &g) {
            (Ok(f), Ok(g)) => prop_assert!(same(f, g), "fast {f:?} != generic {g:?}"),
            (Err(DecodeError::Avro(_)), Err(_)) => {}
            _ => prop_assert!(false, "{datum:?}: fast {f:?}, generic {g:?}"),
        }
    }

}

proptest! {
    // Each case decodes every prefix of its datum twice.
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every proper prefix of a valid datum is rejected by both paths.
    #[test]
    fn truncations_are_rejected_by_both(t in touchpoint()) {
        let datum = avro::encode_touchpoint(&t);
        for end in 0..datum.len() {
            let f = fast(&datum[..end]);
            prop_assert!(generic(&datum[..end]).is_err(), "generic accepts a prefix of {end}");
            prop_assert!(matches!(f, Err(DecodeError::Avro(_))), "prefix of {end}: {f:?}");
        }
    }
}

/// A newer writer (a field appended, with a default) is not ours: its datums take the resolving
/// path, which skips the new field.
#[test]
fn a_newer_writer_schema_takes_the_resolving_path() {
    let mut json: serde_json::Value = serde_json::from_str(avro::TOUCHPOINT_SCHEMA_TEXT).unwrap();
    json["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "region", "type": "string", "default": "eu"}));
    let newer = WriterSchema::new(Schema::parse_str(&json.to_string()).unwrap());
    assert!(!newer.is_fast());

    let t = Touchpoint {
        event_id: "e-1".into(),
        customer_id: "c-1".into(),
        occurred_at: 1_772_359_200_000,
        channel: Channel::Voice,
        kind: TouchpointKind::Interaction,
        direction: Direction::Inbound,
        journey: "billing".into(),
        touchpoint: "payment.transfer".into(),
        outcome: Outcome::Failure,
        sentiment: Some(-0.5),
        customer_tier: None,
        agent_id: Some("a-7".into()),
        attributes: BTreeMap::from([("ssn".into(), "x".into()), ("order".into(), "42".into())]),
    };
    let Value::Record(mut fields) = avro::touchpoint_to_value(&t) else {
        unreachable!()
    };
    fields.push(("region".into(), Value::String("us".into())));
    let datum = apache_avro::to_avro_datum(newer.schema(), Value::Record(fields)).unwrap();
    assert!(
        fast(&datum).is_err(),
        "our layout does not fit a newer writer's datum"
    );
    let mut expected = t.clone();
    expected.attributes.remove("ssn");
    assert_eq!(newer.decode(&datum, &sensitive).unwrap(), expected);
}
