//! Per-customer rolling state, laid out compactly (see `docs/state.md` for the byte budget).

use crate::model::{Channel, Direction, Millis, Outcome, Severity, TouchpointKind};
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Bit 7 of each byte of `x` that equals `b`, the other bits clear (exact, no false positives).
fn bytes_equal(x: u128, b: u8) -> u128 {
    const LOW7: u128 = u128::from_le_bytes([0x7f; 16]);
    let t = x ^ u128::from_le_bytes([b; 16]);
    !((((t & LOW7) + LOW7) | t) | LOW7)
}

/// Every bit of bytes `0..n` (n <= 16).
fn lane_mask(n: usize) -> u128 {
    if n >= 16 {
        u128::MAX
    } else {
        (1u128 << (8 * n)) - 1
    }
}

/// Longest customer id held inline in [`CustomerKey`].
const INLINE_KEY: usize = 22;

/// A customer id as the state map holds it: up to 22 bytes inline, so that finding a customer
/// compares bytes already in the map's slot instead of chasing a pointer (a cache miss per
/// touchpoint with many customers); longer ids are shared. 24 bytes either way.
///
/// The map is searched by the id's bytes (`Borrow<[u8]>`), which need no UTF-8 check.
#[derive(Clone)]
pub enum CustomerKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Shared(Arc<str>),
}

impl CustomerKey {
    pub fn new(id: &str) -> Self {
        Self::inline(id).unwrap_or_else(|| Self::Shared(Arc::from(id)))
    }

    /// The key, if `id` is short enough to be held inline (building it then allocates nothing).
    pub fn inline(id: &str) -> Option<Self> {
        let b = id.as_bytes();
        (b.len() <= INLINE_KEY).then(|| {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[..b.len()].copy_from_slice(b);
            Self::Inline {
                len: b.len() as u8,
                bytes,
            }
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..*len as usize],
            Self::Shared(s) => s.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        // Copied from a `&str` whole, so always valid UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The id as the effects carry it.
    pub fn to_arc(&self) -> Arc<str> {
        match self {
            Self::Inline { .. } => Arc::from(self.as_str()),
            Self::Shared(s) => s.clone(),
        }
    }

    /// Heap bytes this key owns besides its map slot.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Self::Inline { .. } => 0,
            Self::Shared(s) => s.len() + 16,
        }
    }
}

impl PartialEq for CustomerKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for CustomerKey {}

/// Hashes as its bytes do, so the map can be searched by `&[u8]` (the `Borrow` contract).
impl Hash for CustomerKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl Borrow<[u8]> for CustomerKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

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

    /// One byte of hash over the whole compact form, kept beside the ring to skip entries.
    pub fn hint(&self) -> u8 {
        let (lo, hi) = self.bytes.split_at(8);
        let lo = u64::from_le_bytes(lo.try_into().expect("8 bytes"));
        let hi = u64::from_le_bytes(hi.try_into().expect("8 bytes"));
        let x = lo ^ hi.rotate_left(29) ^ u64::from(self.len) ^ (self.form as u64) << 8;
        (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
    }

    pub fn is_long(&self) -> bool {
        self.form == IdForm::Long
    }

    fn long_hash(&self) -> u64 {
        u64::from_le_bytes(self.bytes[..8].try_into().expect("8 bytes"))
    }
}

/// Where each of a UUID's 16 bytes has its two hex digits in the 36-character text.
const UUID_DIGITS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

fn parse_uuid(b: &[u8]) -> Option<[u8; 16]> {
    let b: &[u8; 36] = b.try_into().ok()?;
    if b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    // The 32 digits as four words of eight, first digit in the lowest byte.
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| u64::from(u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")));
    let groups = [
        word(0),
        half(9) | half(14) << 32,
        half(19) | half(24) << 32,
        word(28),
    ];
    let mut out = [0u8; 16];
    for (bytes, digits) in out.chunks_exact_mut(4).zip(groups) {
        bytes.copy_from_slice(&hex8(digits)?.to_le_bytes());
    }
    Some(out)
}

/// Eight lower-case hex digits (the first in the lowest byte) as four bytes, eight at a time: a
/// duplicate check parses one UUID per touchpoint.
fn hex8(x: u64) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    if x & HIGH != 0 {
        return None;
    }
    // Per byte (all below 0x80, so no carries between bytes): bit 7 set when in the range.
    let in_range =
        |lo: u8, hi: u8| (x + ONES * u64::from(0x80 - lo)) & !(x + ONES * u64::from(0x7f - hi)) & HIGH;
    let letters = in_range(b'a', b'f');
    if (in_range(b'0', b'9') | letters) != HIGH {
        return None;
    }
    // Nibble values, one per byte, then each pair of bytes packed into one.
    let v = (x & (ONES * 0x0f)) + (letters >> 7) * 9;
    let t = ((v << 4) | (v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let t = (t | (t >> 8)) & 0x0000_ffff_0000_ffff;
    Some((t | (t >> 16)) as u32)
}

fn format_uuid(bytes: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = *b"00000000-0000-0000-0000-000000000000";
    for (byte, &i) in bytes.iter().zip(UUID_DIGITS.iter()) {
        s[i] = HEX[(byte >> 4) as usize];
        s[i + 1] = HEX[(byte & 15) as usize];
    }
    String::from_utf8(s.to_vec()).expect("hex digits and hyphens are ASCII")
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
    /// What an unused slot of a ring's block holds; never read.
    const EMPTY: Recent = Recent {
        id: [0; 16],
        time: [0; 6],
        touchpoint: 0,
        sentiment: NO_SENTIMENT,
        a: 0,
        b: 0,
    };

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

    /// Whether `b` (as [`Self::to_bytes`] wrote it) is an entry this type can hold: the five
    /// bits of an inline id's length can say up to 31, and only 16 bytes are held (reading more
    /// would slice past them). Checked when a changelog value is read.
    pub(crate) fn bytes_are_valid(b: &[u8; 26]) -> bool {
        b[22] >> 6 != IdForm::Inline as u8 || usize::from(b[23] >> 3) <= 16
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
    AckSlaBreach,
    Acknowledged,
    Resolved,
    /// A negative touchpoint within `engine.reopen_window` of the agent's resolution.
    Reopened,
    /// An agent's REOPEN.
    AgentReopen,
}

impl RuleId {
    /// In changelog order: new rules are appended.
    pub const ALL: [RuleId; 14] = [
        RuleId::CriticalNegative,
        RuleId::ExperienceDecline,
        RuleId::HighEffort,
        RuleId::ChannelHopping,
        RuleId::RepeatNegative,
        RuleId::SlaBreach,
        RuleId::Recovered,
        RuleId::Expired,
        RuleId::CaseLimit,
        RuleId::AckSlaBreach,
        RuleId::Acknowledged,
        RuleId::Resolved,
        RuleId::Reopened,
        RuleId::AgentReopen,
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
            RuleId::AckSlaBreach => "ack_sla_breach",
            RuleId::Acknowledged => "acknowledged",
            RuleId::Resolved => "resolved",
            RuleId::Reopened => "reopened",
            RuleId::AgentReopen => "agent_reopen",
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
    /// Event time of the newest negative touchpoint on this case that would have opened a case of
    /// its own: a positive from before it that arrives late does not close the case, because in
    /// event time that negative came after the recovery. Not in the changelog (`MIN` restored).
    pub reopens_at: Millis,
    /// The human side (changelog version 3 on).
    pub human: Human,
}

/// Where a case stands with the agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaseStatus {
    /// No agent has it yet.
    #[default]
    Open = 0,
    Acknowledged = 1,
    /// Closed by an agent; held `engine.reopen_window` in case the fix does not hold.
    Resolved = 2,
    /// Resolved, then reopened (by a negative touchpoint or an agent); no agent has it yet.
    Reopened = 3,
}

impl CaseStatus {
    /// Every status, in discriminant order.
    pub const ALL: [Self; 4] = [Self::Open, Self::Acknowledged, Self::Resolved, Self::Reopened];

    pub fn from_index(i: u8) -> Option<Self> {
        Self::ALL.get(usize::from(i)).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "OPEN",
            Self::Acknowledged => "ACKNOWLEDGED",
            Self::Resolved => "RESOLVED",
            Self::Reopened => "REOPENED",
        }
    }

    /// Waiting for an agent to acknowledge it (the ack SLA runs).
    pub fn awaits_ack(self) -> bool {
        matches!(self, Self::Open | Self::Reopened)
    }
}

/// Action ids a case remembers (the de-duplication window for agents' actions).
pub const ACTION_MEMORY: usize = 4;

/// A case's human side: compact, since every held case carries it. Times are `Millis::MIN` when
/// unset.
#[derive(Debug, Clone)]
pub struct Human {
    pub status: CaseStatus,
    /// The ack SLA fired for the current opening.
    pub ack_breached: bool,
    /// Times reopened: alert ids of later rounds carry it, so each alert id stays unique.
    pub reopens: u8,
    /// Index into `rules.routing` ([`super::rules::NO_ROUTE`]: the default queue).
    pub queue: u16,
    /// When the current round began: the opening, or the last reopening.
    pub round_start: Millis,
    pub acknowledged_at: Millis,
    pub resolved_at: Millis,
    pub actor: Option<Box<str>>,
    pub resolution: Option<Box<str>>,
    /// 32 bits of [`fnv64`] of the newest action ids seen, newest last; 0 = empty. 32 bits keep
    /// the per-customer budget (a false duplicate needs a collision among four ids of one case).
    pub actions: [u32; ACTION_MEMORY],
}

impl Human {
    pub fn new(opened_at: Millis, queue: u16) -> Self {
        Self {
            status: CaseStatus::Open,
            ack_breached: false,
            reopens: 0,
            queue,
            round_start: opened_at,
            acknowledged_at: Millis::MIN,
            resolved_at: Millis::MIN,
            actor: None,
            resolution: None,
            actions: [0; ACTION_MEMORY],
        }
    }

    /// The hash an action id is remembered by (never 0, which marks an empty slot).
    pub fn action_hash(action_id: &str) -> u32 {
        let h = fnv64(&[action_id.as_bytes()]);
        ((h >> 32) as u32 ^ h as u32).max(1)
    }

    pub fn has_applied(&self, hash: u32) -> bool {
        self.actions.contains(&hash)
    }

    pub fn remember_action(&mut self, hash: u32) {
        self.actions.rotate_left(1);
        self.actions[ACTION_MEMORY - 1] = hash;
    }

    /// Heap bytes of the texts it holds.
    pub fn heap_bytes(&self) -> usize {
        self.actor.as_ref().map_or(0, |a| a.len()) + self.resolution.as_ref().map_or(0, |r| r.len())
    }
}

impl Case {
    pub fn case_id(&self) -> String {
        format!("{:016x}", self.case_hash)
    }

    /// Whether an agent resolved it (it is held only in case it reopens).
    pub fn is_resolved(&self) -> bool {
        self.human.status == CaseStatus::Resolved
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
///
/// Laid out in order (`repr(C)`): the fields every touchpoint reads come first. The ring is a
/// block of its own, sized to what the customer has used of it.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct CustomerState {
    /// Time-decayed experience score, as of the newest touchpoint's event time.
    pub score: f64,
    /// Earliest deadline this customer has in its stream's timer queue (`i64::MAX` = none).
    pub queued_deadline: Millis,
    pub extra: Option<Box<Extra>>,
    /// The episodes after the first, at exact size (a boxed slice: 8 bytes less than a `Vec`).
    more_episodes: Box<[Episode]>,
    /// The first episode, inline: most customers are on one journey at a time, and this saves
    /// them a heap block and the hot path a cache miss.
    episode: Episode,
    /// Interned tier; `u32::MAX` = unknown.
    pub tier: u32,
    pub(crate) ring_cap: u8,
    pub(crate) ring_len: u8,
    pub(crate) ring_head: u8,
    /// Whether `episode` holds the first episode.
    has_episode: bool,
    /// [`CompactId::hint`] of each ring slot's id: the duplicate check reads these ten bytes and
    /// only the entries whose hint matches, not the whole ring.
    id_hints: [u8; MAX_RING],
    /// Event time of the newest ring entry, as it stores it (48 bits): read on every touchpoint,
    /// so kept here rather than only in the ring. Fills what would be padding.
    last_time: [u8; 6],
    /// Ring of recent touchpoints; `head` is the oldest once full. Its block grows 1, 2, 4, then
    /// to `ring_cap` entries as touchpoints arrive: most customers are seen a few times only, and
    /// a full inline ring cost each of them 280 bytes. It only grows while the ring has not
    /// wrapped (`head` is 0), so growing is a copy.
    pub(crate) ring: Box<[Recent]>,
}

pub const NO_TIER: u32 = u32::MAX;

/// Most touchpoints a customer's ring holds (and an alert carries); stored inline.
pub const MAX_RING: usize = 10;

impl CustomerState {
    pub fn new(ring: usize) -> Self {
        Self {
            ring: Box::default(),
            id_hints: [0; MAX_RING],
            last_time: [0; 6],
            ring_cap: ring.clamp(1, MAX_RING) as u8,
            ring_len: 0,
            ring_head: 0,
            tier: NO_TIER,
            score: 0.0,
            queued_deadline: Millis::MAX,
            has_episode: false,
            episode: Episode {
                journey: 0,
                first: 0,
                span: 0,
                contacts: 0,
                channels: 0,
            },
            more_episodes: Box::default(),
            extra: None,
        }
    }

    /// Recent touchpoints, oldest first.
    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &Recent> + ExactSizeIterator {
        let cap = self.ring_cap as usize;
        let head = self.ring_head as usize;
        (0..self.ring_len as usize).map(move |i| &self.ring[(head + i) % cap])
    }

    /// The event time the score is as of: the newest touchpoint's (a late one adds its decayed
    /// contribution without moving it).
    pub fn score_at(&self) -> Millis {
        self.last_event().unwrap_or(Millis::MIN)
    }

    /// Event time of the newest touchpoint, if any.
    pub fn last_event(&self) -> Option<Millis> {
        let t = self.last_time;
        (self.ring_len > 0).then(|| i64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], 0, 0]))
    }

    /// Whether `id` is among the remembered touchpoints (the de-duplication window).
    pub fn has_seen(&self, id: &CompactId, text: &str) -> bool {
        // Compare the hint with all ten hints at once; only matching entries are read.
        let cap = self.ring_cap as usize;
        let head = self.ring_head as usize;
        let end = head + self.ring_len as usize;
        let lanes = |from: usize, to: usize| lane_mask(to) & !lane_mask(from);
        let occupied = lanes(head, end.min(cap)) | lanes(0, end.saturating_sub(cap));
        let mut hints = [0u8; 16];
        hints[..MAX_RING].copy_from_slice(&self.id_hints);
        let mut candidates = bytes_equal(u128::from_le_bytes(hints), id.hint()) & occupied;
        let form = id.form as u8;
        while candidates != 0 {
            let slot = candidates.trailing_zeros() as usize / 8;
            candidates &= candidates - 1;
            let r = &self.ring[slot];
            if r.id == id.bytes
                && (r.a >> 6).min(IdForm::Long as u8) == form
                && r.b >> 3 == id.len
                && (!id.is_long() || self.long_id(id.long_hash()) == Some(text))
            {
                return true;
            }
        }
        false
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
        let id = entry.compact_id();
        if (self.ring_len as usize) < cap {
            self.append(entry);
        } else {
            let head = self.ring_head as usize;
            // Only a long id has text to forget, and that text lives in `extra`: without it there
            // is no need to read the oldest entry (another cache line).
            if self.extra.is_some() {
                let old = self.ring[head].compact_id();
                if old.is_long() {
                    self.forget_long_id(old.long_hash());
                }
            }
            self.ring[head] = entry;
            self.id_hints[head] = id.hint();
            self.ring_head = ((head + 1) % cap) as u8;
            self.advance_last_time(entry.time);
        }
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

    /// Makes this `CustomerState::new(ring)` again for a restore to refill with `episodes`
    /// episodes and `entries` ring entries, keeping the heap blocks of the episodes after the first when it already has the
    /// exact size they need: a customer's next changelog record usually has as many, and a
    /// restore reads many records per customer. Returns the out-of-line part, for reuse.
    pub(crate) fn reset_for_restore(
        &mut self,
        ring: usize,
        episodes: usize,
        entries: usize,
    ) -> Option<Box<Extra>> {
        let more = std::mem::take(&mut self.more_episodes);
        let extra = self.extra.take();
        let ring_block = std::mem::take(&mut self.ring);
        *self = Self::new(ring);
        // Kept for [`Self::restore_episodes`] to overwrite when it has the size it needs.
        if more.len() == episodes.saturating_sub(1) {
            self.more_episodes = more;
        }
        // The ring's block too, when it is the size `entries` appends would have grown it to
        // (entries are written before they are read); otherwise that size at once.
        let want = Self::ring_step(entries.min(self.ring_cap as usize), self.ring_cap as usize);
        self.ring = if ring_block.len() == want {
            ring_block
        } else {
            vec![Recent::EMPTY; want].into_boxed_slice()
        };
        extra
    }

    /// Appends a restored ring entry (its long-id text, if any, is already in `extra`).
    pub(crate) fn push_restored(&mut self, entry: Recent) {
        if self.ring_len < self.ring_cap {
            self.append(entry);
        }
    }

    /// Adds an entry to a ring that is not full yet (so it has not wrapped: `head` is 0).
    fn append(&mut self, entry: Recent) {
        let at = self.ring_len as usize;
        debug_assert!(self.ring_head == 0 && at < self.ring_cap as usize);
        if at == self.ring.len() {
            self.grow_ring();
        }
        self.ring[at] = entry;
        self.id_hints[at] = entry.compact_id().hint();
        self.ring_len += 1;
        self.advance_last_time(entry.time);
    }

    /// The newest event time stays the newest: a late touchpoint lands in the ring after newer
    /// ones but does not move the time the score and the idle TTL are measured from.
    fn advance_last_time(&mut self, time: [u8; 6]) {
        let as_int = |t: [u8; 6]| i64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], 0, 0]);
        if self.ring_len <= 1 || as_int(time) > as_int(self.last_time) {
            self.last_time = time;
        }
    }

    /// The ring's block is full but the ring is not: the next size of [`Self::ring_step`].
    #[cold]
    fn grow_ring(&mut self) {
        let have = self.ring.len();
        let mut ring = vec![Recent::EMPTY; Self::ring_step(have + 1, self.ring_cap as usize)];
        ring[..have].copy_from_slice(&self.ring);
        self.ring = ring.into_boxed_slice();
    }

    /// The size of the ring's block that holds `n` entries: 0, 1, 2, 4, then `cap` (the small
    /// steps fill jemalloc's 32-, 64- and 112-byte size classes exactly).
    fn ring_step(n: usize, cap: usize) -> usize {
        match n {
            0 => 0,
            1 | 2 => n,
            3 | 4 => 4.min(cap),
            _ => cap,
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

    /// How many episodes are held.
    pub fn episode_count(&self) -> usize {
        usize::from(self.has_episode) + self.more_episodes.len()
    }

    /// The episodes, in order (the order [`Self::push_episode`] and the removals leave them in).
    pub fn episodes(&self) -> impl Iterator<Item = &Episode> {
        let first = self.has_episode.then_some(&self.episode);
        first.into_iter().chain(self.more_episodes.iter())
    }

    /// The `i`th episode; panics when `i >= episode_count()`.
    pub fn episode_mut(&mut self, i: usize) -> &mut Episode {
        assert!(
            i < self.episode_count(),
            "episode {i} of {}",
            self.episode_count()
        );
        if i == 0 {
            &mut self.episode
        } else {
            &mut self.more_episodes[i - 1]
        }
    }

    /// Appends an episode; the heap part grows by exactly one.
    pub fn push_episode(&mut self, e: Episode) {
        if self.has_episode {
            let mut more = std::mem::take(&mut self.more_episodes).into_vec();
            more.reserve_exact(1);
            more.push(e);
            self.more_episodes = more.into_boxed_slice();
        } else {
            self.episode = e;
            self.has_episode = true;
        }
    }

    /// Removes the `i`th episode, moving the last one into its place (as `Vec::swap_remove`).
    pub fn swap_remove_episode(&mut self, i: usize) {
        let last = self.episode_count() - 1;
        if i != last {
            *self.episode_mut(i) = *self.episode_mut(last);
        }
        self.truncate_episodes(last);
    }

    /// Keeps the episodes for which `keep` is true, in order (as `Vec::retain`).
    pub fn retain_episodes(&mut self, mut keep: impl FnMut(&Episode) -> bool) {
        let n = self.episode_count();
        let mut kept = 0;
        for i in 0..n {
            let e = *self.episode_mut(i);
            if keep(&e) {
                if kept != i {
                    *self.episode_mut(kept) = e;
                }
                kept += 1;
            }
        }
        self.truncate_episodes(kept);
    }

    fn truncate_episodes(&mut self, len: usize) {
        let keep = len.saturating_sub(1);
        if keep < self.more_episodes.len() {
            let mut more = std::mem::take(&mut self.more_episodes).into_vec();
            more.truncate(keep);
            self.more_episodes = more.into_boxed_slice();
        }
        self.has_episode &= len > 0;
    }

    /// Sets the episodes of a state [`Self::reset_for_restore`] just reset, writing into the
    /// heap block it kept when that has the right size.
    pub(crate) fn restore_episodes(&mut self, mut episodes: impl ExactSizeIterator<Item = Episode>) {
        let n = episodes.len();
        let Some(first) = episodes.next() else {
            self.has_episode = false;
            self.more_episodes = Box::default();
            return;
        };
        self.episode = first;
        self.has_episode = true;
        if self.more_episodes.len() == n - 1 {
            for (slot, e) in self.more_episodes.iter_mut().zip(episodes) {
                *slot = e;
            }
        } else {
            self.more_episodes = episodes.collect();
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
        let mut n = std::mem::size_of::<Self>()
            + self.ring.len() * std::mem::size_of::<Recent>()
            + self.more_episodes.len() * std::mem::size_of::<Episode>();
        if let Some(e) = &self.extra {
            n += std::mem::size_of::<Extra>()
                + e.cases.capacity() * std::mem::size_of::<Case>()
                + e.cases
                    .iter()
                    .map(|c| c.journey.len() + c.last_event_id.len() + c.human.heap_bytes())
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

    /// The digit-by-digit parse the word-at-a-time one replaced.
    fn parse_uuid_slowly(b: &[u8]) -> Option<[u8; 16]> {
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
        for (byte, &i) in out.iter_mut().zip(UUID_DIGITS.iter()) {
            *byte = nibble(b[i])? << 4 | nibble(b[i + 1])?;
        }
        Some(out)
    }

    #[test]
    fn uuid_parse_matches_the_digit_by_digit_one() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Every byte value in every position of a valid UUID, then random valid ones.
        let base = *b"0123abcd-ef45-6789-a0b1-c2d3e4f5a6b7";
        for at in 0..36 {
            for c in 0..=255u8 {
                let mut id = base;
                id[at] = c;
                assert_eq!(parse_uuid(&id), parse_uuid_slowly(&id), "{at} {c}");
            }
        }
        for _ in 0..10_000 {
            let bytes = (u128::from(next()) << 64 | u128::from(next())).to_be_bytes();
            let text = format_uuid(&bytes);
            assert_eq!(parse_uuid(text.as_bytes()), Some(bytes));
            assert_eq!(parse_uuid_slowly(text.as_bytes()), Some(bytes));
        }
        assert_eq!(parse_uuid(b"0123abcd-ef45-6789-a0b1-c2d3e4f5a6b"), None);
    }

    #[test]
    fn bytes_equal_marks_exactly_the_equal_bytes() {
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37) ^ 0x80;
        }
        for probe in 0..=255u8 {
            let got = bytes_equal(u128::from_le_bytes(bytes), probe);
            let want = bytes
                .iter()
                .enumerate()
                .filter(|&(_, b)| *b == probe)
                .fold(0u128, |m, (i, _)| m | 0x80 << (8 * i));
            assert_eq!(got, want, "{probe}");
        }
        assert_eq!(lane_mask(0), 0);
        assert_eq!(lane_mask(2), 0xffff);
        assert_eq!(lane_mask(16), u128::MAX);
    }

    #[test]
    fn duplicate_check_agrees_with_a_scan_of_the_ring() {
        // Ids that differ only in length, form or a late byte, through a ring that wraps.
        let ids: Vec<String> = (0..40)
            .map(|i| match i % 4 {
                0 => format!("{i}"),
                1 => format!("{i}\0"),
                2 => format!("8f14e45f-ceea-467f-a0e6-1c2b3a4d5e{i:02}"),
                _ => format!("an-id-long-enough-to-be-hashed-{i}"),
            })
            .collect();
        let mut s = CustomerState::new(MAX_RING);
        for (n, id) in ids.iter().enumerate() {
            s.remember(entry(id, n as i64), id);
            for probe in &ids {
                let c = CompactId::new(probe);
                let scan = s.recent().any(|r| s.event_id(r) == *probe && r.compact_id() == c);
                assert_eq!(s.has_seen(&c, probe), scan, "{probe} after {n}");
            }
        }
        assert!(std::mem::size_of::<CustomerState>() <= 112);
        let newest = s.recent().next_back().map(|r| r.occurred_at());
        assert_eq!(s.last_event(), newest);
        assert_eq!(CustomerState::new(3).last_event(), None);
    }

    #[test]
    fn customer_keys_hash_and_compare_as_their_text() {
        assert_eq!(std::mem::size_of::<CustomerKey>(), 24);
        let h = ahash::RandomState::new();
        for id in [
            "",
            "cust-000042",
            "exactly-twenty-two-by",
            "twenty-three-bytes-long",
            "ü-ñ-ids",
        ] {
            let k = CustomerKey::new(id);
            assert_eq!(k.as_str(), id);
            assert_eq!(&*k.to_arc(), id);
            assert_eq!(h.hash_one(&k), h.hash_one(id.as_bytes()), "{id}");
            assert_eq!(k, CustomerKey::new(id));
            assert_eq!(matches!(k, CustomerKey::Inline { .. }), id.len() <= 22);
        }
    }

    #[test]
    fn episodes_behave_like_a_vec() {
        let ep = |journey: u32| Episode {
            journey,
            first: i64::from(journey),
            span: journey,
            contacts: 1,
            channels: 2,
        };
        let mut s = CustomerState::new(3);
        let mut v: Vec<Episode> = Vec::new();
        let mut x = 1u32;
        for step in 0..500 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let r = x >> 16;
            match r % 4 {
                0 | 1 if v.len() < 6 => {
                    s.push_episode(ep(step));
                    v.push(ep(step));
                }
                2 if !v.is_empty() => {
                    let i = r as usize % v.len();
                    s.swap_remove_episode(i);
                    v.swap_remove(i);
                }
                _ => {
                    s.retain_episodes(|e| !(e.journey ^ r).is_multiple_of(3));
                    v.retain(|e| !(e.journey ^ r).is_multiple_of(3));
                }
            }
            let held: Vec<u32> = s.episodes().map(|e| e.journey).collect();
            let want: Vec<u32> = v.iter().map(|e| e.journey).collect();
            assert_eq!(held, want, "step {step}");
            assert_eq!(s.episode_count(), v.len());
        }
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
        assert!(!s.has_seen(&CompactId::new("short-id2"), "short-id2"));
        // Ring of 3: the first two are forgotten, and the long id's text is dropped with it later.
        assert!(!s.has_seen(&CompactId::new(ids[0]), ids[0]));
        assert_eq!(s.recent().len(), 3);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            s.remember(entry(id, 10 + i as i64), id);
        }
        assert!(s.extra.is_none(), "long id text freed once it left the ring");
    }
}
