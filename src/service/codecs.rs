//! Record codecs as configured per topic: input decoding (with Schema Registry lookups) and
//! alert encoding.

use super::registry::{RegistryClient, RegistryError, retry_until};
use crate::codec::avro::WriterSchema;
use crate::codec::{DecodeError, Format, avro, json};
use crate::config::Config;
use crate::model::{CaseAction, RecoveryAlert, Touchpoint};
use apache_avro::Schema;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long start-up keeps trying to register the alert schema with an unavailable registry.
pub const REGISTER_DEADLINE: Duration = Duration::from_secs(30);

/// Why an input record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The record itself is bad: dead-letter it and move on.
    #[error(transparent)]
    Data(#[from] DecodeError),
    /// The writer schema of this Confluent id is not known yet: `resolve(id)`, then decode the
    /// same record again.
    #[error("schema id {0} not resolved yet")]
    Unresolved(u32),
    /// The registry is unavailable: back off, then resolve and decode the same record again.
    #[error("retryable: {0}")]
    Retry(RegistryError),
    /// The registry refused our credentials: stop the service with this message.
    #[error("{0}")]
    Fatal(RegistryError),
}

/// What is known about a Confluent schema id.
enum Known {
    /// Its writer schema, compared with ours once.
    Schema(WriterSchema),
    /// Records with this id are dead letters with `error`, without asking the registry again,
    /// until `until` (then the id is asked about again: it may have been registered since).
    Unusable { error: DecodeError, until: Instant },
}

/// Schema ids cached at most before the negative verdicts are forgotten.
const MAX_CACHED_IDS: usize = 10_000;

/// Decodes input records as `input.format` says.
///
/// Decoding is synchronous and asks no one: a Confluent id whose writer schema is not cached yet
/// is [`InputError::Unresolved`], and [`InputDecoder::resolve`] asks the registry (once).
pub struct InputDecoder {
    format: Format,
    accepted_ids: Vec<u32>,
    registry: Option<RegistryClient>,
    negative_ttl: Duration,
    schemas: HashMap<u32, Known>,
}

impl InputDecoder {
    pub fn new(config: &Config) -> Result<Self, RegistryError> {
        Ok(Self {
            format: config.input.format,
            accepted_ids: config.input.schema_ids.clone(),
            registry: match config.input.format {
                Format::ConfluentAvro => RegistryClient::from_config(&config.schema_registry)?,
                _ => None,
            },
            negative_ttl: config.schema_registry.negative_cache_ttl,
            schemas: HashMap::new(),
        })
    }

    pub fn decode(
        &mut self,
        payload: &[u8],
        is_sensitive: &dyn Fn(&str) -> bool,
    ) -> Result<Touchpoint, InputError> {
        crate::codec::check_record_size(payload)?;
        match self.format {
            Format::Json => Ok(json::decode_touchpoint(payload, is_sensitive)?),
            // Bare datums are written with the configured schema, which is ours.
            Format::Avro => Ok(WriterSchema::ours().decode(payload, is_sensitive)?),
            Format::ConfluentAvro => {
                let (id, datum) = avro::confluent_unframe(payload)?;
                match self.schemas.get(&id) {
                    Some(Known::Schema(writer)) => Ok(writer.decode(datum, is_sensitive)?),
                    Some(Known::Unusable { error, until }) if Instant::now() < *until => {
                        Err(error.clone().into())
                    }
                    _ if self.registry.is_some() => Err(InputError::Unresolved(id)),
                    _ => {
                        // No registry: the configured ids are read with the bundled schema.
                        if !self.accepted_ids.is_empty() && !self.accepted_ids.contains(&id) {
                            return Err(DecodeError::UnknownSchema(id).into());
                        }
                        // Nothing cached per id: random ids in hostile input cost no memory
                        // (found by fuzzing: a copy of the schema per new id).
                        Ok(WriterSchema::ours().decode(datum, is_sensitive)?)
                    }
                }
            }
        }
    }

    /// Decodes a case action (same format as the touchpoints). Confluent-framed actions are read
    /// with the bundled `CaseAction` schema whatever their schema id: no registry lookup.
    pub fn decode_action(&self, payload: &[u8]) -> Result<CaseAction, InputError> {
        crate::codec::check_record_size(payload)?;
        match self.format {
            Format::Json => Ok(json::decode_action(payload)?),
            Format::Avro => Ok(avro::decode_action(payload)?),
            Format::ConfluentAvro => {
                let (_, datum) = avro::confluent_unframe(payload)?;
                Ok(avro::decode_action(datum)?)
            }
        }
    }

    /// Asks the registry for the writer schema of `id`, once (bounded by
    /// `schema_registry.timeout`), and caches the answer: the schema, or, for an id the registry
    /// does not know (or a schema that does not parse), a dead-letter verdict for
    /// `schema_registry.negative_cache_ttl`. `Retry` when the registry is unavailable (nothing is
    /// cached), `Fatal` when it refuses the credentials. Without a registry there is nothing to
    /// ask: `Ok`.
    pub async fn resolve(&mut self, id: u32) -> Result<(), InputError> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        let known = match registry.schema(id).await {
            Ok(text) => match Schema::parse_str(&text) {
                Ok(schema) => {
                    let writer = WriterSchema::new(schema);
                    tracing::info!(
                        schema_id = id,
                        path = if writer.is_fast() { "fast" } else { "resolving" },
                        "writer schema loaded"
                    );
                    Known::Schema(writer)
                }
                Err(e) => {
                    tracing::warn!(schema_id = id, ttl = ?self.negative_ttl, "registry schema does not parse; its records are dead-lettered");
                    self.unusable(DecodeError::Avro(format!(
                        "registry schema {id} does not parse: {e}"
                    )))
                }
            },
            Err(RegistryError::NotFound(_)) => {
                tracing::warn!(schema_id = id, ttl = ?self.negative_ttl, "schema id unknown to the registry; its records are dead-lettered");
                self.unusable(DecodeError::UnknownSchema(id))
            }
            Err(e @ RegistryError::Auth { .. }) => return Err(InputError::Fatal(e)),
            Err(e) => return Err(InputError::Retry(e)),
        };
        if self.schemas.len() >= MAX_CACHED_IDS {
            // Records with made-up ids must not grow the cache without bound: forget the
            // verdicts (real schemas stay; a forgotten id is asked about again).
            self.schemas.retain(|_, k| matches!(k, Known::Schema(_)));
        }
        self.schemas.insert(id, known);
        Ok(())
    }

    fn unusable(&self, error: DecodeError) -> Known {
        Known::Unusable {
            error,
            until: Instant::now() + self.negative_ttl,
        }
    }
}

/// Encodes alerts as `output.format` says.
#[derive(Debug, Clone)]
pub struct OutputEncoder {
    format: Format,
    schema_id: u32,
}

impl OutputEncoder {
    /// Resolves the alert schema id: with confluent-avro output and a registry, registers the
    /// alert schema under `<alert_topic>-value`, retrying an unavailable registry with backoff
    /// for up to [`REGISTER_DEADLINE`]; refused credentials fail at once.
    pub async fn new(config: &Config) -> Result<Self, RegistryError> {
        Self::with_deadline(config, REGISTER_DEADLINE).await
    }

    /// [`OutputEncoder::new`] giving up on an unavailable registry after `deadline`.
    pub async fn with_deadline(config: &Config, deadline: Duration) -> Result<Self, RegistryError> {
        let schema_id = match config.output.format {
            Format::ConfluentAvro => match RegistryClient::from_config(&config.schema_registry)? {
                Some(registry) => {
                    let subject = format!("{}-value", config.kafka.alert_topic);
                    let id = retry_until(deadline, || registry.register(&subject, avro::ALERT_SCHEMA_TEXT))
                        .await?;
                    tracing::info!(schema_id = id, %subject, "alert schema registered");
                    id
                }
                None => config.output.schema_ids.first().copied().unwrap_or(0),
            },
            _ => config.output.schema_ids.first().copied().unwrap_or(0),
        };
        Ok(Self {
            format: config.output.format,
            schema_id,
        })
    }

    /// An encoder with a known schema id (no registry).
    pub fn with_schema_id(format: Format, schema_id: u32) -> Self {
        Self { format, schema_id }
    }

    pub fn encode(&self, alert: &RecoveryAlert, out: &mut Vec<u8>) {
        match self.format {
            Format::Json => json::encode_alert(alert, out),
            Format::Avro => avro::encode_alert(alert, out),
            Format::ConfluentAvro => {
                let mut datum = Vec::new();
                avro::encode_alert(alert, &mut datum);
                avro::confluent_frame(self.schema_id, &datum, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::registry::test_server::serve;
    use super::*;
    use crate::config::Secret;

    fn confluent_input(url: Option<String>) -> Config {
        let mut c = Config::default();
        c.input.format = Format::ConfluentAvro;
        c.schema_registry.url = url;
        c
    }

    fn framed(id: u32, datum: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        avro::confluent_frame(id, datum, &mut out);
        out
    }

    fn touchpoint() -> Touchpoint {
        json::decode_touchpoint(
            br#"{"event_id":"e1","customer_id":"c1","occurred_at":1772359200000,"channel":"CHAT","kind":"INTERACTION","direction":"INBOUND","journey":"billing","touchpoint":"payment.transfer","outcome":"FAILURE","sentiment":-0.5,"agent_id":"a7","attributes":{"order":"42"}}"#,
            &|_| false,
        )
        .unwrap()
    }

    /// What the pipeline does: decode; when the id is unresolved, resolve it and decode again.
    async fn decode(d: &mut InputDecoder, payload: &[u8]) -> Result<Touchpoint, InputError> {
        match d.decode(payload, &|_| false) {
            Err(InputError::Unresolved(id)) => {
                d.resolve(id).await?;
                d.decode(payload, &|_| false)
            }
            other => other,
        }
    }

    #[tokio::test]
    async fn an_unknown_id_is_unresolved_then_retry_while_the_registry_is_down() {
        let mut d = InputDecoder::new(&confluent_input(Some("http://127.0.0.1:1".into()))).unwrap();
        let record = framed(9, b"");
        assert!(matches!(
            d.decode(&record, &|_| false),
            Err(InputError::Unresolved(9))
        ));
        assert!(matches!(d.resolve(9).await, Err(InputError::Retry(e)) if e.is_retryable()));
        // Nothing was cached: the id is still to be resolved.
        assert!(matches!(
            d.decode(&record, &|_| false),
            Err(InputError::Unresolved(9))
        ));

        // Without a registry nothing is ever unresolved: the accepted ids decide.
        let mut c = confluent_input(None);
        c.input.schema_ids = vec![1];
        let mut d = InputDecoder::new(&c).unwrap();
        assert!(matches!(
            d.decode(&record, &|_| false),
            Err(InputError::Data(DecodeError::UnknownSchema(9)))
        ));
        let tp = touchpoint();
        assert_eq!(
            d.decode(&framed(1, &avro::encode_touchpoint(&tp)), &|_| false)
                .unwrap(),
            tp
        );
    }

    #[tokio::test]
    async fn an_id_the_registry_does_not_know_is_dead_lettered_without_asking_again_until_the_ttl() {
        let tp = touchpoint();
        let record = framed(8, &avro::encode_touchpoint(&tp));
        let ours = serde_json::json!({"schema": avro::TOUCHPOINT_SCHEMA_TEXT}).to_string();
        let (url, h) = serve(vec![(404, "{}".into()), (200, ours)]);
        let mut c = confluent_input(Some(url));
        // Short so the test can outlive it (the shipped default is 5 min; validation wants >= 1s).
        c.schema_registry.negative_cache_ttl = Duration::from_millis(300);
        let mut d = InputDecoder::new(&c).unwrap();
        assert!(matches!(
            decode(&mut d, &record).await,
            Err(InputError::Data(DecodeError::UnknownSchema(8)))
        ));
        // Within the TTL: a dead letter at once, no request (the server would answer 200 now).
        for _ in 0..100 {
            assert!(matches!(
                d.decode(&record, &|_| false),
                Err(InputError::Data(DecodeError::UnknownSchema(8)))
            ));
        }
        std::thread::sleep(Duration::from_millis(350));
        // After it: asked again, and the schema registered since is found.
        assert!(matches!(
            d.decode(&record, &|_| false),
            Err(InputError::Unresolved(8))
        ));
        assert_eq!(decode(&mut d, &record).await.unwrap(), tp);
        let seen: Vec<_> = h.join().unwrap().into_iter().map(|s| s.line).collect();
        assert_eq!(seen, ["GET /schemas/ids/8", "GET /schemas/ids/8"]);
    }

    #[tokio::test]
    async fn refused_credentials_are_fatal() {
        let (url, h) = serve(vec![(401, "{}".into()), (403, "{}".into())]);
        let mut c = confluent_input(Some(url));
        c.schema_registry.username = Some("svc".into());
        c.schema_registry.password = Some(Secret::new("hunter2-registry"));
        let mut d = InputDecoder::new(&c).unwrap();
        for _ in 0..2 {
            let e = decode(&mut d, &framed(3, b"")).await.unwrap_err();
            assert!(matches!(e, InputError::Fatal(RegistryError::Auth { .. })), "{e}");
            let text = format!("{e} {e:?}");
            assert!(text.contains("schema_registry.username"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        h.join().unwrap();
    }

    #[tokio::test]
    async fn a_schema_that_does_not_parse_is_a_cached_dead_letter() {
        let (url, h) = serve(vec![(200, r#"{"schema": "{not avro"}"#.into())]);
        let mut d = InputDecoder::new(&confluent_input(Some(url))).unwrap();
        for _ in 0..3 {
            let e = decode(&mut d, &framed(4, b"")).await.unwrap_err();
            assert!(
                matches!(&e, InputError::Data(DecodeError::Avro(m)) if m.contains("does not parse")),
                "{e}"
            );
        }
        assert_eq!(h.join().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn writer_schemas_are_fetched_and_compared_once_per_id() {
        let ours = serde_json::json!({"schema": avro::TOUCHPOINT_SCHEMA_TEXT}).to_string();
        // An older writer, before `agent_id` and `attributes`.
        let mut old: serde_json::Value = serde_json::from_str(avro::TOUCHPOINT_SCHEMA_TEXT).unwrap();
        old["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "agent_id" && f["name"] != "attributes");
        let old_schema = Schema::parse_str(&old.to_string()).unwrap();
        let (url, h) = serve(vec![
            (200, ours),
            (200, serde_json::json!({"schema": old.to_string()}).to_string()),
        ]);
        let mut d = InputDecoder::new(&confluent_input(Some(url))).unwrap();

        let tp = touchpoint();
        let new_framed = framed(6, &avro::encode_touchpoint(&tp));
        let apache_avro::types::Value::Record(mut fields) = avro::touchpoint_to_value(&tp) else {
            unreachable!()
        };
        fields.retain(|(n, _)| n != "agent_id" && n != "attributes");
        let old_datum =
            apache_avro::to_avro_datum(&old_schema, apache_avro::types::Value::Record(fields)).unwrap();
        let old_framed = framed(5, &old_datum);
        let mut from_old = tp.clone();
        from_old.agent_id = None;
        from_old.attributes.clear();

        // Twice each: the registry answers only the first lookup of each id.
        for _ in 0..2 {
            assert_eq!(decode(&mut d, &new_framed).await.unwrap(), tp);
            assert_eq!(decode(&mut d, &old_framed).await.unwrap(), from_old);
        }
        assert!(matches!(&d.schemas[&6], Known::Schema(w) if w.is_fast()));
        assert!(matches!(&d.schemas[&5], Known::Schema(w) if !w.is_fast()));
        let seen: Vec<_> = h.join().unwrap().into_iter().map(|s| s.line).collect();
        assert_eq!(seen, ["GET /schemas/ids/6", "GET /schemas/ids/5"]);
    }

    fn confluent_output(url: String) -> Config {
        let mut c = Config::default();
        c.output.format = Format::ConfluentAvro;
        c.schema_registry.url = Some(url);
        c.kafka.alert_topic = "alerts".into();
        c
    }

    #[tokio::test]
    async fn the_alert_schema_is_registered_through_an_outage_but_not_past_refused_credentials() {
        let (url, h) = serve(vec![
            (503, "starting".into()),
            (200, r#"{"id": 21}"#.into()),
            (403, "{}".into()),
        ]);
        let c = confluent_output(url);
        let e = OutputEncoder::new(&c).await.unwrap();
        assert_eq!(e.schema_id, 21);
        let started = Instant::now();
        let err = OutputEncoder::new(&c).await.unwrap_err();
        assert!(matches!(err, RegistryError::Auth { status: 403, .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        let seen: Vec<_> = h.join().unwrap().into_iter().map(|s| s.line).collect();
        assert_eq!(seen, ["POST /subjects/alerts-value/versions"; 3]);
    }

    #[tokio::test]
    async fn registering_gives_up_at_the_deadline() {
        let started = Instant::now();
        let err = OutputEncoder::with_deadline(
            &confluent_output("http://127.0.0.1:1".into()),
            Duration::from_millis(400),
        )
        .await
        .unwrap_err();
        assert!(err.is_retryable() && err.to_string().contains("gave up"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
