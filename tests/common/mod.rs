//! Helpers for the tests that talk to a real broker (`scripts/test.sh` starts one and sets
//! `CX_KAFKA_BROKERS`; with `CX_REQUIRE_EXTERNAL=1` a missing broker fails the test).
#![allow(dead_code)]

pub mod tools;

use cx_sentinel::codec::Format;
use cx_sentinel::config::Config;
use cx_sentinel::model::Touchpoint;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The broker to test against, or `None` (test skipped) when none is configured and none is required.
pub fn brokers() -> Option<String> {
    match std::env::var("CX_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if std::env::var_os("CX_REQUIRE_EXTERNAL").is_some() => {
            panic!("CX_KAFKA_BROKERS is not set but CX_REQUIRE_EXTERNAL is: run scripts/test.sh")
        }
        _ => {
            eprintln!("skipped: no broker (set CX_KAFKA_BROKERS, or run scripts/test.sh)");
            None
        }
    }
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct Topics {
    pub state: String,
    pub input: String,
    pub alerts: String,
    pub dlq: String,
    pub actions: String,
    pub group: String,
}

impl Topics {
    /// Fresh names for one test's topics and group.
    pub fn unique() -> Self {
        Topics {
            state: unique("state"),
            input: unique("tp"),
            alerts: unique("alerts"),
            dlq: unique("dlq"),
            actions: unique("actions"),
            group: unique("group"),
        }
    }
}

/// Fresh topics on librdkafka's mock cluster: input and changelog with 3 partitions, alerts and
/// dead letters with 1.
pub fn mock_topics<C: rdkafka::ClientContext>(cluster: &rdkafka::mocking::MockCluster<'_, C>) -> Topics {
    let t = Topics::unique();
    for (topic, partitions) in [
        (&t.input, 3),
        (&t.state, 3),
        (&t.alerts, 1),
        (&t.dlq, 1),
        (&t.actions, 3),
    ] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    t
}

pub async fn topics(brokers: &str, input_partitions: i32) -> Topics {
    let t = Topics::unique();
    cx_sentinel::service::kafka::create_topics(
        brokers,
        &[
            (&t.input, input_partitions),
            (&t.alerts, 1),
            (&t.dlq, 1),
            (&t.actions, input_partitions),
        ],
    )
    .await
    .expect("creating test topics");
    cx_sentinel::service::kafka::create_compacted_topics(brokers, &[(&t.state, input_partitions)])
        .await
        .expect("creating the changelog topic");
    t
}

/// `http.auth_token` of the tests that read `/customers/{id}`: the shipped config has none, so
/// the endpoint is off (403) unless a deployment sets one.
pub const TEST_TOKEN: &str = "test-token-0123456789abcdef";

/// The event time broker tests' touchpoints start at: three hours ago, to the minute. Live, the
/// service checks event time against the record's timestamp (max clock skew) and idle partitions
/// fire timers by the wall clock, so test data lives near now, as real traffic does: the 4 h SLA
/// of a case it opens falls due only after the test.
pub fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        (now - 3 * 3_600_000) / 60_000 * 60_000
    })
}

/// For tests that compare the live service with `replay` over the golden scenarios, which span
/// 320 days of event time: on an idle partition their SLA and expiry timers would fire by today's
/// wall clock, which `replay` reaches only with `--until`. Overrides the shipped
/// `engine.idle_timeout` (1 s) so timers follow event time alone, as in `replay`; the idle clock
/// itself is tested with the shipped default in tests/service.rs.
pub fn timers_follow_event_time_only(c: &mut Config) {
    c.engine.idle_timeout = Duration::from_secs(86_400);
}

/// Test config: the shipped defaults (`config/default.toml`), HTTP on an ephemeral port, and the
/// given topics.
pub fn config(brokers: &str, t: &Topics, input: Format, output: Format) -> Config {
    let mut c = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")).unwrap();
    c.kafka.brokers = brokers.to_string();
    c.kafka.input_topic = t.input.clone();
    c.kafka.alert_topic = t.alerts.clone();
    c.kafka.dlq_topic = t.dlq.clone();
    c.kafka.action_topic = t.actions.clone();
    c.kafka.group_id = t.group.clone();
    c.state.changelog_topic = t.state.clone();
    c.input.format = input;
    c.output.format = output;
    if output == Format::ConfluentAvro {
        c.output.schema_ids = vec![2];
    }
    c.http.listen = "127.0.0.1:0".into();
    c.service.shutdown_timeout = Duration::from_secs(10);
    c
}

/// Every golden scenario's input, one after another: scenario k is shifted k x 40 days later in
/// event time so none lands behind the previous one's watermark (the cases left open by one
/// scenario then escalate and expire during the next: timers are exercised too).
pub fn scenario_lines() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for (k, d) in names.iter().enumerate() {
        for line in std::fs::read_to_string(d.join("input.jsonl")).unwrap().lines() {
            let mut v: Value = serde_json::from_str(line).unwrap();
            let t = match &v["occurred_at"] {
                Value::String(s) => cx_sentinel::codec::json::parse_rfc3339(s).unwrap(),
                other => other.as_i64().unwrap(),
            };
            v["occurred_at"] = Value::from(t + k as i64 * 40 * 86_400_000);
            out.push(v);
        }
    }
    // Moved in time so the newest touchpoint is at `t0()`: behind the records' timestamps, as
    // real traffic is (the service dead-letters event times ahead of them). A scenario's
    // deliberately wrong clock (stamped 2030 or later) stays wrong.
    const WRONG_CLOCK: i64 = 1_893_456_000_000;
    let newest = out
        .iter()
        .map(|v| v["occurred_at"].as_i64().unwrap())
        .filter(|&t| t < WRONG_CLOCK)
        .max()
        .unwrap_or(0);
    out.into_iter()
        .map(|mut v| {
            let t = v["occurred_at"].as_i64().unwrap();
            if t < WRONG_CLOCK {
                v["occurred_at"] = Value::from(t - newest + t0());
            }
            v.to_string()
        })
        .collect()
}

/// What `replay` gives for these lines under this config: alerts minus `detected_at`, sorted by id.
pub fn replay(config: &Config, lines: &[String]) -> Vec<Value> {
    replay_with_actions(config, lines, &[])
}

/// [`replay`] with case actions (JSON lines) merged in by event time, as `replay --actions`.
pub fn replay_with_actions(config: &Config, lines: &[String], actions: &[String]) -> Vec<Value> {
    let input = lines.join("\n");
    let actions = actions.join("\n");
    let mut actions: &[u8] = actions.as_bytes();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    cx_sentinel::replay::replay_with_actions(
        config.clone(),
        input.as_bytes(),
        Format::Json,
        (!actions.is_empty()).then_some(&mut actions as &mut dyn std::io::BufRead),
        &mut out,
        &mut problems,
        // The processing clock: any time after the test data's event times (skew is checked
        // against it); `detected_at` is dropped by `normalize`.
        &|| 1_900_000_000_000,
        None,
    )
    .unwrap();
    let mut v: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    normalize(&mut v);
    v
}

/// Drops `detected_at` and sorts by `alert_id` so runs compare.
pub fn normalize(alerts: &mut [Value]) {
    for a in alerts.iter_mut() {
        a.as_object_mut().unwrap().remove("detected_at");
    }
    alerts.sort_by(|a, b| a["alert_id"].as_str().cmp(&b["alert_id"].as_str()));
}

pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

pub async fn produce(brokers: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    let p = producer(brokers);
    let mut pending = Vec::with_capacity(records.len());
    for (key, payload) in records {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        loop {
            match p.send_result(record) {
                Ok(f) => break pending.push(f),
                Err((_, r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for f in pending {
        f.await
            .unwrap()
            .map_err(|(e, _)| e)
            .expect("producing a test record");
    }
}

/// A consumer of every partition of `topic` from the beginning, assigned by hand: no group, so
/// no join. (tansu 510f3e2 holds every JoinGroup for half the member's session timeout to gather
/// members: 22.5 s with librdkafka's default 45 s session, for each reader of each test.) `extra`
/// are further client settings (`isolation.level`, security).
pub fn reader(brokers: &str, topic: &str, extra: &[(&str, &str)]) -> StreamConsumer {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false");
    for (k, v) in extra {
        cc.set(*k, *v);
    }
    let c: StreamConsumer = cc.create().unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata of the topic to read");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    assert!(tpl.count() > 0, "topic {topic} has no partitions");
    c.assign(&tpl).unwrap();
    c
}

/// Reads `topic` from the beginning until `count` records arrived or `timeout` passed.
pub async fn consume(brokers: &str, topic: &str, count: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let c = reader(brokers, topic, &[]);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Ok(Ok(m)) = tokio::time::timeout(left, c.recv()).await {
            out.push(m.detach());
        }
    }
    out
}

/// Decodes alert records and normalizes them.
pub fn alerts(format: Format, records: &[OwnedMessage]) -> Vec<Value> {
    let mut v: Vec<Value> = records
        .iter()
        .map(|m| {
            let a = cx_sentinel::demo::decode_alert(format, m.payload().unwrap()).unwrap();
            serde_json::to_value(a).unwrap()
        })
        .collect();
    normalize(&mut v);
    v
}

/// The service running in-process.
pub struct Running {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), cx_sentinel::service::ServiceError>>,
}

/// Starts the service in this process. `CX_TEST_LOG=<filter>` shows its log (captured per test).
pub async fn start(config: Config) -> Running {
    if let Ok(filter) = std::env::var("CX_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(cx_sentinel::service::run(
        config,
        async {
            let _ = stopped.await;
        },
        move |a| {
            let _ = addr_tx.send(a);
        },
    ));
    let addr = addr_rx.await.expect("service bound its HTTP port");
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

impl Running {
    /// Graceful stop; returns the service's result.
    pub async fn stop(mut self) -> Result<(), cx_sentinel::service::ServiceError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// A GET bearing [`TEST_TOKEN`] (`/customers/{id}` answers only to it).
    pub async fn get_customer(&self, id: &str) -> (u16, String) {
        let auth = format!("Authorization: Bearer {TEST_TOKEN}\r\n");
        http_get_with(self.addr, &format!("/customers/{id}"), &auth).await
    }

    /// Waits up to `timeout` for the service to end on its own; its result, or `None` (still
    /// running, then stopped).
    pub async fn exited(
        mut self,
        timeout: Duration,
    ) -> Option<Result<(), cx_sentinel::service::ServiceError>> {
        match tokio::time::timeout(timeout, &mut self.task).await {
            Ok(result) => Some(result.unwrap()),
            Err(_) => {
                let _ = self.stop.take().unwrap().send(());
                let _ = self.task.await;
                None
            }
        }
    }

    /// For a failure message when an expected output did not come: whether the service ended
    /// (and how), its health, and its record and send counters; then stops it.
    pub async fn diagnose(mut self) -> String {
        if self.task.is_finished() {
            return format!("the service ended: {:?}", (&mut self.task).await.unwrap());
        }
        let ready = self.get("/health/ready").await.0;
        let live = self.get("/health/live").await.0;
        let counters: Vec<String> = self
            .get("/metrics")
            .await
            .1
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && [
                        "records_consumed",
                        "produce_errors",
                        "alerts_total",
                        "dead_letters",
                        "assigned_partitions",
                        "consumer_lag",
                    ]
                    .iter()
                    .any(|n| l.contains(n))
            })
            .map(str::to_string)
            .collect();
        let stopped = self.stop().await;
        format!("ready {ready}, live {live}, stopped {stopped:?}; {counters:#?}")
    }

    /// Waits up to `timeout` for the service to stop on its own with an error; that error's text.
    /// Panics when it keeps running or ends without an error.
    pub async fn failure(self, timeout: Duration) -> String {
        self.exited(timeout)
            .await
            .expect("the service stops on its own")
            .unwrap_err()
            .to_string()
    }

    /// Waits until `/health/ready` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.get("/health/ready").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("service not ready within {timeout:?}");
    }
}

pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, "").await
}

/// A GET with extra header lines (each ending in `\r\n`).
pub async fn http_get_with(addr: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n").as_bytes())
        .await
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// JSON lines keyed by their customer id.
pub fn keyed(lines: &[String]) -> Vec<(String, Vec<u8>)> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["customer_id"].as_str().unwrap().to_string(),
                l.as_bytes().to_vec(),
            )
        })
        .collect()
}

/// The real binary as a separate process (`run`), configured through environment overrides.
pub fn spawn(brokers: &str, t: &Topics) -> std::process::Child {
    spawn_with(brokers, t, &default_config_path(), &[], None)
}

/// The shipped configuration file.
pub fn default_config_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")
}

/// [`spawn`] with another configuration file, further `CX_SENTINEL__...` overrides, and its log
/// (warnings and errors unless `CX_TEST_CHILD_LOG` says otherwise) in `log` if given.
pub fn spawn_with(
    brokers: &str,
    t: &Topics,
    config: &Path,
    env: &[(&str, &str)],
    log: Option<&Path>,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_cx-sentinel"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("CX_SENTINEL__KAFKA__BROKERS", brokers)
        .env("CX_SENTINEL__KAFKA__INPUT_TOPIC", &t.input)
        .env("CX_SENTINEL__KAFKA__ALERT_TOPIC", &t.alerts)
        .env("CX_SENTINEL__KAFKA__DLQ_TOPIC", &t.dlq)
        .env("CX_SENTINEL__KAFKA__ACTION_TOPIC", &t.actions)
        .env("CX_SENTINEL__KAFKA__GROUP_ID", &t.group)
        .env("CX_SENTINEL__STATE__CHANGELOG_TOPIC", &t.state)
        .env("CX_SENTINEL__ENGINE__ALLOWED_LATENESS", "0s")
        .env("CX_SENTINEL__HTTP__LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .env(
            "RUST_LOG",
            std::env::var("CX_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(match (log, std::env::var("CX_TEST_CHILD_LOG_DIR")) {
            (Some(path), _) => {
                std::process::Stdio::from(std::fs::File::create(path).expect("child log file"))
            }
            (None, Ok(dir)) => std::process::Stdio::from(
                std::fs::File::create(format!("{dir}/{}.log", unique("child"))).expect("child log file"),
            ),
            (None, Err(_)) => std::process::Stdio::inherit(),
        })
        .spawn()
        .expect("starting cx-sentinel")
}

/// Touchpoints `from..to`, one customer each, one second apart; every `every`-th is a failed
/// payment (one OPEN alert, depending on that record alone), the rest are happy FAQ views.
pub fn payment_lines(from: i64, to: i64, every: i64) -> Vec<String> {
    (from..to)
        .map(|i| {
            let (tp, outcome) = if i % every == 0 {
                ("payment.transfer", "FAILURE")
            } else {
                ("faq.view", "SUCCESS")
            };
            serde_json::json!({
                "event_id": format!("ev-{i}"), "customer_id": format!("cust-{i}"),
                "occurred_at": t0() + i * 1000, "channel": "WEB", "kind": "INTERACTION",
                "direction": "INBOUND", "journey": "billing", "touchpoint": tp, "outcome": outcome
            })
            .to_string()
        })
        .collect()
}

/// Alerts grouped by id, read until `done` says so or `timeout` passes.
pub type ById = std::collections::BTreeMap<String, Vec<Value>>;

pub async fn collect_alerts(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&ById) -> bool,
) -> ById {
    let reader = reader(brokers, topic, &[]);
    let mut by_id = ById::new();
    let deadline = Instant::now() + timeout;
    while !done(&by_id) && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), reader.recv()).await {
            let a = alerts(Format::Json, &[m.detach()]).remove(0);
            by_id
                .entry(a["alert_id"].as_str().unwrap().to_string())
                .or_default()
                .push(a);
        }
    }
    by_id
}

/// How many distinct OPEN alerts were read.
pub fn opens(by_id: &ById) -> usize {
    by_id.values().filter(|v| v[0]["status"] == "OPEN").count()
}

/// A record header's value as text, if the record has that header.
pub fn header(m: &rdkafka::message::OwnedMessage, key: &str) -> Option<String> {
    let h = m.headers()?.iter().find(|h| h.key == key)?;
    Some(String::from_utf8_lossy(h.value?).into_owned())
}

/// The wall clock in epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A case action by `agent-42` as a JSON line (`resolution` for RESOLVE). Its note is a phone
/// number: it must appear nowhere.
pub fn action_line(
    action_id: &str,
    case_id: &str,
    customer: &str,
    kind: &str,
    occurred_at: i64,
    resolution: Option<&str>,
) -> String {
    serde_json::json!({
        "action_id": action_id,
        "case_id": case_id,
        "customer_id": customer,
        "action": kind,
        "actor": "agent-42",
        "occurred_at": occurred_at,
        "resolution": resolution,
        "channel": "VOICE",
        "note": "called the customer back about 555-0100",
    })
    .to_string()
}

/// A touchpoint stamped `ago_ms` before now, as a JSON line.
pub fn recent_line(id: &str, customer: &str, ago_ms: i64, touchpoint: &str, outcome: &str) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&tp_line(id, customer, 0, touchpoint, outcome)).unwrap();
    v["occurred_at"] = serde_json::Value::from(now_ms() - ago_ms);
    v.to_string()
}

/// A touchpoint `minute` minutes after [`t0`], as a JSON line.
pub fn tp_line(id: &str, customer: &str, minute: i64, touchpoint: &str, outcome: &str) -> String {
    let tp = Touchpoint {
        event_id: id.into(),
        customer_id: customer.into(),
        occurred_at: t0() + minute * 60_000,
        channel: cx_sentinel::model::Channel::Chat,
        kind: cx_sentinel::model::TouchpointKind::Interaction,
        direction: cx_sentinel::model::Direction::Inbound,
        journey: "billing".into(),
        touchpoint: touchpoint.into(),
        outcome: cx_sentinel::model::Outcome::parse(outcome).unwrap(),
        sentiment: None,
        customer_tier: None,
        agent_id: None,
        attributes: Default::default(),
    };
    serde_json::to_string(&tp).unwrap()
}

/// The offset `group` committed on partition 0 of `topic`.
pub async fn committed(brokers: &str, group: &str, topic: &str) -> i64 {
    match committed_offsets(brokers, group, topic, 1)[0] {
        Offset::Offset(o) => o,
        other => panic!("no committed offset: {other:?}"),
    }
}

/// The group's committed offsets summed over partitions `0..partitions` of `topic` (a partition
/// with no commit counts 0): with offsets from 0, the records committed.
pub async fn committed_sum(brokers: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    committed_offsets(brokers, group, topic, partitions)
        .into_iter()
        .map(|o| match o {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

/// The group's committed offsets of partitions `0..partitions` of `topic`.
fn committed_offsets(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<Offset> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements().iter().map(|e| e.offset()).collect()
}
