//! The experience engine: per-customer state in a concurrent map, the recovery rules, the case
//! lifecycle and event-time timers. Pure: time comes in as arguments, effects go out in a `Vec`.
//!
//! [`Engine`] is shared (one per process); [`Stream`] is one ordered input (a Kafka partition, a
//! replay file) with its own event-time clock and timer queue. Every customer belongs to exactly
//! one stream, so the map is only ever written by that stream's task.
//!
//! Event time without holding data: each touchpoint is applied the moment it arrives, in input
//! order (which keeps replay deterministic), and counts where it belongs in event time; one that
//! arrives late (within `engine.allowed_lateness`) can correct an alert already published.

pub mod intern;
pub mod rules;
pub mod snapshot;
pub mod state;

use crate::config::Config;
use crate::model::{
    ActionKind, AlertStatus, CaseAction, Channel, Direction, Millis, RecentTouchpoint, RecoveryAlert,
    Severity, Touchpoint, TouchpointKind,
};
use dashmap::DashMap;
use intern::Interner;
use rules::{Polarity, Rules, Stake};
use serde::Serialize;
use state::{
    Case, CaseStatus, CompactId, CustomerKey, CustomerState, Episode, Human, NO_TIER, Recent, RuleId, fnv64,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

/// Distinct touchpoint types and tiers remembered before new ones read back as "(other)".
const VOCABULARY_CAP: usize = 65_000;
/// Event time between sweeps for idle customers.
const SWEEP_EVERY_MS: Millis = 3_600_000;

/// What processing a touchpoint (or the passing of event time) caused.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish this alert. `seq` is the record that caused it; `None` for a timer alert.
    Alert {
        alert: Box<RecoveryAlert>,
        seq: Option<u64>,
    },
    /// The record was applied to `customer`'s state; every alert it caused was emitted before this.
    Applied { seq: u64, customer: Arc<str> },
    /// The record repeats an event id already applied: nothing changed.
    Duplicate { seq: u64 },
    /// The record arrived behind the watermark and was not applied.
    Late {
        seq: u64,
        event: Box<Touchpoint>,
        behind_ms: Millis,
    },
    /// The record's event time is further ahead of its arrival than `engine.max_clock_skew` (a
    /// wrong clock): not applied, and it moved no clock.
    Future {
        seq: u64,
        event: Box<Touchpoint>,
        ahead_ms: Millis,
    },
    /// Customers dropped from state (idle past the TTL, or shed at the customer cap).
    Evicted { keys: Vec<Arc<str>> },
    /// An agent's action that cannot apply ([`Stream::push_action`]): dead-letter it. `class` is
    /// low-cardinality (`unknown_case`, `customer_mismatch`, `closed_case`,
    /// `already_acknowledged`, `not_resolved`, `malformed`, `future`); `reason` names the problem
    /// and quotes no value.
    Rejected {
        seq: u64,
        class: &'static str,
        reason: String,
    },
}

/// Shared engine: compiled rules plus the customer map.
pub struct Engine {
    rules: Rules,
    customers: DashMap<CustomerKey, Box<CustomerState>, ahash::RandomState>,
    touchpoint_types: Interner<Stake>,
    tiers: Interner<f64>,
}

/// What [`Engine::state_totals`] finds in one walk of the customers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StateTotals {
    /// Sum of [`CustomerState::footprint`] plus the keys' heap bytes.
    pub bytes: usize,
    /// Held cases by (queue, status).
    pub cases: BTreeMap<(String, &'static str), usize>,
}

/// A read-only view of one customer, for the person who picks up an alert.
#[derive(Debug, Clone, Serialize)]
pub struct CustomerView {
    pub customer_id: String,
    pub customer_tier: Option<String>,
    pub experience_score: f64,
    pub score_as_of: Millis,
    pub recent_touchpoints: Vec<RecentTouchpoint>,
    pub open_cases: Vec<CaseView>,
}

/// A held case as [`CustomerView`] shows it, with its human side. A RESOLVED case is held (and
/// shown) for `engine.reopen_window` in case the fix does not hold.
#[derive(Debug, Clone, Serialize)]
pub struct CaseView {
    pub case_id: String,
    pub journey: String,
    pub rule: &'static str,
    pub severity: Severity,
    pub opened_at: Millis,
    pub last_touch: Millis,
    pub escalated: bool,
    pub recommended_channel: Channel,
    /// OPEN, ACKNOWLEDGED, RESOLVED or REOPENED.
    pub status: &'static str,
    pub queue: String,
    pub actor: Option<String>,
    pub acknowledged_at: Option<Millis>,
    pub resolved_at: Option<Millis>,
    pub resolution: Option<String>,
}

/// `Some(t)` unless `t` is the "unset" mark.
fn set_time(t: Millis) -> Option<Millis> {
    (t != Millis::MIN).then_some(t)
}

/// The 16 top bits of a case hash: the customer's, so that an action naming another customer's
/// case can be told from one naming no case (`customer_mismatch` vs `unknown_case`).
const CUSTOMER_BITS: u64 = 0xffff_0000_0000_0000;

/// A case id back to its hash (16 lower-case hex digits).
fn parse_case_id(id: &str) -> Option<u64> {
    if id.len() != 16
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u64::from_str_radix(id, 16).ok()
}

fn duration(ms: Millis) -> humantime::FormattedDuration {
    humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64))
}

fn round_to(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    let r = (x * f).round() / f;
    if r == 0.0 { 0.0 } else { r }
}

/// What the rules look at when a touchpoint lands on a journey with no open case.
#[derive(Clone, Copy)]
struct Facts {
    /// Interned tier, [`NO_TIER`] when unknown; its name is looked up only for a reason text.
    tier: u32,
    polarity: Polarity,
    stake: Stake,
    tier_mult: f64,
    score: f64,
    episode: Episode,
}

/// The case-level facts one alert needs beyond the case itself.
struct AlertSpec<'a> {
    status: AlertStatus,
    rule: RuleId,
    severity: Severity,
    event_time: Millis,
    trigger_event_id: &'a str,
    reason: String,
    time_to_recover_ms: Option<i64>,
    attributes: BTreeMap<String, String>,
}

impl Engine {
    pub fn new(config: Config) -> Self {
        let rules = Rules::new(config);
        let overflow_stake = Stake {
            weight: rules.config.rules.stakes.default_weight,
            channel: rules.config.rules.stakes.default_channel,
        };
        Self {
            rules,
            customers: DashMap::with_hasher(ahash::RandomState::new()),
            touchpoint_types: Interner::new(VOCABULARY_CAP, overflow_stake),
            tiers: Interner::new(VOCABULARY_CAP, 1.0),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn config(&self) -> &Config {
        &self.rules.config
    }

    /// Customers currently held in state.
    pub fn customer_count(&self) -> usize {
        self.customers.len()
    }

    /// Sum of [`CustomerState::footprint`] over all customers plus their keys.
    pub fn state_bytes(&self) -> usize {
        self.customers
            .iter()
            .map(|e| e.value().footprint() + e.key().heap_bytes())
            .sum()
    }

    /// Drops every customer for which `keep` is false (a partition revoked from this instance).
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.customers.retain(|k, _| keep(k.as_str()));
    }

    /// One walk of every customer for the gauges that need one: state bytes and held cases.
    /// Every (queue, status) pair of the routing table is present, zero or not, so a gauge
    /// that drops to zero is set to zero rather than left at its last value.
    pub fn state_totals(&self) -> StateTotals {
        let routes = self.rules.config.rules.routing.len();
        // Index `routes` is the default queue (a case no route matched, or whose route is gone).
        let mut by_route = vec![[0usize; 4]; routes + 1];
        let mut bytes = 0;
        for e in self.customers.iter() {
            bytes += e.value().footprint() + e.key().heap_bytes();
            for c in e.value().cases() {
                by_route[usize::from(c.human.queue).min(routes)][c.human.status as usize] += 1;
            }
        }
        let mut cases = BTreeMap::new();
        for (route, counts) in by_route.iter().enumerate() {
            let queue = self
                .rules
                .queue_name(u16::try_from(route).unwrap_or(rules::NO_ROUTE));
            for status in CaseStatus::ALL {
                *cases.entry((queue.to_string(), status.as_str())).or_insert(0) += counts[status as usize];
            }
        }
        StateTotals { bytes, cases }
    }

    /// What we know about one customer, if this instance holds them.
    pub fn customer(&self, customer_id: &str) -> Option<CustomerView> {
        let guard = self.customers.get(customer_id.as_bytes())?;
        let s = &**guard;
        let as_of = s.last_event().unwrap_or(s.score_at());
        Some(CustomerView {
            customer_id: customer_id.to_string(),
            customer_tier: (s.tier != NO_TIER).then(|| self.tiers.name(s.tier).to_string()),
            experience_score: round_to(self.rules.decay(s.score, s.score_at(), as_of), 4),
            score_as_of: as_of,
            recent_touchpoints: self.recent(s),
            open_cases: s
                .cases()
                .iter()
                .map(|c| CaseView {
                    case_id: c.case_id(),
                    journey: c.journey.to_string(),
                    rule: c.rule.as_str(),
                    severity: c.severity,
                    opened_at: c.opened_at,
                    last_touch: c.last_touch,
                    escalated: c.escalated,
                    recommended_channel: c.channel,
                    status: c.human.status.as_str(),
                    queue: self.rules.queue_name(c.human.queue).to_string(),
                    actor: c.human.actor.as_deref().map(str::to_string),
                    acknowledged_at: set_time(c.human.acknowledged_at),
                    resolved_at: set_time(c.human.resolved_at),
                    resolution: c.human.resolution.as_deref().map(str::to_string),
                })
                .collect(),
        })
    }

    /// The remembered touchpoints, oldest first in event time (a late one sits in the ring in
    /// arrival order).
    fn recent(&self, s: &CustomerState) -> Vec<RecentTouchpoint> {
        let names = self.touchpoint_types.names();
        let mut recent: Vec<RecentTouchpoint> = s
            .recent()
            .map(|r| RecentTouchpoint {
                event_id: s.event_id(r),
                occurred_at: r.occurred_at(),
                channel: r.channel(),
                touchpoint: names.get(u32::from(r.touchpoint)).to_string(),
                outcome: r.outcome(),
                sentiment: r.sentiment(),
            })
            .collect();
        // Stable: equal times keep their arrival order.
        recent.sort_by_key(|r| r.occurred_at);
        recent
    }

    fn tier_multiplier(&self, tier: u32) -> f64 {
        if tier == NO_TIER {
            1.0
        } else {
            self.tiers.value(tier)
        }
    }

    fn build_alert(
        &self,
        customer: &str,
        s: &CustomerState,
        case: &Case,
        spec: AlertSpec<'_>,
        now: Millis,
    ) -> Box<RecoveryAlert> {
        let score = self.rules.decay(s.score, s.score_at(), spec.event_time);
        let priority = ((spec.severity.index() + 1) * 10) as f64
            + f64::from(case.weight)
            + (-score).clamp(0.0, 50.0) / 10.0;
        let case_id = case.case_id();
        let h = &case.human;
        // `{case}-{status}`, unique per alert: the ack SLA's escalation is told from the recovery
        // SLA's, and every round after a reopening carries its number.
        let mut alert_id = format!("{case_id}-{}", spec.status.as_str().to_ascii_lowercase());
        if spec.rule == RuleId::AckSlaBreach {
            alert_id.push_str("-ack");
        }
        if h.reopens > 0 {
            alert_id.push_str(&format!("-{}", h.reopens));
        }
        Box::new(RecoveryAlert {
            alert_id,
            case_id,
            status: spec.status,
            customer_id: customer.to_string(),
            journey: case.journey.to_string(),
            rule: spec.rule.as_str().to_string(),
            severity: spec.severity,
            priority: round_to(priority, 3),
            reason: spec.reason,
            recommended_channel: case.channel,
            trigger_event_id: spec.trigger_event_id.to_string(),
            event_time: spec.event_time,
            detected_at: now,
            experience_score: round_to(score, 4),
            customer_tier: (s.tier != NO_TIER).then(|| self.tiers.name(s.tier).to_string()),
            recent_touchpoints: self.recent(s),
            time_to_recover_ms: spec.time_to_recover_ms,
            attributes: spec.attributes,
            actor: h.actor.as_deref().map(str::to_string),
            time_to_acknowledge_ms: set_time(h.acknowledged_at).map(|t| (t - h.round_start).max(0)),
            time_to_resolve_ms: (spec.status == AlertStatus::Resolved)
                .then(|| (h.resolved_at - h.round_start).max(0)),
            resolution: matches!(spec.status, AlertStatus::Resolved | AlertStatus::Reopened)
                .then(|| h.resolution.as_deref().map(str::to_string))
                .flatten(),
            queue: self.rules.queue_name(h.queue).to_string(),
        })
    }

    /// Fires this customer's timers due at clock `t`, in deadline order: SLAs at their deadline,
    /// expiries once the clock is `hold` past theirs (the lateness: a touchpoint that may still
    /// arrive must never find its case expired). Returns true when the customer has been idle past
    /// the TTL (plus `hold`) at `t` (its state must be dropped).
    fn fire_due(
        &self,
        customer: &str,
        s: &mut CustomerState,
        t: Millis,
        hold: Millis,
        now: Millis,
        out: &mut Vec<Effect>,
    ) -> bool {
        let r = &self.rules;
        loop {
            // (deadline, kind, index); at the same instant in kind order.
            let mut due: Option<(Millis, Timer, usize)> = None;
            let mut consider = |deadline: Millis, kind: Timer, i: usize| {
                if due.is_none_or(|d| (deadline, kind) < (d.0, d.1)) {
                    due = Some((deadline, kind, i));
                }
            };
            for (i, c) in s.cases().iter().enumerate() {
                let h = &c.human;
                if h.status == CaseStatus::Resolved {
                    // Held only in case it reopens: no SLA or expiry; dropped quietly (its
                    // RESOLVED alert was the last word) once a negative can no longer reopen it.
                    let forget = h.resolved_at.saturating_add(r.reopen_window_ms);
                    if forget.saturating_add(hold) <= t {
                        consider(forget, Timer::Forget, i);
                    }
                    continue;
                }
                let ack = h.round_start.saturating_add(r.ack_sla_ms);
                if r.ack_sla_ms > 0 && h.status.awaits_ack() && !h.ack_breached && ack <= t {
                    consider(ack, Timer::AckSla, i);
                }
                // From the start of the round: a reopened case gets the SLA afresh.
                let sla = h.round_start.saturating_add(r.sla_ms);
                if !c.escalated && sla <= t {
                    consider(sla, Timer::Sla, i);
                }
                let exp = c.last_touch.saturating_add(r.case_expiry_ms);
                if exp.saturating_add(hold) <= t {
                    consider(exp, Timer::Expiry, i);
                }
            }
            let Some((deadline, kind, i)) = due else {
                break;
            };
            if kind == Timer::Forget {
                s.extra_mut().cases.remove(i);
                s.shrink_extra();
                continue;
            }
            let case = s.cases()[i].clone();
            let (status, rule, severity, reason) = if kind == Timer::AckSla {
                s.extra_mut().cases[i].human.ack_breached = true;
                let reason = format!(
                    "Case on journey '{}' ({}) has waited {} for an agent of queue '{}' to acknowledge it; page the next person on call.",
                    case.journey,
                    case.rule.as_str(),
                    humantime::format_duration(r.config.engine.ack_sla),
                    r.queue_name(case.human.queue)
                );
                // An escalation to people, not of the customer's urgency: severity stays.
                (
                    AlertStatus::Escalated,
                    RuleId::AckSlaBreach,
                    case.severity,
                    reason,
                )
            } else if kind == Timer::Expiry {
                s.extra_mut().cases.remove(i);
                let reason = format!(
                    "No touchpoint on journey '{}' for {} since the case opened by {}; closed without recovery - review whether the customer was lost.",
                    case.journey,
                    humantime::format_duration(r.config.engine.case_expiry),
                    case.rule.as_str()
                );
                (AlertStatus::Expired, RuleId::Expired, case.severity, reason)
            } else {
                let severity = case.severity.step_up();
                let c = &mut s.extra_mut().cases[i];
                c.escalated = true;
                c.severity = severity;
                let reason = format!(
                    "Case on journey '{}' ({}) has been open {} without recovery; escalate and contact the customer by {}.",
                    case.journey,
                    case.rule.as_str(),
                    humantime::format_duration(r.config.engine.case_sla),
                    case.channel
                );
                (AlertStatus::Escalated, RuleId::SlaBreach, severity, reason)
            };
            let alert = self.build_alert(
                customer,
                s,
                &case,
                AlertSpec {
                    status,
                    rule,
                    severity,
                    event_time: deadline,
                    trigger_event_id: &case.last_event_id,
                    reason,
                    time_to_recover_ms: None,
                    attributes: BTreeMap::new(),
                },
                now,
            );
            s.shrink_extra();
            out.push(Effect::Alert { alert, seq: None });
        }
        s.last_event()
            .is_some_and(|last| last.saturating_add(r.ttl_ms).saturating_add(hold) <= t)
    }

    /// Earliest clock reading at which this customer has a timer to fire (expiries `hold` late).
    fn next_deadline(&self, s: &CustomerState, hold: Millis) -> Millis {
        let r = &self.rules;
        // Idle eviction needs no timer: `Stream` sweeps, and `apply` resets a stale state itself.
        let mut d = Millis::MAX;
        for c in s.cases() {
            let h = &c.human;
            if h.status == CaseStatus::Resolved {
                d = d.min(
                    h.resolved_at
                        .saturating_add(r.reopen_window_ms)
                        .saturating_add(hold),
                );
                continue;
            }
            if r.ack_sla_ms > 0 && h.status.awaits_ack() && !h.ack_breached {
                d = d.min(h.round_start.saturating_add(r.ack_sla_ms));
            }
            if !c.escalated {
                d = d.min(h.round_start.saturating_add(r.sla_ms));
            }
            d = d.min(c.last_touch.saturating_add(r.case_expiry_ms).saturating_add(hold));
        }
        d
    }

    /// Drops customers with no open case idle past the TTL at `watermark`; returns how many.
    fn sweep(&self, watermark: Millis) -> Vec<Arc<str>> {
        let ttl = self.rules.ttl_ms;
        let mut evicted = Vec::new();
        self.customers.retain(|k, s| {
            let idle =
                s.cases().is_empty() && s.last_event().is_some_and(|l| l.saturating_add(ttl) <= watermark);
            if idle {
                evicted.push(k.to_arc());
            }
            !idle
        });
        evicted
    }

    /// Drops up to `count` of the least recently active customers that have no open case (the
    /// customer cap); returns their keys.
    pub fn shed(&self, count: usize) -> Vec<Arc<str>> {
        let mut idle: Vec<(Millis, Arc<str>)> = self
            .customers
            .iter()
            .filter(|e| e.value().cases().is_empty())
            .map(|e| (e.value().last_event().unwrap_or(Millis::MIN), e.key().to_arc()))
            .collect();
        let count = count.min(idle.len());
        if count == 0 {
            return Vec::new();
        }
        if count < idle.len() {
            idle.select_nth_unstable(count - 1);
            idle.truncate(count);
        }
        for (_, key) in &idle {
            self.customers.remove(key.as_bytes());
        }
        idle.into_iter().map(|(_, k)| k).collect()
    }

    /// Whether this event id was already applied for its customer.
    fn already_seen(&self, ev: &Touchpoint) -> bool {
        self.customers
            .get(ev.customer_id.as_bytes())
            .is_some_and(|s| s.has_seen(&CompactId::new(&ev.event_id), &ev.event_id))
    }

    /// Applies one in-order touchpoint. Returns the customer key and deadline to (re)queue.
    fn apply(
        &self,
        ev: Touchpoint,
        seq: u64,
        now: Millis,
        out: &mut Vec<Effect>,
    ) -> Option<(Arc<str>, Millis)> {
        let r = &self.rules;
        let t = ev.occurred_at;
        let (tp_id, type_stake) = self
            .touchpoint_types
            .intern(&ev.touchpoint, |s| r.stake_of_type(s));
        let event_tier = ev
            .customer_tier
            .as_deref()
            .map(|tier| self.tiers.intern(tier, |s| r.tier_multiplier(s)));

        let new_state = || Box::new(CustomerState::new(r.config.engine.recent_touchpoints));
        let mut guard = match CustomerKey::inline(&ev.customer_id) {
            // One lookup whether or not the customer is new: an inline key costs no allocation.
            Some(key) => self.customers.entry(key).or_insert_with(new_state),
            None => match self.customers.get_mut(ev.customer_id.as_bytes()) {
                Some(g) => g,
                None => self
                    .customers
                    .entry(CustomerKey::new(&ev.customer_id))
                    .or_insert_with(new_state),
            },
        };
        let s: &mut CustomerState = &mut guard;

        // The customer's own touchpoint settles its timers due by its time (hold 0): in event
        // order they come first. A late touchpoint's time is behind them: nothing more fires.
        if self.fire_due(&ev.customer_id, s, t, 0, now, out) {
            let queued = s.queued_deadline;
            *s = CustomerState::new(r.config.engine.recent_touchpoints);
            s.queued_deadline = queued;
            out.push(Effect::Evicted {
                keys: vec![Arc::from(ev.customer_id.as_str())],
            });
        }
        let id = CompactId::new(&ev.event_id);
        if s.has_seen(&id, &ev.event_id) {
            out.push(Effect::Duplicate { seq });
            return None;
        }

        let late = s.last_event().is_some_and(|last| t < last);
        let tier_mult = match event_tier {
            Some((tier, mult)) => {
                // A late touchpoint's tier is older news than the one already known.
                if !late || s.tier == NO_TIER {
                    s.tier = tier;
                }
                mult
            }
            None => self.tier_multiplier(s.tier),
        };
        let polarity = r.polarity(ev.outcome, ev.sentiment);
        let stake = r.stake(type_stake, ev.kind);

        // Score: a sum of decayed contributions, so arrival order does not matter. In order: decay
        // to this touchpoint, then add it. Late: add its contribution decayed to the score's time.
        let contribution = match polarity {
            Polarity::Negative => -stake.weight * tier_mult,
            Polarity::Positive => stake.weight * tier_mult,
            Polarity::Neutral => 0.0,
        };
        let score_at = s.score_at();
        if t >= score_at {
            s.score = r.decay(s.score, score_at, t) + contribution;
        } else {
            s.score += r.decay(contribution, t, score_at);
        }

        // Episode on this journey: where this touchpoint falls in it, in event time.
        let journey_hash = fnv64(&[ev.journey.as_bytes()]);
        let (ep, place) = self.place_in_episode(s, journey_hash as u32, t, &ev);

        s.remember(
            Recent::new(
                id,
                t,
                u16::try_from(tp_id).unwrap_or(0),
                ev.channel,
                ev.kind,
                ev.direction,
                ev.outcome,
                ev.sentiment,
            ),
            &ev.event_id,
        );

        let case_at = s.cases().iter().position(|c| c.journey_hash == journey_hash);
        // A moment of truth on an open case would open a case of its own whatever came before it
        // (the other rules read a score and an episode that a late positive would change).
        let critical = &r.config.rules.critical_negative;
        if let (Polarity::Negative, Some(i), Place::Counted) = (polarity, case_at, place)
            && critical.enabled
            && stake.weight >= critical.min_stakes
        {
            let case = &mut s.extra_mut().cases[i];
            case.reopens_at = case.reopens_at.max(t);
        }
        match (polarity, case_at) {
            // Before the positive that started this journey's episode (it arrived late): in event
            // order the positive came after it, so it neither opens nor escalates a case.
            _ if place == Place::BeforeRecovery => {}
            (_, Some(i)) if s.cases()[i].is_resolved() => {
                let resolved_at = s.cases()[i].human.resolved_at;
                if polarity == Polarity::Positive {
                    self.reset_episode(s, journey_hash as u32, t);
                }
                let case = &mut s.extra_mut().cases[i];
                if t < resolved_at {
                    // Late: in event time it came before the agent closed the case. It counts as
                    // it would have then, with no alert (the case is closed), so that the held
                    // case is the same whichever arrived first.
                    case.last_touch = case.last_touch.max(t);
                    if polarity == Polarity::Negative && case.opened_at <= t && !case.escalated {
                        case.escalated = true;
                        case.severity = case.severity.step_up();
                    }
                } else if polarity == Polarity::Negative {
                    case.last_event_id = ev.event_id.as_str().into();
                    let reason = format!(
                        "Reopened: {} ended {} on {} (journey '{}') {} after the case was resolved; the fix did not hold - contact the customer by {}.",
                        ev.touchpoint,
                        ev.outcome,
                        ev.channel,
                        ev.journey,
                        duration(t - resolved_at),
                        case.channel
                    );
                    let alert = self.reopen(
                        &ev.customer_id,
                        s,
                        i,
                        t,
                        RuleId::Reopened,
                        &ev.event_id,
                        reason,
                        r.shareable_attributes(&ev),
                        now,
                    );
                    out.push(Effect::Alert {
                        alert,
                        seq: Some(seq),
                    });
                }
            }
            // A late positive between the case's opening and a later negative that opens a case
            // on its own: in event time the customer recovered and then failed again, so the
            // case stays open (for that later failure).
            (Polarity::Positive, Some(i)) if s.cases()[i].opened_at <= t && s.cases()[i].reopens_at > t => {
                self.reset_episode(s, journey_hash as u32, t);
            }
            (Polarity::Positive, Some(i)) if s.cases()[i].opened_at <= t => {
                let case = s.extra_mut().cases.remove(i);
                self.reset_episode(s, journey_hash as u32, t);
                let took = t - case.opened_at;
                let reason = format!(
                    "Recovered: {} ended {} on {} after {}; no further action needed.",
                    ev.touchpoint,
                    ev.outcome,
                    ev.channel,
                    humantime::format_duration(std::time::Duration::from_millis(took as u64))
                );
                let alert = self.build_alert(
                    &ev.customer_id,
                    s,
                    &case,
                    AlertSpec {
                        status: AlertStatus::Recovered,
                        rule: RuleId::Recovered,
                        severity: case.severity,
                        event_time: t,
                        trigger_event_id: &ev.event_id,
                        reason,
                        time_to_recover_ms: Some(took),
                        attributes: r.shareable_attributes(&ev),
                    },
                    now,
                );
                s.shrink_extra();
                out.push(Effect::Alert {
                    alert,
                    seq: Some(seq),
                });
            }
            (Polarity::Positive, Some(i)) => {
                // A positive that happened before the case opened arrived after it: the rules that
                // opened it may no longer hold in event time.
                self.reset_episode(s, journey_hash as u32, t);
                if let Some(alert) = self.withdraw_if_unfounded(&ev, s, i, now) {
                    out.push(Effect::Alert {
                        alert,
                        seq: Some(seq),
                    });
                }
            }
            (Polarity::Positive, None) => self.reset_episode(s, journey_hash as u32, t),
            (Polarity::Negative, Some(i)) if s.cases()[i].opened_at <= t => {
                let case = &mut s.extra_mut().cases[i];
                case.last_touch = case.last_touch.max(t);
                case.last_event_id = ev.event_id.as_str().into();
                if !case.escalated {
                    case.escalated = true;
                    case.severity = case.severity.step_up();
                    let case = case.clone();
                    let reason = format!(
                        "Another negative touchpoint on an open case: {} ended {} on {} (journey '{}'); escalate and contact the customer by {}.",
                        ev.touchpoint, ev.outcome, ev.channel, ev.journey, case.channel
                    );
                    let alert = self.build_alert(
                        &ev.customer_id,
                        s,
                        &case,
                        AlertSpec {
                            status: AlertStatus::Escalated,
                            rule: RuleId::RepeatNegative,
                            severity: case.severity,
                            event_time: t,
                            trigger_event_id: &ev.event_id,
                            reason,
                            time_to_recover_ms: None,
                            attributes: r.shareable_attributes(&ev),
                        },
                        now,
                    );
                    out.push(Effect::Alert {
                        alert,
                        seq: Some(seq),
                    });
                }
            }
            (_, Some(i)) => {
                let case = &mut s.extra_mut().cases[i];
                case.last_touch = case.last_touch.max(t);
                case.last_event_id = ev.event_id.as_str().into();
            }
            (_, None) => {
                let mut facts = Facts {
                    tier: s.tier,
                    polarity,
                    stake,
                    tier_mult,
                    score: s.score,
                    episode: ep,
                };
                let mut found = self.evaluate(&ev, &facts);
                // Routing is looked up only when a case opens (not per touchpoint); a route that
                // overrides the channel has the reason say that channel.
                let mut route = rules::NO_ROUTE;
                if found.is_some() && !r.config.rules.routing.is_empty() {
                    let tier = (s.tier != NO_TIER).then(|| self.tiers.name(s.tier));
                    route = r.route(&ev.journey, &ev.touchpoint, tier.as_deref());
                    if let Some(channel) = r.route_channel(route)
                        && channel != stake.channel
                    {
                        facts.stake.channel = channel;
                        found = self.evaluate(&ev, &facts);
                    }
                }
                if let Some((rule, severity, reason)) = found {
                    let case = Case {
                        journey: ev.journey.as_str().into(),
                        journey_hash,
                        case_hash: (customer_hash(&ev.customer_id) & CUSTOMER_BITS)
                            | (fnv64(&[
                                ev.customer_id.as_bytes(),
                                ev.journey.as_bytes(),
                                &t.to_le_bytes(),
                                ev.event_id.as_bytes(),
                            ]) & !CUSTOMER_BITS),
                        opened_at: t,
                        last_touch: t,
                        last_event_id: ev.event_id.as_str().into(),
                        rule,
                        severity,
                        channel: facts.stake.channel,
                        escalated: false,
                        weight: (stake.weight * tier_mult) as f32,
                        // Opened by a moment of truth failing: that failure holds the case open
                        // whichever rule named it, so no earlier positive arriving late withdraws it.
                        reopens_at: if matches!(polarity, Polarity::Negative)
                            && critical.enabled
                            && stake.weight >= critical.min_stakes
                        {
                            t
                        } else {
                            Millis::MIN
                        },
                        human: Human::new(t, route),
                    };
                    let alert = self.build_alert(
                        &ev.customer_id,
                        s,
                        &case,
                        AlertSpec {
                            status: AlertStatus::Open,
                            rule,
                            severity,
                            event_time: t,
                            trigger_event_id: &ev.event_id,
                            reason,
                            time_to_recover_ms: None,
                            attributes: r.shareable_attributes(&ev),
                        },
                        now,
                    );
                    if s.cases().len() >= r.config.engine.max_open_cases {
                        self.expire_oldest_case(&ev.customer_id, s, t, now, seq, out);
                    }
                    // Grown one case at a time (a Vec's first push reserves four): most customers
                    // with a case have one, and a case with its human side is ~180 bytes.
                    let cases = &mut s.extra_mut().cases;
                    cases.reserve_exact(1);
                    cases.push(case);
                    out.push(Effect::Alert {
                        alert,
                        seq: Some(seq),
                    });
                }
            }
        }
        self.applied(&ev.customer_id, s, seq, out)
    }

    /// An input (`seq`) was applied to `customer`'s state: [`Effect::Applied`], and the
    /// customer's timer to queue again when its next deadline moved earlier.
    #[inline]
    fn applied(
        &self,
        customer: &str,
        s: &mut CustomerState,
        seq: u64,
        out: &mut Vec<Effect>,
    ) -> Option<(Arc<str>, Millis)> {
        // A fresh copy of the id (it is hot in cache) rather than a second reference to the map's
        // key (which would be a cache miss per touchpoint).
        let customer: Arc<str> = Arc::from(customer);
        let deadline = self.next_deadline(s, self.rules.lateness_ms);
        let requeue = (deadline < s.queued_deadline).then(|| {
            s.queued_deadline = deadline;
            (customer.clone(), deadline)
        });
        out.push(Effect::Applied { seq, customer });
        requeue
    }

    /// Reopens resolved case `i` at `t` (a negative touchpoint within the reopen window, or an
    /// agent's REOPEN): one severity step up, a new round that no agent has yet (the ack SLA runs
    /// again from `t`).
    #[allow(clippy::too_many_arguments)]
    fn reopen(
        &self,
        customer: &str,
        s: &mut CustomerState,
        i: usize,
        t: Millis,
        rule: RuleId,
        trigger: &str,
        reason: String,
        attributes: BTreeMap<String, String>,
        now: Millis,
    ) -> Box<RecoveryAlert> {
        let c = &mut s.extra_mut().cases[i];
        c.severity = c.severity.step_up();
        c.last_touch = c.last_touch.max(t);
        // A new round: its own recovery SLA and repeat-negative escalation.
        c.escalated = false;
        let h = &mut c.human;
        h.status = CaseStatus::Reopened;
        h.reopens = h.reopens.saturating_add(1);
        h.round_start = t;
        h.ack_breached = false;
        h.acknowledged_at = Millis::MIN;
        h.actor = None;
        let case = c.clone();
        self.build_alert(
            customer,
            s,
            &case,
            AlertSpec {
                status: AlertStatus::Reopened,
                rule,
                severity: case.severity,
                event_time: t,
                trigger_event_id: trigger,
                reason,
                time_to_recover_ms: None,
                attributes,
            },
            now,
        )
    }

    /// Applies one agent's action to its case (see [`Stream::push_action`]). Returns the customer
    /// key and deadline to (re)queue.
    fn apply_action(
        &self,
        a: CaseAction,
        seq: u64,
        now: Millis,
        out: &mut Vec<Effect>,
    ) -> Option<(Arc<str>, Millis)> {
        let reject = |out: &mut Vec<Effect>, class: &'static str, reason: &str| {
            out.push(Effect::Rejected {
                seq,
                class,
                reason: reason.to_string(),
            });
        };
        let Some(hash) = parse_case_id(&a.case_id) else {
            reject(
                out,
                "malformed",
                "case_id is not a case id (16 lower-case hex digits)",
            );
            return None;
        };
        let unknown = |out: &mut Vec<Effect>| {
            if hash & CUSTOMER_BITS == customer_hash(&a.customer_id) & CUSTOMER_BITS {
                reject(
                    out,
                    "unknown_case",
                    "no case with this case_id is held for the customer (never opened, or closed and forgotten)",
                );
            } else {
                reject(
                    out,
                    "customer_mismatch",
                    "case_id was not issued for this customer_id",
                );
            }
        };
        let Some(mut guard) = self.customers.get_mut(a.customer_id.as_bytes()) else {
            unknown(out);
            return None;
        };
        let s: &mut CustomerState = &mut guard;
        let t = a.occurred_at;
        // In event order the customer's timers due by the action's time come first (an ack after
        // the ack SLA's deadline finds it breached whichever arrived first). Idleness past the
        // TTL is left to the stream's sweep: an action never creates or resets a state.
        self.fire_due(&a.customer_id, s, t, 0, now, out);
        let Some(i) = s.cases().iter().position(|c| c.case_hash == hash) else {
            unknown(out);
            return None;
        };
        let action_hash = Human::action_hash(&a.action_id);
        if s.cases()[i].human.has_applied(action_hash) {
            out.push(Effect::Duplicate { seq });
            return None;
        }
        let r = &self.rules;
        let status = s.cases()[i].human.status;
        // A refused action is remembered too: its redelivery after the case moved on (say, a
        // RESOLVE refused as closed, redelivered after a REOPEN) must not apply then.
        let refuse = |s: &mut CustomerState, out: &mut Vec<Effect>, class: &'static str, reason: &str| {
            s.extra_mut().cases[i].human.remember_action(action_hash);
            reject(out, class, reason);
        };
        let alert = match (a.action, status) {
            (ActionKind::Acknowledge, CaseStatus::Open | CaseStatus::Reopened) => {
                let c = &mut s.extra_mut().cases[i];
                let h = &mut c.human;
                // An agent's clock may be a little behind the case's: never before it opened.
                h.acknowledged_at = t.max(h.round_start);
                h.status = CaseStatus::Acknowledged;
                h.actor = Some(a.actor.as_str().into());
                h.remember_action(action_hash);
                let case = c.clone();
                let reason = format!(
                    "Acknowledged by {} after {}; queue '{}' has the case on journey '{}'.",
                    a.actor,
                    duration(case.human.acknowledged_at - case.human.round_start),
                    r.queue_name(case.human.queue),
                    case.journey
                );
                self.action_alert(
                    &a,
                    s,
                    &case,
                    AlertStatus::Acknowledged,
                    RuleId::Acknowledged,
                    reason,
                    now,
                )
            }
            (ActionKind::Acknowledge, CaseStatus::Acknowledged) => {
                refuse(s, out, "already_acknowledged", "case is already acknowledged");
                return None;
            }
            (ActionKind::Acknowledge | ActionKind::Resolve, CaseStatus::Resolved) => {
                refuse(
                    s,
                    out,
                    "closed_case",
                    "case is resolved; only REOPEN applies to it",
                );
                return None;
            }
            (ActionKind::Resolve, _) => {
                let c = &mut s.extra_mut().cases[i];
                let h = &mut c.human;
                h.resolved_at = t.max(h.round_start);
                h.status = CaseStatus::Resolved;
                h.actor = Some(a.actor.as_str().into());
                h.resolution = a.resolution.as_deref().map(Into::into);
                h.remember_action(action_hash);
                let case = c.clone();
                let reason = format!(
                    "Resolved by {}{} after {}; a negative touchpoint on journey '{}' within {} reopens it.",
                    a.actor,
                    a.resolution
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default(),
                    duration(case.human.resolved_at - case.human.round_start),
                    case.journey,
                    humantime::format_duration(r.config.engine.reopen_window)
                );
                self.action_alert(&a, s, &case, AlertStatus::Resolved, RuleId::Resolved, reason, now)
            }
            (ActionKind::Reopen, CaseStatus::Resolved) => {
                let reason = format!(
                    "Reopened by {}: the resolution did not hold; contact the customer by {}.",
                    a.actor,
                    s.cases()[i].channel
                );
                let alert = self.reopen(
                    &a.customer_id,
                    s,
                    i,
                    t,
                    RuleId::AgentReopen,
                    &a.action_id,
                    reason,
                    BTreeMap::new(),
                    now,
                );
                s.extra_mut().cases[i].human.remember_action(action_hash);
                alert
            }
            (ActionKind::Reopen, _) => {
                refuse(
                    s,
                    out,
                    "not_resolved",
                    "case is not resolved; REOPEN applies only to a resolved case",
                );
                return None;
            }
        };
        out.push(Effect::Alert {
            alert,
            seq: Some(seq),
        });
        self.applied(&a.customer_id, s, seq, out)
    }

    /// The alert of an agent's ACKNOWLEDGE or RESOLVE: at the action's time, triggered by it.
    #[allow(clippy::too_many_arguments)]
    fn action_alert(
        &self,
        a: &CaseAction,
        s: &CustomerState,
        case: &Case,
        status: AlertStatus,
        rule: RuleId,
        reason: String,
        now: Millis,
    ) -> Box<RecoveryAlert> {
        let event_time = match status {
            AlertStatus::Resolved => case.human.resolved_at,
            _ => case.human.acknowledged_at,
        };
        self.build_alert(
            &a.customer_id,
            s,
            case,
            AlertSpec {
                status,
                rule,
                severity: case.severity,
                event_time,
                trigger_event_id: &a.action_id,
                reason,
                time_to_recover_ms: None,
                attributes: BTreeMap::new(),
            },
            now,
        )
    }

    /// Makes room for a new case by closing the customer's oldest one, loudly: its followers
    /// learn it was not recovered.
    fn expire_oldest_case(
        &self,
        customer: &str,
        s: &mut CustomerState,
        t: Millis,
        now: Millis,
        seq: u64,
        out: &mut Vec<Effect>,
    ) {
        // A resolved case is closed already: forgetting it needs no alert.
        if let Some(i) = s.cases().iter().position(Case::is_resolved) {
            s.extra_mut().cases.remove(i);
            return;
        }
        let Some(oldest) = (0..s.cases().len()).min_by_key(|&i| (s.cases()[i].opened_at, i)) else {
            return;
        };
        let case = s.extra_mut().cases.remove(oldest);
        let reason = format!(
            "Closed without recovery to make room: the customer has {} newer open cases; review journey '{}' by hand.",
            self.rules.config.engine.max_open_cases, case.journey
        );
        let alert = self.build_alert(
            customer,
            s,
            &case,
            AlertSpec {
                status: AlertStatus::Expired,
                rule: RuleId::CaseLimit,
                severity: case.severity,
                event_time: t,
                trigger_event_id: &case.last_event_id,
                reason,
                time_to_recover_ms: None,
                attributes: BTreeMap::new(),
            },
            now,
        );
        out.push(Effect::Alert {
            alert,
            seq: Some(seq),
        });
    }

    /// Which rule, if any, opens a case for this touchpoint (no case is open on its journey).
    /// Rules are tried in order of how sure they are; severity is the highest any matching rule gives.
    fn evaluate(&self, ev: &Touchpoint, facts: &Facts) -> Option<(RuleId, Severity, String)> {
        let Facts {
            tier,
            polarity,
            stake,
            tier_mult,
            score,
            episode: ep,
        } = *facts;
        let rc = &self.rules.config.rules;
        let t = ev.occurred_at;
        // Only a reason text needs the tier's name: look it up there, not per touchpoint.
        let who = || {
            if tier == NO_TIER {
                "the customer".to_string()
            } else {
                format!("a {} customer", self.tiers.name(tier))
            }
        };
        let mut found: Option<(RuleId, Severity, String)> = None;
        let mut consider = |rule: RuleId, severity: Severity, reason: &dyn Fn() -> String| match &mut found {
            None => found = Some((rule, severity, reason())),
            Some(f) => f.1 = f.1.max(severity),
        };
        let negative = polarity == Polarity::Negative;
        if rc.critical_negative.enabled && negative && stake.weight >= rc.critical_negative.min_stakes {
            let severity = if tier_mult >= rc.critical_negative.critical_tier_multiplier {
                Severity::Critical
            } else {
                Severity::High
            };
            consider(RuleId::CriticalNegative, severity, &|| {
                format!(
                    "Moment of truth went wrong: {} ended {}{} on {} for {} (journey '{}'); contact them by {} now.",
                    ev.touchpoint,
                    ev.outcome,
                    ev.sentiment
                        .map(|s| format!(" with sentiment {s:.2}"))
                        .unwrap_or_default(),
                    ev.channel,
                    who(),
                    ev.journey,
                    stake.channel
                )
            });
        }
        if rc.experience_decline.enabled && negative && score <= rc.experience_decline.threshold {
            consider(RuleId::ExperienceDecline, Severity::Medium, &|| {
                format!(
                    "Experience score fell to {score:.2} (threshold {}) after {} ended {} on {} (journey '{}'); reach out by {}.",
                    rc.experience_decline.threshold,
                    ev.touchpoint,
                    ev.outcome,
                    ev.channel,
                    ev.journey,
                    stake.channel
                )
            });
        }
        let age = t - ep.first;
        if rc.high_effort.enabled
            && u32::from(ep.contacts) >= rc.high_effort.min_contacts
            && age <= self.rules.effort_window_ms
        {
            consider(RuleId::HighEffort, Severity::Medium, &|| {
                format!(
                    "Customer has contacted us {} times about '{}' within {} without success; have one person own it and call them by {}.",
                    ep.contacts,
                    ev.journey,
                    humantime::format_duration(std::time::Duration::from_millis(age as u64)),
                    stake.channel
                )
            });
        }
        let channels = (ep.channels & CHANNEL_BITS).count_ones();
        if rc.channel_hopping.enabled
            && channels >= rc.channel_hopping.min_channels
            && age <= self.rules.hopping_window_ms
        {
            consider(RuleId::ChannelHopping, Severity::Medium, &|| {
                let names: Vec<&str> = Channel::ALL
                    .iter()
                    .filter(|c| ep.channels & CHANNEL_BITS & (1 << c.index()) != 0)
                    .map(|c| c.as_str())
                    .collect();
                format!(
                    "Customer tried {} channels ({}) for '{}' without success; have one person own it and reach them by {}.",
                    channels,
                    names.join(", "),
                    ev.journey,
                    stake.channel
                )
            });
        }
        found
    }

    /// Places a touchpoint at `t` in its journey's episode, in event time, and counts it there
    /// when it belongs: a fresh episode starts when none is open or the open one is older than the
    /// rules' window; a late touchpoint from before the episode's first touch extends it back (if
    /// still within the window of its last); one from before the positive that started the
    /// episode belongs to a finished episode and does not count.
    fn place_in_episode(
        &self,
        s: &mut CustomerState,
        journey: u32,
        t: Millis,
        ev: &Touchpoint,
    ) -> (Episode, Place) {
        let window = self.rules.episode_window_ms;
        s.retain_episodes(|e| e.journey == journey || t - e.last() <= window);
        let fresh = Episode {
            journey,
            first: t,
            span: 0,
            contacts: 0,
            channels: 0,
        };
        let held = s.episodes().position(|e| e.journey == journey);
        let at = match held {
            Some(i) => {
                let e = s.episode_mut(i);
                if t < e.first {
                    if e.channels & AFTER_POSITIVE != 0 {
                        return (*e, Place::BeforeRecovery);
                    }
                    if e.last() - t > window {
                        return (*e, Place::Outside);
                    }
                    e.span = u32::try_from(e.last() - t).unwrap_or(u32::MAX);
                    e.first = t;
                } else if t - e.first > window {
                    *e = fresh;
                }
                i
            }
            None => {
                if s.episode_count() >= self.rules.config.engine.max_journeys {
                    let stalest = s
                        .episodes()
                        .enumerate()
                        .min_by_key(|(_, e)| e.last())
                        .map_or(0, |(i, _)| i);
                    s.swap_remove_episode(stalest);
                }
                s.push_episode(fresh);
                s.episode_count() - 1
            }
        };
        let e = s.episode_mut(at);
        if ev.direction == Direction::Inbound {
            if ev.kind == TouchpointKind::Interaction {
                e.contacts = e.contacts.saturating_add(1);
            }
            e.channels |= 1 << ev.channel.index();
        }
        if t > e.last() {
            e.span = u32::try_from(t - e.first).unwrap_or(u32::MAX);
        }
        (*e, Place::Counted)
    }

    /// A positive at `t` on `journey`: the episode restarts at it. A positive that arrived late,
    /// inside the episode, keeps what came after it: recounted from the remembered touchpoints
    /// when the customer has this one journey in play (the ring holds no journey), else from zero.
    fn reset_episode(&self, s: &mut CustomerState, journey: u32, t: Millis) {
        let Some(i) = s.episodes().position(|e| e.journey == journey) else {
            return;
        };
        let e = *s.episode_mut(i);
        if e.channels & AFTER_POSITIVE != 0 && t < e.first {
            return; // an older positive: the episode already starts after a newer one
        }
        let (mut contacts, mut channels) = (0u16, 0u16);
        let mut last = t;
        if t < e.last() && s.episode_count() == 1 {
            for r in s.recent().filter(|r| r.occurred_at() > t) {
                last = last.max(r.occurred_at());
                if r.direction() == Direction::Inbound {
                    if r.kind() == TouchpointKind::Interaction {
                        contacts = contacts.saturating_add(1);
                    }
                    channels |= 1 << r.channel().index();
                }
            }
        }
        *s.episode_mut(i) = Episode {
            journey,
            first: t,
            span: u32::try_from(last - t).unwrap_or(u32::MAX),
            contacts,
            channels: channels | AFTER_POSITIVE,
        };
    }

    /// After a late positive that happened before case `i` opened: the correction, when the rule
    /// that opened the case no longer holds in event time. A moment of truth that went wrong
    /// stands (the positive came before it), and so does a score decline (the score is one
    /// number, not a history to re-run).
    fn withdraw_if_unfounded(
        &self,
        ev: &Touchpoint,
        s: &mut CustomerState,
        i: usize,
        now: Millis,
    ) -> Option<Box<RecoveryAlert>> {
        let rc = &self.rules.config.rules;
        let case = &s.cases()[i];
        // A moment of truth failed on the case after this positive: in event time the customer
        // recovered and then failed again, which opens a case on its own.
        if case.reopens_at > ev.occurred_at {
            return None;
        }
        let ep = s
            .episodes()
            .find(|e| e.journey == case.journey_hash as u32)
            .copied()?;
        let founded = match case.rule {
            RuleId::HighEffort => u32::from(ep.contacts) >= rc.high_effort.min_contacts,
            RuleId::ChannelHopping => {
                (ep.channels & CHANNEL_BITS).count_ones() >= rc.channel_hopping.min_channels
            }
            _ => true,
        };
        if founded {
            return None;
        }
        let case = s.extra_mut().cases.remove(i);
        let reason = format!(
            "Withdrawn: {} ended {} on {} before this case opened but arrived after it, so {} no longer holds; stand down.",
            ev.touchpoint,
            ev.outcome,
            ev.channel,
            case.rule.as_str()
        );
        let alert = self.build_alert(
            &ev.customer_id,
            s,
            &case,
            AlertSpec {
                status: AlertStatus::Withdrawn,
                rule: case.rule,
                severity: case.severity,
                event_time: ev.occurred_at,
                trigger_event_id: &ev.event_id,
                reason,
                time_to_recover_ms: None,
                attributes: BTreeMap::new(),
            },
            now,
        );
        s.shrink_extra();
        Some(alert)
    }
}

/// A case timer; at the same instant they fire in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    AckSla,
    Sla,
    Expiry,
    /// A resolved case past its reopen window.
    Forget,
}

fn customer_hash(customer: &str) -> u64 {
    fnv64(&[customer.as_bytes()])
}

/// Where a touchpoint fell in its journey's episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Counted,
    /// Before the positive that started the episode (it arrived late).
    BeforeRecovery,
    /// More than the window before the episode's last touch: a finished episode.
    Outside,
}

/// `Episode::channels` bit: the episode started at a positive touchpoint (at `first`). Persisted
/// with the channel bits (the changelog writes the whole `u16`).
const AFTER_POSITIVE: u16 = 1 << 15;
/// `Episode::channels` bits that are channels.
const CHANNEL_BITS: u16 = !AFTER_POSITIVE;

/// An `arrival` for [`Stream::push`] that skips the clock-skew check: for callers whose input
/// carries no write time of its own (tests, benchmarks, generated data).
pub const ARRIVAL_UNCHECKED: Millis = Millis::MAX;

/// One ordered input: its event-time clock and its timer queue.
///
/// Each touchpoint is applied when it arrives. The clock is the newest event time seen; the
/// watermark trails it by the allowed lateness. A touchpoint behind the watermark is reported as
/// [`Effect::Late`], one too far ahead of its arrival as [`Effect::Future`]; neither is applied.
///
/// Timers read a second clock: the same, or the wall clock once the input has been idle for
/// `engine.idle_timeout` ([`Stream::tick`]). SLA timers fire at it; expiries and evictions once it
/// is the lateness past them, so a touchpoint still allowed to arrive never finds its case
/// expired. Only timers follow the wall clock: a backlog read after a pause is judged late by
/// its own event time, never by how long the partition was quiet.
pub struct Stream {
    engine: Arc<Engine>,
    clock: Millis,
    /// What timers fire at: `clock`, or later on an idle input.
    timer_clock: Millis,
    /// Processing time of the last touchpoint pushed (for idleness).
    last_input: Millis,
    /// Watermark at the last idle sweep.
    swept_at: Millis,
    /// End of input (replay): nothing can arrive late any more, expiries need not wait.
    ended: bool,
    timers: BinaryHeap<Reverse<(Millis, Arc<str>)>>,
}

impl Stream {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            clock: Millis::MIN,
            timer_clock: Millis::MIN,
            last_input: Millis::MIN,
            swept_at: Millis::MIN,
            ended: false,
            timers: BinaryHeap::new(),
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// After the engine was filled from the changelog: re-arms every restored customer's timers.
    /// Event time is not resumed from the restored states: they may be ahead of the committed
    /// input offset, and the records in between must not count as late when read again.
    pub fn after_restore(&mut self) {
        let keys: Vec<Arc<str>> = self.engine.customers.iter().map(|e| e.key().to_arc()).collect();
        for key in keys {
            if let Some((k, d)) = self.engine.restored_deadline(&key) {
                self.timers.push(Reverse((d, k)));
            }
        }
    }

    /// The event-time clock: the newest event time seen, or the wall clock when idle.
    pub fn clock(&self) -> Millis {
        self.clock
    }

    /// The clock minus the allowed lateness: touchpoints older than this are late.
    pub fn watermark(&self) -> Millis {
        self.clock.saturating_sub(self.hold())
    }

    /// How far behind the clock expiries wait.
    fn hold(&self) -> Millis {
        if self.ended {
            0
        } else {
            self.engine.rules.lateness_ms
        }
    }

    /// Takes one touchpoint (`seq` identifies its record, e.g. its offset) that arrived at
    /// `arrival` (its record's timestamp live, the processing clock in replay) at processing
    /// time `now`, and applies it at once.
    pub fn push(&mut self, ev: Touchpoint, seq: u64, arrival: Millis, now: Millis, out: &mut Vec<Effect>) {
        self.last_input = now;
        let ahead_ms = ev.occurred_at.saturating_sub(arrival);
        if ahead_ms > self.engine.rules.skew_ms {
            out.push(Effect::Future {
                seq,
                event: Box::new(ev),
                ahead_ms,
            });
            return;
        }
        let watermark = self.watermark();
        if ev.occurred_at < watermark {
            if self.engine.already_seen(&ev) {
                out.push(Effect::Duplicate { seq });
            } else {
                let behind_ms = watermark - ev.occurred_at;
                out.push(Effect::Late {
                    seq,
                    event: Box::new(ev),
                    behind_ms,
                });
            }
            return;
        }
        self.clock = self.clock.max(ev.occurred_at);
        self.timer_clock = self.timer_clock.max(self.clock);
        if let Some(timer) = self.engine.apply(ev, seq, now, out) {
            self.timers.push(Reverse((timer.1, timer.0)));
        }
        self.fire_timers(now, out);
    }

    /// Takes one agent's action (`seq` identifies its record) that arrived at `arrival` (its
    /// record's timestamp live, the processing clock in replay) at processing time `now`, and
    /// applies it to its case at once. Ends with exactly one of `Applied`, `Duplicate` or
    /// `Rejected` for `seq`, after any alert it caused.
    ///
    /// Actions are human decisions, not customer events: they are applied whenever their case is
    /// still held, however far behind the watermark (never dead-lettered as late), and they move
    /// neither the event-time clock nor the idleness clock (an agents' stream must not hold back
    /// the timers of a partition whose customers have gone quiet). One stamped further ahead of
    /// its arrival than `engine.max_clock_skew` is rejected with class `future` (not
    /// [`Effect::Future`], which carries a touchpoint).
    pub fn push_action(
        &mut self,
        action: CaseAction,
        seq: u64,
        arrival: Millis,
        now: Millis,
        out: &mut Vec<Effect>,
    ) {
        let ahead_ms = action.occurred_at.saturating_sub(arrival);
        if ahead_ms > self.engine.rules.skew_ms {
            out.push(Effect::Rejected {
                seq,
                class: "future",
                reason: format!(
                    "future: action is stamped {ahead_ms} ms ahead of its arrival (max clock skew {})",
                    humantime::format_duration(self.engine.rules.config.engine.max_clock_skew)
                ),
            });
            return;
        }
        if let Some(timer) = self.engine.apply_action(action, seq, now, out) {
            self.timers.push(Reverse((timer.1, timer.0)));
        }
    }

    /// Processing time passes with no input (a tick, live): once the input has been idle for
    /// `engine.idle_timeout`, timers follow the wall clock `now`, so SLA escalations and expiries
    /// fire on quiet partitions. Never beyond `now`: only deadlines already past in real time
    /// fire, and the same log replayed reaches them by its own event time or at its end
    /// (`replay --until`).
    /// A stream that has had no input at all (a partition just assigned, its state restored)
    /// counts as idle from its first tick.
    pub fn tick(&mut self, now: Millis, out: &mut Vec<Effect>) {
        if self.last_input == Millis::MIN {
            self.last_input = now;
            return;
        }
        if now.saturating_sub(self.last_input) < self.engine.rules.idle_timeout_ms || now <= self.timer_clock
        {
            return;
        }
        self.timer_clock = now;
        self.fire_timers(now, out);
    }

    /// What timers fire at: the clock, or the wall clock on an idle input.
    pub fn timer_clock(&self) -> Millis {
        self.timer_clock
    }

    /// End of input (replay): moves the clock to `until` (when later than the newest event time)
    /// and fires every timer due by then; expiries no longer wait for the lateness.
    pub fn flush(&mut self, until: Option<Millis>, now: Millis, out: &mut Vec<Effect>) {
        self.ended = true;
        self.timer_clock = self.timer_clock.max(until.unwrap_or(self.clock));
        // Deadlines were queued for expiries that wait the lateness: queue them again without it.
        self.timers.clear();
        let engine = &*self.engine;
        for mut entry in engine.customers.iter_mut() {
            let d = engine.next_deadline(&entry, 0);
            entry.queued_deadline = d;
            if d != Millis::MAX {
                self.timers.push(Reverse((d, entry.key().to_arc())));
            }
        }
        self.fire_timers(now, out);
    }

    fn fire_timers(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let upto = self.timer_clock;
        let hold = self.hold();
        let watermark = upto.saturating_sub(hold);
        if watermark.saturating_sub(self.swept_at) >= SWEEP_EVERY_MS {
            if self.swept_at != Millis::MIN {
                let keys = self.engine.sweep(watermark);
                if !keys.is_empty() {
                    out.push(Effect::Evicted { keys });
                }
            }
            self.swept_at = watermark;
        }
        let engine = &*self.engine;
        while self.timers.peek().is_some_and(|t| t.0.0 <= upto) {
            let Some(Reverse((deadline, key))) = self.timers.pop() else {
                break;
            };
            let evict = {
                let Some(mut guard) = engine.customers.get_mut(key.as_bytes()) else {
                    continue;
                };
                let s: &mut CustomerState = &mut guard;
                if s.queued_deadline == deadline {
                    s.queued_deadline = Millis::MAX;
                }
                let evict = engine.fire_due(&key, s, upto, hold, now, out);
                if !evict {
                    let next = engine.next_deadline(s, hold);
                    if next < s.queued_deadline {
                        s.queued_deadline = next;
                        self.timers.push(Reverse((next, key.clone())));
                    }
                }
                evict
            };
            if evict {
                engine.customers.remove(key.as_bytes());
                out.push(Effect::Evicted { keys: vec![key] });
            }
        }
    }
}

#[cfg(test)]
mod tests;
