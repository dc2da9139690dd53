//! The changelog encoding of one customer's state: compact, little-endian, versioned.
//!
//! Layout, version 1 (`docs/state.md` has the table):
//! `u8 version=1 | u8 ring_cap | f64 score | str tier | u8 n { [26]recent str touchpoint }
//!  | u8 n { u32 journey i64 first u32 span u16 contacts u16 channels }
//!  | u8 n { u64 hash str text } | u8 n { case }`; `str` = `u16 len` + UTF-8 (`0xFFFF` = none).
//! Interned ids are written as names, so a snapshot is readable by any instance. A reader must
//! accept every older version; a new field means a new version.

use super::Engine;
use super::state::{Case, CustomerKey, CustomerState, Episode, Extra, NO_TIER, Recent, RuleId};
use crate::model::{Channel, Severity};
use std::sync::Arc;

pub const VERSION: u8 = 1;
const NONE: u16 = u16::MAX;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SnapshotError {
    #[error("state record is truncated")]
    Truncated,
    #[error("state record version {0} is newer than this build reads (1)")]
    Version(u8),
    #[error("state record is malformed: {0}")]
    Malformed(&'static str),
}

fn put_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.extend_from_slice(&NONE.to_le_bytes()),
        Some(s) => {
            let s = &s[..s.len().min(NONE as usize - 1)];
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.0.len() < n {
            return Err(SnapshotError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    fn str(&mut self) -> Result<Option<&'a str>, SnapshotError> {
        let n = self.u16()?;
        if n == NONE {
            return Ok(None);
        }
        std::str::from_utf8(self.take(n as usize)?)
            .map(Some)
            .map_err(|_| SnapshotError::Malformed("string is not UTF-8"))
    }
}

impl Engine {
    /// Appends the changelog value of `customer`'s state to `out`; false if not held.
    pub fn snapshot(&self, customer: &str, out: &mut Vec<u8>) -> bool {
        let Some(guard) = self.customers.get(customer.as_bytes()) else {
            return false;
        };
        let s = &**guard;
        out.push(VERSION);
        out.push(s.ring_cap);
        out.extend_from_slice(&s.score.to_le_bytes());
        let tier = (s.tier != NO_TIER).then(|| self.tiers.name(s.tier));
        put_str(out, tier.as_deref());
        out.push(s.ring_len);
        for r in s.recent() {
            out.extend_from_slice(&r.to_bytes());
            put_str(out, Some(&self.touchpoint_types.name(u32::from(r.touchpoint))));
        }
        out.push(s.episode_count() as u8);
        for e in s.episodes() {
            out.extend_from_slice(&e.journey.to_le_bytes());
            out.extend_from_slice(&e.first.to_le_bytes());
            out.extend_from_slice(&e.span.to_le_bytes());
            out.extend_from_slice(&e.contacts.to_le_bytes());
            out.extend_from_slice(&e.channels.to_le_bytes());
        }
        let (long_ids, cases) = s
            .extra
            .as_ref()
            .map(|e| (&e.long_ids[..], &e.cases[..]))
            .unwrap_or((&[], &[]));
        out.push(long_ids.len() as u8);
        for (h, text) in long_ids {
            out.extend_from_slice(&h.to_le_bytes());
            put_str(out, Some(text));
        }
        out.push(cases.len() as u8);
        for c in cases {
            put_str(out, Some(&c.journey));
            out.extend_from_slice(&c.journey_hash.to_le_bytes());
            out.extend_from_slice(&c.case_hash.to_le_bytes());
            out.extend_from_slice(&c.opened_at.to_le_bytes());
            out.extend_from_slice(&c.last_touch.to_le_bytes());
            put_str(out, Some(&c.last_event_id));
            out.extend_from_slice(&[
                c.rule.index(),
                c.severity.index() as u8,
                c.channel.index() as u8,
                u8::from(c.escalated),
            ]);
            out.extend_from_slice(&c.weight.to_le_bytes());
        }
        true
    }

    /// Applies one changelog record: a value replaces the customer's state, a tombstone
    /// (`None`) removes it. Timers are recomputed by the stream that owns the customer.
    pub fn restore(&self, customer: &str, value: Option<&[u8]>) -> Result<(), SnapshotError> {
        let Some(value) = value else {
            self.customers.remove(customer.as_bytes());
            return Ok(());
        };
        let s = self.decode(value)?;
        match self.customers.get_mut(customer.as_bytes()) {
            Some(mut held) => **held = s,
            None => {
                self.customers.insert(CustomerKey::new(customer), Box::new(s));
            }
        }
        Ok(())
    }

    fn decode(&self, value: &[u8]) -> Result<CustomerState, SnapshotError> {
        let r = &self.rules;
        let mut rd = Reader(value);
        let version = rd.u8()?;
        if version != VERSION {
            return Err(SnapshotError::Version(version));
        }
        let cap = rd.u8()?;
        let mut s = CustomerState::new(r.config.engine.recent_touchpoints.min(cap.max(1) as usize));
        s.score = f64::from_le_bytes(rd.arr()?);
        if let Some(tier) = rd.str()? {
            s.tier = self.tiers.intern(tier, |t| r.tier_multiplier(t)).0;
        }
        let n = rd.u8()? as usize;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let raw: [u8; 26] = rd.arr()?;
            let name = rd
                .str()?
                .ok_or(SnapshotError::Malformed("touchpoint type missing"))?;
            let (id, _) = self.touchpoint_types.intern(name, |t| r.stake_of_type(t));
            entries.push(Recent::from_bytes(&raw, u16::try_from(id).unwrap_or(0)));
        }
        let n = rd.u8()? as usize;
        for _ in 0..n {
            s.push_episode(Episode {
                journey: rd.u32()?,
                first: rd.i64()?,
                span: rd.u32()?,
                contacts: rd.u16()?,
                channels: rd.u16()?,
            });
        }
        let mut extra = Extra::default();
        let n = rd.u8()? as usize;
        for _ in 0..n {
            let h = rd.u64()?;
            let text = rd.str()?.ok_or(SnapshotError::Malformed("long id missing"))?;
            extra.long_ids.push((h, text.into()));
        }
        let n = rd.u8()? as usize;
        for _ in 0..n {
            let journey = rd
                .str()?
                .ok_or(SnapshotError::Malformed("case journey missing"))?
                .into();
            let journey_hash = rd.u64()?;
            let case_hash = rd.u64()?;
            let opened_at = rd.i64()?;
            let last_touch = rd.i64()?;
            let last_event_id = rd
                .str()?
                .ok_or(SnapshotError::Malformed("case event missing"))?
                .into();
            let [rule, severity, channel, escalated] = rd.arr()?;
            extra.cases.push(Case {
                journey,
                journey_hash,
                case_hash,
                opened_at,
                last_touch,
                last_event_id,
                rule: RuleId::from_index(rule).ok_or(SnapshotError::Malformed("unknown rule"))?,
                severity: Severity::from_index(severity as usize)
                    .ok_or(SnapshotError::Malformed("severity"))?,
                channel: Channel::from_index(channel as usize).ok_or(SnapshotError::Malformed("channel"))?,
                escalated: escalated != 0,
                weight: f32::from_le_bytes(rd.arr()?),
            });
        }
        if !rd.0.is_empty() {
            return Err(SnapshotError::Malformed("trailing bytes"));
        }
        // Long-id texts must be in place before the ring entries that point at them.
        if !extra.long_ids.is_empty() || !extra.cases.is_empty() {
            s.extra = Some(Box::new(extra));
        }
        // A smaller configured ring keeps the newest entries.
        let skip = entries.len().saturating_sub(s.ring_cap as usize);
        for e in entries.into_iter().skip(skip) {
            s.push_restored(e);
        }
        Ok(s)
    }

    /// Earliest timer deadline of a customer, to re-register after a restore.
    pub(crate) fn restored_deadline(&self, customer: &str) -> Option<(Arc<str>, i64)> {
        let mut guard = self.customers.get_mut(customer.as_bytes())?;
        let d = self.next_deadline(&guard);
        if d == i64::MAX {
            return None;
        }
        guard.queued_deadline = d;
        Some((guard.key().to_arc(), d))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::engine::{Engine, Stream};
    use crate::model::*;
    use std::sync::Arc;

    fn tp(id: &str, customer: &str, minute: i64, touchpoint: &str, outcome: Outcome) -> Touchpoint {
        Touchpoint {
            event_id: id.into(),
            customer_id: customer.into(),
            occurred_at: 1_772_359_200_000 + minute * 60_000,
            channel: Channel::Voice,
            kind: TouchpointKind::Interaction,
            direction: Direction::Inbound,
            journey: "billing".into(),
            touchpoint: touchpoint.into(),
            outcome,
            sentiment: Some(-0.4),
            customer_tier: Some("vip".into()),
            agent_id: None,
            attributes: Default::default(),
        }
    }

    #[test]
    fn snapshot_round_trips_every_part_of_the_state() {
        let engine = Arc::new(Engine::new(Config::default()));
        let mut stream = Stream::new(engine.clone());
        let mut out = Vec::new();
        let long = "an-event-id-much-longer-than-sixteen-bytes";
        stream.push(
            tp(
                "8f14e45f-ceea-467f-a0e6-1c2b3a4d5e6f",
                "c",
                0,
                "ivr.menu",
                Outcome::Pending,
            ),
            0,
            0,
            &mut out,
        );
        stream.push(
            tp(long, "c", 1, "payment.transfer", Outcome::Failure),
            1,
            0,
            &mut out,
        );
        stream.push(
            tp("short", "c", 30, "ivr.menu", Outcome::Abandoned),
            2,
            0,
            &mut out,
        );
        stream.flush(0, &mut out);
        let before = engine.customer("c").unwrap();
        assert_eq!(before.open_cases.len(), 1);

        let mut bytes = Vec::new();
        assert!(engine.snapshot("c", &mut bytes));
        let other = Engine::new(Config::default());
        other.restore("c", Some(&bytes)).unwrap();
        let after = other.customer("c").unwrap();
        assert_eq!(
            serde_json::to_value(&after).unwrap(),
            serde_json::to_value(&before).unwrap()
        );
        let mut again = Vec::new();
        other.snapshot("c", &mut again);
        assert_eq!(again, bytes, "re-encoding a restored state is byte-identical");

        other.restore("c", None).unwrap();
        assert!(other.customer("c").is_none(), "a tombstone removes the customer");
        assert_eq!(
            other.restore("c", Some(&bytes[..bytes.len() - 3])),
            Err(super::SnapshotError::Truncated)
        );
        assert_eq!(
            other.restore("c", Some(&[9])),
            Err(super::SnapshotError::Version(9))
        );
    }
}
