//! Criterion benchmarks of the pure core and the codecs, in elements (touchpoints) per second.
//!
//! - `engine/*`: 1M generated touchpoints over 100k customers (power-law skew, 2% of journeys
//!   going wrong) pushed through a fresh [`Engine`] + [`Stream`] and flushed, per iteration.
//!   `lateness_default` runs the shipped config (`allowed_lateness` 1 h); `lateness_0` the same
//!   with no lateness. Both act on every touchpoint when it arrives, as the live service does.
//!   Input arrives in untimed chunks of 64 freshly cloned touchpoints (about 40 KB), so it is warm
//!   in cache the way a decoder's output is; the clone is not timed, and the chunk buffer is
//!   reused so that its allocation is not timed either. Dropping each touchpoint once the engine
//!   is done with it *is* timed (the service drops every decoded touchpoint the same way):
//!   `touchpoint_drop` times that drop alone over the same input, to show its share.
//! - `decode/*`: 100k pre-encoded touchpoints decoded and validated, bare Avro datum and JSON.
//!
//! `cargo bench --bench engine` takes about two minutes on two cores; add `-- --quick` for a
//! rougher figure in less, or `-- engine/` to run one group.

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use cx_sentinel::codec::{avro, json};
use cx_sentinel::config::Config;
use cx_sentinel::engine::{Engine, Stream};
use cx_sentinel::generator::{Generator, GeneratorConfig};
use cx_sentinel::model::{Millis, Touchpoint};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

// The service's allocator: the engine's speed depends on it (every new customer allocates).
cx_sentinel::install_allocator!();

const ENGINE_EVENTS: usize = 1_000_000;
/// Touchpoints cloned (untimed) ahead of each timed stretch: small enough to stay in cache.
const INPUT_CHUNK: usize = 64;
const DECODE_EVENTS: usize = 100_000;
const CUSTOMERS: u64 = 100_000;
/// Processing time handed to the engine (it never reads the clock).
const NOW: Millis = 1_772_359_200_000;

fn workload(n: usize) -> Vec<Touchpoint> {
    Generator::new(GeneratorConfig {
        customers: CUSTOMERS,
        ..GeneratorConfig::default()
    })
    .take(n)
    .collect()
}

fn engine(c: &mut Criterion) {
    let events = workload(ENGINE_EVENTS);
    let mut group = c.benchmark_group("engine");
    group
        .throughput(Throughput::Elements(ENGINE_EVENTS as u64))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(30));
    for (name, lateness) in [("lateness_0", Some(Duration::ZERO)), ("lateness_default", None)] {
        let mut config = Config::default();
        if let Some(lateness) = lateness {
            config.engine.allowed_lateness = lateness;
        }
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut input = Vec::with_capacity(INPUT_CHUNK);
                for _ in 0..iters {
                    let engine = Arc::new(Engine::new(config.clone()));
                    let mut stream = Stream::new(engine.clone());
                    let mut out = Vec::with_capacity(64);
                    let mut seq = 0u64;
                    for chunk in events.chunks(INPUT_CHUNK) {
                        input.extend_from_slice(chunk);
                        let started = std::time::Instant::now();
                        for ev in input.drain(..) {
                            stream.push(ev, seq, cx_sentinel::engine::ARRIVAL_UNCHECKED, NOW, &mut out);
                            seq += 1;
                            out.clear();
                        }
                        timed += started.elapsed();
                    }
                    let started = std::time::Instant::now();
                    stream.flush(None, NOW, &mut out);
                    timed += started.elapsed();
                    black_box(out.len());
                    drop(stream);
                    drop(engine);
                }
                timed
            })
        });
    }
    // The same input dropped and nothing else: the part of the figures above that is the drop.
    group.bench_function("touchpoint_drop", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut input = Vec::with_capacity(INPUT_CHUNK);
            for _ in 0..iters {
                for chunk in events.chunks(INPUT_CHUNK) {
                    input.extend_from_slice(chunk);
                    let started = std::time::Instant::now();
                    for ev in input.drain(..) {
                        drop(black_box(ev));
                    }
                    timed += started.elapsed();
                }
            }
            timed
        })
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    let events = workload(DECODE_EVENTS);
    let avro_datums: Vec<Vec<u8>> = events.iter().map(avro::encode_touchpoint).collect();
    let json_lines: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(e).expect("a touchpoint serializes"))
        .collect();
    let engine = Engine::new(Config::default());
    let sensitive = |k: &str| engine.rules().is_sensitive(k);
    let schema = avro::touchpoint_schema();
    // Both decoders must give back what was generated (sensitive attributes aside).
    assert_eq!(
        avro::decode_touchpoint(&avro_datums[0], schema, &|_| false).expect("decodes"),
        events[0]
    );
    assert_eq!(
        json::decode_touchpoint(&json_lines[0], &|_| false).expect("decodes"),
        events[0]
    );

    let mut group = c.benchmark_group("decode");
    group
        .throughput(Throughput::Elements(DECODE_EVENTS as u64))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    group.bench_function("avro_100k", |b| {
        b.iter(|| {
            for datum in &avro_datums {
                black_box(avro::decode_touchpoint(datum, schema, &sensitive).expect("decodes"));
            }
        })
    });
    group.bench_function("json_100k", |b| {
        b.iter(|| {
            for line in &json_lines {
                black_box(json::decode_touchpoint(line, &sensitive).expect("decodes"));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, engine, decode);
criterion_main!(benches);
