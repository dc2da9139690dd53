//! Restore speed: fills a changelog partition on the real broker with customer snapshots (each
//! carrying its input offset, as the service writes them), then times `restore_partition` into
//! an empty engine. `scripts/kafka.sh up` first.
//!
//! `cargo run --release --example restore_bench -- [RECORDS] [BROKERS] [--bare]` (default 500000,
//! 127.0.0.1:19092). `--bare` first reads the same partition with the restore's consumer and
//! discards every record, and reports the restore's rate as a ratio of that baseline: on a shared
//! machine the broker's speed varies from run to run, the ratio much less.

use cx_sentinel::config::Config;
use cx_sentinel::engine::{Engine, Stream};
use cx_sentinel::generator::{Generator, GeneratorConfig};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::{Duration, Instant};

cx_sentinel::install_allocator!();

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let (flags, mut args): (Vec<String>, Vec<String>) =
        std::env::args().skip(1).partition(|a| a.starts_with("--"));
    let bare = match flags.as_slice() {
        [] => false,
        [f] if f == "--bare" => true,
        other => anyhow::bail!("unknown flags {other:?}; usage: [RECORDS] [BROKERS] [--bare]"),
    };
    args.reverse();
    let mut args = std::iter::from_fn(move || args.pop());
    let records: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(500_000);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:19092".into());
    let topic = format!("restore-bench-{}", std::process::id());
    cx_sentinel::service::kafka::create_compacted_topics(&brokers, &[(&topic, 1)]).await?;

    // Realistic states: 100k customers with generated journeys, each snapshotted as it changes.
    let mut config = Config::default();
    config.kafka.brokers = brokers.clone();
    config.state.changelog_topic = topic.clone();
    let engine = Arc::new(Engine::new(config.clone()));
    let mut stream = Stream::new(engine.clone());
    let mut generator = Generator::new(GeneratorConfig {
        customers: 100_000,
        ..Default::default()
    });
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut out = Vec::new();
    let mut value = Vec::new();
    let mut pending = Vec::with_capacity(records);
    let mut bytes = 0usize;
    let started = Instant::now();
    for seq in 0..records as u64 {
        let tp = generator.next_touchpoint();
        let customer = tp.customer_id.clone();
        out.clear();
        stream.push(tp, seq, cx_sentinel::engine::ARRIVAL_UNCHECKED, 0, &mut out);
        value.clear();
        engine.snapshot(&customer, seq as i64, &mut value);
        bytes += value.len();
        let mut record = FutureRecord::to(&topic)
            .key(&customer)
            .payload(&value)
            .partition(0);
        loop {
            match producer.send_result(record) {
                Ok(f) => break pending.push(f),
                Err((_, r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    for f in pending {
        f.await?.map_err(|(e, _)| e)?;
    }
    eprintln!(
        "wrote {records} snapshots ({:.0} bytes avg) in {:.1}s",
        bytes as f64 / records as f64,
        started.elapsed().as_secs_f64()
    );

    let baseline = if bare {
        let started = Instant::now();
        let n =
            tokio::task::block_in_place(|| cx_sentinel::service::restore::read_partition_bare(&config, 0))
                .map_err(anyhow::Error::msg)?;
        let rate = n as f64 / started.elapsed().as_secs_f64();
        println!("bare read of {n} changelog records: {rate:.0} records/s");
        Some(rate)
    } else {
        None
    };

    let fresh = Engine::new(config.clone());
    let counter = prometheus::IntCounter::new("restored", "restored").unwrap();
    let started = Instant::now();
    let offsets = tokio::task::block_in_place(|| {
        cx_sentinel::service::restore::restore_partition(&config, 0, &fresh, &counter)
    })
    .map_err(anyhow::Error::msg)?;
    let secs = started.elapsed().as_secs_f64();
    let rate = counter.get() as f64 / secs;
    println!(
        "restored {} changelog records into {} customers in {secs:.2}s: {rate:.0} records/s ({} offsets tracked)",
        counter.get(),
        fresh.customer_count(),
        offsets.len()
    );
    if let Some(baseline) = baseline {
        println!("restore / bare read: {:.2}", rate / baseline);
    }
    Ok(())
}
