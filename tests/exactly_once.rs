//! exactly_once mode against librdkafka's mock cluster (tansu 0.6 does not serve EndTxn):
//! alerts, changelog and input offsets commit in one transaction; a reader with
//! `read_committed` sees every expected alert exactly once, also when the producer is fenced.

mod common;

use common::*;
use cx_sentinel::codec::Format;
use cx_sentinel::config::{Config, Guarantee};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::{Duration, Instant};

fn lines(from: i64, to: i64) -> Vec<String> {
    payment_lines(from, to, 3)
}

/// Reads committed alerts until `want` arrived, then a little longer to catch duplicates.
async fn committed_alerts(brokers: &str, topic: &str, want: usize) -> Vec<serde_json::Value> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("eos-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
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

    let first = lines(0, 60);
    let second = lines(60, 120);
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    let expected = replay(&config, &all);
    assert_eq!(expected.len(), 40);

    produce(&brokers, &t.input, &keyed(&first)).await;
    let svc = start(config).await;
    assert_eq!(committed_alerts(&brokers, &t.alerts, 20).await.len(), 20);
    if fence {
        // The next transaction commit is refused as if a newer producer had taken over.
        cluster.request_errors(
            RDKafkaApiKey::EndTxn,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
        );
    }
    produce(&brokers, &t.input, &keyed(&second)).await;
    let got = committed_alerts(&brokers, &t.alerts, 40).await;
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
