//! The service in-process: its topics, its configuration, starting and stopping it, and the
//! Kafka helpers around a run (topic readiness, committed offsets, reading an alert topic back).

use crate::prom::{Prom, http_get};
use crate::{Args, OUTPUT_SCHEMA_ID, OutputFormat, READER_FETCH_WAIT_MS, unique};
use anyhow::{Context, Result, bail, ensure};
use cx_sentinel::codec::Format;
use cx_sentinel::config::Config;
use cx_sentinel::metrics::ASSIGNED_PARTITIONS;
use cx_sentinel::service::{self, ServiceError};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Input, alert and dead-letter topics and a group for one service run.
pub(crate) struct ServiceTopics {
    pub(crate) input: String,
    pub(crate) alerts: String,
    dlq: String,
    /// Case actions: none are sent, but the service reads the topic (as many partitions as the
    /// input).
    actions: String,
    /// The compacted state changelog (as many partitions as the input), unless it is off.
    pub(crate) state: Option<String>,
    pub(crate) group: String,
    input_created: bool,
}

impl ServiceTopics {
    /// Creates fresh alert, dead-letter and changelog topics, and the input topic unless one is
    /// given.
    pub(crate) async fn create(
        brokers: &str,
        prefix: &str,
        input: Option<String>,
        partitions: i32,
        changelog: bool,
    ) -> Result<Self> {
        let t = Self {
            input_created: input.is_none(),
            input: input.unwrap_or_else(|| unique(&format!("{prefix}-in"))),
            alerts: unique(&format!("{prefix}-alerts")),
            dlq: unique(&format!("{prefix}-dlq")),
            actions: unique(&format!("{prefix}-actions")),
            state: changelog.then(|| unique(&format!("{prefix}-state"))),
            group: unique(&format!("{prefix}-group")),
        };
        let mut new = vec![
            (t.alerts.as_str(), 1),
            (t.dlq.as_str(), 1),
            (t.actions.as_str(), partitions),
        ];
        if t.input_created {
            new.push((t.input.as_str(), partitions));
        }
        service::kafka::create_topics(brokers, &new)
            .await
            .with_context(|| format!("creating topics on {brokers}"))?;
        if let Some(state) = &t.state {
            service::kafka::create_compacted_topics(brokers, &[(state.as_str(), partitions)])
                .await
                .with_context(|| format!("creating the changelog topic on {brokers}"))?;
        }
        for topic in t.created() {
            wait_for_topic(brokers, &topic).await?;
        }
        Ok(t)
    }

    pub(crate) fn created(&self) -> Vec<String> {
        let mut v = vec![self.alerts.clone(), self.dlq.clone(), self.actions.clone()];
        v.extend(self.state.clone());
        if self.input_created {
            v.push(self.input.clone());
        }
        v
    }
}

pub(crate) fn service_config(args: &Args, base: &Config, t: &ServiceTopics) -> Config {
    let mut c = base.clone();
    c.kafka.input_topic = t.input.clone();
    c.kafka.alert_topic = t.alerts.clone();
    c.kafka.dlq_topic = t.dlq.clone();
    c.kafka.action_topic = t.actions.clone();
    c.kafka.group_id = t.group.clone();
    if let Some(state) = &t.state {
        c.state.changelog_topic = state.clone();
    }
    c.input.format = Format::ConfluentAvro;
    c.output.format = args.output_format.format();
    if args.output_format == OutputFormat::ConfluentAvro {
        c.output.schema_ids = vec![OUTPUT_SCHEMA_ID];
    }
    c.http.listen = "127.0.0.1:0".into();
    c
}

/// cx-sentinel running in this process.
pub(crate) struct Service {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
}

fn outcome(r: std::result::Result<Result<(), ServiceError>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "it returned without an error".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("it panicked: {e}"),
    }
}

impl Service {
    pub(crate) async fn start(config: Config) -> Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let mut task = tokio::spawn(service::run(
            config,
            async {
                let _ = stopped.await;
            },
            move |a| {
                let _ = addr_tx.send(a);
            },
        ));
        match addr_rx.await {
            Ok(addr) => Ok(Self { addr, stop, task }),
            Err(_) => bail!("cx-sentinel did not start: {}", outcome((&mut task).await)),
        }
    }

    /// Fails if the service stopped on its own.
    pub(crate) async fn alive(&mut self) -> Result<()> {
        if self.task.is_finished() {
            bail!("cx-sentinel stopped: {}", outcome((&mut self.task).await));
        }
        Ok(())
    }

    pub(crate) async fn metrics(&self) -> Result<Prom> {
        let (status, body) = http_get(self.addr, "/metrics").await?;
        ensure!(status == 200, "GET /metrics answered {status}");
        Ok(Prom(body))
    }

    pub(crate) async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(90), self.task).await {
            Err(_) => bail!("cx-sentinel did not stop within 90 s"),
            Ok(r) => match r {
                Ok(Ok(())) => Ok(()),
                other => bail!("cx-sentinel failed while stopping: {}", outcome(other)),
            },
        }
    }

    /// Waits until every input partition is assigned.
    pub(crate) async fn wait_assigned(&mut self, partitions: i32, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.alive().await?;
            if self.metrics().await?.sum(ASSIGNED_PARTITIONS) >= f64::from(partitions) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "cx-sentinel was not assigned {partitions} partitions within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until the broker lists `topic` with a leader for every partition. A client that fetches
/// a topic tansu 0.6 does not know yet gets an answer (a `CurrentLeader` tag without a topic id)
/// on which librdkafka 2.12 dereferences a null topic name and crashes the process.
pub(crate) async fn wait_for_topic(brokers: &str, topic: &str) -> Result<()> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .context("creating a metadata client")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let md = client.fetch_metadata(Some(&topic), Duration::from_secs(5));
            if let Ok(md) = &md
                && let Some(t) = md.topics().iter().find(|t| t.name() == topic)
                && t.error().is_none()
                && !t.partitions().is_empty()
                && t.partitions()
                    .iter()
                    .all(|p| p.leader() >= 0 && p.error().is_none())
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "topic {topic} has no leader for every partition after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await?
}

/// Sum of the offsets the consumer's group committed on `topic`, partitions `0..partitions`.
pub(crate) fn committed(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Result<u64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .with_context(|| format!("reading the committed offsets on {topic}"))?;
    Ok(got
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o.max(0) as u64,
            _ => 0,
        })
        .sum())
}

/// Reads a single-partition alert topic from the beginning: (records, distinct `alert_id`s,
/// records that do not decode as a `RecoveryAlert` in `format`). Stops 2 s after the last record
/// once `expected` arrived, or 5 s after the last one before. (The broker's high watermark is not
/// used: tansu 0.6 sometimes reports one less.)
pub(crate) async fn read_alert_topic(
    brokers: &str,
    topic: &str,
    format: Format,
    expected: u64,
) -> Result<(u64, u64, u64)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("bench-alert-count"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", READER_FETCH_WAIT_MS.to_string())
        .create()
        .with_context(|| format!("creating a reader of {topic}"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut ids = std::collections::HashSet::new();
    let (mut records, mut undecodable) = (0u64, 0u64);
    loop {
        let idle = if records >= expected { 2 } else { 5 };
        match tokio::time::timeout(Duration::from_secs(idle), consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => bail!("reading {topic}: {e}"),
            Ok(Ok(m)) => {
                records += 1;
                match cx_sentinel::demo::decode_alert(format, m.payload().unwrap_or_default()) {
                    Ok(alert) => {
                        ids.insert(alert.alert_id);
                    }
                    Err(_) => undecodable += 1,
                }
            }
        }
    }
    Ok((records, ids.len() as u64, undecodable))
}
