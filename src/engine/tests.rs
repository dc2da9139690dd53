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

fn config_with(lateness: Millis) -> Config {
    let mut c = Config::default();
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
        Config::default(),
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
        Config::default(),
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
        Config::default(),
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
        Config::default(),
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
        Config::default(),
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
    let (fx, _) = run_all(Config::default(), events);
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
    let (fx, _) = run_all(Config::default(), contacts(Outcome::Pending));
    assert_eq!(
        summary(&fx),
        [(AlertStatus::Open, "high_effort".into(), Severity::Medium)]
    );
    let (fx, _) = run_all(Config::default(), contacts(Outcome::Success));
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
    let (fx, _) = run_all(Config::default(), events);
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
    let (fx, _) = run_all(Config::default(), events);
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
    let engine = Arc::new(Engine::new(Config::default()));
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
    let engine = Arc::new(Engine::new(Config::default()));
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
    let engine = Arc::new(Engine::new(Config::default()));
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
    let engine = Arc::new(Engine::new(Config::default()));
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
    let (fx, engine) = run_all(Config::default(), sorted.into_iter().collect());
    assert!(alerts(&fx).is_empty());
    assert!(engine.customer("c").unwrap().open_cases.is_empty());
}

#[test]
fn a_late_negative_before_a_recovery_pages_no_one() {
    let engine = Arc::new(Engine::new(Config::default()));
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
    let engine = Arc::new(Engine::new(Config::default()));
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
    let engine = Arc::new(Engine::new(Config::default()));
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
    let engine = Arc::new(Engine::new(Config::default()));
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
    let mut c = Config::default();
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
    let (fx, _) = run_all(Config::default(), events);
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
    let (a, _) = run_all(Config::default(), evs());
    let (b, _) = run_all(Config::default(), evs());
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
