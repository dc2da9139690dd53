//! Criterion benchmarks of touchpoint Avro decoding (decode + validate), in elements per second,
//! all on the same 10k generated datums, so one run gives the ratios:
//!
//! - `avro_decode/value_per_record_compare`: the previous hot path, apache-avro `Value`s with the
//!   writer schema compared to ours on every record;
//! - `avro_decode/value_resolving`: the fallback for writers that are not ours, apache-avro
//!   `Value`s resolved to our schema (the comparison done once, in [`WriterSchema::new`]);
//! - `avro_decode/fast`: the hand-written decoder, as [`WriterSchema::ours`] runs it.
//!
//! `cargo bench --bench codec -- --quick` takes a few seconds.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cx_sentinel::codec::avro::{self, WriterSchema};
use cx_sentinel::codec::validate;
use cx_sentinel::generator::{Generator, GeneratorConfig};
use std::hint::black_box;

const EVENTS: usize = 10_000;

fn decode(c: &mut Criterion) {
    let events: Vec<_> = Generator::new(GeneratorConfig::default()).take(EVENTS).collect();
    let datums: Vec<Vec<u8>> = events.iter().map(avro::encode_touchpoint).collect();
    let sensitive = |k: &str| k == "ssn";
    let ours = WriterSchema::ours();
    assert!(ours.is_fast());
    // A clone, so the per-record comparison really compares (as a registry schema would).
    let writer = avro::touchpoint_schema().clone();
    for (datum, event) in datums.iter().zip(&events).take(100) {
        let fast = ours.decode(datum, &sensitive).expect("decodes");
        let generic = avro::read_touchpoint_value(datum, &writer, true).expect("decodes");
        assert_eq!(fast, validate(generic, &sensitive).expect("validates"));
        assert_eq!(avro::read_touchpoint_datum(datum).expect("decodes"), *event);
    }

    let mut group = c.benchmark_group("avro_decode");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("value_per_record_compare", |b| {
        b.iter(|| {
            for datum in &datums {
                let resolve = writer != *avro::touchpoint_schema();
                let tp = avro::read_touchpoint_value(datum, &writer, resolve).expect("decodes");
                black_box(validate(tp, &sensitive).expect("validates"));
            }
        })
    });
    group.bench_function("value_resolving", |b| {
        b.iter(|| {
            for datum in &datums {
                let tp = avro::read_touchpoint_value(datum, &writer, true).expect("decodes");
                black_box(validate(tp, &sensitive).expect("validates"));
            }
        })
    });
    group.bench_function("fast", |b| {
        b.iter(|| {
            for datum in &datums {
                black_box(ours.decode(datum, &sensitive).expect("decodes"));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
