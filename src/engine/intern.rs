//! Bounded string interning for low-cardinality vocabularies (touchpoint types, tiers), with a
//! value computed once per string (its stakes, its multiplier).

use parking_lot::{RwLock, RwLockReadGuard};
use std::collections::HashMap;
use std::sync::Arc;

/// Id 0 is reserved for strings that arrived after the table was full.
pub const OVERFLOW_ID: u32 = 0;
/// What an overflowed string reads back as.
pub const OVERFLOW_NAME: &str = "(other)";

/// Interns strings to `u32` ids, caching `T` per string. Append-only, capped so that a stream of
/// random strings cannot grow memory without bound; past the cap every new string maps to
/// [`OVERFLOW_ID`] with `overflow_value`.
pub struct Interner<T: Copy> {
    inner: RwLock<Inner<T>>,
    cap: usize,
}

struct Inner<T> {
    ids: HashMap<Arc<str>, u32, ahash::RandomState>,
    entries: Vec<(Arc<str>, T)>,
}

impl<T: Copy> Interner<T> {
    pub fn new(cap: usize, overflow_value: T) -> Self {
        let name: Arc<str> = Arc::from(OVERFLOW_NAME);
        Self {
            inner: RwLock::new(Inner {
                ids: HashMap::default(),
                entries: vec![(name, overflow_value)],
            }),
            cap: cap.max(1),
        }
    }

    /// The id and cached value of `s`, computing the value with `value_of` on first sight.
    pub fn intern(&self, s: &str, value_of: impl FnOnce(&str) -> T) -> (u32, T) {
        {
            let inner = self.inner.read();
            if let Some(&id) = inner.ids.get(s) {
                return (id, inner.entries[id as usize].1);
            }
        }
        let mut inner = self.inner.write();
        if let Some(&id) = inner.ids.get(s) {
            return (id, inner.entries[id as usize].1);
        }
        if inner.entries.len() > self.cap {
            return (OVERFLOW_ID, inner.entries[0].1);
        }
        let id = inner.entries.len() as u32;
        let name: Arc<str> = Arc::from(s);
        let value = value_of(s);
        inner.entries.push((name.clone(), value));
        inner.ids.insert(name, id);
        (id, value)
    }

    /// The string behind an id.
    pub fn name(&self, id: u32) -> Arc<str> {
        let inner = self.inner.read();
        inner
            .entries
            .get(id as usize)
            .map(|e| e.0.clone())
            .unwrap_or_else(|| inner.entries[0].0.clone())
    }

    /// Many names under one read lock (an alert's recent touchpoints).
    pub fn names(&self) -> Names<'_, T> {
        Names(self.inner.read())
    }

    /// The cached value behind an id.
    pub fn value(&self, id: u32) -> T {
        let inner = self.inner.read();
        inner.entries.get(id as usize).unwrap_or(&inner.entries[0]).1
    }

    /// How many strings are interned (excluding the overflow slot).
    pub fn len(&self) -> usize {
        self.inner.read().entries.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A read view of an [`Interner`]'s names; holds its read lock, so keep it short.
pub struct Names<'a, T>(RwLockReadGuard<'a, Inner<T>>);

impl<T> Names<'_, T> {
    /// The string behind an id, as [`Interner::name`] gives it.
    pub fn get(&self, id: u32) -> &str {
        self.0
            .entries
            .get(id as usize)
            .unwrap_or(&self.0.entries[0])
            .0
            .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_once_and_caps() {
        let i = Interner::new(2, -1i32);
        let mut calls = 0;
        let (a, va) = i.intern("a", |_| {
            calls += 1;
            1
        });
        let (a2, _) = i.intern("a", |_| unreachable!());
        assert_eq!((a, va, a2, calls), (1, 1, 1, 1));
        let (b, _) = i.intern("b", |_| 2);
        assert_eq!(b, 2);
        let (c, vc) = i.intern("c", |_| 3);
        assert_eq!((c, vc), (OVERFLOW_ID, -1));
        assert_eq!(&*i.name(c), OVERFLOW_NAME);
        assert_eq!(&*i.name(b), "b");
        assert_eq!((i.names().get(b), i.names().get(99)), ("b", OVERFLOW_NAME));
        assert_eq!(i.len(), 2);
    }
}
