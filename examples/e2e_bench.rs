//! End-to-end benchmark of cx-sentinel against a real Kafka-protocol broker (issue 6).
//!
//! `scripts/bench.sh [--events N]` starts the broker and runs this program; `docs/benchmark.md`
//! explains the method and how to read the result. One process, one run:
//!
//! 1. **load**: N generated touchpoints, Confluent-framed Avro keyed by customer id, into a fresh
//!    input topic. Reports the produce rate.
//! 2. **baseline**: a bare rdkafka consumer with the service's consumer settings reads the topic
//!    from the beginning and discards it: the ceiling for any consumer of this broker here.
//! 3. **cx-sentinel**: the real service (`service::run`, lateness 0s) over the same topic with a
//!    fresh group and fresh alert, dead-letter and changelog topics; progress is read from
//!    `/metrics`. Events/s and process CPU µs/event of both phases, measured over their steady
//!    part, and their ratio.
//! 4. **memory**: resident memory the service added, per customer it holds at the end of 3.
//! 5. **latency**: a fresh service fed at a fixed rate with `occurred_at` = wall clock; the age of
//!    each alert when read back from the alert topic gives p50/p99/p999.
//!
//! With `--peer quix`, between 4 and 5: the same rules written with quixstreams (Python,
//! `scripts/peer/quix_sentinel.py`) over the same input topic, fresh group and alert topic; its
//! events/s and CPU µs/event against cx-sentinel's. Optional: a failed peer is reported, not fatal.
//!
//! Prints one table and writes `target/bench/e2e.json`.

#![recursion_limit = "256"]

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::{Parser, ValueEnum};
use cx_sentinel::allocator::AllocatorStats;
use cx_sentinel::codec::{Format, avro};
use cx_sentinel::config::Config;
use cx_sentinel::generator::{Generator, GeneratorConfig};
use cx_sentinel::metrics::{
    ALERTS, ASSIGNED_PARTITIONS, CHANGELOG_RECORDS, CUSTOMERS, DEAD_LETTERS, END_TO_END_SECONDS,
};
use cx_sentinel::metrics::{LATE_RECORDS, PROCESSING_SECONDS, PRODUCE_ERRORS, RECORDS_CONSUMED, STATE_BYTES};
use cx_sentinel::service::{self, ServiceError};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

cx_sentinel::install_allocator!();

/// Schema id written in the Confluent header of every generated touchpoint.
const INPUT_SCHEMA_ID: u32 = 1;
/// Schema id of alerts when `--output-format confluent-avro`.
const OUTPUT_SCHEMA_ID: u32 = 2;
/// Scrape `/metrics` at most this often. A scrape may walk every customer (`state_bytes`, about
/// 0.1 ms per 1000, at most every 10 s), so the interval grows to 50x the scrape's own duration (about 2% of a core).
/// Rates come from the counters at scrape times, so a long interval costs no precision.
const MIN_POLL: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_secs(5);
/// `fetch.wait.max.ms` of the latency run's alert reader: tansu sleeps this long before answering
/// any fetch, so the reader asks eagerly to time-stamp alerts close to their arrival.
const READER_FETCH_WAIT_MS: u32 = 10;

#[derive(Parser, Debug, Clone)]
#[command(about = "End-to-end benchmark: cx-sentinel against a bare consumer, same broker, same run")]
struct Args {
    /// Touchpoints to load, then to consume (baseline) and process (cx-sentinel).
    #[arg(long, default_value_t = 5_000_000)]
    events: u64,
    /// Distinct customers in the generated load (power-law skew: not all of them appear).
    #[arg(long, default_value_t = 1_000_000)]
    customers: u64,
    /// Share of journeys that go wrong (and so page someone).
    #[arg(long, default_value_t = 0.02)]
    trouble_rate: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Partitions of the input topics.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    #[arg(long, env = "CX_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Base configuration. Overridden: brokers, topics, group, formats, `allowed_lateness = 0s`,
    /// `http.listen = 127.0.0.1:0`.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))]
    config: PathBuf,
    /// Sets `fetch.wait.max.ms` for cx-sentinel's consumer and the baseline (librdkafka default
    /// 500). tansu 0.6 sleeps before answering any fetch (250 ms at the default), which caps a
    /// consumer's throughput and sets a floor under the service's latency.
    #[arg(long)]
    fetch_wait_ms: Option<u32>,
    /// Run cx-sentinel without its state changelog (`state.changelog = false`), to see its cost.
    #[arg(long)]
    no_changelog: bool,
    /// Format of the alerts cx-sentinel writes (confluent-avro uses schema id 2).
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    output_format: OutputFormat,
    /// Baseline client: `stream` (StreamConsumer on tokio, the client the service uses) or `base`
    /// (BaseConsumer polled on a plain thread).
    #[arg(long, value_enum, default_value_t = BaselineKind::Stream)]
    baseline: BaselineKind,
    /// Offered rate of the latency run, touchpoints per second.
    #[arg(long, default_value_t = 20_000.0)]
    latency_rate: f64,
    /// Duration of the latency run (0 skips it).
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Seconds at the latency rate before measuring starts (connections, producer id, first
    /// fetches); alerts triggered in them are not counted.
    #[arg(long, default_value_t = 2)]
    latency_warmup_seconds: u64,
    /// Where the JSON result goes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench/e2e.json"))]
    out: PathBuf,
    /// Pid of the broker, to report its CPU per event too (`scripts/bench.sh` passes it).
    #[arg(long, env = "CX_BENCH_BROKER_PID")]
    broker_pid: Option<u32>,
    /// Record `perf` profiles (cpu-clock, DWARF call graphs) of the baseline and cx-sentinel
    /// phases into `perf-baseline.data` and `perf-sentinel.data` next to `--out`.
    #[arg(long)]
    perf: bool,
    /// Leave the benchmark's topics on the broker (they are deleted at the end by default).
    #[arg(long)]
    keep_topics: bool,
    /// Also run the same rules written with another stream library over the same input topic
    /// (fresh group and alert topic), after cx-sentinel, and report it against cx-sentinel.
    /// `quix`: `scripts/peer/quix_sentinel.py` on quixstreams (Python; `scripts/peer/py-env.sh`
    /// creates its virtualenv once). If the peer fails, the other results are still written.
    #[arg(long, value_enum)]
    peer: Option<PeerKind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PeerKind {
    /// cx-sentinel's rules as a quixstreams application (`scripts/peer/quix_sentinel.py`).
    Quix,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Json,
    ConfluentAvro,
}

impl OutputFormat {
    fn format(self) -> Format {
        match self {
            OutputFormat::Json => Format::Json,
            OutputFormat::ConfluentAvro => Format::ConfluentAvro,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BaselineKind {
    Stream,
    Base,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    ensure!(args.events > 0, "--events must be at least 1");
    ensure!(args.partitions > 0, "--partitions must be at least 1");
    ensure!(
        args.latency_rate > 0.0,
        "--latency-rate must be more than 0 (use --latency-seconds 0 to skip the latency run)"
    );
    let probe = Probe::new(args.broker_pid)?;
    let mut topics = Vec::new();
    let result = run(&args, &probe, &mut topics).await;
    if !args.keep_topics && !topics.is_empty() {
        delete_topics(&args.brokers, &topics).await;
    }
    result
}

async fn run(args: &Args, probe: &Probe, topics: &mut Vec<String>) -> Result<()> {
    let n = args.events;
    let timeout = phase_timeout(n);
    let mut config =
        Config::load(&args.config).with_context(|| format!("loading {}", args.config.display()))?;
    config.kafka.brokers = args.brokers.clone();
    if args.no_changelog {
        config.state.changelog = false;
    }
    if let Some(ms) = args.fetch_wait_ms {
        config
            .kafka
            .librdkafka_options
            .insert("fetch.wait.max.ms".into(), ms.to_string());
    }
    let generator = GeneratorConfig {
        seed: args.seed,
        customers: args.customers,
        trouble_rate: args.trouble_rate,
        ..GeneratorConfig::default()
    };
    eprintln!(
        "e2e_bench: {n} events, {} customers, {} partitions, broker {}, commit {}",
        args.customers,
        args.partitions,
        args.brokers,
        git_commit()
    );

    // 1. Load.
    let input = unique("bench-in");
    topics.push(input.clone());
    cx_sentinel::service::kafka::create_topics(&args.brokers, &[(&input, args.partitions)])
        .await
        .with_context(|| {
            format!(
                "creating topic {input} on {} (is the broker up? scripts/kafka.sh up)",
                args.brokers
            )
        })?;
    wait_for_topic(&args.brokers, &input).await?;
    eprintln!("[1/5] load: producing {n} touchpoints into {input}");
    let load = {
        let (brokers, topic, generator) = (args.brokers.clone(), input.clone(), generator.clone());
        tokio::task::spawn_blocking(move || load(&brokers, &topic, generator, n)).await??
    };
    eprintln!(
        "      {:.0} records/s ({:.1} MB in {:.1} s)",
        load.events as f64 / load.secs,
        load.bytes as f64 / 1e6,
        load.secs
    );

    // 2. Baseline.
    eprintln!("[2/5] baseline: {:?} consumer reads {n} records", args.baseline);
    let mut consumer = service::kafka::consumer_config(&config);
    consumer.set("group.id", unique("bench-baseline"));
    let perf = Perf::start(args, "baseline")?;
    let baseline = match args.baseline {
        BaselineKind::Stream => baseline_stream(consumer, &input, n, probe, timeout).await?,
        BaselineKind::Base => {
            let (topic, probe2) = (input.clone(), probe.clone());
            tokio::task::spawn_blocking(move || baseline_base(consumer, &topic, n, &probe2, timeout))
                .await??
        }
    };
    perf.stop();
    eprintln!(
        "      {:.0} events/s, {:.2} CPU µs/event",
        baseline.steady.events_per_s(),
        baseline.steady.cpu_us_per_event()
    );

    // 3 and 4. cx-sentinel over the same topic, and its memory.
    eprintln!(
        "[3/5] cx-sentinel: processing {n} records (lateness 0s, output {:?})",
        args.output_format
    );
    let run_topics = ServiceTopics::create(
        &args.brokers,
        "bench",
        Some(input.clone()),
        args.partitions,
        config.state.changelog,
    )
    .await?;
    topics.extend(run_topics.created());
    let sentinel = sentinel_throughput(args, &config, &run_topics, n, probe, timeout).await?;
    eprintln!(
        "[4/5] memory: {:.1} MB more resident for {} customers",
        sentinel.rss_delta() as f64 / 1e6,
        sentinel.customers
    );

    // Optional peer over the same input.
    let peer = match args.peer {
        Some(kind) => Some(peer_phase(args, &config, kind, &input, n, topics).await),
        None => None,
    };

    // 5. Latency.
    let latency = if args.latency_seconds > 0 {
        eprintln!(
            "[5/5] latency: {:.0} touchpoints/s for {} s into a fresh cx-sentinel",
            args.latency_rate, args.latency_seconds
        );
        let lat_topics = ServiceTopics::create(
            &args.brokers,
            "bench-lat",
            None,
            args.partitions,
            config.state.changelog,
        )
        .await?;
        topics.extend(lat_topics.created());
        let before_relay = probe.snap()?;
        let mut relay = relay_run(args, &config, &generator, topics).await?;
        let before = probe.snap()?;
        let mut l = latency_run(args, &config, &lat_topics, &generator).await?;
        relay.steal = Window::between(&before_relay, &before, 0).steal_share();
        l.steal = Window::between(&before, &probe.snap()?, 0).steal_share();
        l.relay = Some(relay);
        Some(l)
    } else {
        eprintln!("[5/5] latency: skipped (--latency-seconds 0)");
        None
    };

    let report = Report {
        args,
        config: &config,
        load,
        baseline,
        sentinel,
        peer,
        latency,
    };
    println!("{}", report.table());
    let json = report.json();
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("e2e_bench: wrote {}", args.out.display());
    Ok(())
}

/// Generous bound for one phase: a minute plus 100 µs per event (10k events/s).
fn phase_timeout(events: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_micros(100 * events)
}

// ---------------------------------------------------------------------------------------------
// Process measurements: wall clock, CPU time from /proc, resident memory.

/// Reads this process's (and optionally the broker's) CPU time.
#[derive(Clone)]
struct Probe {
    ticks_per_s: f64,
    broker_pid: Option<u32>,
}

/// A point in time with the CPU seconds used so far.
#[derive(Clone, Copy, Debug)]
struct Snap {
    at: Instant,
    cpu: f64,
    broker_cpu: Option<f64>,
    /// CPU seconds the hypervisor gave to other guests while this machine had work (all CPUs,
    /// `steal` of `/proc/stat`): a shared host's noise, reported so a slow run can be told from
    /// a slow program.
    stolen: Option<f64>,
}

impl Probe {
    fn new(broker_pid: Option<u32>) -> Result<Self> {
        let ticks_per_s = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .unwrap_or(100.0);
        let probe = Self {
            ticks_per_s,
            broker_pid,
        };
        probe
            .snap()
            .context("reading /proc/self/stat (the benchmark needs Linux /proc)")?;
        if let Some(pid) = broker_pid
            && probe.cpu_of(&format!("/proc/{pid}/stat")).is_err()
        {
            eprintln!("e2e_bench: cannot read /proc/{pid}/stat; broker CPU will not be reported");
        }
        Ok(probe)
    }

    /// utime + stime (fields 14 and 15 of `/proc/<pid>/stat`) in seconds, all threads.
    fn cpu_of(&self, path: &str) -> Result<f64> {
        let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        Ok(stat_ticks(&stat).with_context(|| format!("parsing {path}"))? as f64 / self.ticks_per_s)
    }

    fn snap(&self) -> Result<Snap> {
        Ok(Snap {
            at: Instant::now(),
            cpu: self.cpu_of("/proc/self/stat")?,
            broker_cpu: self
                .broker_pid
                .and_then(|pid| self.cpu_of(&format!("/proc/{pid}/stat")).ok()),
            stolen: self.stolen(),
        })
    }

    /// The `steal` column of the `cpu` line of `/proc/stat`, in seconds.
    fn stolen(&self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: u64 = stat.lines().next()?.split_whitespace().nth(8)?.parse().ok()?;
        Some(ticks as f64 / self.ticks_per_s)
    }

    /// CPU seconds per thread kind (`tokio-rt-worker`, `rdk:broker`, ...) between two snapshots.
    fn by_thread(&self, before: &Threads, after: &Threads) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (tid, (name, ticks)) in after {
            let start = before.get(tid).map_or(0, |(_, t)| *t);
            let kind = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '/');
            *out.entry(kind.to_string()).or_insert(0.0) +=
                ticks.saturating_sub(start) as f64 / self.ticks_per_s;
        }
        out.retain(|_, v| *v > 0.0);
        out
    }
}

/// utime + stime in clock ticks from the text of a `stat` file.
fn stat_ticks(stat: &str) -> Result<u64> {
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').context("no ')' in stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("stat too short")?
            .parse::<u64>()
            .context("not a number")
    };
    Ok(field(11)? + field(12)?)
}

/// Thread id → (name, CPU ticks) of every thread of this process.
type Threads = BTreeMap<u32, (String, u64)>;

fn threads() -> Threads {
    let mut out = Threads::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let name = match (stat.find('('), stat.rfind(')')) {
            (Some(a), Some(b)) if a < b => stat[a + 1..b].to_string(),
            _ => continue,
        };
        if let Ok(ticks) = stat_ticks(&stat) {
            out.insert(tid, (name, ticks));
        }
    }
    out
}

/// VmRSS of this process in bytes.
fn rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS has no value")?
        .parse()
        .context("VmRSS is not a number")?;
    Ok(kb * 1024)
}

/// Returns freed heap pages to the OS so resident memory counts live data, not what earlier
/// phases freed (or what a later phase could reuse without growing). The process allocator is
/// jemalloc; glibc's heap is trimmed too, for whatever still allocates from it.
fn trim_heap() {
    cx_sentinel::allocator::purge();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's `malloc_trim` takes the arena locks itself and only releases free
        // memory.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Events, wall time and CPU time over one measured interval.
#[derive(Clone, Copy, Debug)]
struct Window {
    events: u64,
    wall: f64,
    cpu: f64,
    broker_cpu: Option<f64>,
    stolen: Option<f64>,
}

impl Window {
    fn between(a: &Snap, b: &Snap, events: u64) -> Self {
        Self {
            events,
            wall: b.at.duration_since(a.at).as_secs_f64(),
            cpu: b.cpu - a.cpu,
            broker_cpu: a.broker_cpu.zip(b.broker_cpu).map(|(a, b)| b - a),
            stolen: a.stolen.zip(b.stolen).map(|(a, b)| b - a),
        }
    }

    /// Share of the machine's CPU time stolen by the hypervisor over the window.
    fn steal_share(&self) -> Option<f64> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        self.stolen.map(|s| s / (self.wall.max(1e-9) * cores))
    }

    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.wall.max(1e-9)
    }

    fn cpu_us_per_event(&self) -> f64 {
        self.cpu * 1e6 / self.events.max(1) as f64
    }

    fn broker_cpu_us_per_event(&self) -> Option<f64> {
        self.broker_cpu.map(|c| c * 1e6 / self.events.max(1) as f64)
    }

    fn json(&self) -> Value {
        json!({
            "events": self.events,
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "events_per_s": self.events_per_s(),
            "cpu_us_per_event": self.cpu_us_per_event(),
            "cores_used": self.cpu / self.wall.max(1e-9),
            "broker_cpu_us_per_event": self.broker_cpu_us_per_event(),
            "steal_share": self.steal_share(),
        })
    }
}

/// Optional `perf record` attached to this process for one phase.
struct Perf(Option<std::process::Child>);

impl Perf {
    fn start(args: &Args, phase: &str) -> Result<Self> {
        if !args.perf {
            return Ok(Self(None));
        }
        let dir = args.out.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let out = dir.join(format!("perf-{phase}.data"));
        let child = std::process::Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "499",
                "--call-graph",
                "dwarf,16384",
                "-p",
            ])
            .arg(std::process::id().to_string())
            .arg("-o")
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting perf (install linux-perf, or drop --perf)")?;
        // Let it attach before the phase starts.
        std::thread::sleep(Duration::from_millis(700));
        eprintln!("      perf recording into {}", out.display());
        Ok(Self(Some(child)))
    }

    fn stop(self) {
        if let Some(mut child) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 1: load.

/// Counts delivery reports of a producer; optionally keeps each record's time from creation
/// (its CreateTime timestamp) to acknowledgement.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// (creation time, creation → acknowledgement) of each record, both ms.
    ack_ms: Option<Mutex<Vec<(i64, i64)>>>,
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
    fn check(&self, expected: u64) -> Result<()> {
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
fn send(producer: &ThreadedProducer<Deliveries>, topic: &str, key: &str, payload: &[u8]) -> Result<()> {
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

fn framed(tp: &cx_sentinel::model::Touchpoint, out: &mut Vec<u8>) {
    out.clear();
    avro::confluent_frame(INPUT_SCHEMA_ID, &avro::encode_touchpoint(tp), out);
}

struct Load {
    events: u64,
    bytes: u64,
    secs: f64,
}

fn load(brokers: &str, topic: &str, generator: GeneratorConfig, n: u64) -> Result<Load> {
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

struct Baseline {
    kind: BaselineKind,
    /// Subscribe to the Nth record.
    total: Window,
    /// First record to the Nth.
    steady: Window,
    threads: BTreeMap<String, f64>,
}

async fn baseline_stream(
    cc: ClientConfig,
    topic: &str,
    n: u64,
    probe: &Probe,
    timeout: Duration,
) -> Result<Baseline> {
    let consumer: StreamConsumer = cc.create().context("creating the baseline consumer")?;
    consumer.subscribe(&[topic])?;
    let started = probe.snap()?;
    let mut first = None;
    let mut count = 0u64;
    let mut errors = 0u32;
    // One timer for the whole phase: no clock reads per record.
    let read = async {
        while count < n {
            match consumer.recv().await {
                Err(e) => {
                    errors += 1;
                    ensure!(errors < 100, "baseline: too many consumer errors, last: {e}");
                    eprintln!("      baseline consumer error: {e}");
                }
                Ok(m) => {
                    if first.is_none() {
                        first = Some((probe.snap()?, threads()));
                    }
                    std::hint::black_box(m.payload_len());
                    count += 1;
                }
            }
        }
        Ok(())
    };
    let read = tokio::time::timeout(timeout, read).await;
    match read {
        Err(_) => bail!("baseline: only {count} of {n} records within {timeout:?}"),
        Ok(r) => r?,
    }
    let end = probe.snap()?;
    let (first, threads0) = first.expect("n > 0");
    Ok(Baseline {
        kind: BaselineKind::Stream,
        total: Window::between(&started, &end, n),
        steady: Window::between(&first, &end, n - 1),
        threads: probe.by_thread(&threads0, &threads()),
    })
}

fn baseline_base(
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
    let mut first = None;
    let mut count = 0u64;
    let mut errors = 0u32;
    while count < n {
        match consumer.poll(Duration::from_millis(100)) {
            // Checked only when idle: no clock reads per record.
            None => ensure!(
                Instant::now() < deadline,
                "baseline: only {count} of {n} records within {timeout:?}"
            ),
            Some(Err(e)) => {
                errors += 1;
                ensure!(errors < 100, "baseline: too many consumer errors, last: {e}");
                eprintln!("      baseline consumer error: {e}");
            }
            Some(Ok(m)) => {
                if first.is_none() {
                    first = Some((probe.snap()?, threads()));
                }
                std::hint::black_box(m.payload_len());
                count += 1;
            }
        }
    }
    let end = probe.snap()?;
    let (first, threads0) = first.expect("n > 0");
    Ok(Baseline {
        kind: BaselineKind::Base,
        total: Window::between(&started, &end, n),
        steady: Window::between(&first, &end, n - 1),
        threads: probe.by_thread(&threads0, &threads()),
    })
}

// ---------------------------------------------------------------------------------------------
// The service in-process, and its /metrics.

/// Input, alert and dead-letter topics and a group for one service run.
struct ServiceTopics {
    input: String,
    alerts: String,
    dlq: String,
    /// The compacted state changelog (as many partitions as the input), unless it is off.
    state: Option<String>,
    group: String,
    input_created: bool,
}

impl ServiceTopics {
    /// Creates fresh alert, dead-letter and changelog topics, and the input topic unless one is
    /// given.
    async fn create(
        brokers: &str,
        prefix: &str,
        input: Option<String>,
        partitions: i32,
        changelog: bool,
    ) -> Result<Self> {
        let t = Self {
            input_created: input.is_none(),
            input: input.unwrap_or_else(|| unique(&format!("{prefix}-in"))),
            alerts: unique(&format!("{prefix}-alerts")),
            dlq: unique(&format!("{prefix}-dlq")),
            state: changelog.then(|| unique(&format!("{prefix}-state"))),
            group: unique(&format!("{prefix}-group")),
        };
        let mut new = vec![(t.alerts.as_str(), 1), (t.dlq.as_str(), 1)];
        if t.input_created {
            new.push((t.input.as_str(), partitions));
        }
        service::kafka::create_topics(brokers, &new)
            .await
            .with_context(|| format!("creating topics on {brokers}"))?;
        if let Some(state) = &t.state {
            service::kafka::create_compacted_topics(brokers, &[(state.as_str(), partitions)])
                .await
                .with_context(|| format!("creating the changelog topic on {brokers}"))?;
        }
        for topic in t.created() {
            wait_for_topic(brokers, &topic).await?;
        }
        Ok(t)
    }

    fn created(&self) -> Vec<String> {
        let mut v = vec![self.alerts.clone(), self.dlq.clone()];
        v.extend(self.state.clone());
        if self.input_created {
            v.push(self.input.clone());
        }
        v
    }
}

fn service_config(args: &Args, base: &Config, t: &ServiceTopics) -> Config {
    let mut c = base.clone();
    c.engine.allowed_lateness = Duration::ZERO;
    c.kafka.input_topic = t.input.clone();
    c.kafka.alert_topic = t.alerts.clone();
    c.kafka.dlq_topic = t.dlq.clone();
    c.kafka.group_id = t.group.clone();
    if let Some(state) = &t.state {
        c.state.changelog_topic = state.clone();
    }
    c.input.format = Format::ConfluentAvro;
    c.output.format = args.output_format.format();
    if args.output_format == OutputFormat::ConfluentAvro {
        c.output.schema_ids = vec![OUTPUT_SCHEMA_ID];
    }
    c.http.listen = "127.0.0.1:0".into();
    c
}

/// cx-sentinel running in this process.
struct Service {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
}

fn outcome(r: std::result::Result<Result<(), ServiceError>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "it returned without an error".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("it panicked: {e}"),
    }
}

impl Service {
    async fn start(config: Config) -> Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let mut task = tokio::spawn(service::run(
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
            Err(_) => bail!("cx-sentinel did not start: {}", outcome((&mut task).await)),
        }
    }

    /// Fails if the service stopped on its own.
    async fn alive(&mut self) -> Result<()> {
        if self.task.is_finished() {
            bail!("cx-sentinel stopped: {}", outcome((&mut self.task).await));
        }
        Ok(())
    }

    async fn metrics(&self) -> Result<Prom> {
        let (status, body) = http_get(self.addr, "/metrics").await?;
        ensure!(status == 200, "GET /metrics answered {status}");
        Ok(Prom(body))
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(90), self.task).await {
            Err(_) => bail!("cx-sentinel did not stop within 90 s"),
            Ok(r) => match r {
                Ok(Ok(())) => Ok(()),
                other => bail!("cx-sentinel failed while stopping: {}", outcome(other)),
            },
        }
    }

    /// Waits until every input partition is assigned.
    async fn wait_assigned(&mut self, partitions: i32, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.alive().await?;
            if self.metrics().await?.sum(ASSIGNED_PARTITIONS) >= f64::from(partitions) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "cx-sentinel was not assigned {partitions} partitions within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).await?;
        Ok::<_, std::io::Error>(resp)
    };
    let resp = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET http://{addr}{path}: no HTTP status line"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A Prometheus text exposition.
struct Prom(String);

impl Prom {
    /// (name, labels without braces, value) of every sample.
    fn samples(&self) -> impl Iterator<Item = (&str, &str, f64)> {
        self.0.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value = value.parse::<f64>().ok()?;
            Some(match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}'), value),
                None => (series, "", value),
            })
        })
    }

    /// Sum over all label sets.
    fn sum(&self, name: &str) -> f64 {
        self.samples()
            .filter(|(n, _, _)| *n == name)
            .map(|(_, _, v)| v)
            .sum()
    }

    fn sum_u64(&self, name: &str) -> u64 {
        self.sum(name).round() as u64
    }

    /// Values by one label (summed over the others).
    fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (n, labels, v) in self.samples() {
            if n == name {
                let key = label_value(labels, label).unwrap_or_default().to_string();
                *out.entry(key).or_insert(0) += v.round() as u64;
            }
        }
        out
    }

    /// `sum by (le) (name_bucket)`: (upper bound, cumulative count), ascending.
    fn histogram(&self, name: &str) -> Buckets {
        let bucket = format!("{name}_bucket");
        let mut cumulative: Vec<(f64, f64)> = Vec::new();
        for (n, labels, v) in self.samples() {
            if n != bucket {
                continue;
            }
            let le = match label_value(labels, "le") {
                Some("+Inf") => f64::INFINITY,
                Some(s) => match s.parse() {
                    Ok(le) => le,
                    Err(_) => continue,
                },
                None => continue,
            };
            match cumulative.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += v,
                None => cumulative.push((le, v)),
            }
        }
        cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets(cumulative)
    }

    /// `histogram_quantile(q, sum by (le) (name_bucket))`: linear within the bucket.
    fn histogram_quantile(&self, name: &str, q: f64) -> Option<f64> {
        self.histogram(name).quantile(q).map(|b| b.estimate)
    }
}

/// A histogram's cumulative buckets, (upper bound, count), ascending.
#[derive(Clone, Debug, Default)]
struct Buckets(Vec<(f64, f64)>);

/// A quantile read from buckets: the bucket it falls in, and Prometheus' linear estimate.
#[derive(Clone, Copy, Debug)]
struct BucketQuantile {
    estimate: f64,
    lower: f64,
    upper: f64,
}

impl Buckets {
    /// What was observed after `earlier` was scraped (same histogram, counts only grow).
    fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, c)| {
                    let before = earlier.0.iter().find(|(b, _)| *b == le).map_or(0.0, |b| b.1);
                    (le, c - before)
                })
                .collect(),
        )
    }

    fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |b| b.1)
    }

    fn quantile(&self, q: f64) -> Option<BucketQuantile> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, count) in &self.0 {
            if count >= rank {
                let estimate = if le.is_infinite() {
                    lower
                } else {
                    lower + (le - lower) * (rank - below) / (count - below).max(1e-12)
                };
                return Some(BucketQuantile {
                    estimate,
                    lower,
                    upper: le,
                });
            }
            (lower, below) = (le, count);
        }
        None
    }
}

fn label_value<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// Waits until the broker lists `topic` with a leader for every partition. A client that fetches
/// a topic tansu 0.6 does not know yet gets an answer (a `CurrentLeader` tag without a topic id)
/// on which librdkafka 2.12 dereferences a null topic name and crashes the process.
async fn wait_for_topic(brokers: &str, topic: &str) -> Result<()> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .context("creating a metadata client")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let md = client.fetch_metadata(Some(&topic), Duration::from_secs(5));
            if let Ok(md) = &md
                && let Some(t) = md.topics().iter().find(|t| t.name() == topic)
                && t.error().is_none()
                && !t.partitions().is_empty()
                && t.partitions()
                    .iter()
                    .all(|p| p.leader() >= 0 && p.error().is_none())
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "topic {topic} has no leader for every partition after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await?
}

/// Sum of the offsets the consumer's group committed on `topic`, partitions `0..partitions`.
fn committed(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Result<u64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .with_context(|| format!("reading the committed offsets on {topic}"))?;
    Ok(got
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o.max(0) as u64,
            _ => 0,
        })
        .sum())
}

/// Reads a single-partition alert topic from the beginning: (records, distinct `alert_id`s,
/// records that do not decode as a `RecoveryAlert` in `format`). Stops 2 s after the last record
/// once `expected` arrived, or 5 s after the last one before. (The broker's high watermark is not
/// used: tansu 0.6 sometimes reports one less.)
async fn read_alert_topic(
    brokers: &str,
    topic: &str,
    format: Format,
    expected: u64,
) -> Result<(u64, u64, u64)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("bench-alert-count"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", READER_FETCH_WAIT_MS.to_string())
        .create()
        .with_context(|| format!("creating a reader of {topic}"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut ids = std::collections::HashSet::new();
    let (mut records, mut undecodable) = (0u64, 0u64);
    loop {
        let idle = if records >= expected { 2 } else { 5 };
        match tokio::time::timeout(Duration::from_secs(idle), consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => bail!("reading {topic}: {e}"),
            Ok(Ok(m)) => {
                records += 1;
                match cx_sentinel::demo::decode_alert(format, m.payload().unwrap_or_default()) {
                    Ok(alert) => {
                        ids.insert(alert.alert_id);
                    }
                    Err(_) => undecodable += 1,
                }
            }
        }
    }
    Ok((records, ids.len() as u64, undecodable))
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

struct Sentinel {
    /// Service start to the last alert acknowledged.
    total: Window,
    /// First scrape with records consumed to the last scrape before all were.
    steady: Window,
    threads: BTreeMap<String, f64>,
    alerts: u64,
    alerts_by_rule: BTreeMap<String, u64>,
    /// Records on the alert topic, read back after the run, and their distinct `alert_id`s.
    alert_records: u64,
    distinct_alert_ids: u64,
    /// Records on the changelog topic after the run (high watermarks; tansu 0.6 may report one
    /// less per partition).
    changelog_records: Option<u64>,
    dead_letters: u64,
    late: u64,
    produce_errors: u64,
    customers: u64,
    state_bytes: u64,
    rss_before: u64,
    rss_after_raw: u64,
    rss_after: u64,
    /// The allocator's counters at the same two points (where jemalloc is the allocator).
    alloc_before: Option<AllocatorStats>,
    alloc_after: Option<AllocatorStats>,
    scrapes: u64,
    /// Time spent serving our scrapes in the steady window, as a share of the process's CPU.
    scrape_share: f64,
    scrape_cpu_ms: f64,
    scrape_wall_ms: f64,
}

impl Sentinel {
    fn rss_delta(&self) -> u64 {
        self.rss_after.saturating_sub(self.rss_before)
    }

    fn bytes_per_customer(&self) -> f64 {
        self.rss_delta() as f64 / self.customers.max(1) as f64
    }

    /// Growth of each allocator counter over the run, `(kind, bytes)`.
    fn alloc_delta(&self) -> Option<[(&'static str, i64); 4]> {
        let (a, b) = (self.alloc_before?.labelled(), self.alloc_after?.labelled());
        Some(std::array::from_fn(|i| (a[i].0, b[i].1 as i64 - a[i].1 as i64)))
    }
}

async fn sentinel_throughput(
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

// ---------------------------------------------------------------------------------------------
// Optional peer (`--peer`): the same rules on another stream library, over the same input topic.

/// What a peer measured: its script's JSON line (measured inside the peer's own process, from
/// its first record to the Nth, like the baseline) and its alert topic read back.
struct Peer {
    kind: PeerKind,
    /// The script's JSON line as printed.
    report: Value,
    events_per_s: f64,
    cpu_us_per_event: f64,
    cores: f64,
    /// The peer process from start to exit (start-up, group join and final commit included).
    total_wall: f64,
    alerts: u64,
    alerts_by_rule: BTreeMap<String, u64>,
    alert_topic: String,
    /// Records on the peer's alert topic, their distinct `alert_id`s, and records that do not
    /// decode as cx-sentinel's JSON `RecoveryAlert`.
    alert_records: u64,
    distinct_alert_ids: u64,
    undecodable_alerts: u64,
}

/// A peer never fails the benchmark: its error is reported instead.
type PeerOutcome = std::result::Result<Peer, String>;

impl PeerKind {
    fn name(self) -> &'static str {
        match self {
            PeerKind::Quix => "quixstreams (Python)",
        }
    }

    fn script(self) -> &'static str {
        match self {
            PeerKind::Quix => "scripts/peer/quix_sentinel.py",
        }
    }

    fn env_script(self) -> &'static str {
        match self {
            PeerKind::Quix => "scripts/peer/py-env.sh",
        }
    }
}

impl Peer {
    /// Alerts of the peer against cx-sentinel's, rule by rule.
    fn alerts_line(&self, sentinel: &BTreeMap<String, u64>) -> String {
        let mut rules: Vec<&String> = self.alerts_by_rule.keys().chain(sentinel.keys()).collect();
        rules.sort();
        rules.dedup();
        let by_rule: Vec<String> = rules
            .iter()
            .map(|r| {
                let count = |m: &BTreeMap<String, u64>| m.get(*r).copied().unwrap_or(0);
                format!("{r} {}/{}", count(&self.alerts_by_rule), count(sentinel))
            })
            .collect();
        format!(
            "peer alerts: {} emitted, {} on its alert topic ({} distinct ids{}); by rule, peer/cx-sentinel: {}",
            self.alerts,
            self.alert_records,
            self.distinct_alert_ids,
            if self.undecodable_alerts > 0 {
                format!(", {} not decodable as RecoveryAlert", self.undecodable_alerts)
            } else {
                String::new()
            },
            by_rule.join(", ")
        )
    }

    fn json(&self) -> Value {
        json!({
            "kind": value_name(self.kind),
            "events_per_s": self.events_per_s,
            "cpu_us_per_event": self.cpu_us_per_event,
            "cores_used": self.cores,
            "total_wall_s": self.total_wall,
            "alerts": self.alerts,
            "alerts_by_rule": self.alerts_by_rule,
            "alert_topic": self.alert_topic,
            "alert_records_on_topic": self.alert_records,
            "distinct_alert_ids": self.distinct_alert_ids,
            "undecodable_alerts": self.undecodable_alerts,
            "report": self.report,
        })
    }
}

/// Runs the peer over `input` with a fresh group and alert topic. Every topic it creates (the
/// alert topic, and the state changelog quixstreams creates itself) goes into `topics`.
async fn peer_phase(
    args: &Args,
    config: &Config,
    kind: PeerKind,
    input: &str,
    n: u64,
    topics: &mut Vec<String>,
) -> PeerOutcome {
    eprintln!("[peer] {}: processing {n} records of {input}", kind.name());
    let group = unique("bench-peer-group");
    let result = peer_run(args, config, kind, input, n, &group, topics).await;
    // quixstreams names its internal topics `<type>__<group>--...`: the group is fresh, so
    // everything with it in the name is this run's.
    match topics_containing(&args.brokers, &format!("__{group}--")).await {
        Ok(names) => topics.extend(names),
        Err(e) => eprintln!("      could not list the peer's changelog topics (not deleted): {e:#}"),
    }
    match result {
        Ok(p) => {
            eprintln!(
                "      done: {:.0} events/s, {:.2} CPU µs/event; {} alerts",
                p.events_per_s, p.cpu_us_per_event, p.alerts
            );
            Ok(p)
        }
        Err(e) => {
            let e = format!("{e:#}");
            eprintln!(
                "e2e_bench: ERROR: the peer ({}) failed; reporting the other results without it:\n  {}",
                value_name(kind),
                e.replace('\n', "\n  ")
            );
            Err(e)
        }
    }
}

/// The last `lines` lines of a child's output, for an error message.
fn tail(output: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(output);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn peer_run(
    args: &Args,
    config: &Config,
    kind: PeerKind,
    input: &str,
    n: u64,
    group: &str,
    topics: &mut Vec<String>,
) -> Result<Peer> {
    let alert_topic = unique("bench-peer-alerts");
    service::kafka::create_topics(&args.brokers, &[(&alert_topic, 1)])
        .await
        .with_context(|| format!("creating the peer's alert topic on {}", args.brokers))?;
    topics.push(alert_topic.clone());
    wait_for_topic(&args.brokers, &alert_topic).await?;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let env_script = root.join(kind.env_script());
    let env = tokio::process::Command::new(&env_script)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", env_script.display()))?;
    ensure!(
        env.status.success(),
        "{} failed ({}):\n{}",
        env_script.display(),
        env.status,
        tail(&env.stderr, 20)
    );
    let python = String::from_utf8_lossy(&env.stdout).trim().to_string();
    ensure!(
        !python.is_empty(),
        "{} printed no interpreter path",
        env_script.display()
    );

    // The peer gets what cx-sentinel got: the rules of the same configuration, the same fetch
    // wait (tansu sleeps that long before answering every fetch) and commit interval.
    // At least 1,000 events/s, plus a minute for start-up.
    let limit = Duration::from_secs(60) + Duration::from_millis(n);
    let script = root.join(kind.script());
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(&script)
        .args(["--brokers", &args.brokers, "--topic", input])
        .args(["--alert-topic", &alert_topic, "--group", group])
        .args(["--events", &n.to_string()])
        .arg("--config")
        .arg(&args.config)
        .args([
            "--commit-interval",
            &config.processing.commit_interval.as_secs_f64().to_string(),
        ])
        .args(["--timeout", &limit.as_secs().to_string()])
        .kill_on_drop(true);
    if let Some(ms) = config.kafka.librdkafka_options.get("fetch.wait.max.ms") {
        cmd.args(["--fetch-wait-ms", ms]);
    }
    let out = tokio::time::timeout(limit + Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| anyhow!("{} did not exit within {:?}", script.display(), limit))?
        .with_context(|| format!("running {python} {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({}); its last output:\n{}",
        script.display(),
        out.status,
        tail(&out.stderr, 25)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{} printed no JSON result", script.display()))
        .and_then(|l| serde_json::from_str(l).context("parsing the peer's JSON result"))?;
    let number = |key: &str| {
        report
            .get(key)
            .and_then(Value::as_f64)
            .with_context(|| format!("the peer's result has no number `{key}`"))
    };
    let alerts = number("alerts")? as u64;
    let alerts_by_rule = report
        .get("alerts_by_rule")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let (alert_records, distinct_alert_ids, undecodable_alerts) =
        read_alert_topic(&args.brokers, &alert_topic, Format::Json, alerts).await?;
    if alert_records < alerts {
        eprintln!(
            "      warning: the peer emitted {alerts} alerts but only {alert_records} are on {alert_topic}"
        );
    }
    Ok(Peer {
        kind,
        events_per_s: number("events_per_s")?,
        cpu_us_per_event: number("cpu_us_per_event")?,
        cores: number("cores_used")?,
        total_wall: number("total_wall_s")?,
        report,
        alerts,
        alerts_by_rule,
        alert_topic,
        alert_records,
        distinct_alert_ids,
        undecodable_alerts,
    })
}

/// Names of the broker's topics that contain `needle`.
async fn topics_containing(brokers: &str, needle: &str) -> Result<Vec<String>> {
    let (brokers, needle) = (brokers.to_string(), needle.to_string());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .context("creating a metadata client")?;
        let md = client
            .fetch_metadata(None, Duration::from_secs(10))
            .context("listing topics")?;
        Ok(md
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|t| t.contains(&needle))
            .collect())
    })
    .await?
}

// ---------------------------------------------------------------------------------------------
// Phase 5: latency at a fixed offered rate.

struct Latency {
    rate: f64,
    seconds: u64,
    warmup: u64,
    input: Paced,
    /// Alert age when read back by a downstream consumer (ms), sorted.
    ages_ms: Vec<i64>,
    /// The two legs of each age (ms), each sorted: trigger produced → processed (`detected_at`),
    /// and processed → read back. Same host, same clock.
    to_detect_ms: Vec<i64>,
    after_detect_ms: Vec<i64>,
    /// Alerts triggered during the warm-up, not counted.
    warmup_alerts: u64,
    /// Alerts fired by timers (event time is a deadline, not a produce time).
    timer_alerts: u64,
    undecodable: u64,
    /// The service's `cx_sentinel_end_to_end_latency_seconds` over the measured part: a
    /// trigger's produce time (its `occurred_at`) to the broker's acknowledgement of the alert.
    acked: Buckets,
    /// The bare relay, measured just before at the same rate.
    relay: Option<Relay>,
    /// Share of the machine's CPU stolen by the hypervisor during the run.
    steal: Option<f64>,
    /// `cx_sentinel_processing_duration_seconds` (decode + engine + enqueue, per record).
    processing_p50_us: Option<f64>,
    processing_p99_us: Option<f64>,
}

fn now_ms() -> i64 {
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
    let acks = std::mem::take(
        &mut *producer
            .context()
            .ack_ms
            .as_ref()
            .expect("set above")
            .lock()
            .expect("not poisoned"),
    );
    let mut ack_ms: Vec<i64> = acks
        .into_iter()
        .filter(|&(created, _)| created >= measured_from)
        .map(|(_, ms)| ms)
        .collect();
    ack_ms.sort_unstable();
    Ok(Paced {
        produced: total,
        measured: ack_ms.len() as u64,
        secs,
        measured_from,
        ack_ms,
    })
}

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
fn quantile(sorted: &[i64], q: f64) -> Option<f64> {
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
struct Relay {
    input: Paced,
    /// Each measured record's produce time to the acknowledgement of its forwarded copy (ms),
    /// sorted.
    ack_ms: Vec<i64>,
    steal: Option<f64>,
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
            "steal_share": self.steal,
        })
    }
}

/// The latency baseline: a bare relay with the service's consumer and producer settings that
/// forwards every record, as it is, to another topic, fed by the same paced producer. Its
/// produce → acknowledged latency is what any consume → produce service gets from this broker
/// and machine before doing any work; cx-sentinel's is set against it.
async fn relay_run(
    args: &Args,
    config: &Config,
    generator: &GeneratorConfig,
    topics: &mut Vec<String>,
) -> Result<Relay> {
    let (input, output) = (unique("bench-relay-in"), unique("bench-relay-out"));
    service::kafka::create_topics(&args.brokers, &[(&input, args.partitions), (&output, 1)])
        .await
        .context("creating the relay's topics")?;
    topics.extend([input.clone(), output.clone()]);
    for t in [&input, &output] {
        wait_for_topic(&args.brokers, t).await?;
    }
    let consumer: StreamConsumer = service::kafka::consumer_config(config)
        .set("group.id", unique("bench-relay"))
        .create()
        .context("creating the relay's consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        tpl.add_partition_offset(&input, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let producer: ThreadedProducer<Deliveries> = service::kafka::producer_config(config)
        .create_with_context(Deliveries {
            ack_ms: Some(Mutex::new(Vec::new())),
            ..Deliveries::default()
        })
        .context("creating the relay's producer")?;
    let producer = Arc::new(producer);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = {
        let producer = producer.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = &mut stopped => return Ok(()),
                    m = consumer.recv() => m.context("relay consumer")?,
                };
                // The copy keeps the original's timestamp: its produce time.
                let mut record = BaseRecord::to(&output)
                    .key(msg.key().unwrap_or_default())
                    .payload(msg.payload().unwrap_or_default());
                if let Some(ts) = msg.timestamp().to_millis() {
                    record = record.timestamp(ts);
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
    let input = {
        let (brokers, topic) = (args.brokers.clone(), input.clone());
        let generator = GeneratorConfig {
            seed: generator.seed.wrapping_add(2),
            ..generator.clone()
        };
        let (rate, warmup, secs) = (
            args.latency_rate,
            args.latency_warmup_seconds,
            args.latency_seconds,
        );
        let (warmed, _) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || paced(&brokers, &topic, generator, rate, warmup, secs, warmed))
            .await??
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while producer.context().ok.load(Ordering::Relaxed) < input.produced {
        if relay.is_finished() {
            let why = match relay.await {
                Ok(Err(e)) => format!("{e:#}"),
                Ok(Ok(())) => "without an error".into(),
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
    relay.await.context("relay task")??;
    producer.context().check(input.produced)?;
    let acks = std::mem::take(
        &mut *producer
            .context()
            .ack_ms
            .as_ref()
            .expect("set above")
            .lock()
            .expect("not poisoned"),
    );
    let mut ack_ms: Vec<i64> = acks
        .into_iter()
        .filter(|&(created, _)| created >= input.measured_from)
        .map(|(_, ms)| ms)
        .collect();
    ack_ms.sort_unstable();
    Ok(Relay {
        input,
        ack_ms,
        steal: None,
    })
}

async fn latency_run(
    args: &Args,
    base: &Config,
    topics: &ServiceTopics,
    generator: &GeneratorConfig,
) -> Result<Latency> {
    let mut svc = Service::start(service_config(args, base, topics)).await?;
    svc.wait_assigned(args.partitions, Duration::from_secs(60))
        .await?;

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
        let (brokers, topic) = (args.brokers.clone(), topics.input.clone());
        let generator = GeneratorConfig {
            seed: generator.seed.wrapping_add(1),
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
        relay: None,
        steal: None,
        processing_p50_us: m.histogram_quantile(PROCESSING_SECONDS, 0.50).map(|s| s * 1e6),
        processing_p99_us: m.histogram_quantile(PROCESSING_SECONDS, 0.99).map(|s| s * 1e6),
    })
}

// ---------------------------------------------------------------------------------------------
// Report.

struct Report<'a> {
    args: &'a Args,
    /// The configuration the service ran with (before the per-run topics).
    config: &'a Config,
    load: Load,
    baseline: Baseline,
    sentinel: Sentinel,
    /// `--peer`: what it measured, or why it failed.
    peer: Option<PeerOutcome>,
    latency: Option<Latency>,
}

fn percent(share: Option<f64>) -> String {
    share.map_or("-".into(), |s| format!("{:.0}%", s * 100.0))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

impl Report<'_> {
    fn guarantee(&self) -> String {
        serde_json::to_value(self.config.processing.guarantee)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn throughput_ratio(&self) -> f64 {
        self.sentinel.steady.events_per_s() / self.baseline.steady.events_per_s()
    }

    fn cpu_ratio(&self) -> f64 {
        self.sentinel.steady.cpu_us_per_event() / self.baseline.steady.cpu_us_per_event().max(1e-9)
    }

    fn table(&self) -> String {
        let (b, s) = (&self.baseline, &self.sentinel);
        let mut t = String::new();
        let mut line = |l: String| {
            t.push_str(&l);
            t.push('\n');
        };
        line(format!(
            "cx-sentinel end-to-end benchmark: {} events, {} customers, {} partitions, commit {}",
            self.args.events,
            self.args.customers,
            self.args.partitions,
            git_commit()
        ));
        line(format!(
            "cx-sentinel: {}, state changelog {}, lateness 0s, alerts as {}",
            self.guarantee(),
            if self.config.state.changelog { "on" } else { "off" },
            value_name(self.args.output_format)
        ));
        line(format!(
            "load: {:.0} records/s produced ({:.1} MB, {:.0} B/record)",
            self.load.events as f64 / self.load.secs,
            self.load.bytes as f64 / 1e6,
            self.load.bytes as f64 / self.load.events as f64
        ));
        line(String::new());
        line(format!(
            "{:<28} {:>12} {:>14} {:>10} {:>10} {:>14} {:>8}",
            "", "events/s", "CPU µs/event", "cores", "wall s", "broker µs/ev", "steal"
        ));
        let kind = match b.kind {
            BaselineKind::Stream => "baseline (StreamConsumer)",
            BaselineKind::Base => "baseline (BaseConsumer)",
        };
        for (name, w, total) in [(kind, &b.steady, &b.total), ("cx-sentinel", &s.steady, &s.total)] {
            line(format!(
                "{:<28} {:>12.0} {:>14.2} {:>10.2} {:>10.2} {:>14} {:>8}",
                name,
                w.events_per_s(),
                w.cpu_us_per_event(),
                w.cpu / w.wall.max(1e-9),
                total.wall,
                opt(w.broker_cpu_us_per_event(), 2),
                percent(w.steal_share()),
            ));
        }
        line(format!(
            "{:<28} {:>12.3} {:>14.2}",
            "ratio sentinel/baseline",
            self.throughput_ratio(),
            self.cpu_ratio()
        ));
        match &self.peer {
            None => {}
            Some(Ok(p)) => {
                line(format!(
                    "{:<28} {:>12.0} {:>14.2} {:>10.2} {:>10.2} {:>14}",
                    format!("peer: {}", p.kind.name()),
                    p.events_per_s,
                    p.cpu_us_per_event,
                    p.cores,
                    p.total_wall,
                    "-"
                ));
                line(format!(
                    "{:<28} {:>12.3} {:>14.2}",
                    "ratio peer/cx-sentinel",
                    p.events_per_s / s.steady.events_per_s().max(1e-9),
                    p.cpu_us_per_event / s.steady.cpu_us_per_event().max(1e-9)
                ));
            }
            Some(Err(e)) => line(format!("peer: FAILED, not measured: {}", e.replace('\n', "\n  "))),
        }
        let wait = self.args.fetch_wait_ms.unwrap_or(500);
        let sleep = if wait >= 250 { wait / 2 } else { wait };
        line(format!(
            "note: fetch.wait.max.ms = {wait} ms{}: tansu 0.6 sleeps about {sleep} ms before answering \
             any fetch and returns at most 5 MiB, which can cap both consumers (docs/benchmark.md)",
            if self.args.fetch_wait_ms.is_none() {
                " (default)"
            } else {
                ""
            }
        ));
        line(format!(
            "our /metrics polling: {:.1}% of cx-sentinel's CPU ({:.1} ms per scrape at the end)",
            s.scrape_share * 100.0,
            s.scrape_cpu_ms
        ));
        line(String::new());
        match &self.latency {
            Some(l) => {
                let est = |q| opt(l.acked_ms(q).map(|b| b.estimate), 1);
                let bucket = |q| {
                    l.acked_ms(q)
                        .map_or("-".into(), |b| format!("({:.0}, {:.0}]", b.lower, b.upper))
                };
                line(format!(
                    "latency at {:.0} events/s offered for {} s after {} s warm-up, produced -> alert \
                     acknowledged ({:.0} alerts, service histogram): p50 {} ms, p99 {} ms in {}, \
                     p999 {} ms in {} (steal {})",
                    l.rate,
                    l.seconds,
                    l.warmup,
                    l.acked.count(),
                    est(0.5),
                    est(0.99),
                    bucket(0.99),
                    est(0.999),
                    bucket(0.999),
                    percent(l.steal),
                ));
                if let Some(r) = &l.relay {
                    let p99 = l.acked_ms(0.99).map(|b| b.estimate);
                    line(format!(
                        "  baseline, a bare relay (the service's client settings, every record \
                         forwarded), produced -> acknowledged ({} records, exact): p50 {} ms, p99 {} ms, \
                         p999 {} ms (steal {}); p99 ratio cx-sentinel/relay {}",
                        r.ack_ms.len(),
                        opt(quantile(&r.ack_ms, 0.5), 0),
                        opt(quantile(&r.ack_ms, 0.99), 0),
                        opt(quantile(&r.ack_ms, 0.999), 0),
                        percent(r.steal),
                        opt(p99.zip(quantile(&r.ack_ms, 0.99)).map(|(s, r)| s / r.max(1.0)), 2),
                    ));
                }
                line(format!(
                    "  produced -> read back by a consumer ({} alerts, exact): p50 {} ms, p99 {} ms, \
                     p999 {} ms",
                    l.ages_ms.len(),
                    opt(l.quantile(0.5), 0),
                    opt(l.quantile(0.99), 0),
                    opt(l.quantile(0.999), 0),
                ));
            }
            None => line("latency: skipped".into()),
        }
        if let Some(l) = &self.latency {
            let legs = |v: &[i64]| [0.5, 0.99, 0.999].map(|q| opt(quantile(v, q), 0)).join("/");
            line(format!(
                "  legs p50/p99/p999 ms: produced -> processed {}; processed -> read back {}",
                legs(&l.to_detect_ms),
                legs(&l.after_detect_ms)
            ));
        }
        line(format!(
            "memory: +{:.1} MB resident for {} customers = {:.0} bytes/customer (engine estimate {:.0})",
            s.rss_delta() as f64 / 1e6,
            s.customers,
            s.bytes_per_customer(),
            s.state_bytes as f64 / s.customers.max(1) as f64
        ));
        if let Some(d) = s.alloc_delta() {
            let per = |b: i64| b as f64 / s.customers.max(1) as f64;
            line(format!(
                "  allocator (jemalloc) bytes/customer: allocated {:.0}, active {:.0}, resident {:.0}, metadata {:.0}",
                per(d[0].1),
                per(d[1].1),
                per(d[2].1),
                per(d[3].1)
            ));
        }
        line(format!(
            "alerts: {} acknowledged, {} on the alert topic ({} distinct ids); dead letters {}{}",
            s.alerts,
            s.alert_records,
            s.distinct_alert_ids,
            s.dead_letters,
            s.changelog_records.map_or(String::new(), |c| format!(
                "; changelog records {c} ({:.2} per event)",
                c as f64 / self.args.events as f64
            ))
        ));
        if let Some(Ok(p)) = &self.peer {
            line(p.alerts_line(&s.alerts_by_rule));
        }
        t
    }

    fn json(&self) -> Value {
        let mut v = self.json_without_peer();
        if let (Some(peer), Some(obj)) = (&self.peer, v.as_object_mut()) {
            let s = &self.sentinel.steady;
            let ok = peer.as_ref().ok();
            obj.insert("peer_events_per_s".into(), json!(ok.map(|p| p.events_per_s)));
            obj.insert(
                "peer_cpu_us_per_event".into(),
                json!(ok.map(|p| p.cpu_us_per_event)),
            );
            obj.insert(
                "peer_throughput_ratio".into(),
                json!(ok.map(|p| p.events_per_s / s.events_per_s().max(1e-9))),
            );
            obj.insert(
                "peer_cpu_ratio".into(),
                json!(ok.map(|p| p.cpu_us_per_event / s.cpu_us_per_event().max(1e-9))),
            );
            obj.insert("peer_alerts".into(), json!(ok.map(|p| p.alerts)));
            obj.insert(
                "peer".into(),
                match peer {
                    Ok(p) => p.json(),
                    Err(e) => {
                        json!({ "kind": value_name(self.args.peer.unwrap_or(PeerKind::Quix)), "error": e })
                    }
                },
            );
        }
        v
    }

    fn json_without_peer(&self) -> Value {
        let (b, s) = (&self.baseline, &self.sentinel);
        let lat = self.latency.as_ref();
        // The measure: produce time to the alert's acknowledgement.
        let q = |p: f64| lat.and_then(|l| l.acked_ms(p)).map(|b| b.estimate);
        json!({
            "events": self.args.events,
            "customers_generated": self.args.customers,
            "trouble_rate": self.args.trouble_rate,
            "partitions": self.args.partitions,
            "fetch_wait_ms": self.args.fetch_wait_ms,
            "changelog": self.config.state.changelog,
            "guarantee": self.guarantee(),
            "output_format": value_name(self.args.output_format),
            "baseline_kind": value_name(b.kind),
            "git_commit": git_commit(),
            "measured_at": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "produce_events_per_s": self.load.events as f64 / self.load.secs,
            "input_bytes": self.load.bytes,
            "baseline_events_per_s": b.steady.events_per_s(),
            "sentinel_events_per_s": s.steady.events_per_s(),
            "throughput_ratio": self.throughput_ratio(),
            "baseline_cpu_us_per_event": b.steady.cpu_us_per_event(),
            "sentinel_cpu_us_per_event": s.steady.cpu_us_per_event(),
            "cpu_ratio": self.cpu_ratio(),
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
            "p999_ms": q(0.999),
            "relay_p99_ms": lat.and_then(|l| l.relay.as_ref()).and_then(|r| quantile(&r.ack_ms, 0.99)),
            "bytes_per_customer": s.bytes_per_customer(),
            "baseline": {
                "steady": b.steady.json(),
                "total": b.total.json(),
                "cpu_s_by_thread": b.threads,
            },
            "sentinel": {
                "steady": s.steady.json(),
                "total": s.total.json(),
                "cpu_s_by_thread": s.threads,
                "alerts": s.alerts,
                "alerts_by_rule": s.alerts_by_rule,
                "alert_records_on_topic": s.alert_records,
                "distinct_alert_ids": s.distinct_alert_ids,
                "changelog_records": s.changelog_records,
                "dead_letters": s.dead_letters,
                "late_records": s.late,
                "produce_errors": s.produce_errors,
                "metrics_scrapes": s.scrapes,
                "metrics_scrape_share_of_cpu": s.scrape_share,
                "metrics_scrape_cpu_ms": s.scrape_cpu_ms,
                "metrics_scrape_wall_ms": s.scrape_wall_ms,
            },
            "memory": {
                "customers_in_state": s.customers,
                "rss_before_bytes": s.rss_before,
                "rss_after_bytes": s.rss_after,
                "rss_after_untrimmed_bytes": s.rss_after_raw,
                "bytes_per_customer": s.bytes_per_customer(),
                "engine_state_bytes": s.state_bytes,
                "engine_bytes_per_customer": s.state_bytes as f64 / s.customers.max(1) as f64,
                "allocator_delta_bytes": s.alloc_delta().map(|d| {
                    d.iter().map(|&(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()
                }),
            },
            "latency": lat.map(Latency::json),
        })
    }
}

impl Latency {
    /// Produced → read back by a downstream consumer, exact.
    fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.ages_ms, q)
    }

    /// Produced → alert acknowledged, from the service's histogram, in ms.
    fn acked_ms(&self, q: f64) -> Option<BucketQuantile> {
        self.acked.quantile(q).map(|b| BucketQuantile {
            estimate: b.estimate * 1e3,
            lower: b.lower * 1e3,
            upper: b.upper * 1e3,
        })
    }

    fn json(&self) -> Value {
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

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// How a command-line choice is spelled.
fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// A name no earlier run against the same broker used.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The commit measured, `-dirty` when tracked files differ from it.
fn git_commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) => {
            format!("{c}-dirty")
        }
        Some(c) => c,
        None => "unknown".into(),
    }
}

/// Best effort: the broker keeps every record in memory.
async fn delete_topics(brokers: &str, topics: &[String]) {
    let admin: AdminClient<DefaultClientContext> =
        match ClientConfig::new().set("bootstrap.servers", brokers).create() {
            Ok(a) => a,
            Err(e) => return eprintln!("e2e_bench: cannot delete topics: {e}"),
        };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    match admin.delete_topics(&names, &opts).await {
        Ok(results) => {
            let failed: Vec<String> = results
                .into_iter()
                .filter_map(|r| r.err().map(|(t, c)| format!("{t}: {c}")))
                .collect();
            if !failed.is_empty() {
                eprintln!("e2e_bench: could not delete topics: {}", failed.join(", "));
            }
        }
        Err(e) => eprintln!("e2e_bench: could not delete topics: {e}"),
    }
}
