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

pub mod codecs;
pub mod events;
pub mod http;
pub mod kafka;
mod pipeline;
pub mod registry;
pub mod restore;

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
}

/// The state-bytes gauge walks every customer, holding each map shard's lock in turn: at most
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
        }
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

    pub fn live(&self) -> bool {
        self.running.load(Ordering::Relaxed)
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

    pub(crate) fn refresh_state_bytes(&self) {
        {
            let mut at = self.state_bytes_at.lock();
            if at.is_some_and(|t| t.elapsed() < STATE_BYTES_REFRESH) {
                return;
            }
            *at = Some(std::time::Instant::now());
        }
        let engines = self.engines.read();
        let bytes: usize = engines.values().map(|e| e.state_bytes()).sum();
        self.metrics.state_bytes.set(bytes as i64);
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
    let shared = Arc::new(Shared::new(Metrics::new()).with_customer_token(config.http.auth_token.clone()));
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
        _ => pipeline::run(config, shared.clone(), shutdown).await,
    };
    shared.running.store(false, Ordering::Relaxed);
    let _ = stop_http_tx.send(());
    let _ = http.await;
    result
}
