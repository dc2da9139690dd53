//! Fuzz target: changelog values as a restore applies them to a customer's state, then the state
//! used as the service uses it (its view, as alerts and the HTTP endpoint build it) and written
//! back, which a second engine must read to the same bytes.
#![no_main]

use cx_sentinel::config::Config;
use cx_sentinel::engine::Engine;
use cx_sentinel::engine::snapshot::{VERSION, input_offset};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// Restored into again and again: each value lands on the state the last one left, the in-place
/// path a restore takes for a customer's later records.
static HELD: LazyLock<Engine> = LazyLock::new(|| Engine::new(Config::default()));

fuzz_target!(|data: &[u8]| {
    let offset = input_offset(data);
    match data {
        // Version 2 values (still restored) carry the offset where version 3 does.
        [2 | VERSION, rest @ ..] if rest.len() >= 8 => {
            assert_eq!(offset, Some(i64::from_le_bytes(rest[..8].try_into().unwrap())));
        }
        _ => assert_eq!(offset, None),
    }
    let mut before = Vec::new();
    HELD.snapshot("c", 0, &mut before);
    if HELD.restore("c", Some(data)).is_err() {
        let mut after = Vec::new();
        HELD.snapshot("c", 0, &mut after);
        assert_eq!(after, before, "an unreadable value changed the held state");
        return;
    }
    let view = HELD.customer("c").expect("a restored customer is held");
    let _ = serde_json::to_vec(&view).expect("a view serializes");
    let mut written = Vec::new();
    assert!(HELD.snapshot("c", offset.unwrap_or(-1), &mut written));
    // A fresh engine (no interned names, no held state) reads what was written to the same state.
    let fresh = Engine::new(Config::default());
    fresh
        .restore("c", Some(&written))
        .expect("a written state reads back");
    let mut again = Vec::new();
    assert!(fresh.snapshot("c", offset.unwrap_or(-1), &mut again));
    assert_eq!(again, written, "a restored state writes back byte-identical");
});
