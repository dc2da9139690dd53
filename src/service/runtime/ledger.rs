//! The offset ledger of one input partition: which records are unfinished, and the position
//! that may be committed (everything below the first unfinished record).

use std::collections::VecDeque;

/// Outstanding holds per input offset, in offset order. Records arrive in offset order, so a
/// new hold is almost always at the back and a finished prefix leaves from the front: a deque
/// with binary search, no tree node per record.
#[derive(Default, Debug)]
pub(crate) struct Holds {
    /// (offset, holds); entries that reach zero inside the deque stay until they are at the front.
    entries: VecDeque<(i64, u32)>,
}

impl Holds {
    pub(crate) fn hold(&mut self, offset: i64) {
        match self.entries.back_mut() {
            Some((o, n)) if *o == offset => *n += 1,
            Some((o, _)) if *o > offset => match self.entries.binary_search_by_key(&offset, |e| e.0) {
                Ok(i) => self.entries[i].1 += 1,
                Err(i) => self.entries.insert(i, (offset, 1)),
            },
            _ => self.entries.push_back((offset, 1)),
        }
    }

    pub(crate) fn release(&mut self, offset: i64) {
        // Most releases are of the oldest offset: no search for those.
        let i = match self.entries.front() {
            Some(e) if e.0 == offset => Some(0),
            _ => self.entries.binary_search_by_key(&offset, |e| e.0).ok(),
        };
        if let Some(i) = i {
            let n = &mut self.entries[i].1;
            *n = n.saturating_sub(1);
        }
        while self.entries.front().is_some_and(|e| e.1 == 0) {
            self.entries.pop_front();
        }
    }

    /// The lowest offset still held.
    pub(crate) fn first(&self) -> Option<i64> {
        self.entries.front().map(|e| e.0)
    }

    /// Offsets still held.
    pub(crate) fn unfinished(&self) -> usize {
        self.entries.iter().filter(|e| e.1 > 0).count()
    }
}

/// A partition's input position: consumed, finished, stored for commit.
#[derive(Default, Debug)]
pub(crate) struct Ledger {
    /// Unfinished records: offset → outstanding holds (processing, each unacknowledged send).
    pending: Holds,
    /// Offset after the highest consumed (0: nothing consumed since assignment).
    next: i64,
    /// The position last stored for commit (the next offset to consume).
    stored: i64,
}

impl Ledger {
    /// A record was consumed: held until it is finished. Returns true for the first record since
    /// assignment (where the committed offset put the consumer).
    pub(crate) fn consumed(&mut self, offset: i64) -> bool {
        self.pending.hold(offset);
        let first = self.next == 0;
        if first {
            self.stored = offset;
        }
        self.next = self.next.max(offset + 1);
        first
    }

    pub(crate) fn hold(&mut self, offset: i64) {
        self.pending.hold(offset);
    }

    pub(crate) fn release(&mut self, offset: i64) {
        self.pending.release(offset);
    }

    /// The first offset not yet finished: everything below it may be committed.
    pub(crate) fn committable(&self) -> i64 {
        self.pending.first().unwrap_or(self.next)
    }

    /// The new position to store when it moved past the stored one (marked stored).
    pub(crate) fn advance(&mut self) -> Option<i64> {
        let c = self.committable();
        (c > self.stored).then(|| {
            self.stored = c;
            c
        })
    }

    /// Whether anything was consumed or is held (a position worth committing).
    pub(crate) fn touched(&self) -> bool {
        self.next > 0 || self.pending.first().is_some()
    }

    pub(crate) fn next(&self) -> i64 {
        self.next
    }

    pub(crate) fn stored(&self) -> i64 {
        self.stored
    }

    pub(crate) fn unfinished(&self) -> usize {
        self.pending.unfinished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_release_a_finished_prefix_only() {
        let mut h = Holds::default();
        for o in [10, 11, 11, 12] {
            h.hold(o);
        }
        assert_eq!((h.first(), h.unfinished()), (Some(10), 3));
        h.release(11);
        h.release(12);
        // 11 still holds once and 10 is unfinished: nothing above 10 is committable.
        assert_eq!((h.first(), h.unfinished()), (Some(10), 2));
        h.release(10);
        assert_eq!(h.first(), Some(11));
        h.release(11);
        assert_eq!((h.first(), h.unfinished()), (None, 0));
    }

    #[test]
    fn holds_accept_older_offsets_and_ignore_unknown_releases() {
        let mut h = Holds::default();
        h.hold(20);
        h.hold(22);
        h.hold(21); // a timer alert owned by an older offset
        h.hold(20);
        h.release(99);
        h.release(20);
        assert_eq!(h.first(), Some(20));
        h.release(20);
        assert_eq!(h.first(), Some(21));
        h.release(22);
        assert_eq!((h.first(), h.unfinished()), (Some(21), 1));
        h.release(21);
        assert_eq!(h.first(), None);
    }

    #[test]
    fn the_position_advances_only_past_finished_records() {
        let mut l = Ledger::default();
        assert!(l.consumed(40));
        assert!(!l.consumed(41));
        assert_eq!(l.stored(), 40);
        l.release(41);
        assert_eq!(l.advance(), None, "40 is unfinished");
        l.release(40);
        assert_eq!(l.advance(), Some(42));
        assert_eq!(l.advance(), None, "stored once");
    }
}
