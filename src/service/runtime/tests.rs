//! Unit tests of the partition runtime: offsets, changelog ordering, resends and the restored
//! skip rule, driven without a broker.

use super::*;
use crate::codec::Format;
use crate::metrics::Metrics;
use crate::model::{CaseAction, Channel, Direction, Outcome, TouchpointKind};
use std::collections::BTreeMap;

const T0: Millis = 1_772_359_200_000;
const MIN: Millis = 60_000;

struct Harness {
    rt: Runtime,
    t: Instant,
    out: Vec<Command>,
    shared: Arc<Shared>,
}

fn harness(changelog: bool, eos: bool) -> Harness {
    // The shipped defaults, except what each test is about.
    let mut c = Config::default();
    c.state.changelog = changelog;
    if eos {
        c.processing.guarantee = crate::config::Guarantee::ExactlyOnce;
    }
    let shared = Arc::new(Shared::new(Metrics::new()));
    let mut rt = Runtime::new(
        c.clone(),
        shared.clone(),
        OutputEncoder::with_schema_id(Format::Json, 0),
    );
    rt.assign(0, Arc::new(Engine::new(c)), None);
    Harness {
        rt,
        t: Instant::now(),
        out: Vec::new(),
        shared,
    }
}

fn tp(id: &str, customer: &str, at: Millis, touchpoint: &str, outcome: Outcome) -> Touchpoint {
    Touchpoint {
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
    }
}

/// A moment-of-truth failure: pages at once.
fn failure(id: &str, customer: &str, at: Millis) -> Touchpoint {
    tp(id, customer, at, "payment.transfer", Outcome::Failure)
}

/// A touchpoint that pages no one.
fn quiet(id: &str, customer: &str, at: Millis) -> Touchpoint {
    tp(id, customer, at, "web.browse", Outcome::Success)
}

impl Harness {
    fn now(&self) -> Now {
        Now {
            mono: self.t,
            wall: T0 + 3 * 60 * MIN,
        }
    }

    /// Pushes `ev` as the record at `offset` of partition 0; returns its commands.
    fn push(&mut self, offset: i64, ev: Touchpoint) -> Vec<Command> {
        let rec = Record {
            source: Source::Touchpoints,
            partition: 0,
            offset,
            timestamp: Some(ev.occurred_at),
        };
        let now = self.now();
        self.rt.record(rec, Ok(ev), now, &mut self.out);
        std::mem::take(&mut self.out)
    }

    fn reject(&mut self, offset: i64) -> Vec<Command> {
        let rec = Record {
            source: Source::Touchpoints,
            partition: 0,
            offset,
            timestamp: None,
        };
        let now = self.now();
        let rejected = Rejected {
            class: "json",
            reason: "invalid JSON at line 1 column 1".into(),
        };
        self.rt.record(rec, Err(rejected), now, &mut self.out);
        std::mem::take(&mut self.out)
    }

    fn ack(&mut self, token: usize) -> Vec<Command> {
        let now = self.now();
        self.rt.delivered(token, Ok(()), now, &mut self.out);
        std::mem::take(&mut self.out)
    }

    fn fail(&mut self, token: usize, class: FailureClass) -> Vec<Command> {
        let now = self.now();
        let failure = Failure {
            class,
            error: "Message production error".into(),
        };
        self.rt.delivered(token, Err(failure), now, &mut self.out);
        std::mem::take(&mut self.out)
    }

    fn commit_tick(&mut self) -> Vec<Command> {
        self.rt.commit_tick(&mut self.out);
        std::mem::take(&mut self.out)
    }
}

fn action(id: &str, case_id: &str, customer: &str, at: Millis, kind: crate::model::ActionKind) -> CaseAction {
    CaseAction {
        action_id: id.into(),
        case_id: case_id.into(),
        customer_id: customer.into(),
        action: kind,
        actor: "agent-7".into(),
        occurred_at: T0 + at,
        resolution: None,
        channel: None,
        note: None,
    }
}

impl Harness {
    /// Pushes `a` as the record at `offset` of the action topic's partition 0.
    fn act(&mut self, offset: i64, a: CaseAction) -> Vec<Command> {
        let rec = Record {
            source: Source::Actions,
            partition: 0,
            offset,
            timestamp: Some(a.occurred_at),
        };
        let now = self.now();
        self.rt.action(rec, Ok(a), now, &mut self.out);
        std::mem::take(&mut self.out)
    }
}

fn stores(c: &[Command]) -> Vec<(Source, i64)> {
    c.iter()
        .filter_map(|c| match c {
            Command::Store { source, next, .. } => Some((*source, *next)),
            _ => None,
        })
        .collect()
}

fn alert_token(c: &[Command]) -> usize {
    c.iter()
        .find_map(|c| match c {
            Command::Produce { token, .. } => Some(*token),
            _ => None,
        })
        .expect("an alert")
}

fn dead_letter_token(c: &[Command]) -> usize {
    c.iter()
        .find_map(|c| match c {
            Command::DeadLetter { token, .. } => Some(*token),
            _ => None,
        })
        .expect("a dead letter")
}

fn resend_token(c: &[Command]) -> (usize, bool) {
    c.iter()
        .find_map(|c| match c {
            Command::Resend {
                token,
                without_payload,
            } => Some((*token, *without_payload)),
            _ => None,
        })
        .expect("a resend")
}

fn changelogs(c: &[Command]) -> Vec<(usize, Vec<String>)> {
    c.iter()
        .filter_map(|c| match c {
            Command::Changelog { token, records, .. } => {
                let mut keys: Vec<String> = records.iter().map(|(k, _)| k.to_string()).collect();
                keys.sort();
                Some((*token, keys))
            }
            _ => None,
        })
        .collect()
}

fn stored(c: &[Command]) -> Vec<i64> {
    c.iter()
        .filter_map(|c| match c {
            Command::Store { next, .. } => Some(*next),
            _ => None,
        })
        .collect()
}

#[test]
fn an_offset_is_stored_only_once_every_alert_before_it_is_acknowledged() {
    let mut h = harness(false, false);
    let first = h.push(0, failure("a", "c1", 0));
    let token = alert_token(&first);
    assert!(stored(&first).is_empty(), "the alert is not acknowledged yet");
    let second = h.push(1, quiet("b", "c2", MIN));
    assert!(
        stored(&second).is_empty(),
        "record 1 is finished but record 0 is not"
    );
    assert_eq!(stored(&h.ack(token)), [2]);
    assert_eq!(h.rt.outstanding(), 0);
}

#[test]
fn a_changelog_batch_waits_for_its_alerts_and_batches_are_written_in_order() {
    let mut h = harness(true, false);
    let token = alert_token(&h.push(0, failure("a", "c1", 0)));
    h.push(1, quiet("b", "c2", MIN));
    assert!(
        changelogs(&h.commit_tick()).is_empty(),
        "batch 0's alert is unacknowledged"
    );
    // A second batch, with no outputs of its own, must still wait behind the first.
    h.push(2, quiet("c", "c3", 2 * MIN));
    assert!(
        changelogs(&h.commit_tick()).is_empty(),
        "an older batch is not written"
    );
    let acked = h.ack(token);
    let written = changelogs(&acked);
    assert_eq!(written.len(), 2);
    assert_eq!(written[0].1, ["c1", "c2"]);
    assert_eq!(written[1].1, ["c3"]);
    assert!(
        stored(&acked).is_empty(),
        "records stay unfinished until their changelog is in"
    );
    assert!(stored(&h.ack(written[0].0)) == [2]);
    assert_eq!(stored(&h.ack(written[1].0)), [3]);
}

/// Regression (issue 16): a customer's restored offset skips every record at or below it after
/// a restart, so a changelog record must never include an offset while a dead letter of an
/// earlier record is unacknowledged: that dead letter would be skipped, never sent.
#[test]
fn a_changelog_batch_waits_for_the_dead_letters_of_its_records() {
    let mut h = harness(true, false);
    h.push(0, quiet("a", "c1", 120 * MIN));
    // Two hours behind the first: past the shipped hour of lateness.
    let late = h.push(1, quiet("b", "c1", 0));
    let dl = dead_letter_token(&late);
    h.push(2, quiet("c", "c1", 121 * MIN));
    assert!(
        changelogs(&h.commit_tick()).is_empty(),
        "c1's state includes offset 2 while the dead letter of offset 1 is unacknowledged"
    );
    let written = changelogs(&h.ack(dl));
    assert_eq!(written.len(), 1);
    assert_eq!(stored(&h.ack(written[0].0)), [3]);
}

#[test]
fn restored_customers_skip_the_records_their_state_includes() {
    let mut h = harness(true, false);
    let c = Config::default();
    let restored = HashMap::from([(Arc::from("c1"), 5)]);
    h.rt.assign(0, Arc::new(Engine::new(c)), Some(restored));
    // c1's failure at offset 3 was applied (and its alert acknowledged) before the restart.
    let skipped = h.push(3, failure("a", "c1", 0));
    assert!(
        skipped.iter().all(|c| !matches!(c, Command::Produce { .. })),
        "not paged twice"
    );
    assert_eq!(stored(&skipped), [4]);
    assert_eq!(h.shared.metrics.duplicate_records.get(), 1);
    // Another customer's record below c1's offset is new to this state.
    assert!(matches!(
        h.push(4, failure("b", "c2", MIN)).first(),
        Some(Command::Produce { .. })
    ));
}

#[test]
fn a_failed_alert_is_sent_again_after_one_pause_per_burst() {
    let mut h = harness(false, false);
    let token = alert_token(&h.push(0, failure("a", "c1", 0)));
    let first = h.fail(token, FailureClass::Transient);
    assert!(matches!(first[0], Command::Pause(d) if d == outbox::RESEND_BACKOFF));
    let (again, stripped) = resend_token(&first);
    assert!(!stripped && again != token);
    assert!(stored(&first).is_empty());
    // A second failure right after: resent without another pause.
    let second = h.fail(again, FailureClass::Transient);
    assert!(!second.iter().any(|c| matches!(c, Command::Pause(_))));
    let (third, _) = resend_token(&second);
    assert_eq!(stored(&h.ack(third)), [1]);
    assert_eq!(h.rt.outstanding(), 0);
}

#[test]
fn an_alert_too_large_is_trimmed_once_then_fatal() {
    let mut h = harness(false, false);
    let token = alert_token(&h.push(0, failure("a", "c1", 0)));
    let retried = h.fail(token, FailureClass::TooLarge);
    let Some(Command::Produce {
        token: trimmed,
        payload,
        ..
    }) = retried.first()
    else {
        panic!("a trimmed alert, got {retried:?}");
    };
    let alert: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(alert["recent_touchpoints"], serde_json::json!([]));
    assert_eq!(alert["attributes"]["cx.trimmed"], "recent_touchpoints,attributes");
    assert_eq!(alert["case_id"].as_str().map(str::is_empty), Some(false));
    assert_eq!(h.shared.metrics.alerts_trimmed.get(), 1);
    let trimmed = *trimmed;
    let fatal = h.fail(trimmed, FailureClass::TooLarge);
    assert!(matches!(fatal.as_slice(), [Command::Fatal(m)] if m.contains("max.message.bytes")));
    assert!(
        stored(&fatal).is_empty(),
        "the record stays unfinished: processed again after the restart"
    );
}

#[test]
fn a_trimmed_alert_lets_its_changelog_batch_go_once_acknowledged() {
    let mut h = harness(true, false);
    let token = alert_token(&h.push(0, failure("a", "c1", 0)));
    let trimmed = alert_token(&h.fail(token, FailureClass::TooLarge));
    assert!(
        changelogs(&h.commit_tick()).is_empty(),
        "the trimmed alert is unacknowledged"
    );
    let written = changelogs(&h.ack(trimmed));
    assert_eq!(
        written.len(),
        1,
        "the refused send does not hold the batch forever"
    );
    assert_eq!(stored(&h.ack(written[0].0)), [1]);
}

#[test]
fn a_dead_letter_too_large_goes_again_without_its_payload() {
    let mut h = harness(false, false);
    let token = dead_letter_token(&h.reject(0));
    let (again, without_payload) = resend_token(&h.fail(token, FailureClass::TooLarge));
    assert!(without_payload);
    assert_eq!(stored(&h.ack(again)), [1]);
}

#[test]
fn an_unwritable_topic_stops_the_process_without_committing_the_record() {
    let mut h = harness(false, false);
    let token = alert_token(&h.push(0, failure("a", "c1", 0)));
    let commands = h.fail(token, FailureClass::Fatal);
    assert!(
        matches!(commands.as_slice(), [Command::Fatal(m)] if m.contains("cx-recovery-alerts") || m.contains("topic"))
    );
    assert_eq!(
        h.rt.positions(),
        [(Source::Touchpoints, 0, 0)],
        "offset 0 is still unfinished"
    );
}

#[test]
fn reports_of_a_revoked_partition_settle_nothing_in_its_next_assignment() {
    let mut h = harness(false, false);
    let token = alert_token(&h.push(7, failure("a", "c1", 0)));
    h.rt.revoke(0);
    h.rt.assign(0, Arc::new(Engine::new(Config::default())), None);
    assert!(h.ack(token).is_empty());
    assert_eq!(h.rt.next_offset(0), Some(0));
}

#[test]
fn exactly_once_writes_the_changelog_at_once_and_a_failed_send_aborts() {
    let mut h = harness(true, true);
    let token = alert_token(&h.push(0, failure("a", "c1", 0)));
    let tick = h.commit_tick();
    assert_eq!(
        changelogs(&tick).len(),
        1,
        "the transaction makes them all-or-nothing"
    );
    assert!(matches!(tick.last(), Some(Command::CommitTransaction)));
    assert!(
        stored(&tick).is_empty(),
        "offsets go into the transaction, not the consumer"
    );
    assert_eq!(h.rt.settle(), Settle::Commit);
    assert!(
        h.fail(token, FailureClass::Transient).is_empty(),
        "no resend inside a transaction"
    );
    assert_eq!(h.rt.settle(), Settle::Abort("delivery failed"));
    assert_eq!(h.rt.reset(), [0]);
    assert_eq!(h.rt.settle(), Settle::Nothing);
}

#[test]
fn idle_alerts_wait_for_a_backlog_and_mark_the_transaction() {
    let mut h = harness(true, true);
    h.push(0, tp("a", "c1", 0, "payment.transfer", Outcome::Failure));
    h.commit_tick();
    h.rt.committed();
    let later = Now {
        mono: h.t + Duration::from_secs(3600 * 24),
        wall: T0 + 24 * 60 * MIN,
    };
    // Records wait beyond the consumed position: not idle, no timers.
    h.rt.tick(later, &|_, _| true, &mut h.out);
    assert!(h.out.is_empty());
    assert_eq!(h.rt.settle(), Settle::Nothing);
    // The first idle tick only starts the idle clock; timers follow it after engine.idle_timeout.
    h.rt.tick(later, &|_, _| false, &mut h.out);
    let much_later = Now {
        mono: later.mono + Duration::from_secs(5),
        wall: later.wall + 5_000,
    };
    h.rt.tick(much_later, &|_, _| false, &mut h.out);
    assert!(
        h.out.iter().any(|c| matches!(c, Command::Produce { .. })),
        "the SLA escalation fires on the quiet partition"
    );
    assert_eq!(h.rt.settle(), Settle::Commit);
}

#[test]
fn an_acknowledgement_is_published_and_stores_the_action_topic_position() {
    let mut h = harness(false, false);
    let opened = h.push(0, failure("a", "c1", 0));
    let Some(Command::Produce { token, payload, .. }) = opened.first() else {
        panic!("an alert: {opened:?}");
    };
    let case_id = serde_json::from_slice::<serde_json::Value>(payload).unwrap()["case_id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = *token;
    h.ack(token);
    let acked = h.act(
        0,
        action(
            "act-1",
            &case_id,
            "c1",
            MIN,
            crate::model::ActionKind::Acknowledge,
        ),
    );
    let Some(Command::Produce { token, payload, .. }) = acked.first() else {
        panic!("an ACKNOWLEDGED alert: {acked:?}");
    };
    let alert: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(alert["status"], "ACKNOWLEDGED");
    assert_eq!(alert["actor"], "agent-7");
    assert!(stores(&acked).is_empty(), "the alert is not acknowledged yet");
    assert_eq!(stores(&h.ack(*token)), [(Source::Actions, 1)]);
    // The same action again changes nothing and is finished at once.
    let again = h.act(
        1,
        action(
            "act-1",
            &case_id,
            "c1",
            MIN,
            crate::model::ActionKind::Acknowledge,
        ),
    );
    assert!(!again.iter().any(|c| matches!(c, Command::Produce { .. })));
    assert_eq!(stores(&again), [(Source::Actions, 2)]);
    // An action on a case nobody has is a dead letter on the action topic's ledger.
    // A well-formed id of a case that was never opened (another customer's hash).
    let unknown = format!("{}0", &case_id[..case_id.len() - 1]);
    let unknown = if unknown == case_id {
        format!("{}1", &case_id[..case_id.len() - 1])
    } else {
        unknown
    };
    let bad = h.act(
        2,
        action("act-2", &unknown, "c1", MIN, crate::model::ActionKind::Resolve),
    );
    let Some(Command::DeadLetter { token, class, .. }) = bad.first() else {
        panic!("a dead letter: {bad:?}");
    };
    assert_eq!(*class, "unknown_case");
    assert_eq!(stores(&h.ack(*token)), [(Source::Actions, 3)]);
    assert_eq!(
        h.rt.positions()
            .into_iter()
            .filter(|p| p.0 == Source::Actions)
            .collect::<Vec<_>>(),
        [(Source::Actions, 0, 3)]
    );
}
