//! The sans-IO partition runtime: input records, delivery reports and ticks in, commands out
//! (produce, dead-letter, write changelog, resend, store offset, commit, stop). It never touches
//! the Kafka client, the clock or the network; the driver executes its commands.
//!
//! - [`ledger`]: per-partition offsets, what is finished and may be committed.
//! - [`batch`]: changelog batches, written in input order after the outputs they follow.
//! - [`outbox`]: unanswered sends by token, and the resend policy for failures.
//! - [`partition`]: one assigned partition and the restored-state skip rule.
//! - [`guarantee`]: at-least-once and exactly-once, two implementations of one trait.

pub mod batch;
pub mod guarantee;
pub mod ledger;
pub mod outbox;
pub mod partition;

use super::Shared;
use super::codecs::OutputEncoder;
use crate::config::Config;
use crate::engine::{Effect, Engine};
use crate::model::{AlertStatus, CaseAction, Millis, RecoveryAlert, Touchpoint};
use batch::Written;
pub use guarantee::{AtLeastOnce, ExactlyOnce, Guarantee, Settle};
pub use outbox::{Failure, FailureClass, Output, TOKEN_MASK};
use outbox::{Outbox, Outstanding, Resend, Sent};
use partition::Partition;
pub use partition::RestoredOffsets;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The time, passed in: a monotonic reading for intervals, the wall clock for event time.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: Millis,
}

/// Which input topic a record came from. Both are partitioned alike by customer: partition `p`
/// of each belongs to the same engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Touchpoints,
    Actions,
}

impl Source {
    fn index(self) -> usize {
        self as usize
    }
}

/// A record's place on its partition: input topic and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub source: Source,
    pub offset: i64,
}

/// One input record's position and timestamp.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub source: Source,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka record's timestamp (what a wrong clock is judged against).
    pub timestamp: Option<Millis>,
}

/// A record that could not become a touchpoint: dead-lettered with this class and reason.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub class: &'static str,
    /// Names the field and the problem, never a value.
    pub reason: String,
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Command {
    /// Produce `payload` to `output` under `token` (an alert).
    Produce {
        token: usize,
        output: Output,
        key: Vec<u8>,
        payload: Vec<u8>,
    },
    /// Copy the input record being processed to the dead-letter topic with these headers.
    DeadLetter {
        token: usize,
        partition: i32,
        offset: i64,
        class: &'static str,
        reason: String,
    },
    /// Write a sealed changelog batch to `partition` of the changelog, reported once as `token`.
    Changelog {
        token: usize,
        partition: i32,
        records: Vec<(Arc<str>, Option<std::ops::Range<usize>>)>,
        arena: Vec<u8>,
    },
    /// Send the record of the failed delivery being handled again, under `token` (for a
    /// changelog record: its group's token), optionally without its payload.
    Resend { token: usize, without_payload: bool },
    /// Wait this long before the next send (failures come in bursts when the broker is down).
    Pause(Duration),
    /// Store `next` as the position of `partition` of `source` for the consumer's next commit.
    Store {
        source: Source,
        partition: i32,
        next: i64,
    },
    /// exactly_once: settle every send, then commit the transaction (or abort).
    CommitTransaction,
    /// Nothing can succeed any more: stop the process with this message.
    Fatal(String),
}

/// The partition runtime of one consumer: every assigned partition's state and the sends in
/// flight.
pub struct Runtime {
    config: Config,
    shared: Arc<Shared>,
    guarantee: Box<dyn Guarantee>,
    parts: HashMap<i32, Partition>,
    outbox: Outbox,
    encoder: OutputEncoder,
    topics: Topics,
    effects: Vec<Effect>,
    written: Vec<Written>,
    released: Vec<At>,
    next_epoch: u64,
    /// Commands of reports settled inside a rebalance callback, for the driver to execute.
    deferred: Vec<Command>,
    /// Logs and counts failed sends, rate-limited.
    send_failures: super::events::SendFailures,
}

/// Output topic names, for logs and metric labels.
struct Topics {
    alerts: String,
    dead_letters: String,
    changelog: String,
}

impl Topics {
    fn of(&self, o: Output) -> &str {
        match o {
            Output::Alerts => &self.alerts,
            Output::DeadLetters => &self.dead_letters,
            Output::Changelog => &self.changelog,
        }
    }
}

impl Runtime {
    pub fn new(config: Config, shared: Arc<Shared>, encoder: OutputEncoder) -> Self {
        let guarantee: Box<dyn Guarantee> = match config.processing.guarantee {
            crate::config::Guarantee::ExactlyOnce => Box::new(ExactlyOnce::default()),
            crate::config::Guarantee::AtLeastOnce => Box::new(AtLeastOnce),
        };
        let topics = Topics {
            alerts: config.kafka.alert_topic.clone(),
            dead_letters: config.kafka.dlq_topic.clone(),
            changelog: config.state.changelog_topic.clone(),
        };
        Self {
            config,
            shared,
            guarantee,
            parts: HashMap::new(),
            outbox: Outbox::default(),
            encoder,
            topics,
            effects: Vec::new(),
            written: Vec::new(),
            released: Vec::new(),
            next_epoch: 0,
            deferred: Vec::new(),
            send_failures: super::events::SendFailures::default(),
        }
    }

    pub fn topic(&self, output: Output) -> &str {
        self.topics.of(output)
    }

    /// Takes on `partition` with its (restored) engine; its records may be pushed from now on.
    pub fn assign(&mut self, partition: i32, engine: Arc<Engine>, restored: Option<RestoredOffsets>) {
        let consumed: IntCounter = self
            .shared
            .metrics
            .records_consumed
            .with_label_values(&[&partition.to_string()]);
        self.next_epoch += 1;
        let part = Partition::new(engine, restored, self.next_epoch, consumed);
        self.parts.insert(partition, part);
    }

    /// The engine of an assigned partition.
    pub fn engine(&self, partition: i32) -> Option<Arc<Engine>> {
        self.parts.get(&partition).map(|p| p.engine.clone())
    }

    pub fn is_assigned(&self, partition: i32) -> bool {
        self.parts.contains_key(&partition)
    }

    pub fn partitions(&self) -> Vec<i32> {
        self.parts.keys().copied().collect()
    }

    /// Drops a revoked partition's state; reports from its sends settle nothing any more.
    pub fn revoke(&mut self, partition: i32) {
        if let Some(part) = self.parts.remove(&partition) {
            tracing::info!(
                partition,
                customers = part.engine.customer_count(),
                unfinished = part.ledger(Source::Touchpoints).unfinished(),
                stored = part.ledger(Source::Touchpoints).stored(),
                next = part.ledger(Source::Touchpoints).next(),
                "dropping revoked partition's state"
            );
        }
    }

    /// exactly_once recovery: forgets every partition and send; the input is read again from the
    /// last commit. Returns the partitions dropped.
    pub fn reset(&mut self) -> Vec<i32> {
        self.outbox.clear();
        self.guarantee.reset();
        self.deferred.clear();
        self.parts.drain().map(|(p, _)| p).collect()
    }

    /// Sends not answered yet.
    pub fn outstanding(&self) -> usize {
        self.outbox.len()
    }

    /// The next offset to consume per input topic and partition that has consumed anything (the
    /// transaction's).
    pub fn positions(&self) -> Vec<(Source, i32, i64)> {
        let mut out = Vec::new();
        for (&partition, p) in &self.parts {
            for source in [Source::Touchpoints, Source::Actions] {
                let l = p.ledger(source);
                if l.touched() {
                    out.push((source, partition, l.committable()));
                }
            }
        }
        out
    }

    /// The input position of `partition` (next offset to consume, 0 before the first record).
    pub fn next_offset(&self, partition: i32) -> Option<i64> {
        self.parts
            .get(&partition)
            .map(|p| p.ledger(Source::Touchpoints).next())
    }

    /// What the commit point holds once every send is answered.
    pub fn settle(&self) -> Settle {
        self.guarantee.settle()
    }

    /// The transaction was committed (or aborted and everything reset).
    pub fn committed(&mut self) {
        self.guarantee.reset();
    }

    /// Writes the summary lines of rate-limited logs whose window closed (about once a second).
    pub fn flush_logs(&mut self, now: Instant) {
        self.send_failures.flush(now);
    }

    /// Commands left by reports settled inside a rebalance callback.
    pub fn take_deferred(&mut self, out: &mut Vec<Command>) {
        out.append(&mut self.deferred);
    }

    /// Keeps commands for the driver (from a rebalance callback, which cannot send).
    pub fn defer(&mut self, commands: &mut Vec<Command>) {
        self.deferred.append(commands);
    }

    /// One input record, decoded (or rejected by the decoder). The partition must be assigned.
    pub fn record(
        &mut self,
        rec: Record,
        decoded: Result<Touchpoint, Rejected>,
        now: Now,
        out: &mut Vec<Command>,
    ) {
        let Record {
            source,
            partition,
            offset,
            ..
        } = rec;
        debug_assert_eq!(source, Source::Touchpoints);
        let at = At { source, offset };
        self.guarantee.produced();
        let changelog = self.config.state.changelog;
        let Some(part) = self.parts.get_mut(&partition) else {
            tracing::error!(partition, offset, "record of a partition not assigned; skipped");
            return;
        };
        part.consumed.inc();
        if part.ledger_mut(source).consumed(offset) {
            tracing::info!(partition, offset, "resuming partition");
        }
        let tp = match decoded {
            Ok(tp) => tp,
            Err(rejected) => {
                let batch = changelog.then(|| part.batches.open(now.mono));
                self.undecodable(partition, at, rejected, batch, out);
                return;
            }
        };
        if part.restored_includes(&tp.customer_id, offset) {
            // Applied before the restart: its state change is in the restored state.
            self.shared.metrics.duplicate_records.inc();
            self.finish(partition, at, out);
            return;
        }
        let mut effects = std::mem::take(&mut self.effects);
        // A wrong clock is judged against when the record was written, not when we read it
        // (a backlog is not a wrong clock).
        let arrival = rec.timestamp.unwrap_or(now.wall);
        part.stream
            .push(tp, offset as u64, arrival, now.wall, &mut effects);
        // The hold taken above stays until the record is applied (`Effect::Applied`) and, with
        // the changelog on, its state change is acknowledged there.
        let batch = changelog.then(|| part.batches.open(now.mono));
        for effect in effects.drain(..) {
            self.apply(partition, Some(at), effect, batch, out);
        }
        self.effects = effects;
        self.enforce_cap(partition, batch);
        self.seal_if_due(partition, batch, now, out);
    }

    /// A record the decoder refused: counted by class, dead-lettered, finished.
    fn undecodable(
        &mut self,
        partition: i32,
        at: At,
        Rejected { class, reason }: Rejected,
        batch: Option<u64>,
        out: &mut Vec<Command>,
    ) {
        self.shared
            .metrics
            .decode_errors
            .with_label_values(&[class])
            .inc();
        self.dead_letter(partition, at, class, reason, batch, out);
        self.finish(partition, at, out);
    }

    /// Seals the partition's open changelog batch once it has been open a commit interval.
    fn seal_if_due(&mut self, partition: i32, batch: Option<u64>, now: Now, out: &mut Vec<Command>) {
        if let Some(part) = self.parts.get_mut(&partition)
            && batch.is_some()
            && part
                .batches
                .seal_due(now.mono, self.config.processing.commit_interval)
        {
            part.batches.seal(&part.engine);
            self.progress(partition, out);
        }
    }

    /// One case action record (acknowledge, resolve, reopen), decoded or rejected by the decoder.
    /// Its partition is the touchpoint partition with the same number (both topics are keyed
    /// by customer id and have as many partitions). Actions are idempotent by `action_id`, so
    /// after a restore they are applied again rather than skipped.
    pub fn action(
        &mut self,
        rec: Record,
        decoded: Result<CaseAction, Rejected>,
        now: Now,
        out: &mut Vec<Command>,
    ) {
        let Record {
            source,
            partition,
            offset,
            ..
        } = rec;
        debug_assert_eq!(source, Source::Actions);
        let at = At { source, offset };
        self.guarantee.produced();
        let changelog = self.config.state.changelog;
        let Some(part) = self.parts.get_mut(&partition) else {
            tracing::error!(partition, offset, "action of a partition not assigned; skipped");
            return;
        };
        part.ledger_mut(source).consumed(offset);
        let batch = changelog.then(|| part.batches.open(now.mono));
        let action = match decoded {
            Ok(a) => a,
            Err(rejected) => {
                self.undecodable(partition, at, rejected, batch, out);
                return;
            }
        };
        let mut effects = std::mem::take(&mut self.effects);
        let arrival = rec.timestamp.unwrap_or(now.wall);
        part.stream
            .push_action(action, offset as u64, arrival, now.wall, &mut effects);
        for effect in effects.drain(..) {
            self.apply(partition, Some(at), effect, batch, out);
        }
        self.effects = effects;
        self.seal_if_due(partition, batch, now, out);
    }

    /// Processing time passes: every partition whose input is idle lets its timers follow the
    /// wall clock, publishing the timer alerts that fall due. `waiting(partition, next)` says
    /// records are known to wait beyond `next` (a backlog is not idleness).
    pub fn tick(&mut self, now: Now, waiting: &dyn Fn(i32, i64) -> bool, out: &mut Vec<Command>) {
        let partitions = self.partitions();
        for partition in partitions {
            let Some(part) = self.parts.get_mut(&partition) else {
                continue;
            };
            let next = part.ledger(Source::Touchpoints).next();
            if next > 0 && waiting(partition, next) {
                continue;
            }
            let mut effects = std::mem::take(&mut self.effects);
            part.stream.tick(now.wall, &mut effects);
            let batch =
                (!effects.is_empty() && self.config.state.changelog).then(|| part.batches.open(now.mono));
            if !effects.is_empty() {
                // exactly_once: the open transaction now holds these and must commit on the
                // next tick even if no record arrives.
                self.guarantee.produced();
            }
            for effect in effects.drain(..) {
                self.apply(partition, None, effect, batch, out);
            }
            self.effects = effects;
        }
    }

    /// The commit tick: seals every open changelog batch and writes what may be written, then
    /// the guarantee's commit (exactly_once: [`Command::CommitTransaction`]).
    pub fn commit_tick(&mut self, out: &mut Vec<Command>) {
        self.flush_batches(out);
        self.guarantee.commit_due(out);
    }

    /// Seals every open batch and writes what may be written (the commit tick, shutdown).
    pub fn flush_batches(&mut self, out: &mut Vec<Command>) {
        let partitions = self.partitions();
        for partition in partitions {
            if let Some(part) = self.parts.get_mut(&partition) {
                part.batches.seal(&part.engine);
            }
            self.progress(partition, out);
        }
    }

    /// The broker answered the send `token`.
    pub fn delivered(&mut self, token: usize, result: Result<(), Failure>, now: Now, out: &mut Vec<Command>) {
        let Some(done) = self.outbox.remove(token) else {
            // Sent before an exactly_once reset: settles nothing.
            return;
        };
        let current = self
            .parts
            .get(&done.partition)
            .is_some_and(|p| p.epoch == done.epoch);
        match result {
            // The partition was revoked (and maybe assigned again) since: its records are
            // processed again from the committed offset, so this report settles nothing.
            Ok(()) | Err(_) if !current => {}
            Ok(()) => self.acknowledged(done, now, out),
            Err(failure) => {
                if !self.guarantee.on_failure(&failure) {
                    let topic = self.topics.of(done.sent.output());
                    self.send_failures
                        .emit(&self.shared.metrics, now.mono, topic, "aborted", &failure.error);
                    return;
                }
                self.failed(token, done, failure, now, out);
            }
        }
    }

    fn acknowledged(&mut self, done: Outstanding, now: Now, out: &mut Vec<Command>) {
        let partition = done.partition;
        match &done.sent {
            Sent::Alert { alert, batch, .. } => {
                let m = &self.shared.metrics;
                m.alerts
                    .with_label_values(&[
                        alert.rule.as_str(),
                        alert.severity.as_str(),
                        alert.status.as_str(),
                    ])
                    .inc();
                let latency = (now.wall - alert.event_time).max(0) as f64 / 1000.0;
                m.end_to_end_seconds
                    .with_label_values(&[alert.status.as_str()])
                    .observe(latency);
                let (rule, severity, queue) =
                    (alert.rule.as_str(), alert.severity.as_str(), alert.queue.as_str());
                m.cases
                    .with_label_values(&[alert.status.as_str(), rule, severity, queue])
                    .inc();
                if alert.status == AlertStatus::Acknowledged
                    && let Some(ms) = alert.time_to_acknowledge_ms
                {
                    m.time_to_acknowledge
                        .with_label_values(&[severity, queue])
                        .observe(ms.max(0) as f64 / 1000.0);
                }
                let recovered = match alert.status {
                    AlertStatus::Resolved => alert.time_to_resolve_ms.map(|ms| ("agent", ms)),
                    AlertStatus::Recovered => alert.time_to_recover_ms.map(|ms| ("customer", ms)),
                    _ => None,
                };
                if let Some((by, ms)) = recovered {
                    m.time_to_recover
                        .with_label_values(&[severity, queue, by])
                        .observe(ms.max(0) as f64 / 1000.0);
                }
                self.output_acked(partition, *batch, out);
            }
            Sent::DeadLetter { batch, .. } => self.output_acked(partition, *batch, out),
            Sent::Changelog { batch, records } => {
                self.shared.metrics.changelog_records.inc_by(*records as u64);
                if let Some(part) = self.parts.get_mut(&partition) {
                    part.batches.changelog_acked(*batch);
                }
                self.progress(partition, out);
            }
        }
        if let Some(at) = done.offset {
            self.finish(partition, at, out);
        }
    }

    fn output_acked(&mut self, partition: i32, batch: Option<u64>, out: &mut Vec<Command>) {
        let ready = match (batch, self.parts.get_mut(&partition)) {
            (Some(b), Some(part)) => part.batches.output_acked(b),
            _ => false,
        };
        if ready {
            self.progress(partition, out);
        }
    }

    /// A send failed after the client's own retries: the resend policy decides.
    fn failed(
        &mut self,
        token: usize,
        done: Outstanding,
        failure: Failure,
        now: Now,
        out: &mut Vec<Command>,
    ) {
        let output = done.sent.output();
        let topic = self.topics.of(output).to_string();
        let verdict = outbox::resend_policy(failure.class, &done.sent);
        let outcome = match verdict {
            Resend::Fatal => "fatal",
            Resend::Same => "resent",
            Resend::WithoutPayload => "stripped",
            Resend::Trimmed => "trimmed",
        };
        self.send_failures
            .emit(&self.shared.metrics, now.mono, &topic, outcome, &failure.error);
        match verdict {
            Resend::Fatal => {
                tracing::error!(topic, error = %failure.error, class = ?failure.class, "delivery failed and cannot succeed");
                out.push(Command::Fatal(format!(
                    "cannot write to topic '{topic}': {} (check that it exists, that this client may write to it, and its max.message.bytes)",
                    failure.error
                )));
                // Its hold stays: the record is unfinished and processed again after the restart.
                let _ = token;
            }
            Resend::Same => {
                if let Some(pause) = self.outbox.pace(now.mono) {
                    out.push(Command::Pause(pause));
                }
                if matches!(done.sent, Sent::Changelog { .. }) {
                    // Sent again under its batch's group, which still waits for it.
                    out.push(Command::Resend {
                        token,
                        without_payload: false,
                    });
                    self.outbox.insert(token, done);
                } else {
                    let (partition, offset) = (done.partition, done.offset);
                    self.resend(done, false, out);
                    if let Some(at) = offset {
                        self.finish(partition, at, out);
                    }
                }
            }
            Resend::WithoutPayload => {
                let (partition, offset) = (done.partition, done.offset);
                let sent = Sent::DeadLetter {
                    batch: match done.sent {
                        Sent::DeadLetter { batch, .. } => batch,
                        _ => None,
                    },
                    stripped: true,
                };
                self.resend(Outstanding { sent, ..done }, true, out);
                if let Some(at) = offset {
                    self.finish(partition, at, out);
                }
            }
            Resend::Trimmed => {
                let Sent::Alert { alert, batch, .. } = done.sent else {
                    unreachable!("the policy trims alerts only");
                };
                self.shared.metrics.alerts_trimmed.inc();
                // The failed send no longer holds its batch back; the trimmed one does.
                if let (Some(b), Some(part)) = (batch, self.parts.get_mut(&done.partition)) {
                    part.batches.output_acked(b);
                }
                let trimmed = outbox::trim_alert(&alert);
                let (partition, offset) = (done.partition, done.offset);
                self.produce_alert(partition, offset, trimmed, batch, true, out);
                if let Some(at) = offset {
                    self.finish(partition, at, out);
                }
            }
        }
    }

    /// Sends the failed record again under a new token, holding its owner again (the caller
    /// releases the failed send's hold).
    fn resend(&mut self, done: Outstanding, without_payload: bool, out: &mut Vec<Command>) {
        if let Some(at) = done.offset
            && let Some(part) = self.parts.get_mut(&done.partition)
        {
            part.ledger_mut(at.source).hold(at.offset);
        }
        let token = self.outbox.token();
        self.outbox.insert(token, done);
        out.push(Command::Resend {
            token,
            without_payload,
        });
    }

    /// Carries out one engine effect of the record at `offset` of `partition`, or of a tick.
    fn apply(
        &mut self,
        partition: i32,
        current: Option<At>,
        effect: Effect,
        batch: Option<u64>,
        out: &mut Vec<Command>,
    ) {
        match effect {
            Effect::Alert { alert, seq } => {
                if seq.is_none() {
                    // A timer changed this customer's case: that change goes to the changelog too.
                    self.stage(partition, batch, Arc::from(alert.customer_id.as_str()), -1);
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
                let owner = match (seq, current) {
                    (Some(s), Some(c)) => Some(At {
                        source: c.source,
                        offset: s as i64,
                    }),
                    (_, c) => c,
                };
                self.produce_alert(partition, owner, alert, batch, false, out);
            }
            Effect::Applied { seq, customer } => {
                let at = Self::at(current, seq);
                match batch {
                    Some(b) => {
                        if let Some(part) = self.parts.get_mut(&partition) {
                            // The snapshot names the last touchpoint offset it includes (the
                            // restored skip rule); actions are idempotent by their id instead.
                            let last = if at.source == Source::Touchpoints {
                                at.offset
                            } else {
                                -1
                            };
                            part.batches.stage(b, customer, last);
                            // Finished once its state change is in the changelog.
                            part.batches.hold(b, at);
                        }
                    }
                    None => self.finish(partition, at, out),
                }
            }
            Effect::Duplicate { seq } => {
                self.shared.metrics.duplicate_records.inc();
                self.finish(partition, Self::at(current, seq), out);
            }
            Effect::Late {
                seq,
                event,
                behind_ms,
            } => {
                self.shared.metrics.late_records.inc();
                let reason = format!(
                    "late: event {} is {behind_ms} ms behind the watermark (allowed lateness {})",
                    event.event_id,
                    humantime::format_duration(self.config.engine.allowed_lateness)
                );
                let at = Self::at(current, seq);
                self.dead_letter(partition, at, "late", reason, batch, out);
                self.finish(partition, at, out);
            }
            Effect::Future { seq, event, ahead_ms } => {
                self.shared.metrics.future_records.inc();
                let reason = format!(
                    "future: event {} is stamped {ahead_ms} ms ahead of its record's timestamp (max clock skew {})",
                    event.event_id,
                    humantime::format_duration(self.config.engine.max_clock_skew)
                );
                let at = Self::at(current, seq);
                self.dead_letter(partition, at, "future", reason, batch, out);
                self.finish(partition, at, out);
            }
            // Only `Stream::push_action` rejects; dead-lettered with its class, as a bad record.
            Effect::Rejected { seq, class, reason } => {
                let at = Self::at(current, seq);
                self.dead_letter(partition, at, class, reason, batch, out);
                self.finish(partition, at, out);
            }
            Effect::Evicted { keys } => {
                self.shared.metrics.evictions.inc_by(keys.len() as u64);
                for key in keys {
                    self.stage(partition, batch, key, -1);
                }
            }
        }
    }

    /// The place of record `seq` of the record being processed (its source).
    fn at(current: Option<At>, seq: u64) -> At {
        At {
            source: current.map_or(Source::Touchpoints, |c| c.source),
            offset: seq as i64,
        }
    }

    fn produce_alert(
        &mut self,
        partition: i32,
        owner: Option<At>,
        alert: Box<RecoveryAlert>,
        batch: Option<u64>,
        trimmed: bool,
        out: &mut Vec<Command>,
    ) {
        let mut payload = Vec::new();
        self.encoder.encode(&alert, &mut payload);
        let key = alert.customer_id.as_bytes().to_vec();
        let token = self.send(
            partition,
            owner,
            Sent::Alert {
                alert,
                batch,
                trimmed,
            },
        );
        out.push(Command::Produce {
            token,
            output: Output::Alerts,
            key,
            payload,
        });
    }

    fn dead_letter(
        &mut self,
        partition: i32,
        at: At,
        class: &'static str,
        reason: String,
        batch: Option<u64>,
        out: &mut Vec<Command>,
    ) {
        let offset = at.offset;
        let token = self.send(
            partition,
            Some(at),
            Sent::DeadLetter {
                batch,
                stripped: false,
            },
        );
        out.push(Command::DeadLetter {
            token,
            partition,
            offset,
            class,
            reason,
        });
    }

    /// Registers a send: `owner`, the input offset it belongs to, stays unfinished until the
    /// broker acknowledges it; an output of a batch's records holds that batch back.
    fn send(&mut self, partition: i32, owner: Option<At>, sent: Sent) -> usize {
        let epoch = self.parts.get(&partition).map_or(u64::MAX, |p| p.epoch);
        if let Some(part) = self.parts.get_mut(&partition) {
            if let Some(owner) = owner {
                part.ledger_mut(owner.source).hold(owner.offset);
            }
            if let Sent::Alert { batch: Some(b), .. } | Sent::DeadLetter { batch: Some(b), .. } = &sent {
                part.batches.output_sent(*b);
            }
        }
        let token = self.outbox.token();
        self.outbox.insert(
            token,
            Outstanding {
                partition,
                epoch,
                offset: owner,
                sent,
            },
        );
        token
    }

    fn stage(&mut self, partition: i32, batch: Option<u64>, customer: Arc<str>, offset: i64) {
        if let (Some(b), Some(part)) = (batch, self.parts.get_mut(&partition)) {
            part.batches.stage(b, customer, offset);
        }
    }

    /// Over `state.max_customers`: sheds 1% of this partition's customers (at least the excess
    /// up to that), least recently active first, and writes their tombstones.
    fn enforce_cap(&mut self, partition: i32, batch: Option<u64>) {
        let cap = self.config.state.max_customers;
        // Refreshed every second by the driver: no walk of the map per record.
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

    /// Writes, in order, every sealed batch that may be written, then drops the completely
    /// written batches at the head and finishes their records.
    fn progress(&mut self, partition: i32, out: &mut Vec<Command>) {
        let ordered = self.guarantee.changelog_waits_for_outputs();
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        let mut written = std::mem::take(&mut self.written);
        part.batches.ready(ordered, &mut written);
        let epoch = part.epoch;
        for w in written.drain(..) {
            // One report for the whole batch: no per-record bookkeeping on acknowledgement.
            let token = self.outbox.token();
            self.outbox.insert(
                token,
                Outstanding {
                    partition,
                    epoch,
                    offset: None,
                    sent: Sent::Changelog {
                        batch: w.id,
                        records: w.records.len(),
                    },
                },
            );
            out.push(Command::Changelog {
                token,
                partition,
                records: w.records,
                arena: w.arena,
            });
        }
        self.written = written;
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        let mut released = std::mem::take(&mut self.released);
        if part.batches.pop_written(&mut released) {
            // Release them all, then store the position once: storing it per record (a client
            // call each) cost more than the rest of the bookkeeping.
            for at in released.drain(..) {
                part.ledger_mut(at.source).release(at.offset);
            }
            self.store(partition, Source::Touchpoints, out);
            self.store(partition, Source::Actions, out);
        }
        self.released = released;
    }

    /// Releases one hold on the record `at` and stores the new position if it moved.
    fn finish(&mut self, partition: i32, at: At, out: &mut Vec<Command>) {
        if let Some(part) = self.parts.get_mut(&partition) {
            part.ledger_mut(at.source).release(at.offset);
            self.store(partition, at.source, out);
        }
    }

    fn store(&mut self, partition: i32, source: Source, out: &mut Vec<Command>) {
        if let Some(part) = self.parts.get_mut(&partition)
            && let Some(next) = part.ledger_mut(source).advance()
        {
            self.guarantee.finished_upto(source, partition, next, out);
        }
    }
}

#[cfg(test)]
mod tests;
