//! cx-sentinel: watches customer touchpoints and pages a human when a high-stakes interaction
//! turns negative, following each recovery case until it is recovered, escalated or expired.
//!
//! Map of the crate (pure core first, IO at the edges):
//! - [`model`]: the data contracts, touchpoints in and recovery alerts out (`schemas/*.avsc`).
//! - [`config`]: the TOML file, env overrides, defaults and validation naming the key.
//! - [`engine`]: the pure core. Per-customer state in a `DashMap`, the rules, the case lifecycle,
//!   event-time clock, corrections and timers. Takes `(touchpoint, arrival, now)` and ticks,
//!   returns effects; acts on each touchpoint when it arrives.
//! - [`codec`]: JSON and Avro (bare and Confluent-framed) for both contracts, plus validation.
//! - [`replay`]: runs the engine over a file, the offline twin of the live service.
//! - [`metrics`]: the Prometheus registry and every metric name.
//! - [`service`]: the live service. [`service::runtime`] is its sans-IO partition runtime
//!   (offsets, changelog ordering, resend policy, the two delivery guarantees); the driver runs
//!   the Kafka loop and executes the runtime's commands; HTTP, restore, registry, shutdown.
//! - [`demo`]: the service against an in-process cluster fed by the generator.
//! - [`render`]: one readable line per alert (colour on a terminal), for `tail` and `demo`.
//! - [`tail`]: reads the alert topic in any output format and prints it, like a console consumer.
//! - [`report`]: alerts (and touchpoints) to one self-contained HTML page of charts and tables.
//! - [`generator`]: realistic multi-channel journeys (some going wrong) for the demo and benchmarks.
//! - [`Allocator`], [`install_allocator!`]: the process allocator (jemalloc) of the binary and benchmarks.
//! - [`allocator`]: its own accounting (allocated, active, resident bytes) and a purge.

pub mod allocator;
pub mod codec;
pub mod config;
pub mod demo;
pub mod engine;
pub mod generator;
pub mod metrics;
pub mod model;
pub mod render;
pub mod replay;
pub mod report;
pub mod service;
pub mod tail;

/// The allocator the binary and the benchmarks install: the system's where jemalloc is not used.
#[cfg(not(all(target_os = "linux", not(target_env = "musl"))))]
pub use std::alloc::System as Allocator;
/// The allocator the binary and the benchmarks install, through [`install_allocator!`]: jemalloc
/// on Linux, built with unprefixed `malloc`/`free` so librdkafka's C allocations use it too.
/// glibc's malloc made the pipeline thread wait on an arena lock whenever it freed a consumed
/// message that a librdkafka broker thread had allocated (docs/benchmark.md).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
pub use tikv_jemallocator::Jemalloc as Allocator;

/// jemalloc's built-in options (the `MALLOC_CONF` environment variable still overrides them):
/// two arenas for two busy threads instead of four per core, and freed pages returned within a
/// second instead of ten, so resident memory tracks the state held.
pub const MALLOC_CONF: &std::ffi::CStr = c"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0";

/// A C string pointer that may live in a `static` (jemalloc reads `malloc_conf` at start-up).
#[repr(transparent)]
pub struct MallocConf(pub *const std::ffi::c_char);
// SAFETY: it points at a `'static` string that is never written.
unsafe impl Sync for MallocConf {}

/// Installs [`Allocator`] as the global allocator, with [`MALLOC_CONF`]. Call once, at the top
/// level of a binary (the service, the benchmarks), so they all measure the same allocator.
#[macro_export]
macro_rules! install_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::Allocator = $crate::Allocator;

        #[cfg(all(target_os = "linux", not(target_env = "musl")))]
        #[unsafe(export_name = "malloc_conf")]
        #[used]
        static MALLOC_CONF: $crate::MallocConf = $crate::MallocConf($crate::MALLOC_CONF.as_ptr());
    };
}
