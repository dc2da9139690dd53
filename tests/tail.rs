//! `cx-sentinel tail` against the real broker: alerts written in each output format with the
//! repo's codecs are read back by the binary with `--from-beginning` (no `--follow`, so it stops
//! at the end of the topic), rendered one line each without colour (stdout is not a terminal),
//! or returned as JSON with `--json`.

mod common;

use common::*;
use cx_sentinel::codec::{Format, avro, json};
use cx_sentinel::model::{AlertStatus, Channel, RecoveryAlert, Severity};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn alert(n: u32, status: AlertStatus, severity: Severity, ttr: Option<i64>) -> RecoveryAlert {
    RecoveryAlert {
        alert_id: format!("case-{n}-{}", status.as_str().to_lowercase()),
        case_id: format!("case-{n}"),
        status,
        customer_id: format!("cust-{n}"),
        journey: "billing".into(),
        rule: if status == AlertStatus::Recovered {
            "recovered".into()
        } else {
            "critical_negative".into()
        },
        severity,
        priority: 50.0,
        reason: format!("payment.transfer ended FAILURE (case {n})"),
        recommended_channel: Channel::Voice,
        trigger_event_id: format!("ev-{n}"),
        event_time: 1_772_359_200_000 + n as i64 * 60_000,
        detected_at: 1_772_359_200_000 + n as i64 * 60_000,
        experience_score: -3.0,
        customer_tier: None,
        recent_touchpoints: vec![],
        time_to_recover_ms: ttr,
        attributes: Default::default(),
        actor: None,
        time_to_acknowledge_ms: None,
        time_to_resolve_ms: None,
        resolution: None,
        queue: "default".into(),
    }
}

fn alerts() -> Vec<RecoveryAlert> {
    vec![
        alert(1, AlertStatus::Open, Severity::High, None),
        alert(2, AlertStatus::Escalated, Severity::Critical, None),
        alert(1, AlertStatus::Recovered, Severity::High, Some(5_400_000)),
    ]
}

const RENDERED: [&str; 3] = [
    "2026-03-01 10:01:00Z HIGH     OPEN      cust-1 billing critical_negative -> VOICE: payment.transfer ended FAILURE (case 1)",
    "2026-03-01 10:02:00Z CRITICAL ESCALATED cust-2 billing critical_negative -> VOICE: payment.transfer ended FAILURE (case 2)",
    "2026-03-01 10:01:00Z HIGH     RECOVERED cust-1 billing recovered -> VOICE (recovered in 1 h 30 min): payment.transfer ended FAILURE (case 1)",
];

fn encode(a: &RecoveryAlert, format: Format) -> Vec<u8> {
    let mut out = Vec::new();
    match format {
        Format::Json => json::encode_alert(a, &mut out),
        Format::Avro => avro::encode_alert(a, &mut out),
        Format::ConfluentAvro => {
            let mut datum = Vec::new();
            avro::encode_alert(a, &mut datum);
            avro::confluent_frame(7, &datum, &mut out);
        }
    }
    out
}

/// Runs `cx-sentinel tail --from-beginning [extra]` on `topic`; returns (stdout, stderr).
fn tail(brokers: &str, topic: &str, format: Format, extra: &[&str]) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cx-sentinel"));
    if format == Format::ConfluentAvro {
        // What the service's config says it writes (required for confluent-avro output).
        cmd.env("CX_SENTINEL__OUTPUT__SCHEMA_IDS", "[7]");
    }
    let mut child = cmd
        .args([
            "tail",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"),
            "--from-beginning",
        ])
        .args(extra)
        .env("CX_SENTINEL__KAFKA__BROKERS", brokers)
        .env("CX_SENTINEL__KAFKA__ALERT_TOPIC", topic)
        .env("CX_SENTINEL__OUTPUT__FORMAT", format.to_string())
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tail did not stop at the end of the topic within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "tail failed: {stderr}");
    (stdout, stderr)
}

async fn topic_with(brokers: &str, records: &[Vec<u8>]) -> String {
    let topic = unique("alerts-tail");
    cx_sentinel::service::kafka::create_topics(brokers, &[(&topic, 1)])
        .await
        .unwrap();
    let keyed: Vec<(String, Vec<u8>)> = records.iter().map(|r| ("k".to_string(), r.clone())).collect();
    produce(brokers, &topic, &keyed).await;
    topic
}

async fn renders_every_format(format: Format) {
    let Some(brokers) = brokers() else { return };
    let records: Vec<Vec<u8>> = alerts().iter().map(|a| encode(a, format)).collect();
    let topic = topic_with(&brokers, &records).await;
    let (stdout, stderr) = tail(&brokers, &topic, format, &[]);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), RENDERED, "{stderr}");
    assert!(!stdout.contains('\x1b'), "colour codes on a pipe: {stdout:?}");

    let (stdout, _) = tail(&brokers, &topic, format, &["--json"]);
    let got: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let want: Vec<serde_json::Value> = alerts()
        .iter()
        .map(|a| serde_json::to_value(a).unwrap())
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_renders_json_alerts() {
    renders_every_format(Format::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_renders_avro_alerts() {
    renders_every_format(Format::Avro).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_renders_confluent_framed_avro_alerts() {
    renders_every_format(Format::ConfluentAvro).await;
}

/// A status newer than this build is shown as it is; a record that is not an alert is reported
/// (partition, offset, class; not its content) and skipped; `--json` gives JSON records byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_shows_unknown_statuses_and_skips_records_that_are_not_alerts() {
    let Some(brokers) = brokers() else { return };
    let first = encode(&alerts()[0], Format::Json);
    let withdrawn = String::from_utf8(first.clone())
        .unwrap()
        .replace("\"OPEN\"", "\"WITHDRAWN\"")
        .into_bytes();
    let topic = topic_with(&brokers, &[first.clone(), b"{\"torn".to_vec(), withdrawn.clone()]).await;

    let (stdout, stderr) = tail(&brokers, &topic, Format::Json, &[]);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [RENDERED[0], &RENDERED[0].replace("OPEN     ", "WITHDRAWN")]
    );
    assert!(
        stderr.contains("tail: partition 0 offset 1: not an alert (json): json"),
        "{stderr}"
    );
    assert!(stderr.contains("tail: 1 records were not alerts"), "{stderr}");
    assert!(!stderr.contains("torn"), "record content in stderr: {stderr}");

    let (stdout, _) = tail(&brokers, &topic, Format::Json, &["--json"]);
    let mut want = first;
    want.push(b'\n');
    want.extend_from_slice(&withdrawn);
    want.push(b'\n');
    assert_eq!(stdout.as_bytes(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_of_an_empty_topic_stops_at_once() {
    let Some(brokers) = brokers() else { return };
    let topic = topic_with(&brokers, &[]).await;
    let (stdout, _) = tail(&brokers, &topic, Format::Json, &[]);
    assert_eq!(stdout, "");
}
