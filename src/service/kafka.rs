//! Kafka clients: configuration (defaults + pass-through), the consumer context (rebalances,
//! statistics), topic checks and creation.

use super::{ServiceError, Shared};
use crate::config::Config;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::util::IntoOpaque;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Partitions gained or lost, reported by the consumer's rebalance callbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Consumer settings: cx-sentinel's defaults, then `kafka.librdkafka_options` on top.
pub fn consumer_config(c: &Config) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &c.kafka.brokers)
        .set("group.id", &c.kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        // Offsets are stored by hand, only once a record's alerts are acknowledged.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Range assigns partition p of the touchpoint and action topics (same partition counts)
        // to the same member, so one instance holds a customer's touchpoints and case actions;
        // cooperative-sticky cannot promise that.
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        .set("statistics.interval.ms", "5000")
        .set("enable.partition.eof", "false")
        // librdkafka (2.4+) waits this long before fetching a partition again once its local
        // queue is over the prefetch thresholds, 1 s by default; here the queue drained within
        // that second and the pipeline sat idle: 10 ms nearly doubled throughput (docs/benchmark.md).
        .set("fetch.queue.backoff.ms", "10");
    if c.processing.guarantee == crate::config::Guarantee::ExactlyOnce {
        // Offsets go into the producer's transaction; only committed data is read.
        cc.set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
    }
    for (k, v) in &c.kafka.librdkafka_options {
        cc.set(k, v);
    }
    cc
}

/// Producer settings: idempotent, acks from all in-sync replicas, a short linger for batching.
pub fn producer_config(c: &Config) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &c.kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("message.timeout.ms", "30000")
        // The output topics are checked at start; one that vanishes is an error to report, never
        // a topic to create by producing to it, and is reported within 10 s, not 30.
        .set("allow.auto.create.topics", "false")
        .set("topic.metadata.propagation.max.ms", "10000");
    if c.processing.guarantee == crate::config::Guarantee::ExactlyOnce {
        // Unique per producer instance: fencing of zombies comes from the consumer group
        // generation (send_offsets_to_transaction with the group metadata, KIP-447).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        cc.set(
            "transactional.id",
            format!("{}-{}-{nanos}", c.kafka.group_id, std::process::id()),
        )
        .set("transaction.timeout.ms", "60000");
    }
    for (k, v) in &c.kafka.librdkafka_options {
        if !is_consumer_only(k) {
            cc.set(k, v);
        }
    }
    cc
}

fn is_consumer_only(key: &str) -> bool {
    key.starts_with("fetch.")
        || key.starts_with("auto.")
        || key.starts_with("enable.auto.")
        || matches!(
            key,
            "group.id"
                | "group.instance.id"
                | "session.timeout.ms"
                | "heartbeat.interval.ms"
                | "partition.assignment.strategy"
                | "max.poll.interval.ms"
                | "isolation.level"
                | "enable.partition.eof"
                | "queued.min.messages"
                | "queued.max.messages.kbytes"
        )
}

/// What the consumer's rebalance callback calls on revoke, inside librdkafka's poll, while the
/// partitions are still assigned: the last chance to store and commit their finished offsets.
pub trait RevokeHandler: Send + Sync {
    fn revoked(&self, consumer: &BaseConsumer<SentinelContext>, partitions: &[i32]);
}

/// The consumer's context: hands revokes to the driver's handler, forwards assignments to the
/// driver, and lag to the metrics.
pub struct SentinelContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) input_topic: String,
    pub(crate) events: UnboundedSender<RebalanceEvent>,
    /// Set once the driver is up.
    pub(crate) on_revoke: Mutex<Option<Arc<dyn RevokeHandler>>>,
}

/// The broker's answer to a send, identified by the token it was sent with: one record's, or a
/// whole group's once its last record is acknowledged ([`Group`]).
pub struct Delivery {
    pub token: usize,
    /// On failure, the record comes back so it can be sent again; a grouped record comes back
    /// with its group, to be sent again under it.
    pub result: Result<(), (KafkaError, OwnedMessage, Option<Arc<Group>>)>,
}

/// Records acknowledged as one (a changelog batch): the producer's delivery callback counts them
/// down and reports once, when the last is in, instead of once per record. A failed record is
/// reported on its own and does not count down until a re-send under the same group succeeds.
pub struct Group {
    token: usize,
    remaining: AtomicUsize,
}

impl Group {
    /// The token the group is reported as.
    pub fn token(&self) -> usize {
        self.token
    }

    /// A group of `records` sends, reported as `token`.
    pub fn new(token: usize, records: usize) -> Arc<Self> {
        Arc::new(Self {
            token,
            remaining: AtomicUsize::new(records),
        })
    }
}

/// What a send carries to its delivery report: a record's own token, or its group.
pub enum Opaque {
    Token(usize),
    Group(Arc<Group>),
}

// A tagged pointer: `Arc` pointers are aligned, so an odd value is a token shifted left by one.
impl IntoOpaque for Opaque {
    fn into_ptr(self) -> *mut c_void {
        match self {
            Opaque::Token(t) => ((t << 1) | 1) as *mut c_void,
            Opaque::Group(g) => Arc::into_raw(g) as *mut c_void,
        }
    }

    unsafe fn from_ptr(ptr: *mut c_void) -> Self {
        let v = ptr as usize;
        if v & 1 == 1 {
            Opaque::Token(v >> 1)
        } else {
            // SAFETY: an even value came from `Arc::into_raw` in `into_ptr`, and librdkafka hands
            // each message's opaque back exactly once (its delivery report, or a failed enqueue).
            Opaque::Group(unsafe { Arc::from_raw(ptr as *const Group) })
        }
    }
}

/// Tokens keep their top bit free for the tag of [`Opaque`].
pub use crate::service::runtime::TOKEN_MASK;

/// Producer context: forwards delivery reports to the pipeline as [`Delivery`]s. A plain token
/// per record instead of a future per record (no allocation, no waker per send), and one report
/// per group of records.
pub struct DeliveryContext {
    reports: Arc<Reports>,
}

/// Delivery reports waiting to be settled: filled by the producer's thread, drained by the
/// driver's loop, or by a revoke inside the consumer's poll (which a channel's single receiver
/// could not serve).
#[derive(Default)]
pub struct Reports {
    queue: parking_lot::Mutex<Vec<Delivery>>,
    ready: tokio::sync::Notify,
}

impl Reports {
    pub fn push(&self, d: Delivery) {
        self.queue.lock().push(d);
        self.ready.notify_one();
    }

    /// Moves every waiting report to the end of `into`.
    pub fn take(&self, into: &mut Vec<Delivery>) {
        into.append(&mut self.queue.lock());
    }

    /// Resolves once a report was pushed since the last wait (maybe already taken).
    pub async fn wait(&self) {
        self.ready.notified().await;
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Opaque;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Opaque) {
        let delivery = match (result, opaque) {
            (Ok(_), Opaque::Token(token)) => Delivery {
                token,
                result: Ok(()),
            },
            (Ok(_), Opaque::Group(group)) => {
                if group.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
                    return;
                }
                Delivery {
                    token: group.token,
                    result: Ok(()),
                }
            }
            (Err((e, msg)), Opaque::Token(token)) => Delivery {
                token,
                result: Err((e.clone(), msg.detach(), None)),
            },
            (Err((e, msg)), Opaque::Group(group)) => Delivery {
                token: group.token,
                result: Err((e.clone(), msg.detach(), Some(group))),
            },
        };
        self.reports.push(delivery);
    }
}

/// The pipeline's producer: librdkafka's queue polled on a thread of its own.
pub type SentinelProducer = ThreadedProducer<DeliveryContext>;

/// Creates the pipeline's producer and the queue of its delivery reports.
pub fn create_producer(c: &Config) -> Result<(SentinelProducer, Arc<Reports>), KafkaError> {
    let reports = Arc::new(Reports::default());
    let producer = producer_config(c).create_with_context(DeliveryContext {
        reports: reports.clone(),
    })?;
    Ok((producer, reports))
}

/// How a failed send is handled, from the client's error: a record too large is sent smaller,
/// what no retry can fix stops the process, anything else is sent again.
pub fn classify(e: &KafkaError) -> crate::service::runtime::FailureClass {
    use crate::service::runtime::FailureClass::{Fatal, TooLarge, Transient};
    use rdkafka::types::RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => TooLarge,
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::UnknownPartition
            | C::InvalidTopic
            | C::InvalidRecord
            | C::PolicyViolation
            | C::Fatal
            | C::Fenced
            | C::ProducerFenced
            | C::InvalidProducerEpoch
            | C::Authentication
            | C::SaslAuthenticationFailed,
        ) => Fatal,
        _ => Transient,
    }
}

impl ClientContext for SentinelContext {
    fn stats(&self, stats: Statistics) {
        if let Some(topic) = stats.topics.get(&self.input_topic) {
            for (p, s) in &topic.partitions {
                if *p >= 0 && s.consumer_lag >= 0 {
                    self.shared
                        .metrics
                        .consumer_lag
                        .with_label_values(&[&p.to_string()])
                        .set(s.consumer_lag);
                }
            }
        }
    }
}

fn partitions(tpl: &rdkafka::TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect()
}

impl ConsumerContext for SentinelContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions(tpl, &self.input_topic);
            tracing::info!(partitions = ?parts, "partitions revoked");
            self.shared
                .metrics
                .rebalances
                .with_label_values(&["revoke"])
                .inc();
            let handler = self.on_revoke.lock().ok().and_then(|h| h.clone());
            if let Some(handler) = handler {
                handler.revoked(consumer, &parts);
            }
            let _ = self.events.send(RebalanceEvent::Revoked(parts));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = partitions(tpl, &self.input_topic);
                tracing::info!(partitions = ?parts, "partitions assigned");
                self.shared
                    .metrics
                    .rebalances
                    .with_label_values(&["assign"])
                    .inc();
                let _ = self.events.send(RebalanceEvent::Assigned(parts));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// How long the connection check waits for the brokers before it leaves them to the topic check.
const CONNECTION_CHECK: Duration = Duration::from_secs(10);

/// Records the errors librdkafka reports that retrying will not cure: refused credentials and
/// failed TLS handshakes.
#[derive(Default)]
struct ProbeContext {
    refused: Mutex<Option<String>>,
}

impl ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode::{Authentication, SSL};
        if matches!(error.rdkafka_error_code(), Some(Authentication | SSL))
            && let Ok(mut refused) = self.refused.lock()
        {
            refused.get_or_insert_with(|| reason.to_string());
        }
    }
}

impl ConsumerContext for ProbeContext {}

/// Fails at once, naming the cause, when the brokers refuse this client's credentials or its TLS
/// handshake fails: librdkafka retries those forever, and the topic check would only report a
/// metadata timeout. Brokers that answer, or do not answer at all within [`CONNECTION_CHECK`],
/// pass (the topic check reports the latter). Blocking; uses the consumer's settings.
pub fn check_connection(c: &Config) -> Result<(), ServiceError> {
    let mut cc = consumer_config(c);
    // Without a group the probe's poll serves librdkafka's main queue, where errors arrive.
    cc.remove("group.id");
    let probe: BaseConsumer<ProbeContext> = cc.create_with_context(ProbeContext::default())?;
    let deadline = std::time::Instant::now() + CONNECTION_CHECK;
    while std::time::Instant::now() < deadline {
        if probe.fetch_metadata(None, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        let _ = probe.poll(Duration::from_millis(100));
        if let Some(reason) = probe.context().refused.lock().ok().and_then(|mut r| r.take()) {
            return Err(ServiceError::Refused(format!(
                "kafka.brokers '{}' refused the connection: {reason} (check security.protocol, \
                 sasl.* and ssl.* in kafka.librdkafka_options)",
                c.kafka.brokers
            )));
        }
    }
    Ok(())
}

/// Fails unless every topic exists; returns their partition counts.
pub fn check_topics<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    brokers: &str,
    topics: &[(&str, &str)],
) -> Result<Vec<usize>, ServiceError> {
    let mut counts = Vec::new();
    for (key, topic) in topics {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| {
                ServiceError::Topic(format!(
                    "cannot read metadata of {key} '{topic}' from {brokers}: {e}"
                ))
            })?;
        let t = md.topics().iter().find(|t| t.name() == *topic);
        match t {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => counts.push(t.partitions().len()),
            _ => {
                return Err(ServiceError::Topic(format!(
                    "{key} '{topic}' does not exist on {brokers}; create it first (e.g. scripts/kafka.sh topic {topic} 6)"
                )));
            }
        }
    }
    Ok(counts)
}

/// Creates topics that do not exist yet (tests, the demo and `scripts/`). Existing ones are fine.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> Result<(), ServiceError> {
    create(brokers, topics, false).await
}

/// Like [`create_topics`], with `cleanup.policy=compact` (the state changelog).
pub async fn create_compacted_topics(brokers: &str, topics: &[(&str, i32)]) -> Result<(), ServiceError> {
    create(brokers, topics, true).await
}

async fn create(brokers: &str, topics: &[(&str, i32)], compact: bool) -> Result<(), ServiceError> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, parts)| {
            let t = NewTopic::new(name, *parts, TopicReplication::Fixed(1));
            if compact {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics(&new, &opts).await? {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(ServiceError::Topic(format!("creating topic '{name}': {code}"))),
        }
    }
    Ok(())
}

/// The high watermark of `topic`/`partition` as the consumer's last fetch reported it, without
/// asking the broker (librdkafka's cached value); `None` when not known yet.
pub fn cached_high_watermark<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime; the call only reads
    // librdkafka's cached offsets into the two locals.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}
