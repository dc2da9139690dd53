//! `cx-sentinel tail`: reads the alert topic in the configured output format (JSON, Avro, or
//! Confluent-framed Avro, with the registry when one is configured) and prints one line per
//! alert ([`crate::render`]), or each record as a JSON line with `--json`.
//!
//! It reads by assignment, not as a group member: it commits nothing and never takes partitions
//! from anyone. Without `--follow` it stops once every partition has reached the end it had when
//! tail started.

use crate::codec::{DecodeError, Format, avro};
use crate::config::Config;
use crate::service::registry::{RegistryClient, RegistryError, retry_until};
use apache_avro::Schema;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

/// How long one schema lookup keeps retrying an unavailable registry before tail gives up.
const REGISTRY_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("alert topic '{topic}' not found on {brokers}: {detail}")]
    Topic {
        topic: String,
        brokers: String,
        detail: String,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("writing output: {0}")]
    Write(#[from] std::io::Error),
}

/// How to read and print.
#[derive(Debug, Clone, Copy, Default)]
pub struct TailOptions {
    /// Start at the oldest retained alert; otherwise at the end (then tail always follows).
    pub from_beginning: bool,
    /// Keep waiting for new alerts after the end of the topic.
    pub follow: bool,
    /// Each record as one JSON line (a JSON topic's records byte for byte) instead of the readable line.
    pub json: bool,
    /// ANSI colour in the readable line.
    pub color: bool,
}

/// What a tail read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TailSummary {
    pub alerts: u64,
    /// Records that did not decode as alerts (reported on stderr with partition and offset).
    pub undecodable: u64,
}

/// Why a record could not be shown as an alert.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// Not an alert: reported, and tail moves on.
    #[error(transparent)]
    Data(#[from] DecodeError),
    /// The registry refused the credentials, or stayed unavailable: tail stops.
    #[error(transparent)]
    Registry(RegistryError),
}

/// The registry client and the runtime its async calls run on (tail itself is synchronous).
struct Lookup {
    client: RegistryClient,
    runtime: tokio::runtime::Runtime,
    negative_ttl: Duration,
}

/// Decodes alert records as `output.format` says, to JSON (any status string passes).
pub struct AlertDecoder {
    format: Format,
    registry: Option<Lookup>,
    /// Writer schemas by Confluent id, fetched once each; `None` for an id the registry does not
    /// know, asked again after `schema_registry.negative_cache_ttl`.
    schemas: HashMap<u32, (Option<Schema>, Instant)>,
}

impl AlertDecoder {
    pub fn new(config: &Config) -> Result<Self, TailError> {
        let registry = match config.output.format {
            Format::ConfluentAvro => RegistryClient::from_config(&config.schema_registry)?,
            _ => None,
        };
        let registry = registry
            .map(|client| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(TailError::Write)?;
                Ok::<_, TailError>(Lookup {
                    client,
                    runtime,
                    negative_ttl: config.schema_registry.negative_cache_ttl,
                })
            })
            .transpose()?;
        Ok(Self {
            format: config.output.format,
            registry,
            schemas: HashMap::new(),
        })
    }

    /// The record as a JSON alert. JSON records are parsed without checking enum symbols.
    pub fn decode(&mut self, payload: &[u8]) -> Result<Value, AlertError> {
        let alert = match self.format {
            Format::Json => {
                let v: Value =
                    serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
                if !v.is_object() {
                    return Err(DecodeError::Json("not a JSON object".into()).into());
                }
                return Ok(v);
            }
            Format::Avro => avro::decode_alert(payload)?,
            Format::ConfluentAvro => {
                let (id, datum) = avro::confluent_unframe(payload)?;
                match &self.registry {
                    None => avro::decode_alert(datum)?,
                    Some(registry) => {
                        let cached = self
                            .schemas
                            .get(&id)
                            .is_some_and(|(s, at)| s.is_some() || at.elapsed() < registry.negative_ttl);
                        if !cached {
                            let found = match registry
                                .runtime
                                .block_on(retry_until(REGISTRY_DEADLINE, || registry.client.schema(id)))
                            {
                                Ok(text) => Some(
                                    Schema::parse_str(&text)
                                        .map_err(|e| DecodeError::Avro(format!("schema {id}: {e}")))?,
                                ),
                                Err(RegistryError::NotFound(_)) => None,
                                Err(e) => return Err(AlertError::Registry(e)),
                            };
                            self.schemas.insert(id, (found, Instant::now()));
                        }
                        let Some(writer) = &self.schemas[&id].0 else {
                            return Err(DecodeError::UnknownSchema(id).into());
                        };
                        let mut reader = datum;
                        let value =
                            apache_avro::from_avro_datum(writer, &mut reader, Some(avro::alert_schema()))
                                .map_err(|e| DecodeError::Avro(e.to_string()))?;
                        avro::alert_from_value(value)?
                    }
                }
            }
        };
        Ok(serde_json::to_value(alert).expect("an alert always serializes"))
    }
}

/// The consumer: the service's connection settings (`kafka.librdkafka_options`, so credentials
/// apply), no group membership, nothing committed.
fn consumer(config: &Config) -> Result<BaseConsumer, KafkaError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", format!("cx-sentinel-tail-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    for (k, v) in &config.kafka.librdkafka_options {
        cc.set(k, v);
    }
    cc.create()
}

/// Reads the alert topic and writes a line per alert to `out`; problems go to stderr.
pub fn run(config: &Config, options: TailOptions, out: &mut dyn Write) -> Result<TailSummary, TailError> {
    let topic = config.kafka.alert_topic.as_str();
    let follow = options.follow || !options.from_beginning;
    let consumer = consumer(config)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            t.partitions().iter().map(|p| p.id()).collect()
        }
        other => {
            return Err(TailError::Topic {
                topic: topic.into(),
                brokers: config.kafka.brokers.clone(),
                detail: other
                    .and_then(|t| t.error())
                    .map(|e| format!("{e:?}"))
                    .unwrap_or_else(|| "no partitions".into()),
            });
        }
    };
    let mut assignment = TopicPartitionList::new();
    // Where each partition ends now: without --follow, tail stops once every partition reached it.
    let mut ends = HashMap::new();
    for &p in &partitions {
        let start = if options.from_beginning {
            Offset::Beginning
        } else {
            Offset::End
        };
        assignment.add_partition_offset(topic, p, start)?;
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        ends.insert(p, high);
    }
    consumer.assign(&assignment)?;

    let mut decoder = AlertDecoder::new(config)?;
    let mut summary = TailSummary::default();
    let mut done = std::collections::HashSet::new();
    loop {
        if !follow && done.len() == partitions.len() {
            break;
        }
        let Some(result) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = match result {
            Ok(msg) => msg,
            Err(KafkaError::PartitionEOF(p)) => {
                // EOF at or past the end listed at start (tansu may list less than the true end).
                let position = consumer
                    .position()
                    .ok()
                    .and_then(|tpl| tpl.find_partition(topic, p).map(|e| e.offset()));
                let reached = match position {
                    Some(Offset::Offset(o)) => o >= ends.get(&p).copied().unwrap_or(0),
                    _ => true,
                };
                if reached {
                    done.insert(p);
                }
                continue;
            }
            Err(e) => {
                eprintln!("tail: consumer error: {e}");
                continue;
            }
        };
        let payload = msg.payload().unwrap_or_default();
        match decoder.decode(payload) {
            Err(AlertError::Registry(e)) => return Err(e.into()),
            Ok(alert) => {
                summary.alerts += 1;
                if options.json {
                    if config.output.format == Format::Json {
                        out.write_all(payload)?;
                    } else {
                        serde_json::to_writer(&mut *out, &alert).map_err(std::io::Error::other)?;
                    }
                } else {
                    out.write_all(crate::render::line(&alert, options.color).as_bytes())?;
                }
                out.write_all(b"\n")?;
                if follow {
                    out.flush()?;
                }
            }
            Err(AlertError::Data(e)) => {
                summary.undecodable += 1;
                eprintln!(
                    "tail: partition {} offset {}: not an alert ({}): {}",
                    msg.partition(),
                    msg.offset(),
                    config.output.format,
                    e.class()
                );
            }
        }
    }
    out.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::model::{AlertStatus, Channel, RecoveryAlert, Severity};
    use crate::service::registry::test_server::serve;

    fn alert() -> RecoveryAlert {
        RecoveryAlert {
            alert_id: "c1-open".into(),
            case_id: "c1".into(),
            status: AlertStatus::Open,
            customer_id: "cust-1".into(),
            journey: "billing".into(),
            rule: "critical_negative".into(),
            severity: Severity::High,
            priority: 1.0,
            reason: "r".into(),
            recommended_channel: Channel::Voice,
            trigger_event_id: "e1".into(),
            event_time: 1,
            detected_at: 2,
            experience_score: -3.0,
            customer_tier: None,
            recent_touchpoints: vec![],
            time_to_recover_ms: None,
            attributes: Default::default(),
            actor: None,
            time_to_acknowledge_ms: None,
            time_to_resolve_ms: None,
            resolution: None,
            queue: "default".into(),
        }
    }

    #[test]
    fn confluent_alerts_resolve_the_writer_schema_from_the_registry_once_per_id() {
        let schema = serde_json::json!({ "schema": avro::ALERT_SCHEMA_TEXT }).to_string();
        let (url, seen) = serve(vec![(200, schema), (404, "{}".into())]);
        let mut config = Config::default();
        config.output.format = Format::ConfluentAvro;
        config.schema_registry.url = Some(url);
        let mut decoder = AlertDecoder::new(&config).unwrap();
        let mut datum = Vec::new();
        avro::encode_alert(&alert(), &mut datum);
        let frame = |id| {
            let mut framed = Vec::new();
            avro::confluent_frame(id, &datum, &mut framed);
            framed
        };
        let want = serde_json::to_value(alert()).unwrap();
        // Twice: the registry is asked about id 12 once.
        assert_eq!(decoder.decode(&frame(12)).unwrap(), want);
        assert_eq!(decoder.decode(&frame(12)).unwrap(), want);
        // An id the registry does not know: asked once, then remembered.
        for _ in 0..2 {
            assert!(matches!(
                decoder.decode(&frame(13)),
                Err(AlertError::Data(DecodeError::UnknownSchema(13)))
            ));
        }
        let seen: Vec<_> = seen.join().unwrap().into_iter().map(|s| s.line).collect();
        assert_eq!(seen, ["GET /schemas/ids/12", "GET /schemas/ids/13"]);
    }

    #[test]
    fn refused_registry_credentials_stop_tail_with_the_keys_to_check() {
        let (url, seen) = serve(vec![(401, "{}".into())]);
        let mut config = Config::default();
        config.output.format = Format::ConfluentAvro;
        config.schema_registry.url = Some(url);
        config.schema_registry.bearer_token = Some(Secret::new("tok-hunter2"));
        let mut decoder = AlertDecoder::new(&config).unwrap();
        let mut framed = Vec::new();
        avro::confluent_frame(12, b"", &mut framed);
        let Err(AlertError::Registry(e)) = decoder.decode(&framed) else {
            panic!("a refused lookup must stop tail")
        };
        let text = TailError::from(e).to_string();
        assert!(
            text.contains("schema_registry.bearer_token") && !text.contains("hunter2"),
            "{text}"
        );
        assert_eq!(seen.join().unwrap().len(), 1);
    }

    #[test]
    fn json_alerts_are_read_as_json_whatever_their_status() {
        let mut decoder = AlertDecoder::new(&Config::default()).unwrap();
        let v = decoder
            .decode(br#"{"status":"WITHDRAWN","customer_id":"c"}"#)
            .unwrap();
        assert_eq!(v["status"], "WITHDRAWN");
        for bad in [&b"[1]"[..], b"{torn"] {
            assert!(matches!(decoder.decode(bad), Err(AlertError::Data(e)) if e.class() == "json"));
        }
    }
}
