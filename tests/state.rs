//! Durable state: a restarted instance restores every customer from the changelog before it
//! processes input, so a journey that spans the restart is judged as if nothing happened.

mod common;

use common::*;
use cx_sentinel::codec::Format;
use std::time::Duration;

fn contact(i: i64, customer: &str, journey: &str) -> String {
    serde_json::json!({
        "event_id": format!("{customer}-{i}"), "customer_id": customer,
        "occurred_at": t0() + i * 600_000, "channel": "VOICE", "kind": "INTERACTION",
        "direction": "INBOUND", "journey": journey, "touchpoint": "support.call", "outcome": "PENDING"
    })
    .to_string()
}

async fn consumed(svc: &Running) -> f64 {
    let text = svc.get("/metrics").await.1;
    text.lines()
        .filter(|l| l.starts_with("cx_sentinel_records_consumed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_state_and_matches_one_uninterrupted_run() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 3).await;
    let mut config = config(&brokers, &t, Format::Json, Format::Json);
    // The restored state is read through `/customers/{id}`, off in the shipped config.
    config.http.auth_token = Some(cx_sentinel::config::Secret::new(TEST_TOKEN));
    // 20 customers each call 3 times before the restart and once after: only restored state
    // can tell that the 4th call is high effort.
    let customers: Vec<String> = (0..20).map(|c| format!("cust-{c}")).collect();
    let before: Vec<String> = (0..3)
        .flat_map(|i| customers.iter().map(move |c| contact(i, c, "cancellation")))
        .collect();
    let after: Vec<String> = customers.iter().map(|c| contact(3, c, "cancellation")).collect();
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    let expected = replay(&config, &all);
    assert_eq!(expected.len(), 20, "{expected:?}");
    assert!(expected.iter().all(|a| a["rule"] == "high_effort"));

    produce(&brokers, &t.input, &keyed(&before)).await;
    let svc = start(config.clone()).await;
    for _ in 0..300 {
        if consumed(&svc).await >= before.len() as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(consumed(&svc).await, before.len() as f64);
    svc.stop().await.unwrap();
    assert!(
        consume(&brokers, &t.alerts, 1, Duration::from_secs(2))
            .await
            .is_empty()
    );

    let svc = start(config).await;
    svc.wait_ready(Duration::from_secs(60)).await;
    let (_, view) = svc.get_customer("cust-7").await;
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert_eq!(
        view["recent_touchpoints"].as_array().map(Vec::len),
        Some(3),
        "restored before any input: {view}"
    );
    produce(&brokers, &t.input, &keyed(&after)).await;
    let got = alerts(
        Format::Json,
        &consume(&brokers, &t.alerts, 20, Duration::from_secs(60)).await,
    );
    let metrics = svc.get("/metrics").await.1;
    svc.stop().await.unwrap();
    assert_eq!(got, expected);
    assert!(
        metrics.contains("cx_sentinel_state_restored_records_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_one_killed_one_joining_state_moves_with_partitions() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 6).await;
    let journeys: Vec<String> = (0..60).map(|c| format!("journey-cust-{c}")).collect();
    let filler = |i: i64| {
        serde_json::json!({
            "event_id": format!("f-{i}"), "customer_id": format!("filler-{i}"),
            "occurred_at": t0() + 1_800_000 + i, "channel": "WEB", "kind": "INTERACTION",
            "direction": "INBOUND", "journey": "billing", "touchpoint": "payment.transfer", "outcome": "FAILURE"
        })
        .to_string()
    };
    let before: Vec<String> = (0..3)
        .flat_map(|i| journeys.iter().map(move |c| contact(i, c, "cancellation")))
        .chain((0..3000).map(filler))
        .collect();
    let after: Vec<String> = journeys.iter().map(|c| contact(10, c, "cancellation")).collect();
    let config = cx_sentinel::config::Config::default();
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    let expected: Vec<serde_json::Value> = replay(&config, &all)
        .into_iter()
        .filter(|a| a["status"] == "OPEN")
        .collect();
    assert_eq!(expected.iter().filter(|a| a["rule"] == "high_effort").count(), 60);
    assert_eq!(expected.len(), 3060);

    produce(&brokers, &t.input, &keyed(&before)).await;
    let mut a = spawn(&brokers, &t);
    let mut b = spawn(&brokers, &t);
    let mut c = spawn(&brokers, &t);
    let early = collect_alerts(&brokers, &t.alerts, Duration::from_secs(150), |m| m.len() >= 1500).await;
    assert!(early.len() >= 1500, "instances produced alerts before the kill");
    b.kill().expect("SIGKILL");
    b.wait().unwrap();
    // The next member joins at once, inside the dead member's session (10 s).
    produce(&brokers, &t.input, &keyed(&after)).await;
    let mut d = spawn(&brokers, &t);
    let by_id = collect_alerts(&brokers, &t.alerts, Duration::from_secs(150), |m| {
        opens(m) >= expected.len()
    })
    .await;
    for p in [&mut a, &mut c, &mut d] {
        p.kill().unwrap();
        p.wait().unwrap();
    }
    let got: Vec<serde_json::Value> = by_id
        .values()
        .filter(|v| v[0]["status"] == "OPEN")
        .map(|v| v[0].clone())
        .collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|e| !by_id.contains_key(e["alert_id"].as_str().unwrap()))
        .map(|e| format!("{}:{}", e["customer_id"], e["rule"]))
        .collect();
    assert!(
        missing.is_empty(),
        "{} expected OPEN alerts missing: {missing:?}",
        missing.len()
    );
    assert_eq!(got, expected);
    for copies in by_id.values() {
        assert!(
            copies.iter().all(|x| x == &copies[0]),
            "a re-emitted alert differs: {copies:?}"
        );
    }
}
