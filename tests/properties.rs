//! Property tests of the pure core ([`Engine`] + [`Stream`]), the promises of `STYLE.md`:
//! duplicate delivery changes nothing, any arrival order within the allowed lateness converges to
//! the open cases and state that event-time order gives, and per-customer state stays bounded
//! however many touchpoints a customer has.
//!
//! Alerts are compared as JSON; `now` is fixed, so `detected_at` is too.

use cx_sentinel::config::Config;
use cx_sentinel::engine::{Effect, Engine, Stream};
use cx_sentinel::model::{
    ActionKind, AlertStatus, CaseAction, Channel, Direction, Millis, Outcome, Touchpoint, TouchpointKind,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

const MIN: Millis = 60_000;
const HOUR: Millis = 60 * MIN;
const T0: Millis = 1_772_359_200_000;
/// Processing time handed to the engine: fixed, so alerts compare equal byte for byte.
const NOW: Millis = 1_900_000_000_000;

const JOURNEYS: &[&str] = &["billing", "parcel-delivery", "cancellation", "lab-results"];
/// Moments of truth (`payment.*`, `reservation.*`, ...) weigh 3, the rest 1.
const TOUCHPOINTS: &[&str] = &[
    "payment.transfer",
    "payment.refund",
    "reservation.booking",
    "order.delivery.status",
    "health.result.view",
    "ivr.menu",
    "web.page.view",
    "marketing.email",
];
const TIERS: &[Option<&str>] = &[None, Some("standard"), Some("vip")];

/// One generated touchpoint before it gets absolute times and an id.
#[derive(Debug, Clone)]
struct Spec {
    customer: u8,
    /// Since this customer's previous touchpoint.
    gap: Millis,
    journey: usize,
    touchpoint: usize,
    channel: Channel,
    kind: TouchpointKind,
    direction: Direction,
    outcome: Outcome,
    /// Hundredths.
    sentiment: Option<i8>,
    tier: usize,
    /// Fraction of the allowed lateness (of 65 536) the record is delayed by.
    jitter: u16,
}

fn spec(customers: u8, journeys: usize, min_gap: Millis) -> impl Strategy<Value = Spec> {
    (
        0..customers,
        prop_oneof![4 => min_gap..30 * MIN, 1 => 30 * MIN..6 * HOUR],
        0..journeys,
        0..TOUCHPOINTS.len(),
        prop::sample::select(Channel::ALL),
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.2),
        prop::sample::select(Outcome::ALL),
        prop::option::of(-100i8..=100),
        0..TIERS.len(),
        any::<u16>(),
    )
        .prop_map(
            |(
                customer,
                gap,
                journey,
                touchpoint,
                channel,
                engagement,
                outbound,
                outcome,
                sentiment,
                tier,
                jitter,
            )| {
                Spec {
                    customer,
                    gap,
                    journey,
                    touchpoint,
                    channel,
                    kind: if engagement {
                        TouchpointKind::Engagement
                    } else {
                        TouchpointKind::Interaction
                    },
                    direction: if outbound {
                        Direction::Outbound
                    } else {
                        Direction::Inbound
                    },
                    outcome,
                    sentiment,
                    tier,
                    jitter,
                }
            },
        )
}

/// Event ids of all three stored forms: short (inline), UUID (16 bytes), long (hash + text).
fn event_id(i: usize) -> String {
    match i % 3 {
        0 => format!("e{i}"),
        1 => format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            0x5eed_0000 ^ i,
            i & 0xffff,
            (i * 7) & 0xfff,
            (i * 13) & 0xfff,
            i * 2_654_435_761
        ),
        _ => format!("event-{i:05}-via-the-long-id-path"),
    }
}

fn journey_name(i: usize) -> String {
    match JOURNEYS.get(i) {
        Some(j) => (*j).to_string(),
        None => format!("journey-{i}"),
    }
}

/// Touchpoints with per-customer times (each customer's clock advances by its gaps), in event-time
/// order, each paired with its jitter.
fn build(specs: &[Spec]) -> Vec<(Touchpoint, u16)> {
    let mut clocks = [T0; 256];
    let mut events: Vec<(Touchpoint, u16)> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let c = usize::from(s.customer);
            clocks[c] += s.gap;
            let tp = Touchpoint {
                event_id: event_id(i),
                customer_id: format!("cust-{c}"),
                occurred_at: clocks[c] + c as Millis * 7_000,
                channel: s.channel,
                kind: s.kind,
                direction: s.direction,
                journey: journey_name(s.journey),
                touchpoint: TOUCHPOINTS[s.touchpoint].to_string(),
                outcome: s.outcome,
                sentiment: s.sentiment.map(|h| f64::from(h) / 100.0),
                customer_tier: TIERS[s.tier].map(str::to_string),
                agent_id: None,
                attributes: BTreeMap::new(),
            };
            (tp, s.jitter)
        })
        .collect();
    events.sort_by(|a, b| (a.0.occurred_at, &a.0.event_id).cmp(&(b.0.occurred_at, &b.0.event_id)));
    events
}

fn config(lateness: Millis) -> Config {
    let mut c = Config::default();
    c.engine.allowed_lateness = Duration::from_millis(lateness as u64);
    c
}

/// What one run produced.
#[derive(Debug, Default)]
struct Run {
    /// Every alert as JSON, sorted (a multiset).
    alerts: Vec<String>,
    applied: usize,
    duplicates: usize,
    late: usize,
    future: usize,
    /// At the end: (customer, journey) of every open case.
    open: BTreeSet<(String, String)>,
    /// At the end: each customer's experience score, to 6 places.
    scores: BTreeMap<String, String>,
}

fn run(config: &Config, arrivals: impl IntoIterator<Item = Touchpoint>) -> Run {
    let engine = Arc::new(Engine::new(config.clone()));
    let mut stream = Stream::new(engine.clone());
    let mut out = Vec::new();
    let mut customers = BTreeSet::new();
    for (seq, ev) in arrivals.into_iter().enumerate() {
        customers.insert(ev.customer_id.clone());
        stream.push(ev, seq as u64, NOW, NOW, &mut out);
    }
    stream.flush(None, NOW, &mut out);
    let mut r = Run::default();
    for e in out {
        match e {
            Effect::Alert { alert, .. } => r.alerts.push(serde_json::to_string(&alert).expect("serializes")),
            Effect::Applied { .. } => r.applied += 1,
            Effect::Duplicate { .. } => r.duplicates += 1,
            Effect::Late { .. } => r.late += 1,
            Effect::Future { .. } => r.future += 1,
            Effect::Rejected { .. } | Effect::Evicted { .. } => {}
        }
    }
    r.alerts.sort();
    for c in customers {
        if let Some(view) = engine.customer(&c) {
            r.open
                .extend(view.open_cases.iter().map(|k| (c.clone(), k.journey.clone())));
            r.scores.insert(c, format!("{:.6}", view.experience_score));
        }
    }
    r
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Re-delivering records shortly after their original (at-least-once redelivery) changes no
    /// alert, and every copy is recognised as a duplicate. Per-customer gaps of at least 2 minutes
    /// keep a customer to a handful of touchpoints within the lateness, well inside the ring.
    #[test]
    fn duplicate_delivery_changes_nothing(
        specs in prop::collection::vec(spec(3, JOURNEYS.len(), 2 * MIN), 1..60),
        redeliveries in prop::collection::vec((any::<prop::sample::Index>(), 0usize..=3), 0..20),
    ) {
        let events: Vec<Touchpoint> = build(&specs).into_iter().map(|(e, _)| e).collect();
        // A copy of record i arrives right after record i + delay.
        let mut arrivals: Vec<((usize, u8), Touchpoint)> =
            events.iter().cloned().enumerate().map(|(i, e)| ((i, 0), e)).collect();
        for (index, delay) in &redeliveries {
            let i = index.index(events.len());
            arrivals.push(((i + delay, 1), events[i].clone()));
        }
        arrivals.sort_by_key(|(k, _)| *k);

        let config = Config::default();
        let once = run(&config, events.iter().cloned());
        let twice = run(&config, arrivals.into_iter().map(|(_, e)| e));
        prop_assert_eq!(once.applied, events.len());
        prop_assert_eq!(once.duplicates, 0);
        prop_assert_eq!(twice.applied, events.len());
        prop_assert_eq!(twice.duplicates, redeliveries.len(), "every copy is a duplicate");
        prop_assert_eq!(twice.late, 0);
        prop_assert_eq!(once.alerts, twice.alerts);
    }

    /// Any arrival order in which no record is delayed by the allowed lateness or more leaves the
    /// same open cases and the same scores as event-time order, and no record is reported late.
    /// The alerts on the way may differ: that is the point (pages at arrival, corrections after).
    /// One journey per customer: a late positive recounts the episode from the customer's
    /// remembered touchpoints, which carry no journey (see README, Event time).
    #[test]
    fn order_within_lateness_converges_to_event_time_order(
        specs in prop::collection::vec(spec(3, 1, 2 * MIN), 1..60),
        lateness in prop_oneof![Just(MIN), Just(10 * MIN), Just(HOUR)],
    ) {
        // A customer's tier is a fact about the customer here: a record that omits it inherits
        // the last one known, and which one that is depends on arrival order by definition.
        let mut events = build(&specs);
        let tiers: BTreeMap<String, Option<String>> =
            events.iter().map(|(e, _)| (e.customer_id.clone(), e.customer_tier.clone())).collect();
        for (e, _) in &mut events {
            e.customer_tier = tiers[&e.customer_id].clone();
        }
        let mut config = config(lateness);
        // Not covered: experience_decline reads the score when a negative arrives; a late
        // positive from before it does not re-run the rule (README, Event time: known limits).
        config.rules.experience_decline.enabled = false;
        let sorted = run(&config, events.iter().map(|(e, _)| e.clone()));

        // Arrival order: by event time plus a jitter in [0, lateness).
        let mut shuffled: Vec<(Millis, usize, Touchpoint)> = events
            .into_iter()
            .enumerate()
            .map(|(i, (e, jitter))| (e.occurred_at + lateness * Millis::from(jitter) / 65_536, i, e))
            .collect();
        shuffled.sort_by_key(|(arrives, i, _)| (*arrives, *i));
        let n = shuffled.len();
        let jittered = run(&config, shuffled.into_iter().map(|(_, _, e)| e));

        prop_assert_eq!(jittered.late, 0, "nothing within the lateness is late");
        prop_assert_eq!(jittered.future, 0);
        prop_assert_eq!(jittered.duplicates, 0);
        prop_assert_eq!(sorted.applied, n);
        prop_assert_eq!(jittered.applied, n);
        prop_assert_eq!(sorted.open, jittered.open);
        prop_assert_eq!(sorted.scores, jittered.scores);
    }

    /// The same input order gives the same alerts, ids included, however often it is run (replay
    /// and the live service drive this same core in file / offset order).
    #[test]
    fn the_same_order_gives_the_same_alerts(
        specs in prop::collection::vec(spec(3, JOURNEYS.len(), 2 * MIN), 1..60),
    ) {
        let events: Vec<Touchpoint> = build(&specs).into_iter().map(|(e, _)| e).collect();
        let config = Config::default();
        let a = run(&config, events.iter().cloned());
        let b = run(&config, events);
        prop_assert_eq!(a.alerts, b.alerts);
    }
}

/// Per-customer state never exceeds this, whatever the history (default-sized ring of 10, up to
/// 6 journeys and 6 open cases, long event ids). The measured typical figure is in `tests/memory.rs`.
/// Each case carries its human side (status, three times, actor, resolution, the last action
/// ids: about 100 bytes), which a customer with 6 cases pays 8 times over (the vector's capacity).
const MAX_STATE_BYTES_PER_CUSTOMER: usize = 3_072;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// However many touchpoints, journeys and failures a customer has, the engine keeps at most
    /// `recent_touchpoints` of them and `max_open_cases` open cases, in bounded bytes.
    #[test]
    fn state_stays_bounded(
        specs in prop::collection::vec(spec(2, 12, MIN), 150..400),
        recent in 1usize..=10,
        max_open_cases in 1usize..=6,
        max_journeys in 1usize..=6,
    ) {
        let mut config = config(0);
        config.engine.recent_touchpoints = recent;
        config.engine.max_open_cases = max_open_cases;
        config.engine.max_journeys = max_journeys;
        let engine = Arc::new(Engine::new(config));
        let mut stream = Stream::new(engine.clone());
        let mut out = Vec::new();
        let events = build(&specs);
        for (seq, (ev, _)) in events.into_iter().enumerate() {
            let customer = ev.customer_id.clone();
            stream.push(ev, seq as u64, NOW, NOW, &mut out);
            out.clear();
            if seq % 20 != 0 {
                continue;
            }
            let view = engine.customer(&customer).expect("a customer who just had a touchpoint is held");
            prop_assert!(view.recent_touchpoints.len() <= recent, "{} recent", view.recent_touchpoints.len());
            prop_assert!(view.open_cases.len() <= max_open_cases, "{} open cases", view.open_cases.len());
            let per_customer = engine.state_bytes() / engine.customer_count();
            prop_assert!(per_customer <= MAX_STATE_BYTES_PER_CUSTOMER, "{per_customer} bytes per customer");
        }
        stream.flush(None, NOW, &mut out);
        for c in 0..2 {
            if let Some(view) = engine.customer(&format!("cust-{c}")) {
                prop_assert!(view.recent_touchpoints.len() <= recent);
                prop_assert!(view.open_cases.len() <= max_open_cases);
            }
        }
        let per_customer = engine.state_bytes() / engine.customer_count().max(1);
        prop_assert!(per_customer <= MAX_STATE_BYTES_PER_CUSTOMER, "{per_customer} bytes per customer");
    }
}

/// One input record of a lifecycle run.
#[derive(Debug, Clone)]
enum Input {
    Touch(Touchpoint),
    Act(CaseAction),
}

/// What a lifecycle run ends with: every held case as `/customers/{id}` shows it (status, actor,
/// times, resolution, severity), the alerts as a sorted multiset, and the duplicate count.
fn run_inputs(config: &Config, inputs: &[Input]) -> (Vec<String>, Vec<String>, usize) {
    let engine = Arc::new(Engine::new(config.clone()));
    let mut stream = Stream::new(engine.clone());
    let mut out = Vec::new();
    let mut customers = BTreeSet::new();
    for (seq, input) in inputs.iter().enumerate() {
        match input.clone() {
            Input::Touch(t) => {
                customers.insert(t.customer_id.clone());
                stream.push(t, seq as u64, NOW, NOW, &mut out);
            }
            Input::Act(a) => stream.push_action(a, seq as u64, NOW, NOW, &mut out),
        }
    }
    stream.flush(None, NOW, &mut out);
    let mut alerts = Vec::new();
    let mut duplicates = 0;
    for e in out {
        match e {
            Effect::Alert { alert, .. } => alerts.push(serde_json::to_string(&alert).expect("serializes")),
            Effect::Duplicate { .. } => duplicates += 1,
            _ => {}
        }
    }
    alerts.sort();
    let cases = customers
        .iter()
        .filter_map(|c| engine.customer(c))
        .flat_map(|v| v.open_cases.into_iter())
        .map(|c| serde_json::to_string(&c).expect("serializes"))
        .collect();
    (cases, alerts, duplicates)
}

/// A generated agent's action: which case (of those the touchpoints open), what, how long after
/// the case opened, how late it arrives (fraction of the lateness, of 65 536), and whether it is
/// delivered twice.
fn action_spec() -> impl Strategy<Value = (prop::sample::Index, u8, Millis, u16, bool)> {
    (
        any::<prop::sample::Index>(),
        0u8..3,
        0..6 * HOUR,
        any::<u16>(),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Agents' actions delayed by anything within the lateness relative to the touchpoints leave
    /// the same cases (status, actor, acknowledgement and resolution times, resolution, severity)
    /// as actions applied in event time order; delivering actions twice changes no alert and no
    /// case. A customer's actions keep their order among themselves (one case-management system
    /// writes them, keyed by customer, to one partition). Not covered, and excluded from the
    /// generated input (README, Case lifecycle: known limits): an action whose delay lets a
    /// touchpoint of its customer overtake it (a RESOLVE that arrives after a later negative: the
    /// negative was applied to the open case, and the engine keeps no history to re-run it as a
    /// reopening), and an action delayed past an SLA deadline of its customer (the escalation
    /// went out on time and stays).
    #[test]
    fn actions_within_lateness_converge_and_duplicates_change_nothing(
        specs in prop::collection::vec(spec(3, 1, 2 * MIN), 1..40),
        actions in prop::collection::vec(action_spec(), 0..16),
    ) {
        let lateness = HOUR;
        let config = config(lateness);
        let events: Vec<Touchpoint> = build(&specs).into_iter().map(|(e, _)| e).collect();
        // The cases the touchpoints open, to aim actions at.
        let opened: Vec<(String, String, Millis)> = {
            let engine = Arc::new(Engine::new(config.clone()));
            let mut stream = Stream::new(engine);
            let mut out = Vec::new();
            for (seq, e) in events.iter().cloned().enumerate() {
                stream.push(e, seq as u64, NOW, NOW, &mut out);
            }
            out.into_iter()
                .filter_map(|e| match e {
                    Effect::Alert { alert, .. } if alert.status == AlertStatus::Open => {
                        Some((alert.case_id, alert.customer_id, alert.event_time))
                    }
                    _ => None,
                })
                .collect()
        };
        prop_assume!(!opened.is_empty());
        let kinds = [ActionKind::Acknowledge, ActionKind::Resolve, ActionKind::Reopen];
        let mut acts: Vec<(CaseAction, Millis, bool)> = Vec::new();
        for (i, (pick, kind, after, jitter, twice)) in actions.iter().enumerate() {
            let (case, customer, at) = &opened[pick.index(opened.len())];
            let kind = kinds[usize::from(*kind)];
            let a = CaseAction {
                action_id: format!("act-{i}"),
                case_id: case.clone(),
                customer_id: customer.clone(),
                action: kind,
                actor: format!("agent-{}", i % 3),
                occurred_at: at + after,
                resolution: (kind == ActionKind::Resolve).then(|| "refunded".to_string()),
                channel: None,
                note: None,
            };
            let arrives = a.occurred_at + lateness * Millis::from(*jitter) / 65_536;
            acts.push((a, arrives, *twice));
        }
        acts.sort_by_key(|(a, _, _)| a.occurred_at);
        // A customer's actions arrive in their order.
        let mut last: BTreeMap<String, Millis> = BTreeMap::new();
        for (a, arrives, _) in &mut acts {
            let prev = last.entry(a.customer_id.clone()).or_insert(Millis::MIN);
            *arrives = (*arrives).max(*prev);
            *prev = *arrives;
        }
        acts.retain(|(a, arrives, _)| {
            !events.iter().any(|e| {
                e.customer_id == a.customer_id && e.occurred_at >= a.occurred_at && e.occurred_at <= *arrives
            })
        });
        // Nor an action delayed past a deadline of its customer's cases: an escalation is
        // published when its deadline passes (paging on time rather than waiting out the
        // lateness) and is not taken back when an acknowledgement dated before it arrives later.
        // Every touchpoint and action of the customer may start a round (open, reopen), so each
        // one's SLA deadlines count.
        let slas = [
            config.engine.ack_sla.as_millis() as Millis,
            config.engine.case_sla.as_millis() as Millis,
        ];
        let starts: Vec<(String, Millis)> = events
            .iter()
            .map(|e| (e.customer_id.clone(), e.occurred_at))
            .chain(acts.iter().map(|(a, _, _)| (a.customer_id.clone(), a.occurred_at)))
            .collect();
        acts.retain(|(a, arrives, _)| {
            !starts.iter().any(|(customer, start)| {
                *customer == a.customer_id
                    && slas
                        .iter()
                        .any(|sla| (a.occurred_at..=*arrives).contains(&(start + sla)))
            })
        });

        // Event time order; at a tie the touchpoint first (as replay merges them).
        let mut in_order: Vec<(Millis, u8, usize, Input)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            in_order.push((e.occurred_at, 0, i, Input::Touch(e.clone())));
        }
        for (i, (a, _, _)) in acts.iter().enumerate() {
            in_order.push((a.occurred_at, 1, i, Input::Act(a.clone())));
        }
        in_order.sort_by_key(|(t, k, i, _)| (*t, *k, *i));
        let in_order: Vec<Input> = in_order.into_iter().map(|(_, _, _, x)| x).collect();

        // Actions delayed within the lateness, some delivered twice.
        let mut delayed: Vec<(Millis, u8, usize, Input)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            delayed.push((e.occurred_at, 0, i, Input::Touch(e.clone())));
        }
        let mut twice = Vec::new();
        for (i, (a, arrives, dup)) in acts.iter().enumerate() {
            delayed.push((*arrives, 1, i, Input::Act(a.clone())));
            if *dup {
                twice.push((*arrives, 2, i, Input::Act(a.clone())));
            }
        }
        delayed.sort_by_key(|(t, k, i, _)| (*t, *k, *i));
        let once: Vec<Input> = delayed.iter().map(|(_, _, _, x)| x.clone()).collect();
        delayed.extend(twice);
        delayed.sort_by_key(|(t, k, i, _)| (*t, *k, *i));
        let with_copies: Vec<Input> = delayed.into_iter().map(|(_, _, _, x)| x).collect();

        let (cases_a, _, _) = run_inputs(&config, &in_order);
        let (cases_b, alerts_b, dups_b) = run_inputs(&config, &once);
        let (cases_c, alerts_c, dups_c) = run_inputs(&config, &with_copies);
        prop_assert_eq!(&cases_a, &cases_b);
        prop_assert_eq!(&cases_b, &cases_c);
        prop_assert_eq!(alerts_b, alerts_c, "a copy of an action publishes nothing");
        prop_assert!(dups_c >= dups_b);
    }
}
