//! The consume → decode → engine → produce loop, with per-partition offset tracking so an offset
//! is stored only once everything before it is finished and acknowledged.

use super::codecs::{InputDecoder, InputError, OutputEncoder};
use super::kafka::{self, Delivery, Group, Opaque, RebalanceEvent, SentinelContext, SentinelProducer};
use super::registry::Backoff;
use super::restore::RestoredOffsets;
use super::{ServiceError, Shared};
use crate::config::Config;
use crate::engine::{Effect, Engine, Stream};
use crate::model::{AlertStatus, Millis};
use futures::{FutureExt, StreamExt};
use prometheus::IntCounter;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// Records processed per wake-up of the loop at most, before deliveries, ticks and shutdown get
/// their turn (about a millisecond of work).
const DRAIN_MAX: usize = 256;

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Wall-clock milliseconds from a monotonic reading the pipeline takes anyway: one clock read
/// per record instead of two. Re-based every second, so a stepped wall clock is followed
/// within a second.
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

    /// The wall-clock time at `now`, a reading taken after the last re-base.
    fn at(&self, now: Instant) -> Millis {
        self.ms + now.saturating_duration_since(self.at).as_millis() as Millis
    }
}

/// Outstanding holds per input offset, in offset order. Records arrive in offset order, so a
/// new hold is almost always at the back and a finished prefix leaves from the front: a deque
/// with binary search, no tree node per record.
#[derive(Default)]
struct Holds {
    /// (offset, holds); entries that reach zero inside the deque stay until they are at the front.
    entries: std::collections::VecDeque<(i64, u32)>,
}

impl Holds {
    fn hold(&mut self, offset: i64) {
        match self.entries.back_mut() {
            Some((o, n)) if *o == offset => *n += 1,
            Some((o, _)) if *o > offset => match self.entries.binary_search_by_key(&offset, |e| e.0) {
                Ok(i) => self.entries[i].1 += 1,
                Err(i) => self.entries.insert(i, (offset, 1)),
            },
            _ => self.entries.push_back((offset, 1)),
        }
    }

    fn release(&mut self, offset: i64) {
        // Most releases are of the oldest offset: no search for those.
        let i = match self.entries.front() {
            Some(e) if e.0 == offset => Some(0),
            _ => self.entries.binary_search_by_key(&offset, |e| e.0).ok(),
        };
        if let Some(i) = i {
            let n = &mut self.entries[i].1;
            *n = n.saturating_sub(1);
        }
        while self.entries.front().is_some_and(|e| e.1 == 0) {
            self.entries.pop_front();
        }
    }

    /// The lowest offset still held.
    fn first(&self) -> Option<i64> {
        self.entries.front().map(|e| e.0)
    }

    /// Offsets still held.
    fn unfinished(&self) -> usize {
        self.entries.iter().filter(|e| e.1 > 0).count()
    }
}

/// One assigned input partition.
struct Part {
    engine: Arc<Engine>,
    stream: Stream,
    /// Unfinished records: offset → outstanding holds (processing, each unacknowledged send).
    pending: Holds,
    /// Offset after the highest consumed.
    next: i64,
    /// Offset last stored for commit (the next to consume).
    stored: i64,
    consumed: IntCounter,
    /// Restored customers → the last input offset their restored state includes. Records at or
    /// below it were applied before the restart and are skipped. Dropped once passed.
    restored_offsets: HashMap<Arc<str>, i64>,
    restored_upto: i64,
    epoch: u64,
    /// Changelog batches in input order: written only after the alerts they follow are acknowledged.
    batches: std::collections::VecDeque<Batch>,
    next_batch: u64,
}

/// The state changes of the records pushed while it was open (Kafka Streams' record cache, one
/// per partition): written only after every alert those records caused is acknowledged, so the
/// changelog never runs ahead of the alerts (a restored state never hides an unsent alert). A
/// customer changed many times in one batch is written once.
struct Batch {
    id: u64,
    /// Sealed on the commit tick, when it grows to [`MAX_BATCH_CUSTOMERS`], or on shutdown; only
    /// the newest batch of a partition is ever open.
    sealed: bool,
    opened: Instant,
    alerts_unacked: usize,
    /// Sent, and the group report for its changelog records not in yet.
    changelog_pending: bool,
    sent: bool,
    /// While open: changed customers → the last input offset applied to them (-1 for changes no
    /// record made: a timer, an eviction, shedding).
    staged: HashMap<Arc<str>, i64, ahash::RandomState>,
    /// Filled when sealed: (customer, its state's bytes in `arena`, which include the last input
    /// offset applied to it, or None for a tombstone).
    records: Vec<(Arc<str>, Option<std::ops::Range<usize>>)>,
    /// The encoded states of `records`, back to back: one allocation per batch, not per record.
    arena: Vec<u8>,
    /// Applied records that stay unfinished until this batch's changelog is acknowledged.
    holders: Vec<i64>,
}

/// A batch is sealed once it holds this many customers even before the commit tick, to bound
/// the memory and the burst of one flush.
const MAX_BATCH_CUSTOMERS: usize = 10_000;

impl Part {
    fn hold(&mut self, offset: i64) {
        self.pending.hold(offset);
    }

    fn release(&mut self, offset: i64) {
        self.pending.release(offset);
    }

    /// The first offset not yet finished: everything below it may be committed.
    fn committable(&self) -> i64 {
        self.pending.first().unwrap_or(self.next)
    }

    /// The id of the open batch, opening one if the newest is sealed.
    fn open_batch(&mut self, now: Instant) -> u64 {
        match self.batches.back() {
            Some(b) if !b.sealed => b.id,
            _ => {
                let id = self.next_batch;
                self.next_batch += 1;
                self.batches.push_back(Batch {
                    id,
                    sealed: false,
                    opened: now,
                    alerts_unacked: 0,
                    changelog_pending: false,
                    sent: false,
                    staged: HashMap::default(),
                    records: Vec::new(),
                    arena: Vec::new(),
                    holders: Vec::new(),
                });
                id
            }
        }
    }

    /// Seals the open batch: the state of each customer it changed, as of now, becomes its
    /// changelog record (a tombstone if the customer is gone).
    fn seal(&mut self) {
        let Some(b) = self.batches.back_mut().filter(|b| !b.sealed) else {
            return;
        };
        b.sealed = true;
        let mut arena = Vec::new();
        b.records = b
            .staged
            .drain()
            .map(|(customer, offset)| {
                let start = arena.len();
                let stored = self.engine.snapshot(&customer, offset, &mut arena);
                let value = stored.then_some(start..arena.len());
                (customer, value)
            })
            .collect();
        b.arena = arena;
        b.staged = HashMap::default();
    }

    /// Whether the open batch is due to be sealed.
    fn seal_due(&self, now: Instant, interval: Duration) -> bool {
        self.batches.back().is_some_and(|b| {
            !b.sealed && (b.staged.len() >= MAX_BATCH_CUSTOMERS || now.duration_since(b.opened) >= interval)
        })
    }
}

/// What a delivery was for, to account for it when the broker answers.
enum Sent {
    Alert {
        rule: String,
        severity: &'static str,
        status: AlertStatus,
        event_time: Millis,
        batch: Option<u64>,
    },
    DeadLetter,
    Changelog {
        batch: u64,
        records: usize,
    },
}

/// One record to produce (its topic follows from what it is, [`Sent`]).
struct Out<'a> {
    key: &'a [u8],
    payload: Option<&'a [u8]>,
    /// None: no header list at all (librdkafka allocates one per record that has it).
    headers: Option<OwnedHeaders>,
    /// Explicit partition (the changelog is partitioned like the input); else the partitioner's.
    partition: Option<i32>,
}

/// The output topics' names, shared by every send without a copy.
struct Topics {
    alerts: Arc<str>,
    dead_letters: Arc<str>,
    changelog: Arc<str>,
}

impl Topics {
    fn of(&self, sent: &Sent) -> Arc<str> {
        match sent {
            Sent::Alert { .. } => self.alerts.clone(),
            Sent::DeadLetter => self.dead_letters.clone(),
            Sent::Changelog { .. } => self.changelog.clone(),
        }
    }
}

/// A send the broker has not answered yet, by token.
struct Outstanding {
    partition: i32,
    /// Generation of the partition's state the send belongs to: a partition revoked and assigned
    /// again gets a new one, and late reports from the old one must not touch the new.
    epoch: u64,
    /// The input record it belongs to (alerts, dead letters); a changelog record's input records
    /// are held by its batch instead.
    offset: Option<i64>,
    sent: Sent,
}

/// Wait between re-send bursts after failed deliveries (the broker is likely down).
const RESEND_BACKOFF: Duration = Duration::from_millis(500);

struct Pipeline {
    config: Config,
    shared: Arc<Shared>,
    consumer: Arc<StreamConsumer<SentinelContext>>,
    producer: Arc<SentinelProducer>,
    deliveries: UnboundedReceiver<Delivery>,
    /// Sends not yet answered, by token.
    outstanding: HashMap<usize, Outstanding, ahash::RandomState>,
    next_token: usize,
    last_resend: Option<Instant>,
    topics: Topics,
    decoder: InputDecoder,
    encoder: OutputEncoder,
    parts: HashMap<i32, Part>,
    effects: Vec<Effect>,
    buf: Vec<u8>,
    /// Wall-clock time for `detected_at`, re-based on the gauge tick.
    clock: WallClock,
    /// exactly_once: alerts, changelog and offsets go out in transactions.
    eos: bool,
    /// exactly_once: something was sent since the last commit.
    dirty: bool,
    /// exactly_once: a delivery in the open transaction failed; it must abort.
    txn_failed: bool,
    next_epoch: u64,
    /// Counts and logs dead letters, one line per reason per window.
    dead_letters: super::events::DeadLetters,
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
        producer: Mutex::new(None),
    };
    let consumer: StreamConsumer<SentinelContext> =
        kafka::consumer_config(&config).create_with_context(context)?;
    let (producer, deliveries) = kafka::create_producer(&config)?;
    let producer = Arc::new(producer);
    *consumer.context().producer.lock().expect("not poisoned") = Some(producer.clone());
    let k = &config.kafka;
    let mut topics = vec![
        ("kafka.input_topic", k.input_topic.as_str()),
        ("kafka.alert_topic", k.alert_topic.as_str()),
        ("kafka.dlq_topic", k.dlq_topic.as_str()),
    ];
    if config.state.changelog {
        topics.push(("state.changelog_topic", config.state.changelog_topic.as_str()));
    }
    let counts = kafka::check_topics(&consumer, &k.brokers, &topics)?;
    if config.state.changelog && counts[3] != counts[0] {
        return Err(ServiceError::Topic(format!(
            "state.changelog_topic '{}' has {} partitions but kafka.input_topic '{}' has {}: they must match",
            config.state.changelog_topic, counts[3], k.input_topic, counts[0]
        )));
    }
    let decoder = InputDecoder::new(&config)?;
    // Registering the alert schema may wait out a registry outage (bounded); a stop request ends
    // the wait.
    tokio::pin!(shutdown);
    let encoder = tokio::select! {
        encoder = OutputEncoder::new(&config) => encoder?,
        _ = &mut shutdown => return Ok(()),
    };
    consumer.subscribe(&[k.input_topic.as_str()])?;
    tracing::info!(topic = %k.input_topic, group = %k.group_id, brokers = %k.brokers, "consuming");

    let consumer = Arc::new(consumer);
    let topics = Topics {
        alerts: Arc::from(config.kafka.alert_topic.as_str()),
        dead_letters: Arc::from(config.kafka.dlq_topic.as_str()),
        changelog: Arc::from(config.state.changelog_topic.as_str()),
    };
    let mut p = Pipeline {
        config,
        shared,
        consumer: consumer.clone(),
        topics,
        producer,
        deliveries,
        outstanding: HashMap::default(),
        next_token: 0,
        last_resend: None,
        decoder,
        encoder,
        parts: HashMap::new(),
        effects: Vec::new(),
        buf: Vec::new(),
        clock: WallClock::new(),
        eos: false,
        dirty: false,
        txn_failed: false,
        next_epoch: 0,
        dead_letters: super::events::DeadLetters::default(),
    };
    if p.config.processing.guarantee == crate::config::Guarantee::ExactlyOnce {
        p.eos = true;
        p.start_transactions()?;
    }
    // exactly_once commits a transaction on this tick; the changelog seals its open batches on it.
    let mut commits = tokio::time::interval(p.config.processing.commit_interval);
    commits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ticking = p.eos || p.config.state.changelog;
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    // Idle partitions follow the wall clock (engine.idle_timeout): checked four times per timeout,
    // so a deadline on a quiet partition fires within about 1.25 timeouts of passing.
    let mut idle = tokio::time::interval((p.config.engine.idle_timeout / 4).max(Duration::from_millis(10)));
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One stream for the whole loop: each `recv()` would register and unregister a waker slot
    // under the consumer's mutex.
    let mut messages = consumer.stream();
    let mut fatal = None;
    'running: loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(event) = rebalances.recv() => p.rebalance(event),
            Some(d) = p.deliveries.recv() => {
                p.delivered(d).await;
                // Settle every report already in: cheaper than a trip through select! each.
                while let Ok(d) = p.deliveries.try_recv() {
                    p.delivered(d).await;
                }
            }
            _ = gauges.tick() => {
                p.clock = WallClock::new();
                p.shared.refresh_state_gauges();
                p.dead_letters.flush(Instant::now());
            }
            _ = idle.tick() => p.tick_idle().await,
            _ = commits.tick(), if ticking => {
                if p.eos {
                    p.commit_transaction().await;
                } else {
                    p.flush_batches().await;
                }
            }
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
                        p.rebalance(event);
                    }
                    match next {
                        Ok(m) => {
                            if let Err(e) = p.process(&m).await {
                                fatal = Some(e);
                                break 'running;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "consumer error");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            break;
                        }
                    }
                    drained += 1;
                    if drained < DRAIN_MAX {
                        msg = messages.next().now_or_never().flatten();
                    }
                }
            }
        }
    }
    p.shutdown().await;
    fatal.map_or(Ok(()), Err)
}

impl Pipeline {
    fn part(&mut self, partition: i32) -> &mut Part {
        if !self.parts.contains_key(&partition) {
            self.add_parts(&[partition]);
        }
        self.parts.get_mut(&partition).expect("just inserted")
    }

    /// Sets up newly assigned partitions: restores their state from the changelog (all of them
    /// in one pass) before any of their input is processed.
    fn add_parts(&mut self, partitions: &[i32]) {
        let engines: Vec<(i32, Arc<Engine>)> = partitions
            .iter()
            .map(|&p| (p, Arc::new(Engine::new(self.config.clone()))))
            .collect();
        let mut restored: Vec<Option<RestoredOffsets>> = vec![None; engines.len()];
        if self.config.state.changelog && !engines.is_empty() {
            let started = Instant::now();
            let m = &self.shared.metrics;
            let targets: Vec<(i32, &Engine)> = engines.iter().map(|(p, e)| (*p, e.as_ref())).collect();
            let results = tokio::task::block_in_place(|| {
                super::restore::restore_partitions(&self.config, &targets, &m.restored_records)
            });
            for (i, result) in results.into_iter().enumerate() {
                let (partition, engine) = &engines[i];
                match result {
                    Ok(offsets) => {
                        tracing::info!(
                            partition,
                            customers = engine.customer_count(),
                            seconds = started.elapsed().as_secs_f64(),
                            "state restored"
                        );
                        restored[i] = Some(offsets);
                    }
                    Err(e) => tracing::error!(partition, error = %e, "state restore failed; starting empty"),
                }
            }
            m.restore_seconds.observe(started.elapsed().as_secs_f64());
        }
        for ((partition, engine), restored) in engines.into_iter().zip(restored) {
            let mut stream = Stream::new(engine.clone());
            if restored.is_some() {
                stream.after_restore();
            }
            let restored_offsets = restored.unwrap_or_default();
            let restored_upto = restored_offsets.values().copied().max().unwrap_or(-1);
            self.shared.set_engine(partition, Some(engine.clone()));
            let consumed = self
                .shared
                .metrics
                .records_consumed
                .with_label_values(&[&partition.to_string()]);
            self.next_epoch += 1;
            self.parts.insert(
                partition,
                Part {
                    stream,
                    engine,
                    pending: Holds::default(),
                    next: 0,
                    stored: 0,
                    consumed,
                    restored_offsets,
                    restored_upto,
                    batches: Default::default(),
                    next_batch: 0,
                    epoch: self.next_epoch,
                },
            );
        }
    }

    fn rebalance(&mut self, event: RebalanceEvent) {
        match event {
            RebalanceEvent::Assigned(parts) => {
                // Not ready until every newly assigned partition's state is restored.
                let restoring = &self.shared.metrics.restoring_partitions;
                restoring.add(parts.len() as i64);
                let new: Vec<i32> = parts
                    .iter()
                    .copied()
                    .filter(|p| !self.parts.contains_key(p))
                    .collect();
                self.add_parts(&new);
                self.shared.metrics.restoring_partitions.sub(parts.len() as i64);
            }
            RebalanceEvent::Revoked(parts) => {
                for partition in parts {
                    if let Some(part) = self.parts.remove(&partition) {
                        tracing::info!(
                            partition,
                            customers = part.engine.customer_count(),
                            unfinished = part.pending.unfinished(),
                            stored = part.stored,
                            next = part.next,
                            "dropping revoked partition's state"
                        );
                    }
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
    }

    /// Fails only when the service must stop (the schema registry refused our credentials); the
    /// record is then left unfinished, so its offset is not committed.
    async fn process(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), ServiceError> {
        let started = Instant::now();
        self.dirty = true;
        let partition = msg.partition();
        let offset = msg.offset();
        let part = self.part(partition);
        part.consumed.inc();
        part.hold(offset);
        if part.next == 0 {
            // The first record since assignment: where the committed offset put us.
            part.stored = offset;
            tracing::info!(partition, offset, "resuming partition");
        }
        part.next = part.next.max(offset + 1);

        let mut backoff = Backoff::default();
        let mut warned: Option<Instant> = None;
        let decoded = loop {
            let engine = self.parts[&partition].engine.clone();
            let sensitive = |k: &str| engine.rules().is_sensitive(k);
            let result = match msg.payload() {
                None => Err(InputError::Data(crate::codec::DecodeError::Framing(
                    "record has no value".into(),
                ))),
                Some(payload) => self.decoder.decode(payload, &sensitive),
            };
            // An unresolved schema id costs one registry request, then the record is decoded again.
            let retry = match result {
                Err(InputError::Unresolved(id)) => match self.decoder.resolve(id).await {
                    Ok(()) => continue,
                    Err(e) => e,
                },
                Err(e) => e,
                Ok(tp) => break Ok(tp),
            };
            let InputError::Retry(e) = retry else {
                break Err(retry);
            };
            // The partition waits for the registry; one warning per 10 s at most.
            let wait = backoff.next();
            if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                warned = Some(Instant::now());
                tracing::warn!(partition, offset, error = %e, retry_in = ?wait, "cannot decode yet: the schema registry is unavailable");
            }
            tokio::time::sleep(wait).await;
        };
        match decoded {
            Ok(tp) => {
                let part = self.parts.get_mut(&partition).expect("part exists");
                if !part.restored_offsets.is_empty() {
                    if offset > part.restored_upto {
                        part.restored_offsets = HashMap::new();
                    } else if part
                        .restored_offsets
                        .get(tp.customer_id.as_str())
                        .is_some_and(|&o| offset <= o)
                    {
                        // Applied before the restart: its state change is in the restored state.
                        self.shared.metrics.duplicate_records.inc();
                        self.finish(partition, offset);
                        self.shared
                            .metrics
                            .processing_seconds
                            .observe(started.elapsed().as_secs_f64());
                        return Ok(());
                    }
                }
                let mut effects = std::mem::take(&mut self.effects);
                let now = self.clock.at(started);
                // A wrong clock is judged against when the record was written, not when we read it
                // (a backlog is not a wrong clock).
                let arrival = msg.timestamp().to_millis().unwrap_or(now);
                part.stream.push(tp, offset as u64, arrival, now, &mut effects);
                // The hold taken above stays until the record is applied (`Effect::Applied`)
                // and, with the changelog on, its state change is acknowledged there.
                let batch = self.config.state.changelog.then(|| part.open_batch(started));
                for effect in effects.drain(..) {
                    self.apply_effect(partition, Some(msg), effect, batch).await;
                }
                self.effects = effects;
                self.enforce_cap(partition, batch);
                if batch.is_some() {
                    let interval = self.config.processing.commit_interval;
                    let part = self.parts.get_mut(&partition).expect("part exists");
                    if part.seal_due(started, interval) {
                        part.seal();
                        self.batch_progress(partition).await;
                    }
                }
            }
            Err(InputError::Fatal(e)) => return Err(e.into()),
            Err(e) => {
                let class = match &e {
                    InputError::Data(d) => d.class(),
                    // The loop above resolves and retries these; they do not get here.
                    InputError::Unresolved(_) | InputError::Retry(_) | InputError::Fatal(_) => "retry",
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
        Ok(())
    }

    /// Lets every partition's event-time clock follow the wall clock once its input is idle, and
    /// publishes the timer alerts (SLA escalations, expiries) that fall due.
    async fn tick_idle(&mut self) {
        let started = Instant::now();
        let now = self.clock.at(started);
        let partitions: Vec<i32> = self.parts.keys().copied().collect();
        for partition in partitions {
            let part = &self.parts[&partition];
            // Not idle while records are known to wait (a pause with a backlog): the local high
            // watermark of the last fetch is past what was consumed.
            let waiting = part.next > 0
                && kafka::cached_high_watermark(&*self.consumer, &self.config.kafka.input_topic, partition)
                    .is_some_and(|high| high > part.next);
            if waiting {
                continue;
            }
            let mut effects = std::mem::take(&mut self.effects);
            let batch = {
                let part = self.parts.get_mut(&partition).expect("listed above");
                part.stream.tick(now, &mut effects);
                (!effects.is_empty() && self.config.state.changelog).then(|| part.open_batch(started))
            };
            // exactly_once: the open transaction now holds these alerts and must commit on the
            // next tick even if no record arrives.
            self.dirty |= !effects.is_empty();
            for effect in effects.drain(..) {
                self.apply_effect(partition, None, effect, batch).await;
            }
            self.effects = effects;
        }
    }

    /// Over `state.max_customers`: sheds 1% of this partition's customers (at least the excess
    /// up to that), least recently active first, and writes their tombstones.
    fn enforce_cap(&mut self, partition: i32, batch: Option<u64>) {
        let cap = self.config.state.max_customers;
        let held = self.shared.customers.load(std::sync::atomic::Ordering::Relaxed);
        if cap == 0 || held <= cap {
            return;
        }
        let Some(engine) = self.parts.get(&partition).map(|p| p.engine.clone()) else {
            return;
        };
        let count = (engine.customer_count() / 100)
            .max(1)
            .min(held - cap + engine.customer_count() / 100);
        let keys = engine.shed(count);
        self.shared
            .customers
            .fetch_sub(keys.len().min(held), std::sync::atomic::Ordering::Relaxed);
        self.shared.metrics.shed.inc_by(keys.len() as u64);
        tracing::warn!(
            partition,
            shed = keys.len(),
            held,
            cap,
            "customer cap reached: dropped the least recently active customers without an open case"
        );
        for key in keys {
            self.stage(partition, batch, key, -1);
        }
    }

    /// The batch this push's state changes go to (changelog on).
    fn batch_mut(&mut self, partition: i32, batch: Option<u64>) -> Option<&mut Batch> {
        let id = batch?;
        self.parts
            .get_mut(&partition)?
            .batches
            .iter_mut()
            .find(|b| b.id == id)
    }

    /// Marks `customer` as changed in the open batch: its state (or removal) is written when the
    /// batch is sealed.
    fn stage(&mut self, partition: i32, batch: Option<u64>, customer: Arc<str>, offset: i64) {
        if let Some(b) = self.batch_mut(partition, batch) {
            let last = b.staged.entry(customer).or_insert(offset);
            *last = (*last).max(offset);
        }
    }

    /// Seals every open batch and sends what may be sent: on the commit tick, before a
    /// transaction commits, and on shutdown.
    async fn flush_batches(&mut self) {
        let partitions: Vec<i32> = self.parts.keys().copied().collect();
        for partition in partitions {
            if let Some(part) = self.parts.get_mut(&partition) {
                part.seal();
            }
            self.batch_progress(partition).await;
        }
    }

    /// Carries out one effect of the record `msg` of `partition`, or of a tick (`msg` is `None`:
    /// only timer alerts and evictions come from a tick).
    async fn apply_effect(
        &mut self,
        partition: i32,
        msg: Option<&BorrowedMessage<'_>>,
        effect: Effect,
        batch: Option<u64>,
    ) {
        match effect {
            Effect::Alert { alert, seq } => {
                if seq.is_none() {
                    // A timer changed this customer's case: that change goes to the changelog too.
                    self.stage(partition, batch, Arc::from(alert.customer_id.as_str()), -1);
                }
                if let Some(b) = self.batch_mut(partition, batch) {
                    b.alerts_unacked += 1;
                }
                if alert.status == AlertStatus::Withdrawn {
                    self.shared
                        .metrics
                        .alert_corrections
                        .with_label_values(&[alert.rule.as_str()])
                        .inc();
                }
                // A timer alert belongs to the record whose event time fired it. One fired by a
                // tick belongs to no record: its case change reaches the changelog only after the
                // alert is acknowledged (the batch waits for it), so a crash before that fires it
                // again after the restore.
                let owner = seq.map(|s| s as i64).or(msg.map(|m| m.offset()));
                self.buf.clear();
                self.encoder.encode(&alert, &mut self.buf);
                let sent = Sent::Alert {
                    rule: alert.rule.clone(),
                    severity: alert.severity.as_str(),
                    status: alert.status,
                    event_time: alert.event_time,
                    batch,
                };
                let payload = std::mem::take(&mut self.buf);
                let out = Out {
                    key: alert.customer_id.as_bytes(),
                    payload: Some(&payload),
                    headers: None,
                    partition: None,
                };
                self.send(partition, owner, sent, out).await;
                self.buf = payload;
            }
            Effect::Applied { seq, customer } => {
                if batch.is_some() {
                    self.stage(partition, batch, customer, seq as i64);
                    if let Some(b) = self.batch_mut(partition, batch) {
                        // Finished once its state change is in the changelog.
                        b.holders.push(seq as i64);
                    }
                } else {
                    self.finish(partition, seq as i64);
                }
            }
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
                if let Some(msg) = msg {
                    self.dead_letter(msg, "late", &why).await;
                }
                self.finish(partition, seq as i64);
            }
            Effect::Future { seq, event, ahead_ms } => {
                self.shared.metrics.future_records.inc();
                let why = format!(
                    "future: event {} is stamped {ahead_ms} ms ahead of its record's timestamp (max clock skew {})",
                    event.event_id,
                    humantime::format_duration(self.config.engine.max_clock_skew)
                );
                if let Some(msg) = msg {
                    self.dead_letter(msg, "future", &why).await;
                }
                self.finish(partition, seq as i64);
            }
            Effect::Evicted { keys } => {
                self.shared.metrics.evictions.inc_by(keys.len() as u64);
                for key in keys {
                    self.stage(partition, batch, key, -1);
                }
            }
        }
    }

    async fn dead_letter(&mut self, msg: &BorrowedMessage<'_>, class: &'static str, error: &str) {
        let (metrics, now) = (&self.shared.metrics, Instant::now());
        self.dead_letters
            .emit(metrics, now, msg.partition(), msg.offset(), class, error);
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
        let out = Out {
            key: msg.key().unwrap_or_default(),
            payload: msg.payload(),
            headers: Some(headers),
            partition: None,
        };
        self.send(msg.partition(), Some(msg.offset()), Sent::DeadLetter, out)
            .await;
    }

    /// Enqueues a record, waiting while the producer's queue is full (backpressure on the
    /// input); `owner`, the input offset it belongs to, stays unfinished until the broker
    /// acknowledges it. Every alert and dead letter goes out through here; changelog records go
    /// out in groups, one report per batch ([`Pipeline::batch_progress`]).
    async fn send(&mut self, partition: i32, owner: Option<i64>, sent: Sent, out: Out<'_>) {
        let epoch = self.parts.get(&partition).map_or(u64::MAX, |p| p.epoch);
        if let Some(owner) = owner
            && let Some(part) = self.parts.get_mut(&partition)
        {
            part.hold(owner);
        }
        let topic = self.topics.of(&sent);
        let token = self.take_token();
        self.enqueue(&topic, Opaque::Token(token), out).await;
        self.outstanding.insert(
            token,
            Outstanding {
                partition,
                epoch,
                offset: owner,
                sent,
            },
        );
    }

    /// A fresh delivery token.
    fn take_token(&mut self) -> usize {
        let token = self.next_token;
        self.next_token = token.wrapping_add(1) & kafka::TOKEN_MASK;
        token
    }

    /// Hands one record to the producer, waiting while its queue is full and retrying other
    /// enqueue errors; never drops it.
    async fn enqueue(&self, topic: &str, opaque: Opaque, out: Out<'_>) {
        let Out {
            key,
            payload,
            headers,
            partition: to,
        } = out;
        let mut record = BaseRecord::with_opaque_to(topic, opaque).key(key);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(p) = to {
            record = record.partition(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, r)) => {
                    self.shared
                        .metrics
                        .produce_errors
                        .with_label_values(&[topic])
                        .inc();
                    tracing::error!(topic, error = %e, "cannot enqueue record; retrying in 1s");
                    record = r;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn delivered(&mut self, delivery: Delivery) {
        let token = delivery.token;
        let Some(done) = self.outstanding.remove(&token) else {
            // Sent by a producer replaced since (exactly_once recovery): settles nothing.
            return;
        };
        let current = self
            .parts
            .get(&done.partition)
            .is_some_and(|p| p.epoch == done.epoch);
        match delivery.result {
            Ok(()) if !current => {
                // The partition was revoked (and maybe assigned again) since: its records are
                // processed again from the committed offset, so this report settles nothing.
            }
            Ok(()) => {
                match &done.sent {
                    Sent::Alert {
                        rule,
                        severity,
                        status,
                        event_time,
                        batch,
                    } => {
                        let m = &self.shared.metrics;
                        m.alerts
                            .with_label_values(&[rule.as_str(), severity, status.as_str()])
                            .inc();
                        let latency = (now_ms() - event_time).max(0) as f64 / 1000.0;
                        m.end_to_end_seconds
                            .with_label_values(&[status.as_str()])
                            .observe(latency);
                        let batch = *batch;
                        if let Some(b) = self.batch_mut(done.partition, batch) {
                            b.alerts_unacked -= 1;
                            if b.alerts_unacked == 0 && b.sealed {
                                self.batch_progress(done.partition).await;
                            }
                        }
                    }
                    Sent::Changelog { batch, records } => {
                        let batch = *batch;
                        self.shared.metrics.changelog_records.inc_by(*records as u64);
                        if let Some(b) = self.batch_mut(done.partition, Some(batch)) {
                            b.changelog_pending = false;
                            self.batch_progress(done.partition).await;
                        }
                    }
                    Sent::DeadLetter => {}
                }
                if let Some(offset) = done.offset {
                    self.finish(done.partition, offset);
                }
            }
            Err((e, _, _)) if self.eos => {
                // Inside a transaction a lost send cannot be patched up: abort and replay.
                let topic = self.topics.of(&done.sent);
                tracing::warn!(topic = %topic, error = %e, "delivery failed; the transaction will abort");
                self.txn_failed = true;
            }
            Err(_) if !current => {
                // The partition is gone: its records are processed again from the last commit.
            }
            Err((e, msg, group)) => {
                // Not acknowledged after librdkafka's own retries: send again, never drop.
                let topic = self.topics.of(&done.sent);
                self.shared
                    .metrics
                    .produce_errors
                    .with_label_values(&[&topic])
                    .inc();
                tracing::error!(topic = %topic, error = %e, "delivery failed; re-sending");
                // One pause per burst of failures, not one per failed record.
                if self.last_resend.is_none_or(|t| t.elapsed() >= RESEND_BACKOFF) {
                    tokio::time::sleep(RESEND_BACKOFF).await;
                    self.last_resend = Some(Instant::now());
                }
                let out = Out {
                    key: msg.key().unwrap_or_default(),
                    payload: msg.payload(),
                    headers: msg.headers().cloned(),
                    partition: matches!(done.sent, Sent::Changelog { .. }).then(|| msg.partition()),
                };
                match group {
                    // A changelog record: sent again under its batch's group, which still waits.
                    Some(group) => {
                        self.enqueue(&topic, Opaque::Group(group), out).await;
                        self.outstanding.insert(token, done);
                    }
                    None => {
                        // The new send holds the owner again; the failed one lets go.
                        self.send(done.partition, done.offset, done.sent, out).await;
                        if let Some(offset) = done.offset {
                            self.finish(done.partition, offset);
                        }
                    }
                }
            }
        }
    }

    /// Sends, in order, every sealed batch whose alerts are all acknowledged, stopping at the
    /// first that is not (an older state must never overwrite a newer one); then drops the
    /// completely written batches at the head and finishes their records.
    async fn batch_progress(&mut self, partition: i32) {
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        let mut ready = Vec::new();
        for b in part.batches.iter_mut() {
            // exactly_once needs no ordering: the transaction makes it all-or-nothing.
            if !b.sealed || (b.alerts_unacked > 0 && !self.eos) {
                break;
            }
            if !b.sent {
                b.sent = true;
                // One group report per batch (none for an empty one).
                b.changelog_pending = !b.records.is_empty();
                ready.push((b.id, std::mem::take(&mut b.records), std::mem::take(&mut b.arena)));
            }
        }
        let epoch = part.epoch;
        for (id, records, arena) in ready {
            if records.is_empty() {
                continue;
            }
            // One report for the whole batch: no per-record bookkeeping on acknowledgement.
            let token = self.take_token();
            let group = Group::new(token, records.len());
            self.outstanding.insert(
                token,
                Outstanding {
                    partition,
                    epoch,
                    offset: None,
                    sent: Sent::Changelog {
                        batch: id,
                        records: records.len(),
                    },
                },
            );
            let topic = self.topics.changelog.clone();
            for (customer, value) in records {
                let out = Out {
                    key: customer.as_bytes(),
                    payload: value.map(|r| &arena[r]),
                    headers: None,
                    partition: Some(partition),
                };
                self.enqueue(&topic, Opaque::Group(group.clone()), out).await;
            }
        }
        loop {
            let Some(part) = self.parts.get_mut(&partition) else {
                return;
            };
            match part.batches.front() {
                Some(head) if head.sent && !head.changelog_pending => {}
                _ => return,
            }
            let head = part.batches.pop_front().expect("checked above");
            // Release them all, then store the commit position once: storing it per record
            // (a librdkafka call each) cost more than the rest of the bookkeeping.
            for h in head.holders {
                part.release(h);
            }
            self.store_committable(partition);
        }
    }

    /// Releases one hold on `offset` and stores the new commit position if it moved.
    fn finish(&mut self, partition: i32, offset: i64) {
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        part.release(offset);
        self.store_committable(partition);
    }

    /// Stores the partition's commit position for the next commit, if it moved.
    fn store_committable(&mut self, partition: i32) {
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        let committable = part.committable();
        if committable > part.stored && !self.eos {
            match self
                .consumer
                .store_offset(&self.config.kafka.input_topic, partition, committable - 1)
            {
                Ok(()) => part.stored = committable,
                Err(e) => tracing::debug!(partition, error = %e, "cannot store offset (partition revoked?)"),
            }
        }
    }

    fn start_transactions(&mut self) -> Result<(), ServiceError> {
        let producer = self.producer.clone();
        tokio::task::block_in_place(|| {
            producer.init_transactions(Duration::from_secs(30))?;
            producer.begin_transaction()
        })?;
        Ok(())
    }

    /// exactly_once: waits for the open transaction's sends, adds the input offsets of every
    /// finished record, commits, and opens the next transaction. Any failure aborts and
    /// recovers: state and input position go back to the last committed transaction.
    async fn commit_transaction(&mut self) {
        if !self.dirty && self.outstanding.is_empty() {
            return;
        }
        self.flush_batches().await;
        self.await_deliveries().await;
        if self.txn_failed {
            self.recover("delivery failed", false).await;
            return;
        }
        let mut offsets = rdkafka::TopicPartitionList::new();
        for (&partition, part) in &self.parts {
            if part.next > 0 || part.pending.first().is_some() {
                let _ = offsets.add_partition_offset(
                    &self.config.kafka.input_topic,
                    partition,
                    rdkafka::Offset::Offset(part.committable()),
                );
            }
        }
        let Some(group) = self.consumer.group_metadata() else {
            self.recover("no consumer group metadata", false).await;
            return;
        };
        let producer = self.producer.clone();
        let result = tokio::task::block_in_place(|| {
            if offsets.count() > 0 {
                producer.send_offsets_to_transaction(&offsets, &group, Duration::from_secs(30))?;
            }
            producer.commit_transaction(Duration::from_secs(30))?;
            producer.begin_transaction()
        });
        match result {
            Ok(()) => {
                self.dirty = false;
                self.shared.metrics.txn_commits.inc();
            }
            Err(e) => {
                let fatal = matches!(&e, KafkaError::Transaction(t) if t.is_fatal());
                tracing::warn!(error = %e, fatal, "transaction commit failed");
                self.recover(if fatal { "fatal" } else { "commit_failed" }, fatal)
                    .await;
            }
        }
    }

    /// Aborts the open transaction (or replaces a fenced producer), forgets every partition's
    /// state and rewinds the input to the last committed offsets: the next records restore state
    /// from the committed changelog and are processed again, as if the transaction never ran.
    async fn recover(&mut self, reason: &'static str, fatal: bool) {
        self.shared.metrics.txn_aborts.with_label_values(&[reason]).inc();
        self.outstanding.clear();
        let producer = self.producer.clone();
        let aborted = !fatal
            && tokio::task::block_in_place(|| producer.abort_transaction(Duration::from_secs(30))).is_ok();
        loop {
            if !aborted {
                match kafka::create_producer(&self.config) {
                    Ok((p, deliveries)) => {
                        let p = Arc::new(p);
                        if let Ok(mut slot) = self.consumer.context().producer.lock() {
                            *slot = Some(p.clone());
                        }
                        self.producer = p;
                        self.deliveries = deliveries;
                    }
                    Err(e) => tracing::error!(error = %e, "cannot recreate the transactional producer"),
                }
            }
            let producer = self.producer.clone();
            let started = tokio::task::block_in_place(|| {
                if !aborted {
                    producer.init_transactions(Duration::from_secs(30))?;
                }
                producer.begin_transaction()
            });
            match started {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a transaction; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        let partitions: Vec<i32> = self.parts.keys().copied().collect();
        for partition in &partitions {
            self.parts.remove(partition);
            self.shared.set_engine(*partition, None);
        }
        let consumer = self.consumer.clone();
        let topic = self.config.kafka.input_topic.clone();
        tokio::task::block_in_place(|| {
            let committed = consumer.committed(Duration::from_secs(10)).ok();
            let assigned = consumer.assignment().unwrap_or_default();
            for e in assigned.elements() {
                if e.topic() != topic {
                    continue;
                }
                let to = committed
                    .as_ref()
                    .and_then(|c| c.find_partition(&topic, e.partition()))
                    .map(|c| c.offset())
                    .filter(|o| matches!(o, rdkafka::Offset::Offset(_)))
                    .unwrap_or(rdkafka::Offset::Beginning);
                for attempt in 0..20 {
                    match consumer.seek(&topic, e.partition(), to, Duration::from_secs(5)) {
                        Ok(()) => break,
                        Err(err) if attempt == 19 => {
                            tracing::error!(partition = e.partition(), error = %err, "cannot rewind partition")
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            }
        });
        self.dirty = false;
        self.txn_failed = false;
        tracing::warn!(reason, partitions = ?partitions, "transaction aborted; state and input rewound to the last commit");
    }

    /// Settles delivery reports until no send is outstanding.
    async fn await_deliveries(&mut self) {
        while !self.outstanding.is_empty() {
            match self.deliveries.recv().await {
                Some(d) => self.delivered(d).await,
                None => return,
            }
        }
    }

    async fn shutdown(mut self) {
        let deadline = self.config.service.shutdown_timeout;
        if !self.eos {
            self.flush_batches().await;
        }
        tracing::info!(
            outstanding = self.outstanding.len(),
            "shutting down: draining deliveries"
        );
        let drained = tokio::time::timeout(deadline, self.await_deliveries()).await;
        if drained.is_err() {
            tracing::error!(
                outstanding = self.outstanding.len(),
                "shutdown deadline passed with deliveries unacknowledged; their records will be re-processed"
            );
        }
        if self.eos {
            self.commit_transaction().await;
            self.consumer.unsubscribe();
            return;
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::error!(error = %e, "final commit failed; uncommitted records will be re-processed")
            }
        }
        self.consumer.unsubscribe();
        // Dropping the consumer closes it: it leaves the group.
    }
}

#[cfg(test)]
mod tests {
    use super::Holds;

    #[test]
    fn holds_release_a_finished_prefix_only() {
        let mut h = Holds::default();
        for o in [10, 11, 11, 12] {
            h.hold(o);
        }
        assert_eq!((h.first(), h.unfinished()), (Some(10), 3));
        h.release(11);
        h.release(12);
        // 11 still holds once and 10 is unfinished: nothing above 10 is committable.
        assert_eq!((h.first(), h.unfinished()), (Some(10), 2));
        h.release(10);
        assert_eq!(h.first(), Some(11));
        h.release(11);
        assert_eq!((h.first(), h.unfinished()), (None, 0));
    }

    #[test]
    fn holds_accept_older_offsets_and_ignore_unknown_releases() {
        let mut h = Holds::default();
        h.hold(20);
        h.hold(22);
        h.hold(21); // a timer alert or a buffered record owned by an older offset
        h.hold(20);
        h.release(99);
        h.release(20);
        assert_eq!(h.first(), Some(20));
        h.release(20);
        assert_eq!(h.first(), Some(21));
        h.release(22);
        assert_eq!((h.first(), h.unfinished()), (Some(21), 1));
        h.release(21);
        assert_eq!(h.first(), None);
    }
}
