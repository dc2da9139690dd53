//! The streaming service: Kafka in, recovery alerts out, dead letters, HTTP, graceful shutdown.
//!
//! One consumer-group member per process. Records are processed in order per partition by one
//! task; parallelism comes from partitions (run more instances). Each assigned partition has its
//! own [`Engine`], so a revoked partition's customers are dropped with it.
//!
//! At-least-once: `enable.auto.offset.store=false`; an input offset is stored only when the record
//! and every record before it on its partition is finished: applied (or dead-lettered), with every
//! alert it caused acknowledged by the broker. Alert ids are deterministic, so a record processed
//! again after a crash yields alerts with the same `alert_id`.
//!
//! - [`runtime`]: the sans-IO partition runtime (offsets, changelog batches, resends, the two
//!   guarantees); `driver`: the consumer loop executing its commands with rdkafka; `committer`:
//!   transactional and commit calls; [`restore`]: reading the changelog on assignment;
//!   [`codecs`] and [`registry`]: record formats and the schema registry; [`kafka`]: client
//!   settings, rebalance and delivery callbacks; [`events`]: rate-limited log-and-count events;
//!   [`retry`]: bounded backoff; [`http`]: metrics, health and customer endpoints.

pub mod codecs;
mod committer;
mod driver;
pub mod events;
pub mod http;
pub mod kafka;
pub mod registry;
pub mod restore;
pub mod retry;
pub mod runtime;

use crate::config::Config;
use crate::engine::{CustomerView, Engine};
use crate::metrics::Metrics;
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Why the service could not start or had to stop. All of these are fatal.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Topic(String),
    #[error("http server on {addr}: {source}")]
    Http {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Setting up the registry client failed, the alert schema could not be registered, or the
    /// registry refused our credentials.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// The brokers refused the client's credentials or TLS handshake.
    #[error("{0}")]
    Refused(String),
    /// A partition's state could not be restored within `state.restore_timeout`.
    #[error("state restore failed: {0}")]
    Restore(String),
    /// An error no retry can fix (an output topic missing or not writable).
    #[error("{0}")]
    Fatal(String),
}

/// What the HTTP endpoints read while the pipeline runs.
pub struct Shared {
    pub metrics: Metrics,
    engines: RwLock<BTreeMap<i32, Arc<Engine>>>,
    running: AtomicBool,
    /// Customers held, refreshed every second (the cap check reads it on the hot path).
    pub(crate) customers: std::sync::atomic::AtomicUsize,
    /// When the state-bytes gauge was last computed (it walks every customer).
    state_bytes_at: parking_lot::Mutex<Option<std::time::Instant>>,
    /// `http.auth_token`: `/customers/{id}` answers only to it; off when `None`.
    customer_token: Option<crate::config::Secret>,
    /// When the pipeline last processed a record (or started), for liveness.
    progress_at: parking_lot::Mutex<std::time::Instant>,
    /// Milliseconds after `started` at which the record in hand was taken; 0 when none is.
    busy_since: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
    /// `service.stall_timeout`.
    stall_timeout: std::time::Duration,
}

/// The state-bytes and held-cases gauges walk every customer, holding each map shard's lock in turn: at most
/// this often, however often `/metrics` is scraped.
const STATE_BYTES_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

impl Shared {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            engines: RwLock::new(BTreeMap::new()),
            running: AtomicBool::new(true),
            customers: std::sync::atomic::AtomicUsize::new(0),
            state_bytes_at: parking_lot::Mutex::new(None),
            customer_token: None,
            progress_at: parking_lot::Mutex::new(std::time::Instant::now()),
            busy_since: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
            stall_timeout: crate::config::ServiceConfig::default().stall_timeout,
        }
    }

    /// `/health/live` fails after this long without progress while records wait.
    pub fn with_stall_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// The pipeline processed records (called about once a second while it does).
    pub(crate) fn note_progress(&self, now: std::time::Instant) {
        *self.progress_at.lock() = now;
    }

    /// The pipeline took a record at `now` (`None`: it finished it). Two stores per record.
    pub(crate) fn busy(&self, now: Option<std::time::Instant>) {
        let ms = now.map_or(0, |t| {
            t.saturating_duration_since(self.started).as_millis() as u64 + 1
        });
        self.busy_since.store(ms, Ordering::Relaxed);
    }

    /// Records waiting on the assigned partitions, as the consumer last reported.
    fn lag(&self) -> i64 {
        prometheus::core::Collector::collect(&self.metrics.consumer_lag)
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_gauge().get_value() as i64)
            .sum()
    }

    /// Whether the pipeline has stalled: one record has been in hand for the stall timeout (a
    /// registry or broker that does not answer), or records wait and none was processed for it.
    pub fn stalled(&self, now: std::time::Instant) -> bool {
        let busy = self.busy_since.load(Ordering::Relaxed);
        if busy > 0 {
            let since = self.started + std::time::Duration::from_millis(busy - 1);
            if now.saturating_duration_since(since) >= self.stall_timeout {
                return true;
            }
        }
        now.saturating_duration_since(*self.progress_at.lock()) >= self.stall_timeout && self.lag() > 0
    }

    /// Serves `/customers/{id}` to requests bearing `token` (without one it is off).
    pub fn with_customer_token(mut self, token: Option<crate::config::Secret>) -> Self {
        self.customer_token = token;
        self
    }

    pub(crate) fn customer_token(&self) -> Option<&str> {
        self.customer_token.as_ref().map(crate::config::Secret::expose)
    }

    /// Ready once at least one partition is assigned and its state is in place.
    pub fn ready(&self) -> bool {
        self.running.load(Ordering::Relaxed)
            && self.metrics.restoring_partitions.get() == 0
            && !self.engines.read().is_empty()
    }

    /// Alive while running and not stalled (`service.stall_timeout`).
    pub fn live(&self) -> bool {
        self.running.load(Ordering::Relaxed) && !self.stalled(std::time::Instant::now())
    }

    pub fn customer(&self, id: &str) -> Option<CustomerView> {
        self.engines.read().values().find_map(|e| e.customer(id))
    }

    pub(crate) fn set_engine(&self, partition: i32, engine: Option<Arc<Engine>>) {
        let mut engines = self.engines.write();
        match engine {
            Some(e) => engines.insert(partition, e),
            None => engines.remove(&partition),
        };
        self.metrics.assigned_partitions.set(engines.len() as i64);
    }

    pub(crate) fn refresh_state_gauges(&self) {
        let engines = self.engines.read();
        let customers: usize = engines.values().map(|e| e.customer_count()).sum();
        self.metrics.customers.set(customers as i64);
        self.customers.store(customers, Ordering::Relaxed);
    }

    pub(crate) fn refresh_state_walk(&self) {
        {
            let mut at = self.state_bytes_at.lock();
            if at.is_some_and(|t| t.elapsed() < STATE_BYTES_REFRESH) {
                return;
            }
            *at = Some(std::time::Instant::now());
        }
        let engines = self.engines.read();
        let mut bytes = 0;
        let mut cases = std::collections::BTreeMap::new();
        for totals in engines.values().map(|e| e.state_totals()) {
            bytes += totals.bytes;
            for (key, n) in totals.cases {
                *cases.entry(key).or_insert(0) += n;
            }
        }
        self.metrics.state_bytes.set(bytes as i64);
        // No partition left: every label set goes, rather than keeping its last count.
        self.metrics.cases_held.reset();
        for ((queue, status), n) in cases {
            self.metrics
                .cases_held
                .with_label_values(&[status, queue.as_str()])
                .set(n as i64);
        }
    }

    /// The allocator's counters, on every scrape (a few reads of jemalloc's stats).
    pub(crate) fn refresh_allocator_gauges(&self) {
        if let Some(stats) = crate::allocator::stats() {
            for (kind, bytes) in stats.labelled() {
                self.metrics
                    .allocator_bytes
                    .with_label_values(&[kind])
                    .set(bytes as i64);
            }
        }
    }
}

/// Runs the service until `shutdown` resolves, then drains, commits and returns.
/// Returns the bound HTTP address through `on_listen` (tests bind port 0).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listen: impl FnOnce(std::net::SocketAddr) + Send,
) -> Result<(), ServiceError> {
    let shared = Arc::new(
        Shared::new(Metrics::new())
            .with_customer_token(config.http.auth_token.clone())
            .with_stall_timeout(config.service.stall_timeout),
    );
    let listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .map_err(|source| ServiceError::Http {
            addr: config.http.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServiceError::Http {
        addr: config.http.listen.clone(),
        source,
    })?;
    on_listen(addr);
    let (stop_http_tx, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(http::serve(listener, shared.clone(), async {
        let _ = stop_http_rx.await;
    }));
    tracing::info!(%addr, "http listening");

    let check = config.clone();
    let result = match tokio::task::spawn_blocking(move || kafka::check_connection(&check)).await {
        Ok(Err(e)) => Err(e),
        _ => driver::run(config, shared.clone(), shutdown).await,
    };
    shared.running.store(false, Ordering::Relaxed);
    let _ = stop_http_tx.send(());
    let _ = http.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn liveness_fails_on_a_record_held_too_long_or_on_lag_without_progress() {
        let shared = Shared::new(Metrics::new()).with_stall_timeout(Duration::from_secs(60));
        let t = Instant::now();
        assert!(
            !shared.stalled(t + Duration::from_secs(600)),
            "idle with no lag is alive"
        );
        shared.busy(Some(t));
        assert!(!shared.stalled(t + Duration::from_secs(59)));
        assert!(
            shared.stalled(t + Duration::from_secs(60)),
            "one record in hand for the timeout"
        );
        shared.busy(None);
        assert!(!shared.stalled(t + Duration::from_secs(60)));
        shared.metrics.consumer_lag.with_label_values(&["0"]).set(5);
        shared.note_progress(t);
        assert!(!shared.stalled(t + Duration::from_secs(59)));
        assert!(
            shared.stalled(t + Duration::from_secs(61)),
            "lag and no progress for the timeout"
        );
    }
}
