//! Wire compatibility with an independent client: Python `confluent-kafka` + `fastavro` produce
//! Confluent-framed Avro touchpoints and decode the alerts (`scripts/wire_check.py`).

mod common;

use common::*;
use cx_sentinel::codec::Format;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_round_trip_matches_replay() {
    let Some(brokers) = brokers() else { return };
    let python = match std::env::var("CX_PYTHON") {
        Ok(p) => p,
        Err(_) if std::env::var_os("CX_REQUIRE_EXTERNAL").is_some() => {
            panic!("CX_PYTHON not set: run scripts/test.sh")
        }
        Err(_) => {
            eprintln!(
                "skipped: set CX_PYTHON to a python with confluent-kafka and fastavro (scripts/py-env.sh)"
            );
            return;
        }
    };
    let t = topics(&brokers, 1).await;
    let mut config = config(&brokers, &t, Format::ConfluentAvro, Format::ConfluentAvro);
    timers_follow_event_time_only(&mut config);
    let lines = scenario_lines();
    let expected = replay(&config, &lines);
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n")).unwrap();
    let svc = start(config).await;
    let out = tokio::process::Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/wire_check.py"))
        .args([
            "--brokers",
            &brokers,
            "--input-topic",
            &t.input,
            "--alert-topic",
            &t.alerts,
        ])
        .args([
            "--events",
            events.to_str().unwrap(),
            "--expect",
            &expected.len().to_string(),
        ])
        .output()
        .await
        .unwrap();
    svc.stop().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "wire_check failed: {stderr}");
    let mut got: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for a in &mut got {
        assert_eq!(a["_schema_id"], 2, "alerts carry the configured schema id");
        a.as_object_mut().unwrap().remove("_schema_id");
    }
    normalize(&mut got);
    assert_eq!(
        got, expected,
        "fastavro's reading differs from replay; stderr: {stderr}"
    );
}
