//! cx-sentinel: watches customer touchpoints and pages a human when a high-stakes interaction
//! turns negative, following each recovery case until it is recovered, escalated or expired.
//!
//! Map of the crate (pure core first, IO at the edges):
//! - [`model`]: the data contracts, touchpoints in and recovery alerts out (`schemas/*.avsc`).
//! - [`config`]: the TOML file, env overrides, defaults and validation naming the key.
//! - [`engine`]: the pure core. Per-customer state in a `DashMap`, the rules, the case lifecycle,
//!   watermark and event-time timers. Takes `(touchpoint, now)`, returns effects.
//! - [`codec`]: JSON and Avro (bare and Confluent-framed) for both contracts, plus validation.
//! - [`replay`]: runs the engine over a file, the offline twin of the live service.
//! - [`metrics`]: the Prometheus registry and every metric name.
//! - [`service`]: the Kafka consumer/producer loop, dead letters, offsets, HTTP, shutdown.
//! - [`demo`]: the service against an in-process cluster fed by the generator.
//! - [`generator`]: realistic multi-channel journeys (some going wrong) for the demo and benchmarks.

pub mod codec;
pub mod config;
pub mod demo;
pub mod engine;
pub mod generator;
pub mod metrics;
pub mod model;
pub mod replay;
pub mod service;
