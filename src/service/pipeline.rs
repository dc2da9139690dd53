//! The consume → decode → engine → produce loop, with per-partition offset tracking so an offset
//! is stored only once everything before it is finished and acknowledged.

use super::codecs::{InputDecoder, InputError, OutputEncoder};
use super::kafka::{self, RebalanceEvent, SentinelContext};
use super::{ServiceError, Shared};
use crate::config::Config;
use crate::engine::{Effect, Engine, Stream};
use crate::model::{AlertStatus, Millis};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use prometheus::IntCounter;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// One assigned input partition.
struct Part {
    engine: Arc<Engine>,
    stream: Stream,
    /// Unfinished records: offset → outstanding holds (processing, each unacknowledged send).
    pending: BTreeMap<i64, u32>,
    /// Offset after the highest consumed.
    next: i64,
    /// Offset last stored for commit (the next to consume).
    stored: i64,
    consumed: IntCounter,
}

impl Part {
    fn hold(&mut self, offset: i64) {
        *self.pending.entry(offset).or_default() += 1;
    }

    fn release(&mut self, offset: i64) {
        if let Some(n) = self.pending.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&offset);
            }
        }
    }

    /// The first offset not yet finished: everything below it may be committed.
    fn committable(&self) -> i64 {
        self.pending.keys().next().copied().unwrap_or(self.next)
    }
}

/// What a delivery was for, to account for it when the broker answers.
enum Sent {
    Alert {
        rule: String,
        severity: &'static str,
        status: AlertStatus,
        event_time: Millis,
    },
    DeadLetter,
}

struct Done {
    partition: i32,
    offset: i64,
    sent: Sent,
    topic: String,
    result:
        Result<rdkafka::producer::future_producer::OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
}

struct Pipeline {
    config: Config,
    shared: Arc<Shared>,
    consumer: Arc<StreamConsumer<SentinelContext>>,
    producer: FutureProducer,
    decoder: InputDecoder,
    encoder: OutputEncoder,
    parts: HashMap<i32, Part>,
    inflight: FuturesUnordered<BoxFuture<'static, Done>>,
    effects: Vec<Effect>,
    buf: Vec<u8>,
}

pub(super) async fn run(
    config: Config,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let (tx, mut rebalances) = tokio::sync::mpsc::unbounded_channel();
    let context = SentinelContext {
        shared: shared.clone(),
        input_topic: config.kafka.input_topic.clone(),
        events: tx,
    };
    let consumer: StreamConsumer<SentinelContext> =
        kafka::consumer_config(&config).create_with_context(context)?;
    let producer: FutureProducer = kafka::producer_config(&config).create()?;
    let k = &config.kafka;
    kafka::check_topics(
        &consumer,
        &k.brokers,
        &[
            ("kafka.input_topic", k.input_topic.as_str()),
            ("kafka.alert_topic", k.alert_topic.as_str()),
            ("kafka.dlq_topic", k.dlq_topic.as_str()),
        ],
    )?;
    let decoder = InputDecoder::new(&config).map_err(ServiceError::Registry)?;
    let encoder = OutputEncoder::new(&config).map_err(ServiceError::Registry)?;
    consumer.subscribe(&[k.input_topic.as_str()])?;
    tracing::info!(topic = %k.input_topic, group = %k.group_id, brokers = %k.brokers, "consuming");

    let consumer = Arc::new(consumer);
    let mut p = Pipeline {
        config,
        shared,
        consumer: consumer.clone(),
        producer,
        decoder,
        encoder,
        parts: HashMap::new(),
        inflight: FuturesUnordered::new(),
        effects: Vec::new(),
        buf: Vec::new(),
    };
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(event) = rebalances.recv() => p.rebalance(event),
            Some(done) = p.inflight.next(), if !p.inflight.is_empty() => p.delivered(done),
            _ = gauges.tick() => p.shared.refresh_state_gauges(),
            msg = consumer.recv() => match msg {
                Ok(msg) => p.process(&msg).await,
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    p.shutdown().await;
    Ok(())
}

impl Pipeline {
    fn part(&mut self, partition: i32) -> &mut Part {
        let shared = &self.shared;
        let config = &self.config;
        self.parts.entry(partition).or_insert_with(|| {
            let engine = Arc::new(Engine::new(config.clone()));
            shared.set_engine(partition, Some(engine.clone()));
            Part {
                stream: Stream::new(engine.clone()),
                engine,
                pending: BTreeMap::new(),
                next: 0,
                stored: 0,
                consumed: shared
                    .metrics
                    .records_consumed
                    .with_label_values(&[&partition.to_string()]),
            }
        })
    }

    fn rebalance(&mut self, event: RebalanceEvent) {
        match event {
            RebalanceEvent::Assigned(parts) => {
                for partition in parts {
                    self.part(partition);
                }
            }
            RebalanceEvent::Revoked(parts) => {
                for partition in parts {
                    if let Some(part) = self.parts.remove(&partition) {
                        tracing::info!(
                            partition,
                            customers = part.engine.customer_count(),
                            unfinished = part.pending.len(),
                            "dropping revoked partition's state"
                        );
                    }
                    self.shared.set_engine(partition, None);
                }
            }
        }
        self.shared.refresh_state_gauges();
    }

    async fn process(&mut self, msg: &BorrowedMessage<'_>) {
        let started = Instant::now();
        let partition = msg.partition();
        let offset = msg.offset();
        let part = self.part(partition);
        part.consumed.inc();
        part.hold(offset);
        part.next = part.next.max(offset + 1);
        if part.stored == 0 && part.pending.len() == 1 {
            part.stored = offset;
        }

        let decoded = loop {
            let engine = self.parts[&partition].engine.clone();
            let sensitive = |k: &str| engine.rules().is_sensitive(k);
            let result = match msg.payload() {
                None => Err(InputError::Data(crate::codec::DecodeError::Framing(
                    "record has no value".into(),
                ))),
                Some(payload) => self.decoder.decode(payload, &sensitive),
            };
            match result {
                Err(InputError::Retry(e)) => {
                    tracing::warn!(partition, offset, error = %e, "cannot decode yet; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => break other,
            }
        };
        match decoded {
            Ok(tp) => {
                let mut effects = std::mem::take(&mut self.effects);
                self.parts.get_mut(&partition).expect("part exists").stream.push(
                    tp,
                    offset as u64,
                    now_ms(),
                    &mut effects,
                );
                for effect in effects.drain(..) {
                    self.apply_effect(msg, effect).await;
                }
                self.effects = effects;
            }
            Err(e) => {
                let class = match &e {
                    InputError::Data(d) => d.class(),
                    InputError::Retry(_) => "retry",
                };
                self.shared
                    .metrics
                    .decode_errors
                    .with_label_values(&[class])
                    .inc();
                self.dead_letter(msg, class, &e.to_string()).await;
                self.finish(partition, offset);
            }
        }
        self.shared
            .metrics
            .processing_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    async fn apply_effect(&mut self, msg: &BorrowedMessage<'_>, effect: Effect) {
        let partition = msg.partition();
        match effect {
            Effect::Alert { alert, seq } => {
                // A timer alert belongs to the record whose event time fired it.
                let owner = seq.map_or(msg.offset(), |s| s as i64);
                self.buf.clear();
                self.encoder.encode(&alert, &mut self.buf);
                let sent = Sent::Alert {
                    rule: alert.rule.clone(),
                    severity: alert.severity.as_str(),
                    status: alert.status,
                    event_time: alert.event_time,
                };
                let payload = std::mem::take(&mut self.buf);
                let topic = self.config.kafka.alert_topic.clone();
                self.send(
                    partition,
                    owner,
                    sent,
                    topic,
                    alert.customer_id.as_bytes(),
                    &payload,
                    OwnedHeaders::new(),
                )
                .await;
                self.buf = payload;
            }
            Effect::Applied { seq } => self.finish(partition, seq as i64),
            Effect::Duplicate { seq } => {
                self.shared.metrics.duplicate_records.inc();
                self.finish(partition, seq as i64);
            }
            Effect::Late {
                seq,
                event,
                behind_ms,
            } => {
                self.shared.metrics.late_records.inc();
                let why = format!(
                    "late: event {} is {behind_ms} ms behind the watermark (allowed lateness {})",
                    event.event_id,
                    humantime::format_duration(self.config.engine.allowed_lateness)
                );
                self.dead_letter(msg, "late", &why).await;
                self.finish(partition, seq as i64);
            }
            Effect::Evicted { customers } => self.shared.metrics.evictions.inc_by(customers),
        }
    }

    async fn dead_letter(&mut self, msg: &BorrowedMessage<'_>, class: &'static str, error: &str) {
        tracing::warn!(
            partition = msg.partition(),
            offset = msg.offset(),
            reason = class,
            error,
            "record dead-lettered"
        );
        let mut headers = OwnedHeaders::new();
        if let Some(h) = msg.headers() {
            for header in h.iter() {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let headers = headers
            .insert(Header {
                key: "cx.error",
                value: Some(error),
            })
            .insert(Header {
                key: "cx.error.class",
                value: Some(class),
            })
            .insert(Header {
                key: "cx.source.topic",
                value: Some(msg.topic()),
            })
            .insert(Header {
                key: "cx.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "cx.source.offset",
                value: Some(offset.as_str()),
            });
        self.shared.metrics.dead_letters.with_label_values(&[class]).inc();
        let topic = self.config.kafka.dlq_topic.clone();
        self.send(
            msg.partition(),
            msg.offset(),
            Sent::DeadLetter,
            topic,
            msg.key().unwrap_or_default(),
            msg.payload().unwrap_or_default(),
            headers,
        )
        .await;
    }

    /// Enqueues a record; the owning input offset stays unfinished until the broker acknowledges it.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &mut self,
        partition: i32,
        owner: i64,
        sent: Sent,
        topic: String,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
    ) {
        if let Some(part) = self.parts.get_mut(&partition) {
            part.hold(owner);
        }
        let mut record = FutureRecord::to(&topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        let future = loop {
            match self.producer.send_result(record) {
                Ok(f) => break f,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, r)) => {
                    self.shared
                        .metrics
                        .produce_errors
                        .with_label_values(&[&topic])
                        .inc();
                    tracing::error!(topic = %topic, error = %e, "cannot enqueue record; retrying in 1s");
                    record = r;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let topic_name = topic.clone();
        self.inflight.push(Box::pin(async move {
            Done {
                partition,
                offset: owner,
                sent,
                topic: topic_name,
                result: future.await,
            }
        }));
    }

    fn delivered(&mut self, done: Done) {
        match done.result {
            Ok(Ok(_)) => {
                if let Sent::Alert {
                    rule,
                    severity,
                    status,
                    event_time,
                } = &done.sent
                {
                    let m = &self.shared.metrics;
                    m.alerts
                        .with_label_values(&[rule.as_str(), severity, status.as_str()])
                        .inc();
                    let latency = (now_ms() - event_time).max(0) as f64 / 1000.0;
                    m.end_to_end_seconds
                        .with_label_values(&[status.as_str()])
                        .observe(latency);
                }
                self.finish(done.partition, done.offset);
            }
            Ok(Err((e, msg))) => {
                // Not acknowledged after librdkafka's own retries: send again, never drop.
                self.shared
                    .metrics
                    .produce_errors
                    .with_label_values(&[&done.topic])
                    .inc();
                tracing::error!(topic = %done.topic, error = %e, "delivery failed; re-sending");
                let producer = self.producer.clone();
                let (partition, offset, sent, topic) = (done.partition, done.offset, done.sent, done.topic);
                self.inflight.push(Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let mut record = FutureRecord::to(&topic)
                        .key(msg.key().unwrap_or_default())
                        .payload(msg.payload().unwrap_or_default());
                    if let Some(h) = msg.headers() {
                        record = record.headers(h.clone());
                    }
                    let result = producer.send(record, Duration::from_secs(30)).await;
                    Done {
                        partition,
                        offset,
                        sent,
                        topic,
                        result: Ok(result),
                    }
                }));
            }
            Err(_) => tracing::error!(topic = %done.topic, "producer dropped a delivery report"),
        }
    }

    /// Releases one hold on `offset` and stores the new commit position if it moved.
    fn finish(&mut self, partition: i32, offset: i64) {
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        part.release(offset);
        let committable = part.committable();
        if committable > part.stored {
            match self
                .consumer
                .store_offset(&self.config.kafka.input_topic, partition, committable - 1)
            {
                Ok(()) => part.stored = committable,
                Err(e) => tracing::debug!(partition, error = %e, "cannot store offset (partition revoked?)"),
            }
        }
    }

    async fn shutdown(mut self) {
        let deadline = self.config.service.shutdown_timeout;
        tracing::info!(
            inflight = self.inflight.len(),
            "shutting down: draining deliveries"
        );
        let drained = tokio::time::timeout(deadline, async {
            while let Some(done) = self.inflight.next().await {
                self.delivered(done);
            }
        })
        .await;
        if drained.is_err() {
            tracing::error!(
                inflight = self.inflight.len(),
                "shutdown deadline passed with deliveries unacknowledged; their records will be re-processed"
            );
        }
        let buffered: usize = self.parts.values().map(|p| p.stream.buffered()).sum();
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!(buffered, "offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::error!(error = %e, "final commit failed; uncommitted records will be re-processed")
            }
        }
        self.consumer.unsubscribe();
        // Dropping the consumer closes it: it leaves the group.
    }
}
