//! The driver: runs the consumer loop and executes the partition runtime's commands with the
//! Kafka clients (consume, decode, produce, store offsets, transactions), restores assigned
//! partitions, and observes the shutdown signal in every wait.

use super::codecs::{InputDecoder, InputError, OutputEncoder};
use super::committer;
use super::events::Logged;
use super::kafka::{
    self, Delivery, Group, Opaque, RebalanceEvent, Reports, RevokeHandler, SentinelContext, SentinelProducer,
};
use super::runtime::{Command, Failure, Now, Output, Record, Rejected, Runtime, Settle, Source};
use super::{ServiceError, Shared};
use crate::config::Config;
use crate::engine::Engine;
use crate::model::Millis;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Records processed per wake-up of the loop at most, before deliveries, ticks and shutdown get
/// their turn (about a millisecond of work).
const DRAIN_MAX: usize = 256;

/// How long a revoke waits for the producer's queue to drain.
const REVOKE_FLUSH: Duration = Duration::from_secs(10);

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Wall-clock milliseconds from a monotonic reading the loop takes anyway: one clock read per
/// record instead of two. Re-based every second, so a stepped wall clock is followed within a
/// second.
struct WallClock {
    at: Instant,
    ms: Millis,
}

impl WallClock {
    fn new() -> Self {
        Self {
            at: Instant::now(),
            ms: now_ms(),
        }
    }

    fn at(&self, now: Instant) -> Now {
        Now {
            mono: now,
            wall: self.ms + now.saturating_duration_since(self.at).as_millis() as Millis,
        }
    }
}

/// The shutdown signal, for every wait to observe.
#[derive(Clone)]
pub(super) struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    fn spawn(signal: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            let _ = tx.send(true);
        });
        Self(rx)
    }

    async fn wait(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }

    /// Sleeps `d`; false when shutdown came first.
    async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = self.wait() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// The producer and its reports (exactly_once recovery replaces both).
struct Link {
    producer: Arc<SentinelProducer>,
    reports: Arc<Reports>,
}

/// What the driver and the revoke callback share. The callback runs inside the consumer's poll,
/// on the driver's task, so the locks are never contended; they make the sharing sound.
struct Core {
    runtime: parking_lot::Mutex<Runtime>,
    link: parking_lot::RwLock<Link>,
    /// exactly_once: a revoke aborted the open transaction; the driver rewinds the input.
    rewind: AtomicBool,
    input_topic: String,
    action_topic: String,
    eos: bool,
}

impl Core {
    fn topic_of(&self, source: Source) -> &str {
        match source {
            Source::Touchpoints => &self.input_topic,
            Source::Actions => &self.action_topic,
        }
    }

    fn link(&self) -> (Arc<SentinelProducer>, Arc<Reports>) {
        let l = self.link.read();
        (l.producer.clone(), l.reports.clone())
    }
}

/// On revoke, while the partitions are still ours: everything enqueued reaches the broker, the
/// acknowledged records' offsets are stored and committed, then the partitions' state goes
/// (at least once). Exactly once aborts the open transaction instead and has the input rewound:
/// its outputs for the revoked partitions would otherwise commit without their offsets.
struct Revoker(Arc<Core>);

impl RevokeHandler for Revoker {
    fn revoked(&self, consumer: &BaseConsumer<SentinelContext>, partitions: &[i32]) {
        let core = &self.0;
        let (producer, reports) = core.link();
        if core.eos {
            if !committer::abort(&producer) {
                tracing::warn!("cannot abort the transaction on revoke; the driver recovers");
            }
            let _ = producer.begin_transaction();
            let mut rt = core.runtime.lock();
            rt.reset();
            core.rewind.store(true, Ordering::Relaxed);
            return;
        }
        if let Err(e) = producer.flush(REVOKE_FLUSH) {
            tracing::warn!(error = %e, "producer not drained before the revoke; the next owner reprocesses");
        }
        let mut delivered = Vec::new();
        reports.take(&mut delivered);
        let (mut commands, mut deferred) = (Vec::new(), Vec::new());
        let mut rt = core.runtime.lock();
        let now = WallClock::new().at(Instant::now());
        for d in delivered {
            match d.result {
                Ok(()) => rt.delivered(d.token, Ok(()), now, &mut commands),
                // A failure needs its record sent again: the driver's loop does that.
                Err(_) => {
                    reports.push(d);
                    continue;
                }
            }
            for c in commands.drain(..) {
                match c {
                    Command::Store {
                        source,
                        partition,
                        next,
                    } => {
                        store(consumer, core.topic_of(source), partition, next);
                    }
                    other => deferred.push(other),
                }
            }
        }
        rt.defer(&mut deferred);
        committer::commit_stored(consumer, "revoke");
        for &p in partitions {
            rt.revoke(p);
        }
    }
}

fn store<X: rdkafka::consumer::ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    partition: i32,
    next: i64,
) {
    if let Err(e) = consumer.store_offset(topic, partition, next - 1) {
        tracing::debug!(partition, error = %e, "cannot store offset (partition revoked?)");
    }
}

/// A record's decoding, as far as it got.
enum Decoded {
    Ready(Result<crate::model::Touchpoint, Rejected>),
    /// Shutdown came while the registry was unreachable.
    Stopped,
    /// The registry refused the credentials.
    Fatal(String),
}

fn registry_summary(_: &'static str, retries: u64, window: Duration) {
    tracing::warn!(
        retries,
        window_seconds = window.as_secs(),
        "more schema lookups failed in the last window"
    );
}

struct Driver {
    config: Config,
    shared: Arc<Shared>,
    consumer: Arc<StreamConsumer<SentinelContext>>,
    core: Arc<Core>,
    decoder: InputDecoder,
    /// Commands being executed (reused).
    out: Vec<Command>,
    reports: Vec<Delivery>,
    clock: WallClock,
    signal: Shutdown,
    /// Counts and logs dead letters, one line per reason per window.
    dead_letters: super::events::DeadLetters,
    /// Rate-limits the registry-outage warning.
    registry_log: super::events::Throttle,
    /// Why the process must stop (a permanent error).
    fatal: Option<String>,
    /// Records processed, and when that count last moved (liveness).
    processed: u64,
    progress_seen: u64,
    /// exactly_once: the commit tick's commands asked for a commit.
    commit_requested: bool,
}

pub(super) async fn run(
    config: Config,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let shutdown = Shutdown::spawn(shutdown);
    let (tx, mut rebalances) = tokio::sync::mpsc::unbounded_channel();
    let context = SentinelContext {
        shared: shared.clone(),
        input_topic: config.kafka.input_topic.clone(),
        events: tx,
        on_revoke: std::sync::Mutex::new(None),
    };
    let consumer: StreamConsumer<SentinelContext> =
        kafka::consumer_config(&config).create_with_context(context)?;
    let (producer, reports) = kafka::create_producer(&config)?;
    let k = &config.kafka;
    let mut topics = vec![
        ("kafka.input_topic", k.input_topic.as_str()),
        ("kafka.alert_topic", k.alert_topic.as_str()),
        ("kafka.dlq_topic", k.dlq_topic.as_str()),
        ("kafka.action_topic", k.action_topic.as_str()),
    ];
    if config.state.changelog {
        topics.push(("state.changelog_topic", config.state.changelog_topic.as_str()));
    }
    let counts = kafka::check_topics(&consumer, &k.brokers, &topics)?;
    // Partition p of each is keyed by customer like the input's: the same instance must own
    // partition p of all three.
    for (i, (key, topic)) in topics.iter().enumerate().skip(3) {
        if counts[i] != counts[0] {
            return Err(ServiceError::Topic(format!(
                "{key} '{topic}' has {} partitions but kafka.input_topic '{}' has {}: they must match",
                counts[i], k.input_topic, counts[0]
            )));
        }
    }
    let decoder = InputDecoder::new(&config)?;
    // Registering the alert schema retries a registry outage until its deadline; a shutdown
    // meanwhile ends it.
    let mut stop = shutdown.clone();
    let encoder = tokio::select! {
        e = OutputEncoder::new(&config) => e?,
        _ = stop.wait() => return Ok(()),
    };
    let eos = config.processing.guarantee == crate::config::Guarantee::ExactlyOnce;
    if eos {
        tokio::task::block_in_place(|| committer::start_transactions(&producer))?;
    }
    let core = Arc::new(Core {
        runtime: parking_lot::Mutex::new(Runtime::new(config.clone(), shared.clone(), encoder)),
        link: parking_lot::RwLock::new(Link {
            producer: Arc::new(producer),
            reports,
        }),
        rewind: AtomicBool::new(false),
        input_topic: config.kafka.input_topic.clone(),
        action_topic: config.kafka.action_topic.clone(),
        eos,
    });
    *consumer.context().on_revoke.lock().expect("not poisoned") = Some(Arc::new(Revoker(core.clone())));
    consumer.subscribe(&[k.input_topic.as_str(), k.action_topic.as_str()])?;
    tracing::info!(topic = %k.input_topic, actions = %k.action_topic, group = %k.group_id, brokers = %k.brokers, "consuming");

    let consumer = Arc::new(consumer);
    let mut d = Driver {
        config,
        shared,
        consumer: consumer.clone(),
        core,
        decoder,
        out: Vec::new(),
        reports: Vec::new(),
        clock: WallClock::new(),
        signal: shutdown.clone(),
        dead_letters: super::events::DeadLetters::default(),
        registry_log: super::events::Throttle::default(),
        fatal: None,
        processed: 0,
        progress_seen: 0,
        commit_requested: false,
    };
    // exactly_once commits a transaction on this tick; the changelog seals its open batches on it.
    let mut commits = tokio::time::interval(d.config.processing.commit_interval);
    commits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ticking = eos || d.config.state.changelog;
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    // Idle partitions follow the wall clock (engine.idle_timeout): checked four times per timeout,
    // so a deadline on a quiet partition fires within about 1.25 timeouts of passing.
    let mut idle = tokio::time::interval((d.config.engine.idle_timeout / 4).max(Duration::from_millis(10)));
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One stream for the whole loop: each `recv()` would register and unregister a waker slot
    // under the consumer's mutex.
    let mut messages = consumer.stream();
    let mut failure = None;
    loop {
        let reports = d.core.link().1;
        tokio::select! {
            biased;
            _ = stop.wait() => break,
            Some(event) = rebalances.recv() => {
                if let Err(e) = d.rebalance(event).await {
                    failure = Some(e);
                    break;
                }
            }
            _ = reports.wait() => d.settle().await,
            _ = gauges.tick() => d.on_second(),
            _ = idle.tick() => d.tick_idle().await,
            _ = commits.tick(), if ticking => d.commit_tick().await,
            Some(msg) = messages.next() => {
                let mut msg = Some(msg);
                // Then what is already fetched, without a trip through select! per record: its
                // timers, channels and waker registrations were about 7% of this thread's CPU.
                let mut drained = 0;
                while let Some(next) = msg.take() {
                    // Rebalance callbacks run inside the poll: a revoke and the next assignment
                    // can both happen in the poll that returns this record, and the record
                    // belongs to the new assignment's state, not the revoked one's.
                    while let Ok(event) = rebalances.try_recv() {
                        if let Err(e) = d.rebalance(event).await {
                            failure = Some(e);
                        }
                    }
                    let rewound = d.after_poll().await;
                    if failure.is_some() {
                        break;
                    }
                    if rewound {
                        // Fetched before the rewind: it is read again from the last commit.
                        drained += 1;
                        if drained < DRAIN_MAX {
                            msg = messages.next().now_or_never().flatten();
                        }
                        continue;
                    }
                    match next {
                        Ok(m) => d.process(&m).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "consumer error");
                            d.signal.sleep(Duration::from_millis(100)).await;
                            break;
                        }
                    }
                    drained += 1;
                    if drained < DRAIN_MAX && d.fatal.is_none() {
                        msg = messages.next().now_or_never().flatten();
                    }
                }
                if failure.is_some() {
                    break;
                }
            }
        }
        if d.fatal.is_some() {
            break;
        }
    }
    drop(messages);
    let fatal = d.fatal.take();
    d.shutdown().await;
    match (failure, fatal) {
        (Some(e), _) => Err(e),
        (None, Some(why)) => Err(ServiceError::Fatal(why)),
        (None, None) => Ok(()),
    }
}

impl Driver {
    /// Executes `self.out` (commands of the record `msg`, or of the failed delivery `report`).
    async fn execute(
        &mut self,
        msg: Option<&BorrowedMessage<'_>>,
        report: Option<&(KafkaError, OwnedMessage, Option<Arc<Group>>)>,
    ) {
        let mut commands = std::mem::take(&mut self.out);
        for command in commands.drain(..) {
            match command {
                Command::Produce {
                    token,
                    output,
                    key,
                    payload,
                } => {
                    let topic = self.topic(output);
                    self.enqueue(&topic, Opaque::Token(token), &key, Some(&payload), None, None)
                        .await;
                }
                Command::DeadLetter {
                    token,
                    partition,
                    offset,
                    class,
                    reason,
                } => {
                    let now = Instant::now();
                    self.dead_letters
                        .emit(&self.shared.metrics, now, partition, offset, class, &reason);
                    match msg {
                        Some(msg) => self.send_dead_letter(token, msg, class, &reason).await,
                        None => {
                            tracing::error!(partition, offset, "dead letter without its record; not sent")
                        }
                    }
                }
                Command::Changelog {
                    token,
                    partition,
                    records,
                    arena,
                } => {
                    let topic = self.topic(Output::Changelog);
                    let group = Group::new(token, records.len());
                    for (customer, value) in records {
                        let payload = value.map(|r| &arena[r]);
                        self.enqueue(
                            &topic,
                            Opaque::Group(group.clone()),
                            customer.as_bytes(),
                            payload,
                            None,
                            Some(partition),
                        )
                        .await;
                    }
                }
                Command::Resend {
                    token,
                    without_payload,
                } => match report {
                    Some((_, failed, group)) => {
                        let mut headers = failed.headers().cloned();
                        if without_payload {
                            headers = Some(headers.unwrap_or_default().insert(Header {
                                key: "cx.error.payload",
                                value: Some("omitted: the record is too large for the dead-letter topic"),
                            }));
                        }
                        let payload = if without_payload { None } else { failed.payload() };
                        let (opaque, to) = match group {
                            Some(g) => (Opaque::Group(g.clone()), Some(failed.partition())),
                            None => (Opaque::Token(token), None),
                        };
                        let topic = failed.topic().to_string();
                        self.enqueue(
                            &topic,
                            opaque,
                            failed.key().unwrap_or_default(),
                            payload,
                            headers,
                            to,
                        )
                        .await;
                    }
                    None => tracing::error!("resend without its failed record"),
                },
                Command::Pause(d) => {
                    self.signal.sleep(d).await;
                }
                Command::Store {
                    source,
                    partition,
                    next,
                } => {
                    store(&*self.consumer, self.core.topic_of(source), partition, next);
                }
                // Only the commit tick asks for it; it commits once its commands are out.
                Command::CommitTransaction => self.commit_requested = true,
                Command::Fatal(why) => {
                    self.fatal.get_or_insert(why);
                }
            }
        }
        self.out = commands;
    }

    fn topic(&self, output: Output) -> String {
        self.core.runtime.lock().topic(output).to_string()
    }

    /// Hands one record to the producer, waiting while its queue is full (backpressure on the
    /// input). A record the client refuses at once is reported like a failed delivery, so the
    /// runtime's resend policy decides about it.
    async fn enqueue(
        &mut self,
        topic: &str,
        opaque: Opaque,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        partition: Option<i32>,
    ) {
        let (producer, reports) = self.core.link();
        let mut record = BaseRecord::with_opaque_to(topic, opaque).key(key);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    // Bounded by the producer's message timeout; a shutdown leaves the record
                    // unsent and its input offset uncommitted.
                    if !self.signal.sleep(Duration::from_millis(5)).await {
                        return;
                    }
                }
                Err((e, r)) => {
                    let failed = OwnedMessage::new(
                        r.payload.map(<[u8]>::to_vec),
                        r.key.map(<[u8]>::to_vec),
                        topic.to_string(),
                        rdkafka::Timestamp::NotAvailable,
                        r.partition.unwrap_or(-1),
                        -1,
                        r.headers,
                    );
                    let (token, group) = match r.delivery_opaque {
                        Opaque::Token(t) => (t, None),
                        Opaque::Group(g) => (g.token(), Some(g)),
                    };
                    reports.push(Delivery {
                        token,
                        result: Err((e, failed, group)),
                    });
                    return;
                }
            }
        }
    }

    async fn send_dead_letter(
        &mut self,
        token: usize,
        msg: &BorrowedMessage<'_>,
        class: &'static str,
        error: &str,
    ) {
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
        let topic = self.topic(Output::DeadLetters);
        self.enqueue(
            &topic,
            Opaque::Token(token),
            msg.key().unwrap_or_default(),
            msg.payload(),
            Some(headers),
            None,
        )
        .await;
    }

    /// Settles every delivery report in.
    async fn settle(&mut self) {
        let (_, reports) = self.core.link();
        let mut delivered = std::mem::take(&mut self.reports);
        reports.take(&mut delivered);
        let now = self.clock.at(Instant::now());
        for d in delivered.drain(..) {
            let result = match &d.result {
                Ok(()) => Ok(()),
                Err((e, _, _)) => Err(Failure {
                    class: kafka::classify(e),
                    error: e.to_string(),
                }),
            };
            self.core
                .runtime
                .lock()
                .delivered(d.token, result, now, &mut self.out);
            self.execute(None, d.result.as_ref().err()).await;
        }
        self.reports = delivered;
    }

    /// After a poll: commands a revoke left, and an exactly_once rewind (true if it rewound).
    async fn after_poll(&mut self) -> bool {
        self.core.runtime.lock().take_deferred(&mut self.out);
        if !self.out.is_empty() {
            self.execute(None, None).await;
        }
        let rewind = self.core.rewind.swap(false, Ordering::Relaxed);
        if rewind {
            self.shared
                .metrics
                .txn_aborts
                .with_label_values(&["revoke"])
                .inc();
            self.rewind("revoke").await;
        }
        rewind
    }

    async fn rebalance(&mut self, event: RebalanceEvent) -> Result<(), ServiceError> {
        match event {
            RebalanceEvent::Assigned(parts) => {
                let new: Vec<i32> = {
                    let rt = self.core.runtime.lock();
                    parts.iter().copied().filter(|p| !rt.is_assigned(*p)).collect()
                };
                self.assign(&new).await?;
            }
            RebalanceEvent::Revoked(parts) => {
                // The revoke handler settled and dropped their state inside the poll.
                for partition in parts {
                    self.core.runtime.lock().revoke(partition);
                    self.shared.set_engine(partition, None);
                    // Its lag is another instance's to report now (a stale series would alert).
                    let _ = self
                        .shared
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[&partition.to_string()]);
                }
            }
        }
        self.shared.refresh_state_gauges();
        Ok(())
    }

    /// Sets up newly assigned partitions: restores their state from the changelog (all of them
    /// in one pass) before any of their input is processed. A failed restore is tried again with
    /// backoff while the instance reports not ready, and stops the process after
    /// `state.restore_timeout`: processing on partial state would write over the good state.
    async fn assign(&mut self, partitions: &[i32]) -> Result<(), ServiceError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let restoring = self.shared.metrics.restoring_partitions.clone();
        restoring.add(partitions.len() as i64);
        let result = self.restore(partitions).await;
        restoring.sub(partitions.len() as i64);
        for (partition, engine, restored) in result? {
            self.shared.set_engine(partition, Some(engine.clone()));
            self.core.runtime.lock().assign(partition, engine, restored);
        }
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    async fn restore(
        &mut self,
        partitions: &[i32],
    ) -> Result<Vec<(i32, Arc<Engine>, Option<super::restore::RestoredOffsets>)>, ServiceError> {
        let fresh = |p: i32| (p, Arc::new(Engine::new(self.config.clone())), None);
        if !self.config.state.changelog {
            return Ok(partitions.iter().map(|&p| fresh(p)).collect());
        }
        let mut retry = super::retry::RetryPolicy::new(Instant::now(), self.config.state.restore_timeout);
        let mut todo: Vec<i32> = partitions.to_vec();
        let mut done = Vec::new();
        loop {
            let started = Instant::now();
            let engines: Vec<(i32, Arc<Engine>)> = todo
                .iter()
                .map(|&p| (p, Arc::new(Engine::new(self.config.clone()))))
                .collect();
            let targets: Vec<(i32, &Engine)> = engines.iter().map(|(p, e)| (*p, e.as_ref())).collect();
            let m = &self.shared.metrics;
            let results = tokio::task::block_in_place(|| {
                super::restore::restore_partitions(&self.config, &targets, &m.restored_records)
            });
            m.restore_seconds.observe(started.elapsed().as_secs_f64());
            let mut failed = Vec::new();
            let mut last_error = String::new();
            for ((partition, engine), result) in engines.into_iter().zip(results) {
                match result {
                    Ok(offsets) => {
                        tracing::info!(
                            partition,
                            customers = engine.customer_count(),
                            seconds = started.elapsed().as_secs_f64(),
                            "state restored"
                        );
                        done.push((partition, engine, Some(offsets)));
                    }
                    Err(e) => {
                        // The partial state is dropped with its engine: the next try starts over.
                        last_error = format!("partition {partition}: {e}");
                        failed.push(partition);
                    }
                }
            }
            if failed.is_empty() {
                return Ok(done);
            }
            match retry.next(Instant::now()) {
                Some(wait) => {
                    tracing::warn!(partitions = ?failed, error = %last_error, retry_in_ms = wait.as_millis() as u64, "state restore failed; not ready, trying again");
                    if !self.signal.sleep(wait).await {
                        return Err(ServiceError::Restore(format!(
                            "{last_error} (shutdown during restore)"
                        )));
                    }
                    todo = failed;
                }
                None => {
                    return Err(ServiceError::Restore(format!(
                        "{last_error}; gave up after state.restore_timeout ({})",
                        humantime::format_duration(self.config.state.restore_timeout)
                    )));
                }
            }
        }
    }

    async fn process(&mut self, msg: &BorrowedMessage<'_>) {
        let started = Instant::now();
        self.shared.busy(Some(started));
        self.process_in_hand(msg, started).await;
        self.shared.busy(None);
    }

    async fn process_in_hand(&mut self, msg: &BorrowedMessage<'_>, started: Instant) {
        let partition = msg.partition();
        let assigned = self.core.runtime.lock().is_assigned(partition);
        if !assigned {
            // Assigned before its event reached us, or dropped by an exactly_once rewind.
            if let Err(e) = self.assign(&[partition]).await {
                self.fatal.get_or_insert(e.to_string());
                return;
            }
        }
        if msg.topic() == self.core.action_topic {
            let decoded = match msg.payload() {
                None => Err(Rejected {
                    class: "framing",
                    reason: "record has no value".into(),
                }),
                Some(payload) => self.decoder.decode_action(payload).map_err(|e| match e {
                    InputError::Data(d) => Rejected {
                        class: d.class(),
                        reason: d.to_string(),
                    },
                    other => Rejected {
                        class: "framing",
                        reason: other.to_string(),
                    },
                }),
            };
            let rec = Record {
                source: Source::Actions,
                partition,
                offset: msg.offset(),
                timestamp: msg.timestamp().to_millis(),
            };
            let now = self.clock.at(started);
            self.core.runtime.lock().action(rec, decoded, now, &mut self.out);
            self.execute(Some(msg), None).await;
            self.processed += 1;
            return;
        }
        let decoded = match self.decode(msg).await {
            Decoded::Ready(d) => d,
            // Left unfinished: the record is read again after the restart.
            Decoded::Stopped => return,
            Decoded::Fatal(why) => {
                self.fatal.get_or_insert(why);
                return;
            }
        };
        let rec = Record {
            source: Source::Touchpoints,
            partition,
            offset: msg.offset(),
            timestamp: msg.timestamp().to_millis(),
        };
        let now = self.clock.at(started);
        self.core.runtime.lock().record(rec, decoded, now, &mut self.out);
        self.execute(Some(msg), None).await;
        self.processed += 1;
        self.shared
            .metrics
            .processing_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Decodes a record, fetching a writer schema from the registry on first sight of its id.
    /// A registry outage is retried with backoff (observing shutdown); refused credentials stop
    /// the process.
    async fn decode(&mut self, msg: &BorrowedMessage<'_>) -> Decoded {
        let Some(payload) = msg.payload() else {
            return Decoded::Ready(Err(Rejected {
                class: "framing",
                reason: "record has no value".into(),
            }));
        };
        let mut backoff = super::retry::Backoff::default();
        loop {
            let result = {
                let rt = self.core.runtime.lock();
                let engine = rt.engine(msg.partition());
                let sensitive = |k: &str| engine.as_ref().is_some_and(|e| e.rules().is_sensitive(k));
                self.decoder.decode(payload, &sensitive)
            };
            let error = match result {
                Ok(tp) => return Decoded::Ready(Ok(tp)),
                Err(InputError::Data(d)) => {
                    return Decoded::Ready(Err(Rejected {
                        class: d.class(),
                        reason: d.to_string(),
                    }));
                }
                Err(InputError::Unresolved(id)) => match self.decoder.resolve(id).await {
                    Ok(()) => continue,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            match error {
                InputError::Fatal(e) => return Decoded::Fatal(e.to_string()),
                InputError::Retry(e) => {
                    let wait = backoff.next_wait();
                    if self
                        .registry_log
                        .admit("registry", Instant::now(), registry_summary)
                        == Logged::Full
                    {
                        tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, retry_in_ms = wait.as_millis() as u64, "cannot decode yet: schema registry unavailable; retrying");
                    }
                    if !self.signal.sleep(wait).await {
                        return Decoded::Stopped;
                    }
                }
                // Resolved to a cached answer: decode again.
                _ => {}
            }
        }
    }

    /// Once a second: the wall clock re-based, gauges, dead-letter summaries, liveness.
    fn on_second(&mut self) {
        self.clock = WallClock::new();
        self.shared.refresh_state_gauges();
        self.dead_letters.flush(Instant::now());
        self.registry_log.flush(Instant::now(), registry_summary);
        self.core.runtime.lock().flush_logs(Instant::now());
        if self.processed != self.progress_seen {
            self.progress_seen = self.processed;
            self.shared.note_progress(Instant::now());
        }
    }

    /// Lets every partition's timers follow the wall clock once its input is idle.
    async fn tick_idle(&mut self) {
        let now = self.clock.at(Instant::now());
        let consumer = self.consumer.clone();
        let topic = self.config.kafka.input_topic.clone();
        // Not idle while records are known to wait (a pause with a backlog): the local high
        // watermark of the last fetch is past what was consumed.
        let waiting = |partition: i32, next: i64| {
            kafka::cached_high_watermark(&*consumer, &topic, partition).is_some_and(|high| high > next)
        };
        self.core.runtime.lock().tick(now, &waiting, &mut self.out);
        self.execute(None, None).await;
    }

    async fn commit_tick(&mut self) {
        self.core.runtime.lock().commit_tick(&mut self.out);
        self.execute(None, None).await;
        if std::mem::take(&mut self.commit_requested) {
            self.commit_transaction().await;
        }
    }

    /// Settles deliveries until none is outstanding, or `deadline` passes, or shutdown.
    async fn await_deliveries(&mut self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            if self.core.runtime.lock().outstanding() == 0 {
                return true;
            }
            let reports = self.core.link().1;
            tokio::select! {
                _ = reports.wait() => self.settle().await,
                _ = tokio::time::sleep_until(until) => return false,
            }
            if self.fatal.is_some() {
                return false;
            }
        }
    }

    /// exactly_once: waits for the open transaction's sends, adds the input offsets of every
    /// finished record, commits, and opens the next transaction. Any failure aborts and
    /// rewinds: state and input position go back to the last committed transaction.
    async fn commit_transaction(&mut self) {
        // Every open batch goes into this transaction: its records' outputs are in it already,
        // and their offsets are committable only once their state changes are written.
        self.core.runtime.lock().flush_batches(&mut self.out);
        self.execute(None, None).await;
        let settled = self.await_deliveries(self.config.service.shutdown_timeout).await;
        let (settle, positions) = {
            let rt = self.core.runtime.lock();
            (rt.settle(), rt.positions())
        };
        let settle = if settled {
            settle
        } else {
            Settle::Abort("deliveries unanswered")
        };
        match settle {
            Settle::Nothing => {}
            Settle::Abort(reason) => self.recover(reason, false).await,
            Settle::Commit => {
                let Some(group) = self.consumer.group_metadata() else {
                    self.recover("no consumer group metadata", false).await;
                    return;
                };
                let producer = self.core.link().0;
                let positions: Vec<(&str, i32, i64)> = positions
                    .iter()
                    .map(|&(source, partition, next)| (self.core.topic_of(source), partition, next))
                    .collect();
                let result = tokio::task::block_in_place(|| {
                    committer::commit_transaction(&producer, &group, &positions)
                });
                match result {
                    Ok(()) => {
                        self.core.runtime.lock().committed();
                        self.shared.metrics.txn_commits.inc();
                    }
                    Err(e) => {
                        let fatal = committer::is_fatal(&e);
                        tracing::warn!(error = %e, fatal, "transaction commit failed");
                        self.recover(if fatal { "fatal" } else { "commit_failed" }, fatal)
                            .await;
                    }
                }
            }
        }
    }

    /// Aborts the open transaction (or replaces a fenced producer), forgets every partition's
    /// state and rewinds the input to the last committed offsets: the next records restore state
    /// from the committed changelog and are processed again, as if the transaction never ran.
    async fn recover(&mut self, reason: &'static str, fatal: bool) {
        self.shared.metrics.txn_aborts.with_label_values(&[reason]).inc();
        let producer = self.core.link().0;
        let aborted = !fatal && tokio::task::block_in_place(|| committer::abort(&producer));
        let mut backoff = super::retry::Backoff::default();
        loop {
            if !aborted {
                match kafka::create_producer(&self.config) {
                    Ok((p, reports)) => {
                        *self.core.link.write() = Link {
                            producer: Arc::new(p),
                            reports,
                        };
                    }
                    Err(e) => tracing::error!(error = %e, "cannot recreate the transactional producer"),
                }
            }
            let producer = self.core.link().0;
            let started = tokio::task::block_in_place(|| {
                if aborted {
                    producer.begin_transaction()
                } else {
                    committer::start_transactions(&producer)
                }
            });
            match started {
                Ok(()) => break,
                Err(e) => {
                    let wait = backoff.next_wait();
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot start a transaction; retrying");
                    if !self.signal.sleep(wait).await {
                        return;
                    }
                }
            }
        }
        self.rewind(reason).await;
    }

    /// Drops every partition's state and seeks the input back to the last commit.
    async fn rewind(&mut self, reason: &'static str) {
        let partitions = self.core.runtime.lock().reset();
        for partition in &partitions {
            self.shared.set_engine(*partition, None);
        }
        let consumer = self.consumer.clone();
        tokio::task::block_in_place(|| committer::rewind(&*consumer));
        tracing::warn!(reason, partitions = ?partitions, "transaction aborted; state and input rewound to the last commit");
    }

    async fn shutdown(mut self) {
        let deadline = self.config.service.shutdown_timeout;
        let eos = self.core.eos;
        if !eos && self.fatal.is_none() {
            self.core.runtime.lock().flush_batches(&mut self.out);
            self.execute(None, None).await;
        }
        tracing::info!(
            outstanding = self.core.runtime.lock().outstanding(),
            "shutting down: draining deliveries"
        );
        if !self.await_deliveries(deadline).await {
            tracing::error!(
                outstanding = self.core.runtime.lock().outstanding(),
                "shutdown deadline passed with deliveries unacknowledged; their records will be re-processed"
            );
        }
        if eos {
            if self.fatal.is_none() {
                self.commit_transaction().await;
            }
            self.consumer.unsubscribe();
            return;
        }
        let consumer = self.consumer.clone();
        tokio::task::block_in_place(|| committer::commit_stored(&*consumer, "shutdown"));
        self.consumer.unsubscribe();
        // Dropping the consumer closes it: it leaves the group.
    }
}
