//! Record codecs as configured per topic: input decoding (with Schema Registry lookups) and
//! alert encoding.

use crate::codec::avro::WriterSchema;
use crate::codec::{DecodeError, Format, avro, json};
use crate::config::Config;
use crate::model::{RecoveryAlert, Touchpoint};
use apache_avro::Schema;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{Read, Write};
use std::time::Duration;

/// Why an input record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The record itself is bad: dead-letter it and move on.
    #[error(transparent)]
    Data(#[from] DecodeError),
    /// Something outside the record failed (the registry is down): try the same record again.
    #[error("retryable: {0}")]
    Retry(String),
}

/// A minimal Confluent Schema Registry client (HTTP/1.1 over plain TCP, JSON bodies).
#[derive(Debug, Clone)]
pub struct Registry {
    host_port: String,
}

impl Registry {
    pub fn new(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("'{url}' must start with http://"))?;
        Ok(Self {
            host_port: rest.trim_end_matches('/').to_string(),
        })
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
        let mut stream =
            std::net::TcpStream::connect(&self.host_port).map_err(|e| format!("{}: {e}", self.host_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/vnd.schemaregistry.v1+json\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host_port,
            body.len()
        );
        stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "malformed HTTP response".to_string())?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// The schema with this id; `Ok(None)` when the registry does not know it.
    pub fn schema(&self, id: u32) -> Result<Option<String>, String> {
        let (status, body) = self.request("GET", &format!("/schemas/ids/{id}"), None)?;
        match status {
            200 => {
                let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                Ok(v["schema"].as_str().map(str::to_string))
            }
            404 => Ok(None),
            s => Err(format!("GET /schemas/ids/{id}: HTTP {s}: {body}")),
        }
    }

    /// Registers `schema` under `subject` and returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, String> {
        let body = serde_json::json!({ "schema": schema }).to_string();
        let (status, resp) = self.request("POST", &format!("/subjects/{subject}/versions"), Some(&body))?;
        if status != 200 {
            return Err(format!(
                "POST /subjects/{subject}/versions: HTTP {status}: {resp}"
            ));
        }
        let v: serde_json::Value = serde_json::from_str(&resp).map_err(|e| e.to_string())?;
        v["id"]
            .as_u64()
            .map(|id| id as u32)
            .ok_or_else(|| format!("registry answered without an id: {resp}"))
    }
}

/// Decodes input records as `input.format` says.
pub struct InputDecoder {
    format: Format,
    accepted_ids: Vec<u32>,
    registry: Option<Registry>,
    /// Writer schemas by Confluent schema id, each compared with ours once, on first sight.
    schemas: HashMap<u32, WriterSchema>,
}

impl InputDecoder {
    pub fn new(config: &Config) -> Result<Self, String> {
        Ok(Self {
            format: config.input.format,
            accepted_ids: config.input.schema_ids.clone(),
            registry: config
                .schema_registry
                .url
                .as_deref()
                .map(Registry::new)
                .transpose()?,
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
                Ok(self.writer_schema(id)?.decode(datum, is_sensitive)?)
            }
        }
    }

    /// The writer schema of `id`, fetched and compared with ours on first sight only.
    fn writer_schema(&mut self, id: u32) -> Result<&WriterSchema, InputError> {
        match self.schemas.entry(id) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let schema = fetch_writer_schema(self.registry.as_ref(), &self.accepted_ids, id)?;
                tracing::info!(
                    schema_id = id,
                    path = if schema.is_fast() { "fast" } else { "resolving" },
                    "writer schema loaded"
                );
                Ok(e.insert(schema))
            }
        }
    }
}

fn fetch_writer_schema(
    registry: Option<&Registry>,
    accepted_ids: &[u32],
    id: u32,
) -> Result<WriterSchema, InputError> {
    match registry {
        None => {
            if !accepted_ids.is_empty() && !accepted_ids.contains(&id) {
                return Err(DecodeError::UnknownSchema(id).into());
            }
            Ok(WriterSchema::ours().clone())
        }
        Some(r) => {
            let text = r
                .schema(id)
                .map_err(InputError::Retry)?
                .ok_or(DecodeError::UnknownSchema(id))?;
            let schema = Schema::parse_str(&text)
                .map_err(|e| DecodeError::Avro(format!("registry schema {id} does not parse: {e}")))?;
            Ok(WriterSchema::new(schema))
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
    /// Resolves the alert schema id (registering it when a registry is configured).
    pub fn new(config: &Config) -> Result<Self, String> {
        let schema_id = match (&config.schema_registry.url, config.output.format) {
            (Some(url), Format::ConfluentAvro) => Registry::new(url)?.register(
                &format!("{}-value", config.kafka.alert_topic),
                avro::ALERT_SCHEMA_TEXT,
            )?,
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
    use super::*;
    use std::io::BufRead;

    /// Serves one canned answer per connection and records the request lines.
    fn serve(answers: Vec<(u16, String)>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, body) in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut reader = std::io::BufReader::new(&s);
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                seen.push(first.trim().to_string());
                // Read the rest of the request (headers, then the body) before answering.
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line.trim().is_empty() {
                        break;
                    }
                }
                let mut request_body = vec![0; length];
                std::io::Read::read_exact(&mut reader, &mut request_body).unwrap();
                write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
            seen
        });
        (url, handle)
    }

    #[test]
    fn registry_lookup_and_register() {
        let schema = serde_json::json!({"schema": avro::TOUCHPOINT_SCHEMA_TEXT}).to_string();
        let (url, h) = serve(vec![
            (200, schema),
            (404, "{}".into()),
            (200, r#"{"id": 12}"#.into()),
        ]);
        let r = Registry::new(&url).unwrap();
        let text = r.schema(3).unwrap().unwrap();
        assert_eq!(Schema::parse_str(&text).unwrap(), *avro::touchpoint_schema());
        assert_eq!(r.schema(4).unwrap(), None);
        assert_eq!(r.register("alerts-value", "{}").unwrap(), 12);
        assert_eq!(
            h.join().unwrap(),
            [
                "GET /schemas/ids/3 HTTP/1.1",
                "GET /schemas/ids/4 HTTP/1.1",
                "POST /subjects/alerts-value/versions HTTP/1.1"
            ]
        );
    }

    #[test]
    fn registry_down_is_retryable_unknown_id_is_data() {
        let mut c = Config::default();
        c.input.format = Format::ConfluentAvro;
        c.schema_registry.url = Some("http://127.0.0.1:1".into());
        let mut d = InputDecoder::new(&c).unwrap();
        let mut framed = Vec::new();
        avro::confluent_frame(9, b"", &mut framed);
        assert!(matches!(d.decode(&framed, &|_| false), Err(InputError::Retry(_))));

        c.schema_registry.url = None;
        c.input.schema_ids = vec![1];
        let mut d = InputDecoder::new(&c).unwrap();
        assert!(matches!(
            d.decode(&framed, &|_| false),
            Err(InputError::Data(DecodeError::UnknownSchema(9)))
        ));
    }

    #[test]
    fn writer_schemas_are_fetched_and_compared_once_per_id() {
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
        let mut c = Config::default();
        c.input.format = Format::ConfluentAvro;
        c.schema_registry.url = Some(url);
        let mut d = InputDecoder::new(&c).unwrap();

        let tp = json::decode_touchpoint(
            br#"{"event_id":"e1","customer_id":"c1","occurred_at":1772359200000,"channel":"CHAT","kind":"INTERACTION","direction":"INBOUND","journey":"billing","touchpoint":"payment.transfer","outcome":"FAILURE","sentiment":-0.5,"agent_id":"a7","attributes":{"order":"42"}}"#,
            &|_| false,
        )
        .unwrap();
        let mut new_framed = Vec::new();
        avro::confluent_frame(6, &avro::encode_touchpoint(&tp), &mut new_framed);
        let apache_avro::types::Value::Record(mut fields) = avro::touchpoint_to_value(&tp) else {
            unreachable!()
        };
        fields.retain(|(n, _)| n != "agent_id" && n != "attributes");
        let old_datum =
            apache_avro::to_avro_datum(&old_schema, apache_avro::types::Value::Record(fields)).unwrap();
        let mut old_framed = Vec::new();
        avro::confluent_frame(5, &old_datum, &mut old_framed);
        let mut from_old = tp.clone();
        from_old.agent_id = None;
        from_old.attributes.clear();

        // Twice each: the registry answers only the first lookup of each id.
        for _ in 0..2 {
            assert_eq!(d.decode(&new_framed, &|_| false).unwrap(), tp);
            assert_eq!(d.decode(&old_framed, &|_| false).unwrap(), from_old);
        }
        assert!(d.writer_schema(6).unwrap().is_fast());
        assert!(!d.writer_schema(5).unwrap().is_fast());
        assert_eq!(
            h.join().unwrap(),
            ["GET /schemas/ids/6 HTTP/1.1", "GET /schemas/ids/5 HTTP/1.1"]
        );
    }
}
