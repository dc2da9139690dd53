//! Failed deliveries in at-least-once mode, injected with librdkafka's mock cluster: produce
//! requests are refused, or the changelog's broker is down, until librdkafka gives the records
//! up (`message.timeout.ms`); the service must send them again (alerts one by one, changelog
//! records under their batch) until they land: nothing lost, every input offset committed.

mod common;

use common::*;
use cx_sentinel::codec::Format;
use cx_sentinel::config::Config;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The sum of the group's committed offsets on `topic`.
fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .map(|c| {
            c.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    rdkafka::Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_deliveries_are_sent_again_until_they_land() {
    // Broker 1 leads the input, alert and dead-letter partitions and coordinates the group;
    // broker 2 leads the changelog's, so the changelog alone can be taken away.
    let cluster = MockCluster::new(2).unwrap();
    let brokers = cluster.bootstrap_servers();
    let t = mock_topics(&cluster);
    for (topic, partitions, leader) in [
        (&t.input, 3, 1),
        (&t.state, 3, 2),
        (&t.alerts, 1, 1),
        (&t.dlq, 1, 1),
    ] {
        for p in 0..partitions {
            cluster.partition_leader(topic, p, Some(leader)).unwrap();
        }
    }
    cluster
        .coordinator(MockCoordinator::Group(t.group.clone()), 1)
        .unwrap();
    let mut config: Config = config(&brokers, &t, Format::Json, Format::Json);
    config.processing.commit_interval = Duration::from_millis(200);
    // Compared with replay: timers follow event time only, as in replay (otherwise the idle
    // clock would fire every case's ack SLA by today's wall clock; tests/common explains).
    timers_follow_event_time_only(&mut config);
    // librdkafka gives a record up after 1 s of refused retries: the service sees the failure.
    for (k, v) in [("message.timeout.ms", "1000"), ("retry.backoff.ms", "50")] {
        config.kafka.librdkafka_options.insert(k.into(), v.into());
    }
    // First customers with failed payments (alerts), then customers with only successes (state
    // changes, no alerts).
    let first = payment_lines(0, 60, 3);
    let second = payment_lines(60, 90, 1_000);
    let lines: Vec<String> = first.iter().chain(&second).cloned().collect();
    let expected = replay(&config, &lines);
    assert_eq!(expected.len(), 20);

    produce(&brokers, &t.input, &keyed(&first)).await;
    // The service's next produce requests are refused with a retriable error (librdkafka
    // retries every 50 ms), so its first alerts and changelog batches time out inside
    // librdkafka and come back as failures.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 60],
    );
    let svc = start(config).await;

    // Every expected alert arrives (duplicates of a re-sent one carry the same id).
    let by_id = collect_alerts(&brokers, &t.alerts, Duration::from_secs(90), |by_id| {
        by_id.len() >= expected.len()
    })
    .await;
    let want: BTreeSet<String> = expected
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap().to_string())
        .collect();
    let got: BTreeSet<String> = by_id.keys().cloned().collect();
    assert_eq!(got, want, "every expected alert, none other");

    // The changelog's broker goes away while only state changes go out: changelog records time
    // out and are sent again, under their batch, until it is back.
    cluster.broker_down(2).unwrap();
    produce(&brokers, &t.input, &keyed(&second)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.broker_up(2).unwrap();

    // Every record finishes: its alerts and its state change acknowledged, its offset committed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&brokers, &t.group, &t.input, 3) < lines.len() as i64 {
        assert!(Instant::now() < deadline, "input offsets not all committed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let metrics = svc.get("/metrics").await.1;
    svc.stop().await.unwrap();
    // Both kinds of send failed at least once: alerts (one by one) and changelog records (in
    // groups, one report per batch).
    for topic in [&t.alerts, &t.state] {
        let refused = metrics
            .lines()
            .find(|l| l.starts_with("cx_sentinel_produce_errors_total{") && l.contains(topic.as_str()))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(refused > 0.0, "no failed delivery to {topic}:\n{metrics}");
    }

    // The changelog holds a state for every customer: no batch was lost to a failure.
    let records = consume(&brokers, &t.state, lines.len(), Duration::from_secs(30)).await;
    let customers: BTreeSet<Vec<u8>> = records
        .iter()
        .filter_map(|r| r.key().map(<[u8]>::to_vec))
        .collect();
    assert_eq!(customers.len(), lines.len(), "one changelog state per customer");
}
