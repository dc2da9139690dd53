//! Measures the alert latency cost of `processing.guarantee = "exactly_once"` (commit interval
//! 100 ms and 1 s) against at-least-once, on librdkafka's mock cluster (tansu does not serve
//! EndTxn): `cargo run --release --example eos_latency [-- --rate 200 --seconds 15]`.
//!
//! One process, one run, one mock cluster. Per mode: fresh topics and group, the real service
//! (`service::run`) in-process, then the same paced input for every mode: `--rate` touchpoints/s,
//! one in `--every` a failed `payment.transfer` of a fresh customer (one OPEN `critical_negative`
//! alert each, from that record alone), the rest happy FAQ views. A `read_committed` reader times
//! each OPEN alert's arrival; latency = arrival − the send time of its trigger.
//!
//! The mock cluster does not implement `read_committed`: its last stable offset is the high
//! watermark and it writes no transaction markers, so a transactional alert is readable as soon as
//! it is appended, before its transaction commits. So besides the reader's arrival time, each
//! alert is also timed at the moment its transaction committed (the mock's receipt of the EndTxn
//! request that ended it, from the mock's request log), which is when a real broker makes it
//! visible: `visible = max(arrival, commit)`. The pipeline sends nothing while it commits, so an
//! alert belongs to the first EndTxn after its record's timestamp (the service's send time, in
//! ms; a send in the same millisecond as an EndTxn is resolved as explained in `run_mode`, and
//! the report shows what the other choice would give).

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use cx_sentinel::codec::Format;
use cx_sentinel::config::{Config, Guarantee};
use cx_sentinel::metrics::{
    ASSIGNED_PARTITIONS, DEAD_LETTERS, LATE_RECORDS, RECORDS_CONSUMED, TXN_ABORTS, TXN_COMMITS,
};
use cx_sentinel::model::AlertStatus;
use cx_sentinel::service::{self, ServiceError};
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaApiKey;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

cx_sentinel::install_allocator!();

/// Input (and changelog) partitions; the mock cluster has three brokers.
const PARTITIONS: i32 = 3;

#[derive(Parser, Debug)]
#[command(about = "Alert latency: exactly_once (100 ms, 1 s commits) vs at_least_once, mock cluster")]
struct Args {
    /// Offered rate, touchpoints per second (the mock cluster saturates near 2k/s).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Measured seconds per mode.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Seconds of the same load before the measured part (not measured).
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// One touchpoint in this many is a failed payment (one OPEN alert).
    #[arg(long, default_value_t = 3)]
    every: u64,
    /// `fetch.wait.max.ms` of the service's consumer and of the alert reader, in every mode. The
    /// mock holds a fetch that finds no data this long and does not wake it when data arrives
    /// (librdkafka's default, 500, would add up to 500 ms per hop in every mode).
    #[arg(long, default_value_t = 10)]
    fetch_wait_ms: u32,
}

struct Mode {
    name: &'static str,
    guarantee: Guarantee,
    commit_interval: Duration,
}

const MODES: [Mode; 3] = [
    Mode {
        name: "at_least_once",
        guarantee: Guarantee::AtLeastOnce,
        commit_interval: Duration::from_millis(100),
    },
    Mode {
        name: "exactly_once 100ms",
        guarantee: Guarantee::ExactlyOnce,
        commit_interval: Duration::from_millis(100),
    },
    Mode {
        name: "exactly_once 1s",
        guarantee: Guarantee::ExactlyOnce,
        commit_interval: Duration::from_secs(1),
    },
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.rate > 0.0 && args.seconds > 0 && args.every > 0,
        "--rate, --seconds and --every must be > 0"
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mock = Mock::new()?;
    println!(
        "eos_latency: {} touchpoints/s for {} s per mode (+{} s warm-up, not measured), 1 in {} a failed \
         payment (one OPEN alert); mock cluster, {PARTITIONS} brokers, {PARTITIONS} input partitions; \
         fetch.wait.max.ms = {} (service consumer and reader)",
        args.rate, args.seconds, args.warmup_seconds, args.every, args.fetch_wait_ms
    );
    let mut results = Vec::new();
    for mode in &MODES {
        eprintln!("[{}] running", mode.name);
        results.push(run_mode(&mock, &args, mode).await.with_context(|| mode.name)?);
    }
    report(&results);
    Ok(())
}

// The mock cluster.

/// A mock cluster made by a client with `test.mock.num.brokers`, so that its native handle is
/// reachable for the request log (`MockCluster::new` keeps it private).
struct Mock {
    host: BaseProducer,
    raw: *mut rdsys::rd_kafka_mock_cluster_t,
}

impl Mock {
    fn new() -> Result<Self> {
        let host: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", PARTITIONS.to_string())
            .create()
            .context("creating the mock cluster")?;
        // SAFETY: `host` is a live client; the handle lives as long as `host`, which `Mock` owns.
        let raw = unsafe { rdsys::rd_kafka_handle_mock_cluster(host.client().native_ptr()) };
        ensure!(!raw.is_null(), "the client did not create a mock cluster");
        Ok(Self { host, raw })
    }

    fn bootstrap_servers(&self) -> String {
        self.cluster().bootstrap_servers()
    }

    fn cluster(&self) -> rdkafka::mocking::MockCluster<'_, DefaultProducerContext> {
        self.host
            .client()
            .mock_cluster()
            .expect("created with test.mock.num.brokers")
    }

    /// Clears the request log and starts recording every request the brokers receive.
    fn start_tracking(&self) {
        // SAFETY: `raw` is the live cluster of `host`; the call takes the cluster's lock.
        unsafe { rdsys::rd_kafka_mock_start_request_tracking(self.raw) }
    }

    fn stop_tracking(&self) {
        // SAFETY: as in `start_tracking`.
        unsafe { rdsys::rd_kafka_mock_stop_request_tracking(self.raw) }
    }

    /// Receipt times of the EndTxn requests logged since `start_tracking` (CLOCK_MONOTONIC µs).
    fn end_txn_us(&self) -> Vec<i64> {
        let mut n = 0usize;
        let mut out = Vec::new();
        // SAFETY: `get_requests` returns an owned array of `n` owned copies (or null when empty),
        // freed once by `destroy_array`; nothing is read after that.
        unsafe {
            let requests = rdsys::rd_kafka_mock_get_requests(self.raw, &mut n);
            if requests.is_null() {
                return out;
            }
            for i in 0..n {
                let r = *requests.add(i);
                if rdsys::rd_kafka_mock_request_api_key(r) == RDKafkaApiKey::EndTxn as i16 {
                    out.push(rdsys::rd_kafka_mock_request_timestamp(r));
                }
            }
            rdsys::rd_kafka_mock_request_destroy_array(requests, n);
        }
        out.sort_unstable();
        out
    }
}

/// librdkafka's `rd_clock()`: CLOCK_MONOTONIC in µs (the mock's request timestamps).
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn monotonic_us() -> Option<i64> {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_MONOTONIC: i32 = 1;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid timespec (two 64-bit fields on 64-bit Linux).
    let ok = unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) } == 0;
    ok.then_some(ts.sec * 1_000_000 + ts.nsec / 1_000)
}

/// Elsewhere the mock's clock is not CLOCK_MONOTONIC (or not reachable): no commit times.
#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn monotonic_us() -> Option<i64> {
    None
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

// One mode.

struct ModeResult {
    name: &'static str,
    eos: bool,
    /// Alerts of the measured part that arrived (first copy of each alert id).
    measured: usize,
    expected: usize,
    /// Reader arrival − trigger send (ms), sorted.
    read_ms: Vec<f64>,
    /// max(arrival, commit of its transaction) − trigger send (ms), sorted; `None` without a
    /// commit timeline (at_least_once: same as `read_ms`).
    visible_ms: Option<Vec<f64>>,
    /// The same with each `ambiguous` alert given to the earlier commit instead.
    visible_alt_ms: Option<Vec<f64>>,
    /// Alerts the reader saw before their transaction committed (exactly_once on the mock).
    read_before_commit: usize,
    /// Alerts sent in the millisecond of an EndTxn and read after it: taken as sent after it.
    ambiguous: usize,
    /// Alerts with no EndTxn after them.
    uncommitted: usize,
    duplicates: usize,
    commits: u64,
    aborts: u64,
    end_txn: usize,
    consumed: u64,
    late: u64,
    dead_letters: u64,
    send_secs: f64,
    sent: u64,
}

struct Seen {
    alert_id: String,
    customer: String,
    arrival_us: i64,
    /// The alert record's timestamp: CreateTime, set when the service sent it.
    created_ms: Option<i64>,
}

async fn run_mode(mock: &Mock, args: &Args, mode: &Mode) -> Result<ModeResult> {
    let brokers = mock.bootstrap_servers();
    let tag = format!("{}-{}", mode.name.replace(' ', "-"), std::process::id());
    let topics = Topics {
        input: format!("tp-{tag}"),
        state: format!("state-{tag}"),
        alerts: format!("alerts-{tag}"),
        dlq: format!("dlq-{tag}"),
        actions: format!("actions-{tag}"),
        group: format!("group-{tag}"),
    };
    let cluster = mock.cluster();
    cluster.create_topic(&topics.input, PARTITIONS, 1)?;
    cluster.create_topic(&topics.state, PARTITIONS, 1)?;
    cluster.create_topic(&topics.alerts, 1, 1)?;
    cluster.create_topic(&topics.dlq, 1, 1)?;
    cluster.create_topic(&topics.actions, PARTITIONS, 1)?;

    let mut svc = Service::start(service_config(&brokers, &topics, mode, args.fetch_wait_ms)?).await?;
    svc.wait_ready(Duration::from_secs(60)).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let opens = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (brokers, topic, fetch_wait) = (brokers.clone(), topics.alerts.clone(), args.fetch_wait_ms);
        let (stop, opens) = (stop.clone(), opens.clone());
        std::thread::spawn(move || read_alerts(&brokers, &topic, fetch_wait, &stop, &opens))
    };

    let wall_minus_mono = monotonic_us().map(|m| now_us() - m);
    mock.start_tracking();
    let warm = (args.rate * args.warmup_seconds as f64) as u64;
    let total = warm + (args.rate * args.seconds as f64) as u64;
    let started = Instant::now();
    let sent_us = {
        let (brokers, topic, rate, every) = (brokers.clone(), topics.input.clone(), args.rate, args.every);
        tokio::task::spawn_blocking(move || pace(&brokers, &topic, rate, total, every)).await??
    };
    let send_secs = started.elapsed().as_secs_f64();

    // Drain: every OPEN alert read, then one more commit interval so the last transaction ends.
    let expected_all = (0..total).filter(|i| i.is_multiple_of(args.every)).count();
    let expected = (warm..total).filter(|i| i.is_multiple_of(args.every)).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while opens.load(Ordering::Relaxed) < expected_all && Instant::now() < deadline {
        svc.alive()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(mode.commit_interval + Duration::from_millis(500)).await;
    let end_txn_mono = mock.end_txn_us();
    mock.stop_tracking();
    let m = svc.metrics().await?;
    svc.stop().await?;
    stop.store(true, Ordering::Relaxed);
    let seen = reader
        .join()
        .map_err(|_| anyhow::anyhow!("alert reader panicked"))??;

    let eos = mode.guarantee == Guarantee::ExactlyOnce;
    let commits_us: Option<Vec<i64>> = match (eos, wall_minus_mono) {
        (true, Some(offset)) => Some(end_txn_mono.iter().map(|t| t + offset).collect()),
        _ => None,
    };
    let mut ids = HashSet::new();
    let mut r = ModeResult {
        name: mode.name,
        eos,
        measured: 0,
        expected,
        read_ms: Vec::new(),
        visible_ms: None,
        visible_alt_ms: None,
        read_before_commit: 0,
        ambiguous: 0,
        uncommitted: 0,
        duplicates: 0,
        commits: m.sum(TXN_COMMITS),
        aborts: m.sum(TXN_ABORTS),
        end_txn: end_txn_mono.len(),
        consumed: m.sum(RECORDS_CONSUMED),
        late: m.sum(LATE_RECORDS),
        dead_letters: m.sum(DEAD_LETTERS),
        send_secs,
        sent: total,
    };
    for s in &seen {
        if !ids.insert(s.alert_id.as_str()) {
            r.duplicates += 1;
            continue;
        }
        let i: usize = s
            .customer
            .strip_prefix("cust-")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("alert for an unknown customer {}", s.customer))?;
        if (i as u64) < warm {
            continue;
        }
        let send = sent_us[i];
        r.measured += 1;
        r.read_ms.push((s.arrival_us - send) as f64 / 1e3);
        let Some(commits) = &commits_us else {
            continue;
        };
        let Some(created) = s.created_ms.map(|ms| ms * 1_000) else {
            r.uncommitted += 1;
            continue;
        };
        // The first EndTxn at or after the millisecond of the send. Within that millisecond the
        // order is unknown: read before that EndTxn, the alert was written before it, so it is
        // its; otherwise it is taken as sent just after it (the records that queued up during
        // a commit are processed right after it) and the other choice is kept for the report.
        let first = commits.partition_point(|&c| c < created);
        let (commit, alternative) = match commits.get(first) {
            Some(&c) if c < created + 1_000 && s.arrival_us >= c => {
                r.ambiguous += 1;
                (commits.get(first + 1).copied(), Some(c))
            }
            other => (other.copied(), None),
        };
        let Some(commit) = commit else {
            r.uncommitted += 1;
            continue;
        };
        if s.arrival_us < commit {
            r.read_before_commit += 1;
        }
        let latency = |c: i64| (s.arrival_us.max(c) - send) as f64 / 1e3;
        r.visible_ms.get_or_insert_with(Vec::new).push(latency(commit));
        r.visible_alt_ms
            .get_or_insert_with(Vec::new)
            .push(latency(alternative.unwrap_or(commit)));
    }
    r.read_ms.sort_by(f64::total_cmp);
    for v in [&mut r.visible_ms, &mut r.visible_alt_ms].into_iter().flatten() {
        v.sort_by(f64::total_cmp);
    }
    Ok(r)
}

struct Topics {
    input: String,
    state: String,
    alerts: String,
    dlq: String,
    actions: String,
    group: String,
}

/// The shipped defaults, HTTP on an ephemeral port, this mode's guarantee and commit interval.
fn service_config(brokers: &str, t: &Topics, mode: &Mode, fetch_wait_ms: u32) -> Result<Config> {
    let mut c = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml"))?;
    c.kafka.brokers = brokers.to_string();
    c.kafka.input_topic = t.input.clone();
    c.kafka.alert_topic = t.alerts.clone();
    c.kafka.dlq_topic = t.dlq.clone();
    c.kafka.action_topic = t.actions.clone();
    c.kafka.group_id = t.group.clone();
    c.kafka
        .librdkafka_options
        .insert("fetch.wait.max.ms".into(), fetch_wait_ms.to_string());
    c.state.changelog_topic = t.state.clone();
    c.input.format = Format::Json;
    c.output.format = Format::Json;
    c.http.listen = "127.0.0.1:0".into();
    c.service.shutdown_timeout = Duration::from_secs(10);
    c.processing.guarantee = mode.guarantee;
    c.processing.commit_interval = mode.commit_interval;
    Ok(c)
}

/// Touchpoint `i` (the shape of `tests/common::payment_lines`), stamped with the wall clock:
/// every `every`-th a failed payment of a fresh customer, the rest happy FAQ views.
fn touchpoint(i: u64, every: u64, occurred_at_ms: i64) -> String {
    let (tp, outcome) = if i.is_multiple_of(every) {
        ("payment.transfer", "FAILURE")
    } else {
        ("faq.view", "SUCCESS")
    };
    serde_json::json!({
        "event_id": format!("ev-{i}"), "customer_id": format!("cust-{i}"),
        "occurred_at": occurred_at_ms, "channel": "WEB", "kind": "INTERACTION",
        "direction": "INBOUND", "journey": "billing", "touchpoint": tp, "outcome": outcome
    })
    .to_string()
}

/// Produces `total` touchpoints at `rate`/s; returns each one's send time (wall µs).
fn pace(brokers: &str, topic: &str, rate: f64, total: u64, every: u64) -> Result<Vec<i64>> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .create()
        .context("creating the input producer")?;
    let mut sent_us = Vec::with_capacity(total as usize);
    let started = Instant::now();
    while (sent_us.len() as u64) < total {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while (sent_us.len() as u64) < due {
            let i = sent_us.len() as u64;
            let at = now_us();
            let payload = touchpoint(i, every, at / 1_000);
            let key = format!("cust-{i}");
            producer
                .send(BaseRecord::to(topic).key(&key).payload(&payload))
                .map_err(|(e, _)| e)
                .context("producing a touchpoint")?;
            sent_us.push(at);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing the input")?;
    Ok(sent_us)
}

/// Reads the alert topic from the beginning with `read_committed` until `stop`; times each alert.
fn read_alerts(
    brokers: &str,
    topic: &str,
    fetch_wait_ms: u32,
    stop: &AtomicBool,
    opens: &AtomicUsize,
) -> Result<Vec<Seen>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("eos-latency-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()
        .context("creating the alert reader")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(msg) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let arrival_us = now_us();
        let msg = msg.context("alert reader")?;
        let alert = cx_sentinel::demo::decode_alert(Format::Json, msg.payload().unwrap_or_default())
            .context("decoding an alert")?;
        if alert.status == AlertStatus::Open {
            opens.fetch_add(1, Ordering::Relaxed);
            seen.push(Seen {
                alert_id: alert.alert_id,
                customer: alert.customer_id,
                arrival_us,
                created_ms: msg.timestamp().to_millis(),
            });
        }
    }
    Ok(seen)
}

// The service in-process.

struct Service {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
}

impl Service {
    async fn start(config: Config) -> Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(service::run(
            config,
            async {
                let _ = stopped.await;
            },
            move |a| {
                let _ = addr_tx.send(a);
            },
        ));
        match addr_rx.await {
            Ok(addr) => Ok(Self { addr, stop, task }),
            Err(_) => bail!("cx-sentinel did not start: {:?}", task.await),
        }
    }

    fn alive(&self) -> Result<()> {
        ensure!(!self.task.is_finished(), "cx-sentinel stopped on its own");
        Ok(())
    }

    async fn metrics(&self) -> Result<Prom> {
        let (status, body) = http_get(self.addr, "/metrics").await?;
        ensure!(status == 200, "GET /metrics answered {status}");
        Ok(Prom(body))
    }

    /// Waits until every input partition is assigned and `/health/ready` answers 200.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.alive()?;
            if self.metrics().await?.sum(ASSIGNED_PARTITIONS) >= PARTITIONS as u64
                && http_get(self.addr, "/health/ready").await?.0 == 200
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "cx-sentinel not ready within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(60), self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(other) => bail!("cx-sentinel failed while stopping: {other:?}"),
            Err(_) => bail!("cx-sentinel did not stop within 60 s"),
        }
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut resp))
        .await
        .with_context(|| format!("GET {path} timed out"))??;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path}: no status line"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A Prometheus text exposition.
struct Prom(String);

impl Prom {
    /// Sum of a metric over all its label sets.
    fn sum(&self, name: &str) -> u64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let metric = series.split_once('{').map_or(series, |(n, _)| n);
                (metric == name).then(|| value.parse::<f64>().ok()).flatten()
            })
            .sum::<f64>()
            .round() as u64
    }
}

// The report.

/// Nearest-rank quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn cols(v: &[f64]) -> String {
    format!(
        "{:>7.1} {:>7.1} {:>7.1} {:>7.1}",
        quantile(v, 0.50),
        quantile(v, 0.90),
        quantile(v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

fn report(results: &[ModeResult]) {
    println!();
    println!(
        "{:<20} {:>6} | {:^31} | {:^31} | {:>12}",
        "mode", "alerts", "reader arrival - send, ms", "visible at commit - send, ms", "commits"
    );
    println!(
        "{:<20} {:>6} | {:>7} {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} {:>7} | {:>12}",
        "", "", "p50", "p90", "p99", "max", "p50", "p90", "p99", "max", "metric/EndTxn"
    );
    for r in results {
        let visible = match (&r.visible_ms, r.eos) {
            (Some(v), _) => cols(v),
            (None, false) => cols(&r.read_ms),
            (None, true) => format!("{:^31}", "n/a"),
        };
        let commits = if r.eos {
            format!("{}/{}", r.commits, r.end_txn)
        } else {
            "-".into()
        };
        println!(
            "{:<20} {:>6} | {} | {} | {:>12}",
            r.name,
            r.measured,
            cols(&r.read_ms),
            visible,
            commits
        );
    }
    let Some(alo) = results.iter().find(|r| !r.eos) else {
        return;
    };
    println!();
    for r in results.iter().filter(|r| r.eos) {
        let d = |v: &[f64], q: f64| quantile(v, q) - quantile(&alo.read_ms, q);
        let visible = r.visible_ms.as_deref().unwrap_or(&[]);
        println!(
            "{} - at_least_once: visible p50 {:+.1} ms, p99 {:+.1} ms; reader arrival p50 {:+.1} ms, p99 {:+.1} ms",
            r.name,
            d(visible, 0.50),
            d(visible, 0.99),
            d(&r.read_ms, 0.50),
            d(&r.read_ms, 0.99),
        );
        if let Some(alt) = r.visible_alt_ms.as_deref().filter(|_| r.ambiguous > 0) {
            println!(
                "    ({} alerts sent in the same ms as an EndTxn, taken as after it; as before it instead: \
                 visible p50 {:+.1} ms, p99 {:+.1} ms)",
                r.ambiguous,
                d(alt, 0.50),
                d(alt, 0.99),
            );
        }
    }
    println!();
    for r in results {
        println!(
            "{}: sent {} in {:.1} s, consumed {}, late {}, dead letters {}, alerts {}/{} measured, duplicates {}{}",
            r.name,
            r.sent,
            r.send_secs,
            r.consumed,
            r.late,
            r.dead_letters,
            r.measured,
            r.expected,
            r.duplicates,
            if r.eos {
                format!(
                    ", aborts {}, read before their commit {}, sent in an EndTxn's ms {}, uncommitted {}",
                    r.aborts, r.read_before_commit, r.ambiguous, r.uncommitted
                )
            } else {
                String::new()
            }
        );
    }
    println!();
    println!(
        "caveat: librdkafka's mock cluster, not a broker. It does not implement read_committed (last stable \
         offset = high watermark, no transaction markers), so the reader sees exactly_once alerts on append, \
         before their commit: 'reader arrival' does not contain the commit wait. 'visible at commit' = \
         max(arrival, the mock's receipt of the EndTxn ending the alert's transaction), when a real broker \
         would expose it (a real broker adds its marker writes and its own fetch wake-up). The mock's fetch \
         wait, round trips and slow consumption (~2k records/s) are in every mode's numbers alike."
    );
}
