//! Golden scenarios: `tests/scenarios/<name>/input.jsonl` (with the agents' case actions of
//! `actions.jsonl`, when present, merged in by event time) through `replay` must give
//! `expected.jsonl` (alerts minus `detected_at`). `REWRITE=1 cargo test --test golden` regenerates
//! the expected files; review the diff. Each scenario also asserts the facts it exists for.

use cx_sentinel::codec::Format;
use cx_sentinel::config::Config;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn scenario_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(name)
}

/// Replays a scenario with the shipped default config and checks it against its expected file.
fn run(name: &str) -> Vec<Value> {
    let dir = scenario_dir(name);
    let config = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")).unwrap();
    let input = std::fs::File::open(dir.join("input.jsonl")).unwrap();
    let mut actions = std::fs::File::open(dir.join("actions.jsonl"))
        .ok()
        .map(std::io::BufReader::new);
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let summary = cx_sentinel::replay::replay_with_actions(
        config,
        std::io::BufReader::new(input),
        Format::Json,
        actions.as_mut().map(|a| a as &mut dyn std::io::BufRead),
        &mut out,
        &mut problems,
        &|| 1_900_000_000_000,
        None,
    )
    .unwrap();
    assert_eq!(summary.rejected, 0, "{}", String::from_utf8_lossy(&problems));
    assert_eq!(
        summary.actions_rejected,
        0,
        "{}",
        String::from_utf8_lossy(&problems)
    );
    let alerts: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("detected_at");
            v
        })
        .collect();
    let actual: String = alerts.iter().map(|v| format!("{v}\n")).collect();
    let expected_path = dir.join("expected.jsonl");
    if std::env::var_os("REWRITE").is_some() {
        std::fs::write(&expected_path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path)
        .unwrap_or_else(|_| panic!("{} missing: run with REWRITE=1", expected_path.display()));
    assert_eq!(
        actual, expected,
        "scenario {name} drifted from its expected alerts"
    );
    alerts
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn statuses(alerts: &[Value]) -> Vec<&str> {
    alerts.iter().map(|a| field(a, "status")).collect()
}

#[test]
fn payment_sent_ten_times_over_pages_critical_by_voice() {
    let a = run("payment_wrong_amount");
    assert_eq!(statuses(&a), ["OPEN"]);
    assert_eq!(field(&a[0], "rule"), "critical_negative");
    assert_eq!(field(&a[0], "severity"), "CRITICAL");
    assert_eq!(field(&a[0], "recommended_channel"), "VOICE");
    assert_eq!(field(&a[0], "customer_tier"), "vip");
    assert_eq!(a[0]["attributes"]["amount_sent"], "2000.00");
    assert!(
        !a[0].to_string().contains("4111111111111111"),
        "card number leaked"
    );
}

#[test]
fn reservation_cancelled_in_error_pages_high() {
    let a = run("reservation_confirmed_in_error");
    assert_eq!(statuses(&a), ["OPEN"]);
    assert_eq!(field(&a[0], "rule"), "critical_negative");
    assert_eq!(field(&a[0], "severity"), "HIGH");
    assert_eq!(field(&a[0], "trigger_event_id"), "res-3");
}

#[test]
fn isp_cancellation_loop_is_one_case_not_several() {
    let a = run("isp_cancellation_loop");
    // No agent acknowledged it: the ack SLA pages the next person before the repeat negative.
    assert_eq!(statuses(&a), ["OPEN", "ESCALATED", "ESCALATED"]);
    assert_eq!(field(&a[0], "rule"), "high_effort");
    assert!(field(&a[0], "reason").contains("4 times"), "{}", a[0]);
    assert_eq!(field(&a[1], "rule"), "ack_sla_breach");
    assert_eq!(field(&a[2], "rule"), "repeat_negative");
    assert!(a.iter().all(|x| field(x, "case_id") == field(&a[0], "case_id")));
    assert_ne!(field(&a[1], "alert_id"), field(&a[2], "alert_id"));
}

#[test]
fn health_result_share_keeps_sensitive_attributes_in() {
    let a = run("health_result_share");
    assert_eq!(statuses(&a), ["OPEN"]);
    let text = a[0].to_string();
    for secret in [
        "HIV-negative",
        "full-std",
        "123-45-6789",
        "health.result\"",
        "ssn",
    ] {
        assert!(!text.contains(secret), "{secret} leaked into {text}");
    }
    assert_eq!(a[0]["attributes"], serde_json::json!({"clinic": "north"}));
}

#[test]
fn failure_then_callback_opens_then_recovers() {
    let a = run("failure_then_callback");
    // The callback came 2 h later with no acknowledgement on record: the ack SLA fired first.
    assert_eq!(statuses(&a), ["OPEN", "ESCALATED", "RECOVERED"]);
    assert_eq!(field(&a[1], "rule"), "ack_sla_breach");
    assert_eq!(a[2]["time_to_recover_ms"], 7_200_000);
    assert_eq!(field(&a[0], "case_id"), field(&a[2], "case_id"));
}

#[test]
fn happy_customer_pages_no_one() {
    assert!(run("happy_customer").is_empty());
}

#[test]
fn noisy_low_stakes_customer_pages_no_one() {
    assert!(run("noisy_low_stakes").is_empty());
}

#[test]
fn unanswered_case_escalates_at_sla_then_expires() {
    let a = run("unanswered_case");
    assert_eq!(statuses(&a), ["OPEN", "ESCALATED", "ESCALATED", "EXPIRED"]);
    assert_eq!(field(&a[1], "rule"), "ack_sla_breach");
    assert_eq!(field(&a[2], "rule"), "sla_breach");
    let opened = a[0]["event_time"].as_i64().unwrap();
    assert_eq!(a[1]["event_time"].as_i64().unwrap() - opened, 15 * 60_000);
    assert_eq!(a[2]["event_time"].as_i64().unwrap() - opened, 4 * 3_600_000);
    assert_eq!(a[3]["event_time"].as_i64().unwrap() - opened, 30 * 86_400_000);
}

/// An IVR platform posts its batch late: the self-service SUCCESS from before the fourth call
/// arrives after the high-effort page and withdraws it; a payment failure that arrives after the
/// customer's later successful retry pages no one; a record with a wrong clock (year 2099) is
/// reported and changes nothing.
#[test]
fn late_ivr_batch_withdraws_the_effort_case_and_a_wrong_clock_changes_nothing() {
    let a = run("late_ivr_batch");
    assert_eq!(statuses(&a), ["OPEN", "WITHDRAWN"]);
    assert_eq!(field(&a[0], "rule"), "high_effort");
    assert_eq!(field(&a[1], "rule"), "high_effort");
    assert_eq!(field(&a[0], "case_id"), field(&a[1], "case_id"));
    assert_eq!(field(&a[1], "trigger_event_id"), "lt-4");
    assert!(a.iter().all(|x| field(x, "customer_id") == "cust-520"), "{a:?}");
}

/// An agent acknowledges a payment failure within the ack SLA and resolves it: every subscriber
/// sees who has it and how long each step took; the repeated RESOLVE (a redelivery) changes
/// nothing, and the note in it is published nowhere.
#[test]
fn acknowledged_payment_failure_resolved_by_the_agent() {
    let a = run("acknowledged_and_resolved");
    assert_eq!(statuses(&a), ["OPEN", "ACKNOWLEDGED", "RESOLVED"]);
    assert_eq!(field(&a[1], "actor"), "agent-ana");
    assert_eq!(a[1]["time_to_acknowledge_ms"], 6 * 60_000);
    assert_eq!(field(&a[2], "resolution"), "refunded");
    assert_eq!(a[2]["time_to_resolve_ms"], 40 * 60_000);
    assert!(a.iter().all(|x| field(x, "case_id") == field(&a[0], "case_id")));
    assert!(a.iter().all(|x| field(x, "queue") == "default"));
    assert!(!format!("{a:?}").contains("555-0100"), "the note leaked");
}

/// No agent acknowledges a payment failure within 15 minutes: it escalates once on the ack SLA
/// (same severity: an escalation to people), then the late acknowledgement still applies.
#[test]
fn unacknowledged_payment_failure_escalates_on_the_ack_sla() {
    let a = run("unacknowledged_escalates");
    assert_eq!(statuses(&a), ["OPEN", "ESCALATED", "ACKNOWLEDGED"]);
    assert_eq!(field(&a[1], "rule"), "ack_sla_breach");
    assert_eq!(field(&a[1], "severity"), field(&a[0], "severity"));
    let opened = a[0]["event_time"].as_i64().unwrap();
    assert_eq!(a[1]["event_time"].as_i64().unwrap() - opened, 15 * 60_000);
    assert_eq!(a[2]["time_to_acknowledge_ms"], 25 * 60_000);
}

/// The agent resolved the case; the customer fails again the next day (within the 72 h reopen
/// window): the same case reopens one severity step up, carrying the resolution that did not
/// hold, and a new agent acknowledges the new round.
#[test]
fn resolved_case_reopens_on_a_new_failure_within_the_window() {
    let a = run("resolved_case_reopens");
    assert_eq!(
        statuses(&a),
        ["OPEN", "ACKNOWLEDGED", "RESOLVED", "REOPENED", "ACKNOWLEDGED"]
    );
    assert_eq!(field(&a[3], "severity"), "CRITICAL");
    assert_eq!(field(&a[3], "resolution"), "called-back");
    assert!(a[3]["actor"].is_null());
    assert_eq!(field(&a[4], "actor"), "agent-cy");
    assert!(a.iter().all(|x| field(x, "case_id") == field(&a[0], "case_id")));
    let ids: std::collections::BTreeSet<&str> = a.iter().map(|x| field(x, "alert_id")).collect();
    assert_eq!(ids.len(), a.len(), "alert ids are unique per alert");
}

#[test]
fn every_scenario_directory_is_covered() {
    let known = [
        "acknowledged_and_resolved",
        "unacknowledged_escalates",
        "resolved_case_reopens",
        "late_ivr_batch",
        "payment_wrong_amount",
        "reservation_confirmed_in_error",
        "isp_cancellation_loop",
        "health_result_share",
        "failure_then_callback",
        "happy_customer",
        "noisy_low_stakes",
        "unanswered_case",
    ];
    let mut found: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    found.sort();
    let mut known: Vec<String> = known.iter().map(|s| s.to_string()).collect();
    known.sort();
    assert_eq!(found, known, "a scenario directory has no test");
}
