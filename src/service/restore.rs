//! Restoring a partition's state from the changelog before any of its input is processed.

use crate::config::Config;
use crate::engine::Engine;
use prometheus::IntCounter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a restore may wait for the changelog without progress before giving up.
const STALL: Duration = Duration::from_secs(30);

/// What a restore returns per partition: each restored customer → the last input offset its
/// state includes (from the `cx.offset` header).
pub type RestoredOffsets = HashMap<Arc<str>, i64>;

/// Reads changelog partition `partition` from the beginning to its end into `engine`.
pub fn restore_partition(
    config: &Config,
    partition: i32,
    engine: &Engine,
    restored: &IntCounter,
) -> Result<RestoredOffsets, String> {
    restore_partitions(config, &[(partition, engine)], restored)
        .pop()
        .expect("one result per partition")
}

/// Reads the changelog partitions of `targets` from the beginning to their ends, each into its
/// engine, with one consumer fetching all of them at once (a rebalance usually assigns several).
/// Returns one result per target, in order.
///
/// A partition's end is the first partition-EOF at or past the high watermark listed at the
/// start. The listed watermark alone is not enough: tansu 0.6 answers ListOffsets with the base
/// offset of the last record batch plus one, so a restore that stopped there would miss the rest
/// of a batch of several changelog records.
pub fn restore_partitions(
    config: &Config,
    targets: &[(i32, &Engine)],
    restored: &IntCounter,
) -> Vec<Result<RestoredOffsets, String>> {
    let topic = &config.state.changelog_topic;
    let mut results: Vec<Result<RestoredOffsets, String>> =
        targets.iter().map(|_| Ok(HashMap::new())).collect();
    let consumer = match restore_consumer(config) {
        Ok(c) => c,
        Err(e) => return targets.iter().map(|_| Err(e.clone())).collect(),
    };
    // Per target: (next offset to read, listed high watermark, done).
    let mut progress: Vec<(i64, i64, bool)> = Vec::with_capacity(targets.len());
    let mut tpl = TopicPartitionList::new();
    for (i, (partition, _)) in targets.iter().enumerate() {
        match consumer.fetch_watermarks(topic, *partition, Duration::from_secs(10)) {
            Ok((low, high)) if high > low => {
                progress.push((low, high, false));
                if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Beginning) {
                    results[i] = Err(e.to_string());
                    progress[i].2 = true;
                }
            }
            Ok((low, high)) => progress.push((low, high, true)),
            Err(e) => {
                results[i] = Err(format!("changelog '{topic}' partition {partition}: {e}"));
                progress.push((0, 0, true));
            }
        }
    }
    if tpl.count() == 0 {
        return results;
    }
    if let Err(e) = consumer.assign(&tpl) {
        return targets.iter().map(|_| Err(e.to_string())).collect();
    }
    let index: HashMap<i32, usize> = targets.iter().enumerate().map(|(i, (p, _))| (*p, i)).collect();
    let mut last_progress = Instant::now();
    while progress.iter().any(|p| !p.2) {
        match consumer.poll(Duration::from_millis(200)) {
            None => {
                if last_progress.elapsed() > STALL {
                    for (i, p) in progress.iter().enumerate().filter(|(_, p)| !p.2) {
                        results[i] = Err(format!(
                            "changelog '{topic}' partition {}: no progress for {STALL:?} at offset {} of {}",
                            targets[i].0, p.0, p.1
                        ));
                    }
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if let Some(&i) = index.get(&partition)
                    && progress[i].0 >= progress[i].1
                {
                    progress[i].2 = true;
                }
            }
            Some(Err(e)) => {
                for (i, _) in progress.iter().enumerate().filter(|(_, p)| !p.2) {
                    results[i] = Err(format!("changelog '{topic}' partition {}: {e}", targets[i].0));
                }
                break;
            }
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let Some(&i) = index.get(&m.partition()) else {
                    continue;
                };
                progress[i].0 = m.offset() + 1;
                restored.inc();
                if let Ok(offsets) = &mut results[i] {
                    apply(targets[i].1, &m, offsets);
                }
            }
        }
    }
    results
}

fn restore_consumer(config: &Config) -> Result<BaseConsumer, String> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", format!("{}-restore", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        // The end is where a fetch finds nothing more (see restore_partitions).
        .set("enable.partition.eof", "true")
        // Changelog writes of aborted transactions (exactly_once) must not come back.
        .set("isolation.level", "read_committed")
        // Restore reads flat out: large fetches, a deep local queue.
        .set("fetch.message.max.bytes", "16777216")
        .set("fetch.max.bytes", "67108864")
        .set("queued.min.messages", "1000000")
        .set("fetch.wait.max.ms", "10");
    for (k, v) in &config.kafka.librdkafka_options {
        if !k.starts_with("group.") && k != "enable.auto.commit" {
            cc.set(k, v);
        }
    }
    cc.create().map_err(|e| e.to_string())
}

/// Applies one changelog record to `engine` and notes the input offset it includes.
fn apply(engine: &Engine, m: &BorrowedMessage<'_>, offsets: &mut RestoredOffsets) {
    let partition = m.partition();
    let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
        tracing::error!(
            partition,
            offset = m.offset(),
            "changelog record without a UTF-8 key; skipped"
        );
        return;
    };
    if let Err(e) = engine.restore(key, m.payload()) {
        tracing::error!(partition, offset = m.offset(), error = %e, "changelog record unreadable; skipped");
        return;
    }
    if m.payload().is_none() {
        offsets.remove(key);
        return;
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
