//! Commits with the Kafka clients: the transactional producer's begin/commit/abort (exactly
//! once), the consumer's final commit (at least once), and rewinding the input to the last
//! commit. Blocking calls, each bounded by a timeout.

use super::kafka::SentinelProducer;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

/// Bound of each transactional call.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Initialises the transactional producer (fencing older instances of its id) and opens the
/// first transaction.
pub fn start_transactions(producer: &SentinelProducer) -> Result<(), KafkaError> {
    producer.init_transactions(TXN_TIMEOUT)?;
    producer.begin_transaction()
}

/// Adds the input `positions` (topic, partition, next offset) to the open transaction with the
/// consumer group's metadata, commits it and opens the next.
pub fn commit_transaction(
    producer: &SentinelProducer,
    group: &ConsumerGroupMetadata,
    positions: &[(&str, i32, i64)],
) -> Result<(), KafkaError> {
    let mut offsets = TopicPartitionList::new();
    for &(topic, partition, next) in positions {
        offsets.add_partition_offset(topic, partition, Offset::Offset(next))?;
    }
    if offsets.count() > 0 {
        producer.send_offsets_to_transaction(&offsets, group, TXN_TIMEOUT)?;
    }
    producer.commit_transaction(TXN_TIMEOUT)?;
    producer.begin_transaction()
}

/// Whether a transactional error means the producer must be replaced.
pub fn is_fatal(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_fatal())
}

/// Aborts the open transaction; false when the producer must be replaced instead.
pub fn abort(producer: &SentinelProducer) -> bool {
    producer.abort_transaction(TXN_TIMEOUT).is_ok()
}

/// Seeks every assigned partition back to its committed offset (the beginning if none), so the
/// records of an aborted transaction are read again.
pub fn rewind<X: ConsumerContext, C: Consumer<X>>(consumer: &C) {
    let committed = consumer.committed(Duration::from_secs(10)).ok();
    let assigned = consumer.assignment().unwrap_or_default();
    for e in assigned.elements() {
        let topic = e.topic();
        let to = committed
            .as_ref()
            .and_then(|c| c.find_partition(topic, e.partition()))
            .map(|c| c.offset())
            .filter(|o| matches!(o, Offset::Offset(_)))
            .unwrap_or(Offset::Beginning);
        for attempt in 0..20 {
            match consumer.seek(topic, e.partition(), to, Duration::from_secs(5)) {
                Ok(()) => break,
                Err(err) if attempt == 19 => {
                    tracing::error!(partition = e.partition(), error = %err, "cannot rewind partition")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// Commits the stored offsets now (at least once: on revoke and shutdown).
pub fn commit_stored<X: ConsumerContext, C: Consumer<X>>(consumer: &C, why: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!(why, "offsets committed"),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(why, error = %e, "commit failed; uncommitted records will be processed again")
        }
    }
}
