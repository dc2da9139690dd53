//! exactly_once mode: alerts, changelog and the offsets of both inputs (touchpoints, case
//! actions) commit in one transaction; a reader
//! with `read_committed` sees every expected alert exactly once. Against the tansu broker process:
//! a SIGKILL mid-stream and a restart, with state restored from the committed changelog. Against
//! librdkafka's mock cluster: a fenced producer (`PRODUCER_FENCED` on EndTxn), a fault only the
//! mock can inject.

mod common;

use common::*;
use cx_sentinel::codec::Format;
use cx_sentinel::config::{Config, Guarantee};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::path::Path;
use std::time::{Duration, Instant};

fn lines(from: i64, to: i64) -> Vec<String> {
    payment_lines(from, to, 3)
}

/// Reads committed alerts until `want` arrived, then a little longer to catch duplicates.
async fn committed_alerts(brokers: &str, topic: &str, want: usize) -> Vec<serde_json::Value> {
    let c = reader(brokers, topic, &[("isolation.level", "read_committed")]);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut quiet_until: Option<Instant> = None;
    while Instant::now() < deadline && quiet_until.is_none_or(|q| Instant::now() < q) {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), c.recv()).await {
            got.push(m.detach());
        }
        if got.len() >= want && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_secs(3));
        }
    }
    let mut v = alerts(Format::Json, &got);
    v.sort_by(|a, b| a["alert_id"].as_str().cmp(&b["alert_id"].as_str()));
    v
}

async fn run(fence: bool) {
    let cluster = MockCluster::new(3).unwrap();
    let brokers = cluster.bootstrap_servers();
    let t = mock_topics(&cluster);
    let mut config: Config = config(&brokers, &t, Format::Json, Format::Json);
    config.processing.guarantee = Guarantee::ExactlyOnce;
    config.processing.commit_interval = Duration::from_millis(200);
    // Compared with replay: timers follow event time only, as in replay (otherwise the idle
    // clock would fire every case's ack SLA by today's wall clock; tests/common explains).
    timers_follow_event_time_only(&mut config);

    let first = lines(0, 60);
    let second = lines(60, 120);
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    let early = replay(&config, &first);
    // Agents acknowledge every case the first half opens, a minute after it opened, and resolve
    // every other one a minute later: the actions share the transactions with the touchpoints.
    // (The mock cluster keeps no offsets committed in a transaction; the broker test below
    // checks the action offsets.)
    let actions: Vec<(String, String)> = early
        .iter()
        .enumerate()
        .flat_map(|(i, a)| {
            let (case, customer) = (a["case_id"].as_str().unwrap(), a["customer_id"].as_str().unwrap());
            let at = a["event_time"].as_i64().unwrap();
            let ack = action_line(
                &format!("ack-{i}"),
                case,
                customer,
                "ACKNOWLEDGE",
                at + 60_000,
                None,
            );
            let resolve = (i % 2 == 0).then(|| {
                action_line(
                    &format!("res-{i}"),
                    case,
                    customer,
                    "RESOLVE",
                    at + 120_000,
                    Some("refunded"),
                )
            });
            std::iter::once(ack)
                .chain(resolve)
                .map(move |line| (customer.to_string(), line))
        })
        .collect();
    let action_lines: Vec<String> = actions.iter().map(|(_, l)| l.clone()).collect();
    let expected = replay_with_actions(&config, &all, &action_lines);
    let acted = expected
        .iter()
        .filter(|a| a["status"] == "ACKNOWLEDGED" || a["status"] == "RESOLVED")
        .count();
    assert!(
        early.len() >= 20 && acted == actions.len() && expected.len() > early.len() + acted,
        "{} then {} ({acted} by agents)",
        early.len(),
        expected.len()
    );

    produce(&brokers, &t.input, &keyed(&first)).await;
    let svc = start(config).await;
    assert_eq!(
        committed_alerts(&brokers, &t.alerts, early.len()).await.len(),
        early.len()
    );
    if fence {
        // The next transaction commit is refused as if a newer producer had taken over.
        cluster.request_errors(
            RDKafkaApiKey::EndTxn,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
        );
    }
    let records: Vec<(String, Vec<u8>)> = actions
        .iter()
        .map(|(customer, line)| (customer.clone(), line.clone().into_bytes()))
        .collect();
    produce(&brokers, &t.actions, &records).await;
    produce(&brokers, &t.input, &keyed(&second)).await;
    let got = committed_alerts(&brokers, &t.alerts, expected.len()).await;
    let metrics = svc.get("/metrics").await.1;
    svc.stop().await.unwrap();
    assert_eq!(got, expected, "each expected alert exactly once");
    if fence {
        assert!(
            metrics.contains("cx_sentinel_transaction_aborts_total{reason="),
            "{metrics}"
        );
    }
    assert!(
        !metrics.contains("cx_sentinel_transaction_commits_total 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_alerts_are_committed_once() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_producer_recovers_without_loss_or_duplicates() {
    run(true).await;
}

fn contact(i: i64, customer: &str) -> String {
    serde_json::json!({
        "event_id": format!("{customer}-{i}"), "customer_id": customer,
        "occurred_at": t0() + i * 600_000, "channel": "VOICE", "kind": "INTERACTION",
        "direction": "INBOUND", "journey": "cancellation", "touchpoint": "support.call", "outcome": "PENDING"
    })
    .to_string()
}

/// A failed payment (one OPEN alert) half an hour after the first calls, so never late.
fn failed_payment(i: i64) -> String {
    serde_json::json!({
        "event_id": format!("pay-{i}"), "customer_id": format!("payer-{i}"),
        "occurred_at": t0() + 1_800_000 + i, "channel": "WEB", "kind": "INTERACTION",
        "direction": "INBOUND", "journey": "billing", "touchpoint": "payment.transfer", "outcome": "FAILURE"
    })
    .to_string()
}

/// The real binary in exactly_once mode on the broker: stopped by SIGTERM mid-stream (it commits
/// its open transaction), restarted at once, and every alert committed exactly once. 60
/// customers call three times before the stop and once after it: their high_effort alerts need
/// the state the restarted instance restored from the committed changelog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_on_the_broker_survives_a_stop_and_restart() {
    on_the_broker("-TERM").await;
}

/// As above with SIGKILL. Ignored: tansu 510f3e2 cannot pass it (docs/broker.md). The killed
/// producer's open transaction is either never aborted (a new transactional.id: its storage times
/// no transaction out, so read_committed readers stop for good at that transaction's first
/// record) or, with the transactional.id the restart shares, aborted by the restart's
/// init_transactions but its records stay visible to read_committed readers (duplicates). Run it
/// against a broker that aborts transactions properly: `cargo test --test exactly_once -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tansu 510f3e2 keeps a killed producer's transaction open or its aborted records visible"]
async fn exactly_once_on_the_broker_survives_sigkill_and_restart() {
    on_the_broker("-KILL").await;
}

async fn on_the_broker(signal: &str) {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 3).await;
    let customers: Vec<String> = (0..60).map(|c| format!("eos-cust-{c}")).collect();
    let before: Vec<String> = (0..3)
        .flat_map(|i| customers.iter().map(move |c| contact(i, c)))
        .chain((0..3000).map(failed_payment))
        .collect();
    let after: Vec<String> = customers.iter().map(|c| contact(10, c)).collect();
    let config = Config::default();
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    let expected: Vec<serde_json::Value> = replay(&config, &all)
        .into_iter()
        .filter(|a| a["status"] == "OPEN")
        .collect();
    assert_eq!(expected.iter().filter(|a| a["rule"] == "high_effort").count(), 60);
    assert_eq!(expected.len(), 3060);

    let eos = [("CX_SENTINEL__PROCESSING__GUARANTEE", "exactly_once")];
    // The shipped config plus one transactional.id that the restarted instance shares with the
    // stopped one, as an orchestrator restarting "the same instance" would give it: after a
    // SIGKILL the restart's init_transactions then aborts the killed producer's open transaction
    // at once, where a new id leaves it to the broker's transaction timeout (60 s).
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(default_config_path()).unwrap();
    let table = "[kafka.librdkafka_options]\n";
    assert!(shipped.contains(table));
    let config_file = dir.path().join("config.toml");
    std::fs::write(
        &config_file,
        shipped.replace(table, &format!("{table}\"transactional.id\" = \"{}\"\n", t.group)),
    )
    .unwrap();
    produce(&brokers, &t.input, &keyed(&before)).await;
    let mut first = spawn_with(&brokers, &t, &config_file, &eos, None);
    let early = collect_committed(&brokers, &t.alerts, Duration::from_secs(120), |n| n >= 1000).await;
    assert!(
        early.len() >= 1000,
        "{} alerts committed before the stop",
        early.len()
    );
    // Agents acknowledge ten of the committed cases while the first instance runs; the stop
    // lands before, during or after their transactions, and each is applied exactly once.
    let acks: Vec<(String, Vec<u8>)> = early
        .iter()
        .filter(|a| a["status"] == "OPEN")
        .take(10)
        .enumerate()
        .map(|(i, a)| {
            let customer = a["customer_id"].as_str().unwrap();
            let at = a["event_time"].as_i64().unwrap() + 60_000;
            let line = action_line(
                &format!("ack-{i}"),
                a["case_id"].as_str().unwrap(),
                customer,
                "ACKNOWLEDGE",
                at,
                None,
            );
            (customer.to_string(), line.into_bytes())
        })
        .collect();
    assert_eq!(acks.len(), 10);
    produce(&brokers, &t.actions, &acks).await;
    let sent = std::process::Command::new("kill")
        .args([signal, &first.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal}");
    first.wait().unwrap();

    produce(&brokers, &t.input, &keyed(&after)).await;
    let log = dir.path().join("second.log");
    let log = std::env::var("CX_TEST_CHILD_LOG_DIR").map_or(log, |d| Path::new(&d).join("second.log"));
    let mut second = spawn_with(&brokers, &t, &config_file, &eos, Some(&log));
    let got = collect_committed(&brokers, &t.alerts, Duration::from_secs(150), |n| {
        n >= expected.len() + acks.len()
    })
    .await;
    // A little longer: a duplicate would arrive after the last expected alert.
    let got = if got.len() >= expected.len() {
        collect_committed(&brokers, &t.alerts, Duration::from_secs(5), |_| false).await
    } else {
        got
    };
    second.kill().unwrap();
    second.wait().unwrap();
    // State came from the committed changelog, not from a restore that gave up half-way.
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("state restore failed"), "{log}");

    let mut ids: Vec<&str> = got.iter().map(|a| a["alert_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let distinct = {
        let mut d = ids.clone();
        d.dedup();
        d.len()
    };
    assert_eq!(distinct, ids.len(), "an alert_id was committed twice");
    let missing: Vec<String> = expected
        .iter()
        .filter(|e| ids.binary_search(&e["alert_id"].as_str().unwrap()).is_err())
        .map(|e| format!("{}:{}", e["customer_id"], e["rule"]))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} committed, expected alerts missing, e.g. {missing:?}",
        ids.len(),
        expected.len()
    );
    let acked = got.iter().filter(|a| a["status"] == "ACKNOWLEDGED").count();
    assert_eq!(acked, acks.len(), "each acknowledgement published once");
    assert_eq!(
        committed_sum(&brokers, &t.group, &t.actions, 3).await,
        acks.len() as i64,
        "the action offsets committed with the transactions that published them"
    );
    let opens: Vec<serde_json::Value> = got.into_iter().filter(|a| a["status"] == "OPEN").collect();
    assert_eq!(opens, expected);
}

/// Every committed alert on `topic` (read_committed, from the beginning), normalized, once `done`
/// says so of their count or `timeout` passed.
async fn collect_committed(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(usize) -> bool,
) -> Vec<serde_json::Value> {
    let c = reader(brokers, topic, &[("isolation.level", "read_committed")]);
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while !done(got.len()) && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), c.recv()).await {
            got.push(m.detach());
        }
    }
    alerts(Format::Json, &got)
}

/// exactly_once on a quiet partition: an SLA escalation fired by the idle clock goes into the open
/// transaction, which commits on the next tick although no record arrives after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sla_escalation_is_committed_under_exactly_once() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let mut config = config(&brokers, &t, Format::Json, Format::Json);
    // The subject of the test (the shipped guarantee is at_least_once).
    config.processing.guarantee = Guarantee::ExactlyOnce;
    let sla = config.engine.case_sla.as_millis() as i64;
    let svc = start(config).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Opened 4 h minus 3 s ago: its SLA falls due 3 s from now, and nothing follows it.
    let line = serde_json::json!({
        "event_id": "quiet-1", "customer_id": "c-quiet", "occurred_at": now - sla + 3_000,
        "channel": "WEB", "kind": "INTERACTION", "direction": "INBOUND", "journey": "billing",
        "touchpoint": "payment.transfer", "outcome": "FAILURE"
    })
    .to_string();
    produce(&brokers, &t.input, &keyed(&[line])).await;
    // OPEN, the ack SLA's escalation (15 min, long past) and the recovery SLA's.
    let got = committed_alerts(&brokers, &t.alerts, 3).await;
    let statuses: Vec<&str> = got.iter().map(|a| a["status"].as_str().unwrap()).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().any(|a| a["rule"] == "sla_breach"), "{got:?}");
    assert!(
        statuses.contains(&"OPEN") && statuses.contains(&"ESCALATED"),
        "{statuses:?}"
    );
    svc.stop().await.unwrap();
}
