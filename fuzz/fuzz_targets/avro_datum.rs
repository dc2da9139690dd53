//! Fuzz target: bare Avro touchpoint datums. The hand-written fast decoder against apache-avro's
//! generic reader (they must accept and reject the same datums, and agree on what they read),
//! validation, the re-encoding round trip, and the resolving path with an older writer schema.
#![no_main]

use cx_sentinel::codec::avro::{
    WriterSchema, encode_touchpoint, read_touchpoint_datum, read_touchpoint_value, touchpoint_schema,
};
use cx_sentinel::codec::validate;
use cx_sentinel_fuzz::{is_sensitive, masked, older_writer, same_touchpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fast = read_touchpoint_datum(data);
    let generic = read_touchpoint_value(data, touchpoint_schema(), false);
    match (&fast, &generic) {
        (Ok(a), Ok(b)) => assert!(same_touchpoint(a, b), "{a:?} / {b:?}"),
        (Err(_), Err(_)) => {}
        _ => panic!("the fast and the generic decoder disagree: {fast:?} / {generic:?}"),
    }
    match WriterSchema::ours().decode(data, &is_sensitive) {
        Ok(tp) => {
            assert!(
                !tp.attributes.keys().any(|k| is_sensitive(k)),
                "a sensitive attribute survived decoding"
            );
            let datum = encode_touchpoint(&tp);
            assert_eq!(
                WriterSchema::ours().decode(&datum, &is_sensitive).as_ref(),
                Ok(&tp)
            );
        }
        Err(e) => {
            // A datum that reads but fails validation: the error must not depend on any text
            // the touchpoint holds, so with that text masked it reads the same.
            if let Ok(raw) = fast {
                let masked = validate(masked(&raw), &is_sensitive).map_err(|e| e.to_string());
                assert_eq!(masked, Err(e.to_string()), "the error quotes the datum's text");
            }
        }
    }
    if let Ok(tp) = older_writer().decode(data, &is_sensitive) {
        assert_eq!(tp.agent_id, None, "the older writer has no agent_id");
        assert!(tp.attributes.is_empty(), "the older writer has no attributes");
    }
});
