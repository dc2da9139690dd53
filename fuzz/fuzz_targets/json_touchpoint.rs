//! Fuzz target: JSON touchpoints as the service decodes them (size bound, parse, validation,
//! sensitive attributes dropped), with what must hold of every result.
#![no_main]

use cx_sentinel::codec::avro::{WriterSchema, encode_touchpoint};
use cx_sentinel::codec::{DecodeError, Format, json, validate};
use cx_sentinel::config::Config;
use cx_sentinel::service::codecs::{InputDecoder, InputError};
use cx_sentinel_fuzz::{is_sensitive, unquoted_rest};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

thread_local! {
    static DECODER: RefCell<InputDecoder> = RefCell::new({
        let mut config = Config::default();
        config.input.format = Format::Json;
        InputDecoder::new(&config).expect("no registry to reach")
    });
}

fuzz_target!(|data: &[u8]| {
    let decoded = DECODER.with(|d| d.borrow_mut().decode(data, &is_sensitive));
    let tp = match decoded {
        Ok(tp) => tp,
        Err(InputError::Data(e)) => {
            // serde quotes what it read in backticks or double quotes; `…` must replace it all.
            if let DecodeError::Json(m) = &e {
                let rest = unquoted_rest(m);
                assert!(!rest.contains(['"', '`']), "a JSON error quotes the input: {m}");
            }
            return;
        }
        Err(e) => panic!("JSON input never needs the registry: {e}"),
    };
    assert!(
        !tp.attributes.keys().any(|k| is_sensitive(k)),
        "a sensitive attribute survived decoding"
    );
    // Validation is idempotent: what passed it passes it again unchanged.
    assert_eq!(validate(tp.clone(), &is_sensitive).as_ref(), Ok(&tp));
    // The same touchpoint written as JSON again, and as Avro, reads back equal.
    let again = serde_json::to_vec(&tp).expect("a touchpoint serializes");
    assert_eq!(json::decode_touchpoint(&again, &is_sensitive).as_ref(), Ok(&tp));
    let datum = encode_touchpoint(&tp);
    assert_eq!(
        WriterSchema::ours().decode(&datum, &is_sensitive).as_ref(),
        Ok(&tp)
    );
});
