//! One assigned input partition: its engine and event-time stream, offset ledger, changelog
//! batches, and the rule that skips records a restored state already includes.

use super::batch::Batches;
use super::ledger::Ledger;
use crate::engine::{Engine, Stream};
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::Arc;

/// What a restore returns per partition: each restored customer → the last input offset its
/// state includes.
pub type RestoredOffsets = HashMap<Arc<str>, i64>;

pub(crate) struct Partition {
    pub(crate) engine: Arc<Engine>,
    pub(crate) stream: Stream,
    /// One offset ledger per input topic (touchpoints, actions).
    ledgers: [Ledger; 2],
    pub(crate) batches: Batches,
    restored: Restored,
    /// Generation of this partition's state (see `Outstanding::epoch`).
    pub(crate) epoch: u64,
    pub(crate) consumed: IntCounter,
}

impl Partition {
    pub(crate) fn new(
        engine: Arc<Engine>,
        restored: Option<RestoredOffsets>,
        epoch: u64,
        consumed: IntCounter,
    ) -> Self {
        let mut stream = Stream::new(engine.clone());
        if restored.is_some() {
            stream.after_restore();
        }
        Self {
            engine,
            stream,
            ledgers: Default::default(),
            batches: Batches::default(),
            restored: Restored::new(restored.unwrap_or_default()),
            epoch,
            consumed,
        }
    }

    pub(crate) fn ledger(&self, source: super::Source) -> &Ledger {
        &self.ledgers[source.index()]
    }

    pub(crate) fn ledger_mut(&mut self, source: super::Source) -> &mut Ledger {
        &mut self.ledgers[source.index()]
    }

    /// Whether the record at `offset` for `customer` was applied before the restart: its state
    /// change is in the restored state.
    pub(crate) fn restored_includes(&mut self, customer: &str, offset: i64) -> bool {
        self.restored.includes(customer, offset)
    }
}

/// Restored customers → the last input offset their restored state includes; dropped once the
/// input passes the highest.
///
/// Why skipping is exact: records are applied in offset order, and a changelog batch is written
/// only after every output of the records before it is acknowledged. So when a customer's state
/// includes offset `o`, every record at or below `o` on the partition was finished: the
/// customer's own were applied (or dead-lettered, acknowledged), and are skipped when read again.
struct Restored {
    offsets: RestoredOffsets,
    upto: i64,
}

impl Restored {
    fn new(offsets: RestoredOffsets) -> Self {
        let upto = offsets.values().copied().max().unwrap_or(-1);
        Self { offsets, upto }
    }

    fn includes(&mut self, customer: &str, offset: i64) -> bool {
        if self.offsets.is_empty() {
            return false;
        }
        if offset > self.upto {
            self.offsets = HashMap::new();
            return false;
        }
        self.offsets.get(customer).is_some_and(|&o| offset <= o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_customers_skip_what_their_state_includes_and_nothing_else() {
        let mut r = Restored::new(HashMap::from([(Arc::from("a"), 10), (Arc::from("b"), 4)]));
        assert!(r.includes("a", 10));
        assert!(r.includes("b", 3));
        assert!(!r.includes("b", 5), "after b's restored offset");
        assert!(!r.includes("c", 2), "not restored");
        assert!(!r.includes("a", 11));
        // Past the highest restored offset the table is dropped.
        assert!(!r.includes("a", 9));
    }
}
