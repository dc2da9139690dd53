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

pub mod codec;
pub mod config;
pub mod engine;
pub mod model;
pub mod replay;
