//! Fuzz target: Confluent-framed Avro as the service decodes it without a registry, then the
//! framing and the datum on their own: even schema ids read with our schema (the fast decoder),
//! odd ones with an older writer (the resolving path), as a registry could answer.
#![no_main]

use cx_sentinel::codec::avro::{CONFLUENT_MAGIC, WriterSchema, confluent_frame, confluent_unframe};
use cx_sentinel::codec::{Format, check_record_size};
use cx_sentinel::config::Config;
use cx_sentinel::service::codecs::{InputDecoder, InputError};
use cx_sentinel_fuzz::{is_sensitive, older_writer};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

thread_local! {
    static DECODER: RefCell<InputDecoder> = RefCell::new({
        let mut config = Config::default();
        config.input.format = Format::ConfluentAvro;
        InputDecoder::new(&config).expect("no registry to reach")
    });
}

fuzz_target!(|data: &[u8]| {
    let service = DECODER.with(|d| d.borrow_mut().decode(data, &is_sensitive));
    if let Err(e @ (InputError::Retry(_) | InputError::Unresolved(_) | InputError::Fatal(_))) = &service {
        panic!("without a registry nothing is looked up: {e}");
    }
    let unframed = confluent_unframe(data);
    match (data, &unframed) {
        ([CONFLUENT_MAGIC, _, _, _, _, ..], Ok((id, datum))) => {
            let mut framed = Vec::new();
            confluent_frame(*id, datum, &mut framed);
            assert_eq!(framed, data, "framing undoes unframing");
        }
        ([CONFLUENT_MAGIC, _, _, _, _, ..], Err(e)) => panic!("a valid header refused: {e}"),
        (_, Ok(_)) => panic!("no header, yet unframed"),
        (_, Err(e)) => {
            assert_eq!(e.class(), "framing");
            assert!(service.is_err());
            return;
        }
    }
    let (id, datum) = unframed.expect("matched above");
    let ours = WriterSchema::ours().decode(datum, &is_sensitive);
    // Without a registry every id reads with our schema: the service's answer is the datum's.
    if check_record_size(data).is_ok() {
        match (&service, &ours) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => panic!("the service and the datum disagree: {service:?} / {ours:?}"),
        }
    }
    let writer = if id % 2 == 0 {
        WriterSchema::ours()
    } else {
        older_writer()
    };
    if let Ok(tp) = writer.decode(datum, &is_sensitive) {
        assert!(!tp.attributes.keys().any(|k| is_sensitive(k)));
    }
});
