//! Case actions on a real broker: the people who step in acknowledge and resolve a case through
//! the action topic, written by an independent client (Python `confluent-kafka`), and every
//! subscriber of the alert topic sees who has it and how it ended.

mod common;

use common::*;
use cx_sentinel::codec::Format;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Produces one JSON record to `topic`, keyed by `key`, with the Python client.
async fn python_produce(python: &str, brokers: &str, topic: &str, key: &str, value: &str) {
    let script = r#"
import sys
from confluent_kafka import Producer
brokers, topic, key, value = sys.argv[1:5]
p = Producer({"bootstrap.servers": brokers})
errors = []
p.produce(topic, key=key.encode(), value=value.encode(), on_delivery=lambda e, m: errors.append(e) if e else None)
p.flush(30)
sys.exit(1 if errors else 0)
"#;
    let status = tokio::process::Command::new(python)
        .args(["-c", script, brokers, topic, key, value])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "python producer failed");
}

fn python() -> Option<String> {
    match std::env::var("CX_PYTHON") {
        Ok(p) => Some(p),
        Err(_) if std::env::var_os("CX_REQUIRE_EXTERNAL").is_some() => {
            panic!("CX_PYTHON not set: run scripts/test.sh")
        }
        Err(_) => {
            eprintln!("skipped: set CX_PYTHON (scripts/py-env.sh)");
            None
        }
    }
}

/// With the shipped config: a payment failure pages; an agent's ACKNOWLEDGE and RESOLVE, sent
/// by another system through the action topic, are published as ACKNOWLEDGED (with the actor)
/// and RESOLVED (with the resolution and its times), counted on `/metrics`; a repeated action
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_acknowledges_and_resolves_a_case_through_the_action_topic() {
    let Some(brokers) = brokers() else { return };
    let Some(python) = python() else { return };
    let t = topics(&brokers, 1).await;
    let svc = start(config(&brokers, &t, Format::Json, Format::Json)).await;
    let line = recent_line("pay-1", "c-1", 10 * 60_000, "payment.transfer", "FAILURE");
    produce(&brokers, &t.input, &keyed(&[line])).await;
    let opened = alerts(Format::Json, &consume(&brokers, &t.alerts, 1, WAIT).await);
    assert_eq!(opened[0]["status"], "OPEN");
    let case_id = opened[0]["case_id"].as_str().unwrap().to_string();

    let action = |id: &str, kind: &str, ago_ms: i64, resolution: Option<&str>| {
        action_line(id, &case_id, "c-1", kind, now_ms() - ago_ms, resolution)
    };
    let ack = action("act-1", "ACKNOWLEDGE", 5 * 60_000, None);
    python_produce(&python, &brokers, &t.actions, "c-1", &ack).await;
    // The same action delivered twice (a retrying bridge): nothing changes.
    python_produce(&python, &brokers, &t.actions, "c-1", &ack).await;
    let resolve = action("act-2", "RESOLVE", 60_000, Some("refunded"));
    python_produce(&python, &brokers, &t.actions, "c-1", &resolve).await;

    // Up to 4 read, 3 expected: a repeated action would be a fourth.
    let got = alerts(
        Format::Json,
        &consume(&brokers, &t.alerts, 4, Duration::from_secs(20)).await,
    );
    let by_status = |s: &str| {
        got.iter()
            .find(|a| a["status"] == s)
            .unwrap_or_else(|| panic!("no {s}: {got:#?}"))
    };
    assert_eq!(got.len(), 3, "{got:#?}");
    let acked = by_status("ACKNOWLEDGED");
    assert_eq!(acked["actor"], "agent-42");
    assert_eq!(acked["case_id"], case_id.as_str());
    let tta = acked["time_to_acknowledge_ms"].as_i64().unwrap();
    assert!((4 * 60_000..=6 * 60_000).contains(&tta), "{tta}");
    let resolved = by_status("RESOLVED");
    assert_eq!(resolved["resolution"], "refunded");
    assert!(resolved["time_to_resolve_ms"].as_i64().unwrap() >= tta);
    for a in &got {
        assert!(
            !a.to_string().contains("555-0100"),
            "the note is stored nowhere: {a}"
        );
    }
    let metrics = svc.get("/metrics").await.1;
    assert!(
        metrics
            .contains("cx_sentinel_time_to_acknowledge_seconds_count{queue=\"default\",severity=\"HIGH\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("cx_sentinel_cases_total{queue=\"default\",rule=\"resolved\",severity=\"HIGH\",status=\"RESOLVED\"} 1"), "{metrics}");
    // The first scrape walks the state: the resolved case is held for the reopen window.
    assert!(
        metrics.contains("cx_sentinel_cases_held{queue=\"default\",status=\"RESOLVED\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cx_sentinel_cases_held{queue=\"default\",status=\"OPEN\"} 0"),
        "{metrics}"
    );
    assert!(!metrics.contains("555-0100"));
    svc.stop().await.unwrap();
    assert_eq!(
        committed(&brokers, &t.group, &t.actions).await,
        3,
        "all three actions finished"
    );
}

/// Actions that cannot apply are dead-lettered with their class and a reason that names no
/// customer value, and their offsets are committed: a case that does not exist, another
/// customer's case, a record that is not an action, a second acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_actions_are_dead_lettered_with_their_class() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let svc = start(config(&brokers, &t, Format::Json, Format::Json)).await;
    let line = recent_line("pay-1", "c-1", 10 * 60_000, "payment.transfer", "FAILURE");
    produce(&brokers, &t.input, &keyed(&[line])).await;
    let opened = alerts(Format::Json, &consume(&brokers, &t.alerts, 1, WAIT).await);
    let case_id = opened[0]["case_id"].as_str().unwrap().to_string();
    let at = now_ms() - 5 * 60_000;
    // A case id of this customer (its top 16 bits are the customer's) that names no case.
    let unknown = format!("{}000000000000", &case_id[..4]);
    let records: Vec<(String, Vec<u8>)> = [
        action_line("a-1", &unknown, "c-1", "ACKNOWLEDGE", at, None),
        action_line("a-2", &case_id, "c-2", "ACKNOWLEDGE", at, None),
        "{\"action_id\": \"a-3\", \"case_id\": 555".to_string(),
        action_line("a-4", &case_id, "c-1", "ACKNOWLEDGE", at, None),
        action_line("a-5", &case_id, "c-1", "ACKNOWLEDGE", at, None),
    ]
    .into_iter()
    .map(|l| ("c-1".to_string(), l.into_bytes()))
    .collect();
    produce(&brokers, &t.actions, &records).await;
    let dlq = consume(&brokers, &t.dlq, 4, WAIT).await;
    let classes: Vec<String> = dlq
        .iter()
        .map(|m| header(m, "cx.error.class").unwrap_or_default())
        .collect();
    assert_eq!(
        classes,
        [
            "unknown_case",
            "customer_mismatch",
            "json",
            "already_acknowledged"
        ],
        "{dlq:?}"
    );
    for m in &dlq {
        assert_eq!(header(m, "cx.source.topic").as_deref(), Some(t.actions.as_str()));
        let reason = header(m, "cx.error").unwrap();
        assert!(
            !reason.contains("c-1") && !reason.contains("c-2") && !reason.contains("555"),
            "{reason}"
        );
    }
    // The one good action (a-4) acknowledged the case.
    let got = alerts(Format::Json, &consume(&brokers, &t.alerts, 2, WAIT).await);
    assert!(got.iter().any(|a| a["status"] == "ACKNOWLEDGED"), "{got:#?}");
    svc.stop().await.unwrap();
    assert_eq!(committed(&brokers, &t.group, &t.actions).await, 5);
}

/// The action topic must have as many partitions as the input (partition p of both is one
/// customer range, owned by one instance): otherwise the service refuses to start, naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_topic_with_another_partition_count_is_refused_at_start() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let mut config = config(&brokers, &t, Format::Json, Format::Json);
    let other = format!("{}-wide", t.actions);
    cx_sentinel::service::kafka::create_topics(&brokers, &[(&other, 3)])
        .await
        .unwrap();
    config.kafka.action_topic = other.clone();
    let err = start(config).await.failure(WAIT).await;
    assert!(
        err.contains("kafka.action_topic") && err.contains(&other),
        "{err}"
    );
    assert!(err.contains("has 3 partitions") && err.contains("has 1"), "{err}");
}
