//! Fuzz target: case actions as the service decodes them (JSON or Avro datum: the first byte
//! chooses) and applies them to a customer who has an open case, with what must hold of every
//! result: no error quotes the input, the note is kept nowhere, every push ends in exactly one
//! outcome for its record, and the same action again publishes nothing.
#![no_main]

use cx_sentinel::codec::{DecodeError, Format, avro, json};
use cx_sentinel::config::Config;
use cx_sentinel::engine::{ARRIVAL_UNCHECKED, Effect, Engine, Stream};
use cx_sentinel::service::codecs::{InputDecoder, InputError};
use cx_sentinel_fuzz::unquoted_rest;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, LazyLock};

fn decoder(format: Format) -> InputDecoder {
    let mut config = Config::default();
    config.input.format = format;
    InputDecoder::new(&config).expect("no registry to reach")
}

static JSON: LazyLock<InputDecoder> = LazyLock::new(|| decoder(Format::Json));
static AVRO: LazyLock<InputDecoder> = LazyLock::new(|| decoder(Format::Avro));

/// The outcomes a push left for `seq` (applied, duplicate or rejected).
fn outcomes(out: &[Effect], seq: u64) -> usize {
    out.iter()
        .filter(|e| {
            matches!(e, Effect::Applied { seq: s, .. } | Effect::Duplicate { seq: s } | Effect::Rejected { seq: s, .. } if *s == seq)
        })
        .count()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let decoded = if pick & 1 == 0 {
        JSON.decode_action(payload)
    } else {
        AVRO.decode_action(payload)
    };
    let mut action = match decoded {
        Ok(a) => a,
        Err(InputError::Data(e)) => {
            if let DecodeError::Json(m) = &e {
                let rest = unquoted_rest(m);
                assert!(!rest.contains(['"', '`']), "a JSON error quotes the input: {m}");
            }
            return;
        }
        Err(e) => panic!("actions never need the registry here: {e}"),
    };
    assert!(action.note.is_none(), "the note is stored nowhere");
    assert_eq!(
        avro::decode_action(&avro::encode_action(&action)).as_ref(),
        Ok(&action),
        "an action reads back from its Avro datum"
    );

    // The action's customer fails a payment a minute before it: one open case.
    let engine = Arc::new(Engine::new(Config::default()));
    let mut stream = Stream::new(engine);
    let mut out = Vec::new();
    let failure = serde_json::json!({
        "event_id": "f1", "customer_id": action.customer_id,
        "occurred_at": action.occurred_at.saturating_sub(60_000), "channel": "WEB",
        "kind": "INTERACTION", "direction": "INBOUND", "journey": "payments",
        "touchpoint": "payment.transfer", "outcome": "FAILURE"
    });
    if let Ok(tp) = json::decode_touchpoint(failure.to_string().as_bytes(), &|_| false) {
        stream.push(tp, 0, ARRIVAL_UNCHECKED, 0, &mut out);
    }
    // Half the time aimed at that case, to reach the lifecycle rather than `unknown_case`.
    let opened = out.iter().find_map(|e| match e {
        Effect::Alert { alert, .. } => Some(alert.case_id.clone()),
        _ => None,
    });
    if let (true, Some(case)) = (pick & 2 == 0, opened) {
        action.case_id = case;
    }
    out.clear();
    stream.push_action(action.clone(), 1, ARRIVAL_UNCHECKED, 0, &mut out);
    assert_eq!(outcomes(&out, 1), 1, "one outcome per action: {out:?}");
    out.clear();
    stream.push_action(action, 2, ARRIVAL_UNCHECKED, 0, &mut out);
    assert_eq!(outcomes(&out, 2), 1, "one outcome per action: {out:?}");
    assert!(
        !out.iter().any(|e| matches!(e, Effect::Alert { .. })),
        "the same action again publishes nothing: {out:?}"
    );
});
