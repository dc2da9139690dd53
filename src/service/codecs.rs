//! Record codecs as configured per topic: input decoding (with Schema Registry lookups) and
//! alert encoding.

use crate::codec::{DecodeError, Format, avro, json};
use crate::config::Config;
use crate::model::{RecoveryAlert, Touchpoint};
use apache_avro::Schema;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
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
    schemas: HashMap<u32, Arc<Schema>>,
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
        match self.format {
            Format::Json => Ok(json::decode_touchpoint(payload, is_sensitive)?),
            Format::Avro => Ok(avro::decode_touchpoint(
                payload,
                avro::touchpoint_schema(),
                is_sensitive,
            )?),
            Format::ConfluentAvro => {
                let (id, datum) = avro::confluent_unframe(payload)?;
                let schema = self.writer_schema(id)?;
                Ok(avro::decode_touchpoint(datum, &schema, is_sensitive)?)
            }
        }
    }

    fn writer_schema(&mut self, id: u32) -> Result<Arc<Schema>, InputError> {
        if let Some(s) = self.schemas.get(&id) {
            return Ok(s.clone());
        }
        let schema = match &self.registry {
            None => {
                if !self.accepted_ids.is_empty() && !self.accepted_ids.contains(&id) {
                    return Err(DecodeError::UnknownSchema(id).into());
                }
                avro::touchpoint_schema().clone()
            }
            Some(r) => {
                let text = r
                    .schema(id)
                    .map_err(InputError::Retry)?
                    .ok_or(DecodeError::UnknownSchema(id))?;
                Schema::parse_str(&text)
                    .map_err(|e| DecodeError::Avro(format!("registry schema {id} does not parse: {e}")))?
            }
        };
        let schema = Arc::new(schema);
        self.schemas.insert(id, schema.clone());
        Ok(schema)
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
}
