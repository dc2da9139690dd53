//! How fast the shipped config pages on a quiet partition: one critical touchpoint at a time on
//! an otherwise silent input partition, produce → OPEN alert read back; then an agent's
//! ACKNOWLEDGE of that case on the action topic, produce → ACKNOWLEDGED alert read back (what
//! every other subscriber sees of "I have it"); and how long after its deadline an SLA escalation
//! fires when no further touchpoint arrives.
//!
//! ```sh
//! scripts/kafka.sh up
//! cargo run --release --example lone_trigger -- [--tries 50] [--sla-tries 5] [--gap-ms 1500]
//! ```
//!
//! The service runs in this process with `config/default.toml` unchanged except brokers, topics,
//! group and the HTTP port. Each lone trigger is stamped `occurred_at = now` and follows a pause of
//! `--gap-ms` with no input, so the partition is silent when it arrives. "Read back" is produce
//! call → the alert read by a plain consumer on the alert topic (an upper bound of the broker's
//! acknowledgement of the alert); "detect" is `detected_at - occurred_at` in the alert. The
//! acknowledgement is produced right after its OPEN alert is read, to the same partition number
//! of the action topic.

use anyhow::{Context, Result, bail};
use clap::Parser;
use cx_sentinel::codec::Format;
use cx_sentinel::config::Config;
use cx_sentinel::model::AlertStatus;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::path::Path;
use std::time::{Duration, Instant};

cx_sentinel::install_allocator!();

#[derive(Parser)]
struct Args {
    #[arg(long, env = "CX_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Lone critical touchpoints, one at a time.
    #[arg(long, default_value_t = 50)]
    tries: usize,
    /// SLA escalations to wait for on the silent partition.
    #[arg(long, default_value_t = 5)]
    sla_tries: usize,
    /// Silence before each lone trigger, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    gap_ms: u64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

fn touchpoint(id: &str, customer: &str, occurred_at: i64) -> String {
    serde_json::json!({
        "event_id": id, "customer_id": customer, "occurred_at": occurred_at, "channel": "MOBILE_APP",
        "kind": "INTERACTION", "direction": "INBOUND", "journey": "payments",
        "touchpoint": "payment.transfer", "outcome": "FAILURE", "customer_tier": "vip"
    })
    .to_string()
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name:<34} n={:<3} p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
        v.len(),
        quantile(&v, 0.5),
        quantile(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

/// Reads alerts until one for `customer` with `status` arrives; returns it and when it was read.
async fn wait_for(
    reader: &StreamConsumer,
    customer: &str,
    status: AlertStatus,
    timeout: Duration,
) -> Result<(cx_sentinel::model::RecoveryAlert, Instant)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no {status:?} alert for {customer} within {timeout:?}");
        }
        let Ok(msg) = tokio::time::timeout(left, reader.recv()).await else {
            continue;
        };
        let msg = msg.context("reading alerts")?;
        let read = Instant::now();
        let alert = cx_sentinel::demo::decode_alert(Format::Json, msg.payload().unwrap_or_default())
            .context("decoding an alert")?;
        if alert.customer_id == customer && alert.status == status {
            return Ok((alert, read));
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tag = format!("lone-{}-{}", std::process::id(), now_ms());
    let (input, alerts, dlq, state, actions) = (
        format!("{tag}-in"),
        format!("{tag}-alerts"),
        format!("{tag}-dlq"),
        format!("{tag}-state"),
        format!("{tag}-actions"),
    );
    // Partition 0 takes the lone triggers; each SLA try has a partition of its own, whose first
    // record opens the case (four hours back: on a partition that has seen now, it would be late).
    let partitions = 1 + args.sla_tries as i32;
    cx_sentinel::service::kafka::create_topics(
        &args.brokers,
        &[
            (&input, partitions),
            (&alerts, 1),
            (&dlq, 1),
            (&actions, partitions),
        ],
    )
    .await?;
    cx_sentinel::service::kafka::create_compacted_topics(&args.brokers, &[(&state, partitions)]).await?;

    let mut config = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml"))?;
    config.kafka.brokers = args.brokers.clone();
    config.kafka.input_topic = input.clone();
    config.kafka.alert_topic = alerts.clone();
    config.kafka.dlq_topic = dlq;
    config.kafka.action_topic = actions.clone();
    config.kafka.group_id = format!("{tag}-group");
    config.state.changelog_topic = state;
    config.http.listen = "127.0.0.1:0".into();
    let sla_ms = config.engine.case_sla.as_millis() as i64;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(cx_sentinel::service::run(
        config,
        async {
            let _ = stopped.await;
        },
        |_| {},
    ));

    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("{tag}-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&alerts, 0, Offset::Beginning)?;
    reader.assign(&tpl)?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "0")
        .create()?;

    // The service joins its group and is assigned the partition; wait for a first page to land.
    let warm = touchpoint("warm-0", "warm", now_ms());
    producer
        .send(
            FutureRecord::to(&input).key("warm").payload(&warm).partition(0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    wait_for(&reader, "warm", AlertStatus::Open, Duration::from_secs(60)).await?;

    let (mut read_back, mut detect, mut ack_read_back) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.tries {
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
        let customer = format!("lone-{i}");
        let sent = Instant::now();
        let line = touchpoint(&format!("ev-{i}"), &customer, now_ms());
        producer
            .send(
                FutureRecord::to(&input)
                    .key(&customer)
                    .payload(&line)
                    .partition(0),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        let (alert, read) = wait_for(&reader, &customer, AlertStatus::Open, Duration::from_secs(30)).await?;
        read_back.push(read.duration_since(sent).as_secs_f64() * 1e3);
        detect.push((alert.detected_at - alert.event_time) as f64);

        // The agent who got the page acknowledges it at once.
        let acked = Instant::now();
        let action = serde_json::json!({
            "action_id": format!("ack-{i}"), "case_id": alert.case_id, "customer_id": customer,
            "action": "ACKNOWLEDGE", "actor": "agent-1", "occurred_at": now_ms(),
            "resolution": null, "channel": null, "note": null
        })
        .to_string();
        producer
            .send(
                FutureRecord::to(&actions)
                    .key(&customer)
                    .payload(&action)
                    .partition(0),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        let (_, read) = wait_for(
            &reader,
            &customer,
            AlertStatus::Acknowledged,
            Duration::from_secs(30),
        )
        .await?;
        ack_read_back.push(read.duration_since(acked).as_secs_f64() * 1e3);
    }

    let mut sla_late = Vec::new();
    for j in 0..args.sla_tries {
        let customer = format!("sla-{j}");
        // Opened 4 h minus 3 s ago: its SLA falls due 3 s from now, with no further input.
        let line = touchpoint(&format!("sla-ev-{j}"), &customer, now_ms() - sla_ms + 3_000);
        producer
            .send(
                FutureRecord::to(&input)
                    .key(&customer)
                    .payload(&line)
                    .partition(1 + j as i32),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        // The ack SLA (15 min) of a case opened 4 h back is long past: that escalation comes
        // first, at once; the recovery SLA's is the one timed here.
        let alert = loop {
            let (alert, _) = wait_for(
                &reader,
                &customer,
                AlertStatus::Escalated,
                Duration::from_secs(30),
            )
            .await?;
            if alert.rule == "sla_breach" {
                break alert;
            }
        };
        sla_late.push((alert.detected_at - alert.event_time) as f64);
    }

    let _ = stop.send(());
    service.await??;
    println!(
        "lone_trigger: shipped config (config/default.toml), broker {}",
        args.brokers
    );
    summary("lone trigger: produce -> read back", read_back);
    summary("lone trigger: detect (processing)", detect);
    summary("acknowledge: produce -> read back", ack_read_back);
    summary("SLA on a silent partition: late by", sla_late);
    Ok(())
}
