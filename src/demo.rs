//! `cx-sentinel demo`: the real pipeline against an in-process Kafka-protocol cluster, fed by the
//! built-in generator, with every alert printed as a JSON line on stdout.

use crate::codec::{Format, avro, json};
use crate::config::Config;
use crate::generator::{Generator, GeneratorConfig};
use crate::model::RecoveryAlert;
use crate::service::{self, ServiceError};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::future::Future;
use std::io::Write;
use std::time::Duration;

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
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            rate: 200.0,
            speedup: 120.0,
            partitions: 3,
            seed: 7,
            poison_every: 1000,
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
    cluster.create_topic(&config.state.changelog_topic, options.partitions, 1)?;
    config.kafka.brokers = brokers.clone();
    eprintln!(
        "demo: in-process Kafka cluster at {brokers}; producing {} touchpoints/s ({}x event time) to '{}'; alerts from '{}' follow as JSON lines",
        options.rate, options.speedup, config.kafka.input_topic, config.kafka.alert_topic
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let producer_task = tokio::spawn(produce(config.clone(), options.clone(), stop_rx.clone()));
    let printer_task = tokio::spawn(print_alerts(config.clone(), stop_rx));
    let http = config.http.listen.clone();
    let result = service::run(config, shutdown, move |addr| {
        eprintln!(
            "demo: metrics at http://{addr}/metrics (configured {http}), customers at /customers/{{id}}"
        );
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = producer_task.await;
    let _ = printer_task.await;
    drop(cluster);
    result
}

async fn produce(config: Config, options: DemoOptions, mut stop: tokio::sync::watch::Receiver<bool>) {
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
        if options.poison_every > 0 && n.is_multiple_of(options.poison_every) {
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

async fn print_alerts(config: Config, mut stop: tokio::sync::watch::Receiver<bool>) {
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
                let mut line = Vec::new();
                json::encode_alert(&alert, &mut line);
                line.push(b'\n');
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&line);
                let _ = out.flush();
            }
            Err(e) => eprintln!("demo: undecodable alert: {e}"),
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
