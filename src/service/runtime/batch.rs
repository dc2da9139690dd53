//! Changelog batches of one partition: the state changes of the records pushed while a batch was
//! open, written in input order and only once every output those records caused is acknowledged.

use crate::engine::Engine;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A batch is sealed once it holds this many customers even before the commit tick, to bound
/// the memory and the burst of one flush.
pub(crate) const MAX_BATCH_CUSTOMERS: usize = 10_000;

/// The state changes of the records pushed while it was open (Kafka Streams' record cache, one
/// per partition): written only after every alert and dead letter those records caused is
/// acknowledged, so the changelog never runs ahead of the outputs (a restored state never hides
/// an unsent alert, and a restored customer's skipped records were all finished). A customer
/// changed many times in one batch is written once.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) id: u64,
    /// Sealed on the commit tick, when it grows to [`MAX_BATCH_CUSTOMERS`], or on shutdown; only
    /// the newest batch of a partition is ever open.
    sealed: bool,
    opened: Instant,
    /// Alerts and dead letters of its records not acknowledged yet.
    outputs_unacked: usize,
    /// Sent, and the group report for its changelog records not in yet.
    changelog_pending: bool,
    sent: bool,
    /// While open: changed customers → the last input offset applied to them (-1 for changes no
    /// record made: a timer, an eviction, shedding).
    staged: HashMap<Arc<str>, i64, ahash::RandomState>,
    /// Filled when sealed: (customer, its state's bytes in `arena`, which include the last input
    /// offset applied to it, or None for a tombstone).
    records: Vec<(Arc<str>, Option<Range<usize>>)>,
    /// The encoded states of `records`, back to back: one allocation per batch, not per record.
    arena: Vec<u8>,
    /// Applied records that stay unfinished until this batch's changelog is acknowledged.
    holders: Vec<super::At>,
}

/// A sealed batch handed out to be written.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) id: u64,
    pub(crate) records: Vec<(Arc<str>, Option<Range<usize>>)>,
    pub(crate) arena: Vec<u8>,
}

/// A partition's batches, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    queue: VecDeque<Batch>,
    next_id: u64,
}

impl Batches {
    /// The id of the open batch, opening one if the newest is sealed.
    pub(crate) fn open(&mut self, now: Instant) -> u64 {
        match self.queue.back() {
            Some(b) if !b.sealed => b.id,
            _ => {
                let id = self.next_id;
                self.next_id += 1;
                self.queue.push_back(Batch {
                    id,
                    sealed: false,
                    opened: now,
                    outputs_unacked: 0,
                    changelog_pending: false,
                    sent: false,
                    staged: HashMap::default(),
                    records: Vec::new(),
                    arena: Vec::new(),
                    holders: Vec::new(),
                });
                id
            }
        }
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Batch> {
        // Almost always the newest.
        self.queue.iter_mut().rev().find(|b| b.id == id)
    }

    /// Marks `customer` as changed in batch `id`: its state (or removal) is written when sealed.
    pub(crate) fn stage(&mut self, id: u64, customer: Arc<str>, offset: i64) {
        if let Some(b) = self.get_mut(id) {
            let last = b.staged.entry(customer).or_insert(offset);
            *last = (*last).max(offset);
        }
    }

    /// The record `at` stays unfinished until batch `id`'s changelog is acknowledged.
    pub(crate) fn hold(&mut self, id: u64, at: super::At) {
        if let Some(b) = self.get_mut(id) {
            b.holders.push(at);
        }
    }

    /// An output (alert, dead letter) of batch `id`'s records was sent.
    pub(crate) fn output_sent(&mut self, id: u64) {
        if let Some(b) = self.get_mut(id) {
            b.outputs_unacked += 1;
        }
    }

    /// An output of batch `id` was acknowledged; true when the batch may now be written.
    pub(crate) fn output_acked(&mut self, id: u64) -> bool {
        match self.get_mut(id) {
            Some(b) => {
                b.outputs_unacked = b.outputs_unacked.saturating_sub(1);
                b.outputs_unacked == 0 && b.sealed
            }
            None => false,
        }
    }

    /// Batch `id`'s changelog records were all acknowledged.
    pub(crate) fn changelog_acked(&mut self, id: u64) {
        if let Some(b) = self.get_mut(id) {
            b.changelog_pending = false;
        }
    }

    /// Seals the open batch: the state of each customer it changed, as of now, becomes its
    /// changelog record (a tombstone if the customer is gone).
    pub(crate) fn seal(&mut self, engine: &Engine) {
        let Some(b) = self.queue.back_mut().filter(|b| !b.sealed) else {
            return;
        };
        b.sealed = true;
        let mut arena = Vec::new();
        b.records = b
            .staged
            .drain()
            .map(|(customer, offset)| {
                let start = arena.len();
                let stored = engine.snapshot(&customer, offset, &mut arena);
                let value = stored.then_some(start..arena.len());
                (customer, value)
            })
            .collect();
        b.arena = arena;
        b.staged = HashMap::default();
    }

    /// Whether the open batch is due to be sealed.
    pub(crate) fn seal_due(&self, now: Instant, interval: Duration) -> bool {
        self.queue.back().is_some_and(|b| {
            !b.sealed && (b.staged.len() >= MAX_BATCH_CUSTOMERS || now.duration_since(b.opened) >= interval)
        })
    }

    /// Hands out, in order, every sealed batch not sent yet that may be written: with `ordered`,
    /// only up to the first whose outputs are not all acknowledged (an older state must never
    /// overwrite a newer one, nor run ahead of an unacknowledged output). An empty batch is
    /// handed out as written at once.
    pub(crate) fn ready(&mut self, ordered: bool, out: &mut Vec<Written>) {
        for b in self.queue.iter_mut() {
            if !b.sealed || (ordered && b.outputs_unacked > 0) {
                break;
            }
            if !b.sent {
                b.sent = true;
                // One group report per batch (none for an empty one).
                b.changelog_pending = !b.records.is_empty();
                if b.changelog_pending {
                    out.push(Written {
                        id: b.id,
                        records: std::mem::take(&mut b.records),
                        arena: std::mem::take(&mut b.arena),
                    });
                }
            }
        }
    }

    /// Drops the completely written batches at the head; their held records go to `released`.
    pub(crate) fn pop_written(&mut self, released: &mut Vec<super::At>) -> bool {
        let mut any = false;
        while self.queue.front().is_some_and(|b| b.sent && !b.changelog_pending) {
            let head = self.queue.pop_front().expect("checked above");
            released.extend(head.holders);
            any = true;
        }
        any
    }
}
