//! Unit tests of the rules, the case lifecycle, the watermark and the timers.

use super::*;
use crate::model::{Outcome, TouchpointKind};

const MIN: Millis = 60_000;
const HOUR: Millis = 60 * MIN;
const DAY: Millis = 24 * HOUR;
const T0: Millis = 1_772_359_200_000;

struct Ev(Touchpoint);

impl Ev {
    fn new(id: &str, customer: &str, at: Millis, touchpoint: &str, outcome: Outcome) -> Self {
        Ev(Touchpoint {
            event_id: id.into(),
            customer_id: customer.into(),
            occurred_at: T0 + at,
            channel: Channel::Chat,
            kind: TouchpointKind::Interaction,
            direction: Direction::Inbound,
            journey: "billing".into(),
            touchpoint: touchpoint.into(),
            outcome,
            sentiment: None,
            customer_tier: None,
            agent_id: None,
            attributes: BTreeMap::new(),
        })
    }
    fn journey(mut self, j: &str) -> Self {
        self.0.journey = j.into();
        self
    }
    fn channel(mut self, c: Channel) -> Self {
        self.0.channel = c;
        self
    }
    fn tier(mut self, t: &str) -> Self {
        self.0.customer_tier = Some(t.into());
        self
    }
    fn outbound(mut self) -> Self {
        self.0.direction = Direction::Outbound;
        self
    }
    fn engagement(mut self) -> Self {
        self.0.kind = TouchpointKind::Engagement;
        self
    }
    fn sentiment(mut self, s: f64) -> Self {
        self.0.sentiment = Some(s);
        self
    }
}

/// The shipped defaults, without the ack SLA: these tests are about the recovery rules, timers
/// and watermark; the human side has tests of its own (`human_side` below) on the full defaults.
fn base() -> Config {
    let mut c = Config::default();
    c.engine.ack_sla = std::time::Duration::from_secs(365 * 86_400);
    c
}

fn config_with(lateness: Millis) -> Config {
    let mut c = base();
    c.engine.allowed_lateness = std::time::Duration::from_millis(lateness as u64);
    c
}

/// Pushes every event then flushes; returns every effect.
fn run_all(config: Config, events: Vec<Ev>) -> (Vec<Effect>, Arc<Engine>) {
    let engine = Arc::new(Engine::new(config));
    let mut stream = Stream::new(engine.clone());
    let mut out = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        stream.push(e.0, i as u64, ARRIVAL_UNCHECKED, 0, &mut out);
    }
    stream.flush(None, 0, &mut out);
    (out, engine)
}

fn alerts(effects: &[Effect]) -> Vec<&RecoveryAlert> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Alert { alert, .. } => Some(&**alert),
            _ => None,
        })
        .collect()
}

fn summary(effects: &[Effect]) -> Vec<(AlertStatus, String, Severity)> {
    alerts(effects)
        .iter()
        .map(|a| (a.status, a.rule.clone(), a.severity))
        .collect()
}

#[test]
fn moment_of_truth_failure_opens_once_escalates_once() {
    let (fx, _) = run_all(
        base(),
        vec![
            Ev::new("a", "c", 0, "payment.transfer", Outcome::Failure),
            Ev::new("b", "c", MIN, "payment.transfer", Outcome::Failure),
            Ev::new("c", "c", 2 * MIN, "payment.transfer", Outcome::Abandoned),
        ],
    );
    assert_eq!(
        summary(&fx),
        [
            (AlertStatus::Open, "critical_negative".into(), Severity::High),
            (
                AlertStatus::Escalated,
                "repeat_negative".into(),
                Severity::Critical
            ),
        ]
    );
    let a = alerts(&fx);
    assert_eq!(a[0].case_id, a[1].case_id);
    assert_eq!(a[0].trigger_event_id, "a");
    assert_eq!(a[1].trigger_event_id, "b");
}

#[test]
fn vip_failure_is_critical_and_low_stakes_failure_is_not_a_case() {
    let (fx, _) = run_all(
        base(),
        vec![
            Ev::new("a", "vip", 0, "account.unlock", Outcome::Failure).tier("vip"),
            Ev::new("b", "std", 0, "faq.view", Outcome::Failure),
        ],
    );
    assert_eq!(
        summary(&fx),
        [(AlertStatus::Open, "critical_negative".into(), Severity::Critical)]
    );
    assert_eq!(alerts(&fx)[0].customer_id, "vip");
}

#[test]
fn engagement_weighs_a_quarter_and_cannot_be_critical() {
    let (fx, engine) = run_all(
        base(),
        vec![
            Ev::new("a", "c", 0, "payment.reminder", Outcome::Failure)
                .engagement()
                .outbound(),
        ],
    );
    assert!(alerts(&fx).is_empty());
    assert_eq!(engine.customer("c").unwrap().experience_score, -0.75);
}

#[test]
fn positive_on_the_journey_recovers_with_time_to_recover() {
    let (fx, engine) = run_all(
        base(),
        vec![
            Ev::new("a", "c", 0, "order.delivery", Outcome::Failure),
            Ev::new("b", "c", 90 * MIN, "order.callback", Outcome::Pending)
                .sentiment(0.7)
                .outbound(),
            Ev::new("c", "c", 100 * MIN, "order.delivery", Outcome::Failure),
        ],
    );
    let a = alerts(&fx);
    assert_eq!(a[1].status, AlertStatus::Recovered);
    assert_eq!(a[1].time_to_recover_ms, Some(90 * MIN));
    // A new failure after recovery is a new case.
    assert_eq!(a[2].status, AlertStatus::Open);
    assert_ne!(a[2].case_id, a[0].case_id);
    assert_eq!(engine.customer("c").unwrap().open_cases.len(), 1);
}

#[test]
fn positive_on_another_journey_does_not_recover() {
    let (fx, _) = run_all(
        base(),
        vec![
            Ev::new("a", "c", 0, "payment.transfer", Outcome::Failure),
            Ev::new("b", "c", MIN, "plan.view", Outcome::Success).journey("plans"),
        ],
    );
    assert_eq!(summary(&fx).len(), 1);
}

#[test]
fn sla_breach_fires_on_event_time_from_other_customers_traffic() {
    let (fx, _) = run_all(
        config_with(0),
        vec![
            Ev::new("a", "c", 0, "claim.submit", Outcome::Failure),
            Ev::new("x", "other", 4 * HOUR - 1, "faq.view", Outcome::Success),
        ],
    );
    assert_eq!(summary(&fx).len(), 1, "not yet due");
    let (fx, _) = run_all(
        config_with(0),
        vec![
            Ev::new("a", "c", 0, "claim.submit", Outcome::Failure),
            Ev::new("x", "other", 4 * HOUR, "faq.view", Outcome::Success),
            Ev::new("b", "c", 5 * HOUR, "claim.submit", Outcome::Failure),
        ],
    );
    let a = alerts(&fx);
    assert_eq!(
        summary(&fx)[1],
        (AlertStatus::Escalated, "sla_breach".into(), Severity::Critical)
    );
    assert_eq!(a[1].event_time, T0 + 4 * HOUR);
    assert_eq!(
        a.len(),
        2,
        "a case escalates once: the later failure pages no one"
    );
}

#[test]
fn case_expires_after_thirty_idle_days_and_customer_is_evicted() {
    let (fx, engine) = run_all(
        config_with(0),
        vec![
            Ev::new("a", "c", 0, "claim.submit", Outcome::Failure),
            Ev::new("b", "c", HOUR, "claim.status", Outcome::Pending),
            Ev::new("x", "other", 31 * DAY, "faq.view", Outcome::Success),
        ],
    );
    let a = alerts(&fx);
    assert_eq!(a.last().unwrap().status, AlertStatus::Expired);
    assert_eq!(a.last().unwrap().event_time, T0 + HOUR + 30 * DAY);
    assert!(engine.customer("c").is_none(), "idle customer evicted");
    assert!(fx.iter().any(|e| matches!(e, Effect::Evicted { .. })));
    assert_eq!(engine.customer_count(), 1);
}

#[test]
fn experience_decline_opens_when_score_reaches_threshold() {
    let events = (0..7)
        .map(|i| {
            Ev::new(&format!("e{i}"), "c", i * MIN, "survey.call", Outcome::Failure)
                .outbound()
                .journey(&format!("j{i}"))
        })
        .collect();
    let (fx, _) = run_all(base(), events);
    let a = alerts(&fx);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].rule, "experience_decline");
    // Six failures a minute apart decay to just above -6; the seventh crosses the threshold.
    assert_eq!(a[0].trigger_event_id, "e6");
    assert!(
        a[0].experience_score <= -6.0 && a[0].experience_score > -7.0,
        "{}",
        a[0].experience_score
    );
}

#[test]
fn high_effort_needs_four_inbound_contacts_without_success() {
    let contacts = |outcome_of_third: Outcome| {
        (0..4)
            .map(|i| {
                let o = if i == 2 {
                    outcome_of_third
                } else {
                    Outcome::Pending
                };
                Ev::new(&format!("e{i}"), "c", i * HOUR, "support.call", o).channel(Channel::Voice)
            })
            .collect::<Vec<_>>()
    };
    let (fx, _) = run_all(base(), contacts(Outcome::Pending));
    assert_eq!(
        summary(&fx),
        [(AlertStatus::Open, "high_effort".into(), Severity::Medium)]
    );
    let (fx, _) = run_all(base(), contacts(Outcome::Success));
    assert!(alerts(&fx).is_empty(), "a success resets the effort count");
}

#[test]
fn high_effort_window_is_24_hours() {
    let events = (0..4)
        .map(|i| {
            Ev::new(
                &format!("e{i}"),
                "c",
                i * 9 * HOUR,
                "support.call",
                Outcome::Pending,
            )
        })
        .collect();
    let (fx, _) = run_all(base(), events);
    assert!(alerts(&fx).is_empty(), "27h span is not within 24h");
}

#[test]
fn channel_hopping_three_channels() {
    let events = [Channel::Chat, Channel::Email, Channel::Voice]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Ev::new(
                &format!("e{i}"),
                "c",
                i as Millis * HOUR,
                "support.contact",
                Outcome::Unknown,
            )
            .channel(*c)
        })
        .collect();
    let (fx, _) = run_all(base(), events);
    assert_eq!(
        summary(&fx),
        [(AlertStatus::Open, "channel_hopping".into(), Severity::Medium)]
    );
    assert!(alerts(&fx)[0].reason.contains("EMAIL, VOICE, CHAT"));
}

#[test]
fn duplicate_changes_nothing() {
    let (fx, engine) = run_all(
        config_with(0),
        vec![
            Ev::new("a", "c", 0, "payment.transfer", Outcome::Failure),
            Ev::new("a", "c", 0, "payment.transfer", Outcome::Failure),
            Ev::new("b", "c", MIN, "faq.view", Outcome::Pending),
            Ev::new("a", "c", 0, "payment.transfer", Outcome::Failure),
        ],
    );
    assert_eq!(alerts(&fx).len(), 1);
    assert_eq!(
        fx.iter()
            .filter(|e| matches!(e, Effect::Duplicate { .. }))
            .count(),
        2
    );
    assert_eq!(engine.customer("c").unwrap().recent_touchpoints.len(), 2);
}

#[test]
fn late_event_is_reported_not_applied() {
    let (fx, engine) = run_all(
        config_with(10 * MIN),
        vec![
            Ev::new("a", "c", HOUR, "faq.view", Outcome::Pending),
            Ev::new("late", "c", HOUR - 11 * MIN, "payment.transfer", Outcome::Failure),
            Ev::new("ok", "c", HOUR - 9 * MIN, "faq.view", Outcome::Pending),
        ],
    );
    assert!(alerts(&fx).is_empty());
    let late: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Late { seq, behind_ms, .. } => Some((*seq, *behind_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(late, [(1, MIN)]);
    let recent: Vec<_> = engine
        .customer("c")
        .unwrap()
        .recent_touchpoints
        .iter()
        .map(|r| r.event_id.clone())
        .collect();
    assert_eq!(recent, ["ok", "a"], "applied in event-time order");
}

fn statuses(effects: &[Effect]) -> Vec<(AlertStatus, String)> {
    alerts(effects)
        .iter()
        .map(|a| (a.status, a.rule.clone()))
        .collect()
}

#[test]
fn a_touchpoint_is_acted_on_when_it_arrives_whatever_the_lateness() {
    // The shipped lateness (1 h): the critical failure pages in the same push, no later touchpoint needed.
    let engine = Arc::new(Engine::new(base()));
    let mut stream = Stream::new(engine.clone());
    let mut out = Vec::new();
    let ev = Ev::new("a", "c", 0, "payment.transfer", Outcome::Failure).0;
    stream.push(ev, 0, T0, T0, &mut out);
    assert_eq!(
        statuses(&out),
        [(AlertStatus::Open, "critical_negative".to_string())]
    );
    assert!(matches!(out.last(), Some(Effect::Applied { seq: 0, .. })));
}

#[test]
fn late_within_lateness_is_applied_and_older_is_dead_lettered() {
    let engine = Arc::new(Engine::new(base()));
    let mut stream = Stream::new(engine.clone());
    let mut out = Vec::new();
    let at = |m: Millis| T0 + m;
    stream.push(
        Ev::new("a", "c", 2 * HOUR, "faq.view", Outcome::Pending).0,
        0,
        at(2 * HOUR),
        at(2 * HOUR),
        &mut out,
    );
    // 59 minutes behind the clock: within the hour, applied where it belongs.
    out.clear();
    stream.push(
        Ev::new("b", "d", HOUR + MIN, "payment.transfer", Outcome::Failure).0,
        1,
        at(2 * HOUR),
        at(2 * HOUR),
        &mut out,
    );
    assert_eq!(
        statuses(&out),
        [(AlertStatus::Open, "critical_negative".to_string())]
    );
    assert_eq!(alerts(&out)[0].event_time, at(HOUR + MIN));
    // Two minutes further behind than the hour: late, not applied.
    out.clear();
    stream.push(
        Ev::new("c", "e", HOUR - 2 * MIN, "payment.transfer", Outcome::Failure).0,
        2,
        at(2 * HOUR),
        at(2 * HOUR),
        &mut out,
    );
    assert!(matches!(out.as_slice(), [Effect::Late { seq: 2, behind_ms, .. }] if *behind_ms == 2 * MIN));
    assert!(engine.customer("e").is_none());
}

#[test]
fn a_wrong_clock_is_one_dead_letter_and_moves_nothing() {
    let engine = Arc::new(Engine::new(base()));
    let mut stream = Stream::new(engine.clone());
    let mut out = Vec::new();
    // Written at T0, stamped 6 minutes later (max_clock_skew is 5 minutes).
    let ev = Ev::new("f", "c", 6 * MIN, "payment.transfer", Outcome::Failure).0;
    stream.push(ev, 0, T0, T0, &mut out);
    assert!(matches!(out.as_slice(), [Effect::Future { seq: 0, ahead_ms, .. }] if *ahead_ms == 6 * MIN));
    assert_eq!(stream.clock(), Millis::MIN, "the clock did not move");
    // A touchpoint from an hour earlier still counts: the wrong clock poisoned nothing.
    out.clear();
    stream.push(
        Ev::new("g", "c", -HOUR + MIN, "faq.view", Outcome::Pending).0,
        1,
        T0,
        T0,
        &mut out,
    );
    stream.push(
        Ev::new("h", "c", 0, "faq.view", Outcome::Pending).0,
        2,
        T0,
        T0,
        &mut out,
    );
    assert!(out.iter().all(|e| matches!(e, Effect::Applied { .. })), "{out:?}");
}

#[test]
fn a_late_success_before_the_fourth_call_withdraws_the_high_effort_case() {
    let engine = Arc::new(Engine::new(base()));
    let mut stream = Stream::new(engine.clone());
    let mut out = Vec::new();
    for (i, m) in [0, 10, 20, 40].into_iter().enumerate() {
        let ev = Ev::new(
            &format!("call{i}"),
            "c",
            m * MIN,
            "support.call",
            Outcome::Pending,
        )
        .0;
        stream.push(ev, i as u64, ARRIVAL_UNCHECKED, T0, &mut out);
    }
    assert_eq!(statuses(&out), [(AlertStatus::Open, "high_effort".to_string())]);
    let case_id = alerts(&out)[0].case_id.clone();
    out.clear();
    // The success happened at minute 30, before the fourth call, and arrives after it.
    let ok = Ev::new("ok", "c", 30 * MIN, "support.call", Outcome::Success).0;
    stream.push(ok, 4, ARRIVAL_UNCHECKED, T0, &mut out);
    assert_eq!(
        statuses(&out),
        [(AlertStatus::Withdrawn, "high_effort".to_string())]
    );
    assert_eq!(
        alerts(&out)[0].case_id,
        case_id,
        "the correction is on the same case"
    );
    assert_eq!(alerts(&out)[0].alert_id, format!("{case_id}-withdrawn"));
    assert!(engine.customer("c").unwrap().open_cases.is_empty());
    // Event-time order gives no case at all.
    let sorted = [0, 10, 20, 30, 40].map(|m| {
        let outcome = if m == 30 {
            Outcome::Success
        } else {
            Outcome::Pending
        };
        Ev::new(&format!("s{m}"), "c", m * MIN, "support.call", outcome)
    });
    let (fx, engine) = run_all(base(), sorted.into_iter().collect());
    assert!(alerts(&fx).is_empty());
    assert!(engine.customer("c").unwrap().open_cases.is_empty());
}

#[test]
fn a_late_negative_before_a_recovery_pages_no_one() {
    let engine = Arc::new(Engine::new(base()));
    let mut stream = Stream::new(engine.clone());
    let mut out = Vec::new();
    stream.push(
        Ev::new("ok", "c", 20 * MIN, "payment.transfer", Outcome::Success).0,
        0,
        ARRIVAL_UNCHECKED,
        T0,
        &mut out,
    );
    // The failure happened at minute 10; the customer succeeded at minute 20.
    stream.push(
        Ev::new("bad", "c", 10 * MIN, "payment.transfer", Outcome::Failure).0,
        1,
        ARRIVAL_UNCHECKED,
        T0,
        &mut out,
    );
    assert!(alerts(&out).is_empty(), "{:?}", statuses(&out));
    assert!(engine.customer("c").unwrap().open_cases.is_empty());
}

#[test]
fn an_idle_stream_follows_the_wall_clock_so_the_sla_fires_on_time() {
    let engine = Arc::new(Engine::new(base()));
    let mut stream = Stream::new(engine.clone());
    let mut out = Vec::new();
    stream.push(
        Ev::new("a", "c", 0, "payment.transfer", Outcome::Failure).0,
        0,
        T0,
        T0,
        &mut out,
    );
    out.clear();
    // Not idle long enough yet (idle_timeout 1 s): the clock stays.
    stream.tick(T0 + 500, &mut out);
    assert_eq!(stream.timer_clock(), T0);
    // Idle: the clock follows the wall clock; nothing is due before the 4 h SLA.
    stream.tick(T0 + 4 * HOUR - 1, &mut out);
    assert!(out.is_empty());
    stream.tick(T0 + 4 * HOUR, &mut out);
    assert_eq!(
        statuses(&out),
        [(AlertStatus::Escalated, "sla_breach".to_string())]
    );
    assert_eq!(alerts(&out)[0].event_time, T0 + 4 * HOUR);
    // The idle wall clock moved timers only: a backlog from before the pause is not late.
    out.clear();
    stream.push(
        Ev::new("b", "d", 10 * MIN, "faq.view", Outcome::Pending).0,
        1,
        T0 + 10 * MIN,
        T0 + 4 * HOUR,
        &mut out,
    );
    assert!(
        matches!(out.as_slice(), [Effect::Applied { seq: 1, .. }]),
        "{out:?}"
    );
}

#[test]
fn a_restored_stream_with_no_input_fires_its_timers_once_idle() {
    let engine = Arc::new(Engine::new(base()));
    let mut stream = Stream::new(engine.clone());
    let mut out = Vec::new();
    stream.push(
        Ev::new("a", "c", 0, "payment.transfer", Outcome::Failure).0,
        0,
        T0,
        T0,
        &mut out,
    );
    // A new stream over the same state, as after a restore: no input arrives.
    let mut restored = Stream::new(engine.clone());
    restored.after_restore();
    out.clear();
    restored.tick(T0 + 5 * HOUR, &mut out); // the first tick starts the idle count
    assert!(out.is_empty());
    restored.tick(T0 + 5 * HOUR + 1_000, &mut out);
    assert_eq!(
        statuses(&out),
        [(AlertStatus::Escalated, "sla_breach".to_string())]
    );
}

#[test]
fn expiries_wait_for_the_lateness_so_a_late_touch_keeps_its_case() {
    let engine = Arc::new(Engine::new(base()));
    let mut stream = Stream::new(engine.clone());
    let mut out = Vec::new();
    stream.push(
        Ev::new("a", "c", 0, "payment.transfer", Outcome::Failure).0,
        0,
        ARRIVAL_UNCHECKED,
        T0,
        &mut out,
    );
    // Another customer moves the clock to 30 days + 30 minutes: the case's expiry (30 d) has
    // passed, but a touchpoint of the last hour may still arrive.
    stream.push(
        Ev::new("x", "d", 30 * DAY + 30 * MIN, "faq.view", Outcome::Pending).0,
        1,
        ARRIVAL_UNCHECKED,
        T0,
        &mut out,
    );
    assert!(!statuses(&out).contains(&(AlertStatus::Expired, "case_expired".to_string())));
    // It does: 29 days 23:50 after the case opened, within the lateness.
    stream.push(
        Ev::new("b", "c", 30 * DAY - 10 * MIN, "faq.view", Outcome::Pending).0,
        2,
        ARRIVAL_UNCHECKED,
        T0,
        &mut out,
    );
    assert_eq!(engine.customer("c").unwrap().open_cases.len(), 1);
}

#[test]
fn open_case_limit_expires_the_oldest_loudly() {
    let mut c = base();
    c.engine.max_open_cases = 2;
    let events = (0..3)
        .map(|i| {
            Ev::new(
                &format!("e{i}"),
                "c",
                i * MIN,
                "payment.transfer",
                Outcome::Failure,
            )
            .journey(&format!("j{i}"))
        })
        .collect();
    let (fx, engine) = run_all(c, events);
    let s = summary(&fx);
    assert_eq!(s.len(), 4);
    assert_eq!(s[2], (AlertStatus::Expired, "case_limit".into(), Severity::High));
    assert_eq!(engine.customer("c").unwrap().open_cases.len(), 2);
}

#[test]
fn alert_carries_at_most_ten_recent_touchpoints_newest_last() {
    let mut events: Vec<Ev> = (0..14)
        .map(|i| {
            Ev::new(&format!("e{i}"), "c", i * MIN, "faq.view", Outcome::Pending).journey(&format!("j{i}"))
        })
        .collect();
    events.push(Ev::new(
        "boom",
        "c",
        20 * MIN,
        "payment.transfer",
        Outcome::Failure,
    ));
    let (fx, _) = run_all(base(), events);
    let a = alerts(&fx);
    assert_eq!(a[0].recent_touchpoints.len(), 10);
    assert_eq!(a[0].recent_touchpoints.last().unwrap().event_id, "boom");
    assert_eq!(a[0].recent_touchpoints[0].event_id, "e5");
}

#[test]
fn alert_ids_are_deterministic() {
    let evs = || {
        vec![
            Ev::new("a", "c", 0, "payment.transfer", Outcome::Failure),
            Ev::new("b", "c", MIN, "payment.transfer", Outcome::Success),
        ]
    };
    let (a, _) = run_all(base(), evs());
    let (b, _) = run_all(base(), evs());
    assert_eq!(a, b);
}

#[test]
fn shed_drops_the_least_recently_active_customers_without_cases() {
    let mut events: Vec<Ev> = (0..10)
        .map(|i| {
            Ev::new(
                &format!("e{i}"),
                &format!("c{i}"),
                i * MIN,
                "faq.view",
                Outcome::Pending,
            )
        })
        .collect();
    // c-case is the oldest of all but has an open case: never shed.
    events.insert(
        0,
        Ev::new("x", "c-case", -MIN, "payment.transfer", Outcome::Failure),
    );
    let (_, engine) = run_all(config_with(0), events);
    let mut shed: Vec<String> = engine.shed(3).iter().map(|k| k.to_string()).collect();
    shed.sort();
    assert_eq!(shed, ["c0", "c1", "c2"]);
    assert_eq!(engine.customer_count(), 8);
    assert!(engine.customer("c-case").is_some());
    assert!(engine.customer("c3").is_some());
}

#[test]
fn long_customer_ids_behave_like_short_ones() {
    let long = "customer-id-well-beyond-the-twenty-two-bytes-held-inline";
    let run = |customer: &str| {
        let events = vec![
            Ev::new("a", customer, 0, "payment.transfer", Outcome::Failure),
            Ev::new("a", customer, MIN, "payment.transfer", Outcome::Failure),
            Ev::new("b", customer, 2 * MIN, "payment.transfer", Outcome::Success),
        ];
        let (fx, engine) = run_all(config_with(0), events);
        let applied: Vec<String> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Applied { customer, .. } => Some(customer.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(applied, [customer, customer]);
        assert!(engine.customer(customer).is_some());
        assert_eq!(engine.customer_count(), 1);
        (
            summary(&fx),
            engine.customer(customer).unwrap().recent_touchpoints,
        )
    };
    assert_eq!(run("c"), run(long));
}

/// The case's human side: acknowledgement, resolution, reopening, the ack SLA, routing.
mod human_side {
    use super::*;
    use crate::config::Route;

    fn act(id: &str, case: &str, customer: &str, at: Millis, kind: ActionKind) -> CaseAction {
        CaseAction {
            action_id: id.into(),
            case_id: case.into(),
            customer_id: customer.into(),
            action: kind,
            actor: "agent-7".into(),
            occurred_at: T0 + at,
            resolution: (kind == ActionKind::Resolve).then(|| "refunded".to_string()),
            channel: Some(Channel::Voice),
            note: None,
        }
    }

    /// A stream on the shipped defaults with one payment failure at T0 (a HIGH case); its id.
    fn opened() -> (Stream, String, Vec<Effect>) {
        let engine = Arc::new(Engine::new(Config::default()));
        let mut stream = Stream::new(engine);
        let mut out = Vec::new();
        stream.push(
            Ev::new("f1", "c", 0, "payment.transfer", Outcome::Failure).0,
            0,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        let case = alerts(&out)[0].case_id.clone();
        (stream, case, out)
    }

    fn last_of_seq(out: &[Effect], seq: u64) -> &Effect {
        out.iter()
            .rfind(|e| match e {
                Effect::Applied { seq: s, .. } | Effect::Duplicate { seq: s } => *s == seq,
                Effect::Rejected { seq: s, .. } => *s == seq,
                _ => false,
            })
            .expect("every push ends with one outcome for its seq")
    }

    fn rejected_class(out: &[Effect], seq: u64) -> Option<&'static str> {
        match last_of_seq(out, seq) {
            Effect::Rejected { class, .. } => Some(class),
            _ => None,
        }
    }

    #[test]
    fn acknowledge_then_resolve_publishes_who_and_how_long() {
        let (mut stream, case, _) = opened();
        let mut out = Vec::new();
        stream.push_action(
            act("a1", &case, "c", 5 * MIN, ActionKind::Acknowledge),
            1,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        stream.push_action(
            act("a2", &case, "c", HOUR, ActionKind::Resolve),
            2,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        let a = alerts(&out);
        assert_eq!(a.len(), 2, "{out:?}");
        assert_eq!(a[0].status, AlertStatus::Acknowledged);
        assert_eq!(a[0].actor.as_deref(), Some("agent-7"));
        assert_eq!(a[0].time_to_acknowledge_ms, Some(5 * MIN));
        assert_eq!(a[0].trigger_event_id, "a1");
        assert_eq!(a[1].status, AlertStatus::Resolved);
        assert_eq!(a[1].time_to_resolve_ms, Some(HOUR));
        assert_eq!(a[1].resolution.as_deref(), Some("refunded"));
        assert_eq!(a[1].queue, "default");
        assert!(matches!(last_of_seq(&out, 1), Effect::Applied { .. }));
        assert!(matches!(last_of_seq(&out, 2), Effect::Applied { .. }));
        let view = stream.engine().customer("c").unwrap();
        assert_eq!(view.open_cases[0].status, "RESOLVED");
        assert_eq!(view.open_cases[0].actor.as_deref(), Some("agent-7"));
        assert_eq!(view.open_cases[0].acknowledged_at, Some(T0 + 5 * MIN));
        assert_eq!(view.open_cases[0].resolved_at, Some(T0 + HOUR));
        // No ack SLA breach: the case was acknowledged in time.
        out.clear();
        stream.flush(Some(T0 + 2 * HOUR), 0, &mut out);
        assert!(alerts(&out).is_empty(), "{out:?}");
    }

    /// The held-cases gauge's counts follow the lifecycle: OPEN, ACKNOWLEDGED, RESOLVED, and
    /// every (queue, status) pair is reported, zero or not.
    #[test]
    fn state_totals_count_held_cases_by_queue_and_status() {
        let count = |stream: &Stream, status: &'static str| {
            stream.engine().state_totals().cases[&("default".to_string(), status)]
        };
        let (mut stream, case, _) = opened();
        assert_eq!(stream.engine().state_totals().cases.len(), 4);
        assert_eq!(count(&stream, "OPEN"), 1);
        assert_eq!(count(&stream, "ACKNOWLEDGED"), 0);
        let mut out = Vec::new();
        stream.push_action(
            act("a1", &case, "c", MIN, ActionKind::Acknowledge),
            1,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        assert_eq!(count(&stream, "OPEN"), 0);
        assert_eq!(count(&stream, "ACKNOWLEDGED"), 1);
        stream.push_action(
            act("a2", &case, "c", HOUR, ActionKind::Resolve),
            2,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        assert_eq!(count(&stream, "ACKNOWLEDGED"), 0);
        assert_eq!(count(&stream, "RESOLVED"), 1);
        let totals = stream.engine().state_totals();
        assert_eq!(totals.bytes, stream.engine().state_bytes());
        assert_eq!(totals.cases.values().sum::<usize>(), 1);
    }

    #[test]
    fn a_repeated_action_id_changes_nothing() {
        let (mut stream, case, _) = opened();
        let mut out = Vec::new();
        let ack = act("a1", &case, "c", MIN, ActionKind::Acknowledge);
        stream.push_action(ack.clone(), 1, ARRIVAL_UNCHECKED, 0, &mut out);
        let before = serde_json::to_value(stream.engine().customer("c").unwrap()).unwrap();
        out.clear();
        stream.push_action(ack, 2, ARRIVAL_UNCHECKED, 0, &mut out);
        assert_eq!(out, [Effect::Duplicate { seq: 2 }]);
        assert_eq!(
            serde_json::to_value(stream.engine().customer("c").unwrap()).unwrap(),
            before
        );
    }

    #[test]
    fn bad_actions_are_rejected_with_a_class_and_never_quote_a_value() {
        let (mut stream, case, _) = opened();
        let mut out = Vec::new();
        let mut seq = 0;
        let mut push = |stream: &mut Stream, a: CaseAction, out: &mut Vec<Effect>| {
            seq += 1;
            stream.push_action(a, seq, ARRIVAL_UNCHECKED, 0, out);
            seq
        };
        let s = push(
            &mut stream,
            act("x1", "0123456789abcdef", "c", MIN, ActionKind::Acknowledge),
            &mut out,
        );
        assert!(matches!(
            rejected_class(&out, s),
            Some("unknown_case" | "customer_mismatch")
        ));
        let s = push(
            &mut stream,
            act("x2", &case, "someone-else", MIN, ActionKind::Acknowledge),
            &mut out,
        );
        assert_eq!(rejected_class(&out, s), Some("customer_mismatch"));
        let s = push(
            &mut stream,
            act("x3", "not-a-case", "c", MIN, ActionKind::Acknowledge),
            &mut out,
        );
        assert_eq!(rejected_class(&out, s), Some("malformed"));
        let s = push(
            &mut stream,
            act("x4", &case, "c", MIN, ActionKind::Reopen),
            &mut out,
        );
        assert_eq!(rejected_class(&out, s), Some("not_resolved"));
        push(
            &mut stream,
            act("x5", &case, "c", MIN, ActionKind::Acknowledge),
            &mut out,
        );
        let s = push(
            &mut stream,
            act("x6", &case, "c", 2 * MIN, ActionKind::Acknowledge),
            &mut out,
        );
        assert_eq!(rejected_class(&out, s), Some("already_acknowledged"));
        push(
            &mut stream,
            act("x7", &case, "c", 3 * MIN, ActionKind::Resolve),
            &mut out,
        );
        let s = push(
            &mut stream,
            act("x8", &case, "c", 4 * MIN, ActionKind::Resolve),
            &mut out,
        );
        assert_eq!(rejected_class(&out, s), Some("closed_case"));
        let mut wrong_clock = act("x9", &case, "c", DAY, ActionKind::Reopen);
        wrong_clock.note = Some("secret note".into());
        out.clear();
        stream.push_action(wrong_clock, 99, T0, 0, &mut out);
        assert_eq!(rejected_class(&out, 99), Some("future"));
        for e in &out {
            if let Effect::Rejected { reason, .. } = e {
                assert!(!reason.contains("secret") && !reason.contains(&case), "{reason}");
            }
        }
    }

    #[test]
    fn a_zero_ack_sla_is_off_and_the_recovery_sla_still_fires() {
        let mut config = Config::default();
        config.engine.ack_sla = std::time::Duration::ZERO;
        let mut stream = Stream::new(Arc::new(Engine::new(config)));
        let mut out = Vec::new();
        stream.push(
            Ev::new("f1", "c", 0, "payment.transfer", Outcome::Failure).0,
            0,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        out.clear();
        stream.tick(1_000, &mut out); // first tick: the stream starts counting idleness
        stream.tick(T0 + 5 * HOUR, &mut out);
        let rules: Vec<String> = alerts(&out).iter().map(|a| a.rule.clone()).collect();
        assert_eq!(rules, ["sla_breach"], "{out:?}");
    }

    #[test]
    fn an_unacknowledged_case_escalates_once_on_the_ack_sla_even_on_a_quiet_partition() {
        let (mut stream, case, _) = opened();
        let mut out = Vec::new();
        stream.tick(1_000, &mut out); // first tick: the stream starts counting idleness
        let now = T0 + 20 * MIN;
        stream.tick(now, &mut out);
        let a = alerts(&out);
        assert_eq!(a.len(), 1, "{out:?}");
        assert_eq!(
            (a[0].status, a[0].rule.as_str()),
            (AlertStatus::Escalated, "ack_sla_breach")
        );
        assert_eq!(a[0].event_time, T0 + 15 * MIN);
        assert_eq!(
            a[0].severity,
            Severity::High,
            "an escalation to people keeps the severity"
        );
        assert_eq!(a[0].alert_id, format!("{case}-escalated-ack"));
        out.clear();
        stream.tick(now + HOUR, &mut out);
        assert!(alerts(&out).is_empty(), "once only: {out:?}");
        // A late acknowledgement still applies, and says how long it took.
        stream.push_action(
            act("a1", &case, "c", 30 * MIN, ActionKind::Acknowledge),
            5,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        assert_eq!(alerts(&out)[0].time_to_acknowledge_ms, Some(30 * MIN));
        // The recovery SLA keeps its meaning: it fires at 4 h whatever the agents did.
        out.clear();
        stream.tick(T0 + 5 * HOUR, &mut out);
        let a = alerts(&out);
        assert_eq!(a.len(), 1, "{out:?}");
        assert_eq!(a[0].rule, "sla_breach");
        assert_eq!(
            a[0].actor.as_deref(),
            Some("agent-7"),
            "every alert says who has the case"
        );
    }

    #[test]
    fn an_ack_after_the_deadline_finds_the_breach_whichever_arrives_first() {
        let (mut stream, case, _) = opened();
        let mut out = Vec::new();
        stream.push_action(
            act("a1", &case, "c", 20 * MIN, ActionKind::Acknowledge),
            1,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        let s: Vec<_> = alerts(&out).iter().map(|a| (a.status, a.rule.clone())).collect();
        assert_eq!(
            s,
            [
                (AlertStatus::Escalated, "ack_sla_breach".to_string()),
                (AlertStatus::Acknowledged, "acknowledged".to_string())
            ]
        );
    }

    #[test]
    fn a_negative_within_the_reopen_window_reopens_one_step_up_and_later_ones_open_anew() {
        let (mut stream, case, _) = opened();
        let mut out = Vec::new();
        stream.push_action(
            act("a1", &case, "c", 5 * MIN, ActionKind::Acknowledge),
            1,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        stream.push_action(
            act("a2", &case, "c", HOUR, ActionKind::Resolve),
            2,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        out.clear();
        stream.push(
            Ev::new("f2", "c", DAY, "payment.transfer", Outcome::Failure).0,
            3,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        let a = alerts(&out);
        assert_eq!(a.len(), 1, "{out:?}");
        assert_eq!(
            (a[0].status, a[0].rule.as_str()),
            (AlertStatus::Reopened, "reopened")
        );
        assert_eq!(a[0].case_id, case, "the same case");
        assert_eq!(a[0].severity, Severity::Critical);
        assert_eq!(
            a[0].resolution.as_deref(),
            Some("refunded"),
            "the fix that did not hold"
        );
        assert_eq!(a[0].actor, None, "no one has the reopened case yet");
        assert_eq!(a[0].alert_id, format!("{case}-reopened-1"));
        // The reopened round has its own ack SLA.
        out.clear();
        stream.push(
            Ev::new("n1", "c", DAY + 20 * MIN, "ivr.menu", Outcome::Pending).0,
            4,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        assert_eq!(alerts(&out)[0].rule, "ack_sla_breach");
        assert_eq!(alerts(&out)[0].alert_id, format!("{case}-escalated-ack-1"));
        // Resolved again; past the window a negative opens a new case.
        stream.push_action(
            act("a3", &case, "c", DAY + HOUR, ActionKind::Resolve),
            5,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        out.clear();
        stream.push(
            Ev::new("f3", "c", 5 * DAY, "payment.transfer", Outcome::Failure).0,
            6,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        let a = alerts(&out);
        assert_eq!(a[0].status, AlertStatus::Open, "{out:?}");
        assert_ne!(a[0].case_id, case);
    }

    #[test]
    fn an_agent_reopen_does_the_same() {
        let (mut stream, case, _) = opened();
        let mut out = Vec::new();
        stream.push_action(
            act("a1", &case, "c", HOUR, ActionKind::Resolve),
            1,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        out.clear();
        stream.push_action(
            act("a2", &case, "c", 2 * HOUR, ActionKind::Reopen),
            2,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        let a = alerts(&out);
        assert_eq!(
            (a[0].status, a[0].rule.as_str()),
            (AlertStatus::Reopened, "agent_reopen")
        );
        assert_eq!(a[0].severity, Severity::Critical);
    }

    #[test]
    fn routing_picks_the_queue_and_overrides_the_channel_first_match_wins() {
        let mut config = Config::default();
        config.rules.routing = vec![
            Route {
                journey: "*".into(),
                touchpoint: "payment.*".into(),
                tiers: vec!["vip".into()],
                queue: "private-banking-desk".into(),
                channel: Some(Channel::Voice),
            },
            Route {
                journey: "*".into(),
                touchpoint: "payment.*".into(),
                tiers: vec![],
                queue: "payments-support".into(),
                channel: Some(Channel::Chat),
            },
        ];
        let (fx, _) = run_all(
            config,
            vec![
                Ev::new("v1", "vip-1", 0, "payment.transfer", Outcome::Failure).tier("vip"),
                Ev::new("s1", "std-1", 0, "payment.transfer", Outcome::Failure),
                Ev::new("o1", "oth-1", 0, "billing.invoice", Outcome::Failure),
            ],
        );
        let opens: Vec<_> = alerts(&fx)
            .into_iter()
            .filter(|a| a.status == AlertStatus::Open)
            .map(|a| (a.customer_id.as_str(), a.queue.as_str(), a.recommended_channel))
            .collect();
        assert_eq!(
            opens,
            [
                ("vip-1", "private-banking-desk", Channel::Voice),
                ("std-1", "payments-support", Channel::Chat),
                ("oth-1", "default", Channel::Voice),
            ]
        );
        let chat = alerts(&fx)
            .into_iter()
            .find(|a| a.customer_id == "std-1")
            .unwrap();
        assert!(chat.reason.contains("by CHAT"), "{}", chat.reason);
    }

    #[test]
    fn the_human_side_survives_a_snapshot_round_trip() {
        let (mut stream, case, _) = opened();
        let mut out = Vec::new();
        for (i, id) in ["a1", "a2", "a3", "a4", "a5"].iter().enumerate() {
            let kind = [ActionKind::Acknowledge, ActionKind::Resolve, ActionKind::Reopen][i % 3];
            stream.push_action(
                act(id, &case, "c", (i as Millis + 1) * MIN, kind),
                i as u64,
                ARRIVAL_UNCHECKED,
                0,
                &mut out,
            );
        }
        let engine = stream.engine().clone();
        let mut bytes = Vec::new();
        assert!(engine.snapshot("c", 9, &mut bytes));
        let other = Arc::new(Engine::new(Config::default()));
        other.restore("c", Some(&bytes)).unwrap();
        assert_eq!(
            serde_json::to_value(other.customer("c").unwrap()).unwrap(),
            serde_json::to_value(engine.customer("c").unwrap()).unwrap()
        );
        let mut again = Vec::new();
        other.snapshot("c", 9, &mut again);
        assert_eq!(again, bytes);
        // The remembered action ids came along: a redelivered one is still a duplicate.
        let mut restored = Stream::new(other);
        restored.after_restore();
        out.clear();
        restored.push_action(
            act("a5", &case, "c", 5 * MIN, ActionKind::Resolve),
            50,
            ARRIVAL_UNCHECKED,
            0,
            &mut out,
        );
        assert_eq!(out, [Effect::Duplicate { seq: 50 }]);
    }
}
