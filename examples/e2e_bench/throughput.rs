//! Phases 1 to 4: the load producer, the bare baseline consumer, and cx-sentinel's throughput,
//! CPU and memory over the same topic.

use crate::latency::now_ms;
use crate::probe::{Perf, Probe, Snap, Threads, Window, rss_bytes, threads, trim_heap};
use crate::service::{Service, ServiceTopics, committed, read_alert_topic, service_config};
use crate::{Args, BaselineKind, INPUT_SCHEMA_ID, MAX_POLL, MIN_POLL};
use anyhow::{Context, Result, anyhow, bail, ensure};
use cx_sentinel::allocator::AllocatorStats;
use cx_sentinel::codec::avro;
use cx_sentinel::config::Config;
use cx_sentinel::generator::{Generator, GeneratorConfig};
use cx_sentinel::metrics::{
    ALERTS, CHANGELOG_RECORDS, CUSTOMERS, DEAD_LETTERS, LATE_RECORDS, PRODUCE_ERRORS, RECORDS_CONSUMED,
    STATE_BYTES,
};
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Phase 1: load.

/// Counts delivery reports of a producer; optionally keeps each record's time from creation
/// (its CreateTime timestamp) to acknowledgement.
#[derive(Default)]
pub(crate) struct Deliveries {
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) first_error: Mutex<Option<String>>,
    /// (creation time, creation → acknowledgement) of each record, both ms.
    pub(crate) ack_ms: Option<Mutex<Vec<(i64, i64)>>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if let (Some(acks), Some(created)) = (&self.ack_ms, m.timestamp().to_millis()) {
                    acks.lock()
                        .expect("not poisoned")
                        .push((created, now_ms() - created));
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().expect("not poisoned");
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

impl Deliveries {
    /// Creation → acknowledgement (ms) of the records created at or after `from` (wall-clock
    /// ms), sorted; takes them out of the context.
    pub(crate) fn acks_since(&self, from: i64) -> Vec<i64> {
        let acks = self
            .ack_ms
            .as_ref()
            .map(|a| std::mem::take(&mut *a.lock().expect("not poisoned")))
            .unwrap_or_default();
        let mut ms: Vec<i64> = acks
            .into_iter()
            .filter(|&(created, _)| created >= from)
            .map(|(_, ms)| ms)
            .collect();
        ms.sort_unstable();
        ms
    }

    pub(crate) fn check(&self, expected: u64) -> Result<()> {
        let failed = self.failed.load(Ordering::Relaxed);
        let ok = self.ok.load(Ordering::Relaxed);
        if failed > 0 {
            let first = self.first_error.lock().expect("not poisoned").clone();
            bail!(
                "{failed} of {expected} records were not delivered (first error: {})",
                first.unwrap_or_default()
            );
        }
        ensure!(
            ok == expected,
            "only {ok} of {expected} records were acknowledged"
        );
        Ok(())
    }
}

/// The load: many records in flight, large batches.
fn load_producer_config(brokers: &str) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "100000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "300000");
    cc
}

/// Enqueues one record, waiting while the local queue is full.
pub(crate) fn send(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(anyhow!(e).context(format!("producing to {topic}"))),
        }
    }
}

pub(crate) fn framed(tp: &cx_sentinel::model::Touchpoint, out: &mut Vec<u8>) {
    out.clear();
    avro::confluent_frame(INPUT_SCHEMA_ID, &avro::encode_touchpoint(tp), out);
}

pub(crate) struct Load {
    pub(crate) events: u64,
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
}

pub(crate) fn load(brokers: &str, topic: &str, generator: GeneratorConfig, n: u64) -> Result<Load> {
    let producer: ThreadedProducer<Deliveries> = load_producer_config(brokers)
        .create_with_context(Deliveries::default())
        .context("creating the load producer")?;
    let mut generator = Generator::new(generator);
    let mut payload = Vec::with_capacity(512);
    let mut bytes = 0u64;
    let started = Instant::now();
    for _ in 0..n {
        let tp = generator.next_touchpoint();
        framed(&tp, &mut payload);
        bytes += payload.len() as u64;
        send(&producer, topic, &tp.customer_id, &payload)?;
    }
    producer
        .flush(Duration::from_secs(300))
        .context("waiting for the load to be acknowledged")?;
    let secs = started.elapsed().as_secs_f64();
    producer.context().check(n).context("loading the input topic")?;
    Ok(Load {
        events: n,
        bytes,
        secs,
    })
}

// ---------------------------------------------------------------------------------------------
// Phase 2: baseline.

pub(crate) struct Baseline {
    pub(crate) kind: BaselineKind,
    /// Subscribe to the Nth record.
    pub(crate) total: Window,
    /// First record to the Nth.
    pub(crate) steady: Window,
    pub(crate) threads: BTreeMap<String, f64>,
}

/// What both baseline readers count: records, consumer errors, and the first record's snapshot
/// (the steady window starts there).
#[derive(Default)]
struct Tally {
    first: Option<(Snap, Threads)>,
    count: u64,
    errors: u32,
}

impl Tally {
    fn take(&mut self, polled: KafkaResult<BorrowedMessage<'_>>, probe: &Probe) -> Result<()> {
        match polled {
            Err(e) => {
                self.errors += 1;
                ensure!(self.errors < 100, "baseline: too many consumer errors, last: {e}");
                eprintln!("      baseline consumer error: {e}");
            }
            Ok(m) => {
                if self.first.is_none() {
                    self.first = Some((probe.snap()?, threads()));
                }
                std::hint::black_box(m.payload_len());
                self.count += 1;
            }
        }
        Ok(())
    }

    fn finish(self, kind: BaselineKind, started: &Snap, n: u64, probe: &Probe) -> Result<Baseline> {
        let end = probe.snap()?;
        let (first, threads0) = self.first.expect("n > 0");
        Ok(Baseline {
            kind,
            total: Window::between(started, &end, n),
            steady: Window::between(&first, &end, n - 1),
            threads: probe.by_thread(&threads0, &threads()),
        })
    }
}

pub(crate) async fn baseline_stream(
    cc: ClientConfig,
    topic: &str,
    n: u64,
    probe: &Probe,
    timeout: Duration,
) -> Result<Baseline> {
    let consumer: StreamConsumer = cc.create().context("creating the baseline consumer")?;
    consumer.subscribe(&[topic])?;
    let started = probe.snap()?;
    let mut tally = Tally::default();
    // One timer for the whole phase: no clock reads per record. One stream, as the service
    // reads: `recv()` would take and free a waker slot per record.
    let mut messages = consumer.stream();
    let read = async {
        while tally.count < n {
            let Some(next) = messages.next().await else {
                bail!("baseline: the consumer's stream ended");
            };
            tally.take(next, probe)?;
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => bail!("baseline: only {} of {n} records within {timeout:?}", tally.count),
        Ok(r) => r?,
    }
    tally.finish(BaselineKind::Stream, &started, n, probe)
}

pub(crate) fn baseline_base(
    cc: ClientConfig,
    topic: &str,
    n: u64,
    probe: &Probe,
    timeout: Duration,
) -> Result<Baseline> {
    let consumer: BaseConsumer = cc.create().context("creating the baseline consumer")?;
    consumer.subscribe(&[topic])?;
    let started = probe.snap()?;
    let deadline = started.at + timeout;
    let mut tally = Tally::default();
    while tally.count < n {
        match consumer.poll(Duration::from_millis(100)) {
            // Checked only when idle: no clock reads per record.
            None => ensure!(
                Instant::now() < deadline,
                "baseline: only {} of {n} records within {timeout:?}",
                tally.count
            ),
            Some(polled) => tally.take(polled, probe)?,
        }
    }
    tally.finish(BaselineKind::Base, &started, n, probe)
}

// ---------------------------------------------------------------------------------------------
// Phase 3 and 4: cx-sentinel throughput, CPU and memory.

/// One scrape during the run.
#[derive(Clone, Copy)]
struct Poll {
    snap: Snap,
    consumed: u64,
    alerts: u64,
    /// How long the scrape took (mostly CPU on the service's side).
    scrape: Duration,
}

pub(crate) struct Sentinel {
    /// Service start to the last alert acknowledged.
    pub(crate) total: Window,
    /// First scrape with records consumed to the last scrape before all were.
    pub(crate) steady: Window,
    pub(crate) threads: BTreeMap<String, f64>,
    pub(crate) alerts: u64,
    pub(crate) alerts_by_rule: BTreeMap<String, u64>,
    /// Records on the alert topic, read back after the run, and their distinct `alert_id`s.
    pub(crate) alert_records: u64,
    pub(crate) distinct_alert_ids: u64,
    /// Records on the changelog topic after the run (high watermarks; tansu 0.6 may report one
    /// less per partition).
    pub(crate) changelog_records: Option<u64>,
    pub(crate) dead_letters: u64,
    pub(crate) late: u64,
    pub(crate) produce_errors: u64,
    pub(crate) customers: u64,
    pub(crate) state_bytes: u64,
    pub(crate) rss_before: u64,
    pub(crate) rss_after_raw: u64,
    pub(crate) rss_after: u64,
    /// The allocator's counters at the same two points (where jemalloc is the allocator).
    alloc_before: Option<AllocatorStats>,
    alloc_after: Option<AllocatorStats>,
    pub(crate) scrapes: u64,
    /// Time spent serving our scrapes in the steady window, as a share of the process's CPU.
    pub(crate) scrape_share: f64,
    pub(crate) scrape_cpu_ms: f64,
    pub(crate) scrape_wall_ms: f64,
}

impl Sentinel {
    pub(crate) fn rss_delta(&self) -> u64 {
        self.rss_after.saturating_sub(self.rss_before)
    }

    pub(crate) fn bytes_per_customer(&self) -> f64 {
        self.rss_delta() as f64 / self.customers.max(1) as f64
    }

    /// Growth of each allocator counter over the run, `(kind, bytes)`.
    pub(crate) fn alloc_delta(&self) -> Option<[(&'static str, i64); 4]> {
        let (a, b) = (self.alloc_before?.labelled(), self.alloc_after?.labelled());
        Some(std::array::from_fn(|i| (a[i].0, b[i].1 as i64 - a[i].1 as i64)))
    }
}

pub(crate) async fn sentinel_throughput(
    args: &Args,
    base: &Config,
    topics: &ServiceTopics,
    n: u64,
    probe: &Probe,
    timeout: Duration,
) -> Result<Sentinel> {
    trim_heap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_bytes()?;
    let alloc_before = cx_sentinel::allocator::stats();

    // Reads the service group's committed offsets and the changelog's size; never joins the group.
    let offsets: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &topics.group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the offset reader")?;
    let perf = Perf::start(args, "sentinel")?;
    let started = probe.snap()?;
    let mut svc = Service::start(service_config(args, base, topics)).await?;
    let deadline = started.at + timeout;
    let mut polls: Vec<Poll> = Vec::new();
    // Thread snapshots at the first scrape that saw records and at the latest one before all were.
    let mut threads_first: Option<Threads> = None;
    let mut threads_last = Threads::new();
    let mut interval = MIN_POLL;
    let done = loop {
        tokio::time::sleep(interval).await;
        svc.alive().await?;
        let asked = Instant::now();
        let m = svc.metrics().await?;
        let scrape = asked.elapsed();
        interval = (scrape * 50).clamp(MIN_POLL, MAX_POLL);
        let poll = Poll {
            snap: probe.snap()?,
            consumed: m.sum_u64(RECORDS_CONSUMED),
            alerts: m.sum_u64(ALERTS),
            scrape,
        };
        polls.push(poll);
        if poll.consumed > 0 && poll.consumed < n {
            let t = threads();
            threads_first.get_or_insert_with(|| t.clone());
            threads_last = t;
        }
        // Done: everything consumed, the count of acknowledged alerts has not moved for a second
        // (the alert topic is read back afterwards, outside the measurement), and every input
        // offset is committed: each record finished, its alerts and state changes acknowledged.
        if poll.consumed >= n {
            let settled = polls
                .iter()
                .position(|p| p.consumed >= n && p.alerts == poll.alerts);
            if let Some(i) = settled
                && poll.snap.at.duration_since(polls[i].snap.at) >= Duration::from_secs(1)
                && committed(&offsets, &topics.input, args.partitions)? >= n
            {
                break i;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "cx-sentinel did not finish within {timeout:?}: consumed {} of {n}, committed {}, alerts {}, \
                 dead letters {}",
                poll.consumed,
                committed(&offsets, &topics.input, args.partitions)?,
                poll.alerts,
                m.sum_u64(DEAD_LETTERS)
            );
        }
    };
    perf.stop();
    let scrapes = polls.len() as u64;
    let (done_at, done) = (done, polls[done]);
    let total = Window::between(&started, &done.snap, n);
    let first = polls
        .iter()
        .position(|p| p.consumed > 0)
        .context("no scrape saw records")?;
    let last_partial = polls.iter().rposition(|p| p.consumed < n);
    let (steady, last) = match last_partial {
        Some(l) if l > first => (
            Window::between(
                &polls[first].snap,
                &polls[l].snap,
                polls[l].consumed - polls[first].consumed,
            ),
            l,
        ),
        // Too short to see two scrapes mid-run: first scrape with records to done.
        _ => (
            Window::between(&polls[first].snap, &done.snap, n - polls[first].consumed),
            done_at,
        ),
    };
    let scrape_secs: f64 = polls[first + 1..=last.max(first)]
        .iter()
        .map(|p| p.scrape.as_secs_f64())
        .sum();
    let thread_cpu = probe.by_thread(&threads_first.unwrap_or_default(), &threads_last);
    eprintln!(
        "      done: {:.0} events/s, {:.2} CPU µs/event over the steady part; {} alerts",
        steady.events_per_s(),
        steady.cpu_us_per_event(),
        done.alerts
    );

    // State gauges refresh every second; the state-bytes gauge at most every 10 s.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let m = svc.metrics().await?;
    let customers = m.sum_u64(CUSTOMERS);
    let state_bytes = m.sum_u64(STATE_BYTES);
    ensure!(customers > 0, "cx-sentinel holds no customers after the run");
    // What one scrape costs with this many customers (it walks all of them).
    let before = probe.snap()?;
    for _ in 0..10 {
        svc.metrics().await?;
    }
    let after = probe.snap()?;
    let rss_after_raw = rss_bytes()?;
    trim_heap();
    let rss_after = rss_bytes()?;
    let alloc_after = cx_sentinel::allocator::stats();
    let mut result = Sentinel {
        total,
        steady,
        threads: thread_cpu,
        alerts: m.sum_u64(ALERTS),
        alerts_by_rule: m.by_label(ALERTS, "rule"),
        alert_records: 0,
        distinct_alert_ids: 0,
        // The service's count: tansu 0.6's high watermark is the last batch's base offset + 1, so
        // the topic's watermarks undercount multi-record batches.
        changelog_records: topics.state.is_some().then(|| m.sum_u64(CHANGELOG_RECORDS)),
        dead_letters: m.sum_u64(DEAD_LETTERS),
        late: m.sum_u64(LATE_RECORDS),
        produce_errors: m.sum_u64(PRODUCE_ERRORS),
        customers,
        state_bytes,
        rss_before,
        rss_after_raw,
        rss_after,
        alloc_before,
        alloc_after,
        scrapes,
        scrape_share: scrape_secs / steady.cpu.max(1e-9),
        scrape_cpu_ms: (after.cpu - before.cpu) * 100.0,
        scrape_wall_ms: after.at.duration_since(before.at).as_secs_f64() * 100.0,
    };
    svc.stop().await?;
    let (records, ids, undecodable) = read_alert_topic(
        &args.brokers,
        &topics.alerts,
        args.output_format.format(),
        result.alerts,
    )
    .await?;
    ensure!(
        undecodable == 0,
        "{undecodable} records on {} do not decode as alerts",
        topics.alerts
    );
    result.alert_records = records;
    result.distinct_alert_ids = ids;
    if records < result.alerts {
        eprintln!(
            "      warning: {} alerts acknowledged but only {records} on {}",
            result.alerts, topics.alerts
        );
    }
    if result.dead_letters > 0 {
        eprintln!(
            "      warning: {} records dead-lettered ({} late)",
            result.dead_letters, result.late
        );
    }
    Ok(result)
}
