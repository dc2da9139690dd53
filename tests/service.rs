//! The service against a real Kafka-protocol broker: end-to-end per format, dead letters,
//! graceful shutdown, metrics and the HTTP endpoints. Random topic and group names per test.

mod common;

use common::*;
use cx_sentinel::codec::{Format, avro};

use rdkafka::message::{Headers, Message};

use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn encode_lines(lines: &[String], format: Format) -> Vec<(String, Vec<u8>)> {
    keyed(lines)
        .into_iter()
        .map(|(key, json)| {
            let tp = cx_sentinel::codec::json::decode_touchpoint(&json, &|_| false).unwrap();
            let payload = match format {
                Format::Json => json,
                Format::Avro => avro::encode_touchpoint(&tp),
                Format::ConfluentAvro => {
                    let mut b = Vec::new();
                    avro::confluent_frame(1, &avro::encode_touchpoint(&tp), &mut b);
                    b
                }
            };
            (key, payload)
        })
        .collect()
}

/// All golden scenarios through the live service on one partition give exactly what replay gives.
async fn end_to_end(input: Format, output: Format) {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let mut config = config(&brokers, &t, input, output);
    timers_follow_event_time_only(&mut config);
    let lines = scenario_lines();
    let expected = replay(&config, &lines);
    assert!(
        expected.len() >= 8,
        "scenarios should produce alerts: {expected:?}"
    );
    let svc = start(config).await;
    produce(&brokers, &t.input, &encode_lines(&lines, input)).await;
    let got = alerts(output, &consume(&brokers, &t.alerts, expected.len(), WAIT).await);
    assert_eq!(got, expected);
    svc.stop().await.unwrap();
}

/// The shipped config (an hour of lateness): one critical touchpoint on an otherwise silent
/// partition pages at once, and the case's SLA escalates on time with no further traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_trigger_pages_at_once_and_its_sla_fires_on_a_silent_partition() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let config = config(&brokers, &t, Format::Json, Format::Json);
    let sla = config.engine.case_sla.as_millis() as i64;
    let svc = start(config).await;
    // Opened 4 h minus 5 s ago: its SLA falls due 5 s from now.
    let line = recent_line("lone", "c-lone", sla - 5_000, "payment.transfer", "FAILURE");
    produce(&brokers, &t.input, &keyed(&[line])).await;
    // Decoded as they are (`alerts` drops `detected_at`). Three: OPEN, the acknowledgement SLA
    // (15 min, long past, nobody acknowledged) and the recovery SLA.
    let got: Vec<serde_json::Value> = consume(&brokers, &t.alerts, 3, WAIT)
        .await
        .iter()
        .map(|m| {
            serde_json::to_value(cx_sentinel::demo::decode_alert(Format::Json, m.payload().unwrap()).unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got.iter().filter(|a| a["status"] == "OPEN").count(), 1, "{got:?}");
    assert!(got.iter().any(|a| a["rule"] == "ack_sla_breach"), "{got:?}");
    let escalation = got
        .iter()
        .find(|a| a["status"] == "ESCALATED" && a["rule"] == "sla_breach")
        .expect("the SLA fired");
    let deadline = escalation["event_time"].as_i64().unwrap();
    let detected = escalation["detected_at"].as_i64().unwrap();
    assert!(
        detected >= deadline,
        "fired at {detected}, before its deadline {deadline}"
    );
    eprintln!(
        "sla escalation detected {} ms after its deadline",
        detected - deadline
    );
    svc.stop().await.unwrap();
}

/// A touchpoint stamped far ahead of its record's timestamp is one dead letter (`future`); the
/// partition's clock does not move, so the touchpoints after it are not late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_clock_is_one_dead_letter() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let svc = start(config(&brokers, &t, Format::Json, Format::Json)).await;
    produce(
        &brokers,
        &t.input,
        &keyed(&[
            recent_line("wrong", "c-a", -3_600_000, "faq.view", "SUCCESS"),
            recent_line("after", "c-b", 600_000, "payment.transfer", "FAILURE"),
        ]),
    )
    .await;
    let dlq = consume(&brokers, &t.dlq, 1, WAIT).await;
    assert_eq!(header(&dlq[0], "cx.error.class").as_deref(), Some("future"));
    let got = alerts(Format::Json, &consume(&brokers, &t.alerts, 1, WAIT).await);
    assert_eq!(
        got[0]["customer_id"], "c-b",
        "the next touchpoint was applied, not late"
    );
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_json_matches_replay() {
    end_to_end(Format::Json, Format::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_avro_matches_replay() {
    end_to_end(Format::Avro, Format::Avro).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_confluent_avro_matches_replay() {
    end_to_end(Format::ConfluentAvro, Format::ConfluentAvro).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_pill_is_dead_lettered_and_the_partition_moves_on() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let config = config(&brokers, &t, Format::Json, Format::Json);
    let svc = start(config).await;
    let mut records = keyed(&[tp_line("a", "c1", 0, "payment.transfer", "FAILURE")]);
    records.push(("c2".into(), b"{\"event_id\": \"torn".to_vec()));
    records.extend(keyed(&[
        tp_line("b", "c3", 1, "faq.view", "SUCCESS"),
        // 91 minutes behind the newest event: beyond the shipped hour of lateness.
        tp_line("late", "c4", -90, "payment.transfer", "FAILURE"),
        tp_line("c", "c5", 15, "account.unlock", "FAILURE"),
        tp_line("d", "c6", 40, "faq.view", "SUCCESS"),
    ]));
    produce(&brokers, &t.input, &records).await;

    let dlq = consume(&brokers, &t.dlq, 2, WAIT).await;
    assert_eq!(dlq.len(), 2);
    let header = |m: &rdkafka::message::OwnedMessage, key: &str| -> String {
        header(m, key).unwrap_or_else(|| panic!("header {key}"))
    };
    assert_eq!(
        dlq[0].payload().unwrap(),
        b"{\"event_id\": \"torn",
        "payload unchanged"
    );
    assert_eq!(dlq[0].key().unwrap(), b"c2");
    assert_eq!(header(&dlq[0], "cx.error.class"), "json");
    assert!(header(&dlq[0], "cx.error").starts_with("invalid JSON"));
    assert_eq!(header(&dlq[0], "cx.source.topic"), t.input);
    assert_eq!(header(&dlq[0], "cx.source.partition"), "0");
    assert_eq!(header(&dlq[0], "cx.source.offset"), "1");
    assert_eq!(header(&dlq[1], "cx.error.class"), "late");
    assert_eq!(header(&dlq[1], "cx.source.offset"), "3");

    // Records after the poison pill were processed: c5's failure pages as it arrives.
    let got = alerts(Format::Json, &consume(&brokers, &t.alerts, 2, WAIT).await);
    let customers: Vec<&str> = got.iter().map(|a| a["customer_id"].as_str().unwrap()).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        customers.contains(&"c1") && customers.contains(&"c5"),
        "{customers:?}"
    );

    let (_, metrics) = svc.get("/metrics").await;
    assert!(
        metrics.contains("cx_sentinel_dead_letters_total{reason=\"json\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cx_sentinel_dead_letters_total{reason=\"late\"} 1"),
        "{metrics}"
    );
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_commits_offsets_so_a_restart_reprocesses_nothing() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let config = config(&brokers, &t, Format::Json, Format::Json);
    let lines: Vec<String> = (0..50)
        .map(|i| {
            tp_line(
                &format!("e{i}"),
                &format!("c{i}"),
                i,
                "payment.transfer",
                "FAILURE",
            )
        })
        .collect();
    produce(&brokers, &t.input, &keyed(&lines)).await;
    let svc = start(config.clone()).await;
    let got = consume(&brokers, &t.alerts, 50, WAIT).await;
    assert_eq!(got.len(), 50);
    svc.stop().await.unwrap();
    assert_eq!(committed(&brokers, &t.group, &t.input).await, 50);

    let svc = start(config).await;
    svc.wait_ready(WAIT).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, metrics) = svc.get("/metrics").await;
    assert!(
        metrics.contains("cx_sentinel_assigned_partitions 1"),
        "restart did not take the partition: {metrics}"
    );
    assert!(
        metrics.contains("cx_sentinel_records_consumed_total{partition=\"0\"} 0"),
        "restart re-processed records: {metrics}"
    );
    svc.stop().await.unwrap();
    // Each case pages once, and (nobody acknowledging it) escalates once on the ack SLA; nothing
    // is published twice across the restart.
    let all = alerts(
        Format::Json,
        &consume(&brokers, &t.alerts, 1_000, Duration::from_secs(3)).await,
    );
    let ids: std::collections::BTreeSet<&str> = all.iter().map(|a| a["alert_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "an alert published twice");
    assert_eq!(all.iter().filter(|a| a["status"] == "OPEN").count(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_customer_endpoints() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 2).await;
    let mut config = config(&brokers, &t, Format::Json, Format::Json);
    // The shipped config serves no customer data; this test is about that endpoint too.
    config.http.auth_token = Some(cx_sentinel::config::Secret::new(TEST_TOKEN));
    let svc = start(config).await;
    assert_eq!(svc.get("/health/live").await.0, 200);
    svc.wait_ready(WAIT).await;
    let mut lines = scenario_lines();
    lines.push(
        serde_json::json!({
            "event_id": "last", "customer_id": "cust-vip-99", "occurred_at": t0() + 60_000,
            "channel": "CHAT", "kind": "INTERACTION", "direction": "INBOUND", "journey": "payment",
            "touchpoint": "payment.transfer", "outcome": "FAILURE", "customer_tier": "vip",
            "attributes": {"card_number": "4111111111111111", "order": "7"}
        })
        .to_string(),
    );
    produce(&brokers, &t.input, &keyed(&lines)).await;
    let n = consume(&brokers, &t.alerts, 8, WAIT).await.len();
    assert!(n >= 8);
    // Wait for the acknowledgements to be counted.
    let mut text = String::new();
    for _ in 0..50 {
        text = svc.get("/metrics").await.1;
        if text.contains("cx_sentinel_alerts_total") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid text format");
    let sum = |name: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(sum("cx_sentinel_records_consumed_total"), lines.len() as f64);
    assert!(sum("cx_sentinel_alerts_total") >= 8.0);
    assert_eq!(sum("cx_sentinel_assigned_partitions"), 2.0);
    assert!(text.contains("cx_sentinel_end_to_end_latency_seconds_bucket"));
    assert!(text.contains("cx_sentinel_processing_duration_seconds_count"));

    // Customer data needs the token: none, a wrong one, then the right one.
    assert_eq!(svc.get("/customers/cust-vip-99").await.0, 401);
    let wrong = "Authorization: Bearer test-token-0123456789abcdeX\r\n";
    let (status, body) = http_get_with(svc.addr, "/customers/cust-vip-99", wrong).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("vip"), "{body}");
    let (status, body) = svc.get_customer("cust-vip-99").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["customer_tier"], "vip");
    assert_eq!(v["open_cases"][0]["rule"], "critical_negative");
    assert!(!body.contains("4111111111111111"));
    assert_eq!(svc.get_customer("nobody").await.0, 404);
    svc.stop().await.unwrap();
}

/// A record whose sensitive attribute is malformed (an SSN sent as a number) is dead-lettered
/// with an error that names the problem, not the value: no header of the dead letter and nothing
/// on `/metrics` carries it (the payload is kept unchanged, by design, for replays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_sensitive_value_leaves_no_trace_in_headers_or_metrics() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let svc = start(config(&brokers, &t, Format::Json, Format::Json)).await;
    let mut v: serde_json::Value = serde_json::from_str(&recent_line(
        "ssn",
        "c-ssn",
        60_000,
        "payment.transfer",
        "FAILURE",
    ))
    .unwrap();
    v["attributes"] = serde_json::json!({"ssn": 987654321});
    produce(&brokers, &t.input, &keyed(&[v.to_string()])).await;
    let dlq = consume(&brokers, &t.dlq, 1, WAIT).await;
    let headers = dlq[0].headers().expect("dead letters carry headers");
    let mut error = String::new();
    for h in headers.iter() {
        let value = String::from_utf8_lossy(h.value.unwrap_or_default()).to_string();
        assert!(
            !value.contains("987654321"),
            "header {} carries the value: {value}",
            h.key
        );
        if h.key == "cx.error" {
            error = value;
        }
    }
    assert!(error.contains("invalid type"), "{error}");
    assert!(!svc.get("/metrics").await.1.contains("987654321"));
    svc.stop().await.unwrap();
}

/// Oversized input (a 210 KB tier of three-byte characters; a 70 KB record) is one dead letter
/// each with reason `too_large`, and the partition moves on to the next record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_input_is_dead_lettered_as_too_large() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let svc = start(config(&brokers, &t, Format::Json, Format::Json)).await;
    let mut tier: serde_json::Value =
        serde_json::from_str(&recent_line("big-tier", "c-1", 60_000, "faq.view", "SUCCESS")).unwrap();
    tier["customer_tier"] = serde_json::Value::from("€".repeat(70_000));
    let mut record: serde_json::Value =
        serde_json::from_str(&recent_line("big-record", "c-2", 60_000, "faq.view", "SUCCESS")).unwrap();
    record["padding"] = serde_json::Value::from("x".repeat(70_000));
    let next = recent_line("next", "c-3", 60_000, "payment.transfer", "FAILURE");
    produce(
        &brokers,
        &t.input,
        &keyed(&[tier.to_string(), record.to_string(), next]),
    )
    .await;
    let dlq = consume(&brokers, &t.dlq, 2, WAIT).await;
    for m in &dlq {
        assert_eq!(header(m, "cx.error.class").as_deref(), Some("too_large"));
    }
    let got = alerts(Format::Json, &consume(&brokers, &t.alerts, 1, WAIT).await);
    assert_eq!(got[0]["customer_id"], "c-3");
    svc.stop().await.unwrap();
}

/// With the shipped config (no `http.auth_token`) customer data is not served at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_data_is_off_without_a_token() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let svc = start(config(&brokers, &t, Format::Json, Format::Json)).await;
    let (status, body) = svc.get_customer("anyone").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("http.auth_token"), "{body}");
    assert_eq!(svc.get("/health/live").await.0, 200);
    assert_eq!(svc.get("/metrics").await.0, 200);
    svc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topic_is_a_clear_startup_error() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let mut config = config(&brokers, &t, Format::Json, Format::Json);
    config.kafka.alert_topic = unique("never-created");
    let svc = start(config.clone()).await;
    let err = svc.stop().await.unwrap_err().to_string();
    assert!(
        err.contains("kafka.alert_topic") && err.contains(&config.kafka.alert_topic),
        "{err}"
    );
    assert!(err.contains("does not exist"), "{err}");
}

/// A schema registry that refuses every request with 401 (and counts them).
fn refusing_registry() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // Reads the request head (GET: no body), then refuses.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ =
                s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        }
    });
    (url, asked)
}

/// Issue 16: refused registry credentials stop the service with a non-zero exit and a message
/// naming the keys to check, never the password (they were retried forever, ignoring SIGTERM).
#[tokio::test(flavor = "multi_thread")]
async fn refused_registry_credentials_end_the_instance_with_a_clear_message() {
    let Some(brokers) = brokers() else { return };
    let t = topics(&brokers, 1).await;
    let (url, asked) = refusing_registry();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = spawn_with(
        &brokers,
        &t,
        &default_config_path(),
        &[
            ("CX_SENTINEL__INPUT__FORMAT", "confluent-avro"),
            ("CX_SENTINEL__SCHEMA_REGISTRY__URL", &url),
            ("CX_SENTINEL__SCHEMA_REGISTRY__USERNAME", "cx-sentinel"),
            ("CX_SENTINEL__SCHEMA_REGISTRY__PASSWORD", "hunter2-registry"),
        ],
        Some(&log),
    );
    let lines = payment_lines(0, 1, 1);
    produce(&brokers, &t.input, &encode_lines(&lines, Format::ConfluentAvro)).await;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > WAIT {
            let _ = child.kill();
            panic!(
                "still running {WAIT:?} after a 401: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("HTTP 401") && stderr.contains("schema_registry.password"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // One lookup, not a retry loop.
    assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 1);
}
