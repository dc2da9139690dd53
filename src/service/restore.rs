//! Restoring a partition's state from the changelog before any of its input is processed.

use crate::config::Config;
use crate::engine::Engine;
use prometheus::IntCounter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a restore may wait for the changelog without progress before giving up.
const STALL: Duration = Duration::from_secs(30);

/// Reads changelog partition `partition` from the beginning to its end into `engine`. Returns,
/// per restored customer, the last input offset its state includes (from the `cx.offset` header).
///
/// The end is the first partition-EOF at or past the high watermark listed at the start. The
/// listed watermark alone is not enough: tansu 0.6 answers ListOffsets with the base offset of
/// the last record batch plus one, so a restore that stopped there would miss the rest of a
/// batch of several changelog records.
pub fn restore_partition(
    config: &Config,
    partition: i32,
    engine: &Engine,
    restored: &IntCounter,
) -> Result<HashMap<Arc<str>, i64>, String> {
    let topic = &config.state.changelog_topic;
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", format!("{}-restore", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        // The end is where a fetch finds nothing more (see below), not the listed high watermark.
        .set("enable.partition.eof", "true")
        // Changelog writes of aborted transactions (exactly_once) must not come back.
        .set("isolation.level", "read_committed")
        // Restore reads one partition flat out: large fetches, a deep local queue.
        .set("fetch.message.max.bytes", "16777216")
        .set("fetch.max.bytes", "67108864")
        .set("queued.min.messages", "1000000")
        .set("fetch.wait.max.ms", "10");
    for (k, v) in &config.kafka.librdkafka_options {
        if !k.starts_with("group.") && k != "enable.auto.commit" {
            cc.set(k, v);
        }
    }
    let consumer: BaseConsumer = cc.create().map_err(|e| e.to_string())?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(|e| format!("changelog '{topic}' partition {partition}: {e}"))?;
    let mut offsets: HashMap<Arc<str>, i64> = HashMap::new();
    if high <= low {
        return Ok(offsets);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut last_progress = Instant::now();
    let mut position = low;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            None => {
                if last_progress.elapsed() > STALL {
                    return Err(format!(
                        "changelog '{topic}' partition {partition}: no progress for {STALL:?} at offset {position} of {high}"
                    ));
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) if position >= high => break,
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(format!("changelog '{topic}' partition {partition}: {e}")),
            Some(Ok(m)) => {
                last_progress = Instant::now();
                position = m.offset() + 1;
                restored.inc();
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    tracing::error!(
                        partition,
                        offset = m.offset(),
                        "changelog record without a UTF-8 key; skipped"
                    );
                    continue;
                };
                if let Err(e) = engine.restore(key, m.payload()) {
                    tracing::error!(partition, offset = m.offset(), error = %e, "changelog record unreadable; skipped");
                    continue;
                }
                if m.payload().is_none() {
                    offsets.remove(key);
                    continue;
                }
                let applied = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "cx.offset").and_then(|h| h.value))
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                    .unwrap_or(-1);
                match offsets.get_mut(key) {
                    Some(o) => *o = (*o).max(applied),
                    None => {
                        offsets.insert(Arc::from(key), applied);
                    }
                }
            }
        }
    }
    Ok(offsets)
}
