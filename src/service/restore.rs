//! Restoring a partition's state from the changelog before any of its input is processed.

use crate::config::Config;
use crate::engine::Engine;
use crate::engine::state::CustomerKey;
use prometheus::IntCounter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a restore may wait for the changelog without progress before giving up.
const STALL: Duration = Duration::from_secs(30);

/// What a restore returns per partition: each restored customer → the last input offset its
/// state includes (in the value since snapshot version 2; the `cx.offset` header before).
pub use super::runtime::RestoredOffsets;

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
/// Reading and applying run on two threads: taking a record from librdkafka (polling, parsing
/// its headers, freeing it) costs about as much as decoding it into the state, and a restore
/// holds up the partitions' processing, so it uses a second core when there is one. The reader
/// copies records into batches and the applier applies them in order, so a customer's records
/// still apply in changelog order.
pub fn restore_partitions(
    config: &Config,
    targets: &[(i32, &Engine)],
    restored: &IntCounter,
) -> Vec<Result<RestoredOffsets, String>> {
    let partitions: Vec<i32> = targets.iter().map(|(p, _)| *p).collect();
    let (full, to_apply) = mpsc::sync_channel::<Batch>(QUEUED_BATCHES);
    let (empty, to_reuse) = mpsc::channel::<Batch>();
    // The applier logs unreadable records in the caller's span (partition, assignment).
    let span = tracing::Span::current();
    let (read, noted) = std::thread::scope(|scope| {
        let applier = std::thread::Builder::new()
            .name("cx-restore-apply".into())
            .spawn_scoped(scope, move || {
                let _span = span.enter();
                let mut noted: Vec<Noted> = targets.iter().map(|_| Noted::default()).collect();
                for mut batch in to_apply {
                    for r in &batch.records {
                        apply(targets[r.target].1, r, &batch.bytes, &mut noted[r.target]);
                    }
                    restored.inc_by(batch.records.len() as u64);
                    batch.clear();
                    // The reader may have finished; then the batch is simply dropped.
                    let _ = empty.send(batch);
                }
                noted
            });
        let applier = match applier {
            Ok(a) => a,
            Err(e) => {
                let e = format!("cannot start the restore thread: {e}");
                return (partitions.iter().map(|_| Err(e.clone())).collect(), None);
            }
        };
        let mut batch = Batch::default();
        let read = read_partitions(config, &partitions, |i, m| {
            batch.push(i, m);
            if batch.records.len() >= BATCH_RECORDS {
                let next = to_reuse.try_recv().unwrap_or_default();
                // Fails only if the applier panicked, which `join` below reports.
                let _ = full.send(std::mem::replace(&mut batch, next));
            }
        });
        if !batch.records.is_empty() {
            let _ = full.send(batch);
        }
        drop(full);
        let noted = applier
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (read, Some(noted))
    });
    let Some(noted) = noted else {
        return read.into_iter().map(|r| r.map(|()| HashMap::new())).collect();
    };
    read.into_iter()
        .zip(noted)
        .map(|(r, n)| r.map(|()| n.into_iter().map(|(k, o)| (k.to_arc(), o)).collect()))
        .collect()
}

/// Records per batch handed from the reader to the applier: large enough that handing over
/// costs nothing per record, small enough (about 250 KiB) to stay in cache.
const BATCH_RECORDS: usize = 1024;
/// Batches that may wait for the applier: bounds a restore's memory beyond librdkafka's queue.
const QUEUED_BATCHES: usize = 4;

/// Changelog records copied out of librdkafka, keys and values back to back in one buffer: a
/// batch is reused once applied, so copying allocates nothing per record.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    records: Vec<Copied>,
}

/// One changelog record of a [`Batch`].
struct Copied {
    /// Index of the record's partition among the targets.
    target: usize,
    partition: i32,
    offset: i64,
    key: Option<Range<usize>>,
    /// `None` for a tombstone.
    value: Option<Range<usize>>,
    /// The last input offset the value includes (-1 if absent).
    input_offset: i64,
}

impl Batch {
    fn push(&mut self, target: usize, m: &BorrowedMessage<'_>) {
        let mut copy = |b: &[u8]| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(b);
            start..self.bytes.len()
        };
        let key = m.key().map(&mut copy);
        let value = m.payload().map(&mut copy);
        // Values carry their offset since snapshot version 2; a version 1 value has it in a
        // header (parsing headers allocates in librdkafka, so only then). Tombstones need none.
        let input_offset = match m.payload() {
            None => -1,
            Some(v) => crate::engine::snapshot::input_offset(v).unwrap_or_else(|| {
                m.headers()
                    .and_then(|h| h.iter().find(|h| h.key == "cx.offset").and_then(|h| h.value))
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                    .unwrap_or(-1)
            }),
        };
        self.records.push(Copied {
            target,
            partition: m.partition(),
            offset: m.offset(),
            key,
            value,
            input_offset,
        });
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }
}

/// Reads changelog partition `partition` to its end as a restore does, applying nothing: the
/// restore's read path alone, so a benchmark can tell fetching from applying. Returns how many
/// records it read.
pub fn read_partition_bare(config: &Config, partition: i32) -> Result<u64, String> {
    let mut n = 0u64;
    read_partitions(config, &[partition], |_, _| n += 1)
        .pop()
        .expect("one result per partition")
        .map(|()| n)
}

/// Reads the changelog `partitions` from the beginning to their ends with one consumer, handing
/// each record to `on_record` with the index of its partition in `partitions`. Returns one
/// result per partition, in order; a partition's records stop coming once it has failed.
///
/// A partition's end is its first partition-EOF: the end of what a `read_committed` reader may
/// see, the last stable offset. Waiting for the high watermark listed at the start instead
/// stalled an exactly_once restart: a killed instance's open transaction keeps the last stable
/// offset below the high watermark until the broker aborts it (`transaction.timeout.ms`), and
/// nothing of that transaction is part of the state to restore. (A partition empty at the start
/// is done at once.)
fn read_partitions(
    config: &Config,
    partitions: &[i32],
    mut on_record: impl FnMut(usize, &BorrowedMessage<'_>),
) -> Vec<Result<(), String>> {
    let topic = &config.state.changelog_topic;
    let mut results: Vec<Result<(), String>> = partitions.iter().map(|_| Ok(())).collect();
    let consumer = match restore_consumer(config) {
        Ok(c) => c,
        Err(e) => return partitions.iter().map(|_| Err(e.clone())).collect(),
    };
    // Per partition: (next offset to read, listed high watermark, done).
    let mut progress: Vec<(i64, i64, bool)> = Vec::with_capacity(partitions.len());
    let mut tpl = TopicPartitionList::new();
    for (i, partition) in partitions.iter().enumerate() {
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
        return partitions.iter().map(|_| Err(e.to_string())).collect();
    }
    let index: HashMap<i32, usize> = partitions.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    // Since when polls have found nothing; read only then, not per record (a clock read per
    // record was a few percent of a restore).
    let mut idle_since: Option<Instant> = None;
    let mut last = 0;
    while progress.iter().any(|p| !p.2) {
        match consumer.poll(Duration::from_millis(200)) {
            None => {
                if idle_since.get_or_insert_with(Instant::now).elapsed() > STALL {
                    for (i, p) in progress.iter().enumerate().filter(|(_, p)| !p.2) {
                        results[i] = Err(format!(
                            "changelog '{topic}' partition {}: no progress for {STALL:?} at offset {} of {}",
                            partitions[i], p.0, p.1
                        ));
                    }
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if let Some(&i) = index.get(&partition) {
                    progress[i].2 = true;
                }
            }
            Some(Err(e)) => {
                for (i, _) in progress.iter().enumerate().filter(|(_, p)| !p.2) {
                    results[i] = Err(format!("changelog '{topic}' partition {}: {e}", partitions[i]));
                }
                break;
            }
            Some(Ok(m)) => {
                idle_since = None;
                // Records come in runs from one partition: check the last one's before hashing.
                let i = if partitions.get(last) == Some(&m.partition()) {
                    last
                } else if let Some(&i) = index.get(&m.partition()) {
                    i
                } else {
                    continue;
                };
                last = i;
                progress[i].0 = m.offset() + 1;
                if results[i].is_ok() {
                    on_record(i, &m);
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
        .set("fetch.wait.max.ms", "10")
        // As for the input consumer (kafka::consumer_config): no 1 s pause between fetches
        // once the local queue is over its thresholds.
        .set("fetch.queue.backoff.ms", "10");
    for (k, v) in &config.kafka.librdkafka_options {
        if !k.starts_with("group.") && k != "enable.auto.commit" {
            cc.set(k, v);
        }
    }
    cc.create().map_err(|e| e.to_string())
}

/// The input offsets a restore notes as it reads, keyed as the state map is: most customer ids
/// fit inline, so finding one compares bytes in the map's slot instead of following a pointer to
/// a shared string (a cache miss per record with many customers). Becomes [`RestoredOffsets`]
/// once, at the end.
type Noted = HashMap<CustomerKey, i64, ahash::RandomState>;

/// Applies one changelog record to `engine` and notes the input offset it includes.
fn apply(engine: &Engine, r: &Copied, bytes: &[u8], noted: &mut Noted) {
    let partition = r.partition;
    let Some(key) = r.key.clone().and_then(|k| std::str::from_utf8(&bytes[k]).ok()) else {
        tracing::error!(
            partition,
            offset = r.offset,
            "changelog record without a UTF-8 key; skipped"
        );
        return;
    };
    let value = r.value.clone().map(|v| &bytes[v]);
    if let Err(e) = engine.restore(key, value) {
        tracing::error!(partition, offset = r.offset, error = %e, "changelog record unreadable; skipped");
        return;
    }
    if value.is_none() {
        noted.remove(key.as_bytes());
        return;
    }
    match noted.get_mut(key.as_bytes()) {
        Some(o) => *o = (*o).max(r.input_offset),
        None => {
            noted.insert(CustomerKey::new(key), r.input_offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Stream;
    use crate::generator::{Generator, GeneratorConfig};
    use std::sync::Arc;

    #[test]
    fn apply_keeps_the_highest_input_offset_per_restored_customer() {
        // A real snapshot of some customer.
        let source = Arc::new(Engine::new(Config::default()));
        let mut stream = Stream::new(source.clone());
        let tp = Generator::new(GeneratorConfig::default()).next_touchpoint();
        let customer = tp.customer_id.clone();
        let mut out = Vec::new();
        stream.push(tp, 0, crate::engine::ARRIVAL_UNCHECKED, 0, &mut out);
        stream.flush(None, 0, &mut out);
        let mut value = Vec::new();
        assert!(source.snapshot(&customer, 0, &mut value));

        let mut batch = Batch::default();
        let mut push = |key: &[u8], value: Option<&[u8]>, input_offset: i64| {
            let offset = batch.records.len() as i64;
            let mut copy = |b: &[u8]| {
                let start = batch.bytes.len();
                batch.bytes.extend_from_slice(b);
                start..batch.bytes.len()
            };
            let (key, value) = (Some(copy(key)), value.map(copy));
            batch.records.push(Copied {
                target: 0,
                partition: 0,
                offset,
                key,
                value,
                input_offset,
            });
        };
        let c = customer.as_bytes();
        push(c, Some(&value), 7);
        push(c, Some(&value), 5);
        push(b"gone", Some(&value), 9);
        push(b"gone", None, -1);
        push(b"bad", Some(&value[..3]), 11);
        push(&[0xff, 0xfe], Some(&value), 12);

        let engine = Engine::new(Config::default());
        let mut noted = Noted::default();
        for r in &batch.records {
            apply(&engine, r, &batch.bytes, &mut noted);
        }
        let noted: RestoredOffsets = noted.into_iter().map(|(k, o)| (k.to_arc(), o)).collect();
        assert_eq!(noted, HashMap::from([(Arc::from(customer.as_str()), 7)]));
        assert_eq!(
            engine.customer_count(),
            1,
            "tombstoned, unreadable and unkeyed skipped"
        );
        assert!(engine.customer(&customer).is_some());
    }
}
