//! `cx-sentinel demo`: the real pipeline against an in-process Kafka-protocol cluster, fed by the
//! built-in generator, with every alert printed on stdout (one readable line each on a terminal,
//! JSON lines otherwise), a line every few seconds about the injected bad records, and a summary
//! at the end.

use crate::codec::{Format, avro, json};
use crate::config::Config;
use crate::generator::{Generator, GeneratorConfig};
use crate::model::RecoveryAlert;
use crate::service::{self, ServiceError};
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the demo reports dead letters (the injected bad records) in one line.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Demo knobs (the CLI sets them).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Touchpoints produced per wall-clock second.
    pub rate: f64,
    /// Event-time seconds that pass per wall-clock second, so watermarks and SLAs move visibly.
    pub speedup: f64,
    pub partitions: i32,
    pub seed: u64,
    /// Every Nth record is garbage, to show dead-lettering (0 = never).
    pub poison_every: u64,
    /// Alerts as readable lines ([`crate::render`]) instead of JSON lines.
    pub readable: bool,
    /// ANSI colour in readable lines.
    pub color: bool,
}

/// What the demo has seen so far: printed every few seconds (dead letters) and at the end.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DemoStats {
    pub events: u64,
    /// Garbage records the producer injected.
    pub injected: u64,
    /// Alerts read back from the alert topic, by (status, rule).
    pub alerts: BTreeMap<(String, String), u64>,
    /// Dead letters read back from the dead-letter topic, by `cx.error.class`.
    pub dead_letters: BTreeMap<String, u64>,
}

impl DemoStats {
    pub fn alert_count(&self) -> u64 {
        self.alerts.values().sum()
    }

    pub fn dead_letter_count(&self) -> u64 {
        self.dead_letters.values().sum()
    }

    /// `json 3, late 1`.
    fn reasons(&self) -> String {
        let parts: Vec<String> = self
            .dead_letters
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        parts.join(", ")
    }

    /// The line printed every few seconds while dead letters come in.
    pub fn progress_line(&self, new_dead_letters: u64, every: Duration) -> String {
        format!(
            "demo: {new_dead_letters} dead-lettered in the last {}s (by reason so far: {}; {} bad records injected); {} events, {} alerts",
            every.as_secs(),
            self.reasons(),
            self.injected,
            self.events,
            self.alert_count()
        )
    }
}

impl std::fmt::Display for DemoStats {
    /// The summary printed when the demo stops.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "demo: {} events produced ({} of them injected bad records), {} alerts, {} dead letters",
            self.events,
            self.injected,
            self.alert_count(),
            self.dead_letter_count()
        )?;
        if !self.alerts.is_empty() {
            writeln!(f, "alerts by status and rule:")?;
            for ((status, rule), n) in &self.alerts {
                writeln!(f, "  {status:<10} {rule:<20} {n:>6}")?;
            }
        }
        if !self.dead_letters.is_empty() {
            writeln!(f, "dead letters by reason:")?;
            for (reason, n) in &self.dead_letters {
                writeln!(f, "  {reason:<31} {n:>6}")?;
            }
        }
        Ok(())
    }
}

type Stats = Arc<Mutex<DemoStats>>;

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            rate: 200.0,
            speedup: 120.0,
            partitions: 3,
            seed: 7,
            poison_every: 1000,
            readable: false,
            color: false,
        }
    }
}

/// Runs until `shutdown` resolves.
pub async fn run(
    mut config: Config,
    options: DemoOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let cluster = MockCluster::new(1)?;
    let brokers = cluster.bootstrap_servers();
    let k = &config.kafka;
    cluster.create_topic(&k.input_topic, options.partitions, 1)?;
    cluster.create_topic(&k.alert_topic, 1, 1)?;
    cluster.create_topic(&k.dlq_topic, 1, 1)?;
    cluster.create_topic(&k.action_topic, options.partitions, 1)?;
    cluster.create_topic(&config.state.changelog_topic, options.partitions, 1)?;
    config.kafka.brokers = brokers.clone();
    eprintln!(
        "demo: in-process Kafka cluster at {brokers}; producing {} touchpoints/s ({}x event time) to '{}'; alerts from '{}' follow{}",
        options.rate,
        options.speedup,
        config.kafka.input_topic,
        config.kafka.alert_topic,
        if options.readable { "" } else { " as JSON lines" }
    );

    let started = Instant::now();
    let stats = Stats::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let producer_task = tokio::spawn(produce(
        config.clone(),
        options.clone(),
        stats.clone(),
        stop_rx.clone(),
    ));
    let printer_task = tokio::spawn(print_alerts(
        config.clone(),
        options.clone(),
        stats.clone(),
        stop_rx.clone(),
    ));
    let dead_letter_task = tokio::spawn(count_dead_letters(config.clone(), stats.clone(), stop_rx));
    // Customer data needs a bearer token: the demo makes one for this run unless one is set.
    let token = config
        .http
        .auth_token
        .get_or_insert_with(|| crate::config::Secret::new(format!("demo-{:016x}", demo_token_seed())))
        .expose()
        .to_string();
    let http = config.http.listen.clone();
    let result = service::run(config, shutdown, move |addr| {
        eprintln!(
            "demo: metrics at http://{addr}/metrics (configured {http}); a customer: curl -H 'Authorization: Bearer {token}' http://{addr}/customers/<id>"
        );
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = producer_task.await;
    let _ = printer_task.await;
    let _ = dead_letter_task.await;
    drop(cluster);
    eprint!(
        "demo: stopped after {}s\n{}",
        started.elapsed().as_secs(),
        stats.lock()
    );
    result
}

async fn produce(
    config: Config,
    options: DemoOptions,
    stats: Stats,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let producer: FutureProducer = match ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("linger.ms", "5")
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("demo: cannot create producer: {e}");
            return;
        }
    };
    let mut generator = Generator::new(GeneratorConfig {
        seed: options.seed,
        customers: 2_000,
        start_ms: now_ms(),
        events_per_second: options.rate / options.speedup,
        ..GeneratorConfig::default()
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rate.max(1.0)));
    let mut n: u64 = 0;
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let tp = generator.next_touchpoint();
        buf.clear();
        let poison = options.poison_every > 0 && n.is_multiple_of(options.poison_every);
        {
            let mut s = stats.lock();
            s.events += 1;
            s.injected += poison as u64;
        }
        if poison {
            buf.extend_from_slice(b"{\"event_id\": \"garbled");
        } else {
            match config.input.format {
                Format::Json => buf.extend_from_slice(&serde_json::to_vec(&tp).unwrap_or_default()),
                Format::Avro => buf.extend_from_slice(&avro::encode_touchpoint(&tp)),
                Format::ConfluentAvro => avro::confluent_frame(
                    config.input.schema_ids.first().copied().unwrap_or(1),
                    &avro::encode_touchpoint(&tp),
                    &mut buf,
                ),
            }
        }
        // The record is written at the demo's simulated time (event time runs `speedup` times
        // faster than the wall clock): stamped with the wall clock, touchpoints would soon be
        // further ahead of their records than `engine.max_clock_skew` and go to dead letters.
        let record = FutureRecord::to(&config.kafka.input_topic)
            .key(&tp.customer_id)
            .payload(&buf)
            .timestamp(tp.occurred_at);
        if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
            eprintln!("demo: produce failed: {e}");
        }
    }
}

async fn print_alerts(
    config: Config,
    options: DemoOptions,
    stats: Stats,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let consumer: StreamConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", "cx-sentinel-demo-printer")
        .set("auto.offset.reset", "earliest")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: cannot create alert reader: {e}");
            return;
        }
    };
    if let Err(e) = consumer.subscribe(&[&config.kafka.alert_topic]) {
        eprintln!("demo: cannot subscribe to alerts: {e}");
        return;
    }
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => return,
            m = consumer.recv() => m,
        };
        let Ok(msg) = msg else { continue };
        match decode_alert(config.output.format, msg.payload().unwrap_or_default()) {
            Ok(alert) => {
                *stats
                    .lock()
                    .alerts
                    .entry((alert.status.as_str().to_string(), alert.rule.clone()))
                    .or_default() += 1;
                let mut line = Vec::new();
                if options.readable {
                    line.extend_from_slice(crate::render::alert_line(&alert, options.color).as_bytes());
                } else {
                    json::encode_alert(&alert, &mut line);
                }
                line.push(b'\n');
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&line);
                let _ = out.flush();
            }
            Err(e) => eprintln!("demo: undecodable alert: {e}"),
        }
    }
}

/// Counts the dead-letter topic's records by reason and prints one line per interval in which
/// some arrived (the service's per-record warning is filtered out in the demo).
async fn count_dead_letters(config: Config, stats: Stats, mut stop: tokio::sync::watch::Receiver<bool>) {
    let consumer: StreamConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", "cx-sentinel-demo-dead-letters")
        .set("auto.offset.reset", "earliest")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: cannot create dead-letter reader: {e}");
            return;
        }
    };
    if let Err(e) = consumer.subscribe(&[&config.kafka.dlq_topic]) {
        eprintln!("demo: cannot subscribe to dead letters: {e}");
        return;
    }
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.tick().await;
    let mut reported = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                let s = stats.lock();
                let total = s.dead_letter_count();
                if total > reported {
                    eprintln!("{}", s.progress_line(total - reported, REPORT_EVERY));
                    reported = total;
                }
            }
            m = consumer.recv() => {
                let Ok(m) = m else { continue };
                let reason = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "cx.error.class").and_then(|h| h.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_else(|| "unknown".into());
                *stats.lock().dead_letters.entry(reason).or_default() += 1;
            }
        }
    }
}

/// Reads an alert record in any output format.
pub fn decode_alert(format: Format, payload: &[u8]) -> Result<RecoveryAlert, crate::codec::DecodeError> {
    match format {
        Format::Json => {
            serde_json::from_slice(payload).map_err(|e| crate::codec::DecodeError::Json(e.to_string()))
        }
        Format::Avro => avro::decode_alert(payload),
        Format::ConfluentAvro => avro::decode_alert(avro::confluent_unframe(payload)?.1),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A per-run value for the demo's token: the clock's nanoseconds mixed with the process id.
fn demo_token_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_alerts_by_status_and_rule_and_dead_letters() {
        let mut s = DemoStats {
            events: 2000,
            injected: 2,
            ..Default::default()
        };
        s.alerts.insert(("OPEN".into(), "critical_negative".into()), 7);
        s.alerts.insert(("RECOVERED".into(), "recovered".into()), 3);
        s.dead_letters.insert("json".into(), 2);
        assert_eq!(
            s.to_string(),
            "demo: 2000 events produced (2 of them injected bad records), 10 alerts, 2 dead letters\n\
             alerts by status and rule:\n\
             \x20 OPEN       critical_negative         7\n\
             \x20 RECOVERED  recovered                 3\n\
             dead letters by reason:\n\
             \x20 json                                 2\n"
        );
        assert_eq!(
            s.progress_line(1, REPORT_EVERY),
            "demo: 1 dead-lettered in the last 5s (by reason so far: json 2; 2 bad records injected); 2000 events, 10 alerts"
        );
    }
}
