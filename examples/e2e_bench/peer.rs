//! Optional peer (`--peer`): the same rules on another stream library, over the same input topic.

use crate::service::{read_alert_topic, wait_for_topic};
use crate::{Args, PeerKind, unique, value_name};
use anyhow::{Context, Result, anyhow, ensure};
use cx_sentinel::codec::Format;
use cx_sentinel::config::Config;
use cx_sentinel::service;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What a peer measured: its script's JSON line (measured inside the peer's own process, from
/// its first record to the Nth, like the baseline) and its alert topic read back.
pub(crate) struct Peer {
    pub(crate) kind: PeerKind,
    /// The script's JSON line as printed.
    report: Value,
    pub(crate) events_per_s: f64,
    pub(crate) cpu_us_per_event: f64,
    pub(crate) cores: f64,
    /// The peer process from start to exit (start-up, group join and final commit included).
    pub(crate) total_wall: f64,
    pub(crate) alerts: u64,
    alerts_by_rule: BTreeMap<String, u64>,
    alert_topic: String,
    /// Records on the peer's alert topic, their distinct `alert_id`s, and records that do not
    /// decode as cx-sentinel's JSON `RecoveryAlert`.
    alert_records: u64,
    distinct_alert_ids: u64,
    undecodable_alerts: u64,
}

/// A peer never fails the benchmark: its error is reported instead.
pub(crate) type PeerOutcome = std::result::Result<Peer, String>;

impl PeerKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            PeerKind::Quix => "quixstreams (Python)",
        }
    }

    fn script(self) -> &'static str {
        match self {
            PeerKind::Quix => "scripts/peer/quix_sentinel.py",
        }
    }

    fn env_script(self) -> &'static str {
        match self {
            PeerKind::Quix => "scripts/peer/py-env.sh",
        }
    }
}

impl Peer {
    /// Alerts of the peer against cx-sentinel's, rule by rule.
    pub(crate) fn alerts_line(&self, sentinel: &BTreeMap<String, u64>) -> String {
        let mut rules: Vec<&String> = self.alerts_by_rule.keys().chain(sentinel.keys()).collect();
        rules.sort();
        rules.dedup();
        let by_rule: Vec<String> = rules
            .iter()
            .map(|r| {
                let count = |m: &BTreeMap<String, u64>| m.get(*r).copied().unwrap_or(0);
                format!("{r} {}/{}", count(&self.alerts_by_rule), count(sentinel))
            })
            .collect();
        format!(
            "peer alerts: {} emitted, {} on its alert topic ({} distinct ids{}); by rule, peer/cx-sentinel: {}",
            self.alerts,
            self.alert_records,
            self.distinct_alert_ids,
            if self.undecodable_alerts > 0 {
                format!(", {} not decodable as RecoveryAlert", self.undecodable_alerts)
            } else {
                String::new()
            },
            by_rule.join(", ")
        )
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "kind": value_name(self.kind),
            "events_per_s": self.events_per_s,
            "cpu_us_per_event": self.cpu_us_per_event,
            "cores_used": self.cores,
            "total_wall_s": self.total_wall,
            "alerts": self.alerts,
            "alerts_by_rule": self.alerts_by_rule,
            "alert_topic": self.alert_topic,
            "alert_records_on_topic": self.alert_records,
            "distinct_alert_ids": self.distinct_alert_ids,
            "undecodable_alerts": self.undecodable_alerts,
            "report": self.report,
        })
    }
}

/// Runs the peer over `input` with a fresh group and alert topic. Every topic it creates (the
/// alert topic, and the state changelog quixstreams creates itself) goes into `topics`.
pub(crate) async fn peer_phase(
    args: &Args,
    config: &Config,
    kind: PeerKind,
    input: &str,
    n: u64,
    topics: &mut Vec<String>,
) -> PeerOutcome {
    eprintln!("[peer] {}: processing {n} records of {input}", kind.name());
    let group = unique("bench-peer-group");
    let result = peer_run(args, config, kind, input, n, &group, topics).await;
    // quixstreams names its internal topics `<type>__<group>--...`: the group is fresh, so
    // everything with it in the name is this run's.
    match topics_containing(&args.brokers, &format!("__{group}--")).await {
        Ok(names) => topics.extend(names),
        Err(e) => eprintln!("      could not list the peer's changelog topics (not deleted): {e:#}"),
    }
    match result {
        Ok(p) => {
            eprintln!(
                "      done: {:.0} events/s, {:.2} CPU µs/event; {} alerts",
                p.events_per_s, p.cpu_us_per_event, p.alerts
            );
            Ok(p)
        }
        Err(e) => {
            let e = format!("{e:#}");
            eprintln!(
                "e2e_bench: ERROR: the peer ({}) failed; reporting the other results without it:\n  {}",
                value_name(kind),
                e.replace('\n', "\n  ")
            );
            Err(e)
        }
    }
}

/// The last `lines` lines of a child's output, for an error message.
fn tail(output: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(output);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn peer_run(
    args: &Args,
    config: &Config,
    kind: PeerKind,
    input: &str,
    n: u64,
    group: &str,
    topics: &mut Vec<String>,
) -> Result<Peer> {
    let alert_topic = unique("bench-peer-alerts");
    service::kafka::create_topics(&args.brokers, &[(&alert_topic, 1)])
        .await
        .with_context(|| format!("creating the peer's alert topic on {}", args.brokers))?;
    topics.push(alert_topic.clone());
    wait_for_topic(&args.brokers, &alert_topic).await?;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let env_script = root.join(kind.env_script());
    let env = tokio::process::Command::new(&env_script)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", env_script.display()))?;
    ensure!(
        env.status.success(),
        "{} failed ({}):\n{}",
        env_script.display(),
        env.status,
        tail(&env.stderr, 20)
    );
    let python = String::from_utf8_lossy(&env.stdout).trim().to_string();
    ensure!(
        !python.is_empty(),
        "{} printed no interpreter path",
        env_script.display()
    );

    // The peer gets what cx-sentinel got: the rules of the same configuration, the same fetch
    // wait (tansu sleeps that long before answering every fetch) and commit interval.
    // At least 1,000 events/s, plus a minute for start-up.
    let limit = Duration::from_secs(60) + Duration::from_millis(n);
    let script = root.join(kind.script());
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(&script)
        .args(["--brokers", &args.brokers, "--topic", input])
        .args(["--alert-topic", &alert_topic, "--group", group])
        .args(["--events", &n.to_string()])
        .arg("--config")
        .arg(&args.config)
        .args([
            "--commit-interval",
            &config.processing.commit_interval.as_secs_f64().to_string(),
        ])
        .args(["--timeout", &limit.as_secs().to_string()])
        .kill_on_drop(true);
    if let Some(ms) = config.kafka.librdkafka_options.get("fetch.wait.max.ms") {
        cmd.args(["--fetch-wait-ms", ms]);
    }
    let out = tokio::time::timeout(limit + Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| anyhow!("{} did not exit within {:?}", script.display(), limit))?
        .with_context(|| format!("running {python} {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({}); its last output:\n{}",
        script.display(),
        out.status,
        tail(&out.stderr, 25)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{} printed no JSON result", script.display()))
        .and_then(|l| serde_json::from_str(l).context("parsing the peer's JSON result"))?;
    let number = |key: &str| {
        report
            .get(key)
            .and_then(Value::as_f64)
            .with_context(|| format!("the peer's result has no number `{key}`"))
    };
    let alerts = number("alerts")? as u64;
    let alerts_by_rule = report
        .get("alerts_by_rule")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let (alert_records, distinct_alert_ids, undecodable_alerts) =
        read_alert_topic(&args.brokers, &alert_topic, Format::Json, alerts).await?;
    if alert_records < alerts {
        eprintln!(
            "      warning: the peer emitted {alerts} alerts but only {alert_records} are on {alert_topic}"
        );
    }
    Ok(Peer {
        kind,
        events_per_s: number("events_per_s")?,
        cpu_us_per_event: number("cpu_us_per_event")?,
        cores: number("cores_used")?,
        total_wall: number("total_wall_s")?,
        report,
        alerts,
        alerts_by_rule,
        alert_topic,
        alert_records,
        distinct_alert_ids,
        undecodable_alerts,
    })
}

/// Names of the broker's topics that contain `needle`.
async fn topics_containing(brokers: &str, needle: &str) -> Result<Vec<String>> {
    let (brokers, needle) = (brokers.to_string(), needle.to_string());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .context("creating a metadata client")?;
        let md = client
            .fetch_metadata(None, Duration::from_secs(10))
            .context("listing topics")?;
        Ok(md
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|t| t.contains(&needle))
            .collect())
    })
    .await?
}
