//! The changelog encoding of one customer's state: compact, little-endian, versioned.
//!
//! Layout, version 3 (README, Durable state):
//! `u8 version=3 | i64 input_offset | u8 ring_cap | f64 score | str tier
//!  | u8 n { [26]recent str touchpoint } | u8 n { u32 journey i64 first u32 span u16 contacts u16 channels }
//!  | u8 n { u64 hash str text } | u8 n { case human }`; `str` = `u16 len` + UTF-8 (`0xFFFF` = none).
//! `human` (version 3 on) is the case's side with the agents:
//! `u8 status u8 flags(1 = ack SLA fired) u8 reopens str queue i64 round_start i64 acknowledged_at
//!  i64 resolved_at str actor str resolution u8 n { u32 action_hash }` (times `i64::MIN` = unset;
//! the queue by name, `none` = default, so the routing table may change between runs).
//! `input_offset` is the last input offset the state includes (-1: none). Version 2 is version 3
//! without `human`: its cases read back OPEN with the ack SLA already spent (they predate it; an
//! upgrade must not page for every case older than the SLA). Version 1 is version 2 without
//! `input_offset`, which travelled in a `cx.offset` record header instead (a header list per
//! record cost librdkafka an allocation to write and another to read).
//! Interned ids are written as names, so a snapshot is readable by any instance. A reader must
//! accept every older version; a new field means a new version.

use super::Engine;
use super::rules::NO_ROUTE;
use super::state::{
    ACTION_MEMORY, Case, CaseStatus, CustomerKey, CustomerState, Episode, Extra, Human, MAX_RING, NO_TIER,
    Recent, RuleId,
};
use crate::model::{Channel, Severity};
use std::sync::Arc;

pub const VERSION: u8 = 3;
/// Without the cases' human side.
const VERSION_2: u8 = 2;
/// The first version, without the input offset in the value.
const VERSION_1: u8 = 1;
const NONE: u16 = u16::MAX;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SnapshotError {
    #[error("state record is truncated")]
    Truncated,
    #[error("state record version {0} is newer than this build reads (3)")]
    Version(u8),
    #[error("state record is malformed: {0}")]
    Malformed(&'static str),
}

fn put_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.extend_from_slice(&NONE.to_le_bytes()),
        Some(s) => {
            // Cut to what a u16 length can say, at a character boundary: slicing inside a
            // multi-byte character would panic (a customer tier of 65 KB of three-byte characters).
            let mut end = s.len().min(NONE as usize - 1);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            let s = &s[..end];
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

/// The input offset a changelog value carries (version 2 on); `None` for a version 1 value,
/// whose offset is in its `cx.offset` header, or for a value too short to tell.
pub fn input_offset(value: &[u8]) -> Option<i64> {
    match value {
        [VERSION | VERSION_2, rest @ ..] if rest.len() >= 8 => {
            Some(i64::from_le_bytes(rest[..8].try_into().ok()?))
        }
        _ => None,
    }
}

impl Engine {
    /// Appends the changelog value of `customer`'s state to `out`, including `input_offset`, the
    /// last input offset the state includes (-1: none); false if the customer is not held.
    pub fn snapshot(&self, customer: &str, input_offset: i64, out: &mut Vec<u8>) -> bool {
        let Some(guard) = self.customers.get(customer.as_bytes()) else {
            return false;
        };
        let s = &**guard;
        out.push(VERSION);
        out.extend_from_slice(&input_offset.to_le_bytes());
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
            let h = &c.human;
            out.extend_from_slice(&[h.status as u8, u8::from(h.ack_breached), h.reopens]);
            let queue = (h.queue != NO_ROUTE).then(|| self.rules.queue_name(h.queue));
            put_str(out, queue);
            for t in [h.round_start, h.acknowledged_at, h.resolved_at] {
                out.extend_from_slice(&t.to_le_bytes());
            }
            put_str(out, h.actor.as_deref());
            put_str(out, h.resolution.as_deref());
            let actions: Vec<u32> = h.actions.iter().copied().filter(|&a| a != 0).collect();
            out.push(actions.len() as u8);
            for a in actions {
                out.extend_from_slice(&a.to_le_bytes());
            }
        }
        true
    }

    /// Applies one changelog record: a value replaces the customer's state, a tombstone
    /// (`None`) removes it. Timers are recomputed by the stream that owns the customer. An
    /// unreadable value leaves the state as it was.
    pub fn restore(&self, customer: &str, value: Option<&[u8]>) -> Result<(), SnapshotError> {
        let Some(value) = value else {
            self.customers.remove(customer.as_bytes());
            return Ok(());
        };
        // Read and check the whole value first, so that it can then be written into the held
        // state in place: a restore reads many records per customer, and replacing the state
        // each time cost an allocation and a free per record.
        let decoded = Decoded::read(value, self.rules.config.engine.recent_touchpoints, &|q| {
            self.rules.route_of_queue(q)
        })?;
        match self.customers.get_mut(customer.as_bytes()) {
            Some(mut held) => self.fill(&mut held, decoded),
            None => {
                let mut s = Box::new(CustomerState::new(decoded.ring_cap));
                self.fill(&mut s, decoded);
                self.customers.insert(CustomerKey::new(customer), s);
            }
        }
        Ok(())
    }

    /// Makes `s` the state `d` describes, as a fresh state would be, keeping what heap blocks
    /// of the old state fit.
    fn fill(&self, s: &mut CustomerState, d: Decoded<'_>) {
        let r = &self.rules;
        let episodes = d.episodes.len() / EPISODE_BYTES;
        let old_extra = s.reset_for_restore(d.ring_cap, episodes, d.ring_len);
        s.score = d.score;
        if let Some(tier) = d.tier {
            s.tier = self.tiers.intern(tier, |t| r.tier_multiplier(t)).0;
        }
        s.restore_episodes(d.episodes.chunks_exact(EPISODE_BYTES).map(episode_from_bytes));
        // Long-id texts must be in place before the ring entries that point at them.
        if !d.extra.long_ids.is_empty() || !d.extra.cases.is_empty() {
            let mut extra = old_extra.unwrap_or_default();
            *extra = d.extra;
            s.extra = Some(extra);
        }
        // A customer's ring often holds one type several times (a journey done again): each
        // distinct name is looked up in the interner (a lock and a hash) once per record.
        let mut seen: [(&str, u16); MAX_RING] = [("", 0); MAX_RING];
        let mut n_seen = 0;
        for &(raw, name) in &d.ring[..d.ring_len] {
            let id = match seen[..n_seen].iter().find(|(n, _)| *n == name) {
                Some(&(_, id)) => id,
                None => {
                    let (id, _) = self.touchpoint_types.intern(name, |t| r.stake_of_type(t));
                    let id = u16::try_from(id).unwrap_or(0);
                    seen[n_seen] = (name, id);
                    n_seen += 1;
                    id
                }
            };
            s.push_restored(Recent::from_bytes(raw, id));
        }
    }

    /// Earliest timer deadline of a customer, to re-register after a restore.
    pub(crate) fn restored_deadline(&self, customer: &str) -> Option<(Arc<str>, i64)> {
        let mut guard = self.customers.get_mut(customer.as_bytes())?;
        let d = self.next_deadline(&guard, self.rules.lateness_ms);
        if d == i64::MAX {
            return None;
        }
        guard.queued_deadline = d;
        Some((guard.key().to_arc(), d))
    }
}

/// Bytes of one episode in the changelog: `u32 journey i64 first u32 span u16 contacts u16 channels`.
const EPISODE_BYTES: usize = 20;

fn episode_from_bytes(b: &[u8]) -> Episode {
    let at = |from: usize, to: usize| &b[from..to];
    Episode {
        journey: u32::from_le_bytes(at(0, 4).try_into().expect("4 bytes")),
        first: i64::from_le_bytes(at(4, 12).try_into().expect("8 bytes")),
        span: u32::from_le_bytes(at(12, 16).try_into().expect("4 bytes")),
        contacts: u16::from_le_bytes(at(16, 18).try_into().expect("2 bytes")),
        channels: u16::from_le_bytes(at(18, 20).try_into().expect("2 bytes")),
    }
}

/// A case's human side (version 3 on).
fn read_human(rd: &mut Reader<'_>, route_of_queue: &dyn Fn(&str) -> u16) -> Result<Human, SnapshotError> {
    let [status, flags, reopens] = rd.arr()?;
    let status = CaseStatus::from_index(status).ok_or(SnapshotError::Malformed("case status"))?;
    let queue = rd.str()?.map_or(NO_ROUTE, route_of_queue);
    let round_start = rd.i64()?;
    let acknowledged_at = rd.i64()?;
    let resolved_at = rd.i64()?;
    let actor = rd.str()?.map(Into::into);
    let resolution = rd.str()?.map(Into::into);
    let n = rd.u8()? as usize;
    if n > ACTION_MEMORY {
        return Err(SnapshotError::Malformed("too many action ids"));
    }
    let mut actions = [0u32; ACTION_MEMORY];
    for slot in &mut actions[ACTION_MEMORY - n..] {
        *slot = u32::from_le_bytes(rd.arr()?);
    }
    Ok(Human {
        status,
        ack_breached: flags & 1 != 0,
        reopens,
        queue,
        round_start,
        acknowledged_at,
        resolved_at,
        actor,
        resolution,
        actions,
    })
}

/// A changelog value read and checked, borrowing from the record: writing it into a state can
/// no longer fail, so a bad record never leaves a half-written state.
struct Decoded<'a> {
    /// Ring size of the restored state: the record's, but no more than configured.
    ring_cap: usize,
    score: f64,
    tier: Option<&'a str>,
    /// The ring entries the restored ring keeps (the newest), oldest first, with type names.
    ring: [(&'a [u8; 26], &'a str); MAX_RING],
    ring_len: usize,
    /// The episodes, [`EPISODE_BYTES`] each.
    episodes: &'a [u8],
    extra: Extra,
}

impl<'a> Decoded<'a> {
    fn read(
        value: &'a [u8],
        configured_ring: usize,
        route_of_queue: &dyn Fn(&str) -> u16,
    ) -> Result<Self, SnapshotError> {
        let mut rd = Reader(value);
        let version = rd.u8()?;
        match version {
            VERSION_1 => {}
            VERSION_2 | VERSION => {
                rd.take(8)?;
            }
            newer => return Err(SnapshotError::Version(newer)),
        }
        let cap = rd.u8()?;
        let ring_cap = configured_ring.min(cap.max(1) as usize).clamp(1, MAX_RING);
        let score = f64::from_le_bytes(rd.arr()?);
        let tier = rd.str()?;
        let n = rd.u8()? as usize;
        // A smaller configured ring keeps the newest entries; the older ones are only checked.
        let skip = n.saturating_sub(ring_cap);
        let mut ring = [(&[0u8; 26], ""); MAX_RING];
        for i in 0..n {
            let raw = rd.take(26)?.try_into().expect("length checked");
            if !Recent::bytes_are_valid(raw) {
                return Err(SnapshotError::Malformed("ring entry id is longer than 16 bytes"));
            }
            let name = rd
                .str()?
                .ok_or(SnapshotError::Malformed("touchpoint type missing"))?;
            if i >= skip {
                ring[i - skip] = (raw, name);
            }
        }
        let ring_len = n - skip;
        let n = rd.u8()? as usize;
        let episodes = rd.take(n * EPISODE_BYTES)?;
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
            let weight = f32::from_le_bytes(rd.arr()?);
            let human = if version >= VERSION {
                read_human(&mut rd, route_of_queue)?
            } else {
                Human {
                    ack_breached: true,
                    ..Human::new(opened_at, NO_ROUTE)
                }
            };
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
                weight,
                reopens_at: i64::MIN,
                human,
            });
        }
        if !rd.0.is_empty() {
            return Err(SnapshotError::Malformed("trailing bytes"));
        }
        Ok(Self {
            ring_cap,
            score,
            tier,
            ring,
            ring_len,
            episodes,
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{SnapshotError, VERSION, VERSION_1, input_offset};
    use crate::config::Config;
    use crate::engine::{ARRIVAL_UNCHECKED, Engine, Stream};
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
    fn an_overlong_string_is_cut_at_a_character_boundary() {
        let long = "€".repeat(30_000); // 90,000 bytes of three-byte characters
        let mut out = Vec::new();
        super::put_str(&mut out, Some(&long));
        let len = usize::from(u16::from_le_bytes([out[0], out[1]]));
        assert!(len <= 65_534 && len % 3 == 0, "{len}");
        let text = std::str::from_utf8(&out[2..]).expect("valid UTF-8");
        assert_eq!(text.len(), len);
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
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        stream.push(
            tp(long, "c", 1, "payment.transfer", Outcome::Failure),
            1,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        stream.push(
            tp("short", "c", 30, "ivr.menu", Outcome::Abandoned),
            2,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        stream.flush(None, 0, &mut out);
        let before = engine.customer("c").unwrap();
        assert_eq!(before.open_cases.len(), 1);

        let mut bytes = Vec::new();
        assert!(engine.snapshot("c", 7, &mut bytes));
        let other = Engine::new(Config::default());
        other.restore("c", Some(&bytes)).unwrap();
        let after = other.customer("c").unwrap();
        assert_eq!(
            serde_json::to_value(&after).unwrap(),
            serde_json::to_value(&before).unwrap()
        );
        let mut again = Vec::new();
        other.snapshot("c", 7, &mut again);
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

    /// Found by fuzzing (changelog_snapshot): an inline event id whose length byte says more
    /// than the 16 bytes held was restored, and the customer's view (and any alert built from
    /// the state) then panicked slicing past them.
    #[test]
    fn an_inline_id_longer_than_its_bytes_is_malformed() {
        let engine = Arc::new(Engine::new(Config::default()));
        let mut stream = Stream::new(engine.clone());
        let mut out = Vec::new();
        stream.push(
            tp("e1", "c", 0, "payment.transfer", Outcome::Failure),
            0,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        let mut bytes = Vec::new();
        assert!(engine.snapshot("c", 0, &mut bytes));
        // version, offset, ring cap, score, tier ("vip": u16 length + 3), ring length: the first
        // entry's byte 23 holds its id's length in the top five bits.
        let entry = 1 + 8 + 1 + 8 + 2 + 3 + 1;
        assert_eq!(bytes[entry - 1], 1, "one ring entry");
        assert_eq!(bytes[entry + 23] >> 3, 2, "the inline id \"e1\"");
        bytes[entry + 23] = (bytes[entry + 23] & 7) | 27 << 3;
        let other = Engine::new(Config::default());
        assert_eq!(
            other.restore("c", Some(&bytes)),
            Err(SnapshotError::Malformed("ring entry id is longer than 16 bytes"))
        );
        assert!(other.customer("c").is_none());
        // Sixteen is the most an inline id holds, and reads.
        bytes[entry + 23] = (bytes[entry + 23] & 7) | 16 << 3;
        other.restore("c", Some(&bytes)).unwrap();
        assert_eq!(
            other.customer("c").unwrap().recent_touchpoints[0].event_id.len(),
            16
        );
    }

    #[test]
    fn version_1_values_still_restore_and_carry_no_offset() {
        let engine = Arc::new(Engine::new(Config::default()));
        let mut stream = Stream::new(engine.clone());
        let mut out = Vec::new();
        stream.push(
            tp("e1", "c", 0, "payment.transfer", Outcome::Failure),
            0,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        stream.flush(None, 0, &mut out);
        let mut v2 = Vec::new();
        assert!(engine.snapshot("c", 41, &mut v2));
        assert_eq!(input_offset(&v2), Some(41));
        // The same state as the first version wrote it: no offset after the version byte, and
        // no human side after the (one, last) case: status, flags, reopens, queue (none), three
        // times, actor and resolution (none), no action ids.
        const HUMAN_BYTES: usize = 3 + 2 + 3 * 8 + 2 + 2 + 1;
        let mut v1 = vec![VERSION_1];
        v1.extend_from_slice(&v2[9..v2.len() - HUMAN_BYTES]);
        let mut old_v2 = vec![super::VERSION_2];
        old_v2.extend_from_slice(&v2[1..v2.len() - HUMAN_BYTES]);
        assert_eq!(input_offset(&old_v2), Some(41));
        let from_v2 = Engine::new(Config::default());
        from_v2.restore("c", Some(&old_v2)).unwrap();
        assert_eq!(
            serde_json::to_value(from_v2.customer("c").unwrap()).unwrap(),
            serde_json::to_value(engine.customer("c").unwrap()).unwrap()
        );
        assert_eq!(input_offset(&v1), None);
        let other = Engine::new(Config::default());
        other.restore("c", Some(&v1)).unwrap();
        assert_eq!(
            serde_json::to_value(other.customer("c").unwrap()).unwrap(),
            serde_json::to_value(engine.customer("c").unwrap()).unwrap()
        );
        let mut newer = v2.clone();
        newer[0] = VERSION + 1;
        assert_eq!(
            other.restore("c", Some(&newer)),
            Err(SnapshotError::Version(VERSION + 1))
        );
        assert_eq!(
            input_offset(&[VERSION, 1, 2]),
            None,
            "too short to carry an offset"
        );
    }

    /// Snapshots of one customer as its history grows: few to many ring entries, one to three
    /// episodes, no case to several, short, UUID and long event ids.
    fn history_snapshots(engine: &Arc<Engine>) -> Vec<Vec<u8>> {
        let mut stream = Stream::new(engine.clone());
        let mut out = Vec::new();
        let mut snapshots = Vec::new();
        let steps = [
            ("e0", "billing", "ivr.menu", Outcome::Pending),
            (
                "8f14e45f-ceea-467f-a0e6-1c2b3a4d5e6f",
                "billing",
                "payment.transfer",
                Outcome::Failure,
            ),
            (
                "an-event-id-much-longer-than-sixteen-bytes",
                "claims",
                "claim.file",
                Outcome::Escalated,
            ),
            ("e3", "travel", "ivr.menu", Outcome::Abandoned),
            ("e4", "travel", "ivr.menu", Outcome::Pending),
            ("e5", "billing", "payment.transfer", Outcome::Success),
        ];
        for (minute, (id, journey, touchpoint, outcome)) in steps.into_iter().enumerate() {
            let mut t = tp(id, "c", minute as i64, touchpoint, outcome);
            t.journey = journey.into();
            stream.push(t, minute as u64, ARRIVAL_UNCHECKED, 0, &mut out);
            stream.flush(None, 0, &mut out);
            let mut bytes = Vec::new();
            assert!(engine.snapshot("c", 7, &mut bytes));
            snapshots.push(bytes);
        }
        snapshots
    }

    fn view(engine: &Engine) -> serde_json::Value {
        serde_json::to_value(engine.customer("c").unwrap()).unwrap()
    }

    #[test]
    fn restoring_over_a_held_state_is_the_same_as_restoring_into_an_empty_engine() {
        let snapshots = history_snapshots(&Arc::new(Engine::new(Config::default())));
        let (small, large) = (&snapshots[0], snapshots.last().unwrap());
        assert!(large.len() > small.len() + 100, "the history grew");
        for target in &snapshots {
            let once = Engine::new(Config::default());
            once.restore("c", Some(target)).unwrap();
            // The held state is written in place: whatever it held before must not show.
            let over = Engine::new(Config::default());
            for earlier in [large, small, large, target, target] {
                over.restore("c", Some(earlier)).unwrap();
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            once.snapshot("c", 7, &mut a);
            over.snapshot("c", 7, &mut b);
            assert_eq!(a, b);
            assert_eq!(&a, target, "re-encoding a restored state is byte-identical");
            assert_eq!(view(&over), view(&once));
            assert_eq!(over.state_bytes(), once.state_bytes(), "no leftover capacity");
        }
    }

    #[test]
    fn an_unreadable_record_leaves_the_held_state_as_it_was() {
        let snapshots = history_snapshots(&Arc::new(Engine::new(Config::default())));
        let good = snapshots.last().unwrap();
        let engine = Engine::new(Config::default());
        engine.restore("c", Some(good)).unwrap();
        let before = view(&engine);
        let mut trailing = snapshots[0].clone();
        trailing.push(0);
        assert_eq!(
            engine.restore("c", Some(&trailing)),
            Err(super::SnapshotError::Malformed("trailing bytes"))
        );
        assert_eq!(
            engine.restore("c", Some(&snapshots[1][..snapshots[1].len() - 1])),
            Err(super::SnapshotError::Truncated)
        );
        assert_eq!(view(&engine), before);
        let mut again = Vec::new();
        engine.snapshot("c", 7, &mut again);
        assert_eq!(&again, good);
    }

    #[test]
    fn a_smaller_configured_ring_keeps_the_newest_entries() {
        let snapshots = history_snapshots(&Arc::new(Engine::new(Config::default())));
        let mut config = Config::default();
        config.engine.recent_touchpoints = 2;
        let small = Engine::new(config);
        small.restore("c", Some(snapshots.last().unwrap())).unwrap();
        let ids: Vec<String> = small
            .customer("c")
            .unwrap()
            .recent_touchpoints
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        assert_eq!(ids, ["e4", "e5"]);
        // Written back, the state has the smaller ring, and reads back the same again.
        let mut bytes = Vec::new();
        small.snapshot("c", 7, &mut bytes);
        let other = Engine::new(Config::default());
        other.restore("c", Some(&bytes)).unwrap();
        assert_eq!(view(&other), view(&small));
    }
}
