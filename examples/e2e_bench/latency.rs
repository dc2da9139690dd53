//! Phase 5: latency at a fixed offered rate: the paced producer, the bare relay (the latency
//! baseline), cx-sentinel's run, the alert reader, and nearest-rank quantiles.

use crate::prom::{BucketQuantile, Buckets};
use crate::service::{Service, ServiceTopics, service_config, wait_for_topic};
use crate::throughput::{Deliveries, framed, send};
use crate::{Args, READER_FETCH_WAIT_MS, unique};
use anyhow::{Context, Result, anyhow, bail, ensure};
use cx_sentinel::codec::Format;
use cx_sentinel::config::Config;
use cx_sentinel::generator::{Generator, GeneratorConfig};
use cx_sentinel::metrics::{ALERTS, END_TO_END_SECONDS, PROCESSING_SECONDS, RECORDS_CONSUMED};
use cx_sentinel::service;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) struct Latency {
    pub(crate) rate: f64,
    pub(crate) seconds: u64,
    pub(crate) warmup: u64,
    input: Paced,
    /// Alert age when read back by a downstream consumer (ms), sorted.
    pub(crate) ages_ms: Vec<i64>,
    /// The two legs of each age (ms), each sorted: trigger produced → processed (`detected_at`),
    /// and processed → read back. Same host, same clock.
    pub(crate) to_detect_ms: Vec<i64>,
    pub(crate) after_detect_ms: Vec<i64>,
    /// Alerts triggered during the warm-up, not counted.
    warmup_alerts: u64,
    /// Alerts fired by timers (event time is a deadline, not a produce time).
    timer_alerts: u64,
    undecodable: u64,
    /// The service's `cx_sentinel_end_to_end_latency_seconds` over the measured part: a
    /// trigger's produce time (its `occurred_at`) to the broker's acknowledgement of the alert.
    pub(crate) acked: Buckets,
    /// The bare relay: measured just before at the same rate, or alongside on the same input.
    pub(crate) relay: Option<Relay>,
    /// Share of the machine's CPU stolen by the hypervisor during the run.
    pub(crate) steal: Option<f64>,
    /// `cx_sentinel_processing_duration_seconds` (decode + engine + enqueue, per record).
    processing_p50_us: Option<f64>,
    processing_p99_us: Option<f64>,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A typical application producer: idempotent, `linger.ms = 5`.
fn latency_producer_config(brokers: &str) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    cc
}

/// Produces `rate` touchpoints a second for `warmup + secs`, each stamped `occurred_at = now`.
/// Only what is created after the warm-up counts: the first records wait for the producer's
/// connection and idempotent producer id (up to a second on tansu), and for the service's first
/// fetches, which a long-running application does not pay per record.
fn paced(
    brokers: &str,
    topic: &str,
    generator: GeneratorConfig,
    rate: f64,
    warmup: u64,
    secs: u64,
    warmed: tokio::sync::oneshot::Sender<()>,
) -> Result<Paced> {
    let deliveries = Deliveries {
        ack_ms: Some(Mutex::new(Vec::new())),
        ..Deliveries::default()
    };
    let producer: ThreadedProducer<Deliveries> = latency_producer_config(brokers)
        .create_with_context(deliveries)
        .context("creating the paced producer")?;
    let mut generator = Generator::new(generator);
    let total = (rate * (warmup + secs) as f64) as u64;
    let mut payload = Vec::with_capacity(512);
    let mut sent = 0u64;
    let started = Instant::now();
    let measured_from = now_ms() + 1000 * warmup as i64;
    let mut warmed = Some(warmed);
    let warmup_records = (rate * warmup as f64) as u64;
    while sent < total {
        if sent >= warmup_records
            && let Some(w) = warmed.take()
        {
            let _ = w.send(());
        }
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(total);
        while sent < due {
            let mut tp = generator.next_touchpoint();
            tp.occurred_at = now_ms();
            framed(&tp, &mut payload);
            send(&producer, topic, &tp.customer_id, &payload)?;
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let secs = started.elapsed().as_secs_f64() - warmup as f64;
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the paced producer")?;
    producer
        .context()
        .check(total)
        .context("the latency run's input")?;
    let ack_ms = producer.context().acks_since(measured_from);
    Ok(Paced {
        produced: total,
        measured: ack_ms.len() as u64,
        secs,
        measured_from,
        ack_ms,
    })
}

#[derive(Clone)]
struct Paced {
    /// Records produced, warm-up included.
    produced: u64,
    /// Records created after the warm-up.
    measured: u64,
    /// Duration of the measured part.
    secs: f64,
    /// Wall-clock ms when the warm-up ended.
    measured_from: i64,
    /// Creation to acknowledgement of each measured input record (ms), sorted.
    ack_ms: Vec<i64>,
}

/// Nearest-rank quantile of sorted values.
pub(crate) fn quantile(sorted: &[i64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64)
}

struct AlertAges {
    /// (event time, detected at, read at) of each alert a touchpoint triggered, ms.
    seen: Vec<(i64, i64, i64)>,
    timer_alerts: u64,
    undecodable: u64,
}

/// Reads the alert topic from the beginning; each alert's age is now − its event time.
async fn read_alerts(
    consumer: StreamConsumer,
    format: Format,
    received: Arc<AtomicU64>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> AlertAges {
    let mut out = AlertAges {
        seen: Vec::new(),
        timer_alerts: 0,
        undecodable: 0,
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            msg = consumer.recv() => match msg {
                Ok(m) => {
                    let now = now_ms();
                    received.fetch_add(1, Ordering::Relaxed);
                    match cx_sentinel::demo::decode_alert(format, m.payload().unwrap_or_default()) {
                        // Timer alerts carry their deadline as event time.
                        Ok(a) if matches!(a.rule.as_str(), "sla_breach" | "case_expired") => {
                            out.timer_alerts += 1
                        }
                        Ok(a) => out.seen.push((a.event_time, a.detected_at, now)),
                        Err(_) => out.undecodable += 1,
                    }
                }
                Err(e) => eprintln!("      alert reader error: {e}"),
            },
        }
    }
    out
}

/// What the bare relay measured.
pub(crate) struct Relay {
    input: Paced,
    /// Each measured record's produce time to the acknowledgement of its forwarded copy (ms),
    /// sorted.
    pub(crate) ack_ms: Vec<i64>,
    /// Each measured record's produce time to its consumption by the relay (ms), sorted: the
    /// same leg as cx-sentinel's produced -> processed.
    pub(crate) in_ms: Vec<i64>,
    /// Run alongside cx-sentinel on its input (`--relay-alongside`), not before it on its own.
    pub(crate) alongside: bool,
    pub(crate) steal: Option<f64>,
}

impl Relay {
    fn json(&self) -> Value {
        json!({
            "produced": self.input.produced,
            "measured": self.ack_ms.len(),
            "input_ack_p50_ms": quantile(&self.input.ack_ms, 0.5),
            "input_ack_p99_ms": quantile(&self.input.ack_ms, 0.99),
            "p50_ms": quantile(&self.ack_ms, 0.5),
            "p99_ms": quantile(&self.ack_ms, 0.99),
            "p999_ms": quantile(&self.ack_ms, 0.999),
            "max_ms": self.ack_ms.last(),
            "in_p50_ms": quantile(&self.in_ms, 0.5),
            "in_p99_ms": quantile(&self.in_ms, 0.99),
            "in_p999_ms": quantile(&self.in_ms, 0.999),
            "alongside": self.alongside,
            "steal_share": self.steal,
        })
    }
}

/// The latency baseline: a bare relay with the service's consumer and producer settings that
/// forwards every record, as it is, to another topic, fed by the same paced producer. Its
/// produce → acknowledged latency is what any consume → produce service gets from this broker
/// and machine before doing any work; cx-sentinel's is set against it.
pub(crate) async fn relay_run(
    args: &Args,
    config: &Config,
    generator: &GeneratorConfig,
    topics: &mut Vec<String>,
) -> Result<Relay> {
    let input = unique("bench-relay-in");
    service::kafka::create_topics(&args.brokers, &[(&input, args.partitions)])
        .await
        .context("creating the relay's input topic")?;
    topics.push(input.clone());
    wait_for_topic(&args.brokers, &input).await?;
    let relay = RelayTask::start(args, config, &input, topics).await?;
    let (producing, _warmed) = spawn_paced(args, &input, generator, 2);
    relay.finish(producing.await??, false).await
}

/// Starts the paced producer (`paced`) on a blocking thread, its generator seeded `seed_offset`
/// away from the load's; the receiver fires when the warm-up ends.
fn spawn_paced(
    args: &Args,
    topic: &str,
    generator: &GeneratorConfig,
    seed_offset: u64,
) -> (
    tokio::task::JoinHandle<Result<Paced>>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (brokers, topic) = (args.brokers.clone(), topic.to_owned());
    let generator = GeneratorConfig {
        seed: generator.seed.wrapping_add(seed_offset),
        ..generator.clone()
    };
    let (rate, warmup, secs) = (
        args.latency_rate,
        args.latency_warmup_seconds,
        args.latency_seconds,
    );
    let (warmed_tx, warmed) = tokio::sync::oneshot::channel();
    let producing = tokio::task::spawn_blocking(move || {
        paced(&brokers, &topic, generator, rate, warmup, secs, warmed_tx)
    });
    (producing, warmed)
}

/// A bare relay at work: a group member on `input` that forwards every record, as it is and with
/// its timestamp, to a topic of its own.
struct RelayTask {
    consumer: Arc<StreamConsumer>,
    producer: Arc<ThreadedProducer<Deliveries>>,
    stop: tokio::sync::oneshot::Sender<()>,
    /// (produce time, produce time to consumed) of each record, ms.
    task: tokio::task::JoinHandle<Result<Vec<(i64, i64)>>>,
}

impl RelayTask {
    /// Starts it and waits until its consumer holds every partition of `input`.
    async fn start(args: &Args, config: &Config, input: &str, topics: &mut Vec<String>) -> Result<Self> {
        let output = unique("bench-relay-out");
        service::kafka::create_topics(&args.brokers, &[(&output, 1)])
            .await
            .context("creating the relay's output topic")?;
        topics.push(output.clone());
        wait_for_topic(&args.brokers, &output).await?;
        let consumer: StreamConsumer = service::kafka::consumer_config(config)
            .set("group.id", unique("bench-relay"))
            .create()
            .context("creating the relay's consumer")?;
        // A group member like the service (heartbeats, offset commits), not a hand assignment.
        consumer.subscribe(&[input])?;
        let consumer = Arc::new(consumer);
        let producer: ThreadedProducer<Deliveries> = service::kafka::producer_config(config)
            .create_with_context(Deliveries {
                ack_ms: Some(Mutex::new(Vec::new())),
                ..Deliveries::default()
            })
            .context("creating the relay's producer")?;
        let producer = Arc::new(producer);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let (producer, consumer) = (producer.clone(), consumer.clone());
            tokio::spawn(async move {
                let mut consumed = Vec::new();
                loop {
                    let msg = tokio::select! {
                        _ = &mut stopped => return Ok(consumed),
                        m = consumer.recv() => m.context("relay consumer")?,
                    };
                    // The copy keeps the original's timestamp: its produce time.
                    let mut record = BaseRecord::to(&output)
                        .key(msg.key().unwrap_or_default())
                        .payload(msg.payload().unwrap_or_default());
                    if let Some(ts) = msg.timestamp().to_millis() {
                        record = record.timestamp(ts);
                        consumed.push((ts, now_ms() - ts));
                    }
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                                record = r;
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            Err((e, _)) => return Err(anyhow!(e).context("relay producer")),
                        }
                    }
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while consumer.assignment()?.count() < args.partitions as usize {
            ensure!(
                Instant::now() < deadline && !task.is_finished(),
                "the relay's consumer was not assigned {} partitions within 60 s",
                args.partitions
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            consumer,
            producer,
            stop,
            task,
        })
    }

    /// Waits until every record of `input` is forwarded and acknowledged, then stops.
    async fn finish(self, input: Paced, alongside: bool) -> Result<Relay> {
        let Self {
            consumer,
            producer,
            stop,
            task,
        } = self;
        let deadline = Instant::now() + Duration::from_secs(60);
        while producer.context().ok.load(Ordering::Relaxed) < input.produced {
            if task.is_finished() {
                let why = match task.await {
                    Ok(Err(e)) => format!("{e:#}"),
                    Ok(Ok(_)) => "without an error".into(),
                    Err(e) => e.to_string(),
                };
                bail!("the relay stopped: {why}");
            }
            ensure!(
                Instant::now() < deadline,
                "the relay forwarded only {} of {} records within 60 s",
                producer.context().ok.load(Ordering::Relaxed),
                input.produced
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = stop.send(());
        let consumed = task.await.context("relay task")??;
        drop(consumer);
        producer.context().check(input.produced)?;
        let ack_ms = producer.context().acks_since(input.measured_from);
        let mut in_ms: Vec<i64> = consumed
            .into_iter()
            .filter(|&(ts, _)| ts >= input.measured_from)
            .map(|(_, ms)| ms)
            .collect();
        in_ms.sort_unstable();
        Ok(Relay {
            input,
            ack_ms,
            in_ms,
            alongside,
            steal: None,
        })
    }
}

pub(crate) async fn latency_run(
    args: &Args,
    base: &Config,
    topics: &ServiceTopics,
    generator: &GeneratorConfig,
    created: &mut Vec<String>,
) -> Result<Latency> {
    let mut svc = Service::start(service_config(args, base, topics)).await?;
    svc.wait_assigned(args.partitions, Duration::from_secs(60))
        .await?;
    // The same records at the same moments: what the broker and the host do to both shows in both.
    let relay = match args.relay_alongside {
        true => Some(RelayTask::start(args, base, &topics.input, created).await?),
        false => None,
    };

    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", unique("bench-lat-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", READER_FETCH_WAIT_MS.to_string())
        .create()
        .context("creating the alert reader")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topics.alerts, 0, Offset::Beginning)?;
    reader.assign(&tpl)?;
    let received = Arc::new(AtomicU64::new(0));
    let mut acked_at_warmup = Buckets::default();
    let (stop_reader, stopped) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(read_alerts(
        reader,
        args.output_format.format(),
        received.clone(),
        stopped,
    ));

    let input = {
        let (producing, warmed) = spawn_paced(args, &topics.input, generator, 1);
        // The service's histogram from here on covers the measured part only (an alert of a
        // warm-up record acknowledged after this point is counted; there are few).
        if warmed.await.is_ok() {
            acked_at_warmup = svc.metrics().await?.histogram(END_TO_END_SECONDS);
        }
        producing.await??
    };

    // Wait for the service to finish and the reader to catch up.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut previous_alerts = None;
    let m = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        svc.alive().await?;
        let m = svc.metrics().await?;
        let (consumed, alerts) = (m.sum_u64(RECORDS_CONSUMED), m.sum_u64(ALERTS));
        if consumed >= input.produced
            && previous_alerts == Some(alerts)
            && received.load(Ordering::Relaxed) >= alerts
        {
            break m;
        }
        ensure!(
            Instant::now() < deadline,
            "latency run did not settle: consumed {consumed} of {}, alerts {alerts}, read back {}",
            input.produced,
            received.load(Ordering::Relaxed)
        );
        previous_alerts = Some(alerts);
    };
    let _ = stop_reader.send(());
    let ages = reader.await.context("alert reader")?;
    let relay = match relay {
        Some(r) => Some(r.finish(input.clone(), true).await?),
        None => None,
    };
    svc.stop().await?;
    let (mut ages_ms, mut to_detect_ms, mut after_detect_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut warmup_alerts = 0;
    for &(event_time, detected_at, read_at) in &ages.seen {
        if event_time < input.measured_from {
            warmup_alerts += 1;
            continue;
        }
        ages_ms.push(read_at - event_time);
        to_detect_ms.push(detected_at - event_time);
        after_detect_ms.push(read_at - detected_at);
    }
    for v in [&mut ages_ms, &mut to_detect_ms, &mut after_detect_ms] {
        v.sort_unstable();
    }
    Ok(Latency {
        rate: args.latency_rate,
        seconds: args.latency_seconds,
        warmup: args.latency_warmup_seconds,
        input,
        ages_ms,
        to_detect_ms,
        after_detect_ms,
        warmup_alerts,
        timer_alerts: ages.timer_alerts,
        undecodable: ages.undecodable,
        acked: m.histogram(END_TO_END_SECONDS).since(&acked_at_warmup),
        relay,
        steal: None,
        processing_p50_us: m.histogram_quantile(PROCESSING_SECONDS, 0.50).map(|s| s * 1e6),
        processing_p99_us: m.histogram_quantile(PROCESSING_SECONDS, 0.99).map(|s| s * 1e6),
    })
}

impl Latency {
    /// Produced → read back by a downstream consumer, exact.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.ages_ms, q)
    }

    /// Produced → alert acknowledged, from the service's histogram, in ms.
    pub(crate) fn acked_ms(&self, q: f64) -> Option<BucketQuantile> {
        self.acked.quantile(q).map(|b| BucketQuantile {
            estimate: b.estimate * 1e3,
            lower: b.lower * 1e3,
            upper: b.upper * 1e3,
        })
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "offered_rate": self.rate,
            "seconds": self.seconds,
            "produced": self.input.produced,
            "warmup_seconds": self.warmup,
            "warmup_alerts": self.warmup_alerts,
            "measured": self.input.measured,
            "achieved_rate": self.input.measured as f64 / self.input.secs,
            "input_ack_p50_ms": quantile(&self.input.ack_ms, 0.5),
            "input_ack_p99_ms": quantile(&self.input.ack_ms, 0.99),
            "reader_fetch_wait_ms": READER_FETCH_WAIT_MS,
            "acked_alerts": self.acked.count(),
            "acked_p50_ms": self.acked_ms(0.5).map(|b| b.estimate),
            "acked_p99_ms": self.acked_ms(0.99).map(|b| b.estimate),
            "acked_p999_ms": self.acked_ms(0.999).map(|b| b.estimate),
            "acked_p99_bucket_ms": self.acked_ms(0.99).map(|b| [b.lower, b.upper]),
            "acked_p999_bucket_ms": self.acked_ms(0.999).map(|b| [b.lower, b.upper]),
            "alerts_measured": self.ages_ms.len(),
            "timer_alerts": self.timer_alerts,
            "undecodable": self.undecodable,
            "read_back_p50_ms": self.quantile(0.5),
            "read_back_p90_ms": self.quantile(0.9),
            "read_back_p99_ms": self.quantile(0.99),
            "read_back_p999_ms": self.quantile(0.999),
            "read_back_max_ms": self.ages_ms.last(),
            "to_detect_p50_ms": quantile(&self.to_detect_ms, 0.5),
            "to_detect_p99_ms": quantile(&self.to_detect_ms, 0.99),
            "to_detect_p999_ms": quantile(&self.to_detect_ms, 0.999),
            "after_detect_p50_ms": quantile(&self.after_detect_ms, 0.5),
            "after_detect_p99_ms": quantile(&self.after_detect_ms, 0.99),
            "after_detect_p999_ms": quantile(&self.after_detect_ms, 0.999),
            "relay": self.relay.as_ref().map(Relay::json),
            "steal_share": self.steal,
            "processing_p50_us": self.processing_p50_us,
            "processing_p99_us": self.processing_p99_us,
        })
    }
}
