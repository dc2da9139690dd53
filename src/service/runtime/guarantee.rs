//! The two delivery guarantees as two implementations of one trait: when the input position
//! moves, whether changelog writes wait for outputs, and what a failed send means.

use super::outbox::Failure;
use super::{Command, Source};

/// What the commit point holds when every send of the unit of work is answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Settle {
    /// Nothing to commit.
    Nothing,
    /// Commit the transaction with the partitions' positions.
    Commit,
    /// A send of the transaction failed: abort it and rewind.
    Abort(&'static str),
}

/// A delivery guarantee (`processing.guarantee`).
pub trait Guarantee: Send {
    /// Whether a sealed changelog batch waits until its records' outputs are acknowledged
    /// (otherwise a transaction makes them all-or-nothing).
    fn changelog_waits_for_outputs(&self) -> bool;
    /// The committable position of `partition` of `source` moved to `next` (the next offset to
    /// consume).
    fn finished_upto(&mut self, source: Source, partition: i32, next: i64, out: &mut Vec<Command>);
    /// A record was taken or an output produced: there is work to commit.
    fn produced(&mut self);
    /// A send failed. True when the resend policy decides; false when the unit of work must
    /// abort instead (a lost send cannot be patched up inside a transaction).
    fn on_failure(&mut self, failure: &Failure) -> bool;
    /// The commit tick, after the sealed batches went out.
    fn commit_due(&mut self, out: &mut Vec<Command>);
    /// Once every send of the unit of work is answered: what to do at the commit point.
    fn settle(&self) -> Settle;
    /// The unit of work was committed or aborted.
    fn reset(&mut self);
}

/// At-least-once: an input offset is stored for the consumer's next (automatic) commit once
/// the record and everything before it is finished and acknowledged; a failed send is resent.
#[derive(Debug, Default)]
pub struct AtLeastOnce;

impl Guarantee for AtLeastOnce {
    fn changelog_waits_for_outputs(&self) -> bool {
        true
    }

    fn finished_upto(&mut self, source: Source, partition: i32, next: i64, out: &mut Vec<Command>) {
        out.push(Command::Store {
            source,
            partition,
            next,
        });
    }

    fn produced(&mut self) {}

    fn on_failure(&mut self, _: &Failure) -> bool {
        true
    }

    fn commit_due(&mut self, _: &mut Vec<Command>) {}

    fn settle(&self) -> Settle {
        Settle::Nothing
    }

    fn reset(&mut self) {}
}

/// Exactly-once: alerts, dead letters, changelog records and input offsets go out in one
/// transaction per commit interval; any failed send aborts it and the input is read again.
#[derive(Debug, Default)]
pub struct ExactlyOnce {
    /// Something happened since the last commit.
    dirty: bool,
    /// A send of the open transaction failed.
    failed: bool,
}

impl Guarantee for ExactlyOnce {
    fn changelog_waits_for_outputs(&self) -> bool {
        false
    }

    fn finished_upto(&mut self, _: Source, _: i32, _: i64, _: &mut Vec<Command>) {}

    fn produced(&mut self) {
        self.dirty = true;
    }

    fn on_failure(&mut self, _: &Failure) -> bool {
        self.failed = true;
        false
    }

    fn commit_due(&mut self, out: &mut Vec<Command>) {
        if self.dirty || self.failed {
            out.push(Command::CommitTransaction);
        }
    }

    fn settle(&self) -> Settle {
        if self.failed {
            Settle::Abort("delivery failed")
        } else if self.dirty {
            Settle::Commit
        } else {
            Settle::Nothing
        }
    }

    fn reset(&mut self) {
        self.dirty = false;
        self.failed = false;
    }
}
