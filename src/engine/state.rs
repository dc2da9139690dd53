//! Per-customer rolling state, laid out compactly (see `docs/state.md` for the byte budget).

use crate::model::{Channel, Direction, Millis, Outcome, Severity, TouchpointKind};

/// 64-bit FNV-1a: stable across runs and platforms, so ids derived from it are deterministic.
pub fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// How an event id is held in 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdForm {
    /// Up to 16 bytes, stored as-is.
    Inline = 0,
    /// A canonical lower-case hyphenated UUID, stored as its 16 bytes.
    Uuid = 1,
    /// Anything longer: the bytes hold a hash, the text lives in `Extra::long_ids`.
    Long = 2,
}

/// An event id in the compact form the ring stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactId {
    bytes: [u8; 16],
    form: IdForm,
    len: u8,
}

impl CompactId {
    pub fn new(id: &str) -> Self {
        let b = id.as_bytes();
        if b.len() <= 16 {
            let mut bytes = [0u8; 16];
            bytes[..b.len()].copy_from_slice(b);
            return Self {
                bytes,
                form: IdForm::Inline,
                len: b.len() as u8,
            };
        }
        if let Some(bytes) = parse_uuid(b) {
            return Self {
                bytes,
                form: IdForm::Uuid,
                len: 0,
            };
        }
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&fnv64(&[b]).to_le_bytes());
        Self {
            bytes,
            form: IdForm::Long,
            len: 0,
        }
    }

    pub fn is_long(&self) -> bool {
        self.form == IdForm::Long
    }

    fn long_hash(&self) -> u64 {
        u64::from_le_bytes(self.bytes[..8].try_into().expect("8 bytes"))
    }
}

fn parse_uuid(b: &[u8]) -> Option<[u8; 16]> {
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let mut out = [0u8; 16];
    let mut i = 0;
    for byte in out.iter_mut() {
        if matches!(i, 8 | 13 | 18 | 23) {
            i += 1;
        }
        *byte = nibble(b[i])? << 4 | nibble(b[i + 1])?;
        i += 2;
    }
    Some(out)
}

fn format_uuid(bytes: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(byte >> 4) as usize] as char);
        s.push(HEX[(byte & 15) as usize] as char);
    }
    s
}

/// One remembered touchpoint: 28 bytes.
#[derive(Debug, Clone, Copy)]
pub struct Recent {
    id: [u8; 16],
    /// Event time in 48 bits (validation caps event time at year 9999, well inside 2^48 ms).
    time: [u8; 6],
    /// Interned touchpoint type.
    pub touchpoint: u16,
    /// Sentiment in thousandths; `i16::MIN` = none.
    sentiment: i16,
    /// channel (4 bits) | kind (1) | direction (1) | id form (2)
    a: u8,
    /// outcome (3 bits) | inline id length (5)
    b: u8,
}

const NO_SENTIMENT: i16 = i16::MIN;

impl Recent {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: CompactId,
        occurred_at: Millis,
        touchpoint: u16,
        channel: Channel,
        kind: TouchpointKind,
        direction: Direction,
        outcome: Outcome,
        sentiment: Option<f64>,
    ) -> Self {
        let sentiment = sentiment
            .map(|s| (s.clamp(-1.0, 1.0) * 1000.0).round() as i16)
            .unwrap_or(NO_SENTIMENT);
        let t = occurred_at.clamp(0, (1 << 48) - 1).to_le_bytes();
        Self {
            time: [t[0], t[1], t[2], t[3], t[4], t[5]],
            id: id.bytes,
            touchpoint,
            sentiment,
            a: channel.index() as u8
                | (kind.index() as u8) << 4
                | (direction.index() as u8) << 5
                | (id.form as u8) << 6,
            b: outcome.index() as u8 | id.len << 3,
        }
    }

    /// Everything but the interned touchpoint type, for the changelog.
    pub(crate) fn to_bytes(self) -> [u8; 26] {
        let mut b = [0u8; 26];
        b[..16].copy_from_slice(&self.id);
        b[16..22].copy_from_slice(&self.time);
        b[22] = self.a;
        b[23] = self.b;
        b[24..26].copy_from_slice(&self.sentiment.to_le_bytes());
        b
    }

    pub(crate) fn from_bytes(b: &[u8; 26], touchpoint: u16) -> Self {
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[..16]);
        Self {
            id,
            time: [b[16], b[17], b[18], b[19], b[20], b[21]],
            touchpoint,
            sentiment: i16::from_le_bytes([b[24], b[25]]),
            a: b[22],
            b: b[23],
        }
    }

    pub fn occurred_at(&self) -> Millis {
        let t = self.time;
        i64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], 0, 0])
    }

    pub fn channel(&self) -> Channel {
        Channel::from_index((self.a & 15) as usize).unwrap_or(Channel::Other)
    }
    pub fn kind(&self) -> TouchpointKind {
        TouchpointKind::from_index(((self.a >> 4) & 1) as usize).unwrap_or(TouchpointKind::Interaction)
    }
    pub fn direction(&self) -> Direction {
        Direction::from_index(((self.a >> 5) & 1) as usize).unwrap_or(Direction::Inbound)
    }
    pub fn outcome(&self) -> Outcome {
        Outcome::from_index((self.b & 7) as usize).unwrap_or(Outcome::Unknown)
    }
    pub fn sentiment(&self) -> Option<f64> {
        (self.sentiment != NO_SENTIMENT).then(|| f64::from(self.sentiment) / 1000.0)
    }
    fn compact_id(&self) -> CompactId {
        let form = match self.a >> 6 {
            0 => IdForm::Inline,
            1 => IdForm::Uuid,
            _ => IdForm::Long,
        };
        CompactId {
            bytes: self.id,
            form,
            len: self.b >> 3,
        }
    }
}

/// What a customer is doing on one journey since its episode began.
#[derive(Debug, Clone, Copy)]
pub struct Episode {
    /// Hash of the journey name (32 bits: a customer has a handful of journeys at once).
    pub journey: u32,
    pub first: Millis,
    /// Milliseconds from `first` to the latest touch (windows are at most 30 days).
    pub span: u32,
    /// INBOUND INTERACTIONs since the episode began or since the last SUCCESS.
    pub contacts: u16,
    /// Bit per [`Channel`] touched INBOUND.
    pub channels: u16,
}

impl Episode {
    pub fn last(&self) -> Millis {
        self.first + Millis::from(self.span)
    }
}

/// Which rule opened or moved a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleId {
    CriticalNegative,
    ExperienceDecline,
    HighEffort,
    ChannelHopping,
    RepeatNegative,
    SlaBreach,
    Recovered,
    Expired,
    CaseLimit,
}

impl RuleId {
    pub const ALL: [RuleId; 9] = [
        RuleId::CriticalNegative,
        RuleId::ExperienceDecline,
        RuleId::HighEffort,
        RuleId::ChannelHopping,
        RuleId::RepeatNegative,
        RuleId::SlaBreach,
        RuleId::Recovered,
        RuleId::Expired,
        RuleId::CaseLimit,
    ];

    pub fn index(self) -> u8 {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0) as u8
    }

    pub fn from_index(i: u8) -> Option<Self> {
        Self::ALL.get(i as usize).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RuleId::CriticalNegative => "critical_negative",
            RuleId::ExperienceDecline => "experience_decline",
            RuleId::HighEffort => "high_effort",
            RuleId::ChannelHopping => "channel_hopping",
            RuleId::RepeatNegative => "repeat_negative",
            RuleId::SlaBreach => "sla_breach",
            RuleId::Recovered => "recovered",
            RuleId::Expired => "case_expired",
            RuleId::CaseLimit => "case_limit",
        }
    }
}

/// An open recovery case: at most one per (customer, journey).
#[derive(Debug, Clone)]
pub struct Case {
    pub journey: Box<str>,
    pub journey_hash: u64,
    pub case_hash: u64,
    pub opened_at: Millis,
    pub last_touch: Millis,
    pub last_event_id: Box<str>,
    pub rule: RuleId,
    pub severity: Severity,
    pub channel: Channel,
    pub escalated: bool,
    /// Stakes x tier multiplier of the opening touchpoint, for priority.
    pub weight: f32,
}

impl Case {
    pub fn case_id(&self) -> String {
        format!("{:016x}", self.case_hash)
    }
}

/// Rarely used parts, kept out of line so a typical customer pays 8 bytes for them.
#[derive(Debug, Default, Clone)]
pub struct Extra {
    pub cases: Vec<Case>,
    /// Texts of event ids too long to store inline, by hash.
    pub long_ids: Vec<(u64, Box<str>)>,
}

/// One customer's rolling experience.
#[derive(Debug, Clone)]
pub struct CustomerState {
    /// Ring of recent touchpoints; `head` is the oldest once full.
    pub(crate) ring: [Recent; MAX_RING],
    pub(crate) ring_cap: u8,
    pub(crate) ring_len: u8,
    pub(crate) ring_head: u8,
    /// Interned tier; `u32::MAX` = unknown.
    pub tier: u32,
    /// Time-decayed experience score, as of the newest touchpoint's event time.
    pub score: f64,
    /// Earliest deadline this customer has in its stream's timer queue (`i64::MAX` = none).
    pub queued_deadline: Millis,
    pub episodes: Vec<Episode>,
    pub extra: Option<Box<Extra>>,
}

pub const NO_TIER: u32 = u32::MAX;

/// Most touchpoints a customer's ring holds (and an alert carries); stored inline.
pub const MAX_RING: usize = 10;

impl CustomerState {
    pub fn new(ring: usize) -> Self {
        let blank = Recent::new(
            CompactId::new(""),
            0,
            0,
            Channel::Other,
            TouchpointKind::Interaction,
            Direction::Inbound,
            Outcome::Unknown,
            None,
        );
        Self {
            ring: [blank; MAX_RING],
            ring_cap: ring.clamp(1, MAX_RING) as u8,
            ring_len: 0,
            ring_head: 0,
            tier: NO_TIER,
            score: 0.0,
            queued_deadline: Millis::MAX,
            episodes: Vec::new(),
            extra: None,
        }
    }

    /// Recent touchpoints, oldest first.
    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &Recent> + ExactSizeIterator {
        let cap = self.ring_cap as usize;
        let head = self.ring_head as usize;
        (0..self.ring_len as usize).map(move |i| &self.ring[(head + i) % cap])
    }

    /// The event time the score is as of: the newest touchpoint's (touchpoints apply in order).
    pub fn score_at(&self) -> Millis {
        self.last_event().unwrap_or(Millis::MIN)
    }

    /// Event time of the newest touchpoint, if any.
    pub fn last_event(&self) -> Option<Millis> {
        self.recent().next_back().map(|r| r.occurred_at())
    }

    /// Whether `id` is among the remembered touchpoints (the de-duplication window).
    pub fn has_seen(&self, id: &CompactId, text: &str) -> bool {
        self.recent().any(|r| {
            let c = r.compact_id();
            c == *id && (!id.is_long() || self.long_id(id.long_hash()) == Some(text))
        })
    }

    fn long_id(&self, hash: u64) -> Option<&str> {
        self.extra
            .as_ref()?
            .long_ids
            .iter()
            .find(|(h, _)| *h == hash)
            .map(|(_, s)| &**s)
    }

    /// Appends a touchpoint, forgetting the oldest when the ring is full.
    pub fn remember(&mut self, entry: Recent, id_text: &str) {
        let cap = self.ring_cap as usize;
        if (self.ring_len as usize) < cap {
            let at = (self.ring_head as usize + self.ring_len as usize) % cap;
            self.ring[at] = entry;
            self.ring_len += 1;
        } else {
            let old = self.ring[self.ring_head as usize].compact_id();
            if old.is_long() {
                self.forget_long_id(old.long_hash());
            }
            self.ring[self.ring_head as usize] = entry;
            self.ring_head = ((self.ring_head as usize + 1) % cap) as u8;
        }
        let id = entry.compact_id();
        if id.is_long() {
            self.extra_mut().long_ids.push((id.long_hash(), id_text.into()));
        }
    }

    fn forget_long_id(&mut self, hash: u64) {
        if let Some(extra) = self.extra.as_mut()
            && let Some(i) = extra.long_ids.iter().position(|(h, _)| *h == hash)
        {
            extra.long_ids.swap_remove(i);
        }
        self.shrink_extra();
    }

    /// Appends a restored ring entry (its long-id text, if any, is already in `extra`).
    pub(crate) fn push_restored(&mut self, entry: Recent) {
        let cap = self.ring_cap as usize;
        if (self.ring_len as usize) < cap {
            let at = (self.ring_head as usize + self.ring_len as usize) % cap;
            self.ring[at] = entry;
            self.ring_len += 1;
        }
    }

    /// The text of a remembered touchpoint's event id.
    pub fn event_id(&self, r: &Recent) -> String {
        let c = r.compact_id();
        match c.form {
            IdForm::Inline => String::from_utf8_lossy(&c.bytes[..c.len as usize]).into_owned(),
            IdForm::Uuid => format_uuid(&c.bytes),
            IdForm::Long => self.long_id(c.long_hash()).unwrap_or("").to_string(),
        }
    }

    pub fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// Drops the out-of-line part once it holds nothing.
    pub fn shrink_extra(&mut self) {
        if self
            .extra
            .as_ref()
            .is_some_and(|e| e.cases.is_empty() && e.long_ids.is_empty())
        {
            self.extra = None;
        }
    }

    pub fn cases(&self) -> &[Case] {
        self.extra.as_ref().map(|e| &e.cases[..]).unwrap_or(&[])
    }

    /// Bytes this state owns on the heap and inline (not counting the map slot or the key).
    pub fn footprint(&self) -> usize {
        let mut n = std::mem::size_of::<Self>() + self.episodes.capacity() * std::mem::size_of::<Episode>();
        if let Some(e) = &self.extra {
            n += std::mem::size_of::<Extra>()
                + e.cases.capacity() * std::mem::size_of::<Case>()
                + e.cases
                    .iter()
                    .map(|c| c.journey.len() + c.last_event_id.len())
                    .sum::<usize>()
                + e.long_ids.capacity() * std::mem::size_of::<(u64, Box<str>)>()
                + e.long_ids.iter().map(|(_, s)| s.len()).sum::<usize>();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, t: Millis) -> Recent {
        Recent::new(
            CompactId::new(id),
            t,
            7,
            Channel::Sms,
            TouchpointKind::Engagement,
            Direction::Outbound,
            Outcome::Abandoned,
            Some(-0.25),
        )
    }

    #[test]
    fn recent_entry_is_28_bytes_and_round_trips() {
        assert_eq!(std::mem::size_of::<Recent>(), 28);
        assert_eq!(entry("x", 253_402_300_799_999).occurred_at(), 253_402_300_799_999);
        let r = entry("x", 5);
        assert_eq!(r.channel(), Channel::Sms);
        assert_eq!(r.kind(), TouchpointKind::Engagement);
        assert_eq!(r.direction(), Direction::Outbound);
        assert_eq!(r.outcome(), Outcome::Abandoned);
        assert_eq!(r.sentiment(), Some(-0.25));
    }

    #[test]
    fn event_ids_of_every_form_read_back() {
        let mut s = CustomerState::new(3);
        let ids = [
            "short-id",
            "0123456789abcdef",
            "8f14e45f-ceea-467f-a0e6-1c2b3a4d5e6f",
            "8F14E45F-CEEA-467F-A0E6-1C2B3A4D5E6F",
            "an-event-id-that-is-rather-long-and-not-a-uuid",
        ];
        for (i, id) in ids.iter().enumerate() {
            s.remember(entry(id, i as i64), id);
            let newest = *s.recent().last().unwrap();
            assert_eq!(s.event_id(&newest), *id);
            assert!(s.has_seen(&CompactId::new(id), id));
        }
        // Ring of 3: the first two are forgotten, and the long id's text is dropped with it later.
        assert!(!s.has_seen(&CompactId::new(ids[0]), ids[0]));
        assert_eq!(s.recent().len(), 3);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            s.remember(entry(id, 10 + i as i64), id);
        }
        assert!(s.extra.is_none(), "long id text freed once it left the ring");
    }
}
