//! End-to-end benchmark of cx-sentinel against a real Kafka-protocol broker (issue 6).
//!
//! `scripts/bench.sh [--events N]` starts the broker and runs this program; `docs/benchmark.md`
//! explains the method and how to read the result. One process, one run:
//!
//! 1. **load**: N generated touchpoints, Confluent-framed Avro keyed by customer id, into a fresh
//!    input topic. Reports the produce rate.
//! 2. **baseline**: a bare rdkafka consumer with the service's consumer settings reads the topic
//!    from the beginning and discards it: the ceiling for any consumer of this broker here.
//! 3. **cx-sentinel**: the real service (`service::run`, shipped defaults) over the same topic with a
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
//!
//! Modules: `probe` (CPU time, memory, `perf`), `prom` (the `/metrics` reader), `service` (the
//! service in-process and its topics), `throughput` (phases 1 to 4), `peer` (`--peer`), `latency`
//! (phase 5), `report` (the table and the JSON).

#![recursion_limit = "256"]

use anyhow::{Context, Result, ensure};
use clap::{Parser, ValueEnum};
use cx_sentinel::codec::Format;
use cx_sentinel::config::Config;
use cx_sentinel::generator::GeneratorConfig;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use std::path::PathBuf;
use std::time::Duration;

mod latency;
mod peer;
mod probe;
mod prom;
mod report;
mod service;
mod throughput;

use latency::{latency_run, relay_run};
use peer::peer_phase;
use probe::{Perf, Probe, Window};
use report::Report;
use service::{ServiceTopics, wait_for_topic};
use throughput::{baseline_base, baseline_stream, load, sentinel_throughput};

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
    /// Base configuration (the shipped defaults). Overridden: brokers, topics, group, formats,
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
    /// Run the latency baseline's bare relay alongside cx-sentinel, on its input topic at the
    /// same time (its own group), instead of before it on a topic of its own: both then see the
    /// same records under the same broker and host conditions, so the comparison survives a
    /// noisy host; the relay's forwarding adds to the broker's load during cx-sentinel's run.
    #[arg(long)]
    relay_alongside: bool,
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
    // Event time ends an hour before now, as live traffic's would: the shipped config checks
    // touchpoints against their records' timestamps (max_clock_skew), and an idle partition's
    // timers follow the wall clock, so data from months ago would expire every case and evict
    // every customer as soon as the input drains.
    let defaults = GeneratorConfig::default();
    let span_ms = (n as f64 * 1000.0 / defaults.events_per_second) as i64;
    let generator = GeneratorConfig {
        seed: args.seed,
        customers: args.customers,
        trouble_rate: args.trouble_rate,
        start_ms: latency::now_ms() - span_ms - 3_600_000,
        ..defaults
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
    let mut consumer = cx_sentinel::service::kafka::consumer_config(&config);
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
        "[3/5] cx-sentinel: processing {n} records (shipped defaults, output {:?})",
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
        let relay = match args.relay_alongside {
            true => None,
            false => Some(relay_run(args, &config, &generator, topics).await?),
        };
        let before = probe.snap()?;
        let mut l = latency_run(args, &config, &lat_topics, &generator, topics).await?;
        l.steal = Window::between(&before, &probe.snap()?, 0).steal_share();
        if let Some(mut relay) = relay {
            relay.steal = Window::between(&before_relay, &before, 0).steal_share();
            l.relay = Some(relay);
        } else if let Some(relay) = l.relay.as_mut() {
            relay.steal = l.steal;
        }
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
